"""Data-parallel gradient check, run under MPI by tests/mpi/test_mpi.py::

    mpiexec -n 2 python tests/mpi/grad_check.py OUTFILE

Every rank builds the same small flow (fixed torch seed, float64) and perturbs its parameters
deterministically (the last conv of every coupling starts at zero, so without this the
couplings' gradients would be special). Rank 1 then adds garbage to its copy, which
``World.broadcast_parameters`` must overwrite with rank 0's values. A fixed batch z of
``n_ranks * B`` prior samples comes from a common seed; rank r takes rows [r B, (r+1) B).

Loss (reverse KL up to log Z, docs/conventions.md "Statistics"): mean over the local batch of
log q(phi) + S(phi), with phi, logdet = flow(z) and log q = log r(z) - logdet. After
``backward`` and ``World.allreduce_gradients`` (average over ranks) every rank holds the gradient
of the mean over the union batch, which rank 0 recomputes in one process on a fresh copy of the
flow. OUTFILE (JSON, written by rank 0): the max abs difference over all parameters, the max abs
gradient, and the max abs difference of the gradients between the ranks.
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lattice_flows.config import FlowConfig  # noqa: E402
from lattice_flows.distributed import World  # noqa: E402
from lattice_flows.flows.flow import build_flow  # noqa: E402
from lattice_flows.theory.phi4 import Phi4Action  # noqa: E402

SHAPE = (4, 4)
B = 16  # per-rank batch


def loss_of(flow, action, z: torch.Tensor) -> torch.Tensor:
    phi, logdet = flow(z)
    log_q = flow.prior.log_prob(z) - logdet
    return (log_q + action(phi)).mean()


def main(outfile: str) -> None:
    torch.set_num_threads(1)
    world = World.from_environment()
    if world.size < 2:
        raise SystemExit("grad_check.py must run under mpiexec with >= 2 ranks")
    world.init_torch_distributed(torch.device("cpu"))

    torch.manual_seed(1234)
    flow = build_flow(FlowConfig(n_layers=4, hidden_channels=(8,)), SHAPE, m2=-4.0).double()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if world.rank != 0:  # must be undone by broadcast_parameters
            for p in flow.parameters():
                p.add_(1.0)
    world.broadcast_parameters(flow)
    reference = copy.deepcopy(flow)  # rank 0's parameters, before any gradient

    action = Phi4Action(-4.0, 8.0, len(SHAPE))
    z = torch.randn((world.size * B, *SHAPE), generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64)
    local = z[world.rank * B:(world.rank + 1) * B]
    flow.zero_grad(set_to_none=True)
    loss_of(flow, action, local).backward()
    world.allreduce_gradients(flow)
    mine = torch.cat([p.grad.reshape(-1) for p in flow.parameters()])
    all_grads = world.gather_states(mine)

    if world.is_root:
        reference.zero_grad(set_to_none=True)
        loss_of(reference, action, z).backward()
        full = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
        result = {
            "max_abs_diff": float((mine - full).abs().max()),
            "max_abs_grad": float(full.abs().max()),
            "min_param_grad_norm": float(min(p.grad.norm() for p in reference.parameters())),
            "max_rank_diff": float(max((a - all_grads[0]).abs().max() for a in all_grads)),
            "n_params": int(full.numel()),
            "n_ranks": world.size,
        }
        with open(outfile, "w") as fh:
            json.dump(result, fh)
    world.barrier()
    world.close()


if __name__ == "__main__":
    main(sys.argv[1])
