"""Non-asymptotic, variance-adaptive confidence bounds for means of bounded i.i.d. variables.

Everything here is vectorised over Z targets (columns) and never clips data. Derivations are in
``docs/guarantee.md``; the short form:

* :func:`eb_halfwidth` — two-sided empirical Bernstein (Maurer & Pontil 2009, Thm 4 + Thm 10).
  For n ≥ 2 i.i.d. X_i ∈ [a, a + R] with unbiased sample variance V̂, with probability ≥ 1 − δ

      |X̄ − E X| ≤ √(2 V̂ ln(3/δ) / n) + 7 R ln(3/δ) / (3 (n − 1)).

  (Bernstein on each side at δ/3 plus the upper confidence bound on σ at δ/3; Maurer–Pontil's
  one-sided statement uses ln(2/δ), the two-sided one needs ln(3/δ).)
* :class:`MeanConfidenceSequence` — the predictable plug-in empirical-Bernstein confidence
  sequence PrPl-EB of Waudby-Smith & Ramdas (2023, JRSS-B, "Estimating means of bounded random
  variables by betting", Thm 2), two-sided, valid uniformly over time: with probability ≥ 1 − δ
  the mean lies in [lower_t, upper_t] for *every* t simultaneously, so the caller may stop at any
  data-dependent time.
* :func:`variance_lower_bound` — a lower confidence bound on Var X: ``"pairs"`` (default) applies
  the one-sided empirical Bernstein bound to the disjoint-pair statistic (X_{2i} − X_{2i+1})²/2,
  whose mean is Var X; ``"maurer_pontil"`` uses Maurer & Pontil's Thm 10,
  σ ≥ √V̂ − R √(2 ln(1/δ)/(n − 1)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _as_2d(values: Any, name: str, min_rows: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, Z) with Z >= 1, got {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return arr


def _delta(delta: Any, name: str = "delta") -> float:
    d = float(delta)
    if not (math.isfinite(d) and 0.0 < d < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {delta!r}")
    return d


def _ranges(value_range: Any, z: int, name: str = "value_range") -> np.ndarray:
    r = np.broadcast_to(np.asarray(value_range, dtype=np.float64), (z,)).copy()
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value_range!r}")
    return r


def eb_halfwidth_from_stats(
    sample_sd: Any, n: int, value_range: Any, delta: float, two_sided: bool = True
) -> np.ndarray:
    """Empirical Bernstein half-width from a sample standard deviation (vectorised).

    Returns √(2 V̂ L / n) + 7 R L / (3 (n − 1)) with L = ln(3/δ) (two-sided) or ln(2/δ)
    (one-sided), V̂ = sample_sd². Needs n ≥ 2. Guarantee: see :func:`eb_halfwidth`.
    """
    d = _delta(delta)
    if int(n) < 2:
        raise ValueError(f"the empirical Bernstein bound needs n >= 2 samples, got {n}")
    sd = np.asarray(sample_sd, dtype=np.float64)
    log_term = math.log((3.0 if two_sided else 2.0) / d)
    rng = np.asarray(value_range, dtype=np.float64)
    return np.sqrt(2.0 * sd * sd * log_term / n) + 7.0 * rng * log_term / (3.0 * (n - 1))


def eb_halfwidth(values: Any, value_range: Any, delta: float, two_sided: bool = True) -> np.ndarray:
    """Fixed-sample empirical Bernstein half-width per column of ``values`` (n, Z).

    Guarantee (Maurer & Pontil 2009, Thm 4 with Thm 10): if the n ≥ 2 rows are i.i.d. and every
    entry of column t lies in an interval of length ``value_range[t]`` (scalar or (Z,)), then for
    each t, with probability ≥ 1 − δ, |mean_t − E X_t| ≤ returned[t] (two-sided, L = ln(3/δ)),
    or E X_t − mean_t ≤ returned[t] (``two_sided=False``, L = ln(2/δ); by symmetry also the other
    side alone). V̂ is the unbiased sample variance.
    """
    x = _as_2d(values, "values", min_rows=2)
    r = _ranges(value_range, x.shape[1])
    sd = np.std(x, axis=0, ddof=1)
    return eb_halfwidth_from_stats(sd, x.shape[0], r, delta, two_sided)


def clt_halfwidth(values: Any, delta: float) -> np.ndarray:
    """Approximate (asymptotic, NOT a guarantee) two-sided CLT half-width z_{1−δ/2}·sd/√n."""
    x = _as_2d(values, "values", min_rows=2)
    return clt_halfwidth_from_stats(np.std(x, axis=0, ddof=1), x.shape[0], delta)


def clt_halfwidth_from_stats(sample_sd: Any, n: int, delta: float) -> np.ndarray:
    """:func:`clt_halfwidth` from a sample sd and a count (same value; NOT a guarantee)."""
    from scipy.stats import norm

    z = float(norm.ppf(1.0 - _delta(delta) / 2.0))
    return z * np.asarray(sample_sd, dtype=np.float64) / math.sqrt(int(n))


def variance_lower_bound(
    values: Any, value_range: Any, delta: float, method: str = "pairs"
) -> np.ndarray:
    """Lower confidence bound on Var X per column of i.i.d. ``values`` (m, Z); never negative.

    ``value_range`` is the length R of an interval containing every value (e.g. 2b for f ∈ [−b, b]).
    The sample size must be fixed before looking at the data (it is a fixed-n bound).

    * ``"pairs"``: W_i = (X_{2i} − X_{2i+1})²/2 for the ⌊m/2⌋ disjoint consecutive pairs are i.i.d.
      in [0, R²/2] with E W = Var X; the one-sided empirical Bernstein bound (L = ln(2/δ)) gives
      Var X ≥ W̄ − √(2 V̂_W L/m') − 7 (R²/2) L/(3(m' − 1)) w.p. ≥ 1 − δ. Needs m ≥ 4.
    * ``"maurer_pontil"``: Maurer & Pontil 2009 Thm 10 (scaled by R): w.p. ≥ 1 − δ,
      σ ≥ √V̂ − R √(2 ln(1/δ)/(m − 1)); returned as max(0, ·)². Needs m ≥ 2.

    Guarantee: for each column, P(Var X < returned) ≤ δ.
    """
    d = _delta(delta)
    if method == "pairs":
        x = _as_2d(values, "values", min_rows=4)
        r = _ranges(value_range, x.shape[1])
        half = x.shape[0] // 2
        w = 0.5 * (x[0 : 2 * half : 2] - x[1 : 2 * half : 2]) ** 2
        width = eb_halfwidth_from_stats(
            np.std(w, axis=0, ddof=1), half, 0.5 * r * r, d, two_sided=False
        )
        return np.maximum(0.0, np.mean(w, axis=0) - width)
    if method == "maurer_pontil":
        x = _as_2d(values, "values", min_rows=2)
        r = _ranges(value_range, x.shape[1])
        sd = np.std(x, axis=0, ddof=1)
        low = sd - r * math.sqrt(2.0 * math.log(1.0 / d) / (x.shape[0] - 1))
        return np.maximum(0.0, low) ** 2
    raise ValueError(f"method must be 'pairs' or 'maurer_pontil', got {method!r}")


def _psi_e(lam: np.ndarray) -> np.ndarray:
    """ψ_E(λ) = (−ln(1 − λ) − λ)/4 (Waudby-Smith & Ramdas 2023, eq. (12))."""
    return (-np.log1p(-lam) - lam) / 4.0


class MeanConfidenceSequence:
    """Two-sided PrPl-EB confidence sequence for the means of Z bounded streams (anytime-valid).

    Observations of target t must lie in [0, value_bound[t]]; they are rescaled to Y = X/B ∈ [0, 1].
    With ℓ = ln(2/δ), c = ``lambda_max`` and, for i = 1, 2, …,

        μ̂_i  = (1/2 + Σ_{k≤i} Y_k)/(i + 1),        μ̂_0 = 1/2
        σ̂²_i = (1/4 + Σ_{k≤i} (Y_k − μ̂_k)²)/(i + 1), σ̂²_0 = 1/4
        λ_i  = min(√(2ℓ / (σ̂²_{i−1} · i · ln(1 + i))), c)          (predictable)
        v_i  = 4 (Y_i − μ̂_{i−1})²,   ψ_E(λ) = (−ln(1 − λ) − λ)/4

    the interval at time t is (Waudby-Smith & Ramdas 2023, Thm 2)

        C_t = Σλ_iY_i/Σλ_i ± (ℓ + Σ v_i ψ_E(λ_i)) / Σλ_i        (sums over i ≤ t),

    and P(∃ t ≥ 1 : E Y ∉ C_t) ≤ δ. The reported ``lower``/``upper`` are B times the running
    intersection of all C_t seen so far with [0, 1] (an intersection of a confidence sequence is
    one). Validity needs i.i.d. (more generally: conditional mean E Y constant) observations in
    [0, B]; the λ_i may be any predictable values in (0, 1), the choice above only sets the width.
    """

    def __init__(
        self,
        num_targets: int,
        value_bound: Any,
        delta: float,
        lambda_max: float = 0.5,
    ) -> None:
        """Start an empty sequence for ``num_targets`` streams in [0, value_bound] (scalar/(Z,))."""
        z = int(num_targets)
        if z < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        self.num_targets = z
        self.value_bound = _ranges(value_bound, z, "value_bound")
        self.delta = _delta(delta)
        c = float(lambda_max)
        if not 0.0 < c < 1.0:
            raise ValueError(f"lambda_max must lie in (0, 1), got {lambda_max}")
        self.lambda_max = c
        self._log = math.log(2.0 / self.delta)
        self._t = 0
        self._sum_y = np.zeros(z)  # Σ Y_k
        self._sum_dev = np.zeros(z)  # Σ (Y_k − μ̂_k)²
        self._sum_lam = np.zeros(z)  # Σ λ_i
        self._sum_lam_y = np.zeros(z)  # Σ λ_i Y_i
        self._sum_vpsi = np.zeros(z)  # Σ v_i ψ_E(λ_i)
        self._lo = np.zeros(z)  # running intersection, scaled to [0, 1]
        self._hi = np.ones(z)

    @property
    def count(self) -> int:
        """Number of observations so far (per target; all targets advance together)."""
        return self._t

    @property
    def mean(self) -> np.ndarray:
        """(Z,) plain sample mean (NaN before the first update)."""
        if self._t == 0:
            return np.full(self.num_targets, np.nan)
        return self._sum_y / self._t * self.value_bound

    @property
    def lower(self) -> np.ndarray:
        """(Z,) running-intersection lower confidence bound on the mean (0 before any data)."""
        return self._lo * self.value_bound

    @property
    def upper(self) -> np.ndarray:
        """(Z,) running-intersection upper confidence bound on the mean (B before any data)."""
        return self._hi * self.value_bound

    @property
    def halfwidth(self) -> np.ndarray:
        """(Z,) half the width of the current interval, (upper − lower)/2."""
        return 0.5 * (self.upper - self.lower)

    def update(self, batch: Any) -> None:
        """Consume a batch (m, Z) of observations in order (vectorised; m may be 0).

        Raises ``ValueError`` for non-finite values or values outside [0, value_bound] (nothing
        is clipped: an out-of-range value would void the guarantee).
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
        if np.any(x < 0) or np.any(x > self.value_bound):
            raise ValueError("batch values must lie in [0, value_bound] (nothing is clipped)")
        y = x / self.value_bound
        m = y.shape[0]
        t0 = self._t
        idx = np.arange(t0 + 1, t0 + m + 1, dtype=np.float64)[:, None]  # i = t0+1 … t0+m
        cum_y = self._sum_y + np.cumsum(y, axis=0)  # Σ_{k≤i} Y_k
        mu = (0.5 + cum_y) / (idx + 1.0)  # μ̂_i
        mu_prev = np.vstack([((0.5 + self._sum_y) / (t0 + 1.0))[None, :], mu[:-1]])  # μ̂_{i−1}
        cum_dev = self._sum_dev + np.cumsum((y - mu) ** 2, axis=0)
        sig2 = (0.25 + cum_dev) / (idx + 1.0)  # σ̂²_i
        sig2_prev = np.vstack([((0.25 + self._sum_dev) / (t0 + 1.0))[None, :], sig2[:-1]])
        lam = np.sqrt(2.0 * self._log / (sig2_prev * idx * np.log1p(idx)))
        lam = np.minimum(lam, self.lambda_max)
        v = 4.0 * (y - mu_prev) ** 2
        cum_lam = self._sum_lam + np.cumsum(lam, axis=0)
        cum_lam_y = self._sum_lam_y + np.cumsum(lam * y, axis=0)
        cum_vpsi = self._sum_vpsi + np.cumsum(v * _psi_e(lam), axis=0)
        centre = cum_lam_y / cum_lam
        radius = (self._log + cum_vpsi) / cum_lam
        self._lo = np.maximum(self._lo, np.max(centre - radius, axis=0))
        self._hi = np.minimum(self._hi, np.min(centre + radius, axis=0))
        self._t = t0 + m
        self._sum_y = cum_y[-1]
        self._sum_dev = cum_dev[-1]
        self._sum_lam = cum_lam[-1]
        self._sum_lam_y = cum_lam_y[-1]
        self._sum_vpsi = cum_vpsi[-1]


def predicted_cs_halfwidth(
    count: int, std: Any, value_bound: Any, delta: float, lambda_max: float = 0.5
) -> np.ndarray:
    """Approximate PrPl-EB half-width after ``count`` observations (for sizing only).

    Runs the confidence-sequence recursion on its expectation: σ̂²_{i−1} → σ²/B² (floored by the
    σ̂²_0 = 1/4 prior weight as in the real recursion), v_i ψ_E(λ_i) → (σ²/B²)(−ln(1−λ_i) − λ_i).
    This predicts, it does not guarantee: the guarantee is :class:`MeanConfidenceSequence`'s.
    Vectorised over std (Z,); returns (Z,) in the original units.
    """
    t = int(count)
    if t < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    b = np.atleast_1d(np.asarray(value_bound, dtype=np.float64))
    s2 = (np.atleast_1d(np.asarray(std, dtype=np.float64)) / b) ** 2
    log_term = math.log(2.0 / _delta(delta))
    i = np.arange(1, t + 1, dtype=np.float64)[:, None]
    sig2_prev = (0.25 + (i - 1.0) * s2[None, :]) / i
    lam = np.minimum(np.sqrt(2.0 * log_term / (sig2_prev * i * np.log1p(i))), lambda_max)
    radius = (log_term + np.sum(s2 * (-np.log1p(-lam) - lam), axis=0)) / np.sum(lam, axis=0)
    return np.minimum(radius, 0.5) * b
