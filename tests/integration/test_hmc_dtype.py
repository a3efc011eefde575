"""HMC's own precision ``hmc.dtype`` (float64 by default, float32 allowed), each against the
exact free field (lattice_flows/theory/free_field.py; docs/conventions.md "Exact free-field
results"), with Gamma-method errors and a Sidak correction over the simultaneous checks.

The flow's top-level ``dtype`` is float32 here, as in every shipped config: HMC must not follow it.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from lattice_flows.config import ConfigError, config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.hmc_run import run_hmc
from tests.conftest import assert_free_field_hmc_exact

SHAPE = (8, 8)
M2 = 1.0


def _cfg(out, **hmc):
    raw_hmc = {"n_chains": 16, "n_therm": 100, "n_traj": 500, "n_steps": 8}
    raw_hmc.update(hmc)
    return config_from_dict({
        "lattice": {"shape": list(SHAPE)},
        "action": {"m2": M2, "lam": 0.0},
        "seed": 7,
        "device": "cpu",
        "dtype": "float32",
        "hmc": raw_hmc,
        "output": {"dir": str(out), "chunk_rows": 500},
    })


def test_default_is_float64_and_recorded(tmp_path):
    cfg = _cfg(tmp_path / "r", n_traj=4, n_therm=20)
    assert cfg.hmc.dtype == "float64" and cfg.dtype == "float32"
    sf = SampleFile(run_hmc(cfg, progress=False))
    assert sf.attrs["hmc_dtype"] == "float64"
    assert yaml.safe_load(sf.attrs["config"])["hmc"]["dtype"] == "float64"
    assert load_checkpoint(tmp_path / "r" / "hmc.ckpt")["phi"].dtype == torch.float64
    assert sf.configs().dtype.name == "float32"  # stored configurations are float32 either way


def test_bad_dtype_names_key_value_and_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path / "r", dtype="float16")
    msg = str(err.value)
    assert "hmc.dtype" in msg and "float16" in msg and "float64" in msg and "float32" in msg


def test_resume_with_another_dtype_refused(tmp_path):
    run_hmc(_cfg(tmp_path / "r", n_traj=4, n_therm=20, dtype="float32"), progress=False)
    with pytest.raises(ConfigError, match="hmc.dtype"):
        run_hmc(_cfg(tmp_path / "r", n_traj=8, n_therm=20, dtype="float64"), progress=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_free_field_exact_results(tmp_path, dtype):
    sf = SampleFile(run_hmc(_cfg(tmp_path / dtype, dtype=dtype), progress=False))
    assert sf.attrs["hmc_dtype"] == dtype
    assert_free_field_hmc_exact(sf, SHAPE, M2, dtype)
