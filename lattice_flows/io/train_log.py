"""``train.h5``: training metrics as 1-d datasets, one entry per record, appended per record.

Layout (format ``lattice_flows.train``, version 1): attrs format, format_version, config,
provenance; datasets ``step`` (int64) and one float64 dataset per metric (loss, ess,
acceptance, grad_norm, lr, steps_per_s, ...). A resumed run truncates records beyond its
checkpoint, so the history equals that of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

FORMAT_NAME = "lattice_flows.train"
FORMAT_VERSION = 1


class TrainLog:
    """Append-only metric log in an HDF5 file."""

    def __init__(self, path: str | Path, attrs: Mapping[str, Any]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            with h5py.File(self.path, "w") as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["format_version"] = FORMAT_VERSION
                for k, v in attrs.items():
                    f.attrs[k] = "" if v is None else v
                f.create_dataset("step", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(256,))

    def append(self, record: Mapping[str, float]) -> None:
        with h5py.File(self.path, "a") as f:
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
        with h5py.File(self.path, "a") as f:
            steps = f["step"][:]
            keep = int(np.searchsorted(steps, step, side="right"))
            for k in f:
                f[k].resize(keep, axis=0)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        with h5py.File(self.path, "a") as f:
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else v


def read_train_log(path: str | Path) -> dict[str, np.ndarray]:
    """All metric arrays of a ``train.h5`` (refuses files of another format)."""
    from lattice_flows.io.hdf5 import DataFileError

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT_NAME:
                raise DataFileError(f"{path}: not a lattice_flows training log (attribute 'format').")
            return {k: f[k][:] for k in f}
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be opened as HDF5 ({exc}).") from None
