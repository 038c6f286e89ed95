"""The practical rule (the default): claim first, MSE first, challenges until the verdict is known.

Derivations are in ``docs/guarantee.md``. Per target t, with the claim g_t committed before any
randomness the bounds use is drawn:

1. **MSE.** The verifier's secret sample M gives the clipped losses ℓ̂ = (f − ĝ)², ĝ the claim
   clipped at m ± T_M (:mod:`protocol.rules.tails`), so ℓ̂ ∈ [0, (b + τ + |m| + T_M)²] whatever N
   is. Anytime-valid betting bounds (:mod:`protocol.betting`) give mse_upper and mse_lower; the
   clipping is charged analytically.
2. **Accept by the MSE alone** when mse_upper ≤ ε: err = mse − B_{≥2} ≤ mse.
3. **Challenges.** Otherwise the prover answers rounds of coupled tuples from a public seed drawn
   after its claim. Each tuple gives r_j on v = f − βĝ_R (β ∈ {0, 1} chosen by the planner:
   B_{≥2}(f − βg) = B_{≥2}(f) for the affine claim, so f − g has a much smaller variance, but ĝ
   widens the almost-sure range the bound pays for). Betting bounds give B_{≥2} ∈ [lower, upper],
   robust to m* undetected lies when checks are sampled.
4. **Decision** after every look: err_upper = mse_upper − B_{≥2}.lower ≤ ε_t for every t → accept;
   err_lower = mse_lower − B_{≥2}.upper > ε_t for some t → reject; else continue; with every
   budget spent → inconclusive, reporting the ε each target does certify (its err_upper).

Soundness: P(accept while some err_t > ε_t) ≤ δ, split over the accept-side events (MSE upper
bounds, residual lower bounds, the spot checks, the variance lower bounds when ε is relative);
the reject side (a claim with err ≤ ε rejected) has its own δ. Every bound is anytime-valid, so
the looks and the stopping rule cost nothing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from protocol.accounting import ConfigurationError, lie_allowance, spot_checks_needed
from protocol.betting import (
    DEFAULT_CAP,
    BettingBound,
    Side,
    bet_size,
    capital_needed,
    growth_rate,
)
from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.limits import MAX_SESSION_MODELS, MAX_SESSION_TUPLES
from protocol.residual import (
    bias_coefficient,
    residual_row_sum,
    residual_sample_range,
    residual_samples,
)
from protocol.rules.base import (
    CheckMode,
    ClaimRejected,
    Evidence,
    PlanRequest,
    RecordContext,
    RecordError,
    Rule,
    RuleName,
    RuleOutcome,
    Verdict,
)
from protocol.rules.records import close, read, read_vector
from protocol.rules.tails import ClaimLaw, excess_moments
from protocol.validation import check_delta

#: ρ values the challenge planner chooses from (the pilot samples every one of them).
RHO_GRID = (0.1, 0.2, 0.3, 0.5)
#: The claim's weight in the residual's v = f − βĝ.
BETAS = (0.0, 1.0)
#: Fractions of ε_t (see docs/guarantee.md §6).
CLIP_SHARE_MSE = 0.02
CLIP_SHARE_RESIDUAL = 0.03
TOLERANCE_SHARE = 0.05
#: Stage 1 ends when every undecided target's MSE half-width is below this fraction of ε_t.
STAGE1_HALFWIDTH = 0.25
#: The planner aims the residual bound at this fraction of the gap the decision needs.
PLANNED_GAP = 0.8
#: The least share of ε an accept plan may rest on (below it the plan is noise).
MIN_BUDGET = 0.2
#: The pilot's sd estimates are inflated by this factor before sizing.
SD_INFLATION = 1.2
#: Cumulative challenge rounds, as fractions of the planned number of tuples.
ROUND_FRACTIONS = (0.125, 0.25, 0.5, 1.0, 2.0)
#: MSE samples per look: at least MSE_BATCH, else 1/MSE_GROWTH of those already held. Every
#: bound is anytime-valid, so a look costs no δ; looking often only stops the sample nearer the
#: size the verdict needed (12.5% past it at most, where doubling looks overshot up to 2×).
MSE_BATCH = 512
MSE_GROWTH = 8
#: Bet cap c of the MSE bounds (the other bounds keep DEFAULT_CAP). An upper bound on a mean of
#: losses in [0, hi] bets at most c/(hi − m), so while the losses are far below hi (an honest
#: claim's) its width is about hi·ln(1/δ)/(c·n): a larger c is a proportionally narrower bound.
#: Any c < 1 keeps the bound valid (docs/guarantee.md §2); what c costs is ln(1/(1 − c)) of capital
#: per loss at the very top of the range, and no lie ever enters M (it is certified or retrained).
MSE_BET_CAP = 0.9
#: Shares φ of the accept budget the planner tries giving the MSE bound (the rest goes to the
#: residual bound), then steps of BUDGET_SHARE_STEP around the best of them: the fine steps keep
#: the chosen split from jumping when the pilot moves a little.
BUDGET_SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BUDGET_SHARE_STEP = 0.0125
#: Pilot tuples the planner starts with, and the most it grows to (3% of the verifier's work).
PILOT_TUPLES = 64
PILOT_MAX_TUPLES = 4096
#: The most bytes of pilot masks held at once (the pilot is retrained a chunk at a time).
PILOT_MAX_BYTES = 1 << 28
PILOT_SHARE = 0.03
#: Pilot masks per tuple: x, y0 and one per level in PILOT_LEVELS.
PILOT_LEVELS = tuple(sorted(set(RHO_GRID) | {min(2.0 * r, 1.0) for r in RHO_GRID}))
#: Default caps.
DEFAULT_MSE_CAP = 200_000
DEFAULT_TUPLE_CAP = 2_000_000
#: Relative safety slack added to the task's tolerance τ for certified values (float rounding).
TOLERANCE_SLACK = 1e-9


# --------------------------------------------------------------------------------------------
# δ split


@dataclass(frozen=True)
class DeltaSplit:
    """δ split equally among the active failure events of each side; per-target parts are /Z.

    Accept side (soundness): ``mse`` (an MSE upper bound fails), ``residual`` (a B≥2 lower bound
    fails), ``spot`` (more than m* lies all missed; only with sampled checks; target-independent),
    ``variance`` (a Var f lower bound fails; only with ε relative to Var f). Reject side: the MSE
    lower bounds, the B≥2 upper bounds and, with ε relative, the Var f upper bounds.
    """

    delta: float
    num_targets: int
    accept: dict[str, float]
    reject: dict[str, float]

    @classmethod
    def of(
        cls, delta: float, num_targets: int, *, spot_sampled: bool, epsilon_relative: bool
    ) -> DeltaSplit:
        """The split for these settings; ``ValueError`` for δ outside (0, 1) or Z < 1."""
        d = check_delta(delta)
        z = int(num_targets)
        if z < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        acc = ["mse", "residual"] + (["spot"] if spot_sampled else [])
        acc += ["variance"] if epsilon_relative else []
        rej = ["mse", "residual"] + (["variance"] if epsilon_relative else [])
        return cls(d, z, {k: d / len(acc) for k in acc}, {k: d / len(rej) for k in rej})

    def accept_delta(self, event: str) -> float:
        """Per-target δ of an accept-side event (the whole part for ``spot``)."""
        part = self.accept.get(event, 0.0)
        return part if event == "spot" else part / self.num_targets

    def reject_delta(self, event: str) -> float:
        """Per-target δ of a reject-side event."""
        return self.reject.get(event, 0.0) / self.num_targets

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"delta": self.delta, "accept": dict(self.accept), "reject": dict(self.reject)}


# --------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class PracticalPlan:
    """Everything fixed before the claim arrives (stage 1), and the limits of stage 2.

    ``epsilon`` (absolute, per target) xor ``epsilon_rel`` (ε_t = R·Var f_t, Var f bounded from
    the verifier's own sample). ``variance_samples``: the first members of M that bound Var f.
    ``mse_cap`` and ``tuple_cap`` bound the run: a verdict not determined within them is
    inconclusive. ``pilot_seed``: the seed of the verifier's sizing pilot (recorded, so the same
    inputs size the same run).
    """

    epsilon: tuple[float, ...] | None
    epsilon_rel: float | None
    delta: float
    output_bound: float
    tolerance: float
    num_targets: int
    num_train_points: int
    p: float
    checks: CheckMode
    mse_cap: int
    tuple_cap: int
    variance_samples: int
    pilot_seed: str
    pilot_tuples: int
    split: DeltaSplit
    #: Verifier retraining-equivalents per certified model (1 for a retraining check); sizing only.
    check_cost: float = 1.0
    rule: RuleName = RuleName.PRACTICAL

    @property
    def mode(self) -> str:
        """The rule's name as the CLI spells it."""
        return self.rule.value

    @property
    def tau(self) -> float:
        """τ_f: how far any certified or retrained value may be from the task's f."""
        return float(self.tolerance) * (1.0 + TOLERANCE_SLACK) + TOLERANCE_SLACK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "mode": self.mode,
            "epsilon": None if self.epsilon is None else list(self.epsilon),
            "epsilon_rel": self.epsilon_rel,
            "delta": self.delta,
            "output_bound": self.output_bound,
            "tolerance": self.tolerance,
            "num_targets": self.num_targets,
            "num_train_points": self.num_train_points,
            "checks": self.checks.value,
            "mse_cap": self.mse_cap,
            "tuple_cap": self.tuple_cap,
            "variance_samples": self.variance_samples,
            "pilot_seed": self.pilot_seed,
            "pilot_tuples": self.pilot_tuples,
            "check_cost": self.check_cost,
            "delta_split": self.split.to_dict(),
        }


def pilot_seed(task_hash: str, label: str = "pilot") -> str:
    """The sizing pilot's seed: SHA-256 of the task hash and a label (public and recorded)."""
    return hashlib.sha256(f"{label}:{task_hash}".encode()).hexdigest()


def make_plan(
    *,
    delta: float,
    output_bound: float,
    tolerance: float,
    num_targets: int,
    num_train_points: int,
    p: float,
    checks: CheckMode,
    task_hash: str,
    epsilon: Any = None,
    epsilon_rel: float | None = None,
    mse_cap: int = DEFAULT_MSE_CAP,
    tuple_cap: int = DEFAULT_TUPLE_CAP,
    variance_samples: int | None = None,
    pilot_tuples: int = PILOT_TUPLES,
    check_cost: float = 1.0,
) -> PracticalPlan:
    """A practical plan (exactly one of ``epsilon`` / ``epsilon_rel``); ``ValueError`` on bad input.

    ``variance_samples`` defaults to 4,096 (only with ``epsilon_rel``); it must not exceed
    ``mse_cap``. Nothing here is random: the same inputs give the same plan.
    """
    if (epsilon is None) == (epsilon_rel is None):
        raise ValueError("give exactly one of epsilon (absolute) or epsilon_rel (× Var f)")
    z = int(num_targets)
    b = float(output_bound)
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"output bound must be > 0, got {output_bound!r}")
    tau = float(tolerance)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    eps: tuple[float, ...] | None = None
    if epsilon is not None:
        arr = np.broadcast_to(np.asarray(epsilon, dtype=np.float64), (z,))
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
        eps = tuple(float(v) for v in arr)
    rel = None
    if epsilon_rel is not None:
        rel = float(epsilon_rel)
        if not (math.isfinite(rel) and rel > 0):
            raise ValueError(f"epsilon_rel must be > 0, got {epsilon_rel!r}")
    v = 0 if rel is None else int(4096 if variance_samples is None else variance_samples)
    if rel is not None and v < 64:
        raise ValueError(f"variance_samples must be at least 64, got {v}")
    if int(mse_cap) < max(2, v):
        raise ValueError(f"the MSE cap ({mse_cap}) must be at least the variance sample ({v})")
    if int(tuple_cap) < 0:
        raise ValueError(f"the tuple cap must be >= 0, got {tuple_cap}")
    if int(pilot_tuples) < 8:
        raise ValueError(f"pilot_tuples must be at least 8, got {pilot_tuples}")
    return PracticalPlan(
        epsilon=eps,
        epsilon_rel=rel,
        delta=float(delta),
        output_bound=b,
        tolerance=tau,
        num_targets=z,
        num_train_points=int(num_train_points),
        p=float(p),
        checks=checks,
        mse_cap=int(mse_cap),
        tuple_cap=int(tuple_cap),
        variance_samples=v,
        pilot_seed=pilot_seed(task_hash),
        pilot_tuples=int(pilot_tuples),
        split=DeltaSplit.of(
            delta, z, spot_sampled=not checks.all_members, epsilon_relative=rel is not None
        ),
        check_cost=float(check_cost),
    )


# --------------------------------------------------------------------------------------------
# what the rule asks of the world


@dataclass(frozen=True)
class PilotData:
    """The sizing pilot: per mask kind ("x", "y0", or a level ℓ) the f-values (P, Z).

    Coupled as :func:`pilot_masks` builds them: y_ℓ keeps x_i where the tuple's shared coin is
    below ℓ, else y0_i. ``predictions`` holds the claim's g on the same masks (None before a claim
    exists).
    """

    f: dict[Any, np.ndarray]
    predictions: dict[Any, np.ndarray] | None
    retrainings: int

    @property
    def num_tuples(self) -> int:
        """P."""
        return int(self.f["x"].shape[0])


class PracticalEvidence(Evidence, Protocol):
    """The evidence the practical rule reads: every rule's, plus the seeded sizing pilot."""

    def pilot(self, num_tuples: int) -> PilotData:
        """The first ``num_tuples`` tuples of the seeded pilot (a prefix of one fixed stream)."""
        ...


def pilot_masks(
    num_tuples: int, num_train_points: int, p: float, seed: str, first: int = 0
) -> dict[Any, np.ndarray]:
    """The pilot's coupled subsets for tuples [first, num_tuples): {"x", "y0", ℓ} → (P, N) bool.

    Tuple j comes from PCG64 seeded by (``seed``, j), so a larger pilot extends a smaller one and
    the same seed always gives the same subsets; y_ℓ keeps x_i where the tuple's coin is below ℓ.
    """
    n0, big_n = int(num_tuples) - int(first), int(num_train_points)
    key = int(seed[:32], 16)
    x = np.empty((n0, big_n), dtype=bool)
    y0 = np.empty((n0, big_n), dtype=bool)
    v = np.empty((n0, big_n))
    for row, j in enumerate(range(int(first), int(num_tuples))):
        rng = np.random.Generator(np.random.PCG64([key, j]))
        x[row] = rng.random(big_n) < p
        y0[row] = rng.random(big_n) < p
        v[row] = rng.random(big_n)
    out: dict[Any, np.ndarray] = {"x": x, "y0": y0}
    for level in PILOT_LEVELS:
        out[level] = np.where(v < level, x, y0)
    return out


def pilot_seeds(num_tuples: int, seed: str, first: int = 0) -> np.ndarray:
    """Training seeds of the pilot's masks for tuples [first, num_tuples), in the order of
    :func:`pilot_masks`'s keys (kind-major): one independent seed per mask, per tuple."""
    key = int(seed[32:64], 16)
    kinds = 2 + len(PILOT_LEVELS)
    rows = [
        np.random.Generator(np.random.PCG64([key, j])).integers(0, 2**63, kinds, np.uint64)
        for j in range(int(first), int(num_tuples))
    ]
    return np.stack(rows, axis=1).reshape(-1) if rows else np.zeros(0, dtype=np.uint64)


def pilot_data(
    retrain: Callable[[np.ndarray, np.ndarray], np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray] | None,
    num_tuples: int,
    num_train_points: int,
    p: float,
    seed: str,
    first: int = 0,
) -> PilotData:
    """Tuples [first, num_tuples) of the seeded pilot: f from ``retrain(masks, seeds)`` and, with
    ``predict``, the claim's g, computed a chunk of tuples at a time so that the masks held at
    once stay under :data:`PILOT_MAX_BYTES` whatever N is."""
    kinds = 2 + len(PILOT_LEVELS)
    chunk = max(1, PILOT_MAX_BYTES // (kinds * int(num_train_points)))
    parts: list[PilotData] = []
    for lo in range(int(first), int(num_tuples), chunk):
        hi = min(int(num_tuples), lo + chunk)
        masks = pilot_masks(hi, num_train_points, p, seed, first=lo)
        keys = list(masks)
        stacked = np.concatenate([masks[k] for k in keys], axis=0)
        f = np.asarray(retrain(stacked, pilot_seeds(hi, seed, first=lo)), dtype=np.float64)
        n = hi - lo
        values = {k: f[i * n : (i + 1) * n] for i, k in enumerate(keys)}
        preds = None if predict is None else {k: predict(masks[k]) for k in keys}
        parts.append(PilotData(values, preds, len(stacked)))
    out: PilotData | None = None
    for part in parts:
        out = merge_pilots(out, part)
    if out is None:
        raise ValueError(f"empty pilot range [{first}, {num_tuples})")
    return out


def merge_pilots(old: PilotData | None, new: PilotData) -> PilotData:
    """The pilot ``old`` extended by the following tuples ``new``."""
    if old is None:
        return new
    f = {k: np.concatenate([old.f[k], new.f[k]]) for k in old.f}
    preds = None
    if old.predictions is not None and new.predictions is not None:
        preds = {k: np.concatenate([old.predictions[k], new.predictions[k]]) for k in old.f}
    return PilotData(f, preds, old.retrainings + new.retrainings)


# --------------------------------------------------------------------------------------------
# running bounds


class _PlugIn:
    """A betting bound fed in batches, each batch betting on the variance of the ones before."""

    def __init__(self, bound: BettingBound, prior_var: np.ndarray, horizon: int) -> None:
        self.bound = bound
        self.var = np.asarray(prior_var, dtype=np.float64)
        self.horizon = int(horizon)
        self.n = 0
        self._sum = np.zeros_like(self.var)
        self._sq = np.zeros_like(self.var)

    def add(self, batch: np.ndarray) -> None:
        lam = bet_size(self.bound.delta, max(self.horizon, 2 * (self.n + len(batch))), self.var)
        self.bound.add(batch, lam)
        self.n += len(batch)
        self._sum += batch.sum(axis=0)
        self._sq += (batch * batch).sum(axis=0)
        if self.n >= 2:
            mean = self._sum / self.n
            self.var = np.maximum((self._sq - self.n * mean * mean) / (self.n - 1), 1e-12)


def provably_far(plan: PracticalPlan, intercepts: Any, coefficients: Any) -> str | None:
    """Why the claim's own law proves err > ε on some target, whatever f is; None if it does not.

    For f ∈ [−b, b] and g = c + ⟨a, x⟩ with mean m = E g under B_p (exact: ``ClaimLaw``),
    mse(g) = E(f − g)² ≥ (E f − m)² ≥ (|m| − b)² when |m| > b, and the best affine datamodel has
    mse ≤ Var f ≤ b², so err(g) ≥ (|m| − b)² − b². For relative ε = R·Var f ≤ R·b². When that
    lower bound exceeds ε the claim is rejected with certainty (no sample, no δ spent): a claim
    whose intercept is absurd would otherwise make τ's charge on the MSE too large to plan and
    end the run in an error after commitment.
    """
    law = ClaimLaw.of(intercepts, coefficients, plan.p)
    b = float(plan.output_bound)
    m = np.abs(law.mean)
    lower = np.where(m > b, (m - b) ** 2 - b * b, -np.inf)
    if plan.epsilon is not None:
        eps = np.broadcast_to(np.asarray(plan.epsilon, dtype=np.float64), lower.shape)
    else:
        assert plan.epsilon_rel is not None
        eps = np.full(lower.shape, plan.epsilon_rel * b * b)
    bad = np.flatnonzero(lower > eps)
    if bad.size == 0:
        return None
    t = int(bad[np.argmax((lower - eps)[bad])])
    return (
        f"the claim is provably not ε-optimal: target {t} has E g = {float(law.mean[t]):.4g} "
        f"under B_p, outside the output range ±{b:g}, so err ≥ (|E g| − b)² − b² = "
        f"{float(lower[t]):.4g} > ε = {float(eps[t]):.4g} whatever f is ({bad.size} target(s))"
    )


@dataclass
class ClaimSetup:
    """Everything derived from the claim before the first MSE sample: law, clip, ranges, charges."""

    law: ClaimLaw
    clip: np.ndarray  # T_M (Z,)
    bound: np.ndarray  # U_M = b + τ + |m| + T_M
    charge_upper: np.ndarray  # |E ℓ − E ℓ̂| upper side: 2U e₁ + e₂
    charge_lower: np.ndarray  # lower side: 2U e₁
    tau_loss: np.ndarray  # 2Uτ + τ²
    epsilon_scale: np.ndarray  # the ε the clip budget was set against

    @classmethod
    def of(cls, plan: PracticalPlan, intercepts: Any, coefficients: Any) -> ClaimSetup:
        """Clip the claim so its tail charge is ≤ 2% of ε (for relative ε, of R·σ²s²)."""
        law = ClaimLaw.of(intercepts, coefficients, plan.p)
        b, tau = plan.output_bound, plan.tau
        sigma2 = 4.0 * plan.p * (1.0 - plan.p)
        if plan.epsilon is not None:
            scale = np.asarray(plan.epsilon, dtype=np.float64)
        else:
            assert plan.epsilon_rel is not None
            # ε_t ≥ R·Var g_t... is not known before M; R·σ²s² ≈ R·B₁ ≤ R·Var f is a stand-in
            scale = plan.epsilon_rel * np.maximum(sigma2 * law.scale**2, 1e-6 * b * b)

        def charge(t: np.ndarray) -> np.ndarray:
            e1, e2 = excess_moments(law.scale, t)
            return 2.0 * (b + tau + np.abs(law.mean) + t) * e1 + e2

        clip = law.choose_clip(charge, CLIP_SHARE_MSE * scale)
        u = b + tau + law.magnitude(clip)
        e1, e2 = excess_moments(law.scale, clip)
        return cls(law, clip, u, 2.0 * u * e1 + e2, 2.0 * u * e1, 2.0 * u * tau + tau * tau, scale)


@dataclass
class ChallengePlan:
    """Stage 2, sized after the MSE stage from the pilot and the claim."""

    rho: float
    beta: float
    clip: np.ndarray  # T_R (Z,)
    value_bound: np.ndarray  # U_R = b + τ + β(|m| + T_R)
    sample_range: tuple[np.ndarray, np.ndarray]  # almost-sure (lo, hi) of r̂
    tau_shift: np.ndarray  # τ_r
    charge: np.ndarray  # |E r − E r̂| ≤ (4/ρ)(2βU e₁ + β² e₂)
    bias: float  # c(ρ)
    lam_star: np.ndarray  # the run's residual bet (Z,)
    schedule: tuple[int, ...]  # cumulative tuples per round
    spot_checks: int  # k (all members when certified-all: 4·cap)
    lie_allowance: int  # m* at the cap
    goal: str  # "accept" or "reject": what the sizing aimed at
    mse_schedule: tuple[int, ...] = ()  # cumulative MSE samples to reach with each round
    predicted: dict[str, Any] = field(default_factory=dict)

    @property
    def tuple_cap(self) -> int:
        """The most tuples this stage asks for."""
        return self.schedule[-1] if self.schedule else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "rho": self.rho,
            "beta": self.beta,
            "clip": self.clip.tolist(),
            "value_bound": self.value_bound.tolist(),
            "sample_range": [self.sample_range[0].tolist(), self.sample_range[1].tolist()],
            "tau_shift": self.tau_shift.tolist(),
            "charge": self.charge.tolist(),
            "bias_coefficient": self.bias,
            "lam_star": self.lam_star.tolist(),
            "schedule": list(self.schedule),
            "spot_checks": self.spot_checks,
            "lie_allowance": self.lie_allowance,
            "goal": self.goal,
            "mse_schedule": list(self.mse_schedule),
            "predicted": self.predicted,
        }


def _pilot_residuals(
    pilot: PilotData, rho: float, beta: float, law: ClaimLaw | None, clip: np.ndarray
) -> np.ndarray:
    """(P, Z) residual samples of the pilot at ρ for v = f − βĝ."""
    hi_level = min(2.0 * rho, 1.0)
    keys = ("x", "y0", float(rho), hi_level)
    vals = []
    for k in keys:
        f = np.asarray(pilot.f[k], dtype=np.float64)
        if beta and law is not None and pilot.predictions is not None:
            f = f - beta * law.clip(pilot.predictions[k], clip)
        vals.append(f)
    stacked = np.empty((MEMBERS_PER_TUPLE * vals[0].shape[0], vals[0].shape[1]))
    for role, v in enumerate(vals):
        stacked[role::MEMBERS_PER_TUPLE] = v
    return residual_samples(stacked, rho)


def pilot_residual_weight(
    pilot: PilotData, setup: ClaimSetup | None, state: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The pilot's estimate of B_{≥2} per target and its standard error, pooled over every ρ
    and β it samples.

    E r(f − βg) does not depend on β, and at ρ it lies in [B_{≥2}, (1 + c(ρ))B_{≥2}]; each
    estimate is divided by 1 + c(ρ)/2 and they are averaged with weights inverse to their variance
    plus (c(ρ)/2 · B)², the bias this cannot know; then
    kept within [0, mse_upper] (B_{≥2} = mse(g*) ≤ mse(g)). For sizing only.
    """
    num = 0.0
    den = 0.0
    for rho in RHO_GRID:
        c = bias_coefficient(rho)
        forms = [(0.0, None, None)]
        if setup is not None and pilot.predictions is not None:
            forms.append((1.0, setup.law, np.full(setup.law.num_targets, np.inf)))
        for beta, law, clip in forms:
            r = _pilot_residuals(pilot, rho, beta, law, np.zeros(1) if clip is None else clip)
            est = r.mean(axis=0) / (1.0 + 0.5 * c)
            # its error: sampling variance plus the unknown share of the bias, ±(c/2)·B
            err2 = r.var(axis=0, ddof=1) / r.shape[0] + (0.5 * c * np.maximum(est, 0.0)) ** 2
            num = num + est / (err2 + 1e-300)
            den = den + 1.0 / (err2 + 1e-300)
    top = np.asarray(state["mse_upper"], dtype=np.float64)
    return np.clip(num / den, 0.0, top), np.sqrt(1.0 / den)


def _smallest(pred: Callable[[int], bool], cap: int) -> int | None:
    """Smallest n in [1, cap] with pred(n) (pred monotone), else None."""
    if cap < 1 or not pred(cap):
        return None
    left, right = 1, cap
    while left < right:
        mid = (left + right) // 2
        if pred(mid):
            right = mid
        else:
            left = mid + 1
    return left


def _samples_for(
    gap: np.ndarray,
    sd: np.ndarray,
    range_gap: np.ndarray,
    alpha: Any,
    mask: np.ndarray,
    cap: int,
    lie_nats: float = 0.0,
    bet_cap: float = DEFAULT_CAP,
) -> int | None:
    """Fewest samples whose predicted betting bound (bet cap ``bet_cap``) reaches ``gap`` on every
    target in ``mask`` (and keeps ``lie_nats`` of capital to spare)."""
    need = capital_needed(alpha) + lie_nats

    def ok(n: int) -> bool:
        got = n * growth_rate(gap, n, sd, range_gap, alpha, cap=bet_cap)
        return bool(np.all((got >= need)[mask]))

    return _smallest(ok, cap)


@dataclass(frozen=True)
class _Sizing:
    tuples: int
    mse: int
    checks: int
    lies: int
    lam: np.ndarray
    cost: float
    goal: str


def plan_challenges(
    plan: PracticalPlan,
    pilot: PilotData,
    setup: ClaimSetup | None,
    state: dict[str, Any],
    *,
    undecided: np.ndarray | None = None,
) -> ChallengePlan:
    """Size stage 2: the (ρ, β), tuples, MSE samples and checks with the least predicted cost.

    ``state`` holds per-target ``mse_estimate``, ``mse_sd`` (the losses' sd), ``mse_lower``,
    ``eps_accept``, ``eps_reject``, ``tau_mse``, and the scalar ``mse_count`` (measured in stage 1,
    or predicted by ``verifier plan``). For an acceptable claim the budget
    S = 0.9ε − msê − charges + (E r − charges)/(1 + c) is split between the MSE bound's gap w and
    the residual bound's gap η/(1 + c), choosing the split with the least cost; otherwise the
    residual upper bound is aimed at a rejection. Cost = verifier work + 0.1 × prover work, in
    retraining-equivalents (``plan.check_cost`` per certified model). With sampled checks a larger
    n leaves capital for more lies, so fewer checks. Predictions only: the guarantee holds
    whatever is chosen. Raises ``ConfigurationError`` when τ is too large for every ρ.
    """
    b, tau, z = plan.output_bound, plan.tau, plan.num_targets
    und = np.ones(z, dtype=bool) if undecided is None else np.asarray(undecided, dtype=bool)
    eps_acc = np.asarray(state["eps_accept"], dtype=np.float64)
    eps_rej = np.asarray(state["eps_reject"], dtype=np.float64)
    mse_hat = np.asarray(state["mse_estimate"], dtype=np.float64)
    mse_sd = np.asarray(state["mse_sd"], dtype=np.float64)
    mse_lower = np.asarray(state["mse_lower"], dtype=np.float64)
    tau_mse = np.asarray(state.get("tau_mse", 0.0), dtype=np.float64)
    if setup is not None:
        ch_m, mse_range = setup.charge_upper, setup.bound**2 + setup.tau_loss
    else:
        ch_m, mse_range = np.zeros(z), np.full(z, (2.0 * b + tau) ** 2)
    best: tuple[float, ChallengePlan] | None = None
    candidates: list[dict[str, Any]] = []
    # Size for an honest claim, B≥2 = mse(g*) ≈ msê, unless the pilot says clearly otherwise
    # (then aim at a rejection): the pilot alone is too noisy to size an acceptance on.
    pilot_b2, pilot_se = pilot_residual_weight(pilot, setup, state)
    clearly_bad = pilot_b2 + 3.0 * pilot_se < mse_lower - eps_rej
    b2_hat = np.where(clearly_bad, pilot_b2, np.maximum(mse_hat, pilot_b2))
    for rho in RHO_GRID:
        c = bias_coefficient(rho)
        for beta in BETAS if setup is not None else (0.0,):
            if beta and setup is not None:
                law: ClaimLaw | None = setup.law

                def charge_of(
                    t: np.ndarray, rho: float = rho, law: ClaimLaw = setup.law
                ) -> np.ndarray:
                    e1, e2 = excess_moments(law.scale, t)
                    u = b + tau + law.magnitude(t)
                    return residual_row_sum(rho) * (2.0 * u * e1 + e2)

                clip = setup.law.choose_clip(charge_of, CLIP_SHARE_RESIDUAL * setup.epsilon_scale)
                u = b + tau + setup.law.magnitude(clip)
                charge = charge_of(clip)
            else:
                law, clip, u, charge = None, np.zeros(z), np.full(z, b + tau), np.zeros(z)
            lo, hi = residual_sample_range(u, rho)
            tau_r = residual_row_sum(rho) * (2.0 * u * tau + tau * tau)
            if np.any(((tau_r + tau_mse) > TOLERANCE_SHARE * eps_acc)[und]):
                continue
            samples = _pilot_residuals(pilot, rho, beta, law, clip)
            sd = SD_INFLATION * samples.std(axis=0, ddof=1) + 1e-12
            est = b2_hat  # bias 0 in the sizing: the lower bound must not count on it
            sizing = _size_stage2(
                plan, rho, c, sd, est, lo, hi, charge + tau_r, und,
                eps_acc, eps_rej, mse_hat, mse_sd, mse_lower, ch_m, mse_range,
                int(state.get("mse_count", 0)),
            )  # fmt: skip
            if sizing is None:
                continue
            candidates.append(
                {"rho": rho, "beta": beta, "tuples": sizing.tuples, "mse": sizing.mse,
                 "checks": sizing.checks, "cost": sizing.cost, "goal": sizing.goal}
            )  # fmt: skip
            fr = ROUND_FRACTIONS
            schedule = tuple(sorted({max(1, min(plan.tuple_cap, math.ceil(f * sizing.tuples)))
                                     for f in fr}))  # fmt: skip
            cp = ChallengePlan(
                rho=rho,
                beta=beta,
                clip=clip,
                value_bound=u,
                sample_range=(lo, hi),
                tau_shift=tau_r,
                charge=charge,
                bias=c,
                lam_star=sizing.lam,
                schedule=schedule,
                spot_checks=sizing.checks,
                lie_allowance=sizing.lies,
                goal=sizing.goal,
                mse_schedule=tuple(
                    min(
                        plan.mse_cap, max(int(state.get("mse_count", 0)), math.ceil(f * sizing.mse))
                    )
                    for f in fr
                ),
                predicted={
                    "tuples": sizing.tuples,
                    "mse_samples": sizing.mse,
                    "residual_estimate": est.tolist(),
                    "residual_sd": (sd / SD_INFLATION).tolist(),
                    "cost": sizing.cost,
                    "pilot_tuples": pilot.num_tuples,
                },
            )
            if best is None or sizing.cost < best[0]:
                best = (sizing.cost, cp)
    mse_only = _mse_only(plan, state, und, ch_m, mse_range)
    if mse_only is not None and (best is None or mse_only.predicted["cost"] <= best[0]):
        candidates.append({"rho": None, "beta": None, "tuples": 0,
                           "mse": mse_only.predicted["mse_samples"], "checks": 0,
                           "cost": mse_only.predicted["cost"], "goal": mse_only.goal})  # fmt: skip
        best = (float(mse_only.predicted["cost"]), mse_only)
    if best is None:
        raise ConfigurationError(
            f"no ρ in {RHO_GRID} keeps the τ-charge (τ = {plan.tolerance:g}) below "
            f"{TOLERANCE_SHARE:g}·ε; the task's tolerance is too large for this ε"
        )
    best[1].predicted["candidates"] = candidates
    return best[1]


def run_cost(plan: PracticalPlan, tuples: int, mse: int, checks: int) -> float:
    """Planning cost of a run: verifier work + 0.1 × prover work, in retraining-equivalents
    (``plan.check_cost`` per certified model, 1 per retraining)."""
    members = MEMBERS_PER_TUPLE * tuples
    if plan.checks is CheckMode.CERTIFIED:
        verifier, prover = plan.check_cost * (members + mse), members + mse
    elif plan.checks is CheckMode.CERTIFIED_SPOT:
        verifier, prover = plan.check_cost * (checks + mse), members + mse
    else:
        verifier, prover = checks + mse, members
    return verifier + 0.1 * prover


def _mse_only(
    plan: PracticalPlan,
    state: dict[str, Any],
    und: np.ndarray,
    ch_m: np.ndarray,
    mse_range: np.ndarray,
) -> ChallengePlan | None:
    """The plan with no challenge at all: more MSE samples, to accept on err ≤ mse alone."""
    eps_acc = np.asarray(state["eps_accept"], dtype=np.float64)
    mse_hat = np.asarray(state["mse_estimate"], dtype=np.float64)
    mse_sd = np.asarray(state["mse_sd"], dtype=np.float64)
    w = 0.9 * eps_acc - mse_hat - ch_m
    if not np.all((w >= MIN_BUDGET * eps_acc)[und]):
        return None
    count = int(state.get("mse_count", 0))
    m = _samples_for(w, mse_sd, mse_range - mse_hat, plan.split.accept_delta("mse"), und,
                     plan.mse_cap, bet_cap=MSE_BET_CAP)  # fmt: skip
    if m is None:
        return None
    m = max(m, count)
    z = plan.num_targets
    zero = np.zeros(z)
    return ChallengePlan(
        rho=RHO_GRID[0], beta=0.0, clip=zero, value_bound=zero, sample_range=(zero, zero),
        tau_shift=zero, charge=zero, bias=0.0, lam_star=zero, schedule=(), spot_checks=0,
        lie_allowance=0, goal="accept on the MSE alone",
        mse_schedule=tuple(
            min(plan.mse_cap, max(count, math.ceil(f * m))) for f in ROUND_FRACTIONS
        ),
        predicted={"tuples": 0, "mse_samples": m, "cost": run_cost(plan, 0, m, 0)},
    )  # fmt: skip


def _size_stage2(
    plan: PracticalPlan,
    rho: float,
    c: float,
    sd: np.ndarray,
    est: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    charge: np.ndarray,
    und: np.ndarray,
    eps_acc: np.ndarray,
    eps_rej: np.ndarray,
    mse_hat: np.ndarray,
    mse_sd: np.ndarray,
    mse_lower: np.ndarray,
    ch_m: np.ndarray,
    mse_range: np.ndarray,
    mse_count: int,
) -> _Sizing | None:
    """The cheapest (tuples, MSE samples, checks) for one (ρ, β), or None if the caps cannot."""
    split = plan.split
    cap_n, cap_m = plan.tuple_cap, plan.mse_cap
    d_low, d_high, d_mse = (
        split.accept_delta("residual"),
        split.reject_delta("residual"),
        split.accept_delta("mse"),
    )
    sampled = not plan.checks.all_members
    d_spot = split.accept_delta("spot")

    def cost_of(n: int, m: int, k: int) -> float:
        return run_cost(plan, n, m, k)

    budget = 0.9 * eps_acc - mse_hat - ch_m + (est - charge) / (1.0 + c)
    # a budget below MIN_BUDGET·ε rests on the pilot's noise: not a plan to accept on
    accept_goal = bool(np.all((budget >= MIN_BUDGET * eps_acc)[und]))
    best: _Sizing | None = None
    if not accept_goal:
        gap_rej = mse_lower - eps_rej - est - charge
        t_rej = und & (gap_rej > 0)
        if np.any(t_rej):
            # one target certainly above ε is enough: aim at the easiest
            t = int(np.flatnonzero(t_rej)[np.argmax(gap_rej[t_rej])])
            mask = np.zeros_like(und)
            mask[t] = True
            n = _samples_for(PLANNED_GAP * gap_rej, sd, hi - est, d_high, mask, cap_n)
            if n is None:
                return None
            k = MEMBERS_PER_TUPLE * min(cap_n, 2 * n) if plan.checks.all_members else 0
            if sampled:
                k = min(MEMBERS_PER_TUPLE * min(cap_n, 2 * n), spot_checks_needed(
                    MEMBERS_PER_TUPLE * min(cap_n, 2 * n), 0, d_spot))  # fmt: skip
            lam = bet_size(np.where(mask, d_high, d_low), n, sd * sd)
            return _Sizing(n, mse_count, k, 0, lam, cost_of(n, mse_count, k), "reject")
        budget = np.maximum(budget, MIN_BUDGET * eps_acc)  # a claim near ε: a bounded spend

    def sizing_at(phi: float) -> _Sizing | None:
        """The cheapest sizing that gives the MSE bound the share ``phi`` of the budget."""
        w = phi * budget
        eta = (1.0 - phi) * budget * (1.0 + c)
        m = _samples_for(w, mse_sd, mse_range - mse_hat, d_mse, und, cap_m, bet_cap=MSE_BET_CAP)
        if m is None:
            return None
        m = max(m, mse_count)
        n_min = _samples_for(eta, sd, est - lo, d_low, und, cap_n)
        if n_min is None:
            return None
        options = [(n_min, MEMBERS_PER_TUPLE * min(cap_n, 2 * n_min), 0)]
        if sampled:
            options = _sampled_options(n_min, eta, sd, est, lo, und, d_low, d_spot, cap_n)
        n, k, m_star = min(options, key=lambda o: cost_of(o[0], m, o[1]))
        lam = bet_size(d_low, n, sd * sd)
        return _Sizing(n, m, k, m_star, lam, cost_of(n, m, k), "accept")

    tried: dict[float, _Sizing | None] = {phi: sizing_at(phi) for phi in BUDGET_SHARES}
    found = [(s.cost, phi) for phi, s in tried.items() if s is not None]
    if found:  # refine around the best share, so the split moves smoothly with the pilot
        phi0 = min(found)[1]
        for i in range(-3, 4):
            phi = round(phi0 + BUDGET_SHARE_STEP * i, 4)
            if BUDGET_SHARE_STEP <= phi < 1.0 and phi not in tried:
                tried[phi] = sizing_at(phi)
    for sizing in tried.values():
        if sizing is not None and (best is None or sizing.cost < best.cost):
            best = sizing
    if best is None:  # the caps cannot reach the gap: spend them (the run may end inconclusive)
        members = MEMBERS_PER_TUPLE * cap_n
        k = members
        m_star = 0
        if sampled:
            k, m_star = min(members, _checks_for(members, 1, d_spot)), 1
            m_star = _allowance(members, k, d_spot)
        lam = bet_size(d_low, cap_n, sd * sd)
        best = _Sizing(cap_n, cap_m, k, m_star, lam, cost_of(cap_n, cap_m, k), "accept (capped)")
    return best


def _sampled_options(
    n_min: int,
    eta: np.ndarray,
    sd: np.ndarray,
    est: np.ndarray,
    lo: np.ndarray,
    und: np.ndarray,
    d_low: float,
    d_spot: float,
    cap: int,
) -> list[tuple[int, int, int]]:
    """(n, k, m*) trade-offs with sampled checks: n = factor·n_min leaves capital for m* lies."""
    out = []
    range_gap = est - lo
    need = capital_needed(d_low)
    for factor in (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0):
        n = min(cap, math.ceil(factor * n_min))
        lam = bet_size(d_low, n, sd * sd)
        lam_c = np.minimum(lam, DEFAULT_CAP / np.maximum(range_gap - eta, 1e-300))
        # a lie swaps a high reported value (≈ E r + 4 sd) for the floor lo
        per_lie = np.log1p(lam_c * (4.0 * sd + eta)) - np.log1p(
            -np.minimum(lam_c * (est - eta - lo), 0.999)
        )
        spare = n * growth_rate(eta, n, sd, range_gap, d_low) - need
        m_star = int(np.floor(np.min((spare / np.maximum(per_lie, 1e-300))[und])))
        m_star = max(m_star, 0)
        members = MEMBERS_PER_TUPLE * min(cap, 2 * n)
        k = _checks_for(members, m_star, d_spot)
        out.append((n, k, _allowance(members, k, d_spot)))
        if n >= cap:
            break
    return out


@functools.lru_cache(maxsize=4096)
def _checks_for(members: int, m_star: int, d_spot: float) -> int:
    """Spot checks so that more than m* lies are caught w.p. ≥ 1 − δ_spot (all if m* = 0)."""
    return spot_checks_needed(members, m_star, d_spot) if m_star > 0 else members


@functools.lru_cache(maxsize=4096)
def _allowance(members: int, k: int, d_spot: float) -> int:
    return lie_allowance(members, k, d_spot)


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class PracticalOutcome:
    """The verdict of the practical rule and every number behind it (arrays have shape (Z,))."""

    verdict: Verdict
    reason: str
    stop_reason: str
    epsilon_accept: np.ndarray
    epsilon_reject: np.ndarray
    mse_estimate: np.ndarray
    mse_upper: np.ndarray
    mse_lower: np.ndarray
    residual_lower: np.ndarray
    residual_upper: np.ndarray
    err_upper: np.ndarray
    err_lower: np.ndarray
    per_target: list[str]
    mse_samples: int
    tuples: int
    setup: ClaimSetup
    challenge: ChallengePlan | None
    pilot_retrainings: int
    variance_lower: np.ndarray | None = None
    variance_upper: np.ndarray | None = None
    #: The unbiased point estimate of Var f (mean of the pair statistics W); None for absolute ε.
    variance_estimate: np.ndarray | None = None
    #: R when ε = R·Var f, else None.
    epsilon_rel: float | None = None
    looks: int = 0

    @property
    def epsilon_estimate(self) -> np.ndarray:
        """Point estimate of the requested ε per target: ε itself when absolute, else R·Var f̂.

        For reporting (the self-fit estimate), never for deciding: the decision uses ε_acc ≤ ε
        and ε_rej ≥ ε, each holding with probability ≥ 1 − its δ share.
        """
        if self.variance_estimate is None or self.epsilon_rel is None:
            return self.epsilon_accept
        return self.epsilon_rel * self.variance_estimate

    @property
    def certified_epsilon(self) -> np.ndarray:
        """The ε each target certifies: its err_upper (the smallest ε it would be accepted at)."""
        return np.maximum(self.err_upper, 0.0)

    @property
    def guarantee_met(self) -> bool:
        """True iff the verdict is accept (every target's err_upper ≤ its ε)."""
        return self.verdict is Verdict.ACCEPT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""

        def floats(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in a]

        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "stop_reason": self.stop_reason,
            "guarantee_met": self.guarantee_met,
            "certified_epsilon": floats(self.certified_epsilon),
            "epsilon": floats(self.epsilon_accept),
            "epsilon_reject": floats(self.epsilon_reject),
            "mse_estimate": floats(self.mse_estimate),
            "mse_upper": floats(self.mse_upper),
            "mse_lower": floats(self.mse_lower),
            "residual_lower": floats(self.residual_lower),
            "residual_upper": floats(self.residual_upper),
            "err_upper": floats(self.err_upper),
            "err_lower": floats(self.err_lower),
            "per_target": list(self.per_target),
            "mse_samples": self.mse_samples,
            "tuples": self.tuples,
            "members": MEMBERS_PER_TUPLE * self.tuples,
            "variance_lower": floats(self.variance_lower),
            "variance_upper": floats(self.variance_upper),
            "variance_estimate": floats(self.variance_estimate),
            "claim": {
                "mean": floats(self.setup.law.mean),
                "scale": floats(self.setup.law.scale),
                "mse_clip": floats(self.setup.clip),
                "mse_value_bound": floats(self.setup.bound),
                "mse_clip_charge": floats(self.setup.charge_upper),
            },
            "challenge": None if self.challenge is None else self.challenge.to_dict(),
            "pilot_retrainings": self.pilot_retrainings,
            "looks": self.looks,
        }


class PracticalRun:
    """One run of the practical rule against a :class:`PracticalEvidence`; call :meth:`run` once."""

    def __init__(
        self,
        plan: PracticalPlan,
        intercepts: Any,
        coefficients: Any,
        evidence: PracticalEvidence,
        progress: Callable[[int], None] | None = None,
        pilot: PilotData | None = None,
    ) -> None:
        self.plan = plan
        self.evidence = evidence
        self.progress = progress
        self.setup = ClaimSetup.of(plan, intercepts, coefficients)
        z = plan.num_targets
        b = plan.output_bound
        split = plan.split
        s = self.setup
        # MSE bounds on the clipped losses (+τ shift on the conservative side)
        self.mse_hi = _PlugIn(
            BettingBound(Side.UPPER, s.bound**2 + s.tau_loss, split.accept_delta("mse"),
                         num_targets=z, cap=MSE_BET_CAP),
            prior_var=np.full(z, b**4), horizon=4096,
        )  # fmt: skip
        self.mse_lo = _PlugIn(
            BettingBound(Side.LOWER, -s.tau_loss, split.reject_delta("mse"), num_targets=z,
                         cap=MSE_BET_CAP),
            prior_var=np.full(z, b**4), horizon=4096,
        )  # fmt: skip
        self.mse_sum = np.zeros(z)
        self.mse_count = 0
        self.var_lo: np.ndarray | None = None
        self.var_hi: np.ndarray | None = None
        self.eps_acc = (
            np.asarray(plan.epsilon, dtype=np.float64) if plan.epsilon is not None else None
        )
        self.eps_rej = self.eps_acc
        tw = 4.0 * b * plan.tau + 2.0 * plan.tau**2  # |ΔW| when each value is off by ≤ τ
        self._var_tau = tw
        self._var_carry: np.ndarray | None = None
        self._var_lo = _PlugIn(
            BettingBound(Side.LOWER, -tw, split.accept_delta("variance") or 0.5, num_targets=z),
            prior_var=np.full(z, b**4), horizon=4096,
        )  # fmt: skip
        self._var_hi = _PlugIn(
            BettingBound(Side.UPPER, 2.0 * (b + plan.tau) ** 2 + tw,
                         split.reject_delta("variance") or 0.5, num_targets=z),
            prior_var=np.full(z, b**4), horizon=4096,
        )  # fmt: skip
        self.challenge: ChallengePlan | None = None
        self.res_lo: BettingBound | None = None
        self.res_hi: BettingBound | None = None
        self.tuples = 0
        self.looks = 0
        self.pilot = pilot
        self.pilot_retrainings = 0

    # ---- evidence ---------------------------------------------------------------------------
    def _take_mse(self, count: int) -> None:
        count = min(count, self.plan.mse_cap - self.mse_count)
        if count <= 0:
            return
        f, g = self.evidence.mse(self.mse_count, count)
        f = np.asarray(f, dtype=np.float64)
        self._check_range(f, "MSE-sample f-values")
        loss = (f - self.setup.law.clip(g, self.setup.clip)) ** 2
        tl = self.setup.tau_loss
        self.mse_hi.add(loss + tl)
        self.mse_lo.add(loss - tl)
        self.mse_sum += loss.sum(axis=0)
        first = self.mse_count
        self.mse_count += count
        del first
        if self.plan.epsilon_rel is not None:
            self._variance(f)
        if self.progress is not None:
            self.progress(count)

    def _variance(self, f: np.ndarray) -> None:
        """Var f bounds from disjoint pairs of M's members, W = (f_{2i} − f_{2i+1})²/2, E W = Var f.

        Anytime-valid like every bound here, so ε_t = R·LCB_t(Var f) tightens as M grows; the
        first ``variance_samples`` members must arrive before any decision.
        """
        if self._var_carry is not None:
            f = np.vstack([self._var_carry, f])
            self._var_carry = None
        if len(f) % 2:
            self._var_carry, f = f[-1:], f[:-1]
        if len(f) == 0:
            return
        w = 0.5 * (f[0::2] - f[1::2]) ** 2
        tw = self._var_tau
        self._var_lo.add(w - tw)
        self._var_hi.add(w + tw)
        if self.mse_count < self.plan.variance_samples:
            return
        self.var_lo = np.maximum(self._var_lo.bound.bound(), 0.0)
        self.var_hi = self._var_hi.bound.bound()
        rel = float(self.plan.epsilon_rel or 0.0)
        self.eps_acc = rel * self.var_lo
        self.eps_rej = rel * self.var_hi

    def _variance_estimate(self) -> np.ndarray | None:
        """Mean of the pair statistics W (unbiased for Var f), or None for absolute ε."""
        pl = self._var_lo
        if self.plan.epsilon_rel is None or pl.n == 0:
            return None
        return pl._sum / pl.n + self._var_tau  # the lower stream holds W − τ_W

    def _check_range(self, f: np.ndarray, what: str) -> None:
        b = self.plan.output_bound
        if not np.all(np.isfinite(f)) or np.any(np.abs(f) > b):
            raise ValueError(f"{what} must be finite and within the output bound [-{b:g}, {b:g}]")

    def _take_round(self, count: int) -> None:
        cp = self.challenge
        assert cp is not None
        assert self.res_lo is not None
        assert self.res_hi is not None
        f, g = self.evidence.challenge(cp.rho, self.tuples, count, cp.beta > 0)
        f = np.asarray(f, dtype=np.float64)
        if f.shape != (MEMBERS_PER_TUPLE * count, self.plan.num_targets):
            raise ValueError(f"challenge round returned shape {f.shape}")
        self._check_range(f, "challenge f-values")
        v = f
        if cp.beta:
            assert g is not None
            v = f - cp.beta * self.setup.law.clip(g, cp.clip)
        r = residual_samples(v, cp.rho)
        self.res_lo.add(r - cp.tau_shift, cp.lam_star)
        self.res_hi.add(r + cp.tau_shift, cp.lam_star)
        self.tuples += count

    # ---- decision ---------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Current per-target bounds (the decision's inputs)."""
        z = self.plan.num_targets
        s = self.setup
        mse_u = self.mse_hi.bound.bound() + s.charge_upper
        mse_l = np.maximum(self.mse_lo.bound.bound() - s.charge_lower, 0.0)
        if self.res_lo is not None and self.challenge is not None:
            cp = self.challenge
            res_l = np.maximum(
                self.res_lo.bound(cp.lie_allowance, cp.sample_range[0] - cp.tau_shift) - cp.charge,
                0.0,
            ) / (1.0 + cp.bias)
            res_u = self.res_hi.bound() + cp.charge
        else:
            res_l = np.zeros(z)
            res_u = np.full(z, np.inf)
        res_u = np.minimum(res_u, mse_u)  # B≥2 = mse(g*) ≤ mse(g)
        eps_acc = self.eps_acc if self.eps_acc is not None else np.full(z, np.nan)
        eps_rej = self.eps_rej if self.eps_rej is not None else np.full(z, np.nan)
        return {
            "mse_upper": mse_u,
            "mse_lower": mse_l,
            "residual_lower": res_l,
            "residual_upper": res_u,
            "err_upper": mse_u - res_l,
            "err_lower": mse_l - res_u,
            "eps_accept": eps_acc,
            "eps_reject": eps_rej,
        }

    def _judge(self, st: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.eps_acc is None:  # ε still unknown (relative ε before the variance sample)
            z = self.plan.num_targets
            return np.zeros(z, dtype=bool), np.zeros(z, dtype=bool)
        return st["err_upper"] <= st["eps_accept"], st["err_lower"] > st["eps_reject"]

    def _check_tolerance(self, epsilon: np.ndarray) -> None:
        """ConfigurationError when τ's charge on the MSE exceeds TOLERANCE_SHARE of ε."""
        if np.any(self.setup.tau_loss > TOLERANCE_SHARE * epsilon):
            raise ConfigurationError(
                f"the task's tolerance τ = {self.plan.tolerance:g} is too large for this ε: its "
                f"charge on the MSE ({float(self.setup.tau_loss.max()):.3g}) exceeds "
                f"{TOLERANCE_SHARE:g}·ε"
            )

    def run(self) -> PracticalOutcome:
        """Stage 1 (MSE), then challenge rounds with more MSE, until decided or out of budget."""
        plan = self.plan
        if plan.epsilon is not None:
            self._check_tolerance(self.setup.epsilon_scale)
        self._take_mse(max(MSE_BATCH, plan.variance_samples))
        if plan.epsilon is None:  # relative ε: judged against R·Var f once it is estimated,
            # not against the claim's own spread (a claim with tiny coefficients made the
            # stand-in scale tiny and the run an error instead of a verdict)
            var = self._variance_estimate()
            assert var is not None
            assert plan.epsilon_rel is not None
            self._check_tolerance(plan.epsilon_rel * np.maximum(var, 0.0))
        while True:  # stage 1: the claim's MSE
            decided = self._look()
            if decided is not None:
                return decided
            st = self.state()
            ok, _ = self._judge(st)
            half = 0.5 * (st["mse_upper"] - st["mse_lower"])
            if np.all((half <= STAGE1_HALFWIDTH * st["eps_accept"])[~ok]):
                stop = "MSE stage precise enough to plan the challenges"
                break
            if self.mse_count >= plan.mse_cap // 4:
                stop = "a quarter of the MSE cap spent before the challenges"
                break
            self._take_mse(max(MSE_BATCH, self.mse_count // MSE_GROWTH))
        if plan.tuple_cap >= 1:  # stage 2: challenge rounds, the MSE growing alongside
            self._plan_stage2(st, ~ok)
            cp = self.challenge
            assert cp is not None
            for cumulative, mse_goal in itertools.zip_longest(cp.schedule, cp.mse_schedule):
                if cumulative is not None and cumulative > self.tuples:
                    self._take_round(cumulative - self.tuples)
                    decided = self._look()
                    if decided is not None:
                        return decided
                decided = self._grow_mse(mse_goal or 0)
                if decided is not None:
                    return decided
        decided = self._grow_mse(plan.mse_cap)  # stage 3: the rest of M
        if decided is not None:
            return decided
        return self._outcome(self.state(), f"every budget spent ({stop})")

    def _grow_mse(self, target: int) -> PracticalOutcome | None:
        """Take MSE samples up to ``target`` in steps of 1/MSE_GROWTH, looking after each step;
        the outcome as soon as one look decides, else None."""
        while self.mse_count < min(target, self.plan.mse_cap):
            step = max(MSE_BATCH, self.mse_count // MSE_GROWTH)
            self._take_mse(min(step, target - self.mse_count))
            decided = self._look()
            if decided is not None:
                return decided
        return None

    def _look(self) -> PracticalOutcome | None:
        """One look at every bound: the outcome if it is decided, else None."""
        self.looks += 1
        st = self.state()
        ok, bad = self._judge(st)
        where = f"{self.mse_count} MSE samples" + (
            f" and {self.tuples} challenge tuples" if self.tuples else ""
        )
        if np.all(ok):
            how = "on the MSE alone (err ≤ mse)" if not self.tuples else "with the challenges"
            return self._outcome(st, f"accepted {how} after {where}")
        if np.any(bad):
            return self._outcome(st, f"rejected after {where}")
        return None

    def _plan_stage2(self, st: dict[str, np.ndarray], undecided: np.ndarray) -> None:
        plan = self.plan
        state: dict[str, Any] = dict(st)
        state["tau_mse"] = self.setup.tau_loss
        state["mse_estimate"] = self.mse_sum / max(self.mse_count, 1)
        state["mse_sd"] = np.sqrt(self.mse_hi.var)
        state["mse_count"] = self.mse_count
        s = self.setup
        mse_only = _mse_only(plan, state, undecided, s.charge_upper, s.bound**2 + s.tau_loss)
        if mse_only is not None:  # err ≤ mse will do: no challenge, no pilot
            self.challenge = mse_only
            return
        pilot = self.pilot if self.pilot is not None else self.evidence.pilot(plan.pilot_tuples)
        cp = plan_challenges(plan, pilot, self.setup, state, undecided=undecided)
        want = pilot_size(cp, plan)
        if want > pilot.num_tuples:
            pilot = self.evidence.pilot(want)
            cp = plan_challenges(plan, pilot, self.setup, state, undecided=undecided)
        self.pilot_retrainings = pilot.retrainings
        self.challenge = cp
        if not cp.schedule:  # the MSE alone will do
            return
        z = plan.num_targets
        lo, hi = cp.sample_range
        split = plan.split
        self.res_lo = BettingBound(
            Side.LOWER, lo - cp.tau_shift, split.accept_delta("residual"), num_targets=z,
            keep_top=cp.lie_allowance,
        )  # fmt: skip
        self.res_hi = BettingBound(
            Side.UPPER, hi + cp.tau_shift, split.reject_delta("residual"), num_targets=z
        )

    def _outcome(self, st: dict[str, np.ndarray], stop: str) -> PracticalOutcome:
        ok, bad = self._judge(st)
        per = [
            "accept" if a else ("reject" if r else "undetermined")
            for a, r in zip(ok, bad, strict=True)
        ]
        eps = st["eps_accept"]
        if np.all(ok):
            verdict = Verdict.ACCEPT
            t = int(np.argmax(st["err_upper"] - eps))
            reason = (
                f"all {len(ok)} target(s) have err ≤ ε with probability ≥ 1 − δ (tightest: target "
                f"{t}, err_upper {st['err_upper'][t]:.4g} ≤ ε {eps[t]:.4g})"
            )
        elif np.any(bad):
            verdict = Verdict.REJECT
            idx = np.flatnonzero(bad)
            t = int(idx[np.argmax((st["err_lower"] - st["eps_reject"])[idx])])
            reason = (
                f"{idx.size} target(s) have err > ε with probability ≥ 1 − δ (e.g. target {t}: "
                f"err_lower {st['err_lower'][t]:.4g} > ε {st['eps_reject'][t]:.4g})"
            )
        else:
            verdict = Verdict.INCONCLUSIVE
            idx = np.flatnonzero(~ok)
            t = int(idx[np.argmax((st["err_upper"] - eps)[idx])])
            reason = (
                f"INCONCLUSIVE: the guarantee is NOT met at the requested ε; {idx.size} target(s) "
                f"undetermined, the run certifies only ε = {max(st['err_upper'][t], 0):.4g} for "
                f"target {t} (requested {eps[t]:.4g})"
            )
        mean = self.mse_sum / max(self.mse_count, 1) if self.mse_count else np.full(len(ok), np.nan)
        return PracticalOutcome(
            verdict=verdict,
            reason=reason,
            stop_reason=stop,
            epsilon_accept=eps,
            epsilon_reject=st["eps_reject"],
            mse_estimate=mean,
            mse_upper=st["mse_upper"],
            mse_lower=st["mse_lower"],
            residual_lower=st["residual_lower"],
            residual_upper=st["residual_upper"],
            err_upper=st["err_upper"],
            err_lower=st["err_lower"],
            per_target=per,
            mse_samples=self.mse_count,
            tuples=self.tuples,
            setup=self.setup,
            challenge=self.challenge,
            pilot_retrainings=self.pilot_retrainings,
            variance_lower=self.var_lo,
            variance_upper=self.var_hi,
            variance_estimate=self._variance_estimate(),
            epsilon_rel=self.plan.epsilon_rel,
            looks=self.looks,
        )


def pilot_size(cp: ChallengePlan, plan: PracticalPlan) -> int:
    """Pilot tuples worth retraining for this stage 2: 3% of its predicted verifier work."""
    members = MEMBERS_PER_TUPLE * int(cp.predicted.get("tuples", 0))
    m = int(cp.predicted.get("mse_samples", 0))
    if plan.checks is CheckMode.CERTIFIED:
        work = plan.check_cost * (members + m)
    elif plan.checks is CheckMode.CERTIFIED_SPOT:
        work = plan.check_cost * (cp.spot_checks + m)
    else:
        work = cp.spot_checks + m
    per_tuple = 2 + len(PILOT_LEVELS)
    return int(min(PILOT_MAX_TUPLES, max(plan.pilot_tuples, PILOT_SHARE * work / per_tuple)))


# --------------------------------------------------------------------------------------------
# the rule


SELF_FIT_METHOD = (
    "estimate: OLS excess risk B≥2·(N+1)/(K−N−2) ≤ ε per target, at the point estimates "
    "B≥2 ≈ msê and ε ≈ R·Var f̂ (protocol.economics); no fit needs fewer than N + 1 = "
    "self_fit_floor; benchmarks/leverage.py measures it"
)


class PracticalRule(Rule):
    """The default rule: the claim committed first, anytime-valid bounds on its MSE and on
    B≥2(f − βg), ACCEPT only when err_upper ≤ ε for every target (docs/guarantee.md)."""

    name = RuleName.PRACTICAL

    def plan(
        self, request: PlanRequest, task: Any, checks: CheckMode, check_cost: Callable[[], float]
    ) -> PracticalPlan:
        """The practical plan: caps within the protocol's per-session limits, ε absolute
        (default 0.2) or relative, and the task's bound, tolerance and hash."""
        if not 2 <= request.max_mse_samples <= MAX_SESSION_MODELS:
            raise ValueError(
                f"--max-mse-samples must be in [2, {MAX_SESSION_MODELS}] (the protocol's "
                "per-session limit on supplied models)"
            )
        if not 0 <= request.max_tuples <= MAX_SESSION_TUPLES:
            raise ValueError(
                f"--max-tuples must be in [0, {MAX_SESSION_TUPLES}] (the protocol's per-session "
                "limit on challenge tuples)"
            )
        epsilon = None if request.epsilon_rel is not None else (request.epsilon or 0.2)
        return make_plan(
            delta=request.delta,
            output_bound=task.output_bound,
            tolerance=task.tolerance,
            num_targets=task.num_targets,
            num_train_points=task.num_train_points,
            p=task.p,
            checks=checks,
            task_hash=task.identity().task_hash,
            epsilon=epsilon,
            epsilon_rel=request.epsilon_rel,
            mse_cap=request.max_mse_samples,
            tuple_cap=request.max_tuples,
            pilot_tuples=request.pilot_tuples,
            check_cost=check_cost(),
        )

    def begin(
        self, plan: Any, intercepts: Any, coefficients: Any, evidence: PracticalEvidence
    ) -> PracticalRun:
        """The run for this claim, not yet started; :class:`ClaimRejected` when the claim's mean
        lies provably far outside f's range (decided from the claim alone, spending no δ)."""
        if not isinstance(plan, PracticalPlan):
            raise TypeError(f"the practical rule needs a PracticalPlan, got {type(plan).__name__}")
        far = provably_far(plan, intercepts, coefficients)
        if far is not None:
            raise ClaimRejected(far)
        return PracticalRun(plan, intercepts, coefficients, evidence)

    def finish(self, run: PracticalRun) -> RuleOutcome:
        """Run ``run`` to its verdict, then spot-check the committed rounds when members were
        sampled rather than all certified and the verdict is not already a reject."""
        outcome = run.run()
        cp = outcome.challenge
        sampled = outcome.tuples and cp is not None and not run.plan.checks.all_members
        if sampled and outcome.verdict is not Verdict.REJECT:
            assert cp is not None
            run.evidence.spot_check(min(cp.spot_checks, MEMBERS_PER_TUPLE * outcome.tuples))
        details = outcome.to_dict()
        details.pop("verdict")
        details.pop("reason")
        return RuleOutcome(
            verdict=outcome.verdict,
            reason=f"{outcome.reason}; {outcome.stop_reason}",
            details=details,
            mse_estimate=outcome.mse_estimate,
            epsilon_estimate=outcome.epsilon_estimate,
            self_fit_method=SELF_FIT_METHOD,
            raw=outcome,
        )

    def run(self, plan: Any, intercepts: Any, coefficients: Any, evidence: Evidence) -> RuleOutcome:
        """:meth:`begin` then :meth:`finish`; ``evidence`` must also provide the pilot."""
        return self.finish(self.begin(plan, intercepts, coefficients, evidence))  # type: ignore[arg-type]

    def recheck(self, decision: dict[str, Any], record: RecordContext) -> Verdict:
        """Recompute err_upper = mse_upper − B≥2_lower, err_lower = mse_lower − B≥2_upper, the
        certified ε and each target's verdict from the recorded bounds; the verdict they imply
        (a run that a failed check rejected stays a reject)."""
        dec, z, w = decision, record.num_targets, "decision."
        eps = read_vector(dec, "epsilon", z, w)
        eps_rej = read_vector(dec, "epsilon_reject", z, w)
        read_vector(dec, "mse_estimate", z, w, nullable_items=True)
        lo_m = read_vector(dec, "mse_lower", z, w)
        hi_m = read_vector(dec, "mse_upper", z, w)
        r_lo = read_vector(dec, "residual_lower", z, w)
        r_hi = read_vector(dec, "residual_upper", z, w)
        err_up = read_vector(dec, "err_upper", z, w)
        err_lo = read_vector(dec, "err_lower", z, w)
        cert_eps = read_vector(dec, "certified_epsilon", z, w)
        per = read(dec, "per_target", list, w)
        read(dec, "mse_samples", int, w)
        read(dec, "tuples", int, w)
        guarantee = read(dec, "guarantee_met", bool, w)
        ok: list[bool] = []
        bad: list[bool] = []
        for t in range(z):
            if lo_m[t] > hi_m[t] or r_lo[t] > r_hi[t] or eps[t] < 0 or r_lo[t] < 0:
                raise RecordError(
                    f"target {t}: needs mse_lower ≤ mse_upper, 0 ≤ B≥2_lower ≤ B≥2_upper"
                )
            up = hi_m[t] - r_lo[t]
            lo = lo_m[t] - r_hi[t]
            if not close(up, err_up[t]):
                raise RecordError(
                    f"target {t}: err_upper {err_up[t]} ≠ mse_upper − B≥2_lower = {up}"
                )
            if not close(lo, err_lo[t]):
                raise RecordError(
                    f"target {t}: err_lower {err_lo[t]} ≠ mse_lower − B≥2_upper = {lo}"
                )
            if not close(max(up, 0.0), cert_eps[t]):
                raise RecordError(
                    f"target {t}: certified_epsilon {cert_eps[t]} ≠ max(err_upper, 0)"
                )
            ok.append(up <= eps[t])
            bad.append(lo > eps_rej[t])
            want = "accept" if ok[-1] else ("reject" if bad[-1] else "undetermined")
            if len(per) != z or per[t] != want:
                raise RecordError(f"target {t}: decision.per_target should be {want!r}")
        if all(ok):
            expect = Verdict.ACCEPT
        elif any(bad) or record.verdict is Verdict.REJECT:  # a failed check also rejects
            expect = Verdict.REJECT
        else:
            expect = Verdict.INCONCLUSIVE
        if guarantee != (expect is Verdict.ACCEPT):
            raise RecordError("decision.guarantee_met disagrees with the per-target err_upper ≤ ε")
        return expect

    def target_lines(self, decision: dict[str, Any]) -> list[str]:
        """``target t: err_upper ≤ ε`` (or ``>``) per target."""
        return [
            f"  target {t}: err_upper = {up:.6g} {'≤' if up <= e else '>'} ε = {e:.6g}"
            for t, (up, e) in enumerate(
                zip(decision["err_upper"], decision["epsilon"], strict=True)
            )
        ]
