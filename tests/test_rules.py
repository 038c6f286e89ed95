"""The practical rule and what it is built on: the claim's law, the clip charges, the residual on
f − βg, the δ split, the plan and the verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.accounting import ConfigurationError, plan_manual
from protocol.residual import bias_coefficient, residual_sample_range, residual_samples
from protocol.rules.base import (
    CheckMode,
    ClaimRejected,
    RecordContext,
    RecordError,
    RuleName,
    Verdict,
)
from protocol.rules.by_name import rule_for
from protocol.rules.paper import PaperRule
from protocol.rules.practical import (
    PILOT_LEVELS,
    DeltaSplit,
    PracticalRule,
    PracticalRun,
    make_plan,
    pilot_masks,
    pilot_seeds,
)
from protocol.rules.tails import ClaimLaw, excess_moments
from protocol.tasks import load_task
from simulations.montecarlo import SimEvidence, TrialDraws, make_claim, scale_for_err

TASK = load_task("synthetic:n=60,z=2,seed=1")


def _plan(**kw):
    args = {
        "delta": 0.05,
        "output_bound": TASK.output_bound,
        "tolerance": TASK.tolerance,
        "num_targets": TASK.num_targets,
        "num_train_points": TASK.num_train_points,
        "p": TASK.p,
        "checks": CheckMode.CERTIFIED,
        "task_hash": TASK.identity().task_hash,
        "epsilon": 0.3,
    }
    args.update(kw)
    return make_plan(**args)


def _run(claim, plan, seed=0):
    draws = TrialDraws(TASK, ("test-rules", seed), plan.pilot_seed)
    full = np.zeros((TASK.num_targets, TASK.num_train_points))
    full[:, TASK.support_columns] = claim.coefficients
    return PracticalRun(plan, claim.intercepts, full, SimEvidence(draws, claim)).run()


def _claims():
    t = TASK.truth()
    honest = make_claim(TASK, "honest", t.intercept, t.coefficients)
    bad = make_claim(TASK, "scaled", t.intercept, t.coefficients * scale_for_err(TASK, 0.8))
    return honest, bad


# ---- verdicts and exit codes ------------------------------------------------------------------


def test_verdicts_and_their_exit_codes() -> None:
    assert [v.exit_code for v in Verdict] == [0, 1, 2, 3]
    assert Verdict.parse("inconclusive") is Verdict.INCONCLUSIVE
    with pytest.raises(ValueError, match="unknown verdict"):
        Verdict.parse("maybe")
    assert RuleName.MANUAL.is_paper
    assert not RuleName.PRACTICAL.is_paper
    assert CheckMode.CERTIFIED.all_members
    assert not CheckMode.CERTIFIED_SPOT.all_members


# ---- the claim's law and the clip -------------------------------------------------------------


def test_claim_law_is_exact() -> None:
    rng = np.random.default_rng(0)
    c, a = rng.normal(size=2), rng.normal(size=(2, 30))
    law = ClaimLaw.of(c, a, 0.3)
    x = np.where(rng.random((200_000, 30)) < 0.3, 1.0, -1.0)
    g = c + x @ a.T
    se = g.std(axis=0) / np.sqrt(len(g))
    assert np.all(np.abs(law.mean - g.mean(axis=0)) <= 5 * se)
    np.testing.assert_allclose(law.scale, np.linalg.norm(a, axis=1))


@pytest.mark.parametrize(("p", "n"), [(0.5, 30), (0.2, 50), (0.5, 3)])
def test_clip_excess_bounds_hold(p: float, n: int) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=n)
    x = np.where(rng.random((300_000, n)) < p, 1.0, -1.0)
    w = (x - (2 * p - 1)) @ a
    s = np.linalg.norm(a)
    for k in (1.0, 2.0, 3.0):
        e = np.maximum(np.abs(w) - k * s, 0.0)
        e1, e2 = excess_moments(s, k * s)
        assert e.mean() <= float(e1)
        assert (e * e).mean() <= float(e2)


def test_choose_clip_meets_the_budget_and_is_tight() -> None:
    law = ClaimLaw(mean=np.array([0.1, 0.0]), scale=np.array([0.7, 2.0]))

    def charge(t):
        return excess_moments(law.scale, t)[0]

    clip = law.choose_clip(charge, 1e-4)
    assert np.all(charge(clip) <= 1e-4 * (1 + 1e-9))
    assert np.all(charge(clip * 0.99) > 1e-4)


# ---- the residual on f − βg ---------------------------------------------------------------------


def test_residual_on_f_minus_g_has_the_same_expectation_as_on_f() -> None:
    """E r(f − βg) = B≥2 + Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2) for every affine g and β (closed form
    on the synthetic task), while the variance on f − g* is far smaller."""
    rho = 0.3
    draws = TrialDraws(TASK, ("residual",), "0" * 64)
    f, masks = draws.tuples(rho, 0, 200_000)
    honest, bad = _claims()
    t = TASK.truth()
    b = t.level_weights
    expect = b[:, 2:].sum(axis=1) + sum(
        b[:, k] * rho ** (k - 1) * (2 ** (k - 1) - 2) for k in range(3, b.shape[1])
    )
    sds = {}
    for label, v in (
        ("f", f),
        ("f-g*", f - honest.predict(masks)),
        ("f-g_bad", f - bad.predict(masks)),
    ):
        r = residual_samples(v, rho)
        se = r.std(axis=0, ddof=1) / np.sqrt(len(r))
        assert np.all(np.abs(r.mean(axis=0) - expect) <= 5 * se), label
        sds[label] = r.std(axis=0)
    assert np.all(sds["f-g*"] < sds["f"] / 3)


def test_residual_range_and_bias_coefficient() -> None:
    lo, hi = residual_sample_range(2.0, 0.25)
    assert (float(lo), float(hi)) == (4.0 * (2 - 16), 4.0 * 16)
    assert bias_coefficient(0.1) == pytest.approx(0.02)
    assert bias_coefficient(0.5) == 1.0


# ---- the δ split and the plan -------------------------------------------------------------------


def test_delta_split_spends_delta_on_each_side() -> None:
    s = DeltaSplit.of(0.05, 4, spot_sampled=True, epsilon_relative=True)
    assert sum(s.accept.values()) == pytest.approx(0.05)
    assert sum(s.reject.values()) == pytest.approx(0.05)
    assert set(s.accept) == {"mse", "residual", "spot", "variance"}
    assert s.accept_delta("residual") == pytest.approx(0.05 / 4 / 4)
    assert s.accept_delta("spot") == pytest.approx(0.05 / 4)
    certified = DeltaSplit.of(0.05, 1, spot_sampled=False, epsilon_relative=False)
    assert set(certified.accept) == {"mse", "residual"}
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        DeltaSplit.of(1.0, 1, spot_sampled=False, epsilon_relative=False)


def test_plans_are_deterministic_and_validate_their_input() -> None:
    assert _plan() == _plan()
    assert _plan().to_dict() == _plan().to_dict()
    with pytest.raises(ValueError, match="exactly one"):
        _plan(epsilon_rel=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        _plan(epsilon=-1.0)
    with pytest.raises(ValueError, match="MSE cap"):
        _plan(epsilon=None, epsilon_rel=0.1, mse_cap=10)


def test_pilot_is_seeded_and_a_larger_pilot_extends_a_smaller_one() -> None:
    seed = _plan().pilot_seed
    small = pilot_masks(8, 60, 0.5, seed)
    large = pilot_masks(12, 60, 0.5, seed)
    tail = pilot_masks(12, 60, 0.5, seed, first=8)
    for key in ("x", "y0", *PILOT_LEVELS):
        np.testing.assert_array_equal(small[key], large[key][:8])
        np.testing.assert_array_equal(tail[key], large[key][8:])
    kinds = 2 + len(PILOT_LEVELS)
    s8, s12 = pilot_seeds(8, seed).reshape(kinds, 8), pilot_seeds(12, seed).reshape(kinds, 12)
    np.testing.assert_array_equal(s8, s12[:, :8])
    # the coupling: y_ℓ keeps x where the shared coin is below ℓ, so agreement grows with ℓ
    agree = [np.mean(large[lv] == large["x"]) for lv in PILOT_LEVELS]
    assert agree == sorted(agree)


def test_a_tolerance_too_large_for_epsilon_is_a_configuration_error() -> None:
    honest, _ = _claims()
    plan = _plan(tolerance=0.5)
    with pytest.raises(ConfigurationError, match="tolerance"):
        _run(honest, plan)


# ---- the rule, end to end on simulated evidence -------------------------------------------------


def test_honest_claim_is_accepted_on_the_mse_alone_when_b2_is_small_against_eps() -> None:
    honest, _ = _claims()
    out = _run(honest, _plan(epsilon=0.6))
    assert out.verdict is Verdict.ACCEPT
    assert out.tuples == 0  # err ≤ mse ≤ ε: no challenge needed
    assert np.all(out.err_upper <= out.epsilon_accept)
    assert out.guarantee_met


def test_honest_claim_needs_and_passes_the_challenges_when_b2_is_close_to_eps() -> None:
    honest, _ = _claims()
    # B≥2 = 0.2: the MSE alone (mse ≈ 0.2) leaves too little room below ε = 0.22
    out = _run(honest, _plan(epsilon=0.22))
    assert out.verdict is Verdict.ACCEPT, out.reason
    assert out.tuples > 0
    assert np.all(out.residual_lower > 0)


def test_claim_with_err_far_above_eps_is_rejected() -> None:
    _, bad = _claims()  # err = 0.8 against ε = 0.3
    out = _run(bad, _plan())
    assert out.verdict is Verdict.REJECT, out.reason
    assert np.any(out.err_lower > out.epsilon_reject)


def test_budget_too_small_to_decide_is_inconclusive_with_the_certified_epsilon() -> None:
    honest, _ = _claims()
    out = _run(honest, _plan(epsilon=0.3, mse_cap=1000, tuple_cap=200))
    assert out.verdict is Verdict.INCONCLUSIVE
    assert "NOT met" in out.reason
    assert np.all(out.certified_epsilon >= 0)
    assert np.any(out.certified_epsilon > out.epsilon_accept)
    assert out.to_dict()["guarantee_met"] is False


def test_relative_epsilon_is_bounded_from_the_verifiers_own_sample() -> None:
    honest, _ = _claims()
    out = _run(honest, _plan(epsilon=None, epsilon_rel=1.0))
    var = TASK.truth().variance
    assert np.all(out.variance_lower <= var)
    assert np.all(out.variance_upper >= var)
    np.testing.assert_allclose(out.epsilon_accept, out.variance_lower)
    assert out.verdict is Verdict.ACCEPT


# ---- the Rule interface -----------------------------------------------------------------------


def test_rule_for_names_each_rule() -> None:
    for name in RuleName:
        assert rule_for(name).name is name
    assert isinstance(rule_for(RuleName.PRACTICAL), PracticalRule)
    assert isinstance(rule_for(RuleName.MANUAL), PaperRule)
    with pytest.raises(ValueError, match="not a paper rule"):
        PaperRule(RuleName.PRACTICAL)


def _paper_run(claim, seed=0):
    plan = plan_manual(
        epsilon=0.3, delta=0.05, output_bound=TASK.output_bound, tolerance=TASK.tolerance,
        num_targets=TASK.num_targets, pairs_per_level=3000, spot_checks=16, mse_samples=3000,
    )  # fmt: skip
    draws = TrialDraws(TASK, ("test-rules-paper", seed), "unused")
    evidence = SimEvidence(draws, claim, rng=np.random.default_rng(seed))
    full = np.zeros((TASK.num_targets, TASK.num_train_points))
    full[:, TASK.support_columns] = claim.coefficients
    return plan, evidence, PaperRule(RuleName.MANUAL).run(plan, claim.intercepts, full, evidence)


def test_paper_rule_runs_on_any_evidence_and_rechecks_its_own_record() -> None:
    honest, bad = _claims()
    plan, evidence, out = _paper_run(honest)
    assert evidence.rounds == [plan.pairs_per_level]  # one round, then its spot checks
    assert evidence.spot_checks == plan.spot_checks
    assert out.verdict is not Verdict.REJECT
    record = RecordContext(
        num_targets=TASK.num_targets, epsilon=0.3, delta=0.05, sizes=plan.to_dict(),
        verdict=out.verdict,
    )  # fmt: skip
    rule = PaperRule(RuleName.MANUAL)
    decision = out.details["decision"]
    assert rule.recheck(decision, record) is out.verdict
    assert len(rule.target_lines(decision)) == TASK.num_targets
    _, _, worse = _paper_run(bad)
    assert worse.verdict is Verdict.REJECT
    assert rule.recheck(worse.details["decision"], record) is Verdict.REJECT
    flipped = dict(decision, per_target_accept=[not v for v in decision["per_target_accept"]])
    with pytest.raises(RecordError, match="certificate records"):
        rule.recheck(flipped, record)
    with pytest.raises(RecordError, match=r"decision\.delta"):
        rule.recheck(dict(decision, delta=0.5), record)


def test_practical_rule_rechecks_its_own_record_and_refuses_altered_bounds() -> None:
    honest, bad = _claims()
    rule = PracticalRule()
    for claim, plan in ((honest, _plan()), (bad, _plan())):
        draws = TrialDraws(TASK, ("test-rules", 3), plan.pilot_seed)
        full = np.zeros((TASK.num_targets, TASK.num_train_points))
        full[:, TASK.support_columns] = claim.coefficients
        out = rule.run(plan, claim.intercepts, full, SimEvidence(draws, claim))
        record = RecordContext(
            num_targets=TASK.num_targets, epsilon=out.details["epsilon"], delta=0.05,
            sizes=plan.to_dict(), verdict=out.verdict,
        )  # fmt: skip
        assert rule.recheck(out.details, record) is out.verdict
        up = list(out.details["err_upper"])
        up[0] += 1.0
        with pytest.raises(RecordError, match="err_upper"):
            rule.recheck(dict(out.details, err_upper=up), record)
    assert out.verdict is Verdict.REJECT  # the bad claim, last


def test_practical_rule_rejects_a_provably_far_claim_before_any_evidence() -> None:
    honest, _ = _claims()
    plan = _plan()
    full = np.zeros((TASK.num_targets, TASK.num_train_points))
    far = honest.intercepts + 100.0 * TASK.output_bound

    class NoEvidence:
        def __getattr__(self, name):
            raise AssertionError(f"evidence.{name} was used")

    with pytest.raises(ClaimRejected):
        PracticalRule().run(plan, far, full, NoEvidence())


def test_simulated_spot_check_needs_its_rng_only_when_the_prover_lied() -> None:
    honest, _ = _claims()
    draws = TrialDraws(TASK, ("test-rules", 4), "unused")
    ev = SimEvidence(draws, honest)
    ev.spot_check(10)  # no lie: no draw, nothing caught
    assert ev.spot_checks == 10
    assert not ev.caught
    ev.lies, ev.members = 4, 40
    with pytest.raises(ValueError, match="rng"):
        ev.spot_check(10)
    ev.rng = np.random.default_rng(0)
    ev.spot_check(40)  # every member checked: a lie is certainly hit
    assert ev.caught


def test_driver_reports_no_self_fit_for_a_target_without_a_positive_epsilon(monkeypatch) -> None:
    """A relative ε whose Var f estimate is not positive leaves that target's self-fit undefined;
    the verdict stands and the estimate covers the other targets (it used to raise, turning a
    decided run into an internal error)."""
    from types import SimpleNamespace

    from protocol.economics import self_fit_retrainings
    from protocol.rules.base import RuleOutcome
    from verifier import driver

    outcome = RuleOutcome(
        verdict=Verdict.ACCEPT, reason="ok", details={},
        mse_estimate=np.array([0.02, 0.01]), epsilon_estimate=np.array([0.1, 0.0]),
        self_fit_method="m",
    )  # fmt: skip

    class Fixed:
        def run(self, *args):
            return outcome

    monkeypatch.setattr(driver, "rule_for", lambda name: Fixed())
    session = SimpleNamespace(
        rule=RuleName.PRACTICAL, plan=None, intercepts=None, coefficients=None,
        checks=CheckMode.RETRAIN, spot_summary=None, N=100,
    )  # fmt: skip
    verdict, _, details = driver._decide(session, None, None)
    assert verdict is Verdict.ACCEPT
    assert details["self_fit_retrainings"] == self_fit_retrainings(100, [0.02], [0.1])
    outcome.epsilon_estimate = np.array([0.0, -1.0])
    assert driver._decide(session, None, None)[2]["self_fit_retrainings"] is None


def test_each_rule_plans_for_itself_and_refuses_what_it_cannot_honour() -> None:
    from dataclasses import replace

    from verifier.planning import PlanOptions

    asked = PlanOptions(epsilon=0.3, pairs=100, spot_checks=8, mse_samples=50)
    costs: list[str] = []

    def cost() -> float:
        costs.append("asked")
        return 0.1

    theory = rule_for(RuleName.THEORY).plan(asked, TASK, CheckMode.RETRAIN, cost)
    assert theory.rule is RuleName.THEORY
    manual = rule_for(RuleName.MANUAL).plan(asked, TASK, CheckMode.CERTIFIED, cost)
    assert (manual.rule, manual.spot_checks) == (RuleName.MANUAL, 4 * 100)  # every member
    assert costs == []  # the paper's rule never asks what a check costs
    practical = rule_for(RuleName.PRACTICAL).plan(asked, TASK, CheckMode.CERTIFIED, cost)
    assert isinstance(practical, type(_plan()))
    assert costs == ["asked"]
    with pytest.raises(ValueError, match="epsilon-rel needs --mode practical"):
        rule_for(RuleName.MANUAL).plan(replace(asked, epsilon_rel=0.1), TASK, CheckMode.RETRAIN,
                                       cost)  # fmt: skip
    with pytest.raises(ValueError, match="max-tuples"):
        rule_for(RuleName.PRACTICAL).plan(replace(asked, max_tuples=-1), TASK, CheckMode.RETRAIN,
                                          cost)  # fmt: skip
