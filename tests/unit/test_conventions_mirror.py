"""docs/conventions.md mirrors shared/CONVENTIONS.md (the project-wide source) below its header.

The shared folder sits beside the checkout (``../shared``) on the developers' machines and in CI;
a clone without it has nothing to compare against, and the test says so.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIRROR = REPO / "docs" / "conventions.md"
SOURCE = REPO.parent / "shared" / "CONVENTIONS.md"
HEADER_LINES = 4  # title, blank, the two "> Mirror of ..." lines


def test_conventions_mirror_equals_shared_source() -> None:
    if not SOURCE.is_file():
        pytest.skip(f"no shared conventions beside the checkout ({SOURCE})")
    mirror = MIRROR.read_text(encoding="utf-8").splitlines()
    source = SOURCE.read_text(encoding="utf-8").splitlines()
    assert mirror[0] == source[0], "the title line differs"
    assert mirror[2].startswith("> Mirror of `shared/CONVENTIONS.md`")
    assert mirror[HEADER_LINES:] == source[1:], (
        "docs/conventions.md is out of step with shared/CONVENTIONS.md: copy the shared file "
        "below the mirror header"
    )
