"""Conditioner networks: periodic CNNs that output the parameters of an element-wise bijection.

A conditioner maps the frozen sites of a configuration, shape ``(batch, L_1, ..., L_d)`` with the
active sites set to zero, to ``n_out`` parameter fields, shape ``(batch, n_out, L_1, ..., L_d)``.
The convolutions (Conv1d/2d/3d for d = 1, 2, 3) use circular padding and 'same' output size, so
the net is equivariant under all lattice translations and its weights do not depend on L. There
is no batch normalisation or any other operation that mixes batch members: log q(phi) of one
sample never depends on the rest of the batch, which the exactness of independence Metropolis
requires (DESIGN.md, "Traps seen in public code").

The last convolution starts at zero weights and bias, so a fresh coupling layer is the identity.

Z2 equivariance (``equivariant=True``). With out(x) the raw net and a sign per output channel
(+1 even, -1 odd, given by the bijection: for the affine map s is even and t is odd)::

    p_c(x) = ( out_c(x) + sign_c * out_c(-x) ) / 2

so p_c(-x) = sign_c * p_c(x) exactly in floating point (a + b = b + a and a - b = -(b - a) are
exact in IEEE arithmetic). x and -x go through the net in one batched call. Channels flagged
``bounded`` are then mapped to ``scale_c * tanh(p_c)`` with a learnable scale_c (initialised to
1) per layer: |s| <= |scale_c| keeps exp(s) finite in deep random stacks before training, tanh is
odd so an even channel stays even, and tanh(0) = 0 keeps the identity at initialisation.

Non-equivariant (``equivariant=False``), the published baseline of Albergo et al. 2021
(arXiv:2101.08176, tutorial "Introduction to normalizing flows for lattice field theory"): the
parameters are ``tanh(out(x))`` ("final tanh"), taken straight from the net.

Example::

    >>> net = ConvConditioner(ndim=2, hidden_channels=(8, 8), kernel_size=3)
    >>> net(torch.randn(5, 4, 4)).shape
    torch.Size([5, 2, 4, 4])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def make_activation(name: str) -> nn.Module:
    """The activation module for ``name`` (tanh, leaky_relu, gelu, silu, relu)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"activation '{name}' is not known; allowed are {', '.join(_ACTIVATIONS)}"
        ) from None


def make_conv_net(
    ndim: int,
    in_channels: int,
    hidden_channels: Sequence[int],
    out_channels: int,
    kernel_size: int,
    activation: str,
    identity_init: bool = True,
) -> nn.Sequential:
    """Circular-padded CNN in -> hidden... -> out channels, activation between layers only.

    The last convolution has zero weights and bias unless ``identity_init`` is false.
    """
    if ndim not in _CONVS:
        raise ValueError(f"conditioner nets exist for d = 1, 2, 3 dimensions, got d = {ndim}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size}"
        )
    conv = _CONVS[ndim]
    sizes = [in_channels, *hidden_channels, out_channels]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(
            conv(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular")
        )
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    if identity_init:
        last = layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


class ConvConditioner(nn.Module):
    """Periodic CNN conditioner, optionally exactly Z2-equivariant (see the module docstring).

    Args:
        ndim: lattice dimension d (1, 2 or 3).
        hidden_channels: channels of the hidden conv layers.
        kernel_size: odd kernel size.
        activation: tanh, leaky_relu, gelu, silu or relu.
        equivariant: symmetrise the outputs exactly under x -> -x (default), or use the
            non-equivariant final-tanh baseline.
        parities: per output channel +1 (even) or -1 (odd) under x -> -x; default (+1, -1) for
            the affine (s, t).
        bounded: per output channel, map p -> scale * tanh(p) (equivariant mode only); default
            (True, False) bounds s and leaves t free.
    """

    def __init__(
        self,
        ndim: int,
        hidden_channels: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        activation: str = "tanh",
        equivariant: bool = True,
        parities: Sequence[int] = (1, -1),
        bounded: Sequence[bool] = (True, False),
        identity_init: bool = True,
    ) -> None:
        super().__init__()
        if len(parities) != len(bounded) or any(p not in (1, -1) for p in parities):
            raise ValueError(
                f"parities {tuple(parities)} must be +1/-1 per output channel and match "
                f"bounded {tuple(bounded)} in length"
            )
        self.ndim = ndim
        self.n_out = len(parities)
        self.equivariant = bool(equivariant)
        self.net = make_conv_net(
            ndim, 1, tuple(hidden_channels), self.n_out, kernel_size, activation, identity_init
        )
        self.register_buffer(
            "signs",
            torch.tensor(parities, dtype=torch.get_default_dtype()).view(1, -1, *[1] * ndim),
            persistent=False,
        )
        self.bounded = tuple(bool(b) for b in bounded)
        n_bounded = sum(self.bounded) if self.equivariant else 0
        self.scale = nn.Parameter(torch.ones(n_bounded)) if n_bounded else None

    #: rows per conv call: oneDNN convolutions on CPU slow down sharply beyond ~1024 rows
    #: (measured: 2048 rows cost 6x 1024), so large sampling batches run in chunks. Rows are
    #: independent, so chunking changes nothing but speed.
    max_rows = 256

    def _net_chunked(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.max_rows:
            return self.net(x)
        return torch.cat([self.net(c) for c in x.split(self.max_rows)], dim=0)

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """Parameters, shape ``(batch, n_out, L_1, ..., L_d)``, from ``(batch, L_1, ..., L_d)``."""
        if x_frozen.dim() != self.ndim + 1:
            raise ValueError(
                f"expected a batch of shape (batch, L_1..L_{self.ndim}), "
                f"got {tuple(x_frozen.shape)}"
            )
        x = x_frozen.unsqueeze(1)
        if not self.equivariant:
            return torch.tanh(self._net_chunked(x))
        out = self._net_chunked(torch.cat([x, -x], dim=0))
        a, b = out.chunk(2, dim=0)
        p = (a + self.signs.to(out.dtype) * b) / 2
        if self.scale is None:
            return p
        channels = list(p.unbind(1))
        k = 0
        for c, is_bounded in enumerate(self.bounded):
            if is_bounded:
                channels[c] = self.scale[k] * torch.tanh(channels[c])
                k += 1
        return torch.stack(channels, dim=1)
