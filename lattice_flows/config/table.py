"""The README's config table (``| section | keys |``), rendered from the JSON schema of the config.

One row per section, one entry per key: ``name`` = default: the allowed values (a choice lists
its values, every other key quotes its declaration in :mod:`lattice_flows.config.sections`) and the
key's remark. tests/unit/test_config_table.py fails when README.md's table differs from
:func:`config_table`, so every key the code accepts is documented and no documented key is gone.
Regenerate with ``python -c "from lattice_flows.config import config_table; print(config_table())"``.
"""

from __future__ import annotations

import json
from typing import Any

# the couplings are read from {m2, lam} or {kappa, lam_hop} (schema.parse_action), not from the
# resolved ActionConfig's fields one by one
_ACTION = (
    "either {`m2`, `lam`} or {`kappa`, `lam_hop`}, converted once (docs/conventions.md): "
    "m² = (1 − 2λ̃)/κ − 2d, λ = λ̃/κ²; both are recorded, `given_as` says which pair was given"
)
_TOP = ("seed", "device", "dtype", "compile")


def config_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a resolved :class:`~lattice_flows.config.Config`."""
    from pydantic import TypeAdapter

    from lattice_flows.config.schema import Config

    return TypeAdapter(Config).json_schema()


def _value(value: Any) -> str:
    """A value as written in YAML: strings bare, null, true/false, lists in brackets."""
    return value if isinstance(value, str) else json.dumps(value)


def _entry(name: str, prop: dict[str, Any], default: bool = True) -> str:
    """One key: ``name`` = default: allowed values; remark. A choice marks its default."""
    choices = prop.get("enum") or ([prop["const"]] if "const" in prop else [])
    if choices:
        text = f"`{name}`: " + " / ".join(
            f"`{c}`" + (" (default)" if c == prop.get("default") else "") for c in choices)
    else:
        if not default:
            text = f"`{name}`"
        elif "default" in prop:
            text = f"`{name}` = `{_value(prop['default'])}`"
        else:
            text = f"`{name}` (required)"
        text += f": {prop.get('description', '')}"
    if prop.get("note"):
        text += f"; {prop['note']}"
    return text.replace("|", "\\|")


def _section(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref") or next(p["$ref"] for p in prop["anyOf"] if "$ref" in p)
    return schema["$defs"][ref.rsplit("/", 1)[1]]


def config_table(schema: dict[str, Any] | None = None) -> str:
    """The markdown table of every config key, section by section (README "Configuration")."""
    schema = schema or config_schema()
    rows = ["| section | keys |", "|---|---|"]
    top = schema["properties"]
    for name, prop in top.items():
        if name in _TOP:
            if name == _TOP[0]:
                keys = "<br>".join(_entry(k, top[k]) for k in _TOP)
                rows.append(f"| {', '.join(f'`{k}`' for k in _TOP)} | {keys} |")
            continue
        section = _section(schema, prop)["properties"]
        if name == "action":
            keys = "<br>".join(
                [_ACTION] + [_entry(k, p, default=False) for k, p in section.items() if k != "given_as"])
        else:
            keys = "<br>".join(_entry(k, p) for k, p in section.items())
        rows.append(f"| `{name}` | {keys} |")
    return "\n".join(rows)
