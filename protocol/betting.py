"""One-sided, anytime-valid confidence bounds on means by betting, robust to a few lies.

The tool behind every bound of the practical rule (derivations in ``docs/guarantee.md`` §2).

**The capital.** Observations X_1, X_2, … are i.i.d. with mean μ and X_i ≥ lo almost surely.
For a candidate mean m > lo and a bet λ ≥ 0 fixed before X_i is seen, with the cap
λ(m) = min(λ*, c/(m − lo)) (0 < c < 1),

    K_t(m) = Π_{i ≤ t} (1 + λ_i(m)·(X_i − m)).

Every factor is ≥ 1 − c > 0, and at m = μ the capital is a non-negative martingale with K_0 = 1,
so by Ville's inequality P(∃t: K_t(μ) ≥ 1/α) ≤ α. Each factor is non-increasing in m (the piece
with λ = λ* decreases in m; the capped piece is 1 − c + c·(X − lo)/(m − lo)), so the set of
rejected m (K ≥ 1/α) is a down-set and the lower confidence bound

    LCB_t = sup{m : K_t(m) ≥ 1/α}

satisfies P(∃t: LCB_t > μ) ≤ α, for any stopping rule. An upper bound is the mirror image
(X → −X, lo → −hi). Only the side of the range the bound looks away from enters: a lower bound
needs lo, an upper bound needs hi.

**Mixtures.** Several bets λ*·w_g (a small grid) are averaged: the average of martingales is one,
so K_mix = (1/G) Σ_g K_g is as valid, and it adapts when the predicted λ* is off.

**Rounding.** Each batch is summarised by a histogram whose representative of a bin is its
smallest value (largest, for an upper bound). K is increasing in every X_i, so the summarised
capital is below the true one: rejecting on it is still valid, and evaluation costs the number of
bins, not the number of observations.

**Lies.** If up to m* observations were replaced by arbitrary values, the true capital is at least
the reported one with the m* largest reported values swapped for ``lie_floor`` (a lower bound on
any true value). Within a batch λ is constant, so the drop log(1 + λ(X − m)) − log(1 + λ(floor − m))
grows with X; the m* largest drops are among each batch's m* largest values, which are kept
exactly. The adjusted capital lower-bounds the truth whatever the lies were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from protocol.validation import check_delta

#: Bet cap c: every factor is at least 1 − c.
DEFAULT_CAP = 0.5
#: Bets in the mixture, as multiples of the predicted λ*.
DEFAULT_MULTIPLIERS = (0.5, 1.0, 2.0)
#: Bins per batch and target in the rounded summary.
DEFAULT_BINS = 2048
#: Bisection steps when solving for a bound (a range of 10⁴ halved 52 times is below 1e-11).
_BISECTION_STEPS = 52


class Side(Enum):
    """Which side of the mean a bound is on."""

    LOWER = "lower"
    UPPER = "upper"


def _vec(value: Any, z: int, name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (z,)).copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def bet_size(delta: Any, horizon: int, variance: Any) -> np.ndarray:
    """λ* = √(2 ln(1/δ) / (horizon · σ²)): the bet that would be optimal at ``horizon`` samples.

    Sizing only: any λ* ≥ 0 fixed before the data it bets on keeps every bound valid.
    """
    d = np.asarray(delta, dtype=np.float64)
    v = np.maximum(np.asarray(variance, dtype=np.float64), 1e-300)
    return np.sqrt(2.0 * np.log(1.0 / d) / (max(int(horizon), 1) * v))


@dataclass
class _Batch:
    reps: np.ndarray  # (B, Z) rounded representatives (in the lower-bound orientation)
    counts: np.ndarray  # (B, Z) counts
    tops: np.ndarray  # (K, Z) the batch's K largest values, kept exactly (not in reps)
    lam_star: np.ndarray  # (Z,)


class BettingBound:
    """A one-sided anytime-valid bound on the means of Z streams (vectorised over targets).

    ``side``: :class:`Side`. ``range_bound`` (Z,): an almost-sure bound on the observations on the
    far side (lo for a lower bound, hi for an upper bound). ``delta`` (scalar or (Z,)): each
    target's error probability, uniformly over time. Observations arrive in batches; each batch
    carries its own bet λ* (fixed before the batch is seen). ``keep_top``: how many of each
    batch's most favourable values to keep exactly, the most lies :meth:`bound` can be asked to
    absorb.

    Guarantee: if the observations of target t are i.i.d. (or have conditional mean μ_t given
    the past) and lie on the right side of ``range_bound``, then with probability ≥ 1 − δ_t
    every bound this object ever returns is on the right side of μ_t. With ``lies`` = m*, that
    holds for the true values whenever at most m* reported values differ from them and every
    true value lies beyond ``lie_floor``.
    """

    def __init__(
        self,
        side: Side,
        range_bound: Any,
        delta: Any,
        *,
        num_targets: int,
        cap: float = DEFAULT_CAP,
        multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
        bins: int | None = DEFAULT_BINS,
        keep_top: int = 0,
    ) -> None:
        z = int(num_targets)
        if z < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        if not isinstance(side, Side):
            raise TypeError(f"side must be a Side, got {side!r}")
        if not 0.0 < float(cap) < 1.0:
            raise ValueError(f"cap must lie in (0, 1), got {cap}")
        if not multipliers or any(not (w > 0 and math.isfinite(w)) for w in multipliers):
            raise ValueError("multipliers must be positive and finite")
        d = _vec(delta, z, "delta")
        for value in d:
            check_delta(value)
        self.side = side
        self.num_targets = z
        self.sign = 1.0 if side is Side.LOWER else -1.0
        # internally everything is a lower bound on sign·X, whose almost-sure lower bound is lo
        self.lo = self.sign * _vec(range_bound, z, "range_bound")
        self.delta = d
        self.threshold = np.log(1.0 / d)
        self.cap = float(cap)
        self.multipliers = np.asarray(multipliers, dtype=np.float64)
        self.bins = None if bins is None else int(bins)
        self.keep_top = int(keep_top)
        self.count = 0
        self._batches: list[_Batch] = []
        self._best = self.lo.copy()  # running best (lower-bound orientation)

    # ---- data ---------------------------------------------------------------------------------
    def add(self, batch: Any, lam_star: Any) -> None:
        """Consume a batch (m, Z) with bet ``lam_star`` (scalar or (Z,), ≥ 0, fixed before it).

        Raises ``ValueError`` for non-finite values or values beyond the almost-sure bound
        (nothing is clipped: such a value would void the guarantee).
        """
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim == 1 and self.num_targets == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.num_targets:
            raise ValueError(f"batch must have shape (m, {self.num_targets}), got {x.shape}")
        if x.shape[0] == 0:
            return
        if not np.all(np.isfinite(x)):
            raise ValueError("batch must be finite (found NaN or inf)")
        y = self.sign * x
        if np.any(y < self.lo[None, :]):
            raise ValueError(
                f"batch has a value beyond the almost-sure {self.side.value} bound's range limit"
            )
        lam = _vec(lam_star, self.num_targets, "lam_star")
        if np.any(lam < 0):
            raise ValueError("lam_star must be >= 0")
        y = np.sort(y, axis=0)
        k = min(self.keep_top, y.shape[0])
        tops, body = y[y.shape[0] - k :], y[: y.shape[0] - k]
        reps, counts = self._summarise(body)
        self._batches.append(_Batch(reps, counts, tops, lam))
        self.count += x.shape[0]

    def _summarise(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted (n, Z) values → per-target bins: (smallest value of each bin, its count)."""
        n = y.shape[0]
        if n == 0:
            return np.zeros((0, self.num_targets)), np.zeros((0, self.num_targets))
        if self.bins is None or n <= self.bins:
            return y, np.ones_like(y)
        edges = np.linspace(0, n, self.bins + 1).astype(np.int64)
        starts = edges[:-1]
        return y[starts], np.diff(edges).astype(np.float64)[:, None] * np.ones((1, y.shape[1]))

    # ---- evaluation ---------------------------------------------------------------------------
    def log_capital(self, m: Any, lies: int = 0, lie_floor: Any = None) -> np.ndarray:
        """(Z,) log of the mixture capital at candidate means ``m`` (in the bound's own units),
        with ``lies`` of the most favourable values swapped for ``lie_floor``."""
        mm = self.sign * _vec(m, self.num_targets, "m")
        return self._log_capital(mm, int(lies), self._floor(lie_floor))

    def _floor(self, lie_floor: Any) -> np.ndarray:
        if lie_floor is None:
            return self.lo
        floor = self.sign * _vec(lie_floor, self.num_targets, "lie_floor")
        if np.any(floor < self.lo):
            raise ValueError("lie_floor must not lie beyond the almost-sure range bound")
        return floor

    def _log_capital(self, m: np.ndarray, lies: int, floor: np.ndarray) -> np.ndarray:
        z = self.num_targets
        gap = np.maximum(m - self.lo, 1e-300)
        total = np.zeros((len(self.multipliers), z))
        drops: list[np.ndarray] = []
        for b in self._batches:
            lam = np.minimum(self.multipliers[:, None] * b.lam_star[None, :], self.cap / gap)
            if b.reps.shape[0]:
                f = np.log1p(lam[:, None, :] * (b.reps[None, :, :] - m[None, None, :]))
                total += np.sum(b.counts[None, :, :] * f, axis=1)
            if b.tops.shape[0]:
                ft = np.log1p(lam[:, None, :] * (b.tops[None, :, :] - m[None, None, :]))
                total += ft.sum(axis=1)
                if lies:
                    fl = np.log1p(lam * (floor[None, :] - m[None, :]))
                    drops.append(ft - fl[:, None, :])  # (G, K, Z), ≥ 0
        if lies and drops:
            if lies > self.keep_top:
                raise ValueError(f"lies = {lies} exceeds keep_top = {self.keep_top}")
            d = np.concatenate(drops, axis=1)
            k = min(lies, d.shape[1])
            worst = -np.sort(-d, axis=1)[:, :k, :].sum(axis=1)
            total -= worst
        top = total.max(axis=0)
        return top + np.log(np.mean(np.exp(total - top[None, :]), axis=0))

    def current(self, lies: int = 0, lie_floor: Any = None) -> np.ndarray:
        """(Z,) the bound from all data so far (not the running best over looks).

        The range limit itself (lo, or hi for an upper bound) when the data reject nothing: the
        mean lies within the almost-sure range anyway.
        """
        floor = self._floor(lie_floor)
        if not self._batches:
            return self.sign * self.lo
        highs = [np.max(b.reps, axis=0) for b in self._batches if b.reps.shape[0]]
        highs += [np.max(b.tops, axis=0) for b in self._batches if b.tops.shape[0]]
        # at m above every observation each factor is < 1, so nothing there is rejected
        right = np.max(np.stack(highs), axis=0)
        left = self.lo + 1e-12 * (1.0 + np.abs(self.lo))
        ok = self._log_capital(left, lies, floor) >= self.threshold
        lo_b, hi_b = left.copy(), np.maximum(right, left)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo_b + hi_b)
            rej = self._log_capital(mid, lies, floor) >= self.threshold
            lo_b = np.where(rej, mid, lo_b)
            hi_b = np.where(rej, hi_b, mid)
        # lo_b is a rejected mean; the rejected set is a down-set, so it is below μ unless μ
        # itself was rejected (probability ≤ δ)
        return self.sign * np.where(ok, lo_b, self.lo)

    def bound(self, lies: int = 0, lie_floor: Any = None) -> np.ndarray:
        """(Z,) the running best bound over every look so far (this look included).

        The range limit until the data reject anything. Valid uniformly over looks
        (Ville's inequality covers every time), so taking the best of the looks is valid too.
        """
        now = self.sign * self.current(lies, lie_floor)
        self._best = np.maximum(self._best, now)
        return self.sign * self._best


def predicted_gap(
    count: int,
    sd: Any,
    range_gap: Any,
    delta: Any,
    lam_star: Any,
    *,
    cap: float = DEFAULT_CAP,
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
    lie_nats: Any = 0.0,
) -> np.ndarray:
    """Predicted distance between the mean and a :class:`BettingBound` after ``count`` samples.

    ``range_gap`` (Z,): |μ − range limit| (μ − lo for a lower bound). Uses the second-order growth
    E log(1 + λ(X − m)) ≈ λη − λ²(σ² + η²)/2 at m = μ ∓ η, the best bet of the mixture, ln G for
    the mixture and ``lie_nats`` of capital lost to lies. A prediction for sizing only.
    """
    n = max(int(count), 1)
    s2 = np.square(np.asarray(sd, dtype=np.float64))
    dist = np.maximum(np.asarray(range_gap, dtype=np.float64), 1e-300)
    need = np.log(1.0 / np.asarray(delta, dtype=np.float64)) + math.log(len(multipliers))
    need = need + np.asarray(lie_nats, dtype=np.float64)
    lam0 = np.asarray(lam_star, dtype=np.float64)
    s2, dist, need, lam0 = np.broadcast_arrays(s2, dist, need, lam0)

    def growth(eta: np.ndarray) -> np.ndarray:
        best = np.full(eta.shape, -np.inf)
        for w in multipliers:
            lam = np.minimum(w * lam0, cap / np.maximum(dist - eta, 1e-300))
            best = np.maximum(best, lam * eta - 0.5 * lam * lam * (s2 + eta * eta))
        return n * best

    lo = np.zeros(dist.shape)
    hi = dist.copy()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        enough = growth(mid) >= need
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid)
    return np.where(growth(hi) >= need, hi, np.inf)


def growth_rate(
    gap: Any,
    count: int,
    sd: Any,
    range_gap: Any,
    delta: Any,
    *,
    cap: float = DEFAULT_CAP,
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
) -> np.ndarray:
    """Predicted log-capital per sample at distance ``gap`` from the mean, with the bet tuned to
    ``count`` samples (:func:`bet_size`): max over the mixture of λη − λ²(σ² + η²)/2, λ capped by
    c/(range_gap − η). Sizing only."""
    n = max(int(count), 1)
    s2 = np.square(np.asarray(sd, dtype=np.float64))
    eta = np.asarray(gap, dtype=np.float64)
    dist = np.asarray(range_gap, dtype=np.float64)
    lam0 = bet_size(delta, n, s2 + 1e-300)
    best = np.full(np.broadcast(eta, dist, s2).shape, -np.inf)
    for w in multipliers:
        lam = np.minimum(w * lam0, cap / np.maximum(dist - eta, 1e-300))
        best = np.maximum(best, lam * eta - 0.5 * lam * lam * (s2 + eta * eta))
    return best


def capital_needed(delta: Any, multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS) -> np.ndarray:
    """ln(1/δ) + ln G: the log-capital a mixture of G bets must reach to reject."""
    return np.log(1.0 / np.asarray(delta, dtype=np.float64)) + math.log(len(multipliers))
