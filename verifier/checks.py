"""How the verifier checks a prover's answers: one class per :class:`CheckMode`.

Each class owns its part of the walk: what it asks for after a committed round, how it
spot-checks, how it gets f on the secret MSE sample M, and what one checked model costs. The
session (``verifier.session``) keeps the state and validates each message; the evidence
(``verifier.evidence``) asks the session's checks and never branches on the mode.

* :class:`RetrainChecks`: nothing after a round; a CSPRNG sample of members opened with Merkle
  proofs and retrained here; M retrained here. One retraining per check.
* :class:`CertifyEveryMember`: every round opened in full with weights, its tree rebuilt and every
  member certified (no lie escapes); M's models supplied by the prover and certified. One gradient
  pass per check.
* :class:`CertifySampledMembers`: a CSPRNG sample opened with proofs and weights and certified;
  M supplied and certified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

from protocol.rules.base import CheckMode
from protocol.tasks.base import Progress, Task
from verifier.session import Rejection, VerificationError, VerifierSession

#: Models requested per SupplyModels call (certified checks).
SUPPLY_BATCH = 1024

T = TypeVar("T")


def take_at_most(stream: Iterable[T], count: int) -> list[T]:
    """The stream's messages, read one at a time; ``Rejection`` as soon as one arrives past
    ``count``, so a prover streaming without end costs the verifier ``count`` messages of memory,
    not its whole stream."""
    out: list[T] = []
    for message in stream:
        if len(out) >= count:
            raise Rejection(f"prover sent more than the {count} models asked for")
        out.append(message)
    return out


class Checks(ABC):
    """One check mode's share of a run. Every method raises ``Rejection`` when the prover is
    caught and ``VerificationError`` for a malformed or missing answer."""

    mode: CheckMode

    @abstractmethod
    def after_round(self, session: VerifierSession, transport: Any) -> None:
        """Called once each challenge round is committed; checks it if this mode checks every
        member as it arrives (nothing to do otherwise)."""

    @abstractmethod
    def spot_check(self, session: VerifierSession, transport: Any, count: int) -> None:
        """Check ``count`` members of the committed rounds drawn by the session's CSPRNG (nothing
        to do when every member was already checked)."""

    @abstractmethod
    def mse(
        self,
        session: VerifierSession,
        transport: Any,
        first: int,
        count: int,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """f (count, Z) on M's members [first, first + count), each one checked."""

    def cost_per_model(self, task: Task) -> float:
        """Retraining-equivalents one checked model costs (for sizing; runs measure it)."""
        return 1.0


class _SampledMembers(Checks):
    """What both sampled modes share: nothing after a round, then a CSPRNG sample of members
    opened with Merkle proofs (and weights when the session's mode certifies) and checked."""

    def after_round(self, session: VerifierSession, transport: Any) -> None:
        """Nothing: members are checked by a sample drawn after the last round."""

    def spot_check(self, session: VerifierSession, transport: Any, count: int) -> None:
        """Open ``count`` members and check each: retrained here, or certified from its weights."""
        for opening in transport.open(session.open_request(count)):
            session.ingest_opening(opening)
        session.check_spot_openings()


class _SuppliedModels(Checks):
    """What both certified modes share: M supplied by the prover and certified, and the cost of
    one gradient pass."""

    def mse(
        self,
        session: VerifierSession,
        transport: Any,
        first: int,
        count: int,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Reveal M's key, take the prover's models for [first, first + count) in batches and
        certify each; ``VerificationError`` when fewer arrive than were asked for."""
        parts = []
        for lo in range(first, first + count, SUPPLY_BATCH):
            n = min(SUPPLY_BATCH, first + count - lo)
            models = take_at_most(transport.supply_models(session.models_request(lo, n)), n)
            if len(models) != n:
                raise VerificationError(
                    f"prover supplied {len(models)} of the {n} MSE-sample models asked for"
                )
            parts.append(session.ingest_models(lo, models))
            if progress is not None:
                progress(n)
        return np.concatenate(parts, axis=0)

    def cost_per_model(self, task: Task) -> float:
        """The measured gradient-pass cost of one certification, in retrainings."""
        from verifier.certified import certified_cost

        per = certified_cost(task, 1000)
        return float(per["gradient_pass_retraining_equivalents"]) / 1000.0


class RetrainChecks(_SampledMembers):
    """Sampled spot checks, each by retraining here; M retrained here."""

    mode = CheckMode.RETRAIN

    def mse(
        self,
        session: VerifierSession,
        transport: Any,
        first: int,
        count: int,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Retrain M's members here (the prover never learns M)."""
        return session.retrain_mse(first, count)


class CertifyEveryMember(_SuppliedModels):
    """Every member of every round opened with its weights and certified as the round arrives."""

    mode = CheckMode.CERTIFIED

    def after_round(self, session: VerifierSession, transport: Any) -> None:
        """Open the round in full, rebuild its Merkle root and certify every member."""
        for batch in transport.open_all(session.open_all_request()):
            session.ingest_opening_batch(batch)
        session.verify_round()

    def spot_check(self, session: VerifierSession, transport: Any, count: int) -> None:
        """Nothing: every member was certified with its round."""


class CertifySampledMembers(_SampledMembers, _SuppliedModels):
    """Sampled spot checks, each opened with its weights and certified; M supplied and
    certified."""

    mode = CheckMode.CERTIFIED_SPOT


_BY_MODE: dict[CheckMode, type[Checks]] = {
    c.mode: c for c in (RetrainChecks, CertifyEveryMember, CertifySampledMembers)
}


def checks_for(mode: CheckMode) -> Checks:
    """The checks of ``mode``."""
    return _BY_MODE[mode]()
