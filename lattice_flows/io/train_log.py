"""``train.h5``: training metrics as 1-d datasets, one entry per record, appended per record.

Layout (format ``lattice_flows.train``, version 1): attrs format, format_version, config,
provenance; datasets ``step`` (int64) and one float64 dataset per metric (loss, ess,
acceptance, grad_norm, lr, steps_per_s, the clocks cpu_s, wall_s and device_s of
:mod:`lattice_flows.training.budget`, ...); at the end attrs final_ess, final_acceptance,
eval_samples, steps_done and device_kind (the currency of device_s). Logs of older versions have
no wall_s or device_s: their entries read NaN once a newer process appends. A resumed run truncates records beyond its
checkpoint, so the history equals that of an uninterrupted run.

Crash atomicity: the log is small, so every change is made to a copy in memory, written to a
temporary file, fsynced and renamed over the log. A process killed at any instant leaves the old or
the new log, both openable (HDF5 files modified in place can be left unreadable by a kill).
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from lattice_flows.io.atomic import storage_errors, tmp_path_of, write_atomic

FORMAT_NAME = "lattice_flows.train"
FORMAT_VERSION = 1


class TrainLog:
    """Append-only metric log in an HDF5 file."""

    def __init__(self, path: str | Path, attrs: Mapping[str, Any]) -> None:
        self.path = Path(path)
        stale = tmp_path_of(self.path)
        if stale.exists():
            with storage_errors(stale):
                stale.unlink()  # left by a process killed during a change
        if not self.path.exists():
            with self._change(new=True) as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["format_version"] = FORMAT_VERSION
                for k, v in attrs.items():
                    f.attrs[k] = "" if v is None else v
                f.create_dataset("step", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(256,))

    @contextmanager
    def _change(self, new: bool = False) -> Iterator[h5py.File]:
        """Apply a change to an in-memory copy of the log, write it to a temporary file and
        rename that over the log (atomic; the HDF5 library never writes to the disk itself)."""
        bio = io.BytesIO(b"" if new else self.path.read_bytes())
        with h5py.File(bio, "w" if new else "a") as f:
            yield f
        write_atomic(self.path, bio.getbuffer(), "trainlog")

    def append(self, record: Mapping[str, float]) -> None:
        with self._change() as f:
            n = f["step"].shape[0]
            for k, v in record.items():
                if k not in f:
                    f.create_dataset(k, shape=(n,), maxshape=(None,), dtype=np.float64,
                                     chunks=(256,), fillvalue=np.nan)
                    f[k][:] = np.nan
            for k in f:
                d = f[k]
                d.resize(n + 1, axis=0)
                d[n] = record.get(k, np.nan)

    def truncate_after(self, step: int) -> None:
        """Drop records with step > ``step``."""
        with h5py.File(self.path, "r") as f:
            steps = f["step"][:]
        keep = int(np.searchsorted(steps, step, side="right"))
        if keep == len(steps):
            return
        with self._change() as f:
            for k in f:
                f[k].resize(keep, axis=0)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        with self._change() as f:
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else v


def read_train_log(path: str | Path) -> dict[str, np.ndarray]:
    """All metric arrays of a ``train.h5`` (refuses files of another format)."""
    from lattice_flows.io.sample_format import DataFileError

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT_NAME:
                raise DataFileError(f"{path}: not a lattice_flows training log (attribute 'format').")
            return {k: f[k][:] for k in f}
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be opened as HDF5 ({exc}).") from None
