"""Prover strategies: how a prover produces its attribution, its answers and its openings.

The honest strategy is the reference; adversaries in ``simulations/`` subclass it and override one
stage (the attribution, the answers, or the openings), like TRAK's swappable pipeline stages.
"""

from __future__ import annotations

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

        weights, seeds_all = [], []
        for _indices, masks, seeds in spec.iter_member_batches(self.batch_size):
            w, _norms = self.task.train(masks, progress)  # type: ignore[attr-defined]
            weights.append(np.asarray(w, dtype=np.float64))
            seeds_all.append(np.asarray(seeds, dtype=np.uint64))
        all_weights = np.concatenate(weights, axis=0)
        result = RetrainResult(
            f=self.task.outputs(all_weights),  # type: ignore[attr-defined]
            weights_digests=[weights_digest(w) for w in all_weights],
            weights=all_weights,
        )
        return result, np.concatenate(seeds_all), len(all_weights)


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
        iid = members[(members % 4) < 2]
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
