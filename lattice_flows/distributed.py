"""Multi-rank runs: the MPI world (mpi4py), per-rank devices, torch.distributed for gradients.

* Under ``mpiexec``/``srun`` (detected from the launcher's environment variables) the world is
  ``mpi4py.MPI.COMM_WORLD``; a plain process is a single-rank world and never imports mpi4py.
* The local rank (rank within the node) comes from an MPI shared-memory split; the device of a
  rank is ``cuda:<local_rank mod n_gpus>`` when CUDA is present, else the CPU.
* torch.distributed is initialised from MPI: rank 0 serves a ``TCPStore`` on a port the kernel
  picks (port 0) and broadcasts address and port, the others connect to it (no port race);
  backend ``nccl`` on CUDA (one rank per GPU), ``gloo`` on CPU. Gradients are
  all-reduced (averaged) with it, so data-parallel training with a per-rank batch of
  global_batch / n_ranks follows the single-rank trajectory of the union batch.
* Small control data (flags, RNG states, log-weights for metrics) travel through MPI.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch

_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "PMI_RANK")


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher (mpiexec, mpirun, srun with PMI)."""
    if os.environ.get("LATTICE_FLOWS_NO_MPI"):
        return False
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ \
        and "SLURM_STEP_ID" in os.environ


class World:
    """The ranks of a run. ``World.single()`` for one process; ``World.from_mpi()`` under MPI."""

    def __init__(self, comm: Any | None = None) -> None:
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            from mpi4py import MPI

            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        self._torch_dist = False
        self.store: Any | None = None  # the TCPStore of torch.distributed (init_torch_distributed)

    @classmethod
    def single(cls) -> "World":
        return cls(None)

    @classmethod
    def from_environment(cls) -> "World":
        """The MPI world when launched by MPI (and it has > 1 rank), else a single process."""
        if not launched_by_mpi():
            return cls.single()
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        return cls(comm) if comm.Get_size() > 1 else cls.single()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- control messages through MPI ------------------------------------------------------
    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def bcast(self, obj: Any) -> Any:
        return obj if self.comm is None else self.comm.bcast(obj, root=0)

    def sum(self, x: float) -> float:
        """Sum of a number over the ranks (on every rank)."""
        return float(x) if self.comm is None else float(self.comm.allreduce(float(x)))

    def all_ok(self, ok: bool) -> bool:
        """True on every rank iff ``ok`` is true on every rank."""
        if self.comm is None:
            return bool(ok)
        return bool(self.comm.allreduce(int(bool(ok)), op=_mpi_min()))

    def gather_states(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor on rank 0 (list ordered by rank); other ranks get []."""
        if self.comm is None:
            return [state]
        out = self.comm.gather(state.cpu().numpy(), root=0)
        return [torch.from_numpy(a) for a in out] if self.rank == 0 else []

    def gather_tensor(self, x: torch.Tensor) -> torch.Tensor | None:
        """Concatenation of every rank's 1-d tensor on rank 0; None on the other ranks."""
        if self.comm is None:
            return x
        out = self.comm.gather(x.detach().cpu().numpy(), root=0)
        if self.rank != 0:
            return None
        import numpy as np

        return torch.from_numpy(np.concatenate(out))

    # -- gradients through torch.distributed -----------------------------------------------
    def init_torch_distributed(self, device: torch.device, timeout_s: float = 300.0) -> None:
        """Initialise torch.distributed from MPI: backend ``nccl`` on a CUDA device (one rank per
        GPU, ``torch.cuda.set_device`` first), ``gloo`` on the CPU.

        Rendezvous without a port race: rank 0 opens the ``TCPStore`` server itself on port 0
        (the kernel picks a free port and the store keeps listening on it), then broadcasts its
        address and ``store.port`` through MPI; the other ranks connect to that store, and
        ``init_process_group(store=...)`` uses it. (The old way, a socket bound to port 0 and
        closed again before the store bound the same port, left a window in which another
        process could take the port.) ``timeout_s``: how long a rank waits for the others at the
        rendezvous (the store); collectives keep torch's default timeout.
        """
        if self.comm is None or self._torch_dist:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            device = torch.device(device)
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            self.store = self._open_store(timeout_s)
            # the collectives keep torch's default timeout (a rank may wait long for another's
            # evaluation or checkpoint); timeout_s bounds the rendezvous only
            dist.init_process_group(backend, store=self.store, rank=self.rank,
                                    world_size=self.size)
        self._torch_dist = True

    def _open_store(self, timeout_s: float) -> Any:
        """The ``TCPStore`` of the group: rank 0 serves it on a port the kernel chose (port 0),
        every rank gets ``(address, port)`` by MPI broadcast and connects as a client."""
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        store, addr, port = None, None, None
        if self.rank == 0:
            # MASTER_ADDR overrides (clusters where the hostname resolves to 127.0.1.1)
            addr = os.environ.get("MASTER_ADDR") or (
                socket.gethostbyname(socket.gethostname()) if self.size > self.local_size
                else "127.0.0.1"
            )
            # the server listens from here on: no window between choosing and binding the port;
            # wait_for_workers=False, since the workers learn the port only from the bcast below
            store = dist.TCPStore(addr, 0, self.size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            port = store.port
        addr, port = self.comm.bcast((addr, port), root=0)
        if store is None:
            store = dist.TCPStore(addr, port, self.size, is_master=False, timeout=timeout)
        return store

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if self.comm is None:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def allreduce_gradients(self, module: torch.nn.Module) -> None:
        """Average the gradients over the ranks (one flat all-reduce)."""
        if self.comm is None:
            return
        import torch.distributed as dist

        params = [p for p in module.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def close(self) -> None:
        if self._torch_dist:
            import torch.distributed as dist

            if dist.is_initialized():
                if self.comm is not None:
                    # no rank tears its gloo/NCCL group down while another still uses it (e.g.
                    # a rerun of a complete training returns before any collective): abort 6
                    self.comm.Barrier()
                dist.destroy_process_group()
                if self.comm is not None:
                    self.comm.Barrier()  # rank 0 serves the store: it goes when all are done
            self.store = None
            self._torch_dist = False


def _mpi_min():
    from mpi4py import MPI

    return MPI.MIN
