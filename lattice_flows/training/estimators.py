"""Gradient estimators: objects that take a flow and return a scalar loss to minimise.

They are separate from the flow and interchangeable in the trainer.

* Reverse KL, reparametrisation trick: D(q||p) + log Z = E_{z~N}[log q(f(z)) + S(f(z))].
* Reverse KL, path gradient (Vaitl, Nicoli, Nakajima, Kessel 2022, arXiv:2207.08219): the same
  objective, but log q is evaluated with the parameters detached, so the gradient flows only
  through the sample path phi = f_theta(z); it has zero variance at q = p.
* The same path gradient computed in one forward pass (``path_gradient_fast``; Vaitl, Nicoli,
  Nakajima, Kessel 2024, arXiv:2403.15881): the score d log q / d phi is carried through the
  layers alongside phi instead of running the inverse flow afterwards.
* Forward KL / maximum likelihood: E_{phi~p}[-log q(phi)] on configurations from an HDF5 file.
* Mixed: alpha * reverse + (1 - alpha) * forward, alpha possibly scheduled in the trainer.

Every ``loss`` call returns ``(loss, info)`` where ``info['log_w']`` holds the detached
log-weights -S - log q of the self-samples (for ESS/acceptance metrics) when there are any.

Precision: log q (flow) and S (action) are site sums accumulated in float64, so the losses and
log_w are float64 scalars/vectors while phi, the per-site terms, the score carried by
:class:`FastPathGradientKL` and the parameter gradients keep the flow's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call

from lattice_flows.devices import ieee_float32
from lattice_flows.flows.bijections import AffineBijection
from lattice_flows.flows.coupling import CouplingLayer
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


class FastPathGradientKL:
    """The path gradient of :class:`PathGradientKL` without the inverse pass (arXiv:2403.15881).

    With x_0 = z, x_{l+1} = T_l(x_l) and log q_{l+1}(x_{l+1}) = log q_l(x_l) - ld_l(x_l), the score
    g_l = d log q_l / d x_l (at fixed parameters) obeys::

        g_0 = d log r / dz = -z,        g_{l+1} = J_l^-T (g_l - d ld_l / d x_l)

    For an affine coupling (active sites a: y_a = x_a e^s + t, s, t functions of the frozen sites
    f; ld = sum_a s_a) this is one vector-Jacobian product through the conditioner::

        g'_a = e^-s g_a,     g'_f = g_f - d/dx_f [ sum_a (s_a + g'_a y_a) ]   (g'_a held fixed)

    taken from the graph of the forward pass (no second conditioner evaluation). Other layers use
    the general form, J^-T w = d/dy [w . T^-1(y)] (their inverse, cheap: Fourier and zero-mode
    layers). Then phi = x_K, g_K = d log q / d phi, and the surrogate
    sum_x (g_K + dS/dphi)|_detached * phi(theta) has exactly the path gradient of
    :class:`PathGradientKL`; its value is set to the reverse-KL estimate E[log q + S].
    """

    needs_data = False

    def __init__(self, action: Phi4Action) -> None:
        self.action = action

    def loss(self, flow, batch_size: int, generator: torch.Generator | None = None, **_: Any):
        z = flow.prior.sample(batch_size, generator=generator, device=_device(flow), dtype=_dtype(flow))
        z.requires_grad_(True)  # so that every layer input is part of the graph
        log_q = flow.prior.log_prob(z).detach()  # float64, like every ld below
        score = -z.detach()  # per site, flow dtype
        x = z
        with ieee_float32():  # the flow's one map (flows/flow.py, TF32 rule)
            for layer in flow.layers:
                if isinstance(layer, CouplingLayer) and isinstance(layer.bijection, AffineBijection):
                    x, ld, score = _affine_coupling_score(layer, x, score)
                else:
                    x, ld, score = _general_layer_score(layer, x, score)
                log_q = log_q - ld.detach()
        s = self.action(x)
        grad_s = torch.autograd.grad(s.sum(), x, retain_graph=True)[0]
        dims = tuple(range(1, x.dim()))
        surrogate = ((score + grad_s).detach() * x).sum(dim=dims).mean()
        value = (log_q + s.detach()).mean()
        log_w = -(s.detach() + log_q)
        return surrogate - surrogate.detach() + value, {"log_w": log_w}


def _affine_coupling_score(layer, x: torch.Tensor, score: torch.Tensor):
    """(y, log|det J|, score at y) of one affine coupling; see :class:`FastPathGradientKL`."""
    active = layer.active_sites(x)
    x_in = x.masked_fill(active, 0.0)  # the conditioner's input, kept for the VJP below
    s, t = layer.conditioner(x_in).unbind(1)
    y_all, ld_all = layer.bijection.forward(x, s, t)  # ld_all = s
    y, ld = layer.combine(x, y_all, ld_all, active)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    new_active = torch.where(active, score * torch.exp(-s.detach()), zero)
    f = torch.where(active, s + new_active * y_all, zero).sum()
    vjp = torch.autograd.grad(f, x_in, retain_graph=True)[0]
    return y, ld, torch.where(active, new_active, score - vjp)


def _general_layer_score(layer, x: torch.Tensor, score: torch.Tensor):
    """(y, log|det J|, J^-T (score - d ld/dx)) through the layer's inverse."""
    y, ld = layer(x)
    d_ld = torch.autograd.grad(ld.sum(), x, retain_graph=True, allow_unused=True)[0]
    w = score if d_ld is None else score - d_ld
    with torch.enable_grad():
        y_leaf = y.detach().requires_grad_(True)
        x_back, _ = layer.inverse(y_leaf)
        new_score = torch.autograd.grad(x_back, y_leaf, grad_outputs=w)[0]
    return y, ld, new_score


class ForwardKL:
    """Maximum likelihood E_{phi~p}[-log q(phi)] on data batches (forward KL up to a constant)."""

    needs_data = True

    def loss(self, flow, batch_size: int, data=None, **_: Any):
        x = data.batch(batch_size).to(device=_device(flow), dtype=_dtype(flow))
        return -flow.log_prob(x).mean(), {}


class MixedKL:
    """alpha * reverse + (1 - alpha) * forward; ``alpha`` is set by the trainer's schedule."""

    needs_data = True

    def __init__(self, action: Phi4Action, alpha: float) -> None:
        self.reverse = ReverseKL(action)
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
    if objective == "path_gradient_fast":
        return FastPathGradientKL(action)
    if objective == "forward":
        return ForwardKL()
    if objective == "mixed":
        return MixedKL(action, alpha)
    raise ValueError(f"unknown objective {objective!r}")
