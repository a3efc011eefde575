"""Observable tables with Gamma-method errors from a sample file (used by CLI and analysis/).

Primary observables (per-configuration averages): M, |M|, M^2, M^4, chi2 = V M^2, E, S/V,
G(0, ..., 0, t) and C(t). Derived observables (functions of averages, errors by linear
propagation = Gamma-method for derived quantities, docs/conventions.md "Statistics"):
U4 = 1 - <M^4> / (3 <M^2>^2) and m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))].

Flow files also get the weight diagnostics of docs/conventions.md "Flow quality at scale"
(:mod:`lattice_flows.weights`): rows ``pareto_k``, ``max_w/sum_w``, ``N_eff`` (and, for chains,
``max_rejection_run`` and ``rejection_run/N``); when a check fails (k̂ > 0.7, k̂ above the
sample-size threshold 1 − 1/log10 N, a rejection run > N/50, failed draws) every observable row
of the file carries the flag and :func:`format_table` prints a warning. Flow chains drop a
burn-in by default (:func:`default_discard`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lattice_flows.io.sample_format import DataFileError
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.estimates import DEFAULT_S, Estimate, estimate_obs, gamma_method, make_obs
from lattice_flows import weights as W

SAMPLE_FILE_NAMES = ("samples.h5", "importance.h5", "hmc.h5")


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


def _rank_files(sf: SampleFile) -> list[Path]:
    names = sf.attrs.get("merged_from")
    if names is None:
        return []
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]
    return [sf.path.parent / n for n in names if (sf.path.parent / n).exists()]


def flow_weights(sf: SampleFile, discard: int = 0) -> dict | None:
    """Weight diagnostics of a flow sample file (None for HMC), as a dict of
    :class:`lattice_flows.weights.WeightDiagnostics` fields.

    Importance files: computed from their log w (every draw). Flow chains: the production's
    figures on all proposals (``weights_*`` attributes; for a merged MPI view the worst rank),
    with the longest rejection run recomputed on the analysed rows (after ``discard``) against
    their number per chain.
    """
    kind = sf.attrs.get("kind")
    if kind == "flow-importance":
        return W.weight_diagnostics(sf.extra("log_w")).as_dict()
    if kind != "flow-mcmc":
        return None
    found = [W.from_attrs(SampleFile(p).attrs) for p in _rank_files(sf)] or [W.from_attrs(sf.attrs)]
    found = [d for d in found if d is not None]
    if found:
        d = max(found, key=lambda x: (-math.inf if x.get("khat") is None or
                                      not math.isfinite(float(x["khat"])) else float(x["khat"])))
        d = dict(d)
        d["n_failed"] = int(sum(int(x.get("n_failed", 0)) for x in found))
    else:  # a file written before the diagnostics existed: only the chain's own checks
        d = {"n": None, "n_zero": None, "n_failed": int(sf.attrs.get("n_nonfinite", 0) or 0),
             "ess": math.nan, "ess_fraction": math.nan, "khat": math.nan,
             "khat_threshold": math.nan, "max_weight_fraction": math.nan, "missing": True}
    acc = np.asarray(sf.accepted(), dtype=bool)[discard:]
    acc = acc[:, None] if acc.ndim == 1 else acc
    d["longest_rejection_run"] = int(W.longest_false_run(acc).max()) if acc.size else 0
    d["chain_length"] = int(acc.shape[0])
    khat = float(d["khat"]) if d.get("khat") is not None else math.nan
    if d.get("missing"):
        d["flags"] = W.flags_for(-math.inf, 1, d["n_failed"], d["longest_rejection_run"],
                                 d["chain_length"])
    else:
        d["flags"] = W.flags_for(khat, int(d["n"]), d["n_failed"], d["longest_rejection_run"],
                                 d["chain_length"])
    return d


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


def weight_warnings(rows: list[Row], what: str = "flow weights") -> list[str]:
    """The warning lines of a table's weight diagnostics (empty when all checks pass)."""
    d = getattr(rows, "weights", None)
    return W.describe(d, what) if d else []


def weight_notes(rows: list[Row], what: str = "flow weights") -> list[str]:
    """Notes that flag nothing: 0.5 < k̂ <= 0.7, usable with care."""
    d = getattr(rows, "weights", None)
    note = W.care_note(d, what) if d else None
    return [note] if note else []


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
    the effective 1/(2 ESS/N) so that costs compare with Markov chains."""
    from lattice_flows.estimates import effective_sample_size, log_partition_function, reweighted_mean

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
    # N independent weighted samples are worth N * ESS/N unweighted ones: report the effective
    # tau_int = 1 / (2 ESS/N), so that cost per effective sample = CPU-s / ESS everywhere
    tau_eff = 0.5 / ess if ess > 0 else float("inf")
    rows: list[Row] = []
    for name in ("absM", "M2", "M4", "chi2", "E", "action_density"):
        if name in obs:
            r = reweighted_mean(obs[name], lw)
            rows.append(Row(name, "reweighted", Estimate(r.value, r.error, tau_eff, 0.0, 0)))
    if "G" in obs:
        L_t = sf.lattice_shape[-1]
        t_max = L_t // 2 if max_t is None else min(max_t, L_t - 1)
        G = obs["G"]
        for t in range(t_max + 1):
            idx = (slice(None),) + (0,) * (G.ndim - 2) + (t,)
            r = reweighted_mean(G[idx], lw)
            rows.append(Row(f"G[{t}]", "reweighted", Estimate(r.value, r.error, tau_eff, 0.0, 0)))
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


def cost_per_effective_sample(est: Estimate, n_samples: int, cpu_s: float) -> float:
    """CPU-seconds per effective (independent) sample: cpu_s * 2 tau_int / N."""
    if not (cpu_s > 0 and n_samples > 0):
        return float("nan")
    return cpu_s * 2.0 * est.tau_int / n_samples


RATIO_DIRECTIONS = {
    "z_vs_first": "(O_run - O_ref) / sqrt(err_run^2 + err_ref^2): > 0: the run is higher",
    "tau_int_ratio": "tau_int(run) / tau_int(ref): < 1: the run decorrelates in fewer saved rows",
    "cost_ratio": "CPU-s per effective sample, run / ref: < 1: the run is cheaper",
}


def compare(files: list[Path], names: list[str] | None = None, discard: int | None = None,
            observables: tuple[str, ...] = ("absM", "M2", "chi2", "E", "action_density", "U4", "G[0]"),
            extra_cpu: dict[int, float] | None = None,
            rows: list[list[Row]] | None = None) -> dict:
    """Compare runs: per observable the values, the z-score of each run against the first (the
    reference), the ratios tau_int(run) / tau_int(ref) and (CPU-s per effective sample of the
    run) / (that of the reference): < 1 means the run is cheaper (:data:`RATIO_DIRECTIONS`).
    ``discard`` None: each file's :func:`default_discard`.

    ``extra_cpu[i]`` adds CPU-seconds (e.g. flow training) to run i's cost; ``rows[i]``, when
    given, is run i's :func:`analyze_samples` table (computed with the same ``discard``), so a
    caller that already has it does not repeat the Gamma-method analysis.
    """
    runs = []
    for i, path in enumerate(files):
        sf = SampleFile(path)
        table_i = rows[i] if rows is not None else analyze_samples(sf, discard=discard)
        used = getattr(table_i, "discard", None)
        used = resolve_discard(sf, discard) if used is None else used
        if sf.attrs.get("kind") == "flow-importance":
            used = 0
        by_name = {r.name: r.est for r in table_i}
        flags = {r.name: r.flag for r in table_i}
        cpu = float(sf.attrs.get("cpu_s", float("nan"))) + (extra_cpu or {}).get(i, 0.0)
        runs.append({"name": (names or [])[i] if names and i < len(names) else str(path),
                     "file": str(path), "kind": sf.attrs.get("kind"), "cpu_s": cpu,
                     "n": (sf.n_saved - used) * sf.n_chains, "discard": used,
                     "weights_flags": list((getattr(table_i, "weights", None) or {}).get("flags", [])),
                     "rows": by_name, "flags": flags})
    table = []
    ref = runs[0]
    for obs in observables:
        if not all(obs in r["rows"] for r in runs):
            continue
        line = {"observable": obs, "runs": []}
        e0 = ref["rows"][obs]
        c0 = cost_per_effective_sample(e0, ref["n"], ref["cpu_s"])
        for r in runs:
            e = r["rows"][obs]
            z = (e.value - e0.value) / math.hypot(e.error, e0.error) if r is not ref and math.hypot(e.error, e0.error) > 0 else 0.0
            c = cost_per_effective_sample(e, r["n"], r["cpu_s"])
            line["runs"].append({
                "name": r["name"], "value": e.value, "error": e.error, "tau_int": e.tau_int,
                "z_vs_first": z, "tau_int_ratio": e.tau_int / e0.tau_int if e0.tau_int else float("nan"),
                "cpu_s_per_eff": c, "cost_ratio": c / c0 if c0 and math.isfinite(c0) else float("nan"),
                "ratio_of": f"{r['name']} / {ref['name']}", "flag": r["flags"].get(obs, ""),
            })
        table.append(line)
    return {"runs": [{k: v for k, v in r.items() if k not in ("rows", "flags")} for r in runs],
            "table": table, "reference": ref["name"], "ratio_directions": RATIO_DIRECTIONS}


def format_comparison(cmp: dict) -> str:
    """Markdown table of :func:`compare`."""
    names = [r["name"] for r in cmp["runs"]]
    ref, others = names[0], (names[1] if len(names) == 2 else "run")
    head = ("| observable | " + " | ".join(names)
            + f" | z = ({others} − {ref}) / σ | τ_int {others} / {ref} (< 1: {others} decorrelates faster)"
            + f" | cost per eff. sample {others} / {ref} (< 1: {others} cheaper) |")
    lines = [head, "|" + "---|" * (len(names) + 4)]
    flagged = False
    for line in cmp["table"]:
        vals = []
        for r in line["runs"]:
            mark = " !" if r.get("flag") else ""
            flagged |= bool(mark)
            vals.append(f"{r['value']:.5g} ± {r['error']:.2g} (τ {r['tau_int']:.2f}){mark}")
        z = ", ".join(f"{r['z_vs_first']:+.2f}" for r in line["runs"][1:])
        tr = ", ".join(f"{r['tau_int_ratio']:.3g}" for r in line["runs"][1:])
        cr = ", ".join(f"{r['cost_ratio']:.3g}" for r in line["runs"][1:])
        lines.append(f"| {line['observable']} | " + " | ".join(vals) + f" | {z} | {tr} | {cr} |")
    cpu = ", ".join(f"{r['name']}: {r['cpu_s']:.1f} CPU-s, {r['n']} samples" for r in cmp["runs"])
    lines.append("")
    lines.append(f"Cost basis: {cpu}. CPU-s per effective sample = CPU-s x 2 tau_int / N.")
    if flagged:
        bad = [f"{r['name']} ({', '.join(r['weights_flags'])})" for r in cmp["runs"] if r.get("weights_flags")]
        lines.append(f"! flagged: the weight diagnostics of {'; '.join(bad)} fail "
                     "(docs/conventions.md \"Flow quality at scale\"): these values and their "
                     "errors are not to be trusted; see the run's analysis table.")
    return "\n".join(lines)


def format_table(rows: list[Row], title: str = "", n_per_chain: int | None = None) -> str:
    """A fixed-width text table: observable, value, error, tau_int +- error, kind."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'observable':<18}{'value':>14}{'error':>12}{'tau_int':>10}{'+-':>8}  kind")
    unreliable = False
    discard = getattr(rows, "discard", 0) or 0
    if n_per_chain and discard:
        n_per_chain -= discard
    for r in rows:
        e = r.est
        flag = ""
        if n_per_chain and r.kind in ("primary", "derived") and e.tau_int * 100 > n_per_chain:
            flag, unreliable = " !", True
        if r.flag:
            flag += f" [{r.flag}]"
        lines.append(
            f"{r.name:<18}{e.value:>14.6g}{e.error:>12.3g}{e.tau_int:>10.3f}{e.tau_int_error:>8.3f}  {r.kind}{flag}"
        )
    if unreliable:
        lines.append(
            f"! tau_int > N/100 with N = {n_per_chain} rows per chain: the Gamma-method error is "
            "not reliable; run longer (Wolff 2004 asks for N >> 100 tau_int)."
        )
    if discard:
        lines.append(f"(first {discard} rows per chain discarded as burn-in)")
    for w in weight_warnings(rows):
        lines.append(f"! WARNING {w} Rows marked [..] are affected.")
    for w in weight_notes(rows):
        lines.append(f"note: {w}")
    return "\n".join(lines)


def rows_to_json(rows: list[Row], meta: dict) -> str:
    """``{"meta", "observables", "weights", "warnings"}`` (weights: diagnostics dict or null)."""
    return json.dumps({"meta": meta, "observables": [r.as_dict() for r in rows],
                       "weights": getattr(rows, "weights", None),
                       "warnings": weight_warnings(rows), "notes": weight_notes(rows)},
                      indent=1, default=str)
