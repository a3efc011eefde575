"""Unit tests of lattice_flows.flows: invertibility, exact log-det (autograd Jacobian), Z2 and
translation equivariance, batch independence, size-agnosticism and the exact free field.

Tolerances are float precision (float64: ~1e-10 after a 16-layer stack; float32: ~1e-5).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lattice_flows.config import FlowConfig
from lattice_flows.flows import (
    AffineBijection,
    ConvConditioner,
    CouplingLayer,
    Flow,
    FourierGaussianLayer,
    StandardNormalPrior,
    ZeroModeLayer,
    build_baseline_flow,
    build_flow,
    checkerboard,
    make_conv_net,
)
from lattice_flows.theory.phi4 import Phi4Action

SMALL = dict(n_layers=4, hidden_channels=(8, 8), kernel_size=3)
# the three conditioner nets: symmetrised equivariant, non-equivariant, odd equivariant
NETS = [
    dict(equivariant=True),
    dict(equivariant=False),
    dict(equivariant=True, conditioner="odd", activation="tanh"),
]
NET_IDS = ["symmetrized", "plain", "odd"]
DEFAULT_SIZE = dict(n_layers=16, hidden_channels=(32, 32))  # the FlowConfig defaults


def perturbed(flow: Flow, scale: float = 0.1, seed: int = 1) -> Flow:
    """Add small random values to every parameter, so zero-initialised layers are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def make(shape=(4, 4), dtype=torch.float64, seed=0, m2=0.5, **cfg) -> Flow:
    torch.manual_seed(seed)
    params = {**SMALL, **cfg}
    flow = perturbed(build_flow(FlowConfig(**params), shape, m2=m2))
    for layer in flow.layers:
        if isinstance(layer, ZeroModeLayer):  # far from its near-identity initialisation
            with torch.no_grad():
                layer.raw_b.copy_(torch.randn(layer.raw_b.shape))
                layer.raw_d.copy_(torch.randn(layer.raw_d.shape))
    return flow.to(dtype)


# --------------------------------------------------------------------------- masks, prior


def test_checkerboard_parity_any_dimension():
    for shape in [(6,), (4, 4), (2, 4, 6)]:
        m0, m1 = checkerboard(shape, 0), checkerboard(shape, 1)
        assert m0.dtype == torch.bool and m0.shape == shape
        assert torch.equal(m0, ~m1)
        idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
        assert torch.equal(m1, idx.sum(0) % 2 == 1)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        checkerboard((4, 5), 0)


def test_prior_log_prob():
    prior = StandardNormalPrior((4, 4))
    z = prior.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=(1, 2))
    assert z.shape == (3, 4, 4)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-12)


# --------------------------------------------------------------------------- invertibility


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_invertibility(net, dtype, tol):
    flow = make(dtype=dtype, n_layers=16, **net, fourier_layer=True,
                zero_mode_layer=True)
    z = torch.randn(8, 4, 4, dtype=dtype)
    phi, logdet = flow(z)
    z_back, logdet_inv = flow.inverse(phi)
    assert (phi - z).abs().max() > 0.1  # the perturbed flow is not the identity
    assert torch.allclose(z_back, z, atol=tol, rtol=0)
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=tol * 10, rtol=0)


# --------------------------------------------------------------------------- log-det


def autograd_logdet(flow: Flow, z: torch.Tensor) -> torch.Tensor:
    shape = z.shape

    def f(v):
        return flow(v.reshape(1, *shape))[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, z.reshape(-1), vectorize=True)
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize(
    "shape,cfg",
    [
        ((4, 4), dict(equivariant=True, fourier_layer=False, **DEFAULT_SIZE)),
        ((4, 4), dict(equivariant=True, fourier_layer=True, **DEFAULT_SIZE)),
        ((4, 4), dict(equivariant=False, fourier_layer=False)),
        ((4, 4), dict(equivariant=False, fourier_layer=True, activation="leaky_relu")),
        ((6,), dict(equivariant=True, fourier_layer=True, activation="gelu")),
        ((4, 4, 4), dict(equivariant=True, fourier_layer=True, n_layers=2, hidden_channels=(4,))),
        ((4, 4), dict(equivariant=True, fourier_layer=True, zero_mode_layer=True)),
        ((6,), dict(equivariant=True, fourier_layer=False, zero_mode_layer=True, n_layers=2)),
        ((4, 4), dict(conditioner="odd", activation="tanh", zero_mode_layer=True)),
        ((4, 4, 4), dict(conditioner="odd", activation="softsign", n_layers=2, hidden_channels=(4,))),
    ],
)
def test_logdet_matches_autograd_jacobian(shape, cfg):
    flow = make(shape=shape, **cfg)
    z = torch.randn(1, *shape, dtype=torch.float64)
    _, logdet = flow(z)
    assert torch.allclose(logdet[0], autograd_logdet(flow, z[0]), atol=1e-10, rtol=0)


def test_fourier_layer_logdet_and_inverse():
    layer = FourierGaussianLayer((4, 6), m2_init=0.3).double()
    with torch.no_grad():
        layer.knot_values.add_(0.3 * torch.randn(layer.n_knots, dtype=torch.float64))
    z = torch.randn(2, 4, 6, dtype=torch.float64)
    phi, logdet = layer(z)
    single = Flow(StandardNormalPrior((4, 6)), [layer])
    assert torch.allclose(logdet[0], autograd_logdet(single, z[0]), atol=1e-12, rtol=0)
    assert torch.equal(logdet[0], logdet[1])
    z_back, logdet_inv = layer.inverse(phi)
    assert torch.allclose(z_back, z, atol=1e-12)
    assert torch.allclose(logdet_inv, -logdet, atol=1e-12)


def test_zero_mode_layer_moves_only_the_magnetisation_and_inverts_with_gradients():
    layer = ZeroModeLayer(ndim=2).double()
    with torch.no_grad():
        layer.raw_b.copy_(torch.tensor([0.5, -1.0, 1.0, 0.0]))
        layer.raw_d.copy_(torch.tensor([-0.5, 0.3, -2.0, 1.0]))
    x = torch.randn(5, 4, 6, dtype=torch.float64) * 2
    y, logdet = layer(x)
    # only the zero mode changes: y - x is constant over the lattice, non-zero modes are equal
    diff = y - x
    assert torch.allclose(diff, diff.mean(dim=(1, 2), keepdim=True).expand_as(diff), atol=1e-14)
    fx, fy = torch.fft.fftn(x, dim=(1, 2)), torch.fft.fftn(y, dim=(1, 2))
    assert torch.allclose(fx[:, 1:], fy[:, 1:], atol=1e-12) and torch.allclose(fx[:, 0, 1:], fy[:, 0, 1:], atol=1e-12)
    # the magnetisation distribution is reshaped: g is non-linear
    c = x.sum(dim=(1, 2)) / math.sqrt(24)
    g, slope = layer.g_and_slope(c)
    assert (slope > 0).all() and not torch.allclose(g / c, (g / c)[:1].expand(5), rtol=1e-3)
    # inverse and its gradients (one implicit Newton step after the safeguarded Newton solve)
    y.requires_grad_(True)
    x_back, logdet_inv = layer.inverse(y)
    assert torch.allclose(x_back, x, atol=1e-12) and torch.allclose(logdet_inv, -logdet, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: layer.inverse(v)[0], (y[:2].detach().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda v: layer.inverse(v)[1], (y[:2].detach().requires_grad_(),))


NARROW = (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def test_narrow_zero_mode_widths_make_a_sharp_bimodal_map_that_inverts_exactly(tmp_path):
    """flow.zero_mode_widths: with a width << 1 the map g can jump across c = 0 within a small
    fraction of the prior's mass (the broken phase: two narrow sectors at c = +-|M| sqrt(V));
    invertibility, log-det against autograd, exact Z2 and the flow.pt round trip hold for any
    widths."""
    from lattice_flows.config import config_from_dict
    from lattice_flows.flows.flowfile import flow_state, load_flow

    flow = make(n_layers=2, zero_mode_layer=True, zero_mode_widths=NARROW)
    layer = flow.layers[0]
    assert isinstance(layer, ZeroModeLayer) and tuple(layer.widths.tolist()) == NARROW
    # b_k = s_k softplus(raw_b_k), s_k = max(1, 0.5 / w_k)^2: 1 for the default widths
    assert layer.b_scale.tolist() == [256.0, 64.0, 16.0, 4.0, 1.0, 1.0, 1.0, 1.0]
    assert ZeroModeLayer(ndim=2).b_scale.tolist() == [1.0] * 4
    with torch.no_grad():  # a step of height 10 over a width 1/32, slope 0.05 elsewhere
        layer.raw_a.fill_(math.log(math.expm1(0.05)))
        layer.raw_b.fill_(-30.0)
        layer.raw_b[0] = math.log(math.expm1(10.0 / NARROW[0] / (0.5 / NARROW[0]) ** 2))
        layer.raw_d.fill_(-30.0)
    c = torch.tensor([-0.2, -0.1, 0.1, 0.2], dtype=torch.float64)
    g, _ = layer.g_and_slope(c)
    assert (g.abs() > 9.9).all() and torch.equal(g[:2], -g[2:].flip(0))
    default_step = ZeroModeLayer(ndim=2).double()
    with torch.no_grad():  # the same step with the default widths' narrowest term (0.5)
        default_step.raw_a.fill_(math.log(math.expm1(0.05)))
        default_step.raw_b.fill_(-30.0)
        default_step.raw_b[0] = math.log(math.expm1(10.0 / 0.5))
        default_step.raw_d.fill_(-30.0)
    assert (default_step.g_and_slope(c)[0].abs() < 4.0).all()  # stuck in the barrier
    z = torch.randn(3, 4, 4, dtype=torch.float64)
    phi, logdet = flow(z)
    z_back, logdet_inv = flow.inverse(phi)
    assert torch.allclose(z_back, z, atol=1e-9) and torch.allclose(logdet_inv, -logdet, atol=1e-9)
    assert torch.allclose(logdet[0], autograd_logdet(flow, z[0]), atol=1e-8, rtol=0)
    phi_m, logdet_m = flow(-z)
    assert torch.equal(phi_m, -phi) and torch.equal(logdet_m, logdet)
    cfg = config_from_dict({"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 3.5},
                            "flow": {**SMALL, "n_layers": 2, "zero_mode_layer": True,
                                     "zero_mode_widths": list(NARROW)}})
    torch.save(flow_state(flow, cfg), tmp_path / "flow.pt")
    back = load_flow(tmp_path / "flow.pt", (4, 4), "cpu", torch.float64)
    assert tuple(back.layers[0].widths.tolist()) == NARROW
    # (load_flow builds in float32 before casting: the float64 weights come back rounded)
    assert torch.allclose(back(z)[0], phi, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- symmetries


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["tanh", "relu", "silu"])
def test_z2_equivariance_exact(dtype, activation):
    flow = make(dtype=dtype, n_layers=8, activation=activation, fourier_layer=True,
                zero_mode_layer=True)
    z = torch.randn(6, 4, 4, dtype=dtype)
    phi, logdet = flow(z)
    phi_m, logdet_m = flow(-z)
    assert torch.equal(phi_m, -phi)
    assert torch.equal(logdet_m, logdet)
    z_m, ld_inv_m = flow.inverse(-phi)
    z_p, ld_inv_p = flow.inverse(phi)
    assert torch.equal(z_m, -z_p) and torch.equal(ld_inv_m, ld_inv_p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
def test_z2_equivariance_exact_odd_conditioner(dtype, activation):
    flow = make(dtype=dtype, n_layers=8, conditioner="odd", activation=activation,
                fourier_layer=True, zero_mode_layer=True)
    z = torch.randn(6, 4, 4, dtype=dtype)
    phi, logdet = flow(z)
    phi_m, logdet_m = flow(-z)
    assert (phi - z).abs().max() > 0.1
    assert torch.equal(phi_m, -phi)
    assert torch.equal(logdet_m, logdet)
    z_m, ld_inv_m = flow.inverse(-phi)
    z_p, ld_inv_p = flow.inverse(phi)
    assert torch.equal(z_m, -z_p) and torch.equal(ld_inv_m, ld_inv_p)


def test_odd_conditioner_parity_of_outputs():
    """s (channel 0) is even and t (channel 1) odd, and both depend on the input."""
    from lattice_flows.flows.nets import OddConvConditioner

    torch.manual_seed(2)
    net = OddConvConditioner(2, (6, 6), 3, "tanh", identity_init=False).double()
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    p, p_m = net(x), net(-x)
    assert torch.equal(p_m[:, 0], p[:, 0]) and torch.equal(p_m[:, 1], -p[:, 1])
    assert p[:, 0].std() > 1e-3 and p[:, 1].std() > 1e-3
    assert sum(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv2d)) == 1
    with pytest.raises(ValueError, match="odd activation.*silu"):
        OddConvConditioner(2, (4,), 3, "silu")


def test_non_equivariant_flow_breaks_z2():
    """Sanity check that the Z2 test has teeth: the baseline is not Z2-equivariant."""
    torch.manual_seed(0)
    flow = perturbed(build_baseline_flow((4, 4))).double()
    z = torch.randn(4, 4, 4, dtype=torch.float64)
    assert not torch.allclose(flow(-z)[0], -flow(z)[0], atol=1e-3)


@pytest.mark.parametrize("shift", [(1, 1), (2, 0), (0, 2), (-1, 1)])
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_translation_equivariance(shift, net):
    flow = make(shape=(4, 6), n_layers=8, **net, fourier_layer=True,
                zero_mode_layer=True)
    z = torch.randn(3, 4, 6, dtype=torch.float64)
    phi, logdet = flow(z)
    phi_s, logdet_s = flow(torch.roll(z, shift, dims=(1, 2)))
    assert torch.allclose(phi_s, torch.roll(phi, shift, dims=(1, 2)), atol=1e-12, rtol=0)
    assert torch.allclose(logdet_s, logdet, atol=1e-12, rtol=0)


def test_odd_shift_is_not_a_symmetry():
    """A shift by (1, 0) swaps the checkerboard parities, so it must change the flow."""
    flow = make(n_layers=4)
    z = torch.randn(2, 4, 4, dtype=torch.float64)
    phi_s, _ = flow(torch.roll(z, (1, 0), dims=(1, 2)))
    assert not torch.allclose(phi_s, torch.roll(flow(z)[0], (1, 0), dims=(1, 2)), atol=1e-4)


# --------------------------------------------------------------------------- batch independence


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_batch_independence(net):
    # float64: batch-size dependent convolution algorithms change float32 results by rounding
    # (~1e-6), which says nothing about batch coupling; in float64 any coupling would show
    flow = make(dtype=torch.float64, n_layers=16, **net, fourier_layer=True,
                zero_mode_layer=True)
    with torch.no_grad():
        phi, _ = flow.sample(16, generator=torch.Generator().manual_seed(3))
        ref = flow.log_prob(phi)
        others = torch.randn(20, 4, 4, dtype=torch.float64) * 3.0
        cases = [  # (batch, rows of phi[:5] in it)
            (phi[:1], slice(0, 1)),
            (phi[:5], slice(0, 5)),
            (torch.cat([phi[:5], others]), slice(0, 5)),
            (torch.cat([others, phi[:5]]), slice(20, 25)),
        ]
        for batch, rows in cases:
            got = flow.log_prob(batch)[rows]
            assert torch.allclose(got, ref[: got.shape[0]], atol=1e-11, rtol=1e-12)


# --------------------------------------------------------------------------- sample vs log_prob


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_sample_log_q_matches_log_prob(net):
    flow = make(dtype=torch.float32, n_layers=16, **net, fourier_layer=True,
                zero_mode_layer=True)
    with torch.no_grad():
        phi, log_q = flow.sample(64, generator=torch.Generator().manual_seed(4))
        assert phi.dtype == torch.float32 and log_q.shape == (64,)
        assert torch.allclose(flow.log_prob(phi), log_q, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_fresh_flow_is_identity(net):
    torch.manual_seed(0)
    cfg = FlowConfig(
        n_layers=6, hidden_channels=(8, 8), **net, fourier_layer=False
    )
    flow = build_flow(cfg, (4, 4))
    z = torch.randn(5, 4, 4)
    phi, logdet = flow(z)
    assert torch.equal(phi, z)
    assert torch.equal(logdet, torch.zeros(5))
    assert torch.equal(flow.inverse(z)[0], z)


def test_baseline_flow_architecture():
    flow = build_baseline_flow((8, 8))
    couplings = [layer for layer in flow.layers if isinstance(layer, CouplingLayer)]
    assert len(couplings) == len(flow.layers) == 16
    assert all(not c.conditioner.equivariant for c in couplings)
    convs = [m for m in couplings[0].conditioner.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 2]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert couplings[0].conditioner.net.radius == 3  # periodic extension once, 3 valid convs
    # parities alternate: layer k updates the sites with (x + y) % 2 == k % 2
    for k, c in enumerate(couplings):
        assert torch.equal(c.mask_active, checkerboard((2, 2), k % 2))
    # 3 convs: (1*8*9 + 8) + (8*8*9 + 8) + (8*2*9 + 2) = 810 per layer
    assert flow.n_params() == 16 * 810


@pytest.mark.parametrize("ndim,extent", [(1, 6), (2, 4), (2, 2), (3, 2)])
def test_periodic_conv_net_equals_circular_padding(ndim, extent):
    """The extend-once net equals the same convs with circular 'same' padding, also when the
    receptive radius (3) exceeds the lattice extent (2)."""
    torch.manual_seed(ndim)
    net = make_conv_net(ndim, 1, (5, 4), 2, 3, "silu", identity_init=False).double()
    ref = net.circular_padded()
    convs = [m for m in ref if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]
    assert len(convs) == 3 and all(c.padding_mode == "circular" for c in convs)
    x = torch.randn(3, 1, *[extent] * ndim, dtype=torch.float64)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-12, atol=1e-12)


def test_coupling_updates_only_active_sites():
    torch.manual_seed(0)
    mask = checkerboard((4, 4), 1)
    layer = CouplingLayer(mask, ConvConditioner(2, (8,), 3), AffineBijection()).double()
    perturbed(Flow(StandardNormalPrior((4, 4)), [layer]))
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    y, _ = layer(x)
    assert torch.equal(y[:, ~mask], x[:, ~mask])
    assert (y[:, mask] - x[:, mask]).abs().min() > 0
    # the conditioner sees only the frozen sites: changing active inputs leaves s, t unchanged
    x2 = x.clone()
    x2[:, mask] += 1.0
    y2, ld2 = layer(x2)
    _, ld = layer(x)
    assert torch.equal(ld, ld2)


# --------------------------------------------------------------------------- free field


@pytest.mark.parametrize("shape", [(4, 4), (8, 6), (6,)])
def test_fourier_layer_reproduces_free_field(shape):
    """For lam = 0 and m2_init = m2, q = p exactly: log q(phi) + S(phi) = -log Z for all phi,
    with log Z = (V/2) log(pi) - (1/2) sum_p log(m2 + phat^2), the Gaussian integral of
    exp(-phi^T K phi) (docs/conventions.md, "Exact free-field results")."""
    m2 = 0.7
    action = Phi4Action(m2=m2, lam=0.0, ndim=len(shape))
    flow = Flow(StandardNormalPrior(shape), [FourierGaussianLayer(shape, m2_init=m2)]).double()
    phi, log_q = flow.sample(32, generator=torch.Generator().manual_seed(5))
    total = log_q + action(phi)
    V = math.prod(shape)
    eigenvalues = action.kinetic_matrix_eigenvalues(shape)
    log_z = float(0.5 * V * math.log(math.pi) - 0.5 * torch.log(eigenvalues).sum())
    assert torch.allclose(total, torch.full_like(total, -log_z), atol=1e-10, rtol=0)
    # the built flow (fresh couplings are the identity) has the same property
    torch.manual_seed(0)
    built = build_flow(FlowConfig(n_layers=2, hidden_channels=(4,)), shape, m2=m2).double()
    phi, log_q = built.sample(8, generator=torch.Generator().manual_seed(6))
    expected = torch.full((8,), -log_z, dtype=torch.float64)
    assert torch.allclose(log_q + action(phi), expected, atol=1e-10, rtol=0)


def test_fourier_m2_init_must_be_positive():
    with pytest.raises(ValueError, match="m2_init"):
        FourierGaussianLayer((4, 4), m2_init=-1.0)
    # the builder never initialises tachyonically
    flow = build_flow(FlowConfig(n_layers=2, hidden_channels=(4,)), (4, 4), m2=-4.0)
    assert flow.layers[0].m2_eff == 1.0


# --------------------------------------------------------------------------- size-agnostic


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_same_flow_runs_at_two_lattice_sizes(net):
    flow = make(shape=(4, 4), dtype=torch.float64, n_layers=8, **net)
    state = copy.deepcopy(flow.state_dict())
    for shape in [(4, 4), (8, 8), (4, 4)]:
        phi, log_q = flow.sample(4, generator=torch.Generator().manual_seed(7), lattice_shape=shape)
        assert phi.shape == (4, *shape) and torch.isfinite(log_q).all()
        assert torch.allclose(flow.log_prob(phi), log_q, atol=1e-10)
    # a flow built at 8x8 loads the 4x4 flow's parameters (nothing depends on L)
    cfg = FlowConfig(**{**SMALL, "n_layers": 8, **net})
    other = build_flow(cfg, (8, 8)).double()
    other.load_state_dict(state)
    z = torch.randn(2, 8, 8, dtype=torch.float64)
    assert torch.equal(other(z)[0], flow(z)[0])
    with pytest.raises(ValueError, match="6, 5"):
        flow.sample(2, lattice_shape=(6, 5))


def test_chunked_conditioner_evaluation_is_exact():
    """Large batches run through the conditioner nets in chunks (speed); results are unchanged."""
    from lattice_flows.flows.nets import ConvConditioner

    flow = make(dtype=torch.float64, n_layers=4, equivariant=True, fourier_layer=True)
    with torch.no_grad():
        phi, _ = flow.sample(40, generator=torch.Generator().manual_seed(5))
        ref = flow.log_prob(phi)
        old = ConvConditioner.max_rows
        try:
            ConvConditioner.max_rows = 7
            chunked = flow.log_prob(phi)
        finally:
            ConvConditioner.max_rows = old
    torch.testing.assert_close(chunked, ref, rtol=1e-12, atol=1e-11)


def _first_conv_calls(conditioner) -> list[int]:
    """Rows per call of the conditioner's first convolution (one call per chunk), recorded."""
    from lattice_flows.flows.periodic_conv import CONV_TYPES

    first = next(m for m in conditioner.modules() if isinstance(m, CONV_TYPES))
    rows: list[int] = []
    first.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_conditioners_chunk_on_the_cpu_only_and_chunks_change_nothing(net):
    """Issue 16: row chunks are a CPU cache workaround. On the CPU a batch above max_rows runs
    in chunks whose outputs and gradients equal the one-call result (rows are independent);
    on any other device (here 'meta', which runs the real conv code without numbers) the
    whole batch goes in one call, as on CUDA."""
    cond = make(dtype=torch.float64, n_layers=2, fourier_layer=False, **net).layers[0].conditioner
    x = torch.randn(40, 4, 4, dtype=torch.float64, requires_grad=True)
    rows = _first_conv_calls(cond)
    whole = cond(x)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    n_whole = len(rows)
    cond.max_rows = 7  # instance attribute: this conditioner only
    chunked = cond(x)
    (g_chunked,) = torch.autograd.grad(chunked.square().sum(), x)
    per_call = rows[n_whole:]
    assert max(per_call) <= 7 and sum(per_call) == sum(rows[:n_whole]) and len(per_call) > n_whole
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-13)
    torch.testing.assert_close(g_chunked, g_whole, rtol=0, atol=1e-12)
    rows.clear()
    cond.to("meta")(torch.empty(40, 4, 4, dtype=torch.float64, device="meta"))
    assert rows == [rows[0]] and rows[0] >= 40  # one call: 40 rows (80 for x and -x)


def test_flow_passes_on_the_cpu_change_nothing_but_speed():
    """Flow.forward / inverse split a large CPU batch into passes of at most
    ``max_sites_per_pass`` sites (rows are independent): the same phi, log q, inverse and
    gradients as one pass, to float rounding."""
    torch.manual_seed(3)
    flow = build_flow(FlowConfig(n_layers=2, hidden_channels=(4,), fourier_layer=True,
                                 zero_mode_layer=True), (4, 4), m2=1.0).double()
    one = copy.deepcopy(flow)
    flow.max_sites_per_pass = 3 * 16  # 3 rows of 4 x 4 per pass: 4 passes for 10 rows
    z = torch.randn(10, 4, 4, dtype=torch.float64, requires_grad=True)
    calls = []
    hook = flow.layers[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    (phi_a, ld_a), (phi_b, ld_b) = flow(z), one(z)
    hook.remove()
    assert calls == [3, 3, 3, 1]  # four passes on the CPU
    torch.testing.assert_close(phi_a, phi_b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ld_a, ld_b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(flow.log_prob(phi_b.detach()), one.log_prob(phi_b.detach()),
                               rtol=1e-13, atol=1e-12)
    g_a = torch.autograd.grad(ld_a.sum() + phi_a.pow(2).sum(), [z, *flow.parameters()], allow_unused=True)
    g_b = torch.autograd.grad(ld_b.sum() + phi_b.pow(2).sum(), [z, *one.parameters()], allow_unused=True)
    for a, b in zip(g_a, g_b):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
