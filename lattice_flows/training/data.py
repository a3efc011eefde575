"""Mini-batches of configurations streamed from a lattice_flows HDF5 sample file.

Only the requested rows are read for each batch (sorted row indices, one h5py read), so files
larger than memory train fine. Rows are split once into a training and a held-out validation
part (the last ``validation_fraction`` of the saved rows, for every chain), so the held-out NLL
measures generalisation rather than memorisation.

Optional Z2 augmentation: each configuration's sign is flipped with probability 1/2. The target
p(phi) = p(-phi) is exactly symmetric (CONVENTIONS.md), so this never biases the objective and
helps where the data do not tunnel (broken phase).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from lattice_flows.io.hdf5 import DataFileError, SampleFile


class ConfigurationStream:
    """Random mini-batches of configurations from ``path``.

    Args:
        path: a sample file (``hmc.h5``, ``samples.h5`` or a merged view).
        lattice_shape: the lattice the flow is trained on; a file of another shape is refused.
        generator: torch Generator (CPU) that draws the indices and sign flips (checkpointed).
        validation_fraction: share of rows held out.
        sign_flip: random Z2 sign flips.
        couplings: (m2, lam) of the run; a file with other couplings is refused.
    """

    def __init__(
        self,
        path: str | Path,
        lattice_shape: tuple[int, ...],
        generator: torch.Generator,
        validation_fraction: float = 0.1,
        sign_flip: bool = True,
        couplings: tuple[float, float] | None = None,
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

    @property
    def n_train(self) -> int:
        return self.n_train_rows * self.n_chains

    def _read(self, flat: np.ndarray, row_offset: int = 0) -> np.ndarray:
        rows, chains = np.divmod(flat, self.n_chains)
        rows = rows + row_offset
        uniq, inverse = np.unique(rows, return_inverse=True)
        with h5py.File(self.path, "r") as f:
            block = f["configs"][uniq]  # (n_unique, n_chains, *lattice)
        return block[inverse, chains]

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
