"""Composite production end to end (``sample.mode: composite``, mcmc/composite_run.py).

The exact free field with a tiny, deliberately imperfect trained flow; agreement with plain HMC
at the tutorial couplings on a 4x4 lattice (through ``lattice-flows run``); SIGKILL anywhere (and SIGTERM during the
thermalisation) + rerun equal to an uninterrupted run element by element, through the real
``lattice-flows sample`` CLI. Tolerances: Gamma-method errors (docs/conventions.md "Statistics")
times a Sidak threshold for the checks of each test (conftest.sidak_z, family-wise alpha 1e-3).
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lattice_flows.config import config_from_dict
from lattice_flows.estimates import gamma_method
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.flow_run import run_sample
from lattice_flows.mcmc.hmc_thermalise import THERM_PHASE
from lattice_flows.pipeline import run_pipeline
from lattice_flows.tables import analyze_samples
from lattice_flows.theory.free_field import exact_susceptibility, exact_two_point
from lattice_flows.training.trainer import train_flow
from tests.conftest import assert_same_samples, cli, sidak_z, wait_for_file, write_config
from tests.integration.test_kill_suite import kill_attempts, launch

ALPHA = 1e-3
TUTORIAL = {"m2": -4.0, "lam": 8.0}


def raw_cfg(out: Path, action: dict, flow_pt: Path | None = None, **sections) -> dict:
    raw = {
        "lattice": {"shape": [4, 4]}, "action": dict(action), "seed": 23, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8], "fourier_m2_init": 2.5},
        "train": {"steps": 40, "batch_size": 64, "lr": 3e-3, "log_every": 10,
                  "checkpoint_every": 1000, "eval_samples": 1024},
        "hmc": {"n_chains": 32, "n_therm": 100, "n_traj": 1500, "n_steps": 5},
        "sample": {"mode": "composite", "n_chains": 32, "n_samples": 1500, "batch_size": 2048},
        "output": {"dir": str(out), "chunk_rows": 500},
    }
    if flow_pt is not None:
        raw["sample"]["flow"] = str(flow_pt)
    for k, v in sections.items():
        raw[k].update(v)
    return raw


def _z(a: np.ndarray, b: np.ndarray | float) -> tuple[float, object, object]:
    ea = gamma_method(a)
    if isinstance(b, float):
        return (ea.value - b) / ea.error, ea, b
    eb = gamma_method(b)
    return (ea.value - eb.value) / math.hypot(ea.error, eb.error), ea, eb


def test_free_field_composite_matches_exact(tmp_path):
    """4x4 free field, m2 = 1: a flow trained for 40 steps (the Fourier layer started at the
    wrong mass); chi2, <S>/V = 1/2 and G(0, t) against their exact values."""
    free = {"m2": 1.0, "lam": 0.0}
    raw = raw_cfg(tmp_path / "free", free)
    cfg = config_from_dict(raw)
    train_flow(cfg, progress=False)
    sf = SampleFile(run_sample(cfg, progress=False))
    assert sf.attrs["kind"] == "composite" and sf.n_saved == 1500
    assert 0 < sf.attrs["flow_acceptance"] < 1 and 0 < sf.attrs["hmc_acceptance"] < 1
    G_exact = exact_two_point((4, 4), 1.0).numpy()
    checks = {"chi2": (sf.observable("chi2"), exact_susceptibility(1.0)),
              "S/V": (sf.observable("action_density"), 0.5)}
    G = sf.observable("G")
    for t in range(3):
        checks[f"G(0,{t})"] = (G[:, :, 0, t], float(G_exact[0, t]))
    z_max = sidak_z(ALPHA, len(checks))
    for name, (data, exact) in checks.items():
        z, est, _ = _z(data, float(exact))
        assert abs(z) < z_max, (name, est, exact, z)


def test_tutorial_couplings_composite_agrees_with_hmc(tmp_path):
    """m2 = -4, lam = 8 on 4x4 (the tutorial couplings, a small volume): composite chains with
    a briefly trained flow vs plain HMC on <|M|>, chi2 and E, both from ``lattice-flows run``
    (the pipeline dispatches on sample.mode and compares against HMC)."""
    run = tmp_path / "run"
    report = run_pipeline(config_from_dict(raw_cfg(run, TUTORIAL)), progress=False)
    assert "flow composite" in report and "flow composite" in (run / "comparison.md").read_text()
    comp, hmc = SampleFile(run / "composite.h5"), SampleFile(run / "hmc.h5")
    assert comp.attrs["kind"] == "composite" and hmc.attrs["kind"] == "hmc"
    z_max = sidak_z(ALPHA, 3)
    for name in ("absM", "chi2", "E"):
        z, a, b = _z(comp.observable(name), hmc.observable(name))
        assert a.tau_int * 50 < comp.n_saved, (name, a, "chain too short for a reliable error")
        assert abs(z) < z_max, (name, a, b, z)
    # the flow proposals' weight diagnostics are rows of the composite file's table (and of
    # the report), the production's figures; no 'stuck' flag (HMC moves the chain meanwhile)
    rows = analyze_samples(comp)
    assert rows["pareto_k"].est.value == float(comp.attrs["weights_khat"])
    assert rows["N_eff"].est.value == float(comp.attrs["weights_ess"])
    n_flow_steps = int(comp.attrs["weights_chain_length"])
    assert n_flow_steps >= comp.n_saved and rows["rejection_run/N"].est.value == (
        int(comp.attrs["weights_longest_rejection_run"]) / n_flow_steps)
    assert "stuck" not in rows.weights["flags"] and rows["M2"].flag == ",".join(rows.weights["flags"])
    assert "pareto_k" in report


def _kill_raw(out: Path, flow_pt: Path) -> dict:
    raw = raw_cfg(out, TUTORIAL, flow_pt, sample={"n_chains": 4, "n_samples": 1500,
                                                  "batch_size": 64, "save_every": 3},
                  hmc={"n_therm": 40, "n_steps": 4})
    raw["output"]["chunk_rows"] = 15  # 34 commits: part files are merged on the way
    del raw["train"], raw["flow"]
    return raw


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flow") / "run"
    train_flow(config_from_dict(raw_cfg(out, TUTORIAL, train={"steps": 20})), progress=False)
    return out / "flow.pt"


@pytest.mark.slow  # ~30 s: six CLI processes (tests/unit/test_composite.py resumes in-process)
def test_composite_killed_anywhere_resumes_to_the_uninterrupted_chain(tmp_path, trained_flow):
    ref = write_config(tmp_path / "ref.yaml", _kill_raw(tmp_path / "ref", trained_flow))
    assert launch("sample", ref).wait() == 0
    cfg = write_config(tmp_path / "killed.yaml", _kill_raw(tmp_path / "killed", trained_flow))
    specs = ["part:1", "checkpoint:2", "merge:1", "random"]
    kill_attempts("sample", cfg, tmp_path / "killed", specs, random.Random(11), "composite.h5",
                  TUTORIAL["m2"], TUTORIAL["lam"])
    assert launch("sample", cfg).wait() == 0
    assert_same_samples(tmp_path / "ref" / "composite.h5", tmp_path / "killed" / "composite.h5")
    a = SampleFile(tmp_path / "ref" / "composite.h5")
    b = SampleFile(tmp_path / "killed" / "composite.h5")
    for key in ("flow_acceptance", "hmc_acceptance", "step_size", "weights_khat", "weights_ess"):
        assert a.attrs[key] == b.attrs[key], key


@pytest.mark.slow  # ~20 s: a CLI process, its resumption and the reference run
def test_sigterm_during_thermalisation_resumes_exactly(tmp_path, trained_flow):
    n_therm = 4000  # seconds of HMC on 4 chains: the signal lands inside it
    raw = _kill_raw(tmp_path / "term", trained_flow)
    raw["hmc"]["n_therm"], raw["sample"]["n_samples"] = n_therm, 60
    cfg = write_config(tmp_path / "term.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice_flows", "sample", str(cfg), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    record = tmp_path / "term" / "config.yaml"  # written just before the thermalisation
    wait_for_file(record, proc)
    time.sleep(0.3)
    assert proc.poll() is None, "finished before SIGTERM: the test would prove nothing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    state = load_checkpoint(tmp_path / "term" / "composite.ckpt")
    assert state["phase"] == THERM_PHASE and 0 < state["therm_done"] < n_therm
    assert not (tmp_path / "term" / "composite.h5").exists()

    cli("sample", str(cfg), "--no-progress")  # resume: thermalisation, then the sweeps
    raw["output"]["dir"] = str(tmp_path / "ref")
    ref = SampleFile(run_sample(config_from_dict(raw), progress=False))  # uninterrupted
    resumed = SampleFile(tmp_path / "term" / "composite.h5")
    assert resumed.attrs["step_size"] == ref.attrs["step_size"]
    assert_same_samples(ref.path, resumed.path)
