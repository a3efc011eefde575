#!/usr/bin/env python
"""Benchmark of the batched HMC of lattice_flows on the tutorial couplings.

Usage::

    python benchmarks/hmc.py [--quick] [--threads N] [--n-chains C] [--sizes 8 16 32]
                             [--fourier [free|measured]] [--fa-mu2 auto|X]
                             [--trajectory-length auto|TAU] [--dtype float32|float64]

For each L (default 8, 16, 32) at d = 2, m2 = -4, lam = 8 (docs/conventions.md, "Standard test
points", "tutorial"; ``--m2``/``--lam`` for others), with float32 fields (``--dtype``) on the CPU:

* ``n_chains`` independent chains advance together as one batch (:class:`HMC`), leapfrog,
  nominal n_steps = 10 with jitter 0.5 (docs/conventions.md, "Practical notes");
  ``--fourier`` runs Fourier-accelerated HMC (``hmc.fourier_acceleration``, kernel ``free`` or
  ``measured``, ``--fa-mu2``), ``--trajectory-length`` sets ``hmc.trajectory_length``;
* thermalisation: the library's tuning protocol (:mod:`lattice_flows.mcmc.hmc_tuning`, the one
  ``lattice-flows hmc`` runs) over n_tune trajectories: the step size by dual averaging toward
  acceptance 0.8, then frozen (docs/conventions.md: "Tune the step size only during
  thermalisation"), and with the options above the FA mass and the trajectory length; a short
  stretch of further thermalisation runs at the frozen settings;
* production: n_traj trajectories per chain; |M| and M^2 (from :func:`measure`) are recorded per
  chain per trajectory.

Reported per L:

* ``traj_per_s``: chain-trajectories per wall second of the HMC updates alone,
  n_chains * n_traj / wall seconds (the whole batch of chains counts, not batch steps);
* ``cpu_s_per_traj``: CPU seconds (``time.process_time``, all threads of this process) per
  chain-trajectory, HMC updates only; measurement cost is given separately;
* acceptance (mean Metropolis acceptance in production) and the frozen step size;
* tau_int of |M| and of M^2, Gamma-method (Wolff 2004, S = 1.5; each chain a replica) on
  (n_traj, n_chains) arrays, in units of trajectories, with errors;
* CPU seconds per independent sample: 2 tau_int * cpu_s_per_traj (per chain-trajectory), for
  M^2 and |M|; force evaluations per independent M^2 sample, 2 tau_int * (n_steps + 1);
* chi2 = V <M^2> with its Gamma-method error as a sanity check (L = 8: about 0.75).

The output ends with exactly one line holding a JSON object with all numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

from _hardware import cpu_model, hardware as shared_hardware, hardware_line  # noqa: E402  (benchmarks/ is on sys.path)
from lattice_flows.config import config_from_dict  # noqa: E402
from lattice_flows.mcmc.hmc_plan import check_plan, hmc_from_config, plan_from_config  # noqa: E402
from lattice_flows.mcmc.hmc_thermalise import COLD_START_WIDTH  # noqa: E402
from lattice_flows.mcmc.hmc_tuning import frozen_settings, new_state, run_tuning  # noqa: E402
from lattice_flows.observables import measure
from lattice_flows.estimates import gamma_method
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.malloc import keep_freed_memory  # noqa: E402

M2, LAM, NDIM = -4.0, 8.0, 2
N_STEPS, JITTER, INTEGRATOR, TARGET_ACC = 10, 0.5, "leapfrog", 0.8

# (n_tune, n_therm_frozen, n_traj) per L. One batched trajectory of 16 chains (with measurement)
# costs about 0.8 ms of CPU on one thread at L = 8, 0.9 ms at L = 16 and 1.4 ms at L = 32 on an
# AMD EPYC (per-op overhead dominates at small L), so the default sizes give ~4 minutes in total
# and the quick ones ~30 s. tau_int is O(1-3) trajectories here, so n_traj >> tau_int.
FULL = {8: (1000, 500, 80000), 16: (1000, 500, 80000), 32: (1000, 500, 80000)}
QUICK = {8: (300, 100, 8000), 16: (300, 100, 8000), 32: (300, 100, 8000)}


def hardware(threads: int, dtype: str = "float32") -> dict:
    shared = shared_hardware()
    return {
        **shared,
        "line": hardware_line(shared),
        "cpu_model": cpu_model(),
        "platform_processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "os_cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "device": "cpu",
        "dtype": dtype,
    }


def bench_config(L: int, n_chains: int, n_tune: int, seed: int, fourier: str | None = None,
                 fa_mu2="auto", trajectory_length=None, dtype: str = "float32",
                 m2: float = M2, lam: float = LAM):
    """The library config of one benchmark run (the ``hmc`` section drives the tuning)."""
    hmc = {"n_chains": n_chains, "n_therm": n_tune, "n_steps": N_STEPS, "step_size": "auto",
           "target_acceptance": TARGET_ACC, "integrator": INTEGRATOR, "jitter": JITTER,
           "dtype": dtype, "fourier_acceleration": fourier is not None,
           "fa_kernel": fourier or "free", "fa_mu2": fa_mu2,
           "trajectory_length": trajectory_length}
    return config_from_dict({"lattice": {"shape": [L, L]}, "action": {"m2": m2, "lam": lam},
                             "seed": seed, "device": "cpu", "hmc": hmc})


def run_one(L: int, n_chains: int, n_tune: int, n_therm: int, n_traj: int, seed: int,
            fourier: str | None = None, fa_mu2="auto", trajectory_length=None,
            dtype: str = "float32", m2: float = M2, lam: float = LAM) -> dict:
    cfg = bench_config(L, n_chains, n_tune, seed, fourier, fa_mu2, trajectory_length, dtype, m2,
                       lam)
    plan = plan_from_config(cfg)
    check_plan(plan)
    action = Phi4Action(m2, lam, NDIM)
    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # near-cold start, as the library does (hmc_thermalise.COLD_START_WIDTH): hot N(0,1) starts can
    # leave chains stuck where the leapfrog is unstable at lam = 8
    phi = COLD_START_WIDTH * torch.randn((n_chains, L, L), generator=gen, dtype=tdtype)
    hmc = hmc_from_config(cfg, action, (L, L), gen, "cpu", tdtype)

    # thermalisation 1: the library's tuning protocol (eps, and FA mass / length if asked)
    tune_acc: list[float] = []
    state = new_state(plan, hmc)
    phi = run_tuning(plan, hmc, phi, state,
                     after_each=lambda _phi, st: tune_acc.append(st["last_accept_prob"]))
    frozen = frozen_settings(hmc, state)
    # thermalisation 2: frozen settings
    for _ in range(n_therm):
        phi, _, _, _ = hmc.step(phi)

    # production
    absM = np.empty((n_traj, n_chains))
    Msq = np.empty((n_traj, n_chains))
    chi2 = np.empty((n_traj, n_chains))
    n_acc = 0
    prob_sum = 0.0
    wall_hmc = cpu_hmc = wall_meas = cpu_meas = 0.0
    for t in range(n_traj):
        w0, c0 = time.perf_counter(), time.process_time()
        phi, acc, prob, _ = hmc.step(phi)
        w1, c1 = time.perf_counter(), time.process_time()
        obs = measure(phi, action, store_G=False)
        absM[t] = obs["absM"].numpy()
        Msq[t] = obs["M2"].numpy()
        chi2[t] = obs["chi2"].numpy()
        n_acc += int(acc.sum())
        prob_sum += float(prob.sum())
        w2, c2 = time.perf_counter(), time.process_time()
        wall_hmc += w1 - w0
        cpu_hmc += c1 - c0
        wall_meas += w2 - w1
        cpu_meas += c2 - c1

    n_ct = n_chains * n_traj  # chain-trajectories
    cpu_per_traj = cpu_hmc / n_ct
    e_abs = gamma_method(absM)
    e_m2 = gamma_method(Msq)
    e_chi = gamma_method(chi2)
    row = {
        "L": L,
        "V": L * L,
        "n_chains": n_chains,
        "n_tune": n_tune,
        "n_therm_frozen": n_therm,
        "n_traj": n_traj,
        "chain_trajectories": n_ct,
        "step_size": hmc.step_size,
        "n_steps": hmc.n_steps,
        "jitter": JITTER,
        "traj_length": hmc.step_size * hmc.n_steps,
        "fourier": fourier or "none",
        "fa_mu2": frozen.get("fa_mu2"),
        "trajectory_length_setting": trajectory_length,
        "trajectory_scan": frozen.get("trajectory_scan"),
        "force_evals_per_traj": hmc.force_evaluations(hmc.n_steps),
        "acceptance": n_acc / n_ct,
        "mean_accept_prob": prob_sum / n_ct,
        "tune_acceptance_last100": float(np.mean(tune_acc[-100:])),
        "wall_s_hmc": wall_hmc,
        "cpu_s_hmc": cpu_hmc,
        "wall_s_measure": wall_meas,
        "cpu_s_measure": cpu_meas,
        "traj_per_s": n_ct / wall_hmc,
        "batch_traj_per_s": n_traj / wall_hmc,
        "traj_per_s_incl_measure": n_ct / (wall_hmc + wall_meas),
        "cpu_s_per_traj": cpu_per_traj,
        "cpu_s_per_traj_measure": cpu_meas / n_ct,
        "absM": e_abs.value,
        "absM_err": e_abs.error,
        "tau_int_absM": e_abs.tau_int,
        "tau_int_absM_err": e_abs.tau_int_error,
        "window_absM": e_abs.window,
        "M2": e_m2.value,
        "M2_err": e_m2.error,
        "tau_int_M2": e_m2.tau_int,
        "tau_int_M2_err": e_m2.tau_int_error,
        "window_M2": e_m2.window,
        "chi2": e_chi.value,
        "chi2_err": e_chi.error,
        "n_traj_over_tau_M2": n_traj / e_m2.tau_int,
        "cpu_s_per_indep_sample_M2": 2 * e_m2.tau_int * cpu_per_traj,
        "cpu_s_per_indep_sample_M2_err": 2 * e_m2.tau_int_error * cpu_per_traj,
        "cpu_s_per_indep_sample_absM": 2 * e_abs.tau_int * cpu_per_traj,
        "cpu_s_per_indep_sample_absM_err": 2 * e_abs.tau_int_error * cpu_per_traj,
        "force_evals_per_indep_sample_M2": 2 * e_m2.tau_int * hmc.force_evaluations(hmc.n_steps),
        "force_evals_per_indep_sample_M2_err":
            2 * e_m2.tau_int_error * hmc.force_evaluations(hmc.n_steps),
    }
    return row


def fmt_pm(x: float, dx: float, digits: int = 3) -> str:
    return f"{x:.{digits}g} ± {dx:.2g}"


def markdown_table(rows: list[dict]) -> str:
    head = [
        "L", "chains × traj", "traj/s (chain-traj per wall s)", "CPU s / traj", "acceptance",
        "step size", "n_steps", "τ_int |M|", "τ_int M²", "CPU s / indep. M²", "CPU s / indep. |M|",
        "χ₂ = V⟨M²⟩", "forces / indep. M²",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["L"]),
            f"{r['n_chains']} × {r['n_traj']}",
            f"{r['traj_per_s']:.4g}",
            f"{r['cpu_s_per_traj']:.3e}",
            f"{r['acceptance']:.3f}",
            f"{r['step_size']:.4f}",
            str(r["n_steps"]),
            fmt_pm(r["tau_int_absM"], r["tau_int_absM_err"]),
            fmt_pm(r["tau_int_M2"], r["tau_int_M2_err"]),
            f"{r['cpu_s_per_indep_sample_M2']:.3e} ± {r['cpu_s_per_indep_sample_M2_err']:.1e}",
            f"{r['cpu_s_per_indep_sample_absM']:.3e} ± {r['cpu_s_per_indep_sample_absM_err']:.1e}",
            fmt_pm(r["chi2"], r["chi2_err"], 4),
            fmt_pm(r["force_evals_per_indep_sample_M2"], r["force_evals_per_indep_sample_M2_err"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # the same allocator settings for every variant (lattice_flows/malloc.py)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~30 s run with fewer trajectories")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--n-chains", type=int, default=16, help="chains per batch (default 16)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32], help="lattice sizes L")
    ap.add_argument("--n-traj", type=int, default=None, help="override production trajectories")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--fourier", nargs="?", const="free", choices=["free", "measured"],
                    default=None, help="Fourier-accelerated HMC with this mass kernel (default "
                    "kernel: free)")
    ap.add_argument("--fa-mu2", default="auto", help="hmc.fa_mu2: 'auto' or a number")
    ap.add_argument("--trajectory-length", default=None,
                    help="hmc.trajectory_length: 'auto' or a number (default: n_steps x eps)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--m2", type=float, default=M2, help=f"m2 (default {M2}, tutorial)")
    ap.add_argument("--lam", type=float, default=LAM, help=f"lam (default {LAM}, tutorial; "
                    "the E-ladder's L = 32 point is m2 -4, lam 4.572)")
    args = ap.parse_args(argv)
    tl = args.trajectory_length
    tl = None if tl is None else (tl if tl == "auto" else float(tl))
    fa_mu2 = args.fa_mu2 if args.fa_mu2 == "auto" else float(args.fa_mu2)

    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    hw = hardware(args.threads, args.dtype)
    print("# HMC benchmark (lattice_flows)")
    tutorial = (args.m2, args.lam) == (M2, LAM)
    print(f"{'tutorial ' if tutorial else ''}couplings: d={NDIM}, m2={args.m2}, lam={args.lam}; "
          f"{args.dtype} on CPU; {INTEGRATOR}, "
          f"n_steps={N_STEPS} jitter={JITTER}; eps by DualAveraging -> acceptance {TARGET_ACC}, "
          f"then frozen; Fourier acceleration: {args.fourier or 'off'} (fa_mu2 {fa_mu2}); "
          f"trajectory length: {tl if tl is not None else 'n_steps x eps'}")
    print(f"mode: {'quick' if args.quick else 'full'}")
    print(f"hardware: {hw['line']}")
    print(f"  CPU {hw['cpu_model']!r} (platform.processor {hw['platform_processor']!r}, "
          f"{hw['machine']}, os.cpu_count {hw['os_cpu_count']}), {hw['platform']}")
    print(f"python {hw['python']}, torch {hw['torch']}, numpy {hw['numpy']}, "
          f"torch threads {hw['torch_num_threads']}")
    sys.stdout.flush()

    rows = []
    t_start = time.perf_counter()
    for i, L in enumerate(args.sizes):
        n_tune, n_therm, n_traj = plan.get(L, plan[max(plan)])
        if args.n_traj is not None:
            n_traj = args.n_traj
        t0 = time.perf_counter()
        row = run_one(L, args.n_chains, n_tune, n_therm, n_traj, args.seed + i, args.fourier,
                      fa_mu2, tl, args.dtype, args.m2, args.lam)
        row["wall_s_total"] = time.perf_counter() - t0
        rows.append(row)
        print(f"L={L}: done in {row['wall_s_total']:.1f} s wall (eps={row['step_size']:.4f}, "
              f"acc={row['acceptance']:.3f}, tau_int M2={row['tau_int_M2']:.2f}, "
              f"window M2={row['window_M2']}, |M| window={row['window_absM']})")
        sys.stdout.flush()
    total = time.perf_counter() - t_start

    print()
    print(markdown_table(rows))
    print()
    print("traj/s counts chain-trajectories: n_chains * n_traj / wall seconds of the HMC updates "
          "(measurement excluded; see traj_per_s_incl_measure). CPU s / traj is process_time per "
          "chain-trajectory. CPU s / indep. sample = 2 tau_int * CPU s / traj. tau_int in "
          "trajectories (Gamma-method, S=1.5, chains as replicas).")
    print(f"total wall time {total:.1f} s")
    out = {
        "benchmark": "hmc",
        "mode": "quick" if args.quick else "full",
        "couplings": {"ndim": NDIM, "m2": args.m2, "lam": args.lam},
        "settings": {"integrator": INTEGRATOR, "n_steps": N_STEPS, "jitter": JITTER,
                     "fourier": args.fourier or "none", "fa_mu2": fa_mu2,
                     "trajectory_length": tl, "dtype": args.dtype,
                     "target_acceptance": TARGET_ACC, "n_chains": args.n_chains,
                     "seed": args.seed, "threads": args.threads},
        "total_wall_s": total,
        "rows": rows,
        "hardware": hw,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
