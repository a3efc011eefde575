"""log w = -S - log q of a float32 flow against a float64 evaluation of the same weights.

Site sums (prior, coupling log-dets, the Fourier layer's FFTs and log-det, the zero mode, the
action) are accumulated in float64, so the only float32 errors left are those of the per-site
terms. V independent per-site roundings of relative size eps32 on terms of typical magnitude m
add in quadrature, so the error of log w is of order

    scale = sqrt(V) * eps32 * m,      m = (|S| + |log r| + sum_layers |log det J_l|) / V

(m the mean magnitude per site of all terms that make up log w). The bound below is 3 * scale:
one "3 sigma" for the largest of the batch. The float32 totals the code used before (each layer's
log-det, the prior and S rounded to float32 and added in float32) have rounding errors of
eps32 * |total| ~ V eps32 m instead, which the last test shows to break the bound.
Docs: docs/conventions.md, "Statistics" (log w in float64).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lattice_flows.config import FlowConfig
from lattice_flows.flows import build_flow
from lattice_flows.theory.phi4 import Phi4Action
from lattice_flows.training.estimators import make_estimator

EPS32 = torch.finfo(torch.float32).eps
SHAPES = [(64, 64), (16, 16, 16)]  # V = 4096 in d = 2 and d = 3


def _flow(shape):
    """A float32 flow with random (not identity) weights and every layer kind."""
    torch.manual_seed(3)
    cfg = FlowConfig(n_layers=4, hidden_channels=(8,), identity_init=False,
                     fourier_layer=True, zero_mode_layer=True)
    flow = build_flow(cfg, shape, m2=0.5)
    with torch.no_grad():  # move the Fourier and zero-mode layers away from their identity init
        for name, p in flow.named_parameters():
            if "knot_values" in name or "raw_b" in name or "log_m2_ratio" in name:
                p.add_(0.3 * torch.randn(p.shape))
    return flow


def _pieces(flow, z):
    """phi and the float64 totals (log r(z), each layer's log-det) of a forward pass."""
    lds = []
    x = z
    with torch.no_grad():
        for layer in flow.layers:
            x, ld = layer(x)
            lds.append(ld)
        return x, flow.prior.log_prob(z), lds


def _reference(flow64, action, phi32):
    """log w at the float32 configuration, evaluated entirely in float64."""
    phi = phi32.double()
    with torch.no_grad():
        return -(action(phi) + flow64.log_prob(phi))


def _scale(action, phi32, log_r, lds):
    volume = math.prod(phi32.shape[1:])
    total = action(phi32.double()).abs() + log_r.abs() + sum(ld.abs() for ld in lds)
    return math.sqrt(volume) * EPS32 * float(total.mean()) / volume


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_flow_log_w_matches_float64_evaluation(shape):
    flow = _flow(shape)
    flow64 = copy.deepcopy(flow).double()
    action = Phi4Action(0.5, 0.5, len(shape))
    z = flow.prior.sample(32, generator=torch.Generator().manual_seed(1))
    phi, log_r, lds = _pieces(flow, z)
    assert log_r.dtype == torch.float64 and all(ld.dtype == torch.float64 for ld in lds)
    with torch.no_grad():
        phi_s, log_q = flow.sample(32, generator=torch.Generator().manual_seed(1))
    assert log_q.dtype == torch.float64 and phi_s.dtype == torch.float32
    torch.testing.assert_close(phi_s, phi, rtol=0, atol=0)
    log_w = -(action(phi) + log_q)
    assert log_w.dtype == torch.float64
    err = log_w - _reference(flow64, action, phi)
    bound = 3 * _scale(action, phi, log_r, lds)
    assert float(err.abs().max()) < bound, (float(err.abs().max()), bound)
    # the inverse pass of the float32 flow (forward-KL, path gradient) is as precise
    with torch.no_grad():
        err_inv = -(action(phi) + flow.log_prob(phi)) - _reference(flow64, action, phi)
    assert float(err_inv.abs().max()) < bound, (float(err_inv.abs().max()), bound)


@pytest.mark.parametrize("objective", ["reverse", "path_gradient", "path_gradient_fast"])
def test_estimator_log_w_matches_float64_evaluation(objective):
    """The log_w the training metrics (ESS, acceptance) use, from each reverse-KL estimator."""
    shape = (64, 64)
    flow = _flow(shape)
    flow64 = copy.deepcopy(flow).double()
    action = Phi4Action(0.5, 0.5, 2)
    loss, info = make_estimator(objective, action).loss(
        flow, 8, generator=torch.Generator().manual_seed(4))
    assert loss.dtype == torch.float64 and info["log_w"].dtype == torch.float64
    loss.backward()  # gradients still reach the float32 parameters, in float32
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in flow.parameters())
    z = flow.prior.sample(8, generator=torch.Generator().manual_seed(4))
    phi, log_r, lds = _pieces(flow, z)
    err = info["log_w"] - _reference(flow64, action, phi)
    bound = 3 * _scale(action, phi, log_r, lds)
    assert float(err.abs().max()) < bound, (float(err.abs().max()), bound)


def test_float32_totals_would_break_the_bound():
    """The same log w from float32 totals, summed in float32 as before (each layer's log-det
    rounded to float32 and accumulated in float32, prior and S rounded to float32): its error
    is a lower bound of the old code's (the sums inside each total were float32 too) and far
    above the bound the float64 accumulation meets."""
    shape = (64, 64)
    flow = _flow(shape)
    flow64 = copy.deepcopy(flow).double()
    action = Phi4Action(0.5, 0.5, 2)
    z = flow.prior.sample(32, generator=torch.Generator().manual_seed(1))
    phi, log_r, lds = _pieces(flow, z)
    ref = _reference(flow64, action, phi)
    logdet32 = torch.zeros(z.shape[0], dtype=torch.float32)
    for ld in lds:
        logdet32 = logdet32 + ld.float()
    log_w_old = (-(action(phi).float() + (log_r.float() - logdet32))).double()
    err_old = log_w_old - ref
    err_new = -(action(phi) + log_r - sum(lds)) - ref
    bound = 3 * _scale(action, phi, log_r, lds)
    assert float(err_old.abs().max()) > bound, (float(err_old.abs().max()), bound)
    rms_old = float(err_old.pow(2).mean().sqrt())
    rms_new = float(err_new.pow(2).mean().sqrt())
    assert rms_new < rms_old / 4, (rms_new, rms_old)
