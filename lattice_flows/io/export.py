"""One self-contained sample file (``lattice-flows export``).

A production's ``<name>.h5`` holds virtual datasets over the part files in ``<name>.h5.parts/``
(a merged MPI view: over the rank files); copied alone, any HDF5 reader reads fill values (NaN)
for every row. :func:`export_sample_file` writes the rows themselves into one new file that any
HDF5 reader (h5py, h5dump, HDFView) reads whole, with no folder beside it:

* the same datasets (``/configs``, ``/action``, ``/accepted``, ``/observables/<name>``, ...),
  shapes and dtypes as the source, the rows ``[0, n_saved)`` it had committed when the export
  began (a merged view: all chains of all ranks side by side);
* the source's attributes, without ``parts_dir`` and ``merged_from``, plus ``layout =
  "self-contained"``, ``exported_from`` (the source's absolute path) and ``exported`` (UTC time);
* ``/chunk_index`` (start, stop, CRC32, 0) over blocks of rows of the export, so that
  ``lattice-flows info --verify`` checks it like any sample file.

The source is verified first (``verify_sample_file``: a damaged one is refused), the export is
written under a temporary name, verified, fsynced and renamed (io/atomic.py). Exports are read by
:class:`~lattice_flows.io.sample_reader.SampleFile` like the source, but never extended: resume and extend
the run folder, then export again.
"""

from __future__ import annotations

import datetime as _dt
import math
import zlib
from pathlib import Path

import h5py
import numpy as np

from lattice_flows.io.atomic import commit_file, storage_errors
from lattice_flows.io.sample_format import COPY_BYTES, LAYOUT_SELF_CONTAINED, DataFileError, chunk_rows
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file

#: folder of the exports of a run folder (and default folder of a file's export)
EXPORT_DIR = "export"


def export_target(source: Path, out: str | Path | None, into_folder: bool = False) -> Path:
    """Where the export of ``source`` goes: ``<folder of source>/export/<name>`` by default;
    inside ``out`` when it is a folder (or ``into_folder``: several files are exported), else
    ``out`` itself."""
    if out is None:
        return source.parent / EXPORT_DIR / source.name
    out = Path(out)
    return out / source.name if into_folder or out.is_dir() else out


def _datasets(f: h5py.File) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and name != "chunk_index":
            out[name] = (obj.shape[2:], obj.dtype)

    f.visititems(visit)
    return out


def export_sample_file(source: str | Path, out: str | Path) -> Path:
    """Write the committed rows of ``source`` (a sample file or merged view) into the
    self-contained file ``out`` (see module doc); returns ``out``."""
    source, out = Path(source), Path(out)
    sf = SampleFile(source)
    if out.exists() and out.resolve() == source.resolve():
        raise DataFileError(f"{out}: is the source file itself; export to another path.")
    problems = verify_sample_file(source)
    if problems:
        raise DataFileError(
            f"{source}: not exported, {len(problems)} problem(s) found, the first: {problems[0]}. "
            f"See 'lattice-flows info --verify {source}'."
        )
    with h5py.File(source, "r") as f:
        attrs = {k: v for k, v in f.attrs.items() if k not in ("parts_dir", "merged_from")}
        specs = _datasets(f)
    n, n_chains = sf.n_saved, sf.n_chains
    row_bytes = {k: dt.itemsize * n_chains * math.prod(sh) for k, (sh, dt) in specs.items()}
    step = max(1, COPY_BYTES // max(1, sum(row_bytes.values())))
    tmp = out.with_name(out.name + ".tmp")
    with storage_errors(out, cleanup=tmp):
        out.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["n_saved"] = n
            f.attrs["layout"] = LAYOUT_SELF_CONTAINED
            f.attrs["exported_from"] = str(source.resolve())
            f.attrs["exported"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
            for name, (shape, dtype) in specs.items():
                row = (n_chains, *shape)
                gz = name == "configs" or name.endswith("/G")
                if n == 0:
                    f.create_dataset(name, shape=(0, *row), dtype=dtype)
                    continue
                f.create_dataset(name, shape=(n, *row), dtype=dtype,
                                 chunks=(min(n, chunk_rows(row_bytes[name])), *row),
                                 compression="gzip" if gz else None,
                                 compression_opts=4 if gz else None, shuffle=gz)
            index = []
            for a in range(0, n, step):
                b, crc = min(n, a + step), 0
                for name in sorted(specs):  # the CRC order of the writer and of verify
                    block = np.ascontiguousarray(sf.read(name, slice(a, b)), dtype=specs[name][1])
                    f[name][a:b] = block
                    crc = zlib.crc32(block.tobytes(), crc)
                index.append((a, b, crc, 0))
            f.create_dataset("chunk_index", data=np.asarray(index, dtype=np.int64).reshape(-1, 4))
        problems = verify_sample_file(tmp)
        if problems:
            tmp.unlink(missing_ok=True)
            raise DataFileError(f"{out}: the export does not verify ({problems[0]}); nothing written.")
        commit_file(tmp, out)
    return out
