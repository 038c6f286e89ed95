"""Practical mode: variance-adaptive, non-asymptotic residual/MSE bounds, decision and sizing.

Derivations and the exact conditions are in ``docs/guarantee.md``. Summary (per target):

* Residual as one i.i.d. mean. Tuple j gives
  r_j = (f(x)² + f(y0)²)/2 + (3/(2ρ) − 1) f(x)f(y0) − (2/ρ) f(x)f(yρ) + (1/(2ρ)) f(x)f(y2ρ);
  mean_j r_j is the interpolant residual B̂ − z0 − z1 and E r = B_{≥2} + bias with
  0 ≤ bias ≤ c(ρ)·B_{≥3} ≤ c(ρ)·B_{≥2}, c(ρ) = sup_{k≥3} ρ^{k−1}(2^{k−1} − 2) ≤ 4ρ².
  r_j ∈ [b²(2 − 4/ρ), 4b²/ρ] for f ∈ [−b, b]⁴ (exact extremes, 0 < ρ ≤ 1/2).
* :func:`residual_interval`: empirical Bernstein (two-sided, ln(3/δ)) on the r_j, robust to m*
  undetected lies and to a CHECKEQUIV tolerance τ, giving B_{≥2} ∈ [lower, upper].
* MSE: :class:`protocol.confidence.MeanConfidenceSequence` on the losses (f − g)² ∈ [0, (b+τ+G)²]
  (anytime-valid, so the verifier may stop as soon as the verdict is determined).
* :func:`practical_decision`: err_upper = mse_upper + τ_mse − lower, err_lower = mse_lower −
  τ_mse − upper; accept iff err_upper ≤ ε_t for all t, reject once err_lower > ε_t for some t,
  else undetermined (at the sample cap: reject).
* :func:`plan_practical`: sizes predicted from a pilot (approximate), guarantees from the bounds
  above (non-asymptotic).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from protocol.accounting import ConfigurationError, lie_allowance
from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.confidence import (
    MeanConfidenceSequence,
    clt_halfwidth_from_stats,
    eb_halfwidth_from_stats,
    predicted_cs_halfwidth,
    variance_lower_bound,
)

#: ρ grid searched by :func:`plan_practical` when no ρ is given.
RHO_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
#: Fractions of ε_t the planner gives each source of slack (they sum to 1; see docs/guarantee.md).
BUDGET = {"residual": 0.35, "mse": 0.35, "lies": 0.2, "tolerance": 0.1}
#: Default size of the verifier's fixed variance sample (ε relative to Var f).
DEFAULT_VARIANCE_SAMPLES = 20_000
VERDICTS = ("accept", "reject", "undetermined")


# --------------------------------------------------------------------------------------------
# validation


def _check_rho(rho: Any) -> float:
    r = float(rho)
    if not (math.isfinite(r) and 0.0 < r <= 0.5):
        raise ValueError(f"rho must satisfy 0 < rho <= 0.5, got {rho!r}")
    return r


def _pos_float(value: Any, name: str, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {value!r}"
        )
    return v


def _finite_vec(value: Any, name: str, z: int) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (z,)).copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return arr


def _floats(arr: Any) -> list[float]:
    return [float(v) for v in np.atleast_1d(np.asarray(arr, dtype=np.float64))]


# --------------------------------------------------------------------------------------------
# residual samples, their range, bias, lies and tolerance


def residual_coefficients(rho: float) -> tuple[float, float, float]:
    """(A, B, C) = (3/(2ρ) − 1, 2/ρ, 1/(2ρ)): r = (u² + v²)/2 + A·uv − B·uw + C·us."""
    r = _check_rho(rho)
    return 3.0 / (2.0 * r) - 1.0, 2.0 / r, 1.0 / (2.0 * r)


def residual_samples(f_values: Any, rho: float) -> np.ndarray:
    """Per-tuple residual samples r_j, shape (n, Z), from the (4n, Z) member f-values.

    r_j = (f(x)² + f(y0)²)/2 + (3/(2ρ) − 1) f(x)f(y0) − (2/ρ) f(x)f(yρ) + (1/(2ρ)) f(x)f(y2ρ).
    Guarantee: mean_j r_j equals the unconstrained interpolant residual
    ``estimate_residual(f_values, rho).residual_interpolant`` (up to rounding), and the r_j of
    distinct tuples are i.i.d. when the tuples are. Raises ``ValueError`` on bad shapes/values.
    """
    a, b, c = residual_coefficients(rho)
    f = np.asarray(f_values, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 1 or f.shape[0] < MEMBERS_PER_TUPLE:
        raise ValueError(f"f_values must have shape (4n, Z) with n, Z >= 1, got {f.shape}")
    if f.shape[0] % MEMBERS_PER_TUPLE:
        raise ValueError(f"f_values must have a multiple of 4 rows, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("f_values must be finite (found NaN or inf)")
    fx, fy0, fyr, fy2r = (f[role::MEMBERS_PER_TUPLE] for role in range(MEMBERS_PER_TUPLE))
    return 0.5 * (fx * fx + fy0 * fy0) + fx * (a * fy0 - b * fyr + c * fy2r)


def residual_sample_range(output_bound: float, rho: float) -> tuple[float, float]:
    """Exact (min, max) of r_j over f ∈ [−b, b]⁴: (b²(2 − 4/ρ), 4b²/ρ), for 0 < ρ ≤ 1/2.

    Max: r is linear in f(yρ), f(y2ρ) and convex in f(y0), so extremes sit at ±b; with A ≥ 0 the
    max is b²(1 + A + B + C) = 4b²/ρ at f(x) = b, f(y0) = b, f(yρ) = −b, f(y2ρ) = b. Min: for
    |f(x)| = t the inner minimum is t²/2 + b²/2 − (A + B + C)·t·b when A·t ≥ b, or
    t²(1 − A²)/2 − (B + C)·t·b otherwise; both decrease in t, so the min is at t = b:
    b²(1 − (A + B + C)) = b²(2 − 4/ρ).
    """
    b = _pos_float(output_bound, "output_bound")
    r = _check_rho(rho)
    return b * b * (2.0 - 4.0 / r), 4.0 * b * b / r


def residual_sample_width(output_bound: float, rho: float) -> float:
    """D = max − min of r_j = b²(8/ρ − 2): the most one tuple's r_j can move."""
    lo, hi = residual_sample_range(output_bound, rho)
    return hi - lo


def bias_coefficient(rho: float) -> float:
    """c(ρ) = sup_{k≥3} ρ^{k−1}(2^{k−1} − 2) ≤ (2ρ)² = 4ρ², so 0 ≤ E r − B_{≥2} ≤ c(ρ)·B_{≥3}.

    E r − B_{≥2} = Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2) (docs/accounting.md §4). For ρ ≤ 1/3 the sup is
    the k = 3 term 2ρ²; at ρ = 1/2 it is the limit 1 = 4ρ².
    """
    r = _check_rho(rho)
    if r >= 0.5:
        return 1.0  # terms 1 − 2^{2−k} increase to 1
    best, k = 0.0, 3
    while True:
        term = r ** (k - 1) * (2.0 ** (k - 1) - 2.0)
        best = max(best, term)
        if (2.0 * r) ** (k - 1) <= best:  # every later term is below (2ρ)^{k−1}
            return best
        k += 1


def lie_effect(num_tuples: int, output_bound: float, rho: float) -> float:
    """Λ = D/n: one lied member changes one r_j by ≤ D, hence mean r by ≤ D/n."""
    return residual_sample_width(output_bound, rho) / int(num_tuples)


def residual_tau_charge(output_bound: float, tolerance: float, rho: float) -> float:
    """τ_r = (2bτ + τ²)·(1 + |3/(2ρ) − 1| + 2/ρ + 1/(2ρ)) = (2bτ + τ²)·4/ρ (ρ ≤ 1/2).

    If every f-value is off by ≤ τ, each product and square moves by ≤ 2bτ + τ², so every r_j
    (and the mean) moves by ≤ τ_r.
    """
    b = _pos_float(output_bound, "output_bound")
    tau = _pos_float(tolerance, "tolerance", allow_zero=True)
    a, bb, c = residual_coefficients(rho)
    return (2.0 * b * tau + tau * tau) * (1.0 + abs(a) + bb + c)


def mse_tau_charge(output_bound: float, datamodel_range: Any, tolerance: float) -> np.ndarray:
    """τ_mse = 2(b + G)τ + τ²: |(f + d − g)² − (f − g)²| for |d| ≤ τ, |f| ≤ b, |g| ≤ G."""
    b = _pos_float(output_bound, "output_bound")
    tau = _pos_float(tolerance, "tolerance", allow_zero=True)
    g = np.asarray(datamodel_range, dtype=np.float64)
    return 2.0 * (b + g) * tau + tau * tau


def mse_loss_bound(output_bound: float, datamodel_range: Any, tolerance: float = 0.0) -> np.ndarray:
    """L = (b + τ + G)²: every verifier loss (f − g)² lies in [0, L] (|f| ≤ b + τ, |g| ≤ G)."""
    b = _pos_float(output_bound, "output_bound")
    tau = _pos_float(tolerance, "tolerance", allow_zero=True)
    g = np.asarray(datamodel_range, dtype=np.float64)
    if np.any(~np.isfinite(g)) or np.any(g < 0):
        raise ValueError("datamodel_range must be finite and >= 0")
    return (b + tau + g) ** 2


def mse_confidence_sequence(
    output_bound: float, datamodel_range: Any, tolerance: float, delta_per_target: float
) -> MeanConfidenceSequence:
    """A :class:`MeanConfidenceSequence` for the MSE losses of Z targets at δ_M/Z each."""
    g = np.atleast_1d(np.asarray(datamodel_range, dtype=np.float64))
    return MeanConfidenceSequence(
        g.shape[0], mse_loss_bound(output_bound, g, tolerance), delta_per_target
    )


# --------------------------------------------------------------------------------------------
# residual interval


@dataclass(frozen=True)
class ResidualInterval:
    """B_{≥2} ∈ [lower, upper] per target w.p. ≥ 1 − δ (given ≤ m* lies and tolerance τ).

    ``estimate`` = mean r_j of the reported values; ``sample_sd`` their sample sd;
    ``sd_robust`` the sd bound used (inflated for lies and τ); ``halfwidth`` = η_R (empirical
    Bernstein, two-sided); ``lie_shift`` = m*·D/n; ``tau_shift`` = τ_r; ``bias_upper`` = the bias
    allowance subtracted from the lower end; ``clt_halfwidth`` is the approximate CLT half-width
    z·sd/√n (information only, not a guarantee). Arrays have shape (Z,).
    """

    rho: float
    num_tuples: int
    output_bound: float
    delta: float
    lie_allowance: int
    tolerance: float
    sample_range: tuple[float, float]
    bias_coefficient: float
    lie_shift: float
    tau_shift: float
    estimate: np.ndarray
    sample_sd: np.ndarray
    sd_robust: np.ndarray
    halfwidth: np.ndarray
    bias_upper: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    clt_halfwidth: np.ndarray

    @property
    def num_targets(self) -> int:
        """Z."""
        return int(self.estimate.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats and lists of floats)."""
        d: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if isinstance(v, np.ndarray):
                d[k] = _floats(v)
            elif isinstance(v, tuple):
                d[k] = [float(x) for x in v]
            else:
                d[k] = v
        return d


def residual_interval(
    f_values: Any,
    rho: float,
    output_bound: float,
    delta: float,
    lie_allowance: int = 0,
    tolerance: float = 0.0,
) -> ResidualInterval:
    """Confidence interval for B_{≥2} per target from the prover's (4n, Z) f-values.

    ``delta`` is the per-target confidence (pass δ_R/Z). Guarantee: if the n tuples are i.i.d.
    (public PRG, independent seeds), every true f-value lies in [−b, b], at most ``lie_allowance``
    (m*) reported members differ arbitrarily (within [−b, b]) from the truth and every other one
    by ≤ τ, then with probability ≥ 1 − δ, lower ≤ B_{≥2} ≤ upper, where with S = mean r_j,
    D = b²(8/ρ − 2), M = max(hi − S, S − lo) + τ_r,

        sd_robust = √(V̂ + m*·M²/(n − 1)) + τ_r·√(n/(n − 1))   (≥ the honest sample sd)
        η_R = √(2·sd_robust²·ln(3/δ)/n) + 7·D·ln(3/δ)/(3(n − 1))
        upper = S + η_R + m*D/n + τ_r                              (≥ E r ≥ B_{≥2})
        lower = max(0, S − η_R − m*D/n − τ_r)/(1 + c(ρ))           (≤ E r/(1 + c) ≤ B_{≥2}).

    Raises ``ValueError`` for n < 2, non-finite values, or any |f| > b (a verifier must reject
    out-of-range reports instead: they void every bound).
    """
    r = _check_rho(rho)
    b = _pos_float(output_bound, "output_bound")
    f = np.asarray(f_values, dtype=np.float64)
    if f.ndim == 2 and np.all(np.isfinite(f)) and np.any(np.abs(f) > b):
        raise ValueError(f"f_values outside [-b, b] (b = {b:g}): reject the prover's report")
    samples = residual_samples(f, r)
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 tuples for the empirical Bernstein bound, got {n}")
    return residual_interval_from_moments(
        n, samples.mean(axis=0), samples.std(axis=0, ddof=1), r, b, delta, lie_allowance, tolerance
    )


def residual_interval_from_moments(
    num_tuples: int,
    estimate: Any,
    sample_sd: Any,
    rho: float,
    output_bound: float,
    delta: float,
    lie_allowance: int = 0,
    tolerance: float = 0.0,
) -> ResidualInterval:
    """:func:`residual_interval` from the n residual samples' mean and sample sd (ddof = 1).

    Guarantee: the same interval as :func:`residual_interval` on f-values whose
    :func:`residual_samples` have exactly this count, mean and sd, under the same conditions
    (i.i.d. tuples, every true f in [−b, b], ≤ m* lies). The caller vouches for the moments:
    a streaming simulation that never holds all r_j at once passes them here, so the interval
    is still computed by this code. Raises ``ValueError`` for n < 2 or bad parameters.
    """
    r = _check_rho(rho)
    b = _pos_float(output_bound, "output_bound")
    tau = _pos_float(tolerance, "tolerance", allow_zero=True)
    m_star = int(lie_allowance)
    if m_star < 0:
        raise ValueError(f"lie_allowance must be >= 0, got {lie_allowance}")
    n = int(num_tuples)
    if n < 2:
        raise ValueError(f"need at least 2 tuples for the empirical Bernstein bound, got {n}")
    est = np.asarray(estimate, dtype=np.float64)
    sd = np.asarray(sample_sd, dtype=np.float64)
    if est.ndim != 1 or sd.shape != est.shape or not np.all(np.isfinite(est) & np.isfinite(sd)):
        raise ValueError(f"estimate and sample_sd must be finite (Z,) arrays, got {est.shape}")
    lo, hi = residual_sample_range(b, r)
    width = hi - lo
    tau_r = residual_tau_charge(b, tau, r)
    far = np.maximum(hi - est, est - lo) + tau_r
    sd_rob = np.sqrt(sd * sd + m_star * far * far / (n - 1)) + tau_r * math.sqrt(n / (n - 1))
    eta = eb_halfwidth_from_stats(sd_rob, n, width, delta)
    lie_shift = m_star * width / n
    c = bias_coefficient(r)
    low_er = est - eta - lie_shift - tau_r
    lower = np.maximum(0.0, low_er) / (1.0 + c)
    return ResidualInterval(
        rho=r,
        num_tuples=n,
        output_bound=b,
        delta=float(delta),
        lie_allowance=m_star,
        tolerance=tau,
        sample_range=(lo, hi),
        bias_coefficient=c,
        lie_shift=lie_shift,
        tau_shift=tau_r,
        estimate=est,
        sample_sd=sd,
        sd_robust=sd_rob,
        halfwidth=eta,
        bias_upper=np.maximum(0.0, low_er) - lower,
        lower=lower,
        upper=est + eta + lie_shift + tau_r,
        clt_halfwidth=clt_halfwidth_from_stats(sd, n, delta),
    )


# --------------------------------------------------------------------------------------------
# δ split


def practical_delta_split(
    delta: float, num_targets: int, spot_sampled: bool = True, epsilon_relative: bool = False
) -> dict[str, float]:
    """Split δ equally among the active failure events; per-target parts are divided by Z.

    Events: ``spot`` (more than m* lies all missed; only when spot checks are sampled, and
    target-independent), ``residual`` (some target's residual interval fails), ``mse`` (some
    target's confidence sequence ever fails), ``variance`` (some target's Var f lower bound fails;
    only with ε relative to Var f). Inactive parts are 0. Keys ``*_per_target`` give the
    confidence each per-target bound must use (part/Z).
    """
    d = float(delta)
    if not (math.isfinite(d) and 0.0 < d < 1.0):
        raise ValueError(f"delta must lie strictly between 0 and 1, got {delta!r}")
    z = int(num_targets)
    if z < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    active = ["residual", "mse"] + (["spot"] if spot_sampled else [])
    active += ["variance"] if epsilon_relative else []
    part = d / len(active)
    out = {k: (part if k in active else 0.0) for k in ("spot", "residual", "mse", "variance")}
    for k in ("residual", "mse", "variance"):
        out[f"{k}_per_target"] = out[k] / z
    return out


# --------------------------------------------------------------------------------------------
# decision


@dataclass(frozen=True)
class PracticalDecision:
    """Verdict of the practical rule with every number behind it (arrays have shape (Z,))."""

    verdict: str
    reason: str
    epsilon: np.ndarray
    mse_count: int
    mse_estimate: np.ndarray
    mse_lower: np.ndarray
    mse_upper: np.ndarray
    mse_tau_shift: np.ndarray
    datamodel_range: np.ndarray
    residual_lower: np.ndarray
    residual_upper: np.ndarray
    err_upper: np.ndarray
    err_lower: np.ndarray
    per_target: list[str]
    final: bool
    residual: ResidualInterval

    @property
    def accepted(self) -> bool:
        """True iff the verdict is ``"accept"``."""
        return self.verdict == "accept"

    @property
    def determined(self) -> bool:
        """False while the verifier should keep sampling M."""
        return self.verdict != "undetermined"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested residual interval)."""
        d: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                d[k] = _floats(v)
            elif isinstance(v, ResidualInterval):
                d[k] = v.to_dict()
            else:
                d[k] = v
        d["per_target"] = list(self.per_target)
        return d


def practical_decision(
    residual: ResidualInterval,
    mse_lower: Any,
    mse_upper: Any,
    epsilon: Any,
    datamodel_range: Any,
    mse_estimate: Any = None,
    mse_count: int = 0,
    final: bool = False,
) -> PracticalDecision:
    """Accept / reject / undetermined from the residual interval and the MSE bounds.

    Per target t (ε_t scalar or (Z,)): err_upper = mse_upper + τ_mse − residual.lower and
    err_lower = mse_lower − τ_mse − residual.upper, τ_mse = 2(b + G)τ + τ² (b, τ from
    ``residual``). Verdict: "accept" iff err_upper ≤ ε_t for every t; "reject" if err_lower > ε_t
    for some t (the excess error is certainly above ε), or if ``final`` (sample cap reached) and
    not accepted; else "undetermined" (keep sampling M).

    Soundness: if for some t err_t > ε_t, then P(accept) ≤ P(err_upper_t < err_t) ≤ δ_spot + δ_R +
    δ_M (+ δ_var when ε_t comes from a variance lower bound), at any stopping time of the MSE
    confidence sequence. Raises ``ValueError`` on non-finite input or mismatched shapes (never
    accepts on bad input).
    """
    z = residual.num_targets
    lo_m = _finite_vec(mse_lower, "mse_lower", z)
    hi_m = _finite_vec(mse_upper, "mse_upper", z)
    eps = _finite_vec(epsilon, "epsilon", z)
    g = _finite_vec(datamodel_range, "datamodel_range", z)
    est = (
        np.full(z, np.nan) if mse_estimate is None else _finite_vec(mse_estimate, "mse_estimate", z)
    )
    for name, arr in (("residual.lower", residual.lower), ("residual.upper", residual.upper)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
    if np.any(eps < 0) or np.any(g < 0):
        raise ValueError("epsilon and datamodel_range must be >= 0")
    if np.any(lo_m > hi_m):
        raise ValueError("mse_lower must not exceed mse_upper")
    tau_m = mse_tau_charge(residual.output_bound, g, residual.tolerance)
    err_up = hi_m + tau_m - residual.lower
    err_lo = lo_m - tau_m - residual.upper
    ok = err_up <= eps
    bad = err_lo > eps
    per_target = [
        "accept" if a else ("reject" if r else "undetermined") for a, r in zip(ok, bad, strict=True)
    ]
    if np.all(ok):
        verdict = "accept"
        t = int(np.argmax(err_up - eps))
        reason = (
            f"all {z} target(s): err_upper ≤ ε (tightest: target {t}, err_upper = "
            f"{err_up[t]:.4g} ≤ ε = {eps[t]:.4g}; mse_upper {hi_m[t]:.4g}, B≥2 lower "
            f"{residual.lower[t]:.4g}; |M| = {mse_count})"
        )
    elif np.any(bad):
        verdict = "reject"
        idx = np.flatnonzero(bad)
        t = int(idx[np.argmax(err_lo[idx] - eps[idx])])
        reason = (
            f"reject: {idx.size} target(s) have err certainly > ε (e.g. target {t}: err_lower = "
            f"{err_lo[t]:.4g} > ε = {eps[t]:.4g}; mse_lower {lo_m[t]:.4g}, B≥2 upper "
            f"{residual.upper[t]:.4g}; |M| = {mse_count})"
        )
    else:
        idx = np.flatnonzero(~ok)
        t = int(idx[np.argmax(err_up[idx] - eps[idx])])
        detail = (
            f"{idx.size} target(s) undetermined (e.g. target {t}: err in [{err_lo[t]:.4g}, "
            f"{err_up[t]:.4g}] straddles ε = {eps[t]:.4g}; |M| = {mse_count})"
        )
        if final:
            verdict = "reject"
            reason = f"reject: MSE sample cap reached and {detail}"
        else:
            verdict, reason = "undetermined", detail
    return PracticalDecision(
        verdict=verdict,
        reason=reason,
        epsilon=eps,
        mse_count=int(mse_count),
        mse_estimate=est,
        mse_lower=lo_m,
        mse_upper=hi_m,
        mse_tau_shift=np.asarray(tau_m, dtype=np.float64).reshape(z),
        datamodel_range=g,
        residual_lower=residual.lower.copy(),
        residual_upper=residual.upper.copy(),
        err_upper=err_up,
        err_lower=err_lo,
        per_target=per_target,
        final=bool(final),
        residual=residual,
    )


def relative_epsilon(
    f_values: Any, output_bound: float, epsilon_rel: float, delta_per_target: float
) -> np.ndarray:
    """ε_t = R_rel·LCB(Var f_t) from the verifier's own i.i.d. f-values (m, Z) (fixed m ≥ 4).

    Uses :func:`protocol.confidence.variance_lower_bound` (disjoint-pairs empirical Bernstein,
    range 2b). W.p. ≥ 1 − δ, ε_t ≤ R_rel·Var f_t, so judging against ε_t is at least as strict as
    judging against R_rel·Var f_t.
    """
    rel = _pos_float(epsilon_rel, "epsilon_rel")
    b = _pos_float(output_bound, "output_bound")
    f = np.asarray(f_values, dtype=np.float64)
    if f.ndim == 2 and np.all(np.isfinite(f)) and np.any(np.abs(f) > b):
        raise ValueError(f"f_values outside [-b, b] (b = {b:g})")
    return rel * variance_lower_bound(f, 2.0 * b, delta_per_target)


# --------------------------------------------------------------------------------------------
# pilot and sizing


def pilot_masks(
    num_tuples: int,
    num_train_points: int,
    p: float,
    rhos: tuple[float, ...],
    rng: np.random.Generator,
) -> dict[Any, np.ndarray]:
    """Coupled pilot subsets for several ρ at once (the verifier's own, not secret, sizing only).

    Returns {"x": (n0, N), "y0": (n0, N), level: (n0, N) for every level in {ρ, 2ρ : ρ ∈ rhos}}
    built exactly as :class:`protocol.challenges.ChallengeSpec` builds one tuple (y_ℓ keeps x_i
    where v_i < ℓ, else y0_i), with one shared coin v per tuple, so every ρ sees correctly coupled
    tuples. Each mask needs its own independent training seed.
    """
    n0, big_n = int(num_tuples), int(num_train_points)
    x = rng.random((n0, big_n)) < p
    y0 = rng.random((n0, big_n)) < p
    v = rng.random((n0, big_n))
    out: dict[Any, np.ndarray] = {"x": x, "y0": y0}
    for level in sorted({float(r) for r in rhos} | {2.0 * float(r) for r in rhos}):
        out[level] = np.where(v < level, x, y0)
    return out


@dataclass(frozen=True)
class PilotStats:
    """Pilot statistics used only to *predict* sizes (never for a guarantee).

    ``residual_sd[i]`` (Z,) is the sd of r_j at ρ = ``rhos[i]``; ``residual_mean`` (Z,) ≈ E r ≥
    B_{≥2}; ``f_variance`` (Z,) ≈ Var f; ``loss_sd`` (Z,) the predicted sd of an honest MSE loss
    (default √2·residual_mean, exact for Gaussian residuals).
    """

    rhos: tuple[float, ...]
    residual_sd: np.ndarray
    residual_mean: np.ndarray
    f_variance: np.ndarray
    loss_sd: np.ndarray
    num_tuples: int
    source: str

    @classmethod
    def from_f_values(
        cls, f: dict[Any, np.ndarray], rhos: tuple[float, ...], loss_sd: Any = None
    ) -> PilotStats:
        """From f-values on :func:`pilot_masks` subsets (same keys, each (n0, Z))."""
        fx, fy0 = np.asarray(f["x"], float), np.asarray(f["y0"], float)
        sds, means = [], []
        for r in rhos:
            a, b, c = residual_coefficients(r)
            samples = 0.5 * (fx**2 + fy0**2) + fx * (
                a * fy0 - b * np.asarray(f[float(r)]) + c * np.asarray(f[2.0 * float(r)])
            )
            sds.append(samples.std(axis=0, ddof=1))
            means.append(samples.mean(axis=0))
        # inverse-variance pooled estimate of E r across the ρ grid (each is B_{≥2} + bias ≥ 0)
        weights = 1.0 / np.maximum(np.stack(sds), 1e-300) ** 2
        resid = np.maximum(0.0, np.sum(weights * np.stack(means), axis=0) / weights.sum(axis=0))
        both = np.vstack([fx, fy0])
        return cls(
            rhos=tuple(float(r) for r in rhos),
            residual_sd=np.stack(sds),
            residual_mean=resid,
            f_variance=both.var(axis=0, ddof=1),
            loss_sd=math.sqrt(2.0) * resid
            if loss_sd is None
            else np.broadcast_to(np.asarray(loss_sd, float), resid.shape).copy(),
            num_tuples=int(fx.shape[0]),
            source="pilot",
        )

    @classmethod
    def from_hint(
        cls,
        variance_hint: Any,
        residual_hint: Any = None,
        rhos: tuple[float, ...] = RHO_GRID,
    ) -> PilotStats:
        """Crude prediction from Var f (and optionally B_{≥2}) alone.

        Treats the four products of r_j as uncorrelated with variance V² each:
        sd_r(ρ) ≈ V·√(1/2 + A² + B² + C²) — conservative, since the coupling makes the terms
        cancel. residual defaults to V/2.
        """
        v = np.atleast_1d(np.asarray(variance_hint, dtype=np.float64))
        res = v / 2.0 if residual_hint is None else np.broadcast_to(residual_hint, v.shape)
        sds = []
        for r in rhos:
            a, b, c = residual_coefficients(r)
            sds.append(v * math.sqrt(0.5 + a * a + b * b + c * c))
        res = np.asarray(res, dtype=np.float64)
        return cls(
            rhos=tuple(float(r) for r in rhos),
            residual_sd=np.stack(sds),
            residual_mean=res,
            f_variance=v,
            loss_sd=math.sqrt(2.0) * res,
            num_tuples=0,
            source="hint",
        )


@dataclass(frozen=True)
class PracticalPlan:
    """Sizes of a practical-mode run (mirrors :class:`protocol.accounting.Plan`'s reporting)."""

    mode: str
    epsilon: list[float]
    epsilon_rel: float | None
    delta: float
    output_bound: float
    tolerance: float
    num_targets: int
    rho: float
    pairs_per_level: int
    singles: int
    num_members: int
    spot_checks: int
    mse_samples: int
    variance_samples: int
    lie_allowance: int
    all_checked: bool
    delta_split: dict[str, float]
    budget: dict[str, float]
    predicted_complete: bool
    assumptions: list[str] = field(default_factory=list)
    verifier_retrainings: int = 0
    prover_retrainings: int = 0
    #: The user's hard cap on |M| (``max_mse_samples``); ``mse_samples`` is the planned count at
    #: G = b, which the verifier may raise up to this cap once the claimed datamodel's range G is
    #: committed (:func:`mse_samples_for_range`). 0: no raise.
    max_mse_samples: int = 0
    #: The honest loss sd the sizes were planned with (per target, max), for re-prediction.
    loss_sd_planned: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["delta_split"] = {k: float(v) for k, v in self.delta_split.items()}
        d["budget"] = {k: float(v) for k, v in self.budget.items()}
        return d


def _eta_planned(n: int, sd: float, width: float, lie_frac: float, tau_r: float, d: float) -> float:
    sd_rob = math.sqrt(sd * sd + lie_frac * width * width * n / (n - 1)) + tau_r * math.sqrt(
        n / (n - 1)
    )
    return float(eb_halfwidth_from_stats(sd_rob, n, width, d))


def _smallest(pred: Any, lo: int, cap: int) -> int | None:
    """Smallest integer n in [lo, cap] with pred(n) (pred monotone), else None."""
    if not pred(cap):
        return None
    hi = lo
    while not pred(hi):
        hi = min(cap, hi * 2)
    left = max(lo, hi // 2)
    while left < hi:
        mid = (left + hi) // 2
        if pred(mid):
            hi = mid
        else:
            left = mid + 1
    return hi


def plan_practical(
    delta: float,
    output_bound: float,
    tolerance: float,
    num_targets: int,
    pilot: PilotStats | None = None,
    *,
    epsilon: Any = None,
    epsilon_rel: float | None = None,
    all_checked: bool = False,
    max_mse_samples: int = 1_000_000,
    rho: float | None = None,
    variance_samples: int = DEFAULT_VARIANCE_SAMPLES,
    max_pairs: int = 10**9,
) -> PracticalPlan:
    """Predict practical-mode sizes (exactly one of ``epsilon`` / ``epsilon_rel``).

    Budget per target (fractions of ε_t, :data:`BUDGET`): 2η_R + c(ρ)·B ≤ 0.35ε (residual;
    B = pilot residual), 2·w_MSE ≤ 0.35ε (w = predicted confidence-sequence half-width at the cap),
    m*·D/n ≤ 0.2ε (lies), τ_r + τ_mse ≤ 0.1ε (tolerance, else :class:`ConfigurationError`). An
    honest prover (err ≈ 0) then has predicted err_upper ≤ ε. Without a pilot, worst-case
    variances are used (sd_r ≤ D/2, loss sd ≤ L/2, Var f ≤ b²). ρ: the given one, or the grid
    value (pilot.rhos or :data:`RHO_GRID`) minimising n. Spot checks: k = |E| if ``all_checked``
    (m* = 0), else k = ⌈ln δ_spot / ln(1 − q)⌉, q = 0.2·ε_min/(4D), and m* = the exact
    hypergeometric ``lie_allowance(4n, k, δ_spot)`` (≤ q|E|). Sizes are predictions (approximate);
    the guarantee comes from the decision's bounds, whatever the sizes. Raises
    ``ConfigurationError`` when no ρ can meet the budget or τ is too large.
    """
    if (epsilon is None) == (epsilon_rel is None):
        raise ValueError("give exactly one of epsilon (absolute) or epsilon_rel (× Var f)")
    b = _pos_float(output_bound, "output_bound")
    tau = _pos_float(tolerance, "tolerance", allow_zero=True)
    z = int(num_targets)
    split = practical_delta_split(delta, z, not all_checked, epsilon_rel is not None)
    rhos = tuple(pilot.rhos) if pilot is not None else RHO_GRID
    if rho is not None:
        rho = _check_rho(rho)
        rhos = (rho,)
    if pilot is not None and pilot.residual_mean.shape[0] not in (1, z):
        raise ValueError("pilot targets do not match num_targets")

    # ε per target (planned)
    if epsilon_rel is not None:
        rel = _pos_float(epsilon_rel, "epsilon_rel")
        var = (
            np.broadcast_to(pilot.f_variance, (z,)).astype(float)
            if pilot is not None
            else np.full(z, b * b)
        )
        half = int(variance_samples) // 2
        if half < 2:
            raise ValueError("variance_samples must be >= 4")
        lcb = var - eb_halfwidth_from_stats(
            math.sqrt(2.0) * var, half, 2.0 * b * b, split["variance_per_target"], False
        )
        if np.any(lcb <= 0):
            raise ConfigurationError(
                f"variance_samples = {variance_samples} is too small to bound Var f away from 0 "
                f"at b = {b:g}; increase it"
            )
        eps = rel * lcb
    else:
        eps = _finite_vec(epsilon, "epsilon", z)
        if np.any(eps <= 0):
            raise ValueError("epsilon must be > 0")
    eps_min = float(np.min(eps))
    resid = (
        np.broadcast_to(pilot.residual_mean, (z,)).astype(float)
        if pilot is not None
        else np.full(z, b * b)
    )

    best: tuple[int, float, int, float] | None = None
    for i, r in enumerate(rhos):
        width = residual_sample_width(b, r)
        tau_r = residual_tau_charge(b, tau, r)
        tau_m = float(mse_tau_charge(b, b, tau))
        if tau_r + tau_m > BUDGET["tolerance"] * eps_min:
            continue
        c = bias_coefficient(r)
        if pilot is not None:
            idx = pilot.rhos.index(r) if r in pilot.rhos else None
            if idx is None:
                raise ValueError(f"pilot has no statistics for rho = {r}")
            sd = np.broadcast_to(pilot.residual_sd[idx], (z,)).astype(float)
        else:
            sd = np.full(z, width / 2.0)
        q = BUDGET["lies"] * eps_min / (4.0 * width)
        lie_frac = 0.0 if all_checked else 4.0 * q
        room = BUDGET["residual"] * eps - c * resid
        if np.any(room <= 0):
            continue
        d_r = split["residual_per_target"]

        def ok(
            n: int, sd=sd, width=width, lie_frac=lie_frac, tau_r=tau_r, room=room, d_r=d_r
        ) -> bool:
            return all(
                2.0 * _eta_planned(n, float(sd[t]), width, lie_frac, tau_r, d_r) <= room[t]
                for t in range(z)
            )

        n = _smallest(ok, 2, int(max_pairs))
        if n is not None and (best is None or n < best[0]):
            best = (n, r, i, q)
    if best is None:
        raise ConfigurationError(
            f"no rho in {rhos} meets the practical budget for ε = {eps_min:.4g} "
            f"(bias c(ρ)·B_≥2 or the τ-charge exceeds its share, or n > {max_pairs})"
        )
    n, r, _, q = best
    members = MEMBERS_PER_TUPLE * n
    width = residual_sample_width(b, r)
    if all_checked:
        k, m_star = members, 0
    else:
        k = (
            members
            if q >= 1.0
            else min(members, math.ceil(math.log(split["spot"]) / math.log1p(-q)))
        )
        m_star = lie_allowance(members, k, split["spot"])

    # MSE cap: smallest t with 2·w(t) ≤ 0.35 ε (worst target), w predicted at G = b.
    loss_b = float(mse_loss_bound(b, b, tau))
    loss_sd = (
        float(np.max(np.broadcast_to(pilot.loss_sd, (z,)))) if pilot is not None else loss_b / 2
    )
    d_m = split["mse_per_target"]
    cap = int(max_mse_samples)
    t_needed = _mse_samples_needed(loss_sd, loss_b, eps_min, d_m, cap)
    predicted_complete = t_needed is not None
    mse_samples = cap if t_needed is None else t_needed
    eta = max(
        _eta_planned(
            n,
            float(np.broadcast_to(pilot.residual_sd[pilot.rhos.index(r)], (z,))[t])
            if pilot is not None
            else width / 2,
            width,
            0.0 if all_checked else 4.0 * q,
            residual_tau_charge(b, tau, r),
            split["residual_per_target"],
        )
        for t in range(z)
    )
    budget = {
        "epsilon_min": eps_min,
        "residual_halfwidth_planned": eta,
        "bias_planned": bias_coefficient(r) * float(np.max(resid)),
        "lie_shift": m_star * width / n,
        "residual_tau_charge": residual_tau_charge(b, tau, r),
        "mse_tau_charge_planned": float(mse_tau_charge(b, b, tau)),
        "mse_halfwidth_planned": float(
            predicted_cs_halfwidth(mse_samples, loss_sd, loss_b, d_m)[0]
        ),
        "residual_sample_width": width,
    }
    assumptions = [
        "every f-value lies in [-b, b]; reports outside are rejected",
        "challenge tuples are i.i.d. from the public PRG with independent seeds; "
        "M is secret, drawn after the prover commits, i.i.d. B_p with fresh seeds",
        "non-asymptotic: residual empirical Bernstein (Maurer-Pontil, two-sided ln(3/δ)), "
        "PrPl-EB confidence sequence for the MSE (Waudby-Smith-Ramdas Thm 2), "
        "exact hypergeometric spot-check tail"
        + (", variance lower bound (disjoint-pairs empirical Bernstein)" if epsilon_rel else ""),
        "approximate: the sizes themselves are predicted from "
        + (f"a {pilot.source} (n0 = {pilot.num_tuples})" if pilot else "worst-case variances")
        + " and planned at G = |c| + ||a||_1 = b; they affect completeness and cost only",
    ]
    if all_checked:
        assumptions.append("all members are checked (certified checks): m* = 0, δ_spot = 0")
    if epsilon_rel is not None:
        assumptions.append(
            f"ε_t = {epsilon_rel:g}·LCB(Var f_t) from the first {variance_samples} verifier "
            "f-values (a fixed-size sample, computed once)"
        )
    if not predicted_complete:
        assumptions.append(
            f"max_mse_samples = {cap} is below the predicted need: an honest prover may end "
            "'undetermined' (rejected) at the cap"
        )
    ver = k + max(mse_samples, int(variance_samples) if epsilon_rel is not None else 0)
    return PracticalPlan(
        mode="practical",
        epsilon=_floats(eps),
        epsilon_rel=None if epsilon_rel is None else float(epsilon_rel),
        delta=float(delta),
        output_bound=b,
        tolerance=tau,
        num_targets=z,
        rho=r,
        pairs_per_level=n,
        singles=2 * n,
        num_members=members,
        spot_checks=k,
        mse_samples=mse_samples,
        variance_samples=int(variance_samples) if epsilon_rel is not None else 0,
        lie_allowance=m_star,
        all_checked=bool(all_checked),
        delta_split=split,
        budget=budget,
        predicted_complete=predicted_complete,
        assumptions=assumptions,
        verifier_retrainings=ver,
        prover_retrainings=members,
        max_mse_samples=cap,
        loss_sd_planned=loss_sd,
    )


def mse_samples_for_range(plan: PracticalPlan, datamodel_ranges: Any) -> int:
    """The MSE-sample cap to use once the claimed datamodel's ranges G_t are known.

    ``plan.mse_samples`` was predicted at G = b, before the prover committed; a claimed datamodel
    with G ≫ b has a wider loss range, so the same confidence-sequence width needs more samples.
    Returns the smallest t ≤ ``plan.max_mse_samples`` whose predicted half-width at the claimed
    G_t meets the planned target 0.35·ε/2 for every target (the cap itself when none does), and
    never less than ``plan.mse_samples``. Soundness does not depend on it: the confidence
    sequence is anytime-valid, and G is committed before M is revealed, so the cap is independent
    of M. It only restores completeness (an honest prover with a large G is not cut off).
    """
    cap = int(plan.max_mse_samples)
    if cap <= plan.mse_samples:
        return int(plan.mse_samples)
    g = np.broadcast_to(np.asarray(datamodel_ranges, dtype=np.float64), (plan.num_targets,))
    loss_b = float(mse_loss_bound(plan.output_bound, float(np.max(g)), plan.tolerance))
    need = _mse_samples_needed(
        float(plan.loss_sd_planned),
        loss_b,
        min(plan.epsilon),
        plan.delta_split["mse_per_target"],
        cap,
    )
    return max(int(plan.mse_samples), cap if need is None else need)


def _mse_samples_needed(
    loss_sd: float, loss_bound: float, eps_min: float, delta_m: float, cap: int
) -> int | None:
    """Smallest t ≤ cap whose predicted confidence-sequence half-width meets the MSE share of
    the budget, 2·w(t) ≤ 0.35·ε_min (None when even the cap does not)."""
    target_w = 0.5 * BUDGET["mse"] * eps_min

    def ok(t: int) -> bool:
        return float(predicted_cs_halfwidth(t, loss_sd, loss_bound, delta_m)[0]) <= target_w

    return _smallest(ok, 2, cap)
