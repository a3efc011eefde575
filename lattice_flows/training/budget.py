"""The clocks of a training run and its time budget on one of them (``train.budget_clock``).

A training run keeps the three clocks of :mod:`lattice_flows.runtime.clock`: CPU-s of the
process, wall-s, and device-s (CPU-s on a CPU, wall-s of the held GPU on CUDA). It records all
three (``train.h5`` records, ``train.ckpt``, ``train_summary.json``); ``train.time_budget``
counts the seconds of one of them, ``train.budget_clock``:

* ``device`` (default): device-s, i.e. CPU-s on a CPU (the budget of the versions before the key
  existed) and wall-s of the GPU on CUDA;
* ``cpu``: CPU-s;  ``wall``: wall-s.

The cosine-by-budget schedule (:func:`lattice_flows.training.train_step.lr_multiplier`) uses
the same clock: ``budget_fraction = seconds used / train.time_budget``.

Resume: a checkpoint keeps ``cpu_s``, ``wall_s``, ``device_s`` and ``device_kind``; the clocks
continue from them. A checkpoint of an older version kept only ``cpu_s``: its wall-s and device-s
start from that CPU-s (device-s on a CPU *is* CPU-s, so a ``device`` budget continues exactly;
the wall-s is an estimate, close to the CPU-s of a one-thread run, below it with more threads),
and its device kind is taken as ``cpu`` (no version before the clocks ran on a GPU).

The clocks are read once per step *without* waiting for the device: the step's loss readout
(:mod:`lattice_flows.training.train_step`, one host synchronisation per step) has just waited
for it, so the reading misses at most the optimiser's update of that step.
"""

from __future__ import annotations

import time

import torch

from lattice_flows.runtime.clock import CLOCK_UNITS, ZERO, Seconds, device_kind

#: ``train.budget_clock`` -> the clock it names (a field of :class:`Seconds`)
BUDGET_CLOCKS = {"device": "device_s", "cpu": "cpu_s", "wall": "wall_s"}


class TrainClock:
    """CPU-, wall- and device-seconds of a training run since :meth:`start`, plus ``base``
    (the seconds of earlier processes of the run, from its checkpoint). Unlike
    :class:`lattice_flows.runtime.clock.Clock`, :meth:`read` never waits for the device."""

    def __init__(self, device: torch.device | str, base: Seconds = ZERO) -> None:
        self.device = torch.device(device)
        self.device_kind = device_kind(self.device)
        self.base = base
        self.start()

    def start(self) -> None:
        """Count from now (on top of ``base``)."""
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    def read(self) -> Seconds:
        """``base`` + the seconds since :meth:`start`; device-s = wall-s on CUDA, CPU-s else."""
        cpu = time.process_time() - self._cpu0
        wall = time.perf_counter() - self._wall0
        return self.base + Seconds(cpu, wall, wall if self.device.type == "cuda" else cpu)


def checkpoint_seconds(state: dict) -> tuple[Seconds, str]:
    """The clocks and device kind a training checkpoint saved; an older checkpoint (only
    ``cpu_s``) starts wall-s and device-s from its CPU-s, on device kind ``cpu`` (module
    docstring)."""
    cpu = float(state["cpu_s"])
    return Seconds.from_dict(state, default=cpu), str(state.get("device_kind", "cpu"))


def budget_used(seconds: Seconds, budget_clock: str) -> float:
    """The seconds of ``train.budget_clock`` in a reading."""
    return float(getattr(seconds, BUDGET_CLOCKS[budget_clock]))


def budget_fraction(seconds: Seconds, time_budget: float | None, budget_clock: str) -> float:
    """Seconds used / ``train.time_budget`` on its clock (0 without a budget)."""
    return budget_used(seconds, budget_clock) / time_budget if time_budget else 0.0


def budget_reached(seconds: Seconds, time_budget: float | None, budget_clock: str) -> bool:
    """Whether the budget's clock has used ``train.time_budget`` seconds (never without one)."""
    return time_budget is not None and budget_used(seconds, budget_clock) >= time_budget


def clock_label(budget_clock: str, kind: str) -> str:
    """The unit of ``train.budget_clock`` for a log line, e.g. ``device-s (CPU-s on this
    CPU)``, ``device-s (wall-s of the GPU cuda:NVIDIA H200)``, ``CPU-s``, ``wall-s``."""
    unit = CLOCK_UNITS[BUDGET_CLOCKS[budget_clock]]
    if budget_clock != "device":
        return unit
    if kind.startswith("cuda"):
        return f"{unit} (wall-s of the GPU {kind})"
    return f"{unit} (CPU-s on this CPU)" if kind == "cpu" else f"{unit} ({kind})"
