"""Config validation: every bad value is refused with the key, the value and what is allowed."""

from __future__ import annotations

import copy
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


_DELETE = object()

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
    config without the (record-only) hopping form (it raised OverflowError)."""
    for kappa in (1e-300, 1e-160):
        with pytest.raises(ConfigError, match=r"action\.kappa.*not a finite number"):
            config_from_dict(_with("action", {"kappa": kappa, "lam_hop": 0.1}))
    cfg = config_from_dict(_with("action", {"m2": -5.0, "lam": 1e-300}))
    assert (cfg.action.m2, cfg.action.lam, cfg.action.kappa) == (-5.0, 1e-300, None)


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
    assert config_yaml(cfg) == body
    assert FlowConfig(**yaml.safe_load(body)["flow"]) == cfg.flow == stored.flow
