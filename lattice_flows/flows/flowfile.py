"""The trained flow's file ``flow.pt``: what it holds, how it is written and read back.

``flow.pt`` (written by the trainer with :func:`lattice_flows.io.checkpoint.save_checkpoint`,
read with ``weights_only=True``) is a dict::

    kind             "flow"
    package_version  lattice_flows.__version__ of the writer
    state_dict       the weights (CPU tensors)
    flow_config      the ``flow`` section of the config (rebuilds the architecture)
    lattice_shape    the lattice it was trained on
    m2, lam          the couplings it was trained at

The conv flow is size-agnostic: :func:`load_flow` rebuilds it for any lattice of the same
dimension. :func:`load_flow_weights` also reads the weights of a training checkpoint
(``train.ckpt``, kind "train", weights under ``model``). Couplings: docs/conventions.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lattice_flows._version import __version__
from lattice_flows.config import Config, FlowConfig
from lattice_flows.flows.flow import Flow, build_flow
from lattice_flows.io.checkpoint import CheckpointError, load_checkpoint
from lattice_flows.logs import log


def cpu_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """A detached CPU copy of a state dict (tensors cloned; extra state such as floats kept)."""
    return {k: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
            for k, v in module.state_dict().items()}


def flow_state(flow: Flow, cfg: Config) -> dict[str, Any]:
    """The content of ``flow.pt``: weights plus what is needed to rebuild the flow."""
    assert cfg.flow is not None
    return {
        "kind": "flow",
        "package_version": __version__,
        "state_dict": cpu_state_dict(flow),
        "flow_config": cfg.to_dict()["flow"],
        "lattice_shape": list(cfg.lattice.shape),
        "m2": cfg.action.m2,
        "lam": cfg.action.lam,
    }


def load_flow_weights(flow: Flow, path: str | Path) -> dict[str, Any]:
    """Load weights from ``flow.pt`` or ``train.ckpt`` into ``flow`` (any lattice size).

    Refused with the path and the reason when the architecture differs.
    """
    state = load_checkpoint(path)
    if state.get("kind") not in ("flow", "train"):
        raise CheckpointError(f"{path}: a '{state.get('kind')}' checkpoint, not a flow.")
    sd = state["state_dict"] if state["kind"] == "flow" else state["model"]
    own = flow.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    wrong = sorted(
        k for k in set(own) & set(sd)
        if isinstance(own[k], torch.Tensor)
        and (not isinstance(sd[k], torch.Tensor) or tuple(own[k].shape) != tuple(sd[k].shape))
    )
    if missing or extra or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("shape differs", wrong))
            if keys
        )
        raise CheckpointError(
            f"{path}: the checkpoint's flow architecture differs from the config's flow section "
            f"({detail})."
        )
    flow.load_state_dict(sd)
    return state


def load_flow(path: str | Path, lattice_shape: tuple[int, ...], device, dtype,
              expect_couplings: tuple[float, float] | None = None) -> Flow:
    """Rebuild a trained flow from ``flow.pt`` (architecture stored in the file) for
    ``lattice_shape`` (the conv flow is size-agnostic; d must match)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no trained flow here; run 'lattice-flows train' first or set sample.flow."
        )
    state = load_checkpoint(path)
    if state.get("kind") != "flow":
        raise CheckpointError(f"{path}: a '{state.get('kind')}' checkpoint, not a flow (flow.pt).")
    fc = dict(state["flow_config"])
    fc["hidden_channels"] = tuple(fc["hidden_channels"])
    if "zero_mode_widths" in fc:  # files written before the key existed: the default widths
        fc["zero_mode_widths"] = tuple(fc["zero_mode_widths"])
    trained_shape = tuple(state["lattice_shape"])
    if len(trained_shape) != len(lattice_shape):
        raise CheckpointError(
            f"{path}: flow trained on a {len(trained_shape)}-d lattice {trained_shape}, cannot sample "
            f"a {len(lattice_shape)}-d lattice {tuple(lattice_shape)}."
        )
    flow = build_flow(FlowConfig(**fc), tuple(lattice_shape), state.get("m2"))
    load_flow_weights(flow, path)
    if expect_couplings is not None and (state.get("m2"), state.get("lam")) != expect_couplings:
        log.warning(
            "flow %s was trained at m2=%s, lam=%s; sampling m2=%s, lam=%s (still exact: the "
            "accept/reject corrects for it, at some cost in acceptance)", path, state.get("m2"),
            state.get("lam"), *expect_couplings,
        )
    return flow.to(device=device, dtype=dtype).eval()
