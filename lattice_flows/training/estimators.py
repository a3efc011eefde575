"""Gradient estimators: objects that take a flow and return a scalar loss to minimise.

They are separate from the flow (DESIGN.md) and interchangeable in the trainer.

* Reverse KL, reparametrisation trick: D(q||p) + log Z = E_{z~N}[log q(f(z)) + S(f(z))].
* Reverse KL, path gradient (Vaitl, Nicoli, Nakajima, Kessel 2022, arXiv:2207.08219): the same
  objective, but log q is evaluated with the parameters detached, so the gradient flows only
  through the sample path phi = f_theta(z); it has zero variance at q = p.
* Forward KL / maximum likelihood: E_{phi~p}[-log q(phi)] on configurations from an HDF5 file.
* Mixed: alpha * reverse + (1 - alpha) * forward, alpha possibly scheduled in the trainer.

Every ``loss`` call returns ``(loss, info)`` where ``info['log_w']`` holds the detached
log-weights -S - log q of the self-samples (for ESS/acceptance metrics) when there are any.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from lattice_flows.theory.phi4 import Phi4Action


class ReverseKL:
    """E_q[log q + S] by the reparametrisation trick (lower bound -log Z)."""

    needs_data = False

    def __init__(self, action: Phi4Action) -> None:
        self.action = action

    def loss(self, flow, batch_size: int, generator: torch.Generator | None = None, **_: Any):
        phi, log_q = flow.sample(batch_size, generator=generator)
        s = self.action(phi)
        log_w = -(s + log_q)
        return (log_q + s).mean(), {"log_w": log_w.detach()}


class PathGradientKL:
    """Reverse KL with the path-gradient estimator (arXiv:2207.08219).

    phi = f_theta(z) carries the gradient; log q_theta'(phi) is computed through the inverse with
    theta' = stop_grad(theta) (``torch.func.functional_call`` with detached parameters), so
    d/dtheta of the loss is the path derivative E[(d/dphi)(log q_theta' + S) dphi/dtheta].
    """

    needs_data = False

    def __init__(self, action: Phi4Action) -> None:
        self.action = action

    def loss(self, flow, batch_size: int, generator: torch.Generator | None = None, **_: Any):
        z = flow.prior.sample(batch_size, generator=generator, device=_device(flow), dtype=_dtype(flow))
        phi, _ = flow(z)
        detached = {k: v.detach() for k, v in flow.named_parameters()}
        detached.update({k: v for k, v in flow.named_buffers()})
        log_q = _log_prob_detached(flow, detached, phi)
        s = self.action(phi)
        log_w = -(s + log_q)
        return (log_q + s).mean(), {"log_w": log_w.detach()}


def _log_prob_detached(flow, params: dict, phi: torch.Tensor) -> torch.Tensor:
    class _LogProb(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.log_prob(x)

    wrapper = _LogProb(flow)
    wrapped = {f"inner.{k}": v for k, v in params.items()}
    return functional_call(wrapper, wrapped, (phi,))


class ForwardKL:
    """Maximum likelihood E_{phi~p}[-log q(phi)] on data batches (forward KL up to a constant)."""

    needs_data = True

    def loss(self, flow, batch_size: int, data=None, **_: Any):
        x = data.batch(batch_size).to(device=_device(flow), dtype=_dtype(flow))
        return -flow.log_prob(x).mean(), {}


class MixedKL:
    """alpha * reverse + (1 - alpha) * forward; ``alpha`` is set by the trainer's schedule."""

    needs_data = True

    def __init__(self, action: Phi4Action, alpha: float, path_gradient: bool = False) -> None:
        self.reverse = PathGradientKL(action) if path_gradient else ReverseKL(action)
        self.forward = ForwardKL()
        self.alpha = alpha

    def loss(self, flow, batch_size: int, generator=None, data=None, **_: Any):
        lr, info = self.reverse.loss(flow, batch_size, generator=generator)
        lf, _ = self.forward.loss(flow, batch_size, data=data)
        return self.alpha * lr + (1 - self.alpha) * lf, info


def _device(flow) -> torch.device:
    return next(flow.parameters()).device


def _dtype(flow) -> torch.dtype:
    return next(flow.parameters()).dtype


def make_estimator(objective: str, action: Phi4Action, alpha: float = 0.5):
    """The estimator for ``train.objective``."""
    if objective == "reverse":
        return ReverseKL(action)
    if objective == "path_gradient":
        return PathGradientKL(action)
    if objective == "forward":
        return ForwardKL()
    if objective == "mixed":
        return MixedKL(action, alpha)
    raise ValueError(f"unknown objective {objective!r}")
