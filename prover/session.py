"""One verifier session on the prover side: a small state machine over the protocol's steps.

This module is plain Python (no grpc): the servicer is a thin adapter around it, and tests drive
it directly. Every incoming and outgoing message is absorbed into the session's transcript: Hello
and its reply when the session opens, every streaming call through ``@records_exchange``
(:func:`protocol.transcript.records_exchange`), so no handler appends by hand.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION
from protocol.certify import weights_to_bytes
from protocol.challenges import ChallengeRound, ChallengeSpec, PrivateSample
from protocol.claim import claim_digest
from protocol.limits import (
    HELLO_TTL_S,
    MAX_CALLS_PER_SESSION,
    MAX_GREETED_PER_CLIENT,
    MAX_MODELS_PER_CALL,
    MAX_SESSION_MODELS,
    MAX_SESSION_TUPLES,
    MAX_SESSIONS_PER_CLIENT,
    MAX_TUPLES_IN_FLIGHT_PER_CLIENT,
)
from protocol.tasks.base import Progress, Task
from protocol.transcript import Transcript, records_exchange
from protocol.untrusted import printable, quote
from prover.strategy import Answers, HonestStrategy

log = logging.getLogger("prover")

#: Values per streamed chunk, keeping each message far below gRPC's size limit.
CHUNK_VALUES = 65_536
#: Models trained per step of a SupplyModels call (the call is cancellable between steps).
SUPPLY_STEP = 1_024


class ProtocolFault(Exception):
    """A request the prover refuses; ``code`` names the gRPC status the servicer should use."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(ProtocolFault):
    """The RPC was cancelled, its deadline passed, its client left, or the server is stopping:
    its computation stopped at the next batch boundary."""

    def __init__(self, message: str = "the call was cancelled; its computation stopped") -> None:
        super().__init__("CANCELLED", message)


#: Returns True once the computation should stop (see :class:`Cancelled`).
CancelCheck = Callable[[], bool]


def cancellable(cancelled: CancelCheck | None) -> Progress | None:
    """A progress callback that raises :class:`Cancelled` once ``cancelled()`` is true. The
    retraining loops call it at every batch (``progress(0)`` at a batch's start), so a cancelled
    computation stops within one batch."""
    if cancelled is None:
        return None

    def check(_count: int) -> None:
        if cancelled():
            raise Cancelled()

    return check


class State(Enum):
    """Where a session is in the protocol."""

    GREETED = "greeted"
    CLAIMED = "claimed"
    COMMITTING = "committing"  # one or more challenge rounds answered
    OPENED = "opened"  # the spot-check set was revealed: no more rounds
    FINISHED = "finished"


class ProverSession:
    """State of one verifier session. Methods raise ``ProtocolFault`` on out-of-order calls.

    Order: Hello, Claim, then any number of challenge rounds (each with its OpenAll when checks
    are certified) and SupplyModels calls, then at most one Open (spot checks), then Finish.
    """

    def __init__(
        self, task: Task, strategy: HonestStrategy, hello: pb.HelloRequest, client: str = ""
    ) -> None:
        self.id = uuid.uuid4().hex
        self.task = task
        self.strategy = strategy
        self.client = client
        self.calls = 0
        self.busy = 0  # RPCs of this session in progress: a busy session never expires
        self.state = State.GREETED
        self.rounds: list[Answers] = []
        self._opened_rounds: set[int] = set()
        self._seed: bytes | None = None
        self._rho: float | None = None
        self.transcript = Transcript()
        self.models_supplied = 0
        self.lock = threading.Lock()
        self.last_activity = time.monotonic()
        self.transcript.append_message("v2p", hello)

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    def count_call(self) -> None:
        """Count one RPC of this session; ``RESOURCE_EXHAUSTED`` past the per-session quota."""
        with self.lock:
            self.calls += 1
            if self.calls > MAX_CALLS_PER_SESSION:
                raise ProtocolFault(
                    "RESOURCE_EXHAUSTED",
                    f"a session may make at most {MAX_CALLS_PER_SESSION} calls",
                )

    def hello_reply(self, prover_info: str) -> pb.HelloReply:
        """The reply to Hello: our task identity and the new session id."""
        ident = self.task.identity()
        reply = pb.HelloReply(
            protocol_version=PROTOCOL_VERSION,
            task=pb.TaskIdentity(**ident.as_fields()),
            session_id=self.id,
            prover_info=prover_info,
        )
        self.transcript.append_message("p2v", reply)
        return reply

    # ---- the claim ----------------------------------------------------------------------------
    @records_exchange
    def claim(self, request: pb.ClaimRequest) -> Iterator[pb.ClaimChunk]:
        """Stream the attribution (c, a) and its summary. Allowed once, right after Hello: the
        claim exists before any challenge seed or MSE sample does."""
        with self.lock:
            if self.state is not State.GREETED:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"Claim is allowed once, right after Hello; session is {self.state.value}",
                )
            if request.session_id != self.id:
                raise ProtocolFault("INVALID_ARGUMENT", "claim request names a different session")
            self.state = State.CLAIMED
            self._touch()
        attribution = self.strategy.attribution()
        coefficients = np.asarray(attribution.coefficients, dtype=np.float64)
        intercepts = np.asarray(attribution.intercepts, dtype=np.float64)
        for target in range(coefficients.shape[0]):
            row = coefficients[target]
            for offset in range(0, max(len(row), 1), CHUNK_VALUES):
                msg = pb.ClaimChunk(
                    attribution=pb.AttributionPart(
                        target=target,
                        intercept=float(intercepts[target]),
                        offset=offset,
                        coefficients=row[offset : offset + CHUNK_VALUES].tolist(),
                    )
                )
                yield msg
        summary = pb.ClaimChunk(
            summary=pb.ClaimSummary(
                digest=claim_digest(intercepts, coefficients),
                datamodel_samples=int(attribution.num_samples),
                method=str(attribution.method)[:200],
            )
        )
        yield summary
        self._touch()

    # ---- challenge rounds ---------------------------------------------------------------------
    @records_exchange
    def commit(
        self, request: pb.ChallengeRequest, cancelled: CancelCheck | None = None
    ) -> Iterator[pb.CommitChunk]:
        """Answer one challenge round: stream its f-values, then the Merkle root of its leaves.

        The round is computed and committed before the first chunk is sent, so nothing sent
        later can depend on anything the verifier reveals afterwards. Once ``cancelled()`` turns
        true the computation stops within one batch (:class:`Cancelled`).
        """
        with self.lock:
            if self.state not in (State.CLAIMED, State.COMMITTING):
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"Commit is allowed after Claim and before Open; session is {self.state.value}",
                )
            rnd = self._parse_challenge(request)
            self._touch()
            started = time.monotonic()
            answers = self.strategy.answer(rnd, cancellable(cancelled))
            self.rounds.append(answers)
            self.state = State.COMMITTING
            log.info(
                "session %s: round %d answered: members [%d, %d) (%d retrained now) in %.2fs; "
                "root %s",
                self.id[:8],
                len(self.rounds) - 1,
                rnd.first_member,
                rnd.spec.num_members,
                answers.retrainings,
                time.monotonic() - started,
                answers.tree.root.hex()[:16],
            )
        yield from self._commit_chunks(answers)
        self._touch()

    def _parse_challenge(self, request: pb.ChallengeRequest) -> ChallengeRound:
        if request.session_id != self.id:
            raise ProtocolFault("INVALID_ARGUMENT", "challenge names a different session id")
        expected_first = self.rounds[-1].spec.num_tuples if self.rounds else 0
        if request.first_tuple != expected_first:
            raise ProtocolFault(
                "INVALID_ARGUMENT",
                f"round must start at tuple {expected_first}, got {request.first_tuple}",
            )
        end = int(request.first_tuple) + int(request.num_tuples)
        if request.num_tuples < 1 or end > MAX_SESSION_TUPLES:
            raise ProtocolFault(
                "INVALID_ARGUMENT",
                f"a session's rounds may cover at most {MAX_SESSION_TUPLES} tuples; this round "
                f"asks for {request.num_tuples} from tuple {request.first_tuple}",
            )
        if self._seed is not None and (
            bytes(request.public_seed) != self._seed or float(request.rho) != self._rho
        ):
            raise ProtocolFault(
                "INVALID_ARGUMENT", "every round of a session must use the same seed and rho"
            )
        try:
            spec = ChallengeSpec(
                public_seed=bytes(request.public_seed),
                num_tuples=end,
                rho=float(request.rho),
                num_train_points=self.task.num_train_points,
                p=self.task.p,
            )
        except ValueError as exc:
            raise ProtocolFault("INVALID_ARGUMENT", f"bad challenge: {exc}") from exc
        self._seed, self._rho = spec.public_seed, spec.rho
        return ChallengeRound(spec, int(request.first_tuple))

    def _commit_chunks(self, answers: Answers) -> Iterator[pb.CommitChunk]:
        f_values = np.asarray(answers.f_values, dtype=np.float64)
        first_member = answers.round.first_member
        rows = max(1, CHUNK_VALUES // max(1, f_values.shape[1]))
        for first in range(0, len(f_values), rows):
            block = f_values[first : first + rows]
            yield pb.CommitChunk(
                f_values=pb.FValuesPart(
                    first_index=first_member + first,
                    count=len(block),
                    values=block.ravel().tolist(),
                )
            )
        yield pb.CommitChunk(
            root=pb.CommitmentRoot(
                merkle_root=answers.tree.root,
                num_leaves=len(f_values),
                prover_retrainings=self.prover_retrainings(),
            )
        )

    def prover_retrainings(self) -> int:
        """Retrainings the prover's answers rest on, as it reports them: every challenge member
        so far, the supplied models and its datamodel's samples."""
        members = sum(len(a.f_values) for a in self.rounds)
        return members + self.models_supplied + int(self.strategy.attribution().num_samples)

    def _round_of(self, index: int) -> Answers:
        for answers in self.rounds:
            if answers.round.first_member <= index < answers.spec.num_members:
                return answers
        total = self.rounds[-1].spec.num_members if self.rounds else 0
        raise ProtocolFault("OUT_OF_RANGE", f"open index {index} out of range (|E| = {total})")

    @records_exchange
    def open(self, request: pb.OpenRequest) -> Iterator[pb.Opening]:
        """Open the requested members (the revealed spot-check set C) with inclusion proofs in
        their rounds' trees, and with their weights when the verifier asks (certified spot
        checks). Allowed once; no round can follow it."""
        indices = [int(i) for i in request.indices]
        if len(set(indices)) != len(indices):
            raise ProtocolFault("INVALID_ARGUMENT", "open request repeats an index")
        with self.lock:
            if self.state is not State.COMMITTING:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"Open is allowed once, after the last round; session is {self.state.value}",
                )
            if request.session_id != self.id:
                raise ProtocolFault("INVALID_ARGUMENT", "open request names a different session")
            located = [(i, self._round_of(i)) for i in indices]
            if request.with_weights and any(a.weights is None for _, a in located):
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"task {self.task.name!r} has no weights to open (its checks are by "
                    "retraining)",
                )
            self.state = State.OPENED
            self._touch()
        log.info(
            "session %s: opening %d spot-checked leaves%s",
            self.id[:8],
            len(indices),
            " with weights" if request.with_weights else "",
        )
        for index, answers in located:
            data = self.strategy.open(answers, index)
            msg = pb.Opening(
                index=data.index,
                seed=data.seed,
                f_values=np.asarray(data.f_values, dtype=np.float64).tolist(),
                weights_digest=data.weights_digest,
                proof=list(data.proof),
            )
            if request.with_weights:
                (msg.weights,) = weights_to_bytes(
                    np.atleast_2d(self.strategy.open_weights(answers, index))
                )
            yield msg
        self._touch()

    @records_exchange
    def open_all(self, request: pb.OpenAllRequest) -> Iterator[pb.OpeningBatch]:
        """Open every member of one round with its weights, in index order, in batches
        (certified checks). Each round may be opened once."""
        with self.lock:
            if self.state is not State.COMMITTING:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"OpenAll is allowed after a round; session is {self.state.value}",
                )
            if request.session_id != self.id:
                raise ProtocolFault("INVALID_ARGUMENT", "open request names a different session")
            r = int(request.round)
            if r >= len(self.rounds) or r in self._opened_rounds:
                raise ProtocolFault(
                    "INVALID_ARGUMENT",
                    f"round {r} is not a committed, unopened round ({len(self.rounds)} committed)",
                )
            answers = self.rounds[r]
            if answers.weights is None:
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"task {self.task.name!r} has no weights to open (its checks are by "
                    "retraining)",
                )
            self._opened_rounds.add(r)
            self._touch()
        n = len(answers.f_values)
        log.info("session %s: opening all %d leaves of round %d with weights", self.id[:8], n, r)
        weights = answers.weights
        rows = max(1, CHUNK_VALUES // max(1, weights.shape[1] + answers.f_values.shape[1]))
        first_member = answers.round.first_member
        for first in range(0, n, rows):
            batch = self.strategy.open_batch(answers, first, min(n, first + rows))
            msg = pb.OpeningBatch(
                first_index=first_member + first,
                count=len(batch.seeds),
                f_values=np.asarray(batch.f_values, dtype=np.float64).ravel().tolist(),
                seeds=[int(v) for v in batch.seeds],
                weights_digests=b"".join(batch.digests),
                weights=b"".join(weights_to_bytes(batch.weights)),
            )
            yield msg
        self._touch()

    @records_exchange
    def supply_models(
        self, request: pb.ModelsRequest, cancelled: CancelCheck | None = None
    ) -> Iterator[pb.SuppliedModel]:
        """Train and stream the models of the verifier's revealed MSE sample M, 1,024 at a time
        (cancellable between and within steps).

        Allowed after the claim: the attribution was fixed before the prover could learn
        anything about M, and M never enters the challenge rounds. At most
        ``MAX_MODELS_PER_CALL`` per call and ``MAX_SESSION_MODELS`` per session.
        """
        with self.lock:
            if self.state in (State.GREETED, State.FINISHED):
                raise ProtocolFault(
                    "FAILED_PRECONDITION",
                    f"SupplyModels is allowed after Claim; session is {self.state.value}",
                )
            if request.session_id != self.id:
                raise ProtocolFault("INVALID_ARGUMENT", "models request names a different session")
            if len(request.sample_key) != 32:
                raise ProtocolFault("INVALID_ARGUMENT", "sample_key must be 32 bytes")
            if not 1 <= request.count <= MAX_MODELS_PER_CALL:
                raise ProtocolFault(
                    "INVALID_ARGUMENT", f"count must be in [1, {MAX_MODELS_PER_CALL}]"
                )
            if request.first + request.count > MAX_SESSION_MODELS:
                raise ProtocolFault("OUT_OF_RANGE", f"sample index beyond {MAX_SESSION_MODELS}")
            if self.models_supplied + request.count > MAX_SESSION_MODELS:
                raise ProtocolFault(
                    "RESOURCE_EXHAUSTED",
                    f"a session may ask for at most {MAX_SESSION_MODELS} supplied models",
                )
            self.models_supplied += int(request.count)  # reserved before any work is done
            self._touch()
        stop = int(request.first + request.count)
        sample = PrivateSample(
            bytes(request.sample_key), stop, self.task.num_train_points, self.task.p
        )
        progress = cancellable(cancelled)
        for lo in range(int(request.first), stop, SUPPLY_STEP):
            if progress is not None:
                progress(0)
            indices = np.arange(lo, min(stop, lo + SUPPLY_STEP))
            try:
                weights = self.strategy.supply_models(sample.masks(indices), progress)
            except ValueError as exc:
                raise ProtocolFault("FAILED_PRECONDITION", str(exc)) from exc
            for index, blob in zip(indices.tolist(), weights_to_bytes(weights), strict=True):
                msg = pb.SuppliedModel(index=index, weights=blob)
                yield msg
            self._touch()
        log.info(
            "session %s: supplied %d models of the revealed MSE sample (%d so far)",
            self.id[:8],
            int(request.count),
            self.models_supplied,
        )

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Record the verifier's verdict and return the prover's transcript hash."""
        with self.lock:
            # Both transcripts cover every message before Finish; compare them as they stood.
            reply = pb.FinishReply(transcript_hash=self.transcript.digest)
            self.state = State.FINISHED
        match = bytes(request.transcript_hash) == reply.transcript_hash
        log.info(
            "session %s: finished, verifier says %s; transcripts %s",
            self.id[:8],
            printable(request.verdict, 40) if request.verdict else "(no verdict)",
            "agree" if match else "differ",
        )
        return reply


class SessionRegistry:
    """Live sessions by id, bounded in number globally and per client, expiring when idle.

    Guarantees: a session with an RPC in progress (``use``) never expires; a session still
    between Hello and Claim is forgotten after ``hello_ttl_s``, and a client's further Hello
    beyond ``max_greeted_per_client`` such sessions, or any Hello while the registry is full,
    evicts the oldest of them (unfinished Hellos cost the server nothing to drop, so they cannot
    lock anyone out); one client holds at most ``max_per_client`` sessions and has at most
    ``max_tuples_in_flight`` challenge tuples being computed at once.
    """

    def __init__(
        self,
        max_sessions: int = 16,
        ttl_s: float = 600.0,
        *,
        hello_ttl_s: float = HELLO_TTL_S,
        max_per_client: int = MAX_SESSIONS_PER_CLIENT,
        max_greeted_per_client: int = MAX_GREETED_PER_CLIENT,
        max_tuples_in_flight: int = MAX_TUPLES_IN_FLIGHT_PER_CLIENT,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.hello_ttl_s = hello_ttl_s
        self.max_per_client = max_per_client
        self.max_greeted_per_client = max_greeted_per_client
        self.max_tuples_in_flight = max_tuples_in_flight
        self._sessions: dict[str, ProverSession] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, session: ProverSession) -> None:
        """Register a session; ``ProtocolFault(RESOURCE_EXHAUSTED)`` when its client holds its
        quota of sessions, or when the registry is full of sessions past their Hello."""
        with self._lock:
            self._expire_locked()
            mine = [v for v in self._sessions.values() if v.client == session.client]
            greeted = [v for v in mine if v.state is State.GREETED and not v.busy]
            if len(greeted) >= self.max_greeted_per_client:
                self._evict_locked(greeted[0], "its client opened another")
                mine.remove(greeted[0])
            if len(mine) >= self.max_per_client:
                raise ProtocolFault(
                    "RESOURCE_EXHAUSTED",
                    f"this client already holds {len(mine)} sessions, the most one client may "
                    "hold; finish one or retry later",
                )
            if len(self._sessions) >= self.max_sessions:
                idle = [
                    v for v in self._sessions.values() if v.state is State.GREETED and not v.busy
                ]
                if not idle:
                    raise ProtocolFault(
                        "RESOURCE_EXHAUSTED",
                        f"prover is serving its maximum of {self.max_sessions} sessions; "
                        "retry later",
                    )
                self._evict_locked(idle[0], "the prover is full and it never sent its Claim")
            self._sessions[session.id] = session

    def get(self, session_id: str) -> ProverSession:
        """The live session with this id, or ``ProtocolFault(NOT_FOUND)``."""
        with self._lock:
            self._expire_locked()
            session = self._sessions.get(session_id)
        if session is None:
            raise ProtocolFault(
                "NOT_FOUND",
                f"unknown or expired session {quote(session_id[:16])} (the prover may have "
                "restarted)",
            )
        return session

    @contextmanager
    def use(self, session_id: str, tuples: int = 0) -> Iterator[ProverSession]:
        """The session for the length of one RPC: counted against its call quota, marked busy
        (so it cannot expire under its client) and, for a Commit, with its ``tuples`` counted
        against the client's tuples in flight (``RESOURCE_EXHAUSTED`` beyond them)."""
        session = self.get(session_id)
        session.count_call()
        with self._lock:
            flying = self._in_flight.get(session.client, 0)
            if tuples and flying + tuples > self.max_tuples_in_flight:
                raise ProtocolFault(
                    "RESOURCE_EXHAUSTED",
                    f"this client already has {flying} challenge tuples being computed; at "
                    f"most {self.max_tuples_in_flight} may be at once",
                )
            self._in_flight[session.client] = flying + tuples
            session.busy += 1
        try:
            yield session
        finally:
            with self._lock:
                session.busy -= 1
                session.last_activity = time.monotonic()
                left = self._in_flight.get(session.client, 0) - tuples
                if left > 0:
                    self._in_flight[session.client] = left
                else:
                    self._in_flight.pop(session.client, None)

    def remove(self, session_id: str) -> None:
        """Forget a session (idempotent)."""
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _evict_locked(self, session: ProverSession, why: str) -> None:
        log.info("session %s: dropped before its Claim: %s", session.id[:8], why)
        del self._sessions[session.id]

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for sid, v in list(self._sessions.items()):
            if v.busy:
                continue
            idle = now - v.last_activity
            if v.state is State.GREETED and idle > self.hello_ttl_s:
                log.info("session %s: no Claim within %.0fs of Hello; dropped", sid[:8], idle)
                del self._sessions[sid]
            elif idle > self.ttl_s:
                log.info("session %s: expired after %.0fs idle", sid[:8], self.ttl_s)
                del self._sessions[sid]
