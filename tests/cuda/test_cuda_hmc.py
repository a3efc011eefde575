"""The exact free-field HMC check on the device: the oracle of tests/integration/test_hmc_dtype.py
(chi2, the action density and G(0, t) of the free field, lattice_flows/theory/free_field.py;
docs/conventions.md "Exact free-field results") with Gamma-method errors and a Sidak-corrected
threshold over the simultaneous checks, for HMC in float64 and float32 on ``device: cuda`` (the
config value: the run refuses to start without CUDA, so a pass is a pass on the GPU).
"""

from __future__ import annotations

import pytest

from lattice_flows.config import config_from_dict
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.hmc_run import run_hmc
from tests.conftest import assert_free_field_hmc_exact

SHAPE = (8, 8)
M2 = 1.0


def _cfg(out, device: str, dtype: str):
    return config_from_dict({
        "lattice": {"shape": list(SHAPE)},
        "action": {"m2": M2, "lam": 0.0},
        "seed": 7,
        "device": device,
        "dtype": "float32",
        "hmc": {"n_chains": 16, "n_therm": 100, "n_traj": 500, "n_steps": 8, "dtype": dtype},
        "output": {"dir": str(out), "chunk_rows": 500},
    })


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_free_field_exact_results_on_device(tmp_path, device_slow_twin, dtype):
    cfg = _cfg(tmp_path / dtype, device_slow_twin.type, dtype)
    assert cfg.device == device_slow_twin.type
    sf = SampleFile(run_hmc(cfg, progress=False))
    assert sf.attrs["hmc_dtype"] == dtype
    assert_free_field_hmc_exact(sf, SHAPE, M2, f"{device_slow_twin} {dtype}")
