"""Certified checks for strongly convex tasks: check a challenge from its weights, not a retrain.

For a λ-strongly-convex objective ‖w − w*_S‖ ≤ ‖∇L_S(w)‖/λ, and f is Lipschitz in w, so one
gradient pass over the subset bounds how far the claimed model's f can be from the true
retraining's (``protocol.certify``). With ``--checks certified`` the verifier opens *every*
challenge with its weights, rebuilds the Merkle tree from the leaves, and certifies all of them: no
lie escapes (m* = 0), at a cost of one gradient pass per challenge. With ``--checks
certified-spot`` it opens only the secret spot-check set C (each with its Merkle proof and
weights) and certifies those (:func:`certify_members`): the lie allowance m* is then charged as
with retraining spot checks, but each check costs one gradient pass instead of a retraining.
The MSE sample M is trained by the prover after M's key is revealed, and certified the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol import merkle
from protocol.certify import certify_models
from protocol.challenges import ChallengeRound, ChallengeSpec, PrivateSample
from protocol.tasks.base import Task

#: Committed f-values must equal the outputs recomputed from the opened weights up to this much
#: float noise (the prover computes them from the same weights).
RECOMPUTE_TOLERANCE = 1e-9


class CertificationFailure(Exception):
    """The prover's opened weights do not certify its committed answers."""


@dataclass
class CertifiedOpenings:
    """Collects one round's all-member opening stream (in batches) and checks it at the end.

    ``committed_f`` holds the round's committed rows; batches carry global member indices.
    """

    task: Task
    round: ChallengeRound
    committed_f: np.ndarray
    root: bytes
    received: int = 0
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    digests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        dim = self.task.design.dim  # type: ignore[attr-defined]
        self.weights = np.empty((self.round.num_members, dim))

    def add_batch(self, batch: pb.OpeningBatch) -> None:
        """Check one batch in stream order: indices, seeds, f-values and weights digests."""
        offset = self.round.first_member
        first, count = int(batch.first_index) - offset, int(batch.count)
        n, dim = self.weights.shape
        z = self.committed_f.shape[1]
        if first != self.received:
            raise CertificationFailure(
                f"openings must arrive in index order: batch starts at {int(batch.first_index)}, "
                f"expected {offset + self.received}"
            )
        if count < 1 or first + count > n:
            raise CertificationFailure(
                f"opening batch [{offset + first}, {offset + first + count}) is not in the round"
            )
        if (
            len(batch.f_values) != count * z
            or len(batch.seeds) != count
            or len(batch.weights_digests) != 32 * count
            or len(batch.weights) != 8 * dim * count
        ):
            raise CertificationFailure(
                f"opening batch at {offset + first} is malformed: sizes do not match {count} "
                "members"
            )
        opened = np.asarray(batch.f_values, dtype=np.float64).reshape(count, z)
        committed = self.committed_f[first : first + count]
        if not np.array_equal(opened, committed):
            r = int(np.nonzero(np.any(opened != committed, axis=1))[0][0])
            raise CertificationFailure(
                f"opening of challenge {offset + first + r} shows f-values {opened[r].tolist()} "
                f"but the prover committed {committed[r].tolist()} (equivocation)"
            )
        expected = self.round.spec.member_seeds(np.arange(offset + first, offset + first + count))
        seeds = np.asarray(batch.seeds, dtype=np.uint64)
        if not np.array_equal(seeds, expected):
            r = int(np.nonzero(seeds != expected)[0][0])
            raise CertificationFailure(
                f"opening of challenge {offset + first + r} uses seed {int(seeds[r])}, not its "
                f"assigned seed {int(expected[r])}"
            )
        blob = bytes(batch.weights)
        digests = bytes(batch.weights_digests)
        width = 8 * dim
        for r in range(count):
            piece = blob[r * width : (r + 1) * width]
            digest = digests[32 * r : 32 * (r + 1)]
            if hashlib.sha256(piece).digest() != digest:
                raise CertificationFailure(
                    f"opening of challenge {offset + first + r}: its weights do not hash to its "
                    "digest"
                )
            self.digests.append(digest)
        w = np.frombuffer(blob, dtype="<f8").reshape(count, dim)
        if not np.all(np.isfinite(w)):
            raise CertificationFailure(
                f"opening batch at {offset + first} holds non-finite weights"
            )
        self.weights[first : first + count] = w
        self.received += count

    def verify(self, batch_size: int = 8192) -> dict[str, float]:
        """Rebuild the Merkle root from every leaf and certify every model.

        Raises ``CertificationFailure`` naming the first challenge that fails. Returns summary
        numbers: models certified, largest gradient norm and largest certified f-error bound.
        """
        n = self.round.num_members
        if self.received != n:
            raise CertificationFailure(f"prover opened {self.received} of {n} challenges")
        indices = self.round.members
        seeds = self.round.spec.member_seeds(indices)
        leaves = merkle.build_leaves(indices, seeds, self.committed_f, self.digests)
        if merkle.MerkleTree(leaves).root != self.root:
            raise CertificationFailure(
                "the opened leaves do not rebuild the committed Merkle root (equivocation)"
            )
        return certify_members(self.task, self.round.spec, indices, self.weights,
                               self.committed_f, batch_size)  # fmt: skip


def certify_members(
    task: Task,
    spec: ChallengeSpec,
    indices: np.ndarray,
    weights: np.ndarray,
    committed_f: np.ndarray,
    batch_size: int = 8192,
) -> dict[str, float]:
    """Certify challenge members ``indices`` from their opened ``weights`` (one row each).

    Each member passes iff its gradient norm on the member's own subset (derived here from
    ``spec``, never taken from the prover) bounds |f − f*| by ≤ τ, and its committed f-values
    (``committed_f``, rows aligned with ``indices``) equal the weights' own outputs up to
    :data:`RECOMPUTE_TOLERANCE`. A passing committed value is then within τ + that tolerance of
    the exact optimum's output. Raises ``CertificationFailure`` naming the first failing member;
    returns the number certified, the largest gradient norm and the largest f-error bound.
    """
    indices = np.asarray(indices, dtype=np.int64)
    tau = task.tolerance
    worst_grad = worst_bound = 0.0
    for lo in range(0, len(indices), batch_size):
        hi = min(len(indices), lo + batch_size)
        idx = indices[lo:hi]
        check = certify_models(task, weights[lo:hi], spec.member_masks(idx))  # type: ignore[arg-type]
        ok = check.passed(committed_f[lo:hi], RECOMPUTE_TOLERANCE)
        if not np.all(ok):
            r = int(np.nonzero(~ok)[0][0])
            raise CertificationFailure(
                f"certified check failed on challenge {int(idx[r])}: gradient norm "
                f"{check.grad_norms[r]:.3g} bounds |f − f*| only by "
                f"{check.f_error_bound[r]:.3g} (τ = {tau:g}), or the committed f "
                f"{committed_f[lo + r].tolist()} is not the model's own output "
                f"{check.f_values[r].tolist()}"
            )
        worst_grad = max(worst_grad, float(check.grad_norms.max()))
        worst_bound = max(worst_bound, float(check.f_error_bound.max()))
    return {
        "certified_models": len(indices),
        "max_grad_norm": worst_grad,
        "max_f_error_bound": worst_bound,
        "tolerance": tau,
    }


def certify_supplied(
    task: Task, sample: PrivateSample, indices: np.ndarray, models: list[pb.SuppliedModel]
) -> np.ndarray:
    """Certify supplied MSE-sample models; return their f-values (K, Z).

    Raises ``CertificationFailure`` when a model is missing, malformed, for the wrong index, or
    not certified within τ.
    """
    if [m.index for m in models] != indices.tolist():
        raise CertificationFailure(
            f"prover supplied models {[m.index for m in models][:5]}… for the requested "
            f"MSE-sample indices {indices.tolist()[:5]}…"
        )
    from protocol.certify import weights_from_bytes

    dim = task.design.dim  # type: ignore[attr-defined]
    try:
        weights = np.stack([weights_from_bytes(bytes(m.weights), dim) for m in models])
    except ValueError as exc:
        raise CertificationFailure(f"malformed supplied model: {exc}") from exc
    check = certify_models(task, weights, sample.masks(indices))  # type: ignore[arg-type]
    ok = check.certified()
    if not np.all(ok):
        r = int(np.nonzero(~ok)[0][0])
        raise CertificationFailure(
            f"supplied model {int(indices[r])} of the MSE sample is not certified: gradient norm "
            f"{check.grad_norms[r]:.3g} bounds |f − f*| only by {check.f_error_bound[r]:.3g} "
            f"(τ = {task.tolerance:g})"
        )
    return check.f_values


#: B_p subsets the verifier retrains itself to measure what one full retraining costs.
CALIBRATION_RETRAININGS = 8


def certified_cost(task: Task, num_models: int) -> dict[str, float]:
    """Verifier cost of certifying ``num_models`` models, in retraining-equivalents.

    One full retraining's FLOPs are measured by retraining ``CALIBRATION_RETRAININGS`` B_p
    subsets locally (their Newton iterations counted by the trainer); those retrainings are
    included in the total. Returns the gradient-pass equivalents, the calibration retrainings and
    their sum.
    """
    from protocol import trainer
    from protocol.certify import retraining_equivalents
    from protocol.prg import bernoulli_masks, stream_key

    key = stream_key("verifier-cost-calibration", task.identity().task_hash.encode())
    masks = bernoulli_masks(key, range(CALIBRATION_RETRAININGS), task.num_train_points, task.p)
    stats = trainer.NewtonStats()
    trainer.train_logreg(
        task.design,  # type: ignore[attr-defined]
        masks,
        task.l2,  # type: ignore[attr-defined]
        tol=task.tol,  # type: ignore[attr-defined]
        max_iter=task.max_iter,  # type: ignore[attr-defined]
        device="cpu",
        stats=stats,
    )
    equivalents = retraining_equivalents(
        task,  # type: ignore[arg-type]
        num_models,
        stats,
        models_trained=CALIBRATION_RETRAININGS,
    )
    return {
        "gradient_passes": float(num_models),
        "gradient_pass_retraining_equivalents": equivalents,
        "calibration_retrainings": float(CALIBRATION_RETRAININGS),
        "retraining_equivalents": equivalents + CALIBRATION_RETRAININGS,
    }
