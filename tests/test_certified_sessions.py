"""Certified checks driven in-process on a real convex task (digits logistic regression)."""

from __future__ import annotations

import numpy as np
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from protocol.accounting import plan_manual
from protocol.tasks import load_task
from prover.session import ProtocolFault, ProverSession
from prover.strategy import Attribution, HonestStrategy
from simulations.cheats import ScaleCheat
from verifier.session import Rejection, VerificationError, VerifierSession

TASK = load_task("digits-logreg:z=2")
PAIRS = 300  # |E| = 1,200 certified members; |M| = 400 supplied models


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
    verifier = VerifierSession(TASK, _plan(), checks="certified")
    prover = ProverSession(TASK, strategy, verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.commit(verifier.challenge_request()):
        verifier.ingest(chunk)
    verifier.require_commitment()
    return prover, verifier


def _open_all(prover, verifier, tamper=None):
    for batch in prover.open_all(verifier.open_all_request()):
        if tamper is not None:
            tamper(batch)
        verifier.ingest_opening_batch(batch)
    verifier.require_all_openings()


def _supply(prover, verifier):
    request = verifier.models_request(0, verifier.plan.mse_samples)
    verifier.ingest_models(0, list(prover.supply_models(request)))


def test_honest_certified_run_is_accepted(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))
    _open_all(prover, verifier)
    _supply(prover, verifier)
    result = verifier.decide(verifier.certified_local_work())
    assert result.verdict == "accept", result.reason
    summary = result.details["spot_check"]
    assert summary["certified_models"] == 4 * PAIRS
    assert summary["max_f_error_bound"] <= TASK.tolerance


def test_scaled_attribution_is_rejected_with_certified_checks(attribution) -> None:
    prover, verifier = _start(ScaleCheat(TASK, attribution, 0.0))
    _open_all(prover, verifier)
    _supply(prover, verifier)
    assert verifier.decide(verifier.certified_local_work()).verdict == "reject"


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
    strategy = HonestStrategy(TASK, attribution)
    prover, verifier = _start(strategy)
    answers = prover.answers
    answers.weights[0] = answers.weights[1]
    answers.f_values[0] = TASK.outputs(answers.weights[1])
    from protocol.trainer import weights_digest

    answers.digests[0] = weights_digest(answers.weights[1])
    # Re-commit consistently so that only the certificate can catch it.
    from protocol import merkle

    leaves = merkle.build_leaves(
        np.arange(len(answers.f_values)), answers.seeds, answers.f_values, answers.digests
    )
    verifier.root = merkle.MerkleTree(leaves).root
    verifier.f_values[0] = answers.f_values[0]
    with pytest.raises(Rejection, match="certified check failed on challenge 0"):
        _open_all(prover, verifier)


def test_equivocating_batch_is_rejected(attribution) -> None:
    prover, verifier = _start(HonestStrategy(TASK, attribution))

    def change(batch):
        batch.f_values[0] += 1e-3

    with pytest.raises(Rejection, match="equivocation"):
        _open_all(prover, verifier, change)


def test_mse_sample_is_revealed_only_after_certified_openings(attribution) -> None:
    _, verifier = _start(HonestStrategy(TASK, attribution))
    with pytest.raises(VerificationError, match="only after certified openings"):
        verifier.models_request(0, 10)


def test_prover_refuses_supply_before_open(attribution) -> None:
    prover, _ = _start(HonestStrategy(TASK, attribution))
    request = pb.ModelsRequest(session_id=prover.id, sample_key=b"k" * 32, first=0, count=4)
    with pytest.raises(ProtocolFault) as fault:
        list(prover.supply_models(request))
    assert fault.value.code == "FAILED_PRECONDITION"


def test_certified_checks_need_a_convex_task() -> None:
    with pytest.raises(ValueError, match="certified checks"):
        VerifierSession(load_task("synthetic"), _plan(), checks="certified")
