"""The verifier's side of the transcript channel: every call goes through one recorder.

:class:`RecordingTransport` wraps any ``ProverTransport`` (the gRPC client, an in-process
prover) and absorbs each request and each reply into the session's transcript as it passes,
through :meth:`protocol.transcript.Transcript.exchange`. ``run_protocol`` sends every call
through it, so no protocol step appends by hand and none can be left out. Finish is not
recorded: it carries the digest of everything before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proto.attribution.v1 import attribution_pb2 as pb
from protocol.transcript import PROVER_TO_VERIFIER, VERIFIER_TO_PROVER, Transcript


class RecordingTransport:
    """A ``ProverTransport`` that records every message it carries in ``transcript``."""

    def __init__(self, inner: Any, transcript: Transcript) -> None:
        self.inner = inner
        self.transcript = transcript

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Open a session; both messages recorded."""
        self.transcript.append_message(VERIFIER_TO_PROVER, request)
        reply = self.inner.hello(request)
        self.transcript.append_message(PROVER_TO_VERIFIER, reply)
        return reply

    def claim(self, request: pb.ClaimRequest) -> Iterable[pb.ClaimChunk]:
        """The attribution, recorded chunk by chunk."""
        return self.transcript.exchange(request, self.inner.claim(request))

    def commit(self, request: pb.ChallengeRequest) -> Iterable[pb.CommitChunk]:
        """One challenge round, recorded chunk by chunk."""
        return self.transcript.exchange(request, self.inner.commit(request))

    def open(self, request: pb.OpenRequest) -> Iterable[pb.Opening]:
        """The spot-check openings, recorded one by one."""
        return self.transcript.exchange(request, self.inner.open(request))

    def open_all(self, request: pb.OpenAllRequest) -> Iterable[pb.OpeningBatch]:
        """Every member of a round, recorded batch by batch."""
        return self.transcript.exchange(request, self.inner.open_all(request))

    def supply_models(self, request: pb.ModelsRequest) -> Iterable[pb.SuppliedModel]:
        """Models of the revealed MSE sample, recorded one by one."""
        return self.transcript.exchange(request, self.inner.supply_models(request))

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Close the session (not recorded: it carries the transcript's digest)."""
        return self.inner.finish(request)
