"""The state of one training run: its setup, and where it starts (checkpoint, init_from, fresh).

Setup: flow, estimator, data, optimiser, random streams and the metric window; start:
``train.ckpt``, else ``train.init_from``, else the fresh flow.

The order of the setup fixes the seeds' use (:mod:`lattice_flows.runtime.seeds`): parameter
initialisation from one stream identical on every rank, then per-rank streams for the flow's
draws and the data. A checkpoint restores weights, optimiser, counters, the three clocks
(:mod:`lattice_flows.training.budget`), every rank's random streams and the metric window, so a
resumed run records what an uninterrupted one does (another number of ranks: fresh independent
streams, with a warning). The step is
:mod:`lattice_flows.training.train_step`, records, checkpoints and the final evaluation are
:mod:`lattice_flows.training.train_record`; the loop is :mod:`lattice_flows.training.trainer`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lattice_flows.flows.compiled_flow import compile_flow
from lattice_flows.config import Config, ConfigError
from lattice_flows.devices import resolve_device, resolve_dtype
from lattice_flows.flows.flow import build_flow
from lattice_flows.flows.flowfile import load_flow_weights
from lattice_flows.io.checkpoint import CheckpointError, load_checkpoint
from lattice_flows.io.runfolder import config_yaml, provenance, write_config
from lattice_flows.io.train_log import TrainLog
from lattice_flows.logs import log
from lattice_flows.runtime.clock import ZERO, Seconds
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.seeds import derive_seed, make_generator
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.training.budget import TrainClock, budget_reached, checkpoint_seconds
from lattice_flows.training.estimators import make_estimator

CHECKPOINT_NAME = "train.ckpt"
FLOW_NAME = "flow.pt"
LOG_NAME = "train.h5"
SUMMARY_NAME = "train_summary.json"


@dataclass
class TrainResult:
    """What :func:`lattice_flows.training.trainer.train_flow` returns (ESS/N and acceptance on
    fresh samples after training; NaN on ranks other than 0). The training's CPU-, wall- and
    device-seconds are summed over the ranks (what a cluster bills: core-seconds on CPUs,
    GPU-seconds on GPUs); ``device_kind`` names the currency of the device-seconds
    (:func:`lattice_flows.runtime.clock.device_kind`). A summary written before the clocks
    existed reads back wall-s NaN, device-s = its CPU-s and device kind ``cpu``."""

    run_dir: Path
    steps: int
    ess: float
    acceptance: float
    train_cpu_s: float
    nonfinite_steps: int
    train_wall_s: float = math.nan
    train_device_s: float = math.nan
    device_kind: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


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


class TrainRun:
    """The state of one training run: setup (``__init__``: flow, estimator, data, optimiser,
    random streams, in the order that fixes the seeds' use), :meth:`resume` (checkpoint or
    ``train.init_from``, then the metric log), :meth:`completed`, :meth:`restore_window` and
    :meth:`start_clock` (the clocks' account, :mod:`lattice_flows.training.budget`). The step
    (``train_step.optimizer_step``) and the records, checkpoints and final evaluation
    (``train_record``) read and advance it."""

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
        if cfg.compile:  # the conditioners compiled in place (lattice_flows/compiled.py)
            compile_flow(self.flow)
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
        self.step_no, self.nonfinite_total = 0, 0
        #: the three clocks after the last step (from the checkpoint's on a resume)
        self.seconds: Seconds = ZERO
        self.clock = TrainClock(self.device)
        self.consecutive_bad = 0
        # the metrics window of the checkpoint: a resumed log equals an uninterrupted one
        self.resumed_window: dict[str, Any] | None = None
        self.window_lw: list[torch.Tensor] = []
        self.window_loss: list[float] = []
        self.window_gn: list[float] = []
        self.tlog: TrainLog | None = None

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
        self.seconds, kind = checkpoint_seconds(state)
        if kind != self.clock.device_kind and self.is_root:
            log.warning(
                "resuming a training checkpointed on device kind %s on %s: its device-seconds "
                "add seconds of two kinds of device (train.budget_clock 'device' counts both)",
                kind, self.clock.device_kind,
            )
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
        budget_done = budget_reached(self.seconds, tc.time_budget, tc.budget_clock)
        if (self.step_no >= tc.steps or budget_done) and summary_path.exists():
            done = json.loads(summary_path.read_text())
            if int(done.get("steps", -1)) == self.step_no:
                if self.is_root:
                    log.info("training in %s is already complete (%d steps)", self.run_dir, self.step_no)
                cpu = float(done["train_cpu_s"])
                return TrainResult(self.run_dir, self.step_no, float(done["ess"]), float(done["acceptance"]),
                                   cpu, int(done["nonfinite_steps"]),
                                   float(done.get("train_wall_s", math.nan)),
                                   float(done.get("train_device_s", cpu)),
                                   str(done.get("device_kind", "cpu")))
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
        """Start the clocks (continuing the checkpoint's ``seconds``) and the window's."""
        self.t_window, self.steps_window = time.perf_counter(), 0
        self.clock = TrainClock(self.device, self.seconds)
