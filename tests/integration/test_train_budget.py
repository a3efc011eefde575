"""The time budget of a training run on a named clock (``train.budget_clock``), and its three
clocks in records, checkpoints and the summary (lattice_flows/training/budget.py), on real
training runs of a tiny flow."""

from __future__ import annotations

import json
import math

import pytest

from lattice_flows.cli import main
from lattice_flows.config import ConfigError, config_from_dict
from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint
from lattice_flows.io.train_log import read_train_log
from lattice_flows.runtime.clock import Seconds
from lattice_flows.training.budget import (
    budget_fraction, budget_reached, budget_used, checkpoint_seconds, clock_label,
)
from lattice_flows.training.train_step import lr_multiplier
from lattice_flows.training.trainer import train_flow
from tests.conftest import write_config

CLOCK_OF = {"device": "device_s", "cpu": "cpu_s", "wall": "wall_s"}


def _raw(out, **train) -> dict:
    return {
        "lattice": {"shape": [4, 4]}, "action": {"m2": 1.0, "lam": 0.5}, "seed": 5, "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [4]},
        "train": {"steps": 10**6, "batch_size": 16, "lr": 1e-3, "log_every": 1,
                  "checkpoint_every": 10**6, "eval_samples": 64, "eval_batch_size": 64, **train},
        "output": {"dir": str(out)},
    }


def test_budget_reads_the_clock_it_names():
    s = Seconds(cpu_s=1.0, wall_s=2.0, device_s=3.0)
    assert [budget_used(s, c) for c in ("cpu", "wall", "device")] == [1.0, 2.0, 3.0]
    assert budget_fraction(s, 4.0, "wall") == 0.5 and budget_fraction(s, None, "wall") == 0.0
    assert budget_reached(s, 2.0, "wall") and not budget_reached(s, 2.0, "cpu")
    assert not budget_reached(s, None, "device")
    assert clock_label("device", "cpu") == "device-s (CPU-s on this CPU)"
    assert clock_label("device", "cuda:NVIDIA H200") == "device-s (wall-s of the GPU cuda:NVIDIA H200)"
    assert (clock_label("cpu", "cuda:X"), clock_label("wall", "cpu")) == ("CPU-s", "wall-s")
    # a checkpoint of before the clocks: wall-s and device-s start from its CPU-s, on a CPU
    assert checkpoint_seconds({"cpu_s": 5.0}) == (Seconds(5.0, 5.0, 5.0), "cpu")


@pytest.mark.parametrize("clock", ["device", "cpu", "wall"])
def test_training_stops_on_its_budget_clock_and_the_cosine_follows_it(tmp_path, capsys, clock):
    """Budget 0.4 s on each clock: the run stops at the first step whose reading of that clock
    reaches the budget, and the lr of every step is the cosine of the fraction of the budget
    that clock had used after the step before (exact: the same floats; another clock's
    readings differ from them in every step, so a wrong clock fails)."""
    budget = 0.4
    cfg = write_config(tmp_path / "c.yaml", _raw(tmp_path / "run", time_budget=budget,
                                                 budget_clock=clock))
    assert main(["train", str(cfg), "--no-progress"]) == 0
    err = capsys.readouterr().err
    unit = {"device": "device-s (CPU-s on this CPU)", "cpu": "CPU-s", "wall": "wall-s"}[clock]
    rec = read_train_log(tmp_path / "run" / "train.h5")
    n = len(rec["step"])
    assert f"time budget of {budget:g} {unit} reached at step {n}" in err, err[-2000:]
    used = rec[CLOCK_OF[clock]]
    assert n >= 3 and used[-2] < budget <= used[-1]
    want = [1e-3] + [1e-3 * lr_multiplier(k, 10**6, 0, "cosine", used[k - 1] / budget)
                     for k in range(1, n)]
    assert rec["lr"].tolist() == want
    assert (rec["device_s"] == rec["cpu_s"]).all()  # on a CPU device-s are CPU-s
    assert (rec["wall_s"] != rec["cpu_s"]).all()
    ckpt = load_checkpoint(tmp_path / "run" / "train.ckpt")
    assert (ckpt["cpu_s"], ckpt["wall_s"], ckpt["device_s"]) == (
        rec["cpu_s"][-1], rec["wall_s"][-1], rec["device_s"][-1])
    assert ckpt["device_kind"] == "cpu"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == n and summary["budget_clock"] == clock
    assert summary["device_kind"] == "cpu"
    assert (summary["train_cpu_s"], summary["train_wall_s"], summary["train_device_s"]) == (
        rec["cpu_s"][-1], rec["wall_s"][-1], rec["device_s"][-1])


def test_an_old_checkpoint_with_cpu_s_only_resumes_its_clocks_from_it(tmp_path, capsys):
    """A train.ckpt of before the clocks (cpu_s only, here 1000 CPU-s): wall-s and device-s
    start from its CPU-s, so a device budget of 500 s is used up at once, and the records after
    the resume continue all three clocks from 1000 s."""
    raw = _raw(tmp_path / "run", steps=3)
    cfg = config_from_dict(raw)
    train_flow(cfg, progress=False)
    path = tmp_path / "run" / "train.ckpt"
    state = load_checkpoint(path)
    for k in ("wall_s", "device_s", "device_kind"):
        state.pop(k)
    state["cpu_s"] = 1000.0
    save_checkpoint(state, path)
    (tmp_path / "run" / "train_summary.json").unlink()

    over = write_config(tmp_path / "over.yaml", {**raw, "train": {**raw["train"], "steps": 5,
                                                                  "time_budget": 500}})
    assert main(["train", str(over), "--no-progress"]) == 0
    assert "time budget of 500 device-s (CPU-s on this CPU) reached at step 3" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 3

    res = train_flow(config_from_dict({**raw, "train": {**raw["train"], "steps": 5}}), progress=False)
    rec = read_train_log(tmp_path / "run" / "train.h5")
    assert rec["step"].tolist() == [1, 2, 3, 4, 5] and res.steps == 5
    for k in ("cpu_s", "wall_s", "device_s"):
        assert rec[k][2] < 1000 <= rec[k][3] <= rec[k][4] < 1000 + 60, k
    assert res.train_device_s == rec["device_s"][-1] and res.device_kind == "cpu"
    assert not math.isnan(res.train_wall_s)


def test_budget_clock_cannot_change_on_resume(tmp_path):
    raw = _raw(tmp_path / "run", steps=2, budget_clock="cpu")
    train_flow(config_from_dict(raw), progress=False)
    with pytest.raises(ConfigError, match=r"train\.budget_clock"):
        train_flow(config_from_dict({**raw, "train": {**raw["train"], "steps": 4,
                                                      "budget_clock": "wall"}}), progress=False)
    # the budget itself may change (runtime/resume.py)
    res = train_flow(config_from_dict({**raw, "train": {**raw["train"], "steps": 4,
                                                        "time_budget": 1000}}), progress=False)
    assert res.steps == 4
