"""Hybrid Monte Carlo for many independent chains advanced together as one batch.

Hamiltonian H(phi, pi) = 1/2 sum_x pi(x)^2 + S(phi) with S and dS/dphi from
:class:`~lattice_flows.theory.phi4.Phi4Action` (docs/conventions.md, "Action"). A trajectory draws
pi ~ N(0, 1), integrates Hamilton's equations with a reversible, volume-preserving integrator
(leapfrog, or Omelyan's 2nd-order minimum-norm scheme with lambda = 0.1931833) and accepts with
probability min(1, exp(-dH)), evaluated in float64.

The trajectory (phi, pi, forces) runs in the dtype of the chains, ``hmc.dtype`` of the config
(float64 by default, float32 allowed), independent of the flow's dtype; H is always summed in
float64.

The number of integration steps is jittered per trajectory, uniform in
[(1 - jitter) n_steps, (1 + jitter) n_steps] (docs/conventions.md, "Practical notes": a fixed
trajectory length resonates with free-field modes). The jitter is drawn independently of the
state, so every trajectory is a valid Metropolis step. The step size is tuned only during
thermalisation, by dual averaging (Hoffman & Gelman 2014, arXiv:1111.4246, Alg. 5) toward a
target acceptance, and then frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lattice_flows.theory.phi4 import Phi4Action

OMELYAN_LAMBDA = 0.1931833275037836


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
    """

    def __init__(
        self,
        action: Phi4Action,
        step_size: float,
        n_steps: int,
        integrator: str = "leapfrog",
        jitter: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        if integrator not in ("leapfrog", "omelyan"):
            raise ValueError(f"unknown integrator {integrator!r}")
        self.action = action
        self.step_size = float(step_size)
        self.n_steps = int(n_steps)
        self.integrator = integrator
        self.jitter = float(jitter)
        self.generator = generator

    def hamiltonian(self, phi: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """H = 1/2 sum pi^2 + S(phi) per chain, in float64."""
        dims = tuple(range(1, phi.dim()))
        p = pi.to(torch.float64)
        return 0.5 * (p * p).sum(dim=dims) + self.action(phi.to(torch.float64))

    def integrate(self, phi: torch.Tensor, pi: torch.Tensor, eps: float, n: int):
        """Integrate (phi, pi) for n steps of size eps; returns new tensors."""
        force = self.action.force
        if self.integrator == "leapfrog":
            pi = pi - 0.5 * eps * force(phi)
            for i in range(n):
                phi = phi + eps * pi
                if i < n - 1:
                    pi = pi - eps * force(phi)
            pi = pi - 0.5 * eps * force(phi)
            return phi, pi
        lam = OMELYAN_LAMBDA
        pi = pi - lam * eps * force(phi)
        for i in range(n):
            phi = phi + 0.5 * eps * pi
            pi = pi - (1 - 2 * lam) * eps * force(phi)
            phi = phi + 0.5 * eps * pi
            pi = pi - (2 * lam if i < n - 1 else lam) * eps * force(phi)
        return phi, pi

    def draw_n_steps(self) -> int:
        """Number of steps of the next trajectory, uniform in [(1-j) n, (1+j) n]."""
        if self.jitter == 0.0:
            return self.n_steps
        lo = max(1, int(round((1 - self.jitter) * self.n_steps)))
        hi = max(lo, int(round((1 + self.jitter) * self.n_steps)))
        dev = self.generator.device if self.generator is not None else "cpu"
        return int(torch.randint(lo, hi + 1, (1,), generator=self.generator, device=dev).item())

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
        pi = torch.randn(phi.shape, generator=gen, device=phi.device, dtype=phi.dtype)
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
