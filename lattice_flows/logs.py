"""Logging setup: messages that say what runs where, to stderr and to the run folder."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

#: the package logger: every module logs through it; :func:`setup_logging` gives it its handlers
log = logging.getLogger("lattice_flows")


class _QuietFileHandler(logging.FileHandler):
    """A run-folder log file that stops itself (one line on stderr) when writing fails, e.g. on
    a full disk, instead of printing a traceback per message: the command then reports the
    failed write of its data with a clear error."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging API)
        log.removeHandler(self)
        sys.stderr.write(f"lattice-flows: cannot write the log file {self.baseFilename}; "
                         "logging to it stopped\n")


def setup_logging(verbose: bool = False, rank: int = 0, logfile: Path | None = None) -> None:
    """Configure the ``lattice_flows`` logger; messages carry host and rank."""
    logger = log
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter(
        f"%(asctime)s {socket.gethostname()}:{os.getpid()} r{rank} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # replace the handlers of an earlier call (another run folder, a closed stream)
    for old in [h for h in logger.handlers if getattr(h, "_lf", False)]:
        logger.removeHandler(old)
        old.close()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    h._lf = True  # type: ignore[attr-defined]
    if rank != 0 and not verbose:
        h.setLevel(logging.WARNING)
    logger.addHandler(h)
    if logfile is not None:
        fh = _QuietFileHandler(logfile)
        fh.setFormatter(fmt)
        fh._lf = True  # type: ignore[attr-defined]
        logger.addHandler(fh)
    logger.propagate = False
