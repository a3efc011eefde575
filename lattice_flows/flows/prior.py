"""The base density of the flow: independent standard normals on every lattice site.

    log r(z) = sum_x [ -z(x)^2 / 2 - log(2 pi) / 2 ]

The sum over sites is accumulated in float64 whatever the dtype of z (at V = 4096 and beyond a
float32 total has a rounding error far above that of the per-site terms; docs/conventions.md,
"Statistics": log w in float64), so ``log_prob`` returns float64.

A batch has shape ``(batch, L_1, ..., L_d)`` (docs/conventions.md, "Lattice"). ``log_prob`` reads the
lattice shape from its argument, so the same prior object serves every lattice size.

Example::

    >>> prior = StandardNormalPrior((4, 4))
    >>> z = prior.sample(3)
    >>> z.shape, prior.log_prob(z).shape
    (torch.Size([3, 4, 4]), torch.Size([3]))
"""

from __future__ import annotations

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StandardNormalPrior:
    """N(0, 1) independently on each site of a lattice of shape ``lattice_shape``.

    Args:
        lattice_shape: default extents (L_1, ..., L_d) for :meth:`sample`.
    """

    def __init__(self, lattice_shape: tuple[int, ...] | list[int]) -> None:
        self.lattice_shape = tuple(int(n) for n in lattice_shape)
        if not self.lattice_shape or any(n <= 0 for n in self.lattice_shape):
            raise ValueError(f"lattice_shape must be positive extents, got {lattice_shape!r}")

    @property
    def ndim(self) -> int:
        return len(self.lattice_shape)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        lattice_shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Draw ``z`` of shape ``(n, *lattice_shape)``; ``lattice_shape`` overrides the default."""
        shape = self.lattice_shape if lattice_shape is None else tuple(lattice_shape)
        return torch.randn((n, *shape), generator=generator, device=device, dtype=dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log r(z) summed over all sites in float64, shape ``(batch,)``."""
        dims = tuple(range(1, z.dim()))
        n_sites = math.prod(z.shape[1:])
        return -0.5 * (z * z).sum(dim=dims, dtype=torch.float64) - n_sites * _HALF_LOG_2PI
