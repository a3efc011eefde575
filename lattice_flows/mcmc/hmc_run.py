"""HMC production: thermalise (tune eps), freeze eps, run chains, write chunks, checkpoint, resume.

See :mod:`lattice_flows.runtime.resume` for the run-folder and resume rules,
:mod:`lattice_flows.mcmc.hmc` for the algorithm and :mod:`lattice_flows.mcmc.hmc_tuning` for what
thermalisation tunes (eps, the trajectory length, the FA mass). What it froze (eps, n_steps, the FA
mass M(p), mu^2, the length scan) goes into every checkpoint and the sample file attrs, and a resume
restores it from the checkpoint, so a resumed run uses the same M and length.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.io.checkpoint import save_checkpoint
from lattice_flows.logs import log
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.mcmc.hmc_tuning import (
    check_plan, finish_without_thermalisation, frozen_settings, hmc_from_config, new_state,
    plan_from_config, prepare_hmc, restore_frozen, tuning_step,
)
from lattice_flows.observables import measure
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.production import Advance, run_production
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.signals import StopRequested, stop_requested
from lattice_flows.theory.phi4 import Phi4Action

SAMPLES_NAME = "hmc.h5"
COLD_START_WIDTH = 0.1
#: ``phase`` of a checkpoint written by a stop during thermalisation; a production checkpoint has
#: no ``phase`` (earlier versions wrote 0 or 1 there, never read; such checkpoints still resume)
THERM_PHASE = -1


def _initial_step_size(cfg: Config) -> float:
    """eps of the first thermalisation trajectory (kept for producers that build ``HMC(...)``
    themselves; :func:`~lattice_flows.mcmc.hmc_tuning.hmc_from_config` is the factory)."""
    plan = plan_from_config(cfg)
    return plan.initial_step_size(plan.fourier and not plan.needs_measurement)


def run_hmc(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
            world=None) -> Path:
    """Run (or resume, or extend) the HMC production of ``cfg``; returns the sample file path
    (with several MPI ranks: the merged view of the rank files). The production skeleton (lock,
    resume, chunked commit + checkpoint, graceful stop) is :mod:`lattice_flows.runtime.production`;
    :class:`HMCProducer` is the HMC part."""
    if cfg.hmc is None:
        raise ConfigError("config section 'hmc' is missing; it is required by 'lattice-flows hmc'.")
    h = cfg.hmc
    if h.step_size == "auto" and h.n_therm < 20:
        raise ConfigError(
            f"config key 'hmc.n_therm': value {h.n_therm} is too small for step_size 'auto'; "
            "expected at least 20 thermalisation trajectories to tune the step size "
            "(or give a numeric hmc.step_size)."
        )
    check_plan(plan_from_config(cfg))
    run_dir = Path(run_dir or cfg.output.dir)
    rank = 0 if world is None else world.rank
    return run_production(
        lambda: HMCProducer(cfg, run_dir, progress and rank == 0, world), cfg, run_dir, world,
        base="hmc", stage="hmc", lock_name=".lock" if rank == 0 else f".lock.{rank}", desc="hmc",
        progress=progress,
    )


class HMCProducer:
    """HMC chains for :func:`~lattice_flows.runtime.production.run_production`: thermalise
    (tune eps) on a fresh start, then one trajectory per :meth:`advance`, a row every
    ``hmc.save_every`` trajectories (``accepted``: any acceptance since the last row)."""

    kind = "hmc"

    def __init__(self, cfg: Config, run_dir: Path, show: bool, world) -> None:
        h = cfg.hmc
        assert h is not None
        self.cfg, self.h, self.run_dir, self.show = cfg, h, run_dir, show
        rank = 0 if world is None else world.rank
        self.device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
        self.dtype = resolve_dtype(h.dtype)  # HMC's own precision (hmc.dtype), not the flow's
        self.action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
        self.n_chains, self.total = h.n_chains, h.n_traj
        self.n_rows_total = h.n_traj // h.save_every
        self.gen = make_generator(self.device, derive_seed(cfg.seed, rank, 0))
        self.hmc = hmc_from_config(cfg, self.action, tuple(cfg.lattice.shape), self.gen,
                                   self.device, self.dtype)
        self.frozen: dict = {}  # mu^2 and the length scan of the thermalisation (checkpointed)
        self.therm_cpu_s: float | None = None  # CPU-s of thermalisation and tuning
        self.acc_since_save = torch.zeros(h.n_chains, dtype=torch.bool, device=self.device)
        self.acc_per_chain = torch.zeros(h.n_chains, dtype=torch.int64, device=self.device)

    def start(self, state: dict | None, ckpt_path: Path) -> None:
        h = self.h
        if state is not None:
            _check_checkpoint(state, ckpt_path, self.cfg)
        if state is None or state.get("phase") == THERM_PHASE:
            self.phi, self.cpu_s = _thermalise(self.cfg, self.hmc, self.gen, self.device,
                                               self.dtype, state, ckpt_path, self.run_dir,
                                               self.show, self.frozen)
            self.step, self.n_acc, self.n_tried = 0, 0, 0
            self.therm_cpu_s = self.cpu_s
            save_checkpoint(self.checkpoint(self.cpu_s), ckpt_path)
        else:
            self.phi = state["phi"].to(device=self.device, dtype=self.dtype)
            self.gen.set_state(state["rng"])
            restore_frozen(self.hmc, state, self.device)
            self.frozen = {k: state[k] for k in ("fa_mu2", "trajectory_scan") if k in state}
            self.step = int(state["traj"])
            self.n_acc, self.n_tried = int(state["n_accepted"]), int(state["n_tried"])
            self.cpu_s = float(state.get("cpu_s", 0.0))
            self.therm_cpu_s = state.get("therm_cpu_s")  # None: a checkpoint of an older version
            log.info("resuming %s at trajectory %d of %d", self.run_dir, self.step, h.n_traj)

    def rows_done(self) -> int:
        return self.step // self.h.save_every

    def file_attrs(self) -> dict:
        h = self.h
        out = {"step_size": self.hmc.step_size, "hmc_dtype": h.dtype,
               "n_steps": self.hmc.n_steps,
               "trajectory_length": self.hmc.step_size * self.hmc.n_steps,
               "fourier_acceleration": h.fourier_acceleration}
        if self.therm_cpu_s is not None:  # thermalisation and tuning, included in cpu_s
            out["therm_cpu_s"] = float(self.therm_cpu_s)
        if h.fourier_acceleration:
            out["fa_kernel"] = h.fa_kernel
            out["fa_mass"] = self.hmc.mass.cpu().numpy()
            if "fa_mu2" in self.frozen:
                out["fa_mu2"] = float(self.frozen["fa_mu2"])
        scan = self.frozen.get("trajectory_scan")
        if scan:
            out["trajectory_scan_length"] = [row["length"] for row in scan]
            out["trajectory_scan_cost"] = [row["cost"] for row in scan]
        return out

    def row_specs(self) -> dict:
        return {}

    def advance(self) -> Advance:
        """One trajectory; a row when it completes a group of ``hmc.save_every``."""
        self.phi, acc, _, s_new = self.hmc.step(self.phi)
        self.step += 1
        self.n_acc += int(acc.sum())
        self.n_tried += acc.numel()
        self.acc_since_save |= acc
        self.acc_per_chain += acc
        if self.step % self.h.save_every:
            return Advance(can_commit=False)
        obs = measure(self.phi, self.action, self.cfg.output.store_G)
        row = {
            "configs": self.phi.detach().to(torch.float32).cpu().numpy(),
            "action": s_new.cpu().numpy(),
            "accepted": self.acc_since_save.cpu().numpy(),
        }
        row.update({f"observables/{k}": v.cpu().numpy() for k, v in obs.items()})
        self.acc_since_save = torch.zeros_like(self.acc_since_save)
        return Advance([row], last=self.step // self.h.save_every == self.n_rows_total)

    def postfix(self) -> dict | None:
        return {"acc": f"{self.n_acc / self.n_tried:.3f}"} if self.n_tried else None

    def commit_attrs(self, cpu_s: float) -> dict:
        return {"cpu_s": cpu_s, "n_traj_done": self.step,
                "acceptance": self.n_acc / max(1, self.n_tried)}

    def checkpoint(self, cpu_s: float) -> dict:
        ckpt = _ckpt(self.phi, self.gen, self.hmc.step_size, self.step, self.n_acc, self.n_tried,
                     cpu_s)
        ckpt.update(frozen_settings(self.hmc, None))
        ckpt.update(self.frozen)
        if self.therm_cpu_s is not None:
            ckpt["therm_cpu_s"] = float(self.therm_cpu_s)
        return ckpt

    def finish(self, steps_run: int, seconds: float, samples_path: Path, n_rows: int) -> None:
        _warn_stuck_chains(self.acc_per_chain.cpu(), steps_run)
        if steps_run > 0:
            log.info(
                "HMC done: %d trajectories in %.1f s (%.1f traj/s), acceptance %.3f, %d rows in %s",
                steps_run, seconds, steps_run / seconds, self.n_acc / max(1, self.n_tried),
                n_rows, samples_path,
            )
        else:
            log.info("HMC run %s is already complete (%d trajectories)", self.run_dir, self.step)


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
    if state.get("phase") != THERM_PHASE and ("fa_mass" in state) != h.fourier_acceleration:
        ran = "with" if "fa_mass" in state else "without"
        raise ConfigError(
            f"{ckpt_path}: this HMC run was started {ran} Fourier acceleration, the config asks "
            f"for hmc.fourier_acceleration {str(h.fourier_acceleration).lower()}; set it back to "
            f"resume, or use a new output.dir."
        )


def _thermalise(cfg: Config, hmc: HMC, gen: torch.Generator, device, dtype, state: dict | None,
                ckpt_path: Path, run_dir: Path, show: bool,
                frozen: dict | None = None) -> tuple[torch.Tensor, float]:
    """Thermalise and tune (the protocol of :mod:`lattice_flows.mcmc.hmc_tuning`: eps when
    ``hmc.step_size`` is 'auto', the FA mass, the trajectory length), from a near-cold start or
    from a thermalisation checkpoint ``state``; a stop request checkpoints the chains, RNG, the
    tuning state and what was frozen so far (phase :data:`THERM_PHASE`), so that the resumed
    thermalisation equals an uninterrupted one. Returns the chains and the CPU-s used so far;
    ``hmc`` is left with the frozen eps, n_steps and mass. ``frozen`` (a dict) receives what
    the production checkpoints and file attrs need besides ``hmc`` (mu^2, the length scan)."""
    h = cfg.hmc
    plan = plan_from_config(cfg)
    if state is None:
        # near-cold start: a hot N(0, 1) start at large lam puts chains where the leapfrog is
        # unstable (force ~ 4 lam phi^3), and such chains can stay stuck for the whole run
        phi = COLD_START_WIDTH * torch.randn(
            (h.n_chains, *cfg.lattice.shape), generator=gen, device=device, dtype=dtype
        )
        prepare_hmc(plan, hmc, device)  # a no-op after hmc_from_config
        tuning, cpu_before = new_state(plan, hmc), 0.0
        log.info(
            "HMC on %s (%s): lattice %s, m2=%g lam=%g, %d chains, %d therm + %d traj%s",
            device, h.dtype, cfg.lattice.shape, cfg.action.m2, cfg.action.lam, h.n_chains,
            h.n_therm, h.n_traj,
            f", Fourier acceleration (fa_kernel {h.fa_kernel}, fa_mu2 {h.fa_mu2})"
            if h.fourier_acceleration else "",
        )
        if plan.fourier and not plan.needs_measurement:
            log.info("FA-HMC: mass kernel free, M(p) = 2 (phat^2 + mu2) with mu2 = %g (%s)",
                     plan.mu2, "m2 of the free field" if h.fa_mu2 == "auto" else "hmc.fa_mu2")
    else:
        phi = state["phi"].to(device=device, dtype=dtype)
        gen.set_state(state["rng"])
        restore_frozen(hmc, state, device)
        cpu_before = float(state["cpu_s"])
        tuning = state.get("tuning")
        if tuning is None:  # a checkpoint from before hmc_tuning: the tune segment only
            tuning = new_state(plan, hmc)
            tuning["done"], tuning["tuner"] = int(state["therm_done"]), state["tuner"]
        tuning = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                  for k, v in tuning.items()}
        log.info("resuming the thermalisation of %s at trajectory %d of %d", run_dir,
                 tuning["done"], h.n_therm)
    cpu0 = time.process_time()
    bar = progress_bar(total=h.n_therm, initial=tuning["done"], desc="thermalise", enabled=show)
    if h.n_therm == 0:
        finish_without_thermalisation(plan, hmc)
    while tuning["done"] < h.n_therm:
        phi = tuning_step(plan, hmc, phi, tuning)
        bar.update(1)
        signum = stop_requested()
        if signum:
            bar.close()
            ckpt = _ckpt(phi, gen, hmc.step_size, 0, 0, 0, cpu_before + time.process_time() - cpu0)
            ckpt.update(frozen_settings(hmc, tuning))
            ckpt["phase"] = THERM_PHASE
            ckpt["therm_done"] = tuning["done"]
            ckpt["tuner"] = tuning["tuner"]
            ckpt["tuning"] = {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
                              for k, v in tuning.items()}
            save_checkpoint(ckpt, ckpt_path)
            raise StopRequested(signum, f"{ckpt_path} (during thermalisation, trajectory "
                                        f"{tuning['done']} of {h.n_therm})")
    bar.close()
    if frozen is not None:
        settings = frozen_settings(hmc, tuning)
        frozen.update({k: settings[k] for k in ("fa_mu2", "trajectory_scan") if k in settings})
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
