"""E-ladder benchmark: flow MCMC vs HMC as the lattice grows at fixed xi ~ L/4.

For each rung of ``configs/ladder/`` (m2 = -4, lam tuned so that xi ~ L/4):

* HMC of this package (the rung's ``hmc`` section): tau_int of |M| and M^2 in trajectories,
  CPU-seconds per trajectory (all chains), CPU-s per effective sample of M^2, and the correlation
  length xi = 1/m_eff from C(t) (the check xi ~ L/4);
* the flow (the rung's ``flow``/``train`` sections, trained for the rung's CPU budget, optionally
  starting from the previous rung's flow): ESS/N on >= 10,240 fresh samples, the acceptance of
  an independence-Metropolis chain over them, tau_int of |M| and M^2 along that chain,
  proposals per second and CPU-s per effective sample of M^2, with and without the training
  cost amortised over 10^6 samples;
* the ratio flow/HMC of the cost per effective sample of M^2.

Every row also carries the per-site error eps = -ln(ESS/N) / V (docs/conventions.md, "Flow
quality at scale"), the training budget used (CPU-s, or GPU-s where a GPU was used, and the
steps taken), the CPU capability torch dispatches to and the reference step time of
``benchmarks/train_step.py`` at L = 8 measured at the start of the same run, so that a reader
can rescale budgets to another machine. Where a rung has rows of >= 2 seeds (``--seeds``, or
rows added with ``--append``), a second table gives the spread of eps over the seeds.

Output: a markdown table and a plot of acceptance and ESS versus L in benchmarks/results/
(``ladder.md``, ``ladder.png``, ``ladder.json``), and the JSON line at the end.

    python benchmarks/ladder.py                       # rungs 8,12,16 with their budgets
    python benchmarks/ladder.py --rungs 8,12,16,20,32 --budget-scale 1.0
    python benchmarks/ladder.py --quick               # smoke test: tiny budgets
    python benchmarks/ladder.py --rungs 20,32 --append  # add rungs to the committed table
    python benchmarks/ladder.py --rungs 20,32 --append --reuse-hmc --init-from runs/L16/flow.pt
    python benchmarks/ladder.py --rungs 16 --seeds 16,1616 --no-transfer --append  # eps spread
    python benchmarks/ladder.py --render-only         # ladder.md again from ladder.json
    # the CNF chain 16 -> 32 -> 64 (configs/ladder_cnf), rows beside those of configs/ladder:
    python benchmarks/ladder.py --configs configs/ladder_cnf --rungs 16,32,64 --append
    # the same, evaluating flows and HMC runs made before with lattice-flows train / hmc:
    python benchmarks/ladder.py --configs configs/ladder_cnf --rungs 16,32,64 --append \
        --flows-from runs/ladder_cnf --hmc-from runs/ladder_cnf_hmc
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _hardware import hardware as shared_hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.tables import analyze_samples  # noqa: E402
from lattice_flows.config import apply_overrides, config_from_dict, load_raw  # noqa: E402
from lattice_flows.devices import resolve_device  # noqa: E402
from lattice_flows.flows.flowfile import load_flow  # noqa: E402
from lattice_flows.flows.quality import evaluate_flow  # noqa: E402
from lattice_flows.io.sample_reader import SampleFile  # noqa: E402
from lattice_flows.mcmc.hmc_run import run_hmc  # noqa: E402
from lattice_flows.runtime.seeds import derive_seed, make_generator  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.training.trainer import train_flow  # noqa: E402
from train_step import REFERENCE, reference_step_ms  # noqa: E402  (benchmarks/train_step.py)

AMORTISE_SAMPLES = 1_000_000


def hardware() -> dict:
    """benchmarks/_hardware.py's fields and line; ``cuda`` keeps this script's meaning (the GPU's
    name or None, as in the committed ladder.json), the toolkit is ``cuda_version``."""
    hw = shared_hardware()
    return {**hw, "cuda_version": hw["cuda"], "line": hardware_line(hw),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def hardware_text(hw: dict) -> str:
    """The hardware sentence of the table: the shared line, or (results of older versions,
    without it) CPU, torch, threads and CUDA."""
    if "line" in hw:
        return hw["line"]
    return f"{hw['cpu']}, torch {hw['torch']}, {hw['threads']} thread(s), CUDA: {hw['cuda']}"


def per_site_error(ess: float, volume: int) -> float:
    """eps = -ln(ESS/N) / V (docs/conventions.md, "Flow quality at scale"); inf for ESS = 0."""
    return -math.log(ess) / volume if ess > 0 else math.inf


def row_volume(row: dict) -> int:
    """V of a ladder row: its stored ``volume``, else L^2 (the ladder is two-dimensional)."""
    return int(row.get("volume") or row["L"] ** 2)


def row_epsilon(row: dict) -> float:
    """eps of a row, computed from its stored ESS/N and V (rows written before eps existed too)."""
    return per_site_error(row["ess"], row_volume(row))


DEFAULT_CONFIGS = "configs/ladder"


def row_configs(row: dict) -> str:
    """The folder of rung configs a row ran (rows written before it was stored: configs/ladder)."""
    return row.get("configs") or DEFAULT_CONFIGS


def config_seed(L: int, configs: str = DEFAULT_CONFIGS) -> int | None:
    """The seed of <configs>/L<L>.yaml (what a row without a stored seed ran with)."""
    path = REPO / configs / f"L{L}.yaml"
    return int(load_raw(path).get("seed", 0)) if path.exists() else None


def row_seed(row: dict) -> int | None:
    return row["seed"] if row.get("seed") is not None else config_seed(row["L"], row_configs(row))


def row_key(row: dict) -> tuple:
    """What identifies a row in results/ladder.json (--append replaces a row of the same key)."""
    return (row_configs(row), row["L"], row_seed(row))


def _na(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def start_of(row: dict) -> str:
    """How a rung started: from scratch, from the previous rung's flow, or from a given flow."""
    if row.get("init_desc"):
        return "initialised from " + row["init_desc"]
    if row.get("transfer_from"):
        name = Path(row["transfer_from"]).parent.name
        if name[:1] == "L" and name[1:].isdigit():
            return "initialised from the L = " + name[1:] + " flow"
        return "initialised from " + row["transfer_from"]
    return "trained from scratch"


def seed_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows that differ only in their seed: same L, lam, start and overrides (seed= dropped),
    in order of first appearance; only groups of >= 2 distinct seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        over = tuple(o for o in (r.get("overrides") or []) if not o.startswith("seed="))
        groups.setdefault((row_configs(r), r["L"], r["lam"], start_of(r), over), []).append(r)
    return [g for g in groups.values() if len({row_seed(r) for r in g}) >= 2]


def epsilon_spread(group: list[dict]) -> dict:
    """Mean, sample standard deviation (n - 1) and range of eps over the rows of one group."""
    eps = [row_epsilon(r) for r in group]
    n = len(eps)
    mean = sum(eps) / n
    sd = math.sqrt(sum((e - mean) ** 2 for e in eps) / (n - 1))
    return {"n": n, "mean": mean, "sd": sd, "min": min(eps), "max": max(eps),
            "seeds": [row_seed(r) for r in group]}


def xi_from_rows(rows) -> tuple[float, float]:
    """xi = 1/m_eff at the largest t with a finite m_eff of relative error < 20%."""
    best = (math.nan, math.nan)
    for r in rows:
        if r.name.startswith("m_eff[") and r.est.value > 0 and r.est.error < 0.2 * r.est.value:
            best = (1.0 / r.est.value, r.est.error / r.est.value**2)
    return best


HMC_KEYS = ("hmc_tau_int_absM", "hmc_tau_int_M2", "hmc_cpu_s_per_traj", "hmc_acceptance",
            "hmc_n_traj", "hmc_chains", "xi", "xi_error")


def hmc_figures(cfg, run_dir: Path | None = None) -> dict:
    """HMC of the rung's ``hmc`` section: tau_int of |M| and M^2, CPU-s per trajectory, xi.
    ``run_dir``: an HMC run folder of the same config, resumed or extended (default: the rung's
    output folder)."""
    t = time.process_time()
    hmc_sf = SampleFile(run_hmc(cfg, run_dir, progress=False))
    hmc_cpu = float(hmc_sf.attrs.get("cpu_s", time.process_time() - t))
    rows = {r.name: r for r in analyze_samples(hmc_sf)}
    n_traj_chains = hmc_sf.n_saved * hmc_sf.n_chains
    xi, dxi = xi_from_rows(rows.values())
    return {
        "hmc_tau_int_absM": rows["absM"].est.tau_int, "hmc_tau_int_M2": rows["M2"].est.tau_int,
        # thermalisation excluded (cpu_s counts production)
        "hmc_cpu_s_per_traj": hmc_cpu / n_traj_chains,
        "hmc_acceptance": float(hmc_sf.accepted().mean()),
        "hmc_n_traj": hmc_sf.n_saved, "hmc_chains": hmc_sf.n_chains, "xi": xi, "xi_error": dxi,
    }


def trained_rung(run_dir: Path, cfg) -> tuple[int, float, str | None]:
    """(steps, training CPU-s, init_from) of a flow already trained in ``run_dir`` (``lattice-flows
    train`` of the rung's config); refuses a folder whose lattice, action, flow or train budget
    differ from the rung's config (after overrides)."""
    from lattice_flows.io.runfolder import read_run_config

    done = read_run_config(run_dir)
    if done is None:
        raise SystemExit(f"{run_dir}: no config.yaml; not a trained run folder")
    for sec in ("lattice", "action", "flow"):
        if getattr(done, sec) != getattr(cfg, sec):
            raise SystemExit(f"{run_dir}: its '{sec}' section differs from the rung's config")
    if done.train.time_budget != cfg.train.time_budget or done.train.objective != cfg.train.objective:
        raise SystemExit(f"{run_dir}: its training budget or objective differs from the rung's config")
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return int(summary["steps"]), float(summary["train_cpu_s"]), done.train.init_from


def chain_budget_before(start: Path, rows: list[dict], configs: str) -> float | None:
    """The chain budget of the row (of ``configs``) whose evaluated flow is the file ``start``
    (a rung trained in that row's ``trained_in`` folder); None when no row made that flow."""
    for r in rows:
        if row_configs(r) == configs and r.get("trained_in") and r.get("chain_budget_s") is not None \
                and same_file_bytes(Path(r["trained_in"]) / "flow.pt", start):
            return float(r["chain_budget_s"])
    return None


def same_file_bytes(a: Path, b: Path) -> bool:
    """Whether two files exist and hold the same bytes (a flow.pt copied or linked elsewhere)."""
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def run_rung(L: int, raw: dict, work: Path, budget_scale: float, transfer_from: Path | None,
             quick: bool, eval_samples: int, reuse_hmc: dict | None = None,
             trained: Path | None = None, hmc_dir: Path | None = None) -> dict:
    raw = json.loads(json.dumps(raw))
    raw["device"] = "cpu" if not torch.cuda.is_available() else raw.get("device", "auto")
    raw["output"]["dir"] = str(work / f"L{L}")
    raw["train"]["time_budget"] = float(raw["train"]["time_budget"]) * budget_scale
    raw["train"]["init_from"] = str(transfer_from) if transfer_from else None
    raw["train"]["eval_samples"] = 1024 if quick else 2048
    if quick:
        raw["hmc"].update(n_traj=200, n_therm=100)
    cfg = config_from_dict(raw)
    budget_kind = "GPU-s" if torch.cuda.is_available() else "CPU-s (1 thread)"

    hmc = dict(reuse_hmc) if reuse_hmc else hmc_figures(cfg, hmc_dir)

    if trained is not None:  # evaluate a flow trained before (same config), do not train
        steps, train_cpu_s, init = trained_rung(trained, cfg)
        transfer_from = Path(init) if init else None
        flow_dir = trained
    else:
        res = train_flow(cfg, progress=False)
        steps, train_cpu_s, flow_dir = res.steps, res.train_cpu_s, Path(cfg.output.dir)
    flow = load_flow(flow_dir / "flow.pt", cfg.lattice.shape,
                     resolve_device(cfg.device), torch.float32)
    action = Phi4Action(cfg.action.m2, cfg.action.lam, 2)
    gen = make_generator(resolve_device(cfg.device), derive_seed(cfg.seed, 0, 77))
    if trained is not None:  # warm up (oneDNN kernels, allocator) as training does otherwise
        evaluate_flow(flow, action, 2048, 1024 if L <= 32 else 256,
                      make_generator(resolve_device(cfg.device), derive_seed(cfg.seed, 0, 78)))
    cpu0 = time.process_time()
    ev = evaluate_flow(flow, action, eval_samples, 1024 if L <= 32 else 256, gen)
    cpu_per_proposal = (time.process_time() - cpu0) / eval_samples
    flow_cost = cpu_per_proposal * 2 * ev["tau_int_M2"]
    flow_cost_amortised = (cpu_per_proposal + train_cpu_s / AMORTISE_SAMPLES) * 2 * ev["tau_int_M2"]
    hmc_cost = hmc["hmc_cpu_s_per_traj"] * 2 * hmc["hmc_tau_int_M2"]
    return {
        "L": L, "lam": cfg.action.lam, "seed": cfg.seed, "volume": math.prod(cfg.lattice.shape),
        "budget_s": round(train_cpu_s, 1), "budget_kind": budget_kind,
        "train_steps": steps, "epsilon": per_site_error(ev["ess"], math.prod(cfg.lattice.shape)), "trained_in": str(trained) if trained else None, "ess": ev["ess"], "acceptance": ev["acceptance"],
        "tau_int_absM": ev["tau_int_absM"], "tau_int_M2": ev["tau_int_M2"],
        # per CPU-second of the one thread, like the costs (the wall-clock rate drops when
        # another process shares the core); rows written before 2026-12-01: per wall-second
        "proposals_per_s": 1.0 / cpu_per_proposal, "proposals_per_wall_s": ev["proposals_per_s"],
        "eval_samples": ev["n_samples"],
        **hmc, "hmc_reused": bool(reuse_hmc), "xi_target": L / 4,
        "hmc_cpu_s_per_eff_M2": hmc_cost, "flow_cpu_s_per_eff_M2": flow_cost,
        "flow_cpu_s_per_eff_M2_amortised": flow_cost_amortised,
        "cost_ratio_flow_over_hmc": flow_cost / hmc_cost,
        "cost_ratio_flow_over_hmc_amortised": flow_cost_amortised / hmc_cost,
        "transfer_from": str(transfer_from) if transfer_from else None,
    }


def markdown(rows: list[dict], hw: dict) -> str:
    """The table of ``rows`` (eps computed from ESS/N and V for every row; 'n/a' for fields a
    row lacks), the eps spread over seeds where a rung has >= 2, the start of each rung and the
    hardware line."""
    head = ("| configs | L | λ | seed | ξ (HMC) / target | budget used (rung / chain) | steps | ESS/N | ε = −ln(ESS/N)/V | "
            "acceptance | τ_int(\\|M\\|) flow | τ_int(M²) flow | proposals/s | τ_int(\\|M\\|) HMC | "
            "τ_int(M²) HMC | CPU-s/eff. M² HMC | CPU-s/eff. M² flow | flow/HMC | "
            "flow/HMC incl. training/10⁶ | CPU capability | ref. step L = 8 (CPU-ms) |")
    lines = [head, "|" + "---|" * 21]
    for r in rows:
        lines.append(
            f"| {row_configs(r).removeprefix('configs/')} | {r['L']} | {r['lam']} | {_na(r.get('seed'), 'd')} | "
            f"{r['xi']:.2f} ± {r['xi_error']:.2f} / {r['xi_target']:.0f} | "
            f"{r['budget_s']:.0f} / {_na(r.get('chain_budget_s'), '.0f')} {r['budget_kind']} | "
            f"{r['train_steps']} | {r['ess']:.3f} | "
            f"{row_epsilon(r):.2e} | "
            f"{r['acceptance']:.3f} | {r['tau_int_absM']:.2f} | {r['tau_int_M2']:.2f} | "
            f"{r['proposals_per_s']:.0f} | {r['hmc_tau_int_absM']:.2f} | {r['hmc_tau_int_M2']:.2f} | "
            f"{r['hmc_cpu_s_per_eff_M2']:.2e} | {r['flow_cpu_s_per_eff_M2']:.2e} | "
            f"{r['cost_ratio_flow_over_hmc']:.3g} | {r['cost_ratio_flow_over_hmc_amortised']:.3g} | "
            f"{r.get('cpu_capability') or 'n/a'} | {_na(r.get('ref_step_ms'), '.1f')} |"
        )
    groups = seed_groups(rows)
    if groups:
        lines += ["", "Per-site error over seeds (rows that differ only in the seed):", "",
                  "| configs | L | start | seeds | ε mean | ε sd (n − 1) | ε min – max |",
                  "|---|---|---|---|---|---|---|"]
        for g in groups:
            sp = epsilon_spread(g)
            seeds = ", ".join(_na(x, "d") for x in sp["seeds"])
            lines.append(f"| {row_configs(g[0]).removeprefix('configs/')} | {g[0]['L']} | {start_of(g[0])} | {seeds} | {sp['mean']:.2e} | "
                         f"{sp['sd']:.1e} | {sp['min']:.2e} – {sp['max']:.2e} |")
    lines.append("")
    for r in rows:  # how each rung started (runs of several invocations can be merged: --append)
        extra = ", ".join(r.get("overrides") or []) or "none"
        hmc = "; HMC figures reused from the earlier run of this rung" if r.get("hmc_reused") else ""
        note = f" {r['note']}" if r.get("note") else ""
        lines.append(f"* {row_configs(r)}, L = {r['L']}{'' if r.get('seed') is None else ', seed ' + str(r['seed'])}: "
                     f"{start_of(r)}; config overrides: {extra}{hmc}.{note}")
    lines.append("")
    lines.append(f"Hardware: {hardware_text(hw)}. HMC cost: production CPU-s per chain-trajectory x 2 τ_int; "
                 "flow cost: CPU-s per proposal x 2 τ_int of the independence chain. "
                 "Proposals/s: per CPU-second of the evaluation (rows without a CPU capability: "
                 "per wall-second). Budget used: training CPU-seconds (`time.process_time`, one thread) or GPU-s where "
                 "marked, of the rung and summed over its transfer chain (n/a: not recorded); ε = −ln(ESS/N)/V (docs/conventions.md, \"Flow quality at scale\"). "
                 f"Ref. step: CPU-ms per {REFERENCE['objective']} training step of the L = "
                 f"{REFERENCE['L']} ladder flow at batch {REFERENCE['batch']} "
                 "(`benchmarks/train_step.py`, `reference_step_ms`), measured at the start of the "
                 "run that made the row; n/a for rows made before it was recorded (a seed of n/a: the "
                 "rung config's seed, not stored with the row).")
    return "\n".join(lines)


def render(results: Path) -> str:
    """ladder.md (all rows and the earlier runs) from ``results/ladder.json``."""
    data = json.loads((results / "ladder.json").read_text())
    hw = data.get("hardware", {})
    md = markdown(data["rows"], hw)
    for run in data.get("earlier_runs", {}).values():
        md += "\n\n" + run["title"] + "\n\n" + markdown(run["rows"], run.get("hardware", hw))
    return "# E-ladder: flow MCMC vs HMC\n\n" + md + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ls = sorted({r["L"] for r in rows})  # the mean over the rows (seeds) of each L

    def mean(key: str) -> list[float]:
        return [sum(r[key] for r in rows if r["L"] == L) / sum(r["L"] == L for r in rows) for L in Ls]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(Ls, mean("acceptance"), "o-", label="Metropolis acceptance")
    ax.plot(Ls, mean("ess"), "s-", label="ESS/N")
    ax.set_xscale("log", base=2)
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.set_ylim(0, 1)
    ax.set_xlabel("L  (ξ ≈ L/4)")
    ax.set_title("flow quality along the E-ladder")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rungs", default="8,12,16", help="comma-separated L values of the --configs folder")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="folder of the rung configs L<L>.yaml, relative to the repository (default "
                        "configs/ladder; configs/ladder_cnf: the chain with a continuous layer)")
    p.add_argument("--hmc-from", default=None, metavar="DIR",
                   help="HMC run folders DIR/L<L> of the rungs' configs ('lattice-flows hmc ... --set "
                        "output.dir=DIR/L<L>'): resumed or extended to the rung's hmc section, not rerun")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply each rung's training budget")
    p.add_argument("--no-transfer", action="store_true", help="train every rung from scratch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=10240)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets and chains")
    p.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every rung (like the CLI), e.g. flow.zero_mode_layer=true")
    p.add_argument("--init-from", default=None, metavar="FLOW_PT",
                   help="start the first rung from this flow.pt instead of from scratch")
    p.add_argument("--init-desc", default=None,
                   help="how to describe --init-from in the results (provenance of that flow)")
    p.add_argument("--reuse-hmc", action="store_true",
                   help="take the HMC figures of a rung from results/ladder.json when it has a row "
                        "with the same L and lam (HMC does not depend on the flow)")
    p.add_argument("--flows-from", default=None, metavar="DIR",
                   help="evaluate the flows already trained in DIR/L<L> (run folders of the rungs' "
                        "configs, e.g. from 'lattice-flows train') instead of training")
    p.add_argument("--note", default=None, help="a remark stored with these rows and printed with them")
    p.add_argument("--append", action="store_true",
                   help="merge these rungs into the existing results/ladder.json (rows of other L "
                        "and its 'earlier_runs', each {title, rows}, kept; a row of the same L and "
                        "seed is replaced)")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="run the rungs once per seed (seed=S added to --set; with transfer, one "
                        "chain per seed): the table then shows the spread of eps over the seeds")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite ladder.md and ladder.png from results/ladder.json; run nothing")
    args = p.parse_args()
    res = Path(args.results)
    if args.render_only:
        md = render(res)
        (res / "ladder.md").write_text(md)
        plot(json.loads((res / "ladder.json").read_text())["rows"], res / "ladder.png")
        print(md)
        return 0
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work or f"/tmp/lattice_flows_ladder_{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    hw = hardware()
    print(f"# E-ladder benchmark; hardware: {hw['line']}", flush=True)
    ref_ms = reference_step_ms()  # the machine-speed reference, measured alongside (train_step.py)
    print(f"# reference step (train_step.py, L = {REFERENCE['L']}, {REFERENCE['objective']}, "
          f"batch {REFERENCE['batch']}): {ref_ms:.1f} CPU-ms", flush=True)
    committed = json.loads((res / "ladder.json").read_text()) if (res / "ladder.json").exists() else {}
    old_rows = committed.get("rows", [])
    rows = []
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    for seed in seeds:
        overrides = list(args.overrides) + ([f"seed={seed}"] if seed is not None else [])
        chain_work = work / f"seed{seed}" if len(seeds) > 1 else work
        prev = Path(args.init_from) if args.init_from else None
        chain_budget = 0.0  # training CPU-s of the rungs before, where each starts from the last
        for i, L in enumerate([int(x) for x in args.rungs.split(",")]):
            raw = apply_overrides(load_raw(REPO / args.configs / f"L{L}.yaml"), overrides)
            scale = args.budget_scale * (0.05 if args.quick else 1.0)
            reuse = None
            if args.reuse_hmc:
                same = [r for r in old_rows if r["L"] == L and r["lam"] == raw["action"]["lam"]]
                if same:
                    reuse = {k: same[0][k] for k in HMC_KEYS}
            t0 = time.time()
            start = prev if (i == 0 or not args.no_transfer) else None  # i == 0: --init-from or None
            row = run_rung(L, raw, chain_work, scale, start, args.quick,
                           1024 if args.quick else args.eval_samples, reuse,
                           Path(args.flows_from) / f"L{L}" if args.flows_from else None,
                           Path(args.hmc_from) / f"L{L}" if args.hmc_from else None)
            if args.flows_from and prev is not None and row["transfer_from"] \
                    and same_file_bytes(Path(row["transfer_from"]), prev):
                row["transfer_from"] = str(prev)  # trained from this chain's previous rung
            row["configs"] = args.configs
            if row["transfer_from"] and (prev is None or row["transfer_from"] != str(prev)):
                # not this chain's previous rung: a chain continued from a committed row's flow
                chain_budget = chain_budget_before(Path(row["transfer_from"]), old_rows, args.configs)
            started_here = row["transfer_from"] is None or chain_budget is None
            row["chain_budget_s"] = None if row["transfer_from"] and chain_budget is None \
                else row["budget_s"] + (0.0 if started_here else chain_budget)
            chain_budget = row["chain_budget_s"]
            if i == 0 and args.init_from:
                row["init_desc"] = args.init_desc or f"the flow {args.init_from}"
            row["wall_s"] = time.time() - t0
            row["overrides"] = overrides
            row["cpu_capability"] = hw["cpu_capability"]
            row["ref_step_ms"] = ref_ms
            if args.note:
                row["note"] = args.note
            rows.append(row)
            prev = (Path(args.flows_from) if args.flows_from else chain_work) / f"L{L}" / "flow.pt"
            print(f"L={L}: acceptance {row['acceptance']:.3f}, ESS/N {row['ess']:.3f}, "
                  f"eps {row['epsilon']:.2e}, xi {row['xi']:.2f} "
                  f"(target {L / 4:.0f}), HMC tau_int(M2) {row['hmc_tau_int_M2']:.2f}, "
                  f"cost ratio flow/HMC {row['cost_ratio_flow_over_hmc']:.3g} [{row['wall_s']:.0f} s]",
                  flush=True)
    earlier: dict = committed.get("earlier_runs", {}) if args.append else {}
    if args.append:
        new = {row_key(r) for r in rows}
        kept = [r for r in old_rows if row_key(r) not in new]
        rows = sorted(kept + rows, key=lambda r: r["L"])  # stable: seeds in order of arrival
    md = markdown(rows, hw)
    print(md)
    if not args.quick:
        res.mkdir(parents=True, exist_ok=True)
        for run in earlier.values():  # earlier runs kept for comparison (--append)
            md += "\n\n" + run["title"] + "\n\n" + markdown(run["rows"], run.get("hardware", hw))
        (res / "ladder.md").write_text("# E-ladder: flow MCMC vs HMC\n\n" + md + "\n")
        out = {"rows": rows, "hardware": hw, "earlier_runs": earlier}
        (res / "ladder.json").write_text(json.dumps(out, indent=1))
        plot(rows, res / "ladder.png")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    keys = ("L", "lam", "budget_s", "budget_kind", "train_steps", "ess", "acceptance", "tau_int_absM", "tau_int_M2",
            "proposals_per_s", "hmc_cpu_s_per_eff_M2", "flow_cpu_s_per_eff_M2")
    print(json.dumps({"benchmark": "ladder", "rows": [{k: r[k] for k in keys} | {
        "cost_ratio": r["cost_ratio_flow_over_hmc"],
        "cost_ratio_amortised": r["cost_ratio_flow_over_hmc_amortised"], "xi": r["xi"],
        "epsilon": row_epsilon(r), "seed": r.get("seed"), "ref_step_ms": r.get("ref_step_ms"),
        "cpu_capability": r.get("cpu_capability")} for r in rows],
        "hardware": hw}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
