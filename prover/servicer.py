"""The gRPC servicer: a thin adapter from RPCs to ``ProverSession`` methods."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol import PROTOCOL_VERSION
from protocol.limits import MAX_SESSION_TUPLES
from protocol.tasks.base import Task, TaskIdentity
from protocol.untrusted import printable, quote
from prover.session import Cancelled, ProtocolFault, ProverSession, SessionRegistry
from prover.strategy import HonestStrategy

log = logging.getLogger("prover")


def _abort(context: grpc.ServicerContext, fault: ProtocolFault) -> None:
    message = printable(fault.message, 1_000)
    if isinstance(fault, Cancelled):
        log.info("stopped a cancelled call: %s", message)
        if not context.is_active():
            return  # nobody is listening; the computation has stopped, which is the point
    else:
        log.warning("refused request: %s (%s)", message, fault.code)
    context.abort(getattr(grpc.StatusCode, fault.code), message)


def client_of(context: grpc.ServicerContext) -> str:
    """The client's network host (``ipv4:127.0.0.1:5123`` → ``ipv4:127.0.0.1``): the unit the
    per-client quotas count, whatever port each connection comes from."""
    peer = context.peer() or "unknown"
    if peer.startswith("ipv6:"):
        return peer.rsplit("]:", 1)[0] + "]" if "]:" in peer else peer
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class ProverServicer(pb_grpc.ProverServicer):
    """Serves one task with one strategy to many concurrent verifier sessions.

    Every RPC runs under the registry's quotas (``SessionRegistry.use``); its computation stops
    within a batch once its call is cancelled, its deadline passes, its client disconnects, or
    ``shutdown`` is set (SIGINT/SIGTERM), and a session whose call was cancelled is forgotten.
    """

    def __init__(
        self,
        task: Task,
        strategy_factory: Callable[[], HonestStrategy],
        registry: SessionRegistry | None = None,
        prover_info: str = "",
    ) -> None:
        self.task = task
        self.strategy_factory = strategy_factory
        self.registry = registry if registry is not None else SessionRegistry()
        self.prover_info = prover_info
        self.shutdown = threading.Event()

    def _cancelled(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        return lambda: self.shutdown.is_set() or not context.is_active()

    def _stream(
        self,
        context: grpc.ServicerContext,
        session_id: str,
        call: Callable[[ProverSession], Iterator],
        tuples: int = 0,
    ) -> Iterator:
        """Run one streaming call of a session under its quotas; faults become statuses."""
        try:
            with self.registry.use(session_id, tuples) as session:
                try:
                    yield from call(session)
                except Cancelled:
                    self.registry.remove(session.id)
                    raise
        except ProtocolFault as fault:
            _abort(context, fault)

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:  # noqa: N802
        """Compare task identities before anything else and open a session (cheap: nothing is
        computed until the Claim, and an unfinished Hello is dropped after a short TTL)."""
        client = client_of(context)
        try:
            if request.protocol_version != PROTOCOL_VERSION:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"protocol version {quote(request.protocol_version)} not supported; "
                    f"this prover speaks {PROTOCOL_VERSION!r}",
                )
            theirs = TaskIdentity.from_message(request.task)
            mismatch = self.task.identity().mismatch(theirs)
            if mismatch:
                raise ProtocolFault("FAILED_PRECONDITION", mismatch)
            session = ProverSession(self.task, self.strategy_factory(), request, client=client)
            self.registry.add(session)
        except ProtocolFault as fault:
            _abort(context, fault)
            raise  # unreachable: abort raises
        log.info(
            "session %s: hello from %s, task %s",
            session.id[:8],
            quote(context.peer()),
            quote(request.task.selector),
        )
        return session.hello_reply(self.prover_info)

    def Claim(  # noqa: N802
        self, request: pb.ClaimRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ClaimChunk]:
        """Stream the attribution (c, a) and its digest."""
        return self._stream(context, request.session_id, lambda s: s.claim(request))

    def Commit(  # noqa: N802
        self, request: pb.ChallengeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CommitChunk]:
        """Stream one challenge round's f-values and its Merkle root (cancellable)."""

        def call(session: ProverSession) -> Iterator[pb.CommitChunk]:
            log.info(
                "session %s: challenge round of %d tuples from tuple %d, rho = %.4g",
                session.id[:8],
                request.num_tuples,
                request.first_tuple,
                request.rho,
            )
            return session.commit(request, self._cancelled(context))

        # an over-limit round is refused by the session itself (INVALID_ARGUMENT, the protocol's
        # limit), not counted against the client's tuples in flight
        tuples = int(request.num_tuples) if request.num_tuples <= MAX_SESSION_TUPLES else 0
        return self._stream(context, request.session_id, call, tuples)

    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> Iterator[pb.Opening]:  # noqa: N802
        """Stream openings for the revealed spot-check set."""
        return self._stream(context, request.session_id, lambda s: s.open(request))

    def OpenAll(  # noqa: N802
        self, request: pb.OpenAllRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.OpeningBatch]:
        """Stream every member of one round with its weights (certified checks)."""
        return self._stream(context, request.session_id, lambda s: s.open_all(request))

    def SupplyModels(  # noqa: N802
        self, request: pb.ModelsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SuppliedModel]:
        """Stream the trained models of the verifier's revealed MSE sample (cancellable)."""
        return self._stream(
            context,
            request.session_id,
            lambda s: s.supply_models(request, self._cancelled(context)),
        )

    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.FinishReply:  # noqa: N802
        """Close a session, returning the prover's transcript hash."""
        try:
            with self.registry.use(request.session_id) as session:
                reply = session.finish(request)
        except ProtocolFault as fault:
            _abort(context, fault)
            raise
        self.registry.remove(session.id)
        return reply
