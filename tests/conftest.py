"""Shared fixtures: tiny configs, run folders in tmp dirs, a subprocess runner of the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lattice_flows.io.checkpoint import load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.io.sample_verify import verify_sample_file
from lattice_flows.io.train_log import read_train_log

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(*args: str, check: bool = True, timeout: float = 300, env_extra: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m lattice_flows ARGS`` in a real subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", "lattice_flows", *args], capture_output=True, text=True,
        timeout=timeout, env=env, cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_hmc_raw(out_dir: Path, **hmc) -> dict:
    raw = {
        "lattice": {"shape": [6, 6]},
        "action": {"m2": -4.0, "lam": 8.0},
        "seed": 11,
        "device": "cpu",
        "hmc": {"n_chains": 4, "n_therm": 30, "n_traj": 60, "n_steps": 6, "step_size": "auto",
                "save_every": 2},
        "output": {"dir": str(out_dir), "chunk_rows": 7},
    }
    raw["hmc"].update(hmc)
    return raw


@pytest.fixture
def tiny_hmc_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_hmc_raw(tmp_path / "run"))


def family_sigma(n_checks: int, single: float = 3.0) -> float:
    """z threshold for ``n_checks`` simultaneous comparisons with the family-wise false-alarm
    rate of one ``single``-sigma test (Sidak correction): 3.0 for one check, ~3.55 for seven.
    Keeps statistical tests honest when several observables are compared at once."""
    from scipy.stats import norm

    p_single = 2 * norm.sf(single)
    p_each = 1 - (1 - p_single) ** (1 / n_checks)
    return float(norm.isf(p_each / 2))


def assert_free_field_hmc_exact(sf, shape: tuple[int, ...], m2: float, label: str) -> None:
    """An HMC run of the free field (lam = 0) against the exact lattice results
    (lattice_flows/theory/free_field.py; docs/conventions.md "Exact free-field results"):
    chi2 = 1/(2 m2), <S>/V = 1/2 and G(0, t) for t = 0..L/2, each by its Gamma-method error,
    Sidak-corrected for the number of checks; each error must also be small enough to mean
    something (5 % of the exact value + 1e-3)."""
    from lattice_flows.estimates import gamma_method
    from lattice_flows.theory.free_field import exact_susceptibility, exact_two_point

    G_exact = exact_two_point(shape, m2).numpy()
    G = sf.observable("G")
    checks = {
        "chi2": (sf.observable("chi2"), exact_susceptibility(m2)),
        "action_density": (sf.observable("action_density"), 0.5),
        **{f"G(0,{t})": (G[:, :, 0, t], G_exact[0, t]) for t in range(shape[1] // 2 + 1)},
    }
    z_max = family_sigma(len(checks))
    for name, (data, exact) in checks.items():
        est = gamma_method(data)
        z = (est.value - exact) / est.error
        assert abs(z) < z_max, (
            f"{label} {name}: {est.value:.5g} +- {est.error:.2g} vs {exact:.5g} (z = {z:.2f})")
        assert est.error < 0.05 * abs(exact) + 1e-3, f"{label} {name}: error {est.error} too large"


def sidak_z(alpha: float, n_checks: int) -> float:
    """Two-sided z threshold such that ``n_checks`` independent standard-normal statistics all
    stay below it with probability 1 - ``alpha`` (Sidak: per check 1 - (1 - alpha)^(1/n)).
    ``alpha`` is the family-wise false-alarm probability of a correct code on a new seed; e.g.
    sidak_z(1e-3, 1) = 3.29, sidak_z(1e-3, 6) = 3.76."""
    from scipy.stats import norm

    p_each = 1 - (1 - alpha) ** (1 / n_checks)
    return float(norm.isf(p_each / 2))


@pytest.fixture(autouse=True)
def _detach_lattice_flows_log_handlers():
    """In-process CLI calls attach log handlers to the (captured) stderr of their test; drop
    them afterwards so later tests never write to a closed stream."""
    yield
    import logging

    logger = logging.getLogger("lattice_flows")
    for h in [h for h in logger.handlers if getattr(h, "_lf", False)]:
        logger.removeHandler(h)
        h.close()


# ------------------------------------------------------------------ shared assertions on run outputs


def check_run_folder(run: Path) -> None:
    """Every file a user or a rerun could open is sound."""
    for path in sorted(run.glob("*.h5")):
        if path.name == "train.h5":
            log = read_train_log(path)
            assert all(len(v) == len(log["step"]) for v in log.values()), path
        else:
            assert verify_sample_file(path) == [], path
    for path in list(run.glob("*.ckpt")) + list(run.glob("flow.pt")):
        load_checkpoint(path)


def assert_same_samples(a: Path, b: Path) -> None:
    """Two sample files hold the same committed rows of every dataset, element by element."""
    fa, fb = SampleFile(a), SampleFile(b)
    assert fa.n_saved == fb.n_saved and fa.n_saved > 0
    for get in ([lambda s: s.configs(), lambda s: s.action(), lambda s: s.accepted()]
                + [lambda s, n=n: s.observable(n) for n in fa.observable_names]
                + [lambda s, n=n: s.extra(n) for n in fa.extra_names]):
        np.testing.assert_array_equal(get(fa), get(fb))


def assert_same_flow(a: Path, b: Path) -> None:
    """Two flow checkpoints (flow.pt) hold bit-identical tensors."""
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k


def assert_same_train_log(a: Path, b: Path, keys: tuple[str, ...]) -> None:
    """Two training logs (train.h5) agree exactly in the metrics ``keys``."""
    ha, hb = read_train_log(a), read_train_log(b)
    for k in keys:
        np.testing.assert_array_equal(ha[k], hb[k], err_msg=k)


def wait_for_file(path: Path, proc, timeout: float = 60.0) -> None:
    """Poll until ``path`` exists, the process ``proc`` has exited or ``timeout`` seconds have
    passed (the caller then checks which; a kill/stop test uses it to hit a chosen phase)."""
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
