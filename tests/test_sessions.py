"""The protocol driven in-process: ProverSession and VerifierSession without gRPC.

These tests exercise every verifier check (openings, equivocation, malformed chunks) and the
prover's state machine deterministically and fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from protocol.accounting import plan_manual
from protocol.tasks.synthetic import SyntheticTask
from prover.session import ProtocolFault, ProverSession
from prover.strategy import Attribution, HonestStrategy
from simulations.cheats import FabricateCheat, ScaleCheat
from verifier.session import Rejection, VerificationError, VerifierSession

# Small sizes: n=50 points, 4,000 tuples, 32 spot checks, 2,000 MSE samples, ε = 0.3.
TASK = SyntheticTask(n=50, z=2, p=0.5, seed=3)


def _plan(**kw):
    args = {
        "epsilon": 0.3,
        "delta": 0.05,
        "output_bound": TASK.output_bound,
        "tolerance": TASK.tolerance,
        "num_targets": TASK.num_targets,
        "pairs_per_level": 4000,
        "spot_checks": 32,
        "mse_samples": 2000,
        "rho": 0.25,
    }
    args.update(kw)
    return plan_manual(**args)


def _exact_attribution() -> Attribution:
    truth = TASK.truth()
    return Attribution(truth.intercept, truth.coefficients, "exact", 0)


def _start(strategy=None, plan=None):
    strategy = strategy or HonestStrategy(TASK, _exact_attribution())
    verifier = VerifierSession(TASK, plan or _plan())
    prover = ProverSession(TASK, strategy, verifier.hello_request())
    verifier.check_hello(prover.hello_reply("test"))
    return prover, verifier


def _commit(prover, verifier):
    for chunk in prover.commit(verifier.challenge_request()):
        verifier.ingest(chunk)
    verifier.require_commitment()


def _run(prover, verifier, tamper=None):
    _commit(prover, verifier)
    for opening in prover.open(verifier.open_request()):
        if tamper is not None:
            tamper(opening)
        verifier.ingest_opening(opening)
    local = verifier._local_work(None)
    return verifier.decide(local)


def test_honest_exact_datamodel_is_accepted_and_transcripts_agree() -> None:
    prover, verifier = _start()
    result = _run(prover, verifier)
    assert result.verdict == "accept", result.reason
    reply = prover.finish(
        pb.FinishRequest(
            session_id=verifier.session_id,
            verdict=result.verdict,
            transcript_hash=verifier.transcript.digest,
        )
    )
    assert reply.transcript_hash == verifier.transcript.digest
    assert result.verifier_retrainings == 32 + 2000
    assert result.details["spot_check"]["max_abs_diff"] <= TASK.tolerance


def test_scaled_attribution_is_rejected_by_the_mse_check() -> None:
    prover, verifier = _start(ScaleCheat(TASK, _exact_attribution(), 0.0))
    result = _run(prover, verifier)
    assert result.verdict == "reject"
    assert "target" in result.reason


def test_fabricated_values_fail_a_spot_check() -> None:
    prover, verifier = _start(FabricateCheat(TASK, _exact_attribution(), 0.5))
    with pytest.raises(Rejection, match="spot check failed"):
        _run(prover, verifier)


def test_equivocating_opening_is_rejected() -> None:
    prover, verifier = _start()

    def change_value(opening):
        opening.f_values[0] += 1e-3

    with pytest.raises(Rejection, match="equivocation"):
        _run(prover, verifier, change_value)


def test_opening_with_a_bad_proof_is_rejected() -> None:
    prover, verifier = _start()

    def corrupt_proof(opening):
        first = bytearray(opening.proof[0])
        first[0] ^= 1
        opening.proof[0] = bytes(first)

    with pytest.raises(Rejection, match="Merkle root"):
        _run(prover, verifier, corrupt_proof)


def test_opening_with_a_different_digest_is_rejected() -> None:
    prover, verifier = _start()

    def corrupt_digest(opening):
        opening.weights_digest = b"\x00" * 32

    with pytest.raises(Rejection, match="Merkle root"):
        _run(prover, verifier, corrupt_digest)


def test_opening_with_the_wrong_seed_is_rejected() -> None:
    prover, verifier = _start()

    def wrong_seed(opening):
        opening.seed ^= 1

    with pytest.raises(Rejection, match="seed"):
        _run(prover, verifier, wrong_seed)


def test_missing_openings_are_rejected() -> None:
    prover, verifier = _start()
    _commit(prover, verifier)
    openings = list(prover.open(verifier.open_request()))
    for opening in openings[:-1]:
        verifier.ingest_opening(opening)
    with pytest.raises(Rejection, match="did not open"):
        verifier.require_all_openings()


def test_spot_check_set_is_revealed_only_after_the_root() -> None:
    _, verifier = _start()
    with pytest.raises(VerificationError, match="Merkle root"):
        verifier.open_request()


def _ingest_all(verifier, chunks) -> None:
    for c in chunks:
        verifier.ingest(c)


def _chunks(prover, verifier):
    return list(prover.commit(verifier.challenge_request()))


def test_out_of_range_f_values_are_an_error() -> None:
    prover, verifier = _start()
    chunks = _chunks(prover, verifier)
    part = next(c for c in chunks if c.WhichOneof("part") == "f_values")
    part.f_values.values[0] = 10 * TASK.output_bound
    with pytest.raises(VerificationError, match="output bound"):
        _ingest_all(verifier, chunks)


def test_non_finite_attribution_is_an_error() -> None:
    prover, verifier = _start()
    chunks = _chunks(prover, verifier)
    chunks[0].attribution.coefficients[0] = float("nan")
    with pytest.raises(VerificationError, match="non-finite"):
        verifier.ingest(chunks[0])


def test_absurdly_large_attribution_is_an_error_not_a_crash() -> None:
    # Found by the fuzz suite: 1e308 is finite but overflows the predictions.
    prover, verifier = _start()
    chunks = _chunks(prover, verifier)
    chunks[0].attribution.coefficients[0] = 1e308
    with pytest.raises(VerificationError, match="too large"):
        verifier.ingest(chunks[0])


def test_root_before_all_f_values_is_an_error() -> None:
    prover, verifier = _start()
    chunks = _chunks(prover, verifier)
    attribution = [c for c in chunks if c.WhichOneof("part") == "attribution"]
    for c in attribution:
        verifier.ingest(c)
    with pytest.raises(VerificationError, match="root arrived after"):
        verifier.ingest(chunks[-1])


def test_reordered_f_value_parts_are_an_error() -> None:
    # 20,000 tuples x 4 members x Z=2 = 160,000 values: three streamed parts.
    prover, verifier = _start(plan=_plan(pairs_per_level=20_000))
    chunks = _chunks(prover, verifier)
    f_parts = [c for c in chunks if c.WhichOneof("part") == "f_values"]
    assert len(f_parts) >= 2
    for c in chunks:
        if c.WhichOneof("part") == "attribution":
            verifier.ingest(c)
    with pytest.raises(VerificationError, match="expected 0"):
        verifier.ingest(f_parts[1])


def test_attribution_for_unknown_target_is_an_error() -> None:
    _, verifier = _start()
    bad = pb.CommitChunk(attribution=pb.AttributionPart(target=7, coefficients=[0.0]))
    with pytest.raises(VerificationError, match="target 7"):
        verifier.ingest(bad)


def test_wrong_leaf_count_is_an_error() -> None:
    prover, verifier = _start()
    chunks = _chunks(prover, verifier)
    chunks[-1].root.num_leaves += 1
    with pytest.raises(VerificationError, match="leaves"):
        _ingest_all(verifier, chunks)


def test_prover_refuses_out_of_order_calls() -> None:
    prover, verifier = _start()
    with pytest.raises(ProtocolFault) as fault:
        list(prover.open(pb.OpenRequest(session_id=prover.id, indices=[0])))
    assert fault.value.code == "FAILED_PRECONDITION"
    _commit(prover, verifier)
    with pytest.raises(ProtocolFault) as fault:
        list(prover.commit(verifier.challenge_request()))
    assert fault.value.code == "FAILED_PRECONDITION"


def test_prover_refuses_a_malformed_challenge() -> None:
    prover, verifier = _start()
    request = verifier.challenge_request()
    request.public_seed = b"short"
    with pytest.raises(ProtocolFault) as fault:
        list(prover.commit(request))
    assert fault.value.code == "INVALID_ARGUMENT"


def test_prover_refuses_out_of_range_open_indices() -> None:
    prover, verifier = _start()
    _commit(prover, verifier)
    with pytest.raises(ProtocolFault) as fault:
        list(prover.open(pb.OpenRequest(session_id=prover.id, indices=[10**9])))
    assert fault.value.code == "OUT_OF_RANGE"


def test_task_mismatch_names_the_differing_part() -> None:
    other = SyntheticTask(n=50, z=2, p=0.5, seed=4)
    verifier = VerifierSession(TASK, _plan())
    prover = ProverSession(other, HonestStrategy(other, _exact_attribution()), pb.HelloRequest())
    with pytest.raises(VerificationError, match="task spec differs"):
        verifier.check_hello(prover.hello_reply(""))


def test_secret_sets_differ_between_sessions() -> None:
    a, b = VerifierSession(TASK, _plan()), VerifierSession(TASK, _plan())
    assert a.spec.public_seed != b.spec.public_seed
    assert not np.array_equal(a.spot_indices, b.spot_indices)
    assert a.mse_sample.key != b.mse_sample.key


def test_honest_prover_refits_with_its_independent_challenge_retrainings() -> None:
    # Start from a datamodel fitted on only 300 samples (err ≈ B≥2·N/K ≈ 0.2·50/300 ≈ 0.03);
    # the 4,000 tuples add 8,000 independent x/y0 retrainings, so err should drop several-fold.
    rng = np.random.default_rng(5)
    masks = rng.random((300, TASK.num_train_points)) < TASK.p
    f = TASK.retrain(masks, np.zeros(300, dtype=np.uint64)).f
    from prover.datamodel import fit_datamodel

    model = fit_datamodel(masks, f, method="ols")
    start = Attribution(model.intercepts, model.coefficients, "ols", 300, masks, f)
    strategy = HonestStrategy(TASK, start, reuse_challenges=True)
    prover, verifier = _start(strategy)
    _commit(prover, verifier)
    before = TASK.truth().err(start.intercepts, start.coefficients)
    refit = strategy.attribution()
    after = TASK.truth().err(refit.intercepts, refit.coefficients)
    assert "challenge retrainings" in refit.method
    assert np.all(after < before / 4), (before, after)
    # What was committed is the refitted attribution.
    np.testing.assert_array_equal(verifier.coefficients, refit.coefficients)
