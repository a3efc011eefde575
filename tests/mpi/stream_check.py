"""Which random stream does each rank of a training run draw? Run by tests/mpi/test_mpi.py::

    mpiexec -n 2 python tests/mpi/stream_check.py OUTFILE train CONFIG [--set k=v ...]

Runs the CLI (``lattice_flows.cli.main``) with the prior's ``sample`` wrapped so that every rank
records the first batch of z it draws (the first training step). Rank 0 writes OUTFILE (JSON):
per rank the sum and the first entries of that batch. Equal entries on two ranks mean the two
ranks draw the same samples, so the global batch holds duplicates.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lattice_flows.flows.prior import StandardNormalPrior  # noqa: E402

_first: list = []
_orig = StandardNormalPrior.sample


def _recording_sample(self, n, *args, **kwargs):
    z = _orig(self, n, *args, **kwargs)
    if not _first:
        _first.append([float(z.sum())] + [float(v) for v in z.reshape(-1)[:4]])
    return z


def main() -> int:
    outfile, argv = sys.argv[1], sys.argv[2:]
    StandardNormalPrior.sample = _recording_sample
    from lattice_flows import cli

    code = cli.main(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = comm.gather(_first[0] if _first else None, root=0)
    if comm.Get_rank() == 0:
        with open(outfile, "w") as fh:
            json.dump({"first_batch": rows, "exit": code}, fh)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
