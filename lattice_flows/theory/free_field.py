"""Exact results of the free field (lam = 0, m2 > 0), docs/conventions.md "Exact free-field results".

p(phi) ∝ exp(-phi^T K phi), K = -Laplacian + m2, so Cov = (2K)^-1 and

    G(y) = (1/(2V)) sum_p e^{i p.y} / (m2 + sum_mu 4 sin^2(p_mu/2)),   p_mu = 2 pi n_mu / L_mu
    chi2 = 1/(2 m2),    <S> = V/2,    log Z = (V/2) log(pi) - (1/2) sum_p log(m2 + phat^2).
"""

from __future__ import annotations

import math

import torch


def phat2(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Lattice momenta squared, sum_mu 4 sin^2(p_mu/2), on the full momentum grid."""
    grids = torch.meshgrid(
        *[2 * math.pi * torch.arange(n, dtype=dtype) / n for n in shape], indexing="ij"
    )
    return sum(4.0 * torch.sin(p / 2) ** 2 for p in grids)


def exact_two_point(shape: tuple[int, ...], m2: float) -> torch.Tensor:
    """Exact G(y) on the lattice ``shape`` (float64, shape ``shape``)."""
    if m2 <= 0:
        raise ValueError("the free field needs m2 > 0")
    g = 1.0 / (2.0 * (m2 + phat2(shape)))
    return torch.fft.ifftn(g).real


def exact_susceptibility(m2: float) -> float:
    """chi2 = 1 / (2 m2)."""
    return 1.0 / (2.0 * m2)


def exact_log_z(shape: tuple[int, ...], m2: float) -> float:
    """log Z = integral of exp(-phi^T K phi) = (V/2) log(pi) - (1/2) log det K."""
    V = math.prod(shape)
    return 0.5 * V * math.log(math.pi) - 0.5 * float(torch.log(m2 + phat2(shape)).sum())
