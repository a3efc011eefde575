"""Run configuration: YAML -> validated dataclasses. The only place YAML is read.

Every user error is a :class:`ConfigError` whose message names the key, the value and what is
allowed; the CLI prints it as one paragraph and exits with status 2. Couplings may be given as
``{m2, lam}`` or ``{kappa, lam_hop}`` (CONVENTIONS.md, "Hopping parametrization"); both are
converted to (m2, lam) once, here, and both are kept in the resolved config.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from lattice_flows.theory.phi4 import hopping_to_standard, standard_to_hopping


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and where."""


_REQUIRED = object()


def _fmt(value: Any) -> str:
    """The value as it appears in messages: repr, so control characters stay on one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class _Field:
    """Schema of one key: expected kind, default, a check and the allowed values in words."""

    kind: str  # 'int', 'float', 'bool', 'str', 'int_list', 'path', 'choice', 'float_or_auto', ...
    default: Any = _REQUIRED
    allowed: str = ""
    check: Callable[[Any], bool] | None = None
    choices: tuple[str, ...] = ()


_DECIMAL = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _coerce(key: str, value: Any, spec: _Field) -> Any:
    """Return ``value`` converted to the schema kind or raise a ConfigError naming ``key``."""
    kind = spec.kind
    bad = ConfigError(
        f"config key '{key}': value {_fmt(value)} is not allowed; expected {spec.allowed or kind}."
    )
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        out: Any = int(value)
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            # a plain decimal literal only: Python's float() also reads ' 1', '1_0', '١'
            if not _DECIMAL.fullmatch(value):
                raise bad
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        out = float(value)
        if not math.isfinite(out):
            raise ConfigError(
                f"config key '{key}': value {value!r} is not a finite number; "
                f"expected {spec.allowed or 'a finite number'}."
            )
    elif kind == "float_or_auto":
        if value == "auto":
            return "auto"
        return _coerce(key, value, _Field("float", allowed=spec.allowed, check=spec.check))
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad
        out = value
    elif kind in ("str", "path"):
        if not isinstance(value, str) or not value:
            raise bad
        out = value
    elif kind == "optional_path":
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise bad
        out = value
    elif kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            raise ConfigError(
                f"config key '{key}': value {_fmt(value)} is not allowed; "
                f"expected one of {', '.join(spec.choices)}."
            )
        out = value
    elif kind == "int_list":
        if not isinstance(value, (list, tuple)) or not value:
            raise bad
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad
        out = tuple(int(v) for v in value)
    elif kind == "optional_float":
        if value is None:
            return None
        return _coerce(key, value, _Field("float", allowed=spec.allowed, check=spec.check))
    elif kind == "optional_int":
        if value is None:
            return None
        return _coerce(key, value, _Field("int", allowed=spec.allowed, check=spec.check))
    else:  # pragma: no cover - schema bug
        raise AssertionError(f"unknown schema kind {kind}")
    if spec.check is not None and not spec.check(out):
        raise bad
    return out


def _parse_section(name: str, raw: Any, schema: dict[str, _Field]) -> dict[str, Any]:
    """Validate one mapping section against ``schema``; unknown and missing keys are errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config section '{name}': expected a mapping of keys "
            f"({', '.join(schema)}), got {_fmt(raw)}."
        )
    unknown = [k for k in raw if k not in schema]
    if unknown:
        raise ConfigError(
            f"config section '{name}': unknown key '{unknown[0]}'; "
            f"allowed keys are {', '.join(schema)}."
        )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        full = f"{name}.{key}"
        if key in raw:
            out[key] = _coerce(full, raw[key], spec)
        elif spec.default is _REQUIRED:
            raise ConfigError(
                f"config key '{full}' is missing; expected {spec.allowed or spec.kind}."
            )
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _pos(x: Any) -> bool:
    return x > 0


def _nonneg(x: Any) -> bool:
    return x >= 0


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class LatticeConfig:
    """Periodic hypercubic lattice of extents ``shape`` = (L_1, ..., L_d) (CONVENTIONS.md)."""

    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def volume(self) -> int:
        return math.prod(self.shape)


_LATTICE = {
    "shape": _Field(
        "int_list",
        allowed="a list of positive integer extents, e.g. [8, 8]",
        check=lambda s: all(n > 0 for n in s),
    )
}


@dataclass(frozen=True)
class ActionConfig:
    """phi^4 couplings, always resolved to the default (m2, lam) parametrization.

    ``kappa``/``lam_hop`` hold the hopping parametrization (given or derived) for the record.
    """

    m2: float
    lam: float
    kappa: float | None = None
    lam_hop: float | None = None
    given_as: str = "m2-lambda"


def _parse_action(raw: Any, ndim: int) -> ActionConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            "config section 'action': expected a mapping with either {m2, lam} or "
            f"{{kappa, lam_hop}}, got {_fmt(raw)}."
        )
    allowed = ("m2", "lam", "kappa", "lam_hop")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise ConfigError(
            f"config section 'action': unknown key '{unknown[0]}'; allowed keys are "
            "m2, lam (default parametrization) or kappa, lam_hop (hopping parametrization)."
        )
    std = {"m2", "lam"} & set(raw)
    hop = {"kappa", "lam_hop"} & set(raw)
    if std and hop:
        raise ConfigError(
            "config section 'action': give either {m2, lam} or {kappa, lam_hop}, not a mix "
            f"(got {', '.join(sorted(raw))})."
        )
    num = _Field("float", allowed="a finite real number")
    if hop:
        for k in ("kappa", "lam_hop"):
            if k not in raw:
                raise ConfigError(f"config key 'action.{k}' is missing; expected a finite number.")
        kappa = _coerce("action.kappa", raw["kappa"], num)
        lam_hop = _coerce("action.lam_hop", raw["lam_hop"], num)
        if kappa <= 0:
            raise ConfigError(
                f"config key 'action.kappa': value {kappa!r} is not allowed; expected kappa > 0."
            )
        if lam_hop < 0:
            raise ConfigError(
                f"config key 'action.lam_hop': value {lam_hop!r} is not allowed; expected "
                "lam_hop >= 0 (the action is unbounded below otherwise)."
            )
        m2, lam = hopping_to_standard(kappa, lam_hop, ndim)
        given = "kappa-lambda"
    else:
        for k in ("m2", "lam"):
            if k not in raw:
                raise ConfigError(
                    f"config key 'action.{k}' is missing; expected a finite number "
                    "(or give kappa and lam_hop instead)."
                )
        m2 = _coerce("action.m2", raw["m2"], num)
        lam = _coerce("action.lam", raw["lam"], num)
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
        except ValueError:
            kappa = lam_hop = None
    return ActionConfig(m2=m2, lam=lam, kappa=kappa, lam_hop=lam_hop, given_as=given)


@dataclass(frozen=True)
class HMCConfig:
    """Hybrid Monte Carlo settings (see :mod:`lattice_flows.mcmc.hmc`)."""

    n_chains: int = 16
    n_therm: int = 200
    n_traj: int = 1000
    n_steps: int = 10
    step_size: float | str = "auto"
    target_acceptance: float = 0.8
    save_every: int = 1
    integrator: str = "leapfrog"
    jitter: float = 0.5
    dtype: str = "float64"  # HMC's own precision, independent of the top-level (flow) dtype


_HMC = {
    "n_chains": _Field("int", 16, "a positive integer", _pos),
    "n_therm": _Field("int", 200, "an integer >= 0", _nonneg),
    "n_traj": _Field("int", 1000, "a positive integer", _pos),
    "n_steps": _Field("int", 10, "a positive integer (leapfrog steps per trajectory)", _pos),
    "step_size": _Field(
        "float_or_auto", "auto", "'auto' or a positive step size", lambda x: x > 0
    ),
    "target_acceptance": _Field(
        "float", 0.8, "a number in (0, 1)", lambda x: 0.0 < x < 1.0
    ),
    "save_every": _Field("int", 1, "a positive integer (trajectories per saved configuration)", _pos),
    "integrator": _Field("choice", "leapfrog", choices=("leapfrog", "omelyan")),
    "jitter": _Field(
        "float", 0.5, "a number in [0, 1) (relative spread of the number of steps)",
        lambda x: 0.0 <= x < 1.0,
    ),
    "dtype": _Field("choice", "float64", choices=("float64", "float32")),
}


@dataclass(frozen=True)
class FlowConfig:
    """Flow architecture (see :mod:`lattice_flows.flows`)."""

    n_layers: int = 16
    hidden_channels: tuple[int, ...] = (32, 32)
    kernel_size: int = 3
    equivariant: bool = True
    conditioner: str = "symmetrized"
    global_channels: int = 8
    activation: str = "silu"
    fourier_layer: bool = True
    fourier_m2_init: float | str = "auto"
    zero_mode_layer: bool = False
    bijection: str = "affine"
    identity_init: bool = True
    cnf_layers: int = 0
    cnf_steps: int = 16
    cnf_frequencies: int = 8
    cnf_time_basis: int = 5
    cnf_lipschitz_max: float = 3.0


_FLOW = {
    "n_layers": _Field(
        "int", 16, "an even integer >= 0 (coupling layers; 0 only with other layers)",
        lambda x: x >= 0 and x % 2 == 0,
    ),
    "hidden_channels": _Field(
        "int_list", (32, 32), "a list of positive integers (conv channels per hidden layer)",
        lambda s: all(n > 0 for n in s),
    ),
    "kernel_size": _Field("int", 3, "a positive odd integer", lambda x: x > 0 and x % 2 == 1),
    "equivariant": _Field("bool", True, "true (exact Z2 equivariance) or false"),
    # symmetrized: net on x and -x, parity parts (any activation); odd: odd net in one pass
    # (half the convolutions; needs an odd activation: tanh or softsign)
    # global: lattice-sized FFT kernels in phat^2 on odd/even site features (flows/global_kernel.py);
    # global_local: plus the symmetrized local conv net (ablation)
    "conditioner": _Field("choice", "symmetrized", choices=("symmetrized", "odd", "global", "global_local")),
    "global_channels": _Field("int", 8, "a positive integer (odd and even kernel fields of "
                              "flow.conditioner = 'global')", lambda x: x > 0),
    # silu: as good as tanh/gelu in the ablation and ~10x cheaper per element than tanh on CPU
    "activation": _Field(
        "choice", "silu", choices=("tanh", "leaky_relu", "gelu", "silu", "relu", "softsign")
    ),
    "fourier_layer": _Field("bool", True, "true or false (learnable Fourier-space Gaussian layer)"),
    "zero_mode_layer": _Field("bool", False, "true or false (learnable monotone map of the magnetisation, first layer)"),
    "fourier_m2_init": _Field(
        "float_or_auto", "auto", "'auto' (m2 if m2 > 0, else 1) or a positive mass squared",
        lambda x: x > 0,
    ),
    "bijection": _Field("choice", "affine", choices=("affine",)),
    "identity_init": _Field(
        "bool", True, "true (last conv of each conditioner starts at zero: the fresh flow is the "
        "identity) or false (PyTorch's default init, as in the published tutorial)",
    ),
    # continuous equivariant layers (lattice_flows/flows/cnf.py), after the Fourier layer
    "cnf_layers": _Field("int", 0, "an integer >= 0 (continuous equivariant layers; 0 = off)", _nonneg),
    # 16: |integrated - true log-det| ~1e-5 per configuration at trained L = 16 (8: ~2.5e-4)
    "cnf_steps": _Field("int", 16, "a positive integer (fixed RK4 steps per continuous layer)", _pos),
    "cnf_frequencies": _Field("int", 8, "a positive integer (sin(omega phi) features per continuous layer)", _pos),
    "cnf_time_basis": _Field("int", 5, "a positive integer (Fourier time functions of the kernels)", _pos),
    "cnf_lipschitz_max": _Field(
        "float", 3.0, "a positive number (bound on the vector field's Lipschitz constant; keep "
        "cnf_lipschitz_max / cnf_steps <= ~0.4 for RK4 accuracy)", _pos,
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Flow training (see :mod:`lattice_flows.training`)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    objective: str = "reverse"
    data: str | None = None
    alpha: float = 0.5
    alpha_final: float | None = None
    grad_clip: float = 10.0
    max_nonfinite: int = 20
    log_every: int = 50
    checkpoint_every: int = 500
    init_from: str | None = None
    init_from_missing: str = "error"
    eval_samples: int = 10240
    eval_batch_size: int = 512
    time_budget: float | None = None
    sign_flip: bool = True
    validation_fraction: float = 0.1


def _opt_float(check, allowed):
    return _Field("optional_float", None, allowed, check)


_TRAIN = {
    "steps": _Field("int", 2000, "a positive integer (optimizer steps)", _pos),
    "batch_size": _Field("int", 256, "a positive integer (global batch size)", _pos),
    "lr": _Field("float", 3e-3, "a positive learning rate", _pos),
    "lr_schedule": _Field("choice", "cosine", choices=("cosine", "constant")),
    "warmup_steps": _Field("int", 0, "an integer >= 0 (linear warm-up steps)", _nonneg),
    "optimizer": _Field("choice", "adam", choices=("adam", "adamw")),
    "weight_decay": _Field("float", 0.0, "a number >= 0", _nonneg),
    "objective": _Field(
        "choice", "reverse",
        choices=("reverse", "path_gradient", "path_gradient_fast", "forward", "mixed"),
    ),
    "data": _Field("optional_path", None, "a path to a lattice_flows HDF5 sample file (e.g. hmc.h5) or null"),
    "alpha": _Field("float", 0.5, "a number in [0, 1] (weight of reverse KL in 'mixed')", lambda x: 0 <= x <= 1),
    "alpha_final": _opt_float(lambda x: 0 <= x <= 1, "null or a number in [0, 1] (alpha at the last step; linear schedule)"),
    "grad_clip": _Field("float", 10.0, "a number >= 0 (max gradient norm; 0 = off)", _nonneg),
    "max_nonfinite": _Field("int", 20, "a positive integer (consecutive non-finite steps before stopping)", _pos),
    "log_every": _Field("int", 50, "a positive integer (steps between metric records)", _pos),
    "checkpoint_every": _Field("int", 500, "a positive integer (steps between checkpoints)", _pos),
    "init_from": _Field("optional_path", None, "null or a path to a flow checkpoint (flow.pt or train.ckpt)"),
    "init_from_missing": _Field("choice", "error", choices=("error", "fresh")),  # init_from absent: stop, or fresh flow (logged)
    "eval_samples": _Field("int", 10240, "a positive integer (fresh samples for the final ESS/acceptance)", _pos),
    "eval_batch_size": _Field("int", 512, "a positive integer", _pos),
    "time_budget": _opt_float(_pos, "null or a positive number of CPU-seconds for training"),
    "sign_flip": _Field("bool", True, "true or false (random Z2 sign flips of training data)"),
    "validation_fraction": _Field(
        "float", 0.1, "a number in [0, 0.5] (share of data rows held out for the validation NLL)",
        lambda x: 0 <= x <= 0.5,
    ),
}


@dataclass(frozen=True)
class SampleConfig:
    """Flow production (see :mod:`lattice_flows.mcmc.flow_run`)."""

    mode: str = "mcmc"
    n_chains: int = 16
    n_samples: int = 1000
    batch_size: int = 1024
    flow: str | None = None
    save_every: int = 1
    cnf_steps: int | None = None


_SAMPLE = {
    "mode": _Field("choice", "mcmc", choices=("mcmc", "importance")),
    "n_chains": _Field("int", 16, "a positive integer (independent chains)", _pos),
    "n_samples": _Field("int", 1000, "a positive integer (Metropolis steps per chain, or samples per column in importance mode)", _pos),
    "batch_size": _Field("int", 1024, "a positive integer (proposals generated per flow call)", _pos),
    "flow": _Field("optional_path", None, "null (the run folder's flow.pt) or a path to a flow.pt"),
    "save_every": _Field("int", 1, "a positive integer (Metropolis steps per saved configuration)", _pos),
    "cnf_steps": _Field("optional_int", None, "null (the RK4 steps the flow was trained with) or a "
                        "positive integer (RK4 steps of every continuous layer while sampling)", _pos),
}


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes: the run folder, and rows per chunk write/checkpoint."""

    dir: str = "runs/default"
    chunk_rows: int = 100
    store_G: bool = True


_OUTPUT = {
    "dir": _Field("path", "runs/default", "a non-empty path to the run folder"),
    "chunk_rows": _Field(
        "int", 100, "a positive integer (saved rows per chunk write and checkpoint)", _pos
    ),
    "store_G": _Field("bool", True, "true or false (store the full G(y) per configuration)"),
}


@dataclass(frozen=True)
class Config:
    """A validated run configuration. ``raw`` keeps the user's mapping for the record."""

    lattice: LatticeConfig
    action: ActionConfig
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    hmc: HMCConfig | None = None
    flow: FlowConfig | None = None
    train: TrainConfig | None = None
    sample: SampleConfig | None = None
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (YAML-safe), both parametrizations included."""
        out: dict[str, Any] = {
            "lattice": {"shape": list(self.lattice.shape)},
            "action": {
                "m2": self.action.m2,
                "lam": self.action.lam,
                "kappa": self.action.kappa,
                "lam_hop": self.action.lam_hop,
                "given_as": self.action.given_as,
            },
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "output": asdict(self.output),
        }
        if self.hmc is not None:
            out["hmc"] = asdict(self.hmc)
        if self.train is not None:
            out["train"] = asdict(self.train)
        if self.sample is not None:
            out["sample"] = asdict(self.sample)
        if self.flow is not None:
            out["flow"] = {**asdict(self.flow), "hidden_channels": list(self.flow.hidden_channels)}
        return out

    def physics_dict(self) -> dict[str, Any]:
        """The keys that must not change when a run is resumed (lattice, couplings, seed)."""
        return {
            "shape": list(self.lattice.shape),
            "m2": self.action.m2,
            "lam": self.action.lam,
            "seed": self.seed,
        }


_TOP_KEYS = (
    "lattice", "action", "seed", "device", "dtype", "hmc", "flow", "train", "sample", "output",
)


def _fill(cls: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def config_from_dict(raw: Any) -> Config:
    """Validate a mapping (as loaded from YAML) and return a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"the config must be a mapping with sections {', '.join(_TOP_KEYS)}; got {_fmt(raw)}."
        )
    unknown = [k for k in raw if k not in _TOP_KEYS]
    if unknown:
        raise ConfigError(
            f"config: unknown section '{unknown[0]}'; allowed sections are {', '.join(_TOP_KEYS)}."
        )
    for sec in ("lattice", "action"):
        if sec not in raw:
            raise ConfigError(f"config section '{sec}' is missing; it is required.")
    lattice = LatticeConfig(**_parse_section("lattice", raw["lattice"], _LATTICE))
    action = _parse_action(raw["action"], lattice.ndim)
    seed = _coerce("seed", raw.get("seed", 0), _Field("int", allowed="an integer >= 0", check=_nonneg))
    device = _coerce(
        "device", raw.get("device", "auto"), _Field("choice", choices=("auto", "cpu", "cuda"))
    )
    dtype = _coerce(
        "dtype", raw.get("dtype", "float32"), _Field("choice", choices=("float32", "float64"))
    )
    hmc = None
    if "hmc" in raw:
        hmc = _fill(HMCConfig, _parse_section("hmc", raw["hmc"], _HMC))
    flow = None
    if "flow" in raw:
        flow = _fill(FlowConfig, _parse_section("flow", raw["flow"], _FLOW))
        if flow.n_layers == 0 and flow.cnf_layers == 0:
            raise ConfigError(
                "config key 'flow.n_layers': value 0 is not allowed with flow.cnf_layers = 0; "
                "the flow needs coupling or continuous layers (n_layers > 0 or cnf_layers > 0)."
            )
        if flow.conditioner == "odd" and not flow.equivariant:
            raise ConfigError(
                "config key 'flow.conditioner': value 'odd' is an exactly Z2-equivariant net; it "
                "is not allowed with flow.equivariant = false (use 'symmetrized')."
            )
        if flow.conditioner in ("global", "global_local") and not flow.equivariant:
            raise ConfigError(
                f"config key 'flow.conditioner': value '{flow.conditioner}' is an exactly Z2-equivariant "
                "conditioner; it is not allowed with flow.equivariant = false."
            )
        if flow.conditioner == "odd" and flow.activation not in ("tanh", "softsign"):
            raise ConfigError(
                f"config key 'flow.activation': value '{flow.activation}' is not allowed with "
                "flow.conditioner = 'odd', which needs an odd activation: tanh or softsign."
            )
        odd = [n for n in lattice.shape if n % 2]
        if odd:
            raise ConfigError(
                f"config key 'lattice.shape': value {list(lattice.shape)} is not allowed with a "
                "flow; checkerboard couplings need every extent even."
            )
    train = None
    if "train" in raw:
        train = _fill(TrainConfig, _parse_section("train", raw["train"], _TRAIN))
        if train.objective in ("forward", "mixed") and not train.data:
            raise ConfigError(
                f"config key 'train.data' is missing; objective '{train.objective}' needs "
                "training configurations: the path of a lattice_flows HDF5 sample file (e.g. hmc.h5)."
            )
    sample = None
    if "sample" in raw:
        sample = _fill(SampleConfig, _parse_section("sample", raw["sample"], _SAMPLE))
    output = _fill(OutputConfig, _parse_section("output", raw.get("output"), _OUTPUT))
    return Config(
        lattice=lattice, action=action, seed=seed, device=device, dtype=dtype, hmc=hmc,
        flow=flow, train=train, sample=sample, output=output,
    )


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
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, not {_fmt(raw)}.")
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
    """Rebuild a Config from the resolved YAML stored in a run folder or HDF5 file."""
    raw = yaml.safe_load(text)
    if isinstance(raw, dict) and isinstance(raw.get("action"), dict):
        act = raw["action"]
        raw = dict(raw)
        raw["action"] = {"m2": act["m2"], "lam": act["lam"]}
    return config_from_dict(raw)
