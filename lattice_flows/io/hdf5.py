"""The HDF5 layout of sample files (HMC chains, flow chains), a crash-atomic writer and a reader.

Layout (format ``lattice_flows.samples``, version 2; documented in README "HDF5 output")::

    <name>.h5                  the file users open: attributes and one dataset per quantity
        attrs:  format, format_version, kind ('hmc' | 'flow-mcmc' | ...), package_version,
                config (resolved YAML text), seed, hostname, git_commit, created, mpi_size,
                rank, lattice_shape, n_chains, m2, lam, n_saved (rows committed), parts_dir
        /configs               (n_saved, n_chains, *lattice)  float32
        /action                (n_saved, n_chains)            float64
        /accepted              (n_saved, n_chains)            bool
        /observables/<name>    (n_saved, n_chains, *shape)    float64 (G: float32)
        /<extra>               (n_saved, n_chains)            e.g. log_q, log_w for flow chains
        /chunk_index           (n_parts, 4) int64: start, stop, CRC32, level of each part
    <name>.h5.parts/L<level>_<start>-<stop>.h5   the rows [start, stop) of every dataset

The datasets of ``<name>.h5`` are HDF5 virtual datasets over the part files (any HDF5 reader,
h5py included, reads them as ordinary arrays; keep the ``.parts`` folder beside the file).
Caveat for such readers: HDF5 keeps every source of a virtual dataset open during a read and
silently fills sources it cannot open, so a file (or merged MPI view) with more parts than the
open-file limit (``ulimit -n``) reads wrong; :class:`SampleFile` (and :class:`RowReader` for
random rows) reads part by part instead. Rows HDF5 cannot find read the fill value (NaN for
floats, :func:`fill_value`). ``lattice-flows export`` (io/export.py) writes one self-contained
file (attribute ``layout = "self-contained"``: real datasets, no parts folder), read like
version 1 and never extended.

Crash atomicity: no file is ever modified in place. A commit writes a new part file under a
temporary name, fsyncs and renames it, then writes the new ``<name>.h5`` the same way; the
rename is the commit. A process killed at any instant (SIGKILL, node failure) therefore leaves
every file openable, and a reader sees the rows of the previous or of the new commit, never a
half-written row. Files are built in memory and written with plain file I/O, so a failed write
(disk full, read-only folder) is an ordinary OSError, reported with the path (StorageError),
and never leaves the HDF5 library half-flushed. Leftovers of an interrupted commit (``*.tmp``, parts no index refers to) are
removed by the next writer of the run (which holds the run lock). Parts are merged in groups of
``MERGE_FAN_IN`` so a long run keeps a few dozen files. Version-1 files (one file written in
place) are still read. Attributes are parsed, never evaluated.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from lattice_flows.faults import fault_point
from lattice_flows.io.atomic import commit_file, storage_errors

FORMAT_NAME = "lattice_flows.samples"
FORMAT_VERSION = 2
PART_FORMAT = "lattice_flows.samples.part"
MERGE_FAN_IN = 16  # parts of one level merged into one part of the next level
MERGE_MAX_BYTES = 256 << 20  # larger parts are not merged further (merging is done in memory)
_COPY_BYTES = 64 << 20  # rows copied per slice while merging
#: value of the attribute ``layout`` of a file whose datasets hold their rows themselves (written
#: by ``lattice-flows export``, io/export.py): no parts folder, readable by any HDF5 reader alone
LAYOUT_SELF_CONTAINED = "self-contained"


class DataFileError(ValueError):
    """An HDF5 file that is not a valid lattice_flows file; the message names path and reason."""


def fill_value(dtype: Any) -> Any:
    """Fill value of every virtual dataset (what HDF5 returns for rows whose source it cannot
    open or find): NaN for floating types, so a lost part can never pass for data; integers get
    their most negative value (unsigned: the largest). Booleans (``/accepted``) cannot hold a
    sentinel and read False: only the float datasets show the loss."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.floating):
        return np.nan
    if np.issubdtype(dt, np.signedinteger):
        return np.iinfo(dt).min
    if np.issubdtype(dt, np.unsignedinteger):
        return np.iinfo(dt).max
    return 0


def _chunk_rows(row_bytes: int, target: int = 1 << 20) -> int:
    return max(1, min(1024, target // max(1, row_bytes)))


def rows_in_file(attrs: Mapping[str, Any]) -> bool:
    """True when a file's datasets hold their rows themselves: version 1 (written in place) or a
    self-contained export; False for the virtual datasets over parts of version 2."""
    return int(attrs.get("format_version", 1)) < 2 or attrs.get("layout") == LAYOUT_SELF_CONTAINED


def _attr_values(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute values as HDF5 stores them: None becomes the empty string."""
    return {k: ("" if v is None else v) for k, v in attrs.items()}


def _write_bytes(tmp: Path, data: memoryview, point: str) -> None:
    """Write an HDF5 file built in memory. Building in memory keeps the HDF5 library away from
    the disk: a failed write (disk full) is a plain OSError, with no half-flushed HDF5 state."""
    with open(tmp, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fault_point(point)
        fh.write(data[len(data) // 2 :])


def part_name(level: int, start: int, stop: int) -> str:
    return f"L{int(level)}_{int(start):012d}-{int(stop):012d}.h5"


def parts_dir_of(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


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
        tmp = self.path.with_name(self.path.name + ".tmp")
        if tmp.exists():
            tmp.unlink()

    def n_saved(self) -> int:
        return self.index[-1][1] if self.index else 0

    # -- files -----------------------------------------------------------------------------
    def _write_master(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with storage_errors(self.path, cleanup=tmp):
            _write_bytes(tmp, self._master_bytes(), "master")
            commit_file(tmp, self.path)

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

    def _part_paths(self, level: int, start: int, stop: int) -> tuple[Path, Path]:
        path = self.parts_dir / part_name(level, start, stop)
        return path, path.with_name(path.name + ".tmp")

    def _new_part(self, target: io.BytesIO, level: int, start: int, stop: int) -> h5py.File:
        f = h5py.File(target, "w")
        f.attrs["format"] = PART_FORMAT
        f.attrs["start"], f.attrs["stop"], f.attrs["level"] = start, stop, level
        for name, (shape, dtype) in self.specs.items():
            row = (self.n_chains, *shape)
            gz = name == "configs" or name.endswith("/G")
            rows = min(stop - start, _chunk_rows(dtype.itemsize * math.prod(row)))
            f.create_dataset(name, shape=(stop - start, *row), dtype=dtype, chunks=(max(1, rows), *row),
                             compression="gzip" if gz else None, compression_opts=4 if gz else None,
                             shuffle=gz)
        return f

    def _write_part(self, level: int, start: int, rows: Mapping[str, np.ndarray]) -> tuple[int, int, int, int]:
        k = next(iter(rows.values())).shape[0]
        path, tmp = self._part_paths(level, start, start + k)
        crc = 0
        bio = io.BytesIO()
        with self._new_part(bio, level, start, start + k) as f:
            for name in sorted(self.specs):
                block = np.ascontiguousarray(np.asarray(rows[name], dtype=self.specs[name][1]))
                f[name][...] = block
                crc = zlib.crc32(block.tobytes(), crc)
            f.attrs["crc32"] = crc
        with storage_errors(path, cleanup=tmp):
            _write_bytes(tmp, bio.getbuffer(), "part")
            commit_file(tmp, path)
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
        path, tmp = self._part_paths(level, start, stop)
        bio = io.BytesIO()
        crc, part_crc = self._copy_parts(bio, parts, level)
        bad = [p for p, c in zip(parts, part_crc) if c != p[2]]
        if bad:
            raise DataFileError(
                f"{self.path}: rows {bad[0][0]}..{bad[0][1]} do not match their checksum; the part "
                "files were changed or damaged. Nothing was merged; run "
                f"'lattice-flows info --verify {self.path}'."
            )
        with storage_errors(path, cleanup=tmp):
            _write_bytes(tmp, bio.getbuffer(), "merge")
            commit_file(tmp, path)
        return (start, stop, crc, level)

    def _copy_parts(self, target: io.BytesIO, parts: list[tuple[int, int, int, int]], level: int
                    ) -> tuple[int, list[int]]:
        start, stop = parts[0][0], parts[-1][1]
        crc = 0
        part_crc = [0] * len(parts)
        with self._new_part(target, level, start, stop) as f:
            for name in sorted(self.specs):
                shape, dtype = self.specs[name]
                step = max(1, _COPY_BYTES // max(1, dtype.itemsize * self.n_chains * math.prod(shape)))
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


def _read_attrs(f: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class SampleFile:
    """Reader of a sample file (or a merged view). Every array is cut at the committed ``n_saved``.

    Example::

        s = SampleFile("runs/tutorial_hmc/hmc.h5")
        M = s.observable("M")          # (n_saved, n_chains)
        phi = s.configs(slice(0, 10))  # (10, n_chains, L, L)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataFileError(f"{self.path}: no such file.")
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs = _read_attrs(f)
                names = set(f.keys())
                obs = sorted(f["observables"].keys()) if "observables" in f else []
                lengths = {k: f[k].shape[0] for k in ("configs", "action", "accepted") if k in f}
                index = f["chunk_index"][:] if "chunk_index" in f else None
        except OSError as exc:
            raise DataFileError(
                f"{self.path}: cannot be opened as HDF5 ({exc}); the file is not HDF5 or is "
                "damaged."
            ) from None
        fmt = self.attrs.get("format")
        if fmt != FORMAT_NAME:
            raise DataFileError(
                f"{self.path}: not a lattice_flows sample file (attribute 'format' is "
                f"{fmt!r}, expected {FORMAT_NAME!r})."
            )
        version = self.attrs.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataFileError(
                f"{self.path}: format_version {version!r} is not supported by this version "
                f"of lattice_flows (supports <= {FORMAT_VERSION})."
            )
        for k in ("configs", "action", "accepted"):
            if k not in names:
                raise DataFileError(f"{self.path}: dataset '/{k}' is missing.")
        self.n_saved = int(self.attrs.get("n_saved", 0))
        short = {k: n for k, n in lengths.items() if n < self.n_saved}
        if short:
            raise DataFileError(
                f"{self.path}: attribute n_saved = {self.n_saved} but datasets {short} are shorter."
            )
        for k in ("lattice_shape", "n_chains"):
            if k not in self.attrs:
                raise DataFileError(f"{self.path}: attribute '{k}' is missing.")
        if not rows_in_file(self.attrs) and not self.attrs.get("merged_from"):
            self._check_parts(index)
        self.observable_names = obs
        self.extra_names = sorted(
            n for n in names if n not in ("configs", "action", "accepted", "observables", "chunk_index")
        )
        self.lattice_shape = tuple(int(n) for n in self.attrs["lattice_shape"])
        self.n_chains = int(self.attrs["n_chains"])

    def _check_parts(self, index: np.ndarray | None) -> None:
        """Version 2: every part file the index names must exist (HDF5 would silently read
        fill values for a missing one)."""
        if index is None or index.ndim != 2 or index.shape[1] != 4:
            raise DataFileError(f"{self.path}: the chunk index is missing or malformed.")
        parts = self.path.parent / str(self.attrs.get("parts_dir", parts_dir_of(self.path).name))
        for start, stop, _, level in index:
            p = parts / part_name(level, start, stop)
            if not p.exists():
                raise DataFileError(
                    f"{self.path}: part file {p} (rows {start}..{stop}) is missing; keep the folder "
                    f"{parts.name} beside the file (copy the run folder whole), or write one "
                    "self-contained file with 'lattice-flows export'."
                )

    @property
    def config_text(self) -> str:
        return str(self.attrs.get("config", ""))

    def _read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Rows of dataset ``name``, cut at ``n_saved``.

        Version-2 files are read part by part, one part file open at a time, not through the
        virtual datasets: HDF5 keeps every source of a virtual dataset open during a read and
        silently returns fill values for sources it cannot open (measured: 300 parts under a
        64-file limit gave NaN for 241 of them). A merged MPI view is read rank file by rank
        file and joined along the chain axis."""
        rows = rows or slice(None)
        start, stop, step = rows.indices(self.n_saved)
        merged = self.attrs.get("merged_from")
        if merged:
            blocks = [SampleFile(self.path.parent / n)._read(name, slice(start, stop, step)) for n in merged]
            return np.concatenate(blocks, axis=1)
        if rows_in_file(self.attrs):
            with h5py.File(self.path, "r") as f:
                if name not in f:
                    raise DataFileError(f"{self.path}: dataset '/{name}' is missing.")
                return f[name][start:stop:step]
        previous = None
        for _ in range(10):
            with h5py.File(self.path, "r") as f:
                if name not in f:
                    raise DataFileError(f"{self.path}: dataset '/{name}' is missing.")
                row_shape, dtype = f[name].shape[1:], f[name].dtype
                index = f["chunk_index"][:]
            try:
                return self._read_parts(name, index, start, stop, step, row_shape, dtype)
            except OSError as exc:
                # A running writer may merge parts and delete the merged ones right after it
                # commits the new index: then the index has changed and the read is repeated
                # (the new index still holds every row this reader knows of).
                if previous is not None and np.array_equal(previous, index):
                    raise DataFileError(
                        f"{self.path}: rows of '/{name}' cannot be read ({exc}); a part file is "
                        f"missing or damaged: run 'lattice-flows info --verify {self.path}'."
                    ) from None
                previous = index
        raise DataFileError(f"{self.path}: part files keep changing while reading '/{name}'.")

    def _read_parts(self, name: str, index: np.ndarray, start: int, stop: int, step: int,
                    row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        parts = self.path.parent / str(self.attrs.get("parts_dir", parts_dir_of(self.path).name))
        blocks = []
        for a, b, _, lv in index:
            lo, hi = max(int(a), start), min(int(b), stop)
            if lo >= hi:
                continue
            with h5py.File(parts / part_name(lv, a, b), "r") as pf:
                if name not in pf:
                    raise OSError(f"{parts / part_name(lv, a, b)} has no dataset '/{name}'")
                blocks.append(pf[name][lo - a : hi - a])
        data = np.concatenate(blocks) if blocks else np.zeros((0, *row_shape), dtype=dtype)
        if data.shape[0] != max(0, stop - start):
            raise OSError(f"the chunk index does not cover rows {start}..{stop}")
        return data[::step]

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Rows of any dataset (``configs``, ``observables/M``, ``log_w``, ...), read part by
        part (see :meth:`_read`), cut at ``n_saved``."""
        return self._read(name, rows)

    def row_reader(self, name: str, max_open: int | None = None) -> "RowReader":
        """A reader of dataset ``name`` at arbitrary rows that keeps up to ``max_open`` files
        open between calls (:class:`RowReader`); for random access such as training batches."""
        return RowReader(self, name, max_open)

    def configs(self, rows: slice | None = None) -> np.ndarray:
        """Configurations, ``(n, n_chains, *lattice)`` float32."""
        return self._read("configs", rows)

    def action(self) -> np.ndarray:
        """S per configuration, ``(n_saved, n_chains)`` float64."""
        return self._read("action")

    def accepted(self) -> np.ndarray:
        """Accept flags, ``(n_saved, n_chains)`` bool."""
        return self._read("accepted")

    def observable(self, name: str) -> np.ndarray:
        """Per-configuration observable ``name``, ``(n_saved, n_chains, *shape)``."""
        if name not in self.observable_names:
            raise DataFileError(
                f"{self.path}: no observable '{name}' (has {', '.join(self.observable_names)})."
            )
        return self._read(f"observables/{name}")

    def extra(self, name: str) -> np.ndarray:
        """A further per-row dataset such as ``log_q`` or ``log_w``."""
        return self._read(name)

    def observables(self) -> dict[str, np.ndarray]:
        return {n: self.observable(n) for n in self.observable_names}


def default_max_open() -> int:
    """Files a :class:`RowReader` may hold open: a quarter of the soft open-file limit, at most 32."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 8
    if soft == resource.RLIM_INFINITY:
        return 32
    return max(1, min(32, int(soft) // 4))


class RowReader:
    """Rows of one dataset of a sample file at arbitrary sorted indices, read straight from the
    files that hold them (the parts; for a merged view the parts of each rank file, joined along
    the chain axis), never through the virtual datasets.

    At most ``max_open`` files are open at a time (default :func:`default_max_open`); the least
    recently used one is closed first, so a file with more parts than the open-file limit reads
    right, and repeated calls (training batches) do not reopen the files still held.
    ``opens`` counts the files opened so far. Use as a context manager or call :meth:`close`.

    Example::

        with SampleFile("runs/hmc/hmc.h5").row_reader("configs") as r:
            phi = r.take(np.array([0, 5, 17]))   # (3, n_chains, *lattice)
    """

    def __init__(self, sf: SampleFile, name: str, max_open: int | None = None) -> None:
        self.path, self.name, self.n_saved = sf.path, name, sf.n_saved
        self.max_open = max(1, default_max_open() if max_open is None else int(max_open))
        self._opens = 0
        self._held: OrderedDict[int, h5py.File] = OrderedDict()
        self._children: list[RowReader] = []
        self._files: list[Path] = []
        merged = sf.attrs.get("merged_from")
        if merged:
            each = max(1, self.max_open // len(merged))
            self._children = [RowReader(SampleFile(sf.path.parent / n), name, each) for n in merged]
            return
        with h5py.File(sf.path, "r") as f:
            if name not in f:
                raise DataFileError(f"{sf.path}: dataset '/{name}' is missing.")
            self._row_shape, self._dtype = f[name].shape[1:], f[name].dtype
            index = f["chunk_index"][:] if "chunk_index" in f else None
        if rows_in_file(sf.attrs):
            self._files, self._bounds = [sf.path], np.array([0, max(1, sf.n_saved)], np.int64)
            return
        parts = sf.path.parent / str(sf.attrs.get("parts_dir", parts_dir_of(sf.path).name))
        assert index is not None  # SampleFile checked the chunk index of a version-2 file
        self._files = [parts / part_name(lv, a, b) for a, b, _, lv in index]
        self._bounds = np.concatenate([index[:1, 0], index[:, 1]]).astype(np.int64)

    def _dataset(self, i: int) -> h5py.Dataset:
        f = self._held.pop(i, None)
        if f is None:
            if len(self._held) >= self.max_open:
                self._held.popitem(last=False)[1].close()
            try:
                f = h5py.File(self._files[i], "r")
            except OSError as exc:
                raise DataFileError(
                    f"{self._files[i]}: cannot be opened ({exc}); a part file of {self.path} is "
                    f"missing or damaged: run 'lattice-flows info --verify {self.path}'."
                ) from None
            self._opens += 1
        self._held[i] = f
        if self.name not in f:
            raise DataFileError(f"{self._files[i]}: dataset '/{self.name}' is missing.")
        return f[self.name]

    @property
    def opens(self) -> int:
        """Files opened so far (of every rank file of a merged view)."""
        return self._opens + sum(c.opens for c in self._children)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique, in [0, n_saved)): ``(len(rows), n_chains, *shape)``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.n_saved or np.any(np.diff(rows) <= 0)):
            raise ValueError(f"take: rows must be sorted, unique and in [0, {self.n_saved})")
        if self._children:
            return np.concatenate([c.take(rows) for c in self._children], axis=1)
        which = np.searchsorted(self._bounds, rows, side="right") - 1
        blocks = [self._dataset(int(i))[rows[which == i] - self._bounds[i]] for i in np.unique(which)]
        return np.concatenate(blocks) if blocks else np.zeros((0, *self._row_shape), self._dtype)

    def close(self) -> None:
        for c in self._children:
            c.close()
        while self._held:
            self._held.popitem()[1].close()

    def __enter__(self) -> "RowReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
