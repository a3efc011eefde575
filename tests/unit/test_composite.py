"""Composite production (lattice_flows/mcmc/composite_run.py): flow independence steps + HMC on
the same chains (docs/conventions.md "Statistics").

Detailed balance on a toy target: a 2x2 lattice at m2 = -1, lam = 0.5, whose moments are computed
by quadrature over the four site values, sampled with a deliberately imperfect flow (an untrained
flow: a Gaussian of the wrong mass). The composite chain's moments agree with the exact ones
within Gamma-method errors (Sidak over the checks), and the deliberately wrong variant that keeps
the stale log q after HMC moved a chain is caught by the same comparison at family-wise
significance 1e-6. Plus: what the rows hold (log w = -S - log q of the current state, the flags),
the checkpoint's state, and the config errors of the mode.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lattice_flows.config import ConfigError, config_from_dict
from lattice_flows.estimates import gamma_method
from lattice_flows.flows.flow import build_flow
from lattice_flows.flows.flowfile import flow_state, load_flow
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.mcmc.composite_run import CompositeProducer, run_composite
from lattice_flows.runtime.production import run_production
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import assert_same_samples, sidak_z

M2, LAM = -1.0, 0.5
SHAPE = (2, 2)
CHECKS = ("absM", "chi2", "M4", "action_density")


def toy_raw(out: Path, flow_pt: Path | None = None, **sample) -> dict:
    raw = {
        "lattice": {"shape": list(SHAPE)}, "action": {"m2": M2, "lam": LAM}, "seed": 5,
        "device": "cpu", "dtype": "float64",
        # deliberately imperfect: an untrained flow is the Fourier layer's Gaussian at mass^2 3
        "flow": {"n_layers": 2, "hidden_channels": [4], "fourier_m2_init": 3.0},
        "hmc": {"n_therm": 30, "n_steps": 3},
        "sample": {"mode": "composite", "n_chains": 64, "n_samples": 1000, "batch_size": 4096,
                   "save_every": 1, **sample},
        "output": {"dir": str(out), "chunk_rows": 400, "store_G": False},
    }
    if flow_pt is not None:
        raw["sample"]["flow"] = str(flow_pt)
    return raw


@pytest.fixture(scope="module")
def untrained_flow(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flow")
    cfg = config_from_dict(toy_raw(out))
    torch.manual_seed(0)
    path = out / "flow.pt"
    save_checkpoint(flow_state(build_flow(cfg.flow, SHAPE, M2), cfg), path)
    return path


def exact_moments() -> dict[str, float]:
    """<|M|>, chi2 = V <M^2>, <M^4>, <S>/V of the 2x2 target by the trapezoidal rule on a grid
    of 64 values per site over [-3.2, 3.2] (exp(-S) < 1e-30 outside). The rule converges
    exponentially for the smooth moments (48 and 64 points agree to 1e-14); |M| has a kink at
    M = 0: 64 points are 2e-5 off the 80-point value over [-3.6, 3.6], below 1 % of the
    statistical error (2e-3) of the comparison."""
    action = Phi4Action(M2, LAM, 2)
    x = torch.linspace(-3.2, 3.2, 64, dtype=torch.float64)
    rest = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    z, sums = 0.0, np.zeros(4)
    for a in x:
        phi = torch.cat([torch.full((rest.shape[0], 1), float(a), dtype=torch.float64), rest], 1)
        phi = phi.reshape(-1, *SHAPE)
        s = action(phi)
        w, m = torch.exp(-s), phi.mean((1, 2))
        z += float(w.sum())
        sums += [float((w * f).sum()) for f in (m.abs(), 4 * m * m, m**4, s / 4)]
    return dict(zip(CHECKS, sums / z))


def _run(raw: dict, recompute_log_q: bool = True) -> SampleFile:
    cfg = config_from_dict(raw)
    run_dir = Path(raw["output"]["dir"])
    path = run_production(
        lambda: CompositeProducer(cfg, run_dir, False, None, recompute_log_q=recompute_log_q),
        cfg, run_dir, None, base="composite", stage="sample", lock_name=".lock.sample.0",
        desc="composite", progress=False)
    return SampleFile(path)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, untrained_flow) -> tuple[SampleFile, dict]:
    raw = toy_raw(tmp_path_factory.mktemp("toy") / "run", untrained_flow)
    return SampleFile(run_composite(config_from_dict(raw), progress=False)), raw


def _z_scores(sf: SampleFile, exact: dict[str, float]) -> dict[str, float]:
    out = {}
    for name in CHECKS:
        est = gamma_method(sf.observable(name))
        out[name] = (est.value - exact[name]) / est.error
    return out


def test_composite_chain_is_exact_and_a_stale_log_q_is_caught(toy_run, tmp_path, untrained_flow):
    sf, raw = toy_run
    exact = exact_moments()
    z_ok = sidak_z(1e-3, len(CHECKS))
    z = _z_scores(sf, exact)
    assert all(abs(v) < z_ok for v in z.values()), (z, exact)
    # the flow steps take part: a flow proposal is accepted in a fair share of the sweeps
    flow_moves = gamma_method(sf.extra("flow_accepted").astype(np.float64))
    assert flow_moves.value > 5 * flow_moves.error, flow_moves
    # the wrong variant (log q of the state before HMC kept) fails the same comparison, far
    # beyond the threshold: the test has the power to see a missing recomputation
    wrong = _z_scores(_run(toy_raw(tmp_path / "wrong", untrained_flow), recompute_log_q=False),
                      exact)
    assert max(abs(v) for v in wrong.values()) > sidak_z(1e-6, len(CHECKS)), wrong


def test_rows_hold_the_weights_of_the_current_state(toy_run, untrained_flow):
    sf, raw = toy_run
    assert sf.attrs["kind"] == "composite" and sf.n_saved == 1000 and sf.n_chains == 64
    assert verify_sample_file(sf.path) == []
    assert {"log_q", "log_w", "flow_accepted", "hmc_accepted"} <= set(sf.extra_names)
    lq, lw = sf.extra("log_q"), sf.extra("log_w")
    np.testing.assert_array_equal(lw, -(sf.action() + lq))
    flow_acc, hmc_acc = sf.extra("flow_accepted"), sf.extra("hmc_accepted")
    np.testing.assert_array_equal(sf.accepted(), flow_acc | hmc_acc)
    assert sf.attrs["flow_acceptance"] == pytest.approx(flow_acc.mean(), rel=1e-12)  # save_every 1
    assert sf.attrs["hmc_acceptance"] == pytest.approx(hmc_acc.mean(), rel=1e-12)  # n = 1
    assert sf.attrs["sweeps_done"] == 1000 and "weights_khat" in sf.attrs
    # the stored log q is the flow's log q of the stored state (float64 flow and chains; the
    # stored configs are float32, so compare on the checkpoint's state of the last row)
    state = load_checkpoint(Path(raw["output"]["dir"]) / "composite.ckpt")
    flow = load_flow(untrained_flow, SHAPE, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        log_q = flow.log_prob(state["phi"]).numpy()
    eps = 64 * np.finfo(np.float64).eps * np.abs(log_q).max()  # inverse vs forward pass roundoff
    np.testing.assert_allclose(state["log_q"].numpy(), log_q, rtol=0, atol=eps)
    np.testing.assert_array_equal(state["log_q"].numpy(), lq[-1])
    np.testing.assert_array_equal(state["phi"].to(torch.float32).numpy(), sf.configs()[-1])
    np.testing.assert_array_equal(Phi4Action(M2, LAM, 2)(state["phi"]).numpy(), sf.action()[-1])


def test_composite_config_errors(tmp_path, untrained_flow):
    raw = toy_raw(tmp_path / "x", untrained_flow)
    del raw["hmc"]
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert "'sample.mode'" in str(err.value) and "'composite'" in str(err.value)
    assert "'hmc'" in str(err.value)
    for key in ("flow_steps", "hmc_trajectories"):
        with pytest.raises(ConfigError) as err:
            config_from_dict(toy_raw(tmp_path / "x", untrained_flow, **{key: 0}))
        assert key in str(err.value) and "positive integer" in str(err.value)
    raw = toy_raw(tmp_path / "x", untrained_flow)
    raw["hmc"]["n_therm"] = 5
    with pytest.raises(ConfigError) as err:
        run_composite(config_from_dict(raw), progress=False)
    assert "hmc.n_therm" in str(err.value) and "composite" in str(err.value)
    assert not (tmp_path / "x").exists()


def test_a_sweep_of_k_flow_steps_and_n_trajectories(tmp_path, untrained_flow):
    """k = 3 flow steps and n = 2 trajectories per sweep, rows every 2 sweeps: the counts and
    the per-row flags add up, and a numeric step size is used as given."""
    raw = toy_raw(tmp_path / "kn", untrained_flow, flow_steps=3, hmc_trajectories=2,
                  n_samples=41, save_every=2, n_chains=4, batch_size=20)
    raw["hmc"].update(step_size=0.3, n_therm=0)
    sf = SampleFile(run_composite(config_from_dict(raw), progress=False))
    assert sf.n_saved == 20 and sf.attrs["step_size"] == 0.3
    assert (sf.attrs["flow_steps"], sf.attrs["hmc_trajectories"]) == (3, 2)
    state = load_checkpoint(tmp_path / "kn" / "composite.ckpt")
    assert state["step"] == 41
    assert sf.attrs["flow_acceptance"] == state["n_flow_accepted"] / (41 * 4 * 3)
    assert sf.attrs["hmc_acceptance"] == state["n_hmc_accepted"] / (41 * 4 * 2)
    assert 0 < sf.attrs["flow_acceptance"] < 1 and 0 < sf.attrs["hmc_acceptance"] < 1
    assert math.isfinite(sf.attrs["weights_khat"])
    # sweep 41 is past the last row: its flags wait for the next row in the checkpoint
    assert state["flow_since_save"].dtype == torch.bool


def test_extended_run_continues_and_other_kernel_settings_are_refused(tmp_path, untrained_flow):
    """sample.n_samples may grow: the run resumes from its checkpoint and its rows equal those
    of an uninterrupted run, element by element; a changed HMC kernel (hmc.n_steps) or sweep
    (sample.flow_steps) is refused with the key. (SIGKILL and SIGTERM at any point:
    tests/integration/test_composite_sampling.py.)"""
    # 4 sweeps per flow call; both lengths are whole calls (a run ending inside a call draws
    # a shorter last call, a valid chain but another stream than a longer run's, as flow MCMC)
    raw = toy_raw(tmp_path / "ext", untrained_flow, n_samples=32, n_chains=4, batch_size=16,
                  save_every=2)
    raw["output"]["chunk_rows"] = 4
    run_composite(config_from_dict(raw), progress=False)
    raw["sample"]["n_samples"] = 48
    longer = SampleFile(run_composite(config_from_dict(raw), progress=False))
    assert longer.n_saved == 24
    raw["output"]["dir"] = str(tmp_path / "whole")
    assert_same_samples(run_composite(config_from_dict(raw), progress=False), longer.path)
    raw["output"]["dir"] = str(tmp_path / "ext")
    for section, key, value in (("hmc", "n_steps", 4), ("sample", "flow_steps", 2)):
        changed = copy.deepcopy(raw)
        changed["sample"]["n_samples"] = 60
        changed[section][key] = value
        with pytest.raises(ConfigError) as err:
            run_composite(config_from_dict(changed), progress=False)
        assert f"{section}.{key}" in str(err.value), str(err.value)


def test_fourier_accelerated_composite_resumes_with_its_frozen_mass_and_length(tmp_path, untrained_flow):
    """The HMC part is built by the same factory and tuning protocol as plain HMC: with FA
    (measured kernel) and a scanned trajectory length, an extended run keeps the frozen M(p),
    eps and n_steps (its rows equal an uninterrupted run's), the file records them and the
    thermalisation's clocks (CPU-, wall-, device-s), and a changed hmc.fourier_acceleration is refused."""
    raw = toy_raw(tmp_path / "fa", untrained_flow, n_samples=16, n_chains=4, batch_size=16)
    raw["hmc"].update(n_therm=120, fourier_acceleration=True, fa_kernel="measured",
                      trajectory_length="auto")
    raw["output"]["chunk_rows"] = 4
    first = SampleFile(run_composite(config_from_dict(raw), progress=False))
    state = load_checkpoint(tmp_path / "fa" / "composite.ckpt")
    assert state["fa_mass"].shape == SHAPE and state["trajectory_scan"]
    assert first.attrs["n_steps"] == state["n_steps"] and first.attrs["fourier_acceleration"]
    for clock in ("cpu_s", "wall_s", "device_s"):  # thermalisation is part of the run's clocks
        for rec in (first.attrs, state):
            assert 0 < rec[f"therm_{clock}"] <= rec[clock], clock
    assert first.attrs["device_kind"] == state["device_kind"] == "cpu"
    raw["sample"]["n_samples"] = 32
    longer = SampleFile(run_composite(config_from_dict(raw), progress=False))
    assert longer.attrs["therm_wall_s"] == first.attrs["therm_wall_s"]  # kept by the resume
    assert longer.attrs["wall_s"] > first.attrs["wall_s"]
    raw["output"]["dir"] = str(tmp_path / "fa_whole")
    assert_same_samples(run_composite(config_from_dict(raw), progress=False), longer.path)
    changed = copy.deepcopy(raw)
    changed["output"]["dir"] = str(tmp_path / "fa")
    changed["sample"]["n_samples"] = 48
    changed["hmc"].update(fourier_acceleration=False, n_therm=140)  # 140: enough for the scan
    with pytest.raises(ConfigError) as err:
        run_composite(config_from_dict(changed), progress=False)
    assert "hmc.fourier_acceleration" in str(err.value), str(err.value)
