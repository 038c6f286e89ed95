"""The gRPC servicer: a thin adapter from RPCs to ``ProverSession`` methods."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol import PROTOCOL_VERSION
from protocol.tasks.base import Task, TaskIdentity
from protocol.untrusted import printable, quote
from prover.session import ProtocolFault, ProverSession, SessionRegistry
from prover.strategy import HonestStrategy

log = logging.getLogger("prover")


def _abort(context: grpc.ServicerContext, fault: ProtocolFault) -> None:
    message = printable(fault.message, 1_000)
    log.warning("refused request: %s (%s)", message, fault.code)
    context.abort(getattr(grpc.StatusCode, fault.code), message)


class ProverServicer(pb_grpc.ProverServicer):
    """Serves one task with one strategy to many concurrent verifier sessions."""

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

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:  # noqa: N802
        """Compare task identities before anything else and open a session."""
        try:
            if request.protocol_version != PROTOCOL_VERSION:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"protocol version {request.protocol_version!r} not supported; "
                    f"this prover speaks {PROTOCOL_VERSION!r}",
                )
            theirs = TaskIdentity.from_message(request.task)
            mismatch = self.task.identity().mismatch(theirs)
            if mismatch:
                raise ProtocolFault("FAILED_PRECONDITION", mismatch)
            session = ProverSession(self.task, self.strategy_factory(), request)
            self.registry.add(session)
        except ProtocolFault as fault:
            _abort(context, fault)
            raise  # unreachable: abort raises
        log.info(
            "session %s: hello from %s, task %s",
            session.id[:8],
            context.peer(),
            quote(request.task.selector),
        )
        return session.hello_reply(self.prover_info)

    def Claim(  # noqa: N802
        self, request: pb.ClaimRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ClaimChunk]:
        """Stream the attribution (c, a) and its digest."""
        try:
            session = self.registry.get(request.session_id)
            yield from session.claim(request)
        except ProtocolFault as fault:
            _abort(context, fault)

    def Commit(  # noqa: N802
        self, request: pb.ChallengeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.CommitChunk]:
        """Stream one challenge round's f-values and its Merkle root."""
        try:
            session = self.registry.get(request.session_id)
            log.info(
                "session %s: challenge round of %d tuples from tuple %d, rho = %.4g",
                session.id[:8],
                request.num_tuples,
                request.first_tuple,
                request.rho,
            )
            yield from session.commit(request)
        except ProtocolFault as fault:
            _abort(context, fault)

    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> Iterator[pb.Opening]:  # noqa: N802
        """Stream openings for the revealed spot-check set."""
        try:
            session = self.registry.get(request.session_id)
            yield from session.open(request)
        except ProtocolFault as fault:
            _abort(context, fault)

    def OpenAll(  # noqa: N802
        self, request: pb.OpenAllRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.OpeningBatch]:
        """Stream every member of one round with its weights (certified checks)."""
        try:
            session = self.registry.get(request.session_id)
            yield from session.open_all(request)
        except ProtocolFault as fault:
            _abort(context, fault)

    def SupplyModels(  # noqa: N802
        self, request: pb.ModelsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SuppliedModel]:
        """Stream the trained models of the verifier's revealed MSE sample."""
        try:
            session = self.registry.get(request.session_id)
            yield from session.supply_models(request)
        except ProtocolFault as fault:
            _abort(context, fault)

    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.FinishReply:  # noqa: N802
        """Close a session, returning the prover's transcript hash."""
        try:
            session = self.registry.get(request.session_id)
            reply = session.finish(request)
        except ProtocolFault as fault:
            _abort(context, fault)
            raise
        self.registry.remove(session.id)
        return reply
