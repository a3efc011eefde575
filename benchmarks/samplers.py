"""One honest cost table: every sampler of the package side by side at the same couplings.

For each point (a config: the ladder rungs L = 16 and 32 at xi ~ L/4, the broken-phase point)
and each sampler

* ``hmc``: this package's HMC, float64, step size tuned to acceptance 0.8 (the rung's ``hmc``
  section as it is: trajectory length n_steps x eps);
* ``hmc-tuned``: the same with the trajectory length tuned too (``hmc.trajectory_length: auto``);
* ``fa-hmc``: Fourier-accelerated HMC, M(p) = 2 (phat^2 + mu^2), mu^2 'auto' (fitted to the
  thermalisation's propagator), the rung's n_steps; ``fa-hmc-tuned``: with the length scanned
  too; ``fa-hmc-measured``: M(p) = 1/G(p) from the measured propagator;
* ``flow``: flow independence Metropolis (``sample.mode: mcmc``) with a trained flow;
* ``flow-reweighted``: the same flow's independent draws reweighted (``sample.mode: importance``,
  self-normalised, exact as N -> infinity with an O(1/N) bias): each observable's effective
  tau_eff = N var<O> / (2 var_p O) (:func:`lattice_flows.estimates.reweighting_tau`, jackknife
  error) takes the place of tau_int, and the acceptance column shows ESS/N;
* ``composite``: one flow independence step and one HMC trajectory per sweep on the same chains
  (``sample.mode: composite``); ``composite-fa``: with FA-HMC (``fa-hmc``'s settings),

the run's HDF5 file is analysed with the Gamma-method (:func:`lattice_flows.tables.analyze_samples`)
and the CPU-seconds per effective sample of |M|, M^2, chi2 and E are

    cost(O) = 2 tau_int(O) x (production CPU-s per chain and saved row),

with the error 2 d tau_int(O) x (CPU-s per row) from the tau_int error. Production CPU-s are the
file's ``cpu_s`` less its ``therm_cpu_s`` (thermalisation and tuning, a one-off like training).
The training cost of a flow is shown separately and, amortised over 10^6 samples, added to the
cost per row in a second figure. Ratios are against the best classical (HMC-kind) sampler of the
same point and observable. At the broken-phase point the rows also give the tunnelling rate
(sign changes of M per chain and saved row) and <|M|>.

Output: ``samplers.md`` and ``samplers.json`` in --results, and one JSON line at the end.

    python benchmarks/samplers.py --points L16 --samplers hmc,hmc-tuned,fa-hmc \
        --work runs/samplers
    python benchmarks/samplers.py --points L32 --samplers flow,composite \
        --flow L32=runs/ladder_cnf/L32/flow.pt --append
    python benchmarks/samplers.py --render-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _hardware import hardware as shared_hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.comparison import CLASSICAL_KINDS  # noqa: E402  (the "best classical" kinds)
from lattice_flows.config import apply_overrides, config_from_dict, load_raw  # noqa: E402
from lattice_flows.io.sample_reader import SampleFile  # noqa: E402
from lattice_flows.tables import analyze_samples  # noqa: E402

AMORTISE_SAMPLES = 1_000_000
OBSERVABLES = ("M", "absM", "M2", "chi2", "E")
#: with no sign change of M in n row pairs, the 95 % Poisson upper bound on the flip rate is
#: 3 / n, and tau_int(M) of a two-state telegraph chain, 1 / (2 rate), is at least n / 6
NO_FLIP_RATE_BOUND = 3.0
POINTS = {
    "L16": "configs/ladder/L16.yaml",
    "L32": "configs/ladder/L32.yaml",
    "broken16": "configs/broken/L16.yaml",
}
#: sampler name -> (entry point, config overrides)
FA_FREE = ["hmc.fourier_acceleration=true", "hmc.fa_kernel=free", "hmc.fa_mu2=auto"]
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "hmc": ("hmc", []),
    "hmc-tuned": ("hmc", ["hmc.trajectory_length=auto"]),
    "fa-hmc": ("hmc", FA_FREE),
    "fa-hmc-tuned": ("hmc", [*FA_FREE, "hmc.trajectory_length=auto"]),
    "fa-hmc-measured": ("hmc", ["hmc.fourier_acceleration=true", "hmc.fa_kernel=measured"]),
    "flow": ("sample", ["sample.mode=mcmc"]),
    "flow-reweighted": ("sample", ["sample.mode=importance"]),
    "composite": ("sample", ["sample.mode=composite"]),
    "composite-fa": ("sample", ["sample.mode=composite", *FA_FREE]),
}


def hardware() -> dict:
    """benchmarks/_hardware.py's fields and line; ``cuda`` keeps this script's meaning (the GPU's
    name or None, as in the committed samplers.json), the toolkit is ``cuda_version``."""
    hw = shared_hardware()
    return {**hw, "cuda_version": hw["cuda"], "line": hardware_line(hw),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def hardware_text(hw: dict) -> str:
    """The hardware sentence of the table: the shared line, or (results of older versions,
    without it) CPU, capability, torch, threads and CUDA."""
    if "line" in hw:
        return hw["line"]
    return (f"{hw['cpu']} ({hw['cpu_capability']}), torch {hw['torch']}, {hw['threads']} "
            f"thread(s), CUDA: {hw['cuda']}")


def sign_changes(M: np.ndarray) -> tuple[int, int]:
    """(sign changes of M, row pairs) over all chains; ``M`` has shape (rows, chains)."""
    s = np.sign(M)
    return int((s[1:] != s[:-1]).sum()), max(1, (M.shape[0] - 1) * M.shape[1])


def tunnelling_rate(M: np.ndarray) -> float:
    """Sign changes of M per chain and saved row; ``M`` has shape (rows, chains)."""
    flips, pairs = sign_changes(M)
    return flips / pairs


def sampler_row(point: str, sampler: str, sf: SampleFile, train_cpu_s: float | None = None,
                lam: float | None = None) -> dict:
    """The cost row of one run: tau_int, CPU-s per effective sample (with errors) per observable,
    acceptance, the run's production CPU-s per chain-row, tunnelling rate and <|M|>."""
    table = analyze_samples(sf)
    n_chain_rows = sf.n_saved * sf.n_chains
    attrs = sf.attrs
    prod_cpu = float(attrs.get("cpu_s", float("nan"))) - float(attrs.get("therm_cpu_s", 0.0))
    per_row = prod_cpu / n_chain_rows
    row: dict = {
        "point": point, "sampler": sampler, "kind": attrs.get("kind"), "L": sf.lattice_shape[-1],
        "lam": lam, "n_chains": sf.n_chains, "n_rows": sf.n_saved, "discard": table.discard,
        "cpu_s_production": prod_cpu, "cpu_s_per_row": per_row,
        "acceptance": (float(table["acceptance"].est.value) if attrs.get("kind") != "flow-importance"
                       else float("nan")),
        "tau_int": {}, "tau_int_err": {}, "cpu_s_per_eff": {}, "cpu_s_per_eff_err": {},
    }
    for key in ("step_size", "n_steps", "trajectory_length", "fa_mu2", "acceptance_flow",
                "acceptance_hmc"):
        if key in attrs:
            row[key] = attrs[key]
    if attrs.get("kind") == "flow-importance":
        row["ess"] = float(table["ESS/N"].est.value)
    for name in OBSERVABLES:
        est = table[name].est
        row["tau_int"][name], row["tau_int_err"][name] = est.tau_int, est.tau_int_error
        row["cpu_s_per_eff"][name] = 2 * est.tau_int * per_row
        row["cpu_s_per_eff_err"][name] = 2 * est.tau_int_error * per_row
    row["absM"], row["absM_err"] = table["absM"].est.value, table["absM"].est.error
    M = np.asarray(sf.observables()["M"][table.discard:])
    flips, pairs = sign_changes(M)
    row["tunnellings"], row["tunnelling_per_row"] = flips, flips / pairs
    if flips == 0:  # the Gamma-method tau_int(M) sees one sector only: replace it by the bound
        bound = pairs / (2 * NO_FLIP_RATE_BOUND)
        row["tau_int_lower_bound"] = {"M": bound}
        row["tau_int"]["M"], row["tau_int_err"]["M"] = bound, 0.0
        row["cpu_s_per_eff"]["M"], row["cpu_s_per_eff_err"]["M"] = 2 * bound * per_row, 0.0
    row["train_cpu_s"] = train_cpu_s
    if train_cpu_s is not None:
        amort = per_row + train_cpu_s / AMORTISE_SAMPLES
        row["cpu_s_per_eff_amortised"] = {n: 2 * row["tau_int"][n] * amort for n in OBSERVABLES}
    return row


def _is_bound(row: dict, name: str) -> bool:
    return name in row.get("tau_int_lower_bound", {})


def add_ratios(rows: list[dict]) -> list[dict]:
    """``ratio[O]`` = cost(O) / the lowest cost(O) of a classical sampler at the same point, measured
    on the same hardware (and ``best_classical[O]``, its name); rows without such a classical row
    get no ratio.
    Where a cost is a lower bound (no tunnelling seen), ``ratio_bound[O]`` says which way the
    ratio is bounded: 'upper' (the reference is a bound), 'lower' (the row is), 'none' (both)."""
    for r in rows:  # costs compare only on the same machine (rows of --append may differ)
        classical = [c for c in rows if c["point"] == r["point"] and c["kind"] in CLASSICAL_KINDS
                     and c.get("hardware") == r.get("hardware")]
        r["ratio"], r["best_classical"], r["ratio_bound"] = {}, {}, {}
        for name in OBSERVABLES:
            costs = [(c["cpu_s_per_eff"][name], c["sampler"], _is_bound(c, name)) for c in classical
                     if name in c["cpu_s_per_eff"] and math.isfinite(c["cpu_s_per_eff"][name])]
            if not costs or name not in r["cpu_s_per_eff"]:
                continue
            best, who, best_bound = min(costs)
            r["ratio"][name] = r["cpu_s_per_eff"][name] / best
            r["best_classical"][name] = who
            mine = _is_bound(r, name)
            if r["sampler"] != who and (best_bound or mine):
                r["ratio_bound"][name] = ("none" if best_bound and mine
                                          else "upper" if best_bound else "lower")
    return rows


def _pm(x: float, dx: float) -> str:
    return f"{x:.3g} ± {dx:.2g}" if math.isfinite(x) else "n/a"


def _value(r: dict, table: str, err: str, name: str, scale: float = 1.0) -> str:
    if name not in r[table]:
        return "n/a"
    if _is_bound(r, name):
        return f"> {r[table][name] * scale:.3g}"
    return _pm(r[table][name] * scale, r[err][name] * scale)


def _ratio(r: dict, name: str) -> str:
    if name not in r.get("ratio", {}):
        return "n/a"
    sign = {"upper": "< ", "lower": "> ", "none": "? "}.get(r["ratio_bound"].get(name), "")
    return f"{sign}{r['ratio'][name]:.3g}"


def _acceptance(r: dict) -> str:
    if "ess" in r:  # reweighted independent draws: no accept/reject
        return f"— (ESS/N {r['ess']:.3f})"
    return f"{r['acceptance']:.3f}"


def hardware_note(rows: list[dict], hw: dict) -> str:
    """The hardware of the rows: one line, or (rows of several machines, merged by --append) each
    machine with the points and samplers measured on it; a row without its own line ran on ``hw``."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r.get("hardware", hardware_text(hw)), []).append(f"{r['point']} {r['sampler']}")
    if len(groups) <= 1:
        return next(iter(groups), hardware_text(hw))
    return "; ".join(f"{line} for {', '.join(names)}" for line, names in groups.items()) + (
        " (ratios only between rows of the same machine)")


def markdown(rows: list[dict], hw: dict) -> str:
    head = ["point", "L", "λ", "sampler", "acceptance", "τ_int M", "τ_int \\|M\\|", "τ_int M²",
            "τ_int E", "CPU-ms per row", "CPU-ms/eff. M", "CPU-ms/eff. \\|M\\|", "CPU-ms/eff. M²",
            "CPU-ms/eff. χ₂", "CPU-ms/eff. E", "ratio M² (vs best classical)", "ratio M",
            "training CPU-s", "CPU-ms/eff. M² incl. training/10⁶", "tunnellings (per row)",
            "⟨\\|M\\|⟩"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ms = 1e3
    for r in rows:
        am = r.get("cpu_s_per_eff_amortised")
        cells = [r["point"], str(r["L"]), f"{r['lam']:g}" if r["lam"] is not None else "n/a",
                 r["sampler"], _acceptance(r),
                 *(_value(r, "tau_int", "tau_int_err", n) for n in ("M", "absM", "M2", "E")),
                 f"{r['cpu_s_per_row'] * ms:.3g}",
                 *(_value(r, "cpu_s_per_eff", "cpu_s_per_eff_err", n, ms)
                   for n in ("M", "absM", "M2", "chi2", "E")),
                 _ratio(r, "M2"), _ratio(r, "M"),
                 f"{r['train_cpu_s']:.0f}" if r["train_cpu_s"] is not None else "—",
                 f"{am['M2'] * ms:.3g}" if am else "—",
                 f"{r.get('tunnellings', 'n/a')} ({r['tunnelling_per_row']:.3g})",
                 _pm(r["absM"], r["absM_err"])]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        f"Hardware: {hardware_note(rows, hw)}. Cost per effective sample = 2 τ_int × production CPU-s per "
        "chain and saved row (thermalisation/tuning and training excluded; training amortised over "
        "10⁶ samples in its own column); errors from the τ_int errors (Γ-method, S = 1.5, chains as "
        "replicas). Ratio: against the cheapest HMC-kind sampler of the same point and observable "
        "(< 1: cheaper than the best classical sampler). '> x': no sign change of M in the run, so "
        "τ_int(M) is bounded below by n/6 (n: row pairs over all chains; 95 % Poisson bound 3/n on "
        "the flip rate, τ_int = 1/(2 rate) for a two-state chain); ratios against such a bound are "
        "upper bounds ('< x'). flow-reweighted: independent draws reweighted by w = exp(-S - log q); "
        "its τ_int is each observable's effective τ = N var⟨O⟩ / (2 var_p O) of the reweighted "
        "mean, so cost = 2 τ × CPU-s per draw as for the chains.")
    return "\n".join(out)


def run_one(point: str, sampler: str, work: Path, overrides: list[str], flows: dict[str, Path]):
    """Run (or resume: the run folder is kept) one sampler at one point; returns the sample file
    path, the training CPU-s of its flow (None for HMC) and lam."""
    from lattice_flows import api

    entry, sets = SAMPLERS[sampler]
    raw = apply_overrides(load_raw(REPO / POINTS[point]), [*sets, *overrides])
    raw["output"]["dir"] = str(work / point / sampler)
    raw["device"] = "auto"
    train_cpu = None
    if entry == "sample":
        if point not in flows:
            raise SystemExit(f"sampler {sampler!r} at point {point!r} needs --flow {point}=FLOW_PT")
        raw["sample"]["flow"] = str(flows[point])
        summary = flows[point].parent / "train_summary.json"
        if summary.exists():
            train_cpu = float(json.loads(summary.read_text())["train_cpu_s"])
    cfg = config_from_dict(raw)
    path = api.hmc(cfg) if entry == "hmc" else api.sample(cfg)
    return path, train_cpu, cfg.action.lam


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default="L16", help=f"comma-separated, of {', '.join(POINTS)}")
    p.add_argument("--samplers", default="hmc,hmc-tuned,fa-hmc",
                   help=f"comma-separated, of {', '.join(SAMPLERS)}")
    p.add_argument("--flow", action="append", default=[], metavar="POINT=FLOW_PT",
                   help="the trained flow of a point (its train_summary.json beside it gives the "
                        "training CPU-s)")
    p.add_argument("--train-cpu", action="append", default=[], metavar="POINT=CPU_S",
                   help="the training CPU-s of a point's flow over its whole transfer chain (default: "
                        "train_cpu_s of the train_summary.json beside the flow, the last rung only)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every run, e.g. hmc.n_traj=20000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="run folders (kept; a rerun resumes/extends them)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--append", action="store_true",
                   help="merge into results/samplers.json (a row of the same point and sampler is replaced)")
    p.add_argument("--render-only", action="store_true", help="samplers.md again from samplers.json")
    args = p.parse_args()
    res = Path(args.results)
    if args.render_only:
        data = json.loads((res / "samplers.json").read_text())
        md = markdown(add_ratios(data["rows"]), data["hardware"])
        (res / "samplers.md").write_text("# Samplers side by side\n\n" + md + "\n")
        print(md)
        return 0
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import logging

    logging.basicConfig(level=logging.WARNING)
    flows = {}
    for item in args.flow:
        point, _, path = item.partition("=")
        flows[point] = Path(path)
    train_cpu = {}
    for item in args.train_cpu:
        point, _, value = item.partition("=")
        train_cpu[point] = float(value)
    work = Path(args.work or f"/tmp/lattice_flows_samplers_{os.getpid()}")
    hw = hardware()
    print(f"# samplers benchmark; hardware: {hw['line']}", flush=True)
    rows = []
    for point in args.points.split(","):
        for sampler in args.samplers.split(","):
            t0 = time.perf_counter()
            path, trained, lam = run_one(point, sampler, work, args.overrides, flows)
            if trained is not None and point in train_cpu:
                trained = train_cpu[point]
            row = sampler_row(point, sampler, SampleFile(path), trained, lam)
            row["file"] = str(path)
            row["hardware"] = hw["line"]
            rows.append(row)
            print(f"{point} {sampler}: {time.perf_counter() - t0:.0f} s wall, acceptance "
                  f"{row['acceptance']:.3f}, tau_int(M2) {row['tau_int']['M2']:.2f}, "
                  f"CPU-ms/eff. M2 {row['cpu_s_per_eff']['M2'] * 1e3:.3g}", flush=True)
    res.mkdir(parents=True, exist_ok=True)
    old = []
    if args.append and (res / "samplers.json").exists():
        committed = json.loads((res / "samplers.json").read_text())
        old = [{"hardware": hardware_text(committed["hardware"]), **r} for r in committed["rows"]]
    keys = {(r["point"], r["sampler"]) for r in rows}
    rows = add_ratios([r for r in old if (r["point"], r["sampler"]) not in keys] + rows)
    rows.sort(key=lambda r: (list(POINTS).index(r["point"]), list(SAMPLERS).index(r["sampler"])))
    (res / "samplers.json").write_text(json.dumps({"hardware": hw, "rows": rows}, indent=1))
    md = markdown(rows, hw)
    (res / "samplers.md").write_text("# Samplers side by side\n\n" + md + "\n")
    print(md)
    print(json.dumps({"benchmark": "samplers", "hardware": hw, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
