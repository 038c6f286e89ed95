"""The verifier's side of one protocol run, as plain Python (no grpc).

The driver (``verifier.driver``) feeds it messages; tests drive it directly. It never accepts
unless every step succeeded: a malformed or inconsistent message raises ``VerificationError``
(verdict "error"), a caught prover ``Rejection`` (verdict "reject").

Order: Hello, Claim (the attribution, before any randomness the verdict uses exists), then the
rule's evidence — the secret MSE sample M (retrained here, or supplied and certified), challenge
rounds from a public seed drawn only after the claim (each opened in full when every member is
certified) — and finally the secret spot checks over every round when checks are sampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION, merkle
from protocol.accounting import Plan
from protocol.certify import supports_certified_checks
from protocol.challenges import (
    ChallengeRound,
    ChallengeSpec,
    PrivateSample,
    draw_spot_checks,
    public_seed,
)
from protocol.claim import MAX_MAGNITUDE, check_claim, claim_digest
from protocol.rules.base import CheckMode, Verdict
from protocol.rules.practical import PracticalPlan
from protocol.tasks.base import Task, TaskIdentity
from protocol.transcript import Transcript
from protocol.untrusted import printable, quote
from verifier.certified import (
    CertificationFailure,
    CertifiedOpenings,
    certify_members,
    certify_supplied,
)


class VerificationError(Exception):
    """The run could not be completed (transport fault, malformed message, task mismatch)."""


class Rejection(Exception):
    """The prover was caught: a bad opening, a failed spot check, or an inconsistent answer."""


@dataclass
class VerificationResult:
    """The outcome of one run, with every number behind it."""

    verdict: str
    reason: str
    epsilon: Any
    delta: float
    num_train_points: int
    #: Retrainings, or retraining-equivalents (a float) when checks are certified.
    verifier_retrainings: float
    prover_retrainings: int
    mse_hat: list[float | None] | None = None
    residual_hat: list[float | None] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 accepted, 1 rejected, 2 error, 3 inconclusive (guarantee not met at ε)."""
        try:
            return Verdict.parse(self.verdict).exit_code
        except ValueError:
            return Verdict.ERROR.exit_code

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the details, then the required top-level fields (``epsilon`` is the
        ε judged against: a number for one target, else one per target)."""
        return {
            **self.details,
            "verdict": self.verdict,
            "reason": self.reason,
            "guarantee_met": self.verdict == Verdict.ACCEPT.value,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mse_hat": self.mse_hat,
            "residual_hat": self.residual_hat,
            "verifier_retrainings": self.verifier_retrainings,
            "prover_retrainings": self.prover_retrainings,
            "num_train_points": self.num_train_points,
        }


@dataclass
class _Round:
    round: ChallengeRound
    f_values: np.ndarray
    next_f: int = 0
    root: bytes | None = None
    reported_retrainings: int = 0
    certified: CertifiedOpenings | None = None


class VerifierSession:
    """One run against one prover. Secret state (M, later C) is drawn from a CSPRNG."""

    def __init__(
        self,
        task: Task,
        plan: PracticalPlan | Plan,
        selector: str | None = None,
        checks: CheckMode = CheckMode.RETRAIN,
    ) -> None:
        if not isinstance(checks, CheckMode):
            raise TypeError(f"checks must be a CheckMode, got {checks!r}")
        if checks.certified and not supports_certified_checks(task):
            raise ValueError(
                f"task {task.name!r} does not support certified checks (it is not strongly "
                "convex); use --checks retrain"
            )
        self.task = task
        self.plan = plan
        self.rule = plan.rule
        self.checks = checks
        self.selector = selector or task.selector
        self.N = task.num_train_points
        self.Z = task.num_targets
        size = plan.mse_cap if isinstance(plan, PracticalPlan) else plan.mse_samples
        self.mse_sample = PrivateSample.fresh(max(int(size), 1), self.N, task.p)
        self.transcript = Transcript()
        self.session_id = ""
        # the claim
        self.intercepts = np.full(self.Z, np.nan)
        self.coefficients = np.full((self.Z, self.N), np.nan)
        self._coef_filled = np.zeros(self.Z, dtype=np.int64)
        self._intercept_seen = np.zeros(self.Z, dtype=bool)
        self.claim_summary: pb.ClaimSummary | None = None
        # challenge rounds
        self._public_seed: bytes | None = None
        self._rho: float | None = None
        self.rounds: list[_Round] = []
        # spot checks
        self.spot_indices = np.zeros(0, dtype=np.int64)
        self.openings: dict[int, pb.Opening] = {}
        self._spot_weights: np.ndarray | None = None
        self._spot_opened = np.zeros(0, dtype=bool)
        self.spot_summary: dict[str, Any] | None = None
        # costs
        self.local_retrainings = 0
        self.pilot_retrainings = 0
        self.certified_models = 0
        self.models_received = 0
        self.mse_f_parts: list[np.ndarray] = []
        self.timings: dict[str, float] = {}

    # ---- step 1: hello ----------------------------------------------------------------------
    def hello_request(self) -> pb.HelloRequest:
        """Our task identity, computed locally: the prover's description is never trusted."""
        ident = self.task.identity()
        return pb.HelloRequest(
            protocol_version=PROTOCOL_VERSION,
            task=pb.TaskIdentity(**{**ident.as_fields(), "selector": self.selector}),
        )

    def check_hello(self, reply: pb.HelloReply) -> None:
        """Compare task hashes before anything else; raises ``VerificationError`` on mismatch."""
        if reply.protocol_version != PROTOCOL_VERSION:
            raise VerificationError(
                f"prover speaks protocol {quote(reply.protocol_version)}, "
                f"we speak {PROTOCOL_VERSION!r}"
            )
        theirs = TaskIdentity.from_message(reply.task)
        mismatch = self.task.identity().mismatch(theirs)
        if mismatch:
            raise VerificationError(printable(mismatch, 1_000))
        if not reply.session_id:
            raise VerificationError("prover returned no session id")
        self.session_id = reply.session_id

    # ---- step 2: the claim ------------------------------------------------------------------
    def claim_request(self) -> pb.ClaimRequest:
        """Ask for the claim (c, a)."""
        return pb.ClaimRequest(session_id=self.session_id)

    def ingest_claim(self, chunk: pb.ClaimChunk) -> None:
        """Validate and store one claim chunk; raises ``VerificationError`` if malformed."""
        if self.claim_summary is not None:
            raise VerificationError("prover sent claim data after its summary")
        kind = chunk.WhichOneof("part")
        if kind == "attribution":
            self._ingest_attribution(chunk.attribution)
        elif kind == "summary":
            self._ingest_summary(chunk.summary)
        else:
            raise VerificationError("prover sent an empty claim chunk")

    def _ingest_attribution(self, part: pb.AttributionPart) -> None:
        t = part.target
        if t >= self.Z:
            raise VerificationError(f"attribution for target {t}, but the task has {self.Z}")
        values = np.asarray(part.coefficients, dtype=np.float64)
        if part.offset != self._coef_filled[t] or part.offset + len(values) > self.N:
            raise VerificationError(
                f"attribution part for target {t} at offset {part.offset} with {len(values)} "
                f"values does not continue the {self._coef_filled[t]} received (N = {self.N})"
            )
        if not np.all(np.isfinite(values)) or not np.isfinite(part.intercept):
            raise VerificationError(f"attribution for target {t} contains non-finite numbers")
        if np.any(np.abs(values) > MAX_MAGNITUDE) or abs(part.intercept) > MAX_MAGNITUDE:
            raise VerificationError(
                f"attribution for target {t} has a number above {MAX_MAGNITUDE:g} in "
                "magnitude: too large to evaluate predictions without overflow"
            )
        if self._intercept_seen[t] and part.intercept != self.intercepts[t]:
            raise VerificationError(f"target {t}'s intercept changed between parts")
        self.intercepts[t] = part.intercept
        self._intercept_seen[t] = True
        self.coefficients[t, part.offset : part.offset + len(values)] = values
        self._coef_filled[t] += len(values)

    def _ingest_summary(self, summary: pb.ClaimSummary) -> None:
        if not np.all(self._coef_filled == self.N) or not np.all(self._intercept_seen):
            raise VerificationError(
                "claim summary arrived before the complete attribution "
                f"({int(self._coef_filled.sum())} of {self.Z * self.N} coefficients)"
            )
        try:
            check_claim(self.intercepts, self.coefficients, self.Z, self.N)
        except ValueError as exc:
            raise VerificationError(str(exc)) from exc
        if bytes(summary.digest) != claim_digest(self.intercepts, self.coefficients):
            raise VerificationError("the claim's digest does not match its attribution")
        self.claim_summary = summary

    def require_claim(self) -> None:
        """Raise ``VerificationError`` unless a complete claim has arrived."""
        if self.claim_summary is None:
            raise VerificationError(
                "prover ended its claim before the summary "
                f"({int(self._coef_filled.sum())} of {self.Z * self.N} coefficients received)"
            )

    @property
    def claim_digest_hex(self) -> str | None:
        """The claim's digest (hex), once it has arrived."""
        return None if self.claim_summary is None else bytes(self.claim_summary.digest).hex()

    # ---- challenge rounds -------------------------------------------------------------------
    @property
    def num_tuples(self) -> int:
        """Tuples committed so far, over every round."""
        return int(self.rounds[-1].round.spec.num_tuples) if self.rounds else 0

    @property
    def num_members(self) -> int:
        """Challenge members committed so far."""
        return 4 * self.num_tuples

    @property
    def public_seed(self) -> bytes | None:
        """The challenge stream's public seed (drawn at the first round, after the claim)."""
        return self._public_seed

    def challenge_request(self, rho: float, count: int) -> pb.ChallengeRequest:
        """The next round: ``count`` tuples after the last. The first call draws the public seed
        from the CSPRNG — only after the claim, so the claim cannot depend on it."""
        self.require_claim()
        if self.rounds and self.rounds[-1].root is None:
            raise VerificationError("the previous round has no commitment yet")
        if self.spot_indices.size:
            raise VerificationError("no round may follow the spot checks")
        if self._public_seed is None:
            self._public_seed, self._rho = public_seed(), float(rho)
        elif float(rho) != self._rho:
            raise VerificationError("every round of a session uses the same rho")
        first = self.num_tuples
        spec = ChallengeSpec(
            public_seed=self._public_seed,
            num_tuples=first + int(count),
            rho=float(rho),
            num_train_points=self.N,
            p=self.task.p,
        )
        rnd = ChallengeRound(spec, first)
        self.rounds.append(_Round(rnd, np.full((rnd.num_members, self.Z), np.nan)))
        return pb.ChallengeRequest(
            session_id=self.session_id,
            public_seed=self._public_seed,
            num_tuples=int(count),
            rho=float(rho),
            first_tuple=first,
        )

    def ingest_commit(self, chunk: pb.CommitChunk) -> None:
        """Validate and store one chunk of the current round; ``VerificationError`` if malformed."""
        if not self.rounds:
            raise VerificationError("commitment data arrived before any challenge")
        cur = self.rounds[-1]
        if cur.root is not None:
            raise VerificationError("prover sent data after the round's Merkle root")
        kind = chunk.WhichOneof("part")
        if kind == "f_values":
            self._ingest_f_values(cur, chunk.f_values)
        elif kind == "root":
            self._ingest_root(cur, chunk.root)
        else:
            raise VerificationError("prover sent an empty commitment chunk")

    def _ingest_f_values(self, cur: _Round, part: pb.FValuesPart) -> None:
        first = cur.round.first_member
        values = np.asarray(part.values, dtype=np.float64)
        if part.first_index != first + cur.next_f:
            raise VerificationError(
                f"f-values part starts at {part.first_index}, expected {first + cur.next_f}"
            )
        if part.count == 0 or len(values) != part.count * self.Z:
            raise VerificationError(
                f"f-values part claims {part.count} members but carries {len(values)} numbers "
                f"(Z = {self.Z})"
            )
        if cur.next_f + part.count > cur.round.num_members:
            raise VerificationError(
                f"more f-values than the round's {cur.round.num_members} challenges"
            )
        b = self.task.output_bound
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > b):
            raise VerificationError(
                f"f-values must be finite and within the task's output bound [-{b:g}, {b:g}]"
            )
        cur.f_values[cur.next_f : cur.next_f + part.count] = values.reshape(-1, self.Z)
        cur.next_f += int(part.count)

    def _ingest_root(self, cur: _Round, root: pb.CommitmentRoot) -> None:
        n = cur.round.num_members
        if cur.next_f != n:
            raise VerificationError(f"Merkle root arrived after {cur.next_f} of {n} f-values")
        if len(root.merkle_root) != 32:
            raise VerificationError("Merkle root must be 32 bytes")
        if root.num_leaves != n:
            raise VerificationError(f"root commits to {root.num_leaves} leaves, expected {n}")
        cur.root = bytes(root.merkle_root)
        cur.reported_retrainings = int(root.prover_retrainings)

    def require_commitment(self) -> np.ndarray:
        """The current round's f-values; ``VerificationError`` unless its root arrived."""
        cur = self.rounds[-1] if self.rounds else None
        if cur is None or cur.root is None:
            got = 0 if cur is None else cur.next_f
            total = 0 if cur is None else cur.round.num_members
            raise VerificationError(
                f"prover ended its answer before sending a Merkle root ({got} of {total} "
                "f-values received)"
            )
        return cur.f_values

    @property
    def f_values(self) -> np.ndarray:
        """Every committed f-value so far, (|E|, Z) in member order."""
        if not self.rounds:
            return np.zeros((0, self.Z))
        return np.concatenate([r.f_values for r in self.rounds], axis=0)

    def member_masks(self, indices: np.ndarray) -> np.ndarray:
        """Subsets of global challenge members (the last round's spec covers every member)."""
        return self.rounds[-1].round.spec.member_masks(indices)

    # ---- certified checks of every member -----------------------------------------------------
    def open_all_request(self) -> pb.OpenAllRequest:
        """Certified checks: open every member of the current round with its weights."""
        self.require_commitment()
        if self.checks is not CheckMode.CERTIFIED:
            raise VerificationError("open_all is only for certified checks of every member")
        cur = self.rounds[-1]
        assert cur.root is not None
        cur.certified = CertifiedOpenings(self.task, cur.round, cur.f_values, cur.root)
        return pb.OpenAllRequest(session_id=self.session_id, round=len(self.rounds) - 1)

    def ingest_opening_batch(self, batch: pb.OpeningBatch) -> None:
        """Check one batch of a round's openings; raises ``Rejection`` when bad."""
        cur = self.rounds[-1] if self.rounds else None
        if cur is None or cur.certified is None:
            raise VerificationError("opening batch arrived before open_all was requested")
        try:
            cur.certified.add_batch(batch)
        except CertificationFailure as exc:
            raise Rejection(str(exc)) from exc

    def verify_round(self) -> dict[str, float]:
        """Rebuild the round's root and certify every member; ``Rejection`` on any failure."""
        cur = self.rounds[-1]
        assert cur.certified is not None
        try:
            summary = cur.certified.verify()
        except CertificationFailure as exc:
            raise Rejection(str(exc)) from exc
        self.certified_models += cur.round.num_members
        prev = self.spot_summary or {"certified_models": 0, "max_grad_norm": 0.0,
                                     "max_f_error_bound": 0.0}  # fmt: skip
        self.spot_summary = {
            "mode": CheckMode.CERTIFIED.value,
            "certified_models": prev["certified_models"] + summary["certified_models"],
            "max_grad_norm": max(prev["max_grad_norm"], summary["max_grad_norm"]),
            "max_f_error_bound": max(prev["max_f_error_bound"], summary["max_f_error_bound"]),
            "tolerance": self.task.tolerance,
        }
        return summary

    # ---- sampled spot checks, after the last round --------------------------------------------
    def open_request(self, k: int) -> pb.OpenRequest:
        """Reveal the spot-check set C: k members uniform over every round (CSPRNG), drawn only
        now, after every round is committed."""
        self.require_commitment()
        if self.checks is CheckMode.CERTIFIED:
            raise VerificationError("certified checks open every member: use open_all_request")
        if self.spot_indices.size:
            raise VerificationError("the spot checks were already revealed")
        self.spot_indices = draw_spot_checks(self.num_members, int(k))
        self._spot_opened = np.zeros(len(self.spot_indices), dtype=bool)
        with_weights = self.checks is CheckMode.CERTIFIED_SPOT
        if with_weights:
            dim = self.task.design.dim  # type: ignore[attr-defined]
            self._spot_weights = np.empty((len(self.spot_indices), dim))
        return pb.OpenRequest(
            session_id=self.session_id,
            indices=self.spot_indices.tolist(),
            with_weights=with_weights,
        )

    def _round_of(self, index: int) -> _Round:
        for r in self.rounds:
            if r.round.first_member <= index < r.round.spec.num_members:
                return r
        raise Rejection(f"prover opened challenge {index}, which is not in E")

    def ingest_opening(self, opening: pb.Opening) -> None:
        """Check one opening against its round's root; raises ``Rejection`` on a bad opening."""
        index = int(opening.index)
        rnd = self._round_of(index)
        row = int(np.searchsorted(self.spot_indices, index))
        if row >= len(self.spot_indices) or int(self.spot_indices[row]) != index:
            raise Rejection(f"prover opened challenge {index}, which was not asked for")
        if index in self.openings or self._spot_opened[row]:
            raise Rejection(f"prover opened challenge {index} twice")
        spec = rnd.round.spec
        expected_seed = int(spec.member_seeds([index])[0])
        if opening.seed != expected_seed:
            raise Rejection(
                f"opening of challenge {index} uses seed {opening.seed}, not its assigned seed "
                f"{expected_seed}"
            )
        local = index - rnd.round.first_member
        committed = rnd.f_values[local]
        opened = np.asarray(opening.f_values, dtype=np.float64)
        if opened.shape != committed.shape or not np.array_equal(opened, committed):
            raise Rejection(
                f"opening of challenge {index} shows f-values {opened.tolist()} but the prover "
                f"committed {committed.tolist()} (equivocation)"
            )
        try:
            leaf = merkle.leaf_hash(index, expected_seed, committed, bytes(opening.weights_digest))
        except ValueError as exc:
            raise Rejection(f"opening of challenge {index} is malformed: {exc}") from exc
        assert rnd.root is not None
        if not merkle.verify_proof(
            rnd.root, rnd.round.num_members, local, leaf, [bytes(p) for p in opening.proof]
        ):
            raise Rejection(
                f"opening of challenge {index} does not match the committed Merkle root"
            )
        if self._spot_weights is not None:  # certified-spot: the weights must open the digest
            from protocol.certify import check_weights_opening

            try:
                self._spot_weights[row] = check_weights_opening(
                    bytes(opening.weights),
                    bytes(opening.weights_digest),
                    self._spot_weights.shape[1],
                )
            except ValueError as exc:
                raise Rejection(f"opening of challenge {index}: {exc}") from exc
            self._spot_opened[row] = True  # the message itself is not kept (k can be 10⁵–10⁶)
            return
        self.openings[index] = opening

    def check_spot_openings(self) -> dict[str, Any]:
        """Every member of C opened and checked: by retraining here, or certified from its
        weights. Raises ``Rejection`` on the first failure; returns a summary."""
        if self._spot_weights is not None:
            missing_rows = np.flatnonzero(~self._spot_opened)
            if len(missing_rows):
                raise Rejection(
                    f"prover did not open {len(missing_rows)} of {len(self.spot_indices)} "
                    "spot-checked challenges (first missing: "
                    f"{int(self.spot_indices[missing_rows[0]])})"
                )
            try:
                summary = certify_members(
                    self.task,
                    self.rounds[-1].round.spec,
                    self.spot_indices,
                    self._spot_weights,
                    self.f_values[self.spot_indices],
                )
            except CertificationFailure as exc:
                raise Rejection(str(exc)) from exc
            self.certified_models += len(self.spot_indices)
            self.spot_summary = {"mode": self.checks.value, **summary, "sampled": True}
            return self.spot_summary
        missing = sorted(set(self.spot_indices.tolist()) - set(self.openings))
        if missing:
            raise Rejection(
                f"prover did not open {len(missing)} of {len(self.spot_indices)} spot-checked "
                f"challenges (first missing: {missing[0]})"
            )
        self.spot_summary = self._retrain_spot_checks()
        return self.spot_summary

    def _retrain_spot_checks(self) -> dict[str, Any]:
        """CHECKEQUIV on every member of C by retraining it here."""
        tau = self.task.tolerance
        idx = self.spot_indices
        spec = self.rounds[-1].round.spec
        result = self.task.retrain(spec.member_masks(idx), spec.member_seeds(idx))
        self.local_retrainings += len(idx)
        local_f = np.asarray(result.f, dtype=np.float64)
        committed = self.f_values[idx]
        diffs = np.abs(committed - local_f)
        worst = float(diffs.max()) if diffs.size else 0.0
        bad_rows = np.nonzero(diffs.max(axis=1) > tau)[0] if diffs.size else []
        if len(bad_rows):
            r = int(bad_rows[0])
            raise Rejection(
                f"spot check failed on challenge {int(idx[r])}: the prover committed "
                f"f = {committed[r].tolist()}, our retraining gives {local_f[r].tolist()} "
                f"(|diff| {diffs[r].max():.3g} > tolerance {tau:g}); "
                f"{len(bad_rows)} of {len(idx)} spot checks failed"
            )
        if self.task.bitwise_deterministic:
            for r, index in enumerate(idx.tolist()):
                if bytes(self.openings[index].weights_digest) != result.weights_digests[r]:
                    raise Rejection(
                        f"spot check failed on challenge {index}: weights digest differs from "
                        "our retraining (the task is bitwise deterministic)"
                    )
        return {
            "mode": CheckMode.RETRAIN.value,
            "spot_checks": len(idx),
            "max_abs_diff": worst,
            "tolerance": tau,
            "abs_diffs": diffs.max(axis=1).tolist() if diffs.size else [],
        }

    # ---- the MSE sample ---------------------------------------------------------------------
    def models_request(self, first: int, count: int) -> pb.ModelsRequest:
        """Reveal M's key and ask for models [first, first + count) — only after the claim."""
        self.require_claim()
        if not self.checks.certified:
            raise VerificationError("the MSE sample is supplied only under certified checks")
        return pb.ModelsRequest(
            session_id=self.session_id, sample_key=self.mse_sample.key, first=first, count=count
        )

    def ingest_models(self, first: int, models: list[pb.SuppliedModel]) -> np.ndarray:
        """Certify a batch of supplied MSE-sample models; their f-values (``Rejection`` if bad)."""
        indices = np.arange(first, first + len(models))
        try:
            f = certify_supplied(self.task, self.mse_sample, indices, models)
        except CertificationFailure as exc:
            raise Rejection(str(exc)) from exc
        self.mse_f_parts.append(f)
        self.models_received += len(models)
        self.certified_models += len(models)
        return f

    def retrain_mse(self, first: int, count: int) -> np.ndarray:
        """Retrain MSE-sample members [first, first + count) here; their f-values (count, Z)."""
        idx = np.arange(first, first + count)
        result = self.task.retrain(self.mse_sample.masks(idx), self.mse_sample.seeds(idx))
        self.local_retrainings += count
        f = np.asarray(result.f, dtype=np.float64)
        self.mse_f_parts.append(f)
        return f

    def consumed_mse_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Subsets and f-values of the MSE-sample members evaluated so far (in index order)."""
        if not self.mse_f_parts:
            return np.zeros((0, self.N), dtype=bool), np.zeros((0, self.Z))
        f = np.concatenate(self.mse_f_parts, axis=0)
        return self.mse_sample.masks(np.arange(len(f))), f

    # ---- what the prover said it spent ---------------------------------------------------------
    @property
    def prover_retrainings_reported(self) -> int:
        """The prover's own count (its datamodel, every round, the supplied models); unverified."""
        reported = max((r.reported_retrainings for r in self.rounds), default=0)
        datamodel = int(self.claim_summary.datamodel_samples) if self.claim_summary else 0
        return max(reported, datamodel + self.num_members + self.models_received)

    @property
    def prover_retrainings_verified(self) -> int:
        """Retrainings the prover provably did for this run: committed members + supplied models."""
        return self.num_members + self.models_received

    def timing(self, name: str, started: float) -> None:
        """Record a step's wall time."""
        self.timings[name] = time.monotonic() - started
