"""Accounting: exact spot-check probabilities, slack terms, theory sizing, manual reporting."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import accounting
from protocol.accounting import (
    ConfigurationError,
    Plan,
    lie_allowance,
    miss_probability,
    plan_manual,
    plan_theory,
    spot_checks_needed,
)
from protocol.residual import estimate_residual, sensitivity

# ----------------------------------------------------------------------------- spot checks


@pytest.mark.parametrize("e", range(1, 9))
def test_miss_probability_matches_brute_force(e):
    for m in range(e + 1):
        lied = set(range(m))
        for k in range(e + 1):
            subsets = list(itertools.combinations(range(e), k))
            missed = sum(1 for c in subsets if not lied.intersection(c))
            # exact rational vs floating point: tolerance 1e-12
            assert math.isclose(miss_probability(e, m, k), missed / len(subsets), abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**12), st.floats(0, 1), st.integers(0, 10**6))
def test_miss_probability_below_binomial_bound(e, frac, k):
    m = int(frac * e)
    assume(k <= e)
    p = miss_probability(e, m, k)
    assert 0.0 <= p <= 1.0
    assert p <= (1 - m / e) ** k * (1 + 1e-9) + 1e-300


def test_miss_probability_lgamma_path_agrees(monkeypatch):
    exact = miss_probability(10**9, 3000, 40_000)
    monkeypatch.setattr(accounting, "_EXACT_TERMS", 10)
    approx = miss_probability(10**9, 3000, 40_000)
    # lgamma differences at 1e9 lose ~1e-7 relative accuracy
    assert math.isclose(exact, approx, rel_tol=1e-5)


def test_miss_probability_edges_and_validation():
    assert miss_probability(10, 0, 5) == 1.0
    assert miss_probability(10, 3, 0) == 1.0
    assert miss_probability(10, 6, 5) == 0.0
    assert miss_probability(10, 10, 10) == 0.0
    with pytest.raises(ValueError, match="lies"):
        miss_probability(10, 11, 1)
    with pytest.raises(ValueError, match="k"):
        miss_probability(10, 1, 11)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 10**9), st.floats(1e-6, 0.5), st.floats(1e-4, 0.9))
def test_lie_allowance_definition(e, k_frac, delta):
    k = max(1, int(k_frac * e))
    m_star = lie_allowance(e, k, delta)
    assert 0 <= m_star <= e - k
    assert miss_probability(e, m_star + 1, k) <= delta
    if m_star >= 1:
        assert miss_probability(e, m_star, k) > delta


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 10**8), st.floats(1e-5, 0.3), st.floats(1e-5, 0.3),
       st.sampled_from([1 - 1e-9, 1.0, 1 + 1e-9, 0.5, 2.0]))  # fmt: skip
def test_miss_at_most_is_the_exact_comparison(e, m_frac, k_frac, scale):
    """The lgamma shortcut gives the exact answer, also at δ_spot equal to the miss probability
    itself and a hair either side of it."""
    m, k = max(1, int(m_frac * e)), max(1, int(k_frac * e))
    assume(m + k <= e)
    p = miss_probability(e, m, k)
    assume(p > 1e-300)
    ds = min(p * scale, 0.999)
    assert accounting.miss_at_most(e, m, k, ds) == (p <= ds)


def test_lie_allowance_edges():
    assert lie_allowance(10, 10, 0.1) == 0
    assert lie_allowance(10, 0, 0.1) == 10
    assert lie_allowance(10, 9, 0.1) == 0  # C(9,9)/C(10,9) = 1/10 ≤ 0.1


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 10**9), st.floats(0, 0.2), st.floats(1e-4, 0.9))
def test_spot_checks_needed_is_smallest_and_consistent(e, m_frac, delta):
    m = int(m_frac * e)
    k = spot_checks_needed(e, m, delta)
    if m + 1 > e:
        assert k == 0
        return
    assert miss_probability(e, m + 1, k) <= delta
    if k >= 1:
        assert miss_probability(e, m + 1, k - 1) > delta
    assert lie_allowance(e, k, delta) <= m


# ------------------------------------------------------------------------------- the terms


def test_terms_match_their_formulas():
    b, z, d, n, rho = 1.5, 3, 0.01, 1000, 0.2
    de = d / (4 * z)
    s = 1 + 4 / rho
    gy = 2 * b**2 * math.sqrt(math.log(2 / de) / (2 * n))
    gb = b**2 * math.sqrt(math.log(2 / de) / (4 * n))
    assert math.isclose(accounting.residual_halfwidth(n, rho, b, z, d), gb + s * gy)
    assert math.isclose(accounting.fit_bias(rho, b), 4 * rho**2 * b**2)
    assert math.isclose(accounting.lie_effect(n, rho, b), (2 * b**2 * s + b**2 / 2) / n)
    assert math.isclose(accounting.tau_charge(b, 0.01, rho), (2 * b * 0.01 + 1e-4) * (s + 1))
    g = np.array([0.5, 3.0])
    np.testing.assert_allclose(
        accounting.mse_halfwidth(b, g, 700, z, d),
        (b + g) ** 2 * math.sqrt(math.log(2 * z / d) / 1400),
    )


def _f_values(rng: np.random.Generator, n: int, b: float) -> np.ndarray:
    return rng.uniform(-b, b, size=(4 * n, 1))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 30),
    st.floats(0.05, 0.5),
    st.integers(0, 119),
    st.floats(-1, 1),
)
def test_one_lie_moves_residual_by_at_most_lambda(seed, n, rho, member, new):
    # Λ bounds the interpolant's move when any single member's value is replaced within [−b, b].
    b = 1.0
    rng = np.random.default_rng(seed)
    f = _f_values(rng, n, b)
    member %= 4 * n
    before = estimate_residual(f, rho).residual_interpolant[0]
    f[member, 0] = new
    after = estimate_residual(f, rho).residual_interpolant[0]
    assert abs(after - before) <= accounting.lie_effect(n, rho, b) * (1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.floats(0.05, 0.5), st.floats(0, 0.1))
def test_tolerance_shifts_move_residual_by_at_most_tau_charge(seed, n, rho, tau):
    b = 1.0
    rng = np.random.default_rng(seed)
    f = _f_values(rng, n, b)
    shifted = f + rng.uniform(-tau, tau, size=f.shape)
    before = estimate_residual(f, rho).residual_interpolant[0]
    after = estimate_residual(shifted, rho).residual_interpolant[0]
    assert abs(after - before) <= accounting.tau_charge(b, tau, rho) * (1 + 1e-9) + 1e-15


# ------------------------------------------------------------------------------ theory plan


def test_plan_api_has_no_num_train_points():
    for fn in (plan_theory, plan_manual):
        names = set(inspect.signature(fn).parameters)
        assert not names & {"N", "n_train", "num_train_points", "num_points"}
    fields = {f.name for f in dataclasses.fields(Plan)}
    assert "num_train_points" not in fields
    assert "N" not in fields


def test_theory_plan_meets_its_budget():
    p = plan_theory(0.1, 0.05, 1.0, 0.0, 1)
    bud = p.budget
    eps = 0.1
    assert p.mode == "theory"
    assert p.guarantee_met
    assert bud["fit_bias"] <= eps / 8 * (1 + 1e-12)
    assert bud["residual_halfwidth"] <= eps / 8
    assert accounting.residual_halfwidth(p.pairs_per_level - 1, p.rho, 1.0, 1, 0.0125) > eps / 8
    assert bud["mse_halfwidth_planned"] <= eps / 8
    assert bud["lie_effect"] <= eps / 16
    assert bud["epsilon_certified"] <= eps
    assert p.rho == pytest.approx(math.sqrt(0.1 / 32))
    assert p.num_members == 4 * p.pairs_per_level
    assert p.singles == 2 * p.pairs_per_level
    assert p.prover_retrainings == p.num_members
    assert p.verifier_retrainings == p.spot_checks + p.mse_samples
    assert p.delta_split == dict.fromkeys(("spot", "residual", "mse", "completeness"), 0.0125)
    # any m*+1 lies are caught w.p. ≥ 1 − δ_spot
    assert miss_probability(p.num_members, p.lie_allowance + 1, p.spot_checks) <= 0.0125
    # closed-form n (within the rounding the verify loop fixes)
    s = sensitivity(p.rho)
    closed = math.log(2 / (0.0125 / 4)) * (8 * (0.5 + math.sqrt(2) * s) / eps) ** 2
    assert abs(p.pairs_per_level - math.ceil(closed)) <= 1
    # |M| closed form
    m_closed = math.ceil(16 * math.log(2 / 0.0125) / (2 * (eps / 8) ** 2))
    assert abs(p.mse_samples - m_closed) <= 1
    assert isinstance(p.pairs_per_level, int)
    json.dumps(p.to_dict())
    assert Plan.from_dict(p.to_dict()) == p


def test_theory_sizes_are_huge_python_ints():
    p = plan_theory(0.01, 1e-6, 1.0, 0.0, 1000)
    assert isinstance(p.num_members, int)
    assert p.num_members > 10**12
    assert p.guarantee_met


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 20.0), st.floats(0.05, 20.0), st.floats(1e-4, 0.5), st.floats(0.5, 2.0))
def test_theory_sizes_monotone_in_epsilon(e1, e2, delta, b):
    lo, hi = sorted((e1 * b * b, e2 * b * b))
    p_lo, p_hi = plan_theory(lo, delta, b, 0.0, 2), plan_theory(hi, delta, b, 0.0, 2)
    assert p_hi.pairs_per_level <= p_lo.pairs_per_level
    assert p_hi.spot_checks <= p_lo.spot_checks
    assert p_hi.mse_samples <= p_lo.mse_samples
    assert p_lo.guarantee_met
    assert p_hi.guarantee_met


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-6, 0.9), st.floats(1e-6, 0.9), st.floats(0.05, 20.0))
def test_theory_sizes_monotone_in_delta(d1, d2, eps):
    lo, hi = sorted((d1, d2))
    p_lo, p_hi = plan_theory(eps, lo, 1.0, 0.0, 1), plan_theory(eps, hi, 1.0, 0.0, 1)
    assert p_hi.pairs_per_level <= p_lo.pairs_per_level
    assert p_hi.spot_checks <= p_lo.spot_checks
    assert p_hi.mse_samples <= p_lo.mse_samples


def test_theory_sizes_monotone_on_a_fine_grid():
    # includes the large-ε regime where n is small and integer effects are strongest
    for grid, make in (
        (np.geomspace(0.5, 500, 120), lambda e: plan_theory(e, 0.05, 1.0, 0.0, 1)),
        (np.geomspace(1e-6, 0.9, 120), lambda d: plan_theory(30.0, d, 1.0, 0.0, 1)),
    ):
        plans = [make(x) for x in grid]
        for attr in ("pairs_per_level", "spot_checks", "mse_samples"):
            sizes = [getattr(p, attr) for p in plans]
            assert all(a >= b for a, b in itertools.pairwise(sizes)), attr


def test_theory_tau_too_large_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"too large for ε=0\.1") as info:
        plan_theory(0.1, 0.05, 1.0, 0.001, 1)
    assert "largest allowed τ" in str(info.value)
    assert isinstance(info.value, ValueError)
    p = plan_theory(0.1, 0.05, 1.0, 4e-5, 1)  # just below the limit 4.25e-5
    assert p.budget["tau_charge"] <= 0.1 / 16
    assert p.guarantee_met


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.05, 1.0, 0.0, 1), "epsilon"),
        ((0.1, 1.0, 1.0, 0.0, 1), "delta"),
        ((0.1, 0.05, 0.0, 0.0, 1), "output_bound"),
        ((0.1, 0.05, 1.0, -1.0, 1), "tolerance"),
        ((0.1, 0.05, 1.0, 0.0, 0), "num_targets"),
        ((float("nan"), 0.05, 1.0, 0.0, 1), "epsilon"),
    ],
)
def test_theory_validation(args, match):
    with pytest.raises(ValueError, match=match):
        plan_theory(*args)


# ------------------------------------------------------------------------------ manual plan


def test_manual_reports_weak_guarantee_honestly():
    p = plan_manual(0.2, 0.05, 1.0, 0.0, 1, pairs_per_level=2000, spot_checks=100, mse_samples=2000)
    assert p.mode == "manual"
    assert not p.guarantee_met
    assert p.budget["epsilon_certified"] > 0.2
    assert p.lie_allowance == lie_allowance(8000, 100, 0.0125)
    assert p.rho == 0.25
    s = sum(p.budget[k] for k in ("fit_bias", "residual_halfwidth", "lie_effect", "tau_charge"))
    assert math.isclose(p.budget["slack"], s + p.budget["mse_halfwidth_planned"])
    assert math.isclose(p.budget["epsilon_certified"], 0.1 + p.budget["slack"])
    assert math.isclose(p.certified_epsilon(1.0), p.budget["epsilon_certified"])
    assert p.certified_epsilon(3.0) > p.certified_epsilon(1.0)
    assert p.mse_halfwidth(3.0) == pytest.approx(4 * p.mse_halfwidth(1.0))


def test_manual_matches_theory_at_theory_sizes():
    t = plan_theory(0.2, 0.05, 1.0, 0.0, 1)
    m = plan_manual(
        0.2, 0.05, 1.0, 0.0, 1, t.pairs_per_level, t.spot_checks, t.mse_samples, rho=t.rho
    )
    assert m.lie_allowance == t.lie_allowance
    assert m.guarantee_met
    assert m.budget == t.budget


def test_manual_full_spot_checks_and_zero_spot_checks():
    full = plan_manual(0.2, 0.05, 1.0, 0.0, 1, 10, 40, 100)
    assert full.lie_allowance == 0
    assert full.budget["lie_effect"] == 0.0
    none = plan_manual(0.2, 0.05, 1.0, 0.0, 1, 10, 0, 100)
    assert none.lie_allowance == 40
    assert not none.guarantee_met


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6), st.integers(1, 10**6))
def test_manual_certified_epsilon_decreases_in_mse_samples(n, m1, m2):
    lo, hi = sorted((m1, m2))
    k = min(4 * n, 500)
    a = plan_manual(0.1, 0.05, 1.0, 0.0, 2, n, k, lo).budget["epsilon_certified"]
    b = plan_manual(0.1, 0.05, 1.0, 0.0, 2, n, k, hi).budget["epsilon_certified"]
    assert b <= a


def test_manual_certified_epsilon_decreases_in_pairs():
    # Doubling n at fixed k: the residual half-width falls by 29% while the lie term m*Λ only
    # creeps up towards its limit, so ε_cert falls. (Step by step in n it can tick up by ~Λ
    # whenever m* gains one: an integer effect, not a loss of guarantee.)
    for k in (50, 400, 5000):
        certs = [
            plan_manual(0.1, 0.05, 1.0, 0.0, 1, n, min(k, 4 * n), 10**5).budget["epsilon_certified"]
            for n in (2**i * 100 for i in range(14))
        ]
        assert all(a > b for a, b in itertools.pairwise(certs)), k


@settings(max_examples=40, deadline=None)
@given(st.integers(10, 10**6), st.integers(0, 10**4), st.integers(0, 10**4))
def test_manual_certified_epsilon_decreases_in_spot_checks(n, k1, k2):
    lo, hi = sorted((min(k1, 4 * n), min(k2, 4 * n)))
    a = plan_manual(0.1, 0.05, 1.0, 0.0, 1, n, lo, 1000).budget["epsilon_certified"]
    b = plan_manual(0.1, 0.05, 1.0, 0.0, 1, n, hi, 1000).budget["epsilon_certified"]
    assert b <= a


def test_manual_completeness_margin():
    p = plan_manual(0.5, 0.05, 1.0, 0.001, 1, 10**6, 1000, 10**5, rho=0.5)
    bud = p.budget
    assert math.isclose(
        bud["completeness_margin"],
        bud["residual_halfwidth"] + bud["tau_charge"] + bud["mse_halfwidth_planned"],
    )
    assert math.isclose(p.completeness_margin(1.0), bud["completeness_margin"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs_per_level": 0}, "pairs_per_level"),
        ({"spot_checks": -1}, "spot_checks"),
        ({"spot_checks": 41}, "cannot exceed"),
        ({"mse_samples": 0}, "mse_samples"),
        ({"rho": 0.6}, "rho"),
        ({"rho": 0.0}, "rho"),
        ({"pairs_per_level": 2.5}, "pairs_per_level"),
    ],
)
def test_manual_validation(kwargs, match):
    base = {"pairs_per_level": 10, "spot_checks": 5, "mse_samples": 100, "rho": 0.25}
    with pytest.raises(ValueError, match=match):
        plan_manual(0.1, 0.05, 1.0, 0.0, 1, **{**base, **kwargs})
