"""The gRPC transport for the verifier's protocol driver."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol.tasks.base import Progress
from verifier.driver import TransportError, run_protocol
from verifier.session import VerificationResult, VerifierSession

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def describe_rpc_error(err: grpc.RpcError, step: str, address: str, timeout_s: float) -> str:
    """A sentence a person understands for a failed RPC."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"prover at {address} did not answer {step} within {timeout_s:g}s (timeout)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"prover at {address} is unreachable or disconnected ({details})"
    if code == grpc.StatusCode.CANCELLED:
        return f"the {step} call was cancelled ({details})"
    name = code.name if code is not None else "UNKNOWN"
    return f"prover at {address} answered {step} with an error {name}: {details}"


class GrpcTransport:
    """``ProverTransport`` over a gRPC channel, with a deadline on every call."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = pb_grpc.ProverStub(self.channel)

    def _unary(self, name: str, call: Callable[..., Any], request: Any) -> Any:
        try:
            return call(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            reason = describe_rpc_error(err, name, self.address, self.timeout_s)
            raise TransportError(reason) from err

    def _stream(self, name: str, call: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from call(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            reason = describe_rpc_error(err, name, self.address, self.timeout_s)
            raise TransportError(reason) from err

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Hello with a deadline."""
        return self._unary("Hello", self.stub.Hello, request)

    def commit(self, request: pb.ChallengeRequest) -> Iterable[pb.CommitChunk]:
        """Commit stream with a deadline."""
        return self._stream("Commit", self.stub.Commit, request)

    def open(self, request: pb.OpenRequest) -> Iterable[pb.Opening]:
        """Open stream with a deadline."""
        return self._stream("Open", self.stub.Open, request)

    def open_all(self, request: pb.OpenAllRequest) -> Iterable[pb.OpeningBatch]:
        """OpenAll stream with a deadline."""
        return self._stream("OpenAll", self.stub.OpenAll, request)

    def supply_models(self, request: pb.ModelsRequest) -> Iterable[pb.SuppliedModel]:
        """SupplyModels stream with a deadline."""
        return self._stream("SupplyModels", self.stub.SupplyModels, request)

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Finish with a deadline."""
        return self._unary("Finish", self.stub.Finish, request)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def run_verification(
    session: VerifierSession,
    address: str,
    timeout_s: float = 600.0,
    progress: Progress | None = None,
) -> VerificationResult:
    """Run the protocol against the prover at ``address`` over gRPC (see ``run_protocol``)."""
    transport = GrpcTransport(address, timeout_s)
    try:
        return run_protocol(session, transport, progress)
    finally:
        transport.close()
