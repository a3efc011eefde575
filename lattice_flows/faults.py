"""Fault-injection points, used by the reliability tests to kill a real process mid-write.

``LATTICE_FLOWS_KILL_AT="<point>:<n>[:<rank>]"`` makes the process SIGKILL itself the n-th time
(counting from 1) it passes the named point, on every rank or on the given MPI rank only. The
points sit inside the writes a kill could damage:

* ``part``       a sample part file half written (some datasets written, others not);
* ``master``     a sample file's new index written to its temporary name, not yet renamed;
* ``merge``      parts being merged into a larger part, half copied;
* ``checkpoint`` half of a checkpoint's bytes written;
* ``trainlog``   the training log's changed copy written, not yet renamed;
* ``text.<name>`` the small text file <name> (``config.yaml``, ``train_summary.json``,
                 ``analysis.json``, ...) written to its temporary name, not yet renamed.

When the variable is unset (always, outside tests) a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("LATTICE_FLOWS_KILL_AT", "")
_counts: dict[str, int] = {}


def _rank() -> int:
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``LATTICE_FLOWS_KILL_AT`` selects this passage."""
    if not _SPEC:
        return
    point, _, rest = _SPEC.partition(":")
    if point != name:
        return
    n, _, rank = rest.partition(":")
    if rank and int(rank) != _rank():
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_NAN_SPEC = os.environ.get("LATTICE_FLOWS_NAN_AT", "")


def nan_injected(name: str) -> bool:
    """True on the passages of ``name`` listed in ``LATTICE_FLOWS_NAN_AT="<point>:<n>[,<n>...]"``
    (counting from 1); the caller then poisons its numbers with NaN or inf. Points:
    ``train_loss`` (the loss of a training step), ``train_grad`` (a gradient after backward),
    ``proposal`` (log q of the first proposal of a batch). Unset: one comparison."""
    if not _NAN_SPEC:
        return False
    point, _, rest = _NAN_SPEC.partition(":")
    if point != name:
        return False
    key = "nan:" + name
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key] in {int(n) for n in rest.split(",") if n}
