"""Shared machinery of production runs: run-folder setup, resume checks, chunked rows, seeds.

A production run (HMC or flow chain) keeps its state in a run folder::

    config.yaml        resolved config with provenance header
    <kind>.h5          the samples (lattice_flows.io.hdf5 layout)
    <kind>.ckpt        the last checkpoint (atomic), written right after each committed chunk
    .lock              held while a process writes the folder

Resume rule: a rerun loads the checkpoint, truncates the sample file to the rows the checkpoint
covers, restores RNG and chain states, and continues; the data then equal those of an
uninterrupted run element for element (same device, same thread count).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.io.runfolder import STAGES, diff_configs, read_run_config

log = logging.getLogger("lattice_flows")

#: config keys that may change between a run and its resumption
RESUMABLE_CHANGES = {
    "hmc.n_traj", "sample.n_samples", "output.dir", "output.chunk_rows",
    "train.steps", "train.time_budget", "train.eval_samples", "train.eval_batch_size",
    "train.log_every", "train.checkpoint_every", "train.init_from_missing",
}


def derive_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for stream ``stream`` (e.g. rank, purpose) derived from the config seed
    with numpy's SeedSequence, so that streams are statistically independent."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


PHYSICS_KEYS = ("lattice", "action", "seed", "dtype")


def check_resumable(run_dir: Path, cfg: Config, stage_sections: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run folder whose stored config differs in a key that matters:
    the physics (lattice, couplings, seed, dtype) or the sections of the running stage
    (e.g. ``("hmc",)``), except the keys in :data:`RESUMABLE_CHANGES`. The stored config is
    the running stage's own record (``config.<stage>[.<mode>].yaml``, the last section named in
    ``stage_sections``), so other stages and modes run in the same folder in between do not count."""
    stage = stage_sections[-1] if stage_sections and stage_sections[-1] in STAGES else None
    old = read_run_config(run_dir, stage, cfg)
    if old is None:
        return
    watched = PHYSICS_KEYS + tuple(stage_sections)
    changed = [
        k for k in diff_configs(old.to_dict(), cfg.to_dict())
        if k not in RESUMABLE_CHANGES and k.split(".")[0] in watched
    ]
    if any(k.startswith("action.") for k in changed):
        same = (old.action.m2, old.action.lam) == (cfg.action.m2, cfg.action.lam)
        changed = [k for k in changed if not k.startswith("action.")] + ([] if same else ["action"])
    old_sections = old.to_dict()
    # a stage whose section was absent before starts fresh in this folder: nothing to mix
    changed = [k for k in changed if k.split(".")[0] in PHYSICS_KEYS or k.split(".")[0] in old_sections]
    if changed:
        raise ConfigError(
            f"{run_dir}: this run folder was started with a different config "
            f"(changed: {', '.join(changed)}). Resuming would mix two runs; use a new "
            "output.dir (e.g. --set output.dir=...) or restore the old values."
        )


class RowBuffer:
    """Collects per-row arrays until a chunk is complete."""

    def __init__(self) -> None:
        self.rows: dict[str, list[np.ndarray]] = {}
        self.n = 0

    def add(self, row: dict[str, np.ndarray]) -> None:
        for k, v in row.items():
            self.rows.setdefault(k, []).append(v)
        self.n += 1

    def take(self) -> dict[str, np.ndarray]:
        out = {k: np.stack(v) for k, v in self.rows.items()}
        self.rows, self.n = {}, 0
        return out


def observable_specs(lattice_shape: tuple[int, ...], store_G: bool) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Dataset specs of the per-configuration observables (see lattice_flows.observables)."""
    from lattice_flows.observables import SCALAR_OBSERVABLES

    specs: dict[str, tuple[tuple[int, ...], Any]] = {
        f"observables/{n}": ((), np.float64) for n in SCALAR_OBSERVABLES
    }
    specs["observables/C"] = ((lattice_shape[-1],), np.float64)
    if store_G:
        specs["observables/G"] = (tuple(lattice_shape), np.float32)
    return specs


def production_paths(run_dir: Path, base: str, world) -> tuple[Path, Path]:
    """(samples file, checkpoint) of this rank: ``<base>.h5``/``<base>.ckpt`` for one rank,
    ``<base>.rank<NNNN>.h5``/``.ckpt`` for several (the merged view is then ``<base>.h5``).

    A folder produced with one number of ranks is refused for another (the chains would not
    line up with their checkpoints)."""
    size = 1 if world is None else world.size
    rank = 0 if world is None else world.rank
    if size == 1:
        samples, ckpt = run_dir / f"{base}.h5", run_dir / f"{base}.ckpt"
        others = sorted(run_dir.glob(f"{base}.rank*.ckpt"))
        if others:
            raise ConfigError(
                f"{run_dir}: this production was run with {len(others)} MPI ranks "
                f"({others[0].name}, ...); resume it with the same number of ranks."
            )
    else:
        samples = run_dir / f"{base}.rank{rank:04d}.h5"
        ckpt = run_dir / f"{base}.rank{rank:04d}.ckpt"
        single = run_dir / f"{base}.ckpt"
        ranks = sorted(int(p.name.split(".rank")[1][:4]) for p in run_dir.glob(f"{base}.rank*.ckpt"))
        if single.exists() or (ranks and ranks[-1] >= size):
            n = 1 if single.exists() else f"at least {ranks[-1] + 1}"
            raise ConfigError(
                f"{run_dir}: this production was run with {n} rank(s); resume it with the same "
                f"number of ranks, not {size}."
            )
    return samples, ckpt


def finish_parallel(run_dir: Path, base: str, world) -> Path | None:
    """After every rank finished: rank 0 writes the merged view ``<base>.h5``."""
    if world is None or world.size == 1:
        return None
    world.barrier()
    out = run_dir / f"{base}.h5"
    if world.is_root:
        from lattice_flows.io.merge import write_merged_view

        write_merged_view(out, [run_dir / f"{base}.rank{r:04d}.h5" for r in range(world.size)])
        log.info("merged view of %d ranks: %s", world.size, out)
    world.barrier()
    return out
