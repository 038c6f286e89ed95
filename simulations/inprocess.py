"""An in-process ``ProverTransport``: the verifier's real driver talks to a ``ProverSession``.

Sweeps run ``verifier.driver.run_protocol`` through this transport, so the verifier's steps,
checks and decision are exactly those that run over gRPC; only the wire is skipped. Messages are
round-tripped through their protobuf serialisation, so both sides see what gRPC would deliver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION
from protocol.tasks.base import Task, TaskIdentity
from prover.session import ProtocolFault, ProverSession
from prover.strategy import HonestStrategy
from verifier.driver import TransportError

M = TypeVar("M")


def _copy(message: M) -> M:
    """A copy through the wire format (what the other side of a gRPC call would receive)."""
    out = type(message)()  # type: ignore[operator]
    out.ParseFromString(message.SerializeToString(deterministic=True))  # type: ignore[attr-defined]
    return out


def _fault(step: str, fault: ProtocolFault) -> TransportError:
    # Mirrors verifier.client.describe_rpc_error for a status the prover chose.
    return TransportError(f"in-process prover answered {step} with an error {fault.code}: {fault}")


class InProcessTransport:
    """``verifier.driver.ProverTransport`` backed by one in-process ``ProverSession``.

    Guarantees: every ``ProtocolFault`` the prover raises (at call time or while streaming)
    becomes a ``TransportError``, as a gRPC error status would; the task-identity check of
    ``prover.servicer.ProverServicer.Hello`` is applied before a session is opened.
    """

    def __init__(self, task: Task, strategy: HonestStrategy, prover_info: str = "") -> None:
        self.task = task
        self.strategy = strategy
        self.prover_info = prover_info or strategy.describe()
        self.session: ProverSession | None = None

    def _require(self, step: str) -> ProverSession:
        if self.session is None:
            raise TransportError(f"{step} before Hello: no session")
        return self.session

    def _stream(self, step: str, call: Callable[[], Iterable[M]]) -> Iterator[M]:
        try:
            for message in call():
                yield _copy(message)
        except ProtocolFault as fault:
            raise _fault(step, fault) from fault

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Compare task identities (as the servicer does), open a session, return its reply."""
        request = _copy(request)
        if request.protocol_version != PROTOCOL_VERSION:
            raise TransportError(f"protocol version {request.protocol_version!r} not supported")
        theirs = TaskIdentity.from_message(request.task)
        mismatch = self.task.identity().mismatch(theirs)
        if mismatch:
            raise TransportError(f"in-process prover refused Hello: {mismatch}")
        self.session = ProverSession(self.task, self.strategy, request)
        return _copy(self.session.hello_reply(self.prover_info))

    def claim(self, request: pb.ClaimRequest) -> Iterable[pb.ClaimChunk]:
        """Step 2: the prover's claim."""
        session = self._require("Claim")
        return self._stream("Claim", lambda: session.claim(_copy(request)))

    def commit(self, request: pb.ChallengeRequest) -> Iterable[pb.CommitChunk]:
        """A challenge round's commitment stream."""
        session = self._require("Commit")
        return self._stream("Commit", lambda: session.commit(_copy(request)))

    def open(self, request: pb.OpenRequest) -> Iterable[pb.Opening]:
        """Openings of the revealed spot-check set."""
        session = self._require("Open")
        return self._stream("Open", lambda: session.open(_copy(request)))

    def open_all(self, request: pb.OpenAllRequest) -> Iterable[pb.OpeningBatch]:
        """Certified checks: every member of a round with its weights."""
        session = self._require("OpenAll")
        return self._stream("OpenAll", lambda: session.open_all(_copy(request)))

    def supply_models(self, request: pb.ModelsRequest) -> Iterable[pb.SuppliedModel]:
        """Certified checks: the revealed MSE sample's models."""
        session = self._require("SupplyModels")
        return self._stream("SupplyModels", lambda: session.supply_models(_copy(request)))

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """The prover's transcript hash."""
        session = self._require("Finish")
        try:
            return _copy(session.finish(_copy(request)))
        except ProtocolFault as fault:
            raise _fault("Finish", fault) from fault
