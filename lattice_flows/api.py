"""The Python API: what a physicist calls from a notebook or a script.

Every name here is also reachable as ``lattice_flows.<name>`` (loaded on first use, so
``import lattice_flows`` stays cheap and imports no torch). The functions are the library
functions the CLI runs, with the same run folders and files (docs/conventions.md for the
physics; README "Python API" for an example)::

    import lattice_flows as lf
    cfg = lf.load_config("configs/quickstart.yaml", {"output.dir": "runs/nb", "train.steps": 200})
    lf.hmc(cfg); lf.train(cfg); lf.sample(cfg)
    table = lf.analyze("runs/nb/samples.h5")          # Gamma-method rows, one per observable
    print(table["M2"].est.value, table["M2"].est.error, table["M2"].est.tau_int)
    flow = lf.load_flow("runs/nb/flow.pt", (16, 16))   # a torch.nn.Module: flow.sample(n)

Unlike the CLI, the API leaves the process's allocator alone (``lattice_flows.malloc``) and
shows no progress bars unless asked (``progress=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lattice_flows.tables import Rows, analyze_samples
from lattice_flows.config import Config, ConfigError, apply_overrides, config_from_dict, load_raw
from lattice_flows.flows.flow import Flow
from lattice_flows.flows.flowfile import load_flow as _load_flow
from lattice_flows.io.checkpoint import CheckpointError, load_checkpoint
from lattice_flows.io.sample_reader import SampleFile
from lattice_flows.mcmc.flow_run import run_sample
from lattice_flows.mcmc.hmc_run import run_hmc
from lattice_flows.training.train_state import TrainResult
from lattice_flows.training.trainer import train_flow

__all__ = ["Config", "ConfigError", "SampleFile", "analyze", "hmc", "load_config", "load_flow",
           "open_samples", "sample", "train"]


def _override_list(overrides: Mapping[str, Any] | list[str] | None) -> list[str]:
    """``{"hmc.n_traj": 500}`` or ``["hmc.n_traj=500"]`` as the CLI's ``--set`` strings."""
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        import yaml

        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in overrides.items()]
    return list(overrides)


def load_config(source: str | Path | Mapping[str, Any],
                overrides: Mapping[str, Any] | list[str] | None = None) -> Config:
    """A validated :class:`Config` from a YAML file (read with ``yaml.safe_load``) or from a
    mapping shaped like one, with ``overrides`` applied like the CLI's ``--set KEY=VALUE``
    (a mapping ``{"train.steps": 200}`` or a list ``["train.steps=200"]``). A bad key or value
    raises :class:`ConfigError` naming the key, the value and what is allowed."""
    raw = dict(source) if isinstance(source, Mapping) else load_raw(source)
    return config_from_dict(apply_overrides(raw, _override_list(overrides)))


def hmc(cfg: Config, run_dir: str | Path | None = None, progress: bool = False) -> Path:
    """Run (resume, or extend) the config's HMC production (``lattice-flows hmc``); returns the
    path of ``hmc.h5`` in ``run_dir`` (default ``cfg.output.dir``)."""
    return run_hmc(cfg, run_dir, progress=progress)


def train(cfg: Config, run_dir: str | Path | None = None, progress: bool = False) -> TrainResult:
    """Train (or resume) the config's flow (``lattice-flows train``); ``flow.pt``, ``train.h5``
    and the final ESS/acceptance land in ``run_dir`` (default ``cfg.output.dir``)."""
    return train_flow(cfg, run_dir, progress=progress)


def sample(cfg: Config, run_dir: str | Path | None = None, progress: bool = False) -> Path:
    """Flow production with the trained flow (``lattice-flows sample``: independence Metropolis,
    or importance sampling with ``sample.mode: importance``); returns the sample file path."""
    return run_sample(cfg, run_dir, progress=progress)


def open_samples(path: str | Path) -> SampleFile:
    """Open a sample file (``hmc.h5``, ``samples.h5``, ``importance.h5``) for reading: configs,
    action, accept flags and observables per (row, chain); a foreign or broken file is refused
    with its path and the reason."""
    return SampleFile(path)


def analyze(samples: str | Path | SampleFile, discard: int | None = None) -> Rows:
    """Gamma-method estimates (value, error with autocorrelation, tau_int) of every observable
    of a sample file, like ``lattice-flows analyze``; ``discard`` rows of burn-in (None: the
    default of docs/conventions.md, "Statistics"). Rows are indexable by observable name."""
    sf = samples if isinstance(samples, SampleFile) else SampleFile(samples)
    return analyze_samples(sf, discard)


def load_flow(path: str | Path, lattice_shape: tuple[int, ...] | None = None,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Flow:
    """A trained flow from ``flow.pt`` (architecture and weights stored in the file), built for
    ``lattice_shape`` (default: the lattice it was trained on; the flow is size-agnostic within
    its dimension). ``flow.sample(n)`` returns (phi, log q)."""
    if lattice_shape is None:
        if not Path(path).exists():
            raise CheckpointError(f"{path}: no trained flow here; train one first (lf.train(cfg)).")
        lattice_shape = tuple(load_checkpoint(path)["lattice_shape"])
    return _load_flow(path, tuple(lattice_shape), torch.device(device), dtype)
