"""Attributions without a regression: the influence function at the mean model (``if-mean``).

For logistic regression (``L_S(w) = (1/N) Σ_i m_i ℓ_i(w) + (λ/2)‖w‖²``) let w̄ minimise the
*expected* objective over B_p subsets, ``(p/N) Σ_i ℓ_i(w) + (λ/2)‖w‖²``, and H̄ its Hessian. Since
∇ of that objective vanishes at w̄, ``∇L_S(w̄) = (1/N) Σ_i (m_i − p) ∇ℓ_i(w̄)``, and one Newton
step from w̄ with H̄ gives the group influence

    w_S − w̄ ≈ −(1/N) H̄⁻¹ Σ_i (m_i − p) ∇ℓ_i(w̄),

linear in the mask. Composing with the first-order change of f_t at w̄ (v_t = ∇_w f_t(w̄)) gives
β_ti = −(1/N) v_tᵀ H̄⁻¹ ∇ℓ_i(w̄) and ``f_t(S) ≈ f_t(w̄) + Σ_i β_ti (m_i − p)``; in the protocol's
x = 2m − 1 form, a_ti = β_ti/2 and c_t = f_t(w̄) + (1/2 − p) Σ_i β_ti. This is the classic
influence function, but centred at the p-weighted mean model rather than the full-data model:
on raw digits margins its held-out error is within 0.004·Var f of the best linear datamodel,
where the full-data IF is off by more than Var f (issue #18).

**Calibration.** f_t is a squashed margin, and the slope of the best linear fit of φ(margin) is
E[φ'] over the subsets, not φ' at the mean model (Stein's identity, for a near-Gaussian margin);
likewise E f ≠ f(w̄). So each target's (c_t, γ_t) are fitted by least squares of f_t on
(1, ⟨a_t, x⟩) over K seeded retrainings, and a_t is scaled by γ_t: a two-parameter regression per
target, whose error shrinks as 1/K whatever N (K = 512 by default). Measured on 2,000 held-out
retrainings (MSE ÷ Var f, which includes the irreducible B≥2): digits-logreg 0.06–0.19 before
calibration, 0.03–0.06 after (γ ≈ 0.74–0.86); fashion-mnist-probe at N = 10,000, 0.03–0.05 after.

Cost: one Newton solve of the (d+1)-dimensional mean problem and O(N d²) arithmetic, whatever N;
no retraining beyond the calibration sample. The verifier judges the result like any other claim.

**The other methods (issue #18), raw, as people compute them** (``prover serve --method NAME``):

* ``if-full``: the classic influence function at the full-data model ŵ (q = 1 below);
* ``if-mean-raw``: the influence function at the mean model without calibration;
* ``rif``: the rescaled influence function (each point's term divided by 1 − its leverage) at ŵ;
  ``ns``, the leave-one-out Newton step of each point summed, is the same thing for logistic
  regression (Sherman–Morrison; tests/test_influence.py checks it point by point);
* ``rif-mean``: the rescaled influence function at the mean model;
* ``empirical-influence``: differences of conditional means on the prover's K samples;
* ``ridge-prior``: ridge regression on the prover's K samples shrunk toward the calibrated
  ``rif-mean`` claim instead of toward 0: a = γ ⊙ a_rif-mean + δ, with γ the per-target slope fitted
  as for ``if-mean`` and (c, δ) the ridge fit of the residual f − ⟨γ a_rif-mean, x⟩, its λ chosen on
  a held-out fifth from a grid whose largest λ leaves the prior almost unchanged. So
  ‖a − γ a_prior‖² is what is penalised (the standard ridge-toward-a-prior estimator); with few
  samples it keeps the prior, with many it approaches OLS. Cost: K retrainings (512 by default)
  plus one K × K (or N × N) eigendecomposition.

Each costs one (d+1)-dimensional Newton solve and O(N d²) FLOPs (empirical influence O(K N Z)),
plus the retrainings of its samples where it uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol import trainer
from protocol.tasks.base import Task
from prover.datamodel import Datamodel, fit_datamodel, fit_ridge

#: Retrainings spent on the intercept by default.
CALIBRATION_SAMPLES = 512
#: The methods of this module by name. ``if-mean`` is calibrated on the prover's samples (below);
#: the others are the raw formulas, as people compute them (issue #18), and ignore the samples
#: except ``empirical-influence``, which is nothing but the samples.
INFLUENCE_METHODS = ("if-mean", "if-full", "if-mean-raw", "rif", "rif-mean", "ns",
                     "empirical-influence", "ridge-prior")  # fmt: skip
#: method → (centre q: 1 = the full-data model, "p" = the p-weighted mean model; rescale by
#: 1/(1 − leverage)).
_CENTRED: dict[str, tuple[str, bool]] = {
    "if-full": ("full", False),
    "if-mean-raw": ("mean", False),
    "if-mean": ("mean", False),
    "rif": ("full", True),
    "ns": ("full", True),
    "rif-mean": ("mean", True),
    "ridge-prior": ("mean", True),
}
#: Methods whose prior's slope is calibrated per target on the samples.
_CALIBRATED = ("if-mean", "ridge-prior")


def supports_influence(task: Task) -> bool:
    """True for logistic-regression tasks (the design, λ and target features are exposed)."""
    return all(hasattr(task, k) for k in ("design", "l2", "target_features", "scale", "center"))


def centred_influence(
    task: Task, centre: str = "mean", rescale: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(c (Z,), a (Z, N), diagnostics) of the influence function centred at w_q: q = p (the
    p-weighted mean model, ``centre="mean"``) or q = 1 (the full-data model, ``"full"``).

    With ∇L_S(w_q) = (1/N) Σ_i (m_i − q) ∇ℓ_i(w_q) and H_q its Hessian, one Newton step gives
    β_ti = −(1/N) v_tᵀ H_q⁻¹ ∇ℓ_i(w_q) and f_t(S) ≈ f_t(w_q) + Σ_i β_ti (m_i − q); in x = 2m − 1,
    a = β/2 and c = f(w_q) + (1/2 − q) Σ_i β_i. ``rescale`` divides each β_i by 1 − h_i, the
    leverage h_i = (1/N) σ_i(1 − σ_i) x̃_iᵀ H_q⁻¹ x̃_i (RIF). For q = 1 that is exactly the
    leave-one-out Newton step of each point summed (``ns``): ∇ℓ_i ∝ x̃_i, so by Sherman–Morrison
    v_tᵀ H_{−i}⁻¹ ∇ℓ_i = v_tᵀ H⁻¹ ∇ℓ_i / (1 − h_i) with H_{−i} = H − (1/N) σ_i(1 − σ_i) x̃_i x̃_iᵀ.
    ``ValueError`` for tasks that are not logistic regression.
    """
    if not supports_influence(task):
        raise ValueError(
            f"influence methods need a logistic-regression task; {task.name!r} is not one"
        )
    design = task.design  # type: ignore[attr-defined]
    X, y, n = design.X, design.y, design.num_points
    lam = float(task.l2)  # type: ignore[attr-defined]
    q = float(task.p) if centre == "mean" else 1.0
    w_q = trainer.weighted_optimum(design, q, lam, tol=1e-12)
    s = 1.0 / (1.0 + np.exp(y * (X @ w_q)))  # σ(−y_i w_qᵀx̃_i) = −dℓ_i/dz_i
    hessian = (X.T * (q * s * (1.0 - s) / n)) @ X + lam * np.eye(X.shape[1])
    # ∇ℓ_i(w_q) = −s_i y_i x̃_i, so β_ti = (1/N) s_i y_i v_tᵀ H_q⁻¹ x̃_i
    xt = task.target_features  # type: ignore[attr-defined]
    yt = task.split.y_targets  # type: ignore[attr-defined]
    sigma = np.asarray(task.scale, dtype=np.float64)  # type: ignore[attr-defined]
    b = float(task.output_bound)
    u = ((xt @ w_q) * yt - task.center) / sigma  # type: ignore[attr-defined]
    f_q = trainer.squash(u, b)
    slope = 1.0 - np.tanh(u / b) ** 2  # d f / d u
    v = (slope * yt / sigma)[:, None] * xt  # ∇_w f_t(w_q), (Z, d+1)
    hv = np.linalg.solve(hessian, v.T)  # H_q⁻¹ v_t as columns, (d+1, Z)
    weight = s * y / n
    diag: dict[str, Any] = {"centre": centre, "q": q, "w_norm": float(np.linalg.norm(w_q))}
    if rescale:
        h = s * (1.0 - s) / n * np.einsum("ij,ij->i", X, np.linalg.solve(hessian, X.T).T)
        weight = weight / (1.0 - h)
        diag["max_leverage"] = float(h.max())
    beta = ((X @ hv) * weight[:, None]).T  # (Z, N)
    diag["f_at_centre"] = f_q.tolist()
    return f_q + (0.5 - q) * beta.sum(axis=1), beta / 2.0, diag


def if_mean(task: Task) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The influence function at the p-weighted mean model, before calibration."""
    return centred_influence(task, "mean", rescale=False)


def empirical_influence(
    masks: np.ndarray, f: np.ndarray, p: float
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Differences of conditional means on K samples: for x_i ∈ {±1} independent, a linear
    g = c + ⟨a, x⟩ has E[g | x_i = 1] − E[g | x_i = −1] = 2a_i, so
    a_i = (mean(f | m_i = 1) − mean(f | m_i = 0))/2 and c = mean(f) − (2p − 1) Σ_i a_i.
    A point never (or always) included gets a_i = 0. ``ValueError`` with fewer than 2 samples."""
    m = np.asarray(masks, dtype=bool)
    f = np.asarray(f, dtype=np.float64).reshape(len(m), -1)
    if len(m) < 2:
        raise ValueError("empirical-influence needs at least 2 samples")
    ones = m.sum(axis=0).astype(np.float64)
    zeros = len(m) - ones
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = (m.T.astype(np.float64) @ f) / ones[:, None]
        mean_out = ((~m).T.astype(np.float64) @ f) / zeros[:, None]
    a = np.where(((ones > 0) & (zeros > 0))[:, None], (mean_in - mean_out) / 2.0, 0.0).T
    c = f.mean(axis=0) - (2.0 * p - 1.0) * a.sum(axis=1)
    return c, a, {"samples": len(m)}


def fit_influence(task: Task, method: str, masks: np.ndarray, f: np.ndarray) -> Datamodel:
    """The ``method`` claim on the seeded retrainings ``masks`` (K, N), ``f`` (K, Z): ``if-mean``
    calibrated per target (intercept and slope along the influence direction; uncalibrated when
    K < 2), ``ridge-prior`` that calibration followed by a ridge fit of the residual (``ValueError``
    below 5 samples), ``empirical-influence`` computed from them, the others their raw formulas.
    Deterministic given its inputs."""
    if method not in INFLUENCE_METHODS:
        raise ValueError(f"unknown influence method {method!r}; choose {INFLUENCE_METHODS}")
    f = np.asarray(f, dtype=np.float64).reshape(len(masks), task.num_targets)
    x = 2.0 * np.asarray(masks, dtype=np.float64).reshape(len(masks), task.num_train_points) - 1.0
    if method == "empirical-influence":
        c, a, diag = empirical_influence(masks, f, float(task.p))
    else:
        centre, rescale = _CENTRED[method]
        c, a, diag = centred_influence(task, centre, rescale)
    gamma = np.ones_like(c)
    if method in _CALIBRATED and len(masks) >= 2:
        h = x @ a.T  # the uncalibrated direction's value on each sample, (K, Z)
        for t in range(len(c)):
            design = np.column_stack([np.ones(len(h)), h[:, t]])
            (c[t], gamma[t]), *_ = np.linalg.lstsq(design, f[:, t], rcond=None)
        a = a * gamma[:, None]
    if method == "ridge-prior":
        c, delta, ridge_diag = fit_ridge(x, f - x @ a.T, rng_seed=0)
        a = a + delta
        diag.update(ridge_diag, prior="rif-mean (calibrated)")
    diag.update(
        calibration_samples=len(masks),
        slope=gamma.tolist(),
        train_mse=((f - (c[None, :] + x @ a.T)) ** 2).mean(axis=0).tolist() if len(f) else [],
    )
    return Datamodel(
        intercepts=np.ascontiguousarray(c),
        coefficients=np.ascontiguousarray(a),
        method=method,
        num_samples=len(masks),
        diagnostics=diag,
    )


def fit_claim(task: Task, method: str, masks: np.ndarray, f: np.ndarray) -> Datamodel:
    """The claim of any of ``CLAIM_METHODS`` from seeded retrainings ``masks`` (K, N), ``f``
    (K, Z): a method of this module (:func:`fit_influence`) or a regression of
    ``prover.datamodel`` (:func:`fit_datamodel`). Deterministic given its inputs; ``ValueError``
    for an unknown method or bad shapes."""
    if method in INFLUENCE_METHODS:
        return fit_influence(task, method, masks, f)
    return fit_datamodel(masks, f, method=method)
