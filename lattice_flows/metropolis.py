"""Independence Metropolis-Hastings with a flow proposal (docs/conventions.md "Statistics").

Target p(phi) ∝ exp(-S(phi)), proposal q(phi) from the flow, importance weight
log w(phi) = -S(phi) - log q(phi). From state phi, a proposal phi' (drawn independently of phi)
is accepted with probability

    min(1, w(phi') / w(phi)) = min(1, exp(log w(phi') - log w(phi))),

evaluated in float64. Proposals are generated in big no-grad batches by the flow; this module is
the cheap sequential accept/reject on their log-weights, separately testable. Non-finite
proposals are always rejected and counted in ``n_nonfinite``: log w = -inf is a zero weight
(acceptance probability exactly 0, a correct rejection); NaN or +inf is a failure of the flow.
:mod:`lattice_flows.weights` keeps the two apart (``n_zero``, ``n_failed``).

The one implementation, :func:`accept_reject`, serves the flow samplers (many chains, blocks of
proposals, :func:`independence_block`; :mod:`lattice_flows.mcmc.flow_run` and the flow steps of
:mod:`lattice_flows.mcmc.composite_run`) and the flow-quality figures (one chain over
fresh samples, :func:`independence_chain`; :mod:`lattice_flows.flows.quality`). It compares
``log u < log w' - log w`` in float64 on Python floats: the same IEEE operations as a
vectorised loop, without a handful of tensor operations per step.
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

    Step k of chain c accepts proposal k iff it is finite and ``log u[k, c] < log w'[k, c] -
    log w`` (log w of the chain's state before the step), or the chain has no state yet.

    Args:
        log_w_proposals: (n_steps, n_chains) log weights of the proposals in order.
        log_w_current: (n_chains,) log weight of each chain's current state (-inf for "no state
            yet": then the first finite proposal is always accepted).
        uniforms: (n_steps, n_chains) U(0,1) numbers in float64.
    """
    lw = log_w_proposals.to(torch.float64)
    device = lw.device
    n_steps, n_chains = lw.shape
    n_nonfinite = int((~torch.isfinite(lw)).sum())
    columns = lw.T.cpu().tolist()
    log_u_columns = torch.log(uniforms.to(torch.float64)).T.cpu().tolist()
    start = log_w_current.to(torch.float64).cpu().tolist()
    acc, idx, trace = [], [], []
    for values, log_u, cur in zip(columns, log_u_columns, start):
        a_c, i_c, t_c, last = [False] * n_steps, [-1] * n_steps, [0.0] * n_steps, -1
        for k, x in enumerate(values):
            # log u < log w' - log w  <=>  u < w'/w ; cur = -inf accepts any finite proposal
            if math.isfinite(x) and (cur == -math.inf or log_u[k] < x - cur):
                cur, last, a_c[k] = x, k, True
            i_c[k], t_c[k] = last, cur
        acc.append(a_c)
        idx.append(i_c)
        trace.append(t_c)
    final = [t[-1] if n_steps else c for t, c in zip(trace, start)]
    return MetropolisResult(
        _by_step(acc, torch.bool, device), _by_step(idx, torch.int64, device),
        _by_step(trace, torch.float64, device),
        torch.tensor(final, dtype=torch.float64, device=device), n_nonfinite,
    )


def independence_block(
    current: dict[str, torch.Tensor], proposals: dict[str, torch.Tensor], uniforms: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], MetropolisResult]:
    """k independence-Metropolis steps of every chain over a block of proposals, with the
    states they leave the chains in.

    ``current``: each chain's state, ``{name: (n_chains, ...)}`` with ``log_w`` among the names
    (-inf: no state yet); ``proposals``: the same names, ``(k, n_chains, ...)``, in order;
    ``uniforms``: (k, n_chains) U(0,1) in float64. Accepts as :func:`accept_reject`
    (min(1, w'/w), docs/conventions.md "Statistics"). Returns ``block`` with
    ``block[name][j, c]`` the state of chain c after step j (the proposal it holds, or its state
    from before the block), and the :class:`MetropolisResult`."""
    res = accept_reject(proposals["log_w"], current["log_w"], uniforms)
    k, n_chains = res.index.shape
    src = res.index + 1  # 0: the state before the block
    cols = torch.arange(n_chains, device=src.device).expand(k, n_chains)
    block = {name: torch.cat([current[name][None], proposals[name]])[src, cols] for name in current}
    return block, res


def _by_step(columns: list[list], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-chain lists (n_chains, n_steps) as a (n_steps, n_chains) tensor on ``device``."""
    n_chains, n_steps = len(columns), len(columns[0]) if columns else 0
    return torch.tensor(columns, dtype=dtype).reshape(n_chains, n_steps).T.contiguous().to(device)


def independence_chain(log_w: torch.Tensor, uniforms: torch.Tensor) -> MetropolisResult:
    """One independence-Metropolis chain over ``log_w`` (proposals in order, flattened) with the
    U(0,1) numbers ``uniforms`` (one per proposal); the first step only initialises the chain.
    Result columns: one (``index[:, 0]`` is the proposal the chain is in after each step)."""
    lw = log_w.detach().reshape(-1, 1).to(torch.float64).cpu()
    return accept_reject(lw, torch.full((1,), -math.inf, dtype=torch.float64),
                         uniforms.reshape(-1, 1).cpu())


def chain_acceptance(result: MetropolisResult) -> float:
    """Accepted steps / steps of a chain started by its first proposal (step 0 not counted)."""
    n = result.accepted.shape[0]
    return int(result.accepted[1:].sum()) / max(1, n - 1)


def acceptance_rate(log_w: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Acceptance of one independence-Metropolis chain run over ``log_w`` in the given order
    (the flow-quality figure of docs/conventions.md; use >= 10,240 samples); the uniforms are
    drawn from ``generator`` (CPU, float64)."""
    if log_w.numel() < 2:
        return float("nan")
    u = torch.rand(log_w.numel(), generator=generator, dtype=torch.float64)
    return chain_acceptance(independence_chain(log_w, u))
