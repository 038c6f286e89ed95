"""Cheating prover strategies. Each is clearly adversarial and overrides one honest stage.

On the synthetic task the error of each cheat is known in closed form (see the docstrings), so
tests can check that the verifier rejects exactly when it should.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from protocol.challenges import ChallengeSpec
from protocol.decision import datamodel_predictions
from protocol.tasks.base import Task
from prover.strategy import Attribution, ChallengeRetrainer, HonestStrategy


class ScaleCheat(HonestStrategy):
    """Sends a → s·a (keeping c), e.g. to pay data owners a fraction s of their due.

    On the synthetic task: err = (f̂(∅) − c − μ s Σa_i)² + σ² ‖s a − a*‖²; for the exact a* and
    p = 1/2 this is σ² (1 − s)² ‖a*‖² = (1 − s)² B_1.
    """

    label = "scale"
    adversarial = True

    def __init__(self, task: Task, attribution: Attribution, strength: float, **kw: object) -> None:
        super().__init__(task, attribution, **kw)  # type: ignore[arg-type]
        self.strength = strength

    def attribution(self) -> Attribution:
        """The honest attribution with every coefficient multiplied by the strength."""
        honest = super().attribution()
        return Attribution(
            intercepts=honest.intercepts,
            coefficients=honest.coefficients * self.strength,
            method=f"{honest.method}, scaled by {self.strength:g}",
            num_samples=honest.num_samples,
        )


class FabricateCheat(HonestStrategy):
    """Lazy prover: replaces a fraction q of its f-values with its own datamodel's predictions.

    The fabricated values are what a prover that skips retraining would send: g(x) pulled into
    the declared output range. They hide the residual weight of those members (lowering the
    residual estimate), and any spot check that lands on one finds a mismatch.
    """

    label = "fabricate"
    adversarial = True

    def __init__(self, task: Task, attribution: Attribution, strength: float, **kw: object) -> None:
        super().__init__(task, attribution, **kw)  # type: ignore[arg-type]
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"fabricate fraction must be in [0, 1], got {strength}")
        self.strength = strength

    def tamper(
        self, spec: ChallengeSpec, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Overwrite a random fraction ``strength`` of the members with datamodel predictions."""
        rng = np.random.default_rng(int.from_bytes(spec.public_seed[:8], "little"))
        n = len(f_values)
        chosen = np.sort(rng.choice(n, size=round(self.strength * n), replace=False))
        if len(chosen) == 0:
            return f_values, seeds, digests
        model = super().attribution()
        b = self.task.output_bound
        fake = datamodel_predictions(
            spec.member_masks(chosen), model.intercepts, model.coefficients
        )
        f_values = f_values.copy()
        f_values[chosen] = np.clip(fake, -b, b)
        digests = list(digests)
        for i in chosen:
            digests[int(i)] = hashlib.sha256(b"fabricated" + f_values[i].tobytes()).digest()
        return f_values, seeds, digests


StrategyFactory = Callable[..., HonestStrategy]

CHEATS: dict[str, type[HonestStrategy]] = {"scale": ScaleCheat, "fabricate": FabricateCheat}


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
    """Instantiate the named cheating strategy."""
    return CHEATS[name](task, attribution, strength, retrainer=retrainer)  # type: ignore[call-arg]
