"""Real multi-rank runs: ``mpiexec -n 2`` subprocesses of the CLI and of tests/mpi/grad_check.py.

What is proved:

* data parallelism is exact: the all-reduced gradient of a 2-rank step equals the one-process
  gradient of the union batch (float64, 1e-10);
* 2-rank training runs, checkpoints on rank 0 only, and a resumed run ends with exactly the
  weights of an uninterrupted one;
* 2-rank flow and HMC production write per-rank files with independent streams and a merged
  view that every reader and ``lattice-flows analyze`` use; its averages agree with a 1-rank run
  within the combined Gamma-method error (Wolff 2004, docs/conventions.md "Statistics") times a
  Sidak threshold for the 12 comparisons at family-wise alpha = 1e-3;
  a production folder is resumed only with its own number of ranks;
* the SLURM scripts of jobs/ run end to end with ``srun`` (and ``sbatch``) replaced by shims,
  and jobs/local.sh runs train -> sample -> analyze with mpiexec.

Two tests cover training resumed on more ranks than it was checkpointed with: it is resumed
(exit status 0, a warning), with fresh, independent random streams per rank, no crash.

Every subprocess runs with OMP_NUM_THREADS=1 (the test machine may have only 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lattice_flows.tables import default_discard
from lattice_flows.cli import main
from lattice_flows.config import config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.flow_run import run_sample
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.estimates import gamma_method
from lattice_flows.training.trainer import train_flow
from tests.conftest import REPO, assert_same_flow, sidak_z, write_config

MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(
    MPIEXEC is None,
    reason="mpiexec is not on PATH: install an MPI (e.g. `pip install mpi4py mpich`) to run the "
    "multi-rank tests",
)

HERE = Path(__file__).resolve().parent
NP = 2


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LATTICE_FLOWS_NO_MPI", None)
    env.update(extra or {})
    return env


def mpirun(*args: str, n: int = NP, check: bool = True, timeout: float = 120,
           env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python ARGS`` (``-m lattice_flows ...`` or a script)."""
    proc = subprocess.run(
        [MPIEXEC, "-n", str(n), sys.executable, *args], capture_output=True, text=True,
        timeout=timeout, env=_env(env_extra), cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mpiexec -n {n} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def flow_raw(out: Path, **sections) -> dict:
    """A tiny flow config at the tutorial couplings on a 4x4 lattice."""
    raw = {
        "lattice": {"shape": [4, 4]},
        "action": {"m2": -4.0, "lam": 8.0},
        "seed": 31,
        "device": "cpu",
        "flow": {"n_layers": 4, "hidden_channels": [8]},
        "train": {"steps": 40, "batch_size": 64, "lr": 3e-3, "lr_schedule": "constant",
                  "log_every": 10, "checkpoint_every": 10, "eval_samples": 256,
                  "eval_batch_size": 256},
        "output": {"dir": str(out), "chunk_rows": 50},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return raw


def apply_set(raw: dict, **train) -> dict:
    """``raw`` with keys of its train section replaced (like ``--set train.k=v``)."""
    return {**raw, "train": {**raw["train"], **train}}


# ------------------------------------------------------------------------------ a. gradients


@pytest.mark.mpi
def test_two_rank_gradient_equals_union_batch_gradient(tmp_path):
    out = tmp_path / "grad.json"
    mpirun(str(HERE / "grad_check.py"), str(out))
    res = json.loads(out.read_text())
    assert res["n_ranks"] == NP
    assert res["min_param_grad_norm"] > 0  # every parameter (also the last convs) takes part
    assert res["max_rank_diff"] == 0.0  # all ranks hold the same averaged gradient
    assert res["max_abs_diff"] < 1e-10, res


# ------------------------------------------------------------------------------ b. training


def _train_records(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


@pytest.mark.mpi
def test_two_rank_training_runs_and_resumes_exactly(tmp_path):
    full = write_config(tmp_path / "full.yaml", flow_raw(tmp_path / "full"))
    resumed = write_config(tmp_path / "resumed.yaml", flow_raw(tmp_path / "resumed"))

    proc = mpirun("-m", "lattice_flows", "train", str(full), "--no-progress")
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # printed by rank 0 only
    assert result["steps"] == 40 and proc.stdout.count('"steps"') == 1
    mpirun("-m", "lattice_flows", "train", str(resumed), "--no-progress", "--set", "train.steps=20")
    assert load_checkpoint(tmp_path / "resumed" / "train.ckpt")["step"] == 20
    proc = mpirun("-m", "lattice_flows", "train", str(resumed), "--no-progress")
    assert "resuming" in proc.stderr + proc.stdout

    assert_same_flow(tmp_path / "full" / "flow.pt", tmp_path / "resumed" / "flow.pt")

    for run in ("full", "resumed"):
        d = tmp_path / run
        assert [p.name for p in d.glob("train*.h5")] == ["train.h5"]  # rank 0 writes it, once
        assert not list(d.glob("*rank*"))
        rec = _train_records(d / "train.h5")
        assert rec["step"].tolist() == [10, 20, 30, 40]
        assert np.all(np.isfinite(rec["loss"])) and np.all(np.isfinite(rec["ess"]))
        cfg_text = (d / "config.yaml").read_text()
        assert "# mpi_size: 2" in cfg_text
    # the metric history of the resumed run is that of the uninterrupted one
    ra = _train_records(tmp_path / "full" / "train.h5")
    rb = _train_records(tmp_path / "resumed" / "train.h5")
    np.testing.assert_array_equal(ra["loss"], rb["loss"])


@pytest.mark.mpi
def test_a_non_finite_step_on_one_rank_is_skipped_on_every_rank(tmp_path):
    """A NaN loss with a finite gradient on rank 1 only, at the last of 3 steps: every rank
    skips the step together (training/train_step.py: the local loss poisons the gradient before
    the all-reduce), so rank 0's flow ends bit-identical to that of a 2-step 2-rank run and
    rank 0, whose own loss is finite, counts the skip; had it stepped alone, its weights would
    differ. (An inf gradient on one rank reaches every rank through the all-reduce itself.)"""
    raw = flow_raw(tmp_path / "two", train={"steps": 2, "log_every": 1, "checkpoint_every": 1})
    mpirun("-m", "lattice_flows", "train", str(write_config(tmp_path / "two.yaml", raw)), "--no-progress")
    out = tmp_path / "three"
    cfg = write_config(tmp_path / "three.yaml", apply_set(
        {**raw, "output": {**raw["output"], "dir": str(out)}}, steps=3))
    cmd = [sys.executable, "-m", "lattice_flows", "train", str(cfg), "--no-progress"]
    proc = subprocess.run([MPIEXEC, "-n", "1", *cmd, ":", "-n", "1", "-env",
                           "LATTICE_FLOWS_NAN_AT", "train_loss:3", *cmd],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("non-finite loss or gradient; step skipped") == 1, proc.stderr[-2000:]
    assert _train_records(out / "train.h5")["nonfinite"].tolist() == [0, 0, 1]
    assert_same_flow(tmp_path / "two" / "flow.pt", out / "flow.pt")


# Regression tests: training resumed on more ranks than it was checkpointed with once gave
# rank 1 rank 0's RNG state (identical batches) and crashed on the data RNG (IndexError).


@pytest.mark.mpi
def test_training_resumed_on_more_ranks_draws_distinct_streams(tmp_path):
    raw = flow_raw(tmp_path / "run")
    train_flow(config_from_dict(apply_set(raw, steps=20)), progress=False)  # 1 rank, 20 steps
    out = tmp_path / "streams.json"
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    # one more step is enough: the first batch after the resume is recorded
    proc = mpirun(str(HERE / "stream_check.py"), str(out), "train", str(cfg), "--no-progress",
                  "--set", "train.steps=21", check=False)
    # the trainer's contract (training/train_state.py, resume): another number of ranks is
    # resumed, each rank with a fresh stream from (seed, rank, step), and a warning says it is
    # not bit-identical
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpointed with 1 rank(s) on 2" in proc.stderr, proc.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "train.ckpt")["step"] == 21
    first = json.loads(out.read_text())["first_batch"]
    assert len(first) == NP and all(f is not None for f in first)
    # a fresh 2-rank run draws different z on every rank (test above); so must a resumed one
    assert first[0] != first[1], "ranks 0 and 1 draw identical batches after the resume"


@pytest.mark.mpi
def test_forward_training_resumed_on_more_ranks_runs(tmp_path):
    data_dir = tmp_path / "hmc"
    hmc_raw = flow_raw(data_dir, hmc={"n_chains": 4, "n_therm": 20, "n_traj": 40, "n_steps": 4})
    run_hmc(config_from_dict(hmc_raw), progress=False)
    train = {"objective": "forward", "data": str(data_dir / "hmc.h5"), "eval_samples": 256}
    raw = flow_raw(tmp_path / "run", train=train)
    train_flow(config_from_dict(apply_set(raw, steps=10)), progress=False)  # 1 rank, 10 steps
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    proc = mpirun("-m", "lattice_flows", "train", str(cfg), "--no-progress", check=False)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # resumed (not refused): fresh data streams per rank, with the warning
    # (training/train_state.py, resume)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checkpointed with 1 rank(s) on 2" in proc.stderr, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 40
    assert load_checkpoint(tmp_path / "run" / "train.ckpt")["step"] == 40
    rec = _train_records(tmp_path / "run" / "train.h5")
    assert rec["step"].tolist() == [10, 20, 30, 40] and np.all(np.isfinite(rec["loss"]))


# ------------------------------------------------------------------------------ c. production


PROD = {
    "sample": {"n_chains": 8, "n_samples": 400, "batch_size": 1024},
    "hmc": {"n_chains": 8, "n_therm": 30, "n_traj": 200, "n_steps": 6, "step_size": "auto"},
}


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory) -> Path:
    """A flow trained in this process (single rank is fine for the production tests)."""
    out = tmp_path_factory.mktemp("flow") / "run"
    train_flow(config_from_dict(flow_raw(out, train={"steps": 60, "checkpoint_every": 1000})),
               progress=False)
    return out / "flow.pt"


def _prod_raw(out: Path, flow_pt: Path) -> dict:
    raw = flow_raw(out, sample={**PROD["sample"], "flow": str(flow_pt)}, hmc=PROD["hmc"])
    del raw["train"], raw["flow"]
    return raw


# 3 observables x 2 files x 2 comparisons below; ALPHA is the family-wise false-alarm probability
# (Sidak). Merged vs single shares rank 0's stream with the single run: the difference has a
# smaller spread than the combined error, so that comparison is conservative.
ALPHA = 1e-3
N_AGREE = 12


def _agree(a: np.ndarray, b: np.ndarray, what: str, z: float = sidak_z(ALPHA, N_AGREE)) -> None:
    ea, eb = gamma_method(a), gamma_method(b)
    sigma = float(np.hypot(ea.error, eb.error))
    assert sigma > 0, what
    assert abs(ea.value - eb.value) < z * sigma, (what, ea, eb)


@pytest.mark.mpi
def test_two_rank_production_merged_view_and_one_rank_agreement(tmp_path, trained_flow, capsys):
    two = tmp_path / "two"
    cfg2 = write_config(tmp_path / "two.yaml", _prod_raw(two, trained_flow))
    proc = mpirun("-m", "lattice_flows", "sample", str(cfg2), "--no-progress")
    assert proc.stdout.strip().splitlines()[-1] == str(two / "samples.h5")
    mpirun("-m", "lattice_flows", "hmc", str(cfg2), "--no-progress")

    # the 1-rank references: same config, other folder (in this process: a single rank)
    one = tmp_path / "one"
    cfg1 = config_from_dict(_prod_raw(one, trained_flow))
    run_sample(cfg1, progress=False)
    run_hmc(cfg1, progress=False)

    n_per_rank = {"samples": PROD["sample"]["n_chains"], "hmc": PROD["hmc"]["n_chains"]}
    n_saved = {"samples": PROD["sample"]["n_samples"], "hmc": PROD["hmc"]["n_traj"]}
    for base in ("samples", "hmc"):
        ranks = [SampleFile(two / f"{base}.rank{r:04d}.h5") for r in range(NP)]
        assert [r.attrs["rank"] for r in ranks] == list(range(NP))
        c0, c1 = ranks[0].configs(), ranks[1].configs()
        assert c0.shape == c1.shape == (n_saved[base], n_per_rank[base], 4, 4)
        assert not np.any(np.all(c0 == c1, axis=(2, 3))), base  # independent streams

        merged = SampleFile(two / f"{base}.h5")
        assert merged.n_chains == NP * n_per_rank[base] and merged.n_saved == n_saved[base]
        assert merged.attrs["merged_from"] == [f"{base}.rank{r:04d}.h5" for r in range(NP)]
        np.testing.assert_array_equal(merged.configs(), np.concatenate([c0, c1], axis=1))
        np.testing.assert_array_equal(
            merged.observable("chi2"),
            np.concatenate([r.observable("chi2") for r in ranks], axis=1))

        single = SampleFile(one / f"{base}.h5")
        assert single.n_chains == n_per_rank[base]
        for name in ("chi2", "absM", "E"):
            _agree(merged.observable(name), single.observable(name), f"{base} {name} merged")
            # rank 0 draws the stream of a single process (same seed): rank 1 alone is the
            # statistically independent comparison
            _agree(ranks[1].observable(name), single.observable(name), f"{base} {name} rank 1")

    # `lattice-flows analyze` on the folder reads both merged views (not the rank files);
    # single-process commands run in this process (cli.main is the console script)
    assert main(["analyze", str(two), "--json"]) == 0
    tables = json.loads(capsys.readouterr().out)
    assert sorted(Path(t["meta"]["file"]).name for t in tables) == ["hmc.h5", "samples.h5"]
    for t in tables:
        base = Path(t["meta"]["file"]).stem
        assert t["meta"]["n_chains"] == NP * n_per_rank[base]
        rows = {r["name"]: r for r in t["observables"]}
        merged = SampleFile(two / f"{base}.h5")
        discard = default_discard(merged)  # analyze drops a flow chain's burn-in by default
        assert t["meta"]["discard"] == discard and (discard > 0) == (base == "samples")
        ref = gamma_method(merged.observable("chi2")[discard:])
        assert rows["chi2"]["value"] == pytest.approx(ref.value, rel=1e-12)

    # a 2-rank production folder is not resumed with 1 rank (exit status 2, says why)
    assert main(["sample", str(cfg2), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 MPI ranks" in err and "same number of ranks" in err
    # ... nor a 1-rank folder with 2 ranks: every rank stops (MPI_Abort), nothing hangs
    cfg1_path = write_config(tmp_path / "one.yaml", _prod_raw(one, trained_flow))
    proc = mpirun("-m", "lattice_flows", "hmc", str(cfg1_path), "--no-progress", check=False,
                  timeout=60)
    assert proc.returncode == 2, proc.stderr  # the exit status of MPI_Abort(2)
    assert "1 rank(s)" in proc.stderr and "not 2" in proc.stderr
    assert not list(one.glob("hmc.rank*"))


# ------------------------------------------------------------------------------ d. job scripts


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def shim_env(tmp_path) -> dict:
    """PATH with shims of ``srun`` (-> mpiexec -n $SLURM_NTASKS) and ``sbatch`` (records its
    arguments, prints a job id), the interpreter's ``lattice-flows`` first, and SLURM variables."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    _exe(bindir / "srun", f'#!/bin/bash\necho "srun $*" >> "{log}"\n'
                          f'exec "{MPIEXEC}" -n "$SLURM_NTASKS" "$@"\n')
    _exe(bindir / "sbatch", f'#!/bin/bash\necho "sbatch $*" >> "{log}"\n'
         'for a in "$@"; do [[ "$a" == --parsable ]] && { echo 123; exit 0; }; done\n'
         'echo "Submitted batch job 123"\n')
    pybin = Path(sys.executable).parent
    if not (pybin / "lattice-flows").exists():
        pytest.skip(f"the console script lattice-flows is not installed next to {sys.executable}")
    env = _env({
        "PATH": f"{bindir}{os.pathsep}{pybin}{os.pathsep}{os.environ.get('PATH', '')}",
        "SLURM_NTASKS": str(NP), "SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "1",
    })
    env.pop("OMP_NUM_THREADS")  # the scripts must set it from SLURM_CPUS_PER_TASK
    env["CALLS_LOG"] = str(log)
    return env


def _bash(script: str, *args: str, env: dict, cwd: Path, timeout: float = 120):
    proc = subprocess.run(["bash", str(REPO / "jobs" / script), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, \
        f"{script} {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _pipeline_raw(out: Path) -> dict:
    return flow_raw(out, train={"steps": 20, "checkpoint_every": 1000, "eval_samples": 256},
                    sample={"n_chains": 4, "n_samples": 40, "batch_size": 256},
                    hmc={"n_chains": 4, "n_therm": 20, "n_traj": 20, "n_steps": 4})


@pytest.mark.mpi
def test_slurm_scripts_run_with_srun_shim(tmp_path, shim_env):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", _pipeline_raw(run))
    proc = _bash("train.sbatch", str(cfg), env=shim_env, cwd=tmp_path)
    assert "OMP_NUM_THREADS=1" in proc.stdout
    assert (run / "flow.pt").exists() and (run / "train.h5").exists()
    # CONFIG from the environment instead of the first argument
    _bash("sample.sbatch", env={**shim_env, "CONFIG": str(cfg)}, cwd=tmp_path)
    # extra arguments are passed through to lattice-flows
    _bash("hmc.sbatch", str(cfg), "--set", "hmc.n_traj=30", env=shim_env, cwd=tmp_path)
    for base, n_chains, n_saved in (("samples", 4, 40), ("hmc", 4, 30)):
        assert (run / f"{base}.rank0000.h5").exists() and (run / f"{base}.rank0001.h5").exists()
        sf = SampleFile(run / f"{base}.h5")
        assert (sf.n_chains, sf.n_saved) == (NP * n_chains, n_saved)
    calls = Path(shim_env["CALLS_LOG"]).read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [
        ["srun", "lattice-flows", "train"], ["srun", "lattice-flows", "sample"],
        ["srun", "lattice-flows", "hmc"]]
    assert calls[2].endswith("--set hmc.n_traj=30")


@pytest.mark.mpi
def test_submit_pipeline_uses_afterok_dependency(tmp_path, shim_env):
    cfg = write_config(tmp_path / "cfg.yaml", _pipeline_raw(tmp_path / "run"))
    proc = _bash("submit_pipeline.sh", str(cfg), "--set", "seed=5",
                 env={**shim_env, "JOBS_DIR": str(REPO / "jobs")}, cwd=tmp_path)
    assert "123" in proc.stdout
    calls = [c.split() for c in Path(shim_env["CALLS_LOG"]).read_text().splitlines()]
    assert len(calls) == 2 and all(c[0] == "sbatch" and "--parsable" in c for c in calls)
    train, sample = calls
    assert train[-4:] == [str(REPO / "jobs" / "train.sbatch"), str(cfg), "--set", "seed=5"]
    assert not any(a.startswith("--dependency") for a in train)
    assert "--dependency=afterok:123" in sample
    assert sample[-4:] == [str(REPO / "jobs" / "sample.sbatch"), str(cfg), "--set", "seed=5"]
    assert (tmp_path / "logs").is_dir()


@pytest.mark.mpi
def test_local_pipeline_train_sample_analyze(tmp_path, shim_env):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", _pipeline_raw(run))
    env = {k: v for k, v in shim_env.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = _bash("local.sh", str(cfg), str(NP), env=env, cwd=tmp_path)
    assert (run / "flow.pt").exists()
    assert (run / "samples.rank0001.h5").exists()
    assert f"samples: {run / 'samples.h5'}" in proc.stdout
    assert "chi2" in proc.stdout and "Gamma-method" in proc.stdout  # the analyze table
    assert not Path(shim_env["CALLS_LOG"]).exists()  # no srun/sbatch on a workstation
