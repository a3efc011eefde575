"""HMC thermalisation: the near-cold start, the tuning protocol run with stop and resume.

:func:`thermalise` runs the ``hmc.n_therm`` trajectories of :mod:`lattice_flows.mcmc.hmc_tuning`
(plan: :mod:`lattice_flows.mcmc.hmc_plan`) for the HMC production
(:mod:`lattice_flows.mcmc.hmc_run`) and the composite sampler
(:mod:`lattice_flows.mcmc.composite_run`). A stop request during it writes a checkpoint of phase
:data:`THERM_PHASE` (chains, RNG, tuning state, what was frozen so far), from which the resumed
thermalisation equals an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lattice_flows.config import Config
from lattice_flows.io.checkpoint import save_checkpoint
from lattice_flows.logs import log
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.mcmc.hmc_plan import plan_from_config, prepare_hmc
from lattice_flows.mcmc.hmc_tuning import (
    finish_without_thermalisation, frozen_settings, new_state, restore_frozen, tuning_step,
)
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.clock import ZERO, Clock, Seconds, device_kind
from lattice_flows.runtime.production import clock_fields, resumed_seconds
from lattice_flows.signals import StopRequested, stop_requested

COLD_START_WIDTH = 0.1
#: ``phase`` of a checkpoint written by a stop during thermalisation; a production checkpoint has
#: no ``phase`` (earlier versions wrote 0 or 1 there, never read; such checkpoints still resume)
THERM_PHASE = -1


def thermalise(cfg: Config, hmc: HMC, gen: torch.Generator, device, dtype, state: dict | None,
               ckpt_path: Path, run_dir: Path, show: bool,
               frozen: dict | None = None) -> tuple[torch.Tensor, Seconds]:
    """Thermalise and tune (the protocol of :mod:`lattice_flows.mcmc.hmc_tuning`: eps when
    ``hmc.step_size`` is 'auto', the FA mass, the trajectory length), from a near-cold start or
    from a thermalisation checkpoint ``state``; a stop request checkpoints the chains, RNG, the
    tuning state and what was frozen so far (phase :data:`THERM_PHASE`), so that the resumed
    thermalisation equals an uninterrupted one. Returns the chains and the clocks (CPU-, wall-,
    device-s, :mod:`lattice_flows.runtime.clock`) used so far, earlier processes included;
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
        tuning, before, kind = new_state(plan, hmc), ZERO, device_kind(device)
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
        before, kind = resumed_seconds(state, device)
        tuning = state.get("tuning")
        if tuning is None:  # a checkpoint from before hmc_tuning: the tune segment only
            tuning = new_state(plan, hmc)
            tuning["done"], tuning["tuner"] = int(state["therm_done"]), state["tuner"]
        tuning = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                  for k, v in tuning.items()}
        log.info("resuming the thermalisation of %s at trajectory %d of %d", run_dir,
                 tuning["done"], h.n_therm)
    clock = Clock(device, base=before)
    bar = progress_bar(total=h.n_therm, initial=tuning["done"], desc="thermalise", enabled=show)
    if h.n_therm == 0:
        finish_without_thermalisation(plan, hmc)
    while tuning["done"] < h.n_therm:
        phi = tuning_step(plan, hmc, phi, tuning)
        bar.update(1)
        signum = stop_requested()
        if signum:
            bar.close()
            ckpt = hmc_checkpoint(phi, gen, hmc.step_size, 0, 0, 0)
            ckpt.update(clock_fields(clock.read(), kind))
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
    return phi, clock.read()


def hmc_checkpoint(phi: torch.Tensor, gen: torch.Generator, step_size: float, traj: int,
                   n_acc: int, n_tried: int) -> dict:
    """The fields every HMC checkpoint has (kind ``hmc``, the chains in their dtype, the RNG,
    eps, trajectories done, acceptance counts); callers add what was frozen and the clocks
    (:func:`~lattice_flows.runtime.production.clock_fields`)."""
    return {
        "kind": "hmc",
        "dtype": str(phi.dtype).replace("torch.", ""),
        "phi": phi.detach().cpu().clone(),
        "rng": gen.get_state().clone(),
        "step_size": float(step_size),
        "traj": int(traj),
        "n_accepted": int(n_acc),
        "n_tried": int(n_tried),
    }
