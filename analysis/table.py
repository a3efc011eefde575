#!/usr/bin/env python
"""Table of observables with Gamma-method errors and tau_int for one or more runs.

Every sample file of the given run folders (or the given HDF5 files) is analysed with
:func:`lattice_flows.tables.analyze_samples`: Gamma-method (Wolff 2004, hep-lat/0306017)
errors with automatic windowing (S = 1.5) and tau_int +- its error for the primary
observables; derived quantities (U4, m_eff) by linear error propagation; importance-sampling
files get self-normalised reweighted averages (tau_int = 1/2 by construction).
See docs/conventions.md, "Observables" and "Statistics".

Example::

    python analysis/table.py runs/tutorial_flow --format md --out results/
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

import _common as C

FIELDS = ("run", "file", "kind", "observable", "type", "value", "error", "tau_int",
          "tau_int_error", "window", "flag")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="table.py",
        description="Observables with Gamma-method errors and tau_int for one or more runs "
                    "(run folders or sample HDF5 files).",
    )
    p.add_argument("paths", nargs="+", help="run folders or sample files (samples.h5, hmc.h5, ...)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md",
                   help="output format (default: md)")
    p.add_argument("--discard", type=int, default=None, metavar="N",
                   help="drop the first N saved rows of every chain (default: flow chains drop "
                        "a burn-in, lattice_flows.tables.default_discard; HMC and importance "
                        "files nothing)")
    p.add_argument("--S", type=float, default=1.5, help="Gamma-method windowing parameter S (1.5)")
    p.add_argument("--max-t", type=int, default=None,
                   help="largest t of G[t], C[t] (default L_t/2)")
    p.add_argument("--names", default=None, help="comma-separated labels, one per sample file")
    p.add_argument("--out", default=".", help="output folder (default: current directory)")
    p.add_argument("--stem", default="table", help="output file name without suffix (table)")
    p.add_argument("--quiet", action="store_true", help="do not print the table to stdout")
    return p


def collect(args) -> list[dict]:
    from lattice_flows.comparison import run_seconds
    from lattice_flows.table_format import weight_notes, weight_warnings
    from lattice_flows.tables import analyze_samples

    if args.discard is not None and args.discard < 0:
        raise C.fail(f"--discard must be >= 0, got {args.discard}")
    results = []
    for src in C.load_sources(args.paths, C.parse_names(args.names)):
        sf = src.sf
        rows = analyze_samples(sf, discard=args.discard, S=args.S, max_t=args.max_t)
        meta = {"run": src.label, "file": str(src.path), "kind": src.kind,
                "lattice_shape": list(sf.lattice_shape), "m2": sf.attrs.get("m2"),
                "lam": sf.attrs.get("lam"), "n_saved": sf.n_saved, "n_chains": sf.n_chains,
                "discard": rows.discard, "S": args.S, **run_seconds(sf.attrs),
                "weights": rows.weights, "warnings": weight_warnings(rows, src.label),
                "notes": weight_notes(rows, src.label)}
        results.append({"meta": meta, "observables": [r.as_dict() for r in rows]})
    return results


def to_markdown(results: list[dict]) -> str:
    parts = []
    for res in results:
        m = res["meta"]
        shape = "x".join(map(str, m["lattice_shape"]))
        parts.append(
            f"## {m['run']}\n\n`{m['file']}`: {m['kind']}, lattice {shape}, m² = {m['m2']}, "
            f"λ = {m['lam']}, {m['n_saved'] - m['discard']} rows x {m['n_chains']} chains "
            f"({m['discard']} discarded), Γ-method S = {m['S']}\n"
        )
        lines = ["| observable | value ± error | τ_int | window | type | flag |",
                 "|---|---|---|---|---|---|"]
        for o in res["observables"]:
            tau = C.fmt_err(o["tau_int"], o["tau_int_error"]) if o["tau_int_error"] else f"{o['tau_int']:.3g}"
            flag = f"**{o['flag']}**" if o.get("flag") else ""
            lines.append(f"| {o['name']} | {C.fmt_err(o['value'], o['error'])} | {tau} | "
                         f"{o['window']} | {o['kind']} | {flag} |")
        parts.append("\n".join(lines))
        for w in m.get("warnings") or []:
            parts.append(f"> **WARNING** {w} Flagged rows are affected.")
        for w in m.get("notes") or []:
            parts.append(f"> note: {w}")
    parts.append("τ_int in units of saved rows (Wolff normalisation: 1/2 for independent samples). "
                 "Flow files: weight diagnostics pareto_k (Pareto k̂ of the weights; > 0.7: not "
                 "to be trusted), max_w/sum_w, N_eff = (Σw)²/Σw² and, for chains, the longest "
                 "rejection run (> N/50: too short); docs/conventions.md \"Flow quality at scale\".")
    return "\n\n".join(parts) + "\n"


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for res in results:
        m = res["meta"]
        for o in res["observables"]:
            w.writerow({"run": m["run"], "file": m["file"], "kind": m["kind"],
                        "observable": o["name"], "type": o["kind"], "value": repr(float(o["value"])),
                        "error": repr(float(o["error"])), "tau_int": repr(float(o["tau_int"])),
                        "tau_int_error": repr(float(o["tau_int_error"])), "window": int(o["window"]),
                        "flag": o.get("flag", "")})
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        results = collect(args)
        out = C.out_dir(args.out) / f"{args.stem}.{args.format}"
        if args.format == "json":
            C.write_json(out, {"runs": results})
            text = out.read_text()
        else:
            text = to_markdown(results) if args.format == "md" else to_csv(results)
            out.write_text(text)
        if not args.quiet:
            sys.stdout.write(text)
        print(f"wrote {out}", file=sys.stderr)
        return 0

    return C.main_guard("table.py", run)


if __name__ == "__main__":
    raise SystemExit(main())
