"""Weight diagnostics through the real pipeline: a deliberately under-trained flow is flagged in
train_summary.json, in the sample files' attributes and in the analysis tables; a free-field
flow (exact up to its initialisation) is not. A resumed production ends with the diagnostics of
an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lattice_flows.cli import main
from lattice_flows.io.sample_reader import SampleFile
from tests.conftest import cli, write_config


def _raw(out: Path, m2: float, lam: float, fourier: bool) -> dict:
    return {
        "lattice": {"shape": [6, 6]},
        "action": {"m2": m2, "lam": lam},
        "seed": 3,
        "device": "cpu",
        "flow": {"n_layers": 2, "hidden_channels": [8], "kernel_size": 3, "fourier_layer": fourier},
        "train": {"steps": 2, "batch_size": 64, "log_every": 1, "checkpoint_every": 2,
                  "eval_samples": 2048, "eval_batch_size": 1024},
        "sample": {"n_chains": 4, "n_samples": 500, "batch_size": 1024},
        "output": {"dir": str(out), "chunk_rows": 100},
    }


def _make(root: Path, raw: dict) -> Path:
    cfg = write_config(root / "c.yaml", raw)
    assert main(["run", str(cfg), "--no-progress"]) == 0  # train -> flow MCMC -> analysis
    assert main(["sample", str(cfg), "--no-progress", "--set", "sample.mode=importance"]) == 0
    return Path(raw["output"]["dir"])


@pytest.fixture(scope="module")
def under_trained(tmp_path_factory) -> Path:
    # tutorial couplings, 2 training steps and no Fourier layer: q is far from p (ESS/N ~ 1e-3)
    root = tmp_path_factory.mktemp("under")
    return _make(root, _raw(root / "run", -4.0, 8.0, fourier=False))


@pytest.fixture(scope="module")
def well_trained(tmp_path_factory) -> Path:
    # free field: the Fourier layer initialised at the free propagator is (nearly) exact
    root = tmp_path_factory.mktemp("free")
    return _make(root, _raw(root / "run", 1.0, 0.0, fourier=True))


OBSERVABLE_KINDS = ("primary", "derived", "reweighted")


def _observable_flags(table: list[dict]) -> dict[str, str]:
    return {o["name"]: o["flag"] for o in table
            if o["kind"] in OBSERVABLE_KINDS and o["name"] != "acceptance"}


def test_under_trained_flow_is_flagged_everywhere(under_trained):
    run = under_trained
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["eval_khat"] > 0.7 and "khat>0.7" in summary["eval_weights_flags"]
    assert summary["eval_max_weight_fraction"] > 0.5  # one draw carries the estimate
    log_text = (run / "run.log").read_text()
    assert "WARNING the trained flow's weights fail the tail diagnostics (" in log_text
    for name in ("samples.h5", "importance.h5"):
        attrs = SampleFile(run / name).attrs
        assert attrs["weights_khat"] > 0.7, name
        assert "khat>0.7" in attrs["weights_flags"].split(","), name
        assert attrs["weights_n"] == 500 * 4
    # the chain's longest rejection run against its length
    attrs = SampleFile(run / "samples.h5").attrs
    assert attrs["weights_chain_length"] == 500
    assert "stuck" in attrs["weights_flags"].split(",")
    # analysis written by `lattice-flows run`: every observable row of the flow file flagged
    analysis = json.loads((run / "analysis.json").read_text())
    table = analysis["files"]["flow mcmc"]["observables"]
    flags = _observable_flags(table)
    assert flags and all("khat>0.7" in f for f in flags.values()), flags
    assert "WARNING" in (run / "analysis.md").read_text()
    # `lattice-flows analyze` on the importance file: reweighted rows flagged, warning given
    proc = cli("analyze", str(run / "importance.h5"), "--json")
    out = json.loads(proc.stdout)
    flags = _observable_flags(out["observables"])
    assert {"absM", "chi2", "E"} <= set(flags) and all(flags.values()), flags
    assert out["warnings"] and "0.7" in out["warnings"][0]
    assert out["weights"]["khat"] > 0.7


def _analyze_json(capsys, *args: str):
    capsys.readouterr()
    assert main(["analyze", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_well_trained_flow_is_not_flagged(well_trained, capsys):
    run = well_trained
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["eval_weights_flags"] == [] and summary["eval_khat"] < 0.5
    assert "tail diagnostics" not in (run / "run.log").read_text()
    for name in ("samples.h5", "importance.h5"):
        attrs = SampleFile(run / name).attrs
        assert attrs["weights_flags"] == "", (name, attrs["weights_flags"])
        assert attrs["weights_khat"] < 0.5
    analysis = json.loads((run / "analysis.json").read_text())
    flags = _observable_flags(analysis["files"]["flow mcmc"]["observables"])
    assert flags and not any(flags.values()), flags
    assert "WARNING" not in (run / "analysis.md").read_text()
    out = _analyze_json(capsys, str(run))
    for table in out:
        assert table["warnings"] == [] and not any(o["flag"] for o in table["observables"])


def test_flow_chain_burn_in_is_applied_by_default(well_trained, capsys):
    sf = SampleFile(well_trained / "samples.h5")
    acc = sf.accepted()
    # rows up to the first accepted proposal of the slowest chain, at least 1 % of the rows
    first_move = max(int(np.argmax(acc[1:, c])) + 1 for c in range(acc.shape[1]))
    expected = min(max(first_move, math.ceil(0.01 * sf.n_saved)), sf.n_saved // 2)
    out = _analyze_json(capsys, str(well_trained / "samples.h5"))
    assert out["meta"]["discard"] == expected > 0
    assert _analyze_json(capsys, str(well_trained / "samples.h5"), "--discard", "0")["meta"]["discard"] == 0
    # importance files (independent draws): nothing dropped
    assert _analyze_json(capsys, str(well_trained / "importance.h5"))["meta"]["discard"] == 0


def test_resumed_production_ends_with_the_same_diagnostics(under_trained, tmp_path):
    raw = _raw(tmp_path / "a", -4.0, 8.0, fourier=False)
    raw["sample"].update(flow=str(under_trained / "flow.pt"), n_samples=300, batch_size=64)
    raw["output"]["chunk_rows"] = 50
    cfg_a = write_config(tmp_path / "a.yaml", raw)
    raw_b = json.loads(json.dumps(raw))
    raw_b["output"]["dir"] = str(tmp_path / "b")
    cfg_b = write_config(tmp_path / "b.yaml", raw_b)
    assert main(["sample", str(cfg_a), "--no-progress"]) == 0
    # b: killed in its third checkpoint write, then resumed
    killed = cli("sample", str(cfg_b), "--no-progress", check=False,
                 env_extra={"LATTICE_FLOWS_KILL_AT": "checkpoint:3"})
    assert killed.returncode != 0
    assert main(["sample", str(cfg_b), "--no-progress"]) == 0
    a = SampleFile(tmp_path / "a" / "samples.h5").attrs
    b = SampleFile(tmp_path / "b" / "samples.h5").attrs
    keys = sorted(k for k in a if str(k).startswith("weights_"))
    assert keys and keys == sorted(k for k in b if str(k).startswith("weights_"))
    for k in keys:
        assert a[k] == b[k], k
