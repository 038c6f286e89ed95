"""Certified spot checks: a sampled set C opened with weights and certified by gradient passes."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import merkle
from protocol.accounting import plan_manual
from protocol.tasks import load_task
from protocol.trainer import weights_digest
from prover.datamodel import fit_datamodel
from prover.session import ProtocolFault, ProverSession
from prover.strategy import Answers, Attribution, HonestStrategy
from simulations.cheats import ScaleCheat
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.practical_flow import make_practical_plan, run_pilot
from verifier.session import Rejection, VerifierSession

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
    session = VerifierSession(TASK, _plan(spot), checks="certified-spot")
    return run_protocol(session, InProcessTransport(TASK, strategy)), session


class WrongSubsetWeights(HonestStrategy):
    """Commits, for every member, a true optimum of the *next* member's subset: the f-values,
    digests and Merkle tree are mutually consistent, so only the gradient certificate can tell."""

    label = "wrong-subset-weights"

    def answer(self, spec, progress=None) -> Answers:
        honest = super().answer(spec, progress)
        weights = np.roll(np.asarray(honest.weights), 1, axis=0)
        f = TASK.outputs(weights)
        digests = [weights_digest(w) for w in weights]
        leaves = merkle.build_leaves(np.arange(len(f)), honest.seeds, f, digests)
        return Answers(
            spec, f, honest.seeds, digests, merkle.MerkleTree(leaves), honest.retrainings, weights
        )


class SwappedOpeningWeights(HonestStrategy):
    """Honest commitment, but opens member i with member i+1's weights."""

    label = "swapped-opening-weights"

    def open_weights(self, answers: Answers, index: int) -> np.ndarray:
        return super().open_weights(answers, (index + 1) % len(answers.f_values))


def test_honest_run_is_accepted_with_k_gradient_passes(attribution) -> None:
    result, session = _run(HonestStrategy(TASK, attribution))
    assert result.verdict == "accept", result.reason
    spot = result.details["spot_check"]
    assert spot["mode"] == "certified-spot"
    assert spot["sampled"] is True
    assert spot["certified_models"] == SPOT
    assert spot["max_f_error_bound"] <= TASK.tolerance
    # the verifier certified exactly C and M: k + |M| gradient passes, no challenge retrained
    assert result.details["verifier_cost"]["gradient_passes"] == SPOT + 400
    assert session.local_retrainings == 0
    assert len(session.openings) == 0  # opened messages are not kept, only their weights


def test_scaled_attribution_is_rejected(attribution) -> None:
    result, _ = _run(ScaleCheat(TASK, attribution, -1.0))  # err = 4·B_1 ≫ ε
    assert result.verdict == "reject"


def test_consistent_wrong_subset_weights_fail_certification(attribution) -> None:
    result, _ = _run(WrongSubsetWeights(TASK, attribution))
    assert result.verdict == "reject"
    assert "certified check failed on challenge" in result.reason


def test_weights_that_do_not_open_the_digest_are_rejected(attribution) -> None:
    result, _ = _run(SwappedOpeningWeights(TASK, attribution))
    assert result.verdict == "reject"
    assert "does not open the committed digest" in result.reason


def test_opening_an_index_outside_the_spot_set_is_rejected(attribution) -> None:
    session = VerifierSession(TASK, _plan(), checks="certified-spot")
    prover = ProverSession(TASK, HonestStrategy(TASK, attribution), session.hello_request())
    session.check_hello(prover.hello_reply(""))
    for chunk in prover.commit(session.challenge_request()):
        session.ingest(chunk)
    request = session.open_request()
    assert request.with_weights
    outside = next(i for i in range(session.spec.num_members) if i not in set(request.indices))
    request.indices[0] = outside
    request.indices.sort()
    first = next(iter(prover.open(request)))
    with pytest.raises(Rejection, match="not asked for"):
        session.ingest_opening(first)


def test_missing_openings_are_rejected(attribution) -> None:
    session = VerifierSession(TASK, _plan(), checks="certified-spot")
    prover = ProverSession(TASK, HonestStrategy(TASK, attribution), session.hello_request())
    session.check_hello(prover.hello_reply(""))
    for chunk in prover.commit(session.challenge_request()):
        session.ingest(chunk)
    openings = list(prover.open(session.open_request()))
    for opening in openings[:-1]:
        session.ingest_opening(opening)
    with pytest.raises(Rejection, match=f"did not open 1 of {SPOT}"):
        session.require_all_openings()


def test_prover_without_weights_refuses_weighted_openings() -> None:
    task = load_task("synthetic:n=20")
    truth = task.truth()
    strategy = HonestStrategy(task, Attribution(truth.intercept, truth.coefficients, "exact"))
    verifier = VerifierSession(task, _plan_for(task))
    prover = ProverSession(task, strategy, verifier.hello_request())
    verifier.check_hello(prover.hello_reply(""))
    for chunk in prover.commit(verifier.challenge_request()):
        verifier.ingest(chunk)
    request = verifier.open_request()
    request.with_weights = True
    with pytest.raises(ProtocolFault) as fault:
        list(prover.open(request))
    assert fault.value.code == "FAILED_PRECONDITION"


def _plan_for(task):
    return plan_manual(
        epsilon=0.5,
        delta=0.05,
        output_bound=task.output_bound,
        tolerance=task.tolerance,
        num_targets=task.num_targets,
        pairs_per_level=50,
        spot_checks=8,
        mse_samples=50,
        rho=0.25,
    )


def test_certified_spot_checks_need_a_convex_task() -> None:
    with pytest.raises(ValueError, match="certified checks"):
        VerifierSession(load_task("synthetic"), _plan(), checks="certified-spot")


def test_practical_certified_spot_run_on_scaled_digits() -> None:
    """Practical sizing with sampled certified checks: k ≪ |E| and m* > 0, honest accepted."""
    task = load_task("digits-logreg:z=1,scale=auto,b=1.5")
    rng = np.random.default_rng(1)
    masks = rng.random((4000, task.num_train_points)) < task.p
    f = task.retrain(masks, np.zeros(4000, dtype=np.uint64)).f
    model = fit_datamodel(masks, f, method="auto")
    honest = Attribution(model.intercepts, model.coefficients, model.method, 4000)
    plan, _ = make_practical_plan(
        task,
        0.05,
        epsilon=0.3,
        epsilon_rel=None,
        certified=False,  # sampled spot checks
        max_mse_samples=50_000,
        pilot=run_pilot(task, 256, np.random.default_rng(2)),
    )
    assert plan.spot_checks < plan.num_members / 4
    assert plan.lie_allowance > 0
    session = VerifierSession(task, plan, checks="certified-spot")
    result = run_protocol(session, InProcessTransport(task, HonestStrategy(task, honest)))
    assert result.verdict == "accept", result.reason
    cost = result.details["verifier_cost"]
    assert cost["gradient_passes"] == plan.spot_checks + session.models_received
    # the verifier's cost is a small fraction of the prover's retrainings
    assert result.prover_retrainings / result.verifier_retrainings > 10


def test_mse_cap_grows_with_the_claimed_range_up_to_the_users_cap() -> None:
    from protocol.practical import PilotStats, mse_samples_for_range, plan_practical

    pilot = PilotStats.from_hint(np.array([0.5]), np.array([0.05]))
    plan = plan_practical(
        0.05, 1.5, 1e-6, 1, pilot, epsilon=0.2, all_checked=False, max_mse_samples=100_000
    )
    assert plan.max_mse_samples == 100_000
    at_b = mse_samples_for_range(plan, [1.5])
    wider = mse_samples_for_range(plan, [7.5])
    widest = mse_samples_for_range(plan, [1e6])
    assert at_b == plan.mse_samples  # planned at G = b: nothing to raise
    assert plan.mse_samples < wider < widest == plan.max_mse_samples


def test_auto_checks_choose_the_cheaper_certified_plan(capsys) -> None:
    import json

    from verifier.cli import main

    args = ["plan", "--task", "digits-logreg:z=1,scale=auto,b=1.5", "--mode", "practical",
            "--epsilon", "0.3", "--pilot-tuples", "128", "--json"]  # fmt: skip
    assert main(args) == 0
    auto = json.loads(capsys.readouterr().out)
    assert main([*args, "--checks", "certified"]) == 0
    every = json.loads(capsys.readouterr().out)
    # sampling the checks needs far fewer gradient passes here, so auto picks it
    assert auto["checks"] == "certified-spot"
    assert every["checks"] == "certified"
    assert auto["practical"]["spot_checks"] < auto["practical"]["num_members"]
    assert auto["practical_verifier_retrainings"] < every["practical_verifier_retrainings"]
