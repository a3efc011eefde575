"""The crash-atomic sample store (format version 2): parts, merging, truncation, refusals."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lattice_flows.io.hdf5 import (
    MERGE_FAN_IN,
    DataFileError,
    SampleFile,
    SampleWriter,
    verify_sample_file,
)

SPECS = {"action": ((), np.float64), "accepted": ((), np.bool_), "observables/G": ((2, 2), np.float32)}


def rows(rng: np.random.Generator, k: int, n_chains: int = 3) -> dict[str, np.ndarray]:
    return {
        "configs": rng.normal(size=(k, n_chains, 2, 2)).astype(np.float32),
        "action": rng.normal(size=(k, n_chains)),
        "accepted": rng.random((k, n_chains)) < 0.5,
        "observables/G": rng.normal(size=(k, n_chains, 2, 2)).astype(np.float32),
    }


def writer(path):
    return SampleWriter(path, {"kind": "test", "seed": 1}, 3, (2, 2), SPECS)


def test_appends_merge_into_few_parts_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    w = writer(tmp_path / "s.h5")
    blocks = [rows(rng, int(k)) for k in rng.integers(1, 5, size=3 * MERGE_FAN_IN + 5)]
    for i, b in enumerate(blocks):
        w.append(b, attrs={"done": i})
    n = sum(b["action"].shape[0] for b in blocks)
    parts = sorted((tmp_path / "s.h5.parts").iterdir())
    assert len(parts) == 3 + 5  # three merged parts of level 1, five fresh ones
    sf = SampleFile(tmp_path / "s.h5")
    assert sf.n_saved == n and sf.attrs["done"] == len(blocks) - 1 and sf.attrs["kind"] == "test"
    np.testing.assert_array_equal(sf.configs(), np.concatenate([b["configs"] for b in blocks]))
    np.testing.assert_array_equal(sf.accepted(), np.concatenate([b["accepted"] for b in blocks]))
    np.testing.assert_array_equal(sf.observable("G"), np.concatenate([b["observables/G"] for b in blocks]))
    assert verify_sample_file(tmp_path / "s.h5") == []
    with h5py.File(tmp_path / "s.h5", "r") as f:  # plain h5py reads the same arrays
        np.testing.assert_array_equal(f["action"][:], sf.action())


def test_truncate_inside_a_part_then_resume(tmp_path):
    rng = np.random.default_rng(1)
    w = writer(tmp_path / "s.h5")
    for _ in range(MERGE_FAN_IN + 2):
        w.append(rows(rng, 3))
    before = SampleFile(tmp_path / "s.h5").configs()
    w = writer(tmp_path / "s.h5")  # a resumed writer
    w.truncate(20)  # inside the merged part of rows 0..48
    extra = rows(rng, 4)
    w.append(extra)
    sf = SampleFile(tmp_path / "s.h5")
    assert sf.n_saved == 24
    np.testing.assert_array_equal(sf.configs(), np.concatenate([before[:20], extra["configs"]]))
    assert verify_sample_file(tmp_path / "s.h5") == []
    assert len(list((tmp_path / "s.h5.parts").iterdir())) == 2


def test_missing_or_damaged_part_is_refused_with_its_path(tmp_path):
    rng = np.random.default_rng(2)
    w = writer(tmp_path / "s.h5")
    for _ in range(3):
        w.append(rows(rng, 2))
    parts = sorted((tmp_path / "s.h5.parts").iterdir())
    with h5py.File(parts[1], "r+") as f:  # silent damage: one value changed
        f["action"][0, 0] += 1.0
    problems = verify_sample_file(tmp_path / "s.h5")
    assert len(problems) == 1 and "rows 2..4: checksum mismatch" in problems[0]
    parts[2].unlink()
    with pytest.raises(DataFileError, match=str(parts[2])):
        SampleFile(tmp_path / "s.h5")
    with pytest.raises(DataFileError, match="missing; refusing to extend"):
        writer(tmp_path / "s.h5")


def test_writer_refuses_a_file_of_another_shape(tmp_path):
    writer(tmp_path / "s.h5").append(rows(np.random.default_rng(3), 2))
    with pytest.raises(DataFileError, match="refusing to extend"):
        SampleWriter(tmp_path / "s.h5", {}, 5, (2, 2), SPECS)


def test_many_parts_read_correctly_under_a_small_open_file_limit(tmp_path, monkeypatch):
    """HDF5 keeps every source of a virtual dataset open during a read and silently returns fill
    values for sources it cannot open; SampleFile reads part by part, so a low limit on open
    files (here 40, with 120 parts) changes nothing."""
    import subprocess
    import sys

    import lattice_flows.io.hdf5 as hdf5

    monkeypatch.setattr(hdf5, "MERGE_FAN_IN", 10**6)  # keep every commit in its own part
    rng = np.random.default_rng(5)
    w = writer(tmp_path / "s.h5")
    blocks = [rows(rng, 2) for _ in range(120)]
    for b in blocks:
        w.append(b)
    assert len(list((tmp_path / "s.h5.parts").iterdir())) == 120
    np.save(tmp_path / "expected.npy", np.concatenate([b["configs"] for b in blocks]))
    script = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))\n"
        "from lattice_flows.io.hdf5 import SampleFile, verify_sample_file\n"
        f"sf = SampleFile({str(tmp_path / 's.h5')!r})\n"
        f"assert np.array_equal(sf.configs(), np.load({str(tmp_path / 'expected.npy')!r}))\n"
        f"assert verify_sample_file({str(tmp_path / 's.h5')!r}) == []\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
