"""The HMC tuning protocol of thermalisation, as plain functions over (HMC, chains, state).

One protocol for the library (:func:`lattice_flows.mcmc.hmc_thermalise.thermalise`) and
``benchmarks/hmc.py``; what it tunes is the plan of :mod:`lattice_flows.mcmc.hmc_plan`. The
``hmc.n_therm`` thermalisation trajectories are split into up to three consecutive segments
(:meth:`~lattice_flows.mcmc.hmc_plan.TuningPlan.segments`):

1. ``measure`` (only for Fourier acceleration that needs a measured propagator: ``fa_kernel:
   measured``, or ``fa_kernel: free`` with ``fa_mu2: auto`` away from the free field):
   n_therm // 3 unit-mass trajectories (eps by dual averaging when ``step_size: auto``); the
   propagator G(p) = <|phi~(p)|^2> / V is averaged over the chains and the second half of the
   segment, then frozen into M(p) (:mod:`lattice_flows.mcmc.fourier_mass`). ``fa_mu2: auto``
   is m^2 for a free field (lam = 0, m^2 > 0), otherwise fitted to the p != 0 modes of G(p)
   (:func:`~lattice_flows.mcmc.fourier_mass.fit_mu2`).
2. ``tune``: eps by dual averaging (Hoffman & Gelman 2014, Alg. 5) toward
   ``hmc.target_acceptance`` with the final mass (restarted at the FA starting eps after a
   ``measure`` segment), then frozen at the dual-averaging estimate. With a trajectory length
   tau (a number, or pi/2 while tuning for ``auto`` with FA) the number of steps follows eps:
   n_steps = max(1, round(tau / eps)).
3. ``scan`` (only ``trajectory_length: auto``): n_therm // 3 trajectories at frozen eps over a
   geometric grid of lengths, pi/2 x 2^(k/2), k = -4..4 with FA (0.25..4 x pi/2; pi/2 is the
   period-quarter of every free mode), or (n_steps eps) x 2^(k/2), k = -4..6 without. Every
   length is judged over the same horizon in force evaluations, that of one trajectory of the
   middle grid length: a length s trajectories long is measured at lag k_s = round(F_mid / F_s)
   trajectories (>= 1, at most its trajectories in the scan; 1 for the middle and longer
   lengths). For each length the mean squared lag-k jump <(x_{t+k} - x_t)^2> of x = M^2 and
   x = |M| over all chains gives 1 - rho_k = <dx^2> / (2 Var x) (Var pooled over the whole scan),
   the per-trajectory rho = rho_k^(1/k) (exponential decay), tau_est = 1/2 + rho / (1 - rho)
   (floored at 1/2), and the length minimising (force evaluations per trajectory) x
   2 max(tau_est(M^2), tau_est(|M|)) is kept. Why the common horizon: near criticality a short
   trajectory's lag-1 jump is dominated by the fast modes, so lag 1 overrates short lengths (the
   E-ladder L = 32 point with FA ``free``: lag 1 chose 4 steps, 1060 force evaluations per
   independent M^2 against 710 at the fixed 10); over a horizon of several short trajectories
   the slow modes show. Still a heuristic: short stretches of a few chains, exponential decay
   assumed; it is logged and its choice stored.

Everything the protocol carries between trajectories lives in one ``state`` dict of plain values
and tensors, so a thermalisation stopped after any trajectory and resumed from its checkpoint
equals an uninterrupted one. The frozen result (eps, n_steps, M(p), mu^2) is in ``hmc`` and in
:func:`frozen_settings`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from lattice_flows.logs import log
from lattice_flows.mcmc.fourier_mass import fit_mu2, free_mass, measured_mass, power_spectrum_sum
from lattice_flows.mcmc.hmc import HMC, DualAveraging
from lattice_flows.mcmc.hmc_plan import TuningPlan


def new_state(plan: TuningPlan, hmc: HMC) -> dict[str, Any]:
    """The protocol's state before the first thermalisation trajectory."""
    tuner = None
    if plan.tune_eps:
        tuner = dataclasses.asdict(DualAveraging(math.log(hmc.step_size), plan.target))
    return {"done": 0, "tuner": tuner, "g_sum": None, "g_count": 0, "mu2": plan.mu2,
            "scan": [], "scan_sums": None, "scan_prev": None, "scan_var": None,
            "last_accept_prob": None}


def _tuner(state: dict) -> DualAveraging:
    tuner = DualAveraging(0.0, 0.5)
    for key, value in state["tuner"].items():  # no __post_init__: it would reset mu
        setattr(tuner, key, value)
    return tuner


def _segment_at(plan: TuningPlan, done: int) -> tuple[str, int, int]:
    """(segment name, index within it, its length) of thermalisation trajectory ``done``."""
    start = 0
    for name, n in plan.segments():
        if done < start + n:
            return name, done - start, n
        start += n
    raise IndexError(done)


def _scan_point(plan: TuningPlan, index: int, n_scan: int, eps: float) -> tuple[int, int, float]:
    """(grid point, index within it, its trajectories) of scan trajectory ``index``."""
    lengths = plan.scan_lengths(eps)
    per, extra = divmod(n_scan, len(lengths))
    start = 0
    for k in range(len(lengths)):
        n = per + (1 if k < extra else 0)
        if index < start + n:
            return k, index - start, n
        start += n
    raise IndexError(index)


def _magnetisation_pair(phi: torch.Tensor, ndim: int) -> torch.Tensor:
    """(M^2, |M|) per chain, shape (2, chains), float64."""
    m = phi.to(torch.float64).mean(dim=tuple(range(phi.dim() - ndim, phi.dim())))
    return torch.stack([m * m, m.abs()])


def _jump_tau(n_jumps: float, sum_dx2: float, var: float, lag: int = 1) -> float:
    """tau_est = 1/2 + rho/(1 - rho), rho = rho_k^(1/k) per trajectory from the lag-k
    autocorrelation 1 - rho_k = <dx^2> / (2 Var) (k = ``lag``), floored at 1/2 (rho_k <= 0);
    infinite when nothing moved."""
    if sum_dx2 <= 0.0 or n_jumps == 0:
        return math.inf
    one_minus_rho_k = min(sum_dx2 / n_jumps / (2.0 * var), 1.0) if var > 0 else 1.0
    rho = (1.0 - one_minus_rho_k) ** (1.0 / lag)
    if rho >= 1.0:
        return math.inf
    return 0.5 + rho / (1.0 - rho)


def scan_lag(plan: TuningPlan, hmc: HMC, eps: float, length: float, n_point: int) -> int:
    """Lag k_s (trajectories) at which the scan judges ``length``: the force evaluations of one
    trajectory of the middle grid length over those of one of ``length``, rounded, in
    [1, n_point] (module docstring, ``scan``)."""
    lengths = plan.scan_lengths(eps)
    mid = hmc.force_evaluations(max(1, round(lengths[len(lengths) // 2] / eps)))
    own = hmc.force_evaluations(max(1, round(length / eps)))
    return max(1, min(n_point, round(mid / own)))


def _end_measure(plan: TuningPlan, hmc: HMC, state: dict) -> None:
    g = state["g_sum"] / state["g_count"]
    if plan.kernel == "measured":
        mass = measured_mass(g)
        how = "M(p) = 1/G(p) from the measured propagator"
    else:
        if state["mu2"] is None:
            state["mu2"] = fit_mu2(g, plan.shape)
            how = f"mu2 = {state['mu2']:.5g} fitted to the p != 0 modes of the measured G(p)"
        else:
            how = f"mu2 = {state['mu2']:.5g}"
        mass = free_mass(plan.shape, state["mu2"])
    hmc.set_mass(mass.to(g.device))
    log.info("FA-HMC: mass kernel %s frozen (%s) after %d measured configurations",
             plan.kernel, how, state["g_count"])
    hmc.step_size = plan.initial_step_size(True)
    length = plan.tune_length()
    if length is not None:
        hmc.n_steps = max(1, round(length / hmc.step_size))
    if plan.tune_eps:
        state["tuner"] = dataclasses.asdict(DualAveraging(math.log(hmc.step_size), plan.target))


def _end_tune(plan: TuningPlan, hmc: HMC, state: dict) -> None:
    if plan.tune_eps:
        hmc.step_size = _tuner(state).final_step_size
    if isinstance(plan.trajectory_length, float):
        hmc.n_steps = max(1, round(plan.trajectory_length / hmc.step_size))
    log.info("thermalised; step size frozen at %.5g, n_steps %d (trajectory length %.4g)",
             hmc.step_size, hmc.n_steps, hmc.step_size * hmc.n_steps)
    if plan.trajectory_length == "auto":
        state["scan_eps"] = hmc.step_size


def _end_scan(plan: TuningPlan, hmc: HMC, state: dict) -> None:
    n, sx, sxx = state["scan_var"].unbind(dim=1)
    var = (sxx / n - (sx / n) ** 2).tolist()
    for row in state["scan"]:
        lag = int(row.get("lag", 1))
        row["tau_M2"] = _jump_tau(row["n_jumps"], row["sum_dx2"][0], var[0], lag)
        row["tau_absM"] = _jump_tau(row["n_jumps"], row["sum_dx2"][1], var[1], lag)
        row["cost"] = row["force_evals"] * 2 * max(row["tau_M2"], row["tau_absM"])
        log.info("trajectory-length scan: length %.4g (n_steps %d, lag %d): tau_est M2 %.3g, "
                 "|M| %.3g, cost %.4g force evaluations per effective sample", row["length"],
                 row["n_steps"], lag, row["tau_M2"], row["tau_absM"], row["cost"])
    best = min(state["scan"], key=lambda row: row["cost"])
    hmc.n_steps = best["n_steps"]
    log.info("trajectory length auto: chose %.4g = %d x eps %.5g (heuristic: force evaluations x "
             "tau_est of the slowest of M2, |M| over a common horizon)", best["length"], best["n_steps"],
             hmc.step_size)


def tuning_step(plan: TuningPlan, hmc: HMC, phi: torch.Tensor, state: dict) -> torch.Tensor:
    """Run thermalisation trajectory ``state['done']`` on the chains ``phi`` and update
    ``state`` and ``hmc`` (eps, n_steps, mass at the segment ends); returns the chains."""
    name, index, n_seg = _segment_at(plan, state["done"])
    ndim = hmc.action.ndim
    if name == "scan":
        k, i_in, n_pt = _scan_point(plan, index, n_seg, state["scan_eps"])
        length = plan.scan_lengths(state["scan_eps"])[k]
        hmc.n_steps = max(1, round(length / hmc.step_size))
        lag = scan_lag(plan, hmc, state["scan_eps"], length, n_pt)
        if i_in == 0:
            # the last `lag` values of (M^2, |M|) per chain, oldest first: (lag, 2, chains)
            state["scan_prev"] = _magnetisation_pair(phi, ndim).unsqueeze(0)
            state["scan_sums"] = torch.zeros(2, dtype=torch.float64, device=phi.device)
            if state["scan_var"] is None:
                state["scan_var"] = torch.zeros(2, 3, dtype=torch.float64, device=phi.device)
        phi, _, prob, _ = hmc.step(phi)
        now = _magnetisation_pair(phi, ndim)
        prev = state["scan_prev"]
        if prev.dim() == 2:  # a checkpoint of the lag-1 scan (before lags): its last value
            prev = prev.unsqueeze(0)
        if i_in + 1 >= lag:  # x_{t+k} - x_t with k = lag
            state["scan_sums"] += ((now - prev[0]) ** 2).sum(dim=1)
        state["scan_var"] += torch.stack(
            [torch.full_like(now[:, 0], now.shape[1]), now.sum(1), (now * now).sum(1)], dim=1)
        state["scan_prev"] = torch.cat([prev, now.unsqueeze(0)])[-lag:]
        if i_in == n_pt - 1:
            state["scan"].append({"length": hmc.n_steps * hmc.step_size, "n_steps": hmc.n_steps,
                                  "force_evals": hmc.force_evaluations(hmc.n_steps),
                                  "lag": lag, "n_jumps": (n_pt + 1 - lag) * now.shape[1],
                                  "sum_dx2": state["scan_sums"].tolist()})
    else:
        phi, _, prob, _ = hmc.step(phi)
        if state["tuner"] is not None:
            tuner = _tuner(state)
            hmc.step_size = tuner.update(float(prob.mean()))
            state["tuner"] = dataclasses.asdict(tuner)
            length = plan.tune_length() if name == "tune" else None
            if length is not None:
                hmc.n_steps = max(1, round(length / hmc.step_size))
        if name == "measure" and index >= n_seg // 2:
            ps = power_spectrum_sum(phi, ndim)
            state["g_sum"] = ps if state["g_sum"] is None else state["g_sum"] + ps
            state["g_count"] += phi.shape[0]
    state["done"] += 1
    state["last_accept_prob"] = float(prob.mean())
    if index == n_seg - 1:
        {"measure": _end_measure, "tune": _end_tune, "scan": _end_scan}[name](plan, hmc, state)
    return phi


def finish_without_thermalisation(plan: TuningPlan, hmc: HMC) -> None:
    """n_therm = 0: nothing to tune; a numeric trajectory length still sets n_steps."""
    if isinstance(plan.trajectory_length, float):
        hmc.n_steps = max(1, round(plan.trajectory_length / hmc.step_size))


def run_tuning(plan: TuningPlan, hmc: HMC, phi: torch.Tensor, state: dict | None = None,
               after_each=None) -> torch.Tensor:
    """The whole thermalisation of ``plan`` (from ``state``, or fresh); ``after_each(phi,
    state)`` runs after every trajectory (a stop check that checkpoints and raises)."""
    state = new_state(plan, hmc) if state is None else state
    if plan.n_therm == 0:
        finish_without_thermalisation(plan, hmc)
    while state["done"] < plan.n_therm:
        phi = tuning_step(plan, hmc, phi, state)
        if after_each is not None:
            after_each(phi, state)
    return phi


def frozen_settings(hmc: HMC, state: dict | None) -> dict[str, Any]:
    """What thermalisation froze, for the checkpoint and the sample file attrs; with a host
    generator of the step counts (:attr:`~lattice_flows.mcmc.hmc.HMC.step_generator`, chains on
    a GPU) also its state, ``step_rng`` (checkpoints only)."""
    out: dict[str, Any] = {"step_size": float(hmc.step_size), "n_steps": int(hmc.n_steps),
                           "trajectory_length": float(hmc.step_size * hmc.n_steps)}
    if hmc.step_generator is not None:
        out["step_rng"] = hmc.step_generator.get_state().clone()
    if hmc.mass is not None:
        out["fa_mass"] = hmc.mass.detach().cpu().clone()
    if state is not None and state.get("mu2") is not None:
        out["fa_mu2"] = float(state["mu2"])
    if state is not None and state.get("scan"):
        out["trajectory_scan"] = [dict(row) for row in state["scan"]]
    return out


def restore_frozen(hmc: HMC, state: dict[str, Any], device=None) -> None:
    """The inverse of :func:`frozen_settings`: eps, n_steps and the FA mass from a checkpoint
    ``state`` (checkpoints from before this module: eps only; no ``fa_mass``: unit mass), and
    the step-count generator's state where both the checkpoint and ``hmc`` have one (a
    checkpoint written on the CPU has none: a GPU resume continues from the generator's seed)."""
    hmc.step_size = float(state["step_size"])
    if hmc.step_generator is not None and "step_rng" in state:
        hmc.step_generator.set_state(state["step_rng"])
    if "n_steps" in state:
        hmc.n_steps = int(state["n_steps"])
    mass = state.get("fa_mass")
    hmc.set_mass(None if mass is None else mass.to(device) if device is not None else mass)
