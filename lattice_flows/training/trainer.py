"""The flow trainer's loop: resume, steps, records, checkpoints, budget and stop signals.

Run folder of a training run (``output.dir``)::

    config.yaml   resolved config + provenance
    train.h5      metrics every ``train.log_every`` steps (lattice_flows.io.train_log)
    train.ckpt    model, optimiser, RNG states, step, CPU-/wall-/device-s used (atomic; resume point)
    flow.pt       the trained flow: weights + architecture + lattice (input of `sample`)
    train_summary.json  final ESS/N and independence-Metropolis acceptance on fresh samples

At the end the flow is evaluated on ``train.eval_samples`` (>= 10,240 by default) fresh samples
by :func:`lattice_flows.flows.quality.evaluate_flow`: ESS/N = (sum w)^2 / (N sum w^2) and the
acceptance of an independence-Metropolis chain (docs/conventions.md "Statistics"); never per batch.

The parts: the run's state, setup and resume (:mod:`lattice_flows.training.train_state`), one
optimiser step with its schedules, clipping and non-finite guards
(:mod:`lattice_flows.training.train_step`), records, checkpoints and the final evaluation
(:mod:`lattice_flows.training.train_record`).
"""

from __future__ import annotations

from pathlib import Path

from lattice_flows.config import Config, ConfigError
from lattice_flows.io.lock import RunLock
from lattice_flows.logs import log
from lattice_flows.progress import progress_bar
from lattice_flows.signals import StopRequested, stop_requested
from lattice_flows.training.budget import budget_reached, clock_label
from lattice_flows.training.train_record import checkpoint, finish, write_record
from lattice_flows.training.train_state import TrainResult, TrainRun
from lattice_flows.training.train_step import optimizer_step


def train_flow(cfg: Config, run_dir: str | Path | None = None, progress: bool = True,
               world=None) -> TrainResult:
    """Train (or resume) the flow of ``cfg``; see the module docstring for the run folder."""
    if cfg.flow is None or cfg.train is None:
        missing = "flow" if cfg.flow is None else "train"
        raise ConfigError(f"config section '{missing}' is missing; it is required by 'lattice-flows train'.")
    run_dir = Path(run_dir or cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = 0 if world is None else world.rank
    if rank == 0:
        with RunLock(run_dir, ".lock.train"):
            return _train(cfg, run_dir, progress, world)
    return _train(cfg, run_dir, progress, world)


def _train(cfg: Config, run_dir: Path, progress: bool, world) -> TrainResult:
    """Setup and resume (:class:`TrainRun`), then :func:`optimizer_step` until done (a record
    every ``train.log_every`` steps, a checkpoint every ``train.checkpoint_every`` and on a stop
    signal), then the final evaluation (:func:`finish`)."""
    t = TrainRun(cfg, run_dir, world)
    t.resume()
    done = t.completed()
    if done is not None:
        return done
    tc = t.tc
    bar = progress_bar(total=tc.steps, initial=t.step_no, desc="train", enabled=progress and t.is_root)
    t.restore_window()
    stopped_by_budget = False
    t.start_clock()
    unit = clock_label(tc.budget_clock, t.clock.device_kind)
    if tc.time_budget is not None and t.is_root:
        log.info("time budget of %g %s (train.budget_clock: %s)", tc.time_budget, unit,
                 tc.budget_clock)
    while t.step_no < tc.steps:
        over_budget = budget_reached(t.seconds, tc.time_budget, tc.budget_clock)
        if world is not None:
            over_budget = bool(world.bcast(over_budget))  # rank 0's clock decides for all
        if over_budget:
            stopped_by_budget = True
            break
        optimizer_step(t)
        if t.step_no % tc.log_every == 0 or t.step_no == tc.steps:
            record = write_record(t)
            if bar.enabled:
                bar.set_postfix(loss=f"{record['loss']:.3f}", ess=f"{record.get('ess', float('nan')):.3f}")
        stop = stop_requested()
        if world is not None:
            stop = 0 if world.all_ok(not stop) else (stop or 15)
        if stop:
            checkpoint(t)
            bar.close()
            raise StopRequested(stop, str(t.ckpt_path))
        if t.step_no % tc.checkpoint_every == 0 and t.step_no < tc.steps:
            checkpoint(t)
        bar.update(1)
    bar.close()
    checkpoint(t)
    if stopped_by_budget and t.is_root:
        log.info("time budget of %g %s reached at step %d", tc.time_budget, unit, t.step_no)
    return finish(t)
