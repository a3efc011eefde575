"""The three clocks of a run's cost: CPU-, wall- and device-seconds, each labelled.

* ``cpu_s``: CPU time of the process (``time.process_time()``: all its threads, user + system);
* ``wall_s``: elapsed time (``time.perf_counter()``);
* ``device_s``: the time the run held its compute device: on a CPU the CPU-seconds (the cores the
  process used), on a GPU the wall-seconds (one GPU per rank, held the whole time).

Summed over MPI ranks, ``device_s`` is what a cluster bills: GPU-seconds for GPU runs,
core-seconds for CPU runs. Costs compare like with like only on the same kind of device
(:attr:`Clock.device_kind`, e.g. ``cpu`` or ``cuda:NVIDIA H200``): a CPU-second and a
GPU-second are different currencies.

A :class:`Clock` reads the three at once; on CUDA it first waits for the work queued on its device
(``torch.cuda.synchronize``), so a reading counts the work launched before it. Read it at commit
and record points, not inside hot loops: the wait is a host-device synchronisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

#: the labels of the three clocks in files, records and tables
CLOCKS = ("cpu_s", "wall_s", "device_s")
CLOCK_UNITS = {"cpu_s": "CPU-s", "wall_s": "wall-s", "device_s": "device-s"}


@dataclass(frozen=True)
class Seconds:
    """A reading of the three clocks (seconds)."""

    cpu_s: float
    wall_s: float
    device_s: float

    def __add__(self, other: "Seconds") -> "Seconds":
        return Seconds(self.cpu_s + other.cpu_s, self.wall_s + other.wall_s,
                       self.device_s + other.device_s)

    def as_dict(self) -> dict[str, float]:
        return {"cpu_s": self.cpu_s, "wall_s": self.wall_s, "device_s": self.device_s}

    @classmethod
    def from_dict(cls, d: dict, default: float = 0.0) -> "Seconds":
        """From ``{cpu_s, wall_s, device_s}``; a clock missing (files of older versions, which
        recorded only ``cpu_s``) reads ``default``."""
        return cls(*(float(d.get(k, default)) for k in CLOCKS))


ZERO = Seconds(0.0, 0.0, 0.0)


def device_kind(device: torch.device) -> str:
    """``cpu`` or ``cuda:<GPU name>``: the currency of a run's device-seconds."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


class Clock:
    """Seconds used since the clock started, plus ``base`` (the seconds of earlier processes of
    the same run, from a checkpoint)."""

    def __init__(self, device: torch.device | str = "cpu", base: Seconds = ZERO) -> None:
        self.device = torch.device(device)
        self.device_kind = device_kind(self.device)
        self.base = base
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    def read(self) -> Seconds:
        """The three clocks now (waits for queued device work first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        cpu = time.process_time() - self._cpu0
        wall = time.perf_counter() - self._wall0
        dev = wall if self.device.type == "cuda" else cpu
        return self.base + Seconds(cpu, wall, dev)
