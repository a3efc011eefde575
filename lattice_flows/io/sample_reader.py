"""Reader of sample files (format versions 1 and 2, merged MPI views, self-contained exports;
layout in :mod:`lattice_flows.io.sample_format`): :class:`SampleFile` reads whole datasets part
by part, :class:`RowReader` rows at arbitrary indices with a bounded number of open files."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lattice_flows.io.sample_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    DataFileError,
    part_name,
    parts_dir_of,
    rows_in_file,
)


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
