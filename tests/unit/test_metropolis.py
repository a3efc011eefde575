"""Independence Metropolis: detailed balance on a discrete target where p and q are exact."""

from __future__ import annotations

import math

import numpy as np
import torch

from lattice_flows.metropolis import accept_reject, acceptance_rate, chain_acceptance, independence_chain
from lattice_flows.estimates import gamma_method
from tests.conftest import family_sigma


def test_stationary_histogram_matches_target():
    """Target p and proposal q on 5 states; the chain's state frequencies equal p and the
    acceptance its exact value within 3 sigma, Sidak-corrected for the 6 checks (Gamma-method
    errors of the indicator functions, which include the autocorrelation)."""
    p = np.array([0.05, 0.4, 0.1, 0.25, 0.2])
    q = np.array([0.3, 0.1, 0.2, 0.2, 0.2])  # badly matched proposal: many rejections
    log_w_state = np.log(p) - np.log(q)
    g = torch.Generator().manual_seed(0)
    n_steps, n_chains = 20000, 16
    states = torch.multinomial(torch.tensor(q), n_steps * n_chains, replacement=True, generator=g)
    states = states.view(n_steps, n_chains)
    lw = torch.tensor(log_w_state)[states]
    u = torch.rand((n_steps, n_chains), generator=g, dtype=torch.float64)
    res = accept_reject(lw, torch.full((n_chains,), -math.inf, dtype=torch.float64), u)
    idx = res.index  # proposal index of the current state at each step
    chain = torch.gather(states, 0, idx.clamp(min=0))
    assert (idx >= 0).all()
    z_max = family_sigma(6)
    for k in range(5):
        est = gamma_method((chain == k).double().numpy())
        z = (est.value - p[k]) / est.error
        assert abs(z) < z_max, (k, est, p[k])
    # the exact acceptance of an independence sampler: E_{x~p, y~q} min(1, w(y)/w(x))
    w = p / q
    exact_acc = sum(p[i] * q[j] * min(1, w[j] / w[i]) for i in range(5) for j in range(5))
    acc = res.accepted[1:].double()
    est = gamma_method(acc.numpy())
    assert abs(est.value - exact_acc) < z_max * est.error


def test_nonfinite_proposals_are_rejected():
    lw = torch.tensor([[0.0], [math.nan], [math.inf], [-math.inf], [0.5]], dtype=torch.float64)
    res = accept_reject(lw, torch.tensor([-math.inf], dtype=torch.float64), torch.full((5, 1), 1e-9, dtype=torch.float64))
    assert res.accepted[:, 0].tolist() == [True, False, False, False, True]
    assert res.n_nonfinite == 3
    assert torch.isfinite(res.log_w).all()


def test_acceptance_rate_of_perfect_flow_is_one():
    assert acceptance_rate(torch.zeros(500) + 3.0) == 1.0


def _vectorised_rule(lw, cur, u):
    """The accept/reject rule written as a per-step tensor loop (the sampler's earlier code):
    an independent oracle for the list-based implementation."""
    cur = cur.clone()
    log_u = torch.log(u)
    finite = torch.isfinite(lw)
    acc = torch.zeros(lw.shape, dtype=torch.bool)
    idx = torch.full(lw.shape, -1, dtype=torch.int64)
    trace = torch.empty(lw.shape, dtype=torch.float64)
    last = torch.full((lw.shape[1],), -1, dtype=torch.int64)
    for k in range(lw.shape[0]):
        a = finite[k] & ((cur == -torch.inf) | (log_u[k] < lw[k] - cur))
        cur = torch.where(a, lw[k], cur)
        last = torch.where(a, torch.full_like(last, k), last)
        acc[k], idx[k], trace[k] = a, last, cur
    return acc, idx, trace, cur


def test_accept_reject_is_bit_identical_to_the_vectorised_rule():
    """Same accept flags, indices and log w traces, exactly (float64 comparisons of the same
    IEEE differences), with non-finite proposals and chains with and without a state."""
    g = torch.Generator().manual_seed(3)
    lw = 2.0 * torch.randn(400, 6, generator=g, dtype=torch.float64)
    lw[::11, 1] = math.nan
    lw[::13, 2] = -math.inf
    lw[7, 3] = math.inf
    cur = torch.tensor([-math.inf, 0.3, -math.inf, 1.5, -2.0, -math.inf], dtype=torch.float64)
    u = torch.rand(400, 6, generator=g, dtype=torch.float64)
    res = accept_reject(lw, cur, u)
    acc, idx, trace, final = _vectorised_rule(lw, cur, u)
    assert torch.equal(res.accepted, acc) and torch.equal(res.index, idx)
    assert torch.equal(res.log_w, trace) and torch.equal(res.final_log_w, final)
    assert 0 < int(acc.sum()) < acc.numel()  # both outcomes occur: the comparison is not vacuous
    # the host copies the samplers count with are the same figures
    np.testing.assert_array_equal(res.accepted_host, acc.numpy())
    np.testing.assert_array_equal(res.final_log_w_host, final.numpy())
    np.testing.assert_array_equal(res.proposals_log_w_host, lw.numpy())
    assert res.n_nonfinite == int((~torch.isfinite(lw)).sum())


def test_independence_chain_is_one_column_of_accept_reject():
    g = torch.Generator().manual_seed(4)
    lw = torch.randn(1000, generator=g, dtype=torch.float64)
    u = torch.rand(1000, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    res = independence_chain(lw, u)
    ref = accept_reject(lw[:, None], torch.full((1,), -math.inf, dtype=torch.float64), u[:, None])
    assert torch.equal(res.index, ref.index) and torch.equal(res.accepted, ref.accepted)
    # acceptance_rate draws the same uniforms from its generator: the same figure
    expected = int(ref.accepted[1:].sum()) / 999
    assert chain_acceptance(res) == expected
    assert acceptance_rate(lw, torch.Generator().manual_seed(9)) == expected
