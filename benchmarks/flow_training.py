#!/usr/bin/env python
"""Benchmark of flow training at the tutorial point under a fixed CPU-time budget.

Usage::

    python benchmarks/flow_training.py [--budget 150] [--quick] [--seed S] [--out DIR]

At d = 2, L = 8, m2 = -4, lam = 8 (docs/conventions.md, "Standard test points", "tutorial") two flows
are trained with :func:`lattice_flows.training.trainer.train_flow`, each for ``--budget``
CPU-seconds (``train.time_budget``, measured with ``time.process_time``) on ONE torch thread:

* ``ours``: the configuration of ``configs/tutorial_flow.yaml`` (chosen by the ablation in
  docs/ablation_flow_training.md), with ``train.time_budget = budget``;
* ``baseline``: the published tutorial model (Albergo et al. 2021, arXiv:2101.08176):
  :data:`~lattice_flows.flows.BASELINE_FLOW_CONFIG` (16 non-equivariant affine couplings, conv
  hidden [8, 8], kernel 3, LeakyReLU, no Fourier layer), Adam lr 1e-3 constant, batch 64,
  reverse KL.

Each trained flow is then measured on 10,240 fresh samples (no grad, batches of 1024):

* ``ess``: ESS/N = (sum w)^2 / (N sum w^2) over all 10,240 log-weights (docs/conventions.md);
* ``acceptance``: of ONE independence-Metropolis chain run over the 10,240 proposals in order
  (:func:`lattice_flows.flows.quality.chain_figures`; the first proposal only initialises it);
* ``tau_int_absM``: tau_int of |M| of that chain's current state after each step (Gamma-method,
  Wolff 2004, S = 1.5, :func:`lattice_flows.estimates.gamma_method`), in units of proposals;
  1/2 means uncorrelated;
* ``proposals_per_s``: proposals per CPU-second (``time.process_time``; one thread, so equal to
  proposals per wall second on an idle core) of flow sampling + log q + action (float64), no
  grad, after a warm-up batch; best of 3 passes of 4,096 proposals, at the better of the batch
  sizes 256 and 1024 (``proposals_batch``; both rates are listed as ``proposals_per_s_b256`` and
  ``proposals_per_s_b1024``). CPU time is used because wall time on a shared machine measures the
  neighbours too; ``proposals_per_wall_s`` is given as well;
* ``train_steps``, ``train_cpu_s``, ``params``.

``--quick`` uses a 20 CPU-s budget and 2,048 measurement samples (a smoke test). The output
ends with exactly one line holding a JSON object with the keys "ours" and "baseline".
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from lattice_flows.config import config_from_dict, load_raw  # noqa: E402
from _hardware import hardware as shared_hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.flows import BASELINE_FLOW_CONFIG, build_flow  # noqa: E402
from lattice_flows.estimates import effective_sample_size  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.flows.flowfile import load_flow_weights  # noqa: E402
from lattice_flows.flows.quality import chain_figures, sample_log_weights  # noqa: E402
from lattice_flows.training.train_state import FLOW_NAME  # noqa: E402
from lattice_flows.training.trainer import train_flow  # noqa: E402
from lattice_flows.malloc import keep_freed_memory  # noqa: E402

SHAPE, M2, LAM = (8, 8), -4.0, 8.0
REPO = Path(__file__).resolve().parent.parent
OURS_CONFIG = REPO / "configs" / "tutorial_flow.yaml"

BASELINE_FLOW = {**asdict(BASELINE_FLOW_CONFIG),
                 "hidden_channels": list(BASELINE_FLOW_CONFIG.hidden_channels)}
BASELINE_TRAIN = {"batch_size": 64, "lr": 1e-3, "lr_schedule": "constant", "objective": "reverse",
                  "warmup_steps": 0, "grad_clip": 0.0}


def ours_sections() -> tuple[dict, dict]:
    """(flow, train) sections of configs/tutorial_flow.yaml."""
    raw = load_raw(OURS_CONFIG)
    return dict(raw["flow"]), dict(raw["train"])


def make_config(flow: dict, train: dict, budget: float, seed: int, out_dir: str):
    """A validated Config at the tutorial point; the budget (CPU-s) ends the training."""
    train = {**train, "time_budget": float(budget), "steps": 10**7,
             "eval_samples": 256, "eval_batch_size": 256,   # trainer's own check: cheap
             "checkpoint_every": 10**6, "log_every": 100}
    raw = {"lattice": {"shape": list(SHAPE)}, "action": {"m2": M2, "lam": LAM}, "seed": seed,
           "device": "cpu", "dtype": "float32", "flow": copy.deepcopy(flow), "train": train,
           "output": {"dir": out_dir}}
    return config_from_dict(raw)


TIMING_BATCHES = (256, 1024)


@torch.no_grad()
def proposal_rate(flow, action, batch: int, n: int = 4096, repeats: int = 3,
                  gen: torch.Generator | None = None) -> tuple[float, float]:
    """(proposals per CPU-s, per wall-s) of sampling + log q + action at ``batch``; best of
    ``repeats`` passes of about ``n`` proposals each (the best pass is the least disturbed by
    other processes on a shared machine)."""
    flow.sample(batch, generator=gen)  # warm-up (allocations, caches)
    best_cpu = best_wall = 0.0
    for _ in range(repeats):
        done, c0, t0 = 0, time.process_time(), time.perf_counter()
        while done < n:
            phi, log_q = flow.sample(batch, generator=gen)
            lw = -(action(phi.double()) + log_q.double())
            done += batch
        c, t = time.process_time() - c0, time.perf_counter() - t0
        best_cpu, best_wall = max(best_cpu, done / c), max(best_wall, done / t)
    del lw
    return best_cpu, best_wall


@torch.no_grad()
def measure_flow(flow, n_samples: int = 10240, batch: int = 1024, seed: int = 12345) -> dict:
    """ESS/N, independence-Metropolis acceptance, tau_int(|M|), proposals/s (see module doc;
    the chain figures are those of lattice_flows.flows.quality)."""
    action = Phi4Action(M2, LAM, len(SHAPE))
    flow.eval()
    gen = torch.Generator().manual_seed(seed)
    lw, mag, _ = sample_log_weights(flow, action, n_samples, batch, gen)
    # one independence-Metropolis chain over the proposals in order; the first one initialises
    u = torch.rand((lw.numel(), 1), generator=gen, dtype=torch.float64)
    chain = chain_figures(lw, mag, u, taus=("absM",))
    rates = {b: proposal_rate(flow, action, b, gen=gen) for b in TIMING_BATCHES}
    best_b = max(rates, key=lambda b: rates[b][0])
    return {
        "acceptance": chain["acceptance"],
        "ess": effective_sample_size(lw.numpy()),
        "tau_int_absM": chain["tau_int_absM"],
        "tau_int_absM_error": chain["tau_int_absM_error"],
        "proposals_per_s": rates[best_b][0],
        "proposals_batch": best_b,
        "proposals_per_wall_s": rates[best_b][1],
        **{f"proposals_per_s_b{b}": r[0] for b, r in rates.items()},
        "log_w_std": float(lw[torch.isfinite(lw)].std()),
        "n_samples": int(lw.numel()),
        "n_nonfinite": int((~torch.isfinite(lw)).sum()),
        "absM_chain_mean": chain["absM_chain_mean"],
    }


def train_and_measure(flow: dict, train: dict, budget: float, seed: int, out_dir: str,
                      n_samples: int = 10240) -> dict:
    """Train one flow for ``budget`` CPU-s with train_flow, rebuild it from flow.pt, measure it."""
    cfg = make_config(flow, train, budget, seed, out_dir)
    result = train_flow(cfg, run_dir=out_dir, progress=False)
    net = build_flow(cfg.flow, cfg.lattice.shape, cfg.action.m2)
    load_flow_weights(net, Path(out_dir) / FLOW_NAME)
    row = measure_flow(net, n_samples=n_samples, seed=seed + 12345)
    row.update({"train_steps": result.steps, "train_cpu_s": result.train_cpu_s,
                "params": net.n_params(), "nonfinite_steps": result.nonfinite_steps,
                "flow": cfg.to_dict()["flow"],
                "train": {k: v for k, v in cfg.to_dict()["train"].items()
                          if k in ("batch_size", "lr", "lr_schedule", "objective",
                                   "warmup_steps", "grad_clip", "optimizer")}})
    return row


def hardware() -> dict:
    hw = shared_hardware()
    return {**hw, "python": platform.python_version(), "line": hardware_line(hw)}


def main(argv=None) -> int:
    keep_freed_memory()  # the same allocator settings for every variant (lattice_flows/malloc.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=150.0, help="CPU-seconds of training per flow")
    ap.add_argument("--quick", action="store_true", help="20 CPU-s budget, 2048 samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="run folders go here (default: a tempdir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    budget = 20.0 if args.quick else args.budget
    n_samples = 2048 if args.quick else 10240

    hw = hardware()
    print(f"# Flow training benchmark: d=2, L={SHAPE[0]}, m2={M2}, lam={LAM}")
    print(f"hardware: {hw['line']} | python {hw['python']}")
    print(f"budget: {budget:g} CPU-s of training per flow; {n_samples} fresh samples each; "
          f"seed {args.seed}\n")

    flow_ours, train_ours = ours_sections()
    runs = {"ours": (flow_ours, train_ours), "baseline": (BASELINE_FLOW, BASELINE_TRAIN)}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        for name, (fl, tr) in runs.items():
            out_dir = base / name
            if out_dir.exists() and any(out_dir.iterdir()):
                raise SystemExit(f"{out_dir} is not empty (train_flow would resume); remove it.")
            t0 = time.perf_counter()
            rows[name] = train_and_measure(fl, tr, budget, args.seed, str(out_dir), n_samples)
            rows[name]["wall_s"] = time.perf_counter() - t0
            print(f"{name}: done in {rows[name]['wall_s']:.0f} s wall", flush=True)

    cols = [("acceptance", "acceptance", "{:.3f}"), ("ess", "ESS/N", "{:.3f}"),
            ("tau_int_absM", "tau_int(|M|)", "{:.2f}"),
            ("proposals_per_s", "proposals/CPU-s", "{:.0f}"),
            ("proposals_per_wall_s", "proposals/wall-s", "{:.0f}"), ("train_steps", "train steps", "{:d}"),
            ("train_cpu_s", "train CPU-s", "{:.0f}"), ("params", "params", "{:d}"),
            ("log_w_std", "std(log w)", "{:.2f}")]
    print()
    print("| flow | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        cells = []
        for key, _, fmt in cols:
            v = r[key]
            if key == "tau_int_absM":
                cells.append(f"{v:.2f} ± {r['tau_int_absM_error']:.2f}")
            else:
                cells.append(fmt.format(v))
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    ratios = {}
    for key in ("acceptance", "ess", "tau_int_absM", "proposals_per_s", "train_steps", "params"):
        b = rows["baseline"][key]
        ratios[key] = rows["ours"][key] / b if b else float("nan")
    print("ours / baseline: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
    print(f"ours flow: {json.dumps(rows['ours']['flow'])}")
    print(f"ours train: {json.dumps(rows['ours']['train'])}")
    keep = ("acceptance", "ess", "tau_int_absM", "tau_int_absM_error", "proposals_per_s",
            "proposals_per_wall_s", "proposals_batch", "proposals_per_s_b256",
            "proposals_per_s_b1024",
            "train_steps", "train_cpu_s", "params", "log_w_std", "flow", "train")
    summary = {name: {k: rows[name][k] for k in keep} for name in rows}
    summary.update({"budget_cpu_s": budget, "n_samples": n_samples, "seed": args.seed,
                    "ratios": ratios, "hardware": hw,
                    "point": {"shape": list(SHAPE), "m2": M2, "lam": LAM}})
    sys.stdout.flush()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
