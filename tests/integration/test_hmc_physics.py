"""HMC physics against exact free-field results, the published tutorial-point value, an
independent reference sampler and exact HMC identities.

Tolerances are statistical: |z| below a Sidak-corrected threshold for the checks of a test, with
sigma from the Gamma-method (docs/conventions.md "Statistics"); seeds are fixed so the outcome is
reproducible. ALPHA is the family-wise probability that a correct code fails a test on a new seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lattice_flows.config import config_from_dict, config_from_yaml_text
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.estimates import derived, gamma_method
from lattice_flows.theory.free_field import exact_susceptibility, exact_two_point
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import family_sigma, sidak_z

ALPHA = 1e-3  # family-wise false-alarm probability of the tutorial-point test


def _run(tmp_path, shape, m2, lam, n_chains, n_traj, seed, n_steps=8, integrator="leapfrog",
         n_therm=200):
    cfg = config_from_dict({
        "lattice": {"shape": list(shape)},
        "action": {"m2": m2, "lam": lam},
        "seed": seed,
        "device": "cpu",
        "dtype": "float64",
        "hmc": {"n_chains": n_chains, "n_therm": n_therm, "n_traj": n_traj, "n_steps": n_steps,
                "integrator": integrator},
        "output": {"dir": str(tmp_path / f"run_{m2}_{lam}_{integrator}"), "chunk_rows": 500},
    })
    return SampleFile(run_hmc(cfg, progress=False))


@pytest.mark.parametrize("m2,integrator", [(1.0, "leapfrog"), (0.25, "omelyan")])
def test_free_field_exact_results(tmp_path, m2, integrator):
    shape = (8, 8)
    sf = _run(tmp_path, shape, m2, 0.0, n_chains=32, n_traj=1000, seed=5, integrator=integrator)
    G_exact = exact_two_point(shape, m2).numpy()
    checks = {
        "chi2": (sf.observable("chi2"), exact_susceptibility(m2)),
        "action_density": (sf.observable("action_density"), 0.5),
    }
    G = sf.observable("G")
    for t in range(shape[1] // 2 + 1):
        checks[f"G(0,{t})"] = (G[:, :, 0, t], G_exact[0, t])
    checks["G(2,3)"] = (G[:, :, 2, 3], G_exact[2, 3])
    z_max = family_sigma(len(checks))  # 3 sigma, Sidak-corrected for the number of checks
    for name, (data, exact) in checks.items():
        est = gamma_method(data)
        z = (est.value - exact) / est.error
        assert abs(z) < z_max, f"{name}: {est.value:.5g} +- {est.error:.2g} vs exact {exact:.5g} (z = {z:.2f})"
        assert est.error < 0.05 * abs(exact) + 1e-3, f"{name}: error {est.error} too large to be a test"


def metropolis_reference(L: int, m2: float, lam: float, n_chains: int, n_sweeps: int,
                         n_therm: int, seed: int, delta: float = 1.0) -> np.ndarray:
    """Magnetisation per sweep, shape (n_sweeps, n_chains), of a local Metropolis sampler of the
    2D action (docs/conventions.md "Action"), written here in numpy and sharing no code with the
    package: the independent reference for the HMC. A site's share of S is

        s(phi) = (2d + m2) phi^2 - 2 phi h + lam phi^4,   h = sum of the 2d neighbours,

    updated on the two checkerboard colours in turn (so the neighbours are fixed), proposal
    phi + delta U(-1, 1), accepted with min(1, exp(-ds))."""
    rng = np.random.default_rng(seed)
    phi = 0.1 * rng.standard_normal((n_chains, L, L))
    x, y = np.indices((L, L))
    colours = [(x + y) % 2 == c for c in (0, 1)]
    a = 4.0 + m2
    M = np.empty((n_sweeps, n_chains))
    for t in range(n_therm + n_sweeps):
        for colour in colours:
            h = (np.roll(phi, 1, 1) + np.roll(phi, -1, 1) + np.roll(phi, 1, 2)
                 + np.roll(phi, -1, 2))
            new = phi + delta * rng.uniform(-1.0, 1.0, phi.shape)
            ds = a * (new**2 - phi**2) - 2 * h * (new - phi) + lam * (new**4 - phi**4)
            phi = np.where(colour & (rng.random(phi.shape) < np.exp(-ds)), new, phi)
        if t >= n_therm:
            M[t - n_therm] = phi.mean(axis=(1, 2))
    return M


def binder(M2, M4):
    """U4 = 1 - <M^4> / (3 <M^2>^2) on pyerrors Obs (Gamma-method for derived observables)."""
    return 1 - M4 / (3 * M2 * M2)


def creutz_trajectories(sf: SampleFile, every: int, seed: int):
    """One fresh trajectory from each ``every``-th saved configuration of ``sf`` with the run's
    frozen step size, n_steps, jitter and integrator: returns (dH, accept_prob), each of shape
    (rows, chains). One batch per row, so every row draws its own number of steps, as in
    production."""
    cfg = config_from_yaml_text(sf.attrs["config"])
    h = cfg.hmc
    action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
    gen = torch.Generator().manual_seed(seed)
    hmc = HMC(action, float(sf.attrs["step_size"]), h.n_steps, h.integrator, h.jitter, gen)
    configs = sf.configs()[::every]
    dHs, probs = [], []
    for row in configs:
        phi = torch.from_numpy(np.asarray(row, dtype=np.float64))
        n = hmc.draw_n_steps()
        pi = torch.randn(phi.shape, generator=gen, dtype=torch.float64)
        phi1, pi1 = hmc.integrate(phi, pi, hmc.step_size, n)
        dH = (hmc.hamiltonian(phi1, pi1) - hmc.hamiltonian(phi, pi)).numpy()
        dHs.append(dH)
        probs.append(np.minimum(1.0, np.exp(-dH)))
    return np.array(dHs), np.array(probs)


def test_tutorial_point_reproduces_published_chi2(tmp_path):
    """L=8, m2=-4, lam=8 (docs/conventions.md "Standard test points"), five checks at ALPHA:

    1. chi2 against Albergo et al. 2021 (arXiv:2101.08176), 0.75 +- 0.01: both errors combined;
    2. chi2 and 3. U4 against the independent local Metropolis sampler above (Gamma-method
       errors of both runs combined; U4 as a derived observable);
    4. <exp(-dH)> = 1 (Creutz 1988: exact for a reversible, volume-preserving integrator, with
       phi from the target and fresh momenta);
    5. the production acceptance equals <min(1, exp(-dH))> at the frozen step size (the
       acceptance probability the sampler promises).
    """
    sf = _run(tmp_path, (8, 8), -4.0, 8.0, n_chains=64, n_traj=2000, seed=1, n_steps=10)
    k = sidak_z(ALPHA, 5)
    V = 64
    M2, M4 = sf.observable("M2"), sf.observable("M4")
    chi2 = gamma_method(sf.observable("chi2"))
    U4 = derived(binder, [M2, M4])
    assert chi2.error < 0.01  # smaller than the published error: the check has power

    M_ref = metropolis_reference(8, -4.0, 8.0, n_chains=64, n_sweeps=4000, n_therm=200, seed=2)
    chi2_ref = gamma_method(V * M_ref**2)
    U4_ref = derived(binder, [M_ref**2, M_ref**4])
    # the reference is long against its autocorrelation, so its error can be trusted
    assert 50 * chi2_ref.tau_int < M_ref.shape[0], chi2_ref

    dH, prob = creutz_trajectories(sf, every=10, seed=3)
    exp_mdH = gamma_method(np.exp(-dH))
    p_acc = gamma_method(prob)
    acc = gamma_method(sf.accepted().astype(np.float64))

    checks = {
        "chi2 vs published": (chi2.value - 0.75, math.hypot(chi2.error, 0.01)),
        "chi2 vs Metropolis": (chi2.value - chi2_ref.value, math.hypot(chi2.error, chi2_ref.error)),
        "U4 vs Metropolis": (U4.value - U4_ref.value, math.hypot(U4.error, U4_ref.error)),
        "<exp(-dH)> - 1": (exp_mdH.value - 1.0, exp_mdH.error),
        "acceptance vs <min(1, exp(-dH))>": (acc.value - p_acc.value, math.hypot(acc.error, p_acc.error)),
    }
    report = {name: (d, e, d / e) for name, (d, e) in checks.items()}
    for name, (d, e, z) in report.items():
        assert e > 0 and abs(z) < k, f"{name}: difference {d:.4g} +- {e:.2g} (z = {z:.2f} > {k:.2f}); all: {report}"
    assert np.isfinite(sf.action()).all()
