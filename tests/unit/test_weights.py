"""Weight diagnostics (lattice_flows.weights, lattice_flows.pareto) and the zero/failed-weight
handling of the statistics functions, against known generalized-Pareto samples and hand
computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lattice_flows.estimates import (
    effective_sample_size,
    log_partition_function,
    reweighted_mean,
)
from lattice_flows.pareto import gpd_fit, khat_threshold, pareto_khat, tail_length
from lattice_flows.weights import (
    WeightAccumulator,
    care_note,
    flags_for,
    longest_false_run,
    weight_diagnostics,
)
from tests.conftest import family_sigma


def gpd_sample(rng: np.random.Generator, k: float, sigma: float, n: int) -> np.ndarray:
    """Inverse CDF of the GPD F(x) = 1 - (1 + k x / sigma)^(-1/k)."""
    u = rng.random(n)
    return sigma * ((1.0 - u) ** (-k) - 1.0) / k


SHAPES = (0.2, 0.5, 0.9)
# 3 shapes x 2 estimators checked at once: Sidak-corrected threshold
Z_GPD = family_sigma(2 * len(SHAPES))


@pytest.mark.parametrize("k", SHAPES)
def test_gpd_fit_recovers_the_shape_of_a_known_gpd(k):
    # the Zhang-Stephens estimate is asymptotically efficient: sd(k_hat) = (1 + k) / sqrt(n)
    n = 4000
    rng = np.random.default_rng(int(100 * k))
    khat, sigma = gpd_fit(gpd_sample(rng, k, 1.7, n))
    assert abs(khat - k) < Z_GPD * (1 + k) / math.sqrt(n)
    assert sigma > 0


@pytest.mark.parametrize("k", SHAPES)
def test_pareto_khat_of_weights_with_a_gpd_tail(k):
    # weights w ~ GPD(k): the exceedances over any threshold are GPD with the same k, and the
    # fit uses the largest M = min(N/5, 3 sqrt N) of them
    n = 10000
    m = tail_length(n)
    assert m == 300
    rng = np.random.default_rng(7 + int(100 * k))
    w = gpd_sample(rng, k, 1.0, n)
    khat = pareto_khat(np.log(w) + 1234.5, prior=False)  # a shift of log w changes nothing
    assert abs(khat - k) < Z_GPD * (1 + k) / math.sqrt(m)


def test_gpd_fit_spread_is_the_asymptotic_one():
    # the tolerance above assumes sd(k_hat) = (1 + k)/sqrt(n); check it on 40 repeats: the
    # sample sd of R normal draws has relative standard error 1/sqrt(2 (R - 1))
    k, n, reps = 0.5, 2000, 40
    rng = np.random.default_rng(11)
    ks = np.array([gpd_fit(gpd_sample(rng, k, 1.0, n))[0] for _ in range(reps)])
    ratio = ks.std(ddof=1) / ((1 + k) / math.sqrt(n))
    assert abs(ratio - 1) < 3.0 / math.sqrt(2 * (reps - 1))
    assert abs(ks.mean() - k) < 3.0 * (1 + k) / math.sqrt(n * reps)


def test_prior_pulls_towards_one_half_by_ten_samples():
    rng = np.random.default_rng(3)
    x = gpd_sample(rng, 0.9, 1.0, 300)
    k0, _ = gpd_fit(x)
    k1, _ = gpd_fit(x, prior=True)
    assert k1 == pytest.approx((300 * k0 + 10 * 0.5) / 310, rel=1e-12)


def test_light_tail_and_point_mass():
    rng = np.random.default_rng(5)
    # exponential exceedances: k = 0
    khat, _ = gpd_fit(rng.exponential(2.0, 4000))
    assert abs(khat) < 3.0 / math.sqrt(4000)
    # equal weights have no tail at all
    assert pareto_khat(np.zeros(1000)) == -math.inf


def test_longest_rejection_run_and_flags_by_hand():
    acc = np.array([[1, 1], [0, 1], [0, 0], [0, 1], [1, 0], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(longest_false_run(acc), [3, 2])
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert khat_threshold(10**6) == 0.7
    assert flags_for(0.71, 10**6) == ["khat>0.7"]
    assert flags_for(0.68, 1000) == ["khat>1-1/log10(N)"]  # 1000 draws are too few for k = 0.68
    assert flags_for(0.68, 10**5) == []
    assert flags_for(0.3, 10**5, longest_run=10, chain_length=500) == []
    assert flags_for(0.3, 10**5, longest_run=11, chain_length=500) == ["stuck"]  # > N/50
    assert flags_for(0.3, 10**5, n_failed=2) == ["failed"]
    assert flags_for(math.nan, 10) == ["no-khat"]
    # 0.5 < k <= 0.7: a note, no flag
    assert "usable with care" in care_note({"khat": 0.6, "flags": []})
    assert care_note({"khat": 0.45, "flags": []}) is None
    assert care_note({"khat": 0.8, "flags": ["khat>0.7"]}) is None


def test_weight_diagnostics_by_hand():
    # w = 1, 3, 0 (log w = -inf is a zero weight, counted in N), one failed draw (NaN)
    d = weight_diagnostics(np.array([0.0, math.log(3.0), -math.inf, math.nan]))
    assert (d.n, d.n_zero, d.n_failed) == (3, 1, 1)
    assert d.ess == pytest.approx(16 / 10)
    assert d.ess_fraction == pytest.approx(1.6 / 3)
    assert d.max_weight_fraction == pytest.approx(3 / 4)
    assert "failed" in d.flags


def test_accumulator_in_blocks_equals_the_whole_and_survives_a_checkpoint():
    rng = np.random.default_rng(2)
    n_chains, steps = 4, 600
    lw = rng.standard_t(3, size=(steps, n_chains)) * 2.0
    lw[5, 1] = -math.inf
    lw[17, 2] = math.nan
    acc = rng.random((steps, n_chains)) < 0.3
    a = WeightAccumulator(steps * n_chains, n_chains)
    for i in range(0, 300, 64):
        a.add(lw[i:min(i + 64, 300)])
        a.add_accepted(acc[i:min(i + 64, 300)])
    b = WeightAccumulator.from_state(a.state())  # resume from a checkpoint
    for i in range(300, steps, 64):
        b.add(lw[i:i + 64])
        b.add_accepted(acc[i:i + 64])
    got = b.result()
    # references computed in one shot by the independent functions
    kept = lw.ravel()[~(np.isnan(lw.ravel()) | np.isposinf(lw.ravel()))]
    assert (got.n, got.n_zero, got.n_failed) == (steps * n_chains - 1, 1, 1)
    assert (got.longest_rejection_run, got.chain_length) == (int(longest_false_run(acc).max()), steps)
    assert got.ess_fraction == pytest.approx(effective_sample_size(kept), rel=1e-10)
    assert got.khat == pytest.approx(pareto_khat(kept), rel=1e-10)
    fin = kept[np.isfinite(kept)]
    assert got.max_weight_fraction == pytest.approx(np.exp(fin.max() - np.logaddexp.reduce(fin)), rel=1e-10)
    assert got.flags == flags_for(got.khat, got.n, 1, got.longest_rejection_run, steps)
    # and weight_diagnostics of the whole gives the same
    whole = weight_diagnostics(lw, acc)
    for key in ("n", "n_zero", "n_failed", "longest_rejection_run", "chain_length", "flags"):
        assert getattr(got, key) == getattr(whole, key), key
    for key in ("ess", "khat", "max_weight_fraction"):
        assert getattr(got, key) == pytest.approx(getattr(whole, key), rel=1e-10), key


# ---------------------------------------------------------------- zero and failed weights


def test_zero_weights_count_in_n():
    # w = (1, 1, 0, 0): ESS/N = (sum w)^2 / (N sum w^2) = 4 / 8; log Z = log(2/4);
    # Var(w) (ddof 1) = 1/3, mean 1/2: error sqrt(Var / (N mean^2)) = sqrt(1/3)
    lw = np.array([0.0, 0.0, -math.inf, -math.inf]) + 50.0
    assert effective_sample_size(lw) == pytest.approx(0.5)
    lz = log_partition_function(lw)
    assert lz.value == pytest.approx(50.0 + math.log(0.5))
    assert lz.error == pytest.approx(math.sqrt(1 / 3))
    # zero-weight samples contribute nothing, even with non-finite observables
    r = reweighted_mean(np.array([1.0, 3.0, math.nan, math.inf]), lw)
    assert r.value == pytest.approx(2.0)
    assert r.error == pytest.approx(math.sqrt(0.5))  # sqrt(sum (w/sum w)^2 (O - <O>)^2)


def test_all_weights_zero():
    lw = np.full(5, -math.inf)
    assert effective_sample_size(lw) == 0.0
    assert log_partition_function(lw).value == -math.inf
    with pytest.raises(ValueError, match="all 5 weights are zero"):
        reweighted_mean(np.ones(5), lw)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_failed_draws_do_not_pass_silently(bad):
    lw = np.array([0.0, 0.5, bad])
    assert math.isnan(effective_sample_size(lw))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        log_partition_function(lw)
    with pytest.raises(ValueError, match="1 of 3 log-weights"):
        reweighted_mean(np.ones(3), lw)
