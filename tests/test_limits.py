"""Server limits: session bound and idle expiry, oversized messages, concurrent-RPC cap.

Every limit the prover enforces reaches the client as RESOURCE_EXHAUSTED with a readable message,
and the verifier turns it into an error verdict (exit 2), never an accept. Sizes as in
test_tls.py (small synthetic runs of about a second each).
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol import PROTOCOL_VERSION
from protocol.accounting import plan_manual
from protocol.rules.base import CheckMode
from protocol.tasks import load_task
from prover.server import build_server
from prover.servicer import ProverServicer
from tests.conftest import run_verifier
from verifier.client import run_verification
from verifier.session import VerifierSession

TASK = "synthetic:n=100"
SIZES = ["--task", TASK, "--mode", "manual", "--pairs", "2000", "--spot-checks", "16",
         "--mse-samples", "500", "--epsilon", "1.0", "--timeout", "30"]  # fmt: skip
#: Long enough that the first verifier (a fresh process that imports torch, several seconds on a
#: loaded 2-core machine) says Hello while the held session is still alive; at 3 s it sometimes
#: arrived after the expiry and was served.
TTL_S = 12.0


def _hello(task_selector: str = TASK) -> pb.HelloRequest:
    ident = load_task(task_selector).identity()
    return pb.HelloRequest(
        protocol_version=PROTOCOL_VERSION,
        task=pb.TaskIdentity(**{**ident.as_fields(), "selector": task_selector}),
    )


def test_sessions_exhausted_is_an_error_then_expire(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--max-sessions", "1", "--session-ttl", str(TTL_S))
    with grpc.insecure_channel(prover.address) as channel:
        # Hold the only session: say Hello, take the Claim and never Finish (a session still at
        # its Hello would be dropped for a newcomer: unfinished Hellos lock nobody out).
        stub = pb_grpc.ProverStub(channel)
        sid = stub.Hello(_hello(), timeout=10).session_id
        list(stub.Claim(pb.ClaimRequest(session_id=sid), timeout=10))
        held_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ProverStub(channel).Hello(_hello(), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "maximum of 1 sessions" in info.value.details()
    rc, out = run_verifier(prover.address, *SIZES)
    assert (rc, out["verdict"]) == (2, "error")
    assert "RESOURCE_EXHAUSTED" in out["reason"]
    assert "maximum of 1 sessions" in out["reason"]
    # The held session expires after TTL_S idle; then a verifier gets the slot (the default
    # rule at ε = 1: an honest claim is accepted on its MSE in seconds).
    time.sleep(max(0.0, TTL_S + 0.5 - (time.monotonic() - held_at)))
    rc, out = run_verifier(prover.address, "--task", TASK, "--epsilon", "1.0", "--timeout", "30")
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    prover.wait_for_log(f"expired after {TTL_S:.0f}s idle")


def _bare_server(**kwargs):  # type: ignore[no-untyped-def]
    """An in-thread server on 127.0.0.1:0 whose Prover service never gets a valid request."""
    task = load_task(TASK)
    servicer = ProverServicer(task, lambda: None)  # type: ignore[arg-type,return-value]
    server, port = build_server(servicer, "127.0.0.1", 0, **kwargs)
    server.start()
    return server, f"127.0.0.1:{port}"


def test_oversized_request_is_resource_exhausted() -> None:
    server, address = _bare_server(workers=2, max_message_bytes=4096)
    try:
        request = _hello()
        request.task.canonical_spec = "x" * 10_000
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.ProverStub(channel).Hello(request, timeout=10)
    finally:
        server.stop(0).wait()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()


def test_oversized_reply_after_the_claim_is_a_reject(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    task = load_task(TASK)
    plan = plan_manual(
        epsilon=1.0, delta=0.05, output_bound=task.output_bound, tolerance=task.tolerance,
        num_targets=task.num_targets, pairs_per_level=2000, spot_checks=16, mse_samples=500,
        rho=0.25,
    )  # fmt: skip
    session = VerifierSession(task, plan, selector=TASK, checks=CheckMode.RETRAIN)
    # The verifier accepts at most 4 KiB per message; the commitment comes in 64 KiB chunks.
    result = run_verification(session, prover.address, timeout_s=30, max_message_bytes=4096)
    # the claim fits; the commitment does not, and comes after the claim: a reject
    assert result.verdict == "reject", result.reason
    assert result.exit_code == 1
    assert result.details["aborted_after_commit"] is True
    assert "RESOURCE_EXHAUSTED" in result.reason
    assert "larger than max" in result.reason


class _BlockingServicer(ProverServicer):
    """Hello blocks until released, so one RPC stays in flight."""

    def __init__(self) -> None:
        super().__init__(load_task(TASK), lambda: None)  # type: ignore[arg-type,return-value]
        self.entered = threading.Event()
        self.release = threading.Event()

    def Hello(self, request, context):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(10)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")


def test_concurrent_rpc_limit_is_resource_exhausted() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    servicer = _BlockingServicer()
    server, port = build_server(servicer, "127.0.0.1", 0, workers=2, max_concurrent_rpcs=1)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            held = pb_grpc.ProverStub(channel).Hello.future(_hello(), timeout=10)
            assert servicer.entered.wait(10)  # the only RPC slot is now taken
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=10
                )
            servicer.release.set()
            assert held.exception() is not None
    finally:
        servicer.release.set()
        server.stop(0).wait()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
