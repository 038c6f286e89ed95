"""A running SHA-256 transcript of every protocol message, in order.

Both parties feed each message they send or receive, as its deterministic protobuf serialisation
(``msg.SerializeToString(deterministic=True)``), in protocol order, tagged with its direction
(``"v2p"`` / ``"p2v"``) and kind (the message type name). At the end they compare digests: equal
digests mean both saw the same conversation, so a transcript (or a certificate quoting it) cannot be
spliced from two sessions or replayed into another.

Recording is structural: the verifier sends every call through
``verifier.recording.RecordingTransport`` and the prover's streaming handlers are wrapped by
:func:`records_exchange`, so both go through :meth:`Transcript.exchange` and no step appends by
hand.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

DEFAULT_LABEL = "attribution.v1/transcript"
VERIFIER_TO_PROVER = "v2p"
PROVER_TO_VERIFIER = "p2v"

T = TypeVar("T")


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


class Transcript:
    """Hash chain H_0 = SHA-256(label), H_i = SHA-256(H_{i-1} ‖ [direction] ‖ [kind] ‖ [payload]).

    ``[v]`` is ``v`` prefixed with its length as u64 LE (strings UTF-8 encoded), so field
    boundaries are unambiguous: ("ab", "c") and ("a", "bc") give different digests.
    """

    def __init__(self, label: str = DEFAULT_LABEL) -> None:
        self.label = label
        self._state = hashlib.sha256(label.encode("utf-8")).digest()
        self._count = 0

    def append(self, direction: str, kind: str, payload: bytes) -> bytes:
        """Absorb one message and return the new digest H_i."""
        if not isinstance(direction, str) or not isinstance(kind, str):
            raise TypeError("direction and kind must be str")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        h = hashlib.sha256(self._state)
        h.update(_frame(direction.encode("utf-8")))
        h.update(_frame(kind.encode("utf-8")))
        h.update(_frame(bytes(payload)))
        self._state = h.digest()
        self._count += 1
        return self._state

    def append_message(self, direction: str, message: Any) -> bytes:
        """Absorb a protobuf message: its type name and deterministic serialisation.

        Works with any object offering ``SerializeToString(deterministic=True)``, so this module
        needs no protobuf import.
        """
        payload = message.SerializeToString(deterministic=True)
        return self.append(direction, type(message).__name__, payload)

    @property
    def digest(self) -> bytes:
        """The current 32-byte digest H_count."""
        return self._state

    @property
    def hexdigest(self) -> str:
        """The current digest as lowercase hex."""
        return self._state.hex()

    @property
    def count(self) -> int:
        """How many messages have been appended."""
        return self._count

    def exchange(self, request: Any, replies: Iterable[T]) -> Iterator[T]:
        """One call as both parties record it: ``request`` (verifier to prover), then each reply
        as it passes (prover to verifier). The request is absorbed when the first reply is asked
        for, so a lazily started stream records nothing before it runs."""
        self.append_message(VERIFIER_TO_PROVER, request)
        for reply in replies:
            self.append_message(PROVER_TO_VERIFIER, reply)
            yield reply


def records_exchange(
    method: Callable[..., Iterator[T]],
) -> Callable[..., Iterator[T]]:
    """Decorate a streaming call handler ``method(self, request, ...)`` whose object has a
    ``transcript``: the request and every message it yields are absorbed in order, so no handler
    appends by hand (the prover's side of the channel)."""

    @functools.wraps(method)
    def handler(self: Any, request: Any, *args: Any, **kwargs: Any) -> Iterator[T]:
        return self.transcript.exchange(request, method(self, request, *args, **kwargs))

    return handler
