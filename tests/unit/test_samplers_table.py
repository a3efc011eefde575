"""The samplers cost table (benchmarks/samplers.py): the cost row of a real HMC file against the
Gamma-method figures of the same file, ratios against the best classical sampler of the same
point only, and the tunnelling count."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import samplers  # noqa: E402  (benchmarks/samplers.py)

from lattice_flows import api  # noqa: E402
from lattice_flows.io.sample_reader import SampleFile  # noqa: E402
from lattice_flows.tables import analyze_samples  # noqa: E402


@pytest.fixture(scope="module")
def hmc_file(tmp_path_factory) -> Path:
    cfg = api.load_config({
        "lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 3,
        "hmc": {"n_chains": 4, "n_therm": 40, "n_traj": 200},
        "output": {"dir": str(tmp_path_factory.mktemp("hmc"))},
    })
    return api.hmc(cfg)


def test_cost_row_is_two_tau_int_times_the_production_cpu_per_chain_row(hmc_file):
    sf = SampleFile(hmc_file)
    row = samplers.sampler_row("P", "hmc", sf, None, 8.0)
    table = analyze_samples(sf)
    # the HMC file separates thermalisation and tuning from production
    assert 0 < sf.attrs["therm_cpu_s"] < sf.attrs["cpu_s"]
    per_row = float(sf.attrs["cpu_s"]) - float(sf.attrs["therm_cpu_s"])
    per_row /= sf.n_saved * sf.n_chains
    assert row["cpu_s_per_row"] == pytest.approx(per_row)
    for name in samplers.OBSERVABLES:
        est = table[name].est
        assert row["tau_int"][name] == pytest.approx(est.tau_int)
        assert row["cpu_s_per_eff"][name] == pytest.approx(2 * est.tau_int * per_row)
        assert row["cpu_s_per_eff_err"][name] == pytest.approx(2 * est.tau_int_error * per_row)
    M = sf.observables()["M"]
    assert row["tunnelling_per_row"] == pytest.approx(samplers.tunnelling_rate(M))
    assert "cpu_s_per_eff_amortised" not in row
    with_training = samplers.sampler_row("P", "flow", sf, 1.0e6, 8.0)
    assert with_training["cpu_s_per_eff_amortised"]["M2"] == pytest.approx(
        2 * table["M2"].est.tau_int * (per_row + 1.0))


def test_tunnelling_rate_counts_sign_changes_per_chain_and_row():
    M = np.array([[1.0, -1.0], [-2.0, -1.0], [-1.0, 3.0], [4.0, 2.0]])  # 4 rows, 2 chains
    # chain 0: + - - + (2 changes), chain 1: - - + + (1 change); 3 row pairs x 2 chains
    assert samplers.tunnelling_rate(M) == pytest.approx(3 / 6)


def _row(point, sampler, kind, m2_cost):
    costs = {n: m2_cost for n in samplers.OBSERVABLES}
    return {"point": point, "sampler": sampler, "kind": kind, "cpu_s_per_eff": costs}


def test_ratios_are_against_the_cheapest_classical_sampler_of_the_same_point():
    rows = samplers.add_ratios([
        _row("A", "hmc", "hmc", 4.0), _row("A", "fa-hmc", "hmc", 2.0),
        _row("A", "flow", "flow-mcmc", 1.0), _row("B", "hmc", "hmc", 10.0),
        _row("B", "composite", "composite", 5.0), _row("C", "flow", "flow-mcmc", 1.0),
    ])
    by = {(r["point"], r["sampler"]): r for r in rows}
    assert by["A", "flow"]["ratio"]["M2"] == pytest.approx(0.5)
    assert by["A", "flow"]["best_classical"]["M2"] == "fa-hmc"
    assert by["A", "hmc"]["ratio"]["M2"] == pytest.approx(2.0)
    assert by["B", "composite"]["ratio"]["M2"] == pytest.approx(0.5)  # B's HMC, not A's
    assert by["C", "flow"]["ratio"] == {}  # no classical row at C: no ratio
    md = samplers.markdown([dict(r, **_full(r)) for r in rows[:1]], {
        "cpu": "cpu", "cpu_capability": "AVX2", "torch": "x", "threads": 1, "cuda": None})
    assert "| A | 4 |" in md and "AVX2" in md


def _full(r):
    obs = samplers.OBSERVABLES
    return {"L": 4, "lam": 8.0, "acceptance": 0.5, "tau_int": {n: 1.0 for n in obs},
            "tau_int_err": {n: 0.1 for n in obs}, "cpu_s_per_eff_err": {n: 0.1 for n in obs},
            "cpu_s_per_row": 1e-3, "train_cpu_s": None, "tunnelling_per_row": 0.0,
            "absM": 0.5, "absM_err": math.inf}


def test_no_sign_change_replaces_tau_int_of_M_by_its_bound_and_ratios_say_so():
    one_sector = _row("D", "hmc", "hmc", 1.0)
    one_sector.update(_full(one_sector), tau_int_lower_bound={"M": 100.0})
    one_sector["tau_int"]["M"] = 100.0
    one_sector["cpu_s_per_eff"]["M"] = 2 * 100.0 * 1e-3
    flow = _row("D", "flow", "flow-mcmc", 1e-3)
    flow.update(_full(flow))
    rows = samplers.add_ratios([one_sector, flow])
    assert rows[1]["ratio"]["M"] == pytest.approx(1e-3 / 0.2)
    assert rows[1]["ratio_bound"]["M"] == "upper"  # HMC's cost is a lower bound
    assert "M" not in rows[0]["ratio_bound"]  # the reference itself: exactly 1
    md = samplers.markdown(rows, {"cpu": "c", "cpu_capability": "AVX512", "torch": "x",
                                  "threads": 1, "cuda": None})
    assert "> 100" in md and "< 0.005" in md


def test_a_run_in_one_sector_gets_the_poisson_bound_on_tau_int_of_M(hmc_file, tmp_path):
    """Deep in the broken phase (4 x 4, m2 = -4, lam = 0.5: barrier V m2^2 / (4 lam) = 128, and
    too small a lattice for a stable domain wall) HMC does not tunnel in 100 trajectories; the
    4 x 4 tutorial-point file does."""
    cfg = api.load_config({
        "lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 0.5}, "seed": 5,
        "hmc": {"n_chains": 4, "n_therm": 40, "n_traj": 100}, "output": {"dir": str(tmp_path)},
    })
    sf = SampleFile(api.hmc(cfg))
    row = samplers.sampler_row("P", "hmc", sf, None, 0.5)
    pairs = (sf.n_saved - 1) * sf.n_chains
    assert row["tunnellings"] == 0
    assert row["tau_int"]["M"] == pytest.approx(pairs / 6)
    assert row["cpu_s_per_eff"]["M"] == pytest.approx(2 * pairs / 6 * row["cpu_s_per_row"])
    assert samplers.sampler_row("P", "hmc", SampleFile(hmc_file), None, 8.0)["tunnellings"] > 0


def test_committed_samplers_md_is_the_rendering_of_samplers_json():
    """benchmarks/results/samplers.md is what --render-only makes of samplers.json (ratios
    recomputed from the rows), so the two cannot drift apart."""
    import json

    res = BENCH / "results"
    data = json.loads((res / "samplers.json").read_text())
    md = samplers.markdown(samplers.add_ratios(data["rows"]), data["hardware"])
    assert (res / "samplers.md").read_text() == "# Samplers side by side\n\n" + md + "\n"
    points = {r["point"] for r in data["rows"]}
    assert {"L16", "L32", "broken16"} <= points


def test_reweighted_row_uses_each_observables_effective_tau(tmp_path):
    """flow-reweighted: a real importance-sampling file of a (briefly trained) flow; its row's
    tau_int is reweighting_tau of each observable's draws (not a Markov-chain tau), the cost
    2 tau_eff x CPU-s per draw, and the acceptance cell shows ESS/N (no accept/reject)."""
    from lattice_flows.estimates import reweighting_tau

    cfg = api.load_config({
        "lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 5,
        "flow": {"n_layers": 2, "hidden_channels": [8]},
        "train": {"steps": 30, "batch_size": 32, "eval_samples": 256},
        "sample": {"mode": "importance", "n_chains": 8, "n_samples": 400, "batch_size": 64},
        "output": {"dir": str(tmp_path / "run")},
    })
    api.train(cfg)
    sf = SampleFile(api.sample(cfg))
    assert sf.attrs["kind"] == "flow-importance"
    row = samplers.sampler_row("P", "flow-reweighted", sf, 10.0, 8.0)
    lw = np.asarray(sf.extra("log_w"), dtype=np.float64).reshape(-1)
    obs = sf.observables()
    per_row = (float(sf.attrs["cpu_s"]) - float(sf.attrs.get("therm_cpu_s", 0.0))) / lw.size
    assert row["cpu_s_per_row"] == pytest.approx(per_row)
    for name in samplers.OBSERVABLES:
        tau, dtau = reweighting_tau(np.asarray(obs[name]).reshape(-1), lw)
        assert row["tau_int"][name] == pytest.approx(tau) and tau > 0.5  # an imperfect flow
        assert row["tau_int_err"][name] == pytest.approx(dtau)
        assert row["cpu_s_per_eff"][name] == pytest.approx(2 * tau * per_row)
    assert math.isnan(row["acceptance"]) and 0 < row["ess"] < 1
    assert f"ESS/N {row['ess']:.3f}" in samplers.markdown([row], {"line": "test"})


def test_ratios_compare_rows_of_the_same_machine_only():
    """Rows merged by --append from two machines: a flow row is compared with the classical rows
    measured on its own machine, and the hardware note names both machines and their rows."""
    def row(sampler, kind, cost, hw):
        c = {n: cost for n in samplers.OBSERVABLES}
        return {"point": "L32", "sampler": sampler, "kind": kind, "cpu_s_per_eff": c,
                "hardware": hw}

    rows = samplers.add_ratios([row("fa-hmc", "hmc", 1.0, "A"), row("hmc", "hmc", 4.0, "B"),
                                row("flow", "flow-mcmc", 2.0, "B")])
    assert rows[2]["ratio"]["M2"] == pytest.approx(0.5) and rows[2]["best_classical"]["M2"] == "hmc"
    assert rows[0]["ratio"]["M2"] == pytest.approx(1.0)
    note = samplers.hardware_note(rows, {"line": "A"})
    assert "A for L32 fa-hmc" in note and "B for L32 hmc, L32 flow" in note
