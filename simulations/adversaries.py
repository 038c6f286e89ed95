"""The catalogue of adversarial provers (reference §7), each a ``HonestStrategy`` subclass.

Every adversary takes a ``strength`` and overrides one honest stage: the attribution (scale,
boost, noise, weak, intercept, targeted), the answers before they are committed (lazy, wrong
subset/seed, targeted, fp-noise, replay) or the openings after C is revealed (equivocate).

Notation on the synthetic task (closed form, :meth:`protocol.tasks.synthetic.SyntheticTruth.err`):
p-biased Fourier weights B_k, μ = 2p − 1, σ² = 4p(1 − p), optimal datamodel (c*, a*), and

    err(c, a) = (f̂(∅) − c − μ Σ a_i)² + σ² ‖a − a*‖².

Each docstring gives the adversary's err in these terms when the honest attribution is the exact
(c*, a*); :meth:`Adversary.true_err` always evaluates the realised (c, a) exactly on a synthetic
task and returns ``None`` elsewhere. Adversaries that only tamper with answers keep the honest
attribution, so their err is the honest one (0 for the exact datamodel): they are about detection.

All adversary randomness comes from ``numpy.random.default_rng`` seeded by ``seed`` (and, where the
attack depends on the challenge, by the public seed): sweeps are reproducible up to the verifier's
own CSPRNG, which is never touched.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from protocol import merkle
from protocol.challenges import ChallengeRound, ChallengeSpec, PrivateSample
from protocol.decision import datamodel_predictions
from protocol.tasks.base import Progress, Task
from prover.strategy import (
    Answers,
    Attribution,
    ChallengeRetrainer,
    HonestStrategy,
    OpeningBatchData,
    OpeningData,
)


@dataclass(frozen=True)
class AttackContext:
    """What an adversary may know about the verifier's configuration (all of it is public).

    ``epsilon`` and ``lie_allowance`` (m*, from the plan) matter only to the targeted attack;
    ``seed`` seeds the adversary's own randomness.
    """

    epsilon: float = 0.2
    lie_allowance: int | None = None
    seed: int = 0


def _rng(seed: int, *parts: bytes | str | int) -> np.random.Generator:
    h = hashlib.sha256(b"simulations/adversary")
    h.update(int(seed).to_bytes(8, "little", signed=False))
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        if isinstance(data, int):
            data = data.to_bytes(8, "little", signed=True)
        h.update(len(data).to_bytes(8, "little") + data)
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


def _fake_digest(label: str, row: np.ndarray) -> bytes:
    return hashlib.sha256(label.encode() + np.ascontiguousarray(row, "<f8").tobytes()).digest()


class Adversary(HonestStrategy):
    """Base class: a named cheating strategy with a ``strength`` (0 or 1 usually means honest)."""

    label = "adversary"
    adversarial = True
    #: One line: how the strength is read.
    strength_doc = ""
    #: Strengths swept by default (``simulations run``).
    default_strengths: tuple[float, ...] = ()

    def __init__(
        self,
        task: Task,
        attribution: Attribution,
        strength: float,
        retrainer: ChallengeRetrainer | None = None,
        context: AttackContext | None = None,
    ) -> None:
        super().__init__(task, attribution, retrainer)
        strength = float(strength)
        if not math.isfinite(strength):
            raise ValueError(f"{self.label}: strength must be finite, got {strength}")
        self.strength = strength
        self.context = context or AttackContext()
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` if the strength is out of range (default: anything finite)."""

    def describe(self) -> str:
        """One line for logs, clearly adversarial."""
        return f"ADVERSARIAL {self.label}(strength={self.strength:g}) over {super().describe()}"

    def honest_attribution(self) -> Attribution:
        """The attribution the honest prover would send."""
        return self._attribution

    def true_err(self) -> float | None:
        """Exact err(c, a) of the claimed attribution on a synthetic task (max over targets)."""
        truth = getattr(self.task, "truth", None)
        if not callable(truth):
            return None
        att = self.attribution()
        return float(np.max(truth().err(att.intercepts, att.coefficients)))

    def _fraction(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"{self.label}: strength is a fraction in [0, 1], got {self.strength}")

    def _choose_members(
        self, rnd: ChallengeRound, n: int, label: str
    ) -> tuple[np.ndarray, np.random.Generator]:
        """A reproducible random fraction ``strength`` of the round's n rows (sorted), and the
        rng (keyed by the public seed and the round)."""
        rng = _rng(self.context.seed, label, rnd.spec.public_seed, rnd.first_tuple)
        chosen = np.sort(rng.choice(n, size=round(self.strength * n), replace=False))
        return chosen, rng


def _with(att: Attribution, c: np.ndarray, a: np.ndarray, what: str) -> Attribution:
    return Attribution(
        intercepts=np.asarray(c, dtype=np.float64),
        coefficients=np.asarray(a, dtype=np.float64),
        method=f"{att.method}, {what}",
        num_samples=att.num_samples,
    )


# ---------------------------------------------------------------------------------------------
# attribution attacks (answers on E are honest: the MSE check must catch these)


class Scale(Adversary):
    """Scaling: a → s·a, c kept ("pay data owners a fraction s").

    err = (f̂(∅) − c* − μ s Σa*_i)² + σ²(1 − s)²‖a*‖²; at p = 1/2: (1 − s)²·B_1
    (synthetic default: B_1 = 0.8, so s = 0.5 gives err = 0.2).
    """

    label = "scale"
    strength_doc = "s: coefficients multiplied by s (1 = honest)"
    default_strengths = (0.9, 0.7, 0.5, 0.0)

    def attribution(self) -> Attribution:
        """The honest attribution with every coefficient multiplied by the strength."""
        h = self.honest_attribution()
        what = f"scaled by {self.strength:g}"
        return _with(h, h.intercepts, h.coefficients * self.strength, what)


def favoured_group(num_points: int, fraction: float = 0.1) -> np.ndarray:
    """The boosted group A: the first ⌈fraction·N⌉ training points."""
    return np.arange(max(1, math.ceil(fraction * num_points)))


class Boost(Adversary):
    """Boosting: add β to a_i for the favoured group A (first 10% of points), c kept.

    err = (μ|A|β)² + σ²|A|β² (the first term vanishes at p = 1/2, or if c were refit);
    synthetic n = 100: |A| = 10, so β = 0.1 gives err = 0.1.
    """

    label = "boost"
    strength_doc = "β added to each coefficient of the first 10% of points"
    default_strengths = (0.06, 0.1, 0.14, 0.2)

    def attribution(self) -> Attribution:
        """The honest attribution with β added to the favoured group's coefficients."""
        h = self.honest_attribution()
        a = np.array(h.coefficients, dtype=np.float64)
        a[:, favoured_group(a.shape[1])] += self.strength
        return _with(h, h.intercepts, a, f"boosted first 10% by {self.strength:g}")


class Noise(Adversary):
    """Random noise on a: a_i += N(0, σ_n²) i.i.d. (σ_n = strength), c kept.

    E err = σ²·N·σ_n² + μ²·N·σ_n² (the realised err is exact: :meth:`true_err`);
    synthetic n = 100, p = 1/2: σ_n = 0.03 gives E err = 0.09.
    """

    label = "noise"
    strength_doc = "σ_n: standard deviation of Gaussian noise added to every coefficient"
    default_strengths = (0.02, 0.03, 0.045, 0.06)

    def validate(self) -> None:
        """σ_n ≥ 0."""
        if self.strength < 0:
            raise ValueError(f"noise: σ must be >= 0, got {self.strength}")
        h = self.honest_attribution()
        rng = _rng(self.context.seed, "noise", repr(self.strength))
        self._noisy = _with(
            h,
            h.intercepts,
            h.coefficients + self.strength * rng.standard_normal(h.coefficients.shape),
            f"plus N(0, {self.strength:g}²) noise",
        )

    def attribution(self) -> Attribution:
        """The honest attribution plus fixed (seeded) Gaussian noise."""
        return self._noisy


class Intercept(Adversary):
    """Intercept-only cheat: right a, c → c + Δ (Δ = strength).

    err = Δ² exactly, for any p.
    """

    label = "intercept"
    strength_doc = "Δ added to the intercept c"
    default_strengths = (0.2, 0.3, 0.45, 0.6)

    def attribution(self) -> Attribution:
        """The honest attribution with the intercept shifted by Δ."""
        h = self.honest_attribution()
        return _with(
            h, h.intercepts + self.strength, h.coefficients, f"intercept +{self.strength:g}"
        )


class Weak(Adversary):
    """A weak honest prover: least-squares datamodel on too few samples (K = strength).

    It retrains K fresh B_p subsets honestly and fits ``prover.datamodel.fit_datamodel`` ("auto":
    OLS when K ≥ 2N, else ridge). Its answers on E are honest. For OLS on B_p data,
    E err ≈ (B_{≥2} + s²)·(N + 1)/K; synthetic n = 100: K = 400 gives E err ≈ 0.05. The realised
    err is exact (:meth:`true_err`). K counts toward the prover's retrainings.
    """

    label = "weak"
    strength_doc = "K: number of retrainings the datamodel is fitted on"
    default_strengths = (2000, 400, 150)

    def validate(self) -> None:
        """K ≥ 2, and fit the datamodel now (seeded)."""
        from prover.datamodel import fit_datamodel

        k = round(self.strength)
        if k < 2:
            raise ValueError(f"weak: K must be >= 2 samples, got {self.strength}")
        key = hashlib.sha256(b"weak" + int(self.context.seed).to_bytes(8, "little")).digest()
        sample = PrivateSample(key, k, self.task.num_train_points, self.task.p)
        masks, seeds = sample.masks(), sample.seeds()
        f = self.task.retrain(masks, seeds).f
        model = fit_datamodel(masks, f, method="auto", rng_seed=self.context.seed)
        self._weak = Attribution(
            model.intercepts, model.coefficients, f"{model.method} on K={k} samples", k
        )

    def attribution(self) -> Attribution:
        """The under-sampled datamodel."""
        return self._weak


# ---------------------------------------------------------------------------------------------
# answer attacks (the spot checks must catch these)


class Lazy(Adversary):
    """Lazy prover: fabricates a fraction q of its f-values (its datamodel's predictions g(x)).

    err = the honest err (0 for the exact datamodel): the attribution is honest; fabricated
    members hide their residual weight (lowering B̂≥2) and any spot check that lands on one fails.
    With |E| members, P(k spot checks all miss) = C(|E| − q|E|, k)/C(|E|, k) ≈ (1 − q)^k.
    """

    label = "lazy"
    strength_doc = "q: fraction of f-values fabricated"
    default_strengths = (0.001, 0.01, 0.1)

    def validate(self) -> None:
        """q ∈ [0, 1]."""
        self._fraction()

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Overwrite a random fraction q of the members with datamodel predictions."""
        chosen, _ = self._choose_members(rnd, len(f_values), "lazy")
        if len(chosen) == 0:
            return f_values, seeds, digests
        model = self.honest_attribution()
        b = self.task.output_bound
        fake = datamodel_predictions(
            rnd.spec.member_masks(rnd.first_member + chosen), model.intercepts, model.coefficients
        )
        f_values = f_values.copy()
        f_values[chosen] = np.clip(fake, -b, b)
        digests = list(digests)
        for i in chosen:
            digests[int(i)] = _fake_digest("fabricated", f_values[i])
        return f_values, seeds, digests


class WrongSubset(Adversary):
    """Trains a fraction q of the challenges on a wrong subset (a fresh B_p draw of its own).

    err = the honest err. Each wrong member is a real retraining, only on the wrong data; the
    leaf still names the right index and seed, so a spot check on it finds an f-value mismatch
    (unless the wrong subset happens to give the same f). Wrong subsets decorrelate pairs, which
    lowers ŷρ and ŷ2ρ and so inflates B̂≥2.
    """

    label = "wrong-subset"
    strength_doc = "q: fraction of members trained on a wrong subset"
    default_strengths = (0.001, 0.01)

    def validate(self) -> None:
        """q ∈ [0, 1]."""
        self._fraction()

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Retrain the chosen members on fresh random subsets with their own seeds."""
        chosen, rng = self._choose_members(rnd, len(f_values), "wrong-subset")
        if len(chosen) == 0:
            return f_values, seeds, digests
        wrong = rng.random((len(chosen), rnd.spec.num_train_points)) < rnd.spec.p
        result = self.task.retrain(wrong, seeds[chosen])
        f_values = f_values.copy()
        f_values[chosen] = result.f
        digests = list(digests)
        for r, i in enumerate(chosen.tolist()):
            digests[i] = result.weights_digests[r]
        return f_values, seeds, digests


class WrongSeed(Adversary):
    """Trains a fraction q of the challenges with a wrong training seed (seed + 1) and commits it.

    err = the honest err. The leaf binds the seed actually used, so an opening of such a member
    shows a seed other than the derived one and is rejected ("not its assigned seed"). (On the
    noise-free synthetic task f ignores the seed, so only the opening check can catch this.)
    """

    label = "wrong-seed"
    strength_doc = "q: fraction of members trained (and committed) with a wrong seed"
    default_strengths = (0.01,)

    def validate(self) -> None:
        """q ∈ [0, 1]."""
        self._fraction()

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Retrain the chosen members with seed + 1 and commit that seed."""
        chosen, _ = self._choose_members(rnd, len(f_values), "wrong-seed")
        if len(chosen) == 0:
            return f_values, seeds, digests
        seeds = np.array(seeds, dtype=np.uint64)
        seeds[chosen] = seeds[chosen] + np.uint64(1)
        result = self.task.retrain(rnd.spec.member_masks(rnd.first_member + chosen), seeds[chosen])
        f_values = f_values.copy()
        f_values[chosen] = result.f
        digests = list(digests)
        for r, i in enumerate(chosen.tolist()):
            digests[i] = result.weights_digests[r]
        return f_values, seeds, digests


class FloatingPoint(Adversary):
    """An honest prover on a machine whose floating point differs: f-values off by ≤ strength.

    Each committed f-value gets an independent uniform perturbation in [−strength, strength]
    (kept inside [−b, b]); the weights digests are the honest ones (the model bits agree, only the
    output evaluation differs). err = the honest err. Completeness versus τ: accepted when
    strength ≤ τ (CHECKEQUIV passes and B̂≥2 moves by at most the τ-charge), rejected by the spot
    checks once strength ≫ τ (then P(a spot check sees |diff| > τ) → 1).
    """

    label = "fp-noise"
    strength_doc = "largest absolute perturbation of each f-value (compare with τ)"
    default_strengths = (1e-10, 1e-9, 1e-6)

    def validate(self) -> None:
        """strength ≥ 0."""
        if self.strength < 0:
            raise ValueError(f"fp-noise: strength must be >= 0, got {self.strength}")

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Add uniform noise in [−strength, strength] to every f-value."""
        if self.strength == 0:
            return f_values, seeds, digests
        rng = _rng(self.context.seed, "fp-noise", rnd.spec.public_seed, rnd.first_tuple)
        b = self.task.output_bound
        noisy = f_values + rng.uniform(-self.strength, self.strength, f_values.shape)
        return np.clip(noisy, -b, b), seeds, digests


#: The "earlier session" a replaying prover reuses, per (task hash, tuples, ρ).
_REPLAY_CACHE: dict[tuple[str, int, float], tuple[np.ndarray, np.ndarray, list[bytes]]] = {}


class Replay(Adversary):
    """Replays an earlier session's answers: for a fraction q of the members it commits the
    leaf (seed, f-values, digest) it computed for a different public seed.

    err = the honest err. Replayed leaves carry the old session's training seeds, so any spot
    check on one is rejected at the opening ("not its assigned seed"); q = 1 replays everything
    and is rejected by the first opening.
    """

    label = "replay"
    strength_doc = "q: fraction of members answered from the earlier session"
    default_strengths = (0.01, 1.0)

    def validate(self) -> None:
        """q ∈ [0, 1]."""
        self._fraction()

    def _earlier(self, rnd: ChallengeRound) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        spec = rnd.spec
        key = (self.task.identity().task_hash, int(spec.num_tuples), float(spec.rho))
        if key not in _REPLAY_CACHE:
            old_seed = hashlib.sha256(b"simulations/replayed-session" + key[0].encode()).digest()
            old = ChallengeSpec(old_seed, spec.num_tuples, spec.rho, spec.num_train_points, spec.p)
            result, seeds, _ = ChallengeRetrainer(self.task).retrain(
                ChallengeRound(old, rnd.first_tuple)
            )
            _REPLAY_CACHE[key] = (result.f, seeds, list(result.weights_digests))
        return _REPLAY_CACHE[key]

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Replace a fraction q of the leaves with the earlier session's leaves."""
        chosen, _ = self._choose_members(rnd, len(f_values), "replay")
        if len(chosen) == 0:
            return f_values, seeds, digests
        old_f, old_seeds, old_digests = self._earlier(rnd)
        f_values, seeds, digests = f_values.copy(), np.array(seeds, dtype=np.uint64), list(digests)
        f_values[chosen] = old_f[chosen]
        seeds[chosen] = old_seeds[chosen]
        for i in chosen.tolist():
            digests[i] = old_digests[i]
        return f_values, seeds, digests


class Equivocate(Adversary):
    """Equivocation: commits fabricated f-values for a fraction q of the members, then, once C is
    revealed, opens any spot-checked one with its *true* retrained values (so CHECKEQUIV would
    pass) and the proof of the committed leaf.

    err = the honest err. The opened values differ from the committed ones, so the verifier
    rejects ("equivocation"); a variant that keeps the committed values but swaps in the true
    weights digest fails the Merkle proof instead. Certified mode: ``open_batch`` sends the true
    values for the fabricated rows.
    """

    label = "equivocate"
    strength_doc = "q: fraction of members committed falsely and re-answered at opening"
    default_strengths = (0.001, 0.01)

    def validate(self) -> None:
        """q ∈ [0, 1]."""
        self._fraction()
        self._truth: dict[
            tuple[bytes, int], tuple[np.ndarray, np.ndarray, list[bytes], set[int]]
        ] = {}

    def answer(self, rnd: ChallengeRound, progress: Progress | None = None) -> Answers:
        """Retrain the round, keep the truth aside, commit fabricated values for the chosen."""
        result, seeds, trained = self.retrainer.retrain(rnd, progress)
        n = len(result.f)
        rng = _rng(self.context.seed, "equivocate", rnd.spec.public_seed, rnd.first_tuple)
        chosen = np.sort(rng.choice(n, size=round(self.strength * n), replace=False))
        f_values, digests = np.array(result.f, dtype=np.float64), list(result.weights_digests)
        if len(chosen):
            model = self.honest_attribution()
            b = self.task.output_bound
            fake = datamodel_predictions(
                rnd.spec.member_masks(rnd.first_member + chosen),
                model.intercepts,
                model.coefficients,
            )
            f_values[chosen] = np.clip(fake, -b, b)
            for i in chosen.tolist():
                digests[i] = _fake_digest("equivocated", f_values[i])
        self._truth[(rnd.spec.public_seed, rnd.first_tuple)] = (
            np.asarray(result.f, dtype=np.float64),
            seeds,
            list(result.weights_digests),
            set(chosen.tolist()),
        )
        leaves = merkle.build_leaves(rnd.members, seeds, f_values, digests)
        return Answers(
            rnd, f_values, seeds, digests, merkle.MerkleTree(leaves), trained, result.weights
        )

    def open(self, answers: Answers, index: int) -> OpeningData:
        """Open a fabricated member with its true values (and true digest) — equivocation."""
        honest = super().open(answers, index)
        key = (answers.spec.public_seed, answers.round.first_tuple)
        true_f, _seeds, true_digests, lied = self._truth[key]
        i = answers.local(index)
        if i not in lied:
            return honest
        return OpeningData(
            index=index,
            seed=honest.seed,
            f_values=true_f[i],
            weights_digest=true_digests[i],
            proof=honest.proof,
        )

    def open_batch(self, answers: Answers, first: int, stop: int) -> OpeningBatchData:
        """Certified checks: send the true values and digests for the fabricated rows."""
        batch = super().open_batch(answers, first, stop)
        key = (answers.spec.public_seed, answers.round.first_tuple)
        true_f, _seeds, true_digests, lied = self._truth[key]
        f = np.array(batch.f_values, dtype=np.float64)
        digests = list(batch.digests)
        for i in range(first, stop):
            if i in lied:
                f[i - first] = true_f[i]
                digests[i - first] = true_digests[i]
        return OpeningBatchData(batch.seeds, f, digests, batch.weights)


class Targeted(Adversary):
    """Targeted residual inflation (the strongest attack the soundness proof allows): a bad a
    (scaling by s = strength) plus at most m* lies, each the single-member change (role and value
    ±b) that raises its tuple's residual sample r_j the most, on the tuples where that gain is
    largest.

    err = (1 − s)²·B_1 at p = 1/2 (as :class:`Scale`). The lies raise the verifier's lower bound on
    B≥2, hence lower err_upper; the verifier's bound already swaps the m* most favourable values
    for the floor of their range, and more lies than m* are caught by the spot checks w.p.
    ≥ 1 − δ_spot. ``context.lie_allowance`` is the m* the attack spends (over every round).
    """

    label = "targeted"
    strength_doc = "s: coefficients scaled by s, residual inflated by ≤ m* lies to hide it"
    default_strengths = (0.7, 0.5)

    def attribution(self) -> Attribution:
        """The scaled (bad) attribution."""
        h = self.honest_attribution()
        return _with(
            h, h.intercepts, h.coefficients * self.strength, f"scaled by {self.strength:g}"
        )

    def tamper(
        self, rnd: ChallengeRound, f_values: np.ndarray, seeds: np.ndarray, digests: list[bytes]
    ) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Spend what is left of the m* lies on this round's largest gains."""
        from simulations.montecarlo import best_lies

        used = getattr(self, "last_lies", 0)
        budget = (self.context.lie_allowance or 0) - used
        if budget <= 0:
            return f_values, seeds, digests
        f = np.array(f_values, dtype=np.float64)
        lied, count = best_lies(f, f, rnd.spec.rho, self.task.output_bound, budget)
        self.last_lies = used + count
        digests = list(digests)
        for i in np.flatnonzero(np.any(lied != f, axis=1)).tolist():
            digests[i] = _fake_digest("inflated", lied[i])
        return lied, seeds, digests


#: Every adversary by name (``simulations serve NAME``, ``prover serve --cheat NAME:S``).
ADVERSARIES: dict[str, type[Adversary]] = {
    cls.label: cls
    for cls in (
        Scale,
        Boost,
        Noise,
        Weak,
        Lazy,
        Targeted,
        WrongSubset,
        WrongSeed,
        Equivocate,
        Replay,
        Intercept,
        FloatingPoint,
    )
}
#: Aliases kept for the original ``--cheat`` names.
ALIASES = {"fabricate": "lazy"}


def resolve(name: str) -> str:
    """The canonical adversary name for ``name`` (or an alias); ``ValueError`` lists the valid."""
    canonical = ALIASES.get(name, name)
    if canonical != "honest" and canonical not in ADVERSARIES:
        valid = ", ".join(["honest", *ADVERSARIES, *ALIASES])
        raise ValueError(f"unknown adversary {name!r}; available: {valid}")
    return canonical


def make_adversary(
    name: str,
    strength: float,
    task: Task,
    attribution: Attribution,
    retrainer: ChallengeRetrainer | None = None,
    context: AttackContext | None = None,
) -> HonestStrategy:
    """Instantiate the named adversary (``"honest"`` gives the honest strategy, strength unused)."""
    canonical = resolve(name)
    if canonical == "honest":
        return HonestStrategy(task, attribution, retrainer)
    return ADVERSARIES[canonical](task, attribution, strength, retrainer, context)


def strategy_true_err(strategy: HonestStrategy) -> float | None:
    """Exact err of a strategy's claimed attribution on a synthetic task, else ``None``."""
    truth = getattr(strategy.task, "truth", None)
    if not callable(truth):
        return None
    att = strategy.attribution()
    return float(np.max(truth().err(att.intercepts, att.coefficients)))
