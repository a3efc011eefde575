"""Merged view of per-rank sample files: an HDF5 virtual-dataset (VDS) file.

Each rank of a parallel production writes ``<name>.rank<NNNN>.h5`` with its own chains. The
merged view ``<name>.h5`` maps them side by side along the chain axis, cut at the smallest
committed row count, so every reader and analysis sees one ensemble whose replicas are all the
chains of all ranks. The view holds no data (relative links to the rank files, resolved next to
the view): keep the folder together. Attributes: those of rank 0, with ``n_chains`` and
``n_saved`` of the view, ``merged_from`` (the rank files) and the run's cost over the ranks
(:func:`merged_seconds`: CPU- and device-seconds summed, wall-seconds the longest rank's).
Like every virtual dataset of the package the view fills what HDF5 cannot read (a missing rank
file, a lost part) with NaN (float datasets; see :func:`lattice_flows.io.sample_format.fill_value`).
``lattice-flows export`` writes the view as one self-contained file (io/export.py).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np

from lattice_flows.io.atomic import write_atomic
from lattice_flows.io.sample_format import fill_value
from lattice_flows.io.sample_reader import SampleFile


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(
        lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n != "chunk_index" else None
    )
    return names


#: cost attributes of a rank file (runtime/clock.py): summed over ranks, except wall time
SUMMED_SECONDS = ("cpu_s", "device_s", "therm_cpu_s", "therm_device_s")
LONGEST_SECONDS = ("wall_s", "therm_wall_s")


def merged_seconds(rank_attrs: list) -> dict[str, float]:
    """The cost of the whole run from its ranks' attributes: CPU- and device-seconds add up over
    the ranks (what the run used), the wall-seconds are the longest rank's (the ranks run side by
    side). A clock no rank recorded is left out."""
    out = {}
    for name in SUMMED_SECONDS + LONGEST_SECONDS:
        values = [float(a[name]) for a in rank_attrs if name in a]
        if values:
            out[name] = sum(values) if name in SUMMED_SECONDS else max(values)
    return out


def write_merged_view(out: str | Path, rank_files: list[str | Path]) -> Path:
    """Write the VDS file ``out`` over ``rank_files`` (same directory); returns its path."""
    out = Path(out)
    files = [Path(p) for p in rank_files]
    readers = [SampleFile(p) for p in files]
    n_saved = min(r.n_saved for r in readers)
    chains = [r.n_chains for r in readers]
    total = sum(chains)
    bio = io.BytesIO()  # built in memory, then committed like every sample file (io/atomic.py)
    with h5py.File(files[0], "r") as f0:
        names = _datasets(f0)
        shapes = {n: f0[n].shape[2:] for n in names}
        dtypes = {n: f0[n].dtype for n in names}
        attrs = dict(f0.attrs)
    with h5py.File(bio, "w") as out_f:
        for k, v in attrs.items():
            out_f.attrs[k] = v
        out_f.attrs["n_chains"] = total
        out_f.attrs["n_saved"] = n_saved
        out_f.attrs["rank"] = -1
        out_f.attrs["merged_from"] = [p.name for p in files]
        out_f.attrs["chains_per_rank"] = np.asarray(chains)
        for name, value in merged_seconds([r.attrs for r in readers]).items():
            out_f.attrs[name] = value
        for name in names:
            layout = h5py.VirtualLayout(shape=(n_saved, total, *shapes[name]), dtype=dtypes[name])
            c0 = 0
            for p, r, c in zip(files, readers, chains):
                with h5py.File(p, "r") as fr:
                    src_shape = fr[name].shape
                src = h5py.VirtualSource(os.path.relpath(p, out.parent), name, shape=src_shape)
                layout[:, c0:c0 + c] = src[:n_saved]
                c0 += c
            out_f.create_virtual_dataset(name, layout, fillvalue=fill_value(dtypes[name]))
    return write_atomic(out, bio.getbuffer())
