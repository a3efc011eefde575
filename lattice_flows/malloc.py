"""Keep freed tensor memory in the process instead of handing it back to the OS (glibc only).

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its mmap
threshold (128 KiB, raised dynamically up to 32 MiB) with fresh ``mmap`` calls and returns the
top of the heap to the OS when more than the trim threshold is free. A flow step allocates and
frees the same few-MB activations over and over, so by default each one costs fresh pages: page
faults and zeroing, counted as CPU time of the process. Measured (one thread, flow of
``configs/ladder/L8.yaml``, batch 1024): 3,300-4,200 proposals per CPU-s by default against
9,300-9,500 with the thresholds below; training steps at batch 32 gain 3-6 %.

:func:`keep_freed_memory` fixes the mmap threshold at its maximum (32 MiB) and the trim threshold
at 1 GiB with ``mallopt``. Blocks larger than 32 MiB are still mapped fresh, which is why the
conditioners evaluate large batches in chunks. The resident memory of a process then stays near
its peak instead of shrinking between steps. Outside glibc (macOS, musl) it does nothing.

It is an opt-in of the process, never done by the library: the entry points call it (the CLI's
``main`` for ``hmc``, ``train``, ``sample`` and ``run``; the benchmark scripts), so importing or
using the package from a notebook or another program leaves its allocator as it was. To get the
same speed there, opt in once::

    import lattice_flows.malloc
    lattice_flows.malloc.keep_freed_memory()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if they were set.

    Idempotent; safe to call from every entry point.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        logging.getLogger(__name__).debug("mallopt refused the thresholds; allocator unchanged")
    _done = ok
    return ok


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return _done
