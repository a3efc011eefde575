"""SIGTERM during HMC thermalisation: the chains, RNG, step size, dual-averaging state and
counter are checkpointed, and the resumed run equals an uninterrupted one element by element
(a real process, a real signal; README "SIGTERM")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from lattice_flows.config import config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.mcmc.hmc_thermalise import THERM_PHASE
from tests.conftest import cli, tiny_hmc_raw, wait_for_file, write_config

N_THERM = 6000  # ~5 s of thermalisation on one thread: the signal lands inside it


def test_sigterm_during_thermalisation_resumes_exactly(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "term", n_therm=N_THERM, n_traj=40, save_every=1)
    cfg = write_config(tmp_path / "term.yaml", raw)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice_flows", "hmc", str(cfg), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    config_yaml = tmp_path / "term" / "config.yaml"  # written just before thermalisation starts
    wait_for_file(config_yaml, proc)
    time.sleep(0.5)
    assert proc.poll() is None, "finished before SIGTERM: the test would prove nothing"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and time.time() - t0 < 5, (proc.returncode, err)
    assert "thermalisation" in err and "rerun" in err and "Traceback" not in err
    state = load_checkpoint(tmp_path / "term" / "hmc.ckpt")
    assert state["phase"] == THERM_PHASE and 0 < state["therm_done"] < N_THERM, state["therm_done"]
    assert state["tuner"]["t"] == state["therm_done"]  # the step-size adaptation went with it
    assert not (tmp_path / "term" / "hmc.h5").exists()
    assert not (tmp_path / "term" / ".lock").exists()

    cli("hmc", str(cfg))  # resume: finishes thermalisation, then production
    raw["output"]["dir"] = str(tmp_path / "ref")
    ref = SampleFile(run_hmc(config_from_dict(raw), progress=False))  # uninterrupted
    resumed = SampleFile(tmp_path / "term" / "hmc.h5")
    assert resumed.attrs["step_size"] == ref.attrs["step_size"]
    np.testing.assert_array_equal(resumed.configs(), ref.configs())
    np.testing.assert_array_equal(resumed.accepted(), ref.accepted())
    np.testing.assert_array_equal(resumed.action(), ref.action())
