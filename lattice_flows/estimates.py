"""Error analysis: the Gamma-method (Wolff 2004, hep-lat/0306017) via pyerrors, and flow ESS.

Conventions (docs/conventions.md, "Statistics"):

* Errors of MCMC averages use the Gamma-method with automatic windowing, S = 1.5; tau_int is
  reported with its error. tau_int follows Wolff's normalisation: tau_int = 1/2 + sum_{t>=1}
  rho(t), so uncorrelated data have tau_int = 1/2 and an AR(1) process x_t = a x_{t-1} + noise
  has tau_int = (1 + a) / (2 (1 - a)).
* Independent chains of one run are replicas of one ensemble (pyerrors names ``ens|r<k>``); the
  Gamma-method combines them.
* Derived quantities (chi2 = V <M^2>, U4, m_eff) are functions of primary averages; their errors
  come from pyerrors' automatic linear error propagation, which is the Gamma-method for derived
  observables (Wolff 2004, section 3).
* Flow quality: ESS/N = (sum w)^2 / (N sum w^2) with w = exp(log_w), computed in log space.
  log w = -inf is a zero weight and counts in N (ESS, log Z); NaN or +inf is a failed draw:
  ESS is then NaN and the reweighting functions raise. Tail diagnostics (Pareto k-hat, max w /
  sum w, rejection runs): :mod:`lattice_flows.weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_S = 1.5


@dataclass(frozen=True)
class Estimate:
    """A Gamma-method estimate: value +- error, tau_int +- its error, and the summation window."""

    value: float
    error: float
    tau_int: float
    tau_int_error: float
    window: int

    def as_dict(self) -> dict[str, float]:
        return {
            "value": self.value,
            "error": self.error,
            "tau_int": self.tau_int,
            "tau_int_error": self.tau_int_error,
            "window": self.window,
        }


def _pyerrors():
    import pyerrors as pe  # imported lazily: it pulls in pandas and scipy

    return pe


def make_obs(samples: np.ndarray, ensemble: str = "ens"):
    """A pyerrors Obs from ``samples`` of shape (n_saved, n_chains): each chain one replica."""
    pe = _pyerrors()
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must have shape (n_saved, n_chains), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 saved configurations per chain, got {x.shape[0]}")
    reps = [np.ascontiguousarray(x[:, c]) for c in range(x.shape[1])]
    names = [f"{ensemble}|r{c}" for c in range(x.shape[1])]
    return pe.Obs(reps, names)


def estimate_obs(obs, S: float = DEFAULT_S) -> Estimate:
    """Run the Gamma-method on a (primary or derived) pyerrors Obs and summarise it."""
    obs.gamma_method(S=S)
    names = list(obs.e_tauint)
    if names:
        # a single ensemble per run; for several, report the largest tau_int
        key = max(names, key=lambda n: obs.e_tauint[n])
        tau = float(obs.e_tauint[key])
        dtau = float(obs.e_dtauint[key])
        window = int(obs.e_windowsize[key])
    else:
        tau, dtau, window = 0.5, 0.0, 0
    return Estimate(float(obs.value), float(obs.dvalue), tau, dtau, window)


def gamma_method(samples: np.ndarray, S: float = DEFAULT_S) -> Estimate:
    """Mean of ``samples`` (n_saved, n_chains) with Gamma-method error and tau_int."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if np.ptp(x) == 0.0:
        return Estimate(float(x.mean()), 0.0, 0.5, 0.0, 0)
    return estimate_obs(make_obs(x), S=S)


def derived(
    func: Callable[..., object], samples: Sequence[np.ndarray], S: float = DEFAULT_S
) -> Estimate:
    """Gamma-method estimate of func(<A>, <B>, ...) for primary samples A, B, ...

    ``func`` receives pyerrors Obs objects and must use their arithmetic (``+ - * /``,
    ``np.log``, ``obs.arccosh()``...), so errors propagate linearly through it.
    """
    obs = [make_obs(s) for s in samples]
    return estimate_obs(func(*obs), S=S)


def _log_weights(log_w: np.ndarray, what: str) -> np.ndarray:
    """log w as float64, flat. log w = -inf is a zero weight (a legitimate sample: it counts in
    N); NaN or +inf is a failed draw and raises (docs/conventions.md "Statistics")."""
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    bad = np.isnan(lw) | np.isposinf(lw)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} of {lw.size} log-weights are NaN or +inf (failed draws of "
            "a broken flow); remove them explicitly and report how many "
            "(lattice_flows.weights.weight_diagnostics counts them as n_failed)."
        )
    return lw


def effective_sample_size(log_w: np.ndarray) -> float:
    """ESS/N = (sum w)^2 / (N sum w^2), w = exp(log_w), in log space (docs/conventions.md).

    N counts every draw: log w = -inf is a zero weight and lowers ESS/N. A draw with log w = NaN
    or +inf is a failure: the result is NaN (never a number that looks fine), so the caller sees
    it; :func:`lattice_flows.weights.weight_diagnostics` counts such draws. All weights zero: 0.
    """
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    n = lw.size
    if n == 0 or (np.isnan(lw) | np.isposinf(lw)).any():
        return float("nan")
    pos = lw[np.isfinite(lw)]
    if pos.size == 0:
        return 0.0
    w = np.exp(pos - pos.max())
    return float(w.sum() ** 2 / (n * (w * w).sum()))


def ar1_tau_int(a: float) -> float:
    """Exact tau_int = (1 + a) / (2 (1 - a)) of an AR(1) process (Wolff normalisation)."""
    if not -1 < a < 1:
        raise ValueError("AR(1) coefficient must be in (-1, 1)")
    return (1 + a) / (2 * (1 - a))


def effective_mass(C: np.ndarray) -> np.ndarray:
    """m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))] for t = 1..len(C)-2 (NaN where undefined)."""
    C = np.asarray(C, dtype=np.float64)
    ratio = (C[:-2] + C[2:]) / (2 * C[1:-1])
    with np.errstate(invalid="ignore"):
        return np.where(ratio >= 1, np.arccosh(np.maximum(ratio, 1.0)), math.nan)


@dataclass(frozen=True)
class Reweighted:
    """Self-normalised importance-sampling estimate <O>_p = sum w O / sum w with its error."""

    value: float
    error: float


def reweighted_mean(values: np.ndarray, log_w: np.ndarray) -> Reweighted:
    """Self-normalised reweighting of independent samples (delta-method error):

        <O> = sum_i w_i O_i / sum_i w_i,   var <O> = sum_i w_i^2 (O_i - <O>)^2 / (sum_i w_i)^2

    Zero weights (log w = -inf) contribute nothing (their O may even be non-finite); NaN or
    +inf log-weights raise ValueError (failed draws must be removed and counted by the caller).
    """
    lw = _log_weights(log_w, "reweighted_mean")
    x = np.asarray(values, dtype=np.float64).reshape(lw.size, -1)
    ok = np.isfinite(lw)
    if not ok.any():
        raise ValueError(f"reweighted_mean: all {lw.size} weights are zero (log w = -inf).")
    lw, x = lw[ok], x[ok]
    w = np.exp(lw - lw.max())
    w /= w.sum()
    mean = (w[:, None] * x).sum(0)
    err = np.sqrt(((w[:, None] * (x - mean)) ** 2).sum(0))
    if mean.size == 1:
        return Reweighted(float(mean[0]), float(err[0]))
    return Reweighted(mean, err)  # type: ignore[arg-type]


def _reweighting_tau(x: np.ndarray, w: np.ndarray) -> float:
    """tau_eff of :func:`reweighting_tau` for normalised-or-not weights w >= 0 (no checks)."""
    sw = w.sum()
    mean = (w * x).sum() / sw
    d2 = (x - mean) ** 2
    var_p = (w * d2).sum() / sw
    if not var_p > 0:
        return float("nan")
    return float(x.size * (w * w * d2).sum() / (2.0 * sw * sw * var_p))


def reweighting_tau(values: np.ndarray, log_w: np.ndarray, n_blocks: int = 32) -> tuple[float, float]:
    """Effective tau_int of the self-normalised reweighted mean of N independent draws, and its
    jackknife error over ``n_blocks`` contiguous blocks of draws::

        tau_eff(O) = N var<O> / (2 var_p(O)),
        var<O> = sum w^2 (O - <O>)^2 / (sum w)^2   (the error of :func:`reweighted_mean`),
        var_p(O) = sum w (O - <O>)^2 / sum w       (the reweighted variance of O)

    so that a reweighted estimate from N draws has the error of N / (2 tau_eff) independent
    samples of p, and cost per effective sample = 2 tau_eff x cost per draw, as for a Markov
    chain (docs/conventions.md, "Statistics"). Equal weights give 1/2; weights independent of O
    give 1 / (2 ESS/N) on average (Kish), which the observable-blind tables once used: an
    observable insensitive to the weights' tails costs less. Zero weights count in N; NaN or +inf
    log-weights raise ValueError.
    """
    lw = _log_weights(log_w, "reweighting_tau")
    x = np.asarray(values, dtype=np.float64).reshape(lw.size)
    ok = np.isfinite(lw)
    if not ok.any():
        raise ValueError(f"reweighting_tau: all {lw.size} weights are zero (log w = -inf).")
    w = np.where(ok, np.exp(np.where(ok, lw, 0.0) - lw[ok].max()), 0.0)
    x = np.where(ok, x, 0.0)  # a zero weight's O (may be non-finite) contributes nothing
    tau = _reweighting_tau(x, w)
    n_blocks = min(int(n_blocks), lw.size)
    if n_blocks < 2:
        return tau, float("nan")
    edges = np.linspace(0, lw.size, n_blocks + 1).astype(int)
    keep = np.ones(lw.size, dtype=bool)
    jack = []
    for a, b in zip(edges[:-1], edges[1:]):
        keep[a:b] = False
        jack.append(_reweighting_tau(x[keep], w[keep]) if w[keep].sum() > 0 else float("nan"))
        keep[a:b] = True
    jack = np.asarray(jack)
    err = math.sqrt((n_blocks - 1) / n_blocks * ((jack - jack.mean()) ** 2).sum())
    return tau, float(err)


def log_partition_function(log_w: np.ndarray) -> Reweighted:
    """log Z = log (1/N) sum_i w_i, w = exp(-S - log q) of independent flow samples, with the
    delta-method error sqrt(Var(w) / (N mean(w)^2)) = sqrt((1/ESS_frac - 1)/N).

    N counts every draw: zero weights (log w = -inf) lower mean(w) and raise Var(w)/mean(w)^2.
    NaN or +inf log-weights raise ValueError; all weights zero give log Z = -inf (error NaN).
    """
    lw = _log_weights(log_w, "log_partition_function")
    n = lw.size
    if n == 0 or np.isneginf(lw).all():
        return Reweighted(-math.inf, float("nan"))
    top = lw[np.isfinite(lw)].max()
    w = np.exp(lw - top)  # exp(-inf) = 0
    m = w.mean()
    err = float(np.sqrt(w.var(ddof=1) / (n * m * m))) if n > 1 else float("nan")
    return Reweighted(float(top + np.log(m)), err)
