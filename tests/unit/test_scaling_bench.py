"""benchmarks/scaling.py's report of what else was running: the /proc reader finds a process
that burns CPU beside the benchmark, with its CPU-seconds and command line, and not itself."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scaling  # noqa: E402


def test_busiest_others_names_a_busy_neighbour_and_not_itself():
    before = scaling.proc_cpu_ticks()
    t0 = time.perf_counter()
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.6: pass\n"
                             "print('burnt', flush=True)\ntime.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "burnt"  # 0.6 CPU-s used, however loaded
        after = scaling.proc_cpu_ticks()
        others = scaling.busiest_others(before, after, time.perf_counter() - t0, top=50)
    finally:
        busy.kill()
        busy.wait()
    mine = [o for o in others if o["pid"] == busy.pid]
    assert mine, others
    assert mine[0]["cpu_s"] >= 0.5 and "time.process_time" in mine[0]["cmdline"]
    assert 0 < mine[0]["core_share"] <= 1.0
    import os

    assert all(o["pid"] != os.getpid() for o in others)


def test_spread_is_median_min_max():
    assert scaling._spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                                "values": [3.0, 1.0, 2.0]}
