"""Config validation: every bad value is refused with the key, the value and what is allowed."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import yaml

from lattice_flows.cli import main
from lattice_flows.config import ConfigError, apply_overrides, config_from_dict, load_config
from lattice_flows.theory.phi4 import hopping_to_standard
from tests.conftest import tiny_hmc_raw, write_config

GOOD = tiny_hmc_raw("runs/x")


def _with(path: str, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


class _Delete:
    """Marker of a key to remove; a fixed repr keeps the test ids the same in every process
    (pytest-xdist workers must collect the same ids)."""

    def __repr__(self) -> str:
        return "<deleted>"


_DELETE = _Delete()

BAD = [
    ("lattice.shape", [8, 0], "lattice.shape"),
    ("lattice.shape", "8x8", "lattice.shape"),
    ("lattice.shape", [8, 8.5], "lattice.shape"),
    ("action.lam", -1.0, "action.lam"),
    ("action.lam", "big", "action.lam"),
    ("action.lam", float("nan"), "action.lam"),
    ("action.m2", float("inf"), "action.m2"),
    ("hmc.n_chains", 0, "hmc.n_chains"),
    ("hmc.n_chains", 2.5, "hmc.n_chains"),
    ("hmc.n_steps", True, "hmc.n_steps"),
    ("hmc.step_size", -0.1, "hmc.step_size"),
    ("hmc.step_size", "fast", "hmc.step_size"),
    ("hmc.target_acceptance", 1.2, "hmc.target_acceptance"),
    ("hmc.integrator", "euler", "hmc.integrator"),
    ("hmc.jitter", 1.0, "hmc.jitter"),
    ("hmc.bogus", 3, "bogus"),
    ("device", "tpu", "device"),
    ("dtype", "float16", "dtype"),
    ("seed", -3, "seed"),
    ("output.chunk_rows", 0, "output.chunk_rows"),
    ("action", _DELETE, "action"),
    ("lattice", _DELETE, "lattice"),
    ("action.m2", _DELETE, "action.m2"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with(key, value))
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg.strip()


@pytest.mark.parametrize(
    "flow,expected",
    [
        ({"conditioner": "odd", "activation": "silu"}, r"flow\.activation.*'silu'.*tanh or softsign"),
        ({"conditioner": "odd", "equivariant": False}, r"flow\.conditioner.*'odd'.*equivariant"),
        ({"conditioner": "even"}, r"flow\.conditioner.*symmetrized, odd"),
    ],
)
def test_odd_conditioner_config_errors(flow, expected):
    raw = _with("flow", {"n_layers": 2, "hidden_channels": [4], "activation": "tanh", **flow})
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(raw)
    ok = config_from_dict(_with("flow", {"conditioner": "odd", "activation": "softsign"}))
    assert ok.flow.conditioner == "odd"


def test_free_field_needs_positive_mass():
    raw = _with("action", {"m2": 0.0, "lam": 0.0})
    with pytest.raises(ConfigError, match="m2 > 0"):
        config_from_dict(raw)


def test_unknown_section_and_mixed_parametrization():
    with pytest.raises(ConfigError, match="unknown section 'hmcc'"):
        config_from_dict({**GOOD, "hmcc": {}})
    with pytest.raises(ConfigError, match="not a mix"):
        config_from_dict(_with("action", {"m2": 1.0, "kappa": 0.2, "lam": 1.0}))


def test_hopping_parametrization_is_converted_once():
    cfg = config_from_dict(_with("action", {"kappa": 0.28, "lam_hop": 0.02}))
    m2, lam = hopping_to_standard(0.28, 0.02, 2)
    assert (cfg.action.m2, cfg.action.lam) == (m2, lam)
    assert cfg.to_dict()["action"]["given_as"] == "kappa-lambda"
    # and the default parametrization records its hopping equivalent
    cfg2 = config_from_dict(_with("action", {"m2": m2, "lam": lam}))
    assert cfg2.action.kappa == pytest.approx(0.28) and cfg2.action.lam_hop == pytest.approx(0.02)


def test_overrides():
    raw = apply_overrides(GOOD, ["hmc.n_traj=500", "action.m2=-3.5", "lattice.shape=[4, 4]"])
    cfg = config_from_dict(raw)
    assert cfg.hmc.n_traj == 500 and cfg.action.m2 == -3.5 and cfg.lattice.shape == (4, 4)
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(GOOD, ["hmc.n_traj"])


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", _with("hmc.n_chains", -2))
    assert main(["hmc", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "hmc.n_chains" in err and "-2" in err and "positive integer" in err and str(cfg) in err
    assert "Traceback" not in err
    (tmp_path / "notyaml.yaml").write_text("lattice: [unclosed\n")
    assert main(["hmc", str(tmp_path / "notyaml.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["hmc", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_exit_code_in_real_process(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", _with("action.lam", -1))
    proc = subprocess.run([sys.executable, "-m", "lattice_flows", "hmc", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "action.lam" in proc.stderr and "Traceback" not in proc.stderr


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].joinpath("configs").rglob("*.yaml")):
        load_config(path)


def test_tiny_couplings_are_refused_not_crashed():
    """kappa so small that m2 or lam overflow, and a lam so small that the derived kappa does:
    a ConfigError naming action.kappa (the code before pydantic raised ZeroDivisionError), and a
    config without the (record-only) hopping form (it raised OverflowError); an integer beyond
    the float range is refused like any other non-number."""
    for kappa in (1e-300, 1e-160):
        with pytest.raises(ConfigError, match=r"action\.kappa.*not a finite number"):
            config_from_dict(_with("action", {"kappa": kappa, "lam_hop": 0.1}))
    cfg = config_from_dict(_with("action", {"m2": -5.0, "lam": 1e-300}))
    assert (cfg.action.m2, cfg.action.lam, cfg.action.kappa) == (-5.0, 1e-300, None)
    with pytest.raises(ConfigError, match=r"action\.m2.*not allowed"):  # beyond float (was OverflowError)
        config_from_dict(_with("action", {"m2": 10**400, "lam": 1.0}))


def test_configs_are_frozen_comparable_hashable_and_replaceable():
    """Frozen dataclasses (pydantic): equal configs compare and hash equal, dataclasses.replace
    validates the new value, and sections built in code coerce lists as the YAML path does."""
    import dataclasses

    from lattice_flows.config import FlowConfig

    a, b = config_from_dict(GOOD), config_from_dict(copy.deepcopy(GOOD))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hmc.n_chains = 3  # type: ignore[misc]
    c = dataclasses.replace(a, hmc=dataclasses.replace(a.hmc, n_chains=8))
    assert c.hmc.n_chains == 8 and c != a and a.hmc.n_chains == 4
    with pytest.raises(ValueError, match="n_chains"):
        dataclasses.replace(a.hmc, n_chains=0)
    odd = dataclasses.replace(FlowConfig(), conditioner="odd", activation="softsign")
    assert odd.conditioner == "odd" and FlowConfig(hidden_channels=[8]).hidden_channels == (8,)
    with pytest.raises(ValueError, match="tanh or softsign"):
        dataclasses.replace(FlowConfig(), conditioner="odd")


# Written by the code before pydantic (commit 110a260, hand-written validation): the record
# `lattice-flows train` left in a run folder for RAW_BEFORE (kappa-lambda couplings, every section).
RAW_BEFORE = """\
lattice: {shape: [4, 4]}
action: {kappa: 0.28, lam_hop: 0.02}
seed: 3
device: cpu
dtype: float32
hmc: {n_chains: 2, n_therm: 20, n_traj: 4, n_steps: 2}
flow: {n_layers: 2, hidden_channels: [4], cnf_layers: 1, cnf_steps: 2}
train: {steps: 2, batch_size: 4, lr: 3e-3, eval_samples: 8, eval_batch_size: 8, time_budget: 100}
sample: {n_chains: 2, n_samples: 4, batch_size: 8}
output: {dir: /tmp/i14b_old/run, chunk_rows: 10}
"""
RECORD_BEFORE = """\
# lattice_flows resolved config
# package_version: 0.1.0
# git_commit: 110a2602d89c7b245805ffbd0526ad40bd43cbfc
# seed: 3
# hostname: vm
# mpi_size: 1
# rank: 0
# created: 2026-12-01T14:03:11.778632+00:00
lattice:
  shape:
  - 4
  - 4
action:
  m2: -0.5714285714285721
  lam: 0.2551020408163265
  kappa: 0.28
  lam_hop: 0.02
  given_as: kappa-lambda
seed: 3
device: cpu
dtype: float32
output:
  dir: /tmp/i14b_old/run
  chunk_rows: 10
  store_G: true
hmc:
  n_chains: 2
  n_therm: 20
  n_traj: 4
  n_steps: 2
  step_size: auto
  target_acceptance: 0.8
  save_every: 1
  integrator: leapfrog
  jitter: 0.5
  dtype: float64
train:
  steps: 2
  batch_size: 4
  lr: 0.003
  lr_schedule: cosine
  warmup_steps: 0
  optimizer: adam
  weight_decay: 0.0
  objective: reverse
  data: null
  alpha: 0.5
  alpha_final: null
  grad_clip: 10.0
  max_nonfinite: 20
  log_every: 50
  checkpoint_every: 500
  init_from: null
  init_from_missing: error
  eval_samples: 8
  eval_batch_size: 8
  time_budget: 100.0
  sign_flip: true
  validation_fraction: 0.1
sample:
  mode: mcmc
  n_chains: 2
  n_samples: 4
  batch_size: 8
  flow: null
  save_every: 1
  cnf_steps: null
  flow_steps: 1
  hmc_trajectories: 1
flow:
  n_layers: 2
  hidden_channels:
  - 4
  kernel_size: 3
  equivariant: true
  conditioner: symmetrized
  global_channels: 8
  activation: silu
  fourier_layer: true
  fourier_m2_init: auto
  zero_mode_layer: false
  bijection: affine
  identity_init: true
  cnf_layers: 1
  cnf_steps: 2
  cnf_frequencies: 8
  cnf_time_basis: 5
  cnf_lipschitz_max: 3.0
"""


#: (section, key) of every key added after RECORD_BEFORE was written
KEYS_ADDED_SINCE_RECORD_BEFORE = (
    ("flow", "zero_mode_widths"), ("hmc", "fourier_acceleration"), ("hmc", "fa_kernel"),
    ("hmc", "fa_mu2"), ("hmc", "trajectory_length"),  # issue 15
    ("compile", None),  # issue 16: a top-level key
    ("train", "budget_clock"),  # issue 16
    ("flow", "cnf_kernel"), ("flow", "cnf_kernel_range"),  # issue 13
)


def test_run_folder_records_written_before_pydantic_read_back(tmp_path):
    """An old run folder's config.train.yaml loads, equals the config it was started with (the
    couplings as (m2, lam), as the resume check compares them), and today's code writes the same
    bytes for that config; flow.pt's stored flow section rebuilds the same FlowConfig."""
    from lattice_flows.config import FlowConfig
    from lattice_flows.io.runfolder import config_yaml, diff_configs, read_run_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.train.yaml").write_text(RECORD_BEFORE)
    cfg = config_from_dict(yaml.safe_load(RAW_BEFORE))
    stored = read_run_config(run, "train", cfg)
    assert stored is not None
    assert [k for k in diff_configs(stored.to_dict(), cfg.to_dict()) if not k.startswith("action.")] == []
    assert (stored.action.m2, stored.action.lam) == (cfg.action.m2, cfg.action.lam)
    body = "".join(line for line in RECORD_BEFORE.splitlines(keepends=True) if not line.startswith("#"))
    # today's record is the old one plus the keys added since (their defaults), in place
    written = yaml.safe_load(config_yaml(cfg))
    for section, name in KEYS_ADDED_SINCE_RECORD_BEFORE:
        if name is None:  # a top-level key
            assert section not in yaml.safe_load(body)
            written.pop(section)
            continue
        assert name not in yaml.safe_load(body)[section]
        written[section].pop(name)
    assert written == yaml.safe_load(body)
    old_lines = body.splitlines()
    assert [line for line in config_yaml(cfg).splitlines() if line in old_lines] == old_lines
    assert FlowConfig(**yaml.safe_load(body)["flow"]) == cfg.flow == stored.flow


# The wording of the code before pydantic (generated from its module, commit 110a260): one
# refusal at every key, "config key '<key>': value <value> is not allowed; expected <expected>."
REFUSALS_BEFORE = [
    ('lattice.shape', 'fast', 'a list of positive integer extents, e.g. [8, 8]'),
    ('hmc.n_chains', 'fast', 'a positive integer'),
    ('hmc.n_therm', 'fast', 'an integer >= 0'),
    ('hmc.n_traj', 'fast', 'a positive integer'),
    ('hmc.n_steps', 'fast', 'a positive integer (leapfrog steps per trajectory)'),
    ('hmc.step_size', 'fast', "'auto' or a positive step size"),
    ('hmc.target_acceptance', 'fast', 'a number in (0, 1)'),
    ('hmc.save_every', 'fast', 'a positive integer (trajectories per saved configuration)'),
    ('hmc.integrator', 'fast', 'one of leapfrog, omelyan'),
    ('hmc.jitter', 'fast', 'a number in [0, 1) (relative spread of the number of steps)'),
    ('hmc.dtype', 'fast', 'one of float64, float32'),
    ('flow.n_layers', 'fast', 'an even integer >= 0 (coupling layers; 0 only with other layers)'),
    ('flow.hidden_channels', 'fast',
     'a list of positive integers (conv channels per hidden layer)'),
    ('flow.kernel_size', 'fast', 'a positive odd integer'),
    ('flow.equivariant', 'fast', 'true (exact Z2 equivariance) or false'),
    ('flow.conditioner', 'fast', 'one of symmetrized, odd, global, global_local'),
    ('flow.global_channels', 'fast',
     "a positive integer (odd and even kernel fields of flow.conditioner = 'global')"),
    ('flow.activation', 'fast', 'one of tanh, leaky_relu, gelu, silu, relu, softsign'),
    ('flow.fourier_layer', 'fast', 'true or false (learnable Fourier-space Gaussian layer)'),
    ('flow.zero_mode_layer', 'fast',
     'true or false (learnable monotone map of the magnetisation, first layer)'),
    ('flow.fourier_m2_init', 'fast', "'auto' (m2 if m2 > 0, else 1) or a positive mass squared"),
    ('flow.bijection', 'fast', 'one of affine'),
    ('flow.identity_init', 'fast',
     'true (last conv of each conditioner starts at zero: the fresh flow is the identity) '
     "or false (PyTorch's default init, as in the published tutorial)"),
    ('flow.cnf_layers', 'fast', 'an integer >= 0 (continuous equivariant layers; 0 = off)'),
    ('flow.cnf_steps', 'fast', 'a positive integer (fixed RK4 steps per continuous layer)'),
    ('flow.cnf_frequencies', 'fast',
     'a positive integer (sin(omega phi) features per continuous layer)'),
    ('flow.cnf_time_basis', 'fast', 'a positive integer (Fourier time functions of the kernels)'),
    ('flow.cnf_lipschitz_max', 'fast',
     "a positive number (bound on the vector field's Lipschitz constant; keep "
     'cnf_lipschitz_max / cnf_steps <= ~0.4 for RK4 accuracy)'),
    ('flow.cnf_kernel', 'fast', 'one of phat, orbit, phat+orbit'),
    ('flow.cnf_kernel_range', 'fast',
     'a positive integer (longest separation component of the orbit kernels)'),
    ('train.steps', 'fast', 'a positive integer (optimizer steps)'),
    ('train.batch_size', 'fast', 'a positive integer (global batch size)'),
    ('train.lr', 'fast', 'a positive learning rate'),
    ('train.lr_schedule', 'fast', 'one of cosine, constant'),
    ('train.warmup_steps', 'fast', 'an integer >= 0 (linear warm-up steps)'),
    ('train.optimizer', 'fast', 'one of adam, adamw'),
    ('train.weight_decay', 'fast', 'a number >= 0'),
    ('train.objective', 'fast',
     'one of reverse, path_gradient, path_gradient_fast, forward, mixed'),
    ('train.data', -1, 'a path to a lattice_flows HDF5 sample file (e.g. hmc.h5) or null'),
    ('train.alpha', 'fast', "a number in [0, 1] (weight of reverse KL in 'mixed')"),
    ('train.alpha_final', 'fast',
     'null or a number in [0, 1] (alpha at the last step; linear schedule)'),
    ('train.grad_clip', 'fast', 'a number >= 0 (max gradient norm; 0 = off)'),
    ('train.max_nonfinite', 'fast',
     'a positive integer (consecutive non-finite steps before stopping)'),
    ('train.log_every', 'fast', 'a positive integer (steps between metric records)'),
    ('train.checkpoint_every', 'fast', 'a positive integer (steps between checkpoints)'),
    ('train.init_from', -1, 'null or a path to a flow checkpoint (flow.pt or train.ckpt)'),
    ('train.init_from_missing', 'fast', 'one of error, fresh'),
    ('train.eval_samples', 'fast',
     'a positive integer (fresh samples for the final ESS/acceptance)'),
    ('train.eval_batch_size', 'fast', 'a positive integer'),
    # issue 16: the budget counts the seconds of train.budget_clock (CPU-s before)
    ('train.time_budget', 'fast',
     'null or a positive number of seconds for training (on train.budget_clock)'),
    ('train.sign_flip', 'fast', 'true or false (random Z2 sign flips of training data)'),
    ('train.validation_fraction', 'fast',
     'a number in [0, 0.5] (share of data rows held out for the validation NLL)'),
    ('sample.mode', 'fast', 'one of mcmc, importance, composite'),
    ('sample.n_chains', 'fast', 'a positive integer (independent chains)'),
    ('sample.n_samples', 'fast',
     'a positive integer (Metropolis steps per chain, or samples per column in importance '
     'mode)'),
    ('sample.batch_size', 'fast', 'a positive integer (proposals generated per flow call)'),
    ('sample.flow', -1, "null (the run folder's flow.pt) or a path to a flow.pt"),
    ('sample.save_every', 'fast', 'a positive integer (Metropolis steps per saved configuration)'),
    ('sample.cnf_steps', 'fast',
     'null (the RK4 steps the flow was trained with) or a positive integer (RK4 steps of '
     'every continuous layer while sampling)'),
    ('sample.flow_steps', 0,
     "a positive integer (flow independence steps per sweep of mode 'composite')"),
    ('sample.hmc_trajectories', 0,
     "a positive integer (HMC trajectories per sweep of mode 'composite')"),
    ('output.dir', -1, 'a non-empty path to the run folder'),
    ('output.chunk_rows', 'fast', 'a positive integer (saved rows per chunk write and checkpoint)'),
    ('output.store_G', 'fast', 'true or false (store the full G(y) per configuration)'),
    ('seed', 'x', 'an integer >= 0'),
    ('device', 1, 'one of auto, cpu, cuda'),
    ('dtype', None, 'one of float32, float64'),
    ('compile', 'yes',
     "true or false (torch.compile the flow's conditioners and the HMC integrator)"),
    ('action.m2', 'big', 'a finite real number'),
    ('action.lam', -1.0, 'lam >= 0 (the action is unbounded below otherwise)'),
    ('hmc.step_size', 0, "'auto' or a positive step size"),
    ('hmc.target_acceptance', '1.5', 'a number in (0, 1)'),
    ('flow.hidden_channels', [4, True],
     'a list of positive integers (conv channels per hidden layer)'),
    ('flow.kernel_size', 4, 'a positive odd integer'),
    ('flow.n_layers', 3, 'an even integer >= 0 (coupling layers; 0 only with other layers)'),
    ('lattice.shape', [], 'a list of positive integer extents, e.g. [8, 8]'),
]

# and every other kind of message (non-finite, missing, unknown, not a mapping, cross-key rules)
SPECIAL_BEFORE = [
    ({'hmc.jitter': math.nan},
     "config key 'hmc.jitter': value nan is not a finite number; expected a number in [0, "
     '1) (relative spread of the number of steps).'),
    ({'train.lr': '1e999'},
     "config key 'train.lr': value inf is not a finite number; expected a positive "
     'learning rate.'),
    ({'action.lam': math.inf},
     "config key 'action.lam': value inf is not a finite number; expected a finite real "
     'number.'),
    ({'train.time_budget': -math.inf},
     "config key 'train.time_budget': value -inf is not a finite number; expected null or "
     'a positive number of seconds for training (on train.budget_clock).'),  # issue 16
    ({'lattice.shape': _DELETE},
     "config key 'lattice.shape' is missing; expected a list of positive integer extents, "
     'e.g. [8, 8].'),
    ({'action': {'m2': 1.0}},
     "config key 'action.lam' is missing; expected a finite number (or give kappa and "
     'lam_hop instead).'),
    ({'action': {'lam_hop': 0.1}},
     "config key 'action.kappa' is missing; expected a finite number."),
    ({'hmc.bogus': 1},
     "config section 'hmc': unknown key 'bogus'; allowed keys are n_chains, n_therm, "
     'n_traj, n_steps, step_size, target_acceptance, save_every, integrator, jitter, '
     'dtype, fourier_acceleration, fa_kernel, fa_mu2, trajectory_length.'),
    ({'bogus': {}},
     "config: unknown section 'bogus'; allowed sections are lattice, action, seed, "
     'device, dtype, compile, hmc, flow, train, sample, output.'),
    ({'train': [1]},
     "config section 'train': expected a mapping of keys (steps, batch_size, lr, "
     'lr_schedule, warmup_steps, optimizer, weight_decay, objective, data, alpha, '
     'alpha_final, grad_clip, max_nonfinite, log_every, checkpoint_every, init_from, '
     'init_from_missing, eval_samples, eval_batch_size, time_budget, sign_flip, '
     'validation_fraction, budget_clock), got [1].'),  # budget_clock: issue 16
    ({'action': 'x'},
     "config section 'action': expected a mapping with either {m2, lam} or {kappa, "
     "lam_hop}, got 'x'."),
    ({'action': {'m2': 1.0, 'lam': 1.0, 'h': 1}},
     "config section 'action': unknown key 'h'; allowed keys are m2, lam (default "
     'parametrization) or kappa, lam_hop (hopping parametrization).'),
    ({'action': {'m2': 1.0, 'kappa': 0.2}},
     "config section 'action': give either {m2, lam} or {kappa, lam_hop}, not a mix (got "
     'kappa, m2).'),
    ({'lattice': _DELETE},
     "config section 'lattice' is missing; it is required."),
    ({'action': _DELETE},
     "config section 'action' is missing; it is required."),
    ({'flow.n_layers': 0},
     "config key 'flow.n_layers': value 0 is not allowed with flow.cnf_layers = 0; the "
     'flow needs coupling or continuous layers (n_layers > 0 or cnf_layers > 0).'),
    ({'flow.conditioner': 'odd', 'flow.equivariant': False, 'flow.activation': 'tanh'},
     "config key 'flow.conditioner': value 'odd' is an exactly Z2-equivariant net; it is "
     "not allowed with flow.equivariant = false (use 'symmetrized')."),
    ({'flow.conditioner': 'global', 'flow.equivariant': False},
     "config key 'flow.conditioner': value 'global' is an exactly Z2-equivariant "
     'conditioner; it is not allowed with flow.equivariant = false.'),
    ({'flow.conditioner': 'odd'},
     "config key 'flow.activation': value 'silu' is not allowed with flow.conditioner = "
     "'odd', which needs an odd activation: tanh or softsign."),
    ({'lattice.shape': [5, 4]},
     "config key 'lattice.shape': value [5, 4] is not allowed with a flow; checkerboard "
     'couplings need every extent even.'),
    ({'train.objective': 'mixed'},
     "config key 'train.data' is missing; objective 'mixed' needs training "
     'configurations: the path of a lattice_flows HDF5 sample file (e.g. hmc.h5).'),
    ({'action': {'kappa': -0.2, 'lam_hop': 0.1}},
     "config key 'action.kappa': value -0.2 is not allowed; expected kappa > 0."),
    ({'action': {'kappa': 0.2, 'lam_hop': -0.1}},
     "config key 'action.lam_hop': value -0.1 is not allowed; expected lam_hop >= 0 (the "
     'action is unbounded below otherwise).'),
    ({'action.lam': -1.0},
     "config key 'action.lam': value -1.0 is not allowed; expected lam >= 0 (the action "
     'is unbounded below otherwise).'),
    ({'action': {'m2': 0.0, 'lam': 0.0}},
     "config key 'action.m2': value 0.0 is not allowed with lam = 0; the free field needs "
     'm2 > 0 (the Gaussian is not normalizable otherwise).'),
    ({'action': {'kappa': 'x', 'lam_hop': 0.1}},
     "config key 'action.kappa': value 'x' is not allowed; expected a finite real number."),
    ({'sample.mode': 'composite', 'hmc': _DELETE},
     "config key 'sample.mode': value 'composite' needs the config section 'hmc' (the "
     "settings of its HMC trajectories); add an hmc section, or use mode 'mcmc' or "
     "'importance'."),
]

BARE = {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0},
        "hmc": {}, "flow": {}, "train": {}, "sample": {}, "output": {}}


def _set(changes: dict) -> dict:
    raw = copy.deepcopy(BARE)
    for path, value in changes.items():
        node, keys = raw, path.split(".")
        for k in keys[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("key,value,expected", REFUSALS_BEFORE, ids=[k for k, _, _ in REFUSALS_BEFORE])
def test_refusals_keep_their_wording(key, value, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_set({key: value}))
    assert str(info.value) == f"config key '{key}': value {value!r} is not allowed; expected {expected}."


# issue 15: the Fourier-acceleration and trajectory-length keys of the hmc section
REFUSALS_HMC_TUNING = [
    ('hmc.fourier_acceleration', 'yes',
     'true or false (Fourier acceleration: kinetic term 1/2 pi^T M^-1 pi)'),
    ('hmc.fa_kernel', 'exact', 'one of free, measured'),
    ('hmc.fa_mu2', -1.0, "'auto' or a positive mass squared"),
    ('hmc.fa_mu2', 'fast', "'auto' or a positive mass squared"),
    ('hmc.trajectory_length', 0, "null, 'auto' or a positive trajectory length"),
    ('hmc.trajectory_length', 'long', "null, 'auto' or a positive trajectory length"),
]


@pytest.mark.parametrize("key,value,expected", REFUSALS_HMC_TUNING,
                         ids=[f"{k}={v!r}" for k, v, _ in REFUSALS_HMC_TUNING])
def test_hmc_tuning_refusals_name_key_value_and_what_is_allowed(key, value, expected):
    test_refusals_keep_their_wording(key, value, expected)


# issue 16: the clock of train.time_budget
REFUSALS_BUDGET_CLOCK = [('train.budget_clock', 'gpu', 'one of device, cpu, wall'),
                         ('train.budget_clock', 1, 'one of device, cpu, wall')]


@pytest.mark.parametrize("key,value,expected", REFUSALS_BUDGET_CLOCK,
                         ids=[f"{k}={v!r}" for k, v, _ in REFUSALS_BUDGET_CLOCK])
def test_budget_clock_refusals_name_key_value_and_what_is_allowed(key, value, expected):
    test_refusals_keep_their_wording(key, value, expected)


@pytest.mark.parametrize("changes,message", SPECIAL_BEFORE, ids=[str(c)[:40] for c, _ in SPECIAL_BEFORE])
def test_other_messages_keep_their_wording(changes, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_set(changes))
    assert str(info.value) == message
