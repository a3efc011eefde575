"""What a training run writes: metric records, checkpoints and the final evaluation.

Files: ``train.h5`` (records, :mod:`lattice_flows.io.train_log`), ``train.ckpt`` and ``flow.pt``
(checkpoints), ``train_summary.json`` (the final evaluation, read back on a rerun).

A record holds the means over the steps since the last one; ESS/N = (sum w)^2 / (N sum w^2)
and the independence-Metropolis acceptance over the window's log-weights of all ranks
(docs/conventions.md "Statistics"). The final figures come from
:func:`lattice_flows.flows.quality.evaluate_flow` on ``train.eval_samples`` fresh samples, never
per batch. The run's state is :class:`lattice_flows.training.train_state.TrainRun`.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from lattice_flows.estimates import effective_sample_size
from lattice_flows.flows.cnf import BOUND_SATURATED, bound_use
from lattice_flows.flows.flowfile import cpu_state_dict, flow_state
from lattice_flows.flows.quality import evaluate_flow
from lattice_flows.io.checkpoint import save_checkpoint
from lattice_flows.io.runfolder import write_text_atomic
from lattice_flows.logs import log
from lattice_flows.metropolis import acceptance_rate
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.training.train_state import FLOW_NAME, SUMMARY_NAME, TrainResult, TrainRun


def write_record(run: TrainRun) -> dict[str, float]:
    """Append the window's means (ESS/N and acceptance over its log-weights of all ranks,
    the validation NLL with data) to ``train.h5`` and start a new window."""
    world, step = run.world, run.step_no
    record = {
        "step": step,
        "loss": float(np.nanmean(run.window_loss)),
        "grad_norm": float(np.nanmean(run.window_gn)),
        "lr": run.current_lr,
        "steps_per_s": run.steps_window / max(1e-9, time.perf_counter() - run.t_window),
        **run.seconds.as_dict(),  # cpu_s, wall_s, device_s (lattice_flows.training.budget)
        "nonfinite": float(run.nonfinite_total),
    }
    if run.window_lw:
        lw = torch.cat(run.window_lw)
        if world is not None:
            lw = world.gather_tensor(lw)
        if lw is not None:
            record["ess"] = effective_sample_size(lw.cpu().numpy())
            record["acceptance"] = acceptance_rate(lw.cpu(), torch.Generator().manual_seed(step))
    if hasattr(run.estimator, "alpha"):
        record["alpha"] = float(run.estimator.alpha)
    data = run.data
    if data is not None and data.n_val_rows > 0 and run.is_root:
        with torch.no_grad():
            val = data.validation(1024).to(device=run.device, dtype=run.dtype)
            record["val_nll"] = float(-run.flow.log_prob(val).mean())
    if run.tlog is not None:
        run.tlog.append(record)
    run.window_lw, run.window_loss, run.window_gn = [], [], []
    run.t_window, run.steps_window = time.perf_counter(), 0
    return record


def checkpoint(run: TrainRun) -> None:
    """Checkpoint ``train.ckpt`` (model, optimiser, counters, every rank's random streams
    and metric window) and ``flow.pt``; collective, rank 0 writes."""
    world, gen, data = run.world, run.gen, run.data
    rngs = world.gather_states(gen.get_state()) if world is not None else [gen.get_state()]
    drng = None
    if data is not None:
        drng = world.gather_states(data.generator.get_state()) if world is not None else [data.generator.get_state()]
    lw = torch.cat(run.window_lw).cpu() if run.window_lw else torch.zeros(0, dtype=torch.float64)
    lws = world.gather_states(lw) if world is not None else [lw]
    if not run.is_root:
        return
    state = {
        "kind": "train",
        "window": {"loss": torch.tensor(run.window_loss, dtype=torch.float64),
                   "grad_norm": torch.tensor(run.window_gn, dtype=torch.float64),
                   "log_w": [t.clone() for t in lws]},
        "model": cpu_state_dict(run.flow),
        "optimizer": run.optimizer.state_dict(),
        "step": run.step_no,
        **run.seconds.as_dict(),
        "device_kind": run.clock.device_kind,
        "nonfinite": run.nonfinite_total,
        "rng": [r.clone() for r in rngs],
    }
    if drng is not None:
        state["data_rng"] = [r.clone() for r in drng]
    save_checkpoint(state, run.ckpt_path)
    save_checkpoint(flow_state(run.flow, run.cfg), run.run_dir / FLOW_NAME)


def finish(run: TrainRun) -> TrainResult:
    """Evaluate the flow on ``train.eval_samples`` fresh samples (rank 0), write
    ``train_summary.json`` and the log's final attributes."""
    world, step, seconds, tc = run.world, run.step_no, run.seconds, run.tc
    # the clocks of all ranks (cost accounting compares with summed sampling seconds)
    total = {k: world.sum(v) if world is not None else v for k, v in seconds.as_dict().items()}
    result = TrainResult(run.run_dir, step, float("nan"), float("nan"), total["cpu_s"],
                         run.nonfinite_total, total["wall_s"], total["device_s"],
                         run.clock.device_kind)
    if not run.is_root:
        return result
    flow = run.flow
    flow.eval()
    eval_gen = make_generator(run.device, derive_seed(run.cfg.seed, 0, 3))
    ev = evaluate_flow(flow, run.action, tc.eval_samples, tc.eval_batch_size, eval_gen)
    result.ess, result.acceptance = ev["ess"], ev["acceptance"]
    summary = {**result.as_dict(), **{f"eval_{k}": v for k, v in ev.items()},
               "params": flow.n_params(), "budget_clock": tc.budget_clock}
    use = bound_use(flow)
    if use:  # continuous layers: the share of the Lipschitz bound each one's field uses
        summary["cnf_bound_use"] = use
    write_text_atomic(run.run_dir / SUMMARY_NAME, json.dumps(summary, indent=1))  # read back on rerun
    if run.tlog is not None:
        run.tlog.set_attrs({"final_ess": ev["ess"], "final_acceptance": ev["acceptance"],
                            "eval_samples": ev["n_samples"], "steps_done": step,
                            "device_kind": run.clock.device_kind})
    log.info(
        "trained %d steps (%.1f CPU-s, %.1f wall-s, %.1f device-s on %s): ESS/N = %.3f, "
        "Metropolis acceptance = %.3f on %d fresh samples (%.0f proposals/s)", step,
        seconds.cpu_s, seconds.wall_s, seconds.device_s, run.clock.device_kind, ev["ess"],
        ev["acceptance"],
        ev["n_samples"], ev["proposals_per_s"],
    )
    if use and max(use) > BOUND_SATURATED:
        log.info(
            "continuous layer(s) use %s of their Lipschitz bound: the trained field is held at "
            "the bound and wants a stronger map (more flow.cnf_layers, or a larger "
            "flow.cnf_lipschitz_max with proportionally more flow.cnf_steps; "
            "docs/ablation_ladder.md)", ", ".join(f"{u:.1%}" for u in use))
    if ev["weights_flags"]:
        log.warning(
            "the trained flow's weights fail the tail diagnostics (%s; Pareto k-hat %.2f, "
            "max w / sum w %.3g, docs/conventions.md \"Flow quality at scale\"): flow MCMC "
            "and reweighted averages from it and their errors are not to be trusted; train "
            "longer or better", ",".join(ev["weights_flags"]), ev["khat"],
            ev["max_weight_fraction"],
        )
    return result
