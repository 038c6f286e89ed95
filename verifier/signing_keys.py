"""Which Ed25519 public keys a certificate may name.

A small-order public key A (8·A = identity: the identity itself and the seven other torsion
points) admits signatures that no one holds a private key for: with A = identity, the signature
(R = identity, S = 0) satisfies S·B = R + h·A for every message. A non-canonical encoding
(y ≥ p) names the same point under another string. Both are refused before any signature check.
"""

from __future__ import annotations

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode(encoded: bytes) -> tuple[int, int] | None:
    """The point an encoding names (RFC 8032 §5.1.3), or ``None`` if not canonical or not on
    the curve."""
    if len(encoded) != 32:
        return None
    n = int.from_bytes(encoded, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else (0, y)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(point: tuple[int, int]) -> tuple[int, int]:
    x, y = point
    t = _D * x * x * y * y % _P
    x3 = 2 * x * y * pow(1 + t, _P - 2, _P) % _P
    y3 = (y * y + x * x) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def weak_key_reason(public_key: bytes) -> str | None:
    """``None`` for a usable Ed25519 public key; else why it cannot vouch for anything
    (non-canonical, not on the curve, or of small order)."""
    point = _decode(public_key)
    if point is None:
        return "not a canonical encoding of a curve point"
    for _ in range(3):
        point = _double(point)
    if point == (0, 1):
        return "of small order (8·A = identity): signatures under it need no private key"
    return None
