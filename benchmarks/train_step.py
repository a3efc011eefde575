"""Cost of one reverse-KL training step, new code paths against the old ones, side by side.

For each lattice size, in one process with one thread, the ladder flow (Fourier and zero-mode
layers, 8 equivariant affine couplings, hidden [16, 16], kernel 3, silu) takes training steps
(loss, backward, Adam) at batch 32 in these variants, interleaved in rounds so that machine
load hits all of them alike:

* ``circular``: the conditioners with circular padding in every convolution (the code before the
  extend-once periodic convolutions), path gradient through the inverse (``path_gradient``);
* ``path_gradient``: the extend-once periodic convolutions, the same estimator;
* ``path_gradient_fast``: the same path gradient in one pass (arXiv:2403.15881);
* ``odd + fast``: ``flow.conditioner = odd`` (softsign), one-pass path gradient;
* ``reverse``: the plain reparametrisation gradient (a lower bound on the cost of any
  reverse-KL step).

Printed: CPU-ms per step and the speed-up against ``circular``, then a JSON line.

    python benchmarks/train_step.py                # L = 8, 16, 32
    python benchmarks/train_step.py --sizes 16 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _hardware import hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.config import config_from_dict, load_raw  # noqa: E402
from lattice_flows.flows import build_flow  # noqa: E402
from lattice_flows.flows.periodic_conv import PeriodicConvNet  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.training.estimators import make_estimator  # noqa: E402
from lattice_flows.malloc import keep_freed_memory  # noqa: E402

def with_circular_padding(flow):
    """A copy of ``flow`` whose conditioner nets pad every convolution circularly (old code)."""
    old = copy.deepcopy(flow)
    for module in list(old.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PeriodicConvNet):
                setattr(module, name, child.circular_padded())
    return old


def time_steps(variants: dict, action: Phi4Action, batch: int, steps: int,
               rounds: int) -> dict[str, float]:
    """CPU-s spent by ``steps`` reverse-KL training steps (loss, backward, Adam) per variant
    per round, summed over rounds 2.. (round 1 is warm-up); variants interleaved in rounds so
    that machine load hits all alike. ``variants``: name -> (flow, objective)."""
    state = {}
    for name, (f, objective) in variants.items():
        state[name] = (f, make_estimator(objective, action),
                       torch.optim.Adam(f.parameters(), lr=1e-3), torch.Generator().manual_seed(1))
    spent = {name: 0.0 for name in variants}
    for r in range(rounds):
        for name, (f, est, opt, gen) in state.items():
            t = time.process_time()
            for _ in range(steps):
                loss, _ = est.loss(f, batch, generator=gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if r > 0:
                spent[name] += time.process_time() - t
    return spent


#: the reference step that benchmarks/ladder.py measures alongside every run (one thread)
REFERENCE = dict(L=8, batch=32, objective="path_gradient_fast")


def reference_step_ms(steps: int = 10, rounds: int = 3) -> float:
    """CPU-ms per training step of the L = 8 ladder flow (configs/ladder/L8.yaml, its objective
    path_gradient_fast, batch 32) on the current thread settings: the machine-speed reference
    that lets a reader rescale CPU-second budgets measured on another CPU. It sets the allocator
    as :func:`main` does (lattice_flows/malloc.py), so the reference is measured as in
    results/train_step.txt, and a script that measures it first (ladder.py) keeps the setting
    for its training, HMC and evaluation."""
    keep_freed_memory()
    L = REFERENCE["L"]
    cfg = config_from_dict(load_raw(REPO / "configs" / "ladder" / f"L{L}.yaml"))
    action = Phi4Action(cfg.action.m2, cfg.action.lam, 2)
    torch.manual_seed(0)
    flow = build_flow(cfg.flow, (L, L), m2=cfg.action.m2)
    spent = time_steps({"ref": (flow, REFERENCE["objective"])}, action, REFERENCE["batch"],
                       steps, rounds)
    return 1000 * spent["ref"] / (steps * (rounds - 1))


def main() -> int:
    keep_freed_memory()  # the same allocator settings for every variant (lattice_flows/malloc.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8,16,32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the first is warm-up)")
    args = p.parse_args()
    torch.set_num_threads(1)
    hw = hardware()
    print(f"# training-step benchmark, batch {args.batch}; hardware: {hardware_line(hw)}",
          flush=True)
    results = []
    for L in [int(x) for x in args.sizes.split(",")]:
        raw = load_raw(REPO / "configs" / "ladder" / f"L{L}.yaml")
        cfg = config_from_dict(raw)
        action = Phi4Action(cfg.action.m2, cfg.action.lam, 2)
        torch.manual_seed(0)
        flow = build_flow(cfg.flow, (L, L), m2=cfg.action.m2)
        odd_cfg = dataclasses.replace(cfg.flow, conditioner="odd", activation="softsign")
        variants = {
            "circular": (with_circular_padding(flow), "path_gradient"),
            "path_gradient": (flow, "path_gradient"),
            "path_gradient_fast": (copy.deepcopy(flow), "path_gradient_fast"),
            "odd + fast": (build_flow(odd_cfg, (L, L), m2=cfg.action.m2), "path_gradient_fast"),
            "reverse": (copy.deepcopy(flow), "reverse"),
        }
        spent = time_steps(variants, action, args.batch, args.steps, args.rounds)
        n = args.steps * (args.rounds - 1)
        ms = {name: 1000 * s / n for name, s in spent.items()}
        base = ms["circular"]
        print(f"L = {L}:", flush=True)
        for name, v in ms.items():
            print(f"  {name:20s} {v:8.1f} CPU-ms/step   speed-up vs circular {base / v:5.2f}x", flush=True)
        results.append({"L": L, "batch": args.batch, "cpu_ms_per_step": ms,
                        "speedup_vs_circular": {k: base / v for k, v in ms.items()}})
    print(json.dumps({"benchmark": "train_step", "rows": results, "hardware": hw}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
