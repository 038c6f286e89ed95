"""Decision: predictions, MSE, the accept/reject rule, range certification and reasons."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from protocol.accounting import plan_manual, plan_theory
from protocol.challenges import ChallengeSpec, PrivateSample
from protocol.decision import datamodel_predictions, datamodel_range, decide, mse_estimate
from protocol.residual import estimate_residual, residual_from_moments

SEED = bytes(range(32))


def _residual(values: list[float], rho: float = 0.25):
    """A ResidualEstimate whose (interpolant = NNLS) residual equals ``values`` exactly-ish."""
    z = len(values)
    # ŷ on the line y = 0.1 + 0.5 t (z2 = 0, z1 = 0.5 ≥ 0): residual = B̂ − 0.6
    y0 = np.full(z, 0.1)
    yr = 0.1 + 0.5 * rho * np.ones(z)
    y2r = 0.1 + rho * np.ones(z)
    return residual_from_moments(y0, yr, y2r, np.asarray(values) + 0.6, rho, 100)


def test_predictions_and_range():
    rng = np.random.default_rng(0)
    masks = rng.random((7, 5)) < 0.5
    c = np.array([0.3, -1.0])
    a = rng.normal(size=(2, 5))
    g = datamodel_predictions(masks, c, a)
    assert g.shape == (7, 2)
    assert g.dtype == np.float64
    for k, t in itertools.product(range(7), range(2)):
        x = np.where(masks[k], 1.0, -1.0)
        assert np.isclose(g[k, t], c[t] + a[t] @ x, atol=1e-12)
    # |c| + ‖a‖₁ is the exact max of |g| over all of {±1}^5
    all_masks = np.array(list(itertools.product([False, True], repeat=5)))
    g_all = datamodel_predictions(all_masks, c, a)
    np.testing.assert_allclose(datamodel_range(c, a), np.abs(g_all).max(axis=0), atol=1e-12)


def test_sparse_predictions_skip_dead_columns_only():
    """Columns with a zero coefficient for every target are skipped; the result is the dense
    sum (to rounding), and a column live for one target only is still counted for all."""
    rng = np.random.default_rng(1)
    n = 400
    masks = rng.random((33, n)) < 0.5
    c = np.array([0.2, -0.7, 1.5])
    a = np.zeros((3, n))
    live = rng.choice(n, size=12, replace=False)
    a[:, live] = rng.normal(size=(3, 12))
    a[2, 5] = 0.25  # live for target 2 only (column 5 is otherwise dead)
    a[:, live[0]] = [0.0, 0.0, -3.0]
    g = datamodel_predictions(masks, c, a)
    dense = c[None, :] + (2.0 * masks.astype(np.float64) - 1.0) @ a.T
    np.testing.assert_allclose(g, dense, rtol=0, atol=1e-12)
    # flipping a dead column's mask changes nothing; flipping column 5 moves target 2 by ±0.5
    dead = next(j for j in range(n) if not a[:, j].any())
    flipped = masks.copy()
    flipped[:, dead] ^= True
    np.testing.assert_array_equal(datamodel_predictions(flipped, c, a), g)
    flipped = masks.copy()
    flipped[:, 5] ^= True
    moved = datamodel_predictions(flipped, c, a) - g
    np.testing.assert_allclose(np.abs(moved[:, 2]), 0.5, atol=1e-12)
    np.testing.assert_allclose(moved[:, :2], 0.0, atol=1e-12)


def test_prediction_validation():
    c, a = np.zeros(2), np.zeros((2, 4))
    with pytest.raises(ValueError, match="boolean"):
        datamodel_predictions(np.zeros((3, 4)), c, a)
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        datamodel_predictions(np.zeros((3, 5), dtype=bool), c, a)
    with pytest.raises(ValueError, match="coefficients"):
        datamodel_predictions(np.zeros((3, 4), dtype=bool), np.zeros(3), a)
    with pytest.raises(ValueError, match="finite"):
        datamodel_range(np.array([np.nan, 0.0]), a)


def test_mse_estimate_never_clips():
    f = np.array([[1.0, 0.0], [-1.0, 0.0]])
    g = np.array([[11.0, 0.5], [-1.0, -0.5]])
    np.testing.assert_allclose(mse_estimate(f, g), [50.0, 0.25])
    with pytest.raises(ValueError, match="shape"):
        mse_estimate(f, g[:1])
    with pytest.raises(ValueError, match="finite"):
        mse_estimate(f, np.full((2, 2), np.inf))


def _manual(z: int = 1, eps: float = 0.2):
    return plan_manual(eps, 0.05, 1.0, 0.0, z, pairs_per_level=10**6, spot_checks=2000,
                       mse_samples=10**6)  # fmt: skip


def test_accept_reject_and_boundary():
    plan = _manual()
    res = _residual([0.3])
    thr = float(res.residual[0]) + 0.1
    accept = decide(plan, res, np.array([thr - 1e-3]), np.array([1.0]))
    assert accept.verdict == "accept"
    assert accept.accepted
    assert accept.per_target_accept.tolist() == [True]
    np.testing.assert_allclose(accept.threshold, res.residual + 0.1)
    assert decide(plan, res, np.array([thr]), np.array([1.0])).verdict == "accept"  # ≤ is inclusive
    reject = decide(plan, res, np.array([thr + 1e-3]), np.array([1.0]))
    assert reject.verdict == "reject"
    assert "target 0" in reject.reason
    assert "msê" in reject.reason
    json.dumps(reject.to_dict())


def test_multi_target_one_fails():
    plan = _manual(z=3)
    res = _residual([0.1, 0.2, 0.3])
    mse = np.array([0.15, 0.35, 0.3])  # thresholds 0.2, 0.3, 0.4: target 1 fails by 0.05
    d = decide(plan, res, mse, np.array([0.5, 0.5, 0.5]))
    assert d.verdict == "reject"
    assert d.per_target_accept.tolist() == [True, False, True]
    assert "target 1" in d.reason
    assert "target 0" not in d.reason
    assert "target 2" not in d.reason
    assert "0.35" in d.reason
    out = d.to_dict()
    assert out["per_target_accept"] == [True, False, True]
    assert len(out["threshold"]) == 3
    assert out["plan"]["mode"] == "manual"
    json.dumps(out)


def test_theory_mode_rejects_datamodel_with_too_large_range():
    plan = plan_theory(0.2, 0.05, 1.0, 0.0, 2)
    res = _residual([0.2, 0.2])
    mse = np.array([0.2, 0.2])  # passes the paper's rule for both targets
    ok = decide(plan, res, mse, np.array([0.5, 1.0]))
    assert ok.verdict == "accept"
    assert ok.guarantee_met
    assert np.all(ok.epsilon_certified <= 0.2 * (1 + 1e-9))
    bad = decide(plan, res, mse, np.array([0.5, 2.5]))
    assert bad.verdict == "reject"
    assert not bad.guarantee_met
    assert bad.per_target_accept.tolist() == [True, False]
    assert "|c| + ||a||_1" in bad.reason
    assert "target 1" in bad.reason
    assert "too small to certify" in bad.reason
    assert bad.epsilon_certified[1] > 0.2
    assert bad.mse_halfwidth[1] == pytest.approx(plan.mse_halfwidth(2.5))


def test_manual_mode_reports_guarantee_but_keeps_verdict():
    plan = plan_manual(0.2, 0.05, 1.0, 0.0, 1, pairs_per_level=100, spot_checks=10,
                       mse_samples=100)  # fmt: skip
    assert not plan.guarantee_met
    res = _residual([0.2])
    d = decide(plan, res, np.array([0.25]), np.array([0.5]))
    assert d.verdict == "accept"
    assert not d.guarantee_met
    assert "guarantee NOT met" in d.reason


def test_decide_validation():
    plan = _manual(z=2)
    res = _residual([0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        decide(plan, res, np.array([0.1, np.nan]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        decide(plan, res, np.array([0.1, 0.1]), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        decide(plan, res, np.array([0.1]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        decide(plan, _residual([0.1]), np.array([0.1, 0.1]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        decide(plan, res, np.array([0.1, 0.1]), np.array([1.0, -1.0]))


def test_end_to_end_honest_accepted_scaled_rejected():
    # f on N = 6 at p = 1/2 (μ = 0, σ = 1): c* = 0.2, a* = (0.5, −0.4, 0.3, 0, 0, 0),
    # B_{≥2} = 0.25² + 0.2² + 0.15² + 0.1² = 0.135. Scaling a by 1/2 costs err = ‖a*‖²/4 = 0.125.
    terms = {(0,): 0.5, (1,): -0.4, (2,): 0.3, (0, 3): 0.25, (1, 4): -0.2, (2, 3, 5): 0.15,
             (0, 1, 4, 5): 0.1}  # fmt: skip

    def f(masks: np.ndarray) -> np.ndarray:
        x = 2.0 * masks - 1.0
        return (0.2 + sum(c * np.prod(x[:, list(s)], axis=1) for s, c in terms.items()))[:, None]

    n, rho, eps = 50_000, 0.5, 0.1
    spec = ChallengeSpec(SEED, n, rho, 6, 0.5)
    fv = np.concatenate([f(m) for _, m, _ in spec.iter_member_batches(8192)])
    res = estimate_residual(fv, rho)
    # E[R̂] = 0.135 + bias 2ρ²B_3 + 6ρ³B_4 = 0.135 + 0.01125 + 0.0075 = 0.15375; the per-tuple
    # standard error at n = 50,000 is ≈ 0.01; tolerance ≈ 3.5 standard errors (observed 0.149).
    assert 0.12 < res.residual[0] < 0.19
    sample = PrivateSample(bytes([7]) * 32, 50_000, 6, 0.5)
    m = sample.masks()
    plan = plan_manual(eps, 0.05, 1.4, 0.0, 1, n, 1000, sample.size, rho=rho)
    c_star, a_star = np.array([0.2]), np.array([[0.5, -0.4, 0.3, 0.0, 0.0, 0.0]])
    honest_mse = mse_estimate(f(m), datamodel_predictions(m, c_star, a_star))
    # msê ≈ 0.135 (sd ≈ 0.001) ≤ R̂ + 0.05 ≈ 0.20 (margin ≈ 0.065, ≈ 6 standard errors of R̂)
    d_honest = decide(plan, res, honest_mse, datamodel_range(c_star, a_star))
    assert d_honest.verdict == "accept", d_honest.reason
    scaled_mse = mse_estimate(f(m), datamodel_predictions(m, c_star, a_star / 2))
    # msê ≈ 0.26 > R̂ + 0.05 ≈ 0.20 (margin ≈ 0.06, ≈ 6 standard errors of R̂)
    d_scaled = decide(plan, res, scaled_mse, datamodel_range(c_star, a_star / 2))
    assert d_scaled.verdict == "reject"
    assert "target 0" in d_scaled.reason
