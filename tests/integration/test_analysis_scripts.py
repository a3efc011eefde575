"""The analysis/ scripts (table, compare, plots) run as real subprocesses on a tiny run.

One module-scoped run folder (L = 6, 30 training steps, a few hundred flow-MCMC, importance and
HMC samples) feeds every script; each test checks the exit status and that the outputs exist,
are non-empty and parse (PNG magic bytes, JSON, CSV); the z-score, τ_int ratio and cost ratio of
compare.py are recomputed by hand from the files. A foreign HDF5 file gives exit status 2 with
its path on stderr.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.conftest import REPO, cli, write_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANALYSIS = REPO / "analysis"


def script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ANALYSIS / name), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def assert_png(path: Path) -> None:
    assert path.exists(), f"{path} missing"
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analysis_run")
    raw = {
        "lattice": {"shape": [6, 6]},
        "action": {"m2": -4.0, "lam": 8.0},
        "seed": 3,
        "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8], "kernel_size": 3},
        "train": {"steps": 30, "batch_size": 64, "lr": 3e-3, "log_every": 5,
                  "checkpoint_every": 30, "eval_samples": 512, "eval_batch_size": 512},
        "sample": {"n_chains": 4, "n_samples": 300, "batch_size": 512},
        "hmc": {"n_chains": 4, "n_therm": 50, "n_traj": 300, "n_steps": 6},
        "output": {"dir": str(root / "run"), "chunk_rows": 100},
    }
    cfg = write_config(root / "tiny.yaml", raw)
    cli("run", str(cfg), "--no-progress")
    cli("sample", str(cfg), "--set", "sample.mode=importance", "--no-progress")
    run = root / "run"
    for name in ("train.h5", "train_summary.json", "samples.h5", "importance.h5", "hmc.h5"):
        assert (run / name).exists(), name
    return run


def test_help_of_every_script():
    for name in ("table.py", "compare.py", "plots.py"):
        proc = ok(script(name, "--help"))
        assert "usage" in proc.stdout


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_table(run_dir, tmp_path, fmt):
    proc = ok(script("table.py", run_dir, "--format", fmt, "--discard", "10", "--out", tmp_path))
    out = tmp_path / f"table.{fmt}"
    assert out.exists() and out.stat().st_size > 0
    text = out.read_text()
    if fmt == "json":
        runs = json.loads(text)["runs"]
        assert {r["meta"]["kind"] for r in runs} == {"flow-mcmc", "flow-importance", "hmc"}
        names = {o["name"] for o in runs[-1]["observables"]}
        assert {"absM", "chi2", "U4", "C[1]"} <= names
        # the chains drop 10 rows; independent importance draws nothing (as the meta says)
        assert {r["meta"]["kind"]: r["meta"]["discard"] for r in runs} == {
            "flow-mcmc": 10, "hmc": 10, "flow-importance": 0}
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and {"run", "observable", "value", "error", "tau_int"} <= set(rows[0])
        float(rows[0]["value"]), float(rows[0]["tau_int"])
    else:
        assert "| observable |" in text and "absM" in text
        assert text in proc.stdout


def test_compare(run_dir, tmp_path):
    ok(script("compare.py", run_dir / "samples.h5", run_dir / "hmc.h5", "--names", "flow,HMC",
              "--train-cost", "--out", tmp_path))
    md, js = tmp_path / "comparison.md", tmp_path / "comparison.json"
    assert md.stat().st_size > 0 and "| observable | flow | HMC |" in md.read_text()
    cmp = json.loads(js.read_text())
    assert [r["name"] for r in cmp["runs"]] == ["flow", "HMC"]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    flow = cmp["runs"][0]
    assert flow["train_device_s_added"] == pytest.approx(summary["train_device_s"])
    assert flow["train_device_kind"] == summary["device_kind"] == flow["device_kind"] == "cpu"
    line = next(line for line in cmp["table"] if line["observable"] == "absM")
    assert {"value", "error", "z_vs_first", "tau_int_ratio", "cost_ratio"} <= set(line["runs"][1])
    # every ratio names its direction: run / reference, here HMC / flow
    text = md.read_text()
    assert "cost per eff. sample HMC / flow (< 1: HMC cheaper), ratio of device-s" in text
    assert "τ_int HMC / flow" in text and "z = (HMC − flow)" in text
    assert line["runs"][1]["ratio_of"] == "HMC / flow"
    assert cmp["ratio_directions"]["cost_ratio"].startswith("device-s per effective sample, run / ref")
    assert cmp["cost_unit"] == "device-s" and cmp["device_kinds"] == ["cpu"]


def test_compare_z_score_and_cost_ratio_by_hand(run_dir, tmp_path):
    """z and the cost ratio of comparison.json recomputed by hand from the sample files'
    attributes, train_summary.json and the other script's (table.py) Γ-method estimates."""
    ok(script("compare.py", run_dir / "samples.h5", run_dir / "hmc.h5", "--names", "flow,HMC",
              "--train-cost", "--out", tmp_path, "--quiet"))
    ok(script("table.py", run_dir / "samples.h5", run_dir / "hmc.h5", "--names", "flow,HMC",
              "--format", "json", "--out", tmp_path, "--quiet"))
    cmp = json.loads((tmp_path / "comparison.json").read_text())
    tables = {r["meta"]["run"]: r for r in json.loads((tmp_path / "table.json").read_text())["runs"]}
    train_dev = json.loads((run_dir / "train_summary.json").read_text())["train_device_s"]
    est, cost = {}, {}
    for name, fname, extra in (("flow", "samples.h5", train_dev), ("HMC", "hmc.h5", 0.0)):
        with h5py.File(run_dir / fname, "r") as f:  # device-s; files of before them: CPU-s
            dev = float(f.attrs.get("device_s", f.attrs["cpu_s"])) + extra
            n_chains = int(f.attrs["n_chains"])
        meta = tables[name]["meta"]
        n = (meta["n_saved"] - meta["discard"]) * n_chains
        est[name] = next(o for o in tables[name]["observables"] if o["name"] == "absM")
        cost[name] = dev * 2 * est[name]["tau_int"] / n  # device-s per effective sample
    z = (est["HMC"]["value"] - est["flow"]["value"]) / math.hypot(est["HMC"]["error"],
                                                                  est["flow"]["error"])
    hmc = next(line for line in cmp["table"] if line["observable"] == "absM")["runs"][1]
    assert hmc["name"] == "HMC"
    assert hmc["z_vs_first"] == pytest.approx(z, rel=1e-9)
    assert hmc["cost_ratio"] == pytest.approx(cost["HMC"] / cost["flow"], rel=1e-9)
    assert hmc["tau_int_ratio"] == pytest.approx(est["HMC"]["tau_int"] / est["flow"]["tau_int"],
                                                 rel=1e-9)


def test_compare_reports_against_the_cheapest_of_several_baselines(run_dir, tmp_path):
    """With two HMC runs among the inputs, every run's cost is also given relative to the cheaper
    HMC run per observable (the strongest baseline of the comparison), which is named."""
    from lattice_flows import api

    cfg = api.load_config({
        "lattice": {"shape": [6, 6]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 4,
        "device": "cpu", "hmc": {"n_chains": 4, "n_therm": 50, "n_traj": 300, "n_steps": 2},
        "output": {"dir": str(tmp_path / "hmc2")}})
    second = api.hmc(cfg)
    ok(script("compare.py", run_dir / "samples.h5", run_dir / "hmc.h5", second, "--names",
              "flow,HMC,HMC2", "--out", tmp_path, "--quiet"))
    cmp = json.loads((tmp_path / "comparison.json").read_text())
    for line in cmp["table"]:
        flow, h1, h2 = line["runs"]
        best = min((h1["device_s_per_eff"], "HMC"), (h2["device_s_per_eff"], "HMC2"))
        assert line["best_classical"] == best[1]
        assert flow["cost_vs_best_classical"] == pytest.approx(flow["device_s_per_eff"] / best[0])
        assert min(h1["cost_vs_best_classical"], h2["cost_vs_best_classical"]) == pytest.approx(1.0)
    assert "cost per eff. sample / the cheapest classical run (which)" in (
        tmp_path / "comparison.md").read_text()


def test_compare_run_folder_expands(run_dir, tmp_path):
    ok(script("compare.py", run_dir, "--reference", "2", "--out", tmp_path, "--quiet"))
    cmp = json.loads((tmp_path / "comparison.json").read_text())
    assert len(cmp["runs"]) == 3 and cmp["runs"][0]["kind"] == "hmc"


def test_plots_all(run_dir, tmp_path):
    ok(script("plots.py", "all", run_dir, "--out", tmp_path))
    for name in ("train_history.png", "correlators.png", "autocorr_absM.png", "log_w.png",
                 "rejection_runs.png", "magnetization.png"):
        assert_png(tmp_path / name)


def test_plots_subcommands(run_dir, tmp_path):
    ok(script("plots.py", "train", run_dir / "train.h5", "--out", tmp_path / "a"))
    assert_png(tmp_path / "a" / "train_history.png")
    ok(script("plots.py", "autocorr", run_dir / "hmc.h5", "--obs", "M2", "--out", tmp_path / "b"))
    assert_png(tmp_path / "b" / "autocorr_M2.png")
    ok(script("plots.py", "magnetization", run_dir / "samples.h5", run_dir / "hmc.h5",
              "--names", "flow,HMC", "--out", tmp_path / "c"))
    assert_png(tmp_path / "c" / "magnetization.png")


def test_default_out_is_cwd(run_dir, tmp_path):
    ok(script("plots.py", "weights", run_dir, cwd=tmp_path))
    assert_png(tmp_path / "log_w.png")


def test_foreign_hdf5_exits_2(tmp_path):
    bad = tmp_path / "foreign.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("x", data=[1.0, 2.0])
        f.attrs["format"] = "something.else"
    for name, args in (("table.py", [bad]), ("compare.py", [bad, bad]),
                       ("plots.py", ["magnetization", bad])):
        proc = script(name, *args, "--out", tmp_path)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_missing_path_and_not_hdf5_exit_2(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    for path in (tmp_path / "nope", text):
        proc = script("table.py", path, "--out", tmp_path)
        assert proc.returncode == 2 and str(path) in proc.stderr, proc.stderr
