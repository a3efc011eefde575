"""Cost per lattice site of a flow in d = 2, 3 and 4, side by side, before and after the 3D fixes.

The issue-12 flow: 6 equivariant affine couplings with the default conditioner (hidden [32, 32],
kernel 3, silu, symmetrised) and the Fourier layer, on lattices of 96 sites in d = 2 and 3
(8x12 and 4x4x6, the issue's lattice), 512 sites (16x32 and 8x8x8), and 4^4 in d = 4. For each
lattice, in one process with one thread, interleaved in rounds so that load from other
processes on the machine hits every variant alike:

* reverse-KL training steps (loss, backward, Adam) at batch ``--batch``;
* proposals: ``flow.sample(--proposals)`` without gradients (what flow MCMC generates).

Variants: ``before``, the code before the 3D fixes (input extended once by the full receptive
radius with ``index_select``, conditioner chunks of 256 rows whatever the volume), rebuilt here
from the current module by swapping in the old extension and settings; ``after``, the code as
it is. d = 4 exists only ``after`` (before, a 4D flow could not be built).

Printed: steps/s, proposals/s, CPU-us per site per sample for training and proposals, the
after/before speed-up, and the per-site cost relative to the d = 2 lattice of the same volume,
then a JSON line. Ratios are the robust numbers on a shared machine; absolute times move with
load.

    python benchmarks/dims.py                       # all lattices
    python benchmarks/dims.py --rounds 3 --lattices 8x12,4x4x6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _hardware import hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.config import FlowConfig  # noqa: E402
from lattice_flows.flows import build_flow  # noqa: E402
from lattice_flows.flows import nets, periodic_conv  # noqa: E402
from lattice_flows.malloc import keep_freed_memory  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402
from lattice_flows.training.estimators import make_estimator  # noqa: E402

FLOW = FlowConfig(n_layers=6)  # defaults otherwise: hidden [32, 32], kernel 3, silu, Fourier
#: d = 2 lattice of the same volume, the baseline of each d >= 3 lattice
BASELINE = {(4, 4, 6): (8, 12), (8, 8, 8): (16, 32), (4, 4, 4, 4): (16, 16)}


def old_periodic_extend(x: torch.Tensor, radius: int, ndim: int) -> torch.Tensor:
    """periodic_extend as it was: index_select with wrapped indices on every axis."""
    for axis in range(x.dim() - ndim, x.dim()):
        n = x.shape[axis]
        idx = torch.arange(-radius, n + radius, device=x.device) % n
        x = x.index_select(axis, idx)
    return x


@contextlib.contextmanager
def code(variant: str):
    """Run the block with the current conditioner modules (``after``) or their old form
    (``before``): periodic_extend is swapped where it is called (periodic_conv and nets)."""
    if variant == "after":
        yield
        return
    saved = (periodic_conv.periodic_extend, nets.periodic_extend, periodic_conv.EXTEND_ONCE_BELOW,
             nets.ConvConditioner.max_sites, nets.OddConvConditioner.max_sites)
    periodic_conv.periodic_extend = nets.periodic_extend = old_periodic_extend
    periodic_conv.EXTEND_ONCE_BELOW = math.inf  # always extend once
    nets.ConvConditioner.max_sites = nets.OddConvConditioner.max_sites = 1 << 62  # rows only
    try:
        yield
    finally:
        (periodic_conv.periodic_extend, nets.periodic_extend, periodic_conv.EXTEND_ONCE_BELOW,
         nets.ConvConditioner.max_sites, nets.OddConvConditioner.max_sites) = saved


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split("x"))


def main() -> int:
    keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lattices", default="8x12,4x4x6,16x32,8x8x8,16x16,4x4x4x4")
    p.add_argument("--batch", type=int, default=128, help="training batch")
    p.add_argument("--proposals", type=int, default=1024, help="proposals per sample call")
    p.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the first is warm-up)")
    args = p.parse_args()
    torch.set_num_threads(1)
    hw = hardware()
    print(f"# per-site cost by dimension, 6 couplings hidden [32, 32] + Fourier, batch "
          f"{args.batch}, {args.proposals} proposals per call; hardware: {hardware_line(hw)}", flush=True)
    shapes = [parse_shape(s) for s in args.lattices.split(",")]
    cases = {}
    for shape in shapes:
        for variant in (("after",) if len(shape) >= 4 else ("before", "after")):
            torch.manual_seed(0)
            flow = build_flow(FLOW, shape, m2=1.0)
            est = make_estimator("reverse", Phi4Action(1.0, 0.0, len(shape)))
            cases[(shape, variant)] = dict(
                flow=flow, est=est, opt=torch.optim.Adam(flow.parameters(), lr=1e-4),
                gen=torch.Generator().manual_seed(1), train_s=0.0, sample_s=0.0, n=0)
    for r in range(args.rounds):
        for (shape, variant), c in cases.items():
            with code(variant):
                t = time.process_time()
                for _ in range(args.steps):
                    loss, _ = c["est"].loss(c["flow"], args.batch, generator=c["gen"])
                    c["opt"].zero_grad(set_to_none=True)
                    loss.backward()
                    c["opt"].step()
                t_train = time.process_time() - t
                t = time.process_time()
                with torch.no_grad():
                    c["flow"].sample(args.proposals, generator=c["gen"])
                t_sample = time.process_time() - t
            if r > 0:
                c["train_s"] += t_train
                c["sample_s"] += t_sample
                c["n"] += 1
        print(f"# round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for (shape, variant), c in cases.items():
        volume = math.prod(shape)
        step_s = c["train_s"] / (c["n"] * args.steps)
        prop_s = c["sample_s"] / (c["n"] * args.proposals)
        rows.append({"shape": list(shape), "d": len(shape), "volume": volume, "variant": variant,
                     "steps_per_s": 1 / step_s, "proposals_per_s": 1 / prop_s,
                     "train_us_per_site": 1e6 * step_s / (args.batch * volume),
                     "propose_us_per_site": 1e6 * prop_s / volume})
    by = {(tuple(r["shape"]), r["variant"]): r for r in rows}
    print(f"{'lattice':>10s} {'code':>6s} {'steps/s':>8s} {'prop/s':>8s} {'train us/site':>14s} "
          f"{'prop us/site':>13s} {'speed-up tr/prop':>17s} {'per site vs d=2 tr/prop':>24s}")
    for r in rows:
        shape, variant = tuple(r["shape"]), r["variant"]
        before = by.get((shape, "before"))
        r["speedup_vs_before"] = (None if before is None else
                                  {k: r[k] / before[k] for k in ("steps_per_s", "proposals_per_s")})
        base = by.get((BASELINE.get(shape, ()), variant)) or by.get((BASELINE.get(shape, ()), "after"))
        r["per_site_vs_d2"] = (None if base is None else
                               {k: r[k] / base[k] for k in ("train_us_per_site", "propose_us_per_site")})
        su = ("" if r["speedup_vs_before"] is None else
              f"{r['speedup_vs_before']['steps_per_s']:.2f}x / {r['speedup_vs_before']['proposals_per_s']:.2f}x")
        vs = ("" if r["per_site_vs_d2"] is None else
              f"{r['per_site_vs_d2']['train_us_per_site']:.2f} / {r['per_site_vs_d2']['propose_us_per_site']:.2f}"
              f" (vs {'x'.join(map(str, BASELINE[shape]))})")
        print(f"{'x'.join(map(str, shape)):>10s} {variant:>6s} {r['steps_per_s']:8.2f} "
              f"{r['proposals_per_s']:8.0f} {r['train_us_per_site']:14.2f} "
              f"{r['propose_us_per_site']:13.2f} {su:>17s} {vs:>24s}", flush=True)
    print(json.dumps({"benchmark": "dims", "batch": args.batch, "proposals": args.proposals,
                      "rounds": args.rounds, "steps": args.steps, "rows": rows, "hardware": hw}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
