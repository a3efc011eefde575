"""docs/architecture.md stays true: its module table lists every module under lattice_flows/
with its layer (tests/unit/test_import_layers.py) and its job, the first line of the module's
docstring, and nothing else. Regenerate the table with

    python tests/unit/test_architecture_doc.py > /tmp/table.md   # paste below "## Modules"
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_layers import LAYERS, PACKAGE, layer_of, module_names  # noqa: E402

DOC = REPO / "docs" / "architecture.md"


def first_docstring_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.strip().splitlines()[0].strip() if doc else ""


def module_table() -> str:
    """| module | layer | job | for every module, in path order (the package's own modules)."""
    lines = ["| module | layer | job |", "|---|---|---|"]
    for name, path in module_names(PACKAGE).items():
        if name.endswith("__main__"):
            job = "`python -m lattice_flows`: the command line"
        else:
            job = first_docstring_line(path).replace("|", "\\|")
        layer = layer_of(name)
        lines.append(f"| `{name}` | {LAYERS[layer][0] if layer is not None else '?'} | {job} |")
    return "\n".join(lines)


def documented_table() -> str:
    text = DOC.read_text()
    section = text.split("## Modules", 1)[1]
    return "\n".join(line for line in section.strip().splitlines() if line.startswith("|"))


def test_every_module_has_a_one_line_job():
    missing = [name for name, path in module_names(PACKAGE).items()
               if not name.endswith("__main__") and not first_docstring_line(path)]
    assert not missing, f"modules without a docstring: {missing}"


def test_architecture_module_table_is_the_code():
    got, want = documented_table(), module_table()
    if got != want:
        import difflib

        diff = "\n".join(difflib.unified_diff(got.splitlines(), want.splitlines(),
                                              "docs/architecture.md", "the code", lineterm=""))
        raise AssertionError("docs/architecture.md's module table differs from the code "
                             f"(regenerate: python {Path(__file__).relative_to(REPO)}):\n{diff}")


if __name__ == "__main__":
    print(module_table())
