"""A hostile prover: an abort after commitment is a reject, not a retryable error, and a stream
past its count is cut off (issue #16 items 2 and 4).

Before the prover has committed to its claim, a refusal is an error (exit 2): nothing was
claimed. After it, refusing, aborting or disconnecting is a reject (exit 1) whose reason names the
abort, so a prover that foresees its verdict, or dislikes the challenge seed, gains nothing by
walking away and being asked again. In-process, through the verifier's real driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.driver import TransportError, run_protocol
from verifier.planning import PlanOptions, make_verifier_plan
from verifier.session import VerifierSession

TASK = SyntheticTask(n=100, z=1, p=0.5, seed=0)
TRUTH = TASK.truth()
OVERLOADED = "RESOURCE_EXHAUSTED: overloaded, please retry"


class AbortingTransport:
    """The honest in-process prover, except that it aborts with "overloaded" at ``step``
    (optionally after ``after`` messages of that step's stream)."""

    def __init__(self, inner: InProcessTransport, step: str, after: int = 0) -> None:
        self.inner = inner
        self.step = step
        self.after = after

    def _wrap(self, step: str, stream: Iterable[Any]) -> Iterator[Any]:
        for i, message in enumerate(stream):
            if step == self.step and i >= self.after:
                raise TransportError(f"prover answered {step} with {OVERLOADED}")
            yield message
        if step == self.step:
            raise TransportError(f"prover answered {step} with {OVERLOADED}")

    def hello(self, request: Any) -> Any:
        if self.step == "hello":
            raise TransportError(OVERLOADED)
        return self.inner.hello(request)

    def claim(self, request: Any) -> Iterator[Any]:
        return self._wrap("claim", self.inner.claim(request))

    def commit(self, request: Any) -> Iterator[Any]:
        return self._wrap("commit", self.inner.commit(request))

    def open(self, request: Any) -> Iterator[Any]:
        return self._wrap("open", self.inner.open(request))

    def open_all(self, request: Any) -> Iterator[Any]:
        return self._wrap("open_all", self.inner.open_all(request))

    def supply_models(self, request: Any) -> Iterator[Any]:
        return self._wrap("supply_models", self.inner.supply_models(request))

    def finish(self, request: Any) -> Any:
        return self.inner.finish(request)


def _run(step: str, after: int = 0, epsilon: float = 0.2) -> Any:
    plan, checks = make_verifier_plan(PlanOptions(epsilon=epsilon), TASK)
    exact = Attribution(TRUTH.intercept, TRUTH.coefficients, "exact", 0)
    transport = AbortingTransport(
        InProcessTransport(TASK, HonestStrategy(TASK, exact)), step, after
    )
    return run_protocol(VerifierSession(TASK, plan, checks=checks), transport)


@pytest.mark.parametrize(("step", "after"), [("hello", 0), ("claim", 0), ("claim", 1)])
def test_refusing_before_the_claim_is_complete_is_an_error(step: str, after: int) -> None:
    result = _run(step, after)
    assert (result.verdict, result.exit_code) == ("error", 2), result.reason
    assert "overloaded" in result.reason
    assert "aborted_after_commit" not in result.details


def test_aborting_after_the_claim_is_a_reject_naming_the_abort() -> None:
    # at ε = B≥2 = 0.2 the MSE alone cannot decide, so the prover is asked for a Commit
    result = _run("commit")
    assert (result.verdict, result.exit_code) == ("reject", 1), result.reason
    assert result.details["aborted_after_commit"] is True
    assert result.details["guarantee_met"] is False
    assert "after committing to its claim" in result.reason
    assert "overloaded, please retry" in result.reason
    assert "not a retry" in result.reason


def test_aborting_mid_stream_after_the_claim_is_a_reject() -> None:
    result = _run("commit", after=1)
    assert (result.verdict, result.exit_code) == ("reject", 1), result.reason
    assert result.details["aborted_after_commit"] is True


def test_a_prover_foreseeing_its_reject_under_certified_checks_gains_nothing_by_aborting(
    digits_z2_attribution: Attribution,
) -> None:
    """Under certified checks the prover learns M when it supplies M's models, so it can compute
    the verdict before the verifier does. Halving its claim and aborting at the first
    SupplyModels call (when it would see the reject coming) still ends in a reject."""
    from protocol.tasks import load_task
    from simulations.adversaries import Scale

    task = load_task("digits-logreg:z=2")
    plan, checks = make_verifier_plan(PlanOptions(epsilon_rel=0.1), task)
    assert checks.certified
    cheat = Scale(task, digits_z2_attribution, 0.5)
    transport = AbortingTransport(InProcessTransport(task, cheat), "supply_models")
    result = run_protocol(VerifierSession(task, plan, checks=checks), transport)
    assert (result.verdict, result.exit_code) == ("reject", 1), result.reason
    assert "supply_models" in result.reason
    assert "after committing to its claim" in result.reason


class EndlessSupply(AbortingTransport):
    """Supplies the honest models, then repeats the last one without end."""

    def supply_models(self, request: Any) -> Iterator[Any]:
        last = None
        for last in self.inner.supply_models(request):
            yield last
        while True:
            yield last


def test_a_prover_streaming_without_end_is_rejected_at_the_count(
    digits_z2_attribution: Attribution,
) -> None:
    """The verifier reads supplied models one at a time and stops at one past the count asked
    for (issue #16 item 4): before, it collected the whole stream and grew without bound."""
    from protocol.tasks import load_task

    task = load_task("digits-logreg:z=2")
    plan, checks = make_verifier_plan(PlanOptions(epsilon_rel=0.1), task)
    transport = EndlessSupply(
        InProcessTransport(task, HonestStrategy(task, digits_z2_attribution)), "none"
    )
    result = run_protocol(VerifierSession(task, plan, checks=checks), transport)
    assert (result.verdict, result.exit_code) == ("reject", 1), result.reason
    assert "more than the" in result.reason


def test_a_claim_with_tiny_coefficients_gets_a_verdict_not_an_error(
    digits_z2_attribution: Attribution,
) -> None:
    """At relative ε the tolerance check used the claim's own spread as a stand-in for ε, so a
    claim of near-zero coefficients (a → 1e-6·a, err ≈ B₁ ≈ Var f) ended in error (exit 2), a
    retry, instead of a reject. It is now checked against R·Var f once that is estimated."""
    from protocol.tasks import load_task
    from simulations.adversaries import Scale

    task = load_task("digits-logreg:z=2")
    plan, checks = make_verifier_plan(PlanOptions(epsilon_rel=0.1), task)
    cheat = Scale(task, digits_z2_attribution, 1e-6)
    result = run_protocol(
        VerifierSession(task, plan, checks=checks), InProcessTransport(task, cheat)
    )
    assert (result.verdict, result.exit_code) == ("reject", 1), result.reason


@pytest.mark.parametrize("options", [PlanOptions(epsilon=0.2), PlanOptions(epsilon_rel=0.1)])
def test_a_claim_with_an_absurd_intercept_is_rejected_from_the_claim_alone(
    options: PlanOptions,
) -> None:
    """A claim whose mean lies far outside f's range ±b has err ≥ (|E g| − b)² − b² > ε whatever f
    is. It used to make τ's charge on the MSE unplannable and end in error after commitment; it
    is now rejected before any sample. One just outside the range (bound below 0) still goes
    through the rule and is judged by the samples."""
    plan, checks = make_verifier_plan(options, TASK)
    b = TASK.output_bound
    for shift, certain in ((100.0 * b, True), (0.5 * b, False)):
        claim = Attribution(TRUTH.intercept + shift, TRUTH.coefficients, "shifted", 0)
        result = run_protocol(
            VerifierSession(TASK, plan, checks=checks),
            InProcessTransport(TASK, HonestStrategy(TASK, claim)),
        )
        assert (result.verdict, result.exit_code) == ("reject", 1), result.reason
        assert ("provably not ε-optimal" in result.reason) is certain, result.reason
        assert (result.prover_retrainings == 0) is certain  # certain: no sample was drawn
