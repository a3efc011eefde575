"""Comparison of runs: values, z-scores, tau_int and cost ratios against a reference run.

Per observable of the :func:`lattice_flows.tables.analyze_samples` tables of several runs: the
z-score of each run against the first, z = (O_run − O_ref) / sqrt(err_run² + err_ref²), and the
ratios tau_int(run) / tau_int(ref) and (device-s per effective sample, device-s · 2 tau_int / N,
of the run) / (that of the reference); docs/conventions.md "Statistics".

Costs compare like with like (:mod:`lattice_flows.runtime.clock`): a run's cost is its
device-seconds (attributes ``device_s`` and ``device_kind`` of its sample file: CPU-s on a CPU,
GPU wall-s on CUDA; a file without them is from an older CPU run: device-s = its ``cpu_s``,
device kind ``cpu``). A cost ratio exists only between runs of the same device kind; between a
CPU run and a GPU run it is NaN ("n/a" in the table, with the reason): a CPU-second and a
GPU-second are different currencies. Training seconds added to a flow run's cost
(``extra_cost``) are device-seconds too, and only of the same device kind as the sampling
(otherwise that run's cost is NaN, with the reason).
"""

from __future__ import annotations

import math
from pathlib import Path

from lattice_flows.estimates import Estimate
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.tables import Row, analyze_samples, resolve_discard

#: the unit of every cost of a comparison
COST_UNIT = "device-s"


def cost_per_effective_sample(est: Estimate, n_samples: int, seconds: float) -> float:
    """Seconds per effective (independent) sample: seconds * 2 tau_int / N (device-s in a
    comparison)."""
    if not (seconds > 0 and n_samples > 0):
        return float("nan")
    return seconds * 2.0 * est.tau_int / n_samples


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def run_seconds(attrs: dict) -> dict:
    """``cpu_s``, ``wall_s``, ``device_s`` and ``device_kind`` of a sample file's attributes; a
    file without ``device_kind`` or ``device_s`` is from an older CPU run: device-s = CPU-s,
    device kind ``cpu`` (wall-s NaN when absent)."""
    cpu = float(attrs.get("cpu_s", float("nan")))
    wall = float(attrs.get("wall_s", float("nan")))
    if attrs.get("device_kind") is None or attrs.get("device_s") is None:
        return {"cpu_s": cpu, "wall_s": wall, "device_s": cpu, "device_kind": "cpu"}
    return {"cpu_s": cpu, "wall_s": wall, "device_s": float(attrs["device_s"]),
            "device_kind": _text(attrs["device_kind"])}


#: sample-file kinds of the classical (non-flow) samplers: the baselines of a comparison
CLASSICAL_KINDS = ("hmc",)

RATIO_DIRECTIONS = {
    "z_vs_first": "(O_run - O_ref) / sqrt(err_run^2 + err_ref^2): > 0: the run is higher",
    "tau_int_ratio": "tau_int(run) / tau_int(ref): < 1: the run decorrelates in fewer saved rows",
    "cost_ratio": "device-s per effective sample, run / ref: < 1: the run is cheaper; NaN "
                  "when the two ran on different device kinds (device-s are not comparable)",
    "cost_vs_best_classical": "device-s per effective sample, run / the cheapest classical "
                              "(HMC-kind) run of the same device kind in the comparison: < 1: "
                              "the run beats the strongest baseline",
}


def _ratio(c: float, c0: float, same_kind: bool) -> float:
    return c / c0 if same_kind and c0 and math.isfinite(c0) else float("nan")


def compare(files: list[Path], names: list[str] | None = None, discard: int | None = None,
            observables: tuple[str, ...] = ("absM", "M2", "chi2", "E", "action_density", "U4", "G[0]"),
            rows: list[list[Row]] | None = None,
            extra_cost: dict[int, tuple[float, str]] | None = None) -> dict:
    """Compare runs: per observable the values, the z-score of each run against the first (the
    reference), the ratios tau_int(run) / tau_int(ref) and (device-s per effective sample of
    the run) / (that of the reference): < 1 means the run is cheaper (:data:`RATIO_DIRECTIONS`);
    NaN between runs of different device kinds (module docstring).
    ``discard`` None: each file's :func:`default_discard`.

    ``extra_cost[i] = (device_s, device_kind)`` adds device-seconds (e.g. the flow's training,
    ``train_device_s`` and ``device_kind`` of its summary) to run i's cost; of another device
    kind than run i's sampling, run i's cost is NaN. ``rows[i]``, when
    given, is run i's :func:`analyze_samples` table (computed with the same ``discard``), so a
    caller that already has it does not repeat the Gamma-method analysis.
    """
    extra = dict(extra_cost or {})
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
        secs = run_seconds(sf.attrs)
        cost, note = secs["device_s"], ""
        if i in extra:
            added, added_kind = extra[i]
            if added_kind == secs["device_kind"]:
                cost += added
            else:
                cost = float("nan")
                note = (f"n/a: training on {added_kind}, sampling on {secs['device_kind']}: "
                        "their device-s do not add")
        runs.append({"name": (names or [])[i] if names and i < len(names) else str(path),
                     "file": str(path), "kind": sf.attrs.get("kind"), **secs,
                     "cost_s": cost, "cost_unit": COST_UNIT, "cost_note": note,
                     "added_s": extra[i][0] if i in extra else 0.0,
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
        c0 = cost_per_effective_sample(e0, ref["n"], ref["cost_s"])
        for r in runs:
            e = r["rows"][obs]
            z = (e.value - e0.value) / math.hypot(e.error, e0.error) if r is not ref and math.hypot(e.error, e0.error) > 0 else 0.0
            c = cost_per_effective_sample(e, r["n"], r["cost_s"])
            line["runs"].append({
                "name": r["name"], "value": e.value, "error": e.error, "tau_int": e.tau_int,
                "z_vs_first": z, "tau_int_ratio": e.tau_int / e0.tau_int if e0.tau_int else float("nan"),
                "device_s_per_eff": c, "device_kind": r["device_kind"],
                "cost_ratio": _ratio(c, c0, r["device_kind"] == ref["device_kind"]),
                "ratio_of": f"{r['name']} / {ref['name']}", "flag": r["flags"].get(obs, ""),
            })
        best_of: dict[str, tuple[float, str]] = {}  # per device kind, the cheapest classical run
        for r, run in zip(line["runs"], runs):
            if run["kind"] in CLASSICAL_KINDS and math.isfinite(r["device_s_per_eff"]):
                k = run["device_kind"]
                best_of[k] = min(best_of.get(k, (math.inf, "")), (r["device_s_per_eff"], r["name"]))
        line["best_classical"] = best_of.get(ref["device_kind"], (None, None))[1]
        line["best_classical_by_kind"] = {k: name for k, (_, name) in best_of.items()}
        for r in line["runs"]:
            best = best_of.get(r["device_kind"], (float("nan"), None))[0]
            r["cost_vs_best_classical"] = r["device_s_per_eff"] / best if best > 0 else float("nan")
        table.append(line)
    kinds = sorted({r["device_kind"] for r in runs})
    return {"runs": [{k: v for k, v in r.items() if k not in ("rows", "flags")} for r in runs],
            "table": table, "reference": ref["name"], "ratio_directions": RATIO_DIRECTIONS,
            "cost_unit": COST_UNIT, "device_kinds": kinds,
            "cost_note": _mixed_note(runs) if len(kinds) > 1 else ""}


def _mixed_note(runs: list[dict]) -> str:
    on = ", ".join(f"{r['name']}: {r['device_kind']}" for r in runs)
    return (f"n/a: the runs ran on different device kinds ({on}); device-s of different devices "
            "are different currencies, so a cost ratio exists only between runs of the same "
            "kind (their CPU-s and wall-s are in the cost basis above).")


def _cost_cell(v: float, kind: str, ref_kind: str) -> str:
    return "n/a" if kind != ref_kind else f"{v:.3g}"


def format_comparison(cmp: dict) -> str:
    """Markdown table of :func:`compare`; every cost figure names its unit, and a ratio between
    runs of different device kinds reads "n/a" with the reason below the table."""
    names = [r["name"] for r in cmp["runs"]]
    ref, others = names[0], (names[1] if len(names) == 2 else "run")
    unit = cmp.get("cost_unit", COST_UNIT)
    head = ("| observable | " + " | ".join(names)
            + f" | z = ({others} − {ref}) / σ | τ_int {others} / {ref} (< 1: {others} decorrelates faster)"
            + f" | cost per eff. sample {others} / {ref} (< 1: {others} cheaper), ratio of {unit} |")
    several = sum(r.get("kind") in CLASSICAL_KINDS for r in cmp["runs"]) > 1
    if several:  # more than one baseline: say which is the strongest, per observable
        head += (" cost per eff. sample / the cheapest classical run (which), ratio of "
                 f"{unit} on the same device kind |")
    lines = [head, "|" + "---|" * (len(names) + 4 + several)]
    flagged = False
    ref_kind = cmp["runs"][0].get("device_kind", "cpu")
    kind_of = {r["name"]: r.get("device_kind", "cpu") for r in cmp["runs"]}
    for line in cmp["table"]:
        vals = []
        for r in line["runs"]:
            mark = " !" if r.get("flag") else ""
            flagged |= bool(mark)
            vals.append(f"{r['value']:.5g} ± {r['error']:.2g} (τ {r['tau_int']:.2f}){mark}")
        z = ", ".join(f"{r['z_vs_first']:+.2f}" for r in line["runs"][1:])
        tr = ", ".join(f"{r['tau_int_ratio']:.3g}" for r in line["runs"][1:])
        cr = ", ".join(_cost_cell(r["cost_ratio"], kind_of[r["name"]], ref_kind)
                       for r in line["runs"][1:])
        cells = f"| {line['observable']} | " + " | ".join(vals) + f" | {z} | {tr} | {cr} |"
        if several:
            vb = ", ".join(f"{r['cost_vs_best_classical']:.3g}" for r in line["runs"])
            which = line.get("best_classical_by_kind") or {}
            named = ", ".join(f"{v} on {k}" for k, v in which.items()) if len(which) > 1 else (
                line["best_classical"] if which else None)
            cells += f" {vb} ({named}) |"
        lines.append(cells)
    def _basis(r: dict) -> str:
        cost = "n/a" if r.get("cost_note") else f"{r['cost_s']:.1f}"
        training = ""
        if r.get("added_s"):
            training = (f", training's {r['added_s']:.1f} s not added" if r.get("cost_note")
                        else f", incl. {r['added_s']:.1f} {unit} of training")
        return (f"{r['name']}: {cost} {unit} on {r.get('device_kind', 'cpu')} "
                f"({r['cpu_s']:.1f} CPU-s, {r.get('wall_s', float('nan')):.1f} wall-s{training}), "
                f"{r['n']} samples")

    basis = "; ".join(_basis(r) for r in cmp["runs"])
    lines.append("")
    lines.append(f"Cost basis: {basis}. {unit} per effective sample = {unit} x 2 tau_int / N "
                 "(device-s: CPU-s on a CPU, wall-s of the GPU on CUDA).")
    if cmp.get("cost_note"):
        lines.append(cmp["cost_note"])
    for r in cmp["runs"]:
        if r.get("cost_note"):
            lines.append(f"{r['name']}: {r['cost_note']}.")
    if flagged:
        bad = [f"{r['name']} ({', '.join(r['weights_flags'])})" for r in cmp["runs"] if r.get("weights_flags")]
        lines.append(f"! flagged: the weight diagnostics of {'; '.join(bad)} fail "
                     "(docs/conventions.md \"Flow quality at scale\"): these values and their "
                     "errors are not to be trusted; see the run's analysis table.")
    return "\n".join(lines)
