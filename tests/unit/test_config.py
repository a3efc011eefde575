"""Config validation: every bad value is refused with the key, the value and what is allowed."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

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
