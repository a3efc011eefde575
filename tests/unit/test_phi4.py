"""Action and force against autograd; the two parametrizations agree up to a constant."""

import math

import pytest
import torch

from lattice_flows.theory.phi4 import Phi4Action, hopping_to_standard, standard_to_hopping

SHAPES = {1: (10,), 2: (6, 4), 3: (4, 4, 6)}


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("m2,lam", [(-4.0, 8.0), (1.0, 0.0), (0.3, 1.7)])
def test_force_equals_autograd(ndim, m2, lam):
    g = torch.Generator().manual_seed(ndim)
    S = Phi4Action(m2, lam, ndim)
    phi = torch.randn((3, *SHAPES[ndim]), generator=g, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(S(phi).sum(), phi)
    torch.testing.assert_close(S.force(phi.detach()), grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_action_matches_explicit_sum(ndim):
    """S = sum_x [sum_mu phi(x)(2phi(x) - phi(x+mu) - phi(x-mu)) + m2 phi^2 + lam phi^4]."""
    g = torch.Generator().manual_seed(10 + ndim)
    m2, lam = -1.3, 0.7
    phi = torch.randn((2, *SHAPES[ndim]), generator=g, dtype=torch.float64)
    dims = tuple(range(1, ndim + 1))
    expected = torch.zeros(2, dtype=torch.float64)
    for mu in dims:
        expected += (phi * (2 * phi - phi.roll(-1, mu) - phi.roll(1, mu))).sum(dims)
    expected += (m2 * phi**2 + lam * phi**4).sum(dims)
    torch.testing.assert_close(Phi4Action(m2, lam, ndim)(phi), expected, rtol=1e-13, atol=1e-12)


def test_float32_batch_shape_and_float64_sum():
    """A float32 batch gives S summed in float64 (the total of ~V terms would otherwise carry
    a rounding error of eps32 * |S|); the force stays per site in float32."""
    S = Phi4Action(-4.0, 8.0, 2)
    phi = torch.randn(5, 8, 8)
    out = S(phi)
    assert out.shape == (5,) and out.dtype == torch.float64
    assert S.force(phi).dtype == torch.float32


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_hopping_parametrization_equal_up_to_constant(ndim):
    """S_hop(varphi) = S(sqrt(kappa) varphi) + lam_hop V  (docs/conventions.md)."""
    kappa, lam_hop = 0.27, 0.022
    m2, lam = hopping_to_standard(kappa, lam_hop, ndim)
    g = torch.Generator().manual_seed(20 + ndim)
    varphi = torch.randn((4, *SHAPES[ndim]), generator=g, dtype=torch.float64)
    dims = tuple(range(1, ndim + 1))
    hop = torch.zeros(4, dtype=torch.float64)
    for mu in dims:
        hop += -2 * kappa * (varphi * varphi.roll(-1, mu)).sum(dims)
    hop += (varphi**2 + lam_hop * (varphi**2 - 1) ** 2).sum(dims)
    std = Phi4Action(m2, lam, ndim)(math.sqrt(kappa) * varphi)
    V = math.prod(SHAPES[ndim])
    torch.testing.assert_close(hop - std, torch.full_like(std, lam_hop * V), rtol=0, atol=1e-10)


def test_hopping_roundtrip():
    for d in (1, 2, 3):
        m2, lam = hopping_to_standard(0.3, 0.02, d)
        kappa, lam_hop = standard_to_hopping(m2, lam, d)
        assert kappa == pytest.approx(0.3, rel=1e-12)
        assert lam_hop == pytest.approx(0.02, rel=1e-12)
