"""Periodic convolutions in any d: valid convolutions on the input extended periodically.

A stack of circular 'same' convolutions equals the same stack of valid (unpadded) convolutions
on the input extended periodically (:func:`periodic_extend`), either once by the total receptive
radius or by kernel_size // 2 before every convolution (:func:`periodic_convs`); which is
cheaper depends on the lattice (:func:`halo_ratio`, :data:`EXTEND_ONCE_BELOW`). Conv1d/2d/3d
serve d = 1, 2, 3, :class:`ConvNd` (a sum of Conv3d calls, :func:`conv_valid`) any d >= 4.
:class:`PeriodicConvNet` and :func:`make_conv_net` build the conditioners' CNN from them
(:mod:`lattice_flows.flows.nets`); docs/flows.md for the measured costs.

Example::

    >>> net = make_conv_net(2, 1, (8,), 2, 3, "tanh", identity_init=False)
    >>> x = torch.randn(5, 1, 6, 6)
    >>> torch.allclose(net(x), net.circular_padded()(x), atol=1e-6)
    True
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lattice_flows.flows.conditioner_parts import make_activation


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
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, ConvNd)


def make_conv(ndim: int, in_channels: int, out_channels: int, kernel_size: int,
              bias: bool = True, padding: int = 0, padding_mode: str = "zeros") -> nn.Module:
    """Conv1d/2d/3d for d = 1, 2, 3 and :class:`ConvNd` for d >= 4 (stride 1, cubic kernel)."""
    if ndim in _CONVS:
        return _CONVS[ndim](in_channels, out_channels, kernel_size, padding=padding, bias=bias,
                            padding_mode=padding_mode)
    return ConvNd(ndim, in_channels, out_channels, kernel_size, padding=padding, bias=bias,
                  padding_mode=padding_mode)


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
        work += c * math.prod([n + 2 * halo for n in shape])  # a list: no graph break under torch.compile
        done += c * volume
    return work / done


#: extend the input once while :func:`halo_ratio` stays below this, else pad before every conv.
#: Measured on CPU (1 thread, forward + backward of convs 1-C-C-2, kernel 3, time extend-once /
#: pad-per-conv): 1.9 at 8^2 (C = 16, batch 64), 1.4-1.7 at 8^2 (C = 16, 32, batch 256), 2.0 at
#: 4x4x6, 1.8-2.7 at 4^3, 1.6 at 8^3 (w >= 1.45); 0.95-1.04 at 16^2, 0.95 at 32^2 (C = 32,
#: batch 16) and 64^2 (w <= 1.26). Below the threshold the nets extend once, as before.
EXTEND_ONCE_BELOW = 1.35


def extends_once(convs: Sequence[nn.Module], shape: Sequence[int]) -> bool:
    """Whether a stack of ``convs`` on lattice ``shape`` extends its input once (else before
    every conv): :func:`halo_ratio` < :data:`EXTEND_ONCE_BELOW` (read at call time)."""
    return halo_ratio(convs, shape) < EXTEND_ONCE_BELOW


def periodic_convs(layers: Sequence[nn.Module], x: torch.Tensor, ndim: int,
                   once: bool) -> torch.Tensor:
    """Apply ``layers`` (unpadded convs and element-wise modules) periodically to ``x``.

    ``once``: extend the input by the total receptive radius, then run the valid convolutions;
    otherwise extend by kernel_size // 2 right before every convolution. Both give the circular
    'same' convolution stack exactly (the same products summed per output site).
    """
    if once:
        radius = sum(m.kernel_size[0] // 2 for m in layers if isinstance(m, CONV_TYPES))
        x = periodic_extend(x, radius, ndim)
        for m in layers:
            x = m(x)
        return x
    for m in layers:
        if isinstance(m, CONV_TYPES):
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
        return extends_once([m for m in self if isinstance(m, CONV_TYPES)], shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(batch, C_in, L...) -> (batch, C_out, L...), periodic in every lattice axis."""
        once = self.extends_once(x.shape[-self.ndim:])
        return periodic_convs(list(self), x, self.ndim, once)

    def circular_padded(self) -> nn.Sequential:
        """The same net with circular 'same' padding in every convolution (the form this class
        replaces; shared weights), as the reference in tests and benchmarks."""
        layers: list[nn.Module] = []
        for m in self:
            if isinstance(m, CONV_TYPES):
                c = make_conv(self.ndim, m.in_channels, m.out_channels, m.kernel_size[0],
                              padding=m.kernel_size[0] // 2, padding_mode="circular")
                c.weight, c.bias = m.weight, m.bias
                layers.append(c)
            else:
                layers.append(m)
        return nn.Sequential(*layers)


def check_kernel(kernel_size: int) -> None:
    """Refuse even or non-positive kernel sizes ('same' padding needs an odd kernel)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size}"
        )


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
    check_kernel(kernel_size)
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
