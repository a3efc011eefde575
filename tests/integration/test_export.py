"""``lattice-flows export``: one self-contained file that plain h5py reads whole on its own.

A production's ``<name>.h5`` copied alone reads NaN for every row (its rows live in the parts
folder, or in the rank files of a merged MPI view). The export, copied alone to another folder,
holds exactly the data SampleFile reads from the run, passes ``info --verify``, and leaves the
run folder resumable and extendable.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

import lattice_flows.io.sample_writer as sample_writer
from lattice_flows.cli import main
from lattice_flows.io.sample_format import DataFileError
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_writer import SampleWriter
from tests.conftest import tiny_hmc_raw, write_config
from tests.unit.test_sample_store import SPECS, merged_view, rows, writer


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n != "chunk_index" else None)
    return sorted(names)


def _alone(path, folder):
    """The file copied on its own into ``folder`` (what scp of one file does)."""
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.copy(path, folder / path.name)


def _assert_plain_h5py_reads_source(copy, source) -> None:
    sf = SampleFile(source)
    with h5py.File(source, "r") as f:
        names = _datasets(f)
    with h5py.File(copy, "r") as f:
        assert _datasets(f) == names
        for name in names:
            data = f[name][:]  # plain h5py, no parts folder, no rank files
            if data.dtype.kind == "f":
                assert not np.isnan(data).any(), name
            np.testing.assert_array_equal(data, sf.read(name), err_msg=name)
            assert data.dtype == sf.read(name).dtype
        attrs = dict(f.attrs)
    assert attrs["layout"] == "self-contained" and "parts_dir" not in attrs and "merged_from" not in attrs
    assert (attrs["n_saved"], attrs["n_chains"]) == (sf.n_saved, sf.n_chains)
    assert attrs["kind"] == sf.attrs["kind"] and attrs["exported_from"] == str(source.resolve())
    exported = SampleFile(copy)
    np.testing.assert_array_equal(exported.configs(), sf.configs())
    assert exported.observable_names == sf.observable_names


def test_export_of_a_file_and_of_a_merged_view_is_read_whole_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample_writer, "MERGE_FAN_IN", 4)  # merged parts of two levels, and fresh ones
    rng = np.random.default_rng(21)
    w = writer(tmp_path / "run" / "s.h5")
    for i in range(19):
        w.append(rows(rng, int(rng.integers(1, 4))), attrs={"cpu_s": float(i)})
    view, _ = merged_view(tmp_path / "mpi", 6, seed=22)
    for source in (tmp_path / "run" / "s.h5", view):
        out = tmp_path / "out" / source.parent.name / "e.h5"
        assert main(["export", str(source), str(out)]) == 0
        assert capsys.readouterr().out.strip() == str(out)
        assert not list(out.parent.glob("*.tmp"))
        copy = _alone(out, tmp_path / "elsewhere" / source.parent.name)
        _assert_plain_h5py_reads_source(copy, source)
        assert main(["info", "--verify", str(copy)]) == 0
        assert capsys.readouterr().out.startswith("OK ")
    # a change of one value in an export is caught by its chunk checksums
    with h5py.File(copy, "r+") as f:
        f["action"][3, 1] += 1.0
    assert main(["info", "--verify", str(copy)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
    with pytest.raises(DataFileError, match="exports are not extended"):
        SampleWriter(copy, {}, 6, (2, 2), SPECS)


def test_export_refuses_a_damaged_source_and_its_own_path(tmp_path, capsys):
    w = writer(tmp_path / "s.h5")
    for b in [rows(np.random.default_rng(23), 2) for _ in range(3)]:
        w.append(b)
    assert main(["export", str(tmp_path / "s.h5"), str(tmp_path / "s.h5")]) == 2
    assert "source file itself" in capsys.readouterr().err
    part = sorted((tmp_path / "s.h5.parts").iterdir())[1]
    with h5py.File(part, "r+") as f:
        f["configs"][0, 0, 0, 0] += 1.0
    assert main(["export", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err
    assert "not exported" in err and "checksum mismatch" in err
    assert not (tmp_path / "export").exists()  # nothing written, not even a temporary file


def test_export_of_a_run_folder_and_the_run_extends_afterwards(tmp_path, capsys):
    raw = tiny_hmc_raw(tmp_path / "run", n_traj=40)
    cfg = write_config(tmp_path / "run.yaml", raw)
    assert main(["hmc", str(cfg), "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "run")]) == 0  # every sample file of the folder
    out = tmp_path / "run" / "export" / "hmc.h5"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    first = SampleFile(_alone(out, tmp_path / "copy"))
    assert first.n_saved == 20
    _assert_plain_h5py_reads_source(tmp_path / "copy" / "hmc.h5", tmp_path / "run" / "hmc.h5")
    # the run folder is untouched: extending the finished chain works, a new export has it all
    assert main(["hmc", str(cfg), "--no-progress", "--set", "hmc.n_traj=60"]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "again")]) == 0
    again = SampleFile(_alone(tmp_path / "again" / "hmc.h5", tmp_path / "copy2"))
    assert again.n_saved == 30
    np.testing.assert_array_equal(again.configs(slice(0, 20)), first.configs())
    _assert_plain_h5py_reads_source(tmp_path / "copy2" / "hmc.h5", tmp_path / "run" / "hmc.h5")
