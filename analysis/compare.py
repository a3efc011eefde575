#!/usr/bin/env python
"""Compare two or more runs (e.g. flow MCMC vs HMC) observable by observable.

Per observable: each run's value ± Γ-method error (τ_int), the z-score of the difference to the
reference run, z = (O_i − O_ref) / sqrt(σ_i² + σ_ref²), the ratio τ_int,i / τ_int,ref and the
ratio of device-seconds per effective sample, device-s × 2 τ_int / N (docs/conventions.md
"Statistics"; :func:`lattice_flows.comparison.compare`). Device-s are CPU-s on a CPU and wall-s of
the GPU on CUDA; runs on different device kinds get no cost ratio ("n/a", with the reason).
``--train-cost`` adds the flow's training device-s (``train_device_s`` and ``device_kind`` of
``train_summary.json`` next to the flow that made the samples; older summaries: ``train_cpu_s``
of a CPU run) to every flow run's cost, i.e. amortises training over the samples of this run.

Writes ``comparison.md`` and ``comparison.json`` to ``--out``.

Example::

    python analysis/compare.py runs/tutorial_flow/samples.h5 runs/tutorial_flow/hmc.h5 \
        --names "flow MCMC,HMC" --train-cost --out results/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C

DEFAULT_OBSERVABLES = "absM,M2,chi2,E,action_density,U4,G[0],G[1],C[1],m_eff[1]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare runs: values, z-scores, tau_int ratios and device-s per effective "
                    "sample (CPU-s on a CPU, GPU wall-s on CUDA). A run folder stands for all "
                    "its sample files.",
    )
    p.add_argument("paths", nargs="+", help="run folders or sample files (>= 2 files in all)")
    p.add_argument("--names", default=None,
                   help="comma-separated labels, one per sample file, e.g. 'flow MCMC,HMC'")
    p.add_argument("--reference", type=int, default=0, metavar="I",
                   help="index (0-based, in input order) of the run the z-scores and ratios "
                        "refer to (default 0)")
    p.add_argument("--train-cost", action="store_true",
                   help="add the flow's training device-s (train_summary.json "
                        "'train_device_s', of the same device kind) to the cost of each flow run")
    p.add_argument("--observables", default=DEFAULT_OBSERVABLES,
                   help=f"comma-separated observables (default {DEFAULT_OBSERVABLES}); "
                        "ones missing from any run are skipped")
    p.add_argument("--discard", type=int, default=None, metavar="N",
                   help="drop the first N saved rows of every chain (default: each flow chain "
                        "its burn-in, lattice_flows.tables.default_discard; HMC nothing)")
    p.add_argument("--out", default=".", help="output folder (default: current directory)")
    p.add_argument("--stem", default="comparison", help="output file name without suffix")
    p.add_argument("--quiet", action="store_true", help="do not print the table to stdout")
    return p


def flow_run_dir(src: C.Source) -> Path:
    """Folder of the flow that produced a flow sample file (attribute flow_path, else its folder)."""
    flow_path = src.sf.attrs.get("flow_path")
    return Path(flow_path).parent if flow_path else src.run_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from lattice_flows.comparison import compare, format_comparison

        sources = C.load_sources(args.paths, C.parse_names(args.names))
        if len(sources) < 2:
            raise C.fail(f"{', '.join(args.paths)}: compare needs at least 2 sample files, "
                         f"found {len(sources)}.")
        if not 0 <= args.reference < len(sources):
            raise C.fail(f"--reference {args.reference}: out of range for {len(sources)} runs.")
        if args.discard is not None and args.discard < 0:
            raise C.fail(f"--discard must be >= 0, got {args.discard}")
        order = [args.reference] + [i for i in range(len(sources)) if i != args.reference]
        sources = [sources[i] for i in order]
        extra_cost: dict[int, tuple[float, str]] = {}
        train_cost: dict[str, tuple[float, str]] = {}
        if args.train_cost:
            for i, s in enumerate(sources):
                if s.kind.startswith("flow"):
                    extra_cost[i] = C.read_train_cost(flow_run_dir(s))
                    train_cost[s.label] = extra_cost[i]
            if not extra_cost:
                print("compare.py: warning: --train-cost given but no flow run among the inputs",
                      file=sys.stderr)
        observables = tuple(o.strip() for o in args.observables.split(",") if o.strip())
        cmp = compare([s.path for s in sources], [s.label for s in sources],
                      discard=args.discard, observables=observables, extra_cost=extra_cost)
        adjusted = sorted(s.label for s in sources if s.kind == "flow-importance")
        for r, s in zip(cmp["runs"], sources):
            added, kind = train_cost.get(s.label, (0.0, r["device_kind"]))
            r["train_device_s_added"], r["train_device_kind"] = added, kind
        missing = [o for o in observables if o not in {line["observable"] for line in cmp["table"]}]
        cmp["skipped_observables"] = missing
        cmp["reference"] = sources[0].label
        cmp["discard"] = {r["name"]: r["discard"] for r in cmp["runs"]}
        cost_note = ("device-s, including the flow's training device-s" if extra_cost
                     else "sampling device-s only (use --train-cost to add flow training)")
        text = (f"# Comparison (reference: {sources[0].label}; cost: {cost_note})\n\n"
                + format_comparison(cmp) + "\n")
        if missing:
            text += f"\nSkipped (missing in some run): {', '.join(missing)}.\n"
        if train_cost:
            text += "\nTraining device-s added: " + ", ".join(
                f"{k}: {v:.1f} on {kind}" for k, (v, kind) in train_cost.items()) + ".\n"
        if adjusted:
            text += ("\nImportance sampling (" + ", ".join(adjusted) + "): τ shown is each "
                     "observable's effective τ = N var⟨O⟩ / (2 var_p O) (1/(2 ESS/N) for an "
                     "observable independent of the weights), so cost per effective sample = "
                     "2 τ × device-s per draw.\n")
        text += (f"\nz = (O − O_ref)/sqrt(σ² + σ_ref²) with reference {sources[0].label}: > 0 "
                 "means the run is higher; every ratio is run / reference (< 1: the run has the "
                 "smaller τ_int, is cheaper per effective sample); τ_int in units of saved rows.\n")
        out = C.out_dir(args.out)
        (out / f"{args.stem}.md").write_text(text)
        C.write_json(out / f"{args.stem}.json", cmp)
        if not args.quiet:
            sys.stdout.write(text)
        print(f"wrote {out / (args.stem + '.md')} and {out / (args.stem + '.json')}", file=sys.stderr)
        return 0

    return C.main_guard("compare.py", run)


if __name__ == "__main__":
    raise SystemExit(main())
