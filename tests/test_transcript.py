"""The running transcript hash: deterministic, order sensitive, unambiguous framing."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from protocol.transcript import Transcript


def _digest(messages: list[tuple[str, str, bytes]], label: str | None = None) -> bytes:
    t = Transcript() if label is None else Transcript(label)
    for m in messages:
        t.append(*m)
    return t.digest


def test_initial_state_and_exact_chaining():
    t = Transcript()
    assert t.digest == hashlib.sha256(b"attribution.v1/transcript").digest()
    assert t.count == 0
    h0 = t.digest
    out = t.append("v2p", "HelloRequest", b"\x01\x02")

    def frame(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b

    expected = hashlib.sha256(h0 + frame(b"v2p") + frame(b"HelloRequest") + frame(b"\x01\x02"))
    assert out == expected.digest() == t.digest
    assert t.hexdigest == out.hex()
    assert t.count == 1


def test_label_matters():
    assert Transcript("a").digest != Transcript("b").digest


def test_order_sensitivity():
    a = ("v2p", "A", b"1")
    b = ("p2v", "B", b"2")
    assert _digest([a, b]) != _digest([b, a])
    assert _digest([a]) != _digest([a, a])


@given(st.binary(max_size=64), st.integers(0, 63), st.integers(1, 255))
def test_any_payload_change_changes_digest(payload, pos, flip):
    base = _digest([("v2p", "K", b"head"), ("p2v", "M", payload)])
    if payload:
        changed = bytearray(payload)
        changed[pos % len(payload)] ^= flip
        assert _digest([("v2p", "K", b"head"), ("p2v", "M", bytes(changed))]) != base
    assert _digest([("v2p", "K", b"head"), ("p2v", "M", payload + b"\x00")]) != base


def test_framing():
    assert _digest([("ab", "c", b"")]) != _digest([("a", "bc", b"")])
    assert _digest([("v", "ab", b"c")]) != _digest([("v", "a", b"bc")])
    assert _digest([("v", "k", b"")]) != _digest([("v", "", b"k")])


def test_two_messages_match_the_documented_chain_by_hand():
    # both parties build their transcripts independently: the digest must be a pure function of
    # the messages, equal to the chain the module documents (computed here without Transcript)
    msgs = [("v2p", "A", b"x" * 100), ("p2v", "B", b"")]

    def frame(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b

    h = hashlib.sha256(b"attribution.v1/transcript").digest()
    for direction, kind, payload in msgs:
        h = hashlib.sha256(h + frame(direction.encode()) + frame(kind.encode()) + frame(payload))
        h = h.digest()
    assert _digest(msgs) == h


# ---- the channel: recording is structural on both sides ----------------------------------------


class _Msg:
    """A stand-in protobuf message (the transcript needs only a deterministic serialisation)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def SerializeToString(self, deterministic: bool = False) -> bytes:
        return self.payload


def test_recording_transport_records_each_message_once_in_order_and_not_finish():
    from verifier.recording import RecordingTransport

    class Inner:
        def hello(self, request):
            return _Msg(b"hi")

        def claim(self, request):
            return iter([_Msg(b"c1"), _Msg(b"c2")])

        def finish(self, request):
            return _Msg(b"bye")

    t = Transcript()
    rec = RecordingTransport(Inner(), t)
    rec.hello(_Msg(b"hello"))
    assert [m.payload for m in rec.claim(_Msg(b"claim"))] == [b"c1", b"c2"]
    rec.finish(_Msg(b"finish"))
    expect = Transcript()
    for direction, payload in (("v2p", b"hello"), ("p2v", b"hi"), ("v2p", b"claim"),
                               ("p2v", b"c1"), ("p2v", b"c2")):  # fmt: skip
        expect.append(direction, "_Msg", payload)
    assert t.count == 5
    assert t.digest == expect.digest


def test_records_exchange_absorbs_the_request_then_every_yielded_reply():
    from protocol.transcript import records_exchange

    class Handler:
        def __init__(self) -> None:
            self.transcript = Transcript()

        @records_exchange
        def stream(self, request, n):
            for i in range(n):
                yield _Msg(bytes([i]))

    h = Handler()
    gen = h.stream(_Msg(b"req"), 3)
    assert h.transcript.count == 0  # nothing before the stream runs
    assert [m.payload for m in gen] == [b"\x00", b"\x01", b"\x02"]
    expect = Transcript()
    expect.append("v2p", "_Msg", b"req")
    for i in range(3):
        expect.append("p2v", "_Msg", bytes([i]))
    assert h.transcript.digest == expect.digest


def test_no_protocol_step_appends_to_the_transcript_by_hand():
    """Only the channel records: the verifier's RecordingTransport and Transcript.exchange, and
    the prover session's opening (Hello and its reply, before any call exists to wrap)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    counts = {
        str(p.relative_to(root)): p.read_text().count(".append_message(")
        for d in ("verifier", "prover", "simulations")
        for p in (root / d).glob("*.py")
    }
    hand = {k: v for k, v in counts.items() if v}
    assert hand == {"verifier/recording.py": 2, "prover/session.py": 2}
