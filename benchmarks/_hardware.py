"""Shared by the benchmark scripts: the hardware line of their output.

:func:`hardware` names the CPU model and its vector capability
(``torch.backends.cpu.get_cpu_capability()``: AVX2 / AVX512 / ...), the GPUs where there are
any, torch's version and build, and the thread counts; :func:`hardware_line` prints it in one
line. Every benchmark reports it beside its figures, so that a figure is read with the machine
that produced it.
"""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The 'model name' of /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpus() -> list[str]:
    """Names of the visible CUDA devices (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def hardware() -> dict:
    """CPU model and capability, CPU cores visible to the process, GPUs, torch and threads."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpus(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def hardware_line(hw: dict | None = None) -> str:
    """One line: ``CPU <model> (<capability>), <n> cores visible, GPU <names>|none, torch <v>
    (CUDA <v>), <t> threads``."""
    hw = hardware() if hw is None else hw
    gpu = ", ".join(hw["gpus"]) if hw.get("gpus") else "none"
    cuda = f", CUDA {hw['cuda']}" if hw.get("cuda") else ""
    return (f"CPU {hw['cpu']} ({hw['cpu_capability']}), {hw['cpus_visible']} cores visible, "
            f"GPU {gpu}, torch {hw['torch']}{cuda}, {hw['threads']} torch threads "
            f"(OMP_NUM_THREADS={hw['omp_num_threads']})")


if __name__ == "__main__":
    print(hardware_line())
