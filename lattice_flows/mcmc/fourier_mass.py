"""Mass kernels M(p) of Fourier-accelerated HMC, on the real-FFT half grid of the lattice.

FA-HMC (docs/conventions.md, "Fourier-accelerated HMC") uses H = 1/2 pi^T M^-1 pi + S(phi) with
M a positive circulant operator, diagonal in momentum space with eigenvalues M(p). This module
builds M(p) (float64, shape ``rfft_shape(shape)``, i.e. the output grid of
``torch.fft.rfftn`` over the lattice axes):

* ``free``:     M(p) = 2 (phat^2 + mu^2),  phat^2 = sum_mu 4 sin^2(p_mu / 2);
* ``measured``: M(p) = 1 / G(p),  G(p) = <|phi~(p)|^2> / V the measured propagator, averaged
  over the chains, the configurations and the lattice's reflections and axis permutations.

Normalisation: S = phi^T K phi with K = -Laplacian + m^2, so the free field has G(p) = 1/(2K(p))
and the mode p oscillates with omega(p)^2 = 2 K(p) / M(p). Both kernels give omega = 1 for every
mode of the free field at mu^2 = m^2, so a trajectory of length pi/2 maps phi to an independent
draw and the step size starts at O(0.1-1) whatever the couplings.
"""

from __future__ import annotations

import itertools
import math

import torch


def rfft_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``torch.fft.rfftn`` of a field of lattice ``shape`` (last axis halved + 1)."""
    return (*shape[:-1], shape[-1] // 2 + 1)


def rfft_phat2(shape: tuple[int, ...]) -> torch.Tensor:
    """phat^2 = sum_mu 4 sin^2(p_mu / 2) on the rfft half grid (float64)."""
    axes = [2 * math.pi * torch.arange(n, dtype=torch.float64) / n for n in shape[:-1]]
    axes.append(2 * math.pi * torch.arange(shape[-1] // 2 + 1, dtype=torch.float64) / shape[-1])
    grids = torch.meshgrid(*axes, indexing="ij")
    return sum(4.0 * torch.sin(p / 2) ** 2 for p in grids)


def free_mass(shape: tuple[int, ...], mu2: float) -> torch.Tensor:
    """M(p) = 2 (phat^2 + mu^2) on the rfft half grid; mu^2 > 0 keeps it positive."""
    if not mu2 > 0:
        raise ValueError(f"the free FA kernel needs mu2 > 0, got {mu2}")
    return 2.0 * (rfft_phat2(shape) + mu2)


def power_spectrum_sum(phi: torch.Tensor, ndim: int) -> torch.Tensor:
    """sum over the batch of |phi~(p)|^2 / V on the rfft half grid (float64), averaged over the
    lattice symmetries that map momenta to momenta (p_mu -> -p_mu per axis, and permutations of
    axes of equal extent: the action's hypercubic symmetry, so the true G(p) is invariant and the
    average only removes noise). Divided by the batch size it is the propagator G(p)."""
    dims = tuple(range(phi.dim() - ndim, phi.dim()))
    shape = tuple(phi.shape[-ndim:])
    f = torch.fft.fftn(phi.to(torch.float64), dim=dims)
    g = (f.real ** 2 + f.imag ** 2).sum(dim=0) / math.prod(shape)
    for axis in range(ndim):  # k -> -k mod L along one axis
        g = 0.5 * (g + torch.roll(torch.flip(g, [axis]), 1, axis))
    perms = [p for p in itertools.permutations(range(ndim))
             if all(shape[i] == shape[j] for i, j in zip(p, range(ndim)))]
    g = sum(g.permute(p) for p in perms) / len(perms)
    return g[..., : shape[-1] // 2 + 1].contiguous()


def measured_mass(g: torch.Tensor) -> torch.Tensor:
    """M(p) = 1 / G(p) from a measured propagator ``g`` (rfft half grid). |phi~(p)|^2 =
    |phi~(-p)|^2 for a real field, so M(p) = M(-p) and M is a real symmetric operator; a mode
    never seen (G = 0) would give an infinite mass and is refused."""
    if not bool((g > 0).all()):
        raise ValueError("the measured propagator has modes with G(p) = 0: thermalise longer")
    return 1.0 / g


def fit_mu2(g: torch.Tensor, shape: tuple[int, ...]) -> float:
    """mu^2 of the free kernel from a measured propagator: least squares of
    1/(2 G(p)) = Z (phat^2 + mu^2) over the p != 0 modes (the zero mode carries the
    magnetisation, not the mass), mu^2 = intercept / slope, floored at phat^2_min / 4
    (the smallest nonzero lattice momentum) so that M stays positive and finite."""
    x = rfft_phat2(shape).flatten()
    y = (0.5 / g).flatten()
    keep = x > 0
    x, y = x[keep], y[keep]
    a = torch.stack([x, torch.ones_like(x)], dim=1)
    slope, intercept = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.flatten().tolist()
    floor = float(x.min()) / 4
    if not slope > 0:
        return floor
    return max(intercept / slope, floor)
