"""HMC physics against exact free-field results and the published tutorial-point value.

Tolerances are statistical: |measured - exact| < 3 sigma with sigma from the Gamma-method
(CONVENTIONS.md "Statistics"); seeds are fixed so the outcome is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lattice_flows.config import config_from_dict
from lattice_flows.io.hdf5 import SampleFile
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.statistics import gamma_method
from lattice_flows.theory.free_field import exact_susceptibility, exact_two_point
from tests.conftest import family_sigma


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


def test_tutorial_point_reproduces_published_chi2(tmp_path):
    """Albergo et al. 2021 (arXiv:2101.08176): chi2 = 0.75 +- 0.01 at L=8, m2=-4, lam=8."""
    sf = _run(tmp_path, (8, 8), -4.0, 8.0, n_chains=64, n_traj=2000, seed=1, n_steps=10)
    est = gamma_method(sf.observable("chi2"))
    combined = math.hypot(est.error, 0.01)
    assert abs(est.value - 0.75) < combined, (est, combined)
    assert est.error < 0.01
    # unimodal symmetric phase: Binder cumulant small (CONVENTIONS.md: U4 ~ 0.08)
    M2, M4 = sf.observable("M2"), sf.observable("M4")
    U4 = 1 - M4.mean() / (3 * M2.mean() ** 2)
    assert 0.0 < U4 < 0.2
    acc = sf.accepted().mean()
    assert 0.65 < acc < 0.95  # tuned toward 0.8 during thermalisation
    assert np.isfinite(sf.action()).all()
