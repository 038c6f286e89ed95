"""Monte-Carlo of the practical verifier on the exact synthetic task: the rule's own code, with
the challenge, MSE and pilot draws made in law on the support columns.

What is exact and what is a shortcut (docs/validity.md says the same):

* **The decision is the verifier's.** Each trial runs :class:`protocol.rules.practical.
  PracticalRule` unchanged — the claim-only reject, planning, every bound, every look, the
  stopping rule, the spot checks — against a simulated
  :class:`~protocol.rules.practical.PracticalEvidence`.
* **Draws in law, on the support columns.** The synthetic f depends only on its support columns
  (≤ 55 per target whatever N is) and the grid's claims are supported there too; under B_p those
  coordinates are independent of the rest. So M is drawn on those columns, and each challenge
  tuple as x, y0 and the coupling coin v with y_ℓ = x where v < ℓ, else y0 (the law of
  :class:`protocol.challenges.ChallengeSpec`). The pilot is the real one (the task-seeded
  :func:`protocol.rules.practical.pilot_masks`), restricted to those columns.
* **Spot checks as a count.** k members of the committed |E| are checked uniformly without
  replacement; the number of lies among them is hypergeometric, so it is drawn directly; any hit
  rejects, as a failed CHECKEQUIV does.
* **Seeded, not CSPRNG**, so every number can be regenerated; **common random numbers**: within
  a trial every prover sees the same M and, for the same ρ, the same tuples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.residual import residual_coefficients
from protocol.rules.base import Verdict
from protocol.rules.practical import (
    PilotData,
    PracticalOutcome,
    PracticalPlan,
    PracticalRule,
    pilot_masks,
)
from protocol.tasks.synthetic import SyntheticTask

#: Rows per lazily drawn block of M or of the challenge stream.
BLOCK = 4096


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


class SupportEvaluator:
    """f on support-column masks (K, |support|): f̂∅ + Σ_T f̂_T φ_T, one matrix product per level.

    Equal to :meth:`SyntheticTask.evaluate` on full rows up to summation order (≤ 1e-15
    relative; ``tests/test_montecarlo.py`` checks it).
    """

    def __init__(self, task: SyntheticTask) -> None:
        self.task = task
        z = task.num_targets
        self.columns: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self._flat: tuple[np.ndarray, ...] | None = None
        for local, val in zip(task._local, task.values, strict=True):
            count = val.shape[1]
            if count == 0:
                continue
            self.columns.append(local.reshape(z * count, -1))
            w = np.zeros((z * count, z))
            w[np.arange(z * count), np.repeat(np.arange(z), count)] = val.reshape(-1)
            self.weights.append(w)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """f for (K, |support|) bool masks, (K, Z)."""
        t = self.task
        if t._hi == 1.0 and t._lo == -1.0:
            return self._parity(masks)
        y = np.where(masks, t._hi, t._lo)
        f = np.broadcast_to(t.fhat_empty, (masks.shape[0], t.num_targets)).copy()
        for cols, w in zip(self.columns, self.weights, strict=True):
            phi = y[:, cols[:, 0]]
            for d in range(1, cols.shape[1]):
                phi = phi * y[:, cols[:, d]]
            f += phi @ w
        return f

    def _parity(self, masks: np.ndarray) -> np.ndarray:
        if self._flat is None:
            self._flat = _flatten_terms(self.task)
        cols, starts, targets, values = self._flat
        out = np.empty((masks.shape[0], self.task.num_targets))
        _parity_kernel(np.ascontiguousarray(masks), cols, starts, targets, values,
                       self.task.fhat_empty.astype(np.float64), out)  # fmt: skip
        return out


def _flatten_terms(task: SyntheticTask) -> tuple[np.ndarray, ...]:
    """Every term of every target as flat arrays: its support columns (concatenated, with
    start offsets), its target and its coefficient."""
    cols: list[int] = []
    starts = [0]
    targets: list[int] = []
    values: list[float] = []
    for local, val in zip(task._local, task.values, strict=True):
        for t in range(val.shape[0]):
            for j in range(val.shape[1]):
                cols.extend(int(c) for c in local[t, j])
                starts.append(len(cols))
                targets.append(t)
                values.append(float(val[t, j]))
    return (
        np.asarray(cols, dtype=np.int64),
        np.asarray(starts, dtype=np.int64),
        np.asarray(targets, dtype=np.int64),
        np.asarray(values, dtype=np.float64),
    )


@numba.njit(cache=True, nogil=True)
def _parity_kernel(masks, cols, starts, targets, values, base, out):  # type: ignore[no-untyped-def]
    """out[k, t] = f̂∅_t + Σ_terms f̂_T·Π_{i∈T}(2x_i − 1) at p = 1/2 (a product of ±1 is a
    parity), row by row."""
    for k in range(masks.shape[0]):
        for t in range(out.shape[1]):
            out[k, t] = base[t]
        for term in range(values.shape[0]):
            odd = False
            for q in range(starts[term], starts[term + 1]):
                if not masks[k, cols[q]]:
                    odd = not odd
            out[k, targets[term]] += -values[term] if odd else values[term]


@dataclass(frozen=True)
class Claim:
    """A claimed datamodel restricted to the support columns, with its exact err (Z,)."""

    label: str
    intercepts: np.ndarray
    coefficients: np.ndarray  # (Z, |support|)
    err: np.ndarray

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """g = c + ⟨a, 2·mask − 1⟩ on support-column masks."""
        return self.intercepts + (2.0 * masks - 1.0) @ self.coefficients.T


def make_claim(task: SyntheticTask, label: str, intercepts: Any, coefficients: Any) -> Claim:
    """A :class:`Claim` from full-width (c, a); ``ValueError`` if a weighs a non-support point."""
    a = np.asarray(coefficients, dtype=np.float64)
    c = np.asarray(intercepts, dtype=np.float64)
    cols = task.support_columns
    outside = np.ones(a.shape[1], dtype=bool)
    outside[cols] = False
    if np.any(a[:, outside] != 0):
        raise ValueError(f"claim {label!r} weighs points outside the task's support columns")
    return Claim(label, c, a[:, cols], task.truth().err(c, a))


def scale_for_err(task: SyntheticTask, err: float) -> float:
    """The scaling s with max_t err(c*, s·a*) = err exactly (p = 1/2: (1 − s)²B_1)."""
    t = task.truth()
    a = np.asarray(t.coefficients)
    per = task.sigma**2 * np.sum(a * a, axis=1) + (task.mu * np.sum(a, axis=1)) ** 2
    return 1.0 - math.sqrt(err / float(np.max(per)))


def bernoulli(rng: np.random.Generator, p: float, shape: tuple[int, int]) -> np.ndarray:
    """Exact B_p booleans: random bits at p = 1/2, else a float64 uniform below p."""
    if p == 0.5:
        return rng.integers(0, 2, size=shape, dtype=np.uint8).astype(bool)
    return rng.random(shape) < p


def coin(rng: np.random.Generator, rho: float, shape: tuple[int, int]) -> tuple[Any, Any]:
    """(v < ρ, v < 2ρ) for one uniform coin v per cell: exact in thousandths when 1000ρ is an
    integer (v uniform on {0, …, 999}), else a float64 uniform."""
    scaled = rho * 1000.0
    if abs(scaled - round(scaled)) < 1e-9:
        v = rng.integers(0, 1000, size=shape, dtype=np.uint16)
        return v < round(scaled), v < 2 * round(scaled)
    u = rng.random(shape)
    return u < rho, u < 2.0 * rho


class TrialDraws:
    """One trial's randomness, shared by every prover: M, the challenge streams, the pilot."""

    def __init__(self, task: SyntheticTask, seed: Any, pilot_seed: str) -> None:
        self.task = task
        self.seed = seed
        self.pilot_seed = pilot_seed
        self.evaluate = SupportEvaluator(task)
        self.c = len(task.support_columns)
        self._mse: list[tuple[np.ndarray, np.ndarray]] = []
        self._tuples: dict[float, dict[int, tuple[np.ndarray, np.ndarray]]] = {}

    def mse(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(f, support masks) of M's members [first, first + count)."""
        p = self.task.p

        def make(b: int) -> tuple[np.ndarray, np.ndarray]:
            masks = bernoulli(derive_rng(self.seed, "M", b), p, (BLOCK, self.c))
            return self.evaluate(masks), masks

        return self._rows(self._mse, first, count, make, 1)

    def tuples(self, rho: float, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(f, support masks) of the challenge members of tuples [first, first + count) at ρ."""
        p = self.task.p
        store = self._tuples.setdefault(float(rho), {})

        def make(b: int) -> tuple[np.ndarray, np.ndarray]:
            rng = derive_rng(self.seed, "E", float(rho), b)
            shape = (BLOCK, self.c)
            x, y0 = bernoulli(rng, p, shape), bernoulli(rng, p, shape)
            near, far = coin(rng, rho, shape)
            masks = np.empty((MEMBERS_PER_TUPLE * BLOCK, self.c), dtype=bool)
            masks[0::4], masks[1::4] = x, y0
            masks[2::4] = np.where(near, x, y0)
            masks[3::4] = np.where(far, x, y0)
            return self.evaluate(masks), masks

        return self._rows(store, MEMBERS_PER_TUPLE * first, MEMBERS_PER_TUPLE * count, make, 4)

    def _rows(
        self, store: Any, first: int, count: int, make: Callable[[int], Any], per: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows [first, first + count) of a stream of seeded blocks of BLOCK·per rows. ``store``
        is a list (every block kept: M, shared by all provers) or a dict (only the blocks of the
        last request kept: challenge streams are regenerated per prover, to bound memory)."""
        stop = first + count
        size = BLOCK * per
        lo, hi = first // size, -(-stop // size)
        if isinstance(store, dict):
            blocks = {b: store.get(b) or make(b) for b in range(lo, hi)}
            store.clear()
            store[hi - 1] = blocks[hi - 1]  # the next round usually starts in the last block
        else:
            while len(store) < hi:
                store.append(make(len(store)))
            blocks = {b: store[b] for b in range(lo, hi)}
        f = np.concatenate([blocks[b][0] for b in range(lo, hi)])
        m = np.concatenate([blocks[b][1] for b in range(lo, hi)])
        off = first - lo * size
        return f[off : off + count], m[off : off + count]


_PILOTS: dict[tuple[str, str, int], tuple[dict[Any, np.ndarray], dict[Any, np.ndarray]]] = {}


def pilot_draws(task: SyntheticTask, seed: str, num_tuples: int) -> tuple[dict, dict]:
    """The real seeded pilot's f-values and support masks (cached per task, seed and size)."""
    key = (task.selector, seed, int(num_tuples))
    if key not in _PILOTS:
        masks = pilot_masks(num_tuples, task.num_train_points, task.p, seed)
        cols = task.support_columns
        ev = SupportEvaluator(task)
        sub = {k: m[:, cols] for k, m in masks.items()}
        _PILOTS[key] = ({k: ev(m) for k, m in sub.items()}, sub)
    return _PILOTS[key]


LieHook = Callable[[np.ndarray, np.ndarray, float, int], tuple[np.ndarray, int]]


@dataclass
class SimEvidence:
    """:class:`~protocol.rules.practical.PracticalEvidence` for one prover in one trial."""

    draws: TrialDraws
    claim: Claim
    lie: LieHook | None = None
    lies: int = 0
    members: int = 0
    pilot_retrainings: int = 0
    rounds: list[int] = field(default_factory=list)
    #: Draws whether a spot check hits a lie (the verifier's CSPRNG, simulated).
    rng: np.random.Generator | None = None
    spot_checks: int = 0
    caught: bool = False

    def mse(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The verifier's own retrainings of M."""
        f, masks = self.draws.mse(first, count)
        return f, self.claim.predict(masks)

    def pilot(self, num_tuples: int) -> PilotData:
        """The seeded pilot (the verifier's own retrainings)."""
        f, masks = pilot_draws(self.draws.task, self.draws.pilot_seed, num_tuples)
        preds = {k: self.claim.predict(m) for k, m in masks.items()}
        self.pilot_retrainings = num_tuples * len(f)
        return PilotData(f, preds, self.pilot_retrainings)

    def challenge(
        self, rho: float, first_tuple: int, count: int, predictions: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A round, with the prover's lies (if any) applied to the reported values."""
        f, masks = self.draws.tuples(rho, first_tuple, count)
        f = f.copy()
        if self.lie is not None:
            f, used = self.lie(f, masks, rho, self.lies)
            self.lies += used
        self.members += MEMBERS_PER_TUPLE * count
        self.rounds.append(count)
        return f, (self.claim.predict(masks) if predictions else None)

    def spot_check(self, count: int) -> None:
        """``count`` members drawn uniformly without replacement: caught iff one is a lie (an
        exact hypergeometric draw from ``rng``, made only when the prover lied)."""
        self.spot_checks = count
        if self.lies:
            if self.rng is None:
                raise ValueError("a spot check on a lying prover needs SimEvidence.rng")
            hits = self.rng.hypergeometric(self.lies, self.members - self.lies, count)
            self.caught = bool(hits > 0)


def best_lies(
    f: np.ndarray, v: np.ndarray, rho: float, bound: float, budget: int
) -> tuple[np.ndarray, int]:
    """The ``budget`` single-member lies that raise Σ_j r_j (on v = f − βĝ) the most.

    For each tuple the best lie over its four members and both extremes ±b of f (r is convex in
    v(x), v(y0) and linear in v(yρ), v(y2ρ), so the best value sits at an extreme); the tuples
    with the largest gains get one lie each. Returns (lied f, lies used)."""
    if budget <= 0:
        return f, 0
    a, b_, c = residual_coefficients(rho)
    n = f.shape[0] // MEMBERS_PER_TUPLE
    shift = v - f  # −βĝ, fixed by the claim
    vx, v0, vr, v2 = (v[r::4] for r in range(4))

    def r_of(x: np.ndarray, y0: np.ndarray, yr: np.ndarray, y2: np.ndarray) -> np.ndarray:
        return (0.5 * (x * x + y0 * y0) + x * (a * y0 - b_ * yr + c * y2)).sum(axis=1)

    base = r_of(vx, v0, vr, v2)
    best_gain = np.full(n, -np.inf)
    best_role = np.zeros(n, dtype=np.int64)
    best_val = np.zeros((n, f.shape[1]))
    for role in range(4):
        for sign in (-1.0, 1.0):
            new = sign * bound + shift[role::4]
            parts = [vx, v0, vr, v2]
            parts[role] = new
            gain = r_of(*parts) - base
            better = gain > best_gain
            best_gain = np.where(better, gain, best_gain)
            best_role = np.where(better, role, best_role)
            best_val[better] = sign * bound
    k = min(int(budget), n)
    top = np.argsort(-best_gain)[:k]
    top = top[best_gain[top] > 0]
    out = f.copy()
    out[MEMBERS_PER_TUPLE * top + best_role[top]] = best_val[top]
    return out, len(top)


@dataclass(frozen=True)
class TrialResult:
    """One prover's run in one trial: the rule's outcome and what the checks did."""

    prover: str
    err: float
    verdict: str
    verdict_if_missed: str
    err_upper: float
    mse_samples: int
    tuples: int
    spot_checks: int
    lies: int
    caught: bool
    rho: float | None
    beta: float | None
    pilot_retrainings: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


def judge(
    plan: PracticalPlan,
    claim: Claim,
    draws: TrialDraws,
    rng: np.random.Generator,
    *,
    targeted: bool = False,
) -> TrialResult:
    """Run the practical rule on one prover, spot checks included, as the driver does."""
    evidence = SimEvidence(draws, claim, rng=rng)
    rule = PracticalRule()
    run = rule.begin(plan, claim.intercepts, _full_width(claim, draws.task), evidence)
    if targeted:
        b = plan.output_bound

        def lie(f: np.ndarray, masks: np.ndarray, rho: float, used: int) -> tuple[np.ndarray, int]:
            cp = run.challenge
            assert cp is not None
            v = (
                f
                if not cp.beta
                else f - cp.beta * run.setup.law.clip(claim.predict(masks), cp.clip)
            )
            return best_lies(f, v, rho, b, cp.lie_allowance - used)

        evidence.lie = lie
    outcome: PracticalOutcome = rule.finish(run).raw
    verdict = outcome.verdict
    caught = evidence.caught
    k = evidence.spot_checks
    cp = outcome.challenge
    final = Verdict.REJECT if caught else verdict
    worst = int(np.argmax(outcome.err_upper - outcome.epsilon_accept))
    return TrialResult(
        prover=claim.label,
        err=float(np.max(claim.err)),
        verdict=final.value,
        verdict_if_missed=verdict.value,
        err_upper=float(outcome.err_upper[worst]),
        mse_samples=outcome.mse_samples,
        tuples=outcome.tuples,
        spot_checks=k,
        lies=evidence.lies,
        caught=caught,
        rho=None if cp is None or not cp.schedule else cp.rho,
        beta=None if cp is None or not cp.schedule else cp.beta,
        pilot_retrainings=evidence.pilot_retrainings,
    )


def _full_width(claim: Claim, task: SyntheticTask) -> np.ndarray:
    a = np.zeros((task.num_targets, task.num_train_points))
    a[:, task.support_columns] = claim.coefficients
    return a


def exploit_claim(task: SyntheticTask, err: float, seed: Any) -> Claim:
    """The err-level claim a prover would pick knowing the task and the rule, but not M or E.

    Candidates with max_t err = ``err`` exactly: the scaled datamodel; the error all in the
    intercept; all on the largest coefficient; spread evenly over every coefficient with signs.
    It keeps the one whose loss (f − g)² has the smallest variance on 20,000 of its own samples
    (the MSE bound's width, and through it the chance of an early accept, is what a prover can
    influence; its mean is pinned by err)."""
    t = task.truth()
    c0, a0 = np.asarray(t.intercept, dtype=np.float64), np.asarray(t.coefficients, dtype=np.float64)
    z = task.num_targets
    sigma = task.sigma
    s = scale_for_err(task, err)
    cands = {"scale": (c0, a0 * s)}
    cands["intercept"] = (c0 + math.sqrt(err), a0.copy())
    a1 = a0.copy()
    top = np.argmax(np.abs(a0), axis=1)
    a1[np.arange(z), top] += math.sqrt(err) / sigma
    cands["one-point"] = (c0, a1)
    a2 = a0.copy()
    supp = a0 != 0
    counts = supp.sum(axis=1, keepdims=True)
    a2 += np.where(supp, np.sign(a0) * math.sqrt(err) / (sigma * np.sqrt(np.maximum(counts, 1))), 0)
    cands["spread"] = (c0, a2)
    draws = TrialDraws(task, ("exploit", seed), "0" * 64)
    f, masks = draws.mse(0, 20_000)
    best, best_var = None, math.inf
    for name, (c, a) in cands.items():
        claim = make_claim(task, f"exploit({name})", c, a)
        var = float(np.max(((f - claim.predict(masks)) ** 2).var(axis=0)))
        if var < best_var:
            best, best_var = claim, var
    assert best is not None
    return best
