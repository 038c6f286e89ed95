"""Prover strategies: how a prover produces its attribution, its answers and its openings.

The honest strategy is the reference; adversaries in ``simulations/`` subclass it and override one
stage (the attribution, the answers, or the openings), like TRAK's swappable pipeline stages.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import merkle
from protocol.challenges import ChallengeRound, ChallengeSpec
from protocol.tasks.base import CertifiableTask, Progress, RetrainResult, Task


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
    """What the prover commits to for one round of the challenge stream.

    ``f_values`` (m, Z), ``seeds`` (m,) and ``digests`` (m x 32 bytes) are exactly what the
    Merkle ``tree`` commits to: row i is the round's member ``round.first_member + i``, and its
    leaf binds (that global index, seeds[i], f_values[i], digests[i]).
    """

    round: ChallengeRound
    f_values: np.ndarray
    seeds: np.ndarray
    digests: list[bytes]
    tree: merkle.MerkleTree
    retrainings: int
    #: (m, d) trained weights, kept for tasks whose checks are certified from weights.
    weights: np.ndarray | None = None

    @property
    def spec(self) -> ChallengeSpec:
        """The challenge stream this round belongs to."""
        return self.round.spec

    def local(self, index: int) -> int:
        """Row of global member ``index`` in this round; ``IndexError`` when it is not here."""
        i = int(index) - self.round.first_member
        if not 0 <= i < len(self.f_values):
            raise IndexError(f"member {index} is not in this round")
        return i


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
    """True when the task exposes its trained weights (a :class:`CertifiableTask`).

    Such tasks (the strongly convex ones) can be checked from weights with one gradient pass.
    """
    return isinstance(task, CertifiableTask)


def _checkpoint(progress: Progress | None) -> None:
    """A batch boundary: ``progress(0)`` lets a cancellable caller stop the work here
    (``prover.session.cancellable`` raises from it)."""
    if progress is not None:
        progress(0)


class ChallengeRetrainer:
    """Retrains challenge members in batches; optionally through a resumable result store."""

    def __init__(
        self,
        task: Task,
        store: object | None = None,
        batch_size: int = 1024,
        stall_s: float = 0.0,
        pool: Any | None = None,
    ) -> None:
        self.task = task
        self.store = store
        self.batch_size = batch_size
        self.stall_s = stall_s
        #: a ``prover.ray_pool.RayPool``: member batches retrain on its cluster
        self.pool = pool

    def retrain(
        self, rnd: ChallengeRound, progress: Progress | None = None
    ) -> tuple[RetrainResult, np.ndarray, int]:
        """Retrain every member of the round; return (results in member order, seeds, models
        trained now).

        Guarantees the returned rows are in member-index order and each is a pure function of
        (task, member subset, member seed).
        """
        if self.stall_s > 0:  # fault injection (tests): a prover that stalls mid-protocol
            until = time.monotonic() + self.stall_s
            while time.monotonic() < until:
                _checkpoint(progress)
                time.sleep(min(0.1, max(0.0, until - time.monotonic())))
        spec = rnd.spec
        if self.pool is not None:
            return self._retrain_on_pool(rnd, progress)
        if trains_weights(self.task):
            return self._retrain_keeping_weights(rnd, progress)
        fs: list[np.ndarray] = []
        digests: list[bytes] = []
        seeds_all: list[np.ndarray] = []
        trained = 0
        for indices, masks, seeds in spec.iter_member_batches(self.batch_size, rnd.first_member):
            _checkpoint(progress)
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

    def _retrain_on_pool(
        self, rnd: ChallengeRound, progress: Progress | None
    ) -> tuple[RetrainResult, np.ndarray, int]:
        """The round's member batches on the Ray pool, placed by index as they finish (the
        same values as in-process: each is a pure function of (task, subset, seed))."""
        spec, first, n = rnd.spec, rnd.first_member, rnd.num_members
        keep = trains_weights(self.task)
        f_all: np.ndarray | None = None
        w_all: np.ndarray | None = None
        digests: list[bytes] = [b""] * n
        seeds_all = np.empty(n, dtype=np.uint64)
        batches = (
            ((int(idx[0]) - first, int(idx[-1]) + 1 - first, seeds), masks, seeds)
            for idx, masks, seeds in spec.iter_member_batches(self.batch_size, first)
        )
        assert self.pool is not None
        for (lo, hi, seeds), out in self.pool.map_batches(
            self.task.selector, batches, weights=keep
        ):
            _checkpoint(progress)
            f = np.asarray(out.f, dtype=np.float64)
            if f_all is None:
                f_all = np.empty((n, f.shape[1]), dtype=np.float64)
            f_all[lo:hi] = f
            if keep:
                w = np.asarray(out.weights, dtype=np.float64)
                if w_all is None:
                    w_all = weights_buffer(n, w.shape[1])
                w_all[lo:hi] = w
            digests[lo:hi] = [bytes(d) for d in out.weights_digests]
            seeds_all[lo:hi] = seeds
        assert f_all is not None
        result = RetrainResult(f=f_all, weights_digests=digests, weights=w_all)
        return result, seeds_all, n

    def _retrain_keeping_weights(
        self, rnd: ChallengeRound, progress: Progress | None
    ) -> tuple[RetrainResult, np.ndarray, int]:
        from protocol.trainer import weights_digest

        spec, first = rnd.spec, rnd.first_member
        n = rnd.num_members
        all_weights: np.ndarray | None = None
        f_all: np.ndarray | None = None
        digests: list[bytes] = []
        seeds_all = np.empty(n, dtype=np.uint64)
        for indices, masks, seeds in spec.iter_member_batches(self.batch_size, first):
            _checkpoint(progress)
            w, _norms = self.task.train(masks, progress)  # type: ignore[attr-defined]
            w = np.asarray(w, dtype=np.float64)
            f = self.task.outputs(w)  # type: ignore[attr-defined]
            if all_weights is None or f_all is None:
                all_weights = weights_buffer(n, w.shape[1])
                f_all = np.empty((n, f.shape[1]), dtype=np.float64)
            lo, hi = int(indices[0]) - first, int(indices[-1]) + 1 - first
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
    ) -> None:
        self.task = task
        self._attribution = attribution
        self.retrainer = retrainer or ChallengeRetrainer(task)

    def describe(self) -> str:
        """One line describing the strategy, for logs."""
        return f"{self.label} prover ({self._attribution.method} datamodel)"

    def attribution(self) -> Attribution:
        """The attribution this prover claims."""
        return self._attribution

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Hook for adversaries: change a round's answers (rows in the round's member order)
        before they are committed. Honest: unchanged."""
        return f_values, seeds, digests

    def answer(self, rnd: ChallengeRound, progress: Progress | None = None) -> Answers:
        """Retrain the round's members, then commit: each leaf binds (global index, seed,
        f-values, weights digest). The claim was fixed before the round existed."""
        result, seeds, trained = self.retrainer.retrain(rnd, progress)
        f_values, seeds, digests = self.tamper(rnd, result.f, seeds, list(result.weights_digests))
        leaves = merkle.build_leaves(rnd.members, seeds, f_values, digests)
        tree = merkle.MerkleTree(leaves)
        return Answers(rnd, f_values, seeds, digests, tree, trained, result.weights)

    def open(self, answers: Answers, index: int) -> OpeningData:
        """Open global member ``index`` of this round faithfully, with its inclusion proof."""
        i = answers.local(index)
        return OpeningData(
            index=index,
            seed=int(answers.seeds[i]),
            f_values=answers.f_values[i],
            weights_digest=answers.digests[i],
            proof=answers.tree.proof(i),
        )

    def open_weights(self, answers: Answers, index: int) -> np.ndarray:
        """The trained weights behind global member ``index`` (certified spot checks)."""
        assert answers.weights is not None
        return np.asarray(answers.weights[answers.local(index)], dtype=np.float64)

    def open_batch(self, answers: Answers, first: int, stop: int) -> OpeningBatchData:
        """Open the round's rows [first, stop) faithfully with their weights (certified mode)."""
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
        pool = self.retrainer.pool
        if pool is not None:
            out = np.empty((len(masks), 0))
            seeds = np.zeros(len(masks), dtype=np.uint64)
            batches = (
                ((lo, lo + pool.chunk), masks[lo : lo + pool.chunk], seeds[lo : lo + pool.chunk])
                for lo in range(0, len(masks), pool.chunk)
            )
            for (lo, hi), res in pool.map_batches(self.task.selector, batches, weights=True):
                _checkpoint(progress)
                w = np.asarray(res.weights, dtype=np.float64)
                if out.shape[1] != w.shape[1]:
                    out = np.empty((len(masks), w.shape[1]))
                out[lo:hi] = w
            return out
        weights, _norms = self.task.train(masks, progress)  # type: ignore[attr-defined]
        return np.asarray(weights, dtype=np.float64)
