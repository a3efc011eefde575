"""What every conditioner shares: activations, parity checks, bounded channels, row chunks.

A conditioner (:mod:`lattice_flows.flows.nets`, :mod:`lattice_flows.flows.global_kernel`) maps
the frozen sites, shape ``(batch, L_1, ..., L_d)``, to parameter fields ``(batch, n_out, L...)``
with a parity +1 (even) or -1 (odd) per output channel under phi -> -phi; bounded channels are
mapped to ``scale_c * tanh(p_c)`` (:func:`bound_channels`). Rows are independent, so large
batches may run in chunks (:func:`chunk_rows`, :func:`in_chunks`) without changing the result.
Chunking is a CPU cache workaround (oneDNN convolutions slow down once a call's tensors leave
the cache; figures in :class:`lattice_flows.flows.nets.ConvConditioner`): on CUDA or any other
device the whole batch goes in one call, since chunks there only serialise the work.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "softsign": nn.Softsign,
}

#: activations that are odd functions exactly in floating point (a(-u) = -a(u)), as the odd
#: conditioner needs: tanh and softsign u / (1 + |u|).
ODD_ACTIVATIONS = ("tanh", "softsign")


def make_activation(name: str) -> nn.Module:
    """The activation module for ``name`` (tanh, leaky_relu, gelu, silu, relu, softsign)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"activation '{name}' is not known; allowed are {', '.join(_ACTIVATIONS)}"
        ) from None


def check_parities(parities: Sequence[int], bounded: Sequence[bool]) -> None:
    """Refuse parities other than +1/-1 per output channel, or a ``bounded`` of another length."""
    if len(parities) != len(bounded) or any(p not in (1, -1) for p in parities):
        raise ValueError(
            f"parities {tuple(parities)} must be +1/-1 per output channel and match "
            f"bounded {tuple(bounded)} in length"
        )


def chunk_rows(shape: Sequence[int], max_rows: int, max_sites: int) -> int:
    """Rows per conditioner call on lattice ``shape``: at most ``max_rows`` and at most
    ``max_sites`` lattice sites in all (at least one row)."""
    return max(1, min(max_rows, max_sites // math.prod(shape)))


def in_chunks(fn, x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """fn(x) evaluated on at most ``max_rows`` rows at a time on the CPU (rows are
    independent); on any other device (CUDA: chunks would serialise the kernels) in one call."""
    if x.shape[0] <= max_rows or x.device.type != "cpu":
        return fn(x)
    return torch.cat([fn(c) for c in x.split(max_rows)], dim=0)


def as_one_channel(x_frozen: torch.Tensor, ndim: int) -> torch.Tensor:
    """(batch, L_1..L_d) -> (batch, 1, L_1..L_d), refusing any other shape."""
    if x_frozen.dim() != ndim + 1:
        raise ValueError(
            f"expected a batch of shape (batch, L_1..L_{ndim}), got {tuple(x_frozen.shape)}"
        )
    return x_frozen.unsqueeze(1)


def bound_channels(
    p: torch.Tensor, bounded: Sequence[bool], scale: torch.Tensor | None
) -> torch.Tensor:
    """Map the bounded channels c of ``p`` (batch, n_out, L...) to scale_k * tanh(p_c).

    tanh is odd, so an even channel stays even and an odd one odd; tanh(0) = 0 keeps a
    zero-initialised conditioner the identity.
    """
    if scale is None:
        return p
    channels = list(p.unbind(1))
    k = 0
    for c, is_bounded in enumerate(bounded):
        if is_bounded:
            channels[c] = scale[k] * torch.tanh(channels[c])
            k += 1
    return torch.stack(channels, dim=1)
