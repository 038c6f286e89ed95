"""Certified spot checks: a sampled set C opened with weights and certified by gradient passes."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import merkle
from protocol.accounting import plan_manual
from protocol.rules.base import CheckMode
from protocol.tasks import load_task
from protocol.trainer import weights_digest
from prover.session import ProtocolFault, ProverSession
from prover.strategy import Answers, Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.session import VerifierSession

TASK = load_task("digits-logreg:z=2")
PAIRS = 300  # |E| = 1,200 members; k = 64 of them certified; |M| = 400 supplied models
SPOT = 64


@pytest.fixture(scope="module")
def attribution(digits_z2_attribution) -> Attribution:
    return digits_z2_attribution


def _plan(spot: int = SPOT):
    return plan_manual(
        epsilon=0.05,
        delta=0.05,
        output_bound=TASK.output_bound,
        tolerance=TASK.tolerance,
        num_targets=TASK.num_targets,
        pairs_per_level=PAIRS,
        spot_checks=spot,
        mse_samples=400,
        rho=0.25,
    )


def _run(strategy, spot: int = SPOT):
    session = VerifierSession(TASK, _plan(spot), checks=CheckMode.CERTIFIED_SPOT)
    return run_protocol(session, InProcessTransport(TASK, strategy)), session


class WrongSubsetWeights(HonestStrategy):
    """Commits, for every member, a true optimum of the *next* member's subset: the f-values,
    digests and Merkle tree are mutually consistent, so only the gradient certificate can tell."""

    label = "wrong-subset-weights"

    def answer(self, rnd, progress=None) -> Answers:
        honest = super().answer(rnd, progress)
        weights = np.roll(np.asarray(honest.weights), 1, axis=0)
        f = TASK.outputs(weights)
        digests = [weights_digest(w) for w in weights]
        leaves = merkle.build_leaves(rnd.members, honest.seeds, f, digests)
        return Answers(
            rnd, f, honest.seeds, digests, merkle.MerkleTree(leaves), honest.retrainings, weights
        )


class SwappedOpeningWeights(HonestStrategy):
    """Honest commitment, but opens member i with member i+1's weights."""

    label = "swapped-opening-weights"

    def open_weights(self, answers: Answers, index: int) -> np.ndarray:
        nxt = answers.round.first_member + (answers.local(index) + 1) % len(answers.f_values)
        return super().open_weights(answers, nxt)


def test_honest_run_certifies_k_members_with_gradient_passes(attribution) -> None:
    result, session = _run(HonestStrategy(TASK, attribution))
    # At these tiny sizes the paper's rule may decide either way; every check must pass.
    assert result.verdict != "error", result.reason
    assert "certified check failed" not in result.reason
    spot = result.details["spot_check"]
    assert spot["mode"] == "certified-spot"
    assert spot["sampled"] is True
    assert spot["certified_models"] == SPOT
    # k spot checks + 400 supplied MSE models, every one certified by one gradient pass
    assert session.certified_models == SPOT + 400
    assert session.local_retrainings == 0


def test_consistent_wrong_subset_weights_fail_certification(attribution) -> None:
    result, _ = _run(WrongSubsetWeights(TASK, attribution))
    assert result.verdict == "reject"
    assert "certified check failed" in result.reason


def test_weights_that_do_not_open_the_digest_are_rejected(attribution) -> None:
    result, _ = _run(SwappedOpeningWeights(TASK, attribution))
    assert result.verdict == "reject"
    assert "digest" in result.reason


def test_missing_weighted_openings_are_rejected(attribution) -> None:
    verifier = VerifierSession(TASK, _plan(), checks=CheckMode.CERTIFIED_SPOT)
    prover = ProverSession(TASK, HonestStrategy(TASK, attribution), verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.claim(verifier.claim_request()):
        verifier.ingest_claim(chunk)
    for chunk in prover.commit(verifier.challenge_request(0.25, PAIRS)):
        verifier.ingest_commit(chunk)
    openings = list(prover.open(verifier.open_request(SPOT)))
    for opening in openings[:-1]:
        verifier.ingest_opening(opening)
    from verifier.session import Rejection

    with pytest.raises(Rejection, match="did not open"):
        verifier.check_spot_openings()


def test_prover_without_weights_refuses_weighted_openings() -> None:
    task = load_task("synthetic:n=30")
    truth = task.truth()
    strategy = HonestStrategy(task, Attribution(truth.intercept, truth.coefficients, "exact", 0))
    plan = plan_manual(
        epsilon=0.3,
        delta=0.05,
        output_bound=task.output_bound,
        tolerance=task.tolerance,
        num_targets=1,
        pairs_per_level=10,
        spot_checks=4,
        mse_samples=10,
    )
    verifier = VerifierSession(task, plan)
    prover = ProverSession(task, strategy, verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.claim(verifier.claim_request()):
        verifier.ingest_claim(chunk)
    for chunk in prover.commit(verifier.challenge_request(0.25, 10)):
        verifier.ingest_commit(chunk)
    request = verifier.open_request(4)
    request.with_weights = True
    with pytest.raises(ProtocolFault, match="no weights"):
        list(prover.open(request))


def test_certified_spot_checks_need_a_convex_task() -> None:
    with pytest.raises(ValueError, match="not strongly convex"):
        VerifierSession(load_task("synthetic"), _plan(), checks=CheckMode.CERTIFIED_SPOT)
