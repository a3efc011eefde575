"""Flow production: independence-Metropolis chains (``mode: mcmc``) or importance sampling
(``mode: importance``) with a trained flow as the proposal.

MCMC: proposals are generated in big no-grad batches (``sample.batch_size`` per flow call,
spread over the ``n_chains`` columns), then the cheap sequential accept/reject of
:func:`lattice_flows.metropolis.accept_reject` runs in float64 with
w = exp(-S - log q) (docs/conventions.md "Statistics"). The first state of each chain is a flow
sample. Output ``samples.h5``: the layout of :mod:`lattice_flows.io.sample_format` plus ``/log_q`` and
``/log_w`` of the chain's current state, so every reader and analysis works on it as on HMC.

Importance sampling: independent flow samples with their log-weights in ``importance.h5``
(same layout, ``accepted`` all true); :func:`lattice_flows.estimates` style reweighted
averages and log Z come from :func:`reweighted_estimates`.

Chunks, checkpoints and resume follow :mod:`lattice_flows.runtime.resume`: a rerun continues and
the data equal an uninterrupted run's.

Weight diagnostics (docs/conventions.md "Flow quality at scale"; :mod:`lattice_flows.weights`):
every proposal's log w goes into a :class:`~lattice_flows.weights.WeightAccumulator` (Pareto k̂
of the largest weights, max w / Σw, N_eff, zero and failed draws; for MCMC the longest run of
rejections per chain, in steps). Its figures are written as ``weights_*`` attributes with every
commit (``weights_flags`` lists the failed checks, '' when all pass) and its state goes into the
checkpoint, so a resumed run ends with the figures of an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lattice_flows.flows.compiled_flow import compile_flow
from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.faults import nan_injected
from lattice_flows.flows.cnf import set_integration_steps
from lattice_flows.flows.flow import Flow
from lattice_flows.flows.flowfile import load_flow
from lattice_flows.flows.quality import propose
from lattice_flows.logs import log
from lattice_flows.metropolis import independence_block
from lattice_flows.observables import measure
from lattice_flows.runtime.clock import ZERO, Seconds, device_kind
from lattice_flows.runtime.production import Advance, resumed_seconds, run_production
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.weights import WeightAccumulator, as_attrs, describe

SAMPLES_NAME = {"mcmc": "samples.h5", "importance": "importance.h5", "composite": "composite.h5"}


class SamplingError(RuntimeError):
    """Production cannot continue without corrupting a chain; the message says why."""


def run_sample(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
               world=None) -> Path:
    """Run (or resume) flow production for ``cfg``; returns the sample file path (with several
    MPI ranks: the merged view of the rank files). The production skeleton (lock, resume, chunked
    commit + checkpoint, graceful stop) is :mod:`lattice_flows.runtime.production`;
    :class:`FlowProducer` is the flow part; ``sample.mode: composite`` runs
    :func:`lattice_flows.mcmc.composite_run.run_composite`."""
    if cfg.sample is None:
        raise ConfigError("config section 'sample' is missing; it is required by 'lattice-flows sample'.")
    run_dir = Path(run_dir or cfg.output.dir)
    rank = 0 if world is None else world.rank
    mode = cfg.sample.mode
    if mode == "composite":  # flow steps + HMC trajectories (imports this module: lazy)
        from lattice_flows.mcmc.composite_run import run_composite

        return run_composite(cfg, run_dir, progress, world)
    return run_production(
        lambda: FlowProducer(cfg, run_dir, world), cfg, run_dir, world,
        base=SAMPLES_NAME[mode][:-3], stage="sample", lock_name=f".lock.sample.{rank}",
        desc=f"flow {mode}", progress=progress,
    )


def open_flow(cfg: Config, run_dir: Path, device, dtype) -> tuple[Path, Flow]:
    """The production flow: ``sample.flow`` (or the run folder's flow.pt) loaded for the config's
    lattice and couplings, with ``sample.cnf_steps`` RK4 steps when given. Returns (path, flow)."""
    sc = cfg.sample
    assert sc is not None
    path = Path(sc.flow) if sc.flow else run_dir / "flow.pt"
    flow = load_flow(path, cfg.lattice.shape, device, dtype, (cfg.action.m2, cfg.action.lam))
    if sc.cnf_steps is not None:
        n_layers = set_integration_steps(flow, sc.cnf_steps)
        log.info("sampling with %d RK4 steps in %d continuous layer(s) (sample.cnf_steps)",
                 sc.cnf_steps, n_layers)
    if cfg.compile:  # the conditioners compiled in place (lattice_flows/compiled.py)
        compile_flow(flow)
    return path, flow


class FlowProducer:
    """Flow-proposal chains (``mode: mcmc``) or importance samples (``mode: importance``) for
    :func:`~lattice_flows.runtime.production.run_production`: one :meth:`advance` is one flow
    call of ``sample.batch_size`` proposals, i.e. ``batch_size // n_chains`` steps of every chain,
    with a row every ``sample.save_every`` steps (importance: every step)."""

    def __init__(self, cfg: Config, run_dir: Path, world) -> None:
        sc = cfg.sample
        assert sc is not None
        self.cfg, self.run_dir, self.mode = cfg, run_dir, sc.mode
        self.kind = "flow-mcmc" if sc.mode == "mcmc" else "flow-importance"
        rank = 0 if world is None else world.rank
        self.device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
        self.dtype = resolve_dtype(cfg.dtype)
        self.shape = cfg.lattice.shape
        self.action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
        self.flow_path, self.flow = open_flow(cfg, run_dir, self.device, self.dtype)
        self.n_chains = sc.n_chains
        self.save_every = sc.save_every if sc.mode == "mcmc" else 1
        self.total = sc.n_samples
        self.steps_per_block = max(1, sc.batch_size // self.n_chains)
        self.gen = make_generator(self.device, derive_seed(cfg.seed, rank, 10))

    def start(self, state: dict | None, ckpt_path: Path) -> None:
        mode, n_chains, total_steps, device = self.mode, self.n_chains, self.total, self.device
        if state is not None:
            if state.get("kind") != f"flow-{mode}" or int(state["n_chains"]) != n_chains:
                raise ConfigError(f"{ckpt_path}: checkpoint does not match the config; use a new output.dir.")
            self.gen.set_state(state["rng"])
            self.step = int(state["step"])
            self.cur = {k: state[k].to(device) for k in ("phi", "action", "log_q", "log_w")}
            self.cur["phi"] = self.cur["phi"].to(self.dtype)
            self.n_acc, self.n_nonfinite = int(state["n_accepted"]), int(state["n_nonfinite"])
            self.seconds, self.device_kind = resumed_seconds(state, device)
            if "weights" in state:
                self.wacc = WeightAccumulator.from_state(state["weights"])
                self.wacc.resize(total_steps * n_chains)
            else:  # checkpoint of an older version: the diagnostics cover the resumed part only
                self.wacc = WeightAccumulator(total_steps * n_chains, n_chains)
                log.warning("%s has no weight diagnostics (older version): the weights_* attributes "
                            "will cover only the steps from %d on", ckpt_path, self.step)
            log.info("resuming %s sampling in %s at step %d of %d", mode, self.run_dir, self.step,
                     total_steps)
        else:
            self.step, self.n_acc, self.n_nonfinite = 0, 0, 0
            self.seconds, self.device_kind = ZERO, device_kind(device)
            self.wacc = WeightAccumulator(total_steps * n_chains, n_chains)
            self.cur = {
                "phi": torch.zeros((n_chains, *self.shape), device=device, dtype=self.dtype),
                "action": torch.zeros(n_chains, device=device, dtype=torch.float64),
                "log_q": torch.zeros(n_chains, device=device, dtype=torch.float64),
                "log_w": torch.full((n_chains,), -math.inf, device=device, dtype=torch.float64),
            }
            log.info(
                "flow %s sampling on %s (%s): lattice %s, m2=%g lam=%g, %d chains x %d steps, flow %s",
                mode, device, self.cfg.dtype, self.shape, self.cfg.action.m2, self.cfg.action.lam,
                n_chains, total_steps, self.flow_path,
            )
        # accept flags since the last saved row (save groups can span flow calls), on the host
        self.pending_acc = np.zeros(n_chains, dtype=bool)
        if state is not None and "pending_acc" in state:
            self.pending_acc = state["pending_acc"].numpy().astype(bool)

    def rows_done(self) -> int:
        return self.step // self.save_every

    def file_attrs(self) -> dict:
        return {"flow_path": str(self.flow_path)}

    def row_specs(self) -> dict:
        return {"log_q": ((), np.float64), "log_w": ((), np.float64)}

    def postfix(self) -> dict | None:
        return None

    def advance(self) -> Advance:
        """One flow call: k steps of every chain (accept/reject in float64, or importance draws)
        and the rows of the steps that complete a save group.

        Host-device traffic per call: one device->host copy of the log-weights (with the
        uniforms and the chains' current log w, :func:`~lattice_flows.metropolis.accept_reject`)
        and one host->device copy of the decisions; the counts, the finiteness check, the weight
        diagnostics and the save-group flags come from that host copy, and the step numbers of
        the save groups are host integers. The rows stay on the device
        (:class:`~lattice_flows.runtime.rows.RowBuffer` copies them once per chunk)."""
        mode, n_chains, shape = self.mode, self.n_chains, self.shape
        save_every, step, cur = self.save_every, self.step, self.cur
        k = min(self.steps_per_block, self.total - step)
        phi, s, lq, lw = propose(self.flow, self.action, k * n_chains, self.gen, shape)
        if nan_injected("proposal"):  # fault injection (tests only)
            lq[0], lw[0] = float("nan"), float("nan")
        u = torch.rand((k, n_chains), generator=self.gen, device=self.device, dtype=torch.float64)
        phi = phi.view(k, n_chains, *shape)
        s, lq, lw = s.view(k, n_chains), lq.view(k, n_chains), lw.view(k, n_chains)
        if mode == "mcmc":
            block, res = independence_block(cur, {"phi": phi, "action": s, "log_q": lq,
                                                  "log_w": lw}, u)
            self.wacc.add(res.proposals_log_w_host)
            self.n_nonfinite += res.n_nonfinite
            accepted = res.accepted_host
            counted = accepted[1:] if step == 0 else accepted  # step 0 only initialises
            self.n_acc += int(counted.sum())
            self.wacc.add_accepted(accepted)
            final = res.final_log_w_host
            if not np.isfinite(final).all():
                bad = np.flatnonzero(~np.isfinite(final)).tolist()
                raise SamplingError(
                    f"{self.flow_path}: the flow produced no finite proposal (log q or the action "
                    f"is nan/inf) for chains {bad[:8]} in {step + k} steps; nothing was written "
                    "for them. The flow is broken: retrain it or check sample.flow."
                )
        else:  # importance sampling: every draw is stored; non-finite ones are flagged
            lw_host = lw.cpu().numpy()  # the one copy
            self.wacc.add(lw_host)
            accepted = np.isfinite(lw_host)
            self.n_nonfinite += int((~accepted).sum())
            block = {"phi": phi, "action": s, "log_q": lq, "log_w": lw}
        self.cur = {name: v[-1] for name, v in block.items()}
        # accepted-since-last-save flags: any acceptance within each save group (groups of
        # save_every steps; the first one may have begun in an earlier block: pending_acc).
        # Step step + 1 + j (j < k) is in group (step + j) // save_every.
        group = (step + np.arange(k)) // save_every - step // save_every
        counts = np.zeros((int(group[-1]) + 1, n_chains), dtype=np.int64)
        np.add.at(counts, group, accepted)
        counts[0] += self.pending_acc
        any_acc = counts > 0
        self.pending_acc = (any_acc[-1].copy() if (step + k) % save_every
                            else np.zeros(n_chains, dtype=bool))
        out = []
        first = -(step + 1) % save_every  # the first j with step + 1 + j a multiple of save_every
        if first < k:
            sel = {name: v[first::save_every].contiguous() for name, v in block.items()}
            n_sel = sel["log_w"].shape[0]
            obs = measure(sel["phi"].reshape(-1, *shape), self.action, self.cfg.output.store_G)
            rows = {"configs": sel["phi"].to(torch.float32), "action": sel["action"],
                    "log_q": sel["log_q"], "log_w": sel["log_w"]}
            rows.update({f"observables/{n}": v.reshape(n_sel, n_chains, *v.shape[1:])
                         for n, v in obs.items()})
            acc_rows = any_acc[group[first::save_every]]
            out = [{"accepted": acc_rows[j], **{n: v[j] for n, v in rows.items()}}
                   for j in range(n_sel)]
        self.step = step + k
        return Advance(out, n_steps=k, last=self.step >= self.total)

    def _acceptance(self) -> float:
        return self.n_acc / max(1, (self.step - 1) * self.n_chains)

    def commit_attrs(self) -> dict:
        done = {"steps_done": self.step, "n_nonfinite": self.n_nonfinite}
        if self.mode == "mcmc":
            done["acceptance"] = self._acceptance()
        done.update(as_attrs(self.wacc.result(chain=self.mode == "mcmc")))
        return done

    def checkpoint(self) -> dict:
        return {
            "kind": f"flow-{self.mode}", "n_chains": self.n_chains, "step": self.step,
            "rng": self.gen.get_state().clone(),
            **{k: v.detach().cpu().clone() for k, v in self.cur.items()},
            "n_accepted": self.n_acc, "n_nonfinite": self.n_nonfinite,
            "pending_acc": torch.from_numpy(self.pending_acc.copy()),
            "weights": {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                        for k, v in self.wacc.state().items()},
        }

    def finish(self, steps_run: int, seconds: Seconds, samples_path: Path, n_rows: int) -> None:
        mode = self.mode
        if steps_run > 0:
            n_prop = steps_run * self.n_chains
            log.info(
                "flow %s done: %d steps x %d chains in %.1f wall-s (%.0f proposals/wall-s; %.1f "
                "device-s on %s, %.0f proposals/device-s)%s; %d non-finite proposals rejected; "
                "%s", mode, steps_run, self.n_chains, seconds.wall_s, n_prop / seconds.wall_s,
                seconds.device_s, self.device_kind, n_prop / max(seconds.device_s, 1e-9),
                f", acceptance {self._acceptance():.3f}" if mode == "mcmc" else "",
                self.n_nonfinite, samples_path,
            )
            for line in describe(self.wacc.result(chain=mode == "mcmc"),
                                 f"{samples_path}: flow proposals"):
                log.warning("%s", line)
        else:
            log.info("flow %s run %s is already complete", mode, self.run_dir)
