"""Residual estimation: B̂_{≥2} ≈ mse(c*, a*) = Σ_{k≥2} B_k from the challenge f-values.

Input: f-values of all |E| = 4n members in member order (tuple j = rows 4j..4j+3 with roles
x, y0, yrho, y2rho; see :mod:`protocol.challenges`). Per target:

* ŷ_ℓ = (1/n) Σ_j f(x_j) f(y_ℓ,j) for ℓ ∈ {0, ρ, 2ρ}  (estimates h(ℓ) = Σ_k ℓ^k B_k);
* B̂ = mean of f² over the 2n independent singles x_j and y0_j  (estimates E[f²] = Σ_k B_k);
* fit P(t) = z0 + z1 t + z2 t² through (0, ŷ0), (ρ, ŷρ), (2ρ, ŷ2ρ) by non-negative least squares;
* B̂_{≥2} = B̂ − z0 − z1.

The 3×3 design matrix is invertible, so when the exact interpolant already has z ≥ 0 it is the
unique NNLS solution (zero residual); :func:`scipy.optimize.nnls` is called only for targets where
some interpolant coefficient is negative. The unconstrained interpolant has the closed form

    z0 = ŷ0,  z1 = (−3ŷ0 + 4ŷρ − ŷ2ρ)/(2ρ),  z2 = (ŷ0 − 2ŷρ + ŷ2ρ)/(2ρ²)

and its residual ``residual_interpolant = B̂ − z0 − z1`` is linear in (B̂, ŷ0, ŷρ, ŷ2ρ)::

    R = B̂ + (3/(2ρ) − 1) ŷ0 − (2/ρ) ŷρ + (1/(2ρ)) ŷ2ρ.

**Bias** (exact h values, interpolant): z0 = B0 and z1 = B1 − Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2), so
R − B_{≥2} = Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2) ∈ [0, 4ρ² B_{≥3}] for 2ρ ≤ 1: biased upward.

The accounting (:mod:`protocol.accounting`, ``docs/accounting.md``) proves its Hoeffding bounds for
the interpolant; the NNLS residual coincides with it whenever no constraint is active
(:attr:`ResidualEstimate.constraint_active` reports where it is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.validation import check_rho


def sensitivity(rho: float) -> float:
    """Return S(ρ) = 1 + 4/ρ, a bound on Σ_ℓ |∂R/∂ŷ_ℓ| for the interpolant residual R.

    Derivation: R = B̂ − ŷ0 − (−3ŷ0 + 4ŷρ − ŷ2ρ)/(2ρ). Bounding the coefficient of ŷ0 by the
    triangle inequality, |−1 + 3/(2ρ)| ≤ 1 + 3/(2ρ), and adding |−2/ρ| = 2/ρ and |1/(2ρ)| gives
    1 + 3/(2ρ) + 2/ρ + 1/(2ρ) = 1 + 4/ρ. (For ρ ≤ 3/2 the exact sum is 4/ρ − 1; the bound is
    conservative by 2.) An error of at most γ in every ŷ_ℓ thus moves R by at most S(ρ)·γ.
    """
    r = float(rho)
    if not (math.isfinite(r) and r > 0.0):
        raise ValueError(f"rho must be a positive finite number, got {rho!r}")
    return 1.0 + 4.0 / r


@dataclass(frozen=True)
class ResidualEstimate:
    """Per-target residual estimate; every array field has shape (Z,).

    ``second_moment`` is B̂ (mean of f² over the 2n singles x_j, y0_j); ``z0, z1, z2`` the NNLS
    fit; ``residual`` = B̂ − z0 − z1 from the NNLS fit (the protocol's B̂_{≥2});
    ``residual_interpolant`` = the same from the unconstrained exact interpolation.
    """

    rho: float
    num_tuples: int
    y0: np.ndarray
    yrho: np.ndarray
    y2rho: np.ndarray
    second_moment: np.ndarray
    z0: np.ndarray
    z1: np.ndarray
    z2: np.ndarray
    residual: np.ndarray
    residual_interpolant: np.ndarray

    @property
    def num_targets(self) -> int:
        """Z, the number of targets."""
        return int(np.asarray(self.residual).shape[0])

    @property
    def constraint_active(self) -> np.ndarray:
        """(Z,) bool: True where the NNLS fit differs from the exact interpolant (some z_i = 0)."""
        return ~np.isclose(self.residual, self.residual_interpolant, rtol=1e-12, atol=1e-15)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (floats and lists of floats)."""
        out: dict[str, Any] = {"rho": float(self.rho), "num_tuples": int(self.num_tuples)}
        for name in (
            "y0",
            "yrho",
            "y2rho",
            "second_moment",
            "z0",
            "z1",
            "z2",
            "residual",
            "residual_interpolant",
        ):
            out[name] = [float(v) for v in np.asarray(getattr(self, name), dtype=np.float64)]
        return out


def interpolant_coefficients(
    y0: np.ndarray, yrho: np.ndarray, y2rho: np.ndarray, rho: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (z0, z1, z2) of the quadratic through (0, y0), (ρ, yρ), (2ρ, y2ρ) (closed form)."""
    z0 = np.asarray(y0, dtype=np.float64).copy()
    z1 = (-3.0 * y0 + 4.0 * yrho - y2rho) / (2.0 * rho)
    z2 = (y0 - 2.0 * yrho + y2rho) / (2.0 * rho * rho)
    return z0, z1, z2


def _design(rho: float) -> np.ndarray:
    t = np.array([0.0, rho, 2.0 * rho])
    return np.stack([np.ones(3), t, t * t], axis=1)


def estimate_residual(f_values: np.ndarray, rho: float) -> ResidualEstimate:
    """Estimate B_{≥2} per target from the (4n, Z) f-values of E in member order.

    Raises ``ValueError`` unless ``f_values`` is a finite 2-D array with a positive multiple of 4
    rows and at least one column, and 0 < ρ ≤ 1/2. Never clips anything.
    """
    r = check_rho(rho)
    f = np.asarray(f_values, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 1:
        raise ValueError(f"f_values must have shape (4n, Z) with Z >= 1, got {f.shape}")
    if f.shape[0] < MEMBERS_PER_TUPLE or f.shape[0] % MEMBERS_PER_TUPLE != 0:
        raise ValueError(
            f"f_values must have 4n rows (n >= 1 tuples: x, y0, yrho, y2rho), got {f.shape[0]}"
        )
    if not np.all(np.isfinite(f)):
        bad = np.argwhere(~np.isfinite(f))[0]
        raise ValueError(
            f"f_values must be finite; first bad entry at member {bad[0]}, target {bad[1]}"
        )
    n = f.shape[0] // MEMBERS_PER_TUPLE
    fx, fy0, fyr, fy2r = (f[role::MEMBERS_PER_TUPLE] for role in range(MEMBERS_PER_TUPLE))
    return residual_from_moments(
        y0=np.mean(fx * fy0, axis=0),
        yrho=np.mean(fx * fyr, axis=0),
        y2rho=np.mean(fx * fy2r, axis=0),
        second_moment=0.5 * (np.mean(fx * fx, axis=0) + np.mean(fy0 * fy0, axis=0)),
        rho=r,
        num_tuples=n,
    )


def residual_from_moments(
    y0: np.ndarray,
    yrho: np.ndarray,
    y2rho: np.ndarray,
    second_moment: np.ndarray,
    rho: float,
    num_tuples: int,
) -> ResidualEstimate:
    """Fit the quadratic (NNLS) to given (ŷ0, ŷρ, ŷ2ρ) and B̂, each (Z,), and return the estimate.

    This is the deterministic second half of :func:`estimate_residual`; with exact h values
    it exhibits the fit's bias alone. Raises ``ValueError`` for mismatched shapes or non-finite
    input.
    """
    r = check_rho(rho)
    arrays = [
        np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (y0, yrho, y2rho, second_moment)
    ]
    if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays) or arrays[0].size == 0:
        raise ValueError(
            f"moments must be 1-D arrays of one shape (Z,), got {[a.shape for a in arrays]}"
        )
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("moments must be finite")
    y0, yrho, y2rho, second = arrays
    iz0, iz1, iz2 = interpolant_coefficients(y0, yrho, y2rho, r)
    residual_interp = second - iz0 - iz1
    z0, z1, z2 = iz0.copy(), iz1.copy(), iz2.copy()
    design = _design(r)
    for t in np.flatnonzero((iz0 < 0) | (iz1 < 0) | (iz2 < 0)):
        sol, _ = nnls(design, np.array([y0[t], yrho[t], y2rho[t]]))
        z0[t], z1[t], z2[t] = sol
    residual = second - z0 - z1
    return ResidualEstimate(
        rho=r,
        num_tuples=int(num_tuples),
        y0=y0,
        yrho=yrho,
        y2rho=y2rho,
        second_moment=second,
        z0=z0,
        z1=z1,
        z2=z2,
        residual=residual,
        residual_interpolant=residual_interp,
    )


# --------------------------------------------------------------------------------------------
# per-tuple residual samples (the practical rule's i.i.d. view of the same estimator)


def residual_coefficients(rho: float) -> tuple[float, float, float]:
    """(A, B, C) = (3/(2ρ) − 1, 2/ρ, 1/(2ρ)): r = (v_x² + v_0²)/2 + v_x(A·v_0 − B·v_ρ + C·v_2ρ)."""
    r = check_rho(rho)
    return 3.0 / (2.0 * r) - 1.0, 2.0 / r, 1.0 / (2.0 * r)


def residual_samples(values: Any, rho: float) -> np.ndarray:
    """Per-tuple residual samples r_j, shape (n, Z), from (4n, Z) member values v (f or f − βĝ).

    r_j = (v(x)² + v(y0)²)/2 + (3/(2ρ) − 1)·v(x)v(y0) − (2/ρ)·v(x)v(yρ) + (1/(2ρ))·v(x)v(y2ρ).
    Guarantee: mean_j r_j of f-values equals ``estimate_residual(f, rho).residual_interpolant``;
    for v = f − h with h affine in x the expectation is the same, E r = B_{≥2} + bias (the
    estimator only sees levels ≥ 2, where f − h and f agree). Raises ``ValueError`` on bad shapes
    or non-finite values.
    """
    a, b, c = residual_coefficients(rho)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 1 or v.shape[0] < MEMBERS_PER_TUPLE:
        raise ValueError(f"values must have shape (4n, Z) with n, Z >= 1, got {v.shape}")
    if v.shape[0] % MEMBERS_PER_TUPLE:
        raise ValueError(f"values must have a multiple of 4 rows, got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite (found NaN or inf)")
    vx, v0, vr, v2 = (v[role::MEMBERS_PER_TUPLE] for role in range(MEMBERS_PER_TUPLE))
    return 0.5 * (vx * vx + v0 * v0) + vx * (a * v0 - b * vr + c * v2)


def residual_sample_range(bound: Any, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact (min, max) of r_j over member values in [−U, U]⁴: (U²(2 − 4/ρ), 4U²/ρ), 0 < ρ ≤ 1/2.

    Max: r is linear in v(yρ), v(y2ρ) and convex in v(y0), so extremes sit at ±U; with A ≥ 0 the
    max is U²(1 + A + B + C) = 4U²/ρ. Min: for |v(x)| = t the inner minimum is
    t²/2 + U²/2 − (A + B + C)·t·U when A·t ≥ U, or t²(1 − A²)/2 − (B + C)·t·U otherwise; both
    decrease in t, so the min is at t = U: U²(1 − (A + B + C)) = U²(2 − 4/ρ).
    """
    u = np.asarray(bound, dtype=np.float64)
    r = check_rho(rho)
    return u * u * (2.0 - 4.0 / r), 4.0 * u * u / r


def residual_row_sum(rho: float) -> float:
    """Σ_ik |M_ik| = 1 + A + B + C = 4/ρ for r = vᵀMv: the most r moves per unit change of each
    member's value times the value bound (|Q(v + d) − Q(v)| ≤ (4/ρ)(2U·|d|∞ + |d|²∞))."""
    return 4.0 / check_rho(rho)


def bias_coefficient(rho: float) -> float:
    """c(ρ) = sup_{k≥3} ρ^{k−1}(2^{k−1} − 2) ≤ 4ρ², so 0 ≤ E r − B_{≥2} ≤ c(ρ)·B_{≥3}.

    E r − B_{≥2} = Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2) (docs/accounting.md §4). For ρ ≤ 1/3 the sup is
    the k = 3 term 2ρ²; at ρ = 1/2 it is the limit 1 = 4ρ².
    """
    r = check_rho(rho)
    if r >= 0.5:
        return 1.0  # terms 1 − 2^{2−k} increase to 1
    best, k = 0.0, 3
    while True:
        term = r ** (k - 1) * (2.0 ** (k - 1) - 2.0)
        best = max(best, term)
        if (2.0 * r) ** (k - 1) <= best:  # every later term is below (2ρ)^{k−1}
            return best
        k += 1
