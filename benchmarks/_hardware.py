"""Shared by the benchmark scripts: the CPU model for the hardware line of their output."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The 'model name' of /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
