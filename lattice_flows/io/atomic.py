"""Atomic file replacement: write under a temporary name, fsync, rename, fsync the folder.

A reader (or a process restarted after a kill or a power cut) sees the old or the new file,
never a mixture: ``os.replace`` is atomic on POSIX file systems.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
