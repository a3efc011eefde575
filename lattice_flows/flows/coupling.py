"""Coupling layer: a mask, a conditioner and an element-wise bijection.

With A the active sites (mask True) and F the frozen ones (Albergo et al. 2021,
arXiv:2101.08176; Dinh et al. 2016, arXiv:1605.08803)::

    p = conditioner(x * 1_F)                   (active sites set to zero)
    y(a) = f(x(a); p(a))  for a in A,          y(b) = x(b)  for b in F
    log|det J| = sum_{a in A} log|f'(x(a); p(a))|

The per-site log-det terms stay in the dtype of the input; their sum over the active sites is
accumulated in float64 (the layer's log-det is float64; see :mod:`lattice_flows.flows.prior`).

The Jacobian is triangular, so the log-det is exact and the inverse needs one conditioner call
(the frozen sites are unchanged). Each batch member is transformed on its own.

The stored mask may be a unit cell (e.g. the checkerboard of shape (2, ..., 2)); it is extended
periodically to the lattice of the input (:func:`~lattice_flows.flows.masks.tile_mask`), so the
layer runs at any L whose extents are multiples of the stored ones.

Example::

    >>> from lattice_flows.flows.masks import checkerboard
    >>> from lattice_flows.flows.nets import ConvConditioner
    >>> from lattice_flows.flows.bijections import AffineBijection
    >>> layer = CouplingLayer(checkerboard((2, 2), 0), ConvConditioner(2), AffineBijection())
    >>> y, logdet = layer(torch.randn(3, 4, 4))
    >>> logdet.shape
    torch.Size([3])
"""

from __future__ import annotations

import torch
from torch import nn

from lattice_flows.flows.masks import tile_mask


class CouplingLayer(nn.Module):
    """Update the active sites of ``mask_active`` by ``bijection``, parametrised by ``conditioner``.

    Args:
        mask_active: bool tensor of shape (l_1, ..., l_d); True = active (updated).
        conditioner: module mapping (batch, L...) -> (batch, bijection.n_params, L...).
        bijection: element-wise bijection with ``forward(x, *params)`` and ``inverse(y, *params)``.
    """

    def __init__(
        self, mask_active: torch.Tensor, conditioner: nn.Module, bijection: nn.Module
    ) -> None:
        super().__init__()
        if mask_active.dtype != torch.bool:
            raise ValueError(f"mask_active must be a bool tensor, got dtype {mask_active.dtype}")
        n_out = getattr(conditioner, "n_out", None)
        n_params = getattr(bijection, "n_params", None)
        if n_out is not None and n_params is not None and n_out != n_params:
            raise ValueError(
                f"conditioner outputs {n_out} parameter fields but the bijection needs {n_params}"
            )
        self.register_buffer("mask_active", mask_active.clone())
        self.conditioner = conditioner
        self.bijection = bijection

    def active_sites(self, x: torch.Tensor) -> torch.Tensor:
        """The bool mask of the updated sites, tiled to the lattice of ``x`` (batch, L...)."""
        return tile_mask(self.mask_active, tuple(x.shape[1:]))

    def _params(self, x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.conditioner(x.masked_fill(active, 0.0)).unbind(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (y, log|det dy/dx|) with the float64 log-det of shape ``(batch,)``."""
        active = self.active_sites(x)
        y_all, ld_all = self.bijection.forward(x, *self._params(x, active))
        return self.combine(x, y_all, ld_all, active)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, log|det dx/dy|) with the float64 log-det of shape ``(batch,)``."""
        active = self.active_sites(y)
        x_all, ld_all = self.bijection.inverse(y, *self._params(y, active))
        return self.combine(y, x_all, ld_all, active)

    @staticmethod
    def combine(
        old: torch.Tensor, new: torch.Tensor, ld: torch.Tensor, active: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``new`` on the active sites and ``old`` elsewhere; log-det summed over active sites
        (in float64)."""
        out = torch.where(active, new, old)
        logdet = torch.where(active, ld, torch.zeros((), dtype=ld.dtype, device=ld.device))
        return out, logdet.sum(dim=tuple(range(1, old.dim())), dtype=torch.float64)
