"""The HMC tuning plan from the ``hmc`` section, its refusals, and the HMC before thermalisation.

:class:`TuningPlan` (from :func:`plan_from_config`) holds the segments of the ``hmc.n_therm``
thermalisation trajectories (``measure``, ``tune``, ``scan``), the trajectory lengths the
``auto`` scan tries and the starting eps; :func:`check_plan` refuses thermalisations too short
for them; :func:`hmc_from_config` builds the :class:`HMC` before thermalisation (starting eps,
n_steps, integrator, jitter and the FA mass when already known). Running the segments is
:mod:`lattice_flows.mcmc.hmc_tuning` (the protocol, in its docstring); docs/conventions.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from lattice_flows.config import Config, ConfigError
from lattice_flows.mcmc.fourier_mass import free_mass
from lattice_flows.mcmc.hmc import HMC
from lattice_flows.theory.phi4 import Phi4Action

FA_LENGTH = math.pi / 2  # a quarter period of every free-field mode under the FA kernels
#: trajectories per length of the ``auto`` scan below which it refuses to run
MIN_SCAN_PER_LENGTH = 4
MIN_MEASURE = 10


@dataclass(frozen=True)
class TuningPlan:
    """What thermalisation tunes, from the ``hmc`` section (:func:`plan_from_config`)."""

    n_therm: int
    tune_eps: bool
    step_size: float | None  # None: 'auto'
    target: float
    n_steps: int
    fourier: bool
    kernel: str  # 'free' | 'measured'
    mu2: float | None  # None: estimate it from the measured propagator
    trajectory_length: float | str | None
    shape: tuple[int, ...]

    @property
    def needs_measurement(self) -> bool:
        return self.fourier and (self.kernel == "measured" or self.mu2 is None)

    def scan_lengths(self, eps: float) -> list[float]:
        if self.fourier:
            return [FA_LENGTH * 2 ** (k / 2) for k in range(-4, 5)]
        return [self.n_steps * eps * 2 ** (k / 2) for k in range(-4, 7)]

    def segments(self) -> list[tuple[str, int]]:
        """(name, trajectories) of the thermalisation segments, in order; they sum to n_therm."""
        n = self.n_therm
        n_measure = n // 3 if self.needs_measurement else 0
        n_scan = n // 3 if self.trajectory_length == "auto" else 0
        return [("measure", n_measure), ("tune", n - n_measure - n_scan), ("scan", n_scan)]

    def tune_length(self) -> float | None:
        """The trajectory length held while eps is tuned (None: n_steps fixed)."""
        if isinstance(self.trajectory_length, float):
            return self.trajectory_length
        return FA_LENGTH if self.fourier and self.trajectory_length == "auto" else None

    def initial_step_size(self, fourier_now: bool) -> float:
        """eps of the first trajectory (of a segment): hmc.step_size when given, else the
        tuning length over n_steps (1 / n_steps for unit mass and a null length)."""
        if self.step_size is not None:
            return self.step_size
        length = self.tune_length()
        if length is None:
            length = FA_LENGTH if fourier_now else 1.0
        return length / self.n_steps


def plan_from_config(cfg: Config) -> TuningPlan:
    """The :class:`TuningPlan` of ``cfg.hmc``; free field: lam = 0 and m2 > 0."""
    h = cfg.hmc
    free_field = cfg.action.lam == 0 and cfg.action.m2 > 0
    if h.fa_mu2 == "auto":
        mu2 = float(cfg.action.m2) if free_field else None
    else:
        mu2 = float(h.fa_mu2)
    tl = h.trajectory_length
    return TuningPlan(
        n_therm=h.n_therm, tune_eps=h.step_size == "auto",
        step_size=None if h.step_size == "auto" else float(h.step_size),
        target=h.target_acceptance, n_steps=h.n_steps, fourier=h.fourier_acceleration,
        kernel=h.fa_kernel, mu2=mu2,
        trajectory_length=tl if tl in (None, "auto") else float(tl),
        shape=tuple(cfg.lattice.shape),
    )


def check_plan(plan: TuningPlan) -> None:
    """Refuse thermalisations too short for what they must tune (ConfigError naming the keys)."""
    n_measure, _, n_scan = (n for _, n in plan.segments())
    if plan.needs_measurement and n_measure < MIN_MEASURE:
        what = "fa_kernel 'measured'" if plan.kernel == "measured" else "fa_mu2 'auto' at lam > 0"
        raise ConfigError(
            f"config key 'hmc.n_therm': value {plan.n_therm} is too small for {what}; expected "
            f"at least {3 * MIN_MEASURE} thermalisation trajectories (a third of them measure "
            "the propagator G(p)), or give a numeric hmc.fa_mu2 with fa_kernel 'free'.")
    if plan.trajectory_length == "auto":
        n_len = len(plan.scan_lengths(1.0))
        if n_scan < MIN_SCAN_PER_LENGTH * n_len:
            raise ConfigError(
                f"config key 'hmc.n_therm': value {plan.n_therm} is too small for "
                f"trajectory_length 'auto'; expected at least {3 * MIN_SCAN_PER_LENGTH * n_len} "
                f"thermalisation trajectories (a third of them scan {n_len} lengths), or give a "
                "numeric hmc.trajectory_length.")


def hmc_from_config(cfg: Config, action: Phi4Action, shape: tuple[int, ...],
                    generator: torch.Generator, device=None, dtype=None) -> HMC:
    """The :class:`HMC` of ``cfg.hmc`` before thermalisation: the starting eps, n_steps,
    integrator, jitter and, when already known (FA ``free`` kernel with mu^2 given or the free
    field's m^2), the FA mass; :func:`~lattice_flows.mcmc.hmc_tuning.run_tuning` sets the rest.
    ``device``/``dtype`` are those of the chains (the mass is stored in float64 and cast on
    use)."""
    h = cfg.hmc
    plan = plan_from_config(cfg)
    if tuple(shape) != plan.shape:
        plan = dataclasses.replace(plan, shape=tuple(shape))
    hmc = HMC(action, plan.initial_step_size(plan.fourier and not plan.needs_measurement),
              h.n_steps, h.integrator, h.jitter, generator)
    prepare_hmc(plan, hmc, device)
    if cfg.compile:  # compiled force + drift/kick kernels (lattice_flows/compiled.py)
        from lattice_flows.mcmc.hmc_compiled import compile_hmc
        compile_hmc(hmc)
    return hmc


def prepare_hmc(plan: TuningPlan, hmc: HMC, device=None) -> None:
    """Before the first thermalisation trajectory: the FA mass when already known (``free``
    kernel with mu^2 given or the free field's m^2) and n_steps = round(tau / eps) for a
    tuning length tau. Idempotent, so an HMC built by hand (``HMC(...)``) gets the same."""
    if plan.fourier and not plan.needs_measurement and hmc.mass is None:
        mass = free_mass(plan.shape, plan.mu2)
        hmc.set_mass(mass if device is None else mass.to(device))
    length = plan.tune_length()
    if length is not None:
        hmc.n_steps = max(1, round(length / hmc.step_size))


def check_eps_tuning(h, what: str = "") -> None:
    """Refuse ``step_size: auto`` with fewer than 20 thermalisation trajectories (ConfigError
    naming hmc.n_therm; ``what`` names whose step size, e.g. " of the composite sampler's HMC")."""
    if h.step_size == "auto" and h.n_therm < 20:
        raise ConfigError(
            f"config key 'hmc.n_therm': value {h.n_therm} is too small for step_size 'auto'; "
            f"expected at least 20 thermalisation trajectories to tune the step size{what} "
            "(or give a numeric hmc.step_size)."
        )
