"""Independence Metropolis-Hastings with a flow proposal (CONVENTIONS.md "Statistics").

Target p(phi) ∝ exp(-S(phi)), proposal q(phi) from the flow, importance weight
log w(phi) = -S(phi) - log q(phi). From state phi, a proposal phi' (drawn independently of phi)
is accepted with probability

    min(1, w(phi') / w(phi)) = min(1, exp(log w(phi') - log w(phi))),

evaluated in float64. Proposals are generated in big no-grad batches by the flow; this module is
the cheap sequential accept/reject on their log-weights, separately testable. Non-finite
proposals are always rejected and counted in ``n_nonfinite``: log w = -inf is a zero weight
(acceptance probability exactly 0, a correct rejection); NaN or +inf is a failure of the flow.
:mod:`lattice_flows.weights` keeps the two apart (``n_zero``, ``n_failed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MetropolisResult:
    """Outcome of accept/reject over a block of proposals for ``n_chains`` chains.

    ``index[k, c]`` is the proposal index (into the block's column ``c``) that chain ``c`` is in
    after step k, or -1 when the chain still holds its state from before the block.
    """

    accepted: torch.Tensor  # (n_steps, n_chains) bool
    index: torch.Tensor  # (n_steps, n_chains) int64
    log_w: torch.Tensor  # (n_steps, n_chains) float64: log w of the current state after each step
    final_log_w: torch.Tensor  # (n_chains,) float64
    n_nonfinite: int


def accept_reject(
    log_w_proposals: torch.Tensor,
    log_w_current: torch.Tensor,
    uniforms: torch.Tensor,
) -> MetropolisResult:
    """Run independence-Metropolis steps over a block of proposals, column per chain.

    Args:
        log_w_proposals: (n_steps, n_chains) log weights of the proposals in order.
        log_w_current: (n_chains,) log weight of each chain's current state (-inf for "no state
            yet": then the first finite proposal is always accepted).
        uniforms: (n_steps, n_chains) U(0,1) numbers in float64.
    """
    lw = log_w_proposals.to(torch.float64)
    u = uniforms.to(torch.float64)
    cur = log_w_current.to(torch.float64).clone()
    n_steps, n_chains = lw.shape
    finite = torch.isfinite(lw)
    n_nonfinite = int((~finite).sum())
    log_u = torch.log(u)
    acc = torch.zeros((n_steps, n_chains), dtype=torch.bool, device=lw.device)
    idx = torch.full((n_steps, n_chains), -1, dtype=torch.int64, device=lw.device)
    trace = torch.empty((n_steps, n_chains), dtype=torch.float64, device=lw.device)
    last = torch.full((n_chains,), -1, dtype=torch.int64, device=lw.device)
    for k in range(n_steps):
        # log_u < log w' - log w  <=>  u < w'/w ; cur = -inf accepts any finite proposal
        diff = lw[k] - cur
        a = finite[k] & ((cur == -torch.inf) | (log_u[k] < diff))
        cur = torch.where(a, lw[k], cur)
        last = torch.where(a, torch.full_like(last, k), last)
        acc[k] = a
        idx[k] = last
        trace[k] = cur
    return MetropolisResult(acc, idx, trace, cur, n_nonfinite)


def acceptance_rate(log_w: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Acceptance of one independence-Metropolis chain run over ``log_w`` in the given order
    (the flow-quality figure of CONVENTIONS.md; use >= 10,240 samples)."""
    if log_w.numel() < 2:
        return float("nan")
    _, n_acc = independence_chain_indices(log_w, generator)
    return n_acc / (log_w.numel() - 1)


def independence_chain_indices(log_w: torch.Tensor, generator: torch.Generator | None = None
                               ) -> tuple[list[int], int]:
    """Run one independence-Metropolis chain over ``log_w`` (proposals in order); return the
    index of the current state after every step and the number of accepted steps (the first
    step only initialises the chain). Non-finite log-weights are always rejected."""
    values = log_w.detach().reshape(-1).to(torch.float64).cpu().tolist()
    log_u = torch.log(torch.rand(len(values), generator=generator, dtype=torch.float64)).tolist()
    cur, cur_i, n_acc, out = -math.inf, -1, 0, []
    for k, (x, lu) in enumerate(zip(values, log_u)):
        if math.isfinite(x) and (cur == -math.inf or lu < x - cur):
            cur, cur_i = x, k
            n_acc += k > 0
        out.append(cur_i)
    return out, n_acc
