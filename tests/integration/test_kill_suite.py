"""Kill suite: SIGKILL real ``hmc``, ``train`` and ``sample`` processes mid-run, then rerun.

Every command is killed at least six times in a row: at named points inside its writes (a
sample part file half written, a new index written but not renamed, parts half merged, half a
checkpoint written, the training log's copy written but not renamed; ``lattice_flows.faults``)
and at random instants. After every kill, every file of the run folder opens, the sample files
pass ``verify_sample_file`` (shapes, counts, checksums of every committed row) and a reader
running concurrently with the killed writer never sees a half-written row. Rerunning the same
command finishes the run, and the final datasets equal those of an uninterrupted run with the
same seed, element by element. The same for two MPI ranks is in ``tests/mpi/test_mpi_kill.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import (
    assert_same_flow,
    assert_same_samples,
    assert_same_train_log,
    check_run_folder,
    tiny_hmc_raw,
    wait_for_file,
    write_config,
)

KILLED = -signal.SIGKILL


def launch(cmd: str, cfg: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LATTICE_FLOWS_KILL_AT", None)
    if kill_at:
        env["LATTICE_FLOWS_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "lattice_flows", cmd, str(cfg), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


class ConcurrentReader(threading.Thread):
    """Reads a sample file over and over while its writer runs; records any row it sees whose
    stored action differs from the action of its stored configuration (a half-written row)."""

    def __init__(self, path: Path, m2: float, lam: float) -> None:
        super().__init__(daemon=True)
        self.path, self.action = path, Phi4Action(m2, lam, 2)
        self.stop, self.reads, self.bad = threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.path.exists():
                time.sleep(0.01)
                continue
            sf = SampleFile(self.path)
            phi, s = sf.configs(), sf.action()
            if phi.shape[0] != sf.n_saved or s.shape[0] != sf.n_saved:
                self.bad.append(f"{sf.n_saved} rows announced, {phi.shape[0]}/{s.shape[0]} read")
            elif sf.n_saved:
                recomputed = self.action(torch.from_numpy(phi.reshape(-1, *phi.shape[2:])).double())
                if not np.allclose(recomputed.numpy().reshape(s.shape), s, rtol=1e-4, atol=1e-3):
                    self.bad.append(f"rows of {self.path} whose action is not that of their config")
            self.reads += 1


def kill_attempts(cmd: str, cfg: Path, run: Path, specs: list[str], rng: random.Random,
                  sample_file: str | None, m2: float, lam: float) -> None:
    random_kills = 0
    for spec in specs:
        reader = None
        if spec == "random":
            proc = launch(cmd, cfg)
            marker = run / (sample_file or "train.ckpt")
            wait_for_file(marker, proc, 120)
            if sample_file:
                reader = ConcurrentReader(run / sample_file, m2, lam)
                reader.start()
            time.sleep(rng.uniform(0.05, 0.8))
            random_kills += proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            proc = launch(cmd, cfg, kill_at=spec)
            rc = proc.wait(timeout=300)
            err = proc.stderr.read()
            assert rc == KILLED, f"{cmd} with LATTICE_FLOWS_KILL_AT={spec} ended with {rc}:\n{err}"
        if reader is not None:
            reader.stop.set()
            reader.join()
            assert reader.bad == [], reader.bad
        check_run_folder(run)
    assert random_kills >= 1, f"{cmd} finished before every random kill: the test proves nothing"


def test_hmc_killed_anywhere_resumes_to_the_uninterrupted_chain(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "ref", n_traj=3000, save_every=1, n_chains=4)
    raw["output"]["chunk_rows"] = 40  # 75 commits: parts are merged (16 per merge) on the way
    ref = write_config(tmp_path / "ref.yaml", raw)
    assert launch("hmc", ref).wait() == 0
    raw["output"]["dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "killed.yaml", raw)
    specs = ["part:2", "checkpoint:2", "master:3", "merge:1", "random", "random", "random"]
    kill_attempts("hmc", cfg, tmp_path / "killed", specs, random.Random(7), "hmc.h5", -4.0, 8.0)
    assert launch("hmc", cfg).wait() == 0
    assert_same_samples(tmp_path / "ref" / "hmc.h5", tmp_path / "killed" / "hmc.h5")
    assert verify_sample_file(tmp_path / "killed" / "hmc.h5") == []


def _train_raw(out: Path) -> dict:
    return {
        "lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 5, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8], "kernel_size": 3},
        "train": {"steps": 400, "batch_size": 32, "lr": 3e-3, "log_every": 10,
                  "checkpoint_every": 25, "eval_samples": 1024},
        "sample": {"n_chains": 4, "n_samples": 4500, "batch_size": 64, "save_every": 3},
        "output": {"dir": str(out), "chunk_rows": 30},
    }


def test_train_killed_anywhere_resumes_to_the_uninterrupted_flow(tmp_path):
    raw = _train_raw(tmp_path / "ref")
    ref = write_config(tmp_path / "ref.yaml", raw)
    assert launch("train", ref).wait() == 0
    raw["output"]["dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "killed.yaml", raw)
    specs = ["checkpoint:1", "trainlog:2", "checkpoint:3", "trainlog:5", "random", "random"]
    kill_attempts("train", cfg, tmp_path / "killed", specs, random.Random(3), None, -4.0, 8.0)
    assert launch("train", cfg).wait() == 0
    assert_same_flow(tmp_path / "ref" / "flow.pt", tmp_path / "killed" / "flow.pt")
    assert_same_train_log(tmp_path / "ref" / "train.h5", tmp_path / "killed" / "train.h5",
                          ("step", "loss", "ess", "grad_norm", "lr"))


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flow")
    raw = _train_raw(out / "run")
    raw["train"]["steps"] = 150
    assert launch("train", write_config(out / "train.yaml", raw)).wait() == 0
    return out / "run" / "flow.pt"


def test_sample_killed_anywhere_resumes_to_the_uninterrupted_chain(tmp_path, trained_flow):
    raw = _train_raw(tmp_path / "ref")
    raw["sample"]["flow"] = str(trained_flow)
    ref = write_config(tmp_path / "ref.yaml", raw)
    assert launch("sample", ref).wait() == 0
    raw["output"]["dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "killed.yaml", raw)
    specs = ["part:1", "master:2", "checkpoint:2", "merge:1", "random", "random", "random"]
    kill_attempts("sample", cfg, tmp_path / "killed", specs, random.Random(5), "samples.h5", -4.0, 8.0)
    assert launch("sample", cfg).wait() == 0
    assert_same_samples(tmp_path / "ref" / "samples.h5", tmp_path / "killed" / "samples.h5")
