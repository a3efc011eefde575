"""The README's "Python API" example, run as written (real training, HMC, sampling and HDF5
files on an 8x8 lattice) in a folder holding a copy of configs/; then what it printed is
checked: flow and HMC agree on |M| and M^2 within their Gamma-method errors."""

from __future__ import annotations

import contextlib
import io
import re
import shutil

import pytest

from tests.integration.doc_commands import REPO


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section must hold exactly one python block"
    return blocks[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_python_block(), "README.md:Python API", "exec"), {"__name__": "readme"})
    printed = out.getvalue()
    for name in ("hmc.h5", "flow.pt", "samples.h5"):
        assert (tmp_path / "runs" / "notebook" / name).exists(), name
    assert re.search(r"trained 500 steps: ESS/N 0\.\d\d", printed), printed
    # |M| and M^2 of flow and HMC agree: |z| < 3.2 for each (Sidak over 2 at 0.3 % family-wise)
    for name in ("absM", "M2"):
        m = re.search(rf"{name}: flow ([\d.]+) ± ([\d.]+) .*HMC ([\d.]+) ± ([\d.]+)", printed)
        assert m, printed
        f, df, h, dh = map(float, m.groups())
        assert abs(f - h) / (df**2 + dh**2) ** 0.5 < 3.2, printed


def test_package_import_is_cheap_and_names_load_on_use():
    """`import lattice_flows` loads no torch; an API name loads lattice_flows.api on first use."""
    import subprocess
    import sys

    code = ("import sys, lattice_flows as lf; assert 'torch' not in sys.modules, 'torch imported'; "
            "f = lf.load_config; assert 'torch' in sys.modules; print(lf.__version__, f.__module__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0.1.0", "lattice_flows.api"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import lattice_flows

        lattice_flows.nothing  # noqa: B018
