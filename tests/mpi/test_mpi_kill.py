"""Kill suite under ``mpiexec -n 2``: ``hmc``, ``train`` and ``sample`` killed mid-run, then rerun.

One rank is SIGKILLed at a named point inside a write (``lattice_flows.faults``: a part file
half written, an index not yet renamed, half a checkpoint, the training log's copy), which makes
mpiexec take the other rank down as a node failure would, or the whole job is SIGKILLed at a
random instant (what a scheduler does at the hard limit). After every kill every rank file opens
and verifies; rerunning the same command with two ranks finishes the run, and the final files
equal those of an uninterrupted two-rank run with the same seed, element by element.

Depth (CI time): every kill of two ranks costs a start of mpiexec and two Pythons. The default
run (``depth = ci``) kills each command at one named write point and at one random instant; the
whole list of points of each command runs with ``pytest -m slow`` (``depth = full``). The
single-rank suite (tests/integration/test_kill_suite.py) always runs every point. The SIGTERM
test likewise runs ``train`` (the collective checkpoint of torch.distributed training) by default
and ``hmc`` and ``sample`` as slow tests.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lattice_flows.io.sample_verify import verify_sample_file
from tests.conftest import (
    assert_same_flow,
    assert_same_samples,
    assert_same_train_log,
    check_run_folder,
    wait_for_file,
)
from tests.mpi.test_mpi import MPIEXEC, NP, _env, flow_raw, write_config

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not on PATH (pip install mpi4py mpich)"),
]


def launch(cmd: str, cfg: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = _env({"LATTICE_FLOWS_KILL_AT": kill_at} if kill_at else None)
    if not kill_at:
        env.pop("LATTICE_FLOWS_KILL_AT", None)
    return subprocess.Popen(
        [MPIEXEC, "-n", str(NP), sys.executable, "-m", "lattice_flows", cmd, str(cfg), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )


def finish(cmd: str, cfg: Path) -> None:
    proc = launch(cmd, cfg)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out


def kill_attempts(cmd: str, cfg: Path, run: Path, specs: list[str], rng: random.Random,
                  marker: str) -> None:
    random_kills = 0
    for spec in specs:
        if spec == "random":
            proc = launch(cmd, cfg)
            wait_for_file(run / marker, proc, 120)
            time.sleep(rng.uniform(0.05, 0.8))
            random_kills += proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks at once
            proc.communicate()
        else:
            proc = launch(cmd, cfg, kill_at=spec)
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode != 0 and "signal 9" in out, f"{spec}: rc {proc.returncode}\n{out}"
        check_run_folder(run)
    assert random_kills >= 1, f"{cmd} finished before every random kill: the test proves nothing"


DEPTHS = ["ci", pytest.param("full", marks=pytest.mark.slow)]


def at_depth(specs: list[str], depth: str) -> list[str]:
    """The kill points of one command: all of them (``full``), or its first named point and one
    random instant (``ci``, module docstring)."""
    if depth == "full":
        return specs
    return [next(s for s in specs if s != "random"), "random"]


def _raw(out: Path) -> dict:
    return flow_raw(
        out,
        hmc={"n_chains": 4, "n_therm": 30, "n_traj": 1000, "n_steps": 6, "step_size": "auto",
             "save_every": 1},
        train={"steps": 200, "checkpoint_every": 20, "log_every": 10, "batch_size": 32},
        sample={"n_chains": 4, "n_samples": 1500, "batch_size": 64, "save_every": 3},
        output={"chunk_rows": 30},
    )


@pytest.mark.parametrize("depth", DEPTHS)
def test_two_rank_hmc_killed_anywhere_resumes_to_the_uninterrupted_chains(tmp_path, depth):
    ref = write_config(tmp_path / "ref.yaml", _raw(tmp_path / "ref"))
    finish("hmc", ref)
    cfg = write_config(tmp_path / "killed.yaml", _raw(tmp_path / "killed"))
    specs = ["part:2:1", "checkpoint:2:0", "master:3:1", "random", "random"]
    kill_attempts("hmc", cfg, tmp_path / "killed", at_depth(specs, depth), random.Random(11),
                  "hmc.rank0001.h5")
    finish("hmc", cfg)
    for name in ("hmc.rank0000.h5", "hmc.rank0001.h5", "hmc.h5"):
        assert_same_samples(tmp_path / "ref" / name, tmp_path / "killed" / name)
    assert verify_sample_file(tmp_path / "killed" / "hmc.h5") == []


@pytest.mark.parametrize("depth", DEPTHS)
def test_two_rank_training_killed_anywhere_resumes_to_the_uninterrupted_flow(tmp_path, depth):
    ref = write_config(tmp_path / "ref.yaml", _raw(tmp_path / "ref"))
    finish("train", ref)
    cfg = write_config(tmp_path / "killed.yaml", _raw(tmp_path / "killed"))
    specs = ["checkpoint:2:0", "trainlog:3:0", "checkpoint:4:0", "random", "random"]
    kill_attempts("train", cfg, tmp_path / "killed", at_depth(specs, depth), random.Random(12),
                  "train.ckpt")
    finish("train", cfg)
    assert_same_flow(tmp_path / "ref" / "flow.pt", tmp_path / "killed" / "flow.pt")
    assert_same_train_log(tmp_path / "ref" / "train.h5", tmp_path / "killed" / "train.h5",
                          ("step", "loss", "ess", "grad_norm"))


@pytest.mark.parametrize("depth", DEPTHS)
def test_two_rank_sampling_killed_anywhere_resumes_to_the_uninterrupted_chains(tmp_path, depth):
    flow_run = tmp_path / "flow"
    finish("train", write_config(tmp_path / "flow.yaml", {**_raw(flow_run),
                                                           "train": {**_raw(flow_run)["train"], "steps": 60}}))
    raw = _raw(tmp_path / "ref")
    raw["sample"]["flow"] = str(flow_run / "flow.pt")
    finish("sample", write_config(tmp_path / "ref.yaml", raw))
    raw["output"]["dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "killed.yaml", raw)
    specs = ["part:1:0", "master:2:1", "checkpoint:2:1", "random", "random"]
    kill_attempts("sample", cfg, tmp_path / "killed", at_depth(specs, depth), random.Random(13),
                  "samples.rank0001.h5")
    finish("sample", cfg)
    for name in ("samples.rank0000.h5", "samples.rank0001.h5", "samples.h5"):
        assert_same_samples(tmp_path / "ref" / name, tmp_path / "killed" / name)


def _sigterm_after_start(cmd: str, cfg: Path, marker: Path, delay: float) -> tuple[int, str, float]:
    """SIGTERM to mpiexec and both ranks (what SLURM does at the time limit) once ``marker``
    exists; returns the exit status, the output and the seconds from SIGTERM to exit."""
    proc = launch(cmd, cfg)
    wait_for_file(marker, proc, 120)
    time.sleep(delay)
    assert proc.poll() is None, f"{cmd} finished before SIGTERM: the test would prove nothing"
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, time.time() - t0


SIGTERM_RUNS = {  # command: (marker file, sample files compared)
    "train": ("train.ckpt", ()),
    "hmc": ("hmc.rank0001.h5", ("hmc.rank0000.h5", "hmc.rank0001.h5", "hmc.h5")),
    "sample": ("samples.rank0001.h5", ("samples.rank0000.h5", "samples.rank0001.h5", "samples.h5")),
}


@pytest.mark.parametrize("cmd", ["train", pytest.param("hmc", marks=pytest.mark.slow),
                                 pytest.param("sample", marks=pytest.mark.slow)])
def test_two_rank_sigterm_checkpoints_within_seconds_and_resumes_exactly(tmp_path, cmd):
    ref, term = tmp_path / "ref", tmp_path / "term"
    raw_ref, raw_term = _raw(ref), _raw(term)
    for raw in (raw_ref, raw_term):
        raw["hmc"]["n_traj"] = 6000
        raw["train"]["steps"] = 300  # the run must outlast the 0.5 s before SIGTERM (asserted)
        raw["sample"].update(flow=str(tmp_path / "flow" / "flow.pt"), n_samples=20000)
    if cmd == "sample":  # a short-trained flow to sample from
        raw_flow = _raw(tmp_path / "flow")
        raw_flow["train"]["steps"] = 60
        finish("train", write_config(tmp_path / "flow.yaml", raw_flow))
    cfg_ref = write_config(tmp_path / "ref.yaml", raw_ref)
    cfg_term = write_config(tmp_path / "term.yaml", raw_term)
    marker, files = SIGTERM_RUNS[cmd]
    finish(cmd, cfg_ref)
    rc, out, seconds = _sigterm_after_start(cmd, cfg_term, term / marker, 0.5)
    assert rc == 143 and seconds < 10, (rc, seconds, out)
    assert out.count("stopped by SIGTERM after a clean checkpoint") >= 1, out
    assert "Traceback" not in out, out
    check_run_folder(term)
    finish(cmd, cfg_term)
    for name in files:
        assert_same_samples(ref / name, term / name)
    if cmd == "train":
        assert_same_flow(ref / "flow.pt", term / "flow.pt")
