#!/usr/bin/env python
"""Strong scaling of flow sampling and flow training over MPI ranks (1 vs 2 by default).

Usage::

    python benchmarks/scaling.py [--ranks 1 2] [--repeats 5] [--quick]

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

Each figure is measured ``--repeats`` times, A/B interleaved: in every repeat the 1-rank and
the K-rank run of a kind follow each other (the order alternating from repeat to repeat), so
intermittent load from other users hits both alike, and a repeat's speed-up is the ratio of its
own pair. Printed: the median speed-up over the repeats and its spread (min-max), the median
absolute figures, the CPU share (CPU-s / wall-s of each rank) and what else was running: the
load average before and after, and the busiest other processes over the benchmark (CPU-seconds
each used in that window, read from /proc) beside the hardware line (benchmarks/_hardware.py).
A CPU share well below 1, or a busy neighbour, means the ranks did not have a core each and the
speed-up measures the neighbours too.

The output ends with exactly one line holding a JSON object with ``sampling_speedup_2_ranks``,
``training_speedup_2_ranks`` (medians), their ``_min`` / ``_max`` and per-repeat lists, and the
absolute figures.
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
    from _hardware import hardware, hardware_line  # benchmarks/ is on sys.path

    hw = hardware()
    try:
        from mpi4py import MPI

        mpi = MPI.Get_library_version().splitlines()[0].strip()
    except Exception as exc:  # pragma: no cover - reported, not fatal
        mpi = f"unknown ({exc})"
    return {**hw, "line": hardware_line(hw), "logical_cores": os.cpu_count(),
            "python": platform.python_version(), "mpi": mpi, "host": platform.node()}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def proc_cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, user + system clock ticks so far) of every process in /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (name, int(fields[11]) + int(fields[12]))  # utime, stime
    return out


def busiest_others(before: dict, after: dict, wall_s: float, top: int = 5) -> list[dict]:
    """The processes other than this one (and its children, gone by then) that used the most
    CPU between the two /proc snapshots: name, pid, CPU-s and share of one core."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    used = []
    for pid, (name, ticks) in after.items():
        if pid == me:
            continue
        delta = ticks - before[pid][1] if pid in before else ticks
        if delta > 0:
            used.append({"pid": pid, "name": name, "cpu_s": delta / hz,
                         "core_share": delta / hz / max(wall_s, 1e-9)})
    used = sorted(used, key=lambda r: -r["cpu_s"])[:top]
    for r in used:  # the command line says more than 'python'
        try:
            cmd = Path(f"/proc/{r['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = ""
        r["cmdline"] = cmd.strip()[:100] or r["name"]
    return used


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


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "values": xs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5, help="A/B interleaved repeats of each figure")
    p.add_argument("--chains", type=int, default=32, help="chains in total (split over ranks)")
    p.add_argument("--samples", type=int, default=2000, help="Metropolis steps per chain")
    p.add_argument("--batch", type=int, default=128, help="global training batch")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--quick", action="store_true",
                   help="a smoke test (small sizes, 2 repeats)")
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
        args.samples, args.train_steps, args.repeats = 100, 20, 2
        args.capacity_proposals = min(args.capacity_proposals, 1024)
    if 1 not in args.ranks:
        args.ranks = [1, *args.ranks]

    hw = _hardware()
    print("# scaling benchmark: tutorial point L=8, m2=-4, lam=8; "
          "flow of configs/tutorial_flow.yaml")
    print(f"#   hardware: {hw['line']}")
    for k in ("mpi", "host", "logical_cores", "python"):
        print(f"#   {k:<14} {hw[k]}")
    load0 = _loadavg()
    print(f"#   load average before: {load0}  (other users of the machine count here)")
    base = yaml.safe_load(BASE_CONFIG.read_text())
    print(f"#   flow: {base['flow']}; training objective {base['train'].get('objective')}, "
          "constant lr (other train keys from the config)")
    print(f"#   sampling: {args.chains} chains in total x {args.samples} steps = "
          f"{args.chains * args.samples} proposals; training: global batch {args.batch}, "
          f"{args.train_steps} steps; OMP_NUM_THREADS=1 per rank; {args.repeats} repeats, "
          "1 and K ranks interleaved (A/B, order alternating)", flush=True)

    runs: dict[tuple[str, int], list[dict]] = {}
    ticks0, t_start = proc_cpu_ticks(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lf-scaling-") as tmp:
        work = Path(tmp)
        raws = _make_configs(work, args)
        cap_cfg = work / "capacity.yaml"
        cap_cfg.write_text(yaml.safe_dump(raws[1]["train"], sort_keys=False))
        for rep in range(args.repeats):
            order = args.ranks if rep % 2 == 0 else list(reversed(args.ranks))
            for k in order:
                runs.setdefault(("capacity", k), []).append(
                    _capacity(k, cap_cfg, work, rep, args.capacity_proposals))
            for kind in ("sample", "train"):
                for k in order:
                    runs.setdefault((kind, k), []).append(
                        _launch(kind, k, raws[k][kind], work, rep))
    elapsed = time.perf_counter() - t_start
    others = busiest_others(ticks0, proc_cpu_ticks(), elapsed)
    load1 = _loadavg()

    n_prop = args.chains * args.samples
    rows = []
    for k in args.ranks:
        s_runs, t_runs, c_runs = runs[("sample", k)], runs[("train", k)], runs[("capacity", k)]
        rows.append({
            "ranks": k,
            "capacity_proposals_per_s": _spread([c["proposals_per_s"] for c in c_runs]),
            "capacity_cpu_share": min(c["cpu_share"] for c in c_runs),
            "proposals_per_s": _spread([n_prop / r["wall_s"] for r in s_runs]),
            "sample_wall_s": _spread([r["wall_s"] for r in s_runs]),
            "sample_cpu_share": min(min(r["cpu_s"]) / r["wall_s"] for r in s_runs),
            "train_step_ms": _spread([1e3 * r["step_s"] for r in t_runs]),
            "train_cpu_share": min(min(r["cpu_s"]) / r["wall_s"] for r in t_runs),
        })
    r1 = rows[0]

    def ratios(k_row: dict, key: str, inverse: bool = False) -> dict:
        """Per-repeat speed-ups of the pair (1 rank, K ranks) of the same repeat."""
        a, b = r1[key]["values"], k_row[key]["values"]
        return _spread([x / y if inverse else y / x for x, y in zip(a, b)])

    print()
    print(f"{'ranks':>5} | {'machine x':>17} | {'proposals/s':>11} | {'sampling speed-up':>17} | "
          f"{'cpu share':>9} | {'train ms/step':>13} | {'training speed-up':>17} | {'cpu share':>9}")
    print("-" * 124)
    fmt = "{median:5.2f} ({min:.2f}-{max:.2f})"
    for r in rows:
        cap = ratios(r, "capacity_proposals_per_s")
        sp = ratios(r, "proposals_per_s")
        tr = ratios(r, "train_step_ms", inverse=True)
        r["capacity_ratio"], r["sampling_speedup"], r["training_speedup"] = cap, sp, tr
        print(f"{r['ranks']:>5} | {fmt.format(**cap):>17} | "
              f"{r['proposals_per_s']['median']:>11.0f} | {fmt.format(**sp):>17} | "
              f"{r['sample_cpu_share']:>9.2f} | {r['train_step_ms']['median']:>13.1f} | "
              f"{fmt.format(**tr):>17} | {r['train_cpu_share']:>9.2f}")
    print()
    print(f"# speed-ups: median over {args.repeats} repeats (min-max); each repeat's ratio is "
          "that of its own interleaved 1-rank / K-rank pair. Absolute figures: medians.")
    print(f"# load average before {load0}, after {load1}. cpu share = min over ranks and repeats "
          "of CPU-s / wall-s; well below 1 means a rank shared its core with another process.")
    print(f"# busiest other processes during the {elapsed:.0f} s of the benchmark (CPU-s, share "
          "of one core):" + ("".join(f"\n#   {o['cpu_s']:7.1f} s ({o['core_share']:.2f})  "
                                       f"[{o['pid']}] {o['cmdline']}" for o in others) or " none"))
    print("# machine x = aggregate raw flow-sampling throughput of K independent plain processes "
          "(no MPI) over that of one: the speedup the machine itself allows right now (K on an "
          "idle machine with K free cores); compare the speedups with it.")
    summary = {
        "benchmark": "scaling",
        "hardware": hw,
        "hardware_line": hw["line"],
        "loadavg_before": load0,
        "loadavg_after": load1,
        "busiest_other_processes": others,
        "repeats": args.repeats,
        "proposals_total": n_prop,
        "train_global_batch": args.batch,
        "train_steps": args.train_steps,
        "results": rows,
    }
    two = next((r for r in rows if r["ranks"] == 2), None)
    if two is not None:
        for name, key in (("sampling_speedup_2_ranks", "sampling_speedup"),
                          ("training_speedup_2_ranks", "training_speedup"),
                          ("machine_capacity_2_procs", "capacity_ratio")):
            summary[name] = two[key]["median"]
            summary[name + "_min"] = two[key]["min"]
            summary[name + "_max"] = two[key]["max"]
            summary[name + "_values"] = two[key]["values"]
        summary["proposals_per_s_1_rank"] = r1["proposals_per_s"]["median"]
        summary["proposals_per_s_2_ranks"] = two["proposals_per_s"]["median"]
        summary["train_step_ms_1_rank"] = r1["train_step_ms"]["median"]
        summary["train_step_ms_2_ranks"] = two["train_step_ms"]["median"]
        print(f"# 2 ranks: sampling speed-up {fmt.format(**two['sampling_speedup'])}, training "
              f"speed-up {fmt.format(**two['training_speedup'])}; the machine allowed "
              f"{fmt.format(**two['capacity_ratio'])} to two independent processes")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
