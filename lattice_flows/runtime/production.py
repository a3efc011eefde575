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

CPU seconds: the producer's ``cpu_s`` (used before this process's loop: earlier runs, HMC
thermalisation) plus this loop's process time, passed to the commit attributes and checkpoint.
Resume rule and file layout: docs/conventions.md and :mod:`lattice_flows.runtime.resume`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from lattice_flows.config import Config
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.sample_writer import SampleWriter
from lattice_flows.io.lock import RunLock
from lattice_flows.io.runfolder import config_yaml, provenance, write_config
from lattice_flows.observables import observable_specs
from lattice_flows.progress import progress_bar
from lattice_flows.runtime.ranks import finish_parallel, production_paths
from lattice_flows.runtime.resume import check_resumable
from lattice_flows.runtime.rows import RowBuffer
from lattice_flows.signals import StopRequested, stop_requested

Row = dict[str, np.ndarray]


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
    #: CPU seconds used before this process's production loop
    cpu_s: float

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

    def commit_attrs(self, cpu_s: float) -> dict[str, Any]:
        """Run attributes written with each commit (``cpu_s``: CPU seconds so far)."""

    def checkpoint(self, cpu_s: float) -> dict[str, Any]:
        """The checkpoint written after each commit."""

    def finish(self, steps_run: int, seconds: float, samples_path: Path, n_rows: int) -> None:
        """Log the summary of this process's part (``steps_run`` 0: the run was complete)."""


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
    t0, cpu0, start = time.perf_counter(), time.process_time(), producer.step
    bar = progress_bar(total=producer.total, initial=start, desc=desc,
                       enabled=progress and rank == 0)
    while producer.step < producer.total:
        adv = producer.advance()
        for row in adv.rows:
            buf.add(row)
        bar.update(adv.n_steps)
        if bar.enabled:
            postfix = producer.postfix()
            if postfix:
                bar.set_postfix(**postfix)
        if not adv.can_commit:
            continue
        stop = stop_requested()
        if buf.n >= cfg.output.chunk_rows or (adv.last and buf.n) or stop:
            cpu_now = producer.cpu_s + (time.process_time() - cpu0)
            writer.append(buf.take(), attrs=producer.commit_attrs(cpu_now))  # one commit
            save_checkpoint(producer.checkpoint(cpu_now), ckpt_path)
            if stop:
                bar.close()
                raise StopRequested(stop, str(samples_path))
    bar.close()
    producer.finish(producer.step - start, time.perf_counter() - t0, samples_path, writer.n_saved())
    return samples_path

