"""The prover's session registry and per-session quotas, driven directly (issue #16 item 3).

Unfinished Hellos cannot lock anyone out, a busy session never expires under its client, one
client's sessions and tuples in flight are bounded, every session's calls and supplied models are
bounded, and a cancelled computation stops within a batch.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION
from protocol.limits import MAX_CALLS_PER_SESSION, MAX_SESSION_MODELS
from protocol.tasks.synthetic import SyntheticTask
from prover.session import Cancelled, ProtocolFault, ProverSession, SessionRegistry, State
from prover.strategy import Attribution, HonestStrategy

TASK = SyntheticTask(n=100, z=1, p=0.5, seed=0)
TRUTH = TASK.truth()


def _hello() -> pb.HelloRequest:
    return pb.HelloRequest(
        protocol_version=PROTOCOL_VERSION, task=pb.TaskIdentity(**TASK.identity().as_fields())
    )


def _session(client: str = "ipv4:10.0.0.1") -> ProverSession:
    exact = Attribution(TRUTH.intercept, TRUTH.coefficients, "exact", 0)
    return ProverSession(TASK, HonestStrategy(TASK, exact), _hello(), client=client)


def _claimed(client: str = "ipv4:10.0.0.1") -> ProverSession:
    s = _session(client)
    list(s.claim(pb.ClaimRequest(session_id=s.id)))
    assert s.state is State.CLAIMED
    return s


def test_a_flood_of_unfinished_hellos_locks_nobody_out() -> None:
    reg = SessionRegistry(max_sessions=16)
    flood = [_session("ipv4:10.0.0.66") for _ in range(16)]
    for s in flood:
        reg.add(s)
    assert len(reg) == 4  # the flooder keeps at most 4 sessions at their Hello
    honest = _session("ipv4:10.0.0.66")  # even from the flooder's own host
    reg.add(honest)
    assert reg.get(honest.id) is honest
    with pytest.raises(ProtocolFault, match="unknown or expired"):
        reg.get(flood[0].id)


def test_a_full_registry_drops_its_oldest_unfinished_hello_for_a_newcomer() -> None:
    reg = SessionRegistry(max_sessions=4)
    held = [_claimed(f"ipv4:10.0.1.{i}") for i in range(3)]
    for s in held:
        reg.add(s)
    idle = _session("ipv4:10.0.2.1")
    reg.add(idle)
    newcomer = _session("ipv4:10.0.3.1")
    reg.add(newcomer)
    assert reg.get(newcomer.id) is newcomer
    with pytest.raises(ProtocolFault):
        reg.get(idle.id)
    for s in held:  # sessions past their Hello are never dropped for a newcomer
        assert reg.get(s.id) is s
    reg.remove(newcomer.id)
    reg.add(_claimed("ipv4:10.0.4.1"))
    with pytest.raises(ProtocolFault, match="maximum of 4 sessions") as info:
        reg.add(_session("ipv4:10.0.5.1"))
    assert info.value.code == "RESOURCE_EXHAUSTED"


def test_unfinished_hellos_expire_fast_and_claimed_sessions_by_ttl() -> None:
    reg = SessionRegistry(max_sessions=4, ttl_s=0.6, hello_ttl_s=0.2)
    greeted, claimed = _session(), _claimed("ipv4:10.0.0.2")
    reg.add(greeted)
    reg.add(claimed)
    time.sleep(0.35)
    with pytest.raises(ProtocolFault):
        reg.get(greeted.id)
    assert reg.get(claimed.id) is claimed
    time.sleep(0.7)
    with pytest.raises(ProtocolFault):
        reg.get(claimed.id)


def test_a_busy_session_never_expires_under_its_client() -> None:
    reg = SessionRegistry(max_sessions=4, ttl_s=0.2, hello_ttl_s=0.1)
    s = _claimed()
    reg.add(s)
    with reg.use(s.id) as held:
        time.sleep(0.5)  # computing past the TTL; another client's call sweeps expiry
        reg.add(_session("ipv4:10.9.9.9"))
        assert reg.get(s.id) is held
    assert reg.get(s.id) is s  # the call just ended: its activity is fresh


def test_one_client_holds_at_most_its_quota_of_sessions() -> None:
    reg = SessionRegistry(max_sessions=32, max_per_client=3)
    for _ in range(3):
        reg.add(_claimed("ipv4:10.0.0.7"))
    with pytest.raises(ProtocolFault, match="this client already holds 3 sessions"):
        reg.add(_claimed("ipv4:10.0.0.7"))
    reg.add(_claimed("ipv4:10.0.0.8"))  # another client is not affected


def test_tuples_in_flight_are_bounded_per_client_and_released() -> None:
    reg = SessionRegistry(max_sessions=8, max_tuples_in_flight=1000)
    a, b = _claimed("ipv4:10.0.0.7"), _claimed("ipv4:10.0.0.7")
    reg.add(a)
    reg.add(b)
    with reg.use(a.id, tuples=800):
        with (
            pytest.raises(ProtocolFault, match="challenge tuples being computed") as info,
            reg.use(b.id, tuples=300),
        ):
            pass
        assert info.value.code == "RESOURCE_EXHAUSTED"
        other = _claimed("ipv4:10.0.0.8")
        reg.add(other)
        with reg.use(other.id, tuples=900):  # other clients have their own allowance
            pass
    with reg.use(b.id, tuples=1000):  # released when the first call ended
        pass


def test_calls_per_session_are_bounded() -> None:
    s = _claimed()
    for _ in range(MAX_CALLS_PER_SESSION):
        s.count_call()
    with pytest.raises(ProtocolFault, match="at most") as info:
        s.count_call()
    assert info.value.code == "RESOURCE_EXHAUSTED"


def test_supplied_models_per_session_are_bounded() -> None:
    from protocol.tasks import load_task

    task = load_task("digits-logreg:z=1")
    rng = np.random.default_rng(0)
    att = Attribution(np.zeros(1), rng.normal(size=(1, task.num_train_points)), "x", 0)
    s = ProverSession(task, HonestStrategy(task, att), _hello_for(task))
    list(s.claim(pb.ClaimRequest(session_id=s.id)))
    s.models_supplied = MAX_SESSION_MODELS - 10  # as if nearly every allowed model was supplied
    request = pb.ModelsRequest(session_id=s.id, sample_key=bytes(32), first=0, count=11)
    with pytest.raises(ProtocolFault, match="at most") as info:
        list(s.supply_models(request))
    assert info.value.code == "RESOURCE_EXHAUSTED"
    request = pb.ModelsRequest(session_id=s.id, sample_key=bytes(32), first=0, count=65_536)
    with pytest.raises(ProtocolFault, match="count must be in"):
        list(s.supply_models(request))


def _hello_for(task) -> pb.HelloRequest:  # type: ignore[no-untyped-def]
    return pb.HelloRequest(
        protocol_version=PROTOCOL_VERSION, task=pb.TaskIdentity(**task.identity().as_fields())
    )


def test_a_cancelled_commit_stops_within_a_batch() -> None:
    """A 250,000-tuple round (a million retrainings) cancelled after its first batch stops
    there: the cancel check runs at every batch of 1,024 members."""
    s = _claimed()
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    request = pb.ChallengeRequest(
        session_id=s.id, public_seed=bytes(range(32)), num_tuples=250_000, rho=0.25, first_tuple=0
    )
    started = time.monotonic()
    with pytest.raises(Cancelled):
        list(s.commit(request, cancelled))
    assert time.monotonic() - started < 5.0
    assert calls["n"] == 2
    assert not s.rounds  # nothing was committed


def test_a_cancelled_supply_stops_between_steps() -> None:
    from protocol.tasks import load_task

    task = load_task("digits-logreg:z=1")
    att = Attribution(np.zeros(1), np.zeros((1, task.num_train_points)), "x", 0)
    s = ProverSession(task, HonestStrategy(task, att), _hello_for(task))
    list(s.claim(pb.ClaimRequest(session_id=s.id)))
    flag = {"stop": False}
    request = pb.ModelsRequest(session_id=s.id, sample_key=bytes(32), first=0, count=4096)
    stream = s.supply_models(request, lambda: flag["stop"])
    got = [next(stream) for _ in range(10)]
    assert [m.index for m in got] == list(range(10))
    flag["stop"] = True
    with pytest.raises(Cancelled):
        list(stream)
