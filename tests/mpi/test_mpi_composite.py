"""Composite production (``sample.mode: composite``) under ``mpiexec -n 2``: per-rank chains and
files, the merged view, streams per rank, and a rank killed mid-write then rerun.

* rank r draws the stream (seed, r): rank 0 of the 2-rank run is the 1-rank run element by
  element; rank 1's chains differ from rank 0's everywhere, and its averages agree with the
  1-rank run within the combined Gamma-method error (Sidak over the checks, alpha 1e-3);
* the merged view holds both ranks' chains side by side;
* rank 1 SIGKILLed inside its second checkpoint write (``lattice_flows.faults``), then the same
  2-rank command rerun: both rank files equal those of the uninterrupted 2-rank run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lattice_flows.config import config_from_dict
from lattice_flows.estimates import gamma_method
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.mcmc.flow_run import run_sample
from lattice_flows.training.trainer import train_flow
from tests.conftest import assert_same_samples, sidak_z, write_config
from tests.mpi.test_mpi import MPIEXEC, NP, _env, flow_raw, mpirun

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not on PATH (pip install mpi4py mpich)"),
]

N_CHAINS, N_SWEEPS = 8, 400
CHECKS = ("absM", "chi2", "E")


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flow") / "run"
    train_flow(config_from_dict(flow_raw(out, train={"steps": 40, "checkpoint_every": 1000})),
               progress=False)
    return out / "flow.pt"


def _raw(out: Path, flow_pt: Path) -> dict:
    raw = flow_raw(out, sample={"mode": "composite", "n_chains": N_CHAINS,
                                "n_samples": N_SWEEPS, "batch_size": 64, "flow": str(flow_pt)},
                   hmc={"n_therm": 30, "n_steps": 5})
    raw["output"]["chunk_rows"] = 40
    del raw["train"], raw["flow"]
    return raw


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, trained_flow) -> Path:
    """An uninterrupted 2-rank composite run; returns its folder."""
    two = tmp_path_factory.mktemp("two") / "run"
    cfg2 = write_config(two.parent / "two.yaml", _raw(two, trained_flow))
    proc = mpirun("-m", "lattice_flows", "sample", str(cfg2), "--no-progress")
    assert proc.stdout.strip().splitlines()[-1] == str(two / "composite.h5")
    return two


def test_two_rank_composite_streams_and_merged_view(tmp_path, trained_flow, two_rank_run):
    two = two_rank_run
    one = tmp_path / "one"
    single = SampleFile(run_sample(config_from_dict(_raw(one, trained_flow)), progress=False))

    ranks = [SampleFile(two / f"composite.rank{r:04d}.h5") for r in range(NP)]
    assert [r.attrs["rank"] for r in ranks] == list(range(NP))
    assert all(r.attrs["kind"] == "composite" and verify_sample_file(r.path) == [] for r in ranks)
    assert_same_samples(single.path, ranks[0].path)  # rank 0 draws a single process's stream
    c0, c1 = ranks[0].configs(), ranks[1].configs()
    assert c0.shape == c1.shape == (N_SWEEPS, N_CHAINS, 4, 4)
    assert not np.any(np.all(c0 == c1, axis=(2, 3)))  # independent streams
    merged = SampleFile(two / "composite.h5")
    assert merged.n_chains == NP * N_CHAINS and merged.n_saved == N_SWEEPS
    np.testing.assert_array_equal(merged.configs(), np.concatenate([c0, c1], axis=1))
    np.testing.assert_array_equal(merged.extra("log_w"),
                                  np.concatenate([r.extra("log_w") for r in ranks], axis=1))
    z_max = sidak_z(1e-3, len(CHECKS))
    for name in CHECKS:
        a, b = gamma_method(ranks[1].observable(name)), gamma_method(single.observable(name))
        assert abs(a.value - b.value) < z_max * float(np.hypot(a.error, b.error)), (name, a, b)



def test_two_rank_composite_killed_rank_resumes_to_the_uninterrupted_run(tmp_path, trained_flow,
                                                                         two_rank_run):
    """Rank 1 killed inside its second checkpoint write; the rerun finishes both ranks' chains."""
    two, killed = two_rank_run, tmp_path / "killed"
    cfg_k = write_config(tmp_path / "killed.yaml", _raw(killed, trained_flow))
    proc = subprocess.run(
        [MPIEXEC, "-n", str(NP), sys.executable, "-m", "lattice_flows", "sample", str(cfg_k),
         "--no-progress"], capture_output=True, text=True, timeout=120,
        env=_env({"LATTICE_FLOWS_KILL_AT": "checkpoint:2:1"}))
    assert proc.returncode != 0, "the kill point was not reached: the test would prove nothing"
    assert not (killed / "composite.h5").exists()  # no merged view of an unfinished run
    mpirun("-m", "lattice_flows", "sample", str(cfg_k), "--no-progress")
    for r in range(NP):
        name = f"composite.rank{r:04d}.h5"
        assert_same_samples(two / name, killed / name)
    assert_same_samples(two / "composite.h5", killed / "composite.h5")
