"""The HDF5 layout of sample files (HMC chains, flow chains), a chunked writer and a reader.

Layout (format ``lattice_flows.samples``, version 1; documented in README "HDF5 output")::

    attrs:  format, format_version, kind ('hmc' | 'flow-mcmc' | ...), package_version,
            config (resolved YAML text), seed, hostname, git_commit, created, mpi_size, rank,
            lattice_shape, n_chains, m2, lam, n_saved (rows committed)
    /configs               (n_saved, n_chains, *lattice)  float32, chunked + gzip
    /action                (n_saved, n_chains)            float64
    /accepted              (n_saved, n_chains)            bool
    /observables/<name>    (n_saved, n_chains, *shape)    float64 (G: float32)
    /<extra>               (n_saved, n_chains)            e.g. log_q, log_w for flow chains

Rows are committed in chunks: the writer appends rows, flushes, and only then raises the
attribute ``n_saved``. Datasets may be longer than ``n_saved`` after a crash; the reader never
returns rows beyond ``n_saved`` and a resumed writer truncates them. Attributes are parsed,
never evaluated.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import zlib
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

FORMAT_NAME = "lattice_flows.samples"
FORMAT_VERSION = 1


class DataFileError(ValueError):
    """An HDF5 file that is not a valid lattice_flows file; the message names path and reason."""


def _chunk_rows(row_bytes: int, target: int = 1 << 20) -> int:
    return max(1, min(1024, target // max(1, row_bytes)))


class SampleWriter:
    """Append-only writer of a sample file; every :meth:`append` opens, writes, commits, closes.

    Args:
        path: the HDF5 file.
        attrs: file attributes (provenance, config text, ...); written at creation.
        n_chains: number of chains (columns of every dataset).
        lattice_shape: extents of the lattice.
        row_specs: ``name -> (per-chain shape, dtype)`` of every dataset other than
            ``configs``; names with a ``/`` go to groups (``observables/M``).
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
        self.n_chains = n_chains
        self.lattice_shape = tuple(lattice_shape)
        specs = {"configs": (self.lattice_shape, np.float32)}
        specs.update(row_specs)
        self.specs = specs
        if not self.path.exists():
            self._create(attrs)

    def _create(self, attrs: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else v
            f.attrs["n_chains"] = self.n_chains
            f.attrs["lattice_shape"] = np.asarray(self.lattice_shape, dtype=np.int64)
            f.attrs["n_saved"] = 0
            f.create_dataset("chunk_index", shape=(0, 3), maxshape=(None, 3), dtype=np.int64,
                             chunks=(256, 3))
            for name, (shape, dtype) in self.specs.items():
                row = (self.n_chains, *shape)
                itemsize = np.dtype(dtype).itemsize
                rows = _chunk_rows(itemsize * math.prod(row))
                f.create_dataset(
                    name,
                    shape=(0, *row),
                    maxshape=(None, *row),
                    dtype=dtype,
                    chunks=(rows, *row),
                    compression="gzip" if name == "configs" or name.endswith("/G") else None,
                    compression_opts=4 if name == "configs" or name.endswith("/G") else None,
                    shuffle=name == "configs" or name.endswith("/G"),
                )
        os.replace(tmp, self.path)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Update file attributes (e.g. cumulative CPU-seconds, acceptance) after a chunk."""
        with h5py.File(self.path, "a") as f:
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else v

    def n_saved(self) -> int:
        with h5py.File(self.path, "r") as f:
            return int(f.attrs["n_saved"])

    def truncate(self, n_rows: int) -> None:
        """Drop rows beyond ``n_rows`` (rows written after the last checkpoint)."""
        with h5py.File(self.path, "a") as f:
            for name in self.specs:
                if f[name].shape[0] > n_rows:
                    f[name].resize(n_rows, axis=0)
            if "chunk_index" in f:
                idx = f["chunk_index"][:]
                keep = int((idx[:, 1] <= n_rows).sum()) if len(idx) else 0
                f["chunk_index"].resize(keep, axis=0)
            f.attrs["n_saved"] = min(int(f.attrs["n_saved"]), n_rows)

    def append(self, rows: Mapping[str, np.ndarray]) -> int:
        """Append a block of rows (each array ``(k, n_chains, *shape)``); returns the new n_saved."""
        missing = set(self.specs) - set(rows)
        if missing:
            raise ValueError(f"append: missing datasets {sorted(missing)}")
        ks = {name: np.asarray(a).shape[0] for name, a in rows.items()}
        k = next(iter(ks.values()))
        if any(v != k for v in ks.values()):
            raise ValueError(f"append: inconsistent row counts {ks}")
        with h5py.File(self.path, "a") as f:
            n0 = int(f.attrs["n_saved"])
            crc = 0
            for name in sorted(self.specs):
                d = f[name]
                block = np.ascontiguousarray(np.asarray(rows[name], dtype=d.dtype))
                d.resize(n0 + k, axis=0)
                d[n0 : n0 + k] = block
                crc = zlib.crc32(block.tobytes(), crc)
            if "chunk_index" in f:
                ci = f["chunk_index"]
                m = ci.shape[0]
                ci.resize(m + 1, axis=0)
                ci[m] = (n0, n0 + k, crc)
            f.flush()
            f.attrs["n_saved"] = n0 + k
            f.flush()
        return n0 + k


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
        self.observable_names = obs
        self.extra_names = sorted(
            n for n in names if n not in ("configs", "action", "accepted", "observables", "chunk_index")
        )
        self.lattice_shape = tuple(int(n) for n in self.attrs["lattice_shape"])
        self.n_chains = int(self.attrs["n_chains"])

    @property
    def config_text(self) -> str:
        return str(self.attrs.get("config", ""))

    def _read(self, name: str, rows: slice | None = None) -> np.ndarray:
        rows = rows or slice(None)
        start, stop, step = rows.indices(self.n_saved)
        with h5py.File(self.path, "r") as f:
            if name not in f:
                raise DataFileError(f"{self.path}: dataset '/{name}' is missing.")
            return f[name][start:stop:step]

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
        idx = f["chunk_index"][:]
        expect = 0
        for start, stop, crc in idx:
            if stop > n:
                continue  # written after the last commit: not part of the file's content
            if start != expect:
                problems.append(f"{sf.path}: chunk index gap: rows {expect}..{start} not covered")
            data_crc = 0
            for name in sorted(names):
                block = np.ascontiguousarray(f[name][start:stop])
                data_crc = zlib.crc32(block.tobytes(), data_crc)
            if data_crc != crc:
                problems.append(f"{sf.path}: rows {start}..{stop}: checksum mismatch (data changed or damaged)")
            expect = stop
        if expect != n:
            problems.append(f"{sf.path}: chunk index covers {expect} rows, n_saved = {n}")
        act = f["action"][:n]
        if not np.isfinite(act).all():
            problems.append(f"{sf.path}: non-finite values in /action")
    return problems
