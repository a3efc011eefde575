"""Run-folder records and the README's sequences on the shipped configs (issue 12), through the
CLI entry point, with the shipped configs shrunk by ``--set`` (tests/integration/doc_commands.py):

* one resolved record per stage and mode (``config.<stage>[.<mode>].yaml``): after ``sample``
  and ``sample --set sample.mode=importance`` the Metropolis chain can still be extended, while
  a change of the couplings, the seed or a stage setting is still refused;
* the ladder rungs train from a fresh flow, with a warning in the log, when the previous rung's
  flow is missing (``train.init_from_missing: fresh``), and stop with an error naming the run to
  train first otherwise;
* train_summary.json and the pipeline's analysis files are replaced atomically: a process
  killed while writing them leaves the previous version, and the rerun completes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lattice_flows.cli import main
from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from tests.integration.doc_commands import REPO, shrink_overrides


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A working folder with a copy of configs/ (relative paths as in the README)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def lf(ws: Path, command: str, config: str, *extra: str) -> int:
    """``lattice-flows COMMAND CONFIG --set ...`` (shrunk) in-process; returns the exit status."""
    return main([command, config, "--no-progress", *shrink_overrides(ws / config), *extra])


def test_readme_sequence_extends_the_mcmc_chain_after_importance_sampling(ws, capsys):
    cfg = "configs/tutorial_flow.yaml"
    run = ws / "runs" / "tutorial_flow"
    assert lf(ws, "train", cfg) == 0
    assert lf(ws, "sample", cfg) == 0
    first = SampleFile(run / "samples.h5")
    n0, configs0 = first.n_saved, first.configs()
    assert lf(ws, "sample", cfg, "--set", "sample.mode=importance") == 0
    assert (run / "importance.h5").exists()
    assert {p.name for p in run.glob("config*.yaml")} == {
        "config.yaml", "config.train.yaml", "config.sample.mcmc.yaml", "config.sample.importance.yaml"}
    # config.yaml: the provenance record of the latest command
    assert "mode: importance" in (run / "config.yaml").read_text()
    assert "mode: mcmc" in (run / "config.sample.mcmc.yaml").read_text()
    capsys.readouterr()
    # extend the Metropolis chain (README "Extending a finished chain"): was refused with
    # "changed: sample.mode" when config.yaml was the only record
    assert lf(ws, "sample", cfg, "--set", f"sample.n_samples={2 * n0}") == 0, capsys.readouterr().err
    longer = SampleFile(run / "samples.h5")
    assert longer.n_saved == 2 * n0
    np.testing.assert_array_equal(longer.configs(slice(0, n0)), configs0)  # the same chains, continued
    assert verify_sample_file(run / "samples.h5") == []
    # the importance file is extended the same way, after the Metropolis run
    assert lf(ws, "sample", cfg, "--set", "sample.mode=importance", "--set", f"sample.n_samples={2 * n0}") == 0
    assert SampleFile(run / "importance.h5").n_saved == 2 * n0
    # changes that would mix two runs are still refused, naming the key
    for change, key in (("seed=1", "seed"), ("action.lam=7.0", "action"),
                        ("sample.n_chains=3", "sample.n_chains")):
        capsys.readouterr()
        assert lf(ws, "sample", cfg, "--set", change, "--set", f"sample.n_samples={3 * n0}") == 2
        assert f"changed: {key}" in capsys.readouterr().err
    # and training settings are compared with the training record, not the latest sample run
    capsys.readouterr()
    assert lf(ws, "train", cfg, "--set", "train.lr=0.01", "--set", "train.steps=6") == 2
    assert "changed: train.lr" in capsys.readouterr().err


def test_hmc_in_a_flow_folder_keeps_its_own_record(ws, capsys):
    """The quickstart folder holds train, sample and hmc: after an importance run, HMC and the
    Metropolis chain are each extended against their own record."""
    cfg = "configs/quickstart.yaml"
    assert main(["run", cfg, "--no-progress", *shrink_overrides(ws / cfg)]) == 0
    run = ws / "runs" / "quickstart"
    assert {"analysis.md", "analysis.json", "comparison.md", "config.hmc.yaml"} <= {p.name for p in run.iterdir()}
    _check_flow_over_hmc_ratios(run)
    assert lf(ws, "sample", cfg, "--set", "sample.mode=importance") == 0
    n = SampleFile(run / "hmc.h5").n_saved
    m = SampleFile(run / "samples.h5").n_saved
    assert lf(ws, "sample", cfg, "--set", f"sample.n_samples={2 * m}") == 0, capsys.readouterr().err
    assert SampleFile(run / "samples.h5").n_saved == 2 * m
    assert lf(ws, "hmc", cfg, "--set", f"hmc.n_traj={2 * n}") == 0, capsys.readouterr().err
    assert SampleFile(run / "hmc.h5").n_saved == 2 * n
    capsys.readouterr()
    assert lf(ws, "hmc", cfg, "--set", "hmc.n_steps=3", "--set", f"hmc.n_traj={3 * n}") == 2
    assert "changed: hmc.n_steps" in capsys.readouterr().err


# ------------------------------------------------------------------ ladder: previous rung missing


def test_ladder_rung_without_the_previous_rung_trains_from_a_fresh_flow(ws, capsys):
    assert not (ws / "runs" / "ladder" / "L8").exists()
    assert lf(ws, "train", "configs/ladder/L12.yaml") == 0, capsys.readouterr().err
    log = (ws / "runs" / "ladder" / "L12" / "run.log").read_text()
    assert "runs/ladder/L8/flow.pt does not exist" in log and "fresh flow" in log
    # with the previous rung trained, the next rung starts from its flow (and says so)
    assert lf(ws, "train", "configs/ladder/L8.yaml") == 0
    assert lf(ws, "train", "configs/ladder/L12.yaml", "--set", "output.dir=runs/ladder/L12b") == 0
    log_b = (ws / "runs" / "ladder" / "L12b" / "run.log").read_text()
    assert "initialised the flow from runs/ladder/L8/flow.pt" in log_b
    fresh = load_checkpoint(ws / "runs" / "ladder" / "L12" / "flow.pt")["state_dict"]
    moved = load_checkpoint(ws / "runs" / "ladder" / "L12b" / "flow.pt")["state_dict"]
    assert any(not np.array_equal(fresh[k].numpy(), moved[k].numpy()) for k in fresh
               if hasattr(fresh[k], "numpy"))


def test_missing_init_from_is_an_error_naming_the_run_to_train_first(ws, capsys):
    assert lf(ws, "train", "configs/ladder/L16.yaml", "--set", "train.init_from_missing=error") == 2
    err = capsys.readouterr().err
    assert "train.init_from" in err and "runs/ladder/L12/flow.pt" in err and "does not exist" in err
    assert "output.dir is 'runs/ladder/L12'" in err
    assert not (ws / "runs" / "ladder" / "L16" / "flow.pt").exists()


# ------------------------------------------------------------------ atomic small files


def _cli_killed_at(point: str, ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", LATTICE_FLOWS_KILL_AT=f"{point}:1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-m", "lattice_flows", *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_summary_survives_a_kill_while_it_is_rewritten(ws):
    cfg = "configs/tutorial_flow.yaml"
    run = ws / "runs" / "tutorial_flow"
    assert lf(ws, "train", cfg) == 0
    before = (run / "train_summary.json").read_text()
    # continue training to more steps; SIGKILL while the new summary is being written
    proc = _cli_killed_at("text.train_summary.json", ws, "train", cfg, "--no-progress",
                          *shrink_overrides(ws / cfg), "--set", "train.steps=5")
    assert proc.returncode == -9, proc.stderr
    assert (run / "train_summary.json").read_text() == before  # the old summary, whole
    assert json.loads(before)["steps"] == 3
    # the rerun sees an incomplete training (summary of 3 steps, checkpoint at 5) and finishes it
    assert lf(ws, "train", cfg, "--set", "train.steps=5") == 0
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 5
    assert not (run / "train_summary.json.tmp").exists()


def test_pipeline_analysis_files_survive_a_kill_while_they_are_rewritten(ws):
    cfg = "configs/quickstart.yaml"
    run = ws / "runs" / "quickstart"
    assert main(["run", cfg, "--no-progress", *shrink_overrides(ws / cfg)]) == 0
    before = {n: (run / n).read_text() for n in ("analysis.json", "analysis.md", "comparison.md")}
    proc = _cli_killed_at("text.analysis.json", ws, "run", cfg, "--no-progress",
                          *shrink_overrides(ws / cfg), "--set", "sample.n_samples=48")
    assert proc.returncode == -9, proc.stderr
    assert (run / "analysis.json").read_text() == before["analysis.json"]
    json.loads((run / "analysis.json").read_text())
    assert main(["run", cfg, "--no-progress", *shrink_overrides(ws / cfg), "--set", "sample.n_samples=48"]) == 0
    after = json.loads((run / "analysis.json").read_text())
    assert after != json.loads(before["analysis.json"])
    assert not list(run.glob("*.tmp"))


def _check_flow_over_hmc_ratios(run: Path) -> None:
    """``run``'s comparison has HMC as the reference: every ratio is flow / HMC, said so in the
    headers, and the cost ratio equals a hand computation, (CPU-s x 2 tau_int / N) of the flow
    over that of HMC, from the numbers of analysis.json."""
    cmp = json.loads((run / "analysis.json").read_text())["comparison"]
    assert cmp["reference"] == "HMC"
    text = (run / "comparison.md").read_text()
    assert "cost per eff. sample flow mcmc / HMC (< 1: flow mcmc cheaper)" in text
    assert "τ_int flow mcmc / HMC" in text and "z = (flow mcmc − HMC)" in text
    hmc_run, flow_run = cmp["runs"]
    assert (hmc_run["name"], flow_run["name"]) == ("HMC", "flow mcmc")
    checked = 0
    for line in cmp["table"]:
        h, f = line["runs"]
        assert f["ratio_of"] == "flow mcmc / HMC"
        cost_f = flow_run["cpu_s"] * 2 * f["tau_int"] / flow_run["n"]
        cost_h = hmc_run["cpu_s"] * 2 * h["tau_int"] / hmc_run["n"]
        assert f["cost_ratio"] == pytest.approx(cost_f / cost_h, rel=1e-12)
        assert f["tau_int_ratio"] == pytest.approx(f["tau_int"] / h["tau_int"], rel=1e-12)
        z = (f["value"] - h["value"]) / np.hypot(f["error"], h["error"])
        assert f["z_vs_first"] == pytest.approx(z, rel=1e-12)
        checked += 1
    assert checked >= 5
