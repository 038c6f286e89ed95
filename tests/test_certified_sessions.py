"""Certified checks driven in-process on a real convex task (digits logistic regression)."""

from __future__ import annotations

import numpy as np
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import merkle
from protocol.accounting import plan_manual
from protocol.rules.base import CheckMode
from protocol.tasks import load_task
from prover.session import ProtocolFault, ProverSession
from prover.strategy import Attribution, HonestStrategy
from simulations.adversaries import Scale
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.planning import PlanOptions, make_verifier_plan
from verifier.session import Rejection, VerificationError, VerifierSession

TASK = load_task("digits-logreg:z=2")
PAIRS = 300  # |E| = 1,200 certified members


@pytest.fixture(scope="module")
def attribution(digits_z2_attribution) -> Attribution:
    return digits_z2_attribution


def _plan():
    return plan_manual(
        epsilon=0.05,
        delta=0.05,
        output_bound=TASK.output_bound,
        tolerance=TASK.tolerance,
        num_targets=TASK.num_targets,
        pairs_per_level=PAIRS,
        spot_checks=4 * PAIRS,
        mse_samples=400,
        rho=0.25,
    )


def _start(strategy):
    verifier = VerifierSession(TASK, _plan(), checks=CheckMode.CERTIFIED)
    prover = ProverSession(TASK, strategy, verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.claim(verifier.claim_request()):
        verifier.ingest_claim(chunk)
    for chunk in prover.commit(verifier.challenge_request(0.25, PAIRS)):
        verifier.ingest_commit(chunk)
    verifier.require_commitment()
    return prover, verifier


def _open_all(prover, verifier, tamper=None):
    for batch in prover.open_all(verifier.open_all_request()):
        if tamper is not None:
            tamper(batch)
        verifier.ingest_opening_batch(batch)
    return verifier.verify_round()


def _practical(strategy, epsilon_rel=0.1):
    plan, checks = make_verifier_plan(PlanOptions(epsilon_rel=epsilon_rel), TASK)
    session = VerifierSession(TASK, plan, checks=checks)
    return run_protocol(session, InProcessTransport(TASK, strategy))


def test_honest_claim_is_accepted_with_its_guarantee(attribution) -> None:
    result = _practical(HonestStrategy(TASK, attribution))
    assert result.verdict == "accept", result.reason
    assert result.exit_code == 0
    d = result.details
    assert d["guarantee_met"] is True
    assert all(up <= eps for up, eps in zip(d["err_upper"], d["epsilon"], strict=True))
    assert d["checks"] == "certified"
    assert d["verifier_cpu_s"] > 0
    assert d["self_fit_retrainings"] > TASK.num_train_points
    assert result.prover_retrainings >= d["prover_retrainings_verified"] > 0


def test_scaled_claim_is_rejected_with_certified_checks(attribution) -> None:
    result = _practical(Scale(TASK, attribution, 0.5))
    assert result.verdict == "reject", result.reason
    assert result.exit_code == 1
    d = result.details
    assert d["tuples"] > 0  # rejecting needs an upper bound on B≥2: the challenges ran
    assert d["spot_check"]["certified_models"] == 4 * d["tuples"]
    assert max(lo - e for lo, e in zip(d["err_lower"], d["epsilon_reject"], strict=True)) > 0


def test_every_member_of_a_round_is_certified(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))
    summary = _open_all(prover, verifier)
    assert summary["certified_models"] == 4 * PAIRS
    assert summary["max_f_error_bound"] <= TASK.tolerance
    assert verifier.certified_models == 4 * PAIRS


def test_weights_not_matching_their_digest_are_rejected(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))

    def flip(batch):
        blob = bytearray(batch.weights)
        blob[3] ^= 0x40
        batch.weights = bytes(blob)

    with pytest.raises(Rejection, match="do not hash to its digest"):
        _open_all(prover, verifier, flip)


def test_weights_of_a_different_subset_fail_certification(attribution) -> None:
    # A prover that trained member 0 on the wrong subset: the weights are a true optimum, but
    # for another subset, so the gradient on the challenged subset is far from zero.
    prover, verifier = _start(HonestStrategy(TASK, attribution))
    answers = prover.rounds[0]
    answers.weights[0] = answers.weights[1]
    answers.f_values[0] = TASK.outputs(answers.weights[1])
    from protocol.trainer import weights_digest

    answers.digests[0] = weights_digest(answers.weights[1])
    # Re-commit consistently so that only the certificate can catch it.
    leaves = merkle.build_leaves(
        np.arange(len(answers.f_values)), answers.seeds, answers.f_values, answers.digests
    )
    verifier.rounds[0].root = merkle.MerkleTree(leaves).root
    verifier.rounds[0].f_values[0] = answers.f_values[0]
    with pytest.raises(Rejection, match="certified check failed on challenge 0"):
        _open_all(prover, verifier)


def test_equivocating_batch_is_rejected(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))

    def change(batch):
        batch.f_values[0] += 1e-3

    with pytest.raises(Rejection, match="equivocation"):
        _open_all(prover, verifier, change)


def test_a_round_may_be_opened_once(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))
    _open_all(prover, verifier)
    with pytest.raises(ProtocolFault, match="unopened"):
        list(prover.open_all(pb.OpenAllRequest(session_id=prover.id, round=0)))


def test_mse_sample_is_revealed_only_after_the_claim(attribution) -> None:
    verifier = VerifierSession(TASK, _plan(), checks=CheckMode.CERTIFIED)
    prover = ProverSession(TASK, HonestStrategy(TASK, attribution), verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    with pytest.raises(VerificationError, match="claim"):
        verifier.models_request(0, 10)
    request = pb.ModelsRequest(session_id=prover.id, sample_key=b"k" * 32, first=0, count=4)
    with pytest.raises(ProtocolFault) as fault:
        list(prover.supply_models(request))
    assert fault.value.code == "FAILED_PRECONDITION"
    for chunk in prover.claim(verifier.claim_request()):
        verifier.ingest_claim(chunk)
    models = list(prover.supply_models(verifier.models_request(0, 4)))
    assert verifier.ingest_models(0, models).shape == (4, TASK.num_targets)


def test_supplied_models_of_other_subsets_fail_certification(attribution) -> None:
    verifier = VerifierSession(TASK, _plan(), checks=CheckMode.CERTIFIED)
    prover = ProverSession(TASK, HonestStrategy(TASK, attribution), verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.claim(verifier.claim_request()):
        verifier.ingest_claim(chunk)
    models = list(prover.supply_models(verifier.models_request(0, 4)))
    models[0].weights, models[1].weights = models[1].weights, models[0].weights
    with pytest.raises(Rejection, match="not certified"):
        verifier.ingest_models(0, models)


def test_certified_checks_need_a_convex_task() -> None:
    with pytest.raises(ValueError, match="certified checks"):
        VerifierSession(load_task("synthetic"), _plan(), checks=CheckMode.CERTIFIED)
