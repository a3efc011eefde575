"""Cost ratios compare like with like (lattice_flows/comparison.py): device-seconds of runs on
the same device kind, "n/a" with the reason between device kinds, the training's device-s added
only on the same kind. Real sample files: one tiny HMC run, copied, whose copies get the clock
attributes of production files (``cpu_s``, ``wall_s``, ``device_s``, ``device_kind``) through
the writer itself (SampleWriter.set_attrs); an "older" file has no device_s/device_kind."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import h5py
import pytest

from lattice_flows import api
from lattice_flows.comparison import compare, format_comparison
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_writer import SampleWriter
from tests.conftest import REPO, tiny_hmc_raw

GPU = "cuda:NVIDIA H200"


@pytest.fixture(scope="module")
def hmc_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("hmc_cost") / "run"
    return api.hmc(api.load_config(tiny_hmc_raw(out)))


def _copy(src, dst_dir, **clocks):
    """A copy of the run folder of ``src`` whose file has the clock attributes ``clocks``; none
    given: an older file (no device_s, device_kind, wall_s)."""
    shutil.copytree(src.parent, dst_dir)
    path = dst_dir / src.name
    sf = SampleFile(path)
    specs = {}  # the writer's row specs of the file: every dataset's per-chain shape and dtype
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, d: specs.__setitem__(name, (d.shape[2:], d.dtype))
                     if isinstance(d, h5py.Dataset) and name not in ("chunk_index", "configs")
                     else None)
    w = SampleWriter(path, {}, sf.n_chains, sf.lattice_shape, specs)
    for k in ("device_s", "device_kind", "wall_s"):
        w.attrs.pop(k, None)
    w.set_attrs(clocks)
    return path


def _cost_ratios(cmp, run: int) -> list[float]:
    return [line["runs"][run]["cost_ratio"] for line in cmp["table"]]


def test_cost_ratio_is_in_device_s_and_an_older_file_counts_its_cpu_s(hmc_file, tmp_path):
    old = _copy(hmc_file, tmp_path / "old")
    cpu_s = float(SampleFile(old).attrs["cpu_s"])
    new = _copy(hmc_file, tmp_path / "new", cpu_s=cpu_s, wall_s=5.0, device_s=3 * cpu_s,
                device_kind="cpu")
    cmp = compare([old, new], ["old", "new"])
    r_old, r_new = cmp["runs"]
    assert (r_old["device_s"], r_old["device_kind"]) == (cpu_s, "cpu") and math.isnan(r_old["wall_s"])
    assert (r_new["device_s"], r_new["wall_s"]) == (3 * cpu_s, 5.0)
    # the same rows: same tau_int and N, so the ratio is that of the device-s
    assert _cost_ratios(cmp, 1) == pytest.approx([3.0] * len(cmp["table"]), rel=1e-12)
    assert cmp["device_kinds"] == ["cpu"] and cmp["cost_note"] == ""
    text = format_comparison(cmp)
    assert "cost per eff. sample new / old (< 1: new cheaper), ratio of device-s" in text
    assert f"new: {3 * cpu_s:.1f} device-s on cpu ({cpu_s:.1f} CPU-s, 5.0 wall-s)" in text
    assert "n/a" not in text


def test_runs_on_different_device_kinds_get_no_cost_ratio_and_the_table_says_why(hmc_file, tmp_path):
    cpu_run = _copy(hmc_file, tmp_path / "cpu")
    cpu_s = float(SampleFile(cpu_run).attrs["cpu_s"])
    gpu_run = _copy(hmc_file, tmp_path / "gpu", cpu_s=1.0, wall_s=2.0, device_s=2.0, device_kind=GPU)
    cpu2 = _copy(hmc_file, tmp_path / "cpu2", cpu_s=cpu_s, wall_s=cpu_s, device_s=2 * cpu_s,
                 device_kind="cpu")
    cmp = compare([cpu_run, gpu_run, cpu2], ["A", "G", "C"])
    assert all(math.isnan(c) for c in _cost_ratios(cmp, 1))  # G / A: GPU-s over CPU-s
    assert _cost_ratios(cmp, 2) == pytest.approx([2.0] * len(cmp["table"]), rel=1e-12)
    for line in cmp["table"]:
        a, g, c = line["runs"]
        assert g["device_kind"] == GPU and math.isfinite(g["device_s_per_eff"])
        # the cheapest baseline of each device kind: A among the CPU runs, G alone on the GPU
        assert line["best_classical_by_kind"] == {"cpu": "A", GPU: "G"}
        assert line["best_classical"] == "A"
        assert [r["cost_vs_best_classical"] for r in (a, g, c)] == pytest.approx([1.0, 1.0, 2.0])
    assert cmp["device_kinds"] == sorted(["cpu", GPU])
    text = format_comparison(cmp)
    assert "n/a, 2" in text  # the ratio cells of G and C
    assert "different device kinds (A: cpu, G: cuda:NVIDIA H200, C: cpu)" in text
    assert f"G: 2.0 device-s on {GPU} (1.0 CPU-s, 2.0 wall-s)" in text

    # the script's JSON holds null for the missing ratio (strict JSON) and says why
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(cpu_run),
                           str(gpu_run), "--names", "A,G", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    js = json.loads((out / "comparison.json").read_text())
    assert all(line["runs"][1]["cost_ratio"] is None for line in js["table"])
    assert "different device kinds" in js["cost_note"]
    assert "different device kinds" in (out / "comparison.md").read_text()


def test_training_cost_is_added_only_on_the_same_device_kind(hmc_file, tmp_path):
    cpu_run = _copy(hmc_file, tmp_path / "cpu")
    cpu_s = float(SampleFile(cpu_run).attrs["cpu_s"])
    gpu_run = _copy(hmc_file, tmp_path / "gpu", cpu_s=1.0, wall_s=2.0, device_s=2.0, device_kind=GPU)
    same = compare([cpu_run, gpu_run], ["A", "G"], extra_cost={1: (10.0, GPU)})
    assert same["runs"][1]["cost_s"] == 12.0 and same["runs"][1]["cost_note"] == ""
    other = compare([cpu_run, gpu_run], ["A", "G"], extra_cost={1: (10.0, "cpu")})
    g = other["runs"][1]
    assert math.isnan(g["cost_s"]) and "training on cpu, sampling on cuda:NVIDIA H200" in g["cost_note"]
    assert all(math.isnan(line["runs"][1]["device_s_per_eff"]) for line in other["table"])
    assert "G: n/a: training on cpu" in format_comparison(other)
    # a training on a CPU added to a CPU run
    legacy = compare([cpu_run, cpu_run], ["A", "B"], extra_cost={1: (cpu_s, "cpu")})
    assert legacy["runs"][1]["cost_s"] == 2 * cpu_s
    assert _cost_ratios(legacy, 1) == pytest.approx([2.0] * len(legacy["table"]), rel=1e-12)
