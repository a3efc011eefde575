"""Rows of a production run collected in memory until a chunk is complete (then one commit).

A row is ``{dataset: (n_chains, ...)}``. Its arrays may be torch tensors on the chains' device
(the producers' configurations and observables) or numpy arrays (flags known on the host): the
buffer keeps them where they are and :meth:`RowBuffer.take` stacks each dataset once, on its
device, with a single device->host copy per dataset and chunk, instead of one copy per row (a
``.cpu()`` per saved row is a host synchronisation per trajectory with ``save_every: 1``).
Stacking on the device and then copying gives the same bytes as copying each row and stacking
on the host.

A tensor added here must not be modified in place afterwards (the buffer keeps a reference,
not a copy); the producers add fresh tensors (results of operations) or clone.
"""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


class RowBuffer:
    """Collects per-row arrays (numpy, or torch tensors on any device) until a chunk is
    complete."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Array]] = {}
        self.n = 0

    def add(self, row: dict[str, Array]) -> None:
        for k, v in row.items():
            self.rows.setdefault(k, []).append(v)
        self.n += 1

    def take(self) -> dict[str, np.ndarray]:
        """The buffered rows, ``{dataset: (n_rows, n_chains, ...)}`` as numpy arrays; empties
        the buffer."""
        out = {k: _stack(v) for k, v in self.rows.items()}
        self.rows, self.n = {}, 0
        return out


def _stack(values: list[Array]) -> np.ndarray:
    """One dataset's rows stacked: tensors on their device, then one copy to the host."""
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([v.detach() for v in values]).cpu().numpy()
    return np.stack([v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
                     for v in values])
