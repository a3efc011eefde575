"""Graceful stop on SIGTERM (what SLURM sends at the time limit) and SIGINT.

Long loops call :func:`stop_requested` between steps; when it is true they write what they hold
(chunk + checkpoint) and raise :class:`StopRequested`, which the CLI turns into exit code 143
(SIGTERM) or 130 (SIGINT) with a message saying how to resume. A second signal of the same kind
falls back to the default action (immediate termination), so a stuck process can still be
killed.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_requested: dict[str, int | None] = {"signum": None}


class StopRequested(RuntimeError):
    """A stop signal arrived; the run checkpointed and can be resumed by rerunning it."""

    def __init__(self, signum: int, where: str) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after a clean checkpoint in {where}; rerun the same "
                         "command to resume.")


def stop_requested() -> int | None:
    """The signal number if a stop was requested, else None."""
    return _requested["signum"]


def _handler(signum, frame) -> None:  # noqa: ARG001
    _requested["signum"] = signum
    signal.signal(signum, signal.SIG_DFL)  # a second signal terminates at once


@contextmanager
def graceful_stop():
    """Install the handlers for the duration of a command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _requested["signum"] = None
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested["signum"] = None
