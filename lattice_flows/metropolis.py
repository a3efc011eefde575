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
vectorised loop, without a handful of tensor operations per step, and with one device->host and
one host->device copy per block of proposals (not per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MetropolisResult:
    """Outcome of accept/reject over a block of proposals for ``n_chains`` chains.

    ``index[k, c]`` is the proposal index (into the block's column ``c``) that chain ``c`` is in
    after step k, or -1 when the chain still holds its state from before the block. The tensors
    are on the chains' device; the ``*_host`` arrays are the same figures on the host (numpy),
    for bookkeeping that needs no device work (counts, flags, the weight diagnostics).
    """

    accepted: torch.Tensor  # (n_steps, n_chains) bool
    index: torch.Tensor  # (n_steps, n_chains) int64
    log_w: torch.Tensor  # (n_steps, n_chains) float64: log w of the current state after each step
    final_log_w: torch.Tensor  # (n_chains,) float64
    n_nonfinite: int
    accepted_host: np.ndarray | None = None  # (n_steps, n_chains) bool
    final_log_w_host: np.ndarray | None = None  # (n_chains,) float64
    proposals_log_w_host: np.ndarray | None = None  # (n_steps, n_chains) float64: the input


def accept_reject(
    log_w_proposals: torch.Tensor,
    log_w_current: torch.Tensor,
    uniforms: torch.Tensor,
) -> MetropolisResult:
    """Run independence-Metropolis steps over a block of proposals, column per chain.

    Step k of chain c accepts proposal k iff it is finite and ``log u[k, c] < log w'[k, c] -
    log w`` (log w of the chain's state before the step), or the chain has no state yet.

    Host-device traffic per call: one device->host copy (log w', log u and the current log w
    in one tensor) and one host->device copy (the indices); the accept flags and the log w trace
    follow from the indices on the device (chain c accepted at step k iff ``index[k, c] == k``).

    Args:
        log_w_proposals: (n_steps, n_chains) log weights of the proposals in order.
        log_w_current: (n_chains,) log weight of each chain's current state (-inf for "no state
            yet": then the first finite proposal is always accepted).
        uniforms: (n_steps, n_chains) U(0,1) numbers in float64.
    """
    lw = log_w_proposals.to(torch.float64)
    device = lw.device
    n_steps, n_chains = lw.shape
    cur = log_w_current.to(device=device, dtype=torch.float64)
    log_u = torch.log(uniforms.to(torch.float64))
    host = torch.cat([lw, log_u, cur.reshape(1, n_chains)]).cpu().numpy()  # one copy
    lw_h, start_h = host[:n_steps], host[2 * n_steps]
    finite = np.isfinite(lw_h)
    idx = []
    for values, log_u_c, c0, ok in zip(lw_h.T.tolist(), host[n_steps:2 * n_steps].T.tolist(),
                                       start_h.tolist(), finite.T.tolist()):
        i_c, last = [-1] * n_steps, -1
        for k, x in enumerate(values):
            # log u < log w' - log w  <=>  u < w'/w ; c0 = -inf accepts any finite proposal
            if ok[k] and (c0 == -math.inf or log_u_c[k] < x - c0):
                c0, last = x, k
            i_c[k] = last
        idx.append(i_c)
    idx_h = np.asarray(idx, dtype=np.int64).reshape(n_chains, n_steps).T
    steps_h = np.arange(n_steps)[:, None]
    acc_h = idx_h == steps_h
    cols_h = np.arange(n_chains)
    trace_h = np.where(idx_h >= 0, lw_h[idx_h.clip(min=0), cols_h], start_h)
    final_h = trace_h[-1] if n_steps else start_h.copy()
    index = torch.from_numpy(np.ascontiguousarray(idx_h)).to(device)  # one copy back
    accepted = index == torch.arange(n_steps, device=device)[:, None]
    cols = torch.arange(n_chains, device=device).expand(n_steps, n_chains)
    trace = torch.cat([cur[None], lw])[index + 1, cols]
    final = trace[-1] if n_steps else cur.clone()
    return MetropolisResult(accepted, index, trace, final, int((~finite).sum()),
                            acc_h, final_h, lw_h)


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
