"""Imports point one way: every module under lattice_flows/ imports only its own layer or lower
ones, and training and mcmc never import each other (the layer table below).

Layers, low to high (a module belongs to the layer of its longest listed prefix)::

    theory      the action and its parametrisations; knows nothing else
    base        config, logging, devices, MPI world, signals, faults, progress, allocator
    io          files: HDF5 samples, checkpoints, locks, run folders, exports
    numerics    statistics, weights, observables, independence Metropolis
    flows       the flow, its file (flowfile) and its quality figures
    runtime     the run layer: seeds, resume rules, per-rank files, row buffer
    samplers    training | mcmc (siblings: no edge between them)
    application pipeline, analysis
    api         lattice_flows.api and the package itself (``lattice_flows.<name>``, lazy)
    cli         the command line

Every ``import`` and ``from ... import`` is read with :mod:`ast`, at module level and inside
functions (lazy imports count too). A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lattice_flows"

ROOT = "lattice_flows"  # the package __init__: a layer of its own name only, not a prefix

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("theory", ("lattice_flows.theory",)),
    ("base", ("lattice_flows._version", "lattice_flows.config", "lattice_flows.logs", "lattice_flows.devices",
              "lattice_flows.distributed", "lattice_flows.signals", "lattice_flows.faults",
              "lattice_flows.progress", "lattice_flows.malloc", "lattice_flows.compiled")),
    ("io", ("lattice_flows.io",)),
    ("numerics", ("lattice_flows.estimates", "lattice_flows.weights", "lattice_flows.observables",
                  "lattice_flows.metropolis", "lattice_flows.pareto")),
    ("flows", ("lattice_flows.flows",)),
    ("runtime", ("lattice_flows.runtime",)),
    ("samplers", ("lattice_flows.training", "lattice_flows.mcmc")),
    ("application", ("lattice_flows.pipeline", "lattice_flows.tables", "lattice_flows.file_weights",
                     "lattice_flows.comparison", "lattice_flows.table_format")),
    # the package itself (its API names load lazily from lattice_flows.api); matched exactly
    ("api", ("lattice_flows.api", ROOT)),
    ("cli", ("lattice_flows.cli", "lattice_flows.__main__")),
]
#: pairs of one layer that must not import each other
SIBLINGS = (("lattice_flows.training", "lattice_flows.mcmc"),)


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name of every module of the package at ``root`` (``__init__`` = the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _prefix(name: str, prefixes) -> str | None:
    best = [p for p in prefixes if name == p or (p != ROOT and name.startswith(p + "."))]
    return max(best, key=len) if best else None


def layer_of(name: str) -> int | None:
    """Index of the layer of module ``name`` (longest listed prefix), None if unlisted."""
    owner = _prefix(name, [p for _, ps in LAYERS for p in ps])
    if owner is None:
        return None
    return next(i for i, (_, ps) in enumerate(LAYERS) if owner in ps)


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported package module) of every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lattice_flows"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "lattice_flows":
                continue
            # `from pkg import submodule` imports the submodule; `from mod import a, b` is one edge
            targets = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
            out += [(node.lineno, t) for t in sorted(targets)]
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    """Every back edge, sibling edge and unlisted module of the package at ``root``."""
    modules = module_names(root)
    known = set(modules)
    bad = []
    for name, path in modules.items():
        own = layer_of(name)
        where = f"{path.relative_to(root.parent)}"
        if own is None:
            bad.append(f"{where}: module {name} has no layer in tests/unit/test_import_layers.py")
            continue
        for line, target in imports_of(name, path, known):
            theirs = layer_of(target)
            if theirs is None:
                continue  # reported as an unlisted module itself
            if theirs > own:
                bad.append(f"{where}:{line}: back edge {name} ({LAYERS[own][0]}) -> {target} "
                           f"({LAYERS[theirs][0]})")
            for a, b in SIBLINGS:
                for x, y in ((a, b), (b, a)):
                    if _prefix(name, [x]) and _prefix(target, [y]):
                        bad.append(f"{where}:{line}: sibling edge {name} -> {target} "
                                   f"({x.split('.')[-1]} and {y.split('.')[-1]} must not import "
                                   "each other)")
    return bad


def test_no_import_runs_back_up_the_layers():
    bad = violations()
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_every_listed_prefix_exists():
    """A layer entry for a module that is gone would hide the next one of that name."""
    known = set(module_names(PACKAGE))
    missing = [p for _, ps in LAYERS for p in ps if p not in known]
    assert not missing, missing


@pytest.mark.parametrize("source, expected", [
    ("from lattice_flows.training.trainer import train_flow\n", "back edge lattice_flows.flows.bad (flows) -> lattice_flows.training.trainer"),
    ("def f():\n    import lattice_flows.mcmc.hmc_run\n", "back edge lattice_flows.flows.bad (flows) -> lattice_flows.mcmc.hmc_run"),
    ("from lattice_flows import pipeline as p\n", "back edge lattice_flows.flows.bad (flows) -> lattice_flows.pipeline"),
    ("from ..training import trainer\n", "back edge lattice_flows.flows.bad (flows) -> lattice_flows.training.trainer"),
])
def test_the_check_finds_a_back_edge(tmp_path, source, expected):
    """The checker itself: a copy of the package with one bad import (top level, lazy, `from
    package import module`, relative) fails with the module, line and edge named."""
    import shutil

    root = tmp_path / "lattice_flows"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "flows" / "bad.py").write_text(source)
    bad = violations(root)
    assert len(bad) == 1 and expected in bad[0] and "flows/bad.py:" in bad[0], bad


def test_the_check_finds_a_sibling_edge(tmp_path):
    import shutil

    root = tmp_path / "lattice_flows"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "mcmc" / "bad.py").write_text("x = 1\n\n\ndef f():\n    from lattice_flows.training import trainer\n")
    bad = violations(root)
    assert bad == ["lattice_flows/mcmc/bad.py:5: sibling edge lattice_flows.mcmc.bad -> "
                   "lattice_flows.training.trainer (mcmc and training must not import each other)"], bad
