"""Observable tables with Gamma-method errors from a sample file (used by CLI and analysis/).

Primary observables (per-configuration averages): M, |M|, M^2, M^4, chi2 = V M^2, E, S/V,
G(0, ..., 0, t) and C(t). Derived observables (functions of averages, errors by linear
propagation = Gamma-method for derived quantities, CONVENTIONS.md "Statistics"):
U4 = 1 - <M^4> / (3 <M^2>^2) and m_eff(t) = arccosh[(C(t-1) + C(t+1)) / (2 C(t))].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lattice_flows.io.hdf5 import DataFileError, SampleFile
from lattice_flows.statistics import DEFAULT_S, Estimate, estimate_obs, gamma_method, make_obs

SAMPLE_FILE_NAMES = ("merged.h5", "samples.h5", "importance.h5", "hmc.h5")


@dataclass(frozen=True)
class Row:
    """One line of an observable table."""

    name: str
    kind: str  # 'primary' | 'derived'
    est: Estimate

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, **self.est.as_dict()}


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
    log Z (CONVENTIONS.md "Statistics"). The samples are independent; the tau_int column holds
    the effective 1/(2 ESS/N) so that costs compare with Markov chains."""
    from lattice_flows.statistics import effective_sample_size, log_partition_function, reweighted_mean

    lw = sf.extra("log_w")
    obs = sf.observables()
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
            idx = (slice(None), slice(None)) + (0,) * (G.ndim - 3) + (t,)
            r = reweighted_mean(G[idx], lw)
            rows.append(Row(f"G[{t}]", "reweighted", Estimate(r.value, r.error, tau_eff, 0.0, 0)))
    rows.append(Row("ESS/N", "flow", Estimate(ess, 0.0, 0.5, 0.0, 0)))
    lz = log_partition_function(lw)
    rows.append(Row("log_Z", "flow", Estimate(lz.value, lz.error, 0.5, 0.0, 0)))
    return rows


def analyze_samples(sf: SampleFile, discard: int = 0, S: float = DEFAULT_S,
                    max_t: int | None = None) -> list[Row]:
    """Gamma-method table of every observable in ``sf``, dropping the first ``discard`` rows.

    Importance-sampling files (kind ``flow-importance``) get reweighted estimates instead.
    """
    if sf.attrs.get("kind") == "flow-importance":
        return analyze_importance(sf, max_t)
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


def compare(files: list[Path], names: list[str] | None = None, discard: int = 0,
            observables: tuple[str, ...] = ("absM", "M2", "chi2", "E", "action_density", "U4", "G[0]"),
            extra_cpu: dict[int, float] | None = None,
            rows: list[list[Row]] | None = None) -> dict:
    """Compare runs: per observable the values, the z-score of each run against the first,
    the ratio of tau_int and of CPU-seconds per effective sample (relative to the first).

    ``extra_cpu[i]`` adds CPU-seconds (e.g. flow training) to run i's cost; ``rows[i]``, when
    given, is run i's :func:`analyze_samples` table (computed with the same ``discard``), so a
    caller that already has it does not repeat the Gamma-method analysis.
    """
    runs = []
    for i, path in enumerate(files):
        sf = SampleFile(path)
        table_i = rows[i] if rows is not None else analyze_samples(sf, discard=discard)
        by_name = {r.name: r.est for r in table_i}
        cpu = float(sf.attrs.get("cpu_s", float("nan"))) + (extra_cpu or {}).get(i, 0.0)
        runs.append({"name": (names or [])[i] if names and i < len(names) else str(path),
                     "file": str(path), "kind": sf.attrs.get("kind"), "cpu_s": cpu,
                     "n": (sf.n_saved - discard) * sf.n_chains, "rows": by_name})
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
            })
        table.append(line)
    return {"runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs], "table": table}


def format_comparison(cmp: dict) -> str:
    """Markdown table of :func:`compare`."""
    names = [r["name"] for r in cmp["runs"]]
    head = "| observable | " + " | ".join(names) + " | z (vs first) | tau_int ratio | cost/eff. sample ratio |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for line in cmp["table"]:
        vals = [f"{r['value']:.5g} ± {r['error']:.2g} (τ {r['tau_int']:.2f})" for r in line["runs"]]
        z = ", ".join(f"{r['z_vs_first']:+.2f}" for r in line["runs"][1:])
        tr = ", ".join(f"{r['tau_int_ratio']:.3g}" for r in line["runs"][1:])
        cr = ", ".join(f"{r['cost_ratio']:.3g}" for r in line["runs"][1:])
        lines.append(f"| {line['observable']} | " + " | ".join(vals) + f" | {z} | {tr} | {cr} |")
    cpu = ", ".join(f"{r['name']}: {r['cpu_s']:.1f} CPU-s, {r['n']} samples" for r in cmp["runs"])
    lines.append("")
    lines.append(f"Cost basis: {cpu}. CPU-s per effective sample = CPU-s x 2 tau_int / N.")
    return "\n".join(lines)


def format_table(rows: list[Row], title: str = "", n_per_chain: int | None = None) -> str:
    """A fixed-width text table: observable, value, error, tau_int +- error, kind."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'observable':<16}{'value':>14}{'error':>12}{'tau_int':>10}{'+-':>8}  kind")
    unreliable = False
    for r in rows:
        e = r.est
        flag = ""
        if n_per_chain and r.kind in ("primary", "derived") and e.tau_int * 100 > n_per_chain:
            flag, unreliable = " !", True
        lines.append(
            f"{r.name:<16}{e.value:>14.6g}{e.error:>12.3g}{e.tau_int:>10.3f}{e.tau_int_error:>8.3f}  {r.kind}{flag}"
        )
    if unreliable:
        lines.append(
            f"! tau_int > N/100 with N = {n_per_chain} rows per chain: the Gamma-method error is "
            "not reliable; run longer (Wolff 2004 asks for N >> 100 tau_int)."
        )
    return "\n".join(lines)


def rows_to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps({"meta": meta, "observables": [r.as_dict() for r in rows]}, indent=1)
