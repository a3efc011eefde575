"""Seeds and generators: one config seed, statistically independent streams per rank and purpose.

``derive_seed(seed, *stream)`` hashes the config seed and the stream ids (rank, purpose, step)
with numpy's SeedSequence into a 63-bit seed; each stream then drives its own
``torch.Generator``. The stream ids in use are listed where they are drawn (trainer, hmc_run,
flow_run).
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for stream ``stream`` (e.g. rank, purpose) derived from the config seed
    with numpy's SeedSequence, so that streams are statistically independent."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
