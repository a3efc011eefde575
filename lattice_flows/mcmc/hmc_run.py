"""HMC production: thermalise (tune eps), freeze eps, run chains, write chunks, checkpoint, resume.

See :mod:`lattice_flows.runtime.resume` for the run-folder and resume rules and
:mod:`lattice_flows.mcmc.hmc` for the algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.hdf5 import SampleWriter
from lattice_flows.io.lock import RunLock
from lattice_flows.io.runfolder import config_yaml, provenance, write_config
from lattice_flows.logs import log
from lattice_flows.mcmc.hmc import HMC, DualAveraging
from lattice_flows.observables import measure, observable_specs
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.ranks import finish_parallel, production_paths
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.rows import RowBuffer
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.signals import StopRequested, stop_requested
from lattice_flows.theory.phi4 import Phi4Action

SAMPLES_NAME = "hmc.h5"
COLD_START_WIDTH = 0.1
CHECKPOINT_NAME = "hmc.ckpt"
#: ``phase`` of a checkpoint written by a stop during thermalisation; a production checkpoint has
#: no ``phase`` (earlier versions wrote 0 or 1 there, never read; such checkpoints still resume)
THERM_PHASE = -1


def _initial_step_size(cfg: Config) -> float:
    h = cfg.hmc
    return float(h.step_size) if h.step_size != "auto" else 1.0 / h.n_steps


def run_hmc(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
            world=None) -> Path:
    """Run (or resume, or extend) the HMC production of ``cfg``; returns the sample file path
    (with several MPI ranks: the merged view of the rank files)."""
    if cfg.hmc is None:
        raise ConfigError("config section 'hmc' is missing; it is required by 'lattice-flows hmc'.")
    h = cfg.hmc
    if h.step_size == "auto" and h.n_therm < 20:
        raise ConfigError(
            f"config key 'hmc.n_therm': value {h.n_therm} is too small for step_size 'auto'; "
            "expected at least 20 thermalisation trajectories to tune the step size "
            "(or give a numeric hmc.step_size)."
        )
    run_dir = Path(run_dir or cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = 0 if world is None else world.rank
    with RunLock(run_dir, ".lock" if rank == 0 else f".lock.{rank}"):
        path = _run_locked(cfg, run_dir, progress, world)
    merged = finish_parallel(run_dir, "hmc", world)
    return merged or path


def _run_locked(cfg: Config, run_dir: Path, progress: bool, world) -> Path:
    rank = 0 if world is None else world.rank
    world_size = 1 if world is None else world.size
    h = cfg.hmc
    assert h is not None
    device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
    dtype = resolve_dtype(h.dtype)  # HMC's own precision (hmc.dtype), not the flow's
    action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
    samples_path, ckpt_path = production_paths(run_dir, "hmc", world)
    if ckpt_path.exists() or samples_path.exists():
        check_resumable(run_dir, cfg, ("hmc",))
    prov = provenance(cfg, world_size, rank)
    if rank == 0:
        write_config(run_dir, cfg, prov, "hmc")
    n_rows_total = h.n_traj // h.save_every
    gen = make_generator(device, derive_seed(cfg.seed, rank, 0))
    hmc = HMC(action, _initial_step_size(cfg), h.n_steps, h.integrator, h.jitter, gen)

    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        _check_checkpoint(state, ckpt_path, cfg)
    if state is None or state.get("phase") == THERM_PHASE:
        phi, cpu_used = _thermalise(cfg, hmc, gen, device, dtype, state, ckpt_path, run_dir,
                                    progress and rank == 0)
        traj, n_acc, n_tried = 0, 0, 0
        save_checkpoint(_ckpt(phi, gen, hmc.step_size, 0, 0, 0, cpu_used), ckpt_path)
    else:
        phi = state["phi"].to(device=device, dtype=dtype)
        gen.set_state(state["rng"])
        hmc.step_size = float(state["step_size"])
        traj = int(state["traj"])
        n_acc, n_tried = int(state["n_accepted"]), int(state["n_tried"])
        cpu_used = float(state.get("cpu_s", 0.0))
        log.info("resuming %s at trajectory %d of %d", run_dir, traj, h.n_traj)

    attrs = {
        "kind": "hmc",
        "config": config_yaml(cfg),
        "lattice_shape": np.asarray(cfg.lattice.shape),
        "m2": cfg.action.m2,
        "lam": cfg.action.lam,
        "step_size": hmc.step_size,
        "hmc_dtype": h.dtype,
        **{k: v for k, v in prov.items() if k != "created"},
    }
    specs = {"action": ((), np.float64), "accepted": ((), np.bool_),
             **observable_specs(cfg.lattice.shape, cfg.output.store_G)}
    writer = SampleWriter(samples_path, attrs, h.n_chains, cfg.lattice.shape, specs)
    rows_done = traj // h.save_every
    writer.truncate(rows_done)  # rows written after the last checkpoint are regenerated

    buf = RowBuffer()
    acc_since_save = torch.zeros(h.n_chains, dtype=torch.bool, device=device)
    acc_per_chain = torch.zeros(h.n_chains, dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    start_traj = traj
    bar = progress_bar(total=h.n_traj, initial=traj, desc="hmc", enabled=progress and rank == 0)
    while traj < h.n_traj:
        phi, acc, prob, s_new = hmc.step(phi)
        traj += 1
        n_acc += int(acc.sum())
        n_tried += acc.numel()
        acc_since_save |= acc
        acc_per_chain += acc
        if traj % h.save_every == 0:
            obs = measure(phi, action, cfg.output.store_G)
            row = {
                "configs": phi.detach().to(torch.float32).cpu().numpy(),
                "action": s_new.cpu().numpy(),
                "accepted": acc_since_save.cpu().numpy(),
            }
            row.update({f"observables/{k}": v.cpu().numpy() for k, v in obs.items()})
            buf.add(row)
            acc_since_save = torch.zeros_like(acc_since_save)
            stop = stop_requested()
            if buf.n >= cfg.output.chunk_rows or traj // h.save_every == n_rows_total or stop:
                cpu_now = cpu_used + time.process_time() - cpu0
                writer.append(buf.take(), attrs={"cpu_s": cpu_now, "n_traj_done": traj,
                                                 "acceptance": n_acc / max(1, n_tried)})
                save_checkpoint(
                    _ckpt(phi, gen, hmc.step_size, traj, n_acc, n_tried, cpu_now), ckpt_path
                )
                if stop:
                    bar.close()
                    raise StopRequested(stop, str(samples_path))
        bar.update(1)
        if bar.enabled and n_tried:
            bar.set_postfix(acc=f"{n_acc / n_tried:.3f}")
    bar.close()
    dt = time.perf_counter() - t0
    _warn_stuck_chains(acc_per_chain.cpu(), traj - start_traj)
    if traj > start_traj:
        log.info(
            "HMC done: %d trajectories in %.1f s (%.1f traj/s), acceptance %.3f, %d rows in %s",
            traj - start_traj, dt, (traj - start_traj) / dt, n_acc / max(1, n_tried),
            writer.n_saved(), samples_path,
        )
    else:
        log.info("HMC run %s is already complete (%d trajectories)", run_dir, traj)
    return samples_path


def _warn_stuck_chains(acc_per_chain: torch.Tensor, n_traj: int) -> list[int]:
    """Warn about chains whose acceptance is far below the others' (a chain stuck where the
    integrator is unstable biases every average); returns their indices."""
    if n_traj < 50:
        return []
    rate = acc_per_chain.double() / n_traj
    median = float(rate.median())
    stuck = [int(i) for i in torch.nonzero(rate < 0.25 * median).flatten()]
    if stuck:
        log.warning(
            "chains %s accepted only %s of trajectories (median %.2f): they may be stuck; "
            "check them before using the averages (lower hmc.step_size or raise hmc.n_therm)",
            stuck, [round(float(rate[i]), 3) for i in stuck], median,
        )
    return stuck


def _check_checkpoint(state: dict, ckpt_path: Path, cfg: Config) -> None:
    """Refuse a checkpoint of another kind, lattice, number of chains or HMC precision."""
    h = cfg.hmc
    if state.get("kind") != "hmc" or tuple(state["phi"].shape) != (h.n_chains, *cfg.lattice.shape):
        raise ConfigError(
            f"{ckpt_path}: checkpoint does not match the config (kind {state.get('kind')!r}, "
            f"chains x lattice {tuple(state['phi'].shape)}); use a new output.dir."
        )
    # checkpoints from before hmc.dtype existed ran in the flow dtype: their phi tells
    ran_in = state.get("dtype", str(state["phi"].dtype).replace("torch.", ""))
    if ran_in != h.dtype:
        raise ConfigError(
            f"{ckpt_path}: this HMC run was started with hmc.dtype {ran_in!r}, the config asks "
            f"for {h.dtype!r}; resuming would mix two precisions. Set hmc.dtype={ran_in} to "
            "resume, or use a new output.dir."
        )


def _thermalise(cfg: Config, hmc: HMC, gen: torch.Generator, device, dtype, state: dict | None,
                ckpt_path: Path, run_dir: Path, show: bool) -> tuple[torch.Tensor, float]:
    """Thermalise (and tune eps when ``hmc.step_size`` is 'auto'), from a near-cold start or
    from a thermalisation checkpoint ``state``; a stop request checkpoints the chains, RNG,
    step size, dual-averaging state and counter (phase :data:`THERM_PHASE`), so that the resumed
    thermalisation equals an uninterrupted one. Returns the chains and the CPU-s used so far;
    ``hmc.step_size`` is left frozen at its final value."""
    h = cfg.hmc
    auto = h.step_size == "auto"
    tuner = DualAveraging(math.log(hmc.step_size), h.target_acceptance) if auto else None
    if state is None:
        # near-cold start: a hot N(0, 1) start at large lam puts chains where the leapfrog is
        # unstable (force ~ 4 lam phi^3), and such chains can stay stuck for the whole run
        phi = COLD_START_WIDTH * torch.randn(
            (h.n_chains, *cfg.lattice.shape), generator=gen, device=device, dtype=dtype
        )
        done, cpu_before = 0, 0.0
        log.info(
            "HMC on %s (%s): lattice %s, m2=%g lam=%g, %d chains, %d therm + %d traj",
            device, h.dtype, cfg.lattice.shape, cfg.action.m2, cfg.action.lam, h.n_chains,
            h.n_therm, h.n_traj,
        )
    else:
        phi = state["phi"].to(device=device, dtype=dtype)
        gen.set_state(state["rng"])
        hmc.step_size = float(state["step_size"])
        done, cpu_before = int(state["therm_done"]), float(state["cpu_s"])
        if tuner is not None:
            for key, value in state["tuner"].items():  # no __post_init__: it would reset mu
                setattr(tuner, key, value)
        log.info("resuming the thermalisation of %s at trajectory %d of %d", run_dir, done,
                 h.n_therm)
    cpu0 = time.process_time()
    bar = progress_bar(total=h.n_therm, initial=done, desc="thermalise", enabled=show)
    while done < h.n_therm:
        phi, _, prob, _ = hmc.step(phi)
        done += 1
        if tuner is not None:
            hmc.step_size = tuner.update(float(prob.mean()))
        bar.update(1)
        signum = stop_requested()
        if signum:
            bar.close()
            ckpt = _ckpt(phi, gen, hmc.step_size, 0, 0, 0, cpu_before + time.process_time() - cpu0)
            ckpt["phase"] = THERM_PHASE
            ckpt["therm_done"] = done
            ckpt["tuner"] = None if tuner is None else dataclasses.asdict(tuner)
            save_checkpoint(ckpt, ckpt_path)
            raise StopRequested(signum, f"{ckpt_path} (during thermalisation, trajectory "
                                        f"{done} of {h.n_therm})")
    bar.close()
    if tuner is not None:
        hmc.step_size = tuner.final_step_size
    log.info("thermalised; step size frozen at %.5g", hmc.step_size)
    return phi, cpu_before + time.process_time() - cpu0


def _ckpt(phi, gen, step_size, traj, n_acc, n_tried, cpu_s) -> dict:
    return {
        "kind": "hmc",
        "dtype": str(phi.dtype).replace("torch.", ""),
        "phi": phi.detach().cpu().clone(),
        "rng": gen.get_state().clone(),
        "step_size": float(step_size),
        "traj": int(traj),
        "n_accepted": int(n_acc),
        "n_tried": int(n_tried),
        "cpu_s": float(cpu_s),
    }
