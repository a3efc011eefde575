"""io/atomic.py write_atomic: the one "temporary file, fault point, commit" of the package, run in
real processes killed by the real fault-injection mechanism (lattice_flows/faults.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lattice_flows.io.atomic import StorageError, tmp_path_of, write_atomic

# larger than Python's write buffer, so the first half of a torn write reaches the file
NEW = bytes(range(256)) * 4096 + b"tail"
OLD = b"the committed version\n"


def _killed_write(path: Path, torn: bool) -> subprocess.CompletedProcess:
    script = (
        "import sys\nfrom pathlib import Path\nfrom lattice_flows.io.atomic import write_atomic\n"
        f"write_atomic(Path({str(path)!r}), Path({str(path) + '.new'!r}).read_bytes(), 'unit.point', "
        f"torn={torn})\nsys.exit(3)\n"
    )
    env = {**os.environ, "LATTICE_FLOWS_KILL_AT": "unit.point:1"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize("data", [NEW, memoryview(NEW), "ünïcode text\n"])
def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path, data):
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    assert write_atomic(path, data, "unit.unset") == path
    expect = data.encode() if isinstance(data, str) else bytes(data)
    assert path.read_bytes() == expect
    assert not tmp_path_of(path).exists()


@pytest.mark.parametrize("torn", [True, False])
def test_a_kill_at_the_fault_point_leaves_the_old_file(tmp_path, torn):
    """torn: the kill comes halfway through the write (a torn .tmp); else after the whole write,
    before the rename (a complete .tmp). The committed file is the old one either way."""
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    Path(str(path) + ".new").write_bytes(NEW)
    proc = _killed_write(path, torn)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.read_bytes() == OLD
    assert tmp_path_of(path).read_bytes() == (NEW[: len(NEW) // 2] if torn else NEW)


def test_a_failed_write_names_the_path_and_removes_the_temporary(tmp_path):
    path = tmp_path / "target"
    path.mkdir()
    (path / "occupied").write_text("x")  # a non-empty folder cannot be renamed over
    with pytest.raises(StorageError, match=str(path)):
        write_atomic(path, NEW, "unit.unset", torn=True)
    assert not tmp_path_of(path).exists()
    with pytest.raises(StorageError, match="no-such-folder"):
        write_atomic(tmp_path / "no-such-folder" / "f", "text")
