"""The HDF5 layout of sample files (HMC chains, flow chains): format constants, fill values,
part names. Writer: :mod:`.sample_writer`; reader: :mod:`.sample_reader`; verifier:
:mod:`.sample_verify`.

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

from pathlib import Path
from typing import Any, Mapping

import numpy as np

FORMAT_NAME = "lattice_flows.samples"
FORMAT_VERSION = 2
PART_FORMAT = "lattice_flows.samples.part"
COPY_BYTES = 64 << 20  # rows copied per slice while merging or exporting
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


def chunk_rows(row_bytes: int, target: int = 1 << 20) -> int:
    """Rows per HDF5 chunk: about ``target`` bytes, 1..1024 rows."""
    return max(1, min(1024, target // max(1, row_bytes)))


def rows_in_file(attrs: Mapping[str, Any]) -> bool:
    """True when a file's datasets hold their rows themselves: version 1 (written in place) or a
    self-contained export; False for the virtual datasets over parts of version 2."""
    return int(attrs.get("format_version", 1)) < 2 or attrs.get("layout") == LAYOUT_SELF_CONTAINED


def part_name(level: int, start: int, stop: int) -> str:
    """File name of the part holding rows [start, stop) at merge level ``level``."""
    return f"L{int(level)}_{int(start):012d}-{int(stop):012d}.h5"


def parts_dir_of(path: Path) -> Path:
    """The parts folder beside a sample file: ``<name>.h5.parts``."""
    return path.with_name(path.name + ".parts")

