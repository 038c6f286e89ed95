"""Property-based fuzzing of the prover servicer and of the verifier's handling of prover answers.

Two properties (see docs/fuzzing.md):

* **The prover never crashes.** Random bytes parsed as each request type, and valid requests with
  mutated fields (wrong session ids, zero/huge ``num_tuples``, bad seeds and ρ, out-of-range or
  repeated indices, out-of-order and replayed calls) go to a real gRPC server on 127.0.0.1 and
  straight to ``ProverSession``. Every call must end OK or with a precise status (never UNKNOWN,
  which is what an uncaught exception in a handler becomes) carrying a non-empty message; after the
  fuzz the server still answers Hello and an honest run still accepts.
* **The verifier never accepts a corrupted answer.** An honest in-process run has one of its
  prover streams (the claim, the commitment or the openings) mutated: bytes flipped in a
  serialisation, messages dropped / duplicated / reordered / truncated, numbers replaced (NaN,
  ±inf, huge, nudged), a transport failure mid-stream. ``run_protocol`` must return (never
  raise), and its decision rule may pass the run only when the mutated stream is semantically the
  honest one (same messages up to order of openings / attribution parts and the informational
  ``prover_retrainings``), or when only the claimed attribution changed and its exact error (closed
  form on the synthetic task) is at most ``ATTRIBUTION_FALSE_ACCEPT_ERR``. The paper's rule runs
  here at small sizes, so an honest run ends "inconclusive" (the rule holds but the sizes certify
  a looser ε): "inconclusive" counts as passing the rule, just as "accept" does. Every spot check
  is opened (C = E), so any change to a committed f-value, seed or digest is caught
  deterministically, not with some probability.

The checks are plain functions taking a ``draw`` callable so ``benchmarks/fuzz.py`` can run the
same cases at volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION
from protocol.accounting import plan_manual
from protocol.limits import MAX_SESSION_TUPLES as MAX_TUPLES
from protocol.tasks.synthetic import SyntheticTask
from prover.server import build_server
from prover.servicer import ProverServicer
from prover.session import ProtocolFault, ProverSession, SessionRegistry
from prover.strategy import Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.driver import TransportError, run_protocol
from verifier.session import VerifierSession

Draw = Callable[[st.SearchStrategy[Any]], Any]

# n = 20 points, Z = 2 targets: one retraining costs microseconds, so a whole run is ~30 ms.
TASK = SyntheticTask(n=20, z=2, p=0.5, seed=0)
TRUTH = TASK.truth()
ATTRIBUTION = Attribution(TRUTH.intercept, TRUTH.coefficients, "exact", 0)
EPSILON = 1.0
# 100 tuples (|E| = 400), C = E, |M| = 500. Measured (100 runs each): the exact attribution is
# accepted 100/100; an attribution with err = 1.0 on one target 32/100, err = 2.25 0/100. So an
# accept with err > 3ε is far outside the estimates' noise: we call it a false accept.
PAIRS = 100
MSE_SAMPLES = 500
ATTRIBUTION_FALSE_ACCEPT_ERR = 3.0 * EPSILON
PLAN = plan_manual(
    epsilon=EPSILON,
    delta=0.05,
    output_bound=TASK.output_bound,
    tolerance=TASK.tolerance,
    num_targets=TASK.num_targets,
    pairs_per_level=PAIRS,
    spot_checks=4 * PAIRS,
    mse_samples=MSE_SAMPLES,
    rho=0.25,
)

#: Verdicts that mean the run passed every check and the decision rule's test.
PASSED = ("accept", "inconclusive")
#: Status codes a refused request may carry; UNKNOWN (an uncaught handler exception) never.
PRECISE_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: gRPC itself answers INTERNAL "Exception deserializing request!" for bytes that do not parse.
RAW_BYTES_CODES = PRECISE_CODES | {grpc.StatusCode.INTERNAL}
METHODS = {  # name -> (request type, server streaming?)
    "Hello": (pb.HelloRequest, False),
    "Claim": (pb.ClaimRequest, True),
    "Commit": (pb.ChallengeRequest, True),
    "Open": (pb.OpenRequest, True),
    "OpenAll": (pb.OpenAllRequest, True),
    "SupplyModels": (pb.ModelsRequest, True),
    "Finish": (pb.FinishRequest, False),
}
FUZZ_TUPLES_MAX = 6  # valid challenges stay tiny (|E| <= 24) so each case is fast


def strategy_factory() -> HonestStrategy:
    """A fresh honest strategy with the exact (truth) attribution."""
    return HonestStrategy(TASK, ATTRIBUTION)


def valid_hello() -> pb.HelloRequest:
    """A Hello the prover accepts."""
    return pb.HelloRequest(
        protocol_version=PROTOCOL_VERSION, task=pb.TaskIdentity(**TASK.identity().as_fields())
    )


# ---------------------------------------------------------------------------------------------
# Part 1: request fuzzing (server and ProverSession)
# ---------------------------------------------------------------------------------------------

weird_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        0.25,
        0.5,
        0.5000000000000001,
        1e-300,
        -0.25,
        1.0,
        2.0,
        math.nan,
        math.inf,
        -math.inf,
        5e-324,
        1e308,
    ]
) | st.floats(allow_nan=True, allow_infinity=True)
u64 = st.sampled_from([0, 1, 2, 3, 23, 24, 25, MAX_TUPLES, MAX_TUPLES + 1, 2**63, 2**64 - 1]) | (
    st.integers(0, 2**64 - 1)
)
session_ref = st.sampled_from(["current", "other", "empty", "garbage", "prefix"])


def _session_id(ref: str, current: str, other: str, junk: str) -> str:
    return {
        "current": current,
        "other": other,
        "empty": "",
        "garbage": junk,
        "prefix": current[:16],
    }[ref]


op_strategy = st.one_of(
    st.tuples(st.just("raw"), st.sampled_from(sorted(METHODS)), st.binary(max_size=80)),
    st.tuples(
        st.just("hello"),
        st.sampled_from(["valid", "version", "task_hash", "empty", "spec"]),
        st.text(max_size=12),
    ),
    st.tuples(st.just("claim"), session_ref),
    st.tuples(
        st.just("commit"),
        session_ref,
        st.sampled_from([32, 32, 32, 0, 31, 33, 64]),
        st.integers(1, FUZZ_TUPLES_MAX) | u64.filter(lambda v: v == 0 or v > MAX_TUPLES),
        st.sampled_from([0.25, 0.5, 0.1]) | weird_floats,
        st.sampled_from([0, 0, 1, 6]) | u64,
    ),
    st.tuples(
        st.just("open"),
        session_ref,
        st.lists(st.integers(0, 30) | u64, max_size=8),
    ),
    st.tuples(st.just("open_all"), session_ref),
    st.tuples(
        st.just("supply"),
        session_ref,
        st.sampled_from([32, 0, 31, 33]),
        u64,
        st.integers(0, 4) | u64,
    ),
    st.tuples(st.just("finish"), session_ref, st.binary(max_size=40)),
    st.tuples(st.just("replay"), st.integers(0, 20)),
)
ops_strategy = st.lists(op_strategy, min_size=1, max_size=7)


def build_request(op: tuple, current: str, other: str) -> tuple[str, bytes] | None:
    """The (method, serialised request) an op describes; None for a replay with no history."""
    kind = op[0]
    junk = "x" * 40 + "\u2603"
    if kind == "raw":
        return op[1], op[2]
    if kind == "hello":
        msg = valid_hello()
        variant = op[1]
        if variant == "version":
            msg.protocol_version = op[2]
        elif variant == "task_hash":
            msg.task.task_hash = op[2]
        elif variant == "empty":
            msg = pb.HelloRequest()
        elif variant == "spec":
            msg.task.canonical_spec = op[2]
            msg.task.spec_hash = "0" * 64
        return "Hello", msg.SerializeToString()
    if kind == "claim":
        msg = pb.ClaimRequest(session_id=_session_id(op[1], current, other, junk))
        return "Claim", msg.SerializeToString()
    if kind == "commit":
        _, ref, seed_len, tuples, rho, first = op
        msg = pb.ChallengeRequest(
            session_id=_session_id(ref, current, other, junk),
            public_seed=bytes((i * 7) % 256 for i in range(seed_len)),
            num_tuples=tuples,
            rho=rho,
            first_tuple=first,
        )
        return "Commit", msg.SerializeToString()
    if kind == "open":
        msg = pb.OpenRequest(session_id=_session_id(op[1], current, other, junk), indices=op[2])
        return "Open", msg.SerializeToString()
    if kind == "open_all":
        msg = pb.OpenAllRequest(session_id=_session_id(op[1], current, other, junk))
        return "OpenAll", msg.SerializeToString()
    if kind == "supply":
        _, ref, key_len, first, count = op
        msg = pb.ModelsRequest(
            session_id=_session_id(ref, current, other, junk),
            sample_key=b"k" * key_len,
            first=first,
            count=count,
        )
        return "SupplyModels", msg.SerializeToString()
    if kind == "finish":
        msg = pb.FinishRequest(
            session_id=_session_id(op[1], current, other, junk),
            verdict="accept",
            transcript_hash=op[2],
        )
        return "Finish", msg.SerializeToString()
    raise AssertionError(kind)


class FuzzServer:
    """A real ``build_server`` on 127.0.0.1:0 in this process, with raw-bytes call helpers."""

    def __init__(self, workers: int = 4) -> None:
        self.registry = SessionRegistry(max_sessions=256)
        self.servicer = ProverServicer(TASK, strategy_factory, self.registry, "fuzz")
        self.server, self.port = build_server(self.servicer, "127.0.0.1", 0, workers=workers)
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self._calls: dict[str, Any] = {}
        for name, (_, streaming) in METHODS.items():
            path = f"/attribution.v1.Prover/{name}"
            make = self.channel.unary_stream if streaming else self.channel.unary_unary
            self._calls[name] = make(path)  # no (de)serialisers: bytes in, bytes out

    def call(self, method: str, payload: bytes, timeout_s: float = 30.0) -> tuple[Any, str, list]:
        """Send raw request bytes; returns (status code, details, raw response messages)."""
        try:
            if METHODS[method][1]:
                out = list(self._calls[method](payload, timeout=timeout_s))
            else:
                out = [self._calls[method](payload, timeout=timeout_s)]
            return grpc.StatusCode.OK, "", out
        except grpc.RpcError as err:
            return err.code(), err.details() or "", []

    def hello(self) -> str:
        """Open a session with a valid Hello; returns its id."""
        code, details, out = self.call("Hello", valid_hello().SerializeToString())
        assert code == grpc.StatusCode.OK, (code, details)
        return pb.HelloReply.FromString(out[0]).session_id

    def close(self) -> None:
        """Stop the server and close the channel."""
        self.channel.close()
        self.server.stop(None).wait()


def check_server_ops(server: FuzzServer, ops: list[tuple]) -> list[str]:
    """Run ``ops`` against the server within one fresh session; returns the violations found."""
    current, other = server.hello(), server.hello()
    history: list[tuple[str, bytes, bool]] = []
    opened: list[str] = []
    problems: list[str] = []
    for op in ops:
        if op[0] == "replay":
            if not history:
                continue
            method, payload, raw = history[op[1] % len(history)]
        else:
            built = build_request(op, current, other)
            assert built is not None
            (method, payload), raw = built, op[0] == "raw"
        history.append((method, payload, raw))
        code, details, out = server.call(method, payload)
        if method == "Hello" and code == grpc.StatusCode.OK:
            opened.append(pb.HelloReply.FromString(out[0]).session_id)
        allowed = RAW_BYTES_CODES if raw else PRECISE_CODES
        if code not in allowed:
            problems.append(f"{method} {op!r} -> {code}: {details!r}")
        elif code != grpc.StatusCode.OK and not details.strip():
            problems.append(f"{method} {op!r} -> {code} with an empty message")
    for sid in (current, other, *opened):  # release all (NOT_FOUND when an op already finished one)
        server.call("Finish", pb.FinishRequest(session_id=sid).SerializeToString())
    return problems


def check_session_ops(ops: list[tuple]) -> list[str]:
    """Run ``ops`` straight against ``ProverSession`` objects (no gRPC); returns violations.

    Allowed outcomes: the call returns / streams, or raises ``ProtocolFault`` whose code names a
    precise gRPC status and whose message is non-empty. Any other exception is a crash.
    """
    sessions = [ProverSession(TASK, strategy_factory(), valid_hello()) for _ in range(2)]
    sessions[0].hello_reply("")
    by_id = {s.id: s for s in sessions}
    history: list[tuple[str, bytes]] = []
    problems: list[str] = []
    precise = {c.name for c in PRECISE_CODES}
    for op in ops:
        if op[0] == "replay":
            if not history:
                continue
            method, payload = history[op[1] % len(history)]
        else:
            built = build_request(op, sessions[0].id, sessions[1].id)
            assert built is not None
            method, payload = built
        history.append((method, payload))
        try:
            request = METHODS[method][0].FromString(payload)
        except Exception:
            continue
        if method == "Hello":
            continue  # Hello is the servicer's (identity check); exercised on the server
        session = by_id.get(getattr(request, "session_id", ""))
        if session is None:
            continue  # the registry answers NOT_FOUND before any session method runs
        call = {
            "Claim": session.claim,
            "Commit": session.commit,
            "Open": session.open,
            "OpenAll": session.open_all,
            "SupplyModels": session.supply_models,
            "Finish": session.finish,
        }[method]
        try:
            result = call(request)
            if isinstance(result, Iterator):
                for _ in result:
                    pass
        except ProtocolFault as fault:
            if fault.code not in precise or not fault.message.strip():
                problems.append(f"{method} {op!r}: fault {fault.code} {fault.message!r}")
        except Exception as exc:
            problems.append(f"{method} {op!r}: crash {type(exc).__name__}: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------
# Part 2: answer fuzzing (the verifier)
# ---------------------------------------------------------------------------------------------

SPECIAL_DOUBLES = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324]
SPECIAL_INTS = [0, 1, 2**32 - 1, 2**63, 2**64 - 1]
MUTATIONS = ["flip", "drop", "dup", "swap", "truncate", "number", "transport_error", "none"]


#: Positions are drawn from a fixed range and reduced modulo the (run-dependent) length, so the
#: strategy draws the same way in every run (hypothesis requires it).
WIDE = st.integers(0, 2**24)


def _index(draw: Draw, n: int) -> int:
    return draw(WIDE) % n


def _numeric_slots(msg: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (path, field, repeated index or None) holding a number or bytes in ``msg``."""
    slots: list[tuple] = []
    for fd, value in msg.ListFields():
        path = (*prefix, fd.name)
        if fd.type == fd.TYPE_MESSAGE:
            slots.extend(_numeric_slots(value, path))
        elif _is_repeated(fd):
            slots.extend((path, fd, i) for i in range(len(value)))
        else:
            slots.append((path, fd, None))
    return slots


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5.x; ``label`` is gone there
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED


def _get_parent(msg: Any, path: tuple) -> Any:
    for name in path[:-1]:
        msg = getattr(msg, name)
    return msg


def _new_value(fd: Any, old: Any, draw: Draw) -> Any:
    if fd.type == fd.TYPE_DOUBLE:
        how = draw(st.sampled_from(["special", "nudge", "scale", "random"]))
        if how == "special":
            return draw(st.sampled_from(SPECIAL_DOUBLES))
        if how == "nudge":
            return float(np.nextafter(old, math.inf if draw(st.booleans()) else -math.inf))
        if how == "scale":
            return old * draw(st.sampled_from([-1.0, 0.5, 2.0, 1.0 + 1e-12, 10.0]))
        return draw(st.floats(allow_nan=True, allow_infinity=True))
    if fd.type == fd.TYPE_BYTES:
        how = draw(st.sampled_from(["flip", "empty", "short", "long"]))
        if how == "empty" or (how == "flip" and not old):
            return b""
        if how == "flip":
            i = _index(draw, len(old))
            return old[:i] + bytes([old[i] ^ (1 << draw(st.integers(0, 7)))]) + old[i + 1 :]
        return old[:-1] if how == "short" else old + b"\x00"
    if fd.type == fd.TYPE_STRING:
        return draw(st.text(max_size=8))
    limit = 2**32 - 1 if fd.type == fd.TYPE_UINT32 else 2**64 - 1
    how = draw(st.sampled_from(["special", "plus", "minus", "random"]))
    if how == "special":
        return min(limit, draw(st.sampled_from(SPECIAL_INTS)))
    if how == "plus":
        return min(limit, old + 1)
    if how == "minus":
        return max(0, old - 1)
    return draw(st.integers(0, limit))


def mutate_number(msg: Any, draw: Draw) -> Any:
    """A copy of ``msg`` with one number / bytes field replaced."""
    out = type(msg)()
    out.CopyFrom(msg)
    slots = _numeric_slots(out)
    if not slots:
        return out
    path, fd, index = slots[_index(draw, len(slots))]
    parent = _get_parent(out, path)
    if index is None:
        setattr(parent, path[-1], _new_value(fd, getattr(parent, path[-1]), draw))
    else:
        container = getattr(parent, path[-1])
        container[index] = _new_value(fd, container[index], draw)
    return out


@dataclass
class StreamMutation:
    """Which stream to mutate and how; filled in lazily (the stream's length is known late)."""

    step: str
    kind: str
    honest: list = field(default_factory=list)
    mutated: list = field(default_factory=list)
    note: str = ""


def apply_mutation(messages: list, kind: str, draw: Draw) -> tuple[list, int | None, str]:
    """Mutate a stream. Returns (messages, index at which a transport error fires or None, note)."""
    n = len(messages)
    pick = (lambda: _index(draw, n)) if n else (lambda: 0)
    if kind == "none" or n == 0:
        return list(messages), None, "unchanged"
    if kind == "flip":
        i = pick()
        raw = bytearray(messages[i].SerializeToString(deterministic=True))
        if not raw:
            return list(messages), None, "empty message"
        flips = [b % (len(raw) * 8) for b in draw(st.lists(WIDE, min_size=1, max_size=4))]
        for bit in flips:
            raw[bit // 8] ^= 1 << (bit % 8)
        out = list(messages)
        try:
            out[i] = type(messages[i]).FromString(bytes(raw))
        except Exception:
            return out[:i], i, f"flip {flips} in #{i}: unparsable"
        return out, None, f"flip bits {flips} in #{i}"
    if kind == "drop":
        i = pick()
        return messages[:i] + messages[i + 1 :], None, f"drop #{i}"
    if kind == "dup":
        i = pick()
        return messages[: i + 1] + messages[i:], None, f"dup #{i}"
    if kind == "swap":
        i, j = pick(), pick()
        out = list(messages)
        out[i], out[j] = out[j], out[i]
        return out, None, f"swap #{i} #{j}"
    if kind == "truncate":
        i = pick()
        return messages[:i], None, f"truncate at #{i}"
    if kind == "number":
        i = pick()
        out = list(messages)
        out[i] = mutate_number(messages[i], draw)
        return out, None, f"number in #{i}"
    if kind == "transport_error":
        i = _index(draw, n + 1)
        return list(messages), i, f"transport error after #{i}"
    raise AssertionError(kind)


class MutatingTransport:
    """Wraps ``InProcessTransport``; mutates one step's stream of prover answers."""

    def __init__(self, inner: InProcessTransport, mutation: StreamMutation, draw: Draw) -> None:
        self.inner = inner
        self.mutation = mutation
        self.draw = draw

    def _maybe_mutate(self, step: str, stream: Iterable) -> Iterator:
        messages = list(stream)  # raises TransportError itself if the prover refuses
        if step != self.mutation.step:
            yield from messages
            return
        out, fail_at, note = apply_mutation(messages, self.mutation.kind, self.draw)
        self.mutation.honest = messages
        self.mutation.mutated = out if fail_at is None else out[:fail_at]
        self.mutation.note = note
        for i, msg in enumerate(out):
            if fail_at is not None and i >= fail_at:
                break
            yield msg
        if fail_at is not None:
            raise TransportError(f"fuzz: stream broken ({note})")

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Unchanged."""
        return self.inner.hello(request)

    def claim(self, request: pb.ClaimRequest) -> Iterator[pb.ClaimChunk]:
        """Possibly mutated."""
        return self._maybe_mutate("claim", self.inner.claim(request))

    def commit(self, request: pb.ChallengeRequest) -> Iterator[pb.CommitChunk]:
        """Possibly mutated."""
        return self._maybe_mutate("commit", self.inner.commit(request))

    def open(self, request: pb.OpenRequest) -> Iterator[pb.Opening]:
        """Possibly mutated."""
        return self._maybe_mutate("open", self.inner.open(request))

    def open_all(self, request: pb.OpenAllRequest) -> Iterator[pb.OpeningBatch]:
        """Possibly mutated."""
        return self._maybe_mutate("open_all", self.inner.open_all(request))

    def supply_models(self, request: pb.ModelsRequest) -> Iterator[pb.SuppliedModel]:
        """Possibly mutated."""
        return self._maybe_mutate("supply_models", self.inner.supply_models(request))

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Unchanged."""
        return self.inner.finish(request)


def _canonical(step: str, messages: list) -> list[bytes]:
    """What the verifier's verdict may depend on, order-normalised where order is not semantic."""
    out: list[bytes] = []
    for msg in messages:
        m = type(msg)()
        m.CopyFrom(msg)
        m.DiscardUnknownFields()  # a flipped tag can turn a field unknown: the verifier ignores it
        if step == "commit" and m.WhichOneof("part") == "root":
            m.root.prover_retrainings = 0  # informational: the verifier only reports it
        if step == "claim" and m.WhichOneof("part") == "summary":
            m.summary.datamodel_samples = 0  # informational, as are the method's words
            m.summary.method = ""
        out.append(m.SerializeToString(deterministic=True))
    if step == "open":
        return sorted(out)  # openings are checked independently, keyed by index
    if step == "claim":
        attr = sorted(b for b, m in zip(out, messages, strict=True) if m.HasField("attribution"))
        rest = [b for b, m in zip(out, messages, strict=True) if not m.HasField("attribution")]
        return attr + rest
    return out


def _attribution_of(messages: list) -> tuple[np.ndarray, np.ndarray] | None:
    """The (intercepts, coefficients) a well-formed attribution stream claims, else None."""
    c = np.full(TASK.num_targets, np.nan)
    a = np.full((TASK.num_targets, TASK.num_train_points), np.nan)
    for m in messages:
        if not m.HasField("attribution"):
            continue
        part = m.attribution
        if part.target >= TASK.num_targets or part.offset + len(part.coefficients) > a.shape[1]:
            return None
        c[part.target] = part.intercept
        a[part.target, part.offset : part.offset + len(part.coefficients)] = part.coefficients
    return c, a


@dataclass
class VerifierCase:
    """One fuzzed verifier run and its classification."""

    verdict: str
    reason: str
    note: str
    identical: bool
    false_accept: bool
    gray_accept: bool
    raised: str | None = None


def check_verifier_case(
    draw: Draw, step: str | None = None, kind: str | None = None
) -> VerifierCase:
    """One honest in-process run with one prover stream mutated; classify the verdict."""
    step = step or draw(st.sampled_from(["claim", "commit", "open"]))
    kind = kind or draw(st.sampled_from(MUTATIONS))
    mutation = StreamMutation(step, kind)
    session = VerifierSession(TASK, PLAN)
    transport = MutatingTransport(InProcessTransport(TASK, strategy_factory()), mutation, draw)
    try:
        result = run_protocol(session, transport)
    except Exception as exc:
        return VerifierCase("raised", str(exc), mutation.note, False, False, False, repr(exc))
    identical = _canonical(step, mutation.mutated) == _canonical(step, mutation.honest)
    false_accept = gray = False
    if result.verdict in PASSED and not identical:
        false_accept = True
        if step == "claim":
            honest_rest = [m for m in mutation.honest if not m.HasField("attribution")]
            mutated_rest = [m for m in mutation.mutated if not m.HasField("attribution")]
            claimed = _attribution_of(mutation.mutated)
            if _canonical("commit", honest_rest) == _canonical("commit", mutated_rest) and (
                claimed is not None and np.all(np.isfinite(claimed[1]))
            ):
                # Only the claimed attribution changed: a different claim, judged by its exact err.
                err = float(np.max(TASK.err(*claimed)))
                false_accept = err > ATTRIBUTION_FALSE_ACCEPT_ERR
                gray = not false_accept and err > EPSILON
                mutation.note += f" (claimed attribution err {err:.3g})"
    return VerifierCase(result.verdict, result.reason, mutation.note, identical, false_accept, gray)


def honest_run_over_grpc(port: int) -> str:
    """A full honest run of the default rule (ε = 1: accepted on the claim's MSE) against the
    server on ``port``; returns the verdict."""
    from verifier.client import GrpcTransport
    from verifier.planning import PlanOptions, make_verifier_plan

    plan, checks = make_verifier_plan(PlanOptions(epsilon=EPSILON), TASK)
    transport = GrpcTransport(f"127.0.0.1:{port}", timeout_s=60.0)
    try:
        return run_protocol(VerifierSession(TASK, plan, checks=checks), transport).verdict
    finally:
        close = getattr(transport, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------------------------
# The tests (short budget; benchmarks/fuzz.py runs the same checks at volume)
# ---------------------------------------------------------------------------------------------

FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FuzzServer]:
    """One in-thread prover server for the module."""
    server = FuzzServer()
    yield server
    server.close()


@settings(FAST, max_examples=200)
@given(ops=ops_strategy)
def test_prover_session_never_crashes(ops: list[tuple]) -> None:
    """Direct ProverSession calls: only ProtocolFaults with precise codes and messages."""
    assert check_session_ops(ops) == []


@settings(FAST, max_examples=200)
@given(ops=ops_strategy)
def test_server_never_crashes(fuzz_server: FuzzServer, ops: list[tuple]) -> None:
    """Real gRPC server: every call ends OK or with a precise, explained status."""
    assert check_server_ops(fuzz_server, ops) == []


def test_server_still_healthy_after_fuzz(fuzz_server: FuzzServer) -> None:
    """After the fuzz (module order: runs after the server fuzz) Hello works, honest accepts."""
    check_server_ops(
        fuzz_server, [("raw", "Commit", b"\xff" * 9), ("commit", "current", 32, 0, 0.25, 0)]
    )
    sid = fuzz_server.hello()
    assert sid
    assert honest_run_over_grpc(fuzz_server.port) == "accept"


@settings(FAST, max_examples=300)
@given(data=st.data())
def test_verifier_never_accepts_corrupted_answers(data: st.DataObject) -> None:
    """A mutated prover stream never yields accept unless semantically unchanged."""
    case = check_verifier_case(data.draw)
    assert case.raised is None, case
    assert not case.false_accept, case


#: Unmutated runs per stream in test_unmutated_run_passes. The verifier's sample is fresh CSPRNG
#: randomness, so at these small sizes the honest claim is rejected now and then: measured 6 of
#: 1,000 runs (B̂≥2 drawn far below its mean). 3 × 10 runs with at most 3 rejects fails by chance
#: with probability about 4e-5 at that rate; a harness that broke honest runs fails it every time.
UNMUTATED_RUNS = 10
UNMUTATED_MAX_REJECTS = 3


def test_unmutated_run_passes() -> None:
    """Sanity: the harness itself does not break an honest run (the paper's rule holds; its
    sizes certify a looser ε, so the verdict is inconclusive), and the streams it passes through
    are the honest ones. A rare statistical reject (the rule's own δ) is tolerated, an error or an
    accept beyond what these sizes certify is not."""
    rejects = []
    for step in ("claim", "commit", "open"):
        for _ in range(UNMUTATED_RUNS):
            case = check_verifier_case(lambda _s: None, step=step, kind="none")
            assert case.identical, case
            assert case.verdict in ("inconclusive", "reject"), case
            if case.verdict == "reject":
                assert "msê" in case.reason, case  # only the statistical test may reject
                rejects.append(case)
    assert len(rejects) <= UNMUTATED_MAX_REJECTS, rejects
