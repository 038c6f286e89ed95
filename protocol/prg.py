"""The public pseudo-random generator (PRG) of protocol ``attribution.v1``.

Everything that both parties must derive identically (challenge subsets, training seeds) comes from
this module, and this docstring is the complete specification: any implementation that follows it
re-derives the same bytes on any machine.

**Stream keys.** A 32-byte key for a named purpose is::

    stream_key(label, part_1, ..., part_m) =
        SHA-256( b"attribution.v1/" || UTF-8(label) || 0x00
                 || LE64(len(part_1)) || part_1 || ... || LE64(len(part_m)) || part_m )

where ``LE64(v)`` is the 8-byte little-endian encoding of ``v``. The length prefixes make the
encoding injective, so different part lists never collide.

**Uniforms.** ``uniforms_u32(key, stream, count)`` is the first ``4*count`` bytes of the ChaCha20
keystream (RFC 8439 block function, 20 rounds, 32-byte ``key``) read as ``count`` little-endian
uint32. The keystream is the encryption of ``4*count`` zero bytes with the 16-byte initial value
(the ``nonce`` argument of ``cryptography``'s ``algorithms.ChaCha20``)::

    LE32(0) || LE64(stream) || LE32(0)

i.e. the 32-bit block counter starts at 0, and the 96-bit RFC 8439 nonce is ``LE64(stream)``
followed by four zero bytes. Different ``stream`` values give independent streams under one key.
(Known-answer check: with key ``00 01 .. 1f`` and ``stream = 0x4a00000009000000`` the nonce is the
RFC 8439 §2.3.2 nonce, and uint32 number 16..31 of the stream are that section's block-1 output.)

**Thresholds (quantisation).** A probability ``q`` becomes the integer threshold
``T(q) = min(max(floor(q * 2**32), 0), 2**32)``; the event ``u < T(q)`` for a uniform uint32
``u`` has probability exactly ``T(q) / 2**32``, which differs from ``q`` by less than
``2**-32`` (and equals ``q`` whenever ``q * 2**32`` is an integer, e.g. ``q = 1/2``).
``T(1) = 2**32`` makes the event certain. All statements in the protocol about
"probability q" mean ``T(q) / 2**32``.

**Bernoulli masks.** Row ``r`` of ``bernoulli_masks(key, streams, n, p)`` is
``uniforms_u32(key, streams[r], n) < T(p)`` (entry ``i`` True means training point ``i`` is in).

**Seeds.** ``derive_seed(key, index)`` is the first 8 bytes, read little-endian, of
``SHA-256(key || b"seed" || LE64(index))``, a uint64.

**Private randomness.** :func:`private_key` returns 32 bytes from :func:`secrets.token_bytes`
(the OS CSPRNG). Streams keyed by it are unpredictable to anyone who does not hold the key; the
verifier uses them for its secret MSE sample.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

DOMAIN = b"attribution.v1/"
KEY_LEN = 32
TWO_32 = 2**32
_U64_MAX = 2**64 - 1
# The RFC 8439 block counter is 32 bits: one (key, nonce) yields at most 2**32 blocks of 64 bytes.
_MAX_COUNT = (2**32 * 64) // 4


def _le64(value: int) -> bytes:
    return int(value).to_bytes(8, "little")


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        got = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"key must be {KEY_LEN} bytes, got {got}")


def _check_u64(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if not 0 <= v <= _U64_MAX:
        raise ValueError(f"{name} must lie in [0, 2**64 - 1], got {v}")
    return v


def stream_key(label: str, *parts: bytes) -> bytes:
    """Return the 32-byte key for ``label`` and ``parts`` (injective encoding, see module doc)."""
    h = hashlib.sha256()
    h.update(DOMAIN + label.encode() + b"\x00")
    for part in parts:
        if not isinstance(part, (bytes, bytearray)):
            raise ValueError(f"stream_key parts must be bytes, got {type(part).__name__}")
        h.update(_le64(len(part)))
        h.update(bytes(part))
    return h.digest()


def uniforms_u32(key: bytes, stream: int, count: int) -> np.ndarray:
    """Return ``count`` uint32 from ChaCha20(key, stream), exactly as the module docstring says.

    Guarantees: deterministic in (key, stream, count); a prefix of a longer call's output; shape
    ``(count,)`` and dtype uint32 (native order, values decoded little-endian).
    """
    _check_key(key)
    s = _check_u64(stream, "stream")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if count > _MAX_COUNT:
        raise ValueError(f"count {count} exceeds one ChaCha20 stream ({_MAX_COUNT} uint32)")
    if count == 0:
        return np.zeros(0, dtype=np.uint32)
    nonce = (0).to_bytes(4, "little") + _le64(s) + b"\x00\x00\x00\x00"
    enc = Cipher(algorithms.ChaCha20(bytes(key), nonce), mode=None).encryptor()
    ks = enc.update(bytes(4 * count))
    return np.frombuffer(ks, dtype="<u4").astype(np.uint32)


def threshold_u32(prob: float) -> int:
    """Return ``T(prob) = floor(prob * 2**32)`` clipped to ``[0, 2**32]``.

    ``P(u < T(prob)) = T(prob) / 2**32`` for a uniform uint32 ``u``; this is within ``2**-32`` of
    ``prob`` for ``prob`` in [0, 1]. Non-finite ``prob`` raises ``ValueError``.
    """
    q = float(prob)
    if not np.isfinite(q):
        raise ValueError(f"probability must be finite, got {prob!r}")
    t = int(np.floor(q * TWO_32)) if 0.0 < q < 1.0 else (0 if q <= 0.0 else TWO_32)
    return min(max(t, 0), TWO_32)


def below_threshold(u: np.ndarray, threshold: int) -> np.ndarray:
    """Return the boolean array ``u < threshold`` for uint32 ``u`` and a threshold in [0, 2**32].

    Handles ``threshold == 2**32`` (always True), which does not fit in a uint32.
    """
    t = int(threshold)
    if t >= TWO_32:
        return np.ones(np.shape(u), dtype=bool)
    if t <= 0:
        return np.zeros(np.shape(u), dtype=bool)
    return u < np.uint32(t)


def bernoulli_masks(
    key: bytes, streams: Sequence[int] | np.ndarray, n: int, p: float
) -> np.ndarray:
    """Return ``(len(streams), n)`` booleans; row r = ``uniforms_u32(key, streams[r], n) < T(p)``.

    Each entry is True with probability ``T(p) / 2**32``, independently across entries and rows
    (rows with distinct stream numbers). Memory is ``len(streams) * n`` bytes: batch large requests.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    t = threshold_u32(p)
    stream_list = [int(s) for s in np.asarray(streams).reshape(-1)] if len(streams) > 0 else []
    out = np.empty((len(stream_list), int(n)), dtype=bool)
    for r, s in enumerate(stream_list):
        out[r] = below_threshold(uniforms_u32(key, s, int(n)), t)
    return out


def derive_seed(key: bytes, index: int) -> int:
    """Return the uint64 training seed ``LE64^-1(SHA-256(key || b"seed" || LE64(index))[:8])``."""
    _check_key(key)
    i = _check_u64(index, "index")
    digest = hashlib.sha256(bytes(key) + b"seed" + _le64(i)).digest()
    return int.from_bytes(digest[:8], "little")


def derive_seeds(key: bytes, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vector form of :func:`derive_seed`: a uint64 array with one seed per index."""
    idx = np.asarray(indices).reshape(-1)
    return np.fromiter((derive_seed(key, int(i)) for i in idx), dtype=np.uint64, count=idx.size)


def private_key() -> bytes:
    """Return 32 fresh bytes from the OS CSPRNG (``secrets.token_bytes``), for private streams."""
    return secrets.token_bytes(KEY_LEN)
