"""Comparison of runs: values, z-scores, tau_int and cost ratios against a reference run.

Per observable of the :func:`lattice_flows.tables.analyze_samples` tables of several runs: the
z-score of each run against the first, z = (O_run − O_ref) / sqrt(err_run² + err_ref²), and the
ratios tau_int(run) / tau_int(ref) and (CPU-s per effective sample, CPU-s · 2 tau_int / N, of the
run) / (that of the reference); docs/conventions.md "Statistics".
"""

from __future__ import annotations

import math
from pathlib import Path

from lattice_flows.estimates import Estimate
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.tables import Row, analyze_samples, resolve_discard


def cost_per_effective_sample(est: Estimate, n_samples: int, cpu_s: float) -> float:
    """CPU-seconds per effective (independent) sample: cpu_s * 2 tau_int / N."""
    if not (cpu_s > 0 and n_samples > 0):
        return float("nan")
    return cpu_s * 2.0 * est.tau_int / n_samples


#: sample-file kinds of the classical (non-flow) samplers: the baselines of a comparison
CLASSICAL_KINDS = ("hmc",)

RATIO_DIRECTIONS = {
    "z_vs_first": "(O_run - O_ref) / sqrt(err_run^2 + err_ref^2): > 0: the run is higher",
    "tau_int_ratio": "tau_int(run) / tau_int(ref): < 1: the run decorrelates in fewer saved rows",
    "cost_ratio": "CPU-s per effective sample, run / ref: < 1: the run is cheaper",
    "cost_vs_best_classical": "CPU-s per effective sample, run / the cheapest classical (HMC-kind) "
                              "run of the comparison: < 1: the run beats the strongest baseline",
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
        classical = [(r["cpu_s_per_eff"], r["name"]) for r, run in zip(line["runs"], runs)
                     if run["kind"] in CLASSICAL_KINDS and math.isfinite(r["cpu_s_per_eff"])]
        best, best_name = min(classical) if classical else (float("nan"), None)
        line["best_classical"] = best_name
        for r in line["runs"]:
            r["cost_vs_best_classical"] = r["cpu_s_per_eff"] / best if best > 0 else float("nan")
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
    several = sum(r.get("kind") in CLASSICAL_KINDS for r in cmp["runs"]) > 1
    if several:  # more than one baseline: say which is the strongest, per observable
        head += " cost per eff. sample / the cheapest classical run (which) |"
    lines = [head, "|" + "---|" * (len(names) + 4 + several)]
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
        cells = f"| {line['observable']} | " + " | ".join(vals) + f" | {z} | {tr} | {cr} |"
        if several:
            vb = ", ".join(f"{r['cost_vs_best_classical']:.3g}" for r in line["runs"])
            cells += f" {vb} ({line['best_classical']}) |"
        lines.append(cells)
    cpu = ", ".join(f"{r['name']}: {r['cpu_s']:.1f} CPU-s, {r['n']} samples" for r in cmp["runs"])
    lines.append("")
    lines.append(f"Cost basis: {cpu}. CPU-s per effective sample = CPU-s x 2 tau_int / N.")
    if flagged:
        bad = [f"{r['name']} ({', '.join(r['weights_flags'])})" for r in cmp["runs"] if r.get("weights_flags")]
        lines.append(f"! flagged: the weight diagnostics of {'; '.join(bad)} fail "
                     "(docs/conventions.md \"Flow quality at scale\"): these values and their "
                     "errors are not to be trusted; see the run's analysis table.")
    return "\n".join(lines)
