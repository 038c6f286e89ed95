"""The betting confidence bounds: coverage, monotonicity, rounding and lies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from protocol.betting import (
    BettingBound,
    Side,
    bet_size,
    capital_needed,
    growth_rate,
    predicted_gap,
)

# Coverage is checked at δ = 0.1 over 400 fixed-seed trials: the miss rate must stay below
# δ + 3 binomial standard errors (0.145); at the true rate ≤ δ this fails with p < 0.2%.
DELTA = 0.1
TRIALS = 400
TOLERANCE = DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / TRIALS)


def _two_point(rng, lo, hi, q, n):
    return np.where(rng.random(n) < q, hi, lo)


@pytest.mark.parametrize(
    ("lo", "hi", "q"),
    [(0.0, 1.0, 0.5), (-40.0, 0.1, 0.001), (0.0, 10.0, 0.01)],
    ids=["fair", "rare-low", "rare-high"],
)
def test_lower_and_upper_bounds_cover_the_mean(lo: float, hi: float, q: float) -> None:
    rng = np.random.default_rng(11)
    mu = q * hi + (1 - q) * lo
    var = q * (1 - q) * (hi - lo) ** 2
    misses_lo = misses_hi = 0
    for _ in range(TRIALS):
        lb = BettingBound(Side.LOWER, lo, DELTA, num_targets=1, bins=128)
        ub = BettingBound(Side.UPPER, hi, DELTA, num_targets=1, bins=128)
        for _ in range(3):  # three looks: anytime validity covers the running best
            x = _two_point(rng, lo, hi, q, 700)[:, None]
            lam = bet_size(DELTA, 2100, var)
            lb.add(x, lam)
            ub.add(x, lam)
            low, up = lb.bound()[0], ub.bound()[0]
        misses_lo += low > mu
        misses_hi += up < mu
    assert misses_lo / TRIALS <= TOLERANCE
    assert misses_hi / TRIALS <= TOLERANCE


def test_bound_is_informative_on_easy_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.2, 0.1, (20_000, 2)).clip(-1, 1)
    b = BettingBound(Side.LOWER, -1.0, 0.01, num_targets=2)
    b.add(x, bet_size(0.01, 20_000, 0.01))
    low = b.bound()
    assert np.all(low < x.mean(axis=0))
    assert np.all(low > x.mean(axis=0) - 0.01)  # CLT width ≈ 0.1·√(2 ln 100 / 2e4) ≈ 0.003


def test_log_capital_decreases_in_the_candidate_mean() -> None:
    rng = np.random.default_rng(4)
    b = BettingBound(Side.LOWER, -5.0, 0.05, num_targets=1)
    b.add(rng.normal(0, 1, (5000, 1)).clip(-5, 5), 0.02)
    ms = np.linspace(-4.9, 3.0, 200)
    caps = [float(b.log_capital(m)[0]) for m in ms]
    assert all(a >= c - 1e-12 for a, c in itertools.pairwise(caps))


def test_rounded_summary_is_conservative_and_close() -> None:
    rng = np.random.default_rng(5)
    x = rng.exponential(1.0, (50_000, 1)).clip(0, 30)
    lam = bet_size(0.05, 50_000, 1.0)
    exact = BettingBound(Side.LOWER, 0.0, 0.05, num_targets=1, bins=None)
    rounded = BettingBound(Side.LOWER, 0.0, 0.05, num_targets=1)  # the default 2,048 bins
    exact.add(x, lam)
    rounded.add(x, lam)
    e, r = exact.bound()[0], rounded.bound()[0]
    assert r <= e
    assert e - r < 0.005 * e


def test_running_best_never_gets_worse() -> None:
    rng = np.random.default_rng(6)
    b = BettingBound(Side.UPPER, 10.0, 0.05, num_targets=1)
    seen = []
    for _ in range(6):
        b.add(rng.uniform(0, 2, (1000, 1)), 0.05)
        seen.append(float(b.bound()[0]))
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] < 10.0


def test_values_beyond_the_range_limit_are_refused() -> None:
    b = BettingBound(Side.LOWER, -1.0, 0.05, num_targets=1)
    with pytest.raises(ValueError, match="beyond"):
        b.add(np.array([[0.0], [-1.5]]), 0.1)
    with pytest.raises(ValueError, match="finite"):
        b.add(np.array([[np.nan]]), 0.1)


def test_lie_adjustment_lower_bounds_the_truth() -> None:
    """Whatever m* values a liar replaced, the adjusted bound is below the bound on the truth."""
    rng = np.random.default_rng(7)
    lo = -20.0
    for trial in range(20):
        truth = rng.normal(0.2, 1.0, (8000, 1)).clip(lo, 20)
        reported = truth.copy()
        lied = rng.choice(8000, 25, replace=False)
        reported[lied] = rng.uniform(lo, 20, (25, 1)) if trial % 2 else 20.0
        lam = bet_size(0.05, 8000, 1.0)
        honest = BettingBound(Side.LOWER, lo, 0.05, num_targets=1)
        honest.add(truth, lam)
        adjusted = BettingBound(Side.LOWER, lo, 0.05, num_targets=1, keep_top=25)
        adjusted.add(reported[:4000], lam)
        adjusted.add(reported[4000:], lam)
        assert adjusted.bound(lies=25)[0] <= honest.bound()[0] + 1e-12


def test_lies_beyond_keep_top_are_refused() -> None:
    b = BettingBound(Side.LOWER, -1.0, 0.05, num_targets=1, keep_top=3)
    b.add(np.zeros((10, 1)), 0.1)
    with pytest.raises(ValueError, match="keep_top"):
        b.bound(lies=4)


def test_predictions_match_the_measured_gap_roughly() -> None:
    rng = np.random.default_rng(8)
    n, sd = 20_000, 0.5
    x = rng.normal(1.0, sd, (n, 1)).clip(-9, 11)
    b = BettingBound(Side.LOWER, -9.0, 0.01, num_targets=1)
    lam = bet_size(0.01, n, sd * sd)
    b.add(x, lam)
    measured = x.mean() - b.bound()[0]
    predicted = float(np.ravel(predicted_gap(n, sd, 10.0, 0.01, lam))[0])
    assert 0.5 < predicted / measured < 2.0
    growth = float(np.ravel(growth_rate(predicted, n, sd, 10.0, 0.01))[0])
    assert growth * n == pytest.approx(float(capital_needed(0.01)), rel=0.05)
