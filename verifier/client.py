"""The gRPC transport for the verifier's protocol driver: deadlines, message limits, TLS.

Plain text is meant for loopback only: connecting in plain text to any other host logs a warning.
With ``ClientTLS`` the channel is TLS (server authenticated against ``ca``), and mutual TLS when a
client certificate and key are given too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from protocol.addresses import address_host, is_loopback_address
from protocol.tasks.base import Progress
from protocol.untrusted import QUOTE_LIMIT, printable
from verifier.driver import TransportError, run_protocol
from verifier.session import VerificationResult, VerifierSession

log = logging.getLogger("verifier")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Words in an UNAVAILABLE status that point at a failed (or missing) TLS handshake.
_HANDSHAKE_WORDS = (
    "ssl",
    "tls",
    "handshake",
    "certificate",
    "x509",
    "verification",
    "unauthenticated",
    "socket closed",
)


@dataclass(frozen=True)
class ClientTLS:
    """TLS settings of the verifier's channel (PEM file paths).

    ``ca``: roots that must have issued the prover's certificate; ``cert``/``key``: the
    verifier's own certificate for mutual TLS (both or neither); ``server_name``: the name to
    check the prover's certificate against instead of the host in the address.
    """

    ca: str | Path
    cert: str | Path | None = None
    key: str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; raises ``ValueError`` naming a missing or unreadable file."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "--tls-ca"),
            private_key=_read_pem(self.key, "--tls-key") if self.key is not None else None,
            certificate_chain=_read_pem(self.cert, "--tls-cert") if self.cert is not None else None,
        )


def tls_from_options(
    ca: str | None, cert: str | None, key: str | None, server_name: str | None
) -> ClientTLS | None:
    """``ClientTLS`` from the CLI flags, or ``None`` for plain text.

    Raises ``ValueError`` when client-certificate or server-name flags come without ``--tls-ca``.
    """
    if ca is None:
        if cert or key or server_name:
            raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return None
    return ClientTLS(ca=ca, cert=cert, key=key, server_name=server_name)


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {str(path)!r} is not a PEM file")
    return data


def describe_rpc_error(err: grpc.RpcError, step: str, address: str, timeout_s: float) -> str:
    """A sentence a person understands for a failed RPC."""
    code = err.code() if hasattr(err, "code") else None
    details = printable(err.details() if hasattr(err, "details") else str(err), QUOTE_LIMIT)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"prover at {address} did not answer {step} within {timeout_s:g}s (timeout)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"prover at {address} is unreachable or disconnected during {step} ({details})"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return (
            f"{step} to prover at {address} failed: a resource limit was reached "
            f"(RESOURCE_EXHAUSTED: {details})"
        )
    if code == grpc.StatusCode.CANCELLED:
        return f"the {step} call was cancelled ({details})"
    name = code.name if code is not None else "UNKNOWN"
    return f"prover at {address} answered {step} with an error {name}: {details}"


class GrpcTransport:
    """``ProverTransport`` over a gRPC channel, with a deadline on every call.

    Plain text goes only to loopback addresses unless ``insecure_plaintext`` (``ValueError``
    otherwise, before any connection is made)."""

    def __init__(
        self,
        address: str,
        timeout_s: float,
        tls: ClientTLS | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        insecure_plaintext: bool = False,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.tls = tls
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls is None:
            if not is_loopback_address(address):
                if not insecure_plaintext:
                    raise ValueError(
                        f"refusing plain-text gRPC to {address}, which is not a loopback "
                        "address: anyone on the path could read or alter the claim (a "
                        "man-in-the-middle can halve it and have you certify what the prover "
                        "never sent). Use --tls-ca, or --insecure-plaintext to accept that risk"
                    )
                log.warning(
                    "INSECURE: plain-text gRPC to %s (--insecure-plaintext): not encrypted, "
                    "prover not authenticated",
                    address,
                )
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self.stub = pb_grpc.ProverStub(self.channel)

    def identity(self) -> dict[str, Any]:
        """Who the verified claim came from, as far as the channel authenticated it: with TLS the
        server name its certificate was checked against and the SHA-256 of the CA that had to
        issue it (and whether the verifier presented a client certificate); without TLS only
        the address, marked unauthenticated."""
        if self.tls is None:
            return {"authenticated": False, "transport": "plaintext", "address": self.address}
        return {
            "authenticated": True,
            "transport": "mtls" if self.tls.cert is not None else "tls",
            "address": self.address,
            "server_name": self.tls.server_name or address_host(self.address),
            "ca_sha256": hashlib.sha256(_read_pem(self.tls.ca, "--tls-ca")).hexdigest(),
        }

    def _describe(self, err: grpc.RpcError, step: str) -> str:
        """``describe_rpc_error`` plus a hint about TLS when a handshake probably failed."""
        reason = describe_rpc_error(err, step, self.address, self.timeout_s)
        code = err.code() if hasattr(err, "code") else None
        details = (err.details() if hasattr(err, "details") else str(err)) or ""
        # the handshake happens on the first call: a later disconnect is not a TLS problem
        if (
            step != "Hello"
            or code != grpc.StatusCode.UNAVAILABLE
            or not any(w in details.lower() for w in _HANDSHAKE_WORDS)
        ):
            return reason
        if self.tls is None:
            hint = "if the prover serves TLS, pass --tls-ca (and --tls-cert/--tls-key for mTLS)"
        elif self.tls.cert is None:
            hint = (
                "TLS handshake failed: check --tls-ca and --tls-server-name; if the prover "
                "requires client certificates (mutual TLS), pass --tls-cert/--tls-key"
            )
        else:
            hint = (
                "TLS handshake failed: check --tls-ca and --tls-server-name, and that the "
                "prover trusts the CA that issued --tls-cert"
            )
        return f"{reason}; {hint}"

    def _unary(self, name: str, call: Callable[..., Any], request: Any) -> Any:
        try:
            return call(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise TransportError(self._describe(err, name)) from err

    def _stream(self, name: str, call: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from call(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise TransportError(self._describe(err, name)) from err

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Hello with a deadline."""
        return self._unary("Hello", self.stub.Hello, request)

    def claim(self, request: pb.ClaimRequest) -> Iterable[pb.ClaimChunk]:
        """Claim stream with a deadline."""
        return self._stream("Claim", self.stub.Claim, request)

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
    tls: ClientTLS | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    *,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_server_name: str | None = None,
    insecure_plaintext: bool = False,
) -> VerificationResult:
    """Run the protocol against the prover at ``address`` over gRPC (see ``run_protocol``).

    ``tls`` (or, equivalently, the ``tls_*`` CLI options) selects TLS / mutual TLS; neither means
    plain text, with a warning off loopback. Raises ``ValueError`` for inconsistent options or
    unreadable TLS files, and for plain text to a non-loopback address unless
    ``insecure_plaintext``; a transport failure is an error verdict (exit 2) before the claim and
    a reject after it, never accept. ``details["prover_identity"]`` records what the channel
    authenticated (``GrpcTransport.identity``); certificates sign it with the claim.
    """
    if tls is None:
        tls = tls_from_options(tls_ca, tls_cert, tls_key, tls_server_name)
    transport = GrpcTransport(
        address,
        timeout_s,
        tls=tls,
        max_message_bytes=max_message_bytes,
        insecure_plaintext=insecure_plaintext,
    )
    try:
        identity = transport.identity()
        result = run_protocol(session, transport, progress)
        result.details["prover_identity"] = identity
        return result
    finally:
        transport.close()
