"""What every decision rule shares: the verdicts, the rule names and the check modes.

A verdict is a type, not a string compared in many places. ``Verdict.ACCEPT`` is reserved for
runs whose (ε, δ) guarantee holds at the ε the user asked for; a run that certifies only a looser
ε is ``INCONCLUSIVE`` and says which ε it does certify.
"""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    """The outcome of one verification run, with its process exit code."""

    ACCEPT = "accept"
    REJECT = "reject"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"

    @property
    def exit_code(self) -> int:
        """0 accept, 1 reject, 2 error, 3 inconclusive (the guarantee holds only at a looser ε)."""
        return {"accept": 0, "reject": 1, "error": 2, "inconclusive": 3}[self.value]

    @classmethod
    def parse(cls, text: str) -> Verdict:
        """The verdict named ``text``; ``ValueError`` for anything else."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown verdict {text!r}") from None


class RuleName(Enum):
    """The decision rules a verifier can run (``--mode``)."""

    PRACTICAL = "practical"  # the default: claim first, anytime-valid bounds, ACCEPT only if met
    MANUAL = "manual"  # the paper's rule at sizes the user gives (for study)
    THEORY = "theory"  # the paper's rule at its worst-case sizes (for study)

    @property
    def is_paper(self) -> bool:
        """True for the paper's rule msê ≤ B̂≥2 + ε/2 (manual or theory sizes)."""
        return self is not RuleName.PRACTICAL

    @classmethod
    def of(cls, text: object) -> RuleName | None:
        """The rule a document names (``"mode"`` in a result or certificate), or ``None`` when it
        names none or an unknown one: parse once at the boundary, then compare types."""
        return next((r for r in cls if r.value == text), None)


class CheckMode(Enum):
    """How the verifier checks the prover's challenge answers."""

    RETRAIN = "retrain"  # sampled spot checks, each by retraining
    CERTIFIED = "certified"  # every member certified from its weights (one gradient pass each)
    CERTIFIED_SPOT = "certified-spot"  # sampled spot checks, each certified from its weights

    @property
    def certified(self) -> bool:
        """True when checks read the prover's weights instead of retraining."""
        return self is not CheckMode.RETRAIN

    @property
    def all_members(self) -> bool:
        """True when every challenge member is checked (no lie can escape)."""
        return self is CheckMode.CERTIFIED

    @classmethod
    def of(cls, text: object) -> CheckMode | None:
        """The check mode a document names (a spot-check record's ``"mode"``), or ``None`` when it
        names none or an unknown one."""
        return next((c for c in cls if c.value == text), None)
