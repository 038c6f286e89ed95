"""What every decision rule shares: the verdicts, the rule names, the check modes, the evidence a
rule reads and the :class:`Rule` interface itself.

A verdict is a type, not a string compared in many places. ``Verdict.ACCEPT`` is reserved for
runs whose (ε, δ) guarantee holds at the ε the user asked for; a run that certifies only a looser
ε is ``INCONCLUSIVE`` and says which ε it does certify.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np


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


class ClaimRejected(Exception):
    """A rule rejects the claim with certainty, from evidence that needs no δ (``str``: why)."""


class RecordError(Exception):
    """A recorded decision (a certificate's numbers) is malformed or does not imply its verdict;
    ``str`` names the field and the arithmetic that failed."""


class Evidence(Protocol):
    """What every rule asks of a run; the verifier's driver and the simulations implement it.

    Each method returns f-values and the claim's predictions g on the same subsets, in order.
    """

    def mse(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """f (count, Z) and g (count, Z) of the secret sample's members [first, first + count)."""
        ...

    def challenge(
        self, rho: float, first_tuple: int, count: int, predictions: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Reported f (4·count, Z) of challenge tuples [first_tuple, first_tuple + count),
        committed by the prover (and certified in full when every member is checked), and, when
        ``predictions``, the claim's g on those members (else None)."""
        ...

    def spot_check(self, count: int) -> None:
        """Open ``count`` members of the committed rounds, drawn by the verifier's CSPRNG, and
        check each. A failed check ends the run as a reject: the driver raises, a simulation
        records that the prover was caught."""
        ...


@dataclass
class RuleOutcome:
    """What a rule concluded: the verdict, its reason and every number behind it.

    ``details`` is JSON-ready and rule-specific (it becomes the result's details and the
    certificate's decision); ``mse_estimate`` and ``epsilon_estimate`` (Z,) are point estimates
    for reporting (the self-fit estimate), never for deciding.
    """

    verdict: Verdict
    reason: str
    details: dict[str, Any]
    mse_estimate: np.ndarray
    epsilon_estimate: np.ndarray
    self_fit_method: str
    #: The rule's own result (``PracticalOutcome`` or ``Decision``), for callers that know it.
    raw: Any = None


class PlanRequest(Protocol):
    """What a user asks a rule to plan for (``verifier.planning.PlanOptions`` is one)."""

    epsilon: float | None
    epsilon_rel: float | None
    delta: float
    # the practical rule's caps and pilot
    max_mse_samples: int
    max_tuples: int
    pilot_tuples: int
    # the paper's rule at manual sizes
    pairs: int
    spot_checks: int
    mse_samples: int
    rho: float


@dataclass(frozen=True)
class RecordContext:
    """What a certificate says around its decision, checked before the rule rechecks it."""

    num_targets: int
    epsilon: Any  # a number, or one per target
    delta: float
    sizes: dict[str, Any]
    verdict: Verdict  # the verdict the certificate records


class Rule(ABC):
    """A decision rule: it runs against evidence, and re-derives a recorded verdict for the audit.

    Guarantees of every implementation: :meth:`run` says ``ACCEPT`` only when err ≤ ε holds with
    probability ≥ 1 − δ at the requested ε for every target; :meth:`recheck` returns the verdict
    a recorded decision's numbers imply, or raises :class:`RecordError`.
    """

    name: RuleName

    @abstractmethod
    def plan(
        self, request: PlanRequest, task: Any, checks: CheckMode, check_cost: Callable[[], float]
    ) -> Any:
        """The plan this rule runs for ``request`` on ``task`` (δ already checked);
        ``ValueError`` with a readable reason for options it cannot honour. ``check_cost()``
        is the retraining-equivalents of one checked model, asked only if the rule needs it."""

    @abstractmethod
    def run(self, plan: Any, intercepts: Any, coefficients: Any, evidence: Evidence) -> RuleOutcome:
        """Decide on the claim (c, a) from ``evidence``; :class:`ClaimRejected` when the claim
        alone rules it out."""

    @abstractmethod
    def recheck(self, decision: dict[str, Any], record: RecordContext) -> Verdict:
        """The verdict a recorded ``decision`` implies (every derived number recomputed);
        :class:`RecordError` when a number is missing, malformed or inconsistent."""

    @abstractmethod
    def target_lines(self, decision: dict[str, Any]) -> list[str]:
        """One readable line per target saying why it passed or failed (for the audit's summary;
        ``decision`` has passed :meth:`recheck`)."""
