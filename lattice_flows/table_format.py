"""Observable tables as text and JSON, with the warnings of their weight diagnostics.

The rows are those of :func:`lattice_flows.tables.analyze_samples`; the warning and note lines
come from :func:`lattice_flows.weights.describe` and :func:`lattice_flows.weights.care_note`
(docs/conventions.md "Flow quality at scale").
"""

from __future__ import annotations

import json

from lattice_flows import weights as W
from lattice_flows.tables import Row


def weight_warnings(rows: list[Row], what: str = "flow weights") -> list[str]:
    """The warning lines of a table's weight diagnostics (empty when all checks pass)."""
    d = getattr(rows, "weights", None)
    return W.describe(d, what) if d else []


def weight_notes(rows: list[Row], what: str = "flow weights") -> list[str]:
    """Notes that flag nothing: 0.5 < k̂ <= 0.7, usable with care."""
    d = getattr(rows, "weights", None)
    note = W.care_note(d, what) if d else None
    return [note] if note else []


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
