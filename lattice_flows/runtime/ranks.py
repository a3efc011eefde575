"""Per-rank files of an MPI run and the merged view rank 0 writes at the end.

One rank writes ``<base>.h5`` / ``<base>.ckpt``; several write ``<base>.rank<NNNN>.h5`` / ``.ckpt``
each and rank 0 then writes the merged view ``<base>.h5`` (:mod:`lattice_flows.io.merge`).
"""

from __future__ import annotations

from pathlib import Path

from lattice_flows.config import ConfigError
from lattice_flows.io.merge import write_merged_view
from lattice_flows.logs import log


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
        write_merged_view(out, [run_dir / f"{base}.rank{r:04d}.h5" for r in range(world.size)])
        log.info("merged view of %d ranks: %s", world.size, out)
    world.barrier()
    return out
