"""From YAML (``yaml.safe_load``, here only) or a mapping to a validated :class:`Config`.

pydantic validates the whole mapping against :mod:`lattice_flows.config.schema` in the order of
the sections and keys; the first error becomes one :class:`ConfigError` that names the key path
('hmc.n_therm'), the value as given and the allowed values of that key (its declaration), e.g.
``config key 'hmc.n_chains': value -2 is not allowed; expected a positive integer.``
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from lattice_flows.config.kinds import ConfigError, fmt, refusal
from lattice_flows.config.schema import Config
from lattice_flows.config.sections import SECTIONS

_CONFIG = TypeAdapter(Config)


def _declaration(loc: tuple) -> tuple[str, Any, tuple[str, ...]]:
    """The key path of an error location, its field declaration and the raw-mapping path."""
    fields = Config.__pydantic_fields__
    if loc[0] in SECTIONS and len(loc) > 1:
        section = SECTIONS[loc[0]].__pydantic_fields__
        return f"{loc[0]}.{loc[1]}", section[loc[1]], (loc[0], loc[1])
    return str(loc[0]), fields[loc[0]], (loc[0],)


def _as_config_error(exc: ValidationError, raw: dict[str, Any]) -> ConfigError:
    """The first error of ``exc`` as the one-paragraph message of its key."""
    errors = exc.errors()
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # a rule with its own message (schema validators)
        return cause
    try:
        path, decl, raw_path = _declaration(first["loc"])
    except (KeyError, IndexError):  # not a declared key: say what pydantic says, on one line
        where = ".".join(map(str, first["loc"])) or "config"
        return ConfigError(f"config key '{where}': {first['msg']}.")
    allowed = decl.description or ""
    if first["type"] == "missing":
        return ConfigError(f"config key '{path}' is missing; expected {allowed}.")
    value = raw
    for k in raw_path:
        value = value[k]
    if typing.get_origin(decl.annotation) is typing.Literal:
        choices = ", ".join(typing.get_args(decl.annotation))
        return ConfigError(
            f"config key '{path}': value {fmt(value)} is not allowed; expected one of {choices}."
        )
    for err in errors:  # a union (e.g. 'auto' or a number) reports one error per member
        if err["type"] == "finite_number" and err["loc"][: len(raw_path)] == raw_path:
            return refusal(path, value, allowed, finite=err["ctx"]["value"])
    return refusal(path, value, allowed)


def config_from_dict(raw: Any) -> Config:
    """Validate a mapping (as loaded from YAML) and return a :class:`Config`."""
    try:
        return _CONFIG.validate_python(raw)
    except ValidationError as exc:
        raise _as_config_error(exc, raw) from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' is not of the form key.sub=value (e.g. hmc.n_traj=500)."
        )
    key, _, text = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{item}' has an empty key.")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': the value is not valid YAML ({exc}).") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key.sub=value`` overrides (values parsed as YAML scalars/lists)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section.")
            node = nxt
        node[path[-1]] = value
    return out


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML file with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file '{p}' does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' cannot be read: {exc.strerror}.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"config file '{p}' is empty.")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, not {fmt(raw)}.")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config file."""
    raw = load_raw(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_yaml_text(text: str) -> Config:
    """Rebuild a Config from the resolved YAML stored in a run folder or HDF5 file (the
    couplings are read back as the resolved (m2, lam); kappa and lam_hop are derived again)."""
    raw = yaml.safe_load(text)
    if isinstance(raw, dict) and isinstance(raw.get("action"), dict):
        act = raw["action"]
        raw = dict(raw)
        raw["action"] = {"m2": act["m2"], "lam": act["lam"]}
    return config_from_dict(raw)
