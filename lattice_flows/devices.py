"""Device and dtype selection: CPU by default, CUDA when present and asked for (``auto``)."""

from __future__ import annotations

import torch

from lattice_flows.config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank mod n_gpus>`` if CUDA is available, else ``cpu``."""
    if name == "cpu":
        return torch.device("cpu")
    if name in ("cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
        if name == "cuda":
            raise ConfigError(
                "config key 'device': value 'cuda' is not allowed on this machine; CUDA is not "
                "available (use 'auto' or 'cpu')."
            )
        return torch.device("cpu")
    raise ConfigError(f"config key 'device': value '{name}' is not allowed; expected auto, cpu, cuda.")


def resolve_dtype(name: str) -> torch.dtype:
    """'float32' or 'float64' as a torch dtype."""
    return {"float32": torch.float32, "float64": torch.float64}[name]
