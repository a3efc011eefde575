"""Append-only, crash-atomic writer of sample files (format version 2; layout and crash
atomicity in :mod:`lattice_flows.io.sample_format`): each commit writes a part file, then the
new index file; parts are merged in groups of ``MERGE_FAN_IN``."""

from __future__ import annotations

import datetime as _dt
import io
import math
import zlib
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from lattice_flows.io.atomic import storage_errors, tmp_path_of, write_atomic
from lattice_flows.io.sample_format import (
    COPY_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LAYOUT_SELF_CONTAINED,
    PART_FORMAT,
    DataFileError,
    chunk_rows,
    fill_value,
    part_name,
    parts_dir_of,
)

MERGE_FAN_IN = 16  # parts of one level merged into one part of the next level
MERGE_MAX_BYTES = 256 << 20  # larger parts are not merged further (merging is done in memory)


def _attr_values(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute values as HDF5 stores them: None becomes the empty string."""
    return {k: ("" if v is None else v) for k, v in attrs.items()}



class SampleWriter:
    """Append-only, crash-atomic writer of a sample file (format version 2, see module doc).

    Args:
        path: the HDF5 file users open (``<name>.h5``).
        attrs: file attributes (provenance, config text, ...); those of an existing file are kept.
        n_chains: number of chains (columns of every dataset).
        lattice_shape: extents of the lattice.
        row_specs: ``name -> (per-chain shape, dtype)`` of every dataset other than
            ``configs``; names with a ``/`` go to groups (``observables/M``).

    The writer must be the only one of its run (the run lock guarantees it): opening an existing
    file removes leftovers of an interrupted commit.
    """

    def __init__(
        self,
        path: str | Path,
        attrs: Mapping[str, Any],
        n_chains: int,
        lattice_shape: tuple[int, ...],
        row_specs: Mapping[str, tuple[tuple[int, ...], Any]],
    ) -> None:
        self.path = Path(path)
        self.parts_dir = parts_dir_of(self.path)
        self.n_chains = n_chains
        self.lattice_shape = tuple(lattice_shape)
        specs = {"configs": (self.lattice_shape, np.float32)}
        specs.update(row_specs)
        self.specs = {k: (tuple(shape), np.dtype(dt)) for k, (shape, dt) in specs.items()}
        self.index: list[tuple[int, int, int, int]] = []  # (start, stop, crc, level)
        if self.path.exists():
            self._open_existing()
        else:
            self.attrs = _attr_values(attrs)
            self.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            with storage_errors(self.parts_dir):
                self.parts_dir.mkdir(parents=True, exist_ok=True)
            self._write_master()
        with storage_errors(self.parts_dir):
            self._clean_leftovers()

    # -- state -----------------------------------------------------------------------------
    def _open_existing(self) -> None:
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                idx = f["chunk_index"][:] if "chunk_index" in f else np.zeros((0, 3), np.int64)
        except OSError as exc:
            raise DataFileError(f"{self.path}: cannot be opened as HDF5 ({exc}).") from None
        version = attrs.get("format_version")
        if attrs.get("format") != FORMAT_NAME:
            raise DataFileError(f"{self.path}: not a lattice_flows sample file; refusing to extend it.")
        if attrs.get("layout") == LAYOUT_SELF_CONTAINED:
            raise DataFileError(
                f"{self.path}: a self-contained export (of {attrs.get('exported_from')}); exports "
                "are not extended. Extend the run folder it was exported from, then export again."
            )
        if version != FORMAT_VERSION:
            raise DataFileError(
                f"{self.path}: written in format version {version}; this version appends to "
                f"version {FORMAT_VERSION} files only. Start a new run folder (the old file stays "
                "readable)."
            )
        if int(attrs.get("n_chains", -1)) != self.n_chains or tuple(
            int(n) for n in attrs.get("lattice_shape", ())
        ) != self.lattice_shape:
            raise DataFileError(
                f"{self.path}: holds {attrs.get('n_chains')} chains on lattice "
                f"{tuple(attrs.get('lattice_shape', ()))}, this run has {self.n_chains} chains on "
                f"{self.lattice_shape}; refusing to extend it."
            )
        for k in ("format", "format_version", "n_saved", "n_chains", "lattice_shape", "parts_dir"):
            attrs.pop(k, None)
        self.attrs = attrs
        self.index = [tuple(int(v) for v in row) for row in idx]  # type: ignore[misc]
        for start, stop, _, level in self.index:
            if not (self.parts_dir / part_name(level, start, stop)).exists():
                raise DataFileError(
                    f"{self.path}: part file {self.parts_dir / part_name(level, start, stop)} "
                    f"(rows {start}..{stop}) is missing; refusing to extend a damaged file."
                )

    def _clean_leftovers(self) -> None:
        keep = {part_name(lv, a, b) for a, b, _, lv in self.index}
        for p in self.parts_dir.iterdir():
            if p.name not in keep:
                p.unlink()
        tmp = tmp_path_of(self.path)
        if tmp.exists():
            tmp.unlink()

    def n_saved(self) -> int:
        return self.index[-1][1] if self.index else 0

    # -- files -----------------------------------------------------------------------------
    # Every file is built in memory and written by write_atomic: the HDF5 library never writes
    # to the disk, so a failed write (disk full) is a plain OSError with no half-flushed state.
    def _write_master(self) -> None:
        write_atomic(self.path, self._master_bytes(), "master", torn=True)

    def _master_bytes(self) -> memoryview:
        n = self.n_saved()
        bio = io.BytesIO()
        with h5py.File(bio, "w") as f:
            for k, v in self.attrs.items():
                f.attrs[k] = v
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["n_chains"] = self.n_chains
            f.attrs["lattice_shape"] = np.asarray(self.lattice_shape, dtype=np.int64)
            f.attrs["n_saved"] = n
            f.attrs["parts_dir"] = self.parts_dir.name
            f.create_dataset("chunk_index", data=np.asarray(self.index, dtype=np.int64).reshape(-1, 4))
            for name, (shape, dtype) in self.specs.items():
                row = (self.n_chains, *shape)
                if n == 0:
                    f.create_dataset(name, shape=(0, *row), maxshape=(None, *row), dtype=dtype)
                    continue
                layout = h5py.VirtualLayout(shape=(n, *row), dtype=dtype)
                for start, stop, _, level in self.index:
                    src = h5py.VirtualSource(
                        f"{self.parts_dir.name}/{part_name(level, start, stop)}", name,
                        shape=(stop - start, *row), dtype=dtype,
                    )
                    layout[start:stop] = src
                f.create_virtual_dataset(name, layout, fillvalue=fill_value(dtype))
        return bio.getbuffer()

    def _new_part(self, target: io.BytesIO, level: int, start: int, stop: int) -> h5py.File:
        f = h5py.File(target, "w")
        f.attrs["format"] = PART_FORMAT
        f.attrs["start"], f.attrs["stop"], f.attrs["level"] = start, stop, level
        for name, (shape, dtype) in self.specs.items():
            row = (self.n_chains, *shape)
            gz = name == "configs" or name.endswith("/G")
            rows = min(stop - start, chunk_rows(dtype.itemsize * math.prod(row)))
            f.create_dataset(name, shape=(stop - start, *row), dtype=dtype, chunks=(max(1, rows), *row),
                             compression="gzip" if gz else None, compression_opts=4 if gz else None,
                             shuffle=gz)
        return f

    def _write_part(self, level: int, start: int, rows: Mapping[str, np.ndarray]) -> tuple[int, int, int, int]:
        k = next(iter(rows.values())).shape[0]
        crc = 0
        bio = io.BytesIO()
        with self._new_part(bio, level, start, start + k) as f:
            for name in sorted(self.specs):
                block = np.ascontiguousarray(np.asarray(rows[name], dtype=self.specs[name][1]))
                f[name][...] = block
                crc = zlib.crc32(block.tobytes(), crc)
            f.attrs["crc32"] = crc
        write_atomic(self.parts_dir / part_name(level, start, start + k), bio.getbuffer(), "part", torn=True)
        return (start, start + k, crc, level)

    # -- operations ------------------------------------------------------------------------
    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Update file attributes (e.g. cumulative CPU-seconds, acceptance); one atomic commit."""
        self.attrs.update(_attr_values(attrs))
        self._write_master()

    def append(self, rows: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> int:
        """Append a block of rows (each array ``(k, n_chains, *shape)``) and optionally update
        attributes, in one atomic commit; returns the new n_saved."""
        missing = set(self.specs) - set(rows)
        if missing:
            raise ValueError(f"append: missing datasets {sorted(missing)}")
        ks = {name: np.asarray(a).shape[0] for name, a in rows.items()}
        k = next(iter(ks.values()))
        if any(v != k for v in ks.values()):
            raise ValueError(f"append: inconsistent row counts {ks}")
        if k == 0:
            if attrs:
                self.set_attrs(attrs)
            return self.n_saved()
        self.index.append(self._write_part(0, self.n_saved(), {n: rows[n] for n in self.specs}))
        if attrs:
            self.attrs.update(_attr_values(attrs))
        self._write_master()
        self._merge_tail()
        return self.n_saved()

    def _merge_tail(self) -> None:
        """Merge the last MERGE_FAN_IN parts when they share a level and hold at most
        MERGE_MAX_BYTES (uncompressed): merging happens in memory."""
        row_bytes = sum(dt.itemsize * self.n_chains * math.prod(sh) for sh, dt in self.specs.values())
        while len(self.index) >= MERGE_FAN_IN:
            tail = self.index[-MERGE_FAN_IN:]
            level = tail[-1][3]
            if any(p[3] != level for p in tail) or (tail[-1][1] - tail[0][0]) * row_bytes > MERGE_MAX_BYTES:
                return
            merged = self._merge(tail, level + 1)
            old = [self.parts_dir / part_name(lv, a, b) for a, b, _, lv in tail]
            self.index[-MERGE_FAN_IN:] = [merged]
            self._write_master()
            with storage_errors(self.parts_dir):
                for p in old:
                    p.unlink(missing_ok=True)

    def _merge(self, parts: list[tuple[int, int, int, int]], level: int) -> tuple[int, int, int, int]:
        start, stop = parts[0][0], parts[-1][1]
        bio = io.BytesIO()
        crc, part_crc = self._copy_parts(bio, parts, level)
        bad = [p for p, c in zip(parts, part_crc) if c != p[2]]
        if bad:
            raise DataFileError(
                f"{self.path}: rows {bad[0][0]}..{bad[0][1]} do not match their checksum; the part "
                "files were changed or damaged. Nothing was merged; run "
                f"'lattice-flows info --verify {self.path}'."
            )
        write_atomic(self.parts_dir / part_name(level, start, stop), bio.getbuffer(), "merge", torn=True)
        return (start, stop, crc, level)

    def _copy_parts(self, target: io.BytesIO, parts: list[tuple[int, int, int, int]], level: int
                    ) -> tuple[int, list[int]]:
        start, stop = parts[0][0], parts[-1][1]
        crc = 0
        part_crc = [0] * len(parts)
        with self._new_part(target, level, start, stop) as f:
            for name in sorted(self.specs):
                shape, dtype = self.specs[name]
                step = max(1, COPY_BYTES // max(1, dtype.itemsize * self.n_chains * math.prod(shape)))
                for i, (a, b, _, lv) in enumerate(parts):
                    with h5py.File(self.parts_dir / part_name(lv, a, b), "r") as src:
                        for r in range(0, b - a, step):
                            block = np.ascontiguousarray(src[name][r : min(b - a, r + step)])
                            f[name][a - start + r : a - start + r + block.shape[0]] = block
                            crc = zlib.crc32(block.tobytes(), crc)
                            part_crc[i] = zlib.crc32(block.tobytes(), part_crc[i])
            f.attrs["crc32"] = crc
        return crc, part_crc

    def truncate(self, n_rows: int) -> None:
        """Drop rows beyond ``n_rows`` (rows committed after the last checkpoint)."""
        if n_rows >= self.n_saved():
            return
        keep = [p for p in self.index if p[1] <= n_rows]
        drop = [p for p in self.index if p[1] > n_rows]
        cut = [p for p in drop if p[0] < n_rows]
        if cut:
            a, b, _, lv = cut[0]
            with h5py.File(self.parts_dir / part_name(lv, a, b), "r") as src:
                rows = {name: src[name][: n_rows - a] for name in self.specs}
            keep.append(self._write_part(lv, a, rows))
        self.index = keep
        self._write_master()
        with storage_errors(self.parts_dir):
            for a, b, _, lv in drop:
                (self.parts_dir / part_name(lv, a, b)).unlink(missing_ok=True)
