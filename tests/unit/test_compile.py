"""``compile: true`` (lattice_flows/compiled.py, lattice_flows/mcmc/hmc_compiled.py): the compiled
flow and HMC integrator give the eager results up to float rounding, recompile neither per
trajectory nor per step size, keep flow files loadable by eager code, and a compiler that
cannot work stops the run with an error that names the remedy.

Tolerances are float rounding: a compiled kernel may round each operation differently (fused
multiply-adds, another summation order), by at most a few units of the unit roundoff u per
operation. The flow bounds below are FAN_IN * DEPTH * u relative to the output's scale (each
layer's longest reduction is its conv's fan-in k^d C); the HMC bound scales the divergence that
float32 rounding causes in the same trajectory (eager float32 vs eager float64, which measures
how much this trajectory amplifies rounding) from u32 to the dtype compared.
"""

from __future__ import annotations

import copy
import random
import shutil

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor_config

from lattice_flows.compiled import CompileError, compiled, is_compiled
from lattice_flows.flows.compiled_flow import compile_flow, compiled_unit
from lattice_flows.config import FlowConfig, config_from_dict
from lattice_flows.flows import build_flow
from lattice_flows.mcmc.fourier_mass import free_mass
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.mcmc.hmc_compiled import compile_hmc
from lattice_flows.theory.phi4 import Phi4Action

#: torch.compile's CPU backend (inductor) builds its kernels with a C++ compiler
pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="no C++ compiler: torch.compile cannot build CPU kernels here")

SHAPE = (6, 6)
HIDDEN = (8,)
KERNEL = 3
#: longest sum in one conditioner: a conv's fan-in k^d * C (8 channels, 3x3)
FAN_IN = KERNEL ** len(SHAPE) * max(HIDDEN)
#: slack per operation for a differently rounded fused kernel (a few ulp; see the docstring)
ULP_SLACK = 4


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Every test compiles afresh: dynamo's per-function caches (and its recompile limit, after
    which it would quietly run eagerly) are not carried from one test to the next."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    """Graphs compiled so far in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def tiny_flow(dtype: torch.dtype, conditioner: str = "symmetrized", activation: str = "tanh"):
    """Zero-mode + Fourier layers and 4 couplings with random (not identity) conditioners."""
    torch.manual_seed(5)
    cfg = FlowConfig(n_layers=4, hidden_channels=HIDDEN, kernel_size=KERNEL, activation=activation,
                     conditioner=conditioner, zero_mode_layer=True, identity_init=False)
    return build_flow(cfg, SHAPE, m2=-4.0).to(dtype)


def flow_bound(dtype: torch.dtype, flow) -> float:
    return ULP_SLACK * FAN_IN * len(flow.layers) * torch.finfo(dtype).eps


slow = pytest.mark.slow


@pytest.mark.parametrize("dtype, conditioner, activation", [
    (torch.float64, "symmetrized", "tanh"),
    pytest.param(torch.float32, "symmetrized", "tanh", marks=slow),
    pytest.param(torch.float64, "odd", "softsign", marks=slow),
    pytest.param(torch.float32, "odd", "softsign", marks=slow),
], ids=["float64-symmetrized", "float32-symmetrized", "float64-odd", "float32-odd"])
def test_compiled_flow_forward_inverse_logdet_match_eager(dtype, conditioner, activation):
    """Forward, inverse and log-dets without gradients, then the training graph: values and
    parameter gradients."""
    before = _graphs()
    eager = tiny_flow(dtype, conditioner, activation)
    flow = compile_flow(copy.deepcopy(eager))
    assert all(is_compiled(compiled_unit(layer.conditioner)) for layer in flow.layers
               if hasattr(layer, "conditioner"))
    z = torch.randn(24, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    tol = flow_bound(dtype, flow)
    volume = z[0].numel()
    with torch.no_grad():
        phi_e, ld_e = eager(z)
        phi_c, ld_c = flow(z)
        z_e, ild_e = eager.inverse(phi_e)
        z_c, ild_c = flow.inverse(phi_e)
    scale = phi_e.abs().max()
    assert (phi_c - phi_e).abs().max() <= tol * scale
    assert (z_c - z_e).abs().max() <= tol * z_e.abs().max()
    # log-dets: float64 sums of V per-site terms of size O(1) (bounded s) per layer
    assert (ld_c - ld_e).abs().max() <= tol * volume
    assert (ild_c - ild_e).abs().max() <= tol * volume
    # with gradients (the training graph): the same values and the same parameter gradients
    phi_g, ld_g = flow(z)
    (phi_g.pow(2).sum() + ld_g.sum()).backward()
    phi_h, ld_h = eager(z)
    (phi_h.pow(2).sum() + ld_h.sum()).backward()
    assert (phi_g - phi_h).abs().max() <= tol * scale
    for (name, p), q in zip(flow.named_parameters(), eager.parameters()):
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max() <= tol * volume * max(1.0, q.grad.abs().max()), name
    assert _graphs() > before  # compiled, not run eagerly


def test_compiled_flow_keeps_its_state_dict_and_loads_into_eager_code():
    eager = tiny_flow(torch.float64)
    flow = compile_flow(copy.deepcopy(eager))
    assert list(flow.state_dict()) == list(eager.state_dict())
    fresh = tiny_flow(torch.float64)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1e-3)
    fresh.load_state_dict(flow.state_dict())  # a compiled run's weights into eager code
    z = torch.randn(4, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fresh(z)[0], eager(z)[0])


def test_new_batch_sizes_do_not_recompile_the_flow():
    """Training batch, then sampling blocks of many sizes (some chunked, with remainders): once
    two sizes have been seen the compiled conditioner net's batch axis is dynamic, and further
    sizes reuse its graphs."""
    flow = compile_flow(tiny_flow(torch.float32))
    gen = torch.Generator().manual_seed(4)
    phi, log_q = flow.sample(8, generator=gen)  # the training graph (with gradients)
    (phi.sum() + log_q.sum()).backward()
    with torch.no_grad():
        for n in (64, 96):
            flow.sample(n, generator=gen)
        seen = _graphs()
        for n in (160, 200, 37, 300, 1000):
            flow.sample(n, generator=gen)
            flow.log_prob(flow.sample(n, generator=gen)[0])
    assert _graphs() == seen


def _trajectory(integrator: str, dtype: torch.dtype, fa: bool, compile_it: bool, n: int = 12):
    action = Phi4Action(-4.0, 8.0, 2)
    mass = free_mass((8, 8), 0.5) if fa else None
    hmc = HMC(action, 0.07, n, integrator, jitter=0.0, mass=mass)
    if compile_it:
        compile_hmc(hmc)
    gen = torch.Generator().manual_seed(2)
    phi = 0.8 * torch.randn(16, 8, 8, generator=gen, dtype=torch.float64)
    pi = torch.randn(16, 8, 8, generator=gen, dtype=torch.float64)
    phi1, pi1 = hmc.integrate(phi.to(dtype), pi.to(dtype), 0.07, n)
    return phi1.double(), pi1.double(), hmc.hamiltonian(phi1, pi1), hmc


@pytest.mark.parametrize("integrator, fa, dtype", [
    ("leapfrog", False, torch.float64),
    ("omelyan", True, torch.float64),
    ("leapfrog", True, torch.float32),
    pytest.param("omelyan", False, torch.float32, marks=slow),
    pytest.param("omelyan", False, torch.float64, marks=slow),
    pytest.param("leapfrog", True, torch.float64, marks=slow),
    pytest.param("leapfrog", False, torch.float32, marks=slow),
    pytest.param("omelyan", True, torch.float32, marks=slow),
], ids=lambda v: str(v).replace("torch.", "") if not isinstance(v, bool) else ("fourier" if v else "unit-mass"))
def test_compiled_hmc_trajectory_matches_eager(integrator, fa, dtype):
    """Positions, momenta and H after a 12-step trajectory, compiled vs eager."""
    before = _graphs()
    ref64 = _trajectory(integrator, torch.float64, fa, False)
    ref32 = _trajectory(integrator, torch.float32, fa, False)
    eager = ref64 if dtype == torch.float64 else ref32
    comp = _trajectory(integrator, dtype, fa, True)
    scale_down = torch.finfo(dtype).eps / torch.finfo(torch.float32).eps
    for k, what in enumerate(("phi", "pi", "H")):
        divergence32 = (ref32[k] - ref64[k]).abs().max()  # this trajectory's rounding sensitivity
        tol = ULP_SLACK * scale_down * divergence32
        assert (comp[k] - eager[k]).abs().max() <= tol, (what, (comp[k] - eager[k]).abs().max(), tol)
    assert _graphs() > before  # compiled, not run eagerly


def test_jittered_steps_and_new_step_sizes_do_not_recompile():
    """Trajectories of varying length (jitter 0.5) and step size: no graph after the first."""
    action = Phi4Action(-4.0, 8.0, 2)
    gen = torch.Generator().manual_seed(3)
    hmc = compile_hmc(HMC(action, 0.1, 8, "leapfrog", jitter=0.5, generator=gen))
    phi = torch.randn(4, 8, 8, generator=gen, dtype=torch.float64)
    before = _graphs()
    phi, *_ = hmc.step(phi)
    after_first = _graphs()
    assert after_first > before  # compiled, not run eagerly
    lengths = set()
    for k in range(12):
        lengths.add(hmc.n_steps)
        phi, *_ = hmc.step(phi, step_size=0.05 + 0.01 * k)
        hmc.n_steps = 8 + k % 5  # the tuner moves the nominal length too
        lengths.add(hmc.draw_n_steps())
    assert len(lengths) > 3  # the trajectories really differed in length
    assert _graphs() == after_first
    # a frozen step size reuses its coefficient tensors (no host-to-device copy per trajectory)
    first = hmc.integrate.coefficients(0.1, phi)
    assert all(a is b for a, b in zip(first, hmc.integrate.coefficients(0.1, phi)))
    assert [float(c) for c in first] == [0.5 * 0.1, 0.1]


def test_a_compiler_that_cannot_work_stops_with_the_remedy():
    """A real compile failure (the C++ compiler of the CPU backend does not exist), for a
    compiled function and for a compiled flow: CompileError naming the piece and 'compile: false'."""
    k = random.random()  # a graph of its own: no cached kernel can answer for it
    torch._dynamo.reset()
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
            f = compiled(lambda x: torch.sin(x) * k + 1.0, "the test function")
            with pytest.raises(CompileError, match="the test function.*set 'compile: false'"):
                f(torch.ones(3))
            flow = compile_flow(tiny_flow(torch.float64))
            with pytest.raises(CompileError, match="conditioner of flow layer 2.*'compile: false'"):
                with torch.no_grad():
                    flow(torch.randn(2, *SHAPE, dtype=torch.float64))
    finally:
        torch._dynamo.reset()


def test_compile_key_defaults_to_false_and_reaches_the_config():
    raw = {"lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.0}}
    assert config_from_dict(raw).compile is False
    cfg = config_from_dict({**raw, "compile": True})
    assert cfg.compile is True and cfg.to_dict()["compile"] is True


def test_training_sampling_and_hmc_run_end_to_end_with_compile_true(tmp_path):
    """compile: true through the real run paths on a 4x4 lattice (float64): training with the
    one-pass path gradient (a vector-Jacobian product through the compiled conditioner before
    the backward) logs the eager run's first loss up to rounding; the flow file it writes loads
    into eager code; flow sampling and HMC with compile: true finish with finite data."""
    from lattice_flows.flows.flowfile import load_flow
    from lattice_flows.io.sample_reader import SampleFile
    from lattice_flows.io.train_log import read_train_log
    from lattice_flows.mcmc.flow_run import run_sample
    from lattice_flows.mcmc.hmc_run import run_hmc
    from lattice_flows.training.trainer import train_flow

    def raw(out, compile_it):
        return {
            "lattice": {"shape": [4, 4]}, "action": {"m2": -1.0, "lam": 1.0}, "seed": 4,
            "device": "cpu", "dtype": "float64", "compile": compile_it,
            "flow": {"n_layers": 2, "hidden_channels": [4], "kernel_size": 3, "identity_init": False},
            "train": {"steps": 4, "batch_size": 16, "lr": 1e-3, "objective": "path_gradient_fast",
                      "log_every": 1, "checkpoint_every": 100, "eval_samples": 64,
                      "eval_batch_size": 64},
            "sample": {"mode": "mcmc", "n_chains": 2, "n_samples": 16, "batch_size": 16},
            "hmc": {"n_chains": 2, "n_therm": 0, "n_traj": 6, "n_steps": 4, "step_size": 0.1},
            "output": {"dir": str(out), "chunk_rows": 50},
        }

    before = _graphs()
    cfg = config_from_dict(raw(tmp_path / "compiled", True))
    res = train_flow(cfg, progress=False)
    eager = train_flow(config_from_dict(raw(tmp_path / "eager", False)), progress=False)
    assert _graphs() > before  # the compiled run compiled
    loss_c = read_train_log(tmp_path / "compiled" / "train.h5")["loss"]
    loss_e = read_train_log(tmp_path / "eager" / "train.h5")["loss"]
    assert len(loss_c) == len(loss_e) == 4
    # step 1: the same z (same seed) through the same initial weights; the loss is a mean of
    # per-sample site sums (V = 16 sites) over 4 layers with conv fan-in 3^2 * 4
    bound = ULP_SLACK * 3 ** 2 * 4 * 4 * torch.finfo(torch.float64).eps * 16 * max(1.0, abs(loss_e[0]))
    assert abs(loss_c[0] - loss_e[0]) <= bound, (loss_c[0], loss_e[0], bound)
    assert torch.isfinite(torch.as_tensor(loss_c)).all() and 0.0 <= res.ess <= 1.0
    flow = load_flow(tmp_path / "compiled" / "flow.pt", (4, 4), "cpu", torch.float64)  # eager
    assert not any(is_compiled(m) for m in flow.modules())
    path = run_sample(cfg, progress=False)
    before_hmc = _graphs()
    hmc_path = run_hmc(cfg, progress=False)
    assert _graphs() > before_hmc  # the HMC run built its integrator compiled
    for p in (path, hmc_path):
        phi = SampleFile(p).configs()
        assert phi.shape[0] > 0 and phi.shape[2:] == (4, 4) and bool(torch.isfinite(torch.as_tensor(phi)).all())
    assert eager.steps == res.steps == 4
