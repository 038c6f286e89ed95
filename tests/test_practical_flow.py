"""Practical mode end to end in-process: pilot sizing, sequential MSE, decision by err bounds.

On synthetic:n=100 (Var f = 1, b ≈ 4.7) at ε = 1.0, δ = 0.05 the planner asks for ~60,000
tuples; each run takes a few seconds.
"""

from __future__ import annotations

import pytest

from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution, HonestStrategy
from simulations.cheats import FabricateCheat, ScaleCheat
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.practical_flow import make_practical_plan
from verifier.session import VerifierSession

TASK = SyntheticTask(n=100, z=1, p=0.5, seed=0)


@pytest.fixture(scope="module")
def plan():
    plan, pilot = make_practical_plan(
        TASK, 0.05, epsilon=1.0, epsilon_rel=None, certified=False, max_mse_samples=100_000
    )
    assert pilot.retrainings > 0
    return plan


def _exact() -> Attribution:
    truth = TASK.truth()
    return Attribution(truth.intercept, truth.coefficients, "exact", 0)


def test_plan_is_practical_and_independent_of_the_prover(plan) -> None:
    assert plan.mode == "practical"
    assert plan.lie_allowance >= 0
    assert plan.spot_checks <= plan.num_members


def test_honest_prover_accepted_early(plan) -> None:
    result = run_protocol(
        VerifierSession(TASK, plan), InProcessTransport(TASK, HonestStrategy(TASK, _exact()))
    )
    assert result.verdict == "accept", result.reason
    decision = result.details["decision"]
    assert decision["err_upper"][0] <= 1.0
    # Sequential: an honest prover with err = 0 is settled well before the cap.
    assert result.details["mse_samples_used"] < plan.mse_samples
    assert "determined after" in result.details["stop_reason"]


def test_large_error_rejected(plan) -> None:
    # a -> -0.3 a: err = 1.3² · B_1 = 1.352 > ε = 1 (closed form from the task's truth).
    truth = TASK.truth()
    err = TASK.truth().err(truth.intercept, -0.3 * truth.coefficients)[0]
    assert err > 1.0
    cheat = ScaleCheat(TASK, _exact(), -0.3)
    result = run_protocol(VerifierSession(TASK, plan), InProcessTransport(TASK, cheat))
    assert result.verdict == "reject", result.reason


def test_fabricated_answers_caught_by_spot_checks(plan) -> None:
    cheat = FabricateCheat(TASK, _exact(), 0.01)
    result = run_protocol(VerifierSession(TASK, plan), InProcessTransport(TASK, cheat))
    assert result.verdict == "reject"
    assert "spot check failed" in result.reason
