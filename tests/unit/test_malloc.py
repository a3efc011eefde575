"""The allocator setting of lattice_flows.malloc: set on Linux/glibc, idempotent, harmless."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_sets_the_thresholds_in_a_fresh_process():
    code = (
        "import torch\n"
        "from lattice_flows.malloc import keep_freed_memory\n"
        "assert keep_freed_memory() is True\n"
        "assert keep_freed_memory() is True\n"  # idempotent
        "x = torch.randn(1024, 16, 14, 14)\n"  # a 13 MB block below the fixed mmap threshold
        "y = torch.nn.functional.silu(x)\n"
        "assert torch.isfinite(y).all()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
