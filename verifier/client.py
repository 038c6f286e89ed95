"""Drives a ``VerifierSession`` against a prover over gRPC. Never accepts on an error."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol.tasks.base import Progress
from verifier.certified import certified_cost
from verifier.session import Rejection, VerificationError, VerificationResult, VerifierSession

log = logging.getLogger("verifier")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def describe_rpc_error(err: grpc.RpcError, step: str, address: str, timeout_s: float) -> str:
    """A sentence a person understands for a failed RPC."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{step}: prover at {address} did not answer within {timeout_s:g}s (timeout)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{step}: prover at {address} is unreachable or disconnected ({details})"
    if code == grpc.StatusCode.CANCELLED:
        return f"{step}: the call was cancelled ({details})"
    name = code.name if code is not None else "UNKNOWN"
    return f"{step}: prover at {address} answered with an error {name}: {details}"


def _error(
    session: VerifierSession, reason: str, verifier_retrainings: int = 0
) -> VerificationResult:
    return VerificationResult(
        verdict="error",
        reason=reason,
        epsilon=session.plan.epsilon,
        delta=session.plan.delta,
        num_train_points=session.N,
        verifier_retrainings=verifier_retrainings,
        prover_retrainings=session.prover_retrainings,
        details={"transcript_hash": session.transcript.hexdigest},
    )


def run_verification(
    session: VerifierSession,
    address: str,
    timeout_s: float = 600.0,
    progress: Progress | None = None,
) -> VerificationResult:
    """Run the four-step protocol against ``address``; returns accept, reject or error.

    Guarantees: the verdict is "accept" only if every message arrived well-formed, every opening
    verified, every spot check matched, and the decision rule held. Any other outcome is "reject"
    (the prover was caught) or "error" (the run could not be completed), each with a reason.
    """
    started = time.monotonic()
    step = "connect"
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verifier-local")
    local_future = None
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    try:
        stub = pb_grpc.ProverStub(channel)
        step = "hello"
        reply = stub.Hello(session.hello_request(), timeout=timeout_s)
        session.check_hello(reply)
        if session.checks == "retrain":
            # C and M are known from the start: retrain them while the prover works.
            local_future = session.start_local_work(executor, progress)
        step = "commit"
        for chunk in stub.Commit(session.challenge_request(), timeout=timeout_s):
            session.ingest(chunk)
        session.require_commitment()
        session.timings["commit_s"] = time.monotonic() - started
        step = "open"
        if session.checks == "certified":
            for batch in stub.OpenAll(session.open_all_request(), timeout=timeout_s):
                session.ingest_opening_batch(batch)
        else:
            for opening in stub.Open(session.open_request(), timeout=timeout_s):
                session.ingest_opening(opening)
        session.timings["open_s"] = time.monotonic() - started
        step = "open (checking)"
        session.require_all_openings()
        if session.checks == "certified":
            step = "supply models"
            batch = 1024
            for first in range(0, session.plan.mse_samples, batch):
                count = min(batch, session.plan.mse_samples - first)
                request = session.models_request(first, count)
                models = list(stub.SupplyModels(request, timeout=timeout_s))
                session.ingest_models(first, models)
                if progress is not None:
                    progress(count)
            local = session.certified_local_work()
        else:
            step = "local retraining"
            assert local_future is not None
            local = local_future.result()
        session.timings["local_retraining_s"] = local.seconds
        step = "decide"
        result = session.decide(local)
        if session.checks == "certified":
            cost = certified_cost(session.task, session.spec.num_members + session.models_received)
            result.verifier_retrainings = cost["retraining_equivalents"]
            result.prover_retrainings += session.models_received
            result.details["verifier_cost"] = cost
        session.timings["total_s"] = time.monotonic() - started
        step = "finish"
        try:
            fin = stub.Finish(
                pb.FinishRequest(
                    session_id=session.session_id,
                    verdict=result.verdict,
                    transcript_hash=session.transcript.digest,
                ),
                timeout=timeout_s,
            )
            result.details["prover_transcript_agrees"] = (
                bytes(fin.transcript_hash) == session.transcript.digest
            )
        except grpc.RpcError as err:  # the verdict stands; the prover just missed the news
            log.warning("finish: %s", describe_rpc_error(err, "finish", address, timeout_s))
        result.details["wall_time_s"] = time.monotonic() - started
        result.details["timings"] = session.timings
        return result
    except grpc.RpcError as err:
        return _error(session, describe_rpc_error(err, step, address, timeout_s))
    except VerificationError as exc:
        return _error(session, f"{step}: {exc}")
    except Rejection as exc:
        local_n = 0
        if local_future is not None and local_future.done() and not local_future.exception():
            local_n = local_future.result().retrainings
        res = _error(session, f"{step}: {exc}", local_n)
        res.verdict = "reject"
        return res
    except Exception as exc:
        log.exception("verifier crashed during %s", step)
        return _error(session, f"{step}: internal error {type(exc).__name__}: {exc}")
    finally:
        channel.close()
        executor.shutdown(wait=False, cancel_futures=True)
