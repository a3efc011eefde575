"""A coupling conditioner with a global receptive field: lattice-sized kernels in p^2, by FFT.

``flow.conditioner: global``. The local conditioners (:mod:`lattice_flows.flows.nets`) see a
few sites per layer; here every active site sees every frozen site through a handful of
parameters per kernel, as in the continuous equivariant flow of Gerdes et al.
(arXiv:2207.00283), but inside a checkerboard affine coupling. The kernel IS the mixing: there
is no local conv net in this conditioner.

With x the frozen sites (active sites set to zero, :mod:`lattice_flows.flows.coupling`):

1. Single-site features, odd or even under x -> -x, all zero where x = 0 (so only frozen sites
   contribute)::

       odd  u_0 = x,          u_j = sign(x) sin(omega_j |x|)         j = 1..n_freq
       even v_0 = x^2,        v_j = 1 - cos(omega_j |x|)

   with learnable frequencies omega_j (shared by the odd and even maps). x carries the linear
   (Gaussian) part; sin(omega x) the odd response bounded for large |x| (the anchor's choice);
   x^2 is the local magnitude that the quartic term couples to, 1 - cos(omega x) its bounded
   version (a smooth even function, unlike |x|, and 0 at x = 0). Written with |x| and sign(x),
   each feature is exactly odd/even in IEEE arithmetic.

2. Periodic convolutions with lattice-sized kernels, evaluated by FFT, odd features into odd
   hidden channels and even into even ones::

       h_odd_c  = sum_f K_cf^odd  * u_f,      h_even_c = sum_f K_cf^even * v_f + b_c
       K~_cf(p) = a_cf0 phat^2 + sum_n a_cfn mu_n^2 / (phat^2 + mu_n^2)

   phat^2 = sum_mu 4 sin^2(p_mu / 2) (docs/conventions.md). phat^2 is the nearest-neighbour
   Laplacian (real space 2d at 0, -1 at the neighbours: the local part of the free-field
   conditional); mu^2 / (phat^2 + mu^2) is a lattice Yukawa kernel of range 1/mu normalised to
   unit sum. The ranges 1/mu_n are learnable (log mu_n, initialised geometrically from 1/2 to 8
   sites). Because K~ depends on p only through phat^2 it is real and even in p (a real
   symmetric kernel) and invariant under every lattice translation and every rotation and
   reflection of the hypercubic group about a site; and the same parameters define the same
   function of p at every L: on a configuration periodic with period L' < L the output is the
   period-L' output tiled (the momenta of the coarser lattice are a subset of the finer one's).

3. A small pointwise (1x1) net that keeps the parities: with e = [h_even, h_odd^2] (even)::

       g = MLP(e)                               (widths flow.hidden_channels, flow.activation)
       even parameter (s):  g_s                 (even: a function of even inputs)
       odd  parameter (t):  sum_c h_odd_c (w_c + tanh(g_tc))   (odd x even = odd)

   The gates tanh(g_t) are bounded, so t stays linear in the features for large fields (an
   unbounded gate of h_odd^2 times h_odd grew like |x|^3 per layer and overflowed deep random
   stacks). Bounded channels become scale * tanh(.) as in the other conditioners. The last MLP layer and
   w start at zero, so a fresh coupling is the identity (``identity_init``).

Exactness: FFTs, sums and products of negated inputs are negated results in round-to-nearest
arithmetic, and the features are built from |x| and sign(x), so s(-x) = s(x) and
t(-x) = -t(x) exactly; the coupling stays exactly Z2-equivariant. Each batch row is
transformed on its own (FFTs act per row, no batch statistics).

Cost per call: one rfftn of 2 (1 + n_freq) feature fields and one irfftn of 2 C hidden fields
per sample (C = ``channels``), plus the 1x1 MLP; O(V log V), no 3x3 convolutions.

Example::

    >>> net = GlobalKernelConditioner(2, channels=4, hidden_channels=(8,))
    >>> net(torch.randn(5, 8, 8)).shape
    torch.Size([5, 2, 8, 8])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lattice_flows.flows.fourier import momentum_squared_grids
from lattice_flows.flows.conditioner_parts import bound_channels, check_parities, make_activation


class PhatKernelBank(nn.Module):
    """A bank of periodic convolutions with kernels K~_cf(phat^2) (see the module docstring).

        out_c = IFFT( sum_f K~_cf(p) FFT(u_f) ),
        K~_cf(p) = a_cf0 phat^2 + sum_n a_cfn mu_n^2 / (phat^2 + mu_n^2)

    Args:
        ndim: lattice dimension d.
        in_channels, out_channels: F input features, C output fields.
        ranges: initial 1/mu_n in lattice units (learnable as log mu_n).
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int,
                 ranges: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0)) -> None:
        super().__init__()
        self.ndim = ndim
        self.log_mu = nn.Parameter(torch.tensor([-math.log(r) for r in ranges]))
        n_basis = 1 + len(ranges)
        self.coef = nn.Parameter(
            torch.randn(out_channels, in_channels, n_basis) / math.sqrt(in_channels * n_basis)
        )

    def kernels(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """K~_cf(p) on the rfft grid of ``shape``: (C, F, L_1, ..., L_d // 2 + 1), real."""
        u = momentum_squared_grids(shape, device, dtype)[1]  # the rfft half grid
        mu2 = torch.exp(2 * self.log_mu).to(dtype).view(-1, *[1] * self.ndim)
        basis = torch.cat([u.unsqueeze(0), mu2 / (u + mu2)], dim=0)  # (N, grid)
        return torch.einsum("cfn,n...->cf...", self.coef.to(dtype), basis)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(batch, F, L...) -> (batch, C, L...), periodic and translation-equivariant."""
        shape = tuple(u.shape[2:])
        dims = tuple(range(2, 2 + self.ndim))
        k = self.kernels(shape, u.device, u.dtype)
        uh = torch.fft.rfftn(u, dim=dims)
        oh = torch.einsum("bf...,cf...->bc...", uh, k.to(uh.dtype))
        return torch.fft.irfftn(oh, s=shape, dim=dims)


class GlobalKernelConditioner(nn.Module):
    """Exactly Z2-equivariant conditioner whose only spatial mixing is a lattice-sized kernel.

    Args:
        ndim: lattice dimension d (any d >= 1).
        channels: C odd and C even hidden fields from the kernel bank.
        hidden_channels: widths of the pointwise MLP (may be empty: then s = linear in e).
        activation: MLP activation (any; the MLP only sees even inputs).
        n_freq: number of learnable frequencies omega_j (initialised 0.5, 1, 2, ...).
        parities: +1 (even) / -1 (odd) per output parameter; default (s, t) of the affine map.
        bounded: per output, map p -> scale * tanh(p).
        identity_init: start as the identity coupling (last MLP layer and w at zero).
        local: optional local conditioner (ablation ``flow.conditioner: global_local``) with
            outputs of the same parities, unbounded; its output is added before the bounds:
            p = bound(p_global + p_local).
    """

    equivariant = True

    def __init__(
        self,
        ndim: int,
        channels: int = 8,
        hidden_channels: Sequence[int] = (16,),
        activation: str = "silu",
        n_freq: int = 3,
        parities: Sequence[int] = (1, -1),
        bounded: Sequence[bool] = (True, False),
        identity_init: bool = True,
        local: nn.Module | None = None,
    ) -> None:
        super().__init__()
        check_parities(parities, bounded)
        self.local = local
        if channels < 1 or n_freq < 0:
            raise ValueError(f"channels must be >= 1 and n_freq >= 0, got {channels}, {n_freq}")
        self.ndim = ndim
        self.n_out = len(parities)
        self.parities = tuple(int(p) for p in parities)
        self.bounded = tuple(bool(b) for b in bounded)
        self.channels = channels
        self.omega = nn.Parameter(torch.tensor([0.5 * 2.0**j for j in range(n_freq)]))
        n_feat = 1 + n_freq
        self.odd_bank = PhatKernelBank(ndim, n_feat, channels)
        self.even_bank = PhatKernelBank(ndim, n_feat, channels)
        self.even_bias = nn.Parameter(torch.zeros(channels))
        self.n_odd = sum(1 for p in self.parities if p == -1)
        self.n_even = self.n_out - self.n_odd
        sizes = [2 * channels, *hidden_channels, self.n_even + self.n_odd * channels]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mlp.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mlp.append(make_activation(activation))
        self.mlp = nn.Sequential(*mlp)
        self.w_odd = nn.Parameter(torch.zeros(max(self.n_odd, 1), channels))
        if identity_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        else:
            nn.init.normal_(self.w_odd, std=1.0 / math.sqrt(channels))
        n_bounded = sum(self.bounded)
        self.scale = nn.Parameter(torch.ones(n_bounded)) if n_bounded else None

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Odd and even single-site features, each (batch, 1 + n_freq, L...), exact parities."""
        a = x.abs().unsqueeze(1)
        om = self.omega.to(x.dtype).view(1, -1, *[1] * self.ndim)
        sign = torch.sign(x).unsqueeze(1)
        odd = torch.cat([x.unsqueeze(1), sign * torch.sin(om * a)], dim=1)
        even = torch.cat([a * a, 1 - torch.cos(om * a)], dim=1)
        return odd, even

    def forward(self, x_frozen: torch.Tensor) -> torch.Tensor:
        """Parameters, shape ``(batch, n_out, L_1, ..., L_d)``, from ``(batch, L_1, ..., L_d)``."""
        if x_frozen.dim() != self.ndim + 1:
            raise ValueError(
                f"expected a batch of shape (batch, L_1..L_{self.ndim}), got {tuple(x_frozen.shape)}"
            )
        u, v = self.features(x_frozen)
        h_odd = self.odd_bank(u)  # (B, C, L...)
        h_even = self.even_bank(v) + self.even_bias.to(v.dtype).view(1, -1, *[1] * self.ndim)
        e = torch.cat([h_even, h_odd * h_odd], dim=1).movedim(1, -1)  # (B, L..., 2C)
        g = self.mlp(e).movedim(-1, 1)  # (B, n_even + n_odd C, L...)
        g_even, g_odd = g[:, : self.n_even], g[:, self.n_even:]
        outs_even = iter(g_even.unbind(1))
        gates = g_odd.reshape(g.shape[0], self.n_odd, self.channels, *g.shape[2:])
        outs_odd = iter(
            ((self.w_odd[k].view(-1, *[1] * self.ndim) + torch.tanh(gates[:, k])) * h_odd).sum(1)
            for k in range(self.n_odd)
        )
        p = torch.stack(
            [next(outs_odd) if par == -1 else next(outs_even) for par in self.parities], dim=1
        )
        if self.local is not None:
            p = p + self.local(x_frozen)
        return bound_channels(p, self.bounded, self.scale)
