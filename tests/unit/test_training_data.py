"""Training data (forward KL / mixed) are read through SampleFile, never through the virtual
datasets that HDF5 silently fills: from a 2-rank merged view and from files with more parts than
the open-file limit, every batch and the validation set equal the rows SampleFile reads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

import lattice_flows.io.sample_writer as sample_writer
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.training.data import ConfigurationStream
from tests.unit.test_sample_store import merged_view, rows, writer

# In a subprocess under a 40-file limit: for a file and a merged view, in memory and read per
# batch (max_memory_bytes=0), batches and validation equal SampleFile's rows picked by the same
# generator draws (train: the first rows, validation: the last 25% of rows, every chain).
CHECK = """
import resource, sys, numpy as np, torch
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.training.data import ConfigurationStream
resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
for path in sys.argv[1:]:
    full = SampleFile(path).configs()
    assert np.isfinite(full).all()
    for max_bytes in (1 << 30, 0):
        s = ConfigurationStream(path, (2, 2), torch.Generator().manual_seed(3), 0.25,
                                sign_flip=False, max_memory_bytes=max_bytes)
        ref = torch.Generator().manual_seed(3)
        for _ in range(5):
            idx = torch.randint(0, s.n_train, (64,), generator=ref).numpy()
            r, c = np.divmod(idx, s.n_chains)
            assert np.array_equal(s.batch(64).numpy(), full[r, c]), (path, max_bytes)
        flat = np.linspace(0, s.n_val_rows * s.n_chains - 1, 50).astype(np.int64)
        r, c = np.divmod(flat, s.n_chains)
        assert np.array_equal(s.validation(50).numpy(), full[s.n_train_rows + r, c]), path
        assert (s._configs is None) == (max_bytes == 0)
        s.close()
print("ok")
"""


def test_training_data_equal_sample_file_beyond_the_open_file_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_writer, "MERGE_FAN_IN", 10**6)  # keep every commit in its own part
    rng = np.random.default_rng(11)
    w = writer(tmp_path / "one.h5")
    for _ in range(120):
        w.append(rows(rng, 2))
    (tmp_path / "mpi").mkdir()
    view, _ = merged_view(tmp_path / "mpi", 60, seed=12)  # 2 ranks x 60 parts
    assert len(list((tmp_path / "one.h5.parts").iterdir())) == 120
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "one.h5"), str(view)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_in_memory_and_per_batch_reads_give_the_same_stream(tmp_path):
    """Same seed, same batches (signs flipped too) and validation set whether the configurations
    are held in memory or read per batch; the per-batch reader opens each part once."""
    view, _ = merged_view(tmp_path, 4, seed=13)
    streams = [ConfigurationStream(view, (2, 2), torch.Generator().manual_seed(5), 0.25,
                                   max_memory_bytes=m) for m in (1 << 30, 0)]
    for _ in range(10):
        torch.testing.assert_close(streams[0].batch(16), streams[1].batch(16), rtol=0, atol=0)
    torch.testing.assert_close(streams[0].validation(), streams[1].validation(), rtol=0, atol=0)
    assert streams[1]._reader is not None and streams[1]._reader.opens == 8  # 4 parts x 2 ranks
    sf = SampleFile(view)
    assert streams[0].n_train_rows + streams[0].n_val_rows == sf.n_saved
    assert streams[0].n_chains == sf.n_chains == 6
