"""Per-configuration observables of a batch of lattice fields (docs/conventions.md, "Observables").

For a batch ``phi`` of shape ``(batch, L_1, ..., L_d)``:

* M = (1/V) sum_x phi(x), and |M|, M^2, M^4 per configuration;
* G(y) = (1/V) sum_x phi(x) phi(x+y), computed with FFTs as IFFT(|FFT phi|^2) / V;
* chi2 = sum_y G(y) = V M^2;
* E = (1/d) sum_mu G(mu_hat) (Ising energy);
* C(t) = sum_{y_1..y_{d-1}} G(y, t), the zero-momentum correlator along the last axis;
* action density S/V.

Ensemble-level derived quantities (m_eff, U4, chi2 from <M^2>) live in :mod:`lattice_flows.estimates`
and take ensemble averages of these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lattice_flows.theory.phi4 import Phi4Action

SCALAR_OBSERVABLES = ("M", "absM", "M2", "M4", "chi2", "E", "action_density")


def two_point_function(phi: torch.Tensor, ndim: int) -> torch.Tensor:
    """G(y) = (1/V) sum_x phi(x) phi(x+y) per configuration, shape ``(batch, *lattice)``."""
    dims = tuple(range(phi.dim() - ndim, phi.dim()))
    volume = math.prod(phi.shape[d] for d in dims)
    fphi = torch.fft.fftn(phi, dim=dims)
    power = (fphi.real**2 + fphi.imag**2).to(phi.dtype)
    return torch.fft.ifftn(power, dim=dims).real.to(phi.dtype) / volume


def zero_momentum_correlator(G: torch.Tensor, ndim: int) -> torch.Tensor:
    """C(t) = sum over the first d-1 axes of G(y, t); shape ``(batch, L_d)``."""
    if ndim == 1:
        return G
    dims = tuple(range(G.dim() - ndim, G.dim() - 1))
    return G.sum(dim=dims)


def measure(phi: torch.Tensor, action: Phi4Action, store_G: bool = True) -> dict[str, torch.Tensor]:
    """All per-configuration observables of a batch, as float64 tensors on phi's device.

    Returns scalar observables of shape ``(batch,)`` plus ``C`` of shape ``(batch, L_d)`` and,
    when ``store_G``, ``G`` of shape ``(batch, *lattice)``.
    """
    ndim = action.ndim
    x = phi.to(torch.float64)
    dims = tuple(range(x.dim() - ndim, x.dim()))
    volume = math.prod(x.shape[d] for d in dims)
    M = x.mean(dim=dims)
    M2 = M * M
    G = two_point_function(x, ndim)
    # G(mu_hat): index 1 along axis mu, 0 elsewhere
    energy = torch.zeros_like(M)
    for mu in range(ndim):
        idx = [0] * ndim
        idx[mu] = 1 if x.shape[dims[mu]] > 1 else 0
        energy = energy + G[(slice(None), *idx)]
    out = {
        "M": M,
        "absM": M.abs(),
        "M2": M2,
        "M4": M2 * M2,
        "chi2": volume * M2,
        "E": energy / ndim,
        "action_density": action(x) / volume,
        "C": zero_momentum_correlator(G, ndim),
    }
    if store_G:
        out["G"] = G
    return out


def observable_specs(lattice_shape: tuple[int, ...], store_G: bool) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Dataset specs ``{name: (row shape, dtype)}`` of what :func:`measure` returns, as the
    sample files store them (``observables/<name>``; G only with ``output.store_G``)."""
    specs: dict[str, tuple[tuple[int, ...], Any]] = {
        f"observables/{n}": ((), np.float64) for n in SCALAR_OBSERVABLES
    }
    specs["observables/C"] = ((lattice_shape[-1],), np.float64)
    if store_G:
        specs["observables/G"] = (tuple(lattice_shape), np.float32)
    return specs
