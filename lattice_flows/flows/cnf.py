"""A continuous, exactly Z2-equivariant flow layer with lattice-sized kernels (fixed-step RK4).

The design of Gerdes, Haan, Rodriguez-Nieto, Cohen & Bonati (arXiv:2207.00283, SciPost Phys. 15,
238) and its precursor de Haan et al. (arXiv:2110.02673), written here from the papers' ideas.
The layer maps phi(0) -> phi(1) by integrating the ODE d phi / dt = f(phi, t) with the vector
field ::

    f_x(phi, t) = sum_c sum_y K_c(x - y, t) g_c(phi_y),
    g_c(phi) = sin(omega_c phi)   (c = 1..n_frequencies, omega_c learnable),   g_lin(phi) = phi

Every feature g_c is odd in phi, so f(-phi) = -f(phi) and the layer is exactly Z2-equivariant
(in floating point too: sin, the FFTs and the RK4 update are odd, and round-to-nearest is
symmetric under sign flips; cos in the divergence is even). The convolution over y runs over
the whole lattice and is evaluated by FFT, f^ = sum_c K^_c(p, t) g^_c(p).

Kernels (momentum space, a smooth function of phat^2)::

    K^_c(p, t) = sum_j sum_k W[c, j, k] T_j(t) B_k(phat^2(p)),   phat^2 = sum_mu 4 sin^2(p_mu/2)
    B_0(u) = 1,   B_1(u) = -u / (4 d),   B_{1+i}(u) = mu_i^2 / (u + mu_i^2)   (mu^2 in MASSES2)
    T(t) = (1, sin 2 pi t, cos 2 pi t, sin 4 pi t, cos 4 pi t, ...)   (n_time of them)

Why phat^2 (rather than one parameter per D4 orbit of x - y, as in the anchor's code):

* D4 (in d dimensions the hypercubic group): phat^2 is invariant under permutations and sign
  flips of the momentum components, which is how the lattice rotations/reflections act on p, so
  K(x - y) is shared over every orbit exactly, for any d;
* transfer along the ladder: the parameters W, omega do not depend on L. At extent L the
  position-space kernel is K_L(r) = sum_n K_inf(r + n L) (Poisson summation), the periodic image
  sum of one infinite-volume kernel K_inf; the same W means the same physics at every L, up to
  the finite-volume images;
* the basis is physical: B_0 is on-site (delta_xy), B_1 the nearest-neighbour Laplacian, and
  B_{1+i} the normalised lattice Yukawa propagators mu^2 (-Lap + mu^2)^-1, smooth kernels of
  range ~1/mu (0.5 to 8 sites for MASSES2) with sum_r K(r) = 1; so a handful of numbers per
  channel spans local to lattice-wide mixing (the lattice-wide kernel is the only mixing);
* K_c(0, t) = (1/V) sum_p K^_c(p, t) is exact and cheap, which the divergence needs.

Orbit kernels (``flow.cnf_kernel: orbit`` or ``phat+orbit``, issue 13): a free weight per
hypercubic orbit of the separation r (the anchor's choice), added to (``phat+orbit``) or replacing
(``orbit``) the phat^2 basis::

    K_c(r, t) += sum_j V[c, j, o(r)] T_j(t),   o(r) = the orbit of r, r in [-R, R]^d (R = range)

o(r) is the sorted tuple (|r_1| >= ... >= |r_d|), so K is invariant under every permutation and
sign flip of the components: the rotations/reflections of the lattice about a site. V is
defined on the infinite lattice up to range R (``flow.cnf_kernel_range``), independent of L: at
extents L the position-space kernel is the image sum over the separations that fit,
K_L(x) = sum_{r = x mod L, |r_mu| <= L_mu / 2} K_inf(r) (a separation of exactly L_mu / 2 and its
negative land on the same site). Weights of longer separations than fit are invisible at that L
(zero gradient): a flow trained at L = 16 carries its kernel unchanged to L = 32, where the
longer separations start at zero and are learned there. Bound: sum_x |K_L(x)| <= sum_r
|K_inf(r)| = sum_o |V_o| |o| (|o| the number of separations in the orbit), so the Lipschitz bound
below holds at every L with the orbit sizes as the basis norms. The orbit kernels enter the
momentum-space kernel through the FFT of their folded indicator P_o(x) (real: every orbit is
closed under r -> -r), and K_c(0, t) through P_o(0).

Divergence (exact, per configuration, summed over sites in float64)::

    div f = sum_x d f_x / d phi_x = sum_c K_c(0, t) omega_c sum_x cos(omega_c phi_x) + V K_lin(0, t)

log|det J| of the layer is int_0^1 div f dt, integrated with the SAME fixed-step classical RK4
scheme as phi (augmented state (phi, ell), d ell/dt = div f). The inverse integrates from t = 1
back to t = 0 with step -h (log-det: the same integral along the backward path, negative).

Exactness (what independence Metropolis sees): the discrete RK4 map is a bijection only
approximately inverted by the backward RK4, and its true log|det J| differs from the integrated
divergence by O(h^4), h = 1 / n_steps. tests/unit/test_cnf.py measures both at a random field
that saturates the Lipschitz bound below (float64, 4x4, n_steps = 4, 8, 16, against the
autograd Jacobian of the discrete map) and checks that the errors fall like h^4 (fitted slope);
random signs partly cancel, so its errors are ~10x below those of a trained field at the bound.
Trained L = 16 layers (benchmarks/cnf_exactness.py; docs/ablation_ladder.md, "Continuous
equivariant layer"), where the optimizer presses the field against the bound: integrated minus
true log-det 0.8-1.0e-5 per configuration at the default 16 steps (1.9-3.0e-4 at 8 steps,
falling ~h^5), max |inverse(forward(x)) - x| ~2e-8 at 16 steps (~5e-7 at 8). Only the spread
of the error over configurations biases independence Metropolis (a constant cancels): ~2e-6 at
16 steps. The RK4 state (phi, ell) and the kernels are float64, and so is the divergence's sum
over sites, but for its partial sums along the last axis (L_d terms each, in the features' dtype);
the feature pass (sin, cos and the FFT convolution) runs in the input's precision
(:func:`feature_dtype`): float64 for a float64 input, float32 for the float32 flows of production,
where it halves the memory traffic (``benchmarks/throughput.py`` at L = 32, A/B against the float64
pass, one thread: 2.0x the proposals/s at batch 1024 with one layer, 1.4x the training steps/s;
three layers at batch 256: 9.0 against 13.9 CPU-ms per proposal). Unlike the
Fourier layer (:mod:`lattice_flows.flows.fourier`, whose log-det needs an exact FFT round trip),
the log-det here never goes through an FFT: float32 features only perturb the map, by one
float32 rounding of phi (the output is rounded to the input's dtype anyway), and log q by
~5e-8 per configuration (spread over configurations at L = 32, three trained-scale layers,
against the float64 pass; ``tests/unit/test_cnf.py``), three orders below the O(h^4) RK4 error.

Stiffness bound (why it is there): with free kernels, reverse-KL training learns to exploit the
integrator. A first L = 16 run (1 layer, 8 steps, 300 CPU-s) drove the loss to -4600 (the bound
is -ln Z ~ -84): the reported log-det was 4539 where the autograd log|det| of the same discrete
map was -380, because h times the field's Lipschitz constant had left the region where RK4
follows the flow. The layer therefore uses W_eff = W Lmax tanh(Lam/Lmax)/Lam
(:meth:`ContinuousEquivariantLayer.bounded_weight`), where Lam = sum_c |omega_c| sum_jk |W_cjk|
bounds max_x sum_y |df_x/dphi_y| for every t (|T_j| <= 1, sum_r |B_k(r)| = 1; an orbit
kernel counts |V_o| |o|). So
h * Lip(f) < Lmax / n_steps, a fixed accuracy regime for RK4 whatever the optimizer does, and the
flow map's singular values stay within [e^-Lmax, e^Lmax].

Initialisation: W = 0 (the fresh layer is the identity, log-det 0), omega_c = 5 c / n_frequencies
(spread over (0, 5] like the anchor's uniform initialisation). No batch statistics: every
configuration is integrated independently. Conventions (lattice, action, log q): docs/conventions.md
("Lattice", "Action", "Statistics").

Example::

    >>> layer = ContinuousEquivariantLayer(ndim=2, n_steps=4)  # default 16
    >>> phi, logdet = layer(torch.randn(3, 6, 6, dtype=torch.float64))
    >>> phi.shape, logdet.shape
    (torch.Size([3, 6, 6]), torch.Size([3]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lattice_flows.flows.fourier import momentum_squared_grids

def feature_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of the feature pass for an input of ``dtype``: float64 for float64, float32
    otherwise (module docstring, "Exactness")."""
    return torch.float64 if dtype == torch.float64 else torch.float32


MASSES2: tuple[float, ...] = (4.0, 1.0, 0.25, 0.0625, 0.015625)
"""mu^2 of the Yukawa kernel basis: ranges 1/mu = 0.5, 1, 2, 4, 8 sites."""

LIPSCHITZ_MAX = 3.0
"""Bound on the vector field's Lipschitz constant (max row sum of |df/dphi|): h Lmax = 0.1875 at
the default 16 RK4 steps (see the module docstring, "Stiffness bound")."""


def time_basis(t: float, n_time: int) -> torch.Tensor:
    """T(t) = (1, sin 2 pi t, cos 2 pi t, sin 4 pi t, ...)[:n_time] in float64."""
    vals = [1.0]
    k = 1
    while len(vals) < n_time:
        vals += [math.sin(2 * math.pi * k * t), math.cos(2 * math.pi * k * t)]
        k += 1
    return torch.tensor(vals[:n_time], dtype=torch.float64)


def kernel_basis(u: torch.Tensor, ndim: int) -> torch.Tensor:
    """B_k(u), u = phat^2 (any shape), stacked on a new leading axis (see the module docstring)."""
    parts = [torch.ones_like(u), -u / (4.0 * ndim)]
    parts += [m2 / (u + m2) for m2 in MASSES2]
    return torch.stack(parts)


KERNELS: tuple[str, ...] = ("phat", "orbit", "phat+orbit")
"""The kernel parametrisations (module docstring): smooth in phat^2, free per orbit, or both."""


def orbit_table(ndim: int, kernel_range: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hypercubic orbits of the separations r in [-R, R]^d (R = ``kernel_range``).

    Returns (r, o, sizes): every separation r (shape (members, d), int64), its orbit index o(r)
    and the orbit sizes |o| (number of separations in each orbit). The orbit of r is the sorted
    tuple |r_1| >= ... >= |r_d|; orbits are numbered lexicographically in it, an order that
    depends on d and R only (not on the lattice), so weights keep their meaning at every L.
    """
    if int(kernel_range) < 1:
        raise ValueError(f"kernel_range must be >= 1, got {kernel_range!r}")
    big = int(kernel_range)
    axes = [torch.arange(-big, big + 1)] * ndim
    r = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, ndim)
    key = r.abs().sort(dim=1, descending=True).values
    digits = (big + 1) ** torch.arange(ndim - 1, -1, -1)
    _, orbit, sizes = torch.unique((key * digits).sum(dim=1), return_inverse=True,
                                   return_counts=True)
    return r, orbit, sizes


def orbit_basis(shape: tuple[int, ...], kernel_range: int) -> torch.Tensor:
    """P_o(x) for every orbit o on the periodic lattice ``shape``, float64, (n_orbits, *shape).

    P_o(x) counts the separations r of orbit o with r = x mod L and |r_mu| <= L_mu / 2 (the image
    sum of the module docstring, "Orbit kernels"); orbits that do not fit are all zero (the
    infinite-lattice orbit sizes are :func:`orbit_table`'s).
    """
    r, orbit, sizes = orbit_table(len(shape), kernel_range)
    ext = torch.tensor(shape)
    fits = (2 * r.abs() <= ext).all(dim=1)
    r, orbit = r[fits], orbit[fits]
    site = torch.remainder(r, ext)
    strides = torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))])
    flat = (site * strides).sum(dim=1)
    p = torch.zeros(len(sizes), math.prod(shape), dtype=torch.float64)
    p.index_put_((orbit, flat), torch.ones(len(flat), dtype=torch.float64), accumulate=True)
    return p.reshape(len(sizes), *shape)


class ContinuousEquivariantLayer(nn.Module):
    """phi(1) = phi(0) + int_0^1 f(phi, t) dt by fixed-step RK4 (see the module docstring).

    Args:
        ndim: lattice dimension d (the layer runs at any extents of that d).
        n_frequencies: number of sin(omega phi) feature channels (>= 1).
        n_time: number of time basis functions T_j(t) (>= 1).
        n_steps: fixed RK4 steps over t in [0, 1] (>= 1).
        lipschitz_max: bound Lmax on the vector field's Lipschitz constant (> 0), see
            :meth:`bounded_weight` and the module docstring.
        kernel: ``phat`` (smooth in phat^2, parameter ``weight``), ``orbit`` (free per orbit up
            to ``kernel_range``, parameter ``orbit_weight``) or ``phat+orbit`` (both, summed).
        kernel_range: R, the longest separation component of the orbit kernels (>= 1).
    """

    def __init__(
        self, ndim: int, n_frequencies: int = 8, n_time: int = 5, n_steps: int = 16,
        lipschitz_max: float = LIPSCHITZ_MAX, kernel: str = "phat", kernel_range: int = 16,
    ) -> None:
        super().__init__()
        for name, val in (("n_frequencies", n_frequencies), ("n_time", n_time), ("n_steps", n_steps)):
            if int(val) < 1:
                raise ValueError(f"{name} must be >= 1, got {val!r}")
        self.ndim = int(ndim)
        self.n_frequencies = int(n_frequencies)
        self.n_time = int(n_time)
        self.n_steps = int(n_steps)
        if not lipschitz_max > 0:
            raise ValueError(f"lipschitz_max must be > 0, got {lipschitz_max!r}")
        self.lipschitz_max = float(lipschitz_max)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        self.kernel_range = int(kernel_range)
        n_channels = self.n_frequencies + 1  # sin channels, then the linear one
        self.omega = nn.Parameter(
            5.0 * torch.arange(1, self.n_frequencies + 1, dtype=torch.float32) / self.n_frequencies
        )
        norms = []  # sum_r |B_k(r)| per basis kernel (the Lipschitz bound's weights)
        if "phat" in kernel:
            n_basis = 2 + len(MASSES2)
            self.weight = nn.Parameter(torch.zeros(n_channels, self.n_time, n_basis))
            norms.append(torch.ones(n_basis, dtype=torch.float64))
        if "orbit" in kernel:
            sizes = orbit_table(self.ndim, self.kernel_range)[2].to(torch.float64)
            self.orbit_weight = nn.Parameter(torch.zeros(n_channels, self.n_time, len(sizes)))
            norms.append(sizes)
        self._basis_norm = torch.cat(norms)
        self._basis_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._time_cache: dict[float, torch.Tensor] = {}

    def _basis(self, shape: tuple[int, ...], device: torch.device):
        """(B_k on the rfft half grid, B_k(r = 0) = mean over all momenta), float64, cached."""
        key = (shape, str(device))
        if key not in self._basis_cache:
            halves, zeros = [], []
            if "phat" in self.kernel:
                full = kernel_basis(momentum_squared_grids(shape, device)[0], self.ndim)
                halves.append(full[..., : shape[-1] // 2 + 1])
                zeros.append(full.reshape(full.shape[0], -1).mean(dim=1))
            if "orbit" in self.kernel:
                p = orbit_basis(shape, self.kernel_range).to(device)
                dims = tuple(range(1, p.dim()))
                halves.append(torch.fft.rfftn(p, dim=dims).real)  # real: P_o(-x) = P_o(x)
                zeros.append(p.reshape(p.shape[0], -1)[:, 0])
            self._basis_cache[key] = (torch.cat(halves).contiguous(), torch.cat(zeros))
        return self._basis_cache[key]

    def kernel_weight(self) -> torch.Tensor:
        """The raw kernel weights (channels, n_time, basis), float64: ``weight`` of the phat^2
        basis, then ``orbit_weight`` of the orbits (whichever ``kernel`` has)."""
        parts = []
        if "phat" in self.kernel:
            parts.append(self.weight)
        if "orbit" in self.kernel:
            parts.append(self.orbit_weight)
        return torch.cat([w.to(torch.float64) for w in parts], dim=2)

    def _lam(self, w: torch.Tensor) -> torch.Tensor:
        """Lam(w) = sum_c |omega_c| sum_jk |w_cjk| n_k (n_k = sum_r |B_k(r)|: 1 or |o|)."""
        scale = torch.cat([self.omega.to(torch.float64).abs(), w.new_ones(1)])
        norm = self._basis_norm.to(w.device)
        return (scale * (w.abs() * norm).sum(dim=(1, 2))).sum()

    def _time(self, t: float, device: torch.device) -> torch.Tensor:
        if t not in self._time_cache:
            self._time_cache[t] = time_basis(t, self.n_time)
        return self._time_cache[t].to(device)

    def bounded_weight(self) -> torch.Tensor:
        """W_eff = W * Lmax tanh(Lam / Lmax) / Lam, float64, so that Lam(W_eff) < Lmax.

        Lam = sum_c |omega_c| sum_jk |W_cjk| n_k (|omega| -> 1 for the linear channel) bounds
        max_x sum_y |d f_x / d phi_y| at every t, since |T_j(t)| <= 1 and every basis kernel has
        sum_x |B_k(x)| <= n_k on any periodic lattice: n_k = 1 for the phat^2 basis (B_0, B_1 by
        inspection; the Yukawa kernels are positive with sum K^(0) = 1), n_k = |o| for an orbit
        kernel (image sums only merge terms).
        """
        w = self.kernel_weight()
        lam = self._lam(w)
        if float(lam.detach()) == 0.0:
            return w
        return w * (self.lipschitz_max * torch.tanh(lam / self.lipschitz_max) / lam)

    def lipschitz_bound(self) -> float:
        """Lam of the bounded weights: the bound on max_x sum_y |d f_x / d phi_y| (< Lmax)."""
        with torch.no_grad():
            return float(self._lam(self.bounded_weight()))

    def _field(
        self, phi: torch.Tensor, t: float, half: torch.Tensor, at_zero: torch.Tensor,
        weight: torch.Tensor, dtype: torch.dtype = torch.float64,
    ):
        """(f(phi, t), div f(phi, t)), both float64, for the float64 state phi of shape
        (batch, *L) and kernel weights ``weight`` (:meth:`bounded_weight`); the features, their
        FFTs and cos run in ``dtype`` (:func:`feature_dtype`), the sum over sites in float64
        after partial sums along the last axis in ``dtype``. Without gradients (sampling) the
        same operations run in place, without temporaries: the results are bit-identical."""
        dims = tuple(range(2, phi.dim() + 1))
        coef = torch.einsum("cjk,j->ck", weight, self._time(t, phi.device))
        k_hat = torch.einsum("ck,k...->c...", coef, half).to(dtype)  # (C, *half)
        k_zero = coef @ at_zero  # K_c(r = 0, t), (C,), float64
        omega = self.omega.to(dtype).reshape((-1,) + (1,) * (phi.dim() - 1))
        x = phi.to(dtype)
        arg = omega * x.unsqueeze(1)  # (batch, n_freq, *L)
        if torch.is_grad_enabled():
            feats = torch.cat([torch.sin(arg), x.unsqueeze(1)], dim=1)
            f_hat = (torch.fft.rfftn(feats, dim=dims) * k_hat).sum(dim=1)
            cos = torch.cos(arg)
        else:  # the same values without the temporaries of cat, mul and cos (sampling passes)
            feats = arg.new_empty((arg.shape[0], arg.shape[1] + 1) + arg.shape[2:])
            torch.sin(arg, out=feats[:, :-1])
            feats[:, -1].copy_(x)
            f_hat = torch.fft.rfftn(feats, dim=dims).mul_(k_hat).sum(dim=1)
            cos = arg.cos_()
        f = torch.fft.irfftn(f_hat, s=phi.shape[1:], dim=tuple(range(1, phi.dim())))
        # the sum over sites: along the last axis in the features' dtype (L_d terms), then float64
        rows = cos.sum(dim=-1)
        cos_sum = (rows.sum(dim=tuple(range(2, rows.dim())), dtype=torch.float64)
                   if rows.dim() > 2 else rows.to(torch.float64))  # (batch, n_freq)
        volume = math.prod(phi.shape[1:])
        div = cos_sum @ (k_zero[:-1] * self.omega.to(torch.float64)) + volume * k_zero[-1]
        return f.to(torch.float64), div

    def _integrate(self, x: torch.Tensor, forward: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != self.ndim + 1:
            raise ValueError(
                f"expected a batch of shape (batch, L_1..L_{self.ndim}), got {tuple(x.shape)}"
            )
        half, at_zero = self._basis(tuple(x.shape[1:]), x.device)
        w = self.bounded_weight()
        dt = feature_dtype(x.dtype)
        phi = x.to(torch.float64)
        ell = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        n = self.n_steps
        h = (1.0 if forward else -1.0) / n
        for i in range(n):
            t0 = i / n if forward else 1.0 - i / n
            tm, t1 = t0 + h / 2, (i + 1) / n if forward else 1.0 - (i + 1) / n
            f1, d1 = self._field(phi, t0, half, at_zero, w, dt)
            f2, d2 = self._field(phi + (h / 2) * f1, tm, half, at_zero, w, dt)
            f3, d3 = self._field(phi + (h / 2) * f2, tm, half, at_zero, w, dt)
            f4, d4 = self._field(phi + h * f3, t1, half, at_zero, w, dt)
            phi = phi + (h / 6) * (f1 + 2 * f2 + 2 * f3 + f4)
            ell = ell + (h / 6) * (d1 + 2 * d2 + 2 * d3 + d4)
        return phi.to(x.dtype), ell

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(1), int_0^1 div f dt) from phi(0) = z; log-det float64, shape (batch,)."""
        return self._integrate(z, forward=True)

    def inverse(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(0), -int_0^1 div f dt) by RK4 from t = 1 back to 0 (approximate inverse, O(h^4))."""
        return self._integrate(phi, forward=False)


BOUND_SATURATED = 0.99
"""Lam / Lmax above which a trained layer counts as held at its Lipschitz bound."""


def bound_use(flow: nn.Module) -> list[float]:
    """Lam / Lmax of every :class:`ContinuousEquivariantLayer` of ``flow``, in order (empty
    without such layers): how much of its Lipschitz bound each layer's field uses. Trained
    layers at ~1 are held at the bound by the rescaling of :meth:`~ContinuousEquivariantLayer.
    bounded_weight`: the optimum wants a stronger map (docs/ablation_ladder.md, "The one-layer
    flow sits at its Lipschitz bound")."""
    return [m.lipschitz_bound() / m.lipschitz_max for m in flow.modules()
            if isinstance(m, ContinuousEquivariantLayer)]


def set_integration_steps(flow: nn.Module, n_steps: int) -> int:
    """Integrate every :class:`ContinuousEquivariantLayer` of ``flow`` with ``n_steps`` RK4 steps
    (>= 1); returns how many layers changed. The weights W, omega define the vector field f(phi,
    t), so the same flow at more steps is the same continuous map with a smaller RK4 error
    (O(h^4) in the map and in its log-det, module docstring "Exactness"); the proposal density
    log q is the one computed with the new steps, so independence Metropolis stays exact for the
    map actually used."""
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
    layers = [m for m in flow.modules() if isinstance(m, ContinuousEquivariantLayer)]
    for m in layers:
        m.n_steps = int(n_steps)
    return len(layers)
