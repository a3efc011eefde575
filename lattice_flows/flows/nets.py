"""Conditioner networks: periodic CNNs that output the parameters of an element-wise bijection.

A conditioner maps the frozen sites of a configuration, shape ``(batch, L_1, ..., L_d)`` with the
active sites set to zero, to ``n_out`` parameter fields, shape ``(batch, n_out, L_1, ..., L_d)``.
The convolutions (Conv1d/2d/3d for d = 1, 2, 3, ``ConvNd`` for any d >= 4) are periodic with
'same' output size (:mod:`lattice_flows.flows.periodic_conv`: unpadded convolutions on the input
extended periodically, once or before every convolution, whichever is cheaper for the lattice),
so the net is equivariant under all lattice translations and its weights do not depend on L. There
is no batch normalisation or any other operation that mixes batch members: log q(phi) of one
sample never depends on the rest of the batch, which the exactness of independence Metropolis
requires.

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

from lattice_flows.flows.conditioner_parts import (
    ODD_ACTIVATIONS,
    as_one_channel,
    bound_channels,
    check_parities,
    chunk_rows,
    in_chunks,
    make_activation,
)
from lattice_flows.flows.periodic_conv import (
    CONV_TYPES,
    check_kernel,
    extends_once,
    make_conv,
    make_conv_net,
    periodic_convs,
    periodic_extend,
)


class ConvConditioner(nn.Module):
    """Periodic CNN conditioner, optionally exactly Z2-equivariant (see the module docstring).

    Args:
        ndim: lattice dimension d (any d >= 1; d >= 4 uses
            :class:`~lattice_flows.flows.periodic_conv.ConvNd`).
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
        check_parities(parities, bounded)
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

    #: rows per conv call ON THE CPU (any other device runs the whole batch in one call,
    #: :func:`~lattice_flows.flows.conditioner_parts.in_chunks`): oneDNN convolutions slow down
    #: sharply once a call's tensors leave the cache, so large batches run in chunks of at most
    #: ``max_rows`` rows and ``max_sites`` sites. Rows are independent, so chunking changes
    #: nothing but speed. Re-measured with torch 2.13, one thread (AMD EPYC, shared machine, A/B
    #: interleaved, median of 3): forward + backward of the ladder coupling stack (8 symmetrised
    #: affine couplings, hidden [16, 16], silu), chunked / one call = 0.94 (L = 8, batch 1024),
    #: 0.96 (8, 2048), 1.02 (16, 256), 1.07 (16, 512), 0.64 (16, 1024), 0.45 (32, 256),
    #: 0.34 (32, 512), 0.20 (32, 1024): it still pays (5x at L = 32, batch 1024) and costs at
    #: most 7 % where it does not, so the limits stay.
    max_rows = 256
    max_sites = 16384

    def _net_chunked(self, x: torch.Tensor) -> torch.Tensor:
        rows = chunk_rows(x.shape[2:], self.max_rows, self.max_sites)
        return in_chunks(self.net, x, rows)

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """Parameters, shape ``(batch, n_out, L_1, ..., L_d)``, from ``(batch, L_1, ..., L_d)``."""
        x = as_one_channel(x_frozen, self.ndim)
        if not self.equivariant:
            return torch.tanh(self._net_chunked(x))
        out = self._net_chunked(torch.cat([x, -x], dim=0))
        a, b = out.chunk(2, dim=0)
        p = (a + self.signs.to(out.dtype) * b) / 2
        return bound_channels(p, self.bounded, self.scale)


class OddConvConditioner(nn.Module):
    """Z2-equivariant periodic CNN built from odd parts: one pass instead of two.

    The symmetrised :class:`ConvConditioner` runs the net on x and on -x. Here every hidden layer
    is a convolution without bias followed by an odd activation (tanh or softsign), so the hidden
    features h(x) are odd: h(-x) = -h(x). The outputs are::

        odd channel  c:  p_c = W_c * h                 (convolution without bias: odd)
        even channel c:  p_c = V_c * (h * h) + b_c      (h * h is even)

    and bounded channels become ``scale_c * tanh(p_c)`` as in :class:`ConvConditioner`. Every step
    is exactly odd or even in IEEE arithmetic (a convolution without bias of -x sums the exactly
    negated products in the same order; tanh and softsign are odd; squares are even), so
    p_c(-x) = sign_c p_c(x) holds exactly, at half the convolutions of the symmetrised net. The
    convolutions are periodic like
    :class:`~lattice_flows.flows.periodic_conv.PeriodicConvNet` (the input extended once). The last
    convolutions start at zero (identity coupling) unless ``identity_init`` is false.
    """

    equivariant = True

    def __init__(
        self,
        ndim: int,
        hidden_channels: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        activation: str = "tanh",
        parities: Sequence[int] = (1, -1),
        bounded: Sequence[bool] = (True, False),
        identity_init: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ODD_ACTIVATIONS:
            raise ValueError(
                f"the odd conditioner needs an odd activation; '{activation}' is not one, "
                f"allowed are {', '.join(ODD_ACTIVATIONS)}"
            )
        check_parities(parities, bounded)
        if not hidden_channels:
            raise ValueError("the odd conditioner needs at least one hidden layer")
        check_kernel(kernel_size)

        def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> nn.Module:
            return make_conv(ndim, c_in, c_out, k, bias=bias)

        self.ndim = ndim
        self.n_out = len(parities)
        self.parities = tuple(int(p) for p in parities)
        self.bounded = tuple(bool(b) for b in bounded)
        sizes = [1, *hidden_channels]
        hidden: list[nn.Module] = []
        for c_in, c_out in zip(sizes[:-1], sizes[1:]):
            hidden += [conv(c_in, c_out, kernel_size, bias=False), make_activation(activation)]
        self.hidden = nn.Sequential(*hidden)
        n_odd = sum(1 for p in self.parities if p == -1)
        n_even = self.n_out - n_odd
        width = sizes[-1]
        self.out_odd = conv(width, n_odd, kernel_size, bias=False) if n_odd else None
        self.out_even = conv(width, n_even, kernel_size) if n_even else None
        if identity_init:
            for last in (self.out_odd, self.out_even):
                if last is not None:
                    nn.init.zeros_(last.weight)
                    if last.bias is not None:
                        nn.init.zeros_(last.bias)
        self.radius = (kernel_size // 2) * len(sizes)
        self.kernel_size = kernel_size
        n_bounded = sum(self.bounded)
        self.scale = nn.Parameter(torch.ones(n_bounded)) if n_bounded else None

    max_rows = ConvConditioner.max_rows
    max_sites = ConvConditioner.max_sites

    def extends_once(self, shape: Sequence[int]) -> bool:
        """Whether the input on lattice ``shape`` is extended once (as in PeriodicConvNet)."""
        last = [m for m in (self.out_odd, self.out_even) if m is not None]
        return extends_once([m for m in self.hidden if isinstance(m, CONV_TYPES)] + last[:1], shape)

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        if self.extends_once(x.shape[2:]):
            h = self.hidden(periodic_extend(x, self.radius, self.ndim))
        else:  # extend before every conv, the output convs' input by their own radius
            h = periodic_convs(list(self.hidden), x, self.ndim, once=False)
            h = periodic_extend(h, self.kernel_size // 2, self.ndim)
        odd = iter(self.out_odd(h).unbind(1)) if self.out_odd is not None else iter(())
        even = iter(self.out_even(h * h).unbind(1)) if self.out_even is not None else iter(())
        return torch.stack([next(odd) if p == -1 else next(even) for p in self.parities], dim=1)

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """Parameters, shape ``(batch, n_out, L_1, ..., L_d)``, from ``(batch, L_1, ..., L_d)``."""
        rows = chunk_rows(x_frozen.shape[1:], self.max_rows, self.max_sites)
        p = in_chunks(self._raw, as_one_channel(x_frozen, self.ndim), rows)
        return bound_channels(p, self.bounded, self.scale)
