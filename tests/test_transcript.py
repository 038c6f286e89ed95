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
