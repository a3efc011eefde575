"""Stops and resumes of Fourier-accelerated HMC with a tuned trajectory length (issue 15): what
thermalisation froze (eps, n_steps, the measured mass M(p), the length scan) travels in the
checkpoints, so that a run stopped by SIGTERM during thermalisation, SIGKILLed in production or
extended equals the uninterrupted run element by element (real processes, real signals; the
two process tests are marked slow, ~30 s each)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lattice_flows.cli import main
from lattice_flows.config import ConfigError, config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.mcmc.hmc_plan import plan_from_config
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.mcmc.hmc_thermalise import THERM_PHASE
from tests.conftest import tiny_hmc_raw, wait_for_file, write_config
from tests.integration.test_kill_suite import assert_same_samples, kill_attempts, launch

FA = {"fourier_acceleration": True, "fa_kernel": "measured", "trajectory_length": "auto"}


def _assert_same_run(a: SampleFile, b: SampleFile) -> None:
    for key in ("step_size", "n_steps", "trajectory_length"):
        assert a.attrs[key] == b.attrs[key], key
    np.testing.assert_array_equal(a.attrs["fa_mass"], b.attrs["fa_mass"])
    np.testing.assert_array_equal(a.configs(), b.configs())
    np.testing.assert_array_equal(a.accepted(), b.accepted())
    np.testing.assert_array_equal(a.action(), b.action())


def test_extending_an_fa_run_reuses_its_mass_and_length(tmp_path):
    """The extension resumes from the production checkpoint: it must run with the frozen
    measured M(p) and the scanned n_steps (a fresh HMC of the config has neither)."""
    raw_long = tiny_hmc_raw(tmp_path / "long", n_therm=120, n_traj=80, **FA)
    assert main(["hmc", str(write_config(tmp_path / "long.yaml", raw_long)), "--no-progress"]) == 0
    cfg = write_config(tmp_path / "ext.yaml", tiny_hmc_raw(tmp_path / "ext", n_therm=120,
                                                            n_traj=40, **FA))
    assert main(["hmc", str(cfg), "--no-progress"]) == 0
    state = load_checkpoint(tmp_path / "ext" / "hmc.ckpt")
    assert state["n_steps"] != 6 and state["fa_mass"].shape == (6, 4)  # frozen, not the config's
    assert len(state["trajectory_scan"]) == 9
    assert main(["hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=80"]) == 0
    _assert_same_run(SampleFile(tmp_path / "long" / "hmc.h5"), SampleFile(tmp_path / "ext" / "hmc.h5"))


def test_resuming_an_fa_checkpoint_without_fa_is_refused(tmp_path):
    """Without the run's config record (the first guard) the checkpoint itself tells that the
    chains ran with a Fourier mass: resuming them with unit mass is refused, naming the key."""
    raw = tiny_hmc_raw(tmp_path / "r", n_traj=4, fourier_acceleration=True, fa_mu2=1.0)
    run_hmc(config_from_dict(raw), progress=False)
    for record in (tmp_path / "r").glob("config*.yaml"):
        record.unlink()
    raw["hmc"].update(fourier_acceleration=False, n_traj=8)
    with pytest.raises(ConfigError, match="started with Fourier acceleration, the config asks "
                                          "for hmc.fourier_acceleration false"):
        run_hmc(config_from_dict(raw), progress=False)


@pytest.mark.slow  # 10-30 s: a reference run and a process start per stop
def test_sigterm_anywhere_in_fa_thermalisation_resumes_exactly(tmp_path):
    """SIGTERM at about 10 %, 30 % and 60 % of the thermalisation time (measure, tune, scan;
    timed on the uninterrupted run), each resume continuing from the last stop; the result
    equals the uninterrupted run."""
    raw = tiny_hmc_raw(tmp_path / "ref", n_therm=3000, n_traj=30, save_every=1, **FA)
    t0 = time.perf_counter()
    ref = SampleFile(run_hmc(config_from_dict(raw), progress=False))  # uninterrupted
    t_therm = time.perf_counter() - t0
    raw["output"]["dir"] = str(tmp_path / "term")
    cfg = write_config(tmp_path / "term.yaml", raw)
    bounds = np.cumsum([n for _, n in plan_from_config(config_from_dict(raw)).segments()])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stopped_in, ckpt = set(), tmp_path / "term" / "hmc.ckpt"
    for share in (0.1, 0.2, 0.3, 0.3, 0.3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "lattice_flows", "hmc", str(cfg), "--no-progress"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        marker = tmp_path / "term" / "config.yaml"
        wait_for_file(marker, proc)
        time.sleep(share * t_therm)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        # 0: finished before the signal; -SIGTERM: it landed in the interpreter's exit
        assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), err
        state = load_checkpoint(ckpt)
        if state.get("phase") != THERM_PHASE:
            break  # thermalisation was over: production stopped or finished
        done = state["therm_done"]
        stopped_in.add(int(np.searchsorted(bounds, done, side="right")))
        assert ("fa_mass" in state) == (done >= bounds[0])  # frozen after the measure segment
        marker.unlink()
    assert len(stopped_in) >= 2, f"stops only in segments {stopped_in}: the test proves little"
    assert main(["hmc", str(cfg), "--no-progress"]) == 0
    _assert_same_run(SampleFile(tmp_path / "term" / "hmc.h5"), ref)


@pytest.mark.slow  # ~30 s, as the kill suite
def test_fa_hmc_killed_anywhere_resumes_to_the_uninterrupted_chain(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "ref", n_therm=120, n_traj=3000, save_every=1, n_chains=4, **FA)
    raw["output"]["chunk_rows"] = 100
    ref = write_config(tmp_path / "ref.yaml", raw)
    assert launch("hmc", ref).wait() == 0
    raw["output"]["dir"] = str(tmp_path / "killed")
    cfg = write_config(tmp_path / "killed.yaml", raw)
    kill_attempts("hmc", cfg, tmp_path / "killed", ["part:2", "checkpoint:2", "random"],
                  random.Random(11), "hmc.h5", -4.0, 8.0)
    assert launch("hmc", cfg).wait() == 0
    assert_same_samples(tmp_path / "ref" / "hmc.h5", tmp_path / "killed" / "hmc.h5")
    assert verify_sample_file(tmp_path / "killed" / "hmc.h5") == []
    _assert_same_run(SampleFile(tmp_path / "ref" / "hmc.h5"), SampleFile(tmp_path / "killed" / "hmc.h5"))
