"""Conditioner networks: periodic CNNs that output the parameters of an element-wise bijection.

A conditioner maps the frozen sites of a configuration, shape ``(batch, L_1, ..., L_d)`` with the
active sites set to zero, to ``n_out`` parameter fields, shape ``(batch, n_out, L_1, ..., L_d)``.
The convolutions (Conv1d/2d/3d for d = 1, 2, 3, :class:`ConvNd` for any d >= 4) are periodic
with 'same' output size (:class:`PeriodicConvNet`: unpadded convolutions on the input extended
periodically, once or before every convolution, whichever is cheaper for the lattice), so the
net is equivariant under all lattice translations and its weights do not depend on L. There
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

import math
from typing import Sequence

import torch
import torch.nn.functional as F
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


def conv_valid(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Unpadded ('valid') cross-correlation in any number d of spatial axes.

        out[b, o, x] = bias[o] + sum_{c, delta} weight[o, c, delta] * x[b, c, x + delta]

    with delta in [0, k_1) x ... x [0, k_d). d <= 3 is torch's conv1d/2d/3d; for d >= 4 the
    offsets along the first spatial axis are summed explicitly over (d-1)-dimensional valid
    convolutions of the shifted slices (recursively down to conv3d), so the cost is
    k_1 ... k_{d-3} conv3d calls on batches of B * L_1 * ... rows.
    """
    d = weight.dim() - 2
    if d <= 3:
        return (F.conv1d, F.conv2d, F.conv3d)[d - 1](x, weight, bias)
    b, c = x.shape[:2]
    k = weight.shape[2]
    n = x.shape[2] - k + 1
    out = None
    for i in range(k):
        xi = x[:, :, i:i + n].transpose(1, 2).reshape(b * n, c, *x.shape[3:])
        yi = conv_valid(xi, weight[:, :, i], None)
        out = yi if out is None else out + yi
    out = out.reshape(b, n, *out.shape[1:]).transpose(1, 2)
    if bias is not None:
        out = out + bias.view(1, -1, *[1] * d)
    return out


class ConvNd(nn.Module):
    """A d-dimensional convolution (d >= 4) with torch's Conv3d interface: cubic kernel
    ``kernel_size``, stride 1, no padding or circular padding ``padding`` on every side.

    Weights (C_out, C_in, k, ..., k) and bias are initialised as torch initialises Conv3d
    (Kaiming-uniform with a = sqrt(5), bias uniform in +-1/sqrt(fan_in)); the forward is
    :func:`conv_valid` on the padded input.

    Example::

        >>> conv = ConvNd(4, 1, 2, 3, padding=1, padding_mode="circular")
        >>> conv(torch.randn(5, 1, 4, 4, 4, 2)).shape
        torch.Size([5, 2, 4, 4, 4, 2])
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, kernel_size: int,
                 padding: int = 0, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding and padding_mode != "circular":
            raise ValueError(f"ConvNd pads circularly only (padding_mode='circular'), got "
                             f"padding={padding} with padding_mode={padding_mode!r}")
        self.ndim = ndim
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size,) * ndim
        self.padding, self.padding_mode = padding, padding_mode
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels * kernel_size**ndim)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C_in, L_1..L_d) -> (batch, C_out, L_mu + 2 padding - k + 1 ...)."""
        x = periodic_extend(x, self.padding, self.ndim)
        return conv_valid(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.ndim}d, {self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size[0]}, padding={self.padding}")


_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, ConvNd)


def make_conv(ndim: int, in_channels: int, out_channels: int, kernel_size: int,
              bias: bool = True, padding: int = 0, padding_mode: str = "zeros") -> nn.Module:
    """Conv1d/2d/3d for d = 1, 2, 3 and :class:`ConvNd` for d >= 4 (stride 1, cubic kernel)."""
    if ndim in _CONVS:
        return _CONVS[ndim](in_channels, out_channels, kernel_size, padding=padding, bias=bias,
                            padding_mode=padding_mode)
    return ConvNd(ndim, in_channels, out_channels, kernel_size, padding=padding, bias=bias,
                  padding_mode=padding_mode)


def make_activation(name: str) -> nn.Module:
    """The activation module for ``name`` (tanh, leaky_relu, gelu, silu, relu, softsign)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"activation '{name}' is not known; allowed are {', '.join(_ACTIVATIONS)}"
        ) from None


def periodic_extend(x: torch.Tensor, radius: int, ndim: int) -> torch.Tensor:
    """Extend the last ``ndim`` axes of ``x`` periodically by ``radius`` sites on each side.

    Output extent L + 2 radius per axis, entry i taken from site (i - radius) mod L, so any
    radius works, also radius > L (index_select with wrapped indices). For radius <= L the
    faces are concatenated slices instead: the same values, and on CPU 2-7x cheaper than
    index_select forward and 1.5x backward (a slice's gradient is a view, index_select's an
    index_add; measured on (170, 32, 4, 4, 6) and (256, 32, 8, 8), radius 1).
    """
    if radius == 0:
        return x
    for axis in range(x.dim() - ndim, x.dim()):
        n = x.shape[axis]
        if radius <= n:
            x = torch.cat([x.narrow(axis, n - radius, radius), x, x.narrow(axis, 0, radius)],
                          dim=axis)
        else:
            idx = torch.arange(-radius, n + radius, device=x.device) % n
            x = x.index_select(axis, idx)
    return x


def halo_ratio(convs: Sequence[nn.Module], shape: Sequence[int]) -> float:
    """Work of a conv stack on the input extended once, relative to the lattice volume.

        w = sum_j c_j prod_mu (L_mu + 2 (R - R_j)) / (V sum_j c_j),   c_j = C_in,j C_out,j

    R_j the receptive radius of convs 1..j, R = R_n: conv j then computes its output on the
    lattice plus a halo of R - R_j sites per side, where padding before every conv computes
    exactly V sites. w grows with d and falls with L: for convs 1-32-32-2 of kernel 3, 1.13 at
    32^2, 1.26 at 16^2, 1.55 at 8^2, 2.99 at 4x4x6, 1.94 at 8^3, 1.58 at 12^3.
    """
    radii = [m.kernel_size[0] // 2 for m in convs]
    total = sum(radii)
    volume = math.prod(shape)
    work = done = 0.0
    for j, m in enumerate(convs):
        c = m.in_channels * m.out_channels
        halo = total - sum(radii[: j + 1])
        work += c * math.prod(n + 2 * halo for n in shape)
        done += c * volume
    return work / done


#: extend the input once while :func:`halo_ratio` stays below this, else pad before every conv.
#: Measured on CPU (1 thread, forward + backward of convs 1-C-C-2, kernel 3, time extend-once /
#: pad-per-conv): 1.9 at 8^2 (C = 16, batch 64), 1.4-1.7 at 8^2 (C = 16, 32, batch 256), 2.0 at
#: 4x4x6, 1.8-2.7 at 4^3, 1.6 at 8^3 (w >= 1.45); 0.95-1.04 at 16^2, 0.95 at 32^2 (C = 32,
#: batch 16) and 64^2 (w <= 1.26). Below the threshold the nets extend once, as before.
EXTEND_ONCE_BELOW = 1.35


def periodic_convs(layers: Sequence[nn.Module], x: torch.Tensor, ndim: int,
                   once: bool) -> torch.Tensor:
    """Apply ``layers`` (unpadded convs and element-wise modules) periodically to ``x``.

    ``once``: extend the input by the total receptive radius, then run the valid convolutions;
    otherwise extend by kernel_size // 2 right before every convolution. Both give the circular
    'same' convolution stack exactly (the same products summed per output site).
    """
    if once:
        radius = sum(m.kernel_size[0] // 2 for m in layers if isinstance(m, _CONV_TYPES))
        x = periodic_extend(x, radius, ndim)
        for m in layers:
            x = m(x)
        return x
    for m in layers:
        if isinstance(m, _CONV_TYPES):
            x = periodic_extend(x, m.kernel_size[0] // 2, ndim)
        x = m(x)
    return x


class PeriodicConvNet(nn.Sequential):
    """Convolutions without padding applied to the input extended periodically.

    A stack of circular-padded 'same' convolutions equals the same stack of unpadded ('valid')
    convolutions applied to the input extended periodically by the receptive radius R = sum of
    kernel_size // 2 over the convolutions: every valid output at site x sees exactly the
    sites x + offsets (mod L) that the circular stack sees. Extending the one-channel input once
    is cheaper than circular padding every hidden tensor and its gradient on large 2D lattices
    (measured on CPU, forward + backward, 3 convs 1-16-16-2, batch 64: 1.2x faster at L = 16,
    2.1x at L = 32), but on small lattices and in d >= 3 the halo of R sites per side costs more
    than it saves (4x4x6: the middle conv computes 3x the volume). The net therefore extends
    once only while :func:`halo_ratio` < :data:`EXTEND_ONCE_BELOW` and otherwise extends before
    every conv (decided per lattice shape). The module is an ``nn.Sequential`` with the same
    children as before, so state dicts are unchanged.
    """

    def __init__(self, ndim: int, radius: int, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.ndim = ndim
        self.radius = radius

    def extends_once(self, shape: Sequence[int]) -> bool:
        """Whether the input of lattice ``shape`` is extended once (else before every conv)."""
        convs = [m for m in self if isinstance(m, _CONV_TYPES)]
        return halo_ratio(convs, shape) < EXTEND_ONCE_BELOW

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(batch, C_in, L...) -> (batch, C_out, L...), periodic in every lattice axis."""
        once = self.extends_once(x.shape[-self.ndim:])
        return periodic_convs(list(self), x, self.ndim, once)

    def circular_padded(self) -> nn.Sequential:
        """The same net with circular 'same' padding in every convolution (the form this class
        replaces; shared weights), as the reference in tests and benchmarks."""
        layers: list[nn.Module] = []
        for m in self:
            if isinstance(m, _CONV_TYPES):
                c = make_conv(self.ndim, m.in_channels, m.out_channels, m.kernel_size[0],
                              padding=m.kernel_size[0] // 2, padding_mode="circular")
                c.weight, c.bias = m.weight, m.bias
                layers.append(c)
            else:
                layers.append(m)
        return nn.Sequential(*layers)


def _check_kernel(kernel_size: int) -> None:
    """Refuse even or non-positive kernel sizes ('same' padding needs an odd kernel)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size}"
        )


def _check_parities(parities: Sequence[int], bounded: Sequence[bool]) -> None:
    if len(parities) != len(bounded) or any(p not in (1, -1) for p in parities):
        raise ValueError(
            f"parities {tuple(parities)} must be +1/-1 per output channel and match "
            f"bounded {tuple(bounded)} in length"
        )


def chunk_rows(shape: Sequence[int], max_rows: int, max_sites: int) -> int:
    """Rows per conditioner call on lattice ``shape``: at most ``max_rows`` and at most
    ``max_sites`` lattice sites in all (at least one row)."""
    return max(1, min(max_rows, max_sites // math.prod(shape)))


def _in_chunks(fn, x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """fn(x) evaluated on at most ``max_rows`` rows at a time (rows are independent)."""
    if x.shape[0] <= max_rows:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(max_rows)], dim=0)


def make_conv_net(
    ndim: int,
    in_channels: int,
    hidden_channels: Sequence[int],
    out_channels: int,
    kernel_size: int,
    activation: str,
    identity_init: bool = True,
) -> PeriodicConvNet:
    """Periodic CNN in -> hidden... -> out channels, activation between layers only.

    Periodic 'same' convolutions (see :class:`PeriodicConvNet`); the last convolution has zero
    weights and bias unless ``identity_init`` is false.
    """
    _check_kernel(kernel_size)
    sizes = [in_channels, *hidden_channels, out_channels]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(make_conv(ndim, c_in, c_out, kernel_size))
        if i < len(sizes) - 2:
            layers.append(make_activation(activation))
    if identity_init:
        last = layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    radius = (kernel_size // 2) * (len(sizes) - 1)
    return PeriodicConvNet(ndim, radius, *layers)


def _as_one_channel(x_frozen: torch.Tensor, ndim: int) -> torch.Tensor:
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


class ConvConditioner(nn.Module):
    """Periodic CNN conditioner, optionally exactly Z2-equivariant (see the module docstring).

    Args:
        ndim: lattice dimension d (any d >= 1; d >= 4 uses :class:`ConvNd`).
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
        _check_parities(parities, bounded)
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

    #: rows per conv call: oneDNN convolutions on CPU slow down sharply once a call's tensors
    #: leave the cache (measured: 2048 rows of 8^2 cost 6x 1024), so large batches run in
    #: chunks of at most ``max_rows`` rows and ``max_sites`` sites (256 rows of 8^2; per-site
    #: cost at 4x4x6: 0.6 us for 42 rows, 1.6 us for 682 rows; at 32^2 0.18 us for 16 rows,
    #: 0.70 us for 256). Rows are independent, so chunking changes nothing but speed.
    max_rows = 256
    max_sites = 16384

    def _net_chunked(self, x: torch.Tensor) -> torch.Tensor:
        rows = chunk_rows(x.shape[2:], self.max_rows, self.max_sites)
        return _in_chunks(self.net, x, rows)

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """Parameters, shape ``(batch, n_out, L_1, ..., L_d)``, from ``(batch, L_1, ..., L_d)``."""
        x = _as_one_channel(x_frozen, self.ndim)
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
    convolutions are periodic like :class:`PeriodicConvNet` (the input extended once). The last
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
        _check_parities(parities, bounded)
        if not hidden_channels:
            raise ValueError("the odd conditioner needs at least one hidden layer")
        _check_kernel(kernel_size)

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
        convs = [m for m in self.hidden if isinstance(m, _CONV_TYPES)] + last[:1]
        return halo_ratio(convs, shape) < EXTEND_ONCE_BELOW

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
        p = _in_chunks(self._raw, _as_one_channel(x_frozen, self.ndim), rows)
        return bound_channels(p, self.bounded, self.scale)
