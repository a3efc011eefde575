"""The production driver: lock -> resume -> advance, chunked commit + checkpoint -> graceful stop
-> merged view, for every sampler (HMC, flow MCMC / importance, and the composite to come).

A sampler supplies a :class:`Producer`: its start (fresh or from a checkpoint), its advance step
(k steps, the rows they produced), its checkpoint and its file attributes. The driver owns the
rest, the same for every sampler:

1. the run lock (``.lock`` / ``.lock.<...>``), per-rank paths
   (:func:`~lattice_flows.runtime.ranks.production_paths`), the resume rules
   (:func:`~lattice_flows.runtime.resume.check_resumable`) and the config record;
2. the checkpoint, loaded and given to :meth:`Producer.start`, and the sample file, truncated to
   the rows the checkpoint covers (rows committed after it are regenerated);
3. the loop: ``advance`` -> rows into a :class:`~lattice_flows.runtime.rows.RowBuffer`; at a
   commit point (:attr:`Advance.can_commit`) the rows and the run's attributes go to the sample
   file in one commit when the chunk is full (``output.chunk_rows``), the last rows are in, or a
   stop was requested, and the checkpoint follows right after;
4. a stop request (SIGTERM/SIGINT, :mod:`lattice_flows.signals`) is served at the next commit
   point: commit, checkpoint, :class:`~lattice_flows.signals.StopRequested`;
5. at the end :meth:`Producer.finish` logs the summary; with several MPI ranks rank 0 writes the
   merged view (:func:`~lattice_flows.runtime.ranks.finish_parallel`).

Clocks (:mod:`lattice_flows.runtime.clock`): the producer's ``seconds`` (CPU-, wall- and
device-seconds used before this process's loop: earlier processes of the run, HMC thermalisation)
plus this loop's, read at the commit points only (on CUDA a reading waits for the queued work).
Every commit writes them as the attributes ``cpu_s``, ``wall_s``, ``device_s`` and
``device_kind`` (:func:`clock_fields`), and every checkpoint carries the same four entries. A
checkpoint of an older version has ``cpu_s`` only (:func:`resumed_seconds`): those versions ran
on the CPU, where device-s are CPU-s by definition, so ``device_s`` starts from its ``cpu_s`` and
``device_kind`` is ``cpu``; the elapsed time was not recorded and ``wall_s`` starts from the
``cpu_s`` as well (the same figure for the single-threaded runs of this package, an estimate
otherwise). A run resumed on another kind of device records ``device_kind`` as
``<old>+<new>``: its device-seconds mix two currencies.

The progress-bar postfix (acceptance) is refreshed at most every :data:`POSTFIX_EVERY_S`
wall-seconds, not per step: reading a count held on the device is a host synchronisation.
Resume rule and file layout: docs/conventions.md and :mod:`lattice_flows.runtime.resume`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from lattice_flows.config import Config
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.sample_writer import SampleWriter
from lattice_flows.io.lock import RunLock
from lattice_flows.io.runfolder import config_yaml, provenance, write_config
from lattice_flows.observables import observable_specs
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.ranks import finish_parallel, production_paths
from lattice_flows.runtime.clock import CLOCKS, Clock, Seconds, device_kind
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.rows import RowBuffer
from lattice_flows.signals import StopRequested, stop_requested

#: a row: numpy arrays or tensors on the chains' device (:class:`~lattice_flows.runtime.rows.RowBuffer`)
Row = dict[str, "np.ndarray | torch.Tensor"]
#: wall-seconds between two refreshes of the progress-bar postfix
POSTFIX_EVERY_S = 1.0


def clock_fields(seconds: Seconds, kind: str) -> dict[str, Any]:
    """The clock entries of commit attributes and checkpoints: ``cpu_s``, ``wall_s``,
    ``device_s`` (:class:`~lattice_flows.runtime.clock.Seconds`) and ``device_kind``."""
    return {**seconds.as_dict(), "device_kind": kind}


def resumed_seconds(state: dict[str, Any], device: torch.device | str,
                    prefix: str = "") -> tuple[Seconds, str]:
    """The clocks ``<prefix>cpu_s``, ``<prefix>wall_s``, ``<prefix>device_s`` of a checkpoint
    and the device kind they were spent on, combined with ``device``'s kind (``<old>+<new>``
    when they differ). A checkpoint of an older version has ``cpu_s`` only: the missing clocks
    start from it and the kind is ``cpu`` (see the module docstring)."""
    cpu = float(state.get(f"{prefix}cpu_s", 0.0))
    seconds = Seconds(*(float(state.get(f"{prefix}{k}", cpu)) for k in CLOCKS))
    return seconds, combined_kind(state.get("device_kind", "cpu"), device_kind(device))


def combined_kind(old: str, new: str) -> str:
    """The device kind of seconds spent on ``old`` and then ``new`` (``old+new`` if they
    differ and ``new`` is not among them yet)."""
    return old if new in old.split("+") else f"{old}+{new}"


@dataclass
class Advance:
    """What one :meth:`Producer.advance` did.

    ``rows``: the rows it produced (each ``{dataset: (n_chains, ...)}``), in order;
    ``n_steps``: the steps it advanced (progress bar); ``can_commit``: the producer's state
    (:meth:`Producer.checkpoint`) now describes the run exactly, so a commit and a stop may
    happen here; ``last``: the run's last rows are in, commit what is buffered."""

    rows: list[Row] = field(default_factory=list)
    n_steps: int = 1
    can_commit: bool = True
    last: bool = False


class Producer(Protocol):
    """The sampler-specific part of a production run (see the module docstring)."""

    #: the ``kind`` attribute of the sample file (``hmc``, ``flow-mcmc``, ...)
    kind: str
    #: chains (columns of every row)
    n_chains: int
    #: steps of the whole run and steps done (the loop runs while ``step < total``)
    total: int
    step: int
    #: the chains' device (the device-seconds are those of this device)
    device: torch.device
    #: the clocks used before this process's production loop (set by :meth:`start`) and the
    #: device kind they were spent on (:func:`resumed_seconds`)
    seconds: Seconds
    device_kind: str

    def start(self, state: dict[str, Any] | None, ckpt_path: Path) -> None:
        """Start fresh (``state`` None) or resume from the checkpoint ``state`` (refuse one that
        does not match the config: ConfigError naming ``ckpt_path``)."""

    def rows_done(self) -> int:
        """Rows the run has committed at its current step (the sample file is cut there)."""

    def file_attrs(self) -> dict[str, Any]:
        """The sampler's own file attributes (after ``lam``, before the provenance)."""

    def row_specs(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Datasets beyond ``action``, ``accepted`` and the observables: name -> (shape, dtype)."""

    def advance(self) -> Advance:
        """Advance the chains by some steps; returns their rows."""

    def postfix(self) -> dict[str, str] | None:
        """Progress-bar postfix after an advance, or None."""

    def commit_attrs(self) -> dict[str, Any]:
        """Run attributes written with each commit (the driver adds the clocks,
        :func:`clock_fields`)."""

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint written after each commit (the driver adds the clocks)."""

    def finish(self, steps_run: int, seconds: Seconds, samples_path: Path, n_rows: int) -> None:
        """Log the summary of this process's part (``steps_run`` 0: the run was complete;
        ``seconds``: this process's loop, each clock named in the log)."""


def run_production(
    make: Callable[[], Producer], cfg: Config, run_dir: Path, world, *, base: str, stage: str,
    lock_name: str, desc: str, progress: bool = True,
) -> Path:
    """Run (or resume, or extend) one production under the lock ``lock_name`` of ``run_dir``:
    the producer ``make()`` (built under the lock) writes ``<base>.h5``/``<base>.ckpt`` (per rank
    with MPI). ``stage`` names the config record and the config section watched by the resume
    rules, ``desc`` the progress bar. Returns the sample file (several ranks: the merged view)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, lock_name):
        path = _produce(make(), cfg, run_dir, world, base, stage, desc, progress)
    merged = finish_parallel(run_dir, base, world)
    return merged or path


def _produce(producer: Producer, cfg: Config, run_dir: Path, world, base: str, stage: str,
             desc: str, progress: bool) -> Path:
    rank = 0 if world is None else world.rank
    world_size = 1 if world is None else world.size
    samples_path, ckpt_path = production_paths(run_dir, base, world)
    if ckpt_path.exists() or samples_path.exists():
        check_resumable(run_dir, cfg, (stage,))
    prov = provenance(cfg, world_size, rank)
    if rank == 0:
        write_config(run_dir, cfg, prov, stage)
    producer.start(load_checkpoint(ckpt_path) if ckpt_path.exists() else None, ckpt_path)

    attrs = {
        "kind": producer.kind,
        "config": config_yaml(cfg),
        "lattice_shape": np.asarray(cfg.lattice.shape),
        "m2": cfg.action.m2,
        "lam": cfg.action.lam,
        **producer.file_attrs(),
        **{k: v for k, v in prov.items() if k != "created"},
    }
    specs = {"action": ((), np.float64), "accepted": ((), np.bool_), **producer.row_specs(),
             **observable_specs(cfg.lattice.shape, cfg.output.store_G)}
    writer = SampleWriter(samples_path, attrs, producer.n_chains, cfg.lattice.shape, specs)
    writer.truncate(producer.rows_done())  # rows written after the last checkpoint are regenerated

    buf = RowBuffer()
    clock, start = Clock(producer.device, base=producer.seconds), producer.step
    t_postfix = -math.inf
    bar = progress_bar(total=producer.total, initial=start, desc=desc,
                       enabled=progress and rank == 0)
    while producer.step < producer.total:
        adv = producer.advance()
        for row in adv.rows:
            buf.add(row)
        bar.update(adv.n_steps)
        if bar.enabled and time.perf_counter() - t_postfix >= POSTFIX_EVERY_S:
            t_postfix = time.perf_counter()
            postfix = producer.postfix()
            if postfix:
                bar.set_postfix(**postfix)
        if not adv.can_commit:
            continue
        stop = stop_requested()
        if buf.n >= cfg.output.chunk_rows or (adv.last and buf.n) or stop:
            now = clock_fields(clock.read(), producer.device_kind)
            writer.append(buf.take(), attrs={**producer.commit_attrs(), **now})  # one commit
            save_checkpoint({**producer.checkpoint(), **now}, ckpt_path)
            if stop:
                bar.close()
                raise StopRequested(stop, str(samples_path))
    bar.close()
    end = clock.read()
    ran = Seconds(*(getattr(end, k) - getattr(producer.seconds, k) for k in CLOCKS))
    producer.finish(producer.step - start, ran, samples_path, writer.n_saved())
    return samples_path
