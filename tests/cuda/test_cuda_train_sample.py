"""A short train -> sample -> resume on the device, through the CLI in real processes.

``device: cuda`` in the config (the run refuses to start without CUDA). Training is SIGKILLed at
its second checkpoint (``LATTICE_FLOWS_KILL_AT``, lattice_flows/faults.py) and rerun; it must end
with the weights and training log of an uninterrupted run, bit for bit; the same for sampling,
killed at its first checkpoint. Bitwise resumption on a GPU needs kernels that are
deterministic from run to run (some cuDNN/cuBLAS backward kernels are not by default), so the
processes run with ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
CUBLAS_WORKSPACE_CONFIG: what is tested is the package's resume (RNG streams of the device,
optimizer state, checkpoints), not the GPU's summation order. An op without a deterministic
kernel warns (instead of stopping the run); a failed comparison lists those warnings. The flow
trained on the GPU must load and sample on the CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from lattice_flows.api import load_flow
from tests.conftest import (assert_same_flow, assert_same_samples, assert_same_train_log,
                            check_run_folder, write_config)

_RUN = ("import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
        "from lattice_flows.cli import main; sys.exit(main(sys.argv[1:]))")


_STDERR: list[str] = []  # of every process of the test: the nondeterminism warnings


def _nondeterministic_ops() -> str:
    lines = {ln.strip() for err in _STDERR for ln in err.splitlines()
             if "deterministic" in ln and "Warning" in ln}
    return "\n".join(sorted(lines)) or "none"


def _cli(cmd: str, cfg: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    env.pop("LATTICE_FLOWS_KILL_AT", None)
    if kill_at:
        env["LATTICE_FLOWS_KILL_AT"] = kill_at
    proc = subprocess.run([sys.executable, "-c", _RUN, cmd, str(cfg), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    _STDERR.append(proc.stderr)
    return proc


def _raw(out: Path, device: str, flow_pt: Path | None = None) -> dict:
    raw = {
        "lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}, "seed": 5,
        "device": device,
        "flow": {"n_layers": 2, "hidden_channels": [8], "kernel_size": 3,
                 "fourier_layer": True},
        "train": {"steps": 60, "batch_size": 32, "lr": 3e-3, "log_every": 10,
                  "checkpoint_every": 20, "eval_samples": 256},
        "sample": {"n_chains": 4, "n_samples": 600, "batch_size": 64, "save_every": 3},
        "output": {"dir": str(out), "chunk_rows": 30},
    }
    if flow_pt is not None:
        raw["sample"]["flow"] = str(flow_pt)
    return raw


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def _killed_then_resumed(cmd: str, raw: dict, tmp_path: Path, kill_at: str) -> Path:
    run = tmp_path / f"{cmd}-killed"
    cfg = write_config(tmp_path / f"{cmd}-killed.yaml", {**raw, "output": {**raw["output"],
                                                                          "dir": str(run)}})
    proc = _cli(cmd, cfg, kill_at=kill_at)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at}:\n{proc.stderr}"
    check_run_folder(run)
    _ok(_cli(cmd, cfg))
    return run


def test_train_sample_resume_on_device(tmp_path, device_slow_twin):
    dev = device_slow_twin.type
    _STDERR.clear()
    ref = tmp_path / "ref"
    _ok(_cli("train", write_config(tmp_path / "ref.yaml", _raw(ref, dev))))
    resumed = _killed_then_resumed("train", _raw(ref, dev), tmp_path, "checkpoint:2")
    try:
        assert_same_flow(ref / "flow.pt", resumed / "flow.pt")
        assert_same_train_log(ref / "train.h5", resumed / "train.h5",
                              ("step", "loss", "ess", "grad_norm", "lr"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nops without a deterministic kernel on {dev}: "
                             f"{_nondeterministic_ops()}") from exc

    flow = load_flow(ref / "flow.pt")  # trained on the device, read on the CPU
    assert all(p.device.type == "cpu" for p in flow.parameters())
    with torch.no_grad():
        phi, log_q = flow.sample(16, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(flow.log_prob(phi), log_q, atol=1e-4, rtol=0)

    flow_pt = ref / "flow.pt"
    sref = tmp_path / "sref"
    _ok(_cli("sample", write_config(tmp_path / "sref.yaml", _raw(sref, dev, flow_pt))))
    sres = _killed_then_resumed("sample", _raw(sref, dev, flow_pt), tmp_path, "checkpoint:1")
    try:
        assert_same_samples(sref / "samples.h5", sres / "samples.h5")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nops without a deterministic kernel on {dev}: "
                             f"{_nondeterministic_ops()}") from exc
