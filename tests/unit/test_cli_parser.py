"""The command line documents itself: every subcommand is named in the cli module docstring and
every argument of every subcommand has a help text."""

from __future__ import annotations

import argparse

import lattice_flows.cli as cli


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_module_docstring_names_every_subcommand():
    names = _subcommands()
    assert len(names) >= 7
    missing = [n for n in names if f"``{n}``" not in cli.__doc__]
    assert not missing, f"lattice_flows/cli.py docstring does not name: {missing}"


def test_every_argument_has_help():
    bare = [f"{name} {a.dest}" for name, sub in _subcommands().items() for a in sub._actions
            if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not bare, f"arguments without help: {bare}"
