"""The protocol's parameter checks, one home each: every δ and every ρ is checked here.

Each returns the value as a float or raises ``ValueError`` naming the parameter (``name``: the
option or field the user wrote, such as ``--delta`` or ``parameters.delta``) and its range.
"""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any, name: str, span: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in {span}, got {value!r}") from None


def check_delta(value: Any, name: str = "delta") -> float:
    """δ, a failure probability: finite with 0 < δ < 1."""
    d = _number(value, name, "(0, 1)")
    if not (math.isfinite(d) and 0.0 < d < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return d


def check_rho(value: Any, name: str = "rho") -> float:
    """ρ, the challenge's noise rate: finite with 0 < ρ ≤ 1/2 (so that 2ρ ≤ 1)."""
    r = _number(value, name, "(0, 0.5]")
    if not (math.isfinite(r) and 0.0 < r <= 0.5):
        raise ValueError(
            f"{name} must satisfy 0 < {name} <= 0.5 (so that 2*{name} <= 1), got {value!r}"
        )
    return r
