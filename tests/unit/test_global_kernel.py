"""Unit tests of the global-kernel conditioner (lattice_flows/flows/global_kernel.py) and of
flows built with ``flow.conditioner = 'global'``: the kernels are the lattice propagators they
claim to be, invertibility, log-det vs the autograd Jacobian, exact Z2, translations, the D4
rotations/reflections that preserve the checkerboard mask, batch independence, transfer in L.

float64, tiny lattices; tolerances are float precision (~1e-10 after a stack of layers).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lattice_flows.config import ConfigError, FlowConfig, config_from_dict
from lattice_flows.flows import ZeroModeLayer, build_flow, checkerboard
from lattice_flows.flows.global_kernel import GlobalKernelConditioner, PhatKernelBank

CFG = dict(n_layers=4, hidden_channels=(8,), conditioner="global", global_channels=4,
           fourier_layer=True, zero_mode_layer=True)


def make(shape=(6, 6), dtype=torch.float64, seed=0, **over):
    """A global-kernel flow with every parameter moved away from its (identity) init."""
    torch.manual_seed(seed)
    flow = build_flow(FlowConfig(**{**CFG, **over}), shape, m2=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for layer in flow.layers:
            if isinstance(layer, ZeroModeLayer):
                layer.raw_b.copy_(torch.randn(layer.raw_b.shape, generator=g))
    return flow.to(dtype)


# --------------------------------------------------------------------------- the kernels


def laplacian_matrix(L: int) -> torch.Tensor:
    """-Laplacian of the periodic L x L lattice as a V x V matrix (docs/conventions.md)."""
    V = L * L
    m = torch.zeros(V, V, dtype=torch.float64)
    for x, y in itertools.product(range(L), range(L)):
        i = x * L + y
        m[i, i] = 4.0
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            m[i, ((x + dx) % L) * L + (y + dy) % L] -= 1.0
    return m


@pytest.mark.parametrize("L", [4, 6])
def test_kernel_basis_is_laplacian_and_normalised_propagators(L):
    """Basis 0 is phat^2 = -Laplacian; basis n is mu^2 (-Laplacian + mu^2)^-1, by direct
    inversion of the V x V matrix (a hand computation of the lattice propagator)."""
    bank = PhatKernelBank(2, 1, 1, ranges=(0.7, 3.0)).double()
    delta = torch.zeros(1, 1, L, L, dtype=torch.float64)
    delta[0, 0, 0, 0] = 1.0
    lap = laplacian_matrix(L)
    mus = torch.exp(bank.log_mu.detach())
    expected = [lap[:, 0]] + [
        mu**2 * torch.linalg.solve(lap + mu**2 * torch.eye(L * L, dtype=torch.float64),
                                   torch.eye(L * L, dtype=torch.float64)[:, 0])
        for mu in mus
    ]
    for n, exp in enumerate(expected):
        with torch.no_grad():
            bank.coef.zero_()
            bank.coef[0, 0, n] = 1.0
            got = bank(delta).reshape(-1)
        assert torch.allclose(got, exp, atol=1e-12, rtol=0), n


def test_kernel_transfers_to_a_larger_lattice():
    """The same parameters at L = 16 on an L = 8 configuration tiled 2 x 2 give the L = 8
    output tiled: the kernel means the same function of p at both L."""
    torch.manual_seed(0)
    net = GlobalKernelConditioner(2, channels=4, hidden_channels=(8,), identity_init=False).double()
    x8 = torch.randn(3, 8, 8, dtype=torch.float64) * checkerboard((8, 8), 1)
    with torch.no_grad():
        p8 = net(x8)
        p16 = net(x8.repeat(1, 2, 2))
    assert torch.allclose(p16, p8.repeat(1, 1, 2, 2), atol=1e-12, rtol=0)


def test_flow_built_at_8_runs_at_16():
    flow = make(shape=(8, 8))
    with torch.no_grad():
        phi, log_q = flow.sample(4, lattice_shape=(16, 16))
        assert phi.shape == (4, 16, 16)
        assert torch.allclose(flow.log_prob(phi), log_q, atol=1e-10, rtol=0)


def test_features_vanish_on_active_sites_and_outputs_have_parities():
    torch.manual_seed(2)
    net = GlobalKernelConditioner(2, identity_init=False).double()
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    odd, even = net.features(x * 0)
    assert torch.count_nonzero(odd) == 0 and torch.count_nonzero(even) == 0
    with torch.no_grad():
        p, q = net(x), net(-x)
    assert torch.equal(q[:, 0], p[:, 0]) and torch.equal(q[:, 1], -p[:, 1])
    assert p[:, 1].abs().max() > 0.01  # not the trivial t = 0


# --------------------------------------------------------------------------- bijectivity

KINDS = ["global", "global_local"]  # global_local: plus the local conv net (ablation)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(6, 6), (6,), (2, 2, 4)])
def test_invertibility(shape, kind):
    flow = make(shape=shape, conditioner=kind)
    z = torch.randn(5, *shape, dtype=torch.float64)
    phi, ld = flow(z)
    z2, ld_inv = flow.inverse(phi)
    assert torch.allclose(z2, z, atol=1e-10, rtol=0)
    assert torch.allclose(ld_inv, -ld, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(4, 4), (6,), (2, 2, 4)])
def test_logdet_matches_autograd_jacobian(shape, kind):
    flow = make(shape=shape, conditioner=kind)
    z = torch.randn(*shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.reshape(1, *shape))[0].reshape(-1), z.reshape(-1), vectorize=True)
    _, ld = flow(z.unsqueeze(0))
    assert torch.allclose(ld[0], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_flow_is_identity(kind):
    flow = build_flow(FlowConfig(**{**CFG, "fourier_layer": False, "zero_mode_layer": False,
                                    "conditioner": kind}), (6, 6)).double()
    z = torch.randn(3, 6, 6, dtype=torch.float64)
    phi, ld = flow(z)
    assert torch.equal(phi, z) and torch.count_nonzero(ld) == 0


# --------------------------------------------------------------------------- symmetries


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_z2_equivariance_exact(dtype, kind):
    flow = make(dtype=dtype, conditioner=kind)
    z = torch.randn(4, 6, 6, dtype=dtype)
    with torch.no_grad():
        phi, ld = flow(z)
        phi_m, ld_m = flow(-z)
    assert torch.equal(phi_m, -phi)
    assert torch.equal(ld_m, ld)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shift", [(1, 1), (0, 2), (2, 4), (3, 1)])
def test_translation_equivariance(shift, kind):
    """Shifts with an even sum map each checkerboard to itself: the whole flow commutes."""
    flow = make(conditioner=kind)
    z = torch.randn(3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        phi, ld = flow(z)
        phi_s, ld_s = flow(torch.roll(z, shift, dims=(1, 2)))
    assert torch.allclose(phi_s, torch.roll(phi, shift, dims=(1, 2)), atol=1e-10, rtol=0)
    assert torch.allclose(ld_s, ld, atol=1e-10, rtol=0)


def reflect(t: torch.Tensor, axis: int) -> torch.Tensor:
    """x_axis -> -x_axis mod L: a reflection about site 0 (flip is about the array centre)."""
    return torch.roll(torch.flip(t, [axis]), 1, dims=axis)


def d4_about_site(a: int, b: int, c: int):
    """The 8 elements of D4 about site 0 as (reflect x)^a (reflect y)^b (swap x, y)^c."""

    def g(t: torch.Tensor) -> torch.Tensor:
        if c:
            t = t.transpose(-1, -2)
        if b:
            t = reflect(t, t.dim() - 1)
        if a:
            t = reflect(t, t.dim() - 2)
        return t

    return g


D4 = list(itertools.product((0, 1), repeat=3))


@pytest.mark.parametrize("abc", D4, ids=[f"rx{a}ry{b}sw{c}" for a, b, c in D4])
def test_d4_about_a_site_preserves_the_mask_and_commutes_with_the_flow(abc):
    g = d4_about_site(*abc)
    for parity in (0, 1):
        mask = checkerboard((6, 6), parity)
        assert torch.equal(g(mask), mask)
    flow = make()
    z = torch.randn(3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        phi, ld = flow(z)
        phi_g, ld_g = flow(g(z))
    assert torch.allclose(phi_g, g(phi), atol=1e-10, rtol=0)
    assert torch.allclose(ld_g, ld, atol=1e-10, rtol=0)


def test_reflection_about_a_plaquette_centre_swaps_the_masks():
    """x -> L - 1 - x (about the array centre, L even) maps parity 0 to parity 1, so it is not
    a symmetry of one coupling layer: the claim above is only for D4 about a site."""
    for axis in (0, 1):
        assert torch.equal(torch.flip(checkerboard((6, 6), 0), [axis]), checkerboard((6, 6), 1))


def test_local_conv_flow_is_not_d4_equivariant():
    """The 3x3 conditioners have no rotation symmetry: the test above can fail."""
    flow = make(conditioner="symmetrized", hidden_channels=(8,))
    g = d4_about_site(0, 0, 1)
    z = torch.randn(3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(flow(g(z))[0], g(flow(z)[0]), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_independence(kind):
    flow = make(n_layers=6, conditioner=kind)
    with torch.no_grad():
        phi, _ = flow.sample(8, generator=torch.Generator().manual_seed(3))
        ref = flow.log_prob(phi)
        others = torch.randn(20, 6, 6, dtype=torch.float64) * 3.0
        for batch, rows in [(phi[:1], slice(0, 1)), (torch.cat([phi[:5], others]), slice(0, 5)),
                            (torch.cat([others, phi[:5]]), slice(20, 25))]:
            got = flow.log_prob(batch)[rows]
            assert torch.allclose(got, ref[: got.shape[0]], atol=1e-11, rtol=1e-12)


# --------------------------------------------------------------------------- config


def test_config_switch_and_refusal():
    base = {"lattice": {"shape": [8, 8]}, "action": {"m2": -4.0, "lam": 5.0}}
    cfg = config_from_dict({**base, "flow": {"conditioner": "global", "global_channels": 6}})
    flow = build_flow(cfg.flow, (8, 8))
    nets = [m for m in flow.modules() if isinstance(m, GlobalKernelConditioner)]
    assert len(nets) == cfg.flow.n_layers and nets[0].channels == 6
    with pytest.raises(ConfigError, match="flow.conditioner"):
        config_from_dict({**base, "flow": {"conditioner": "global", "equivariant": False}})
    hybrid = build_flow(config_from_dict({**base, "flow": {"conditioner": "global_local"}}).flow,
                        (8, 8))
    assert all(m.local is not None for m in hybrid.modules()
               if isinstance(m, GlobalKernelConditioner))
    with pytest.raises(ConfigError, match="flow.conditioner"):
        config_from_dict({**base, "flow": {"conditioner": "global_local", "equivariant": False}})
    with pytest.raises(ConfigError, match="global_channels"):
        config_from_dict({**base, "flow": {"conditioner": "global", "global_channels": 0}})
