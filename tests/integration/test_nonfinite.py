"""Non-finite numbers: a broken flow (NaN weights) never corrupts a chain or a training run;
steps and proposals are rejected, counted, and the command stops with a clear error."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from lattice_flows.cli import main
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.train_log import read_train_log
from tests.conftest import assert_same_flow, cli, write_config


def _raw(out, **train):
    return {
        "lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.5}, "seed": 4, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [4]},
        "train": {"steps": 5, "batch_size": 16, "log_every": 5, "eval_samples": 64, **train},
        "sample": {"n_chains": 4, "n_samples": 50, "batch_size": 64},
        "output": {"dir": str(out)},
    }


def _poisoned_flow(tmp_path):
    """A trained flow.pt whose Fourier-layer knots are NaN: every proposal is non-finite."""
    cfg = write_config(tmp_path / "ok.yaml", _raw(tmp_path / "ok"))
    assert main(["train", str(cfg), "--no-progress"]) == 0
    state = load_checkpoint(tmp_path / "ok" / "flow.pt")
    sd = state["state_dict"]
    key = next(k for k in sd if k.endswith("knot_values"))
    sd[key] = torch.full_like(sd[key], math.nan)
    path = tmp_path / "nan_flow.pt"
    save_checkpoint(state, path)
    return path


def test_training_from_a_nan_flow_stops_with_a_message(tmp_path, capsys):
    bad = _poisoned_flow(tmp_path)
    cfg = write_config(tmp_path / "t.yaml", _raw(tmp_path / "t", init_from=str(bad), max_nonfinite=3,
                                                 steps=50))
    assert main(["train", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "3 consecutive" in err and "Traceback" not in err


def test_sampling_with_a_nan_flow_never_writes_a_corrupt_chain(tmp_path, capsys):
    bad = _poisoned_flow(tmp_path)
    raw = _raw(tmp_path / "s")
    raw["sample"]["flow"] = str(bad)
    cfg = write_config(tmp_path / "s.yaml", raw)
    assert main(["sample", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no finite proposal" in err and str(bad) in err
    path = tmp_path / "s" / "samples.h5"
    if path.exists():
        assert SampleFile(path).n_saved == 0


def test_partially_nonfinite_proposals_are_rejected_and_counted(tmp_path):
    """A flow that is fine except on a few samples: those proposals are rejected and counted."""
    from lattice_flows.metropolis import accept_reject

    g = torch.Generator().manual_seed(0)
    lw = torch.randn(200, 8, generator=g, dtype=torch.float64)
    lw[::7, ::3] = math.nan
    lw[5, 2] = math.inf
    res = accept_reject(lw, torch.full((8,), -math.inf, dtype=torch.float64),
                        torch.rand(200, 8, generator=g, dtype=torch.float64))
    assert res.n_nonfinite == int((~torch.isfinite(lw)).sum())
    assert torch.isfinite(res.log_w[1:]).all()
    assert not res.accepted[~torch.isfinite(lw)].any()
    np.testing.assert_array_equal(res.final_log_w.isfinite().numpy(), np.ones(8, bool))


def test_injected_nan_training_steps_are_skipped_counted_and_reported(tmp_path):
    """NaN loss at steps 3 and 7 and an inf gradient at step 5 of a real training process:
    the three steps are skipped (no parameter update), counted in train.h5, reported in the
    log, and training finishes with finite weights."""
    cfg = write_config(tmp_path / "t.yaml", _raw(tmp_path / "t", steps=12, log_every=4))
    for spec in ("train_loss:3,7", "train_grad:5"):
        out = tmp_path / spec.split(":")[0]
        proc = cli("train", str(cfg), "--no-progress", "--set", f"output.dir={out}",
                   env_extra={"LATTICE_FLOWS_NAN_AT": spec})
        log = read_train_log(out / "train.h5")
        n_bad = len(spec.split(":")[1].split(","))
        assert log["nonfinite"][-1] == n_bad
        assert proc.stderr.count("non-finite loss or gradient; step skipped") == n_bad
        state = load_checkpoint(out / "flow.pt")["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor))
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["steps"] == 12 and summary["nonfinite_steps"] == n_bad


def test_a_skipped_step_changes_no_weight(tmp_path):
    """A NaN loss with a finite gradient (the injection adds NaN to the loss only) at the last
    of 3 steps: the step is skipped on the loss alone, so the flow ends bit-identical to that of
    a 2-step run (constant lr: the schedule does not depend on the number of steps)."""
    raw = _raw(tmp_path / "two", steps=2, log_every=1, lr_schedule="constant")
    two = write_config(tmp_path / "two.yaml", raw)
    cli("train", str(two), "--no-progress")
    three = write_config(tmp_path / "three.yaml", {**raw, "output": {"dir": str(tmp_path / "three")},
                                                   "train": {**raw["train"], "steps": 3}})
    proc = cli("train", str(three), "--no-progress", env_extra={"LATTICE_FLOWS_NAN_AT": "train_loss:3"})
    assert proc.stderr.count("non-finite loss or gradient; step skipped") == 1
    assert read_train_log(tmp_path / "three" / "train.h5")["nonfinite"].tolist() == [0, 0, 1]
    assert_same_flow(tmp_path / "two" / "flow.pt", tmp_path / "three" / "flow.pt")


def test_injected_nan_proposal_is_rejected_counted_and_reported(tmp_path):
    """A NaN log q in the second proposal batch of a real sampling process: the proposal is
    rejected, counted in the file's n_nonfinite attribute and the log, and the chain stays finite."""
    flow_cfg = write_config(tmp_path / "f.yaml", _raw(tmp_path / "f"))
    cli("train", str(flow_cfg), "--no-progress")
    raw = _raw(tmp_path / "s")
    raw["sample"].update(flow=str(tmp_path / "f" / "flow.pt"), batch_size=8)
    cfg = write_config(tmp_path / "s.yaml", raw)
    proc = cli("sample", str(cfg), "--no-progress", env_extra={"LATTICE_FLOWS_NAN_AT": "proposal:2"})
    sf = SampleFile(tmp_path / "s" / "samples.h5")
    assert sf.attrs["n_nonfinite"] == 1 and "1 non-finite" in proc.stderr
    assert np.isfinite(sf.extra("log_w")).all() and np.isfinite(sf.action()).all()
    assert sf.n_saved == 50
