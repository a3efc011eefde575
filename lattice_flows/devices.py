"""Device and dtype selection: CPU by default, CUDA when present and asked for (``auto``).

:func:`ieee_float32` is the scope in which float32 convolutions and matmuls run in IEEE float32.

TF32: on Ampere and later GPUs cuDNN convolutions run float32 in TF32 (10-bit mantissa) by
default (``torch.backends.cudnn.conv.fp32_precision == 'tf32'``), adding ~1e-3 relative noise to
every conditioner output. Sampling stays exact with it (log q comes from the same forward pass
as phi), but a log density recomputed through the inverse would not match; the flow evaluates
its inverse and ``log_prob`` inside :func:`ieee_float32` (lattice_flows/flows/flow.py).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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


#: (backend, op) of the ``fp32_precision`` switches (torch >= 2.9) that :func:`ieee_float32`
#: sets: cuDNN and oneDNN convolutions, cuBLAS and oneDNN matmuls
_PRECISION_SWITCHES = (
    ("cudnn", "conv"), ("cuda", "matmul"), ("mkldnn", "conv"), ("mkldnn", "matmul"),
)


def _precision_switches() -> list:
    """The ``torch.backends.<backend>.<op>`` objects with an ``fp32_precision`` in this torch."""
    found = []
    for backend, op in _PRECISION_SWITCHES:
        switch = getattr(getattr(torch.backends, backend, None), op, None)
        if switch is not None and hasattr(switch, "fp32_precision"):
            found.append(switch)
    return found


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Run float32 convolutions and matmuls in IEEE float32 (no TF32) inside; restore after.

    With torch's ``fp32_precision`` API (torch >= 2.9; torch 2.13 here) it sets
    ``torch.backends.cudnn.conv``, ``cuda.matmul``, ``mkldnn.conv`` and ``mkldnn.matmul``
    ``.fp32_precision = 'ieee'`` and puts the previous values back on exit, also after an
    exception; with an older torch, the legacy ``torch.backends.cudnn.allow_tf32`` and
    ``torch.backends.cuda.matmul.allow_tf32`` switches instead. Only one of the two APIs is
    touched (torch raises when code reads the legacy flags after a mix, and warns on neither
    here), so inside this scope do not read the legacy ``allow_tf32`` flags. Nests; on the CPU
    it changes no numbers (float32 is IEEE there unless a user asked oneDNN for bf16/tf32).
    """
    switches = _precision_switches()
    if switches:
        saved = [s.fp32_precision for s in switches]
        try:
            for s in switches:
                s.fp32_precision = "ieee"
            yield
        finally:
            for s, value in zip(switches, saved):
                s.fp32_precision = value
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul  # legacy API
    saved_legacy = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved_legacy
