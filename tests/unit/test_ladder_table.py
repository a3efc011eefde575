"""The ladder table (benchmarks/ladder.py): per-site error eps = -ln(ESS/N)/V against hand
computations, 'n/a' for fields that rows written before lack, the eps spread over seeds, and
the committed ladder.md being the rendering of the committed ladder.json.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import ladder  # noqa: E402  (benchmarks/ladder.py; matplotlib is imported only to plot)


def row(L=16, ess=0.5, seed=None, overrides=(), **extra) -> dict:
    """A ladder row with the keys the table prints (values arbitrary but valid)."""
    r = {"L": L, "lam": 4.976, "xi": 4.0, "xi_error": 0.1, "xi_target": L / 4,
         "budget_s": 300.0, "budget_kind": "CPU-s (1 thread)", "train_steps": 1234, "ess": ess,
         "acceptance": 0.6, "tau_int_absM": 1.5, "tau_int_M2": 1.7, "proposals_per_s": 2900.0,
         "hmc_tau_int_absM": 12.0, "hmc_tau_int_M2": 12.3, "hmc_cpu_s_per_eff_M2": 2.4e-3,
         "flow_cpu_s_per_eff_M2": 1.2e-3, "cost_ratio_flow_over_hmc": 0.5,
         "cost_ratio_flow_over_hmc_amortised": 2.0, "transfer_from": None,
         "overrides": list(overrides), **extra}
    if seed is not None:
        r["seed"] = seed
    return r


HW = {"cpu": "test cpu", "torch": "x", "threads": 1, "cuda": None}


def cells(line: str) -> list[str]:
    """The cells of a markdown table line (a pipe escaped as \\| is part of a cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def table_rows(md: str) -> list[list[str]]:
    return [cells(line) for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| configs |")]


def test_header_and_rows_have_the_same_number_of_cells():
    """|M| in a header must be escaped, or markdown splits it into extra columns."""
    md = ladder.markdown([row(), row(seed=3)], HW)
    header = cells(md.splitlines()[0])
    assert "τ_int(\\|M\\|) flow" in header
    assert len(header) == 21 and all(len(r) == 21 for r in table_rows(md)[:2])


def test_per_site_error_hand_computation():
    # ESS/N = exp(-0.512) at V = 16^2: eps = 0.512 / 256 = 2.0e-3 exactly
    assert ladder.per_site_error(math.exp(-0.512), 256) == pytest.approx(2.0e-3, rel=1e-14)
    # the committed L = 16 figure of the issue: ESS/N 0.610 at V = 256 -> 1.93e-3
    assert ladder.per_site_error(0.610, 256) == pytest.approx(0.49430 / 256, rel=1e-4)
    assert ladder.per_site_error(0.0, 256) == math.inf
    # a row without a stored volume is a 2d rung: V = L^2
    assert ladder.row_epsilon(row(L=32, ess=math.exp(-1.024))) == pytest.approx(1.0e-3, rel=1e-14)
    assert ladder.row_epsilon(row(L=8, ess=math.exp(-0.64), volume=640)) == pytest.approx(1e-3)


def test_old_rows_get_eps_and_na_for_missing_fields():
    md = ladder.markdown([row(L=16, ess=math.exp(-0.512))], HW)
    (values,) = table_rows(md)
    header = cells(md.splitlines()[0])
    got = dict(zip(header, values))
    assert got["ε = −ln(ESS/N)/V"] == "2.00e-03"
    assert got["seed"] == "n/a"
    assert got["CPU capability"] == "n/a"
    assert got["ref. step L = 8 (CPU-ms)"] == "n/a"
    assert got["budget used (rung / chain)"] == "300 / n/a CPU-s (1 thread)" and got["steps"] == "1234"
    assert got["configs"] == "ladder"  # rows written before the configs folder was stored
    assert "Per-site error over seeds" not in md  # one seed: no spread table


def test_new_rows_show_their_fields():
    md = ladder.markdown([row(seed=7, cpu_capability="AVX512", ref_step_ms=23.456)], HW)
    header = cells(md.splitlines()[0])
    got = dict(zip(header, table_rows(md)[0]))
    assert got["seed"] == "7" and got["CPU capability"] == "AVX512"
    assert got["ref. step L = 8 (CPU-ms)"] == "23.5"


def test_eps_spread_over_seeds_hand_computation():
    rows = [row(ess=math.exp(-0.256), seed=1, overrides=["seed=1"]),   # eps 1e-3
            row(ess=math.exp(-0.768), seed=2, overrides=["seed=2"]),   # eps 3e-3
            row(ess=math.exp(-0.512), seed=3, overrides=["seed=3", "flow.conditioner=global"]),
            row(L=8, ess=0.9, seed=1, overrides=["seed=1"])]
    groups = ladder.seed_groups(rows)
    assert len(groups) == 1 and [r["seed"] for r in groups[0]] == [1, 2]
    sp = ladder.epsilon_spread(groups[0])
    # mean 2e-3, sample sd sqrt(((1e-3)^2 + (1e-3)^2) / 1) = sqrt(2) 1e-3
    assert sp["mean"] == pytest.approx(2.0e-3, rel=1e-12)
    assert sp["sd"] == pytest.approx(math.sqrt(2) * 1e-3, rel=1e-12)
    assert (sp["min"], sp["max"]) == (pytest.approx(1e-3), pytest.approx(3e-3))
    md = ladder.markdown(rows, HW)
    assert "| ladder | 16 | trained from scratch | 1, 2 | 2.00e-03 | 1.4e-03 | 1.00e-03 – 3.00e-03 |" in md
    # the same seeds from another configs folder are another group, not a third seed
    other = [dict(r, configs="configs/ladder_cnf") for r in rows[:2]]
    assert [len(g) for g in ladder.seed_groups(rows + other)] == [2, 2]


def test_rows_of_another_configs_folder_are_kept_beside_and_show_the_chain_budget():
    """--append replaces a row of the same (configs, L, seed) only: a CNF-chain row of L = 16
    and the config seed sits beside the committed configs/ladder row of that L and seed."""
    old = row(ess=0.61)
    new = row(ess=0.81, seed=ladder.config_seed(16), configs="configs/ladder_cnf",
              budget_s=1200.0, chain_budget_s=1200.0)
    assert ladder.row_key(old) != ladder.row_key(new)
    assert ladder.row_key(row(seed=ladder.config_seed(16))) == ladder.row_key(old)
    md = ladder.markdown([old, new, dict(new, L=32, budget_s=4800.0, chain_budget_s=6000.0,
                                         transfer_from="/x/L16/flow.pt")], HW)
    header = cells(md.splitlines()[0])
    got = [dict(zip(header, r)) for r in table_rows(md)[:3]]
    assert [g["configs"] for g in got] == ["ladder", "ladder_cnf", "ladder_cnf"]
    assert got[2]["budget used (rung / chain)"] == "4800 / 6000 CPU-s (1 thread)"
    assert "* configs/ladder_cnf, L = 32, seed 16: initialised from the L = 16 flow" in md


def test_start_of_a_flow_outside_a_rung_folder_names_its_path():
    assert ladder.start_of(row(transfer_from="/tmp/run_a/flow.pt")) == "initialised from /tmp/run_a/flow.pt"
    assert ladder.start_of(row(transfer_from="runs/L20/flow.pt")) == "initialised from the L = 20 flow"


def test_row_without_seed_counts_as_its_config_seed():
    """A committed row (no stored seed) ran with configs/ladder/L16.yaml's seed: a new row of
    another seed forms a spread with it, one of the same seed replaces it (--append)."""
    cfg_seed = ladder.config_seed(16)
    assert cfg_seed is not None
    rows = [row(ess=0.6), row(ess=0.5, seed=cfg_seed + 1)]
    (group,) = ladder.seed_groups(rows)
    assert [ladder.row_seed(r) for r in group] == [cfg_seed, cfg_seed + 1]
    assert ladder.seed_groups([row(ess=0.6), row(ess=0.5, seed=cfg_seed)]) == []


def test_committed_markdown_is_the_rendering_of_the_committed_json():
    results = BENCH / "results"
    assert (results / "ladder.md").read_text() == ladder.render(results)


def test_chain_budget_of_a_rung_started_from_a_committed_rows_flow(tmp_path):
    """A rung evaluated later (--append) whose flow started from the flow of a committed row
    continues that row's chain budget; a different file, or a row of another configs folder,
    gives no chain budget (n/a), never a guess."""
    (tmp_path / "L32").mkdir()
    (tmp_path / "L32" / "flow.pt").write_bytes(b"weights of the L = 32 flow")
    (tmp_path / "copy.pt").write_bytes(b"weights of the L = 32 flow")
    (tmp_path / "other.pt").write_bytes(b"weights of another flow")
    rows = [row(L=32, configs="configs/ladder_cnf", trained_in=str(tmp_path / "L32"),
                chain_budget_s=6000.0)]
    assert ladder.chain_budget_before(tmp_path / "copy.pt", rows, "configs/ladder_cnf") == 6000.0
    assert ladder.chain_budget_before(tmp_path / "other.pt", rows, "configs/ladder_cnf") is None
    assert ladder.chain_budget_before(tmp_path / "copy.pt", rows, "configs/ladder") is None
    assert ladder.chain_budget_before(tmp_path / "missing.pt", rows, "configs/ladder_cnf") is None
