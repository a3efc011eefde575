"""The HMC integrator with compiled kernels (config ``compile: true``; :mod:`lattice_flows.compiled`).

The same schemes as :meth:`lattice_flows.mcmc.hmc.HMC.integrate` (docs/conventions.md, "Force
for HMC"; leapfrog and Omelyan's minimum-norm scheme), written as a chain of two compiled
pieces with the force F = dS/dphi and the velocity v = M^-1 pi::

    kick(phi, pi, b)           = pi - b F(phi)
    drift_kick(phi, pi, a, b)  = (phi', pi - b F(phi'))   with phi' = phi + a v(pi)

    leapfrog:  kick(eps/2), then n x drift_kick(eps, eps) with b = eps/2 in the last step
    Omelyan:   kick(lam eps), then per step drift_kick(eps/2, (1 - 2 lam) eps) and
               drift_kick(eps/2, 2 lam eps) (lam eps in the last step)

which are exactly the eager update orders. The coefficients a, b are 0-d tensors of the chains'
dtype and device (computed as the eager code computes its Python scalars, e.g. 0.5 * eps), so a
new step size does not recompile, and the loop over the jittered number of steps n runs outside
the compiled code, so n never recompiles. The FA velocity (real FFTs with M(p)^-1) is part of the
compiled drift; its kernel tensor is an input.

Install on an :class:`~lattice_flows.mcmc.hmc.HMC` with :func:`compile_hmc` (the instance's
``integrate`` is replaced; everything else of the trajectory stays eager).
"""

from __future__ import annotations

import torch

from lattice_flows.compiled import compiled
from lattice_flows.mcmc.hmc import HMC, OMELYAN_LAMBDA
from lattice_flows.theory.phi4 import Phi4Action


def _velocity(pi: torch.Tensor, inv_mass: torch.Tensor | None, ndim: int) -> torch.Tensor:
    """M^-1 pi (pi for unit mass), as :meth:`HMC.velocity`."""
    if inv_mass is None:
        return pi
    dims = tuple(range(pi.dim() - ndim, pi.dim()))
    return torch.fft.irfftn(torch.fft.rfftn(pi, dim=dims) * inv_mass, s=pi.shape[-ndim:], dim=dims)


class CompiledIntegrator:
    """``integrate(phi, pi, eps, n)`` of ``hmc`` on compiled kick / drift-kick kernels."""

    def __init__(self, hmc: HMC) -> None:
        self.hmc = hmc
        action: Phi4Action = hmc.action
        ndim = action.ndim

        def kick(phi, pi, b):
            return pi - b * action.force(phi)

        def drift_kick(phi, pi, a, b, inv_mass):
            phi = phi + a * _velocity(pi, inv_mass, ndim)
            return phi, pi - b * action.force(phi)

        self.kick = compiled(kick, "the HMC kick (force update)")
        self.drift_kick = compiled(drift_kick, "the HMC drift + kick (leapfrog/Omelyan step)")

        self._coefs: tuple = (None, ())

    def coefficients(self, eps: float, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The scheme's coefficients for step size eps as 0-d tensors of ``like``'s dtype and
        device, computed as the eager code computes its scalars; kept while eps, dtype and
        device stay (a frozen eps costs no host-to-device copy per trajectory)."""
        key = (float(eps), like.dtype, like.device, self.hmc.integrator)
        if self._coefs[0] != key:
            lam = OMELYAN_LAMBDA
            values = ((0.5 * eps, eps) if self.hmc.integrator == "leapfrog" else
                      (0.5 * eps, (1 - 2 * lam) * eps, 2 * lam * eps, lam * eps))
            self._coefs = (key, tuple(torch.tensor(v, dtype=like.dtype, device=like.device)
                                      for v in values))
        return self._coefs[1]

    def __call__(self, phi: torch.Tensor, pi: torch.Tensor, eps: float, n: int):
        """Integrate (phi, pi) for n steps of size eps; returns new tensors (as HMC.integrate)."""
        hmc = self.hmc
        inv_mass = None if hmc.mass is None else hmc._kernels(pi)[0]
        if hmc.integrator == "leapfrog":
            half, full = self.coefficients(eps, phi)
            pi = self.kick(phi, pi, half)
            for i in range(n):
                phi, pi = self.drift_kick(phi, pi, full, full if i < n - 1 else half, inv_mass)
            return phi, pi
        half, mid, outer, last = self.coefficients(eps, phi)
        pi = self.kick(phi, pi, last)
        for i in range(n):
            phi, pi = self.drift_kick(phi, pi, half, mid, inv_mass)
            phi, pi = self.drift_kick(phi, pi, half, outer if i < n - 1 else last, inv_mass)
        return phi, pi


def compile_hmc(hmc: HMC) -> HMC:
    """Make ``hmc`` integrate with :class:`CompiledIntegrator` (in place); returns it."""
    hmc.integrate = CompiledIntegrator(hmc)  # type: ignore[method-assign]
    return hmc
