"""Practical mode: residual samples, bounds, decision, sizing, and validity on the exact task.

Statistical tolerances: acceptance rates are reported with 95% Wilson intervals; a rate with
nominal bound δ (soundness) or 1 − δ (completeness) passes when the Wilson interval is compatible
with it (soundness: lower Wilson end ≤ δ; completeness: upper Wilson end ≥ 1 − δ). The bounds are
conservative, so observed rates are far from these thresholds. Fixed seeds throughout.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.challenges import ChallengeSpec
from protocol.practical import (
    RHO_GRID,
    PilotStats,
    bias_coefficient,
    mse_confidence_sequence,
    pilot_masks,
    plan_practical,
    practical_decision,
    practical_delta_split,
    relative_epsilon,
    residual_interval,
    residual_sample_range,
    residual_samples,
    residual_tau_charge,
)
from protocol.residual import estimate_residual
from protocol.tasks.synthetic import SyntheticTask

# --------------------------------------------------------------------------------------------
# residual samples


def test_residual_samples_mean_is_interpolant() -> None:
    rng = np.random.default_rng(0)
    f = rng.uniform(-1, 1, size=(4 * 50, 3))
    for rho in (0.1, 0.25, 0.5):
        est = estimate_residual(f, rho)
        np.testing.assert_allclose(
            residual_samples(f, rho).mean(axis=0), est.residual_interpolant, rtol=1e-12, atol=1e-12
        )


def test_residual_samples_on_challenge_spec() -> None:
    task = SyntheticTask(n=12, z=2, seed=3)
    spec = ChallengeSpec(bytes(range(32)), 40, 0.25, 12, 0.5)
    idx = np.arange(spec.num_members)
    f = task.retrain(spec.member_masks(idx), spec.member_seeds(idx)).f
    np.testing.assert_allclose(
        residual_samples(f, 0.25).mean(axis=0),
        estimate_residual(f, 0.25).residual_interpolant,
        rtol=1e-12,
    )


@settings(max_examples=300, deadline=None)
@given(
    vals=st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4),
    b=st.floats(0.1, 10.0),
    rho=st.floats(0.01, 0.5),
)
def test_range_holds(vals: list[float], b: float, rho: float) -> None:
    f = b * np.array(vals)[:, None]
    lo, hi = residual_sample_range(b, rho)
    r = residual_samples(f, rho)[0, 0]
    slack = 1e-9 * (hi - lo)
    assert lo - slack <= r <= hi + slack


@pytest.mark.parametrize("rho", [0.05, 0.2, 0.37, 0.5])
def test_range_is_attained(rho: float) -> None:
    b = 2.0
    lo, hi = residual_sample_range(b, rho)
    corners = np.array(np.meshgrid(*[[-b, b]] * 4)).reshape(4, -1).T  # 16 corners
    grid = np.linspace(-b, b, 401)
    vals = [residual_samples(c[:, None], rho)[0, 0] for c in corners]
    # the min may sit at an interior f(y0) (−A·f(x)) only when A|f(x)| < b; check both
    inner = [
        residual_samples(np.array([[u], [-u * (1.5 / rho - 1)], [b], [-b]]), rho)[0, 0]
        for u in grid
        if abs(u * (1.5 / rho - 1)) <= b
    ]
    assert max(vals) == pytest.approx(hi)
    assert min([*vals, *inner]) == pytest.approx(lo)


def test_bias_coefficient() -> None:
    for rho in np.linspace(0.01, 0.5, 50):
        c = bias_coefficient(rho)
        terms = [rho ** (k - 1) * (2 ** (k - 1) - 2) for k in range(3, 200)]
        assert max(terms) <= c + 1e-15
        assert c <= 4 * rho * rho + 1e-15
    assert bias_coefficient(0.25) == pytest.approx(2 * 0.25**2)
    assert bias_coefficient(0.5) == 1.0


def test_residual_interval_covers_truth_and_rejects_bad_input() -> None:
    task = SyntheticTask(n=12, z=2, seed=0)
    truth = task.truth()
    rng = np.random.default_rng(5)
    f = _tuples_f(task, 4000, 0.25, rng)
    ri = residual_interval(f, 0.25, task.output_bound, 0.05)
    assert np.all(ri.lower <= truth.residual)
    assert np.all(truth.residual <= ri.upper)
    assert np.all(ri.clt_halfwidth < ri.halfwidth)
    ri.to_dict()
    with pytest.raises(ValueError, match="outside"):
        residual_interval(f * 10, 0.25, task.output_bound, 0.05)  # out of range
    bad = f.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        residual_interval(bad, 0.25, task.output_bound, 0.05)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), m_star=st.integers(1, 20), tau=st.floats(0.0, 0.01))
def test_robust_sd_covers_honest_sd(seed: int, m_star: int, tau: float) -> None:
    """After ≤ m* arbitrary lies and τ-shifts, sd_robust bounds the honest sample sd and the
    interval (η ignored) still contains the honest mean."""
    rng = np.random.default_rng(seed)
    b, rho, n = 1.0, 0.2, 60
    honest = rng.uniform(-b, b, size=(4 * n, 1))
    lied = honest + rng.uniform(-tau, tau, size=honest.shape)
    lied = np.clip(lied, -b, b)  # reported values must be in range (the shift stays ≤ τ)
    members = rng.choice(4 * n, size=m_star, replace=False)
    lied[members] = rng.choice([-b, b], size=(m_star, 1))
    ri = residual_interval(lied, rho, b, 0.05, lie_allowance=m_star, tolerance=tau)
    true_sd = residual_samples(honest, rho).std(ddof=1)
    assert ri.sd_robust[0] >= true_sd - 1e-9
    true_mean = residual_samples(honest, rho).mean()
    shift = ri.lie_shift + ri.tau_shift
    assert abs(ri.estimate[0] - true_mean) <= shift + 1e-9


def test_tau_charge_formula() -> None:
    assert residual_tau_charge(1.0, 0.1, 0.25) == pytest.approx((0.2 + 0.01) * 16)


# --------------------------------------------------------------------------------------------
# decision


def _interval(lower: float, upper: float) -> object:
    task = SyntheticTask(n=12, z=1, seed=0)
    f = _tuples_f(task, 100, 0.25, np.random.default_rng(0))
    ri = residual_interval(f, 0.25, task.output_bound, 0.05)
    return ri.__class__(**{**ri.__dict__, "lower": np.array([lower]), "upper": np.array([upper])})


def test_decision_verdicts() -> None:
    ri = _interval(0.18, 0.22)
    acc = practical_decision(ri, [0.25], [0.30], 0.2, [1.0], mse_count=10)
    assert acc.verdict == "accept"
    assert acc.accepted
    rej = practical_decision(ri, [0.5], [0.6], 0.2, [1.0])
    assert rej.verdict == "reject"
    und = practical_decision(ri, [0.25], [0.45], 0.2, [1.0])
    assert und.verdict == "undetermined"
    assert not und.determined
    fin = practical_decision(ri, [0.25], [0.45], 0.2, [1.0], final=True)
    assert fin.verdict == "reject"
    assert "cap" in fin.reason
    d = acc.to_dict()
    assert d["verdict"] == "accept"
    assert isinstance(d["err_upper"], list)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="finite"):
            practical_decision(ri, [bad], [0.3], 0.2, [1.0])
        with pytest.raises(ValueError, match="finite"):
            practical_decision(ri, [0.2], [0.3], bad, [1.0])


def test_delta_split() -> None:
    s = practical_delta_split(0.05, 4, spot_sampled=True, epsilon_relative=True)
    assert s["spot"] + s["residual"] + s["mse"] + s["variance"] == pytest.approx(0.05)
    assert s["mse_per_target"] == pytest.approx(0.05 / 4 / 4)
    s = practical_delta_split(0.05, 1, spot_sampled=False)
    assert s["spot"] == 0
    assert s["variance"] == 0
    assert s["residual"] == pytest.approx(0.025)


# --------------------------------------------------------------------------------------------
# planning


def _pilot(task: SyntheticTask, n0: int = 1000, seed: int = 0) -> PilotStats:
    masks = pilot_masks(n0, task.num_train_points, task.p, RHO_GRID, np.random.default_rng(seed))
    return PilotStats.from_f_values({k: task.evaluate(v) for k, v in masks.items()}, RHO_GRID)


_TASK = SyntheticTask(n=12, z=1, seed=0)
_PILOT = _pilot(_TASK)


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0.15, 2.0),
    factor=st.floats(1.0, 3.0),
    delta=st.floats(0.005, 0.2),
    dfactor=st.floats(1.0, 3.0),
    all_checked=st.booleans(),
)
def test_plan_monotone(
    eps: float, factor: float, delta: float, dfactor: float, all_checked: bool
) -> None:
    b = _TASK.output_bound
    kw = {"pilot": _PILOT, "all_checked": all_checked, "max_mse_samples": 200_000}
    small = plan_practical(delta, b, 1e-9, 1, epsilon=eps, **kw)
    big_eps = plan_practical(delta, b, 1e-9, 1, epsilon=eps * factor, **kw)
    big_delta = plan_practical(min(0.5, delta * dfactor), b, 1e-9, 1, epsilon=eps, **kw)
    for other in (big_eps, big_delta):
        assert other.pairs_per_level <= small.pairs_per_level
        assert other.mse_samples <= small.mse_samples
        assert other.spot_checks <= small.spot_checks
        assert other.verifier_retrainings <= small.verifier_retrainings


def test_plan_fields_and_worst_case() -> None:
    b = _TASK.output_bound
    plan = plan_practical(0.05, b, 1e-9, 1, _PILOT, epsilon_rel=0.5)
    d = plan.to_dict()
    assert d["mode"] == "practical"
    assert plan.num_members == 4 * plan.pairs_per_level
    assert plan.singles == 2 * plan.pairs_per_level
    assert any("non-asymptotic" in a for a in plan.assumptions)
    assert any("approximate" in a for a in plan.assumptions)
    assert plan.verifier_retrainings >= plan.spot_checks + plan.mse_samples
    # no pilot: worst-case variances (sd_r ≤ D/2, B_≥2 ≤ b²): far larger sizes
    worst = plan_practical(0.05, b, 1e-9, 1, None, epsilon=20.0)
    piloted = plan_practical(0.05, b, 1e-9, 1, _PILOT, epsilon=20.0)
    assert worst.pairs_per_level > 10 * piloted.pairs_per_level
    with pytest.raises(ValueError, match="exactly one"):
        plan_practical(0.05, b, 0.0, 1, _PILOT)
    from protocol.accounting import ConfigurationError

    with pytest.raises(ConfigurationError):
        plan_practical(0.05, b, 0.1, 1, _PILOT, epsilon=0.2)  # τ far too large


# --------------------------------------------------------------------------------------------
# validity on the exact synthetic task


def _tuples_f(task: SyntheticTask, n: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """(4n, Z) f-values of n coupled tuples (same construction as ChallengeSpec, numpy RNG)."""
    big_n, p = task.num_train_points, task.p
    x = rng.random((n, big_n)) < p
    y0 = rng.random((n, big_n)) < p
    v = rng.random((n, big_n))
    masks = np.empty((n, 4, big_n), dtype=bool)
    masks[:, 0], masks[:, 1] = x, y0
    masks[:, 2] = np.where(v < rho, x, y0)
    masks[:, 3] = np.where(v < 2 * rho, x, y0)
    return task.evaluate(masks.reshape(4 * n, big_n))


def _lie(f: np.ndarray, rho: float, b: float, m_star: int) -> np.ndarray:
    """Targeted residual inflation: m* single-member lies where they raise r_j the most
    (target 0): either f(yρ) → −sign(f(x))·b or f(x) → the end of [−b, b] maximising r_j."""
    if m_star == 0:
        return f
    out = f.copy()
    r0 = residual_samples(out, rho)[:, 0]
    cands = []
    fx = out[0::4, 0]
    y_new = -np.sign(fx) * b
    alt = out.copy()
    alt[2::4, 0] = y_new
    cands.append((residual_samples(alt, rho)[:, 0] - r0, 2, y_new))
    for val in (-b, b):
        alt = out.copy()
        alt[0::4, 0] = val
        cands.append((residual_samples(alt, rho)[:, 0] - r0, 0, np.full(fx.shape, val)))
    gains = np.stack([c[0] for c in cands])
    best = np.argmax(gains, axis=0)
    top = np.argsort(-gains[best, np.arange(best.size)])[:m_star]
    for j in top:
        _, role, vals = cands[best[j]]
        out[4 * j + role, 0] = vals[j]
    return out


@dataclass
class Outcome:
    verdict: str
    mse_count: int


def _run_mse(
    ri: object,
    f_m: np.ndarray,
    masks_m: np.ndarray,
    c: np.ndarray,
    a: np.ndarray,
    eps: np.ndarray,
    b: float,
    tau: float,
    d_m: float,
    batch: int,
) -> Outcome:
    g = c[None, :] + (2.0 * masks_m - 1.0) @ a.T
    losses = (f_m - g) ** 2
    grange = np.abs(c) + np.abs(a).sum(axis=1)
    cs = mse_confidence_sequence(b, grange, tau, d_m)
    cap = f_m.shape[0]
    for start in range(0, cap, batch):
        cs.update(losses[start : start + batch])
        dec = practical_decision(
            ri, cs.lower, cs.upper, eps, grange, cs.mean, cs.count, final=cs.count >= cap
        )
        if dec.determined:
            return Outcome(dec.verdict, cs.count)
    raise AssertionError("unreachable: final=True always decides")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n."""
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def run_validity(
    eps_rel: float, trials: int, all_checked: bool, seed: int, delta: float = 0.05
) -> dict[str, object]:
    """Plan with a pilot, then run `trials` protocol rounds (honest / scaled a with err = ε_true /
    m* targeted lies + scaled a) on SyntheticTask(n=12, z=2). Returns counts and sizes."""
    task = SyntheticTask(n=12, z=2, seed=0)
    truth = task.truth()
    b, tau = task.output_bound, task.tolerance
    pilot = _pilot(task, 2000, seed=seed + 1)
    plan = plan_practical(
        delta,
        b,
        tau,
        task.num_targets,
        pilot,
        epsilon_rel=eps_rel,
        all_checked=all_checked,
        max_mse_samples=400_000,
    )
    split = plan.delta_split
    eps_true = eps_rel * truth.variance  # the claim is err ≤ ε_rel·Var f
    b1 = truth.level_weights[:, 1]
    scale = 1.0 - np.sqrt(eps_true / b1)  # σ²(1 − s)²‖a*‖² = B_1 (1 − s)² = ε_true exactly
    bad_a = truth.coefficients * scale[:, None]
    bad_c = truth.intercept  # μ = 0 at p = 1/2: the intercept term stays 0
    err_bad = task.err(bad_c, bad_a)
    assert np.all(err_bad >= eps_true * (1 - 1e-9))
    rng = np.random.default_rng(seed)
    counts = {"honest": 0, "scaled": 0, "lies+scaled": 0}
    mse_used = {k: [] for k in counts}
    for _ in range(trials):
        f_e = _tuples_f(task, plan.pairs_per_level, plan.rho, rng)
        masks_v = rng.random((plan.variance_samples, task.num_train_points)) < task.p
        eps = relative_epsilon(task.evaluate(masks_v), b, eps_rel, split["variance_per_target"])
        masks_m = rng.random((plan.mse_samples, task.num_train_points)) < task.p
        f_m = task.evaluate(masks_m)
        ri_honest = residual_interval(
            f_e, plan.rho, b, split["residual_per_target"], plan.lie_allowance, tau
        )
        f_lied = _lie(f_e, plan.rho, b, plan.lie_allowance)
        ri_lied = residual_interval(
            f_lied, plan.rho, b, split["residual_per_target"], plan.lie_allowance, tau
        )
        batch = max(1000, plan.mse_samples // 50)
        runs = {
            "honest": (ri_honest, truth.intercept, truth.coefficients),
            "scaled": (ri_honest, bad_c, bad_a),
            "lies+scaled": (ri_lied, bad_c, bad_a),
        }
        for name, (ri, c, a) in runs.items():
            out = _run_mse(ri, f_m, masks_m, c, a, eps, b, tau, split["mse_per_target"], batch)
            counts[name] += out.verdict == "accept"
            mse_used[name].append(out.mse_count)
    return {
        "plan": plan,
        "trials": trials,
        "accepts": counts,
        "wilson": {k: wilson(v, trials) for k, v in counts.items()},
        "mean_mse_used": {k: float(np.mean(v)) for k, v in mse_used.items()},
        "err_bad": err_bad,
        "eps_true": eps_true,
    }


def _check(res: dict[str, object], delta: float = 0.05) -> None:
    w = res["wilson"]
    assert w["honest"][1] >= 1 - delta, res  # completeness compatible with ≥ 1 − δ
    assert w["scaled"][0] <= delta, res  # soundness compatible with ≤ δ
    assert w["lies+scaled"][0] <= delta, res


@pytest.mark.parametrize("all_checked", [True, False])
def test_validity_fast(all_checked: bool) -> None:
    """Fast slice: ε = 1.0·Var f (n ≈ 10⁵ tuples), 12 trials. Full grid: the slow test."""
    res = run_validity(1.0, 12, all_checked, seed=100 + all_checked)
    _check(res)
    assert res["accepts"]["honest"] == 12
    assert res["accepts"]["scaled"] == 0
    assert res["accepts"]["lies+scaled"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("all_checked", [True, False])
def test_validity_full(all_checked: bool) -> None:
    """ε = 0.2·Var f, δ = 0.05, ≥ 200 trials (set PRACTICAL_TRIALS to change). Prints numbers."""
    trials = int(os.environ.get("PRACTICAL_TRIALS", "200"))
    res = run_validity(0.2, trials, all_checked, seed=7 + all_checked)
    plan = res["plan"]
    print(
        f"\nall_checked={all_checked} rho={plan.rho} n={plan.pairs_per_level} "
        f"k={plan.spot_checks} m*={plan.lie_allowance} M_cap={plan.mse_samples} "
        f"accepts={res['accepts']} wilson={res['wilson']} mse_used={res['mean_mse_used']} "
        f"err_bad={res['err_bad']} eps_true={res['eps_true']} budget={plan.budget}"
    )
    _check(res)
