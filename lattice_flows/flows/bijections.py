"""Element-wise bijections, separate from the coupling mechanism (the zuko library
separates transforms from conditioners the same way).

A bijection acts site by site on the active sites with parameters produced by a conditioner. It
declares how many parameter fields it needs (``n_params``), how each transforms under the Z2
symmetry x -> -x (``param_parities``, +1 even / -1 odd) so that the bijection is odd,
f(-x; p(-x)) = -f(x; p(x)), and which parameters the conditioner should bound
(``param_bounded``).

Affine (real NVP, Dinh et al. 2016, arXiv:1605.08803; as in Albergo et al. 2021,
arXiv:2101.08176)::

    y = x * exp(s) + t,        log|dy/dx| = s
    x = (y - t) * exp(-s),     log|dx/dy| = -s

With s even and t odd in the frozen sites the map is odd: (-x) exp(s) + (-t) = -(x exp(s) + t),
exactly in floating point.

Example::

    >>> f = AffineBijection()
    >>> x, s, t = torch.randn(3), torch.randn(3), torch.randn(3)
    >>> y, ld = f.forward(x, s, t)
    >>> torch.allclose(f.inverse(y, s, t)[0], x)
    True
"""

from __future__ import annotations

import torch
from torch import nn


class AffineBijection(nn.Module):
    """y = x * exp(s) + t per site; parameters (s, t) with s even, t odd under Z2."""

    n_params = 2
    param_parities = (1, -1)
    param_bounded = (True, False)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (y, log|dy/dx| per site) = (x exp(s) + t, s)."""
        return x * torch.exp(s) + t, s

    def inverse(
        self, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, log|dx/dy| per site) = ((y - t) exp(-s), -s)."""
        return (y - t) * torch.exp(-s), -s


BIJECTIONS: dict[str, type[nn.Module]] = {"affine": AffineBijection}


def make_bijection(name: str) -> nn.Module:
    """A fresh bijection by its config name (``FlowConfig.bijection``)."""
    try:
        return BIJECTIONS[name]()
    except KeyError:
        raise ValueError(
            f"bijection '{name}' is not known; allowed are {', '.join(BIJECTIONS)}"
        ) from None
