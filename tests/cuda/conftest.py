"""Device parameters of the CUDA tests: each test runs on ``cuda`` where CUDA exists (skipped
cleanly elsewhere) and on ``cpu``, its twin, which checks the test itself on any machine.

``device``: the cuda run and a CPU twin that runs in every suite (the cheap tests);
``device_slow_twin``: the cuda run and a CPU twin marked ``slow`` (the tests whose CPU versions
already exist in tests/integration and cost seconds: run them with ``pytest -m slow tests/cuda``).
On a GPU machine ``benchmarks/device_check.sh`` runs ``pytest tests/cuda``.
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="CUDA is not available on this machine (tests/cuda run on a GPU: "
    "benchmarks/device_check.sh)")


@pytest.fixture(params=[pytest.param("cuda", marks=needs_cuda), "cpu"])
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[pytest.param("cuda", marks=needs_cuda),
                        pytest.param("cpu", marks=pytest.mark.slow)])
def device_slow_twin(request) -> torch.device:
    return torch.device(request.param)
