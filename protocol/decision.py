"""The verifier's final decision: compare the datamodel's MSE with the residual estimate.

Rule (the paper's): accept iff, for every target, msê ≤ B̂_{≥2} + ε/2, where msê is the mean
squared error of g(x) = c + ⟨a, x⟩ (x = 2·mask − 1) on the verifier's private sample M and B̂_{≥2}
is :attr:`protocol.residual.ResidualEstimate.residual`. Nothing is ever clipped.

The certified ε of each target is recomputed with the datamodel's actual range
G = |c| + ‖a‖₁ (the MSE loss lies in [0, (b + G)²]). In ``theory`` mode a target whose certified ε
exceeds ε is rejected: the sample M was sized for G = b and cannot certify ε for this datamodel.
In ``manual`` mode ``guarantee_met`` is reported honestly but does not change the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.accounting import GUARANTEE_RTOL, Plan
from protocol.residual import ResidualEstimate
from protocol.rules.base import RuleName


def _finite_array(value: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return arr


def _check_datamodel(intercepts: Any, coefficients: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _finite_array(intercepts, "intercepts", 1)
    a = _finite_array(coefficients, "coefficients", 2)
    if a.shape[0] != c.shape[0]:
        raise ValueError(
            f"coefficients must have shape (Z, N) with Z = {c.shape[0]} intercepts, got {a.shape}"
        )
    return c, a


def datamodel_predictions(
    masks: np.ndarray, intercepts: np.ndarray, coefficients: np.ndarray
) -> np.ndarray:
    """Return the (K, Z) float64 predictions g(x) = c + ⟨a, x⟩ with x = 2·mask − 1 (±1).

    Columns whose coefficient is 0 for every target add exactly 0 and are skipped, so a sparse
    attribution costs its support, not N; only the summation order of the rest can differ
    (rounding, ~1e-16 relative)."""
    c, a = _check_datamodel(intercepts, coefficients)
    m = np.asarray(masks)
    if m.ndim != 2 or m.shape[1] != a.shape[1]:
        raise ValueError(f"masks must have shape (K, {a.shape[1]}), got {m.shape}")
    if m.dtype != np.bool_:
        raise ValueError(f"masks must be boolean, got dtype {m.dtype}")
    live = np.flatnonzero((a != 0.0).any(axis=0))
    if 2 * live.size <= a.shape[1]:
        m, a = m[:, live], a[:, live]
    x = np.where(m, 1.0, -1.0)  # the same ±1 values as 2·mask − 1, in one pass
    return c[None, :] + x @ a.T


def datamodel_range(intercepts: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Return G = |c| + ‖a‖₁ per target: the exact max of |g(x)| over x ∈ {±1}^N."""
    c, a = _check_datamodel(intercepts, coefficients)
    return np.abs(c) + np.abs(a).sum(axis=1)


def mse_estimate(f_values: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Return the (Z,) mean of (f − g)² over the K rows. Nothing is clipped."""
    f = _finite_array(f_values, "f_values", 2)
    g = _finite_array(predictions, "predictions", 2)
    if f.shape != g.shape or f.shape[0] < 1:
        raise ValueError(
            f"f_values {f.shape} and predictions {g.shape} must share a (K>=1, Z) shape"
        )
    return np.mean((f - g) ** 2, axis=0)


@dataclass(frozen=True)
class Decision:
    """The verdict with every number behind it (all arrays have shape (Z,))."""

    verdict: str
    reason: str
    epsilon: float
    delta: float
    threshold: np.ndarray
    mse_hat: np.ndarray
    residual_hat: np.ndarray
    datamodel_range: np.ndarray
    mse_halfwidth: np.ndarray
    epsilon_certified: np.ndarray
    guarantee_met: bool
    per_target_accept: np.ndarray
    plan: Plan
    residual_estimate: ResidualEstimate

    @property
    def accepted(self) -> bool:
        """True iff the verdict is ``"accept"``."""
        return self.verdict == "accept"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (lists of floats/bools, nested plan and residual dicts)."""

        def floats(arr: np.ndarray) -> list[float]:
            return [float(v) for v in np.asarray(arr, dtype=np.float64)]

        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "threshold": floats(self.threshold),
            "mse_hat": floats(self.mse_hat),
            "residual_hat": floats(self.residual_hat),
            "datamodel_range": floats(self.datamodel_range),
            "mse_halfwidth": floats(self.mse_halfwidth),
            "epsilon_certified": floats(self.epsilon_certified),
            "guarantee_met": bool(self.guarantee_met),
            "per_target_accept": [bool(v) for v in self.per_target_accept],
            "plan": self.plan.to_dict(),
            "residual_estimate": self.residual_estimate.to_dict(),
        }


def _fmt_targets(idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f" and {idx.size - limit} more" if idx.size > limit else "")


def decide(
    plan: Plan, residual: ResidualEstimate, mse_hat: np.ndarray, datamodel_range: np.ndarray
) -> Decision:
    """Accept iff every target has msê ≤ B̂_{≥2} + ε/2 (and, in theory mode, ε_cert(G) ≤ ε).

    Raises ``ValueError`` for non-finite inputs, negative ranges or mismatched Z.
    """
    z = int(plan.num_targets)
    res = _finite_array(residual.residual, "residual", 1)
    mse = _finite_array(mse_hat, "mse_hat", 1)
    g = _finite_array(datamodel_range, "datamodel_range", 1)
    for name, arr in (("residual", res), ("mse_hat", mse), ("datamodel_range", g)):
        if arr.shape != (z,):
            raise ValueError(
                f"{name} must have shape ({z},) to match the plan's Z, got {arr.shape}"
            )
    if np.any(g < 0):
        raise ValueError("datamodel_range must be non-negative (it is |c| + ||a||_1)")
    if np.any(mse < 0):
        raise ValueError("mse_hat must be non-negative (it is a mean of squares)")
    for name in ("y0", "yrho", "y2rho", "second_moment", "residual_interpolant"):
        _finite_array(getattr(residual, name), f"residual.{name}", 1)

    eps = float(plan.epsilon)
    threshold = res + eps / 2.0
    rule_ok = mse <= threshold
    halfwidth = np.asarray(plan.mse_halfwidth(g), dtype=np.float64).reshape(z)
    eps_cert = np.asarray(plan.certified_epsilon(g), dtype=np.float64).reshape(z)
    cert_ok = eps_cert <= eps * (1.0 + GUARANTEE_RTOL)
    guarantee_met = bool(np.all(cert_ok))
    per_target = rule_ok & cert_ok if plan.rule is RuleName.THEORY else rule_ok.copy()

    reasons: list[str] = []
    failed_rule = np.flatnonzero(~rule_ok)
    for t in failed_rule[:5]:
        reasons.append(
            f"target {t}: msê = {mse[t]:.6g} > threshold {threshold[t]:.6g} "
            f"(B̂≥2 = {res[t]:.6g} + ε/2 = {eps / 2:.6g}; excess {mse[t] - threshold[t]:.3g})"
        )
    if failed_rule.size > 5:
        reasons.append(f"... {failed_rule.size - 5} more targets fail the MSE rule")
    failed_cert = np.flatnonzero(~cert_ok)
    if plan.rule is RuleName.THEORY and failed_cert.size:
        t = int(failed_cert[np.argmax(eps_cert[failed_cert])])
        reasons.append(
            f"target(s) {_fmt_targets(failed_cert)}: the claimed datamodel's range "
            f"|c| + ||a||_1 (target {t}: G = {g[t]:.6g} > b = {plan.output_bound:g} assumed when "
            f"planning) makes the MSE sample (|M| = {plan.mse_samples}) too small to certify "
            f"ε = {eps:g}: certified ε = {eps_cert[t]:.6g} (MSE half-width {halfwidth[t]:.6g})"
        )
    verdict = "accept" if bool(np.all(per_target)) else "reject"
    if verdict == "accept":
        reason = (
            f"all {z} target(s) satisfy msê ≤ B̂≥2 + ε/2 (largest margin used: "
            f"{float(np.max(mse - threshold)):.3g}); certified ε ≤ {float(np.max(eps_cert)):.6g}"
        )
        if not guarantee_met:
            reason += (
                f" — guarantee NOT met: certified ε exceeds the requested ε = {eps:g} "
                f"for target(s) {_fmt_targets(failed_cert)} (manual sizes)"
            )
    else:
        reason = "reject: " + "; ".join(reasons)
        if plan.rule is not RuleName.THEORY and not guarantee_met:
            reason += f" (note: certified ε {float(np.max(eps_cert)):.6g} exceeds ε = {eps:g})"
    return Decision(
        verdict=verdict,
        reason=reason,
        epsilon=eps,
        delta=float(plan.delta),
        threshold=threshold,
        mse_hat=mse,
        residual_hat=res,
        datamodel_range=g,
        mse_halfwidth=halfwidth,
        epsilon_certified=eps_cert,
        guarantee_met=guarantee_met,
        per_target_accept=per_target,
        plan=plan,
        residual_estimate=residual,
    )
