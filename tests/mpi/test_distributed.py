"""torch.distributed through :class:`lattice_flows.distributed.World`: real ``mpiexec -n 2`` ranks
(gloo on the CPU) run benchmarks/nccl_check.py, the script the device check runs with NCCL on a
GPU: init (TCPStore served by rank 0 on a kernel-chosen port, no port race), broadcast,
all-reduce, ``broadcast_parameters``, ``allreduce_gradients`` and ``close``.

The port race of the old rendezvous (rank 0 bound port 0, closed the socket, and the store bound
the port later) is tested where it lived: from the broadcast on, rank 0's port must be held
(binding it again fails with EADDRINUSE), and the process group must use that very store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.mpi.test_mpi import MPIEXEC, mpirun

CHECK = REPO / "benchmarks" / "nccl_check.py"
EXPECTED = {"backend", "store_port_held", "default_store", "broadcast", "all_reduce",
            "broadcast_parameters", "allreduce_gradients", "grad_device", "close"}


def _assert_report(path, ranks: int) -> dict:
    rep = json.loads(path.read_text())
    assert rep["backend"] == "gloo" and rep["ranks"] == ranks, rep
    assert set(rep["checks"]) == EXPECTED, rep["checks"]
    failed = [k for k, v in rep["checks"].items() if not v]
    assert not failed, f"failed checks {failed}: {rep['per_rank']}"
    assert rep["ok"] is True
    assert 1024 <= rep["store_port"] < 65536
    assert rep["hardware_line"].startswith("CPU ")
    return rep


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not on PATH")
def test_two_rank_gloo_group_init_broadcast_allreduce(tmp_path):
    out = tmp_path / "dist.json"
    mpirun(str(CHECK), "--device", "cpu", "--out", str(out), timeout=90)
    rep = _assert_report(out, ranks=2)
    assert set(rep["per_rank"]) == {"rank0", "rank1"}
    assert rep["devices"] == ["cpu", "cpu"]


def test_single_rank_group_without_a_launcher(tmp_path):
    """A one-rank group (MPI singleton, no mpiexec): the shape of the one-GPU NCCL check."""
    out = tmp_path / "dist1.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LATTICE_FLOWS_NO_MPI", None)
    proc = subprocess.run([sys.executable, str(CHECK), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = _assert_report(out, ranks=1)
    assert rep["devices"] == ["cpu"]
