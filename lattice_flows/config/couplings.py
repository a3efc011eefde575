"""The couplings of a config: ``{m2, lam}`` or ``{kappa, lam_hop}``, resolved once to (m2, lam).

docs/conventions.md, "Hopping parametrization": with phi = sqrt(kappa) varphi,
m2 = (1 - 2 lam_hop)/kappa - 2d and lam = lam_hop/kappa^2. Both forms are kept in the resolved
config (the hopping form given or derived, for the record); ``given_as`` says which was given.
"""

import math
from typing import Any, Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from lattice_flows.config.kinds import ConfigError, fmt, key, number_at
from lattice_flows.theory.phi4 import hopping_to_standard, standard_to_hopping


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ActionConfig:
    """phi^4 couplings, always resolved to the default (m2, lam) parametrization.

    ``kappa``/``lam_hop`` hold the hopping parametrization (given or derived) for the record:
    m2 = (1 - 2 lam_hop)/kappa - 2d, lam = lam_hop/kappa^2 (docs/conventions.md).
    """

    # the values parse_action resolved (the raw mapping is checked there)
    m2: float = key(..., "a finite real number (mass squared)")
    lam: float = key(..., "a finite number >= 0 (quartic coupling; lam = 0 needs m2 > 0)")
    kappa: float | None = key(None, "a finite number > 0 (hopping parameter)")
    lam_hop: float | None = key(None, "a finite number >= 0 (quartic coupling of the hopping form)")
    given_as: Literal["m2-lambda", "kappa-lambda"] = key("m2-lambda", note="resolved: the pair given")


def parse_action(raw: Any, ndim: int) -> ActionConfig:
    """The couplings of a raw ``action`` mapping, given as {m2, lam} or {kappa, lam_hop}
    (m2 = (1 - 2 lam_hop)/kappa - 2d, lam = lam_hop/kappa^2, docs/conventions.md)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            "config section 'action': expected a mapping with either {m2, lam} or "
            f"{{kappa, lam_hop}}, got {fmt(raw)}."
        )
    unknown = [k for k in raw if k not in ("m2", "lam", "kappa", "lam_hop")]
    if unknown:
        raise ConfigError(
            f"config section 'action': unknown key '{unknown[0]}'; allowed keys are "
            "m2, lam (default parametrization) or kappa, lam_hop (hopping parametrization)."
        )
    std, hop = {"m2", "lam"} & set(raw), {"kappa", "lam_hop"} & set(raw)
    if std and hop:
        raise ConfigError(
            "config section 'action': give either {m2, lam} or {kappa, lam_hop}, not a mix "
            f"(got {', '.join(sorted(raw))})."
        )
    real = "a finite real number"
    if hop:
        for k in ("kappa", "lam_hop"):
            if k not in raw:
                raise ConfigError(f"config key 'action.{k}' is missing; expected a finite number.")
        kappa = number_at("action.kappa", raw["kappa"], real)
        lam_hop = number_at("action.lam_hop", raw["lam_hop"], real)
        if kappa <= 0:
            raise ConfigError(
                f"config key 'action.kappa': value {kappa!r} is not allowed; expected kappa > 0."
            )
        if lam_hop < 0:
            raise ConfigError(
                f"config key 'action.lam_hop': value {lam_hop!r} is not allowed; expected "
                "lam_hop >= 0 (the action is unbounded below otherwise)."
            )
        try:
            m2, lam = hopping_to_standard(kappa, lam_hop, ndim)
        except (ZeroDivisionError, OverflowError):
            m2 = lam = math.inf
        if not (math.isfinite(m2) and math.isfinite(lam)):
            raise ConfigError(
                f"config key 'action.kappa': value {kappa!r} is not allowed; kappa is so small "
                "that m2 = (1 - 2 lam_hop)/kappa - 2d or lam = lam_hop/kappa^2 is not a finite number."
            )
        given = "kappa-lambda"
    else:
        for k in ("m2", "lam"):
            if k not in raw:
                raise ConfigError(
                    f"config key 'action.{k}' is missing; expected a finite number "
                    "(or give kappa and lam_hop instead)."
                )
        m2 = number_at("action.m2", raw["m2"], real)
        lam = number_at("action.lam", raw["lam"], real)
        kappa = lam_hop = None
        given = "m2-lambda"
    if lam < 0:
        raise ConfigError(
            f"config key 'action.lam': value {lam!r} is not allowed; expected lam >= 0 "
            "(the action is unbounded below otherwise)."
        )
    if lam == 0 and m2 <= 0:
        raise ConfigError(
            f"config key 'action.m2': value {m2!r} is not allowed with lam = 0; the free field "
            "needs m2 > 0 (the Gaussian is not normalizable otherwise)."
        )
    if kappa is None:
        try:
            kappa, lam_hop = standard_to_hopping(m2, lam, ndim)
        except (ValueError, ArithmeticError):  # no kappa > 0, or one beyond the float range
            kappa = lam_hop = None
    return ActionConfig(m2=m2, lam=lam, kappa=kappa, lam_hop=lam_hop, given_as=given)
