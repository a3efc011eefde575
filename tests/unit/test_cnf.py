"""The continuous equivariant layer (lattice_flows/flows/cnf.py): exact symmetries, the exact
divergence, and the O(h^4) errors of the fixed-step RK4 log-det and inverse.

Float precision: the layers here are float64 and run float64 inputs in float64 throughout (float32
inputs run the feature pass in float32: its own test below); FLOAT_TOL = 1e-12 is ~4500 eps64 at fields and
log-dets of size ~1-10, a bound on the rounding of the FFT sums (V <= 64 sites) over <= 64 RK4
stages, not a fitted window. Convergence orders come from RK4 theory (order 4: the fitted slope
of log error against log h must exceed 3.5 for an order-4 error; an order-3 error would give 3).
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from lattice_flows.config import ConfigError, FlowConfig, config_from_dict
from lattice_flows.flows.cnf import (
    BOUND_SATURATED, ContinuousEquivariantLayer, bound_use, feature_dtype, orbit_basis,
    orbit_table, time_basis,
)
from lattice_flows.flows.flow import build_flow

FLOAT_TOL = 1e-12


def make_layer(ndim=2, n_steps=8, scale=1.0, seed=0, n_frequencies=2, n_time=2, **kw):
    """A float64 layer with seeded random (non-trivial) kernel weights and frequencies; few
    channels, so that random signs do not cancel the field under the Lipschitz bound."""
    layer = ContinuousEquivariantLayer(
        ndim, n_steps=n_steps, n_frequencies=n_frequencies, n_time=n_time, **kw
    ).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight", "orbit_weight"):  # whichever the kernel has
            if hasattr(layer, name):
                w = getattr(layer, name)
                w.copy_(scale * torch.randn(w.shape, generator=g, dtype=torch.float64))
        layer.omega.add_(0.3 * torch.randn(layer.omega.shape, generator=g, dtype=torch.float64))
    return layer


KERNELS = ["phat", "orbit", "phat+orbit"]
ORBIT = {"kernel": "orbit", "kernel_range": 3}  # range 3 > L/2 on 4x4: some separations unused


def field(shape, batch=3, seed=1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=g, dtype=torch.float64).to(dtype)


def test_fresh_layer_is_identity():
    layer = ContinuousEquivariantLayer(2).double()
    x = field((4, 4))
    y, ld = layer(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 6), (4, 4, 4)])
def test_z2_equivariance_bit_exact(dtype, shape, kernel):
    # 3D: range 1 (4 orbits), so that random signs over many orbits do not cancel the field
    layer = make_layer(ndim=len(shape), kernel=kernel, kernel_range=3 if len(shape) == 2 else 1)
    layer = layer.to(dtype)
    x = field(shape, dtype=dtype)
    y, ld = layer(x)
    y_neg, ld_neg = layer(-x)
    assert (y - x).abs().max() > 0.05  # the map is not trivial
    assert torch.equal(y_neg, -y) and torch.equal(ld_neg, ld)
    xb, ldb = layer.inverse(y)
    xb_neg, ldb_neg = layer.inverse(-y)
    assert torch.equal(xb_neg, -xb) and torch.equal(ldb_neg, ldb)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_input_runs_the_feature_pass_in_float32_close_to_float64(kernel):
    """A float32 input runs sin, cos and the FFT convolution in float32 (flows/cnf.py,
    "Exactness"); the RK4 state and the divergence's site sum stay float64. Against the float64
    pass of the same input: phi within 4 eps32 max|phi| (half an ulp of output rounding, plus the
    integrated feature error <= Lmax eps32 max|phi| with Lmax = 3), forward and inverse; log-det
    within Lmax sqrt(V) eps32 (max|omega phi| + 1), the size of V independent roundings of the
    cosines' arguments added in quadrature (a wrong frequency or a float32 sum over all V sites
    would be orders of magnitude above it; the partial sums over the last axis, L_d float32 terms
    each, add roundings of the size of those of the cosines themselves)."""
    assert feature_dtype(torch.float32) == torch.float32
    assert feature_dtype(torch.float64) == torch.float64
    kw = {"kernel_range": 3} if "orbit" in kernel else {}
    layer = make_layer(n_frequencies=8, n_time=5, kernel=kernel, **kw)
    shape = (16, 16)
    x = 1.5 * field(shape, batch=8)
    eps32 = torch.finfo(torch.float32).eps
    with torch.no_grad():
        for pair in ((layer(x.float()), layer(x)), (layer.inverse(x.float()), layer.inverse(x))):
            (y32, ld32), (y64, ld64) = pair
            assert y32.dtype == torch.float32 and ld32.dtype == torch.float64
            big = float(y64.abs().max())
            assert float((y32.double() - y64).abs().max()) <= 4 * eps32 * big
            arg_max = float(layer.omega.abs().max()) * float(x.abs().max()) * 1.2
            tol = 3.0 * math.sqrt(math.prod(shape)) * eps32 * (arg_max + 1.0)
            assert float((ld32 - ld64).abs().max()) <= tol
            assert float((y64 - x).abs().max()) > 0.02  # the map is not trivial


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(12,), (8, 8), (4, 4, 6)])
def test_sampling_pass_without_gradients_equals_the_training_pass(shape, dtype):
    """Without gradients the feature pass writes sin into a preallocated buffer and multiplies
    and takes cos in place (flows/cnf.py ``_field``); with gradients it builds new tensors. The
    operations and their order are the same, so phi and the log-det agree bit for bit, forward
    and inverse, in every d (d = 1 has no axis left after the rows of the site sum)."""
    layer = make_layer(ndim=len(shape), n_frequencies=3, n_time=3)
    x = 1.5 * field(shape, batch=5)
    x = x.to(dtype)
    for fn in (layer, layer.inverse):
        with torch.no_grad():
            y0, ld0 = fn(x)
        y1, ld1 = fn(x.clone().requires_grad_(True))
        assert ld1.requires_grad
        assert torch.equal(y0, y1.detach()) and torch.equal(ld0, ld1.detach())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shift", [(1, 0), (2, 3), (-1, 5)])
def test_translation_equivariance(shift, kernel):
    layer = make_layer(kernel=kernel, kernel_range=3)
    x = field((6, 6))
    y, ld = layer(x)
    ys, lds = layer(torch.roll(x, shift, dims=(1, 2)))
    torch.testing.assert_close(ys, torch.roll(y, shift, dims=(1, 2)), atol=FLOAT_TOL, rtol=0)
    torch.testing.assert_close(lds, ld, atol=FLOAT_TOL, rtol=0)


def _d4(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of x under the rotations/reflections of the square (dims 1, 2)."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(1, 2))
        out += [r, torch.flip(r, dims=(1,))]
    return out


@pytest.mark.parametrize("kernel", KERNELS)
def test_d4_rotations_and_reflections_commute_with_the_layer(kernel):
    layer = make_layer(kernel=kernel, kernel_range=3)
    x = field((6, 6))
    y, ld = layer(x)
    images = _d4(x)
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # a generic field
    for gx, gy in zip(images, _d4(y)):
        out, ld_g = layer(gx)
        torch.testing.assert_close(out, gy, atol=FLOAT_TOL, rtol=0)
        torch.testing.assert_close(ld_g, ld, atol=FLOAT_TOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_batch_independence(kernel):
    layer = make_layer(kernel=kernel, kernel_range=3)
    x = field((4, 4), batch=5)
    y, ld = layer(x)
    for i in range(5):
        yi, ldi = layer(x[i : i + 1])
        torch.testing.assert_close(yi[0], y[i], atol=FLOAT_TOL, rtol=0)
        torch.testing.assert_close(ldi[0], ld[i], atol=FLOAT_TOL, rtol=0)
    x2 = x.clone()
    x2[0] = 3.0 * x2[0]  # changing one member leaves the others alone
    y2, ld2 = layer(x2)
    torch.testing.assert_close(y2[1:], y[1:], atol=FLOAT_TOL, rtol=0)
    torch.testing.assert_close(ld2[1:], ld[1:], atol=FLOAT_TOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(4, 4), (6,), (2, 2, 4)])
def test_divergence_is_the_trace_of_the_vector_field_jacobian(shape, kernel):
    """div f = sum_x d f_x / d phi_x with K_c(0, t) from the momentum-space kernels."""
    layer = make_layer(ndim=len(shape), scale=0.5, kernel=kernel, kernel_range=1)
    x = field(shape, batch=1)
    half, at_zero = layer._basis(tuple(shape), x.device)
    w = layer.bounded_weight()
    for t in (0.0, 0.3, 0.75):
        f, div = layer._field(x, t, half, at_zero, w)
        jac = torch.autograd.functional.jacobian(
            lambda v: layer._field(v.reshape(1, *shape), t, half, at_zero, w)[0].reshape(-1),
            x.reshape(-1),
        )
        assert jac.abs().max() > 0.1  # non-trivial, off-diagonal mixing included
        assert (jac - torch.diag(torch.diagonal(jac))).abs().max() > 1e-3
        torch.testing.assert_close(div[0], torch.trace(jac), atol=FLOAT_TOL, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [0.1, 10.0, 1000.0])
def test_vector_field_lipschitz_constant_is_bounded(scale, kernel):
    """max_x sum_y |d f_x / d phi_y| < lipschitz_max for any weights (the RK4 accuracy regime)."""
    shape = (6, 6)
    layer = make_layer(scale=scale, kernel=kernel, kernel_range=3)
    x = field(shape, batch=1)
    half, at_zero = layer._basis(shape, x.device)
    w = layer.bounded_weight()
    for t in (0.0, 0.25, 0.6):
        jac = torch.autograd.functional.jacobian(
            lambda v: layer._field(v.reshape(1, *shape), t, half, at_zero, w)[0].reshape(-1),
            x.reshape(-1),
        )
        assert float(jac.abs().sum(dim=1).max()) < layer.lipschitz_max


def test_lipschitz_bound_is_attained_by_an_on_site_linear_field():
    """f = c phi (W only on the linear channel's on-site, constant-in-t entry): the Jacobian is
    c_eff * identity with c_eff = Lmax tanh(c / Lmax), so the bound is tight, not vacuous."""
    shape = (4, 4)
    layer = ContinuousEquivariantLayer(2).double()
    with torch.no_grad():
        layer.weight[-1, 0, 0] = 1000.0
    x = field(shape, batch=1)
    half, at_zero = layer._basis(shape, x.device)
    jac = torch.autograd.functional.jacobian(
        lambda v: layer._field(v.reshape(1, *shape), 0.3, half, at_zero, layer.bounded_weight())[0].reshape(-1),
        x.reshape(-1),
    )
    c_eff = layer.lipschitz_max * math.tanh(1000.0 / layer.lipschitz_max)
    torch.testing.assert_close(jac, c_eff * torch.eye(16, dtype=torch.float64), atol=FLOAT_TOL, rtol=0)
    # the integrated log-det of the linear ODE d phi/dt = c_eff phi is V c_eff exactly
    _, ld = layer(x)
    torch.testing.assert_close(ld, torch.full_like(ld, 16 * c_eff), atol=FLOAT_TOL, rtol=0)


def _slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(h), h = 1 / steps."""
    xs = [math.log(1.0 / n) for n in steps]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


STEPS = (4, 8, 16)
STIFF = 1.0  # weight scale that saturates the Lipschitz bound (the worst case training can reach)


@pytest.mark.parametrize("kernel", ["phat", "orbit"])
def test_integrated_logdet_converges_to_the_discrete_maps_logdet_like_h4(kernel):
    """|int div f dt - log|det J_RK4|| (autograd Jacobian of the discrete map) is O(h^4)."""
    shape = (4, 4)
    x = field(shape, batch=1)
    errors, moves = [], []
    for n in STEPS:
        layer = make_layer(n_steps=n, scale=STIFF, kernel=kernel, kernel_range=1)
        y, ld = layer(x)
        assert layer.lipschitz_bound() > 0.99 * layer.lipschitz_max  # the stiffest allowed field
        jac = torch.autograd.functional.jacobian(
            lambda v: layer(v.reshape(1, *shape))[0].reshape(-1), x.reshape(-1)
        )
        exact = torch.linalg.slogdet(jac)[1]
        errors.append(abs(float(ld.detach()[0] - exact)))
        moves.append(float((y.detach() - x).pow(2).mean().sqrt()))
    assert min(moves) > 0.01 and abs(float(ld.detach()[0])) > 0.1  # a non-trivial map
    assert min(errors) > 1e-10  # above float64 rounding, so the fit measures truncation
    assert _slope(STEPS, errors) > 3.5, errors


def test_inverse_round_trip_converges_like_h4():
    """inverse(forward(x)) - x and ld_forward + ld_inverse vanish at least like h^4."""
    x = field((4, 4))
    rt, ld_rt = [], []
    for n in STEPS:
        layer = make_layer(n_steps=n, scale=STIFF)
        with torch.no_grad():
            y, ld = layer(x)
            xb, ldb = layer.inverse(y)
        rt.append(float((xb - x).abs().max()))
        ld_rt.append(float((ld + ldb).abs().max()))
    assert min(rt) > 1e-10 and min(ld_rt) > 1e-10
    assert _slope(STEPS, rt) > 3.5, rt
    assert _slope(STEPS, ld_rt) > 3.5, ld_rt


def _orbit_of(r) -> tuple[int, ...]:
    return tuple(sorted((abs(v) for v in r), reverse=True))


@pytest.mark.parametrize("shape", [(4, 6), (6,), (2, 4, 4)])
def test_orbit_basis_counts_the_separations_that_fit_by_brute_force(shape):
    """P_o(x) = #{r in [-R, R]^d : orbit(r) = o, r = x mod L, |r_mu| <= L_mu / 2}; orbit sizes
    are the infinite-lattice counts; the numbering follows the sorted tuples (L-independent)."""
    big = 3
    r_all, orbit, sizes = orbit_table(len(shape), big)
    reps = sorted({_orbit_of(r) for r in itertools.product(range(-big, big + 1), repeat=len(shape))})
    assert len(sizes) == len(reps)
    for o, rep in enumerate(reps):
        members = [r for r in itertools.product(range(-big, big + 1), repeat=len(shape))
                   if _orbit_of(r) == rep]
        assert int(sizes[o]) == len(members)
        assert {_orbit_of(tuple(r)) for r in r_all[orbit == o].tolist()} == {rep}
    p = orbit_basis(shape, big)
    brute = torch.zeros_like(p)
    for r in itertools.product(range(-big, big + 1), repeat=len(shape)):
        if all(2 * abs(v) <= n for v, n in zip(r, shape)):
            site = tuple(v % n for v, n in zip(r, shape))
            brute[(reps.index(_orbit_of(r)),) + site] += 1
    assert torch.equal(p, brute)


def test_orbit_vector_field_is_the_image_sum_convolution():
    """f_x = sum_c sum_r K_c(r, t) g_c(phi_{x - r}) over the separations that fit (4 x 6, R = 3:
    r_1 = +-3 does not fit L_1 = 4; r_2 = +-3 both land on the same site of L_2 = 6)."""
    shape, big = (4, 6), 3
    layer = make_layer(scale=0.5, kernel="orbit", kernel_range=big)
    x = field(shape, batch=2)
    half, at_zero = layer._basis(shape, x.device)
    w = layer.bounded_weight()
    r_all, orbit, _ = orbit_table(2, big)
    t = 0.35
    coef = torch.einsum("cjo,j->co", w, time_basis(t, layer.n_time))  # K_c of each orbit
    omega = layer.omega.detach().to(torch.float64)
    feats = torch.cat([torch.sin(omega.view(1, -1, 1, 1) * x.unsqueeze(1)), x.unsqueeze(1)], 1)
    expect = torch.zeros_like(x)
    for (r1, r2), o in zip(r_all.tolist(), orbit.tolist()):
        if 2 * abs(r1) <= shape[0] and 2 * abs(r2) <= shape[1]:
            shifted = torch.roll(feats, (r1, r2), dims=(2, 3))  # g_c(phi_{x - r})
            expect = expect + torch.einsum("c,bcxy->bxy", coef[:, o], shifted)
    f, _ = layer._field(x, t, half, at_zero, w)
    torch.testing.assert_close(f, expect.detach(), atol=FLOAT_TOL, rtol=0)


def test_orbit_kernel_means_the_same_at_every_lattice_size():
    """A kernel of range 3 acts the same on L = 8 and L = 16: a field supported on a 2 x 2 patch
    gives the same vector field on the 8 x 8 neighbourhood (no separation needs an image), and
    the weights of separations that do not fit a small lattice get no gradient there."""
    layer = make_layer(scale=0.5, kernel="orbit", kernel_range=3)
    small = torch.zeros(1, 8, 8, dtype=torch.float64)
    small[0, 3:5, 3:5] = torch.tensor([[0.7, -1.2], [0.4, 2.0]], dtype=torch.float64)
    large = torch.zeros(1, 16, 16, dtype=torch.float64)
    large[0, :8, :8] = small[0]
    w = layer.bounded_weight()
    f8 = layer._field(small, 0.6, *layer._basis((8, 8), small.device), w)[0]
    f16 = layer._field(large, 0.6, *layer._basis((16, 16), large.device), w)[0]
    assert f8.abs().max() > 0.01  # non-trivial (the tolerance is 1e-12)
    torch.testing.assert_close(f16[0, :8, :8], f8[0], atol=FLOAT_TOL, rtol=0)
    assert f16[0, 8:].abs().max() < FLOAT_TOL and f16[0, :, 8:].abs().max() < FLOAT_TOL
    # on 4 x 4, separations with a component 3 do not fit: their orbits get zero gradient
    fresh = ContinuousEquivariantLayer(2, kernel="orbit", kernel_range=3).double()
    fresh(field((4, 4)))[0].pow(2).sum().backward()  # a fresh layer: d/dV at V = 0 is nonzero
    grad = fresh.orbit_weight.grad
    _, orbit, _ = orbit_table(2, 3)
    reps = sorted({_orbit_of(r) for r in itertools.product(range(-3, 4), repeat=2)})
    unused = torch.tensor([rep[0] == 3 for rep in reps])
    assert grad[:, :, unused].abs().max() == 0 and grad[:, :, ~unused].abs().max() > 0


def test_bound_use_is_the_share_of_the_lipschitz_bound_per_layer():
    """bound_use: Lam / Lmax of each continuous layer in order; 0 for a fresh layer, -> 1 when the
    raw weights are far past the bound (the rescaling holds the field at it)."""
    flow = build_flow(FlowConfig(n_layers=0, cnf_layers=2, cnf_lipschitz_max=2.0), (4, 4))
    assert bound_use(flow) == [0.0, 0.0]
    layers = [m for m in flow.layers if isinstance(m, ContinuousEquivariantLayer)]
    with torch.no_grad():
        layers[1].weight[-1, 0, 0] = 1000.0  # the linear channel's on-site weight: Lam = 1000
        layers[0].weight[-1, 0, 0] = 0.5  # Lam = 0.5: tanh(0.25) of the bound
    use = bound_use(flow)
    assert use[0] == pytest.approx(math.tanh(0.25), rel=1e-6) and use[1] > BOUND_SATURATED
    assert bound_use(build_flow(FlowConfig(n_layers=2, hidden_channels=(4,)), (4, 4))) == []


def test_layer_in_the_flow_stack_samples_and_evaluates_log_prob():
    cfg = FlowConfig(n_layers=2, hidden_channels=(4,), cnf_layers=1, cnf_steps=16,
                     cnf_lipschitz_max=2.0)
    flow = build_flow(cfg, (4, 4), m2=0.5).double()
    cnf = [m for m in flow.layers if isinstance(m, ContinuousEquivariantLayer)]
    assert len(cnf) == 1 and (cnf[0].n_steps, cnf[0].lipschitz_max) == (16, 2.0)
    with torch.no_grad():
        cnf[0].weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(3))
    phi, log_q = flow.sample(4, generator=torch.Generator().manual_seed(4))
    # log q of the sampling pass and of the (backward-RK4) inverse agree to the O(h^4) error
    torch.testing.assert_close(flow.log_prob(phi), log_q, atol=1e-4, rtol=0)
    # and the same flow runs at another lattice size (parameters do not depend on L)
    phi8, _ = flow.sample(2, lattice_shape=(8, 8))
    assert phi8.shape == (2, 8, 8)
    # CNF alone (no couplings) is a valid flow
    alone = build_flow(FlowConfig(n_layers=0, cnf_layers=2), (4, 4))
    assert sum(isinstance(m, ContinuousEquivariantLayer) for m in alone.layers) == 2


def _cfg(flow: dict) -> dict:
    return {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0},
            "flow": {"hidden_channels": [4], **flow}}


@pytest.mark.parametrize(
    "flow,pattern",
    [
        ({"n_layers": 0}, r"flow\.n_layers.*0.*cnf_layers"),
        ({"cnf_layers": -1}, r"flow\.cnf_layers.*-1.*>= 0"),
        ({"cnf_layers": 1, "cnf_steps": 0}, r"flow\.cnf_steps.*0.*positive integer"),
        ({"cnf_frequencies": 1.5}, r"flow\.cnf_frequencies.*1\.5.*positive integer"),
        ({"cnf_time_basis": 0}, r"flow\.cnf_time_basis.*0.*positive integer"),
        ({"cnf_lipschitz_max": 0.0}, r"flow\.cnf_lipschitz_max.*0\.0.*positive number"),
    ],
)
def test_config_errors_name_key_value_and_allowed(flow, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(_cfg(flow))


def test_config_switch_defaults_off_and_parses():
    assert config_from_dict(_cfg({})).flow.cnf_layers == 0
    cfg = config_from_dict(_cfg({"n_layers": 0, "cnf_layers": 2, "cnf_steps": 12}))
    assert (cfg.flow.n_layers, cfg.flow.cnf_layers, cfg.flow.cnf_steps) == (0, 2, 12)


@pytest.mark.parametrize("kernel", ["phat", "phat+orbit"])
def test_trained_cnf_flow_is_saved_and_rebuilt_from_flow_pt(tmp_path, kernel):
    """Real training (a few steps, real files): flow.pt rebuilds the CNF layers and their weights."""
    from lattice_flows.io.train_log import read_train_log
    from lattice_flows.flows.flowfile import load_flow
    from lattice_flows.training.trainer import train_flow

    raw = _cfg({"n_layers": 0, "cnf_layers": 1, "cnf_steps": 4, "zero_mode_layer": True,
                "cnf_kernel": kernel, "cnf_kernel_range": 3})
    raw.update(seed=5, device="cpu", output={"dir": str(tmp_path / "run")},
               train={"steps": 40, "batch_size": 32, "lr": 1e-2, "log_every": 10,
                      "checkpoint_every": 20, "eval_samples": 256, "eval_batch_size": 256,
                      "objective": "reverse"})
    train_flow(config_from_dict(raw), progress=False)
    hist = read_train_log(tmp_path / "run" / "train.h5")
    assert hist["loss"][-1] < hist["loss"][0]
    flow = load_flow(tmp_path / "run" / "flow.pt", (4, 4), "cpu", torch.float64)
    cnf = [m for m in flow.layers if isinstance(m, ContinuousEquivariantLayer)]
    assert len(cnf) == 1 and cnf[0].n_steps == 4 and float(cnf[0].weight.detach().abs().max()) > 0
    assert (cnf[0].kernel, cnf[0].kernel_range) == (kernel, 3)
    if kernel == "phat+orbit":  # the orbit weights were trained and saved too
        assert float(cnf[0].orbit_weight.detach().abs().max()) > 0
    # the summary reports the share of the Lipschitz bound the trained field uses
    use = json.loads((tmp_path / "run" / "train_summary.json").read_text())["cnf_bound_use"]
    assert len(use) == 1 and 0 < use[0] < 1
    assert use[0] == pytest.approx(cnf[0].lipschitz_bound() / cnf[0].lipschitz_max, rel=1e-5)
    # sample-pass log q against the backward-RK4 log_prob: an O(h^4) difference on the trained
    # field, so 4 -> 16 steps must shrink it by more than 4^3.3 = 100 (order 4 leaves margin)
    diffs = []
    for n in (4, 16):
        cnf[0].n_steps = n
        with torch.no_grad():
            phi, log_q = flow.sample(8, generator=torch.Generator().manual_seed(0))
            diffs.append(float((flow.log_prob(phi) - log_q).abs().max()))
    assert diffs[0] > 1e-8 and diffs[1] < diffs[0] / 100, diffs


def test_sampling_with_more_rk4_steps_than_training(tmp_path):
    """sample.cnf_steps: a flow trained with 4 RK4 steps samples with 16. The stored log q of
    importance samples then matches the 16-step log_prob of the stored fields (float64 run) at
    the 16-step level, > 100x closer than the log q of the same flow sampled as trained (O(h^4):
    4^3.3 = 100 leaves margin); a sampling run is not resumed with other steps."""
    import h5py

    from lattice_flows.flows.flowfile import load_flow
    from lattice_flows.mcmc.flow_run import run_sample
    from lattice_flows.training.trainer import train_flow

    raw = _cfg({"n_layers": 0, "cnf_layers": 1, "cnf_steps": 4, "zero_mode_layer": True})
    raw.update(seed=7, device="cpu", dtype="float64", output={"dir": str(tmp_path / "run")},
               train={"steps": 40, "batch_size": 32, "lr": 1e-2, "log_every": 10,
                      "checkpoint_every": 40, "eval_samples": 256, "eval_batch_size": 256,
                      "objective": "reverse"})
    train_flow(config_from_dict(raw), progress=False)
    flow_pt = tmp_path / "run" / "flow.pt"
    gaps = {}
    for steps in (None, 16):
        out = tmp_path / f"sample_{steps}"
        raw_s = dict(raw, output={"dir": str(out)},
                     sample={"mode": "importance", "n_chains": 4, "n_samples": 4, "batch_size": 16,
                             "flow": str(flow_pt), "cnf_steps": steps})
        path = run_sample(config_from_dict(raw_s), progress=False)
        with h5py.File(path, "r") as f:
            phi = torch.from_numpy(f["configs"][:]).reshape(-1, 4, 4)
            log_q = torch.from_numpy(f["log_q"][:]).reshape(-1)
        flow = load_flow(flow_pt, (4, 4), "cpu", torch.float64)
        cnf = [m for m in flow.layers if isinstance(m, ContinuousEquivariantLayer)]
        assert [m.n_steps for m in cnf] == [4]  # flow.pt keeps the trained steps
        cnf[0].n_steps = 16
        with torch.no_grad():
            gaps[steps] = float((flow.log_prob(phi) - log_q).abs().max())
    assert gaps[None] > 1e-8 and gaps[16] < gaps[None] / 100, gaps
    again = dict(raw, output={"dir": str(tmp_path / "sample_16")},
                 sample={"mode": "importance", "n_chains": 4, "n_samples": 8, "batch_size": 16,
                         "flow": str(flow_pt), "cnf_steps": 8})
    with pytest.raises(ConfigError, match="sample.cnf_steps"):
        run_sample(config_from_dict(again), progress=False)


def test_sample_cnf_steps_must_be_positive():
    raw = _cfg({"cnf_layers": 1})
    raw["sample"] = {"cnf_steps": 0}
    with pytest.raises(ConfigError, match=r"sample\.cnf_steps.*0.*positive integer"):
        config_from_dict(raw)
