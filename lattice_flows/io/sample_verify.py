"""Verifier of sample files: format, shapes, row counts, chunk-index coverage, the CRC32 of
every committed chunk (computed in sorted dataset-name order, as the writer does) and finite
actions; used by ``lattice-flows info --verify`` and by export."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np

from lattice_flows.io.sample_format import PART_FORMAT, DataFileError, part_name, parts_dir_of, rows_in_file
from lattice_flows.io.sample_reader import SampleFile


def _part_problems(pf: h5py.File, p: Path, start: int, stop: int, names: list[str]) -> list[str]:
    """A part file of a version-2 file is a part of rows [start, stop) with every dataset."""
    if pf.attrs.get("format") != PART_FORMAT or (
            int(pf.attrs.get("start", -1)), int(pf.attrs.get("stop", -1))) != (start, stop):
        return [f"{p}: not the part of rows {start}..{stop} (attributes differ)"]
    return [f"{p}: dataset /{name} missing or not {stop - start} rows"
            for name in names if name not in pf or pf[name].shape[0] != stop - start]


def _rows_crc(source: h5py.File, names: list[str], lo: int, hi: int) -> int:
    """CRC32 of rows [lo, hi) of every dataset, in sorted name order (the writer's order)."""
    crc = 0
    for name in sorted(names):
        crc = zlib.crc32(np.ascontiguousarray(source[name][lo:hi]).tobytes(), crc)
    return crc


def verify_sample_file(path: str | Path) -> list[str]:
    """Check a sample file (or each rank file of a merged view): format, shapes, committed row
    counts, the chunk index covering [0, n_saved), the CRC32 of every committed chunk, and finite
    actions. Returns the problems found (empty list: the file is sound)."""
    sf = SampleFile(path)
    problems: list[str] = []
    merged = sf.attrs.get("merged_from")
    if merged:
        for name in merged:
            sub = Path(path).parent / name
            if not sub.exists():
                problems.append(f"{path}: rank file {sub} of the merged view is missing")
                continue
            problems.extend(verify_sample_file(sub))
        return problems
    with h5py.File(sf.path, "r") as f:
        n = sf.n_saved
        names = []
        f.visititems(lambda k, o: names.append(k) if isinstance(o, h5py.Dataset) and k != "chunk_index" else None)
        for name in names:
            d = f[name]
            if d.shape[0] < n:
                problems.append(f"{sf.path}: /{name} has {d.shape[0]} rows < n_saved = {n}")
            if d.ndim < 2 or d.shape[1] != sf.n_chains:
                problems.append(f"{sf.path}: /{name} has shape {d.shape}, expected (rows, {sf.n_chains}, ...)")
        if tuple(f["configs"].shape[2:]) != tuple(sf.lattice_shape):
            problems.append(f"{sf.path}: /configs lattice {f['configs'].shape[2:]} != attribute {sf.lattice_shape}")
        if "chunk_index" not in f:
            problems.append(f"{sf.path}: no chunk index (written by an older version?): checksums not verifiable")
            return problems
        in_file = rows_in_file(sf.attrs)
        parts = sf.path.parent / str(sf.attrs.get("parts_dir", parts_dir_of(sf.path).name))
        expect = 0
        for start, stop, crc, *rest in f["chunk_index"][:]:
            start, stop = int(start), int(stop)
            if stop > n:
                continue  # written after the last commit: not part of the file's content
            if start != expect:
                problems.append(f"{sf.path}: chunk index gap: rows {expect}..{start} not covered")
            expect = stop
            if in_file:  # version 1 or an export: the rows are in the file itself
                data_crc = _rows_crc(f, names, start, stop)
            else:  # version 2: one part file per index row, opened once
                p = parts / part_name(rest[0], start, stop)
                try:
                    with h5py.File(p, "r") as pf:
                        bad = _part_problems(pf, p, start, stop, names)
                        if bad:
                            problems.extend(bad)
                            continue
                        data_crc = _rows_crc(pf, names, 0, stop - start)
                except OSError as exc:
                    problems.append(f"{p}: cannot be opened or read as HDF5 ({exc})")
                    continue
            if data_crc != crc:
                problems.append(f"{sf.path}: rows {start}..{stop}: checksum mismatch (data changed or damaged)")
        if expect != n:
            problems.append(f"{sf.path}: chunk index covers {expect} rows, n_saved = {n}")
        try:
            act = sf._read("action", slice(0, n))
        except (OSError, DataFileError):
            act = np.zeros(0)  # unreadable rows are reported above
        if not np.isfinite(act).all():
            problems.append(f"{sf.path}: non-finite values in /action")
    return problems
