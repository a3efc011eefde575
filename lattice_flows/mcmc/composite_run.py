"""Composite production (``sample.mode: composite``): flow independence steps + HMC, same chains.

Flow independence-Metropolis steps and HMC trajectories interleaved on the same chains
(Hackett et al., arXiv:2107.00734).

One sweep of every chain is ``sample.flow_steps`` (k) independence steps with the flow as the
proposal, then ``sample.hmc_trajectories`` (n) HMC trajectories with the ``hmc`` section's
settings (integrator, n_steps, jitter, step size, hmc.dtype). Both kernels leave
p(phi) ∝ exp(-S(phi)) invariant, so the sweep does (docs/conventions.md "Statistics"):

* flow step: a proposal phi' ~ q is accepted with min(1, w(phi') / w(phi)),
  log w = -S - log q in float64 (:func:`lattice_flows.metropolis.independence_block`, the
  accept/reject of flow MCMC);
* HMC: :class:`lattice_flows.mcmc.hmc.HMC`, accept with min(1, exp(-dH)).

After HMC moves a chain, the log q of its new state is recomputed with the flow's inverse pass
(``flow.log_prob``, batched over chains, no grad) and log w = -S - log q follows; a chain that
HMC did not move keeps the log q it had (so a state's log q is the value from the pass that
produced it). Without that recomputation the next flow step would compare against the weight of
a state the chain has left, and the sweep would no longer leave p invariant
(tests/unit/test_composite.py measures that bias).

Start: a fresh run thermalises ``hmc.n_therm`` trajectories from HMC's near-cold start with
:func:`lattice_flows.mcmc.hmc_thermalise.thermalise` (tuning eps by dual averaging when
``hmc.step_size`` is 'auto', then frozen), on ``sample.n_chains`` chains (``hmc.n_chains`` is not
used); production starts from the thermalised chains, with the log q of each recomputed.
The chains are kept in hmc.dtype; flow proposals (in the flow's dtype) are cast to it, and
log q of a state is evaluated on the state cast to the flow's dtype. The forward pass (a
proposal's log q) and the inverse pass (an HMC state's) agree to the flow's roundoff
(measured at L = 8 with 8 coupling layers: |Δ log q| <= 6e-6 in float32, 6e-14 in float64):
that is the precision to which the sweep is exact (``dtype: float64`` where it matters).

Proposals come in flow calls of ``sample.batch_size`` (``batch_size // (k n_chains)`` sweeps
per call, at least one; proposals do not depend on the state). One :meth:`advance` is one flow
call and its sweeps; a row every ``sample.save_every`` sweeps. Output ``composite.h5``: the
layout of flow MCMC (configs, action, accepted, observables, log_q, log_w of the current state)
plus ``flow_accepted`` / ``hmc_accepted`` (a flow step / an HMC trajectory accepted since the
last row; ``accepted``: either), file attribute kind ``composite``, ``flow_acceptance`` and
``hmc_acceptance`` in the commit attributes next to the flow proposals' ``weights_*``
diagnostics (as :mod:`lattice_flows.mcmc.flow_run` has them; the rejection runs count flow
steps). Checkpoints, resume (bit for bit), stop and MPI ranks go through
:func:`lattice_flows.runtime.production.run_production`; a stop during the thermalisation
resumes it as HMC's does; what a checkpoint must match to resume is
:mod:`lattice_flows.mcmc.composite_resume`.

Host synchronisations per sweep: the flow steps' accept/reject (one device->host copy of the
log-weights, one host->device copy of the decisions), whether HMC moved any chain (to skip the
inverse pass) and the finiteness check of the new log w; none per HMC trajectory (the acceptance
count stays on the device) and none per row (rows are copied once per chunk). The file and the
checkpoints carry the clocks of :mod:`lattice_flows.runtime.production` and the thermalisation's
``therm_cpu_s``, ``therm_wall_s``, ``therm_device_s``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.flows.quality import propose
from lattice_flows.io.checkpoint import save_checkpoint
from lattice_flows.logs import log
from lattice_flows.mcmc.composite_resume import (
    KIND, check_composite_checkpoint, check_therm_shape, kernel_settings,
)
from lattice_flows.mcmc.flow_run import SAMPLES_NAME, SamplingError, open_flow
from lattice_flows.mcmc.hmc_plan import check_eps_tuning, check_plan, hmc_from_config, plan_from_config
from lattice_flows.mcmc.hmc_thermalise import THERM_PHASE, thermalise
from lattice_flows.mcmc.hmc_tuning import frozen_settings, restore_frozen
from lattice_flows.metropolis import independence_block
from lattice_flows.observables import measure
from lattice_flows.runtime.clock import Seconds, device_kind
from lattice_flows.runtime.production import Advance, clock_fields, resumed_seconds, run_production
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.weights import WeightAccumulator, as_attrs, describe

#: stream id of the composite chains' generator (flow proposals, uniforms and HMC alike)
SEED_STREAM = 20


def run_composite(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
                  world=None) -> Path:
    """Run (or resume, or extend) the composite production of ``cfg`` (``sample.mode:
    composite``; entry point ``lattice-flows sample``); returns the sample file (several MPI
    ranks: the merged view of the rank files)."""
    if cfg.sample is None or cfg.hmc is None:
        missing = "sample" if cfg.sample is None else "hmc"
        raise ConfigError(f"config section '{missing}' is missing; it is required by "
                          "sample.mode 'composite'.")
    h = cfg.hmc
    check_eps_tuning(h, " of the composite sampler's HMC")
    check_plan(plan_from_config(cfg))  # FA measurement and length scan need their trajectories
    run_dir = Path(run_dir or cfg.output.dir)
    rank = 0 if world is None else world.rank
    return run_production(
        lambda: CompositeProducer(cfg, run_dir, progress and rank == 0, world), cfg, run_dir,
        world, base=SAMPLES_NAME[KIND][:-3], stage="sample", lock_name=f".lock.sample.{rank}",
        desc="flow + hmc", progress=progress,
    )


class CompositeProducer:
    """Composite chains for :func:`~lattice_flows.runtime.production.run_production` (see the
    module docstring). ``recompute_log_q=False`` is the deliberately wrong variant that keeps
    the log q of the state before HMC (tests only: it shows that the recomputation matters)."""

    kind = KIND

    def __init__(self, cfg: Config, run_dir: Path, show: bool, world, *,
                 recompute_log_q: bool = True) -> None:
        sc, h = cfg.sample, cfg.hmc
        assert sc is not None and h is not None
        self.cfg, self.sc, self.h, self.run_dir, self.show = cfg, sc, h, run_dir, show
        self.recompute_log_q = recompute_log_q
        rank = 0 if world is None else world.rank
        self.device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
        self.flow_dtype, self.dtype = resolve_dtype(cfg.dtype), resolve_dtype(h.dtype)
        self.shape = cfg.lattice.shape
        self.action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
        self.flow_path, self.flow = open_flow(cfg, run_dir, self.device, self.flow_dtype)
        self.n_chains, self.total, self.save_every = sc.n_chains, sc.n_samples, sc.save_every
        self.k, self.n_traj = sc.flow_steps, sc.hmc_trajectories
        self.sweeps_per_block = max(1, sc.batch_size // (self.k * self.n_chains))
        self.gen = make_generator(self.device, derive_seed(cfg.seed, rank, SEED_STREAM))
        self.hmc = hmc_from_config(cfg, self.action, tuple(self.shape), self.gen, self.device,
                                   self.dtype)
        self.frozen: dict = {}  # mu^2 and the length scan of the thermalisation (checkpointed)
        self.therm: Seconds | None = None  # clocks of thermalisation and tuning

    # ------------------------------------------------------------------ start / resume

    def start(self, state: dict | None, ckpt_path: Path) -> None:
        n_chains = self.n_chains
        if state is None or (state.get("kind") == "hmc" and state.get("phase") == THERM_PHASE):
            check_therm_shape(state, ckpt_path, n_chains, self.shape)
            # thermalise runs hmc.n_chains chains: here they are the sample.n_chains chains
            therm_hmc = dataclasses.replace(self.h, n_chains=n_chains)
            therm_cfg = dataclasses.replace(self.cfg, hmc=therm_hmc)
            self.device_kind = (device_kind(self.device) if state is None
                                else resumed_seconds(state, self.device)[1])
            phi, self.seconds = thermalise(therm_cfg, self.hmc, self.gen, self.device,
                                           self.dtype, state, ckpt_path, self.run_dir, self.show,
                                           self.frozen)
            self.therm = self.seconds
            self.step, self.n_flow_acc, self.n_nonfinite = 0, 0, 0
            self.n_hmc_acc = torch.zeros((), dtype=torch.int64, device=self.device)
            s = self.action(phi.to(torch.float64))
            lq = self._log_q(phi)
            self.cur = {"phi": phi, "action": s, "log_q": lq, "log_w": -(s + lq)}
            self.wacc = WeightAccumulator(self.total * self.k * n_chains, n_chains)
            self.since = {name: torch.zeros(n_chains, dtype=torch.bool, device=self.device)
                          for name in ("flow", "hmc")}
            log.info(
                "composite sampling on %s: lattice %s, m2=%g lam=%g, %d chains x %d sweeps of %d "
                "flow step(s) + %d HMC trajectory(ies) (eps %.5g, %s), flow %s", self.device,
                self.shape, self.cfg.action.m2, self.cfg.action.lam, n_chains, self.total,
                self.k, self.n_traj, self.hmc.step_size, self.h.dtype, self.flow_path,
            )
            save_checkpoint({**self.checkpoint(), **clock_fields(self.seconds, self.device_kind)},
                            ckpt_path)  # no re-thermalising
            return
        check_composite_checkpoint(state, ckpt_path, self.cfg)
        self.gen.set_state(state["rng"])
        restore_frozen(self.hmc, state, self.device)  # eps, n_steps, the FA mass
        self.frozen = {k: state[k] for k in ("fa_mu2", "trajectory_scan") if k in state}
        # None: a checkpoint of an older version (no thermalisation clocks)
        self.therm = (resumed_seconds(state, self.device, "therm_")[0]
                      if "therm_cpu_s" in state else None)
        self.step = int(state["step"])
        self.cur = {k: state[k].to(self.device) for k in ("phi", "action", "log_q", "log_w")}
        self.cur["phi"] = self.cur["phi"].to(self.dtype)
        self.n_flow_acc = int(state["n_flow_accepted"])
        self.n_hmc_acc = torch.tensor(int(state["n_hmc_accepted"]), device=self.device)
        self.n_nonfinite = int(state["n_nonfinite"])
        self.seconds, self.device_kind = resumed_seconds(state, self.device)
        self.wacc = WeightAccumulator.from_state(state["weights"])
        self.wacc.resize(self.total * self.k * n_chains)
        self.since = {name: state[f"{name}_since_save"].to(self.device) for name in ("flow", "hmc")}
        log.info("resuming composite sampling in %s at sweep %d of %d", self.run_dir, self.step,
                 self.total)

    @torch.no_grad()
    def _log_q(self, phi: torch.Tensor) -> torch.Tensor:
        """log q of the chains' states (inverse pass, float64), batched over chains."""
        return self.flow.log_prob(phi.to(self.flow_dtype)).to(torch.float64)

    # ------------------------------------------------------------------ production

    def rows_done(self) -> int:
        return self.step // self.save_every

    def file_attrs(self) -> dict:
        out = {"flow_path": str(self.flow_path), "step_size": self.hmc.step_size,
               "n_steps": self.hmc.n_steps, "trajectory_length": self.hmc.step_size * self.hmc.n_steps,
               "hmc_dtype": self.h.dtype, "flow_steps": self.k, "hmc_trajectories": self.n_traj,
               "fourier_acceleration": self.h.fourier_acceleration}
        if "fa_mu2" in self.frozen:
            out["fa_mu2"] = float(self.frozen["fa_mu2"])
        out.update(self._therm_fields())
        return out

    def _therm_fields(self) -> dict:
        """``therm_cpu_s``, ``therm_wall_s``, ``therm_device_s``: thermalisation and tuning,
        included in the run's clocks."""
        if self.therm is None:
            return {}
        return {f"therm_{k}": v for k, v in self.therm.as_dict().items()}

    def row_specs(self) -> dict:
        return {"log_q": ((), np.float64), "log_w": ((), np.float64),
                "flow_accepted": ((), np.bool_), "hmc_accepted": ((), np.bool_)}

    def advance(self) -> Advance:
        """One flow call: the proposals of ``m`` sweeps, then the sweeps (k flow steps, n HMC
        trajectories each) and the rows of those that complete a save group."""
        n_chains, shape, k = self.n_chains, self.shape, self.k
        m = min(self.sweeps_per_block, self.total - self.step)
        phi, s, lq, lw = propose(self.flow, self.action, m * k * n_chains, self.gen, shape)
        u = torch.rand((m, k, n_chains), generator=self.gen, device=self.device,
                       dtype=torch.float64)
        props = {"phi": phi.to(self.dtype).view(m, k, n_chains, *shape),
                 "action": s.view(m, k, n_chains), "log_q": lq.view(m, k, n_chains),
                 "log_w": lw.view(m, k, n_chains)}
        self.wacc.add(lw.view(m * k, n_chains).cpu().numpy())
        rows = []
        for j in range(m):
            self._flow_steps({name: v[j] for name, v in props.items()}, u[j])
            self._hmc_trajectories()
            self.step += 1
            if self.step % self.save_every == 0:
                rows.append(self._row())
        return Advance(rows, n_steps=m, last=self.step >= self.total)

    def _flow_steps(self, proposals: dict[str, torch.Tensor], u: torch.Tensor) -> None:
        block, res = independence_block(self.cur, proposals, u)
        self.cur = {name: v[-1] for name, v in block.items()}
        self.n_nonfinite += res.n_nonfinite
        self.n_flow_acc += int(res.accepted_host.sum())
        self.since["flow"] |= res.accepted.any(0)
        self.wacc.add_accepted(res.accepted_host)

    def _hmc_trajectories(self) -> None:
        cur, moved = self.cur, torch.zeros(self.n_chains, dtype=torch.bool, device=self.device)
        phi, s = cur["phi"], cur["action"]
        for _ in range(self.n_traj):
            phi, acc, _, s = self.hmc.step(phi)
            moved |= acc
            self.n_hmc_acc += acc.sum()  # on the device: no synchronisation per trajectory
        self.since["hmc"] |= moved
        lq = cur["log_q"]
        if self.recompute_log_q and bool(moved.any()):
            lq = torch.where(moved, self._log_q(phi), lq)
        lw = -(s + lq)
        if not bool(torch.isfinite(lw).all()):
            bad = torch.nonzero(~torch.isfinite(lw)).flatten().tolist()
            raise SamplingError(
                f"{self.flow_path}: log q of the states HMC moved chains {bad[:8]} to is not "
                f"finite (sweep {self.step + 1}); the flow's inverse pass fails there: retrain "
                "the flow or check sample.flow."
            )
        self.cur = {"phi": phi, "action": s, "log_q": lq, "log_w": lw}

    def _row(self) -> dict[str, torch.Tensor]:
        cur = self.cur
        obs = measure(cur["phi"], self.action, self.cfg.output.store_G)
        row = {  # device tensors, copied to the host once per chunk (RowBuffer)
            "configs": cur["phi"].detach().to(torch.float32, copy=True),
            "action": cur["action"],
            "accepted": self.since["flow"] | self.since["hmc"],
            "flow_accepted": self.since["flow"],
            "hmc_accepted": self.since["hmc"],
            "log_q": cur["log_q"],
            "log_w": cur["log_w"],
        }
        row.update({f"observables/{n}": v for n, v in obs.items()})
        self.since = {name: torch.zeros_like(v) for name, v in self.since.items()}  # rows keep the old
        return row

    def _acceptances(self) -> tuple[float, float]:
        done = max(1, self.step * self.n_chains)
        return self.n_flow_acc / (done * self.k), int(self.n_hmc_acc) / (done * self.n_traj)

    def postfix(self) -> dict | None:
        if not self.step:
            return None
        flow, hmc = self._acceptances()
        return {"flow acc": f"{flow:.3f}", "hmc acc": f"{hmc:.3f}"}

    def commit_attrs(self) -> dict:
        flow, hmc = self._acceptances()
        return {"sweeps_done": self.step, "n_nonfinite": self.n_nonfinite,
                "flow_acceptance": flow, "hmc_acceptance": hmc,
                **as_attrs(self.wacc.result(chain=True))}

    def checkpoint(self) -> dict:
        return {
            "kind": KIND, "kernel": kernel_settings(self.cfg), "step": self.step,
            "rng": self.gen.get_state().clone(), **frozen_settings(self.hmc, None), **self.frozen,
            **self._therm_fields(),
            **{k: v.detach().cpu().clone() for k, v in self.cur.items()},
            "n_flow_accepted": self.n_flow_acc, "n_hmc_accepted": int(self.n_hmc_acc),
            "n_nonfinite": self.n_nonfinite,
            **{f"{name}_since_save": v.cpu().clone() for name, v in self.since.items()},
            "weights": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                        for k, v in self.wacc.state().items()},
        }

    def finish(self, steps_run: int, seconds: Seconds, samples_path: Path, n_rows: int) -> None:
        if steps_run <= 0:
            log.info("composite run %s is already complete", self.run_dir)
            return
        flow, hmc = self._acceptances()
        log.info(
            "composite done: %d sweeps x %d chains in %.1f wall-s (%.1f sweeps/wall-s; %.1f "
            "device-s on %s, %.1f sweeps/device-s), flow acceptance %.3f, HMC acceptance %.3f, "
            "%d non-finite proposals rejected; %d rows in %s", steps_run, self.n_chains,
            seconds.wall_s, steps_run / seconds.wall_s, seconds.device_s, self.device_kind,
            steps_run / max(seconds.device_s, 1e-9), flow, hmc, self.n_nonfinite, n_rows,
            samples_path,
        )
        for line in describe(self.wacc.result(chain=True), f"{samples_path}: flow proposals"):
            log.warning("%s", line)
