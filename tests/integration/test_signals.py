"""SIGTERM (what SLURM sends at the time limit): a clean checkpoint and exit within seconds;
rerunning the command finishes the run with data equal to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lattice_flows.io.hdf5 import SampleFile
from tests.conftest import cli, tiny_hmc_raw, write_config


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lattice_flows", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _term_when(path: Path, proc: subprocess.Popen, delay: float) -> tuple[int, float, str]:
    deadline = time.time() + 60
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, "finished before SIGTERM: the test would prove nothing"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, time.time() - t0, err


def test_sigterm_hmc_checkpoints_and_resumes(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "ref", n_traj=4000, save_every=1)
    raw["output"]["chunk_rows"] = 500
    cli("hmc", str(write_config(tmp_path / "ref.yaml", raw)))
    raw["output"]["dir"] = str(tmp_path / "term")
    cfg = write_config(tmp_path / "term.yaml", raw)
    code, dt, err = _term_when(tmp_path / "term" / "hmc.h5", _start("hmc", str(cfg)), 0.3)
    assert code == 128 + signal.SIGTERM and dt < 5, (code, dt, err)
    assert "SIGTERM" in err and "rerun" in err and "Traceback" not in err
    sf = SampleFile(tmp_path / "term" / "hmc.h5")
    assert 0 < sf.n_saved < 4000  # the partial chunk was written, not lost
    assert not (tmp_path / "term" / ".lock").exists()
    cli("hmc", str(cfg))
    a, b = SampleFile(tmp_path / "ref" / "hmc.h5"), SampleFile(tmp_path / "term" / "hmc.h5")
    np.testing.assert_array_equal(a.configs(), b.configs())
    np.testing.assert_array_equal(a.accepted(), b.accepted())


def test_sigterm_training_checkpoints_and_resumes(tmp_path):
    raw = {
        "lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.0}, "seed": 2, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8]},
        "train": {"steps": 3000, "batch_size": 32, "log_every": 50, "checkpoint_every": 100000,
                  "eval_samples": 256, "lr_schedule": "constant"},
        "output": {"dir": str(tmp_path / "t")},
    }
    cfg = write_config(tmp_path / "t.yaml", raw)
    code, dt, err = _term_when(tmp_path / "t" / "train.h5", _start("train", str(cfg)), 0.5)
    assert code == 128 + signal.SIGTERM and dt < 5, (code, dt, err)
    from lattice_flows.io.checkpoint import load_checkpoint

    step = load_checkpoint(tmp_path / "t" / "train.ckpt")["step"]
    assert 0 < step < 3000  # checkpointed where it stopped, not at checkpoint_every
    out = cli("train", str(cfg), "--set", "train.steps=" + str(step + 10))
    assert '"steps": ' + str(step + 10) in out.stdout
