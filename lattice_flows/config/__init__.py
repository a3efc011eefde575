"""Run configuration: YAML -> validated, frozen dataclasses. The only place YAML is read.

The schema (:mod:`~lattice_flows.config.schema`, its sections in
:mod:`~lattice_flows.config.sections`, couplings in :mod:`~lattice_flows.config.couplings`)
declares every key once, on pydantic v2: its kind and bounds (:mod:`~lattice_flows.config.kinds`),
its default, the allowed values in words. Every user error is a :class:`ConfigError` whose
message names the key, the value and what is allowed; the CLI prints it as one paragraph and exits
with status 2 (:mod:`~lattice_flows.config.loading`).
The README's config table is generated from the same declarations (:func:`config_table`,
checked by tests/unit/test_config_table.py).
"""

from lattice_flows.config.couplings import ActionConfig
from lattice_flows.config.kinds import ConfigError
from lattice_flows.config.loading import (
    apply_overrides, config_from_dict, config_from_yaml_text, load_config, load_raw,
)
from lattice_flows.config.schema import Config
from lattice_flows.config.sections import (
    FlowConfig, HMCConfig, LatticeConfig, OutputConfig, SampleConfig, TrainConfig,
)
from lattice_flows.config.table import config_schema, config_table

__all__ = [
    "ActionConfig", "Config", "ConfigError", "FlowConfig", "HMCConfig", "LatticeConfig",
    "OutputConfig", "SampleConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "config_from_yaml_text", "config_schema", "config_table", "load_config", "load_raw",
]
