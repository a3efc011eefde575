"""Hybrid Monte Carlo for many independent chains advanced together as one batch.

Hamiltonian H(phi, pi) = 1/2 pi^T M^-1 pi + S(phi) with S and dS/dphi from
:class:`~lattice_flows.theory.phi4.Phi4Action` (docs/conventions.md, "Action") and M the unit mass
(``mass=None``) or, for Fourier acceleration (docs/conventions.md, "Fourier-accelerated HMC"), a
positive circulant operator given by its eigenvalues M(p) on the real-FFT half grid
(:mod:`lattice_flows.mcmc.fourier_mass`): pi = IFFT(sqrt(M(p)) FFT(xi)) with xi ~ N(0, 1) is a
draw of N(0, M), the field moves by dphi/dt = M^-1 pi = IFFT(FFT(pi) / M(p)) and the kinetic
term is 1/2 sum_x pi(x) (M^-1 pi)(x). A trajectory draws pi ~ N(0, M), integrates Hamilton's
equations with a reversible, volume-preserving integrator
(leapfrog, or Omelyan's 2nd-order minimum-norm scheme with lambda = 0.1931833) and accepts with
probability min(1, exp(-dH)), evaluated in float64. The integrators stay reversible and
volume-preserving for any symmetric positive M, so the accept/reject is exact for every M.

The trajectory (phi, pi, forces) runs in the dtype of the chains, ``hmc.dtype`` of the config
(float64 by default, float32 allowed), independent of the flow's dtype; H is always summed in
float64.

The number of integration steps is jittered per trajectory, uniform in
[(1 - jitter) n_steps, (1 + jitter) n_steps] (docs/conventions.md, "Practical notes": a fixed
trajectory length resonates with free-field modes). The jitter is drawn independently of the
state, so every trajectory is a valid Metropolis step. The integer count must be known on the
host (it is the loop count of the integrator), so it is drawn from a host (CPU) generator: the
chains' own generator when they run on the CPU (no synchronisation, the stream of earlier
versions), else :attr:`HMC.step_generator`, a CPU generator seeded from the chains' generator's
seed (stream :data:`STEP_STREAM`), whose state goes into every checkpoint
(:func:`~lattice_flows.mcmc.hmc_tuning.frozen_settings`): drawing it from the GPU's generator would
cost a device->host synchronisation per trajectory. The step size is tuned only during
thermalisation, by dual averaging (Hoffman & Gelman 2014, arXiv:1111.4246, Alg. 5) toward a
target acceptance, and then frozen; the whole tuning protocol (eps, the trajectory length, the
FA mass) is :mod:`lattice_flows.mcmc.hmc_tuning`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lattice_flows.runtime.seeds import derive_seed
from lattice_flows.theory.phi4 import Phi4Action

OMELYAN_LAMBDA = 0.1931833275037836
#: stream id (after the chains' seed) of the host generator of the step counts on a GPU
STEP_STREAM = 1


@dataclass
class DualAveraging:
    """Dual-averaging step-size adaptation (Hoffman & Gelman 2014, Alg. 5) on log(eps)."""

    log_eps: float
    target: float
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75
    mu: float = 0.0
    h_bar: float = 0.0
    log_eps_bar: float = 0.0
    t: int = 0

    def __post_init__(self) -> None:
        self.mu = math.log(10.0) + self.log_eps
        self.log_eps_bar = self.log_eps

    def update(self, accept_prob: float) -> float:
        """Feed the mean acceptance probability of the last trajectory; return the new eps."""
        self.t += 1
        t = self.t
        eta = 1.0 / (t + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept_prob)
        self.log_eps = self.mu - math.sqrt(t) / self.gamma * self.h_bar
        w = t ** (-self.kappa)
        self.log_eps_bar = w * self.log_eps + (1 - w) * self.log_eps_bar
        return math.exp(self.log_eps)

    @property
    def final_step_size(self) -> float:
        return math.exp(self.log_eps_bar)


class HMC:
    """Batched HMC sampler for ``action``.

    Args:
        action: the phi^4 action.
        step_size: integration step size eps.
        n_steps: nominal number of steps per trajectory.
        integrator: ``"leapfrog"`` or ``"omelyan"``.
        jitter: relative spread of the number of steps per trajectory, in [0, 1).
        generator: the torch Generator of the chains (on the chains' device).
        mass: None (unit mass) or the FA eigenvalues M(p) > 0 on the rfft half grid of the
            lattice (float64), e.g. :func:`~lattice_flows.mcmc.fourier_mass.free_mass`.
        step_generator: a CPU generator for the jittered step counts; default: none when
            ``generator`` is on the CPU (it draws them), else one seeded from ``generator``'s
            seed (see the module docstring).
    """

    def __init__(
        self,
        action: Phi4Action,
        step_size: float,
        n_steps: int,
        integrator: str = "leapfrog",
        jitter: float = 0.5,
        generator: torch.Generator | None = None,
        *,
        mass: torch.Tensor | None = None,
        step_generator: torch.Generator | None = None,
    ) -> None:
        if integrator not in ("leapfrog", "omelyan"):
            raise ValueError(f"unknown integrator {integrator!r}")
        self.action = action
        self.step_size = float(step_size)
        self.n_steps = int(n_steps)
        self.integrator = integrator
        self.jitter = float(jitter)
        self.generator = generator
        if step_generator is None and generator is not None and generator.device.type != "cpu":
            step_generator = torch.Generator().manual_seed(
                derive_seed(generator.initial_seed(), STEP_STREAM))
        if step_generator is not None and step_generator.device.type != "cpu":
            raise ValueError("HMC step_generator must be a CPU generator (the step counts are "
                             f"host integers), got one on {step_generator.device}")
        self.step_generator = step_generator
        self.mass = None
        self.set_mass(mass)

    def set_mass(self, mass: torch.Tensor | None) -> None:
        """Set the FA mass eigenvalues M(p) (None: unit mass); refuses M(p) <= 0."""
        if mass is not None:
            mass = mass.to(torch.float64)
            if not bool(torch.isfinite(mass).all() and (mass > 0).all()):
                raise ValueError("the FA mass M(p) must be finite and > 0 on every mode")
        self.mass = mass
        self._inv_mass: dict = {}  # M^-1 and sqrt(M) per (device, dtype)

    def _kernels(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._inv_mass:
            m = self.mass.to(like.device)
            self._inv_mass[key] = ((1.0 / m).to(like.dtype), m.sqrt().to(like.dtype))
        return self._inv_mass[key]

    def _lattice_dims(self, phi: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(phi.dim() - self.action.ndim, phi.dim()))

    def velocity(self, pi: torch.Tensor) -> torch.Tensor:
        """dphi/dt = M^-1 pi (pi itself for unit mass), by real FFTs over the lattice axes."""
        if self.mass is None:
            return pi
        return self._circulant(pi, self._kernels(pi)[0])

    def draw_momenta(self, phi: torch.Tensor) -> torch.Tensor:
        """pi ~ N(0, M): white noise xi ~ N(0, 1), then pi = M^(1/2) xi by real FFTs."""
        xi = torch.randn(phi.shape, generator=self.generator, device=phi.device, dtype=phi.dtype)
        if self.mass is None:
            return xi
        return self._circulant(xi, self._kernels(xi)[1])

    def _circulant(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """The circulant operator with eigenvalues ``kernel`` (on the rfft grid) applied to x."""
        dims = self._lattice_dims(x)
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * kernel, s=x.shape[-len(dims):],
                                dim=dims)

    def kinetic(self, pi: torch.Tensor) -> torch.Tensor:
        """1/2 pi^T M^-1 pi per chain, in float64."""
        dims = tuple(range(1, pi.dim()))
        p = pi.to(torch.float64)
        return 0.5 * (p * self.velocity(p)).sum(dim=dims)

    def hamiltonian(self, phi: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """H = 1/2 pi^T M^-1 pi + S(phi) per chain, in float64."""
        return self.kinetic(pi) + self.action(phi.to(torch.float64))

    def force_evaluations(self, n: int) -> int:
        """Force evaluations of a trajectory of n steps (leapfrog n + 1, Omelyan 2n + 1)."""
        return n + 1 if self.integrator == "leapfrog" else 2 * n + 1

    def integrate(self, phi: torch.Tensor, pi: torch.Tensor, eps: float, n: int):
        """Integrate (phi, pi) for n steps of size eps; returns new tensors."""
        force, vel = self.action.force, self.velocity
        if self.integrator == "leapfrog":
            pi = pi - 0.5 * eps * force(phi)
            for i in range(n):
                phi = phi + eps * vel(pi)
                if i < n - 1:
                    pi = pi - eps * force(phi)
            pi = pi - 0.5 * eps * force(phi)
            return phi, pi
        lam = OMELYAN_LAMBDA
        pi = pi - lam * eps * force(phi)
        for i in range(n):
            phi = phi + 0.5 * eps * vel(pi)
            pi = pi - (1 - 2 * lam) * eps * force(phi)
            phi = phi + 0.5 * eps * vel(pi)
            pi = pi - (2 * lam if i < n - 1 else lam) * eps * force(phi)
        return phi, pi

    def draw_n_steps(self) -> int:
        """Number of steps of the next trajectory, uniform in [(1-j) n, (1+j) n], drawn on the
        host (no device synchronisation): from :attr:`step_generator`, or the chains' generator
        when they are on the CPU."""
        if self.jitter == 0.0:
            return self.n_steps
        lo = max(1, int(round((1 - self.jitter) * self.n_steps)))
        hi = max(lo, int(round((1 + self.jitter) * self.n_steps)))
        gen = self.step_generator if self.step_generator is not None else self.generator
        dev = gen.device if gen is not None else "cpu"
        return int(torch.randint(lo, hi + 1, (1,), generator=gen, device=dev).item())

    @torch.no_grad()
    def step(self, phi: torch.Tensor, step_size: float | None = None):
        """One trajectory for every chain.

        Returns ``(phi_new, accepted, accept_prob, action_new)`` where ``accepted`` is a bool
        tensor per chain, ``accept_prob`` = min(1, exp(-dH)) (float64) and ``action_new`` the
        float64 action of the returned states.
        """
        eps = self.step_size if step_size is None else float(step_size)
        n = self.draw_n_steps()
        gen = self.generator
        pi = self.draw_momenta(phi)
        h0 = self.hamiltonian(phi, pi)
        phi1, pi1 = self.integrate(phi, pi, eps, n)
        h1 = self.hamiltonian(phi1, pi1)
        dh = h1 - h0
        u = torch.rand(phi.shape[0], generator=gen, device=phi.device, dtype=torch.float64)
        dh_safe = torch.where(torch.isfinite(dh), dh, torch.full_like(dh, math.inf))
        accept_prob = torch.exp(torch.clamp(-dh_safe, max=0.0))
        accepted = u < accept_prob
        shape = (-1,) + (1,) * (phi.dim() - 1)
        new = torch.where(accepted.view(shape), phi1, phi)
        action_new = self.action(new.to(torch.float64))
        return new, accepted, accept_prob, action_new
