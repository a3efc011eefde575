"""Observable tables with Gamma-method errors from a sample file (used by CLI and analysis/).

Primary observables (per-configuration averages): M, |M|, M^2, M^4, chi2 = V M^2, E, S/V,
G(0, ..., 0, t) and C(t). Derived observables (functions of averages, errors by linear
propagation = Gamma-method for derived quantities, docs/conventions.md "Statistics"):
U4 = 1 - <M^4> / (3 <M^2>^2) and m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))].

Flow files also get the weight diagnostics of docs/conventions.md "Flow quality at scale"
(:func:`lattice_flows.file_weights.flow_weights`): rows ``pareto_k``, ``max_w/sum_w``,
``N_eff`` (and, for chains, ``max_rejection_run`` and ``rejection_run/N``); when a check fails
(k̂ > 0.7, k̂ above the sample-size threshold 1 − 1/log10 N, a rejection run > N/50, failed
draws) every observable row of the file carries the flag and
:func:`lattice_flows.table_format.format_table` prints a warning. Flow chains drop a burn-in by
default (:func:`default_discard`). Comparisons of runs: :mod:`lattice_flows.comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lattice_flows.io.sample_format import DataFileError
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.estimates import DEFAULT_S, Estimate, estimate_obs, gamma_method, make_obs
from lattice_flows.file_weights import flow_weights

SAMPLE_FILE_NAMES = ("samples.h5", "importance.h5", "composite.h5", "hmc.h5")


@dataclass(frozen=True)
class Row:
    """One line of an observable table."""

    name: str
    kind: str  # 'primary' | 'derived' | 'reweighted' | 'flow' | 'weights'
    est: Estimate
    flag: str = ""  # failed weight checks of the file (lattice_flows.weights.flags_for), '' if none

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **self.est.as_dict(), "flag": self.flag}


class Rows(list):
    """The table of :func:`analyze_samples`: a list of :class:`Row`, plus ``discard`` (rows
    dropped per chain) and ``weights`` (the weight diagnostics dict of a flow file, else None)."""

    discard: int = 0
    weights: dict | None = None

    def __getitem__(self, key):  # type: ignore[override]
        """``rows[i]`` / ``rows[a:b]`` as a list; ``rows["M2"]``: the row of that observable."""
        if isinstance(key, str):
            for row in self:
                if row.name == key:
                    return row
            raise KeyError(f"no observable {key!r} in this table; it has "
                           f"{', '.join(r.name for r in self)}")
        return super().__getitem__(key)


FLOW_BURN_IN_FRACTION = 0.01


def default_discard(sf: SampleFile) -> int:
    """Burn-in applied by default: 0 for HMC (thermalised in production, ``hmc.n_therm``) and
    importance sampling; for a flow chain (``flow-mcmc``) the rows up to the first accepted
    proposal of the slowest chain (its initial flow draw and the rejection run after it), at
    least 1 % of the rows, at most half of them. The independence sampler starts from a flow
    draw, i.e. from q, not p; it forgets the start at its first acceptance."""
    if sf.attrs.get("kind") != "flow-mcmc" or sf.n_saved < 2:
        return 0
    acc = np.asarray(sf.accepted(), dtype=bool)
    if acc.ndim == 1:
        acc = acc[:, None]
    moved = acc[1:]
    first = np.where(moved.any(0), moved.argmax(0) + 1, sf.n_saved)  # row of the first move
    burn = max(int(first.max()), int(math.ceil(FLOW_BURN_IN_FRACTION * sf.n_saved)))
    return min(burn, sf.n_saved // 2)


def resolve_discard(sf: SampleFile, discard: int | None) -> int:
    """``discard`` as given, or :func:`default_discard` when None."""
    if discard is None:
        return default_discard(sf)
    if discard < 0:
        raise ValueError(f"discard must be >= 0, got {discard}")
    return int(discard)


def _weight_rows(d: dict, chain: bool) -> list[Row]:
    flag = ",".join(d["flags"])
    one = lambda name, v: Row(name, "weights", Estimate(float(v) if v is not None else math.nan,
                                                       0.0, 0.5, 0.0, 0), flag)
    rows = [one("pareto_k", d.get("khat")), one("max_w/sum_w", d.get("max_weight_fraction")),
            one("N_eff", d.get("ess"))]
    if chain:
        n = d["chain_length"]
        rows += [one("max_rejection_run", d["longest_rejection_run"]),
                 one("rejection_run/N", d["longest_rejection_run"] / n if n else math.nan)]
    return rows


def _flag_rows(rows: list[Row], d: dict | None) -> list[Row]:
    if not d or not d["flags"]:
        return rows
    flag = ",".join(d["flags"])
    return [Row(r.name, r.kind, r.est, flag) if r.kind in ("primary", "derived", "reweighted", "flow")
            and r.name != "acceptance" else r for r in rows]


def find_sample_files(path: str | Path) -> list[Path]:
    """A file itself, or the sample files of a run folder (merged view preferred)."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in SAMPLE_FILE_NAMES if (p / n).exists()]
        if not found:
            raise DataFileError(
                f"{p}: no sample file in this run folder (looked for {', '.join(SAMPLE_FILE_NAMES)})."
            )
        return found
    if not p.exists():
        raise DataFileError(f"{p}: no such file or run folder.")
    return [p]


def analyze_importance(sf: SampleFile, max_t: int | None = None) -> list[Row]:
    """Self-normalised reweighted observables of an importance-sampling file, plus ESS/N and
    log Z (docs/conventions.md "Statistics"). The samples are independent; the tau_int column holds
    each observable's effective tau_eff = N var<O> / (2 var_p O) with its jackknife error
    (:func:`lattice_flows.estimates.reweighting_tau`; 1/(2 ESS/N) for an observable independent
    of the weights), so that costs compare with Markov chains."""
    from lattice_flows.estimates import (
        effective_sample_size, log_partition_function, reweighted_mean, reweighting_tau,
    )

    lw = np.asarray(sf.extra("log_w"), dtype=np.float64)
    # one axis of draws (rows x chains): failed draws (NaN/+inf, a broken flow) are left out here
    # and counted and flagged by the weight diagnostics; zero weights (-inf) stay in N
    n_draws = lw.size
    obs = {k: v.reshape(n_draws, *v.shape[lw.ndim:]) for k, v in sf.observables().items()}
    lw = lw.reshape(n_draws)
    keep = ~(np.isnan(lw) | np.isposinf(lw))
    if not keep.all():
        lw, obs = lw[keep], {k: v[keep] for k, v in obs.items()}
    ess = effective_sample_size(lw)

    def estimate(values: np.ndarray) -> Estimate:
        # N weighted draws are worth N / (2 tau_eff) unweighted ones for this observable
        r = reweighted_mean(values, lw)
        tau, dtau = reweighting_tau(values, lw) if ess > 0 else (float("inf"), 0.0)
        return Estimate(r.value, r.error, tau, dtau, 0)

    rows: list[Row] = []
    for name in ("M", "absM", "M2", "M4", "chi2", "E", "action_density"):
        if name in obs:
            rows.append(Row(name, "reweighted", estimate(obs[name])))
    if "G" in obs:
        L_t = sf.lattice_shape[-1]
        t_max = L_t // 2 if max_t is None else min(max_t, L_t - 1)
        G = obs["G"]
        for t in range(t_max + 1):
            idx = (slice(None),) + (0,) * (G.ndim - 2) + (t,)
            rows.append(Row(f"G[{t}]", "reweighted", estimate(G[idx])))
    rows.append(Row("ESS/N", "flow", Estimate(ess, 0.0, 0.5, 0.0, 0)))
    lz = log_partition_function(lw)
    rows.append(Row("log_Z", "flow", Estimate(lz.value, lz.error, 0.5, 0.0, 0)))
    return rows


def analyze_samples(sf: SampleFile, discard: int | None = None, S: float = DEFAULT_S,
                    max_t: int | None = None) -> Rows:
    """Gamma-method table of every observable in ``sf``, dropping the first ``discard`` rows
    (None: :func:`default_discard`, a burn-in for flow chains, 0 otherwise).

    Importance-sampling files (kind ``flow-importance``) get reweighted estimates instead.
    Flow files get weight-diagnostic rows and, when a check fails, flagged observable rows.
    """
    discard = resolve_discard(sf, discard)
    if sf.attrs.get("kind") == "flow-importance":
        d = flow_weights(sf)
        out = Rows(_flag_rows(analyze_importance(sf, max_t), d) + _weight_rows(d, chain=False))
        out.weights, out.discard = d, 0
        return out
    rows = _analyze_chain(sf, discard, S, max_t)
    d = flow_weights(sf, discard)
    out = Rows(_flag_rows(rows, d) + (_weight_rows(d, chain=True) if d else []))
    out.weights, out.discard = d, discard
    return out


def _analyze_chain(sf: SampleFile, discard: int, S: float, max_t: int | None) -> list[Row]:
    n = sf.n_saved - discard
    if n < 2:
        raise DataFileError(
            f"{sf.path}: only {sf.n_saved} committed rows ({discard} discarded); need >= 2 to analyse."
        )
    obs = {k: v[discard:] for k, v in sf.observables().items()}
    rows: list[Row] = []
    for name in ("M", "absM", "M2", "M4", "chi2", "E", "action_density"):
        if name in obs:
            rows.append(Row(name, "primary", gamma_method(obs[name], S=S)))
    rows.append(Row("acceptance", "primary", gamma_method(sf.accepted()[discard:].astype(np.float64), S=S)))
    if "M2" in obs and "M4" in obs:
        m2, m4 = make_obs(obs["M2"]), make_obs(obs["M4"])
        if m2.value > 0:
            rows.append(Row("U4", "derived", estimate_obs(1 - m4 / (3 * m2 * m2), S=S)))
    L_t = sf.lattice_shape[-1]
    t_max = L_t // 2 if max_t is None else min(max_t, L_t - 1)
    if "G" in obs:
        G = obs["G"]
        for t in range(t_max + 1):
            idx = (slice(None), slice(None)) + (0,) * (G.ndim - 3) + (t,)
            rows.append(Row(f"G[{t}]", "primary", gamma_method(G[idx], S=S)))
    if "C" in obs:
        C = obs["C"]
        C_obs = [make_obs(C[:, :, t]) for t in range(L_t)]
        for t in range(t_max + 1):
            rows.append(Row(f"C[{t}]", "primary", estimate_obs(C_obs[t], S=S)))
        for t in range(1, t_max):
            num = C_obs[t - 1] + C_obs[t + 1]
            ratio = num / (2 * C_obs[t])
            if ratio.value > 1 and math.isfinite(ratio.value):
                with np.errstate(invalid="ignore"):
                    rows.append(Row(f"m_eff[{t}]", "derived", estimate_obs(ratio.arccosh(), S=S)))
    return rows
