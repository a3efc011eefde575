#!/usr/bin/env python
"""The torch.distributed path of :mod:`lattice_flows.distributed`: init, broadcast, all-reduce.

Usage (one rank per GPU; a single-rank group is a real NCCL group too)::

    python benchmarks/nccl_check.py --device cuda --out nccl.json          # one GPU
    mpiexec -n 2 python benchmarks/nccl_check.py --device cpu --out g.json # gloo, 2 ranks

Every rank builds ``World(MPI.COMM_WORLD)`` (also with one rank: ``World.from_environment`` would
give a single-process world without torch.distributed), resolves its device as the CLI does
(``cuda:<local_rank mod n_gpus>``) and calls ``World.init_torch_distributed`` (backend ``nccl`` on
CUDA, ``gloo`` on the CPU; rank 0 serves the TCPStore on a kernel-chosen port). Then:

* ``store_port_held``: on rank 0, binding a socket to the broadcast store port fails
  (EADDRINUSE): the port stays held by the store from the moment it is chosen (the port-race
  fix; the old code had closed it again before the store bound it);
* ``default_store``: torch.distributed's group uses that store (same port);
* ``backend``: the group's backend is the expected one;
* ``broadcast``: ``dist.broadcast`` of rank-dependent tensors on the device gives rank 0's;
* ``all_reduce``: ``dist.all_reduce`` of ``arange(6) + 10 r`` gives ``n arange(6) + 10 n(n-1)/2``
  exactly (small integers in float32);
* ``broadcast_parameters``: ``World.broadcast_parameters`` of a module whose ranks hold different
  weights leaves rank 0's weights on every rank (compared through MPI on the host);
* ``allreduce_gradients``: ``World.allreduce_gradients`` with gradient ``r + 1`` on rank ``r``
  gives the mean ``(n + 1) / 2`` on every rank (exact in binary floating point for n = 1, 2, 4, ...);
* ``close``: ``World.close`` tears the group down (``dist.is_initialized()`` false after it).

Rank 0 writes one JSON object (``--out``, and stdout) with the checks, the device names, the
seconds of the init and of each collective (device synchronised) and the hardware line; the exit
status is 0 iff every check passed on every rank.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_hardware.py

from _hardware import hardware, hardware_line  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _port_held(port: int) -> bool:
    """True iff binding a fresh socket to ``port`` (any address) fails with EADDRINUSE."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def run_checks(device_name: str) -> tuple[dict, bool]:
    """The checks on this rank; (rank 0's report or {}, all passed on every rank)."""
    import torch.distributed as dist
    from mpi4py import MPI

    from lattice_flows.devices import resolve_device
    from lattice_flows.distributed import World

    world = World(MPI.COMM_WORLD)
    n, r = world.size, world.rank
    device = resolve_device(device_name, world.local_rank)
    checks: dict[str, bool] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    world.init_torch_distributed(device)
    seconds["init"] = time.perf_counter() - t0
    expected_backend = "nccl" if device.type == "cuda" else "gloo"
    checks["backend"] = dist.get_backend() == expected_backend
    port = world.bcast(world.store.port if world.is_root else None)
    if world.is_root:
        checks["store_port_held"] = _port_held(port)
    default_store = dist.distributed_c10d._get_default_store()
    while hasattr(default_store, "underlying_store"):  # PrefixStore(s) around the TCPStore
        default_store = default_store.underlying_store
    checks["default_store"] = getattr(default_store, "port", None) == port == world.store.port

    t = torch.full((4, 3), float(r + 1), device=device)
    t[0, 0] = 7.5 * (r + 1)
    _sync(device)
    t0 = time.perf_counter()
    dist.broadcast(t, src=0)
    _sync(device)
    seconds["broadcast"] = time.perf_counter() - t0
    want = torch.ones(4, 3, device=device)
    want[0, 0] = 7.5
    checks["broadcast"] = torch.equal(t, want)

    a = torch.arange(6, dtype=torch.float32, device=device) + 10 * r
    _sync(device)
    t0 = time.perf_counter()
    dist.all_reduce(a, op=dist.ReduceOp.SUM)
    _sync(device)
    seconds["all_reduce"] = time.perf_counter() - t0
    want = n * torch.arange(6, dtype=torch.float32, device=device) + 10 * n * (n - 1) / 2
    checks["all_reduce"] = torch.equal(a, want)

    torch.manual_seed(100 + r)  # different weights on every rank
    module = torch.nn.Linear(5, 3).to(device)
    world.broadcast_parameters(module)
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).cpu()
    torch.manual_seed(100)
    ref = torch.cat([p.detach().reshape(-1) for p in torch.nn.Linear(5, 3).parameters()])
    checks["broadcast_parameters"] = world.all_ok(torch.equal(flat, ref))

    for p in module.parameters():
        p.grad = torch.full_like(p, float(r + 1))
    world.allreduce_gradients(module)
    checks["allreduce_gradients"] = all(
        torch.equal(p.grad, torch.full_like(p, (n + 1) / 2)) for p in module.parameters())
    checks["grad_device"] = all(p.grad.device == device for p in module.parameters())

    gathered = world.comm.gather(checks, root=0)
    devices = world.comm.gather(str(device) if device.type != "cuda"
                                else f"{device}:{torch.cuda.get_device_name(device)}", root=0)
    world.close()
    closed = not dist.is_initialized()
    ok = world.all_ok(closed and all(checks.values()))
    if not world.is_root:
        return {}, ok
    per_rank = {f"rank{i}": c for i, c in enumerate(gathered)}
    report = {
        "check": "torch.distributed via lattice_flows.distributed.World",
        "backend": expected_backend,
        "ranks": n,
        "devices": devices,
        "store_port": port,
        "checks": {**{k: all(c.get(k, True) for c in gathered) for k in gathered[0]},
                   "close": closed},
        "per_rank": per_rank,
        "seconds_rank0": seconds,
        "ok": ok,
        "hardware": hardware(),
        "hardware_line": hardware_line(),
    }
    return report, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, help="JSON report (rank 0)")
    args = p.parse_args(argv)
    os.environ.pop("LATTICE_FLOWS_NO_MPI", None)
    torch.set_num_threads(1)
    report, ok = run_checks(args.device)
    if report:
        text = json.dumps(report, indent=1)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
        print(f"# {'PASS' if ok else 'FAIL'}: {report['backend']} on {report['ranks']} rank(s), "
              f"{', '.join(report['devices'])}; {report['hardware_line']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
