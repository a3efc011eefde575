"""SIGTERM (what SLURM sends at the time limit): the command stops within one step of the signal,
writes the pending chunk and a checkpoint, exits with status 143, and rerunning it finishes the
run with data equal to an uninterrupted one.

"Within one step" is measured in the run's own counters, not in seconds: the process is frozen
with SIGSTOP, its progress is read from the committed files, then it gets SIGTERM and SIGCONT.
The loops look at the stop flag once per saved row (HMC) or per optimizer step (training), so
the files may advance by the row/step in flight at the freeze plus at most one more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from lattice_flows.config import config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.train_log import read_train_log
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.training.trainer import train_flow
from tests.conftest import (
    assert_same_flow, assert_same_samples, assert_same_train_log, cli, tiny_hmc_raw, write_config,
)

N_TRAJ = 1000


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lattice_flows", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _counter(read: Callable[[], int]) -> int:
    """``read()``, or -1 while the file is not there or not readable yet."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - not yet created / first commit in progress
        return -1


def _wait_until(proc: subprocess.Popen, read: Callable[[], int], at_least: int) -> None:
    """Poll until the counter reaches ``at_least`` (the timeout only guards a hang)."""
    deadline = time.monotonic() + 120
    while _counter(read) < at_least:
        assert proc.poll() is None, f"exited before the signal: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "no progress in 120 s"
        time.sleep(0.005)


def _freeze_read_term(proc: subprocess.Popen, read: Callable[[], int]) -> tuple[int, int, str]:
    """SIGSTOP, read the counter, SIGTERM + SIGCONT; returns (counter at the signal, exit
    status, stderr)."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert proc.poll() is None, "finished before SIGTERM: the test would prove nothing"
        at_signal = read()
        os.kill(proc.pid, signal.SIGTERM)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    return at_signal, proc.returncode, err


def _assert_clean_stop(code: int, err: str, run: Path) -> None:
    assert code == 128 + signal.SIGTERM, (code, err)
    assert "SIGTERM" in err and "rerun" in err and "Traceback" not in err, err
    assert not (run / ".lock").exists()


def test_sigterm_hmc_stops_within_a_row_and_resumes(tmp_path):
    """chunk_rows = 1: every row is committed, so n_saved counts the rows done at the freeze."""
    n_traj = 300  # one commit + checkpoint per row is slow: a short run, resumed in big chunks
    raw = tiny_hmc_raw(tmp_path / "ref", n_traj=n_traj, save_every=1)
    run_hmc(config_from_dict(raw), progress=False)  # the uninterrupted reference
    run = tmp_path / "term"
    raw["output"].update(dir=str(run), chunk_rows=1)
    cfg = write_config(tmp_path / "term.yaml", raw)
    proc = _start("hmc", str(cfg))
    n_saved = lambda: SampleFile(run / "hmc.h5").n_saved  # noqa: E731
    _wait_until(proc, n_saved, 3)
    k0, code, err = _freeze_read_term(proc, n_saved)
    _assert_clean_stop(code, err, run)
    k1 = SampleFile(run / "hmc.h5").n_saved
    assert k0 + 1 <= k1 <= k0 + 2, (k0, k1)  # the row in flight, at most one more
    assert load_checkpoint(run / "hmc.ckpt")["traj"] == k1  # checkpoint = data on disk
    cli("hmc", str(cfg), "--set", f"output.chunk_rows={n_traj}")
    assert_same_samples(tmp_path / "ref" / "hmc.h5", run / "hmc.h5")


def test_sigterm_hmc_writes_the_pending_chunk_and_resumes(tmp_path):
    """chunk_rows = n_traj: no chunk is complete before the end, so every row on disk after the
    stop is one the stop itself wrote."""
    raw = tiny_hmc_raw(tmp_path / "ref", n_traj=N_TRAJ, save_every=1)
    run_hmc(config_from_dict(raw), progress=False)
    run = tmp_path / "term"
    raw["output"].update(dir=str(run), chunk_rows=N_TRAJ)
    cfg = write_config(tmp_path / "term.yaml", raw)
    proc = _start("hmc", str(cfg))
    # hmc.h5 is created when production starts, after the thermalised checkpoint
    _wait_until(proc, lambda: SampleFile(run / "hmc.h5").n_saved, 0)
    k0, code, err = _freeze_read_term(proc, lambda: SampleFile(run / "hmc.h5").n_saved)
    _assert_clean_stop(code, err, run)
    assert k0 == 0
    k1 = SampleFile(run / "hmc.h5").n_saved
    assert 0 < k1 < N_TRAJ, k1  # the partial chunk was written, not lost
    assert load_checkpoint(run / "hmc.ckpt")["traj"] == k1
    cli("hmc", str(cfg))
    assert_same_samples(tmp_path / "ref" / "hmc.h5", run / "hmc.h5")


def _train_raw(out: Path, steps: int) -> dict:
    return {
        "lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.0}, "seed": 2, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8]},
        "train": {"steps": steps, "batch_size": 32, "log_every": 1, "checkpoint_every": 100000,
                  "eval_samples": 256, "lr_schedule": "constant"},
        "output": {"dir": str(out)},
    }


def test_sigterm_training_stops_within_a_step_and_resumes(tmp_path):
    """log_every = 1: train.h5 holds a record of every step, so it counts the steps done."""
    run = tmp_path / "t"
    cfg = write_config(tmp_path / "t.yaml", _train_raw(run, 3000))
    proc = _start("train", str(cfg))
    last_step = lambda: int(read_train_log(run / "train.h5")["step"][-1])  # noqa: E731
    _wait_until(proc, last_step, 3)
    k0, code, err = _freeze_read_term(proc, last_step)
    _assert_clean_stop(code, err, run)
    step = load_checkpoint(run / "train.ckpt")["step"]
    assert k0 <= step <= k0 + 1, (k0, step)  # checkpointed where it stopped
    assert last_step() == step  # the log ends at the checkpoint
    out = cli("train", str(cfg), "--set", f"train.steps={step + 10}")
    assert f'"steps": {step + 10}' in out.stdout
    # the resumed run equals an uninterrupted one of step + 10 steps
    train_flow(config_from_dict(_train_raw(tmp_path / "ref", step + 10)), progress=False)
    assert_same_flow(tmp_path / "ref" / "flow.pt", run / "flow.pt")
    assert_same_train_log(tmp_path / "ref" / "train.h5", run / "train.h5", ("step", "loss", "ess"))
