"""The config sections: one frozen pydantic dataclass per section, every key declared once.

``name: Kind = key(default, allowed, note)`` is the whole declaration of a key (kinds in
:mod:`lattice_flows.config.kinds`): its type and bounds, its one default, the allowed values in
words (the error message quotes them) and a remark for the README table. Rules that join keys of
one section (a flow needs coupling or continuous layers, an odd conditioner an odd activation, a
forward objective data) sit on the section and raise :class:`ConfigError` with their own message;
the root :class:`~lattice_flows.config.schema.Config` holds the sections (:data:`SECTIONS`) and
the rules across them.
"""

import math
from typing import Literal

from pydantic import ConfigDict, model_validator
from pydantic.dataclasses import dataclass

from lattice_flows.config.kinds import (
    ConfigError, EvenNonNegInt, Flag, NonNegInt, PathText, PosInt, PosIntList, PosNumberList, PosOddInt,
    key, number,
)

_FROZEN = ConfigDict(extra="forbid")

PosNumber = number(gt=0)
NonNegNumber = number(ge=0)
UnitInterval = number(ge=0, le=1)


@dataclass(frozen=True, config=_FROZEN)
class LatticeConfig:
    """Periodic hypercubic lattice of extents ``shape`` = (L_1, ..., L_d) (docs/conventions.md)."""

    shape: PosIntList = key(..., "a list of positive integer extents, e.g. [8, 8]",
                            "every extent even with a flow (checkerboard couplings)")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def volume(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, config=_FROZEN)
class HMCConfig:
    """Hybrid Monte Carlo settings (see :mod:`lattice_flows.mcmc.hmc`)."""

    n_chains: PosInt = key(16, "a positive integer")
    n_therm: NonNegInt = key(200, "an integer >= 0")
    n_traj: PosInt = key(1000, "a positive integer")
    n_steps: PosInt = key(10, "a positive integer (leapfrog steps per trajectory)")
    step_size: Literal["auto"] | PosNumber = key(
        "auto", "'auto' or a positive step size", "auto: dual averaging during thermalisation, then frozen")
    target_acceptance: number(gt=0, lt=1) = key(0.8, "a number in (0, 1)")
    save_every: PosInt = key(1, "a positive integer (trajectories per saved configuration)")
    integrator: Literal["leapfrog", "omelyan"] = key("leapfrog")
    jitter: number(ge=0, lt=1) = key(0.5, "a number in [0, 1) (relative spread of the number of steps)")
    dtype: Literal["float64", "float32"] = key(
        "float64", note="HMC's own precision, independent of the top-level dtype; stored "
        "configurations are float32 either way")
    fourier_acceleration: Flag = key(
        False, "true or false (Fourier acceleration: kinetic term 1/2 pi^T M^-1 pi)",
        "M diagonal in momentum space, pi ~ N(0, M) and M^-1 pi by FFTs (docs/conventions.md)")
    fa_kernel: Literal["free", "measured"] = key(
        "free", note="free: M(p) = 2 (phat^2 + fa_mu2); measured: M(p) = 1/G(p) from the "
        "thermalisation's propagator, frozen before production")
    fa_mu2: Literal["auto"] | PosNumber = key(
        "auto", "'auto' or a positive mass squared",
        "auto: m2 for a free field (lam = 0), else fitted to the p != 0 modes of the measured G(p)")
    trajectory_length: Literal["auto"] | PosNumber | None = key(
        None, "null, 'auto' or a positive trajectory length",
        "null: n_steps x step_size; tau: n_steps = max(1, round(tau / eps)); auto: scanned in "
        "thermalisation (lattice_flows/mcmc/hmc_tuning.py)")


@dataclass(frozen=True, config=_FROZEN)
class FlowConfig:
    """Flow architecture (see :mod:`lattice_flows.flows`)."""

    n_layers: EvenNonNegInt = key(
        16, "an even integer >= 0 (coupling layers; 0 only with other layers)")
    hidden_channels: PosIntList = key(
        (32, 32), "a list of positive integers (conv channels per hidden layer)")
    kernel_size: PosOddInt = key(3, "a positive odd integer")
    equivariant: Flag = key(True, "true (exact Z2 equivariance) or false")
    conditioner: Literal["symmetrized", "odd", "global", "global_local"] = key(
        "symmetrized", note="symmetrized: net on x and -x, parity parts (any activation); odd: odd "
        "net in one pass (half the convolutions; tanh or softsign); global: lattice-sized FFT "
        "kernels in phat^2 on odd/even site features, exactly Z2 and D4 "
        "(docs/ablation_ladder.md); global_local: plus the symmetrized local net")
    global_channels: PosInt = key(
        8, "a positive integer (odd and even kernel fields of flow.conditioner = 'global')")
    # silu: as good as tanh/gelu in the ablation and ~10x cheaper per element than tanh on CPU
    activation: Literal["tanh", "leaky_relu", "gelu", "silu", "relu", "softsign"] = key("silu")
    fourier_layer: Flag = key(True, "true or false (learnable Fourier-space Gaussian layer)")
    fourier_m2_init: Literal["auto"] | PosNumber = key(
        "auto", "'auto' (m2 if m2 > 0, else 1) or a positive mass squared")
    zero_mode_layer: Flag = key(
        False, "true or false (learnable monotone map of the magnetisation, first layer)")
    zero_mode_widths: PosNumberList = key(
        (0.5, 1.0, 2.0, 4.0), "a list of positive numbers (widths w_k of the zero-mode map's tanh "
        "terms)", "deep in the broken phase add narrow ones (configs/broken/L16.yaml)")
    bijection: Literal["affine"] = key("affine")
    identity_init: Flag = key(
        True, "true (last conv of each conditioner starts at zero: the fresh flow is the "
        "identity) or false (PyTorch's default init, as in the published tutorial)")
    # continuous equivariant layers (lattice_flows/flows/cnf.py), after the Fourier layer
    cnf_layers: NonNegInt = key(
        0, "an integer >= 0 (continuous equivariant layers; 0 = off)",
        "after the Fourier layer; flow.n_layers may then be 0")
    # 16: |integrated - true log-det| ~1e-5 per configuration at trained L = 16 (8: ~2.5e-4)
    cnf_steps: PosInt = key(16, "a positive integer (fixed RK4 steps per continuous layer)")
    cnf_frequencies: PosInt = key(
        8, "a positive integer (sin(omega phi) features per continuous layer)")
    cnf_time_basis: PosInt = key(5, "a positive integer (Fourier time functions of the kernels)")
    cnf_lipschitz_max: PosNumber = key(
        3.0, "a positive number (bound on the vector field's Lipschitz constant; keep "
        "cnf_lipschitz_max / cnf_steps <= ~0.4 for RK4 accuracy)")
    cnf_kernel: Literal["phat", "orbit", "phat+orbit"] = key(
        "phat", "",
        "kernels of the continuous layers: smooth in phat^2, free per lattice orbit of the "
        "separation up to cnf_kernel_range, or their sum (flows/cnf.py)")
    cnf_kernel_range: PosInt = key(
        16, "a positive integer (longest separation component of the orbit kernels)",
        "kernels do not depend on L: separations that do not fit the lattice are unused there")

    @model_validator(mode="after")
    def _layers_fit_together(self) -> "FlowConfig":
        if self.n_layers == 0 and self.cnf_layers == 0:
            raise ConfigError(
                "config key 'flow.n_layers': value 0 is not allowed with flow.cnf_layers = 0; "
                "the flow needs coupling or continuous layers (n_layers > 0 or cnf_layers > 0)."
            )
        if self.conditioner == "odd" and not self.equivariant:
            raise ConfigError(
                "config key 'flow.conditioner': value 'odd' is an exactly Z2-equivariant net; it "
                "is not allowed with flow.equivariant = false (use 'symmetrized')."
            )
        if self.conditioner in ("global", "global_local") and not self.equivariant:
            raise ConfigError(
                f"config key 'flow.conditioner': value '{self.conditioner}' is an exactly "
                "Z2-equivariant conditioner; it is not allowed with flow.equivariant = false."
            )
        if self.conditioner == "odd" and self.activation not in ("tanh", "softsign"):
            raise ConfigError(
                f"config key 'flow.activation': value '{self.activation}' is not allowed with "
                "flow.conditioner = 'odd', which needs an odd activation: tanh or softsign."
            )
        return self


@dataclass(frozen=True, config=_FROZEN)
class TrainConfig:
    """Flow training (see :mod:`lattice_flows.training`)."""

    steps: PosInt = key(2000, "a positive integer (optimizer steps)")
    batch_size: PosInt = key(256, "a positive integer (global batch size)")
    lr: PosNumber = key(3e-3, "a positive learning rate")
    lr_schedule: Literal["cosine", "constant"] = key("cosine")
    warmup_steps: NonNegInt = key(0, "an integer >= 0 (linear warm-up steps)")
    optimizer: Literal["adam", "adamw"] = key("adam")
    weight_decay: NonNegNumber = key(0.0, "a number >= 0")
    objective: Literal["reverse", "path_gradient", "path_gradient_fast", "forward", "mixed"] = key(
        "reverse", note="forward and mixed need train.data")
    data: PathText | None = key(
        None, "a path to a lattice_flows HDF5 sample file (e.g. hmc.h5) or null")
    alpha: UnitInterval = key(0.5, "a number in [0, 1] (weight of reverse KL in 'mixed')")
    alpha_final: UnitInterval | None = key(
        None, "null or a number in [0, 1] (alpha at the last step; linear schedule)")
    grad_clip: NonNegNumber = key(10.0, "a number >= 0 (max gradient norm; 0 = off)")
    max_nonfinite: PosInt = key(
        20, "a positive integer (consecutive non-finite steps before stopping)")
    log_every: PosInt = key(50, "a positive integer (steps between metric records)")
    checkpoint_every: PosInt = key(500, "a positive integer (steps between checkpoints)")
    init_from: PathText | None = key(
        None, "null or a path to a flow checkpoint (flow.pt or train.ckpt)")
    init_from_missing: Literal["error", "fresh"] = key(
        "error", note="init_from absent: stop and name the run to train first (error), or "
        "start a fresh flow with a warning in the log (fresh)")
    eval_samples: PosInt = key(
        10240, "a positive integer (fresh samples for the final ESS/acceptance)")
    eval_batch_size: PosInt = key(512, "a positive integer")
    time_budget: PosNumber | None = key(
        None, "null or a positive number of seconds for training (on train.budget_clock)")
    sign_flip: Flag = key(True, "true or false (random Z2 sign flips of training data)")
    validation_fraction: number(ge=0, le=0.5) = key(
        0.1, "a number in [0, 0.5] (share of data rows held out for the validation NLL)")
    budget_clock: Literal["device", "cpu", "wall"] = key(
        "device", note="the clock of time_budget and of its cosine schedule: device-s (CPU-s on "
        "a CPU, wall-s of the GPU on CUDA), CPU-s or wall-s; fixed for a run (a resumed run "
        "keeps it)")

    @model_validator(mode="after")
    def _data_for_data_objectives(self) -> "TrainConfig":
        if self.objective in ("forward", "mixed") and not self.data:
            raise ConfigError(
                f"config key 'train.data' is missing; objective '{self.objective}' needs "
                "training configurations: the path of a lattice_flows HDF5 sample file (e.g. hmc.h5)."
            )
        return self


@dataclass(frozen=True, config=_FROZEN)
class SampleConfig:
    """Flow production (see :mod:`lattice_flows.mcmc.flow_run`)."""

    mode: Literal["mcmc", "importance", "composite"] = key(
        "mcmc", note="composite: flow steps + HMC trajectories per sweep, needs an hmc section")
    n_chains: PosInt = key(16, "a positive integer (independent chains)")
    n_samples: PosInt = key(
        1000, "a positive integer (Metropolis steps per chain, or samples per column in "
        "importance mode)")
    batch_size: PosInt = key(1024, "a positive integer (proposals generated per flow call)")
    flow: PathText | None = key(None, "null (the run folder's flow.pt) or a path to a flow.pt")
    save_every: PosInt = key(1, "a positive integer (Metropolis steps per saved configuration)")
    cnf_steps: PosInt | None = key(
        None, "null (the RK4 steps the flow was trained with) or a positive integer (RK4 steps "
        "of every continuous layer while sampling)")
    flow_steps: PosInt = key(
        1, "a positive integer (flow independence steps per sweep of mode 'composite')")
    hmc_trajectories: PosInt = key(
        1, "a positive integer (HMC trajectories per sweep of mode 'composite')")


@dataclass(frozen=True, config=_FROZEN)
class OutputConfig:
    """Where a run writes: the run folder, and rows per chunk write/checkpoint."""

    dir: PathText = key("runs/default", "a non-empty path to the run folder")
    chunk_rows: PosInt = key(100, "a positive integer (saved rows per chunk write and checkpoint)")
    store_G: Flag = key(True, "true or false (store the full G(y) per configuration)")


SECTIONS: dict[str, type] = {
    "lattice": LatticeConfig, "hmc": HMCConfig, "flow": FlowConfig, "train": TrainConfig,
    "sample": SampleConfig, "output": OutputConfig,
}
