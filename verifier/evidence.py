"""A rule's evidence over a live session: M, the pilot, the challenge rounds and spot checks.

:class:`TransportEvidence` implements :class:`protocol.rules.practical.PracticalEvidence` (every
rule's :class:`protocol.rules.base.Evidence` plus the pilot) on a ``VerifierSession`` and a
``ProverTransport``: the MSE sample is retrained here or supplied by the prover and certified; the
sizing pilot is always retrained here (its seed is public and recorded); a challenge round is
committed by the prover and, when every member is certified, opened in full and certified before
its values are used; otherwise a CSPRNG sample of members is opened and checked on request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

from protocol.decision import datamodel_predictions
from protocol.rules.base import CheckMode
from protocol.rules.practical import PilotData, merge_pilots, pilot_data
from protocol.tasks.base import Progress
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


class TransportEvidence:
    """Evidence for any rule from one session over one transport."""

    def __init__(
        self, session: VerifierSession, transport: Any, progress: Progress | None = None
    ) -> None:
        self.session = session
        self.transport = transport
        self.progress = progress
        self._pilot: PilotData | None = None

    def _predict(self, masks: np.ndarray) -> np.ndarray:
        s = self.session
        return datamodel_predictions(masks, s.intercepts, s.coefficients)

    def mse(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """f and g on M's members [first, first + count): supplied and certified, or retrained."""
        s = self.session
        if s.checks.certified:
            parts = []
            for lo in range(first, first + count, SUPPLY_BATCH):
                n = min(SUPPLY_BATCH, first + count - lo)
                models = take_at_most(self.transport.supply_models(s.models_request(lo, n)), n)
                if len(models) != n:
                    raise VerificationError(
                        f"prover supplied {len(models)} of the {n} MSE-sample models asked for"
                    )
                parts.append(s.ingest_models(lo, models))
                if self.progress is not None:
                    self.progress(n)
            f = np.concatenate(parts, axis=0)
        else:
            f = s.retrain_mse(first, count)
        return f, self._predict(s.mse_sample.masks(np.arange(first, first + count)))

    def pilot(self, num_tuples: int) -> PilotData:
        """The seeded pilot's first ``num_tuples`` tuples, retrained here (a prefix is reused)."""
        s = self.session
        have = 0 if self._pilot is None else self._pilot.num_tuples
        if have >= num_tuples:
            assert self._pilot is not None
            return self._pilot

        def retrain(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
            return s.task.retrain(masks, seeds).f

        new = pilot_data(retrain, self._predict, num_tuples, s.N, s.task.p,
                         s.plan.pilot_seed, first=have)  # type: ignore[union-attr]  # fmt: skip
        s.local_retrainings += new.retrainings
        s.pilot_retrainings += new.retrainings
        self._pilot = merge_pilots(self._pilot, new)
        return self._pilot

    def challenge(
        self, rho: float, first_tuple: int, count: int, predictions: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One round: committed by the prover, and certified in full under certified checks."""
        s = self.session
        if first_tuple != s.num_tuples:
            raise VerificationError(f"round starts at {first_tuple}, expected {s.num_tuples}")
        for chunk in self.transport.commit(s.challenge_request(rho, count)):
            s.ingest_commit(chunk)
        f = s.require_commitment()
        if s.checks is CheckMode.CERTIFIED:
            for batch in self.transport.open_all(s.open_all_request()):
                s.ingest_opening_batch(batch)
            s.verify_round()
        g = None
        if predictions:
            rnd = s.rounds[-1].round
            g = self._predict(rnd.spec.member_masks(rnd.members))
        if self.progress is not None:
            self.progress(4 * count)
        return f, g

    def spot_check(self, count: int) -> None:
        """Open ``count`` members (at most every member) drawn by the session's CSPRNG and check
        each; ``Rejection`` on the first failure. Nothing to do when every member was certified
        as its round arrived."""
        s = self.session
        if s.checks.all_members:
            return
        for opening in self.transport.open(s.open_request(min(count, s.num_members))):
            s.ingest_opening(opening)
        s.check_spot_openings()
