"""What a composite checkpoint must match to resume: kind, chains x lattice, kernel settings.

The resume rules of :mod:`lattice_flows.runtime.resume` watch the ``sample`` section; the keys
that define the sweep's kernels (``sample.flow_steps``, ``sample.hmc_trajectories`` and the
``hmc`` keys of :data:`HMC_KEYS`) are stored in every checkpoint of
:mod:`lattice_flows.mcmc.composite_run` (:func:`kernel_settings`) and a resume with other values
is refused (:func:`check_composite_checkpoint`), as resuming would mix two samplers.
"""

from __future__ import annotations

from pathlib import Path

from lattice_flows.config import Config, ConfigError

KIND = "composite"
#: hmc keys that define the composite sweep's HMC kernel (a resume with others is refused)
HMC_KEYS = ("n_therm", "n_steps", "step_size", "target_acceptance", "integrator", "jitter",
            "dtype", "fourier_acceleration", "fa_kernel", "fa_mu2", "trajectory_length")


def kernel_settings(cfg: Config) -> dict:
    """The settings that define the sweep's kernels, keyed by their config names."""
    sc, h = cfg.sample, cfg.hmc
    return {"sample.flow_steps": sc.flow_steps, "sample.hmc_trajectories": sc.hmc_trajectories,
            **{f"hmc.{name}": getattr(h, name) for name in HMC_KEYS}}


def check_therm_shape(state: dict | None, ckpt_path: Path, n_chains: int,
                      shape: tuple[int, ...]) -> None:
    """Refuse a thermalisation checkpoint whose chains x lattice is not (n_chains, *shape)."""
    if state is not None and tuple(state["phi"].shape) != (n_chains, *shape):
        raise ConfigError(
            f"{ckpt_path}: thermalisation checkpoint of chains x lattice "
            f"{tuple(state['phi'].shape)}, the config asks for "
            f"{(n_chains, *shape)}; use a new output.dir."
        )


def check_composite_checkpoint(state: dict, ckpt_path: Path, cfg: Config) -> None:
    """Refuse a checkpoint of another kind, lattice, number of chains or kernel settings."""
    n_chains, shape = cfg.sample.n_chains, tuple(cfg.lattice.shape)
    if state.get("kind") != KIND or tuple(state["phi"].shape) != (n_chains, *shape):
        raise ConfigError(
            f"{ckpt_path}: checkpoint does not match the config (kind {state.get('kind')!r}, "
            f"chains x lattice {tuple(state['phi'].shape)}); use a new output.dir."
        )
    old, new = state["kernel"], kernel_settings(cfg)
    changed = [k for k in new if old.get(k) != new[k]]
    if changed:
        raise ConfigError(
            f"{ckpt_path}: this composite run was started with other kernel settings "
            f"(changed: {', '.join(f'{k} {old.get(k)!r} -> {new[k]!r}' for k in changed)}); "
            "resuming would mix two samplers. Restore the old values or use a new output.dir."
        )
