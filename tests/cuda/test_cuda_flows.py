"""The flow invariants on the device (CUDA where it exists, and the CPU twin): invertibility,
log-det against the autograd Jacobian, exact Z2 equivariance, and the float32 log densities
(log q of a sample and log_prob through the inverse) against a float64 evaluation on the CPU.

The tolerances are float precision, as in tests/unit/test_flows.py and
tests/unit/test_logdensity_precision.py (docs/conventions.md "Statistics": log w in float64).
On a GPU they are also the TF32 check: cuDNN convolutions in TF32 (10-bit mantissa,
torch.backends.cudnn.allow_tf32 defaults to True) put ~5e-4 relative noise on every conditioner
output, thousands of times the float32 bound below, so a forward pass and an inverse (or log_prob)
pass that do not both run in IEEE float32 fail the invertibility and log-density tests.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lattice_flows.theory.phi4 import Phi4Action
from tests.unit.test_flows import NET_IDS, NETS, autograd_logdet, make
from tests.unit.test_logdensity_precision import _flow, _pieces, _scale


def _gen(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(device, dtype, *shape, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(device, seed), device=device, dtype=dtype)


def _on(flow, device):
    flow = flow.to(device)
    assert all(p.device.type == device.type for p in flow.parameters())
    return flow


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_invertibility_on_device(device, net, dtype, tol):
    flow = _on(make(dtype=dtype, n_layers=16, **net, fourier_layer=True, zero_mode_layer=True),
               device)
    z = _randn(device, dtype, 8, 4, 4)
    with torch.no_grad():
        phi, logdet = flow(z)
        z_back, logdet_inv = flow.inverse(phi)
    assert phi.device.type == device.type and logdet.dtype == torch.float64
    assert (phi - z).abs().max() > 0.1  # the perturbed flow is not the identity
    assert torch.allclose(z_back, z, atol=tol, rtol=0), float((z_back - z).abs().max())
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=tol * 10, rtol=0)


@pytest.mark.parametrize("shape,cfg", [
    ((4, 4), dict(equivariant=True, fourier_layer=True, zero_mode_layer=True)),
    ((4, 4), dict(equivariant=False, fourier_layer=True)),
    ((4, 4), dict(conditioner="odd", activation="tanh", zero_mode_layer=True)),
    ((4, 4, 4), dict(equivariant=True, fourier_layer=True, n_layers=2, hidden_channels=(4,))),
])
def test_logdet_matches_autograd_jacobian_on_device(device, shape, cfg):
    flow = _on(make(shape=shape, **cfg), device)
    z = _randn(device, torch.float64, 1, *shape, seed=2)
    _, logdet = flow(z)
    jac_logdet = autograd_logdet(flow, z[0])
    assert jac_logdet.device.type == device.type
    assert torch.allclose(logdet[0], jac_logdet, atol=1e-10, rtol=0), (
        float(logdet[0]), float(jac_logdet))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("net", [dict(activation="silu"),
                                 dict(conditioner="odd", activation="tanh")],
                         ids=["symmetrized", "odd"])
def test_z2_equivariance_exact_on_device(device, dtype, net):
    flow = _on(make(dtype=dtype, n_layers=8, fourier_layer=True, zero_mode_layer=True, **net),
               device)
    z = _randn(device, dtype, 6, 4, 4, seed=3)
    with torch.no_grad():
        phi, logdet = flow(z)
        phi_m, logdet_m = flow(-z)
        z_p, ld_inv_p = flow.inverse(phi)
        z_m, ld_inv_m = flow.inverse(-phi)
    assert (phi - z).abs().max() > 0.1
    assert torch.equal(phi_m, -phi)
    assert torch.equal(logdet_m, logdet)
    assert torch.equal(z_m, -z_p) and torch.equal(ld_inv_m, ld_inv_p)


def test_float32_log_q_and_log_prob_match_a_float64_evaluation(device):
    """log w = -S - log q of float32 samples drawn on the device, from the sampling pass and from
    log_prob (the inverse), against the same weights in float64 on the CPU; the bound is that of
    tests/unit/test_logdensity_precision.py (3 sqrt(V) eps32 m), and log_prob == log q within
    twice it."""
    shape = (64, 64)
    flow = _on(_flow(shape), device)
    flow64 = copy.deepcopy(flow).double().cpu()
    action = Phi4Action(0.5, 0.5, len(shape))
    with torch.no_grad():
        phi, log_q = flow.sample(32, generator=_gen(device, 1))
        log_prob = flow.log_prob(phi)
        z = flow.prior.sample(32, generator=_gen(device, 1), device=device)
        phi_again, log_r, lds = _pieces(flow, z)
    assert phi.device.type == device.type and phi.dtype == torch.float32
    assert log_q.dtype == torch.float64 and log_prob.dtype == torch.float64
    torch.testing.assert_close(phi_again, phi, rtol=0, atol=0)  # same draw, same pass
    phi_cpu = phi.cpu()
    with torch.no_grad():
        reference = -(action(phi_cpu.double()) + flow64.log_prob(phi_cpu.double()))
    log_w = -(action(phi_cpu.double()) + log_q.cpu())
    log_w_inv = -(action(phi_cpu.double()) + log_prob.cpu())
    bound = 3 * _scale(action, phi_cpu, log_r.cpu(), [ld.cpu() for ld in lds])
    assert float((log_w - reference).abs().max()) < bound, (
        float((log_w - reference).abs().max()), bound)
    assert float((log_w_inv - reference).abs().max()) < bound, (
        float((log_w_inv - reference).abs().max()), bound)
    assert float((log_prob - log_q).abs().max()) < 2 * bound
