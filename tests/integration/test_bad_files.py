"""Bad files are refused with the path and the reason, through the real CLI (exit 2, no
traceback), and refusing never changes the data already in a run folder: a truncated sample
file or part, training data of another lattice or other couplings, a flow of another
architecture, a checkpoint that is not one, a run folder resumed with a changed config."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from lattice_flows.cli import main
from lattice_flows.io.sample_verify import verify_sample_file
from tests.conftest import tiny_hmc_raw, write_config


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "run.log"}


def _refused(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == 2, args
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture
def hmc_run(tmp_path) -> Path:
    raw = tiny_hmc_raw(tmp_path / "hmc", n_traj=40)
    raw["lattice"]["shape"] = [4, 4]
    assert main(["hmc", str(write_config(tmp_path / "hmc.yaml", raw)), "--no-progress"]) == 0
    return tmp_path / "hmc"


def test_truncated_sample_file_and_truncated_part(tmp_path, hmc_run, capsys):
    copy_dir = tmp_path / "copy"
    import shutil

    shutil.copytree(hmc_run, copy_dir)
    master = copy_dir / "hmc.h5"
    master.write_bytes(master.read_bytes()[: master.stat().st_size // 2])
    _refused(capsys, ["info", str(master)], str(master), "cannot be opened as HDF5")
    _refused(capsys, ["analyze", str(master)], str(master))

    part = sorted((hmc_run / "hmc.h5.parts").iterdir())[0]
    shutil.copytree(hmc_run, tmp_path / "copy2")
    part2 = tmp_path / "copy2" / "hmc.h5.parts" / part.name
    part2.write_bytes(part2.read_bytes()[:300])
    problems = verify_sample_file(tmp_path / "copy2" / "hmc.h5")
    assert problems and str(part2) in problems[0] and "cannot be opened" in problems[0]
    assert main(["info", "--verify", str(tmp_path / "copy2" / "hmc.h5")]) == 1
    capsys.readouterr()
    _refused(capsys, ["analyze", str(tmp_path / "copy2" / "hmc.h5")], "cannot be read", "--verify")


def test_training_data_of_another_lattice_is_refused(tmp_path, hmc_run, capsys):
    raw = {"lattice": {"shape": [6, 6]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 1, "device": "cpu",
           "flow": {"n_layers": 2, "hidden_channels": [4]},
           "train": {"steps": 5, "batch_size": 8, "objective": "forward", "data": str(hmc_run / "hmc.h5")},
           "output": {"dir": str(tmp_path / "t")}}
    _refused(capsys, ["train", str(write_config(tmp_path / "t.yaml", raw)), "--no-progress"],
             str(hmc_run / "hmc.h5"), "lattice (4, 4)", "(6, 6)")


def test_flow_of_another_architecture_and_a_non_checkpoint_are_refused(tmp_path, capsys):
    raw = {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 1, "device": "cpu",
           "flow": {"n_layers": 2, "hidden_channels": [4]},
           "train": {"steps": 5, "batch_size": 8, "eval_samples": 64, "eval_batch_size": 64},
           "sample": {"n_chains": 2, "n_samples": 10, "batch_size": 8},
           "output": {"dir": str(tmp_path / "a")}}
    assert main(["train", str(write_config(tmp_path / "a.yaml", raw)), "--no-progress"]) == 0
    before = _digest(tmp_path / "a")
    # resuming the training folder with another architecture
    other = copy.deepcopy(raw)
    other["flow"]["hidden_channels"] = [8]
    _refused(capsys, ["train", str(write_config(tmp_path / "b.yaml", other)), "--no-progress"],
             str(tmp_path / "a"))
    assert _digest(tmp_path / "a") == before
    # a flow.pt of another architecture as the initialisation of a new training
    other["output"]["dir"] = str(tmp_path / "c")
    other["train"]["init_from"] = str(tmp_path / "a" / "flow.pt")
    _refused(capsys, ["train", str(write_config(tmp_path / "c.yaml", other)), "--no-progress"],
             str(tmp_path / "a" / "flow.pt"), "architecture")
    # something that is not a checkpoint, given as the sampler's flow
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    s = copy.deepcopy(raw)
    s["output"]["dir"] = str(tmp_path / "s")
    s["sample"]["flow"] = str(junk)
    _refused(capsys, ["sample", str(write_config(tmp_path / "s.yaml", s)), "--no-progress"],
             str(junk), "not a readable lattice_flows checkpoint")
    assert _digest(tmp_path / "a") == before


def test_changed_config_on_an_hmc_folder_leaves_it_untouched(tmp_path, hmc_run, capsys):
    before = _digest(hmc_run)
    raw = tiny_hmc_raw(hmc_run, n_traj=40)
    raw["lattice"]["shape"] = [4, 4]
    raw["action"]["lam"] = 7.0
    _refused(capsys, ["hmc", str(write_config(tmp_path / "changed.yaml", raw)), "--no-progress"],
             str(hmc_run), "different config")
    raw["action"]["lam"] = 8.0
    raw["lattice"]["shape"] = [6, 6]
    _refused(capsys, ["hmc", str(write_config(tmp_path / "changed2.yaml", raw)), "--no-progress"],
             str(hmc_run))
    assert _digest(hmc_run) == before
