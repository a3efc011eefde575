"""The crash-atomic sample store (format version 2): parts, merging, truncation, refusals."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from lattice_flows.io.sample_format import DataFileError, part_name
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.io.sample_writer import MERGE_FAN_IN, SampleWriter

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


def merged_view(folder, n_blocks: int, seed: int = 0, k: int = 2):
    """A 2-rank production written as the MPI code writes it: each rank appends to its own
    ``s.rank<NNNN>.h5`` with SampleWriter, then rank 0 calls write_merged_view. Returns
    (view path, [the blocks of each rank])."""
    from lattice_flows.io.merge import write_merged_view

    rng = np.random.default_rng(seed)
    files, blocks = [folder / f"s.rank{r:04d}.h5" for r in range(2)], []
    for path in files:
        w, mine = writer(path), [rows(rng, k) for _ in range(n_blocks)]
        for b in mine:
            w.append(b)
        blocks.append(mine)
    return write_merged_view(folder / "s.h5", files), blocks


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

    import lattice_flows.io.sample_writer as sample_writer

    monkeypatch.setattr(sample_writer, "MERGE_FAN_IN", 10**6)  # keep every commit in its own part
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
        "from lattice_flows.io.sample_reader import SampleFile\n"
        "from lattice_flows.io.sample_verify import verify_sample_file\n"
        f"sf = SampleFile({str(tmp_path / 's.h5')!r})\n"
        f"assert np.array_equal(sf.configs(), np.load({str(tmp_path / 'expected.npy')!r}))\n"
        f"assert verify_sample_file({str(tmp_path / 's.h5')!r}) == []\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


FLOAT_DATASETS = ("configs", "action", "observables/G")


def test_virtual_datasets_read_nan_where_a_source_is_missing(tmp_path):
    """HDF5 fills rows whose source it cannot find: every float virtual dataset, of a sample
    file and of the merged MPI view, must read NaN there (not zeros that pass for data)."""
    view, blocks = merged_view(tmp_path, 3)  # 3 parts per rank, rows 0..6, 3 chains per rank
    with h5py.File(view, "r") as f:
        assert all(f[n].fillvalue != f[n].fillvalue for n in FLOAT_DATASETS)  # NaN
    (tmp_path / "s.rank0000.h5.parts" / part_name(0, 2, 4)).unlink()  # a part of rank 0
    (tmp_path / "s.rank0001.h5").rename(tmp_path / "elsewhere.h5")  # rank 1 as a whole
    with h5py.File(tmp_path / "s.rank0000.h5", "r") as f:
        a = f["action"][:]
        assert np.isnan(a[2:4]).all() and not np.isnan(a[[0, 1, 4, 5]]).any()
    with h5py.File(view, "r") as f:
        for name in FLOAT_DATASETS:
            d = f[name][:]
            lost = np.zeros(d.shape[:2], bool)
            lost[2:4, :3] = lost[:, 3:] = True  # the part of rank 0, every row of rank 1
            assert np.isnan(d[lost]).all(), name
            np.testing.assert_array_equal(d[~lost], np.concatenate([b[name] for b in blocks[0]])[~lost[:, :3]])
        assert not f["accepted"][:][:, 3:].any()  # bool cannot hold NaN: documented as False


def test_master_copied_alone_reads_nan_and_is_refused_by_the_reader(tmp_path):
    w = writer(tmp_path / "run" / "s.h5")
    for b in [rows(np.random.default_rng(6), 2) for _ in range(3)]:
        w.append(b)
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "run" / "s.h5", tmp_path / "copy" / "s.h5")  # what scp of one file does
    with h5py.File(tmp_path / "copy" / "s.h5", "r") as f:
        assert np.isnan(f["configs"][:]).all() and np.isnan(f["action"][:]).all()
    with pytest.raises(DataFileError, match="lattice-flows export"):
        SampleFile(tmp_path / "copy" / "s.h5")


def test_row_reader_equals_sample_file_and_keeps_parts_open(tmp_path):
    view, _ = merged_view(tmp_path, 5)  # 5 parts per rank
    sf = SampleFile(view)
    full = sf.configs()
    rng = np.random.default_rng(7)
    with sf.row_reader("configs") as reader:
        for _ in range(20):  # 20 "batches" of random rows
            idx = np.unique(rng.integers(0, sf.n_saved, size=6))
            np.testing.assert_array_equal(reader.take(idx), full[idx])
        assert reader.opens == 10  # each part of each rank opened once, not once per batch
    with SampleFile(tmp_path / "s.rank0000.h5").row_reader("action", max_open=2) as small:
        np.testing.assert_array_equal(small.take(np.arange(10)), SampleFile(tmp_path / "s.rank0000.h5").action())
        assert len(small._held) == 2  # never more files open than allowed
    with pytest.raises(ValueError, match="sorted, unique"):
        sf.row_reader("configs").take(np.array([3, 1]))


def test_merged_view_sums_cpu_and_device_seconds_and_takes_the_longest_wall_time(tmp_path):
    """The cost of a parallel run (runtime/clock.py): CPU- and device-seconds of the ranks add
    up, the wall-seconds are the longest rank's (they ran side by side)."""
    from lattice_flows.io.merge import write_merged_view

    rng = np.random.default_rng(3)
    files = [tmp_path / f"s.rank{r:04d}.h5" for r in range(2)]
    clocks = [{"cpu_s": 10.0, "wall_s": 12.0, "device_s": 10.0, "therm_cpu_s": 1.0,
               "therm_wall_s": 1.5, "therm_device_s": 1.0},
              {"cpu_s": 11.0, "wall_s": 13.0, "device_s": 11.0, "therm_cpu_s": 2.0,
               "therm_wall_s": 2.5, "therm_device_s": 2.0}]
    for path, attrs in zip(files, clocks):
        writer(path).append(rows(rng, 2), attrs=attrs)
    attrs = SampleFile(write_merged_view(tmp_path / "s.h5", files)).attrs
    assert (attrs["cpu_s"], attrs["device_s"], attrs["wall_s"]) == (21.0, 21.0, 13.0)
    assert (attrs["therm_cpu_s"], attrs["therm_device_s"], attrs["therm_wall_s"]) == (3.0, 3.0, 2.5)
