"""``compile: true`` against eager code, side by side (lattice_flows/compiled.py, issue 16).

Measured, each as eager vs compiled in one process with one thread, A/B interleaved in rounds
(the first round is the warm-up, which compiles; its wall time is the one-off compile time):

* training step (loss, backward, Adam) of the ladder flow, the setup of benchmarks/train_step.py
  (configs/ladder/L{8,16}.yaml flow: Fourier + zero-mode layers, 8 equivariant affine couplings,
  hidden [16, 16], silu; batch 32; the configs' objective path_gradient_fast, and reverse);
* flow proposals per second at L = 16 (``flow.sample`` without gradients, blocks of 1024, the
  config's sample.batch_size);
* HMC trajectories (``HMC.step``, float64, 16 chains, leapfrog, the configs' n_steps, fixed
  length) at L = 16 and 32, unit mass and Fourier-accelerated.

Each figure is the median over the measured rounds with its spread (min and max); CPU-ms
(``time.process_time``, one thread). The inductor cache starts empty (a fresh
TORCHINDUCTOR_CACHE_DIR) so the compile times are cold ones, unless ``--warm-cache``.
Writes results/compile.{md,json}.

    TORCHINDUCTOR_COMPILE_THREADS=1 python benchmarks/compile.py
    python benchmarks/compile.py --rounds 3 --only hmc
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if "--warm-cache" not in sys.argv and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402

from _hardware import hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.config import config_from_dict, load_raw  # noqa: E402
from lattice_flows.flows import build_flow  # noqa: E402
from lattice_flows.flows.compiled_flow import compile_flow  # noqa: E402
from lattice_flows.malloc import keep_freed_memory  # noqa: E402
from lattice_flows.mcmc.fourier_mass import free_mass  # noqa: E402
from lattice_flows.mcmc.hmc import HMC  # noqa: E402
from lattice_flows.mcmc.hmc_compiled import compile_hmc  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.training.estimators import make_estimator  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def ladder(L: int):
    cfg = config_from_dict(load_raw(REPO / "configs" / "ladder" / f"L{L}.yaml"))
    return cfg, Phi4Action(cfg.action.m2, cfg.action.lam, 2)


def ab(work: dict, rounds: int, repeats: int) -> dict:
    """Run ``work[name]()`` ``repeats`` times per round for every variant, interleaved, for
    ``rounds`` rounds; round 0 is the warm-up (its wall-s is the one-off cost, compilation
    included). Returns per variant: CPU-ms per call of every measured round, and warm-up wall-s."""
    torch._dynamo.reset()  # each figure's compile time from an empty in-process cache
    out = {name: {"ms": [], "warmup_wall_s": 0.0} for name in work}
    for r in range(rounds):
        for name, fn in work.items():
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                fn()
            cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
            if r == 0:
                out[name]["warmup_wall_s"] = wall
            else:
                out[name]["ms"].append(1000 * cpu / repeats)
    return out


def summary(res: dict) -> dict:
    """Median and spread (min, max) of the measured rounds, and the speed-up compiled/eager."""
    rows = {}
    for name, r in res.items():
        ms = r["ms"]
        rows[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                      "rounds_ms": ms, "warmup_wall_s": r["warmup_wall_s"]}
    e, c = rows["eager"]["median_ms"], rows["compiled"]["median_ms"]
    rows["speedup"] = e / c
    # the one-off compile cost: the compiled warm-up beyond the eager one
    rows["compile_s"] = rows["compiled"]["warmup_wall_s"] - rows["eager"]["warmup_wall_s"]
    return rows


def eager_and_compiled(cfg, L: int) -> dict:
    """The ladder flow (seed 0) and a compiled copy of it: the same weights in both."""
    torch.manual_seed(0)
    eager = build_flow(cfg.flow, (L, L), m2=cfg.action.m2)
    return {"eager": eager, "compiled": compile_flow(copy.deepcopy(eager))}


def training(L: int, objective: str, rounds: int, repeats: int, batch: int = 32) -> dict:
    cfg, action = ladder(L)
    flows = eager_and_compiled(cfg, L)
    work = {}
    for name, flow in flows.items():
        est = make_estimator(objective, action)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(1)

        def step(flow=flow, est=est, opt=opt, gen=gen):
            loss, _ = est.loss(flow, batch, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        work[name] = step
    return summary(ab(work, rounds, repeats))


def proposals(L: int, rounds: int, repeats: int, block: int = 1024) -> dict:
    cfg, _ = ladder(L)
    flows = eager_and_compiled(cfg, L)
    work = {}
    for name, flow in flows.items():
        gen = torch.Generator().manual_seed(1)

        @torch.no_grad()
        def draw(flow=flow, gen=gen):
            flow.sample(block, generator=gen)
        work[name] = draw
    rows = summary(ab(work, rounds, repeats))
    for name in ("eager", "compiled"):  # ms per block -> proposals/s
        rows[name]["proposals_per_s"] = 1000 * block / rows[name]["median_ms"]
    return rows


def trajectories(L: int, fa: bool, rounds: int, repeats: int, chains: int = 16) -> dict:
    cfg, action = ladder(L)
    n_steps = cfg.hmc.n_steps
    mass = free_mass((L, L), 1.0) if fa else None
    work = {}
    for name in ("eager", "compiled"):
        gen = torch.Generator().manual_seed(2)
        hmc = HMC(action, 0.05, n_steps, "leapfrog", jitter=0.0, generator=gen, mass=mass)
        if name == "compiled":
            compile_hmc(hmc)
        state = {"phi": 0.5 * torch.randn(chains, L, L, generator=gen, dtype=torch.float64)}

        def trajectory(hmc=hmc, state=state):
            state["phi"] = hmc.step(state["phi"])[0]
        work[name] = trajectory
    rows = summary(ab(work, rounds, repeats))
    rows["n_steps"] = n_steps
    return rows


def fmt_row(what: str, r: dict, unit: str = "ms") -> str:
    e, c = r["eager"], r["compiled"]
    return (f"| {what} | {e['median_ms']:.2f} ({e['min_ms']:.2f}–{e['max_ms']:.2f}) | "
            f"{c['median_ms']:.2f} ({c['min_ms']:.2f}–{c['max_ms']:.2f}) | {r['speedup']:.2f}× | "
            f"{r['compile_s']:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (the first is warm-up)")
    p.add_argument("--only", choices=("train", "sample", "hmc"), default=None,
                   help="measure one part; the others are kept from results/compile.json")
    p.add_argument("--warm-cache", action="store_true", help="keep the user's inductor cache")
    p.add_argument("--note", default="", help="what else ran on the machine (written with the figures)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    hw = hardware()
    print(f"# compile benchmark; {hardware_line(hw)}", flush=True)
    out: dict = {"benchmark": "compile", "hardware": hw, "rounds": args.rounds,
                 "cold_cache": not args.warm_cache, "train": [], "sample": [], "hmc": []}
    if args.only in (None, "train"):
        for L in (8, 16):
            for objective in ("path_gradient_fast", "reverse"):
                r = training(L, objective, args.rounds, 10)
                out["train"].append({"L": L, "objective": objective, "batch": 32, **r})
                print(f"train L={L} {objective}: " + fmt_row("", r), flush=True)
    if args.only in (None, "sample"):
        r = proposals(16, args.rounds, 2)
        out["sample"].append({"L": 16, "block": 1024, **r})
        print(f"sample L=16: {r['eager']['proposals_per_s']:.0f} vs "
              f"{r['compiled']['proposals_per_s']:.0f} proposals/s; " + fmt_row("", r), flush=True)
    if args.only in (None, "hmc"):
        for L in (16, 32):
            for fa in (False, True):
                r = trajectories(L, fa, args.rounds, 10)
                out["hmc"].append({"L": L, "fourier": fa, "chains": 16, "dtype": "float64", **r})
                print(f"hmc L={L} fa={fa}: " + fmt_row("", r), flush=True)
    print(json.dumps(out))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        if args.only and (RESULTS / "compile.json").exists():  # one part re-measured: keep the rest
            old = json.loads((RESULTS / "compile.json").read_text())
            out = {**old, args.only: out[args.only],
                   "notes": {**old.get("notes", {}), args.only: args.note}}
        else:
            out["notes"] = {k: args.note for k in ("train", "sample", "hmc")}
        (RESULTS / "compile.json").write_text(json.dumps(out, indent=1) + "\n")
        (RESULTS / "compile.md").write_text(markdown(out))
    return 0


def markdown(out: dict) -> str:
    hw = out["hardware"]
    lines = [
        "# compile: true vs eager (benchmarks/compile.py)", "",
        f"Hardware: {hardware_line(hw)}.",
        f"Rounds: {out['rounds']} interleaved A/B (first = warm-up, which compiles); median "
        "CPU-ms per call over the others, (min–max) spread; inductor cache "
        f"{'cold (fresh directory)' if out['cold_cache'] else 'warm'}; compile s = wall-s of the "
        "compiled warm-up round minus the eager one.",
    ]
    for part, note in out.get("notes", {}).items():
        lines.append(f"What else ran ({part}): {note or 'not recorded (pass --note)'}")
    lines += ["", "| what | eager ms | compiled ms | speed-up | compile s |", "|---|---|---|---|---|"]
    for r in out["train"]:
        lines.append(fmt_row(f"training step, L = {r['L']}, {r['objective']}, batch 32", r))
    for r in out["sample"]:
        lines.append(fmt_row(
            f"flow proposals, L = 16, block 1024 ({r['eager']['proposals_per_s']:.0f} vs "
            f"{r['compiled']['proposals_per_s']:.0f} proposals/s)", r))
    for r in out["hmc"]:
        lines.append(fmt_row(f"HMC trajectory, L = {r['L']}, {r['n_steps']} leapfrog steps, "
                             f"{'FA' if r['fourier'] else 'unit mass'}, 16 chains, float64", r))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
