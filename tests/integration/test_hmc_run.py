"""HMC production end to end: CLI, HDF5 layout, provenance, resume after SIGKILL, extension,
locks, refused configs and files. Real subprocesses, real HDF5 files in tmp dirs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lattice_flows.cli import main
from lattice_flows.io.sample_format import DataFileError
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from tests.conftest import cli, tiny_hmc_raw, write_config


def _datasets(path: Path) -> dict[str, np.ndarray]:
    sf = SampleFile(path)
    out = {"configs": sf.configs(), "action": sf.action(), "accepted": sf.accepted()}
    out.update({f"observables/{k}": v for k, v in sf.observables().items()})
    return out


def _assert_equal_files(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert da.keys() == db.keys()
    for k in da:
        assert da[k].shape == db[k].shape, k
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)


def test_hmc_cli_writes_self_describing_run(tmp_path, tiny_hmc_config):
    proc = cli("hmc", str(tiny_hmc_config), "--no-progress")
    run = tmp_path / "run"
    path = run / "hmc.h5"
    assert proc.stdout.strip().endswith("hmc.h5")
    text = (run / "config.yaml").read_text()
    for key in ("package_version", "git_commit", "seed", "hostname", "mpi_size", "created"):
        assert f"# {key}:" in text
    resolved = yaml.safe_load(text)
    assert resolved["action"]["kappa"] is not None  # both parametrizations recorded
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "lattice_flows.samples"
        assert int(f.attrs["format_version"]) == 2
        for k in ("package_version", "config", "seed", "hostname", "git_commit", "created", "kind"):
            assert k in f.attrs, k
        assert yaml.safe_load(f.attrs["config"])["lattice"]["shape"] == [6, 6]
        assert f["configs"].dtype == np.float32 and f["configs"].shape == (30, 4, 6, 6)
        assert f["configs"].is_virtual  # over the part files, written once each
        first = f.attrs["parts_dir"] + "/" + "L0_%012d-%012d.h5" % tuple(f["chunk_index"][0, :2])
    with h5py.File(run / first, "r") as part:
        assert part["configs"].compression == "gzip" and part["configs"].shape[0] > 0
    with h5py.File(path, "r") as f:
        assert f["action"].dtype == np.float64 and f["action"].shape == (30, 4)
        assert f["accepted"].dtype == np.bool_
        assert set(f["observables"]) >= {"M", "absM", "M2", "M4", "chi2", "E", "action_density", "C", "G"}
    sf = SampleFile(path)
    # stored action and observables belong to the stored configs
    from lattice_flows.theory.phi4 import Phi4Action
    import torch
    phi = torch.from_numpy(sf.configs()).double()
    S = Phi4Action(-4.0, 8.0, 2)(phi.reshape(-1, 6, 6)).reshape(30, 4).numpy()
    np.testing.assert_allclose(S, sf.action(), rtol=1e-5)
    np.testing.assert_allclose(sf.observable("M"), phi.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-7)

    info = cli("info", str(path), "--json")
    assert json.loads(info.stdout)["kind"] == "hmc"
    ana = cli("analyze", str(run), "--json")
    table = {r["name"]: r for r in json.loads(ana.stdout)["observables"]}
    for name in ("chi2", "absM", "U4", "E", "G[0]", "C[1]", "action_density"):
        assert name in table and table[name]["error"] >= 0 and table[name]["tau_int"] > 0
    text_table = cli("analyze", str(path)).stdout
    assert "chi2" in text_table and "tau_int" in text_table


def test_leftovers_of_an_interrupted_commit_are_invisible_and_removed_on_resume(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "a", n_traj=40)
    cfg_a = write_config(tmp_path / "a.yaml", raw)
    assert main(["hmc", str(cfg_a), "--no-progress"]) == 0
    path = tmp_path / "a" / "hmc.h5"
    before = SampleFile(path)
    n, configs = before.n_saved, before.configs()
    parts = tmp_path / "a" / "hmc.h5.parts"
    # what a kill in the middle of a commit leaves: a part written but never committed (the
    # file users open was not yet replaced), a half-written temporary part, a temporary master
    orphan = parts / ("L0_%012d-%012d.h5" % (n, n + 3))
    with h5py.File(orphan, "w") as f:
        f["configs"] = np.full((3, 4, 6, 6), 99.0, np.float32)
    (parts / (orphan.name + ".tmp")).write_bytes(b"\x89HDF\r\n half")
    (tmp_path / "a" / "hmc.h5.tmp").write_bytes(b"partial")
    sf = SampleFile(path)
    assert sf.n_saved == n and not (sf.configs() == 99.0).any()
    assert verify_sample_file(path) == []
    assert main(["hmc", str(cfg_a), "--no-progress", "--set", "hmc.n_traj=60"]) == 0
    assert not orphan.exists() and not list(parts.glob("*.tmp"))
    assert not (tmp_path / "a" / "hmc.h5.tmp").exists()
    after = SampleFile(path)
    assert after.n_saved == 30 and np.array_equal(after.configs(slice(0, n)), configs)
    assert verify_sample_file(path) == []


def test_extending_a_finished_chain_equals_a_longer_run(tmp_path):
    raw_long = tiny_hmc_raw(tmp_path / "long", n_traj=80)
    assert main(["hmc", str(write_config(tmp_path / "long.yaml", raw_long)), "--no-progress"]) == 0
    raw = tiny_hmc_raw(tmp_path / "ext", n_traj=40)
    cfg = write_config(tmp_path / "ext.yaml", raw)
    assert main(["hmc", str(cfg), "--no-progress"]) == 0
    assert SampleFile(tmp_path / "ext" / "hmc.h5").n_saved == 20
    assert main(["hmc", str(cfg), "--no-progress"]) == 0  # complete: nothing to do
    assert main(["hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=80"]) == 0
    _assert_equal_files(tmp_path / "long" / "hmc.h5", tmp_path / "ext" / "hmc.h5")


def test_a_production_checkpoint_of_an_older_version_still_extends(tmp_path):
    """Older versions wrote an unread ``phase`` (0 or 1) into every production checkpoint; the
    current one writes none, and a checkpoint that has it still resumes like any other."""
    from lattice_flows.io.checkpoint import load_checkpoint, save_checkpoint

    raw_long = tiny_hmc_raw(tmp_path / "long", n_traj=80)
    assert main(["hmc", str(write_config(tmp_path / "long.yaml", raw_long)), "--no-progress"]) == 0
    cfg = write_config(tmp_path / "old.yaml", tiny_hmc_raw(tmp_path / "old", n_traj=40))
    assert main(["hmc", str(cfg), "--no-progress"]) == 0
    ckpt = tmp_path / "old" / "hmc.ckpt"
    state = load_checkpoint(ckpt)
    assert "phase" not in state
    save_checkpoint({**state, "phase": 1}, ckpt)  # as the older versions wrote it
    assert main(["hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=80"]) == 0
    _assert_equal_files(tmp_path / "long" / "hmc.h5", tmp_path / "old" / "hmc.h5")


def test_resume_with_changed_physics_is_refused(tmp_path, tiny_hmc_config, capsys):
    assert main(["hmc", str(tiny_hmc_config), "--no-progress"]) == 0
    before = SampleFile(tmp_path / "run" / "hmc.h5").action().copy()
    assert main(["hmc", str(tiny_hmc_config), "--no-progress", "--set", "action.m2=-3.0"]) == 2
    err = capsys.readouterr().err
    assert "action" in err and "different config" in err and str(tmp_path / "run") in err
    np.testing.assert_array_equal(SampleFile(tmp_path / "run" / "hmc.h5").action(), before)


def test_locked_run_folder_is_refused_and_stale_lock_cleared(tmp_path, tiny_hmc_config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / ".lock").write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        assert main(["hmc", str(tiny_hmc_config), "--no-progress"]) == 2
        assert "in use by process" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    # now the lock is stale (its process is gone): it is cleared and the run proceeds
    assert main(["hmc", str(tiny_hmc_config), "--no-progress"]) == 0
    assert not (run / ".lock").exists()


def test_foreign_and_damaged_files_are_refused(tmp_path, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DataFileError, match="not a lattice_flows sample file"):
        SampleFile(foreign)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 10)
    assert main(["info", str(junk)]) == 2
    err = capsys.readouterr().err
    assert str(junk) in err and "not HDF5" in err
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_info_verify_detects_damage(tmp_path, tiny_hmc_config, capsys):
    assert main(["hmc", str(tiny_hmc_config), "--no-progress"]) == 0
    path = tmp_path / "run" / "hmc.h5"
    assert main(["info", "--verify", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    with h5py.File(path, "a") as f:  # flip one stored value
        f["configs"][3, 1, 2, 2] += 0.5
    assert main(["info", "--verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "checksum mismatch" in out and str(path) in out


def _run_with_step_generator(raw: dict) -> Path:
    """The HMC production of ``raw`` with a host step generator, as on a GPU (lattice_flows/
    mcmc/hmc.py: the jittered step counts come from a CPU generator checkpointed as step_rng)."""
    import torch

    from lattice_flows.config import config_from_dict
    from lattice_flows.mcmc.hmc_run import HMCProducer
    from lattice_flows.runtime.production import run_production

    cfg = config_from_dict(raw)
    run_dir = Path(raw["output"]["dir"])

    def make():
        producer = HMCProducer(cfg, run_dir, False, None)
        producer.hmc.step_generator = torch.Generator().manual_seed(123)
        return producer

    return run_production(make, cfg, run_dir, None, base="hmc", stage="hmc", lock_name=".lock",
                          desc="hmc", progress=False)


def test_the_step_generator_state_is_checkpointed_and_an_extension_equals_a_longer_run(tmp_path):
    """Without step_rng in the checkpoint the extension would redraw the step counts of the
    generator's start, and its trajectories would differ from the longer run's."""
    from lattice_flows.io.checkpoint import load_checkpoint

    long = _run_with_step_generator(tiny_hmc_raw(tmp_path / "long", n_traj=80))
    _run_with_step_generator(tiny_hmc_raw(tmp_path / "ext", n_traj=40))
    assert "step_rng" in load_checkpoint(tmp_path / "ext" / "hmc.ckpt")
    ext = _run_with_step_generator(tiny_hmc_raw(tmp_path / "ext", n_traj=80))
    _assert_equal_files(long, ext)
    # the chains' generator no longer draws the counts: another chain than the plain run's
    main(["hmc", str(write_config(tmp_path / "plain.yaml", tiny_hmc_raw(tmp_path / "plain"))),
          "--no-progress"])
    assert not np.array_equal(SampleFile(ext).action()[:30], SampleFile(tmp_path / "plain" / "hmc.h5").action())


def test_hmc_files_carry_the_three_clocks_of_the_run_and_of_its_thermalisation(tmp_path, tiny_hmc_config):
    """cpu_s, wall_s, device_s, device_kind and therm_cpu_s, therm_wall_s, therm_device_s in the
    sample file and the checkpoint: thermalisation is part of the run's clocks; device-s are
    CPU-s on a CPU (lattice_flows/runtime/clock.py)."""
    from lattice_flows.io.checkpoint import load_checkpoint

    assert main(["hmc", str(tiny_hmc_config), "--no-progress"]) == 0
    run = tmp_path / "run"
    for rec in (SampleFile(run / "hmc.h5").attrs, load_checkpoint(run / "hmc.ckpt")):
        assert rec["device_kind"] == "cpu" and rec["device_s"] == rec["cpu_s"]
        assert rec["therm_device_s"] == rec["therm_cpu_s"]
        for clock in ("cpu_s", "wall_s", "device_s"):
            assert 0 < rec[f"therm_{clock}"] < rec[clock], clock
