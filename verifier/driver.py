"""The verifier's protocol driver, independent of the transport.

``run_protocol`` walks a ``VerifierSession`` through the steps against any ``ProverTransport``:
the gRPC client (``verifier.client``) and in-process simulations use the same driver, so what is
simulated is exactly what runs over the wire. It never accepts on an error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol.decision import datamodel_range
from protocol.practical import mse_samples_for_range
from protocol.tasks.base import Progress
from verifier.certified import certified_cost
from verifier.practical_flow import run_sequential_mse
from verifier.session import (
    LocalWork,
    Rejection,
    VerificationError,
    VerificationResult,
    VerifierSession,
)

log = logging.getLogger("verifier")

#: Models requested per SupplyModels call (certified mode).
SUPPLY_BATCH = 1024


class TransportError(Exception):
    """The transport failed (timeout, disconnect, RPC error); ``str`` is a readable reason."""


class ProverTransport(Protocol):
    """The prover's six calls, as the driver sees them. Implementations raise ``TransportError``."""

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Step 1."""
        ...

    def commit(self, request: pb.ChallengeRequest) -> Iterable[pb.CommitChunk]:
        """Step 2."""
        ...

    def open(self, request: pb.OpenRequest) -> Iterable[pb.Opening]:
        """Step 3 (spot checks by retraining)."""
        ...

    def open_all(self, request: pb.OpenAllRequest) -> Iterable[pb.OpeningBatch]:
        """Step 3 (certified checks)."""
        ...

    def supply_models(self, request: pb.ModelsRequest) -> Iterable[pb.SuppliedModel]:
        """Step 3b (certified checks)."""
        ...

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Step 4."""
        ...


def error_result(
    session: VerifierSession, reason: str, verdict: str = "error", verifier_retrainings: float = 0
) -> VerificationResult:
    """A non-accepting result carrying ``reason``."""
    return VerificationResult(
        verdict=verdict,
        reason=reason,
        epsilon=session.plan.epsilon,
        delta=session.plan.delta,
        num_train_points=session.N,
        verifier_retrainings=verifier_retrainings,
        prover_retrainings=session.prover_retrainings,
        details={"transcript_hash": session.transcript.hexdigest},
    )


def _certified_mse(
    session: VerifierSession, transport: ProverTransport, progress: Progress | None
) -> LocalWork:
    for first in range(0, session.plan.mse_samples, SUPPLY_BATCH):
        count = min(SUPPLY_BATCH, session.plan.mse_samples - first)
        models = list(transport.supply_models(session.models_request(first, count)))
        session.ingest_models(first, models)
        if progress is not None:
            progress(count)
    return session.certified_local_work()


def _practical(
    session: VerifierSession,
    transport: ProverTransport,
    local_future: Future[LocalWork] | None,
    progress: Progress | None,
    enter: Callable[[str], None],
) -> VerificationResult:
    local = None
    if session.checks == "retrain":
        enter("local retraining (spot checks)")
        assert local_future is not None
        local = local_future.result()
        session.spot_check(local)  # a failed spot check rejects before any MSE work

    def fetch(first: int, count: int) -> np.ndarray:
        if session.supplies_models:
            models = list(transport.supply_models(session.models_request(first, count)))
            session.ingest_models(first, models)
            return session.mse_f_parts[-1]
        return session.retrain_mse(first, count)

    enter("sequential MSE")
    plan = session.plan
    ranges = datamodel_range(session.intercepts, session.coefficients)
    cap = mse_samples_for_range(plan, ranges)  # type: ignore[arg-type]
    note = f"MSE cap {cap} as planned"
    if cap != plan.mse_samples:
        note = (
            f"MSE cap raised from the planned {plan.mse_samples} to {cap} for the claimed "
            f"datamodel's range G = {float(ranges.max()):.3g} (planned at G = b)"
        )
        plan = dataclasses.replace(plan, mse_samples=cap)  # type: ignore[type-var]
    outcome = run_sequential_mse(
        plan,  # type: ignore[arg-type]
        session.task,
        session.f_values,
        session.intercepts,
        session.coefficients,
        session.mse_sample.masks,
        fetch,
        progress,
    )
    enter("decide")
    result = session.decide_practical(outcome, local)
    result.details["mse_cap"] = cap
    result.details["mse_cap_note"] = note
    return result


def _tell_prover(session: VerifierSession, transport: ProverTransport, verdict: str) -> None:
    """Best effort: let the prover log the verdict and release the session."""
    if not session.session_id:
        return
    try:
        transport.finish(
            pb.FinishRequest(
                session_id=session.session_id,
                verdict=verdict,
                transcript_hash=session.transcript.digest,
            )
        )
    except TransportError as exc:
        log.info("could not tell the prover the verdict: %s", exc)


def run_protocol(
    session: VerifierSession,
    transport: ProverTransport,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> VerificationResult:
    """Run the protocol; return accept, reject or error — accept only if every step held.

    Guarantees: "accept" only if every message arrived well-formed, every opening verified,
    every check matched, and the decision rule held. A transport failure, malformed message or
    crash gives "error"; a caught prover gives "reject"; each with a reason a person understands.
    """
    started = time.monotonic()
    step = "hello"
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-local")
    local_future: Future[LocalWork] | None = None

    def enter(name: str) -> None:
        nonlocal step
        step = name
        if on_step is not None:
            on_step(name)

    try:
        enter("hello")
        session.check_hello(transport.hello(session.hello_request()))
        if session.checks == "retrain":
            # C and M are known from the start: retrain them while the prover works.
            local_future = session.start_local_work(executor, progress)
        enter("commit")
        for chunk in transport.commit(session.challenge_request()):
            session.ingest(chunk)
        session.require_commitment()
        session.timings["commit_s"] = time.monotonic() - started
        enter("open")
        if session.checks == "certified":
            for batch in transport.open_all(session.open_all_request()):
                session.ingest_opening_batch(batch)
        else:
            for opening in transport.open(session.open_request()):
                session.ingest_opening(opening)
        session.require_all_openings()
        session.timings["open_s"] = time.monotonic() - started
        if session.practical:
            result = _practical(session, transport, local_future, progress, enter)
        else:
            if session.supplies_models:
                enter("supply models")
                local = _certified_mse(session, transport, progress)
            else:
                enter("local retraining")
                assert local_future is not None
                local = local_future.result()
            session.timings["local_retraining_s"] = local.seconds
            enter("decide")
            result = session.decide(local)
        if session.supplies_models:
            checked = len(session.spot_indices) + session.models_received
            cost = certified_cost(session.task, checked)
            result.verifier_retrainings = cost["retraining_equivalents"]
            result.prover_retrainings += session.models_received
            result.details["verifier_cost"] = cost
        session.timings["total_s"] = time.monotonic() - started
        enter("finish")
        try:
            fin = transport.finish(
                pb.FinishRequest(
                    session_id=session.session_id,
                    verdict=result.verdict,
                    transcript_hash=session.transcript.digest,
                )
            )
            result.details["prover_transcript_agrees"] = (
                bytes(fin.transcript_hash) == session.transcript.digest
            )
        except TransportError as exc:  # the verdict stands; the prover just missed the news
            log.warning("finish: %s", exc)
        result.details["wall_time_s"] = time.monotonic() - started
        result.details["timings"] = session.timings
        return result
    except TransportError as exc:
        return error_result(session, f"{step}: {exc}")
    except VerificationError as exc:
        return error_result(session, f"{step}: {exc}")
    except Rejection as exc:
        local_n = 0
        if local_future is not None and local_future.done() and not local_future.exception():
            local_n = local_future.result().retrainings
        result = error_result(session, f"{step}: {exc}", "reject", local_n)
        _tell_prover(session, transport, result.verdict)
        return result
    except Exception as exc:  # a crash must never become an accept
        log.exception("verifier crashed during %s", step)
        return error_result(session, f"{step}: internal error {type(exc).__name__}: {exc}")
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
