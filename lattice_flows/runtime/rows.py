"""Rows of a production run collected in memory until a chunk is complete (then one commit)."""

from __future__ import annotations

import numpy as np


class RowBuffer:
    """Collects per-row arrays until a chunk is complete."""

    def __init__(self) -> None:
        self.rows: dict[str, list[np.ndarray]] = {}
        self.n = 0

    def add(self, row: dict[str, np.ndarray]) -> None:
        for k, v in row.items():
            self.rows.setdefault(k, []).append(v)
        self.n += 1

    def take(self) -> dict[str, np.ndarray]:
        out = {k: np.stack(v) for k, v in self.rows.items()}
        self.rows, self.n = {}, 0
        return out
