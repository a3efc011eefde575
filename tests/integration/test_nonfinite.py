"""Non-finite numbers: a broken flow (NaN weights) never corrupts a chain or a training run;
steps and proposals are rejected, counted, and the command stops with a clear error."""

from __future__ import annotations

import math

import numpy as np
import torch

from lattice_flows.cli import main
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.hdf5 import SampleFile
from tests.conftest import write_config


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
    from lattice_flows.mcmc.metropolis import accept_reject

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
