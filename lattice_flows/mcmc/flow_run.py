"""Flow production: independence-Metropolis chains (``mode: mcmc``) or importance sampling
(``mode: importance``) with a trained flow as the proposal.

MCMC: proposals are generated in big no-grad batches (``sample.batch_size`` per flow call,
spread over the ``n_chains`` columns), then the cheap sequential accept/reject of
:func:`lattice_flows.metropolis.accept_reject` runs in float64 with
w = exp(-S - log q) (docs/conventions.md "Statistics"). The first state of each chain is a flow
sample. Output ``samples.h5``: the layout of :mod:`lattice_flows.io.hdf5` plus ``/log_q`` and
``/log_w`` of the chain's current state, so every reader and analysis works on it as on HMC.

Importance sampling: independent flow samples with their log-weights in ``importance.h5``
(same layout, ``accepted`` all true); :func:`lattice_flows.statistics` style reweighted
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
import time
from pathlib import Path

import numpy as np
import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.faults import nan_injected
from lattice_flows.flows.cnf import set_integration_steps
from lattice_flows.flows.flowfile import load_flow
from lattice_flows.flows.quality import propose
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.hdf5 import SampleWriter
from lattice_flows.io.lock import RunLock
from lattice_flows.io.runfolder import config_yaml, provenance, write_config
from lattice_flows.logs import log
from lattice_flows.metropolis import accept_reject
from lattice_flows.observables import measure, observable_specs
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.ranks import finish_parallel, production_paths
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.rows import RowBuffer
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.signals import StopRequested, stop_requested
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.weights import WeightAccumulator, as_attrs, describe

SAMPLES_NAME = {"mcmc": "samples.h5", "importance": "importance.h5"}


class SamplingError(RuntimeError):
    """Production cannot continue without corrupting a chain; the message says why."""
CHECKPOINT_NAME = {"mcmc": "samples.ckpt", "importance": "importance.ckpt"}


def run_sample(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
               world=None) -> Path:
    """Run (or resume) flow production for ``cfg``; returns the sample file path (with several
    MPI ranks: the merged view of the rank files)."""
    if cfg.sample is None:
        raise ConfigError("config section 'sample' is missing; it is required by 'lattice-flows sample'.")
    run_dir = Path(run_dir or cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = 0 if world is None else world.rank
    with RunLock(run_dir, f".lock.sample.{rank}"):
        path = _run(cfg, run_dir, progress, world)
    merged = finish_parallel(run_dir, SAMPLES_NAME[cfg.sample.mode][:-3], world)
    return merged or path


def _run(cfg: Config, run_dir: Path, progress: bool, world) -> Path:
    rank = 0 if world is None else world.rank
    world_size = 1 if world is None else world.size
    sc = cfg.sample
    assert sc is not None
    mode = sc.mode
    device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
    dtype = resolve_dtype(cfg.dtype)
    shape = cfg.lattice.shape
    action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
    flow_path = Path(sc.flow) if sc.flow else run_dir / "flow.pt"
    flow = load_flow(flow_path, shape, device, dtype, (cfg.action.m2, cfg.action.lam))
    if sc.cnf_steps is not None:
        n_layers = set_integration_steps(flow, sc.cnf_steps)
        log.info("sampling with %d RK4 steps in %d continuous layer(s) (sample.cnf_steps)",
                 sc.cnf_steps, n_layers)
    samples_path, ckpt_path = production_paths(run_dir, SAMPLES_NAME[mode][:-3], world)
    if ckpt_path.exists() or samples_path.exists():
        check_resumable(run_dir, cfg, ("sample",))
    prov = provenance(cfg, world_size, rank)
    if rank == 0:
        write_config(run_dir, cfg, prov, "sample")
    n_chains = sc.n_chains
    save_every = sc.save_every if mode == "mcmc" else 1
    total_steps = sc.n_samples
    steps_per_block = max(1, sc.batch_size // n_chains)
    gen = make_generator(device, derive_seed(cfg.seed, rank, 10))

    state = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if state is not None:
        if state.get("kind") != f"flow-{mode}" or int(state["n_chains"]) != n_chains:
            raise ConfigError(f"{ckpt_path}: checkpoint does not match the config; use a new output.dir.")
        gen.set_state(state["rng"])
        step = int(state["step"])
        cur = {k: state[k].to(device) for k in ("phi", "action", "log_q", "log_w")}
        cur["phi"] = cur["phi"].to(dtype)
        n_acc, n_nonfinite, cpu_used = int(state["n_accepted"]), int(state["n_nonfinite"]), float(state["cpu_s"])
        if "weights" in state:
            wacc = WeightAccumulator.from_state(state["weights"])
            wacc.resize(total_steps * n_chains)
        else:  # checkpoint of an older version: the diagnostics cover the resumed part only
            wacc = WeightAccumulator(total_steps * n_chains, n_chains)
            log.warning("%s has no weight diagnostics (older version): the weights_* attributes "
                        "will cover only the steps from %d on", ckpt_path, step)
        log.info("resuming %s sampling in %s at step %d of %d", mode, run_dir, step, total_steps)
    else:
        step, n_acc, n_nonfinite, cpu_used = 0, 0, 0, 0.0
        wacc = WeightAccumulator(total_steps * n_chains, n_chains)
        cur = {
            "phi": torch.zeros((n_chains, *shape), device=device, dtype=dtype),
            "action": torch.zeros(n_chains, device=device, dtype=torch.float64),
            "log_q": torch.zeros(n_chains, device=device, dtype=torch.float64),
            "log_w": torch.full((n_chains,), -math.inf, device=device, dtype=torch.float64),
        }
        log.info(
            "flow %s sampling on %s (%s): lattice %s, m2=%g lam=%g, %d chains x %d steps, flow %s",
            mode, device, cfg.dtype, shape, cfg.action.m2, cfg.action.lam, n_chains, total_steps,
            flow_path,
        )

    attrs = {
        "kind": "flow-mcmc" if mode == "mcmc" else "flow-importance",
        "config": config_yaml(cfg),
        "lattice_shape": np.asarray(shape),
        "m2": cfg.action.m2,
        "lam": cfg.action.lam,
        "flow_path": str(flow_path),
        **{k: v for k, v in prov.items() if k != "created"},
    }
    specs = {"action": ((), np.float64), "accepted": ((), np.bool_), "log_q": ((), np.float64),
             "log_w": ((), np.float64), **observable_specs(shape, cfg.output.store_G)}
    writer = SampleWriter(samples_path, attrs, n_chains, shape, specs)
    writer.truncate(step // save_every)

    buf = RowBuffer()
    # accept flags since the last saved row (save groups can span flow calls)
    pending_acc = torch.zeros(n_chains, dtype=torch.bool, device=device)
    if state is not None and "pending_acc" in state:
        pending_acc = state["pending_acc"].to(device)
    bar = progress_bar(total=total_steps, initial=step, desc=f"flow {mode}", enabled=progress and rank == 0)
    t0, cpu0, start = time.perf_counter(), time.process_time(), step
    while step < total_steps:
        k = min(steps_per_block, total_steps - step)
        phi, s, lq, lw = propose(flow, action, k * n_chains, gen, shape)
        if nan_injected("proposal"):  # fault injection (tests only)
            lq[0], lw[0] = float("nan"), float("nan")
        u = torch.rand((k, n_chains), generator=gen, device=device, dtype=torch.float64)
        phi = phi.view(k, n_chains, *shape)
        s, lq, lw = s.view(k, n_chains), lq.view(k, n_chains), lw.view(k, n_chains)
        wacc.add(lw.cpu().numpy())
        if mode == "mcmc":
            res = accept_reject(lw, cur["log_w"], u)
            n_nonfinite += res.n_nonfinite
            accepted = res.accepted
            # state of chain c after step j: proposal index[j, c], or the state before the block
            src = res.index + 1
            cols = torch.arange(n_chains, device=device).expand(k, n_chains)
            block = {
                "phi": torch.cat([cur["phi"][None], phi])[src, cols],
                "action": torch.cat([cur["action"][None], s])[src, cols],
                "log_q": torch.cat([cur["log_q"][None], lq])[src, cols],
                "log_w": torch.cat([cur["log_w"][None], lw])[src, cols],
            }
            counted = accepted[1:] if step == 0 else accepted  # step 0 only initialises
            n_acc += int(counted.sum())
            wacc.add_accepted(accepted.cpu().numpy())
        else:  # importance sampling: every draw is stored; non-finite ones are flagged
            accepted = torch.isfinite(lw)
            n_nonfinite += int((~accepted).sum())
            block = {"phi": phi, "action": s, "log_q": lq, "log_w": lw}
        cur = {name: v[-1] for name, v in block.items()}
        if mode == "mcmc" and not bool(torch.isfinite(cur["log_w"]).all()):
            bad = torch.nonzero(~torch.isfinite(cur["log_w"])).flatten().tolist()
            raise SamplingError(
                f"{flow_path}: the flow produced no finite proposal (log q or the action is "
                f"nan/inf) for chains {bad[:8]} in {step + k} steps; nothing was written for "
                "them. The flow is broken: retrain it or check sample.flow."
            )
        # accepted-since-last-save flags: any acceptance within each save group (groups of
        # save_every steps; the first one may have begun in an earlier block: pending_acc)
        steps = torch.arange(step + 1, step + k + 1, device=device)
        save_at = (steps % save_every == 0).nonzero().flatten()
        group = torch.div(steps - 1, save_every, rounding_mode="floor")
        group -= group[0].clone()
        counts = torch.zeros(int(group[-1]) + 1, n_chains, dtype=torch.int64, device=device)
        counts.index_add_(0, group, accepted.long())
        counts[0] += pending_acc.long()
        any_acc = counts > 0
        pending_acc = any_acc[-1] if int(steps[-1]) % save_every else torch.zeros_like(pending_acc)
        if save_at.numel():
            sel = {name: v[save_at] for name, v in block.items()}
            n_sel = save_at.numel()
            obs = measure(sel["phi"].reshape(-1, *shape), action, cfg.output.store_G)
            rows = {
                "configs": sel["phi"].to(torch.float32).cpu().numpy(),
                "action": sel["action"].cpu().numpy(),
                "accepted": any_acc[group[save_at]].cpu().numpy(),
                "log_q": sel["log_q"].cpu().numpy(),
                "log_w": sel["log_w"].cpu().numpy(),
            }
            rows.update({f"observables/{n}": v.reshape(n_sel, n_chains, *v.shape[1:]).cpu().numpy()
                         for n, v in obs.items()})
            for j in range(n_sel):
                buf.add({n: v[j] for n, v in rows.items()})
        step += k
        bar.update(k)
        at_end = step >= total_steps
        stop = stop_requested()
        if buf.n >= cfg.output.chunk_rows or (at_end and buf.n) or stop:
            cpu_now = cpu_used + (time.process_time() - cpu0)
            done_attrs = {"cpu_s": cpu_now, "steps_done": step, "n_nonfinite": n_nonfinite}
            if mode == "mcmc":
                done_attrs["acceptance"] = n_acc / max(1, (step - 1) * n_chains)
            done_attrs.update(as_attrs(wacc.result(chain=mode == "mcmc")))
            writer.append(buf.take(), attrs=done_attrs)  # rows and attributes: one commit
            save_checkpoint({
                "kind": f"flow-{mode}", "n_chains": n_chains, "step": step,
                "rng": gen.get_state().clone(),
                **{k2: v.detach().cpu().clone() for k2, v in cur.items()},
                "n_accepted": n_acc, "n_nonfinite": n_nonfinite, "cpu_s": cpu_now,
                "pending_acc": pending_acc.cpu().clone(),
                "weights": {k2: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                            for k2, v in wacc.state().items()},
            }, ckpt_path)
            if stop:
                bar.close()
                raise StopRequested(stop, str(samples_path))
    bar.close()
    if step > start:
        dt = time.perf_counter() - t0
        log.info(
            "flow %s done: %d steps x %d chains in %.1f s (%.0f proposals/s)%s; %d non-finite "
            "proposals rejected; %s", mode, step - start, n_chains, dt, (step - start) * n_chains / dt,
            f", acceptance {n_acc / max(1, (step - 1) * n_chains):.3f}" if mode == "mcmc" else "",
            n_nonfinite, samples_path,
        )
        for line in describe(wacc.result(chain=mode == "mcmc"), f"{samples_path}: flow proposals"):
            log.warning("%s", line)
    else:
        log.info("flow %s run %s is already complete", mode, run_dir)
    return samples_path
