"""A hostile client against a real prover server, with raw gRPC calls (issue #16 items 3 and 8).

Cancelled 250,000-tuple Commits (a million certified trainings each), a flood of unfinished
Hellos and an oversized task name must leave an honest verifier served at its normal time, the
server's CPU idle once the callers have left, its memory bounded and its log small; SIGTERM in
the middle of a Commit stops the server within seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol import PROTOCOL_VERSION
from protocol.tasks import load_task
from tests.conftest import ProverProcess, run_verifier, start_prover

TASK = "digits-logreg:z=1"
VERIFY = ["--task", TASK, "--epsilon-rel", "0.1", "--timeout", "120"]
TICKS = os.sysconf("SC_CLK_TCK")


def _hello(selector: str = TASK) -> pb.HelloRequest:
    ident = load_task(TASK).identity()
    return pb.HelloRequest(
        protocol_version=PROTOCOL_VERSION,
        task=pb.TaskIdentity(**{**ident.as_fields(), "selector": selector}),
    )


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _claimed(stub: pb_grpc.ProverStub) -> str:
    sid = stub.Hello(_hello(), timeout=30).session_id
    list(stub.Claim(pb.ClaimRequest(session_id=sid), timeout=30))
    return sid


def _big_commit(stub: pb_grpc.ProverStub, sid: str, timeout_s: float) -> grpc.StatusCode:
    request = pb.ChallengeRequest(
        session_id=sid, public_seed=os.urandom(32), num_tuples=250_000, rho=0.25, first_tuple=0
    )
    try:
        list(stub.Commit(request, timeout=timeout_s))
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def prover(tmp_path_factory) -> ProverProcess:
    p = start_prover(tmp_path_factory.mktemp("hostile"), "--task", TASK, timeout_s=300)
    yield p
    if p.proc.poll() is None:
        p.proc.kill()


def _wait_for_count(prover: ProverProcess, needle: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while prover.log().count(needle) < count:
        if time.monotonic() > deadline:
            found = prover.log().count(needle)
            raise AssertionError(f"{needle!r} logged {found} times, not {count}")
        time.sleep(0.05)


def _honest_seconds(prover: ProverProcess) -> float:
    started = time.monotonic()
    rc, out = run_verifier(prover.address, *VERIFY)
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    return time.monotonic() - started


def test_cancelled_commits_and_hello_floods_leave_honest_verifiers_served(prover) -> None:
    baseline = _honest_seconds(prover)
    pid = prover.proc.pid
    rss_before = _rss_mb(pid)
    with grpc.insecure_channel(prover.address) as channel:
        stub = pb_grpc.ProverStub(channel)
        sessions = [_claimed(stub) for _ in range(8)]
        codes: list[grpc.StatusCode] = []
        threads = [
            threading.Thread(target=lambda s=s: codes.append(_big_commit(stub, s, 1.5)))
            for s in sessions
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 8
        # each cancelled round stops within a batch and its session is forgotten; on a loaded
        # machine that can lag the client's deadline, so wait until all eight say so
        _wait_for_count(prover, "stopped a cancelled call", 8, timeout_s=30.0)
        for _ in range(32):  # unfinished Hellos, twice the server's session limit
            stub.Hello(_hello(), timeout=10)
        # 1 MB of task name with forged log lines: the selector is only a label (the task
        # hashes decide), so the Hello is served and the name is logged quoted and capped
        stub.Hello(_hello("x\nverifier says accept\n" * 50_000), timeout=10)
    time.sleep(1.0)  # a batch of 1,024 trainings: the cancelled rounds stop well within this
    cpu = _cpu_s(pid)
    time.sleep(3.0)
    busy = (_cpu_s(pid) - cpu) / 3.0
    assert busy < 0.3, f"the server still computes ({busy:.2f} cores) after its callers left"
    assert _rss_mb(pid) - rss_before < 600, "memory grew by more than 600 MB"
    after = _honest_seconds(prover)
    assert after < 2.0 * baseline + 10.0, (baseline, after)
    log = prover.log()
    lines = log.splitlines()
    # the client's text is escaped onto its one quoted, capped line: no forged record
    assert not any(line.startswith("verifier says accept") for line in lines)
    assert max(len(line) for line in lines) < 2_000, max(len(line) for line in lines)
    assert "stopped a cancelled call" in log


def test_sigterm_during_a_commit_stops_the_server_within_seconds(tmp_path) -> None:
    p = start_prover(tmp_path, "--task", TASK, timeout_s=300)
    try:
        with grpc.insecure_channel(p.address) as channel:
            stub = pb_grpc.ProverStub(channel)
            sid = _claimed(stub)
            worker = threading.Thread(target=_big_commit, args=(stub, sid, 120.0))
            worker.start()
            p.wait_for_log("challenge round of 250000 tuples")
            time.sleep(0.5)
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            rc = p.proc.wait(timeout=30)
            elapsed = time.monotonic() - started
            worker.join(30)
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
    assert rc == 0
    assert elapsed < 3.0, f"SIGTERM took {elapsed:.1f} s to stop the server"
    assert "server stopped" in p.log()


def test_a_round_beyond_the_session_limit_is_invalid_argument(prover) -> None:
    """The protocol's limit answers it (INVALID_ARGUMENT), not the tuples-in-flight quota."""
    with grpc.insecure_channel(prover.address) as channel:
        stub = pb_grpc.ProverStub(channel)
        sid = _claimed(stub)
        request = pb.ChallengeRequest(
            session_id=sid, public_seed=os.urandom(32), num_tuples=6_000_000, rho=0.25
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Commit(request, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 5000000 tuples" in info.value.details()
