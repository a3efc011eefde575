"""A real 2-rank production (``mpiexec -n 2 lattice-flows hmc``): its merged view trains from
the data SampleFile reads, and ``lattice-flows export`` turns it into one file that plain h5py,
alone in another folder, reads whole (every dataset equal to SampleFile's, no NaN)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from lattice_flows.cli import main
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.training.data import ConfigurationStream
from tests.conftest import tiny_hmc_raw, write_config
from tests.mpi.test_mpi import MPIEXEC, NP, mpirun

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not on PATH")


@pytest.mark.mpi
def test_two_rank_view_trains_from_sample_file_data_and_exports_whole(tmp_path, capsys):
    raw = tiny_hmc_raw(tmp_path / "run", n_traj=40)
    mpirun("-m", "lattice_flows", "hmc", str(write_config(tmp_path / "c.yaml", raw)), "--no-progress")
    view = tmp_path / "run" / "hmc.h5"
    sf = SampleFile(view)
    assert sf.attrs["merged_from"] == [f"hmc.rank{r:04d}.h5" for r in range(NP)]
    assert (sf.n_saved, sf.n_chains) == (20, NP * 4)
    full = sf.configs()

    for max_bytes in (1 << 30, 0):  # held in memory, read per batch
        stream = ConfigurationStream(view, (6, 6), torch.Generator().manual_seed(1), 0.25,
                                     sign_flip=False, couplings=(-4.0, 8.0), max_memory_bytes=max_bytes)
        ref = torch.Generator().manual_seed(1)
        idx = torch.randint(0, stream.n_train, (32,), generator=ref).numpy()
        np.testing.assert_array_equal(stream.batch(32).numpy(), full[idx // sf.n_chains, idx % sf.n_chains])

    assert main(["export", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    alone = tmp_path / "elsewhere" / "hmc.h5"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "run" / "export" / "hmc.h5", alone)
    with h5py.File(alone, "r") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n != "chunk_index" else None)
        assert "configs" in names and "observables/chi2" in names
        for name in names:
            data = f[name][:]
            assert not (data.dtype.kind == "f" and np.isnan(data).any()), name
            np.testing.assert_array_equal(data, sf.read(name), err_msg=name)
    assert main(["info", "--verify", str(alone)]) == 0
