"""Gamma-method against exactly known autocorrelations, ESS against closed forms.

Every tolerance is k standard errors of the quantity tested, k = sidak_z(ALPHA, n) for the n
checks of a family (tests/conftest.py): a correct implementation fails a family with
probability ALPHA on a new seed. The standard error of a Gamma-method error estimate ("the
error of the error") is Wolff's (hep-lat/0306017, eq. (42), the Madras-Sokal approximation):

    delta(sigma_F) / sigma_F = sqrt((W + 1/2) / N)

with W the summation window and N the total number of measurements; pyerrors reports the same
figure as ``Obs.e_ddvalue``. ``test_error_of_the_error_matches_the_replica_spread`` checks that
formula itself against the spread over independent replicas.
"""

import math

import numpy as np
import pytest

from lattice_flows.estimates import (
    ar1_tau_int, derived, effective_mass, effective_sample_size, gamma_method, reweighting_tau,
)
from tests.conftest import sidak_z

ALPHA = 1e-3  # family-wise false-alarm probability of each family of checks below
AR1_COEFFS = [0.0, 0.5, 0.8, 0.9]


def error_of_error(error: float, window: int, n: int) -> float:
    """Standard error of a Gamma-method error estimate: error * sqrt((W + 1/2) / N)."""
    return error * math.sqrt((window + 0.5) / n)


def ar1(a: float, n: int, n_chains: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n_chains))
    eps = rng.normal(size=(n, n_chains))
    x[0] = eps[0] / math.sqrt(1 - a * a)  # stationary start
    for t in range(1, n):
        x[t] = a * x[t - 1] + eps[t]
    return x


@pytest.mark.parametrize("a", AR1_COEFFS)
def test_gamma_method_reproduces_ar1_tau_int(a):
    x = ar1(a, 20000, 4, seed=int(a * 100))
    est = gamma_method(x)
    exact = ar1_tau_int(a)
    k = sidak_z(ALPHA, 3 * len(AR1_COEFFS))  # 3 checks for each coefficient: one family
    # the Gamma-method reports its own statistical error of tau_int (Madras-Sokal formula)
    assert abs(est.tau_int - exact) < k * est.tau_int_error, (est, exact)
    # the error of the mean matches the exact asymptotic variance 2 tau_int Var(x) / N, within
    # k standard errors of the error estimate (Wolff eq. (42))
    var_x = 1 / (1 - a * a)
    exact_err = math.sqrt(2 * exact * var_x / x.size)
    dd = error_of_error(exact_err, est.window, x.size)
    assert abs(est.error - exact_err) < k * dd, (est, exact_err, dd)
    assert abs(est.value) < k * exact_err  # exact mean 0


def test_error_of_the_error_matches_the_replica_spread():
    """The spread of the error estimate over R independent AR(1) replicas is the predicted
    sqrt((W + 1/2)/N) of it, and its mean is the exact error within its standard error.

    The sample standard deviation of R values has relative standard error 1/sqrt(2(R-1))
    (normal approximation, adequate at R = 300); the replica mean has sd/sqrt(R).
    """
    a, n, R = 0.8, 2000, 300
    x = ar1(a, n, R, seed=7)
    ests = [gamma_method(x[:, r]) for r in range(R)]
    errs = np.array([e.error for e in ests])
    windows = np.array([e.window for e in ests])
    exact = ar1_tau_int(a)
    exact_err = math.sqrt(2 * exact / (1 - a * a) / n)
    predicted_sd = error_of_error(exact_err, int(np.median(windows)), n)
    k = sidak_z(ALPHA, 2)
    sd = errs.std(ddof=1)
    assert abs(sd - predicted_sd) < k * predicted_sd / math.sqrt(2 * (R - 1)), (sd, predicted_sd)
    assert abs(errs.mean() - exact_err) < k * sd / math.sqrt(R), (errs.mean(), exact_err, sd)


def test_derived_observable_error_propagation():
    """f(<A>,<B>) = <A>/<B> of independent normal data: error from linear propagation."""
    rng = np.random.default_rng(3)
    n = 40000
    A = rng.normal(2.0, 1.0, size=(n, 2))
    B = rng.normal(4.0, 1.0, size=(n, 2))
    est = derived(lambda a, b: a / b, [A, B])
    N = A.size
    expected = math.sqrt((1 / 4) ** 2 / N + (2 / 16) ** 2 / N)
    k = sidak_z(ALPHA, 2)
    # value: the delta-method bias (2/4^3 / N ~ 4e-7) is far below the error (~ 1.4e-3)
    assert abs(est.value - 0.5) < k * expected, (est, expected)
    dd = error_of_error(expected, est.window, N)  # Wolff eq. (42)
    assert abs(est.error - expected) < k * dd, (est, expected, dd)


def test_ess_closed_forms():
    assert effective_sample_size(np.zeros(100)) == pytest.approx(1.0)
    # one weight dominates completely
    lw = np.full(100, -1e4)
    lw[3] = 0.0
    assert effective_sample_size(lw) == pytest.approx(0.01)
    # log-normal weights: ESS/N -> exp(-sigma^2)
    rng = np.random.default_rng(0)
    sigma, n = 0.5, 400000
    lw = rng.normal(0, sigma, size=n) + 1000.0  # shift: must be computed in log space
    ess = effective_sample_size(lw)
    assert abs(ess - math.exp(-sigma**2)) < sidak_z(ALPHA, 1) * lognormal_ess_error(sigma, n), ess


def lognormal_ess_error(sigma: float, n: int) -> float:
    """Standard error of ESS/N = m1^2 / m2 (m_k = mean of w^k) for n independent log-normal
    weights w = exp(N(0, sigma^2)), by the delta method with the exact moments
    E[w^k] = exp(k^2 sigma^2 / 2): var = g^T C g / n, g = (2 m1/m2, -m1^2/m2^2),
    C = [[E w^2 - m1^2, E w^3 - m1 m2], [., E w^4 - m2^2]]."""
    mom = {k: math.exp(k * k * sigma * sigma / 2) for k in (1, 2, 3, 4)}
    m1, m2 = mom[1], mom[2]
    g = np.array([2 * m1 / m2, -m1 * m1 / m2**2])
    C = np.array([[mom[2] - m1 * m1, mom[3] - m1 * m2], [mom[3] - m1 * m2, mom[4] - m2 * m2]])
    return float(math.sqrt(g @ C @ g / n))


def test_effective_mass_of_cosh():
    L, m = 16, 0.4
    t = np.arange(L)
    C = np.cosh(m * (t - L / 2))
    meff = effective_mass(C)
    np.testing.assert_allclose(meff, m, rtol=1e-10)


def test_reweighting_tau_equal_weights_is_one_half():
    """Equal weights: N var<O> = var(O), so tau_eff = 1/2 exactly, whatever O (and zero weights,
    log w = -inf, only remove draws from the sums while counting in N: tau_eff = N / (2 N_pos))."""
    x = np.random.default_rng(4).normal(size=1000)
    tau, dtau = reweighting_tau(x, np.zeros(1000))
    assert tau == pytest.approx(0.5, rel=1e-12) and dtau < 1e-12
    lw = np.zeros(1000)
    lw[:250] = -np.inf
    x[:250] = np.nan  # a zero weight's observable never enters
    assert reweighting_tau(x, lw)[0] == pytest.approx(1000 / (2 * 750), rel=1e-12)


def test_reweighting_tau_matches_closed_forms():
    """Target p = N(0, 1), draws from q = N(0, s^2), w = p/q, O = x: the delta-method variance is
    E_q[w^2 x^2] / N, so tau_eff = E_p[w x^2] / 2 = s (2 - 1/s^2)^(-3/2) / 2 (finite for
    s^2 > 1/2; below 1/2 for wide proposals, which oversample the tails that x^2 weighs). O
    independent of w: tau_eff -> 1 / (2 ESS/N) with ESS/N = (2 - 1/s^2)^(1/2) / s (Kish). Each
    figure within sidak_z of its jackknife error (4 checks); s^2 > 3/4, where E_q[w^4] is finite
    and the jackknife error itself converges (at s = 0.8 it is not: the estimate falls 5 errors
    short)."""
    rng = np.random.default_rng(7)
    n, z = 400_000, sidak_z(ALPHA, 4)
    for s in (0.95, 1.5):
        x = rng.normal(scale=s, size=n)
        lw = -0.5 * x**2 + 0.5 * (x / s) ** 2 + math.log(s)
        exact = s * (2 - 1 / s**2) ** -1.5 / 2
        tau, dtau = reweighting_tau(x, lw)
        assert abs(tau - exact) < z * dtau, (s, tau, dtau, exact)
        indep = rng.normal(size=n)
        kish = 0.5 * s / (2 - 1 / s**2) ** 0.5
        tau, dtau = reweighting_tau(indep, lw)
        assert abs(tau - kish) < z * dtau, (s, tau, dtau, kish)
