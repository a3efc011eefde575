"""One optimiser step of a training run: lr schedule, loss, backward, clipping, non-finite guards.

The gradient is all-reduced over the ranks before clipping (``train.grad_clip``).

    lr(step) = train.lr * lr_multiplier(step, ...)   (linear warm-up, then constant or cosine)

A non-finite loss or gradient norm (on any rank) skips the step; ``train.max_nonfinite`` such
steps in a row stop the run with :class:`TrainingError`. The run's state is
:class:`lattice_flows.training.train_state.TrainRun`.
"""

from __future__ import annotations

import math

import torch

from lattice_flows.faults import nan_injected
from lattice_flows.logs import log
from lattice_flows.training.budget import budget_fraction
from lattice_flows.training.train_state import TrainRun


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss keeps being non-finite); the message says why."""


def lr_multiplier(step: int, total: int, warmup: int, schedule: str,
                  budget_fraction: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up, then constant or cosine decay to 0.

    The cosine runs over the steps, or over the time budget when ``train.time_budget`` is
    set, whichever is used up first (``budget_fraction`` = seconds used / budget, both on
    ``train.budget_clock``, :mod:`lattice_flows.training.budget`).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), budget_fraction))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _set_lr(run: TrainRun) -> float:
    """Set the optimiser's lr for the coming step (:func:`lr_multiplier`) and return it."""
    tc = run.tc
    frac = budget_fraction(run.seconds, tc.time_budget, tc.budget_clock)
    lr = tc.lr * lr_multiplier(run.step_no, tc.steps, tc.warmup_steps, tc.lr_schedule, frac)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def _poison_gradient_with(loss: torch.Tensor, flow: torch.nn.Module) -> None:
    """Add ``0 * loss`` to one gradient: exactly nothing when the loss is finite, NaN when it
    is not (0 * inf = 0 * NaN = NaN), without waiting for the device. After the all-reduce the
    NaN is in every rank's gradient, so every rank skips the step together."""
    p = next(p for p in flow.parameters() if p.requires_grad)
    zero_or_nan = loss.detach().to(p.dtype) * 0.0
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    p.grad.add_(zero_or_nan)


def optimizer_step(run: TrainRun) -> None:
    """One optimiser step: schedules, loss, backward, gradient all-reduce and clipping; a
    non-finite loss or gradient skips the step (``train.max_nonfinite`` in a row stop the
    run with :class:`TrainingError`). The step's loss, gradient norm and log-weights join
    the metric window.

    One host synchronisation per step: the loss and the clipped gradient norm are read
    together (one ``tolist`` of a stacked pair) to decide the skip. With several ranks a
    non-finite local loss first poisons the local gradient (:func:`_poison_gradient_with`), so
    the all-reduced gradients, identical on every rank, carry it, and the gradient norm every
    rank reads is non-finite on all of them: the ranks skip together without a collective
    vote. A non-finite loss on this rank alone is also caught by its own loss readout."""
    tc, flow, world, estimator = run.tc, run.flow, run.world, run.estimator
    if hasattr(estimator, "alpha") and tc.alpha_final is not None:
        estimator.alpha = tc.alpha + (tc.alpha_final - tc.alpha) * run.step_no / max(1, tc.steps - 1)
    run.current_lr = _set_lr(run)
    run.optimizer.zero_grad(set_to_none=True)
    loss, info = estimator.loss(flow, run.local_batch, generator=run.gen, data=run.data)
    if nan_injected("train_loss"):  # fault injection (tests only): a NaN loss, finite gradient
        loss = loss + float("nan")
    loss.backward()
    if nan_injected("train_grad"):  # fault injection (tests only)
        next(p for p in flow.parameters() if p.grad is not None).grad.fill_(float("inf"))
    if world is not None:
        _poison_gradient_with(loss, flow)
        world.allreduce_gradients(flow)
    gn = torch.nn.utils.clip_grad_norm_(
        flow.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")
    )
    loss_value, grad_norm = torch.stack([loss.detach().double(), gn.double()]).tolist()
    loss_ok = math.isfinite(loss_value)
    if not (loss_ok and math.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        run.nonfinite_total += 1
        run.consecutive_bad += 1
        if run.is_root:
            log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                        run.step_no, run.consecutive_bad)
        if run.consecutive_bad >= tc.max_nonfinite:
            raise TrainingError(
                f"training stopped at step {run.step_no}: {run.consecutive_bad} consecutive "
                "steps with a non-finite loss or gradient. Lower train.lr, raise "
                "train.grad_clip's effect (smaller value), or resume from the last checkpoint "
                f"{run.ckpt_path}."
            )
    else:
        run.consecutive_bad = 0
        run.optimizer.step()
    run.step_no += 1
    run.steps_window += 1
    run.seconds = run.clock.read()
    run.window_loss.append(loss_value if loss_ok else float("nan"))
    run.window_gn.append(grad_norm if loss_ok else float("nan"))
    if "log_w" in info:
        run.window_lw.append(info["log_w"].double())
