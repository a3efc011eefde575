"""The scalar phi^4 action on a periodic hypercubic lattice.

Conventions (``docs/conventions.md``, section "Action", parametrization "m2-lambda")::

    S(phi) = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi(x)^2 + lam phi(x)^4 ]
    dS/dphi(x) = 2 sum_mu (2 phi(x) - phi(x+mu) - phi(x-mu)) + 2 m2 phi(x) + 4 lam phi(x)^3

S is summed over sites in float64 whatever the dtype of phi (the per-site density keeps phi's
dtype): log w = -S - log q is formed from two float64 totals of size ~V (docs/conventions.md,
"Statistics"). The force dS/dphi is per site and stays in phi's dtype.

A batch of configurations is a tensor of shape ``(batch, L_1, ..., L_d)``; the lattice axes are
the last ``d`` axes. ``torch.roll(phi, -1, dim)`` gives ``phi(x + mu)``.

Example::

    >>> import torch
    >>> S = Phi4Action(m2=-4.0, lam=8.0, ndim=2)
    >>> S(torch.zeros(3, 8, 8)).shape
    torch.Size([3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def hopping_to_standard(kappa: float, lam_hop: float, ndim: int) -> tuple[float, float]:
    """Map the hopping parametrization to (m2, lam), docs/conventions.md "Hopping parametrization".

    With phi = sqrt(kappa) * varphi::

        m2 = (1 - 2 lam_hop) / kappa - 2 d,    lam = lam_hop / kappa^2

    and S_hop(varphi) = S(phi) + const (the constant is ``lam_hop * V``).
    """
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    m2 = (1.0 - 2.0 * lam_hop) / kappa - 2.0 * ndim
    lam = lam_hop / kappa**2
    return m2, lam


def standard_to_hopping(m2: float, lam: float, ndim: int) -> tuple[float, float]:
    """Inverse of :func:`hopping_to_standard` (requires lam > 0 or the free-field limit).

    Solves lam_hop = lam kappa^2 and (m2 + 2d) kappa = 1 - 2 lam kappa^2 for kappa > 0.
    """
    a = 2.0 * lam
    b = m2 + 2.0 * ndim
    if a == 0.0:
        if b <= 0:
            raise ValueError("no hopping parametrization with kappa > 0 for these couplings")
        kappa = 1.0 / b
    else:
        kappa = (-b + (b * b + 4.0 * a) ** 0.5) / (2.0 * a)
    return kappa, lam * kappa**2


@dataclass(frozen=True)
class Phi4Action:
    """phi^4 action S(phi; m2, lam) in the "m2-lambda" convention of docs/conventions.md.

    Args:
        m2: bare mass squared m^2 (may be negative when lam > 0).
        lam: quartic coupling lambda >= 0.
        ndim: number of lattice dimensions d (the last ``ndim`` axes of a batch).
    """

    m2: float
    lam: float
    ndim: int = 2

    def _dims(self, phi: torch.Tensor) -> tuple[int, ...]:
        if phi.dim() < self.ndim + 1:
            raise ValueError(
                f"expected a batch of shape (batch, L_1..L_{self.ndim}), got {tuple(phi.shape)}"
            )
        return tuple(range(phi.dim() - self.ndim, phi.dim()))

    def __call__(self, phi: torch.Tensor) -> torch.Tensor:
        """S(phi) per configuration, shape ``(batch,)``, summed over sites in float64."""
        dims = self._dims(phi)
        kinetic = torch.zeros_like(phi)
        for mu in dims:
            kinetic = kinetic + (torch.roll(phi, -1, mu) - phi) ** 2
        phi2 = phi * phi
        density = kinetic + self.m2 * phi2 + self.lam * phi2 * phi2
        return density.sum(dim=dims, dtype=torch.float64)

    action = __call__

    def force(self, phi: torch.Tensor) -> torch.Tensor:
        """The gradient dS/dphi(x), same shape as ``phi`` (docs/conventions.md, "Force for HMC")."""
        dims = self._dims(phi)
        lap = torch.zeros_like(phi)
        for mu in dims:
            lap = lap + 2.0 * phi - torch.roll(phi, -1, mu) - torch.roll(phi, 1, mu)
        return 2.0 * lap + (2.0 * self.m2) * phi + (4.0 * self.lam) * phi**3

    def kinetic_matrix_eigenvalues(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Eigenvalues m2 + sum_mu 4 sin^2(p_mu/2) of K = -Laplacian + m2 on all momenta.

        Used by the free-field exact results (docs/conventions.md, "Exact free-field results").
        """
        grids = torch.meshgrid(
            *[2 * torch.pi * torch.arange(n, dtype=torch.float64) / n for n in shape],
            indexing="ij",
        )
        phat2 = sum(4.0 * torch.sin(p / 2) ** 2 for p in grids)
        return self.m2 + phat2
