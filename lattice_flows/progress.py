"""Progress bars (tqdm) on rank 0 only, and only when stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _NullBar:
    enabled = False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar when ``enabled`` and stderr is a TTY, else a no-op object."""
    if not enabled or not sys.stderr.isatty():
        return _NullBar()
    bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)
    bar.enabled = True
    return bar
