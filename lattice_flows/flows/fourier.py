"""A learnable Gaussian (linear) layer in momentum space.

    phi = IFFT( sigma(p) * FFT(z) ),     sigma(p) > 0

sigma depends on p only through phat^2 = sum_mu 4 sin^2(p_mu / 2), p_mu = 2 pi n_mu / L_mu, so
sigma(p) = sigma(-p): the map is the real circulant matrix with eigenvalues sigma(p). Hence

* phi is real (implemented with ``rfftn``/``irfftn``);
* the map is linear, so Z2-odd, phi(-z) = -phi(z) (exactly in floating point: FFTs only add and
  multiply, and round-to-nearest is symmetric under sign flips);
* it commutes with every lattice translation;
* log|det J| = sum over all momenta p of log sigma(p), the same for every batch member.

Precision: sigma, the log-det sum and the FFTs (sums over all sites) run in float64 and only the
output is rounded to the input's dtype (gradients reach the parameters in their own dtype). A
float32 FFT round trip shrinks |z|^2 systematically by ~2 eps32 relative (measured with torch's
CPU FFT), so a float32 transform is not the map whose log-det is reported: log q would be off
by ~V eps32 (4e-4 at V = 4096), a bias that grows with V, where rounding the output costs
~sqrt(V) eps32.

For z ~ N(0, 1) the output has Cov = C^2 with C the circulant of sigma. The free field has
Cov = (2K)^-1, K = -Laplacian + m2 (docs/conventions.md, "Exact free-field results"), i.e.
sigma_free(p) = 1 / sqrt(2 (m2 + phat^2)).

Parametrisation (size-agnostic: no parameter depends on L)::

    log sigma(u) = -1/2 log(2 (m2_eff + u)) + delta(u),     u = phat^2 in [0, 4d]
    m2_eff = m2_init * exp(log_m2_ratio)        (log_m2_ratio learnable, initialised to 0)
    delta  = piecewise-linear interpolation of n_knots learnable values on equally spaced
             knots over [0, 4d]                 (initialised to 0)

The free-field part is evaluated exactly at every lattice momentum, so at initialisation the
layer reproduces the free-field covariance of mass m2_init *exactly* on any L (a purely
piecewise-linear log sigma could only interpolate it between knots); the knots then learn the
deviation from a free field. m2_init is kept as a Python float (exact in float64 too) and saved
in the state dict as extra state. m2_init must be > 0 (no tachyonic initialisation); the flow
builder uses m2_init = m2 for m2 > 0 and 1.0 otherwise
(:func:`lattice_flows.flows.flow.fourier_m2_init`).

Motivation: in the prototype this layer was the largest single gain at the tutorial point
(docs/ablation_flow_training.md).

Example::

    >>> layer = FourierGaussianLayer((8, 8), m2_init=0.5)
    >>> phi, logdet = layer(torch.randn(3, 8, 8))
    >>> phi.shape, logdet.shape
    (torch.Size([3, 8, 8]), torch.Size([3]))
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lattice_momentum_squared(
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """phat^2(p) = sum_mu 4 sin^2(p_mu / 2) on the full momentum grid of ``shape``."""
    grids = torch.meshgrid(
        *[2 * math.pi * torch.arange(n, device=device, dtype=torch.float64) / n for n in shape],
        indexing="ij",
    )
    phat2 = torch.zeros(tuple(shape), device=device, dtype=torch.float64)
    for p in grids:
        phat2 = phat2 + 4.0 * torch.sin(p / 2) ** 2
    return phat2.to(dtype)


_GRIDS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def momentum_squared_grids(
    shape: tuple[int, ...], device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(full grid, ``torch.fft.rfftn`` half grid, last axis L_d // 2 + 1) of
    :func:`lattice_momentum_squared`, computed once per shape, device and dtype and shared by
    every layer that works in momentum space (constants: no gradient)."""
    key = (tuple(shape), str(device), dtype)
    if key not in _GRIDS:
        full = lattice_momentum_squared(tuple(shape), device=device, dtype=dtype)
        _GRIDS[key] = (full, full[..., : shape[-1] // 2 + 1].contiguous())
    return _GRIDS[key]


class FourierGaussianLayer(nn.Module):
    """phi = IFFT(sigma(phat^2) FFT(z)) with learnable sigma > 0 (see the module docstring).

    Args:
        lattice_shape: extents (L_1, ..., L_d) at construction; only d is kept fixed, the layer
            runs at any L with the same d.
        m2_init: free-field mass squared of the initial sigma, > 0.
        n_knots: number of knots (>= 2) of the piecewise-linear correction over [0, 4d].
    """

    def __init__(
        self, lattice_shape: tuple[int, ...], m2_init: float = 1.0, n_knots: int = 16
    ) -> None:
        super().__init__()
        if not m2_init > 0:
            raise ValueError(
                f"m2_init must be > 0 (a normalizable free-field initialisation), got {m2_init!r}"
            )
        if n_knots < 2:
            raise ValueError(f"n_knots must be >= 2, got {n_knots!r}")
        self.lattice_shape = tuple(int(n) for n in lattice_shape)
        self.ndim = len(self.lattice_shape)
        self.n_knots = int(n_knots)
        self.u_max = 4.0 * self.ndim
        self.m2_init = float(m2_init)
        self.log_m2_ratio = nn.Parameter(torch.zeros(()))
        self.knot_values = nn.Parameter(torch.zeros(self.n_knots))

    @property
    def m2_eff(self) -> float:
        """The current free-field mass squared m2_init * exp(log_m2_ratio)."""
        return self.m2_init * math.exp(float(self.log_m2_ratio.detach()))

    def get_extra_state(self) -> dict:
        return {"m2_init": self.m2_init}

    def set_extra_state(self, state: dict) -> None:
        self.m2_init = float(state["m2_init"])

    def log_sigma(self, u: torch.Tensor) -> torch.Tensor:
        """log sigma as a function of u = phat^2 (any shape)."""
        m2 = self.m2_init * torch.exp(self.log_m2_ratio.to(u.dtype))
        base = -0.5 * torch.log(2.0 * (m2 + u))
        h = self.u_max / (self.n_knots - 1)
        pos = u / h
        idx = torch.clamp(torch.floor(pos), 0, self.n_knots - 2)
        frac = pos - idx
        idx = idx.long()
        v = self.knot_values.to(u.dtype)
        return base + v[idx] * (1 - frac) + v[idx + 1] * frac

    def _transform(self, x: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != self.ndim + 1:
            raise ValueError(
                f"expected a batch of shape (batch, L_1..L_{self.ndim}), got {tuple(x.shape)}"
            )
        shape = tuple(x.shape[1:])
        dims = tuple(range(1, x.dim()))
        full, half = momentum_squared_grids(shape, x.device, torch.float64)
        factor = torch.exp(sign * self.log_sigma(half))
        x64 = x.to(torch.float64)
        y = torch.fft.irfftn(torch.fft.rfftn(x64, dim=dims) * factor, s=shape, dim=dims)
        logdet = sign * self.log_sigma(full).sum()
        return y.to(x.dtype), logdet.expand(x.shape[0])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi, log|det dphi/dz|): phi = IFFT(sigma FFT(z)), log-det = sum_p log sigma."""
        return self._transform(z, 1.0)

    def inverse(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det dz/dphi|): z = IFFT(FFT(phi) / sigma), log-det = -sum_p log sigma."""
        return self._transform(phi, -1.0)
