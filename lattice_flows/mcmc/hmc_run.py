"""HMC production: thermalise (tune eps), freeze eps, run chains, write chunks, checkpoint, resume.

See :mod:`lattice_flows.runtime.resume` for the run-folder and resume rules,
:mod:`lattice_flows.mcmc.hmc` for the algorithm, :mod:`lattice_flows.mcmc.hmc_thermalise` for the
thermalisation and :mod:`lattice_flows.mcmc.hmc_tuning` for what it tunes (eps, the trajectory
length, the FA mass). What it froze (eps, n_steps, the FA mass M(p), mu^2, the length scan) goes
into every checkpoint and the sample file attrs, and a resume restores it from the checkpoint, so a
resumed run uses the same M and length. The clocks of the run (``cpu_s``, ``wall_s``,
``device_s``, ``device_kind``: :mod:`lattice_flows.runtime.production`) include the
thermalisation's, recorded apart as ``therm_cpu_s``, ``therm_wall_s`` and ``therm_device_s``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.io.checkpoint import save_checkpoint
from lattice_flows.logs import log
from lattice_flows.mcmc.hmc_plan import check_eps_tuning, check_plan, hmc_from_config, plan_from_config
from lattice_flows.mcmc.hmc_thermalise import THERM_PHASE, hmc_checkpoint, thermalise
from lattice_flows.mcmc.hmc_tuning import frozen_settings, restore_frozen
from lattice_flows.observables import measure
from lattice_flows.runtime.clock import Seconds, device_kind
from lattice_flows.runtime.production import Advance, clock_fields, resumed_seconds, run_production
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.theory.phi4 import Phi4Action

SAMPLES_NAME = "hmc.h5"


def _initial_step_size(cfg: Config) -> float:
    """eps of the first thermalisation trajectory (kept for producers that build ``HMC(...)``
    themselves; :func:`~lattice_flows.mcmc.hmc_plan.hmc_from_config` is the factory)."""
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
    check_eps_tuning(h)
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
    ``hmc.save_every`` trajectories (``accepted``: any acceptance since the last row).

    No host synchronisation per trajectory: the step count is drawn on the host
    (:meth:`~lattice_flows.mcmc.hmc.HMC.draw_n_steps`), the acceptance counts stay on the device
    (read at the commit points and for the progress postfix), and the rows are device tensors,
    copied to the host once per chunk (:class:`~lattice_flows.runtime.rows.RowBuffer`)."""

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
        self.therm: Seconds | None = None  # clocks of thermalisation and tuning
        self.acc_since_save = torch.zeros(h.n_chains, dtype=torch.bool, device=self.device)
        self.acc_per_chain = torch.zeros(h.n_chains, dtype=torch.int64, device=self.device)

    def start(self, state: dict | None, ckpt_path: Path) -> None:
        h = self.h
        if state is not None:
            _check_checkpoint(state, ckpt_path, self.cfg)
        if state is None or state.get("phase") == THERM_PHASE:
            self.device_kind = (device_kind(self.device) if state is None
                                else resumed_seconds(state, self.device)[1])
            self.phi, self.seconds = thermalise(self.cfg, self.hmc, self.gen, self.device,
                                                self.dtype, state, ckpt_path, self.run_dir,
                                                self.show, self.frozen)
            self.step, self.n_tried = 0, 0
            self.n_acc = torch.zeros((), dtype=torch.int64, device=self.device)
            self.therm = self.seconds
            save_checkpoint({**self.checkpoint(), **clock_fields(self.seconds, self.device_kind)},
                            ckpt_path)
        else:
            self.phi = state["phi"].to(device=self.device, dtype=self.dtype)
            self.gen.set_state(state["rng"])
            restore_frozen(self.hmc, state, self.device)
            self.frozen = {k: state[k] for k in ("fa_mu2", "trajectory_scan") if k in state}
            self.step = int(state["traj"])
            self.n_acc = torch.tensor(int(state["n_accepted"]), device=self.device)
            self.n_tried = int(state["n_tried"])
            self.seconds, self.device_kind = resumed_seconds(state, self.device)
            # None: a checkpoint of an older version (no thermalisation clocks)
            self.therm = (resumed_seconds(state, self.device, "therm_")[0]
                          if "therm_cpu_s" in state else None)
            log.info("resuming %s at trajectory %d of %d", self.run_dir, self.step, h.n_traj)

    def rows_done(self) -> int:
        return self.step // self.h.save_every

    def _therm_fields(self) -> dict:
        """``therm_cpu_s``, ``therm_wall_s``, ``therm_device_s``: thermalisation and tuning,
        included in the run's clocks."""
        if self.therm is None:
            return {}
        return {f"therm_{k}": v for k, v in self.therm.as_dict().items()}

    def file_attrs(self) -> dict:
        h = self.h
        out = {"step_size": self.hmc.step_size, "hmc_dtype": h.dtype,
               "n_steps": self.hmc.n_steps,
               "trajectory_length": self.hmc.step_size * self.hmc.n_steps,
               "fourier_acceleration": h.fourier_acceleration}
        out.update(self._therm_fields())
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
        """One trajectory; a row (device tensors) when it completes a group of
        ``hmc.save_every``."""
        self.phi, acc, _, s_new = self.hmc.step(self.phi)
        self.step += 1
        self.n_acc += acc.sum()
        self.n_tried += acc.numel()
        self.acc_since_save |= acc
        self.acc_per_chain += acc
        if self.step % self.h.save_every:
            return Advance(can_commit=False)
        obs = measure(self.phi, self.action, self.cfg.output.store_G)
        row = {"configs": self.phi.detach().to(torch.float32, copy=True), "action": s_new,
               "accepted": self.acc_since_save}
        row.update({f"observables/{k}": v for k, v in obs.items()})
        self.acc_since_save = torch.zeros_like(self.acc_since_save)  # the row keeps the old one
        return Advance([row], last=self.step // self.h.save_every == self.n_rows_total)

    def _acceptance(self) -> float:
        return int(self.n_acc) / max(1, self.n_tried)

    def postfix(self) -> dict | None:
        return {"acc": f"{self._acceptance():.3f}"} if self.n_tried else None

    def commit_attrs(self) -> dict:
        return {"n_traj_done": self.step, "acceptance": self._acceptance()}

    def checkpoint(self) -> dict:
        ckpt = hmc_checkpoint(self.phi, self.gen, self.hmc.step_size, self.step, int(self.n_acc),
                              self.n_tried)
        ckpt.update(frozen_settings(self.hmc, None))
        ckpt.update(self.frozen)
        ckpt.update(self._therm_fields())
        return ckpt

    def finish(self, steps_run: int, seconds: Seconds, samples_path: Path, n_rows: int) -> None:
        _warn_stuck_chains(self.acc_per_chain.cpu(), steps_run)
        if steps_run > 0:
            log.info(
                "HMC done: %d trajectories in %.1f wall-s (%.1f traj/wall-s; %.1f device-s on "
                "%s, %.1f traj/device-s), acceptance %.3f, %d rows in %s", steps_run,
                seconds.wall_s, steps_run / seconds.wall_s, seconds.device_s, self.device_kind,
                steps_run / max(seconds.device_s, 1e-9), self._acceptance(), n_rows,
                samples_path,
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
