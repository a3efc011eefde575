"""Mini-batches of configurations from a lattice_flows HDF5 sample file.

Every read goes through :class:`~lattice_flows.io.sample_reader.SampleFile` (part by part; a merged MPI
view rank file by rank file), never through the HDF5 virtual datasets, which HDF5 silently fills
for parts it cannot open (more parts than ``ulimit -n``, README "Run folders and HDF5 output").
Configurations that fit in ``max_memory_bytes`` (default :data:`IN_MEMORY_BYTES`) are read once
and kept in memory; a larger file is read per batch, only the requested rows, through a
:class:`~lattice_flows.io.sample_reader.RowReader` that keeps the part files it holds open between
batches. Both give the same batches. Rows are split once into a training and a held-out
validation part (the last ``validation_fraction`` of the saved rows, for every chain), so the
held-out NLL measures generalisation rather than memorisation.

Optional Z2 augmentation: each configuration's sign is flipped with probability 1/2. The target
p(phi) = p(-phi) is exactly symmetric (docs/conventions.md), so this never biases the objective and
helps where the data do not tunnel (broken phase).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lattice_flows.io.sample_format import DataFileError
from lattice_flows.io.sample_reader import RowReader, SampleFile

#: configurations up to this size (bytes) are read once into memory
IN_MEMORY_BYTES = 1 << 30


class ConfigurationStream:
    """Random mini-batches of configurations from ``path``.

    Args:
        path: a sample file (``hmc.h5``, ``samples.h5`` or a merged view).
        lattice_shape: the lattice the flow is trained on; a file of another shape is refused.
        generator: torch Generator (CPU) that draws the indices and sign flips (checkpointed).
        validation_fraction: share of rows held out.
        sign_flip: random Z2 sign flips.
        couplings: (m2, lam) of the run; a file with other couplings is refused.
        max_memory_bytes: configurations up to this size are held in memory, larger files are
            read per batch (same batches either way).
    """

    def __init__(
        self,
        path: str | Path,
        lattice_shape: tuple[int, ...],
        generator: torch.Generator,
        validation_fraction: float = 0.1,
        sign_flip: bool = True,
        couplings: tuple[float, float] | None = None,
        max_memory_bytes: int = IN_MEMORY_BYTES,
    ) -> None:
        self.sf = SampleFile(path)
        self.path = self.sf.path
        if tuple(self.sf.lattice_shape) != tuple(lattice_shape):
            raise DataFileError(
                f"{self.path}: training data on lattice {tuple(self.sf.lattice_shape)} but the "
                f"flow is trained on {tuple(lattice_shape)}."
            )
        if couplings is not None:
            m2, lam = self.sf.attrs.get("m2"), self.sf.attrs.get("lam")
            if m2 is None or lam is None or not np.allclose([m2, lam], couplings, rtol=1e-9, atol=1e-12):
                raise DataFileError(
                    f"{self.path}: training data were generated at m2={m2}, lam={lam}, but the "
                    f"config has m2={couplings[0]}, lam={couplings[1]}."
                )
        n = self.sf.n_saved
        n_val = int(round(validation_fraction * n))
        self.n_train_rows = n - n_val
        if self.n_train_rows < 1:
            raise DataFileError(f"{self.path}: only {n} committed rows; not enough training data.")
        self.n_val_rows = n_val
        self.n_chains = self.sf.n_chains
        self.generator = generator
        self.sign_flip = sign_flip
        self._configs: np.ndarray | None = None
        self._reader: RowReader | None = None
        if 4 * n * self.n_chains * math.prod(self.sf.lattice_shape) <= max_memory_bytes:
            self._configs = self.sf.configs()  # (n, n_chains, *lattice) float32, read once
        else:
            self._reader = self.sf.row_reader("configs")

    @property
    def n_train(self) -> int:
        return self.n_train_rows * self.n_chains

    def _read(self, flat: np.ndarray, row_offset: int = 0) -> np.ndarray:
        rows, chains = np.divmod(flat, self.n_chains)
        rows = rows + row_offset
        if self._configs is not None:
            return self._configs[rows, chains]
        assert self._reader is not None
        uniq, inverse = np.unique(rows, return_inverse=True)
        block = self._reader.take(uniq)  # (n_unique, n_chains, *lattice)
        return block[inverse, chains]

    def close(self) -> None:
        """Close the part files a file read per batch holds open."""
        if self._reader is not None:
            self._reader.close()

    def batch(self, batch_size: int) -> torch.Tensor:
        """A training batch (float32 CPU tensor of shape (batch, *lattice))."""
        idx = torch.randint(0, self.n_train, (batch_size,), generator=self.generator).numpy()
        x = torch.from_numpy(self._read(idx))
        if self.sign_flip:
            signs = torch.randint(0, 2, (batch_size,), generator=self.generator) * 2 - 1
            x = x * signs.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return x

    def validation(self, max_configs: int = 4096) -> torch.Tensor:
        """The held-out configurations (deterministic subset, at most ``max_configs``)."""
        if self.n_val_rows == 0:
            raise DataFileError(f"{self.path}: no validation rows (validation_fraction = 0).")
        total = self.n_val_rows * self.n_chains
        flat = np.linspace(0, total - 1, min(total, max_configs)).astype(np.int64)
        return torch.from_numpy(self._read(flat, row_offset=self.n_train_rows))
