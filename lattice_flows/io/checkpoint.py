"""Atomic checkpoints: ``torch.save`` to a temporary file, fsync, then rename over the old one.

Loading uses ``torch.load(..., weights_only=True)``: a checkpoint from elsewhere never runs
code. Contents must therefore be tensors, numbers, strings, lists, tuples and dicts.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from lattice_flows.io.atomic import write_atomic


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the reason."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically: a reader sees the old or the new checkpoint, never half."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(Path(path), buf.getbuffer(), "checkpoint", torn=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) onto the CPU."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint.") from None
    except Exception as exc:  # unpickling errors of many kinds
        raise CheckpointError(f"{path}: not a readable lattice_flows checkpoint ({exc}).") from None
    if not isinstance(state, dict) or "kind" not in state:
        raise CheckpointError(f"{path}: not a lattice_flows checkpoint (no 'kind' entry).")
    return state
