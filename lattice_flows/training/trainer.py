"""The flow trainer: optimiser, schedules, clipping, non-finite guards, metrics, checkpoints.

Run folder of a training run (``output.dir``)::

    config.yaml   resolved config + provenance
    train.h5      metrics every ``train.log_every`` steps (lattice_flows.io.train_log)
    train.ckpt    model, optimiser, RNG states, step, CPU-s used (atomic; resume point)
    flow.pt       the trained flow: weights + architecture + lattice (input of `sample`)
    train_summary.json  final ESS/N and independence-Metropolis acceptance on fresh samples

At the end the flow is evaluated on ``train.eval_samples`` (>= 10,240 by default) fresh samples
by :func:`lattice_flows.flows.quality.evaluate_flow`: ESS/N = (sum w)^2 / (N sum w^2) and the
acceptance of an independence-Metropolis chain (docs/conventions.md "Statistics"); never per batch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.faults import nan_injected
from lattice_flows.flows.flow import build_flow
from lattice_flows.flows.flowfile import cpu_state_dict, flow_state, load_flow_weights
from lattice_flows.flows.quality import evaluate_flow
from lattice_flows.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from lattice_flows.io.lock import RunLock
from lattice_flows.io.runfolder import config_yaml, provenance, write_config, write_text_atomic
from lattice_flows.logs import log
from lattice_flows.io.train_log import TrainLog
from lattice_flows.metropolis import acceptance_rate
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.signals import StopRequested, stop_requested
from lattice_flows.estimates import effective_sample_size
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.training.estimators import make_estimator

CHECKPOINT_NAME = "train.ckpt"
FLOW_NAME = "flow.pt"
LOG_NAME = "train.h5"
SUMMARY_NAME = "train_summary.json"


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss keeps being non-finite); the message says why."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    ess: float
    acceptance: float
    train_cpu_s: float
    nonfinite_steps: int

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def lr_multiplier(step: int, total: int, warmup: int, schedule: str,
                  budget_fraction: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up, then constant or cosine decay to 0.

    The cosine runs over the steps, or over the CPU-time budget when ``train.time_budget`` is
    set, whichever is used up first (``budget_fraction`` = CPU-s used / budget).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), budget_fraction))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _init_source_present(tc, is_root: bool) -> bool:
    """Whether ``train.init_from`` exists. A missing file is an error naming the run that
    writes it, unless ``train.init_from_missing: fresh`` (the ladder rungs): then training
    starts from the fresh flow of the config and says so in the log."""
    path = Path(tc.init_from)
    if path.is_file():
        return True
    if tc.init_from_missing == "fresh":
        if is_root:
            log.warning(
                "train.init_from: %s does not exist (its run has not been trained yet); training "
                "starts from the fresh flow instead (train.init_from_missing: fresh)", path,
            )
        return False
    raise ConfigError(
        f"config key 'train.init_from': the flow file '{path}' does not exist. Train the run "
        f"that writes it first (the config whose output.dir is '{path.parent}', e.g. "
        f"'lattice-flows train <that config>'), or set train.init_from to null, or "
        "train.init_from_missing to 'fresh' to start from a fresh flow when it is missing."
    )


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
    """Setup and resume, then :meth:`_Trainer.step` until done (recording every
    ``train.log_every`` steps, checkpointing every ``train.checkpoint_every`` and on a stop
    signal), then the final evaluation."""
    t = _Trainer(cfg, run_dir, world)
    t.resume()
    done = t.completed()
    if done is not None:
        return done
    tc = t.tc
    bar = progress_bar(total=tc.steps, initial=t.step_no, desc="train", enabled=progress and t.is_root)
    t.restore_window()
    stopped_by_budget = False
    t.start_clock()
    while t.step_no < tc.steps:
        over_budget = tc.time_budget is not None and t.cpu_used >= tc.time_budget
        if world is not None:
            over_budget = bool(world.bcast(over_budget))  # rank 0's clock decides for all
        if over_budget:
            stopped_by_budget = True
            break
        t.step()
        if t.step_no % tc.log_every == 0 or t.step_no == tc.steps:
            record = t.record()
            if bar.enabled:
                bar.set_postfix(loss=f"{record['loss']:.3f}", ess=f"{record.get('ess', float('nan')):.3f}")
        stop = stop_requested()
        if world is not None:
            stop = 0 if world.all_ok(not stop) else (stop or 15)
        if stop:
            t.save()
            bar.close()
            raise StopRequested(stop, str(t.ckpt_path))
        if t.step_no % tc.checkpoint_every == 0 and t.step_no < tc.steps:
            t.save()
        bar.update(1)
    bar.close()
    t.save()
    if stopped_by_budget and t.is_root:
        log.info("time budget of %.0f CPU-s reached at step %d", tc.time_budget, t.step_no)
    return t.finish()


class _Trainer:
    """The state of one training run and its four jobs: setup (``__init__``: flow, estimator,
    data, optimiser, random streams, in the order that fixes the seeds' use), :meth:`resume`
    (checkpoint or ``train.init_from``, then the metric log), :meth:`step` (one optimiser step
    with the non-finite guards), :meth:`record` / :meth:`save` (a metric record, a checkpoint)
    and :meth:`finish` (evaluation on fresh samples, summary)."""

    def __init__(self, cfg: Config, run_dir: Path, world) -> None:
        assert cfg.flow is not None and cfg.train is not None
        self.cfg, self.run_dir, self.world = cfg, run_dir, world
        self.tc = tc = cfg.train
        self.rank = 0 if world is None else world.rank
        self.size = 1 if world is None else world.size
        self.is_root = self.rank == 0
        self.device = resolve_device(cfg.device, 0 if world is None else world.local_rank)
        self.dtype = resolve_dtype(cfg.dtype)
        if world is not None:
            world.init_torch_distributed(self.device)
        self.action = Phi4Action(cfg.action.m2, cfg.action.lam, cfg.lattice.ndim)
        if tc.batch_size % self.size:
            raise ConfigError(
                f"config key 'train.batch_size': value {tc.batch_size} is not divisible by the "
                f"{self.size} MPI ranks; expected a multiple of {self.size}."
            )
        self.local_batch = tc.batch_size // self.size
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        if self.ckpt_path.exists():
            check_resumable(run_dir, cfg, ("flow", "train"))
        self.prov = provenance(cfg, self.size, self.rank)
        if self.is_root:
            write_config(run_dir, cfg, self.prov, "train")

        torch.manual_seed(derive_seed(cfg.seed, 0, 99))  # parameter init: identical on every rank
        self.flow = build_flow(cfg.flow, cfg.lattice.shape, cfg.action.m2).to(device=self.device, dtype=self.dtype)
        self.estimator = make_estimator(tc.objective, self.action, tc.alpha)
        self.data = None
        if self.estimator.needs_data:
            from lattice_flows.training.data import ConfigurationStream

            self.data = ConfigurationStream(
                tc.data, cfg.lattice.shape, torch.Generator().manual_seed(derive_seed(cfg.seed, self.rank, 2)),
                tc.validation_fraction, tc.sign_flip, (cfg.action.m2, cfg.action.lam),
            )
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.flow.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.gen = make_generator(self.device, derive_seed(cfg.seed, self.rank, 1))
        self.step_no, self.cpu_used, self.nonfinite_total = 0, 0.0, 0
        self.consecutive_bad = 0
        # the metrics window of the checkpoint: a resumed log equals an uninterrupted one
        self.resumed_window: dict[str, Any] | None = None
        self.window_lw: list[torch.Tensor] = []
        self.window_loss: list[float] = []
        self.window_gn: list[float] = []
        self.tlog: TrainLog | None = None

    # -- setup / resume ------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from ``train.ckpt`` (weights, optimiser, counters, random streams) or start
        from ``train.init_from``; open the metric log and drop its records past the step."""
        cfg, tc, is_root = self.cfg, self.tc, self.is_root
        if self.ckpt_path.exists():
            self._load_checkpoint()
        elif tc.init_from and _init_source_present(tc, is_root):
            load_flow_weights(self.flow, tc.init_from)
            if is_root:
                log.info("initialised the flow from %s", tc.init_from)
        if self.world is not None:
            self.world.broadcast_parameters(self.flow)
        if is_root:
            self.tlog = TrainLog(self.run_dir / LOG_NAME, {"config": config_yaml(cfg), **self.prov})
            self.tlog.truncate_after(self.step_no)
            log.info(
                "training on %s (%s, %d rank(s)): lattice %s, %d params, objective %s, %d steps, batch %d",
                self.device, cfg.dtype, self.size, cfg.lattice.shape, self.flow.n_params(),
                tc.objective, tc.steps, tc.batch_size,
            )

    def _load_checkpoint(self) -> None:
        ckpt_path, rank, size, data = self.ckpt_path, self.rank, self.size, self.data
        state = load_checkpoint(ckpt_path)
        if state.get("kind") != "train":
            raise CheckpointError(f"{ckpt_path}: not a training checkpoint.")
        load_flow_weights(self.flow, ckpt_path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_no = int(state["step"])
        self.cpu_used = float(state["cpu_s"])
        self.nonfinite_total = int(state["nonfinite"])
        rngs = state["rng"]
        if len(rngs) == size:
            self.gen.set_state(rngs[rank])
            self.resumed_window = state.get("window")
            if data is not None and len(state.get("data_rng", [])) == size:
                data.generator.set_state(state["data_rng"][rank])
        else:
            # another number of ranks than at the checkpoint: every rank continues with a fresh,
            # independent stream (never a copy of another rank's), derived from seed, rank, step
            self.gen.manual_seed(derive_seed(self.cfg.seed, rank, 1, self.step_no))
            if data is not None:
                data.generator.manual_seed(derive_seed(self.cfg.seed, rank, 2, self.step_no))
            if self.is_root:
                log.warning(
                    "resuming a training checkpointed with %d rank(s) on %d: the random streams "
                    "restart from the seed, so the run is valid but not bit-identical to an "
                    "uninterrupted one", len(rngs), size,
                )
        if self.is_root:
            log.info("resuming training in %s at step %d of %d", self.run_dir, self.step_no, self.tc.steps)

    def completed(self) -> TrainResult | None:
        """The result of a run that already finished (its summary is read back), else None."""
        tc = self.tc
        summary_path = self.run_dir / SUMMARY_NAME
        budget_done = tc.time_budget is not None and self.cpu_used >= tc.time_budget
        if (self.step_no >= tc.steps or budget_done) and summary_path.exists():
            done = json.loads(summary_path.read_text())
            if int(done.get("steps", -1)) == self.step_no:
                if self.is_root:
                    log.info("training in %s is already complete (%d steps)", self.run_dir, self.step_no)
                return TrainResult(self.run_dir, self.step_no, float(done["ess"]), float(done["acceptance"]),
                                   float(done["train_cpu_s"]), int(done["nonfinite_steps"]))
        return None

    def restore_window(self) -> None:
        """The metric window saved with the checkpoint (the records stay those of an
        uninterrupted run)."""
        w = self.resumed_window
        if w is not None:
            self.window_loss = [float(v) for v in w["loss"]]
            self.window_gn = [float(v) for v in w["grad_norm"]]
            if len(w["log_w"][self.rank]):
                self.window_lw = [w["log_w"][self.rank].to(self.device)]

    def start_clock(self) -> None:
        """Start the CPU-time account (``cpu_used`` continues the checkpoint's) and the window's."""
        self.t_window, self.steps_window = time.perf_counter(), 0
        self.cpu_t0, self.cpu_base = time.process_time(), self.cpu_used

    # -- one step ------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        tc = self.tc
        frac = self.cpu_used / tc.time_budget if tc.time_budget else 0.0
        lr = tc.lr * lr_multiplier(self.step_no, tc.steps, tc.warmup_steps, tc.lr_schedule, frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """One optimiser step: schedules, loss, backward, gradient all-reduce and clipping; a
        non-finite loss or gradient skips the step (``train.max_nonfinite`` in a row stop the
        run with :class:`TrainingError`). The step's loss, gradient norm and log-weights join
        the metric window."""
        tc, flow, world, estimator = self.tc, self.flow, self.world, self.estimator
        if hasattr(estimator, "alpha") and tc.alpha_final is not None:
            estimator.alpha = tc.alpha + (tc.alpha_final - tc.alpha) * self.step_no / max(1, tc.steps - 1)
        self.current_lr = self._set_lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = estimator.loss(flow, self.local_batch, generator=self.gen, data=self.data)
        if nan_injected("train_loss"):  # fault injection (tests only)
            loss = loss * float("nan")
        loss_ok = bool(torch.isfinite(loss))
        if loss_ok:
            loss.backward()
            if nan_injected("train_grad"):  # fault injection (tests only)
                next(p for p in flow.parameters() if p.grad is not None).grad.fill_(float("inf"))
        if world is not None:
            loss_ok = world.all_ok(loss_ok)
            if loss_ok:
                world.allreduce_gradients(flow)
        grad_norm = float("nan")
        if loss_ok:
            gn = torch.nn.utils.clip_grad_norm_(
                flow.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")
            )
            grad_norm = float(gn)
        if not (loss_ok and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.consecutive_bad += 1
            if self.is_root:
                log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                            self.step_no, self.consecutive_bad)
            if self.consecutive_bad >= tc.max_nonfinite:
                raise TrainingError(
                    f"training stopped at step {self.step_no}: {self.consecutive_bad} consecutive "
                    "steps with a non-finite loss or gradient. Lower train.lr, raise "
                    "train.grad_clip's effect (smaller value), or resume from the last checkpoint "
                    f"{self.ckpt_path}."
                )
        else:
            self.consecutive_bad = 0
            self.optimizer.step()
        self.step_no += 1
        self.steps_window += 1
        self.cpu_used = self.cpu_base + (time.process_time() - self.cpu_t0)
        self.window_loss.append(float(loss.detach()) if loss_ok else float("nan"))
        self.window_gn.append(grad_norm)
        if "log_w" in info:
            self.window_lw.append(info["log_w"].double())

    # -- record / checkpoint -------------------------------------------------------------------
    def record(self) -> dict[str, float]:
        """Append the window's means (ESS/N and acceptance over its log-weights of all ranks,
        the validation NLL with data) to ``train.h5`` and start a new window."""
        world, step = self.world, self.step_no
        record = {
            "step": step,
            "loss": float(np.nanmean(self.window_loss)),
            "grad_norm": float(np.nanmean(self.window_gn)),
            "lr": self.current_lr,
            "steps_per_s": self.steps_window / max(1e-9, time.perf_counter() - self.t_window),
            "cpu_s": self.cpu_used,
            "nonfinite": float(self.nonfinite_total),
        }
        if self.window_lw:
            lw = torch.cat(self.window_lw)
            if world is not None:
                lw = world.gather_tensor(lw)
            if lw is not None:
                record["ess"] = effective_sample_size(lw.cpu().numpy())
                record["acceptance"] = acceptance_rate(lw.cpu(), torch.Generator().manual_seed(step))
        if hasattr(self.estimator, "alpha"):
            record["alpha"] = float(self.estimator.alpha)
        data = self.data
        if data is not None and data.n_val_rows > 0 and self.is_root:
            with torch.no_grad():
                val = data.validation(1024).to(device=self.device, dtype=self.dtype)
                record["val_nll"] = float(-self.flow.log_prob(val).mean())
        if self.tlog is not None:
            self.tlog.append(record)
        self.window_lw, self.window_loss, self.window_gn = [], [], []
        self.t_window, self.steps_window = time.perf_counter(), 0
        return record

    def save(self) -> None:
        """Checkpoint ``train.ckpt`` (model, optimiser, counters, every rank's random streams
        and metric window) and ``flow.pt``; collective, rank 0 writes."""
        world, gen, data = self.world, self.gen, self.data
        rngs = world.gather_states(gen.get_state()) if world is not None else [gen.get_state()]
        drng = None
        if data is not None:
            drng = world.gather_states(data.generator.get_state()) if world is not None else [data.generator.get_state()]
        lw = torch.cat(self.window_lw).cpu() if self.window_lw else torch.zeros(0, dtype=torch.float64)
        lws = world.gather_states(lw) if world is not None else [lw]
        if not self.is_root:
            return
        state = {
            "kind": "train",
            "window": {"loss": torch.tensor(self.window_loss, dtype=torch.float64),
                       "grad_norm": torch.tensor(self.window_gn, dtype=torch.float64),
                       "log_w": [t.clone() for t in lws]},
            "model": cpu_state_dict(self.flow),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_no,
            "cpu_s": self.cpu_used,
            "nonfinite": self.nonfinite_total,
            "rng": [r.clone() for r in rngs],
        }
        if drng is not None:
            state["data_rng"] = [r.clone() for r in drng]
        save_checkpoint(state, self.ckpt_path)
        save_checkpoint(flow_state(self.flow, self.cfg), self.run_dir / FLOW_NAME)

    # -- finish --------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """Evaluate the flow on ``train.eval_samples`` fresh samples (rank 0), write
        ``train_summary.json`` and the log's final attributes."""
        world, step, cpu_used, tc = self.world, self.step_no, self.cpu_used, self.tc
        # CPU-s of all ranks (cost accounting compares with summed sampling CPU-s)
        cpu_all = world.sum(cpu_used) if world is not None else cpu_used
        result = TrainResult(self.run_dir, step, float("nan"), float("nan"), cpu_all, self.nonfinite_total)
        if not self.is_root:
            return result
        flow = self.flow
        flow.eval()
        eval_gen = make_generator(self.device, derive_seed(self.cfg.seed, 0, 3))
        ev = evaluate_flow(flow, self.action, tc.eval_samples, tc.eval_batch_size, eval_gen)
        result.ess, result.acceptance = ev["ess"], ev["acceptance"]
        summary = {**result.as_dict(), **{f"eval_{k}": v for k, v in ev.items()},
                   "params": flow.n_params()}
        write_text_atomic(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=1))  # read back on rerun
        if self.tlog is not None:
            self.tlog.set_attrs({"final_ess": ev["ess"], "final_acceptance": ev["acceptance"],
                                 "eval_samples": ev["n_samples"], "steps_done": step})
        log.info(
            "trained %d steps (%.1f CPU-s): ESS/N = %.3f, Metropolis acceptance = %.3f on %d fresh "
            "samples (%.0f proposals/s)", step, cpu_used, ev["ess"], ev["acceptance"],
            ev["n_samples"], ev["proposals_per_s"],
        )
        if ev["weights_flags"]:
            log.warning(
                "the trained flow's weights fail the tail diagnostics (%s; Pareto k-hat %.2f, "
                "max w / sum w %.3g, docs/conventions.md \"Flow quality at scale\"): flow MCMC "
                "and reweighted averages from it and their errors are not to be trusted; train "
                "longer or better", ",".join(ev["weights_flags"]), ev["khat"],
                ev["max_weight_fraction"],
            )
        return result
