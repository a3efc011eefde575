"""Pareto k̂ of importance weights: the generalized-Pareto tail fit of PSIS.

docs/conventions.md, "Flow quality at scale"; Vehtari, Simpson, Gelman, Yao & Gabry,
arXiv:1507.02646 ("PSIS"): a generalized Pareto distribution (GPD) is fitted to the largest
M = ⌈min(N/5, 3√N)⌉ weights above the threshold u = the (M+1)-th largest weight (exceedances
w − u), with the estimator of Zhang & Stephens (2009, Technometrics 51, 316) — :func:`gpd_fit`.
The GPD shape k is the tail index: the weights have finite moments of order < 1/k, so for
k > 1/2 Var(w) is infinite and the central limit theorem behind every quoted error fails.
k̂ < 0.5: fine; 0.5–0.7: usable with care; > 0.7: estimate and error are not to be trusted.
With finite N the bar is lower: k̂ < 1 − 1/log10(N) (:func:`khat_threshold`, the sample-size
dependent threshold of the same paper; equivalently N > 10^(1/(1−k̂))).

The diagnostics built on it (flags, the streaming accumulator, HDF5 attributes) are
:mod:`lattice_flows.weights`.

Example::

    >>> import numpy as np
    >>> pareto_khat(np.random.default_rng(0).normal(0, 0.3, 4000)) < 0.5
    True
"""

from __future__ import annotations

import math

import numpy as np

KHAT_BAD = 0.7  # above: not to be trusted (arXiv:1507.02646)
KHAT_CARE = 0.5  # above: usable with care
PRIOR_STRENGTH = 10  # weakly informative prior of Vehtari et al.: k -> (n k + 10 * 0.5) / (n + 10)


def gpd_fit(x: np.ndarray, prior: bool = False, min_grid_points: int = 30) -> tuple[float, float]:
    """Shape k and scale σ of a generalized Pareto distribution fitted to exceedances x > 0.

    GPD: F(x) = 1 − (1 + k x / σ)^(−1/k). Zhang & Stephens (2009): with θ = −k/σ, the profile
    log-likelihood is ℓ(θ) = n [log(θ/k(θ)) + k(θ) − 1], k(θ) = −mean log(1 − θ x); θ̂ is the
    posterior mean of θ over the grid θ_j = 1/x_(n) + (1 − √(m/(j − ½))) / (3 x*),
    j = 1..m, m = min_grid_points + ⌊√n⌋, x* = the first quartile of x, weighted by exp ℓ(θ_j);
    then k̂ = mean log(1 − θ̂ x) (sign: k > 0 heavy tail) and σ̂ = −k̂/θ̂.
    ``prior=True`` applies the weakly informative prior of Vehtari et al. (arXiv:1507.02646,
    the PSIS default): k̂ → (n k̂ + 10 · 0.5) / (n + 10), a pull towards 0.5 worth 10 samples.
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = x.size
    if n < 5 or not np.all(np.isfinite(x)) or x[0] < 0:
        raise ValueError(f"gpd_fit needs >= 5 finite exceedances >= 0, got {n} values "
                         f"(min {x.min() if n else 'n/a'})")
    if x[-1] <= 0:
        return -math.inf, 0.0  # all exceedances zero: a point mass, no tail at all
    m = min_grid_points + int(math.floor(math.sqrt(n)))
    j = np.arange(1, m + 1, dtype=np.float64)
    x_star = x[max(0, int(math.floor(n / 4 + 0.5)) - 1)]
    if x_star <= 0:
        x_star = x[x > 0][0]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * x_star)
    # k(theta) = -mean log(1 - theta x) for each grid point (1 - theta x > 0 on the grid)
    k_theta = -np.mean(np.log1p(-theta[:, None] * x[None, :]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ell = n * (np.log(theta / k_theta) + k_theta - 1.0)
    ell = np.where(np.isfinite(ell), ell, -np.inf)
    weights = np.exp(ell - ell.max())
    weights /= weights.sum()
    theta_hat = float(np.sum(theta * weights))
    k = float(np.mean(np.log1p(-theta_hat * x)))
    sigma = -k / theta_hat
    if prior:
        k = (n * k + PRIOR_STRENGTH * 0.5) / (n + PRIOR_STRENGTH)
    return k, sigma


def tail_length(n: int) -> int:
    """M = ⌈min(N/5, 3√N)⌉, the number of largest weights the Pareto fit uses (PSIS)."""
    return int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))


def pareto_khat(log_w: np.ndarray, prior: bool = True) -> float:
    """Pareto k̂ of the weights w = exp(log_w) (PSIS, arXiv:1507.02646): :func:`gpd_fit` to the
    exceedances of the largest M = :func:`tail_length` (N) weights over the (M+1)-th largest.

    Zero weights (−∞) are part of the sample (they count in N); NaN and +∞ must have been
    removed by the caller. NaN when there are too few non-zero weights for a fit (M < 5).
    """
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    if np.isnan(lw).any() or np.isposinf(lw).any():
        raise ValueError("pareto_khat: log_w contains NaN or +inf (failed draws); remove and count them")
    n = lw.size
    m = tail_length(n) if n else 0
    if m < 5 or m >= n:
        return math.nan
    return tail_khat(np.sort(lw)[n - m - 1:], prior)


def tail_khat(top: np.ndarray, prior: bool) -> float:
    """k̂ of the sorted largest M + 1 log-weights ``top`` (threshold first): :func:`gpd_fit` to
    the exceedances of the M largest weights over the threshold; NaN when they are all zero."""
    if not np.isfinite(top[-1]):
        return math.nan  # (almost) all weights zero
    w = np.exp(top - top[-1])
    return gpd_fit(w[1:] - w[0], prior=prior)[0]


def khat_threshold(n: int) -> float:
    """min(0.7, 1 − 1/log10 N): above it k̂ says the N draws are too few (arXiv:1507.02646)."""
    return KHAT_BAD if n <= 10 else min(KHAT_BAD, 1.0 - 1.0 / math.log10(n))
