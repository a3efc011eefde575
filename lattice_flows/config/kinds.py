"""The kinds of value a config key takes, as pydantic types, and the error every refusal ends in.

A key is declared once, in :mod:`lattice_flows.config.sections` (top-level keys: in
:mod:`lattice_flows.config.schema`), as ``name: Kind = key(default, allowed)``: the kind (a type
below with its bounds), the one default, and the allowed values in words, which both the error
message and the README table quote. The kinds are exactly what a
YAML file (``yaml.safe_load``) can spell:

- integers are ints, never bools or floats (``PosInt``, ``NonNegInt``, ...);
- numbers are ints or floats, not bools, finite, or strings that read as a plain decimal literal
  (YAML 1.1 leaves ``3e-3`` a string; Python's ``float`` would also read ``' 1'`` or ``'1_0'``),
  always stored as float (``number``);
- flags are bools; paths non-empty strings; lists of extents non-empty lists of positive ints,
  stored as tuples; choices ``Literal[...]`` of strings.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and where."""


def fmt(value: Any) -> str:
    """The value as it appears in messages: repr, so control characters stay on one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def key(default: Any = ..., allowed: str = "", note: str = "") -> Any:
    """One config key: its default (``...``: required), the allowed values in words (quoted by
    the error message: "expected <allowed>"; choices name themselves) and an optional remark for
    the README table."""
    extra = {"note": note} if note else None
    return Field(default, description=allowed or None, json_schema_extra=extra)


_DECIMAL = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _to_number(value: Any) -> float:
    """A finite float from an int, a float or a plain decimal string; else a pydantic error
    (``finite_number`` carries the float for the message)."""
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise PydanticCustomError("number_type", "not a number")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("number_type", "not a number")
    try:
        out = float(value)
    except OverflowError:  # an int beyond the float range
        raise PydanticCustomError("number_type", "not a number") from None
    if not math.isfinite(out):
        raise PydanticCustomError("finite_number", "not a finite number", {"value": out})
    return out


def number(**bounds: float) -> Any:
    """A finite number (float) with optional ``gt``/``ge``/``lt``/``le`` bounds."""
    return Annotated[float, Field(**bounds), BeforeValidator(_to_number)]


def _odd(n: int) -> int:
    if n % 2 != 1:
        raise PydanticCustomError("odd_int", "not an odd integer")
    return n


def _list_of_extents(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise PydanticCustomError("list_type", "not a list")
    return tuple(value)


PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
EvenNonNegInt = Annotated[int, Strict(), Field(ge=0, multiple_of=2)]
PosOddInt = Annotated[int, Strict(), Field(gt=0), AfterValidator(_odd)]
Flag = Annotated[bool, Strict()]
PathText = Annotated[str, Strict(), Field(min_length=1)]
PosIntList = Annotated[tuple[PosInt, ...], Field(min_length=1), BeforeValidator(_list_of_extents)]
PosNumberList = Annotated[tuple[number(gt=0), ...], Field(min_length=1),
                          BeforeValidator(_list_of_extents)]


def refusal(key_path: str, value: Any, allowed: str, finite: float | None = None) -> ConfigError:
    """The one-paragraph error for a refused value at ``key_path``: "value V is not allowed;
    expected <allowed>", or, for a number that is not finite, "value V is not a finite number"."""
    if finite is not None:
        return ConfigError(
            f"config key '{key_path}': value {finite!r} is not a finite number; "
            f"expected {allowed or 'a finite number'}."
        )
    return ConfigError(f"config key '{key_path}': value {fmt(value)} is not allowed; expected {allowed}.")


def number_at(key_path: str, value: Any, allowed: str) -> float:
    """``value`` as a finite float (the ``number`` kind) or a :func:`refusal` naming ``key_path``."""
    try:
        return _to_number(value)
    except PydanticCustomError as exc:
        finite = (exc.context or {}).get("value") if exc.type == "finite_number" else None
        raise refusal(key_path, value, allowed, finite) from None
