#!/usr/bin/env python
"""Throughput on one device: flow proposals/s, training steps/s and HMC trajectories/s.

Usage::

    python benchmarks/throughput.py                       # L = 32 and 64, device auto
    python benchmarks/throughput.py --device cuda --out throughput.json
    python benchmarks/throughput.py --quick               # CPU smoke run (L = 8, small sizes)

For every L (``--sizes``), with the configs of ``configs/ladder_cnf/L<L>.yaml`` (L = 32 and 64;
other L take the L32 file with the lattice replaced: the flow is size-agnostic):

* ``proposals_per_s``: the ladder_cnf flow (Fourier and zero-mode layers, one continuous
  equivariant layer, 8 equivariant affine couplings, freshly initialised: the cost of a
  proposal does not depend on the weights) drawing ``sample.batch_size`` proposals per call
  without gradients (``flow.sample``: phi and log q in one pass; the action, accept/reject and
  the writes of ``lattice-flows sample`` are not in it);
* ``train_steps_per_s``: optimiser steps of the config's objective (``train.objective``,
  path_gradient_fast) at ``train.batch_size``: loss, backward, Adam (no clipping, metrics or
  checkpoints);
* ``hmc_trajectories_per_s``: HMC trajectories of ``hmc.n_chains`` chains (16) at the config's
  ``hmc.n_steps`` (20, jitter 0.5) and ``hmc.dtype``, a fixed step size ``--hmc-step-size``
  (the cost of a trajectory does not depend on it); one trajectory moves every chain, so
  chain-trajectories/s is n_chains times it.

Each figure: ``--warmup`` untimed calls, then ``--blocks`` timed blocks, each of as many calls as
fit in ``--block-s`` wall-seconds (at least one); a block's wall time is taken between two
``torch.cuda.synchronize()`` on CUDA, so it counts the device's work, not the launches. Printed
and stored: the median rate over the blocks and its spread (min-max), wall-s and CPU-s, and the
hardware line (benchmarks/_hardware.py). The output ends with one JSON line (also ``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _hardware import hardware, hardware_line  # noqa: E402
from lattice_flows.config import config_from_dict, load_raw  # noqa: E402
from lattice_flows.devices import resolve_device, resolve_dtype  # noqa: E402
from lattice_flows.flows import build_flow  # noqa: E402
from lattice_flows.mcmc.hmc import HMC  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.training.estimators import make_estimator  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, blocks: int,
               block_s: float, max_calls: int | None = None) -> dict:
    """Calls per wall-second of ``fn``: median and min-max over ``blocks`` timed blocks."""
    for _ in range(warmup):
        fn()
    _sync(device)
    rates, walls, cpus, calls = [], [], [], []
    for _ in range(blocks):
        n = 0
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        while True:
            fn()
            n += 1
            if max_calls is not None and n >= max_calls:
                break
            if time.perf_counter() - t0 >= block_s:  # launch time; the sync below counts the rest
                break
        _sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rates.append(n / wall)
        walls.append(wall)
        cpus.append(cpu)
        calls.append(n)
    return {"median_per_s": statistics.median(rates), "min_per_s": min(rates),
            "max_per_s": max(rates), "calls": calls, "wall_s": walls, "cpu_s": cpus}


def _config(L: int, quick: bool):
    path = REPO / "configs" / "ladder_cnf" / f"L{L}.yaml"
    raw = load_raw(path if path.exists() else REPO / "configs" / "ladder_cnf" / "L32.yaml")
    raw["lattice"] = {"shape": [L, L]}
    raw["train"].pop("init_from", None)
    raw["train"].pop("init_from_missing", None)
    if quick:
        raw["sample"]["batch_size"] = 64
        raw["train"]["batch_size"] = 8
        raw["hmc"]["n_chains"] = 4
        raw["hmc"]["n_steps"] = 5
    return config_from_dict(raw)


def measure(L: int, device: torch.device, args: argparse.Namespace) -> dict:
    cfg = _config(L, args.quick)
    action = Phi4Action(cfg.action.m2, cfg.action.lam, 2)
    dtype = resolve_dtype(cfg.dtype)
    torch.manual_seed(0)
    flow = build_flow(cfg.flow, (L, L), m2=cfg.action.m2).to(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    timing = dict(device=device, warmup=args.warmup, blocks=args.blocks, block_s=args.block_s,
                  max_calls=args.max_calls)

    sample_batch = cfg.sample.batch_size

    def propose():
        with torch.no_grad():
            return flow.sample(sample_batch, generator=gen)

    row: dict = {"L": L, "flow": "configs/ladder_cnf (untrained)", "sample_batch": sample_batch}
    r = time_calls(propose, **timing)
    row["proposals_per_s"] = {k: (v * sample_batch if k.endswith("per_s") else v)
                              for k, v in r.items()}

    tc = cfg.train
    estimator = make_estimator(tc.objective, action)
    opt = torch.optim.Adam(flow.parameters(), lr=tc.lr)

    def train_step():
        loss, _ = estimator.loss(flow, tc.batch_size, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    row["train_batch"], row["objective"] = tc.batch_size, tc.objective
    row["train_steps_per_s"] = time_calls(train_step, **timing)

    h = cfg.hmc
    hmc_dtype = resolve_dtype(h.dtype)
    hgen = torch.Generator(device=device).manual_seed(2)
    hmc = HMC(action, args.hmc_step_size, h.n_steps, integrator=h.integrator, jitter=h.jitter,
              generator=hgen)
    state = {"phi": 0.1 * torch.randn((h.n_chains, L, L), generator=hgen, device=device,
                                      dtype=hmc_dtype)}

    def trajectory():
        state["phi"] = hmc.step(state["phi"])[0]

    row.update(hmc_chains=h.n_chains, hmc_n_steps=h.n_steps, hmc_dtype=h.dtype,
               hmc_step_size=args.hmc_step_size)
    row["hmc_trajectories_per_s"] = time_calls(trajectory, **timing)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--sizes", default="32,64", help="lattice sizes L, comma-separated")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--block-s", type=float, default=2.0, help="wall-seconds per timed block")
    p.add_argument("--max-calls", type=int, default=None, help="at most this many calls a block")
    p.add_argument("--hmc-step-size", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: L = 8, sample batch 64, train batch 8, 4 HMC chains of "
                        "5 steps, 1 warm-up call, 2 blocks of 1 call")
    p.add_argument("--out", type=Path, help="write the JSON summary here too")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.blocks, args.max_calls = "8", 1, 2, 1
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    hw = hardware()
    line = hardware_line(hw)
    print(f"# throughput on {device}{' (quick smoke run)' if args.quick else ''}; "
          f"hardware: {line}", flush=True)
    rows = []
    for L in [int(x) for x in args.sizes.split(",")]:
        row = measure(L, device, args)
        rows.append(row)
        pr, tr, hr = (row["proposals_per_s"], row["train_steps_per_s"],
                      row["hmc_trajectories_per_s"])
        print(f"L = {L:3d}: {pr['median_per_s']:12.1f} proposals/s (batch {row['sample_batch']}, "
              f"{pr['min_per_s']:.1f}-{pr['max_per_s']:.1f}) | {tr['median_per_s']:8.2f} "
              f"train steps/s (batch {row['train_batch']}, {tr['min_per_s']:.2f}-"
              f"{tr['max_per_s']:.2f}) | {hr['median_per_s']:8.2f} HMC trajectories/s "
              f"({row['hmc_chains']} chains x {row['hmc_n_steps']} steps, {hr['min_per_s']:.2f}-"
              f"{hr['max_per_s']:.2f})", flush=True)
    summary = {"benchmark": "throughput", "device": str(device),
               "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else hw["cpu"]),
               "clock": "wall-s (CUDA synchronised)" if device.type == "cuda" else "wall-s",
               "quick": args.quick, "hardware": hw, "hardware_line": line, "rows": rows}
    text = json.dumps(summary)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
