"""The allocator setting of lattice_flows.malloc: set on Linux/glibc, idempotent, harmless, and
observably in effect (glibc's ``mallinfo2``: ``hblkhd`` counts bytes in mmapped blocks,
``arena`` the bytes of the main heap obtained with sbrk, ``uordblks`` the heap bytes in use).

With glibc's defaults a 16 MiB ``malloc`` is served by a fresh ``mmap`` (the threshold starts at
128 KiB) and handed back on ``free``. After :func:`keep_freed_memory` the same block must come
from the heap (mmap threshold fixed at 32 MiB) and stay there after ``free`` (trim threshold
1 GiB); a 40 MiB block, above glibc's maximum threshold, is still mapped. Each case runs in a
fresh process so no earlier allocation has moved glibc's dynamic threshold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import subprocess
import sys

import pytest

BLOCK = 16 << 20  # below MMAP_THRESHOLD (32 MiB)
BIG = 40 << 20  # above it

_PROBE = r"""
import ctypes, ctypes.util, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
mode, size = sys.argv[1], int(sys.argv[2])
if mode == "setup":
    from lattice_flows.malloc import keep_freed_memory
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
elif mode == "mmap_only":  # the mmap threshold alone, glibc's default trim threshold
    from lattice_flows.malloc import MMAP_THRESHOLD
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    assert libc.mallopt(-3, MMAP_THRESHOLD) == 1
def info():
    m = libc.mallinfo2()
    return {"arena": m.arena, "hblkhd": m.hblkhd, "uordblks": m.uordblks}
out = {"before": info()}
p = libc.malloc(size)
ctypes.memset(p, 1, size)
out["allocated"] = info()
libc.free(p)
out["freed"] = info()
print(json.dumps(out))
"""


def _has_mallinfo2() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _has_mallinfo2(),
    reason="mallopt/mallinfo2 need glibc >= 2.33 (keep_freed_memory does nothing elsewhere)",
)


def _probe(mode: str, size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, str(size)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _growth(res: dict, stage: str) -> dict:
    return {k: res[stage][k] - res["before"][k] for k in ("arena", "hblkhd", "uordblks")}


@glibc_only
def test_without_the_setting_a_16_mib_block_is_mmapped():
    """The control: glibc's default serves the block by mmap (else the next test proves nothing)."""
    res = _probe("none", BLOCK)
    assert _growth(res, "allocated")["hblkhd"] >= BLOCK, res
    assert _growth(res, "freed")["hblkhd"] == 0, res  # unmapped on free


@glibc_only
def test_keep_freed_memory_serves_the_block_from_the_heap_and_keeps_it():
    res = _probe("setup", BLOCK)
    grown = _growth(res, "allocated")
    assert grown["hblkhd"] == 0 and grown["uordblks"] >= BLOCK, res  # heap, not mmap
    # not trimmed (trim threshold set): the heap keeps the bytes it grew by for the block
    assert res["freed"]["arena"] == res["allocated"]["arena"] > res["before"]["arena"], res


@glibc_only
def test_the_trim_threshold_is_what_keeps_the_freed_block():
    """The mmap threshold alone (default trim threshold): the freed top of the heap is trimmed,
    so the retention seen above comes from keep_freed_memory's trim threshold."""
    res = _probe("mmap_only", BLOCK)
    assert _growth(res, "allocated")["uordblks"] >= BLOCK, res
    # trimmed by more than the block: the top of the heap went back to the OS
    assert res["allocated"]["arena"] - res["freed"]["arena"] >= BLOCK, res


@glibc_only
def test_blocks_above_32_mib_are_still_mapped():
    res = _probe("setup", BIG)
    assert _growth(res, "allocated")["hblkhd"] >= BIG, res


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_is_harmless_for_torch():
    code = (
        "import torch\n"
        "from lattice_flows.malloc import keep_freed_memory\n"
        "assert keep_freed_memory() is True\n"
        "x = torch.randn(1024, 16, 14, 14)\n"  # a 13 MB block below the fixed mmap threshold
        "y = torch.nn.functional.silu(x)\n"
        "assert torch.isfinite(y).all()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


_ENTRY_POINTS = r"""
import json, sys
from pathlib import Path
import torch
from lattice_flows import malloc
from lattice_flows.config import config_from_dict
from lattice_flows.flows.quality import evaluate_flow
from lattice_flows.mcmc.flow_run import run_sample
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.training.trainer import train_flow
out, raw = Path(sys.argv[1]), json.loads(sys.argv[2])
cfg = config_from_dict(raw)
seen = {}
res = train_flow(cfg, progress=False)
seen["train_flow"] = malloc.keeping_freed_memory()
run_sample(cfg, progress=False)
seen["run_sample"] = malloc.keeping_freed_memory()
run_hmc(cfg, progress=False)
seen["run_hmc"] = malloc.keeping_freed_memory()
from lattice_flows.flows.flowfile import load_flow
flow = load_flow(out / "flow.pt", (4, 4), "cpu", torch.float32)
evaluate_flow(flow, Phi4Action(1.0, 0.0, 2), 64, 64, torch.Generator().manual_seed(0))
seen["evaluate_flow"] = malloc.keeping_freed_memory()
from lattice_flows.cli import main
assert main(["hmc", sys.argv[3], "--no-progress"]) == 0
seen["cli hmc"] = malloc.keeping_freed_memory()
print(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_only_entry_points_change_the_allocator(tmp_path):
    """Training, sampling, HMC and evaluation from Python leave the process's allocator alone
    (a notebook opts in with keep_freed_memory()); the CLI command sets it."""
    import yaml

    raw = {
        "lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.0}, "seed": 3, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [4], "fourier_layer": False},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "eval_samples": 64,
                  "eval_batch_size": 64},
        "sample": {"mode": "mcmc", "n_chains": 2, "n_samples": 20, "batch_size": 16},
        "hmc": {"n_chains": 2, "n_therm": 4, "n_traj": 6, "n_steps": 4, "step_size": 0.2},
        "output": {"dir": str(tmp_path / "run")},
    }
    cli_cfg = tmp_path / "cli.yaml"
    cli_cfg.write_text(yaml.safe_dump({**raw, "output": {"dir": str(tmp_path / "cli")}}))
    out = subprocess.run([sys.executable, "-c", _ENTRY_POINTS, str(tmp_path / "run"),
                          json.dumps(raw), str(cli_cfg)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"train_flow": False, "run_sample": False, "run_hmc": False,
                    "evaluate_flow": False, "cli hmc": True}, seen
