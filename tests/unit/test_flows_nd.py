"""Flows in d = 3 and d = 4: the d = 2 checks of test_flows.py (invertibility, log-det against
the autograd Jacobian, exact Z2 equivariance, translations, batch independence) on tiny
lattices in float64, plus the d >= 4 convolution against a brute-force periodic sum and the
choice between extending the input once or before every convolution (a speed choice that must
not change results). Tolerances are float64 rounding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lattice_flows.config import FlowConfig, config_from_dict
from lattice_flows.flows import build_flow
from lattice_flows.flows import periodic_conv
from lattice_flows.flows.conditioner_parts import chunk_rows
from lattice_flows.flows.nets import ConvConditioner, OddConvConditioner
from lattice_flows.flows.periodic_conv import ConvNd, halo_ratio, make_conv_net
from tests.unit.test_flows import NET_IDS, NETS, autograd_logdet, make

# d = 3 and d = 4 lattices, and a small net so that the 4D Jacobian (256 x 256) stays cheap
SHAPES = [(4, 4, 6), (4, 4, 4, 4)]
SHAPE_IDS = ["d3", "d4"]
TINY = dict(n_layers=4, hidden_channels=(4,), fourier_layer=True, zero_mode_layer=True)


def brute_force_circular_conv(x: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor) -> torch.Tensor:
    """out[b, o, x] = bias[o] + sum_{c, delta} w[o, c, delta] x[b, c, x + delta - r] (mod L)."""
    d = weight.dim() - 2
    r = weight.shape[2] // 2
    dims = tuple(range(2, 2 + d))
    out = bias.view(1, -1, *[1] * d).expand(x.shape[0], -1, *x.shape[2:]).clone()
    for delta in itertools.product(range(weight.shape[2]), repeat=d):
        shifted = torch.roll(x, tuple(r - k for k in delta), dims=dims)  # x[x + delta - r]
        out += torch.einsum("oc,bc...->bo...", weight[(slice(None), slice(None), *delta)], shifted)
    return out


@pytest.mark.parametrize("d,extent", [(1, 5), (2, 4), (3, 4), (4, 4), (4, 2), (5, 2)])
def test_periodic_conv_matches_brute_force_sum(d, extent):
    """Every conv of a periodic net, d = 1..5, equals the explicit sum over kernel offsets with
    periodic wrap, also when the receptive radius (2) exceeds the extent (2)."""
    torch.manual_seed(d)
    net = make_conv_net(d, 2, (3,), 2, 3, "tanh", identity_init=False).double()
    x = torch.randn(2, 2, *[extent] * d, dtype=torch.float64)
    convs = [m for m in net if not isinstance(m, torch.nn.Tanh)]
    ref = brute_force_circular_conv(x, convs[0].weight, convs[0].bias)
    ref = brute_force_circular_conv(torch.tanh(ref), convs[1].weight, convs[1].bias)
    torch.testing.assert_close(net(x), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.circular_padded()(x), ref, rtol=1e-12, atol=1e-12)
    if d >= 4:
        assert all(isinstance(c, ConvNd) for c in convs)
        assert convs[0].weight.shape == (3, 2, *[3] * d)


def test_conv_nd_refuses_zero_padding():
    with pytest.raises(ValueError, match="circularly only"):
        ConvNd(4, 1, 1, 3, padding=1)


def test_conv_nd_initialisation_scale_matches_torch():
    """ConvNd draws its weights like torch's Conv3d: uniform in +-1/sqrt(fan_in)."""
    torch.manual_seed(0)
    conv = ConvNd(4, 8, 16, 3)
    bound = 1.0 / math.sqrt(8 * 3**4)
    w = conv.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert conv.bias.detach().abs().max() <= bound


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_invertibility_nd(shape, net):
    flow = make(shape=shape, **{**TINY, "n_layers": 8}, **net)
    z = torch.randn(4, *shape, dtype=torch.float64)
    phi, logdet = flow(z)
    z_back, logdet_inv = flow.inverse(phi)
    assert (phi - z).abs().max() > 0.1  # the perturbed flow is not the identity
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 4, 4), (2, 2, 4, 4), (4, 4, 4, 4)])
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_logdet_matches_autograd_jacobian_nd(shape, net):
    flow = make(shape=shape, **{**TINY, "n_layers": 2}, **net)
    z = torch.randn(1, *shape, dtype=torch.float64)
    _, logdet = flow(z)
    torch.testing.assert_close(logdet[0], autograd_logdet(flow, z[0]), atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("net", [NETS[0], NETS[2]], ids=[NET_IDS[0], NET_IDS[2]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_z2_equivariance_exact_nd(shape, net, dtype):
    flow = make(shape=shape, dtype=dtype, **TINY, **net)
    z = torch.randn(3, *shape, dtype=dtype)
    phi, logdet = flow(z)
    phi_m, logdet_m = flow(-z)
    assert (phi - z).abs().max() > 0.1
    assert torch.equal(phi_m, -phi) and torch.equal(logdet_m, logdet)
    z_m, ld_m = flow.inverse(-phi)
    z_p, ld_p = flow.inverse(phi)
    assert torch.equal(z_m, -z_p) and torch.equal(ld_m, ld_p)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_non_equivariant_flow_breaks_z2_nd(shape):
    """The Z2 test has teeth in d = 3, 4: the plain conditioner is not equivariant."""
    flow = make(shape=shape, **TINY, equivariant=False)
    z = torch.randn(2, *shape, dtype=torch.float64)
    assert not torch.allclose(flow(-z)[0], -flow(z)[0], atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_translation_equivariance_nd(shape, net):
    """Even shifts (sum of components even) commute with the flow; an odd shift swaps the
    checkerboard parities and must not."""
    flow = make(shape=shape, **TINY, **net)
    d = len(shape)
    dims = tuple(range(1, d + 1))
    z = torch.randn(2, *shape, dtype=torch.float64)
    phi, logdet = flow(z)
    for shift in [(1, 1) + (0,) * (d - 2), (0,) * (d - 1) + (2,), (-1,) + (0,) * (d - 2) + (3,)]:
        phi_s, logdet_s = flow(torch.roll(z, shift, dims=dims))
        torch.testing.assert_close(phi_s, torch.roll(phi, shift, dims=dims), atol=1e-12, rtol=0)
        torch.testing.assert_close(logdet_s, logdet, atol=1e-12, rtol=0)
    odd = (1,) + (0,) * (d - 1)
    phi_s, _ = flow(torch.roll(z, odd, dims=dims))
    assert not torch.allclose(phi_s, torch.roll(phi, odd, dims=dims), atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_batch_independence_nd(shape, net):
    flow = make(shape=shape, **TINY, **net)
    with torch.no_grad():
        phi, log_q = flow.sample(6, generator=torch.Generator().manual_seed(3))
        ref = flow.log_prob(phi)
        torch.testing.assert_close(ref, log_q, atol=1e-10, rtol=0)
        others = torch.randn(9, *shape, dtype=torch.float64) * 3.0
        for batch, rows in [(phi[:1], slice(0, 1)), (torch.cat([others, phi[:4]]), slice(9, 13))]:
            got = flow.log_prob(batch)[rows]
            torch.testing.assert_close(got, ref[: got.shape[0]], atol=1e-11, rtol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 6), (4, 4, 4, 4)])
@pytest.mark.parametrize("cls", [ConvConditioner, OddConvConditioner])
def test_extend_once_and_per_conv_give_the_same_parameters(shape, cls, monkeypatch):
    """The two ways of making the convs periodic are one function (float64 rounding)."""
    torch.manual_seed(1)
    net = cls(len(shape), (5, 4), 3, "tanh", identity_init=False).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    monkeypatch.setattr(periodic_conv, "EXTEND_ONCE_BELOW", math.inf)
    once = net(x)
    monkeypatch.setattr(periodic_conv, "EXTEND_ONCE_BELOW", 0.0)
    per_conv = net(x)
    torch.testing.assert_close(per_conv, once, rtol=1e-12, atol=1e-12)


def test_small_and_3d_lattices_pad_before_every_conv():
    """The speed choice of PeriodicConvNet: on 4x4x6 extending once computes the middle conv on
    6x6x8 = 3x the volume, so the net pads before every conv; at 32^2 it extends once."""
    net = make_conv_net(3, 1, (32, 32), 2, 3, "silu")
    convs = [m for m in net if isinstance(m, torch.nn.Conv3d)]
    ratio = halo_ratio(convs, (4, 4, 6))
    expected = (32 * 8 * 8 * 10 + 32 * 32 * 6 * 6 * 8 + 64 * 96) / (96 * (32 + 1024 + 64))
    assert ratio == pytest.approx(expected, rel=1e-12) and ratio > 2.9
    assert not net.extends_once((4, 4, 6)) and not net.extends_once((8, 8, 8))
    assert make_conv_net(2, 1, (32, 32), 2, 3, "silu").extends_once((32, 32))


def test_chunk_rows_bound_the_sites_per_conv_call():
    """Chunks hold at most max_sites sites (the cost per site of oneDNN convs rises once a
    call leaves the cache), at most max_rows rows and at least one row."""
    assert chunk_rows((8, 8), 256, 16384) == 256
    assert chunk_rows((4, 4, 6), 256, 16384) == 170
    assert chunk_rows((32, 32), 256, 16384) == 16
    assert chunk_rows((256, 256), 256, 16384) == 1
    flow = make(shape=(4, 4, 6), **TINY)
    with torch.no_grad():
        phi, _ = flow.sample(40, generator=torch.Generator().manual_seed(5))
        ref = flow.log_prob(phi)
        old = ConvConditioner.max_sites
        try:
            ConvConditioner.max_sites = 7 * 96  # 7 rows per call
            chunked = flow.log_prob(phi)
        finally:
            ConvConditioner.max_sites = old
    torch.testing.assert_close(chunked, ref, rtol=1e-12, atol=1e-11)


def test_4d_config_with_a_flow_builds_and_samples():
    """A 4-dimensional lattice with a flow section (the issue: it passed validation, then died
    in the conv-class lookup) builds a flow whose proposals have the right log q."""
    cfg = config_from_dict({"lattice": {"shape": [4, 4, 4, 2]}, "action": {"m2": 1.0, "lam": 0.5},
                            "flow": {"n_layers": 2, "hidden_channels": [4]}})
    torch.manual_seed(0)
    flow = build_flow(cfg.flow, cfg.lattice.shape, m2=cfg.action.m2).double()
    with torch.no_grad():
        phi, log_q = flow.sample(5)
        assert phi.shape == (5, 4, 4, 4, 2)
        torch.testing.assert_close(flow.log_prob(phi), log_q, atol=1e-10, rtol=0)
    assert flow.n_params() == build_flow(FlowConfig(n_layers=2, hidden_channels=(4,)),
                                         (2, 2, 2, 2)).n_params()
