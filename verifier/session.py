"""The verifier's side of one protocol run, as plain Python (no grpc).

The gRPC client feeds it messages; tests drive it directly. It never accepts unless every step
succeeded: any malformed or inconsistent message raises ``VerificationError`` (verdict "error") or
``Rejection`` (verdict "reject").
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import PROTOCOL_VERSION, merkle
from protocol.accounting import Plan
from protocol.certify import supports_certified_checks
from protocol.challenges import ChallengeSpec, PrivateSample, draw_spot_checks, public_seed
from protocol.decision import datamodel_predictions, datamodel_range, decide, mse_estimate
from protocol.residual import estimate_residual
from protocol.tasks.base import Progress, Task, TaskIdentity
from protocol.transcript import Transcript
from verifier.certificate import CHECK_MODES
from verifier.certified import (
    CertificationFailure,
    CertifiedOpenings,
    certify_members,
    certify_supplied,
)

#: Largest |c| or |a_i| accepted: anything bigger would overflow float64 predictions.
MAX_ATTRIBUTION_MAGNITUDE = 1e100


class VerificationError(Exception):
    """The run could not be completed (transport fault, malformed message, task mismatch)."""


class Rejection(Exception):
    """The prover was caught: a bad opening, a failed spot check, or an inconsistent answer."""


@dataclass
class LocalWork:
    """The verifier's own retrainings: the spot-check members and the private MSE sample."""

    spot_f: np.ndarray
    spot_digests: list[bytes]
    mse_masks: np.ndarray
    mse_f: np.ndarray
    retrainings: int
    seconds: float


@dataclass
class VerificationResult:
    """The outcome of one run, with every number behind it."""

    verdict: str
    reason: str
    epsilon: float
    delta: float
    num_train_points: int
    #: Retrainings, or retraining-equivalents (a float) when checks are certified.
    verifier_retrainings: float
    prover_retrainings: int
    mse_hat: list[float] | None = None
    residual_hat: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 accepted, 1 rejected, 2 error."""
        return {"accept": 0, "reject": 1}.get(self.verdict, 2)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the required top-level fields and the details."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mse_hat": self.mse_hat,
            "residual_hat": self.residual_hat,
            "verifier_retrainings": self.verifier_retrainings,
            "prover_retrainings": self.prover_retrainings,
            "num_train_points": self.num_train_points,
            **self.details,
        }


class VerifierSession:
    """One run against one prover. Secret state (C, M) is drawn from a CSPRNG at construction."""

    def __init__(
        self, task: Task, plan: Plan, selector: str | None = None, checks: str = "retrain"
    ) -> None:
        if checks not in CHECK_MODES:
            raise ValueError(f"checks must be one of {', '.join(CHECK_MODES)}, got {checks!r}")
        if checks != "retrain" and not supports_certified_checks(task):
            raise ValueError(
                f"task {task.name!r} does not support certified checks (it is not strongly "
                "convex); use --checks retrain"
            )
        self.task = task
        self.plan = plan
        self.checks = checks
        self.selector = selector or task.selector
        self.N = task.num_train_points
        self.Z = task.num_targets
        self.spec = ChallengeSpec(
            public_seed=public_seed(),
            num_tuples=plan.pairs_per_level,
            rho=plan.rho,
            num_train_points=self.N,
            p=task.p,
        )
        self.spot_indices = draw_spot_checks(self.spec.num_members, plan.spot_checks)
        self.practical = plan.mode == "practical"
        sample_size = plan.mse_samples
        if self.practical:
            sample_size = max(
                plan.mse_samples,
                getattr(plan, "variance_samples", 0),
                getattr(plan, "max_mse_samples", 0),
            )
        self.mse_sample = PrivateSample.fresh(sample_size, self.N, task.p)
        self.local_retrainings = 0
        self.transcript = Transcript()
        self.session_id = ""
        self.intercepts = np.full(self.Z, np.nan)
        self.coefficients = np.full((self.Z, self.N), np.nan)
        self._coef_filled = np.zeros(self.Z, dtype=np.int64)
        self._intercept_seen = np.zeros(self.Z, dtype=bool)
        self.f_values = np.full((self.spec.num_members, self.Z), np.nan)
        self._next_f = 0
        self.root: bytes | None = None
        self.prover_retrainings = 0
        self.openings: dict[int, pb.Opening] = {}
        #: certified-spot: opened weights, row r for spot_indices[r], and which rows arrived
        self._spot_weights: np.ndarray | None = None
        self._spot_opened = np.zeros(len(self.spot_indices), dtype=bool)
        self.timings: dict[str, float] = {}
        self._certified: CertifiedOpenings | None = None
        self.certified_summary: dict[str, float] | None = None
        self.mse_f_parts: list[np.ndarray] = []
        self.models_received = 0

    # ---- local work -------------------------------------------------------------------------
    def start_local_work(
        self, executor: ThreadPoolExecutor, progress: Progress | None = None
    ) -> Future[LocalWork]:
        """Start retraining C and M in the background (they are known from the start)."""
        return executor.submit(self._local_work, progress)

    @property
    def supplies_models(self) -> bool:
        """True when the prover trains M and the verifier certifies it (certified check modes)."""
        return self.checks != "retrain"

    def _local_work(self, progress: Progress | None) -> LocalWork:
        started = time.monotonic()
        spot_masks = self.spec.member_masks(self.spot_indices)
        spot_seeds = self.spec.member_seeds(self.spot_indices)
        # Practical mode consumes M sequentially later (and may stop early): only C here.
        none = np.zeros(0, dtype=np.int64)
        mse_masks = self.mse_sample.masks(none if self.practical else None)
        mse_seeds = self.mse_sample.seeds(none if self.practical else None)
        masks = np.concatenate([spot_masks, mse_masks], axis=0)
        seeds = np.concatenate([spot_seeds, mse_seeds]).astype(np.uint64)
        result = self.task.retrain(masks, seeds, progress=progress)
        k = len(self.spot_indices)
        return LocalWork(
            spot_f=np.asarray(result.f[:k], dtype=np.float64),
            spot_digests=list(result.weights_digests[:k]),
            mse_masks=mse_masks,
            mse_f=np.asarray(result.f[k:], dtype=np.float64),
            retrainings=len(masks),
            seconds=time.monotonic() - started,
        )

    # ---- step 1: hello ----------------------------------------------------------------------
    def hello_request(self) -> pb.HelloRequest:
        """Our task identity, computed locally: the prover's description is never trusted."""
        ident = self.task.identity()
        msg = pb.HelloRequest(
            protocol_version=PROTOCOL_VERSION,
            task=pb.TaskIdentity(**{**ident.as_fields(), "selector": self.selector}),
        )
        self.transcript.append_message("v2p", msg)
        return msg

    def check_hello(self, reply: pb.HelloReply) -> None:
        """Compare task hashes before anything else; raises ``VerificationError`` on mismatch."""
        self.transcript.append_message("p2v", reply)
        if reply.protocol_version != PROTOCOL_VERSION:
            raise VerificationError(
                f"prover speaks protocol {reply.protocol_version!r}, we speak {PROTOCOL_VERSION!r}"
            )
        theirs = TaskIdentity.from_message(reply.task)
        mismatch = self.task.identity().mismatch(theirs)
        if mismatch:
            raise VerificationError(mismatch)
        if not reply.session_id:
            raise VerificationError("prover returned no session id")
        self.session_id = reply.session_id

    # ---- step 2: challenge and commitment ---------------------------------------------------
    def challenge_request(self) -> pb.ChallengeRequest:
        """The public challenge: seed and sizes. Reveals nothing about C or M."""
        msg = pb.ChallengeRequest(
            session_id=self.session_id,
            public_seed=self.spec.public_seed,
            num_tuples=self.spec.num_tuples,
            rho=self.spec.rho,
        )
        self.transcript.append_message("v2p", msg)
        return msg

    def ingest(self, chunk: pb.CommitChunk) -> None:
        """Validate and store one commitment chunk; raises ``VerificationError`` if malformed."""
        self.transcript.append_message("p2v", chunk)
        if self.root is not None:
            raise VerificationError("prover sent data after its Merkle root")
        kind = chunk.WhichOneof("part")
        if kind == "attribution":
            self._ingest_attribution(chunk.attribution)
        elif kind == "f_values":
            self._ingest_f_values(chunk.f_values)
        elif kind == "root":
            self._ingest_root(chunk.root)
        else:
            raise VerificationError("prover sent an empty commitment chunk")

    def _ingest_attribution(self, part: pb.AttributionPart) -> None:
        t = part.target
        if t >= self.Z:
            raise VerificationError(f"attribution for target {t}, but the task has {self.Z}")
        if self._next_f:
            raise VerificationError("attribution must precede the f-values")
        values = np.asarray(part.coefficients, dtype=np.float64)
        if part.offset != self._coef_filled[t] or part.offset + len(values) > self.N:
            raise VerificationError(
                f"attribution part for target {t} at offset {part.offset} with {len(values)} "
                f"values does not continue the {self._coef_filled[t]} received (N = {self.N})"
            )
        if not np.all(np.isfinite(values)) or not np.isfinite(part.intercept):
            raise VerificationError(f"attribution for target {t} contains non-finite numbers")
        if np.any(np.abs(values) > MAX_ATTRIBUTION_MAGNITUDE) or (
            abs(part.intercept) > MAX_ATTRIBUTION_MAGNITUDE
        ):
            raise VerificationError(
                f"attribution for target {t} has a number above {MAX_ATTRIBUTION_MAGNITUDE:g} in "
                "magnitude: too large to evaluate predictions without overflow"
            )
        if self._intercept_seen[t] and part.intercept != self.intercepts[t]:
            raise VerificationError(f"target {t}'s intercept changed between parts")
        self.intercepts[t] = part.intercept
        self._intercept_seen[t] = True
        self.coefficients[t, part.offset : part.offset + len(values)] = values
        self._coef_filled[t] += len(values)

    def _ingest_f_values(self, part: pb.FValuesPart) -> None:
        if not np.all(self._coef_filled == self.N):
            raise VerificationError("f-values arrived before the complete attribution")
        values = np.asarray(part.values, dtype=np.float64)
        if part.first_index != self._next_f:
            raise VerificationError(
                f"f-values part starts at {part.first_index}, expected {self._next_f}"
            )
        if part.count == 0 or len(values) != part.count * self.Z:
            raise VerificationError(
                f"f-values part claims {part.count} members but carries {len(values)} numbers "
                f"(Z = {self.Z})"
            )
        if self._next_f + part.count > self.spec.num_members:
            raise VerificationError(f"more f-values than the {self.spec.num_members} challenges")
        b = self.task.output_bound
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > b):
            raise VerificationError(
                f"f-values must be finite and within the task's output bound [-{b:g}, {b:g}]"
            )
        self.f_values[self._next_f : self._next_f + part.count] = values.reshape(-1, self.Z)
        self._next_f += int(part.count)

    def _ingest_root(self, root: pb.CommitmentRoot) -> None:
        if self._next_f != self.spec.num_members:
            raise VerificationError(
                f"Merkle root arrived after {self._next_f} of {self.spec.num_members} f-values"
            )
        if len(root.merkle_root) != 32:
            raise VerificationError("Merkle root must be 32 bytes")
        if root.num_leaves != self.spec.num_members:
            raise VerificationError(
                f"root commits to {root.num_leaves} leaves, expected {self.spec.num_members}"
            )
        self.root = bytes(root.merkle_root)
        self.prover_retrainings = max(int(root.prover_retrainings), self.spec.num_members)

    def require_commitment(self) -> None:
        """Raise ``VerificationError`` unless a complete commitment has arrived."""
        if self.root is None:
            raise VerificationError(
                "prover ended its answer before sending a Merkle root "
                f"({self._next_f} of {self.spec.num_members} f-values received)"
            )

    # ---- step 3: reveal C and check openings ------------------------------------------------
    def open_request(self) -> pb.OpenRequest:
        """Reveal the spot-check set C — only after the complete commitment arrived."""
        self.require_commitment()
        if self.checks == "certified":
            raise VerificationError("certified checks open every challenge: use open_all_request")
        with_weights = self.checks == "certified-spot"
        if with_weights:
            dim = self.task.design.dim  # type: ignore[attr-defined]
            self._spot_weights = np.empty((len(self.spot_indices), dim))
        msg = pb.OpenRequest(
            session_id=self.session_id,
            indices=self.spot_indices.tolist(),
            with_weights=with_weights,
        )
        self.transcript.append_message("v2p", msg)
        return msg

    def open_all_request(self) -> pb.OpenAllRequest:
        """Certified mode: ask for every challenge with its weights, after the full commitment."""
        self.require_commitment()
        if self.checks != "certified":
            raise VerificationError("open_all is only for certified checks")
        assert self.root is not None
        self._certified = CertifiedOpenings(self.task, self.spec, self.f_values, self.root)
        msg = pb.OpenAllRequest(session_id=self.session_id)
        self.transcript.append_message("v2p", msg)
        return msg

    def ingest_opening_batch(self, batch: pb.OpeningBatch) -> None:
        """Certified mode: check one batch of openings; raises ``Rejection`` when bad."""
        self.transcript.append_message("p2v", batch)
        if self._certified is None:
            raise VerificationError("opening batch arrived before open_all was requested")
        try:
            self._certified.add_batch(batch)
        except CertificationFailure as exc:
            raise Rejection(str(exc)) from exc

    def ingest_opening(self, opening: pb.Opening) -> None:
        """Check one opening against the root; raises ``Rejection`` on a bad opening."""
        self.transcript.append_message("p2v", opening)
        index = int(opening.index)
        if index >= self.spec.num_members:
            raise Rejection(f"prover opened challenge {index}, which is not in E")
        row = int(np.searchsorted(self.spot_indices, index))
        if row >= len(self.spot_indices) or int(self.spot_indices[row]) != index:
            raise Rejection(f"prover opened challenge {index}, which was not asked for")
        if index in self.openings or self._spot_opened[row]:
            raise Rejection(f"prover opened challenge {index} twice")
        expected_seed = int(self.spec.member_seeds([index])[0])
        if opening.seed != expected_seed:
            raise Rejection(
                f"opening of challenge {index} uses seed {opening.seed}, not its assigned seed "
                f"{expected_seed}"
            )
        committed = self.f_values[index]
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
        assert self.root is not None
        if not merkle.verify_proof(
            self.root, self.spec.num_members, index, leaf, [bytes(p) for p in opening.proof]
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

    def require_all_openings(self) -> None:
        """Raise ``Rejection`` unless every index of C was opened (and, certified, checks out)."""
        if self._certified is not None:
            if self.certified_summary is None:
                try:
                    self.certified_summary = self._certified.verify()
                except CertificationFailure as exc:
                    raise Rejection(str(exc)) from exc
            return
        if self._spot_weights is not None:
            missing_rows = np.flatnonzero(~self._spot_opened)
            if len(missing_rows):
                raise Rejection(
                    f"prover did not open {len(missing_rows)} of {len(self.spot_indices)} "
                    "spot-checked challenges (first missing: "
                    f"{int(self.spot_indices[missing_rows[0]])})"
                )
            if self.certified_summary is None:
                try:
                    summary = certify_members(
                        self.task,
                        self.spec,
                        self.spot_indices,
                        self._spot_weights,
                        self.f_values[self.spot_indices],
                    )
                except CertificationFailure as exc:
                    raise Rejection(str(exc)) from exc
                self.certified_summary = {**summary, "sampled": True}
            return
        missing = sorted(set(self.spot_indices.tolist()) - set(self.openings))
        if missing:
            raise Rejection(
                f"prover did not open {len(missing)} of {len(self.spot_indices)} spot-checked "
                f"challenges (first missing: {missing[0]})"
            )

    # ---- step 4: local checks and decision --------------------------------------------------
    def spot_check(self, local: LocalWork) -> dict[str, Any]:
        """CHECKEQUIV on every member of C; raises ``Rejection`` on the first mismatch."""
        tau = self.task.tolerance
        committed = self.f_values[self.spot_indices]
        diffs = np.abs(committed - local.spot_f)
        worst = float(diffs.max()) if diffs.size else 0.0
        bad_rows = np.nonzero(diffs.max(axis=1) > tau)[0] if diffs.size else []
        if len(bad_rows):
            r = int(bad_rows[0])
            raise Rejection(
                f"spot check failed on challenge {int(self.spot_indices[r])}: the prover committed "
                f"f = {committed[r].tolist()}, our retraining gives {local.spot_f[r].tolist()} "
                f"(|diff| {diffs[r].max():.3g} > tolerance {tau:g}); "
                f"{len(bad_rows)} of {len(self.spot_indices)} spot checks failed"
            )
        if self.task.bitwise_deterministic:
            for r, index in enumerate(self.spot_indices.tolist()):
                if bytes(self.openings[index].weights_digest) != local.spot_digests[r]:
                    raise Rejection(
                        f"spot check failed on challenge {index}: weights digest differs from "
                        "our retraining (the task is bitwise deterministic)"
                    )
        return {
            "spot_checks": len(self.spot_indices),
            "max_abs_diff": worst,
            "tolerance": tau,
            "abs_diffs": diffs.max(axis=1).tolist() if diffs.size else [],
        }

    # ---- step 3b (certified): the prover trains the revealed MSE sample ------------------------
    def models_request(self, first: int, count: int) -> pb.ModelsRequest:
        """Reveal M's key and ask for models [first, first + count) — only after the openings."""
        if not self.supplies_models or self.certified_summary is None:
            raise VerificationError("the MSE sample may be revealed only after certified openings")
        msg = pb.ModelsRequest(
            session_id=self.session_id, sample_key=self.mse_sample.key, first=first, count=count
        )
        self.transcript.append_message("v2p", msg)
        return msg

    def ingest_models(self, first: int, models: list[pb.SuppliedModel]) -> None:
        """Certify a batch of supplied MSE-sample models; raises ``Rejection`` on failure."""
        for m in models:
            self.transcript.append_message("p2v", m)
        indices = np.arange(first, first + len(models))
        try:
            f = certify_supplied(self.task, self.mse_sample, indices, models)
        except CertificationFailure as exc:
            raise Rejection(str(exc)) from exc
        self.mse_f_parts.append(f)
        self.models_received += len(models)

    def certified_local_work(self) -> LocalWork:
        """The MSE sample as certified from supplied models (no local retraining)."""
        count = self.models_received
        if count != self.plan.mse_samples:
            raise VerificationError(
                f"prover supplied {count} of the {self.plan.mse_samples} MSE-sample models"
            )
        return LocalWork(
            spot_f=np.zeros((0, self.Z)),
            spot_digests=[],
            mse_masks=self.mse_sample.masks(),
            mse_f=np.concatenate(self.mse_f_parts, axis=0),
            retrainings=0,
            seconds=0.0,
        )

    def retrain_mse(self, first: int, count: int) -> np.ndarray:
        """Retrain MSE-sample members [first, first + count) locally; their f-values (count, Z)."""
        idx = np.arange(first, first + count)
        result = self.task.retrain(self.mse_sample.masks(idx), self.mse_sample.seeds(idx))
        self.local_retrainings += count
        f = np.asarray(result.f, dtype=np.float64)
        self.mse_f_parts.append(f)
        return f

    def consumed_mse_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Subsets and f-values of the MSE-sample members evaluated so far (sequential modes).

        Members are consumed in index order, so these are members 0 … count−1 of M.
        """
        if not self.mse_f_parts:
            return np.zeros((0, self.N), dtype=bool), np.zeros((0, self.Z))
        f = np.concatenate(self.mse_f_parts, axis=0)
        return self.mse_sample.masks(np.arange(len(f))), f

    def decide_practical(self, outcome: Any, local: LocalWork | None) -> VerificationResult:
        """The practical-mode result: spot checks (if any) passed; the sequential decision."""
        self.require_all_openings()
        if self.supplies_models:
            spot: dict[str, Any] = {"mode": self.checks, **(self.certified_summary or {})}
        else:
            assert local is not None
            spot = self.spot_check(local)
        decision = outcome.decision
        eps = [float(e) for e in outcome.epsilon]
        verdict = "accept" if decision.verdict == "accept" else "reject"
        return VerificationResult(
            verdict=verdict,
            reason=f"{decision.reason}; {outcome.stop_reason}",
            epsilon=eps[0] if len(eps) == 1 else eps,  # type: ignore[arg-type]
            delta=self.plan.delta,
            num_train_points=self.N,
            verifier_retrainings=self.local_retrainings + (local.retrainings if local else 0),
            prover_retrainings=self.prover_retrainings,
            # No MSE sample consumed (verdict settled beforehand) leaves no estimate: null, not NaN.
            mse_hat=[float(v) if np.isfinite(v) else None for v in decision.mse_estimate],
            residual_hat=[float(v) if np.isfinite(v) else None for v in outcome.residual.estimate],
            details={
                "mode": "practical",
                "decision": decision.to_dict(),
                "stop_reason": outcome.stop_reason,
                "mse_samples_used": outcome.mse_samples_used,
                "plan": self.plan.to_dict(),
                "spot_check": spot,
                "merkle_root": self.root.hex() if self.root else None,
                "transcript_hash": self.transcript.hexdigest,
            },
        )

    def decide(self, local: LocalWork) -> VerificationResult:
        """Spot checks, residual estimate, MSE on the private sample, and the decision rule."""
        self.require_all_openings()
        if self.supplies_models:
            spot: dict[str, Any] = {"mode": self.checks, **(self.certified_summary or {})}
        else:
            spot = self.spot_check(local)
        residual = estimate_residual(self.f_values, self.spec.rho)
        predictions = datamodel_predictions(local.mse_masks, self.intercepts, self.coefficients)
        mse_hat = mse_estimate(local.mse_f, predictions)
        ranges = datamodel_range(self.intercepts, self.coefficients)
        decision = decide(self.plan, residual, mse_hat, ranges)
        return VerificationResult(
            verdict=decision.verdict,
            reason=decision.reason,
            epsilon=self.plan.epsilon,
            delta=self.plan.delta,
            num_train_points=self.N,
            verifier_retrainings=local.retrainings,
            prover_retrainings=self.prover_retrainings,
            mse_hat=[float(v) for v in mse_hat],
            residual_hat=[float(v) for v in residual.residual],
            details={
                "decision": decision.to_dict(),
                "spot_check": spot,
                "merkle_root": self.root.hex() if self.root else None,
                "transcript_hash": self.transcript.hexdigest,
            },
        )
