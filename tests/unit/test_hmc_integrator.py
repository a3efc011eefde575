"""The HMC integrators (lattice_flows/mcmc/hmc.py): reversibility and the order of the energy
error, in float64, for leapfrog and Omelyan, on the interacting theory at the tutorial point.

* Reversibility: integrate n steps, flip pi, integrate n steps back: (phi, -pi) returns to the
  start up to rounding, |error| <= n * 8 eps64 * max|phi, pi| (a few roundings per step).
* Order: both are symmetric 2nd-order splittings, so the shadow Hamiltonian is
  H + eps^2 H_2 + eps^4 H_4 + ... and at fixed trajectory length tau

      RMS(dH) = A eps^2 (1 + O(eps^2)),   log RMS = log A + p log eps + B eps^2 + C eps^4 + ...

  with p = 2. The fit of (log A, p, B, C) over five eps values (halving from 0.05) gives p; its
  statistical error is a jackknife over independent chains, its truncation error is estimated
  by the change of p when the eps^4 term is dropped; |p - 2| < 3 sigma (Sidak-corrected over
  the two integrators) + truncation. Omelyan's constant A is smaller than leapfrog's (the
  minimum-norm choice of lambda).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lattice_flows.mcmc.hmc import HMC
from lattice_flows.theory.phi4 import Phi4Action
from tests.conftest import family_sigma

EPS64 = torch.finfo(torch.float64).eps
ACTION = Phi4Action(-4.0, 8.0, 2)
TAU = 0.5
STEP_SIZES = (0.05, 0.025, 0.0125, 0.00625, 0.003125)
N_CHAINS, N_BLOCKS = 128, 16


@pytest.fixture(scope="module")
def states():
    """Thermalised float64 configurations (independent chains) and fresh momenta."""
    gen = torch.Generator().manual_seed(17)
    hmc = HMC(ACTION, 0.1, 10, "leapfrog", 0.5, gen)
    phi = 0.1 * torch.randn((N_CHAINS, 8, 8), generator=gen, dtype=torch.float64)
    for _ in range(60):
        phi, _, _, _ = hmc.step(phi)
    pi = torch.randn(phi.shape, generator=gen, dtype=torch.float64)
    return phi, pi


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_integrator_is_reversible(states, integrator):
    phi, pi = states
    hmc = HMC(ACTION, 0.05, 20, integrator, 0.0)
    n = 40
    phi1, pi1 = hmc.integrate(phi, pi, 0.05, n)
    assert float((phi1 - phi).abs().max()) > 0.1  # it moved: the test is not trivial
    phi2, pi2 = hmc.integrate(phi1, -pi1, 0.05, n)
    scale = float(torch.cat([phi.abs(), pi.abs(), phi1.abs(), pi1.abs()]).max())
    tol = n * 8 * EPS64 * scale
    assert float((phi2 - phi).abs().max()) < tol
    assert float((-pi2 - pi).abs().max()) < tol


def _rms_dh(hmc: HMC, phi, pi) -> np.ndarray:
    """dH per chain for every step size at trajectory length TAU: shape (n_eps, n_chains)."""
    h0 = hmc.hamiltonian(phi, pi)
    out = []
    for eps in STEP_SIZES:
        phi1, pi1 = hmc.integrate(phi, pi, eps, round(TAU / eps))
        out.append((hmc.hamiltonian(phi1, pi1) - h0).numpy())
    return np.array(out)


def _fit(dh2: np.ndarray, orders: int = 2) -> np.ndarray:
    """(log A, p, B[, C]) of log RMS(dH) = log A + p log eps + B eps^2 [+ C eps^4] from the
    mean dH^2 per eps."""
    eps = np.array(STEP_SIZES)
    columns = [np.ones_like(eps), np.log(eps)] + [eps ** (2 * k) for k in range(1, orders + 1)]
    design = np.stack(columns, axis=1)
    return np.linalg.lstsq(design, 0.5 * np.log(dh2), rcond=None)[0][:3]


def _fit_with_error(dh: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit, jackknife error (blocks of chains) and truncation estimate of p."""
    blocks = np.array_split(np.arange(dh.shape[1]), N_BLOCKS)
    full = _fit((dh**2).mean(axis=1))
    jack = np.array([_fit((np.delete(dh, b, axis=1) ** 2).mean(axis=1)) for b in blocks])
    err = np.sqrt((N_BLOCKS - 1) / N_BLOCKS * ((jack - jack.mean(axis=0)) ** 2).sum(axis=0))
    truncation = abs(full[1] - _fit((dh**2).mean(axis=1), orders=1)[1])
    return full, err, truncation


@pytest.fixture(scope="module")
def fits(states):
    phi, pi = states
    return {name: _fit_with_error(_rms_dh(HMC(ACTION, 0.1, 5, name, 0.0), phi, pi))
            for name in ("leapfrog", "omelyan")}


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_energy_error_is_second_order(fits, integrator):
    (_, p, _), (_, p_err, _), truncation = fits[integrator]
    tol = family_sigma(2) * p_err + truncation
    assert abs(p - 2) < tol, f"{integrator}: dH ~ eps^{p:.6f} (tolerance {tol:.2g})"
    assert tol < 0.01, f"{integrator}: tolerance {tol} too large to be a test"


def test_omelyan_constant_is_smaller(fits):
    (log_a_lf, _, _), (err_lf, _, _), _ = fits["leapfrog"]
    (log_a_om, _, _), (err_om, _, _), _ = fits["omelyan"]
    assert log_a_om + 3 * err_om < log_a_lf - 3 * err_lf, (log_a_om, err_om, log_a_lf, err_lf)


def test_step_counts_come_from_the_host_step_generator():
    """With a step generator (chains on a GPU; here given by hand) the jittered counts are
    drawn from it, uniform in [(1-j) n, (1+j) n], and the chains' generator is left alone; a
    step generator off the CPU is refused (a host integer must not need a device sync)."""
    chains = torch.Generator().manual_seed(1)
    steps = torch.Generator().manual_seed(2)
    hmc = HMC(ACTION, 0.1, 10, "leapfrog", 0.5, chains, step_generator=steps)
    before = chains.get_state().clone()
    counts = [hmc.draw_n_steps() for _ in range(400)]
    assert torch.equal(chains.get_state(), before)
    assert min(counts) == 5 and max(counts) == 15  # all 11 values occur in 400 draws (p ~ 1e-16)
    assert counts == [int(torch.randint(5, 16, (1,), generator=g)) for g in
                      [torch.Generator().manual_seed(2)] for _ in range(400)]
    # on the CPU the chains' generator draws them (the stream of earlier versions)
    assert HMC(ACTION, 0.1, 10, "leapfrog", 0.5, chains).step_generator is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chains_on_a_gpu_get_a_host_step_generator_seeded_from_theirs():
    gen = torch.Generator(device="cuda").manual_seed(5)
    a = HMC(ACTION, 0.1, 10, "leapfrog", 0.5, gen)
    b = HMC(ACTION, 0.1, 10, "leapfrog", 0.5, torch.Generator(device="cuda").manual_seed(5))
    assert a.step_generator is not None and a.step_generator.device.type == "cpu"
    assert [a.draw_n_steps() for _ in range(20)] == [b.draw_n_steps() for _ in range(20)]
    with pytest.raises(ValueError, match="CPU generator"):
        HMC(ACTION, 0.1, 10, "leapfrog", 0.5, gen, step_generator=gen)
