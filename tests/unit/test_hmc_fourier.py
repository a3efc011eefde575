"""Fourier-accelerated HMC (lattice_flows/mcmc/hmc.py with mass kernels from
lattice_flows/mcmc/fourier_mass.py, tuned by lattice_flows/mcmc/hmc_tuning.py); docs/conventions.md,
"Fourier-accelerated HMC" and "Exact free-field results".

* the integrator with a Fourier mass is reversible in float64 and its energy error is 2nd order;
* pi = M^(1/2) xi is a draw of N(0, M): <1/2 pi^T M^-1 pi> = V/2;
* exact free field: FA-HMC at mu^2 = m^2 and trajectory length pi/2 gives an independent draw
  every trajectory (lag-1 autocorrelation of M^2 consistent with 0), chi2 and <S>/V agree with
  the exact values, plain HMC with the same force evaluations has a much larger tau_int;
* interacting point (tutorial couplings, L = 8): FA-HMC with the free and the measured kernel
  agree with plain HMC on <|M|> and chi2;
* trajectory_length auto picks ~pi/2 on the FA free field.

Tolerances are Gamma-method (or Bartlett, for a lag-1 autocorrelation of independent draws)
errors, Sidak-corrected over the checks of a test (tests.conftest.family_sigma), or rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lattice_flows.config import ConfigError, config_from_dict
from lattice_flows.estimates import gamma_method
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.fourier_mass import (
    fit_mu2, free_mass, measured_mass, power_spectrum_sum, rfft_phat2,
)
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.theory.free_field import exact_susceptibility, phat2
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import family_sigma
from tests.unit.test_hmc_integrator import EPS64, STEP_SIZES, TAU, _fit_with_error

ACTION = Phi4Action(-4.0, 8.0, 2)
SHAPE = (8, 8)


@pytest.fixture(scope="module")
def thermalised():
    """Thermalised float64 configurations at the tutorial point (independent chains) and a
    measured FA kernel M(p) = 1/G(p) from them."""
    gen = torch.Generator().manual_seed(23)
    hmc = HMC(ACTION, 0.1, 10, "leapfrog", 0.5, gen)
    phi = 0.1 * torch.randn((128, *SHAPE), generator=gen, dtype=torch.float64)
    for _ in range(60):
        phi, _, _, _ = hmc.step(phi)
    return phi, measured_mass(power_spectrum_sum(phi, 2) / phi.shape[0]), gen


def test_free_kernel_is_the_free_field_inverse_propagator():
    """M(p) = 2 (phat^2 + mu^2) = 1/G_free(p) on the rfft half grid (rounding)."""
    m2 = 0.7
    full = 2.0 * (m2 + phat2(SHAPE))
    np.testing.assert_allclose(free_mass(SHAPE, m2).numpy(), full[:, : SHAPE[1] // 2 + 1].numpy(),
                               rtol=8 * EPS64)
    assert float(rfft_phat2(SHAPE)[0, 0]) == 0.0
    with pytest.raises(ValueError, match="mu2 > 0"):
        free_mass(SHAPE, 0.0)


def test_fit_mu2_recovers_the_free_mass():
    """An exact free propagator G = 1/(2 Z (phat^2 + mu^2)) gives back mu^2 (rounding)."""
    g = 1.0 / (2.0 * 1.3 * (rfft_phat2(SHAPE) + 0.45))
    assert fit_mu2(g, SHAPE) == pytest.approx(0.45, rel=1e3 * EPS64)


def test_measured_propagator_is_averaged_over_the_lattice_symmetries(thermalised):
    """G(p) of power_spectrum_sum: its zero mode is sum V M^2 (Parseval, rounding), and it is
    invariant under p_mu -> -p_mu and the exchange of the two equal axes (exactly)."""
    phi, _, _ = thermalised
    g = power_spectrum_sum(phi, 2)
    volume = math.prod(SHAPE)
    m = phi.mean(dim=(1, 2))
    assert float(g[0, 0]) == pytest.approx(float(volume * (m * m).sum()), rel=1e3 * EPS64)
    for k in range(SHAPE[0]):
        for j in range(SHAPE[1] // 2 + 1):
            assert float(g[k, j]) == float(g[(-k) % SHAPE[0], j])
            if k <= SHAPE[1] // 2:
                assert float(g[k, j]) == pytest.approx(float(g[j, k]), rel=8 * EPS64)


@pytest.mark.parametrize("kernel", ["free", "measured"])
@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_fa_integrator_is_reversible(thermalised, integrator, kernel):
    phi, measured, gen = thermalised
    mass = free_mass(SHAPE, 0.8) if kernel == "free" else measured
    hmc = HMC(ACTION, 0.05, 20, integrator, 0.0, gen, mass=mass)
    pi = hmc.draw_momenta(phi)
    n = 40
    phi1, pi1 = hmc.integrate(phi, pi, 0.05, n)
    assert float((phi1 - phi).abs().max()) > 0.1  # it moved: the test is not trivial
    phi2, pi2 = hmc.integrate(phi1, -pi1, 0.05, n)
    scale = float(torch.cat([phi.abs(), pi.abs(), phi1.abs(), pi1.abs()]).max())
    tol = n * 8 * EPS64 * scale * math.prod(SHAPE) ** 0.5  # FFT roundings grow ~ sqrt(V)
    assert float((phi2 - phi).abs().max()) < tol
    assert float((-pi2 - pi).abs().max()) < tol


def test_fa_energy_error_is_second_order(thermalised):
    """RMS(dH) ~ eps^p at fixed length, p = 2 within the jackknife error (Sidak over the two
    kernels) plus the truncation estimate (as tests/unit/test_hmc_integrator.py)."""
    phi, measured, gen = thermalised
    for mass in (free_mass(SHAPE, 0.8), measured):
        hmc = HMC(ACTION, 0.1, 5, "leapfrog", 0.0, gen, mass=mass)
        pi = hmc.draw_momenta(phi)
        h0 = hmc.hamiltonian(phi, pi)
        dh = []
        for eps in STEP_SIZES:
            phi1, pi1 = hmc.integrate(phi, pi, eps, round(TAU / eps))
            dh.append((hmc.hamiltonian(phi1, pi1) - h0).numpy())
        (_, p, _), (_, p_err, _), truncation = _fit_with_error(np.array(dh))
        tol = family_sigma(2) * p_err + truncation
        assert abs(p - 2) < tol, f"dH ~ eps^{p:.6f} (tolerance {tol:.2g})"
        assert tol < 0.01, f"tolerance {tol} too large to be a test"


def test_fa_momenta_are_drawn_from_n0m(thermalised):
    """K = 1/2 pi^T M^-1 pi of pi ~ N(0, M) is chi^2_V / 2: mean V/2, variance V/2."""
    phi, measured, gen = thermalised
    hmc = HMC(ACTION, 0.1, 5, "leapfrog", 0.0, gen, mass=measured)
    k = torch.cat([hmc.kinetic(hmc.draw_momenta(phi)) for _ in range(20)]).numpy()
    volume = math.prod(SHAPE)
    err = math.sqrt(volume / 2 / k.size)
    assert abs(k.mean() - volume / 2) < 3 * err, (k.mean(), err)
    assert measured.max() / measured.min() > 10  # a kernel far from the unit mass


def _free_run(tmp_path, name: str, m2: float, **hmc) -> SampleFile:
    raw = {"lattice": {"shape": list(SHAPE)}, "action": {"m2": m2, "lam": 0.0}, "seed": 5,
           "device": "cpu",
           "hmc": {"n_chains": 16, "n_therm": 60, "n_traj": 250, "n_steps": 16, **hmc},
           "output": {"dir": str(tmp_path / name), "chunk_rows": 1000}}
    return SampleFile(run_hmc(config_from_dict(raw), progress=False))


def test_fa_hmc_decorrelates_the_free_field_in_one_trajectory(tmp_path):
    """mu^2 = m^2 (fa_mu2 auto on a free field), length pi/2 = 16 x pi/32, no jitter: every
    mode turns by a quarter period, phi -> M^-1 pi, an independent draw. Checks (Sidak over 4):
    lag-1 autocorrelation of M^2 = 0 (error 1/sqrt(N), independent draws), chi2 = 1/(2 m^2),
    <S>/V = 1/2, and plain HMC with the same 16 force-steps per trajectory has a larger tau_int."""
    m2 = 0.02
    fa = _free_run(tmp_path, "fa", m2, fourier_acceleration=True, step_size=math.pi / 32,
                   trajectory_length=math.pi / 2, jitter=0.0)
    assert fa.attrs["n_steps"] == 16 and fa.attrs["fa_mu2"] == m2
    plain = _free_run(tmp_path, "plain", m2)
    z = family_sigma(4)
    m2s = fa.observable("M2")
    x = m2s - m2s.mean()
    rho1 = float((x[1:] * x[:-1]).sum() / (x * x).sum())
    assert abs(rho1) < z / math.sqrt(x.size), rho1
    chi = gamma_method(fa.observable("chi2"))
    assert abs(chi.value - exact_susceptibility(m2)) < z * chi.error, chi
    s = gamma_method(fa.observable("action_density"))
    assert abs(s.value - 0.5) < z * s.error, s
    tau_fa, tau_plain = gamma_method(m2s), gamma_method(plain.observable("M2"))
    gap = z * math.hypot(tau_fa.tau_int_error, tau_plain.tau_int_error)
    assert tau_plain.tau_int - tau_fa.tau_int > gap, (tau_plain, tau_fa)
    assert tau_plain.tau_int > 2 * tau_fa.tau_int  # "clearly": more than twice


def _tutorial_run(tmp_path, name: str, **hmc) -> SampleFile:
    raw = {"lattice": {"shape": list(SHAPE)}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 9,
           "device": "cpu",
           "hmc": {"n_chains": 16, "n_therm": 150, "n_traj": 600, "n_steps": 8, **hmc},
           "output": {"dir": str(tmp_path / name), "chunk_rows": 1000}}
    return SampleFile(run_hmc(config_from_dict(raw), progress=False))


def test_fa_hmc_agrees_with_plain_hmc_at_the_tutorial_point(tmp_path):
    """<|M|> and chi2 of FA-HMC (free kernel with fitted mu^2, measured kernel) against plain
    HMC, within the combined Gamma errors, Sidak over the 4 comparisons."""
    ref = _tutorial_run(tmp_path, "plain")
    z = family_sigma(4)
    for kernel in ("free", "measured"):
        fa = _tutorial_run(tmp_path, kernel, fourier_acceleration=True, fa_kernel=kernel)
        assert fa.attrs["fa_kernel"] == kernel and fa.attrs["acceptance"] > 0.5
        for obs in ("absM", "chi2"):
            a, b = gamma_method(fa.observable(obs)), gamma_method(ref.observable(obs))
            assert abs(a.value - b.value) < z * math.hypot(a.error, b.error), (kernel, obs, a, b)


def test_trajectory_length_auto_picks_a_quarter_period_on_the_fa_free_field(tmp_path):
    """The scan over pi/2 x 2^(k/2), k = -4..4, at eps = 0.1, picks a length within one grid
    step of pi/2 (the exact optimum of the free field under the FA kernel), and stores it
    (500 scan trajectories, ~55 per length: seeds 0-9 all chose 1.1 = 11 x eps; with ~33 per
    length one seed in ten chose 0.8)."""
    m2 = 0.5
    f = _free_run(tmp_path, "auto", m2, fourier_acceleration=True, trajectory_length="auto",
                  step_size=0.1, jitter=0.1, n_therm=1500, n_traj=2)
    chosen = f.attrs["trajectory_length"]
    assert math.pi / 2 / 2**0.5 * 0.95 <= chosen <= math.pi / 2 * 2**0.5 * 1.05, (
        chosen, list(zip(f.attrs["trajectory_scan_length"], f.attrs["trajectory_scan_cost"])))
    assert f.attrs["n_steps"] == round(chosen / 0.1)
    assert len(f.attrs["trajectory_scan_length"]) == 9


def test_scan_tau_from_a_lag_k_jump_is_the_per_trajectory_tau_of_an_exponential_decay():
    """For rho(t) = r^t the lag-k jump <dx^2> = 2 Var (1 - r^k) gives back r at every k, so
    tau_est = 1/2 + r/(1 - r) whatever the lag; rho_k <= 0 floors it at 1/2."""
    from lattice_flows.mcmc.hmc_tuning import _jump_tau

    var, n = 2.5, 1000
    for r in (0.1, 0.5, 0.9):
        want = 0.5 + r / (1 - r)
        for lag in (1, 2, 4, 6):
            got = _jump_tau(n, n * 2 * var * (1 - r**lag), var, lag)
            assert math.isclose(got, want, rel_tol=1e-8), (r, lag, got, want)  # 1 - r^k rounds
    assert _jump_tau(n, n * 2 * var * 1.3, var, 3) == 0.5
    assert _jump_tau(n, 0.0, var, 2) == math.inf


@pytest.mark.parametrize("fourier", [True, False])
def test_scan_lags_give_every_length_the_middle_lengths_horizon(fourier):
    """k_s = round(F_mid / F_s): lag 1 from the middle grid length on, longer lags below it,
    capped by the trajectories the scan gives a length."""
    from lattice_flows.mcmc.hmc_plan import TuningPlan
    from lattice_flows.mcmc.hmc_tuning import scan_lag

    plan = TuningPlan(n_therm=300, tune_eps=True, step_size=None, target=0.8, n_steps=10,
                      fourier=fourier, kernel="free", mu2=1.0, trajectory_length="auto",
                      shape=(8, 8))
    hmc = HMC(Phi4Action(-4.0, 5.0, 2), 0.05, 10)
    eps = 0.05
    lengths = plan.scan_lengths(eps)
    mid = len(lengths) // 2
    lags = [scan_lag(plan, hmc, eps, length, 100) for length in lengths]
    assert lags[mid:] == [1] * (len(lengths) - mid)
    assert lags[:mid] == sorted(lags[:mid], reverse=True) and lags[0] > 2
    f_mid = hmc.force_evaluations(round(lengths[mid] / eps))
    for length, lag in zip(lengths, lags):
        assert lag == max(1, round(f_mid / hmc.force_evaluations(round(length / eps))))
    assert scan_lag(plan, hmc, eps, lengths[0], 2) == 2


def test_too_short_thermalisation_for_fa_tuning_is_refused(tmp_path):
    raw = {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "device": "cpu",
           "hmc": {"n_therm": 20, "fourier_acceleration": True, "fa_kernel": "measured"},
           "output": {"dir": str(tmp_path / "x")}}
    with pytest.raises(ConfigError) as info:
        run_hmc(config_from_dict(raw), progress=False)
    assert str(info.value) == (
        "config key 'hmc.n_therm': value 20 is too small for fa_kernel 'measured'; expected at "
        "least 30 thermalisation trajectories (a third of them measure the propagator G(p)), or "
        "give a numeric hmc.fa_mu2 with fa_kernel 'free'.")
    raw["hmc"].update(fa_kernel="free", fa_mu2=1.0, trajectory_length="auto", n_therm=60)
    with pytest.raises(ConfigError, match="'hmc.n_therm': value 60 is too small for "
                                          "trajectory_length 'auto'; expected at least 108"):
        run_hmc(config_from_dict(raw), progress=False)


@pytest.mark.parametrize("hmc_keys", [
    {"fourier_acceleration": True, "fa_mu2": 1.5, "trajectory_length": 1.2},
    {"fourier_acceleration": True, "fa_kernel": "measured", "n_therm": 60},
])
def test_hand_built_hmc_thermalises_like_the_factory(tmp_path, hmc_keys):
    """Producers that build ``HMC(action, _initial_step_size(cfg), n_steps, integrator, jitter,
    gen)`` themselves (the composite sampler) and call ``thermalise`` get the same FA mass,
    n_steps, eps and chains as :func:`hmc_from_config`."""
    from lattice_flows.mcmc.hmc_plan import hmc_from_config
    from lattice_flows.mcmc.hmc_run import _initial_step_size
    from lattice_flows.mcmc.hmc_thermalise import thermalise

    raw = {"lattice": {"shape": [6, 6]}, "action": {"m2": -4.0, "lam": 8.0}, "device": "cpu",
           "seed": 2, "hmc": {"n_chains": 4, "n_therm": 30, "n_steps": 6, **hmc_keys},
           "output": {"dir": str(tmp_path)}}
    cfg = config_from_dict(raw)
    out = []
    for build in ("factory", "hand"):
        gen = torch.Generator().manual_seed(4)
        if build == "factory":
            hmc = hmc_from_config(cfg, ACTION, (6, 6), gen, "cpu", torch.float64)
        else:
            h = cfg.hmc
            hmc = HMC(ACTION, _initial_step_size(cfg), h.n_steps, h.integrator, h.jitter, gen)
        phi, _ = thermalise(cfg, hmc, gen, "cpu", torch.float64, None, tmp_path / "x.ckpt",
                            tmp_path, False)
        out.append((phi, hmc.mass, hmc.n_steps, hmc.step_size))
    (phi_a, mass_a, n_a, eps_a), (phi_b, mass_b, n_b, eps_b) = out
    assert mass_a is not None and torch.equal(mass_a, mass_b)
    assert (n_a, eps_a) == (n_b, eps_b) and torch.equal(phi_a, phi_b)
