"""lattice_flows.runtime.clock: the three clocks of a run's cost, measured on real work."""

from __future__ import annotations

import time

import torch

from lattice_flows.runtime.clock import CLOCKS, Clock, Seconds, device_kind


def test_cpu_clock_counts_work_and_sleep_apart() -> None:
    """Busy work moves CPU-s and wall-s; a sleep moves wall-s only; on a CPU the device clock
    is the CPU clock; the base of earlier processes is added to every clock."""
    clock = Clock("cpu", base=Seconds(10.0, 20.0, 10.0))
    t_end = time.process_time() + 0.05
    while time.process_time() < t_end:
        pass
    busy = clock.read()
    time.sleep(0.1)
    slept = clock.read()
    assert busy.cpu_s >= 10.05 and busy.wall_s >= 20.05
    assert slept.wall_s - busy.wall_s >= 0.1
    assert slept.cpu_s - busy.cpu_s < 0.05  # a sleep uses (almost) no CPU time
    assert slept.device_s - 10.0 == slept.cpu_s - 10.0
    assert clock.device_kind == device_kind(torch.device("cpu")) == "cpu"


def test_seconds_round_trip_and_old_records() -> None:
    s = Seconds(1.0, 2.0, 3.0)
    assert Seconds.from_dict(s.as_dict()) == s
    assert tuple(s.as_dict()) == CLOCKS
    assert s + s == Seconds(2.0, 4.0, 6.0)
    old = Seconds.from_dict({"cpu_s": 5.0}, default=float("nan"))  # a file of before the clocks
    assert old.cpu_s == 5.0 and old.wall_s != old.wall_s
