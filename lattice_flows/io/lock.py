"""A run-folder lock: one process at a time writes a run folder.

The lock is a file created with O_EXCL holding ``host pid``. A lock left by a killed process on
the same host (its pid no longer alive) is stale and is cleared; a lock from another host is
respected (we cannot see its processes) and the error says how to clear it by hand.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another process holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Context manager holding ``<run_dir>/.lock`` for one process."""

    def __init__(self, run_dir: str | Path, name: str = ".lock") -> None:
        self.path = Path(run_dir) / name
        self.held = False

    def acquire(self) -> None:
        host = socket.gethostname()
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    text = self.path.read_text().split()
                    other_host, other_pid = text[0], int(text[1])
                except (OSError, IndexError, ValueError):
                    other_host, other_pid = "", -1
                if other_host == host and (other_pid == os.getpid() or not _alive(other_pid)):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise RunLockedError(
                    f"{self.path.parent}: the run folder is in use by process {other_pid} on "
                    f"host '{other_host}' (lock file {self.path}). If that process is gone, "
                    "delete the lock file and rerun."
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{host} {os.getpid()}\n")
            self.held = True
            return
        raise RunLockedError(f"{self.path}: could not acquire the run-folder lock.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
