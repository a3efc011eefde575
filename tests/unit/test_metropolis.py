"""Independence Metropolis: detailed balance on a discrete target where p and q are exact."""

from __future__ import annotations

import math

import numpy as np
import torch

from lattice_flows.mcmc.metropolis import accept_reject, acceptance_rate
from lattice_flows.statistics import gamma_method
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
