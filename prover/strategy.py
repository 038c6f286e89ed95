"""Prover strategies: how a prover produces its attribution, its answers and its openings.

The honest strategy is the reference; adversaries in ``simulations/`` subclass it and override one
stage (the attribution, the answers, or the openings), like TRAK's swappable pipeline stages.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np

from protocol import merkle
from protocol.challenges import ChallengeSpec
from protocol.tasks.base import Progress, RetrainResult, Task


@dataclass(frozen=True)
class Attribution:
    """A linear datamodel g(x) = c + <a, x> per target: intercepts (Z,), coefficients (Z, N)."""

    intercepts: np.ndarray
    coefficients: np.ndarray
    method: str = "unknown"
    num_samples: int = 0
    #: The regression's own training set (masks (K, N), f (K, Z)), when the prover kept it.
    training_masks: np.ndarray | None = None
    training_f: np.ndarray | None = None


@dataclass
class Answers:
    """What the prover commits to for one challenge set E.

    ``f_values`` (|E|, Z), ``seeds`` (|E|,) and ``digests`` (|E| x 32 bytes) are exactly what the
    Merkle ``tree`` commits to, leaf i binding (i, seeds[i], f_values[i], digests[i]).
    """

    spec: ChallengeSpec
    f_values: np.ndarray
    seeds: np.ndarray
    digests: list[bytes]
    tree: merkle.MerkleTree
    retrainings: int
    #: (|E|, d) trained weights, kept for tasks whose checks are certified from weights.
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class OpeningData:
    """One opened leaf: the values it binds and its Merkle inclusion proof."""

    index: int
    seed: int
    f_values: np.ndarray
    weights_digest: bytes
    proof: list[bytes]


@dataclass(frozen=True)
class OpeningBatchData:
    """Consecutive opened leaves with their weights (certified mode)."""

    seeds: np.ndarray
    f_values: np.ndarray
    digests: list[bytes]
    weights: np.ndarray


#: Most challenge retrainings (x and y0 members) the honest prover adds to its regression; beyond
#: this the fit's excess error ((N+1)/K of B≥2) is negligible and the design matrix would not fit.
REFIT_MAX_CHALLENGES = 200_000

#: Challenge weights beyond this many bytes are kept in a disk-backed array (an unlinked temporary
#: file under $TMPDIR, gone when the session ends) rather than in memory.
WEIGHTS_IN_MEMORY_BYTES = 1 << 30


def weights_buffer(rows: int, dim: int) -> np.ndarray:
    """A writable (rows, dim) float64 array: in memory when small, else disk-backed.

    The disk-backed case is an ``np.memmap`` over an anonymous temporary file, so a session with
    millions of challenge models (8·(d+1) bytes each) does not need their weights in RAM.
    """
    if rows * dim * 8 <= WEIGHTS_IN_MEMORY_BYTES:
        return np.empty((rows, dim), dtype=np.float64)
    return np.memmap(tempfile.TemporaryFile(prefix="prover-weights-"), dtype=np.float64,
                     mode="w+", shape=(rows, dim))  # fmt: skip


def trains_weights(task: Task) -> bool:
    """True when the task exposes its trained weights (``train`` and ``outputs``).

    Such tasks (the strongly convex ones) can be checked from weights with one gradient pass.
    """
    return callable(getattr(task, "train", None)) and callable(getattr(task, "outputs", None))


class ChallengeRetrainer:
    """Retrains challenge members in batches; optionally through a resumable result store."""

    def __init__(
        self,
        task: Task,
        store: object | None = None,
        batch_size: int = 1024,
        stall_s: float = 0.0,
    ) -> None:
        self.task = task
        self.store = store
        self.batch_size = batch_size
        self.stall_s = stall_s

    def retrain(
        self, spec: ChallengeSpec, progress: Progress | None = None
    ) -> tuple[RetrainResult, np.ndarray, int]:
        """Retrain every member of E; return (results in member order, seeds, models trained now).

        Guarantees the returned rows are in member-index order and each is a pure function of
        (task, member subset, member seed).
        """
        if self.stall_s > 0:  # fault injection (tests): a prover that stalls mid-protocol
            time.sleep(self.stall_s)
        if trains_weights(self.task):
            return self._retrain_keeping_weights(spec, progress)
        fs: list[np.ndarray] = []
        digests: list[bytes] = []
        seeds_all: list[np.ndarray] = []
        trained = 0
        for indices, masks, seeds in spec.iter_member_batches(self.batch_size):
            if self.store is not None:
                origins = [f"challenge:{spec.public_seed.hex()}:{int(i)}" for i in indices]
                result = self.store.retrain_cached(  # type: ignore[attr-defined]
                    self.task, masks, seeds, origins, batch_size=self.batch_size, progress=progress
                )
                trained += int(getattr(self.store, "last_retrained", len(indices)))
            else:
                result = self.task.retrain(masks, seeds, progress=progress)
                trained += len(indices)
            fs.append(np.asarray(result.f, dtype=np.float64))
            digests.extend(result.weights_digests)
            seeds_all.append(np.asarray(seeds, dtype=np.uint64))
        merged = RetrainResult(f=np.concatenate(fs, axis=0), weights_digests=digests)
        return merged, np.concatenate(seeds_all), trained

    def _retrain_keeping_weights(
        self, spec: ChallengeSpec, progress: Progress | None
    ) -> tuple[RetrainResult, np.ndarray, int]:
        from protocol.trainer import weights_digest

        n = spec.num_members
        all_weights: np.ndarray | None = None
        f_all: np.ndarray | None = None
        digests: list[bytes] = []
        seeds_all = np.empty(n, dtype=np.uint64)
        for indices, masks, seeds in spec.iter_member_batches(self.batch_size):
            w, _norms = self.task.train(masks, progress)  # type: ignore[attr-defined]
            w = np.asarray(w, dtype=np.float64)
            f = self.task.outputs(w)  # type: ignore[attr-defined]
            if all_weights is None or f_all is None:
                all_weights = weights_buffer(n, w.shape[1])
                f_all = np.empty((n, f.shape[1]), dtype=np.float64)
            lo, hi = int(indices[0]), int(indices[-1]) + 1
            all_weights[lo:hi] = w
            f_all[lo:hi] = f
            seeds_all[lo:hi] = seeds
            digests.extend(weights_digest(row) for row in w)
        assert all_weights is not None
        assert f_all is not None
        result = RetrainResult(f=f_all, weights_digests=digests, weights=all_weights)
        return result, seeds_all, n


class HonestStrategy:
    """The honest prover: true retrainings, its best datamodel, faithful openings."""

    label = "honest"
    adversarial = False

    def __init__(
        self,
        task: Task,
        attribution: Attribution,
        retrainer: ChallengeRetrainer | None = None,
        reuse_challenges: bool = False,
    ) -> None:
        self.task = task
        self._attribution = attribution
        self.retrainer = retrainer or ChallengeRetrainer(task)
        self.reuse_challenges = reuse_challenges

    def describe(self) -> str:
        """One line describing the strategy, for logs."""
        return f"{self.label} prover ({self._attribution.method} datamodel)"

    def attribution(self) -> Attribution:
        """The attribution this prover claims."""
        return self._attribution

    def tamper(
        self, spec: ChallengeSpec, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Hook for adversaries: change answers before they are committed. Honest: unchanged."""
        return f_values, seeds, digests

    def answer(self, spec: ChallengeSpec, progress: Progress | None = None) -> Answers:
        """Retrain all of E, then commit: leaves bind (index, seed, f-values, weights digest)."""
        result, seeds, trained = self.retrainer.retrain(spec, progress)
        if self.reuse_challenges:
            self._refit_with_challenges(spec, result.f)
        f_values, seeds, digests = self.tamper(spec, result.f, seeds, list(result.weights_digests))
        leaves = merkle.build_leaves(np.arange(len(f_values)), seeds, f_values, digests)
        tree = merkle.MerkleTree(leaves)
        return Answers(spec, f_values, seeds, digests, tree, trained, result.weights)

    def _refit_with_challenges(self, spec: ChallengeSpec, f_values: np.ndarray) -> None:
        """Refit the datamodel on its own samples plus this challenge's x and y0 members.

        Statistically valid: the x and y0 members of every tuple are independent B_p subsets with
        independent seeds, and the verifier's MSE sample M stays independent of all of them, so
        the MSE estimate of the refitted (c, a) is unbiased. The ρ-correlated members are left out
        (they are not independent draws).
        """
        base = self._attribution
        if base.training_masks is None or base.training_f is None:
            return
        from prover.datamodel import fit_datamodel

        members = np.arange(spec.num_members)
        # the first REFIT_MAX_CHALLENGES independent members: a data-independent choice that
        # keeps the regression's memory bounded on plans with millions of challenges
        iid = members[(members % 4) < 2][:REFIT_MAX_CHALLENGES]
        masks = np.concatenate([base.training_masks, spec.member_masks(iid)])
        f = np.concatenate([base.training_f, f_values[iid]])
        model = fit_datamodel(masks, f, method="auto")
        self._attribution = Attribution(
            intercepts=model.intercepts,
            coefficients=model.coefficients,
            method=f"{model.method} on {len(base.training_f)} samples + {len(iid)} challenge "
            "retrainings",
            num_samples=base.num_samples,
        )

    def open(self, answers: Answers, index: int) -> OpeningData:
        """Open leaf ``index`` faithfully, with its inclusion proof."""
        return OpeningData(
            index=index,
            seed=int(answers.seeds[index]),
            f_values=answers.f_values[index],
            weights_digest=answers.digests[index],
            proof=answers.tree.proof(index),
        )

    def open_weights(self, answers: Answers, index: int) -> np.ndarray:
        """The trained weights behind leaf ``index`` (certified spot checks): (d+1,) float64."""
        assert answers.weights is not None
        return np.asarray(answers.weights[index], dtype=np.float64)

    def open_batch(self, answers: Answers, first: int, stop: int) -> OpeningBatchData:
        """Open leaves [first, stop) faithfully with their weights (certified mode)."""
        assert answers.weights is not None
        return OpeningBatchData(
            seeds=answers.seeds[first:stop],
            f_values=answers.f_values[first:stop],
            digests=answers.digests[first:stop],
            weights=answers.weights[first:stop],
        )

    def supply_models(self, masks: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Train one model per mask (the verifier's revealed MSE sample) and return the weights.

        Raises ``ValueError`` for tasks whose checks cannot be certified from weights.
        """
        if not trains_weights(self.task):
            raise ValueError(f"task {self.task.name!r} does not expose trained weights")
        weights, _norms = self.task.train(masks, progress)  # type: ignore[attr-defined]
        return np.asarray(weights, dtype=np.float64)
