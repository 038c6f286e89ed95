"""Typed reading of recorded decisions (a certificate's JSON), for a rule's :meth:`recheck`.

Every reader raises :class:`protocol.rules.base.RecordError` naming the field, so a malformed or
hostile document becomes a readable failure, never a crash or a silent default.
"""

from __future__ import annotations

import math
from typing import Any

from protocol.rules.base import RecordError

#: Relative tolerance for numbers a record derives from others (they are recomputed with the same
#: float64 operations, so in practice they agree exactly).
REL_TOL = 1e-9


def _finite_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def read(
    d: Any, key: str, kind: type | tuple[type, ...], where: str, nullable: bool = False
) -> Any:
    """``d[key]`` checked to be of ``kind`` (a float is finite and not a bool; an int is not a
    bool); ``None`` only when ``nullable``."""
    if not isinstance(d, dict) or key not in d:
        raise RecordError(f"missing field {where}{key}")
    v = d[key]
    if v is None and nullable:
        return None
    if kind is float:
        if not _finite_number(v):
            raise RecordError(f"field {where}{key} must be a finite number, got {v!r}")
        return float(v)
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise RecordError(f"field {where}{key} must be an integer, got {v!r}")
    if not isinstance(v, kind):
        raise RecordError(f"field {where}{key} has the wrong type ({type(v).__name__})")
    return v


def read_vector(
    d: dict[str, Any], key: str, z: int, where: str, nullable_items: bool = False
) -> list:
    """``d[key]`` as a list of exactly ``z`` finite floats (``None`` items when allowed)."""
    v = read(d, key, list, where)
    if len(v) != z:
        raise RecordError(f"field {where}{key} has {len(v)} entries, expected Z = {z}")
    out: list[float | None] = []
    for x in v:
        if x is None and nullable_items:
            out.append(None)
        elif not _finite_number(x):
            raise RecordError(f"field {where}{key} must hold finite numbers, got {x!r}")
        else:
            out.append(float(x))
    return out


def close(a: float, b: float) -> bool:
    """True when ``a`` and ``b`` agree within :data:`REL_TOL` (absolute below 1)."""
    return abs(a - b) <= REL_TOL * max(1.0, abs(a), abs(b))
