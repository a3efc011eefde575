"""Checkerboard masks: plain boolean tensors, no class hierarchy.

    checkerboard(shape, parity)[x] = ((sum_mu x_mu) % 2 == parity)

A coupling layer updates the sites where its mask is True (the *active* sites) as a function of
the others (the *frozen* sites); layer k of a flow uses ``parity = k % 2``. On a periodic lattice
the pattern is consistent across the boundary only when every extent is even.

Example::

    >>> checkerboard((2, 2), 0)
    tensor([[ True, False],
            [False,  True]])
"""

from __future__ import annotations

import torch


def check_even_extents(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Return ``shape`` as a tuple; raise ValueError unless d >= 1 and every extent is even > 0."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 1:
        raise ValueError(f"lattice shape {shape} must have at least one dimension")
    if any(n <= 0 or n % 2 for n in shape):
        raise ValueError(
            f"lattice shape {shape} is not allowed: checkerboard masks need every extent even "
            "and positive (periodic boundary)"
        )
    return shape


def checkerboard(
    shape: tuple[int, ...] | list[int], parity: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean tensor of ``shape``, True where (sum_mu x_mu) % 2 == parity.

    Args:
        shape: extents (L_1, ..., L_d), d >= 1, all even.
        parity: 0 or 1.
    """
    shape = check_even_extents(shape)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    coords = torch.meshgrid(*[torch.arange(n, device=device) for n in shape], indexing="ij")
    return (sum(coords) % 2) == parity


def tile_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Extend ``mask`` periodically to ``shape``: out[x] = mask[x mod mask.shape].

    Each extent of ``shape`` must be a multiple of the corresponding extent of ``mask``. A
    checkerboard unit cell of shape (2, ..., 2) tiles to the checkerboard of the same parity on
    any lattice with even extents (this is how a flow runs at another L).
    """
    shape = tuple(shape)
    if tuple(mask.shape) == shape:
        return mask
    if len(shape) != mask.dim() or any(n % m for n, m in zip(shape, mask.shape)):
        raise ValueError(
            f"lattice shape {shape} is not allowed: a mask of shape {tuple(mask.shape)} extends "
            "periodically only to extents that are multiples of its own (even extents for a "
            "checkerboard)"
        )
    return mask.repeat(*[n // m for n, m in zip(shape, mask.shape)])
