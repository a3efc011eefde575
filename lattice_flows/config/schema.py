"""The config schema: the root :class:`Config`, its sections and the rules across them.

The sections (``lattice``, ``hmc``, ``flow``, ``train``, ``sample``, ``output``: every key
declared once) are :mod:`lattice_flows.config.sections`; the couplings, given in one of two
parametrizations, are read by :mod:`lattice_flows.config.couplings`. The root checks that the
mapping has known sections and the required ones, that every section is a mapping of its own
keys, and the rules that join sections (a flow needs even extents, ``sample.mode: composite``
an ``hmc`` section); each raises :class:`ConfigError` with its own message.
"""

import dataclasses
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

from lattice_flows.config.couplings import ActionConfig, parse_action
from lattice_flows.config.kinds import ConfigError, Flag, NonNegInt, fmt, key
from lattice_flows.config.sections import (
    SECTIONS, FlowConfig, HMCConfig, LatticeConfig, OutputConfig, SampleConfig, TrainConfig,
)

_FROZEN = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_FROZEN)
class Config:
    """A validated run configuration (every section frozen; equal configs compare and hash
    equal). Build it with :func:`lattice_flows.config.config_from_dict`."""

    lattice: LatticeConfig
    action: ActionConfig
    seed: NonNegInt = key(0, "an integer >= 0")
    device: Literal["auto", "cpu", "cuda"] = key("auto", note="auto: CUDA when present")
    dtype: Literal["float32", "float64"] = key(
        "float32", note="the flow's precision; log q and log w are accumulated in float64 either "
        "way; HMC has its own hmc.dtype")
    compile: Flag = key(
        False, "true or false (torch.compile the flow's conditioners and the HMC integrator)",
        note="same results up to float rounding; a failed compilation stops the run with an error "
        "that says to set compile: false (lattice_flows/compiled.py)")
    hmc: HMCConfig | None = None
    flow: FlowConfig | None = None
    train: TrainConfig | None = None
    sample: SampleConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _sections_present(cls, raw: Any) -> Any:
        if isinstance(raw, ArgsKwargs):  # built in code: keyword arguments
            return raw
        top = ", ".join(f.name for f in dataclasses.fields(cls))
        if not isinstance(raw, dict):
            raise ConfigError(f"the config must be a mapping with sections {top}; got {fmt(raw)}.")
        unknown = [k for k in raw if k not in cls.__pydantic_fields__]
        if unknown:
            raise ConfigError(f"config: unknown section '{unknown[0]}'; allowed sections are {top}.")
        for sec in ("lattice", "action"):
            if sec not in raw:
                raise ConfigError(f"config section '{sec}' is missing; it is required.")
        return raw

    @field_validator(*SECTIONS, mode="before")
    @classmethod
    def _section_mapping(cls, raw: Any, info: ValidationInfo) -> Any:
        """A section is a mapping of its own keys; null means every default."""
        name, section = info.field_name, SECTIONS[info.field_name]
        if raw is None:
            return {}
        if isinstance(raw, section):
            return raw
        names = ", ".join(f.name for f in dataclasses.fields(section))
        if not isinstance(raw, dict):
            raise ConfigError(
                f"config section '{name}': expected a mapping of keys ({names}), got {fmt(raw)}."
            )
        unknown = [k for k in raw if k not in section.__pydantic_fields__]
        if unknown:
            raise ConfigError(
                f"config section '{name}': unknown key '{unknown[0]}'; allowed keys are {names}."
            )
        return raw

    @field_validator("action", mode="before")
    @classmethod
    def _couplings(cls, raw: Any, info: ValidationInfo) -> Any:
        if isinstance(raw, ActionConfig):
            return raw
        lattice = info.data.get("lattice")
        if lattice is None:  # reported as the lattice's error, which comes first
            raise PydanticCustomError("needs_lattice", "the couplings need a valid lattice")
        return parse_action(raw, lattice.ndim)

    @field_validator("flow", mode="after")
    @classmethod
    def _even_extents(cls, flow: FlowConfig | None, info: ValidationInfo) -> FlowConfig | None:
        lattice = info.data.get("lattice")
        if flow is not None and lattice is not None and any(n % 2 for n in lattice.shape):
            raise ConfigError(
                f"config key 'lattice.shape': value {list(lattice.shape)} is not allowed with a "
                "flow; checkerboard couplings need every extent even."
            )
        return flow

    @model_validator(mode="after")
    def _composite_needs_hmc(self) -> "Config":
        if self.sample is not None and self.sample.mode == "composite" and self.hmc is None:
            raise ConfigError(
                "config key 'sample.mode': value 'composite' needs the config section 'hmc' "
                "(the settings of its HMC trajectories); add an hmc section, or use mode "
                "'mcmc' or 'importance'."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (YAML-safe), both parametrizations included."""
        out: dict[str, Any] = {
            "lattice": {"shape": list(self.lattice.shape)},
            "action": dataclasses.asdict(self.action),
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "compile": self.compile,
            "output": dataclasses.asdict(self.output),
        }
        for name in ("hmc", "train", "sample", "flow"):
            section = getattr(self, name)
            if section is not None:
                out[name] = dataclasses.asdict(section)
        if self.flow is not None:
            out["flow"]["hidden_channels"] = list(self.flow.hidden_channels)
            out["flow"]["zero_mode_widths"] = list(self.flow.zero_mode_widths)
        return out
