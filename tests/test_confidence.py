"""Coverage of the non-asymptotic bounds in protocol/confidence.py on simulated bounded data.

Tolerance: a bound with nominal level 1 − δ must cover in ≥ 1 − δ of the trials, minus a binomial
allowance of 3 standard errors √(δ(1−δ)/T) (T = number of fixed-seed trials). These bounds are
conservative, so observed coverage is typically far above 1 − δ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.confidence import (
    MeanConfidenceSequence,
    clt_halfwidth,
    eb_halfwidth,
    predicted_cs_halfwidth,
    variance_lower_bound,
)

DELTA = 0.1
TRIALS = 2000


def _allowance(delta: float, trials: int) -> float:
    return 3.0 * math.sqrt(delta * (1 - delta) / trials)


def _skewed(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Bounded in [0, 1], mean 0.1, skewed (a hard case for variance-adaptive bounds)."""
    return rng.beta(0.5, 4.5, size=shape)


def test_eb_two_sided_coverage() -> None:
    rng = np.random.default_rng(11)
    n = 50
    # TRIALS independent columns of n samples each: one call, one trial per column.
    x = _skewed(rng, (n, TRIALS))
    hw = eb_halfwidth(x, 1.0, DELTA)
    cover = np.abs(x.mean(axis=0) - 0.1) <= hw
    assert cover.mean() >= 1 - DELTA - _allowance(DELTA, TRIALS)


def test_eb_one_sided_and_shapes() -> None:
    rng = np.random.default_rng(12)
    x = _skewed(rng, (30, TRIALS))
    hw = eb_halfwidth(x, 1.0, DELTA, two_sided=False)
    assert (0.1 - x.mean(axis=0) <= hw).mean() >= 1 - DELTA - _allowance(DELTA, TRIALS)
    assert eb_halfwidth(x[:, 0], 1.0, DELTA).shape == (1,)
    with pytest.raises(ValueError, match="at least 2 rows"):
        eb_halfwidth(x[:1], 1.0, DELTA)
    with pytest.raises(ValueError, match="finite"):
        eb_halfwidth(np.array([[np.nan], [1.0]]), 1.0, DELTA)
    # CLT half-width is informational and narrower than the guaranteed one
    assert np.all(clt_halfwidth(x, DELTA) < eb_halfwidth(x, 1.0, DELTA))


def test_cs_anytime_coverage() -> None:
    """Anytime validity: count a failure if the mean leaves the interval at ANY time."""
    rng = np.random.default_rng(13)
    steps, batch = 40, 25  # 1000 observations, checked after every batch (running intersection)
    cs = MeanConfidenceSequence(TRIALS, 1.0, DELTA)
    ever_missed = np.zeros(TRIALS, dtype=bool)
    for _ in range(steps):
        cs.update(_skewed(rng, (batch, TRIALS)))
        ever_missed |= (cs.lower > 0.1) | (cs.upper < 0.1)
    assert 1 - ever_missed.mean() >= 1 - DELTA - _allowance(DELTA, TRIALS)
    assert cs.count == steps * batch
    assert np.all(cs.halfwidth < 0.1)  # it does shrink


def test_cs_batching_invariance_and_scaling() -> None:
    rng = np.random.default_rng(14)
    x = 3.0 * _skewed(rng, (300, 2))
    one = MeanConfidenceSequence(2, [3.0, 3.0], DELTA)
    one.update(x)
    many = MeanConfidenceSequence(2, 3.0, DELTA)
    for start in range(0, 300, 7):
        many.update(x[start : start + 7])
    np.testing.assert_allclose(one.upper[1], many.upper[1], rtol=0, atol=0.5)
    # the last-time interval is identical; running intersections may differ only by checkpoints
    assert one.count == many.count == 300
    np.testing.assert_allclose(one.mean, x.mean(axis=0))
    assert np.all(one.lower <= one.mean)
    assert np.all(one.mean <= one.upper)


def test_cs_rejects_bad_input() -> None:
    cs = MeanConfidenceSequence(1, 1.0, DELTA)
    with pytest.raises(ValueError, match="value_bound"):
        cs.update(np.array([[1.5]]))
    with pytest.raises(ValueError, match="value_bound"):
        cs.update(np.array([[-0.1]]))
    with pytest.raises(ValueError, match="finite"):
        cs.update(np.array([[np.inf]]))
    with pytest.raises(ValueError, match="delta"):
        MeanConfidenceSequence(1, 1.0, 1.5)
    cs.update(np.zeros((0, 1)))
    assert cs.count == 0
    assert np.isnan(cs.mean[0])


def test_cs_two_point_worst_case_coverage() -> None:
    """Bernoulli(0.02) on {0, 1}: maximal range relative to sd."""
    rng = np.random.default_rng(15)
    cs = MeanConfidenceSequence(TRIALS, 1.0, DELTA)
    missed = np.zeros(TRIALS, dtype=bool)
    for _ in range(20):
        cs.update((rng.random((50, TRIALS)) < 0.02).astype(float))
        missed |= (cs.lower > 0.02) | (cs.upper < 0.02)
    assert 1 - missed.mean() >= 1 - DELTA - _allowance(DELTA, TRIALS)


@pytest.mark.parametrize("method", ["pairs", "maurer_pontil"])
def test_variance_lcb_coverage(method: str) -> None:
    rng = np.random.default_rng(16)
    m = 200
    x = 2.0 * rng.beta(2.0, 5.0, size=(m, TRIALS)) - 1.0  # in [-1, 1], range 2
    a, b = 2.0, 5.0
    var = 4.0 * a * b / ((a + b) ** 2 * (a + b + 1))
    lcb = variance_lower_bound(x, 2.0, DELTA, method=method)
    assert np.all(lcb >= 0)
    assert (lcb <= var).mean() >= 1 - DELTA - _allowance(DELTA, TRIALS)


def test_variance_lcb_is_informative_with_many_samples() -> None:
    rng = np.random.default_rng(17)
    x = rng.uniform(-1, 1, size=(100_000, 1))  # var 1/3
    lcb = variance_lower_bound(x, 2.0, 0.01)
    assert 0.25 < lcb[0] <= 1 / 3
    with pytest.raises(ValueError, match="method"):
        variance_lower_bound(x, 2.0, 0.01, method="nope")


def test_predicted_width_tracks_actual() -> None:
    rng = np.random.default_rng(18)
    cs = MeanConfidenceSequence(200, 1.0, DELTA)
    x = rng.uniform(0.3, 0.5, size=(5000, 200))
    cs.update(x)
    pred = predicted_cs_halfwidth(5000, x.std(), 1.0, DELTA)[0]
    actual = float(np.median(cs.halfwidth))
    assert 0.5 * actual < pred < 2.0 * actual
