"""A rule's evidence over a live session: M, the pilot, the challenge rounds and spot checks.

:class:`TransportEvidence` implements :class:`protocol.rules.practical.PracticalEvidence` (every
rule's :class:`protocol.rules.base.Evidence` plus the pilot) on a ``VerifierSession`` and a
``ProverTransport``: the MSE sample is retrained here or supplied by the prover and certified; the
sizing pilot is always retrained here (its seed is public and recorded); a challenge round is
committed by the prover and, when every member is certified, opened in full and certified before
its values are used; otherwise a CSPRNG sample of members is opened and checked on request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.decision import datamodel_predictions
from protocol.rules.practical import PilotData, merge_pilots, pilot_data
from protocol.tasks.base import Progress
from verifier.checks import checks_for
from verifier.session import VerificationError, VerifierSession


class TransportEvidence:
    """Evidence for any rule from one session over one transport."""

    def __init__(
        self, session: VerifierSession, transport: Any, progress: Progress | None = None
    ) -> None:
        self.session = session
        self.transport = transport
        self.progress = progress
        self.checks = checks_for(session.checks)
        self._pilot: PilotData | None = None

    def _predict(self, masks: np.ndarray) -> np.ndarray:
        s = self.session
        return datamodel_predictions(masks, s.intercepts, s.coefficients)

    def mse(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """f and g on M's members [first, first + count), checked as the session's checks say
        (supplied and certified, or retrained here)."""
        s = self.session
        f = self.checks.mse(s, self.transport, first, count, self.progress)
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
        self.checks.after_round(s, self.transport)
        g = None
        if predictions:
            rnd = s.rounds[-1].round
            g = self._predict(rnd.spec.member_masks(rnd.members))
        if self.progress is not None:
            self.progress(4 * count)
        return f, g

    def spot_check(self, count: int) -> None:
        """Check ``count`` members drawn by the session's CSPRNG (at most every member), as the
        session's checks say; ``Rejection`` on the first failure."""
        self.checks.spot_check(self.session, self.transport, count)
