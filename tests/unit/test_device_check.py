"""benchmarks/device_check.sh in its quick CPU mode (what it does on a machine without CUDA, and
with DEVICE_CHECK_CPU=1 anywhere): it names the hardware, runs a single-rank torch.distributed
group through lattice_flows.distributed (gloo) and throughput.py --quick, writes every output
into $OUT and exits 0; a step that fails makes it exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "device_check.sh"


def _run(out, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), PYTHON=python, OMP_NUM_THREADS="1",
               DEVICE_CHECK_CPU="1")
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_quick_cpu_mode_runs_the_cpu_able_parts_and_exits_0(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "summary.txt").read_text()
    assert summary == proc.stdout
    assert "hardware: CPU " in summary and "no CUDA on this machine" in summary
    assert "[PASS] distributed: single-rank gloo group" in summary
    assert "[PASS] throughput --quick on the CPU" in summary
    nccl = json.loads((tmp_path / "nccl_check.json").read_text())
    assert nccl["ok"] is True and nccl["backend"] == "gloo" and nccl["ranks"] == 1
    tp = json.loads((tmp_path / "throughput.json").read_text())
    assert tp["quick"] is True and tp["device"] == "cpu" and tp["hardware_line"].startswith("CPU ")
    (row,) = tp["rows"]
    assert row["L"] == 8
    for fig in ("proposals_per_s", "train_steps_per_s", "hmc_trajectories_per_s"):
        assert row[fig]["median_per_s"] > 0 and len(row[fig]["wall_s"]) == 2, fig


def test_a_failing_step_makes_the_check_fail(tmp_path):
    proc = _run(tmp_path, python="/bin/false")  # an interpreter that runs nothing
    assert proc.returncode != 0
    assert "[FAIL] the package does not import here" in (tmp_path / "summary.txt").read_text()
