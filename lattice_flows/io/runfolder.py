"""Self-describing run folders: the resolved config with a provenance header.

Every run folder holds ``config.yaml`` = the resolved config (both coupling parametrizations)
preceded by comment lines with the package version, git commit, seed, host, MPI size and time:
the provenance record of the latest command that wrote the folder. Next to it each stage keeps
its own resolved record, ``config.<stage>.yaml`` (``config.train.yaml``, ``config.hmc.yaml``,
``config.sample.mcmc.yaml``, ``config.sample.importance.yaml``): the resume check of a stage
compares against that record, so that e.g. ``sample --set sample.mode=importance`` in between
does not block extending the Metropolis chain of ``samples.h5`` afterwards.
The same provenance goes into every HDF5 file's attributes.
"""

from __future__ import annotations

import datetime as _dt
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

from lattice_flows._version import __version__
from lattice_flows.config import Config, ConfigError, config_from_yaml_text
from lattice_flows.io.atomic import write_atomic


def git_commit() -> str:
    """The git commit of the installed package source, or '' when not in a git checkout."""
    src = Path(__file__).resolve().parents[1]  # the lattice_flows package folder
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    )
    if dirty.returncode == 0 and dirty.stdout.strip():
        commit += "-dirty"
    return commit


def provenance(cfg: Config, mpi_size: int = 1, rank: int = 0) -> dict[str, Any]:
    """Metadata recorded in config.yaml headers and HDF5 attributes."""
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "seed": cfg.seed,
        "hostname": socket.gethostname(),
        "mpi_size": mpi_size,
        "rank": rank,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


STAGES = ("hmc", "train", "sample")


def stage_record_name(stage: str, cfg: Config) -> str:
    """File name of the per-stage resolved record: ``config.<stage>.yaml``, and for flow
    production ``config.sample.<mode>.yaml`` (the two modes write different files)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    if stage == "sample" and cfg.sample is not None:
        return f"config.sample.{cfg.sample.mode}.yaml"
    return f"config.{stage}.yaml"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :mod:`lattice_flows.io.atomic`: a temporary file,
    fsync, rename; a reader or a rerun after a kill sees the old or the new text, never a
    truncated one. Storage errors name the path and the reason."""
    # tests: a kill at the fault point leaves the old file and a complete .tmp
    return write_atomic(path, text, f"text.{path.name}")


def write_config(run_dir: Path, cfg: Config, prov: dict[str, Any], stage: str | None = None) -> Path:
    """Write ``run_dir/config.yaml`` with a provenance header (atomically) and, for ``stage``,
    the same text as that stage's record :func:`stage_record_name`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {k}: {v}\n" for k, v in prov.items())
    text = "# lattice_flows resolved config\n" + header + config_yaml(cfg)
    if stage is not None:
        write_text_atomic(run_dir / stage_record_name(stage, cfg), text)
    return write_text_atomic(run_dir / "config.yaml", text)


def read_run_config(run_dir: Path, stage: str | None = None, cfg: Config | None = None) -> Config | None:
    """The resolved config stored in a run folder, or None if there is none.

    With ``stage`` (and the running ``cfg``, which selects the sample mode) the record of that
    stage; a folder written before per-stage records existed falls back to ``config.yaml``."""
    path = run_dir / "config.yaml"
    if stage is not None and cfg is not None:
        record = run_dir / stage_record_name(stage, cfg)
        if record.exists():
            path = record
    if not path.exists():
        return None
    try:
        return config_from_yaml_text(path.read_text())
    except (ConfigError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: the stored config of this run folder is invalid: {exc}") from None


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        name = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, name + "."))
        elif a != b:
            out.append(name)
    return out
