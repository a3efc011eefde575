"""README's config table is the one generated from the schema, and documents exactly the keys
the validator accepts, with the defaults a bare section resolves to."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import yaml

from lattice_flows.config import ConfigError, config_from_dict, config_table

README = Path(__file__).resolve().parents[2] / "README.md"
MINIMAL = {"lattice": {"shape": [4, 4]}, "action": {"m2": -4.0, "lam": 8.0}}
SECTIONS = ("lattice", "hmc", "flow", "train", "sample", "output")


def readme_table() -> str:
    lines = README.read_text().splitlines()
    start = lines.index("| section | keys |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def rows() -> dict[str, str]:
    """README table: section cell -> keys cell."""
    out = {}
    for line in readme_table().splitlines()[2:]:
        section, keys = (c.strip() for c in line.strip("|").split(" | ", 1))
        out[section] = keys
    return out


def documented_keys(cell: str) -> list[str]:
    return re.findall(r"(?:^|<br>)`(\w+)`", cell)


def test_readme_table_is_the_generated_one():
    generated, documented = config_table(), readme_table()
    diff = "\n".join(difflib.unified_diff(documented.splitlines(), generated.splitlines(),
                                          "README.md", "config_table()", lineterm=""))
    assert documented == generated, (
        "README.md's config table differs from lattice_flows.config.config_table(); paste its "
        f"output into README.md:\n{diff}")


def _allowed_in_refusal(raw: dict, pattern: str) -> list[str]:
    """The keys the validator names as allowed when it refuses an unknown one."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    listed = re.search(pattern, str(info.value)).group(1)
    return re.findall(r"\w+", re.sub(r"\([^)]*\)| or ", " ", listed))


def test_table_documents_exactly_the_keys_the_validator_accepts():
    table = rows()
    for section in SECTIONS:
        accepted = _allowed_in_refusal({**MINIMAL, section: {"no_such_key": 1}},
                                       r"allowed keys are (.*)\.$")
        assert documented_keys(table[f"`{section}`"]) == accepted, section
    action = _allowed_in_refusal({**MINIMAL, "action": {"no_such_key": 1}},
                                 r"allowed keys are (.*)\.$")
    assert sorted(documented_keys(table["`action`"])) == sorted(action)
    top = _allowed_in_refusal({**MINIMAL, "no_such_section": 1}, r"allowed sections are (.*)\.$")
    scalars = [s for s in top if s not in SECTIONS + ("action",)]
    assert f"`{'`, `'.join(scalars)}`" in table
    assert documented_keys(table[", ".join(f"`{s}`" for s in scalars)]) == scalars
    assert {s.strip("`") for s in table if "," not in s} == set(top) - set(scalars)


def test_documented_defaults_are_what_an_empty_section_resolves_to():
    """Each `key` = `value` and each choice marked (default) is the value of an empty section
    (the top-level scalars: of a config without them)."""
    table = rows()
    resolved = config_from_dict({**MINIMAL, **{s: {} for s in SECTIONS if s != "lattice"}}).to_dict()
    n, expected = 0, 0
    for section, cell in table.items():
        if section not in ("`lattice`", "`action`"):
            expected += len(documented_keys(cell))
        for entry in cell.split("<br>"):
            name = re.match(r"`(\w+)`", entry)
            if name is None:
                continue
            where = resolved if "," in section else resolved.get(section.strip("`"), {})
            got = where.get(name.group(1))
            if (m := re.match(r"`\w+` = `([^`]*)`:", entry)) is not None:
                assert yaml.safe_load(m.group(1)) == got, (section, entry, got)
                n += 1
            elif (m := re.search(r"`([^`]*)` \(default\)", entry)) is not None:
                assert m.group(1) == got, (section, entry, got)
                n += 1
    assert n == expected, (n, expected)  # every key but the required shape and the couplings
