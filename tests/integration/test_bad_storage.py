"""A full disk and a read-only run folder: a clear error (exit 2, the path, the reason, no
traceback), the data already written stays valid, and the run resumes once the folder is fixed.

Both are simulated for real, without root, in a user + mount namespace (``unshare -rm``): a
read-only bind mount of the run folder, and a small tmpfs that fills up mid-run (ENOSPC).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from tests.conftest import assert_same_samples, cli, tiny_hmc_raw, write_config


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _namespaces_work(),
    reason="needs unprivileged user + mount namespaces (unshare -rm) to simulate a full disk and "
    "a read-only folder",
)


def in_namespace(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run a shell script as mapped root in fresh user + mount namespaces."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PY=sys.executable, **env)
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env=full_env, timeout=300)


def _assert_clean_error(proc: subprocess.CompletedProcess, path: Path, reason: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in proc.stderr and reason in proc.stderr, proc.stderr


def test_read_only_run_folder(tmp_path):
    raw = tiny_hmc_raw(tmp_path / "run", n_traj=40)
    cfg = write_config(tmp_path / "c.yaml", raw)
    cli("hmc", str(cfg), "--no-progress")
    before = SampleFile(tmp_path / "run" / "hmc.h5").configs()
    proc = in_namespace(
        'mount --bind "$RUN" "$RUN" && mount -o remount,ro,bind "$RUN" && '
        'exec "$PY" -m lattice_flows hmc "$CFG" --no-progress --set hmc.n_traj=80',
        RUN=str(tmp_path / "run"), CFG=str(cfg))
    _assert_clean_error(proc, tmp_path / "run", "Read-only file system")
    assert verify_sample_file(tmp_path / "run" / "hmc.h5") == []
    np.testing.assert_array_equal(SampleFile(tmp_path / "run" / "hmc.h5").configs(), before)
    cli("hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=80")  # writable again: resumes
    assert SampleFile(tmp_path / "run" / "hmc.h5").n_saved == 40


@pytest.mark.parametrize("command", ["hmc", "train"])
def test_disk_full_mid_run_then_resume(tmp_path, command):
    if command == "hmc":
        raw = tiny_hmc_raw(tmp_path / "run", n_traj=3000, save_every=1)
        raw["output"]["chunk_rows"] = 50
    else:
        raw = {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 2,
               "device": "cpu", "flow": {"n_layers": 2, "hidden_channels": [8]},
               "train": {"steps": 2000, "batch_size": 16, "log_every": 5, "checkpoint_every": 10,
                         "eval_samples": 256, "eval_batch_size": 256},
               "output": {"dir": str(tmp_path / "run")}}
    ref_raw = {**raw, "output": {**raw["output"], "dir": str(tmp_path / "ref")}}
    if command == "train":
        ref_raw["train"] = {**raw["train"], "steps": 60}
    cfg = write_config(tmp_path / "c.yaml", raw)
    # a first, short run on the real disk (the data that must survive)
    first = "hmc.n_traj=40" if command == "hmc" else "train.steps=20"
    cli(command, str(cfg), "--no-progress", "--set", first)
    saved, after = tmp_path / "saved", tmp_path / "after"
    shutil.copytree(tmp_path / "run", saved)
    after.mkdir()
    pages = {p: -(-p.stat().st_size // 4096) * 4096 for p in saved.rglob("*") if p.is_file()}
    # room for the writes of a while: many commits of HMC rows; the training log and run.log
    # grow slowly beside a checkpoint rewritten under a temporary name
    room = 400_000 if command == "hmc" else pages[saved / "train.ckpt"] + 24_576
    used = sum(pages.values()) + room
    proc = in_namespace(
        'mount -t tmpfs -o size=$SIZE tmpfs "$RUN" && cp -a "$SAVED"/. "$RUN"/ && '
        '"$PY" -m lattice_flows "$CMD" "$CFG" --no-progress > "$AFTER/stdout" 2> "$AFTER/stderr"; '
        'rc=$?; cp -a "$RUN"/. "$AFTER"/; exit $rc',
        RUN=str(tmp_path / "run"), SAVED=str(saved), AFTER=str(after), CFG=str(cfg), CMD=command,
        SIZE=str(used))
    proc.stderr = (after / "stderr").read_text()
    _assert_clean_error(proc, tmp_path / "run", "No space left on device")
    # everything written before the disk filled up is intact and verifies
    if command == "hmc":
        assert verify_sample_file(after / "hmc.h5") == []
        sf, old = SampleFile(after / "hmc.h5"), SampleFile(saved / "hmc.h5")
        assert old.n_saved == 40 and 40 < sf.n_saved < 3000  # it ran on, then the disk was full
        np.testing.assert_array_equal(sf.configs(slice(0, 40)), old.configs())
    # with space again (the folder back on the real disk) the same command resumes and finishes
    shutil.rmtree(tmp_path / "run")
    shutil.copytree(after, tmp_path / "run", ignore=shutil.ignore_patterns("stdout", "stderr"))
    if command == "hmc":
        cli("hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=200")
        ref = write_config(tmp_path / "ref.yaml", {**ref_raw, "hmc": {**raw["hmc"], "n_traj": 200}})
        cli("hmc", str(ref), "--no-progress")
        assert_same_samples(tmp_path / "ref" / "hmc.h5", tmp_path / "run" / "hmc.h5")
    else:
        cli("train", str(cfg), "--no-progress", "--set", "train.steps=60")
        assert (tmp_path / "run" / "flow.pt").exists()
