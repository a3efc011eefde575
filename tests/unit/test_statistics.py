"""Gamma-method against exactly known autocorrelations, ESS against closed forms."""

import math

import numpy as np
import pytest

from lattice_flows.statistics import (
    ar1_tau_int, derived, effective_mass, effective_sample_size, gamma_method,
)


def ar1(a: float, n: int, n_chains: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n_chains))
    eps = rng.normal(size=(n, n_chains))
    x[0] = eps[0] / math.sqrt(1 - a * a)  # stationary start
    for t in range(1, n):
        x[t] = a * x[t - 1] + eps[t]
    return x


@pytest.mark.parametrize("a", [0.0, 0.5, 0.8, 0.9])
def test_gamma_method_reproduces_ar1_tau_int(a):
    x = ar1(a, 20000, 4, seed=int(a * 100))
    est = gamma_method(x)
    exact = ar1_tau_int(a)
    # the Gamma-method reports its own statistical error of tau_int (Madras-Sokal formula)
    assert abs(est.tau_int - exact) < 3 * est.tau_int_error, (est, exact)
    # the error of the mean matches the exact asymptotic variance 2 tau_int Var(x) / N
    var_x = 1 / (1 - a * a)
    exact_err = math.sqrt(2 * exact * var_x / x.size)
    assert est.error == pytest.approx(exact_err, rel=0.15)
    assert abs(est.value) < 4 * exact_err


def test_derived_observable_error_propagation():
    """f(<A>,<B>) = <A>/<B> of independent normal data: error from linear propagation."""
    rng = np.random.default_rng(3)
    n = 40000
    A = rng.normal(2.0, 1.0, size=(n, 2))
    B = rng.normal(4.0, 1.0, size=(n, 2))
    est = derived(lambda a, b: a / b, [A, B])
    N = A.size
    expected = math.sqrt((1 / 4) ** 2 / N + (2 / 16) ** 2 / N)
    assert est.value == pytest.approx(0.5, abs=4 * expected)
    assert est.error == pytest.approx(expected, rel=0.1)


def test_ess_closed_forms():
    assert effective_sample_size(np.zeros(100)) == pytest.approx(1.0)
    # one weight dominates completely
    lw = np.full(100, -1e4)
    lw[3] = 0.0
    assert effective_sample_size(lw) == pytest.approx(0.01)
    # log-normal weights: ESS/N -> exp(-sigma^2)
    rng = np.random.default_rng(0)
    sigma = 0.5
    lw = rng.normal(0, sigma, size=400000) + 1000.0  # shift: must be computed in log space
    assert effective_sample_size(lw) == pytest.approx(math.exp(-sigma**2), rel=0.01)


def test_effective_mass_of_cosh():
    L, m = 16, 0.4
    t = np.arange(L)
    C = np.cosh(m * (t - L / 2))
    meff = effective_mass(C)
    np.testing.assert_allclose(meff, m, rtol=1e-10)
