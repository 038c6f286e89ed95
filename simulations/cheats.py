"""Cheating prover strategies by ``NAME:STRENGTH`` (``simulations serve scale:0.5``).

The full catalogue lives in :mod:`simulations.adversaries`; this module keeps the original public
names (``ScaleCheat``, ``FabricateCheat``, ``CHEATS``, ``parse_cheat``, ``make_cheat``) and exposes
every adversary through them. ``prover serve`` has no cheat door: production code never imports
this package.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protocol.tasks.base import Task
from prover.strategy import Attribution, ChallengeRetrainer, HonestStrategy
from simulations.adversaries import ADVERSARIES, ALIASES, Lazy, Scale

#: a → s·a (see :class:`simulations.adversaries.Scale` for its err).
ScaleCheat = Scale
#: The lazy prover: fabricates a fraction q of its f-values (:class:`simulations.adversaries.Lazy`).
FabricateCheat = Lazy

StrategyFactory = Callable[..., HonestStrategy]

CHEATS: dict[str, type[HonestStrategy]] = {
    **ADVERSARIES,
    **{alias: ADVERSARIES[name] for alias, name in ALIASES.items()},
}


def parse_cheat(text: str) -> tuple[str, float]:
    """Parse ``NAME:STRENGTH`` (e.g. ``scale:0.5``); raises ``ValueError`` naming valid cheats."""
    name, sep, value = text.partition(":")
    if name not in CHEATS:
        raise ValueError(f"unknown cheat {name!r}; available: {', '.join(sorted(CHEATS))}")
    if not sep:
        raise ValueError(f"cheat {name!r} needs a strength, e.g. {name}:0.5")
    try:
        strength = float(value)
    except ValueError as exc:
        raise ValueError(f"cheat strength must be a number, got {value!r}") from exc
    if not np.isfinite(strength):
        raise ValueError(f"cheat strength must be finite, got {value!r}")
    return name, strength


def make_cheat(
    name: str,
    strength: float,
    task: Task,
    attribution: Attribution,
    retrainer: ChallengeRetrainer | None = None,
) -> HonestStrategy:
    """Instantiate the named cheating strategy (default attack context)."""
    return CHEATS[name](task, attribution, strength, retrainer=retrainer)  # type: ignore[call-arg]
