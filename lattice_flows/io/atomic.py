"""Atomic file replacement: write under a temporary name, fsync, rename, fsync the folder.

A reader (or a process restarted after a kill or a power cut) sees the old or the new file,
never a mixture: ``os.replace`` is atomic on POSIX file systems. :func:`write_atomic` is the one
way the package replaces a file (sample parts and index, checkpoints, the training log, merged
views, run-folder text files), with its fault-injection point (lattice_flows/faults.py).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lattice_flows.faults import fault_point


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, rename it to ``path`` (atomic), fsync the directory."""
    fsync_path(tmp)
    os.replace(tmp, path)
    try:
        fsync_path(path.parent)
    except OSError:  # some file systems refuse fsync on directories
        pass


class StorageError(RuntimeError):
    """A write failed (disk full, read-only or vanished folder, quota); the message names the
    path and the reason and says that the data committed before stays valid."""


def _reason(exc: OSError) -> str:
    text = str(exc)
    m = re.search(r"error message = '([^']+)'", text)  # h5py wraps the C library's errno text
    if m:
        return m.group(1)
    return exc.strerror or text


@contextmanager
def storage_errors(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a :class:`StorageError` a user can act on;
    ``cleanup`` (a temporary file of the failed write) is removed to give the space back."""
    try:
        yield
    except OSError as exc:
        if cleanup is not None:
            try:
                cleanup.unlink(missing_ok=True)
            except OSError:
                pass
        raise StorageError(
            f"{path}: cannot write ({_reason(exc)}). Everything committed before stays valid "
            "(check with 'lattice-flows info --verify'); free space or make the folder writable, "
            "then rerun the same command to resume."
        ) from None


def tmp_path_of(path: Path) -> Path:
    """The temporary name under which a new version of ``path`` is written: ``<name>.tmp``."""
    return path.with_name(path.name + ".tmp")


def write_atomic(path: Path, data: bytes | memoryview | str, fault: str | None = None,
                 torn: bool = False) -> Path:
    """Replace ``path`` by ``data`` crash-atomically and return ``path``.

    ``data`` goes to :func:`tmp_path_of` (a ``str`` as text in the locale encoding, like
    ``Path.write_text``), then :func:`commit_file` (fsync, rename, fsync the folder). ``fault``
    is the fault-injection point passed on the way (:func:`lattice_flows.faults.fault_point`):
    with ``torn`` halfway through the write (a kill leaves a torn temporary file), else after the
    whole write, before the rename (a kill leaves a complete temporary file); either way the old
    ``path`` is intact. An OSError becomes a :class:`StorageError` naming ``path``, and the
    temporary file is removed."""
    tmp = tmp_path_of(path)
    with storage_errors(path, cleanup=tmp):
        with open(tmp, "w" if isinstance(data, str) else "wb") as fh:
            if torn and fault is not None:
                fh.write(data[: len(data) // 2])
                fault_point(fault)
                fh.write(data[len(data) // 2 :])
            else:
                fh.write(data)
        if fault is not None and not torn:
            fault_point(fault)
        commit_file(tmp, path)
    return path
