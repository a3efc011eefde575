#!/usr/bin/env python
"""Strong scaling of flow sampling and flow training over MPI ranks (1 vs 2 by default).

Usage::

    python benchmarks/scaling.py [--ranks 1 2] [--repeats 2] [--quick]

At the tutorial point (d = 2, L = 8, m2 = -4, lam = 8; docs/conventions.md "Standard test points")
with the flow of ``configs/tutorial_flow.yaml`` (Fourier layer + 8 affine couplings, conv hidden
[16, 16]), for each number of ranks K the driver launches ``mpiexec -n K python
benchmarks/scaling.py --worker ...`` with OMP_NUM_THREADS=1 per rank, and the worker calls the
library exactly as the CLI does:

* sampling: :func:`lattice_flows.mcmc.flow_run.run_sample` (``lattice-flows sample``: flow calls,
  float64 action and log-weights, accept/reject, observables, chunked HDF5 writes, checkpoints,
  and for K > 1 the merged view) on a fixed GLOBAL amount of work: ``--chains`` chains in total
  (``--chains / K`` per rank) x ``--samples`` Metropolis steps, ``sample.batch_size`` 256
  proposals per flow call on every rank. The time is the wall time between two barriers around
  the call, so it includes every rank's work and the merge. Figure: proposals per second.
  The flow is freshly initialised (not trained): the cost of a proposal does not depend on
  the weights.
* training: :func:`lattice_flows.training.trainer.train_flow` (``lattice-flows train``) with the
  same GLOBAL batch (``--batch``, split over the ranks, gradients all-reduced), reverse KL,
  constant lr. Figure: the median wall time per optimizer step from the trainer's own metric
  ``steps_per_s`` (train.h5, one value per 10 steps), first window (warm-up) dropped.

Control ("machine x"): K plain processes (no MPI) sampling the raw flow at the same time, their
aggregate throughput over that of one process: the speedup the machine itself gives K
single-threaded processes at that moment (K on K idle cores; on a shared machine, or with vCPUs
that are SMT siblings on the host, less). Read the MPI speedups against it.

Each configuration runs ``--repeats`` times, 1 and K ranks interleaved; the best (fastest)
repetition counts, which filters out intermittent load from other users of the machine. The
CPU share (CPU-s / wall-s of each rank) and the load average are printed: a share well below 1
means the ranks did not have a core each, and the speedup measures the neighbours too.

The output ends with exactly one line holding a JSON object with ``sampling_speedup_2_ranks``,
``training_speedup_2_ranks`` and the absolute figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "tutorial_flow.yaml"


# ---------------------------------------------------------------------------------- worker side


def _capacity_worker(args: argparse.Namespace) -> int:
    """No MPI: time ``--capacity-proposals`` raw flow proposals (batches of 256), no grad."""
    import torch

    from lattice_flows.config import load_config
    from lattice_flows.flows.flow import build_flow

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    flow = build_flow(cfg.flow, cfg.lattice.shape, cfg.action.m2)
    n_total = args.capacity_proposals
    with torch.no_grad():
        flow.sample(256)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < n_total:
            flow.sample(min(256, n_total - done))
            done += 256
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(args.out).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "proposals": n_total}))
    return 0


def _worker(args: argparse.Namespace) -> int:
    import h5py
    import torch

    from lattice_flows.config import load_config
    from lattice_flows.distributed import World
    from lattice_flows.malloc import keep_freed_memory

    keep_freed_memory()  # the allocator setting of the CLI commands whose work is timed (malloc.py)
    torch.set_num_threads(1)
    world = World.from_environment()
    cfg = load_config(args.config)
    comm = world.comm
    world.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.worker == "sample":
        from lattice_flows.mcmc.flow_run import run_sample

        run_sample(cfg, progress=False, world=world if world.size > 1 else None)
    else:
        from lattice_flows.training.trainer import train_flow

        train_flow(cfg, progress=False, world=world if world.size > 1 else None)
    cpu = time.process_time() - c0
    world.barrier()
    wall = time.perf_counter() - t0
    cpus = comm.gather(cpu, root=0) if comm is not None else [cpu]
    if world.is_root:
        out = {"kind": args.worker, "ranks": world.size, "wall_s": wall, "cpu_s": cpus}
        if args.worker == "train":
            with h5py.File(Path(cfg.output.dir) / "train.h5", "r") as f:
                rates = f["steps_per_s"][:].tolist()
            out["steps_per_s_windows"] = rates
            out["step_s"] = 1.0 / statistics.median(rates[1:] if len(rates) > 1 else rates)
        Path(args.out).write_text(json.dumps(out))
    world.close()
    return 0


# ---------------------------------------------------------------------------------- driver side


def _hardware() -> dict:
    from _hardware import cpu_model  # benchmarks/ is on sys.path

    model = cpu_model()
    import torch

    try:
        from mpi4py import MPI

        mpi = MPI.Get_library_version().splitlines()[0].strip()
    except Exception as exc:  # pragma: no cover - reported, not fatal
        mpi = f"unknown ({exc})"
    return {"cpu": model, "logical_cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "mpi": mpi, "host": platform.node()}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _make_configs(work: Path, args: argparse.Namespace) -> dict:
    import torch

    from lattice_flows.config import config_from_dict
    from lattice_flows.flows.flow import build_flow
    from lattice_flows.flows.flowfile import flow_state
    from lattice_flows.io.checkpoint import save_checkpoint

    base = yaml.safe_load(BASE_CONFIG.read_text())
    base["device"] = "cpu"
    # a freshly initialised flow of the tutorial architecture for the sampling runs
    torch.manual_seed(0)
    cfg = config_from_dict(base)
    flow = build_flow(cfg.flow, cfg.lattice.shape, cfg.action.m2)
    flow_pt = work / "flow.pt"
    save_checkpoint(flow_state(flow, cfg), flow_pt)
    out = {}
    for k in args.ranks:
        if args.chains % k or args.batch % k:
            raise SystemExit(
                f"--chains {args.chains} and --batch {args.batch} must be divisible by {k}")
        s = dict(base)
        s.pop("train")
        s["sample"] = {"n_chains": args.chains // k, "n_samples": args.samples, "batch_size": 256,
                       "flow": str(flow_pt)}
        s["output"] = {"dir": "PLACEHOLDER", "chunk_rows": 250}
        t = dict(base)
        t["train"] = {**base["train"], "steps": args.train_steps, "batch_size": args.batch,
                      "lr_schedule": "constant", "log_every": 10, "checkpoint_every": 10**6,
                      "eval_samples": 256, "eval_batch_size": 256}
        t["output"] = {"dir": "PLACEHOLDER"}
        out[k] = {"sample": s, "train": t}
    return out


def _launch(kind: str, k: int, raw: dict, work: Path, rep: int) -> dict:
    run = work / f"{kind}-{k}-{rep}"
    raw = {**raw, "output": {**raw["output"], "dir": str(run)}}
    cfg_path = work / f"{kind}-{k}-{rep}.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    res_path = work / f"{kind}-{k}-{rep}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--config",
           str(cfg_path), "--out", str(res_path)]
    if k > 1 or shutil.which("mpiexec"):
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(k), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} on {k} rank(s) failed:\n{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(run, ignore_errors=True)
    return json.loads(res_path.read_text())


def _capacity(k: int, cfg_path: Path, work: Path, rep: int, n: int) -> dict:
    """K independent plain processes (no MPI) sampling the flow at once: what the machine
    delivers to K single-threaded processes right now (1.0 per process on K idle cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(v, None)
    outs = [work / f"capacity-{k}-{rep}-{i}.json" for i in range(k)]
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                               "capacity", "--config", str(cfg_path), "--out", str(o),
                               "--capacity-proposals", str(n)], env=env) for o in outs]
    if any(pr.wait() != 0 for pr in procs):
        raise SystemExit("capacity worker failed")
    res = [json.loads(o.read_text()) for o in outs]
    wall = max(r["wall_s"] for r in res)
    return {"wall_s": wall, "proposals_per_s": k * n / wall,
            "cpu_share": min(r["cpu_s"] / r["wall_s"] for r in res)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chains", type=int, default=32, help="chains in total (split over ranks)")
    p.add_argument("--samples", type=int, default=2000, help="Metropolis steps per chain")
    p.add_argument("--batch", type=int, default=128, help="global training batch")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--quick", action="store_true", help="a smoke test (small sizes, 1 repeat)")
    p.add_argument("--capacity-proposals", type=int, default=16384,
                   help="raw flow proposals per process of the machine-capacity control")
    p.add_argument("--worker", choices=("sample", "train", "capacity"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "capacity":
        return _capacity_worker(args)
    if args.worker:
        return _worker(args)
    if args.quick:
        args.samples, args.train_steps, args.repeats = 300, 30, 1
    if 1 not in args.ranks:
        args.ranks = [1, *args.ranks]

    hw = _hardware()
    print("# scaling benchmark: tutorial point L=8, m2=-4, lam=8; "
          "flow of configs/tutorial_flow.yaml")
    for k, v in hw.items():
        print(f"#   {k:<14} {v}")
    load0 = _loadavg()
    print(f"#   load average before: {load0}  (other users of the machine count here)")
    base = yaml.safe_load(BASE_CONFIG.read_text())
    print(f"#   flow: {base['flow']}; training objective {base['train'].get('objective')}, "
          "constant lr (other train keys from the config)")
    print(f"#   sampling: {args.chains} chains in total x {args.samples} steps = "
          f"{args.chains * args.samples} proposals; training: global batch {args.batch}, "
          f"{args.train_steps} steps; OMP_NUM_THREADS=1 per rank; best of {args.repeats}")

    best: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="lf-scaling-") as tmp:
        work = Path(tmp)
        raws = _make_configs(work, args)
        cap_cfg = work / "capacity.yaml"
        cap_cfg.write_text(yaml.safe_dump(raws[1]["train"], sort_keys=False))
        for rep in range(args.repeats):
            for k in args.ranks:
                r = _capacity(k, cap_cfg, work, rep, args.capacity_proposals)
                if ("capacity", k) not in best or r["wall_s"] < best[("capacity", k)]["wall_s"]:
                    best[("capacity", k)] = r
            for kind in ("sample", "train"):
                for k in args.ranks:
                    r = _launch(kind, k, raws[k][kind], work, rep)
                    key = "wall_s" if kind == "sample" else "step_s"
                    if (kind, k) not in best or r[key] < best[(kind, k)][key]:
                        best[(kind, k)] = r
    load1 = _loadavg()

    n_prop = args.chains * args.samples
    rows = []
    for k in args.ranks:
        s, t = best[("sample", k)], best[("train", k)]
        c = best[("capacity", k)]
        rows.append({
            "ranks": k,
            "capacity_proposals_per_s": c["proposals_per_s"],
            "capacity_cpu_share": c["cpu_share"],
            "proposals_per_s": n_prop / s["wall_s"],
            "sample_wall_s": s["wall_s"],
            "sample_cpu_share": min(s["cpu_s"]) / s["wall_s"],
            "sample_cpu_total_s": sum(s["cpu_s"]),
            "train_step_ms": 1e3 * t["step_s"],
            "train_wall_s": t["wall_s"],
            "train_cpu_share": min(t["cpu_s"]) / t["wall_s"],
            "train_cpu_total_s": sum(t["cpu_s"]),
        })
    r1 = rows[0]
    print()
    print(f"{'ranks':>5} | {'machine x':>9} | {'proposals/s':>11} | {'speedup':>7} | "
          f"{'sample wall s':>13} | {'cpu share':>9} | {'train ms/step':>13} | {'speedup':>7} | "
          f"{'cpu share':>9}")
    print("-" * 109)
    for r in rows:
        cap = r["capacity_proposals_per_s"] / r1["capacity_proposals_per_s"]
        print(f"{r['ranks']:>5} | {cap:>9.2f} | {r['proposals_per_s']:>11.0f} | "
              f"{r['proposals_per_s'] / r1['proposals_per_s']:>7.2f} | "
              f"{r['sample_wall_s']:>13.2f} | "
              f"{r['sample_cpu_share']:>9.2f} | {r['train_step_ms']:>13.1f} | "
              f"{r1['train_step_ms'] / r['train_step_ms']:>7.2f} | {r['train_cpu_share']:>9.2f}")
    print()
    print(f"# load average after: {load1}. cpu share = min over ranks of CPU-s / wall-s; well "
          "below 1 means a rank shared its core with another process.")
    print("# machine x = aggregate raw flow-sampling throughput of K independent plain processes "
          "(no MPI) over that of one: the speedup the machine itself allows right now (K on an "
          "idle machine with K free cores); compare the speedups with it.")
    summary = {
        "benchmark": "scaling",
        "hardware": hw,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "proposals_total": n_prop,
        "train_global_batch": args.batch,
        "train_steps": args.train_steps,
        "results": rows,
    }
    two = next((r for r in rows if r["ranks"] == 2), None)
    if two is not None:
        summary["sampling_speedup_2_ranks"] = two["proposals_per_s"] / r1["proposals_per_s"]
        summary["training_speedup_2_ranks"] = r1["train_step_ms"] / two["train_step_ms"]
        summary["machine_capacity_2_procs"] = (two["capacity_proposals_per_s"]
                                               / r1["capacity_proposals_per_s"])
        summary["proposals_per_s_1_rank"] = r1["proposals_per_s"]
        summary["proposals_per_s_2_ranks"] = two["proposals_per_s"]
        summary["train_step_ms_1_rank"] = r1["train_step_ms"]
        summary["train_step_ms_2_ranks"] = two["train_step_ms"]
        print(f"# 2 ranks: sampling speedup {summary['sampling_speedup_2_ranks']:.2f}x, "
              f"training speedup {summary['training_speedup_2_ranks']:.2f}x; the machine allowed "
              f"{summary['machine_capacity_2_procs']:.2f}x to two independent processes")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
