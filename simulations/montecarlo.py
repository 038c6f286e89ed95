"""Monte-Carlo of the practical-mode verifier on the exact synthetic task, fast enough for ≥ 200
trials per cell at the sizes the practical plan asks for (millions of challenge tuples).

What is exact and what is a shortcut (docs/validity.md says the same):

* **The statistics are the protocol's.** Every verdict is computed by the verifier's own code:
  ``protocol.practical.residual_interval`` on the (reported) f-values of E,
  ``verifier.practical_flow.run_sequential_mse`` (anytime-valid confidence sequence, sequential
  stop, cap) and ``protocol.practical.practical_decision``, under a
  ``protocol.practical.plan_practical`` plan (spot checks k, lie allowance m*, ρ, n, |M|).
* **The challenge tuples are drawn in distribution, not through the PRG.** The synthetic f
  depends only on its support columns (:attr:`SyntheticTask.support_columns`, ≤ 55 per target
  whatever N is), and under B_p those coordinates are independent of the rest. So a trial draws
  x, y0 and the coupling coin v for the support columns only, with the coupling of
  :class:`protocol.challenges.ChallengeSpec` (y_ℓ keeps x_i where v_i < ℓ, else y0_i), from a
  seeded PCG64 stream; this has exactly the joint law of the protocol's tuples. The MSE sample M
  is drawn as full N-column subsets (the claimed a may weigh every point).
* **Spot checks are drawn as a count.** k members out of |E| = 4n are checked uniformly without
  replacement; the number of tampered members among them is hypergeometric, so a trial draws it
  directly (``Generator.hypergeometric``) and rejects when it is positive, as the real verifier
  does on a CHECKEQUIV or opening failure.
* **Seeded, not CSPRNG.** Every draw, including the verifier's, comes from
  ``numpy.random.default_rng`` keyed by (seed, cell, trial), so every number in the docs can be
  regenerated. The real verifier draws from ``secrets``; the law is the same.
* **Common random numbers.** Within a trial every prover model sees the same tuples and the same
  M (as many provers facing one verifier's randomness), which makes their comparison sharper; the
  acceptance rate of each is still an average over independent trials.

Prover models (``ProverModel``): the attribution attacks take their (c, a) from the real
catalogue (:mod:`simulations.adversaries`); the answer attacks are re-expressed on the sampled
f-values (which members they tamper with, what they report, and which tampered members a check
would expose). The targeted attack chooses its lies to raise the residual lower bound the most,
over all four member roles, and uses the fewest lies (≤ m*) that lift that lower bound to its own
estimate of the claimed datamodel's MSE upper bound minus ε.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numba
import numpy as np

from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.decision import datamodel_predictions
from protocol.practical import (
    PilotStats,
    PracticalPlan,
    plan_practical,
    residual_coefficients,
    residual_interval,
    residual_samples,
)
from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution
from simulations.adversaries import AttackContext, make_adversary, resolve
from verifier.practical_flow import MSE_BATCH, run_pilot, run_sequential_mse

#: The naive verifier accepts when msê ≤ (1 − NAIVE_R2)·Var̂ f on the first NAIVE_SAMPLES of M.
NAIVE_R2 = 0.5
NAIVE_SAMPLES = 4_000
#: Tuples drawn per chunk (bounds memory: chunk × |support| booleans per array).
CHUNK_TUPLES = 250_000
#: Pilot tuples used to size each cell's plan (seeded; sizing only, never a guarantee).
PILOT_TUPLES = 512
#: Draw versions of the challenge tuples: the same law, different streams (a cell's key names
#: any version but 1, so trials of two versions are never mixed).
#: 1: row-major, a uint16 (or float) coupling coin per tuple and support column.
#: 2: bit-sliced, 64 tuples per uint64 word and column (:func:`tuple_words`): about half the
#:    random words of version 1 (9.5 against 18 per 64 tuple-columns at ρ = 0.1), no bounded
#:    draw per value, and no per-bit work in the pass.
DRAW_VERSIONS = (1, 2)
#: Binary digits of a probability kept for the bit-serial Bernoulli draw (see bernoulli_words).
_DIGITS = 256
_ALL_LANES = np.uint64(2**64 - 1)
#: Random words drawn per block by bernoulli_words (larger blocks are slower to allocate). The
#: block sizes decide which words each lane consumes: they are part of draw version 2.
_RAW_BLOCK = 1 << 20
#: Answer attacks: members they tamper with, and what a check of one of them exposes.
ANSWER_ATTACKS = ("lazy", "wrong-subset", "wrong-seed", "replay", "equivocate", "fp-noise")


def derive_rng(*parts: Any) -> np.random.Generator:
    """A PCG64 generator keyed by SHA-256 of the parts' reprs (stable across runs and machines)."""
    h = hashlib.sha256(b"simulations/montecarlo")
    for part in parts:
        data = repr(part).encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return np.random.default_rng(int.from_bytes(h.digest()[:16], "little"))


def require_exact_synthetic(task: Any) -> SyntheticTask:
    """The task, if the Monte-Carlo shortcut is exact for it (noise-free synthetic); else raise."""
    if not isinstance(task, SyntheticTask):
        raise ValueError(
            "the Monte-Carlo engine needs the exact synthetic task (its f depends on known "
            f"support columns); got {getattr(task, 'selector', task)!r}"
        )
    if task.noise != 0.0:
        raise ValueError("the Monte-Carlo engine needs a noise-free synthetic task (noise=0)")
    return task


def coin_draw(
    rho: float, rng: np.random.Generator
) -> tuple[Callable[[tuple[int, int]], Any], Any, Any]:
    """(draw, lo, hi): ``draw(shape)`` gives the raw coupling coin v, and v < lo, v < hi have
    probabilities ρ and 2ρ exactly.

    When 1000ρ is an integer v is uniform on {0, …, 999} (uint16, compared with 1000ρ, 2000ρ);
    otherwise it is a float64 uniform (as :func:`protocol.practical.pilot_masks`)."""
    thousandths = _thousandths(rho)
    if thousandths is not None:

        def draw(shape: tuple[int, int]) -> Any:
            return rng.integers(0, 1000, size=shape, dtype=np.uint16)

        return draw, thousandths, 2 * thousandths
    return rng.random, float(rho), 2.0 * float(rho)


def _thousandths(rho: float) -> int | None:
    """1000ρ when it is an integer (to 1e-9), else None: the coin is then exact in thousandths."""
    scaled = rho * 1000.0
    return round(scaled) if abs(scaled - round(scaled)) < 1e-9 else None


def _coin_sampler(rho: float, rng: np.random.Generator) -> Callable[[tuple[int, int]], Any]:
    """Draw the coupling coin as the pair of masks (v < ρ, v < 2ρ) (see :func:`coin_draw`)."""
    raw, lo, hi = coin_draw(rho, rng)

    def draw(shape: tuple[int, int]) -> Any:
        v = raw(shape)
        return v < lo, v < hi

    return draw


def bernoulli_packed(rng: np.random.Generator, p: float, shape: tuple[int, int]) -> np.ndarray:
    """B_p bits of the given (rows, columns) shape, packed 8 to a byte (big-endian, as
    ``np.packbits``); the draws are those of :func:`_bernoulli`."""
    if p == 0.5:
        return rng.integers(0, 256, size=(shape[0], (shape[1] + 7) // 8), dtype=np.uint8)
    return np.packbits(rng.random(shape) < p, axis=1)


def _bernoulli(rng: np.random.Generator, p: float, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(bernoulli_packed(rng, p, shape), axis=1, count=shape[1]).astype(bool)


def check_draws(draws: int) -> int:
    """``draws`` if it is a known draw version; else raise ``ValueError``."""
    if draws not in DRAW_VERSIONS:
        raise ValueError(f"draws must be one of {DRAW_VERSIONS}, got {draws!r}")
    return draws


def _binary_digits(q: Fraction) -> tuple[list[bool], bool]:
    """The first ``_DIGITS`` binary digits of q ∈ (0, 1), and whether the expansion ends there."""
    num, den = q.numerator, q.denominator
    digits = []
    for _ in range(_DIGITS):
        num *= 2
        digits.append(num >= den)
        if num >= den:
            num -= den
        if num == 0:
            return digits, True
    return digits, False


@numba.njit(cache=True, nogil=True)
def _bit_serial(
    digits: np.ndarray, live: np.ndarray, out: np.ndarray, buf: np.ndarray, word: int, level: int
) -> tuple[int, int]:
    """Decide words ``word``, ``word + 1``, … of :func:`bernoulli_words` with the random words of
    ``buf`` in order, resuming word ``word`` at digit ``level``; returns where ``buf`` ran out
    (``(len(out), 0)`` when every word is done). ``live`` keeps each word's undecided lanes."""
    pos = 0
    while word < out.shape[0]:
        u = live[word]
        o = out[word]
        while u != 0 and level < digits.shape[0]:
            if pos == buf.shape[0]:
                live[word] = u
                out[word] = o
                return word, level
            r = buf[pos]
            pos += 1
            if digits[level]:
                o |= u & ~r
                u &= r
            else:
                u &= ~r
            level += 1
        live[word] = u
        out[word] = o
        word += 1
        level = 0
    return word, 0


def bernoulli_words(
    rng: np.random.Generator,
    q: Fraction,
    rows: int,
    lanes: int,
    only: np.ndarray | None = None,
) -> np.ndarray:
    """(rows, ⌈lanes/64⌉) uint64 words whose bit l of word w (lane 64w + l < ``lanes``) is 1 with
    probability exactly q, independently; bits past ``lanes`` are 0, and so are the bits where
    the words ``only`` (same shape), when given, are 0 (those lanes are not drawn).

    Each lane compares a uniform v ∈ [0, 1) with q digit by digit, 64 lanes at a time: a word
    takes one random word per digit until all its lanes are decided, a lane at the first digit
    where its random bit differs from q's (v < q where q's digit is 1 and the bit 0). So the law
    is exact for any rational q, and a word costs about 8 random words (1 at q = 1/2) instead of
    64 coins. The random words come from ``rng`` in blocks, consumed in word order, so the
    result is a function of the generator's state. Raises ``RuntimeError`` if a lane is still
    undecided after 256 digits of a non-terminating q (probability below 2⁻²⁰⁰ per call)."""
    words = -(-int(lanes) // 64)
    live = np.full((rows, words), _ALL_LANES)
    if lanes % 64:
        live[:, -1] = np.uint64((1 << (lanes % 64)) - 1)
    if only is not None:
        live &= only
    if q >= 1:
        return live
    out = np.zeros(rows * words, np.uint64)
    if q <= 0:
        return out.reshape(rows, words)
    bits, ends = _binary_digits(q)
    digits = np.array(bits, dtype=np.bool_)
    live = live.reshape(-1)
    word, level = 0, 0
    while word < out.size:
        need = min(_RAW_BLOCK, max(4096, min(len(bits), 9) * (out.size - word)))
        buf = rng.bit_generator.random_raw(need)
        word, level = _bit_serial(digits, live, out, buf, word, level)
    if not ends and live.any():
        raise RuntimeError("bit-serial Bernoulli draw left a lane undecided after 256 digits")
    return out.reshape(rows, words)


def coin_fraction(rho: float) -> Fraction:
    """2ρ as an exact fraction: k/1000 when 1000ρ is an integer (as :func:`coin_draw`), else the
    float's exact value."""
    thousandths = _thousandths(rho)
    if thousandths is not None:
        return Fraction(2 * thousandths, 1000)
    return Fraction(2.0 * float(rho))


def tuple_words(
    rng: np.random.Generator, p: float, rho: float, columns: int, tuples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw version 2 of ``tuples`` coupled tuples on ``columns`` support columns: the words
    (x, y0, near, far), each (columns, ⌈tuples/64⌉) uint64 with bit l of word w = tuple 64w + l;
    :func:`member_words` turns them into the four members.

    Guarantee: the law of :func:`sample_tuples`'s version 1 (that of ``ChallengeSpec``): x and
    y0 are independent B_p; a column's coin is "far" (y2ρ takes x) with probability 2ρ, and "near"
    (yρ takes x too) with probability ρ, near only where far; elsewhere yρ, y2ρ take y0. Draws x,
    then y0, then far (:func:`bernoulli_words` at 2ρ), then a fair bit that makes far near.

    The coin is drawn only where x ≠ y0: where they agree every member is x whatever the coin
    says, so leaving it undrawn there changes no member and keeps the law."""
    x = bernoulli_words(rng, Fraction(p), columns, tuples)
    y0 = bernoulli_words(rng, Fraction(p), columns, tuples)
    differ = x ^ y0
    far = bernoulli_words(rng, coin_fraction(rho), columns, tuples, only=differ)
    near = far & bernoulli_words(rng, Fraction(1, 2), columns, tuples, only=far)
    return x, y0, near, far


def member_words(x: np.ndarray, y0: np.ndarray, near: np.ndarray, far: np.ndarray) -> np.ndarray:
    """The members (x, y0, yρ, y2ρ) of :func:`tuple_words`'s words, stacked on a first axis:
    yρ takes x where near, y2ρ where far, else y0 (the streamed pass applies the same rule)."""
    return np.stack([x, y0, (x & near) | (y0 & ~near), (x & far) | (y0 & ~far)])


def unpack_words(words: np.ndarray, tuples: int) -> np.ndarray:
    """(…, columns, W) member words as (…, tuples, columns) bool masks (bit l of word w = row
    64w + l)."""
    little = words.astype("<u8", copy=False)
    bits = np.unpackbits(little.view(np.uint8), axis=-1, bitorder="little")[..., :tuples]
    return np.swapaxes(bits, -1, -2).astype(bool)


@dataclass
class TupleSample:
    """f-values of n coupled tuples, (4n, Z) with member i = 4j + role (x, y0, yρ, y2ρ).

    ``honest_g`` holds the exact datamodel's predictions g*(x) = c* + ⟨a*, x⟩ on every member
    (what a fabricating prover reports); the support-column masks themselves are not kept."""

    f: np.ndarray
    honest_g: np.ndarray
    rho: float


class SupportEvaluator:
    """f̄ and the exact datamodel g* on support-column masks, as three matrix products.

    f̄ = f̂∅ + Σ_k Φ_k W_k where Φ_k holds the degree-k products φ_T(x) for every term of every
    target and W_k (terms × Z) their coefficients; g* = f̂∅ + Φ_1 W_1 (the degree-1 part is the
    exact datamodel). Equal to :meth:`SyntheticTask.evaluate` up to floating-point summation order
    (≤ 1e-15 relative); every prover model of a trial sees the same values, so the order is
    immaterial to the verdicts.
    """

    def __init__(self, task: SyntheticTask) -> None:
        self.task = task
        z = task.num_targets
        self.columns: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        for local, val in zip(task._local, task.values, strict=True):
            count = val.shape[1]
            if count == 0:
                continue
            self.columns.append(local.reshape(z * count, -1))
            w = np.zeros((z * count, z))
            w[np.arange(z * count), np.repeat(np.arange(z), count)] = val.reshape(-1)
            self.weights.append(w)
        #: W₁ as a (|support| × Z) matrix: W₁[c, t] = f̂_c of target t (0 where absent).
        self.dense_linear = np.zeros((len(task.support_columns), z))
        for target in range(z):
            np.add.at(
                self.dense_linear[:, target], task._local[0][target, :, 0], task.values[0][target]
            )

    def __call__(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f̄, g*) for (K, |support|) bool masks, each (K, Z)."""
        t = self.task
        if t._hi == 1.0 and t._lo == -1.0:  # p = 1/2: φ = ±1, products are parities
            return self._parity(masks)
        y = np.where(masks, t._hi, t._lo)
        f = np.broadcast_to(t.fhat_empty, (masks.shape[0], t.num_targets)).copy()
        g = f.copy()
        for k, (cols, w) in enumerate(zip(self.columns, self.weights, strict=True)):
            phi = y[:, cols[:, 0]]
            for d in range(1, cols.shape[1]):
                phi = phi * y[:, cols[:, d]]
            part = phi @ w
            f += part
            if k == 0 and cols.shape[1] == 1:
                g += part
        return f, g

    def _parity(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p = 1/2: φ_T(x) = Π(2x_i − 1) = (−1)^|T|·(1 − 2·(x_{i1} ⊕ … ⊕ x_{ik})), so degree 1 is
        2·x W₁ − Σ W₁ with W₁ the (|support| × Z) coefficient matrix, and each higher degree
        (−1)^k·(Σ w − 2·X_k w) with X_k the XOR of the term's bits. Exact in float64 up to the
        order of the sums."""
        t = self.task
        f = np.broadcast_to(t.fhat_empty, (masks.shape[0], t.num_targets)).copy()
        ones = masks.astype(np.float64)
        part = 2.0 * (ones @ self.dense_linear) - self.dense_linear.sum(axis=0)
        f += part
        g = f.copy()
        for cols, w in zip(self.columns, self.weights, strict=True):
            if cols.shape[1] == 1:
                continue
            bits = masks[:, cols[:, 0]]
            for d in range(1, cols.shape[1]):
                bits ^= masks[:, cols[:, d]]
            sign = -1.0 if cols.shape[1] % 2 else 1.0
            f += sign * (w.sum(axis=0) - 2.0 * (bits.astype(np.float64) @ w))
        return f, g


def _check_exact(task: SyntheticTask, honest: Attribution) -> None:
    t = task.truth()
    if not (
        np.array_equal(np.asarray(honest.intercepts), np.asarray(t.intercept))
        and np.array_equal(np.asarray(honest.coefficients), np.asarray(t.coefficients))
    ):
        raise ValueError("the Monte-Carlo engine's honest prover is the exact datamodel (c*, a*)")


def sample_tuples(
    task: SyntheticTask,
    num_tuples: int,
    rho: float,
    rng: np.random.Generator,
    honest: Attribution,
    draws: int = 1,
) -> TupleSample:
    """Draw ``num_tuples`` coupled tuples on the support columns and evaluate f on every member.

    Guarantee: the rows have the joint law of the protocol's challenge members for this task
    (module docstring) under either draw version (``draws``, see ``DRAW_VERSIONS``); f agrees
    with :meth:`SyntheticTask.evaluate` on the full rows up to summation order
    (:class:`SupportEvaluator`).
    """
    _check_exact(task, honest)
    check_draws(draws)
    n, c = int(num_tuples), len(task.support_columns)
    z = task.num_targets
    f = np.empty((MEMBERS_PER_TUPLE * n, z))
    g = np.empty_like(f)
    evaluate = SupportEvaluator(task)
    coin = _coin_sampler(rho, rng)
    for start in range(0, n, CHUNK_TUPLES):
        m = min(CHUNK_TUPLES, n - start)
        if draws == 2:
            roles = tuple(unpack_words(member_words(*tuple_words(rng, task.p, rho, c, m)), m))
        else:
            x = _bernoulli(rng, task.p, (m, c))
            y0 = _bernoulli(rng, task.p, (m, c))
            keep_r, keep_2r = coin((m, c))
            roles = (x, y0, np.where(keep_r, x, y0), np.where(keep_2r, x, y0))
        rows = slice(MEMBERS_PER_TUPLE * start, MEMBERS_PER_TUPLE * (start + m))
        for role, masks in enumerate(roles):
            f[rows][role::MEMBERS_PER_TUPLE], g[rows][role::MEMBERS_PER_TUPLE] = evaluate(masks)
    return TupleSample(f=f, honest_g=g, rho=float(rho))


class MseSample:
    """The verifier's secret MSE sample M for one trial: full-width B_p subsets, drawn lazily in
    fixed batches from a seeded stream and shared by every prover model of the trial."""

    def __init__(self, task: SyntheticTask, rng_seed: Any) -> None:
        self.task = task
        self.seed = rng_seed
        self._masks: list[np.ndarray] = []
        self._f: list[np.ndarray] = []

    def _ensure(self, stop: int) -> None:
        while len(self._masks) * MSE_BATCH < stop:
            b = len(self._masks)
            masks = _bernoulli(derive_rng(self.seed, "M", b), self.task.p,
                               (MSE_BATCH, self.task.num_train_points))  # fmt: skip
            self._masks.append(masks)
            self._f.append(self.task.evaluate(masks))

    def _rows(self, parts: list[np.ndarray], first: int, stop: int) -> np.ndarray:
        self._ensure(stop)
        lo, hi = first // MSE_BATCH, -(-stop // MSE_BATCH)
        block = np.concatenate(parts[lo:hi]) if hi - lo > 1 else parts[lo]
        return block[first - lo * MSE_BATCH : stop - lo * MSE_BATCH]

    def masks(self, indices: np.ndarray) -> np.ndarray:
        """The subsets of M-members ``indices`` (bool rows)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.zeros((0, self.task.num_train_points), dtype=bool)
        first, stop = int(idx.min()), int(idx.max()) + 1
        return self._rows(self._masks, first, stop)[idx - first]

    def f(self, first: int, count: int) -> np.ndarray:
        """f-values of M-members [first, first + count) (the verifier's own retrainings)."""
        return self._rows(self._f, first, first + count)


# ---------------------------------------------------------------------------------------------
# prover models


@dataclass(frozen=True)
class ProverModel:
    """A prover for the Monte-Carlo: a catalogue name ("honest" or an adversary) and strength."""

    name: str
    strength: float = 0.0

    @property
    def label(self) -> str:
        """ "name" or "name:strength"."""
        return self.name if self.name == "honest" else f"{self.name}:{self.strength:g}"


def prover_attribution(
    model: ProverModel, task: SyntheticTask, honest: Attribution, context: AttackContext
) -> Attribution:
    """The (c, a) the model claims, from the real catalogue classes."""
    strategy = make_adversary(model.name, model.strength, task, honest, context=context)
    return strategy.attribution()


def _choose(rng: np.random.Generator, total: int, fraction: float) -> np.ndarray:
    return np.sort(rng.choice(total, size=round(fraction * total), replace=False))


def _fresh_role_values(
    task: SyntheticTask,
    honest: Attribution,
    rho: float,
    roles: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """f-values of fresh, independent members with the given roles (another session's tuples)."""
    sample = sample_tuples(task, len(roles), rho, rng, honest)
    return sample.f[MEMBERS_PER_TUPLE * np.arange(len(roles)) + roles]


def answer_attack(
    model: ProverModel,
    sample: TupleSample,
    task: SyntheticTask,
    honest: Attribution,
    rng: np.random.Generator,
    caught: Callable[[int], bool],
) -> tuple[np.ndarray | None, int]:
    """(reported f-values, members a check would expose) for an answer attack; the values are
    None when ``caught(exposed)`` already says a spot check hit a tampered member.

    Mirrors the catalogue: lazy and equivocate report the honest datamodel's prediction (clipped
    to [−b, b]); wrong-subset reports f on a fresh subset; replay reports another session's member
    of the same role; wrong-seed reports the true value under the wrong seed (noise-free f ignores
    the seed; the opening exposes the seed); fp-noise adds U(−s, s) and is exposed where the
    difference exceeds τ. Which members are tampered with does not depend on the values, so for
    all but wrong-subset and fp-noise the check is drawn before the values are built.
    """
    b = task.output_bound
    total = len(sample.f)
    name, s = resolve(model.name), float(model.strength)
    if name == "fp-noise":
        noisy = np.clip(sample.f + rng.uniform(-s, s, sample.f.shape), -b, b)
        exposed = int(np.count_nonzero(np.any(np.abs(noisy - sample.f) > task.tolerance, axis=1)))
        return (None if caught(exposed) else noisy), exposed
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"{name}: strength is a fraction in [0, 1], got {s}")
    chosen = _choose(rng, total, s)
    if name not in ("lazy", "equivocate", "wrong-subset", "replay", "wrong-seed"):
        raise ValueError(f"{name} is not an answer attack")
    if name != "wrong-subset" and caught(len(chosen)):
        return None, len(chosen)
    f = sample.f.copy()
    if name in ("lazy", "equivocate"):
        f[chosen] = np.clip(sample.honest_g[chosen], -b, b)
    elif name in ("wrong-subset", "replay"):
        f[chosen] = _fresh_role_values(task, honest, sample.rho, chosen % MEMBERS_PER_TUPLE, rng)
    if name == "wrong-subset":  # a wrong subset that happens to give the true f passes its check
        exposed = int(np.count_nonzero(np.any(f[chosen] != sample.f[chosen], axis=1)))
        return (None if caught(exposed) else f), exposed
    return f, len(chosen)


def lie_gains(f: np.ndarray, rho: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """For every member: the largest rise of its tuple's r_j one lie on it can cause (summed over
    targets), and the value (per target) that achieves it.

    r = (u² + v²)/2 + u(A v − B w + C s) is convex in u and in v and linear in w and s, so the best
    lie is at ±b: u → sign(K)·b with K = Av − Bw + Cs; v → sign(A u)·b (ties to +b); w → −sign(u)·b;
    s → sign(u)·b.
    """
    a, bb, c = residual_coefficients(rho)
    u, v, w, s = (f[role::MEMBERS_PER_TUPLE] for role in range(MEMBERS_PER_TUPLE))
    r_now = residual_samples(f, rho)

    def sgn(x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, 1.0, -1.0)

    best = np.empty_like(f)
    best[0::4] = sgn(a * v - bb * w + c * s) * bound
    best[1::4] = sgn(a * u) * bound
    best[2::4] = -sgn(u) * bound
    best[3::4] = sgn(u) * bound
    gains = np.empty_like(f)
    for role in range(MEMBERS_PER_TUPLE):
        lied = f.copy()
        lied[role::MEMBERS_PER_TUPLE] = best[role::MEMBERS_PER_TUPLE]
        gains[role::MEMBERS_PER_TUPLE] = residual_samples(lied, rho) - r_now
    return gains.sum(axis=1), best


def targeted_lies(
    f: np.ndarray,
    plan: PracticalPlan,
    task: SyntheticTask,
    claimed: Attribution,
    epsilon: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """The strongest few-lies attack the analysis allows, for a prover claiming ``claimed``.

    The prover estimates its claimed datamodel's MSE on 4,000 of its own B_p retrainings, adds the
    plan's predicted MSE half-width, and needs residual.lower ≥ that − ε. It lies on the members
    with the largest gains (:func:`lie_gains`), using the fewest lies (binary search, ≤ m*) that
    reach the goal by the verifier's own :func:`residual_interval`, or all m* if none does.
    Returns (reported f-values, number of lies).
    """
    m_star = int(plan.lie_allowance)
    if m_star <= 0:
        return f, 0
    goal = lie_goal(plan, task, claimed, epsilon, rng)
    gains, best = lie_gains(f, plan.rho, task.output_bound)
    top = (
        np.argpartition(-gains, m_star - 1)[:m_star]
        if m_star < len(gains)
        else np.arange(len(gains))
    )
    order = top[np.argsort(-gains[top], kind="stable")]
    d_r = plan.delta_split["residual_per_target"]

    def lied(count: int) -> np.ndarray:
        out = f.copy()
        idx = order[:count]
        out[idx] = best[idx]
        return out

    def reaches(count: int) -> bool:
        ri = residual_interval(
            lied(count), plan.rho, task.output_bound, d_r, m_star, task.tolerance
        )
        return bool(np.all(ri.lower >= goal))

    count = fewest_lies(reaches, len(order))
    return (f, 0) if count == 0 else (lied(count), count)


def lie_goal(
    plan: PracticalPlan,
    task: SyntheticTask,
    claimed: Attribution,
    epsilon: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The residual lower bound (Z,) the targeted prover aims for: its own estimate of the claimed
    datamodel's MSE (4,000 of its own B_p retrainings) plus the plan's predicted MSE half-width,
    minus ε."""
    own = _bernoulli(rng, task.p, (4000, task.num_train_points))
    loss = (task.evaluate(own) - datamodel_predictions(own, claimed.intercepts,
                                                       claimed.coefficients)) ** 2  # fmt: skip
    return loss.mean(axis=0) + plan.budget["mse_halfwidth_planned"] - epsilon


def fewest_lies(reaches: Callable[[int], bool], most: int) -> int:
    """The fewest lies in [0, most] for which ``reaches`` holds (binary search; ``reaches`` is
    taken as monotone), or ``most`` when even that many do not reach the goal."""
    if reaches(0):
        return 0
    if not reaches(most):
        return most
    lo, hi = 0, most
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------
# plans and trials


def seeded_pilot(task: SyntheticTask, seed: Any, num_tuples: int = PILOT_TUPLES) -> PilotStats:
    """The verifier's sizing pilot (``verifier.practical_flow.run_pilot``), seeded."""
    return run_pilot(task, num_tuples, derive_rng(seed, "pilot")).stats


def cell_plan(
    task: SyntheticTask,
    epsilon: float,
    delta: float,
    seed: Any,
    max_mse_samples: int,
    pilot_tuples: int = PILOT_TUPLES,
) -> PracticalPlan:
    """The practical plan (sampled spot checks) for one cell, sized from a seeded pilot."""
    return plan_practical(
        delta,
        task.output_bound,
        task.tolerance,
        task.num_targets,
        seeded_pilot(task, seed, pilot_tuples),
        epsilon=epsilon,
        all_checked=False,
        max_mse_samples=max_mse_samples,
    )


@dataclass
class Outcome:
    """One prover model's result in one trial."""

    prover: str
    verdict: str
    kind: str
    naive_accept: bool
    mse_samples: int
    lies: int
    exposed: int
    err_upper: float | None
    residual_lower: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def naive_accept(mse: MseSample, c: np.ndarray, a: np.ndarray) -> bool:
    """The naive "is the MSE low?" verifier: msê ≤ (1 − NAIVE_R2)·Var̂ f on M's first 4,000."""
    idx = np.arange(NAIVE_SAMPLES)
    f = mse.f(0, NAIVE_SAMPLES)
    pred = datamodel_predictions(mse.masks(idx), c, a)
    return bool(np.all(np.mean((f - pred) ** 2, axis=0) <= (1 - NAIVE_R2) * np.var(f, axis=0)))


def resolve_engine(provers: list[ProverModel], engine: str = "auto") -> str:
    """The engine :func:`run_trial` uses for these provers: "memory" or "streamed" ("auto"
    streams whenever no prover is an answer attack). Raises ``ValueError`` for another name."""
    if engine not in ("auto", "memory", "streamed"):
        raise ValueError(f"engine must be auto, memory or streamed, got {engine!r}")
    if engine == "auto":
        from simulations.streamed import streamable

        return "streamed" if streamable(provers) else "memory"
    return engine


def run_trial(
    task: SyntheticTask,
    plan: PracticalPlan,
    provers: list[ProverModel],
    honest: Attribution,
    seed: Any,
    engine: str = "auto",
    draws: int = 1,
) -> list[Outcome]:
    """One trial: one tuple sample (draw version ``draws``) and one M, judged for every prover
    model.

    Guarantee: each verdict is the practical verifier's (residual interval, sequential MSE,
    decision) on what that prover reports, after the spot-check draw; nothing is accepted that the
    real decision rule would not accept on the same numbers. ``engine``: "memory" holds every
    f-value; "streamed" (:mod:`simulations.streamed`, attribution attacks only) gives the same
    verdicts on the same draws without holding them; "auto" streams whenever it can.
    """
    if resolve_engine(provers, engine) == "streamed":
        from simulations.streamed import run_trial_streamed

        return run_trial_streamed(task, plan, provers, honest, seed, draws)
    eps = np.broadcast_to(np.asarray(plan.epsilon, dtype=np.float64), (task.num_targets,))
    sample = sample_tuples(
        task, plan.pairs_per_level, plan.rho, derive_rng(seed, "E"), honest, draws
    )
    mse = MseSample(task, (seed, "M"))
    members = sample.f.shape[0]
    context = AttackContext(epsilon=float(eps.min()), lie_allowance=plan.lie_allowance, seed=0)
    out: list[Outcome] = []
    honest_residual: Any = None
    for model in provers:
        prng = derive_rng(seed, "prover", model.label)
        vrng = derive_rng(seed, "checks", model.label)

        def caught(exposed: int, vrng: np.random.Generator = vrng) -> bool:
            if exposed <= 0:
                return False
            return int(vrng.hypergeometric(exposed, members - exposed, plan.spot_checks)) > 0

        name = "honest" if model.name == "honest" else resolve(model.name)
        if name in ANSWER_ATTACKS:
            claimed = honest
            f, exposed = answer_attack(model, sample, task, honest, prng, caught)
            lies, hit = exposed, f is None
        else:
            claimed = prover_attribution(model, task, honest, context)
            f, lies = sample.f, 0
            if name == "targeted":
                f, lies = targeted_lies(sample.f, plan, task, claimed, eps, prng)
            exposed = lies
            hit = caught(exposed)
        c = np.asarray(claimed.intercepts, dtype=np.float64)
        a = np.asarray(claimed.coefficients, dtype=np.float64)
        naive = naive_accept(mse, c, a)
        if hit or f is None:
            extra = {}
            if name == "targeted" and f is not None:  # the lies' effect had the checks missed
                missed = run_sequential_mse(plan, task, f, c, a, mse.masks, mse.f).decision
                extra["verdict_if_missed"] = missed.verdict
            out.append(Outcome(model.label, "reject", "spot-check", naive, 0, lies, exposed,
                               None, None, extra))  # fmt: skip
            continue
        residual = None
        if f is sample.f:
            if honest_residual is None:
                honest_residual = residual_interval(
                    f, plan.rho, task.output_bound, plan.delta_split["residual_per_target"],
                    plan.lie_allowance, task.tolerance,
                )  # fmt: skip
            residual = honest_residual
        seq = run_sequential_mse(plan, task, f, c, a, mse.masks, mse.f, residual=residual)
        out.append(judged_outcome(model.label, seq, naive, lies, exposed))
    return out


def judged_outcome(label: str, seq: Any, naive: bool, lies: int, exposed: int) -> Outcome:
    """The outcome of a run that reached the decision (no spot check hit): the verdict, why it was
    rejected ("cap" when the MSE cap left it undetermined, else "mse"), and err_upper and
    residual_lower of the target closest to failing."""
    d = seq.decision
    kind = "accept" if d.accepted else ("cap" if "cap" in d.reason else "mse")
    t = int(np.argmax(d.err_upper - d.epsilon))
    return Outcome(label, d.verdict, kind, naive, seq.mse_samples_used, lies, exposed,
                   float(d.err_upper[t]), float(d.residual_lower[t]))  # fmt: skip


def true_err(
    model: ProverModel, task: SyntheticTask, honest: Attribution, context: AttackContext
) -> float:
    """Exact err of the model's claimed (c, a) (max over targets); answer attacks keep honest."""
    name = "honest" if model.name == "honest" else resolve(model.name)
    claimed = honest if name in ANSWER_ATTACKS else prover_attribution(model, task, honest, context)
    return float(np.max(task.truth().err(claimed.intercepts, claimed.coefficients)))


def scale_for_err(task: SyntheticTask, err: float) -> float:
    """The scaling s with err(c*, s·a*) = err exactly (max over targets; p = 1/2: (1 − s)²B_1)."""
    t = task.truth()
    a = np.asarray(t.coefficients)
    # err(s) = σ²(1 − s)²‖a*‖² + (μ(1 − s)Σa*)² per target (c* kept): solve for the worst target.
    per = task.sigma**2 * np.sum(a * a, axis=1) + (task.mu * np.sum(a, axis=1)) ** 2
    return 1.0 - math.sqrt(err / float(np.max(per)))
