"""Importance-weight diagnostics of a flow: Pareto k̂, max w / Σw, N_eff, longest rejection run.

docs/conventions.md, "Flow quality at scale": the Γ-method (or delta-method) error of an
independence-Metropolis or reweighted average assumes that the tail of the weights
w = exp(log w), log w = −S − log q, has been sampled. These diagnostics say when it has not:

* **Pareto k̂** of the largest weights (PSIS, arXiv:1507.02646; the fit:
  :mod:`lattice_flows.pareto`): k̂ < 0.5: fine; 0.5–0.7: usable with care; > 0.7: estimate and
  error are not to be trusted; k̂ > 1 − 1/log10(N) flags a run too short for its tail even at
  k̂ < 0.7.
* **max w / Σw**: the weight of the single largest sample; near 1 one draw is the estimate.
* **N_eff = (Σw)² / Σw²** (= N · ESS/N, docs/conventions.md "Statistics").
* **Longest rejection run** of an independence-Metropolis chain against the chain length N: a
  chain stuck for r steps has τ_int ≳ r/2 over that stretch, and the Γ-method needs
  N ≥ 100 τ_int (Wolff 2004), so r > N/50 flags the chain as too short. From a state of large weight
  w a proposal is accepted with probability E_q[min(1, w'/w)] ≈ mean(w)/w, so the chain stays
  about w/mean(w) = N w/Σw steps: r/N is roughly that state's share of the total weight, and
  the flag also says that one draw holds more than ~2 % of it.

Zero weights (log w = −∞: the target density vanishes, e.g. S = +∞) are legitimate samples and
count in N. NaN or log w = +∞ is a failure of the flow: counted separately (``n_failed``),
excluded from the sums, and flagged.

Example::

    >>> import numpy as np
    >>> d = weight_diagnostics(np.random.default_rng(0).normal(0, 0.3, 4000))
    >>> d.khat < 0.5 and not d.flags
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from lattice_flows.pareto import KHAT_BAD, KHAT_CARE, khat_threshold, tail_khat, tail_length

STUCK_FRACTION = 1 / 50  # longest rejection run > N/50 <=> N < 100 tau_int with tau_int ~ r/2


def longest_false_run(accepted: np.ndarray) -> np.ndarray:
    """Per column, the longest run of consecutive False (rejections) in ``accepted`` (rows, cols)."""
    a = np.asarray(accepted, dtype=bool)
    if a.ndim == 1:
        a = a[:, None]
    best = np.zeros(a.shape[1], dtype=np.int64)
    cur = np.zeros(a.shape[1], dtype=np.int64)
    for row in a:
        cur = np.where(row, 0, cur + 1)
        best = np.maximum(best, cur)
    return best


@dataclass
class WeightDiagnostics:
    """Diagnostics of N importance weights (module docstring); ``flags`` lists what fails."""

    n: int  # draws, zero weights included, failed draws excluded
    n_zero: int  # log w = -inf
    n_failed: int  # NaN or +inf
    ess: float  # N_eff = (sum w)^2 / sum w^2
    ess_fraction: float  # ESS/N
    khat: float
    khat_threshold: float  # min(0.7, 1 - 1/log10 N)
    max_weight_fraction: float  # max w / sum w
    longest_rejection_run: int | None = None  # steps (or saved rows) of the worst chain
    chain_length: int | None = None  # steps (or saved rows) per chain
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def trustworthy(self) -> bool:
        return not self.flags


def flags_for(khat: float, n: int, n_failed: int = 0, longest_run: int | None = None,
              chain_length: int | None = None) -> list[str]:
    """The failed checks: 'khat>0.7', 'khat>1-1/log10(N)' (too few draws for this tail),
    'stuck' (longest rejection run > N/50), 'failed' (NaN/+inf draws), 'no-khat' (too few)."""
    out = []
    if not math.isfinite(khat) and not (khat == -math.inf):
        out.append("no-khat")
    elif khat > KHAT_BAD:
        out.append("khat>0.7")
    elif khat > khat_threshold(n):
        out.append("khat>1-1/log10(N)")
    if longest_run is not None and chain_length and longest_run > STUCK_FRACTION * chain_length:
        out.append("stuck")
    if n_failed:
        out.append("failed")
    return out


def weight_diagnostics(log_w: np.ndarray, accepted: np.ndarray | None = None,
                       prior: bool = True) -> WeightDiagnostics:
    """All diagnostics of the log-weights ``log_w`` (any shape; all draws of a run) and, for an
    independence-Metropolis chain, of its ``accepted`` flags (steps or saved rows, chains): one
    :class:`WeightAccumulator` pass over everything."""
    lw = np.asarray(log_w, dtype=np.float64).ravel()
    a = None if accepted is None else np.asarray(accepted, dtype=bool)
    if a is not None and a.ndim == 1:
        a = a[:, None]
    acc = WeightAccumulator(lw.size, 1 if a is None else a.shape[1])
    acc.add(lw)
    if a is not None:
        acc.add_accepted(a)
    return acc.result(prior=prior, chain=a is not None)


def care_note(d: WeightDiagnostics | dict, what: str = "flow weights") -> str | None:
    """A note (not a flag) when 0.5 < k̂ <= 0.7 passes every check: usable with care."""
    d = d if isinstance(d, dict) else d.as_dict()
    k = d.get("khat")
    if k is None or not math.isfinite(k) or not KHAT_CARE < k <= KHAT_BAD or "khat>0.7" in (d.get("flags") or []):
        return None
    return (f"{what}: Pareto k̂ = {k:.2f} is in 0.5-0.7: Var(w) is infinite or nearly so; the "
            "averages are usable with care, their errors may be too small (arXiv:1507.02646).")


def describe(d: WeightDiagnostics | dict, what: str = "flow weights") -> list[str]:
    """One warning line per failed check of ``d`` (empty when all pass), for tables and logs."""
    d = d if isinstance(d, dict) else d.as_dict()
    lines = []
    flags = list(d.get("flags") or [])
    k, n = d.get("khat"), d.get("n")
    if "khat>0.7" in flags:
        lines.append(
            f"{what}: Pareto k̂ = {k:.2f} > 0.7 (max w/Σw = {d.get('max_weight_fraction'):.3g}, "
            f"N_eff = {d.get('ess'):.4g} of N = {n}): the tail of the weights is not sampled; "
            "reweighted and flow-MCMC averages AND their errors are not to be trusted "
            "(arXiv:1507.02646). Train the flow better.")
    if "khat>1-1/log10(N)" in flags:
        need = 10 ** (1 / (1 - k)) if k < 1 else math.inf
        lines.append(
            f"{what}: Pareto k̂ = {k:.2f} needs N > 10^(1/(1-k̂)) = {need:.3g} draws, have {n}: "
            "too short to trust; run longer (or train the flow better).")
    if "stuck" in flags:
        lines.append(
            f"{what}: longest rejection run {d.get('longest_rejection_run')} of "
            f"{d.get('chain_length')} per chain (> 1/50 of it, i.e. N < 100 τ_int): too short "
            "to trust; run longer (or train the flow better).")
    if "failed" in flags:
        lines.append(f"{what}: {d.get('n_failed')} draws with log w = NaN/+inf (a broken flow) "
                     "were excluded; the flow is not reliable.")
    if "no-khat" in flags:
        lines.append(f"{what}: too few non-zero weights (N = {n}) for a Pareto k̂.")
    return lines


class WeightAccumulator:
    """Streaming :func:`weight_diagnostics` of proposals over a production run of known size:
    running Σw and Σw² (log space), zero/failed counts, the largest M = :func:`tail_length`
    (N_total) log-weights for k̂, and per chain the current and longest rejection run. Its
    :meth:`state` goes into the production checkpoint, so a resumed run ends with the same
    figures as an uninterrupted one."""

    def __init__(self, n_total: int, n_chains: int):
        self.n_total = int(n_total)
        self.m = tail_length(self.n_total) + 1  # the tail and its threshold
        self.n = self.n_zero = self.n_failed = 0
        self.log_s1 = self.log_s2 = -math.inf
        self.log_max = -math.inf
        self.top = np.empty(0, dtype=np.float64)
        self.run = np.zeros(n_chains, dtype=np.int64)
        self.longest = np.zeros(n_chains, dtype=np.int64)
        self.steps = 0

    def resize(self, n_total: int) -> None:
        """A resumed run with a changed length: keep the largest M of the new total from now on
        (the tail kept so far is the old M; the fit uses what is there)."""
        self.n_total = int(n_total)
        self.m = max(self.m, tail_length(self.n_total) + 1)

    def add(self, log_w: np.ndarray) -> None:
        lw = np.asarray(log_w, dtype=np.float64).ravel()
        bad = np.isnan(lw) | np.isposinf(lw)
        self.n_failed += int(bad.sum())
        lw = lw[~bad]
        self.n += lw.size
        self.n_zero += int(np.isneginf(lw).sum())
        pos = lw[np.isfinite(lw)]
        if pos.size:
            self.log_s1 = float(np.logaddexp(self.log_s1, _logsumexp(pos)))
            self.log_s2 = float(np.logaddexp(self.log_s2, _logsumexp(2 * pos)))
            self.log_max = max(self.log_max, float(pos.max()))
        both = np.concatenate([self.top, lw])
        self.top = np.sort(both)[-self.m:] if both.size > self.m else np.sort(both)

    def add_accepted(self, accepted: np.ndarray) -> None:
        """Accept flags (steps, chains) of the next steps, in order."""
        for row in np.asarray(accepted, dtype=bool).reshape(-1, self.run.size):
            self.run = np.where(row, 0, self.run + 1)
            self.longest = np.maximum(self.longest, self.run)
            self.steps += 1

    def result(self, prior: bool = True, chain: bool = True) -> WeightDiagnostics:
        n = self.n
        if n - self.n_zero > 0:
            ess = math.exp(2 * self.log_s1 - self.log_s2)
            max_frac = math.exp(self.log_max - self.log_s1)
        else:
            ess, max_frac = 0.0, math.nan
        m = min(tail_length(n), self.top.size - 1) if n else 0
        khat = tail_khat(self.top[-(m + 1):], prior) if 5 <= m < n else math.nan
        run = int(self.longest.max()) if chain and self.steps else None
        length = self.steps if chain and self.steps else None
        return WeightDiagnostics(
            n=n, n_zero=self.n_zero, n_failed=self.n_failed, ess=ess,
            ess_fraction=ess / n if n else math.nan, khat=khat, khat_threshold=khat_threshold(n),
            max_weight_fraction=max_frac, longest_rejection_run=run, chain_length=length,
            flags=flags_for(khat, n, self.n_failed, run, length),
        )

    def state(self) -> dict:
        return {"n_total": self.n_total, "n": self.n, "n_zero": self.n_zero,
                "n_failed": self.n_failed, "log_s1": self.log_s1, "log_s2": self.log_s2,
                "log_max": self.log_max, "top": self.top.copy(), "run": self.run.copy(),
                "longest": self.longest.copy(), "steps": self.steps}

    @classmethod
    def from_state(cls, state: dict) -> "WeightAccumulator":
        acc = cls(int(state["n_total"]), len(state["run"]))
        for k in ("n", "n_zero", "n_failed", "steps"):
            setattr(acc, k, int(state[k]))
        for k in ("log_s1", "log_s2", "log_max"):
            setattr(acc, k, float(state[k]))
        acc.top = np.asarray(state["top"], dtype=np.float64)
        acc.run = np.asarray(state["run"], dtype=np.int64)
        acc.longest = np.asarray(state["longest"], dtype=np.int64)
        return acc


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + math.log(float(np.exp(x - m).sum()))


def as_attrs(d: WeightDiagnostics, prefix: str = "weights_") -> dict:
    """Flat HDF5-attribute form: ``weights_khat``, ..., ``weights_flags`` (comma-separated;
    '' when every check passes); None fields are left out."""
    out = {}
    for k, v in d.as_dict().items():
        if k == "flags":
            out[prefix + k] = ",".join(v)
        elif v is not None:
            out[prefix + k] = v
    return out


def from_attrs(attrs: dict, prefix: str = "weights_") -> dict | None:
    """The dict :func:`as_attrs` wrote (flags as a list), or None when the file has none."""
    if prefix + "khat" not in attrs:
        return None
    out = {}
    for k, v in attrs.items():
        if str(k).startswith(prefix):
            key = str(k)[len(prefix):]
            v = v.item() if hasattr(v, "item") else v
            out[key] = ([f for f in str(v).split(",") if f] if key == "flags" else v)
    return out
