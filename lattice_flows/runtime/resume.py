"""Resume rules of a run folder: which config changes a resumed run may bring.

A production run (HMC or flow chain) keeps its state in a run folder::

    config.yaml        resolved config with provenance header
    <kind>.h5          the samples (lattice_flows.io.sample_format layout)
    <kind>.ckpt        the last checkpoint (atomic), written right after each committed chunk
    .lock              held while a process writes the folder

Resume rule: a rerun loads the checkpoint, truncates the sample file to the rows the checkpoint
covers, restores RNG and chain states, and continues; the data then equal those of an
uninterrupted run element for element (same device, same thread count). A training run resumes
from ``train.ckpt`` the same way. :func:`check_resumable` refuses a config that would mix two runs.
"""

from __future__ import annotations

from pathlib import Path

from lattice_flows.config import Config, ConfigError
from lattice_flows.io.runfolder import STAGES, diff_configs, read_run_config

#: config keys that may change between a run and its resumption
RESUMABLE_CHANGES = {
    "hmc.n_traj", "sample.n_samples", "output.dir", "output.chunk_rows",
    "train.steps", "train.time_budget", "train.eval_samples", "train.eval_batch_size",
    "train.log_every", "train.checkpoint_every", "train.init_from_missing",
}

PHYSICS_KEYS = ("lattice", "action", "seed", "dtype")


def check_resumable(run_dir: Path, cfg: Config, stage_sections: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run folder whose stored config differs in a key that matters:
    the physics (lattice, couplings, seed, dtype) or the sections of the running stage
    (e.g. ``("hmc",)``), except the keys in :data:`RESUMABLE_CHANGES`. The stored config is
    the running stage's own record (``config.<stage>[.<mode>].yaml``, the last section named in
    ``stage_sections``), so other stages and modes run in the same folder in between do not count."""
    stage = stage_sections[-1] if stage_sections and stage_sections[-1] in STAGES else None
    old = read_run_config(run_dir, stage, cfg)
    if old is None:
        return
    watched = PHYSICS_KEYS + tuple(stage_sections)
    changed = [
        k for k in diff_configs(old.to_dict(), cfg.to_dict())
        if k not in RESUMABLE_CHANGES and k.split(".")[0] in watched
    ]
    if any(k.startswith("action.") for k in changed):
        same = (old.action.m2, old.action.lam) == (cfg.action.m2, cfg.action.lam)
        changed = [k for k in changed if not k.startswith("action.")] + ([] if same else ["action"])
    old_sections = old.to_dict()
    # a stage whose section was absent before starts fresh in this folder: nothing to mix
    changed = [k for k in changed if k.split(".")[0] in PHYSICS_KEYS or k.split(".")[0] in old_sections]
    if changed:
        raise ConfigError(
            f"{run_dir}: this run folder was started with a different config "
            f"(changed: {', '.join(changed)}). Resuming would mix two runs; use a new "
            "output.dir (e.g. --set output.dir=...) or restore the old values."
        )
