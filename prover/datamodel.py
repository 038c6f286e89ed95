"""Datamodel estimation Φ(S): regress f on x = 2·mask − 1 with an intercept, per target.

All methods centre x and f first and fit the intercept unpenalised, c = f̄ − ⟨x̄, a⟩, so only the
coefficients a are regularised (and, for OLS with K < N, only ‖a‖ is minimised).

Methods:

- ``"ols"``: least squares on the centred design: normal equations via an eigendecomposition of
  XᵀX when K ≥ 2N and XᵀX is well conditioned, else ``np.linalg.lstsq``, which with K ≤ N (rank
  deficient) returns the minimum-norm solution. Expected excess error on B_p data:
  err ≈ (B_{≥2} + noise) · (N + 1) / K for K ≫ N (exact in expectation at p = 1/2 to first order).
- ``"ridge"``: λ per target chosen from the grid λ/K ∈ logspace(−4, 3, 36) by squared error on a
  held-out 20% split (drawn from ``rng_seed``), then refit on all K samples with that λ. Solved by
  one eigendecomposition of the Gram matrix XᵀX (K ≥ N) or of XXᵀ (K < N), so the whole grid costs
  one factorisation per split.
- ``"lasso"``: scikit-learn's ``lasso_path`` (coordinate descent) on the 80% split over 30 α values
  from α_max (all-zero solution) down to 1e-4·α_max; α per target by held-out error, then
  ``sklearn.linear_model.Lasso`` on all data. Suited to large N with sparse attributions.
- ``"auto"``: ``"ols"`` when K ≥ 2N, else ``"ridge"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("ols", "ridge", "lasso", "auto")
#: Every way the prover can make its claim: the regressions here and the influence claims of
#: ``prover.influence``.
CLAIM_METHODS = (
    *METHODS,
    *("if-mean", "if-full", "if-mean-raw", "rif", "rif-mean", "ns", "empirical-influence"),
    "ridge-prior",
)
#: Ridge grid, as λ/K (per-sample penalty).
RIDGE_GRID = np.logspace(-4, 3, 36)
LASSO_NUM_ALPHAS = 30
LASSO_ALPHA_RATIO = 1e-4
HOLDOUT_FRACTION = 0.2
_MIN_SAMPLES_FOR_HOLDOUT = 5


@dataclass(frozen=True)
class Datamodel:
    """A fitted affine datamodel g(x) = c + ⟨a, x⟩ per target.

    ``intercepts`` (Z,), ``coefficients`` (Z, N); ``method`` is the method actually used (``"auto"``
    resolves to ``"ols"`` or ``"ridge"``); ``diagnostics`` holds e.g. the chosen λ/α per target and
    the training MSE.
    """

    intercepts: np.ndarray
    coefficients: np.ndarray
    method: str
    num_samples: int
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """g(x) for each row of ``masks`` (K, N) bool, as (K, Z)."""
        x = 2.0 * np.asarray(masks, dtype=np.float64) - 1.0
        return self.intercepts[None, :] + x @ self.coefficients.T


def _validate(masks: np.ndarray, f_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    f = np.asarray(f_values)
    if masks.ndim != 2:
        raise ValueError(f"masks must have shape (K, N), got {masks.shape}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be boolean, got dtype {masks.dtype}")
    K, N = masks.shape
    if K == 0 or N == 0:
        raise ValueError(f"need at least one sample and one training point, got {masks.shape}")
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] != K:
        raise ValueError(f"f_values must have shape ({K}, Z), got {np.shape(f_values)}")
    if f.shape[1] == 0:
        raise ValueError("f_values has no targets (Z = 0)")
    if f.dtype.kind not in "fiu":
        raise ValueError(f"f_values must be real numbers, got dtype {f.dtype}")
    f = f.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError("f_values must be finite")
    return masks, f


def _split(K: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    if K < _MIN_SAMPLES_FOR_HOLDOUT:
        raise ValueError(
            f"ridge/lasso need at least {_MIN_SAMPLES_FOR_HOLDOUT} samples for the held-out split, "
            f"got {K}"
        )
    perm = np.random.default_rng(rng_seed).permutation(K)
    n_val = max(1, round(HOLDOUT_FRACTION * K))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _centre(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    return x - xm, y - ym, xm, ym


def _fit_ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    xc, yc, xm, ym = _centre(x, y)
    K, N = xc.shape
    if K >= 2 * N:
        # Well-posed case: solve the normal equations through one eigendecomposition of the
        # N x N Gram matrix (an order of magnitude faster than an SVD of the K x N design).
        evals, vecs = np.linalg.eigh(xc.T @ xc)
        if evals[0] > 1e-10 * evals[-1]:
            a = vecs @ ((vecs.T @ (xc.T @ yc)) / evals[:, None])
            c = ym - xm @ a
            cond = float(np.sqrt(evals[-1] / evals[0]))
            return c, a.T, {"rank": int(N), "condition_number": cond}
    a, _, rank, sv = np.linalg.lstsq(xc, yc, rcond=None)
    c = ym - xm @ a
    cond = float(sv[0] / sv[rank - 1]) if rank > 0 else None  # None: all-zero design
    return c, a.T, {"rank": int(rank), "condition_number": cond}


class _RidgeSolver:
    """All ridge solutions a(λ) = (XᵀX + λI)⁻¹ Xᵀy on centred data, from one eigendecomposition."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.xc, self.yc, self.xm, self.ym = _centre(x, y)
        K, N = self.xc.shape
        self.primal = K >= N
        if self.primal:
            evals, self.vecs = np.linalg.eigh(self.xc.T @ self.xc)
            self.proj = self.vecs.T @ (self.xc.T @ self.yc)  # (N, Z)
        else:
            evals, self.vecs = np.linalg.eigh(self.xc @ self.xc.T)
            self.proj = self.vecs.T @ self.yc  # (K, Z)
        self.evals = np.clip(evals, 0.0, None)

    def coef(self, lam: float | np.ndarray) -> np.ndarray:
        """(N, Z) coefficients for a scalar λ or one λ per target."""
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (self.proj.shape[1],))
        scale = 1.0 / (self.evals[:, None] + lam[None, :])
        if self.primal:
            return self.vecs @ (scale * self.proj)
        return self.xc.T @ (self.vecs @ (scale * self.proj))

    def intercept(self, a: np.ndarray) -> np.ndarray:
        """c = ȳ − ⟨x̄, a⟩ for coefficients (N, Z)."""
        return self.ym - self.xm @ a


def fit_ridge(
    x: np.ndarray, y: np.ndarray, rng_seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(c (Z,), a (Z, N), diagnostics) of ridge regression of ``y`` (K, Z) on ``x`` (K, N) with an
    unpenalised intercept, λ per target chosen from ``RIDGE_GRID`` (as λ/K) on a seeded held-out
    fifth and refitted on all K. Deterministic given ``rng_seed``; ``ValueError`` below 5
    samples."""
    K = x.shape[0]
    train, val = _split(K, rng_seed)
    solver = _RidgeSolver(x[train], y[train])
    errors = np.empty((len(RIDGE_GRID), y.shape[1]))
    for g, lam_per_sample in enumerate(RIDGE_GRID):
        a = solver.coef(lam_per_sample * len(train))
        pred = solver.intercept(a)[None, :] + x[val] @ a
        errors[g] = ((pred - y[val]) ** 2).mean(axis=0)
    best = errors.argmin(axis=0)
    lam_ps = RIDGE_GRID[best]
    full = _RidgeSolver(x, y)
    a = full.coef(lam_ps * K)
    c = full.intercept(a)
    return (
        c,
        a.T,
        {
            "lambda_per_sample": lam_ps.tolist(),
            "lambda": (lam_ps * K).tolist(),
            "holdout_mse": errors[best, np.arange(y.shape[1])].tolist(),
            "lambda_at_grid_edge": bool(np.any((best == 0) | (best == len(RIDGE_GRID) - 1))),
        },
    )


def _fit_lasso(
    x: np.ndarray, y: np.ndarray, rng_seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.linear_model import Lasso, lasso_path

    K, N = x.shape
    Z = y.shape[1]
    train, val = _split(K, rng_seed)
    xc, yc, xm, ym = _centre(x[train], y[train])
    alpha_max = float(np.abs(xc.T @ yc).max()) / len(train)
    if alpha_max <= 0.0:  # constant targets: the zero solution is exact
        c = y.mean(axis=0)
        return c, np.zeros((Z, N)), {"alpha": [0.0] * Z, "holdout_mse": [0.0] * Z}
    alphas = alpha_max * np.logspace(0, np.log10(LASSO_ALPHA_RATIO), LASSO_NUM_ALPHAS)
    alphas_out, coefs, _ = lasso_path(xc, yc, alphas=alphas, max_iter=5000, tol=1e-6)
    if coefs.ndim == 2:  # single target: (N, n_alphas)
        coefs = coefs[None]
    errors = np.empty((len(alphas_out), Z))
    for g in range(len(alphas_out)):
        a = coefs[:, :, g]  # (Z, N)
        pred = (ym - a @ xm)[None, :] + x[val] @ a.T
        errors[g] = ((pred - y[val]) ** 2).mean(axis=0)
    best = errors.argmin(axis=0)
    chosen = alphas_out[best]
    xc_all, yc_all, xm_all, ym_all = _centre(x, y)
    a_all = np.empty((Z, N))
    for t in range(Z):
        model = Lasso(alpha=float(chosen[t]), fit_intercept=False, max_iter=10000, tol=1e-6)
        model.fit(xc_all, yc_all[:, t])
        a_all[t] = model.coef_
    c = ym_all - a_all @ xm_all
    return (
        c,
        a_all,
        {
            "alpha": chosen.tolist(),
            "holdout_mse": errors[best, np.arange(Z)].tolist(),
            "nonzero": [int(np.count_nonzero(a_all[t])) for t in range(Z)],
        },
    )


def fit_datamodel(
    masks: np.ndarray, f_values: np.ndarray, method: str = "ols", rng_seed: int = 0
) -> Datamodel:
    """Fit g(x) = c + ⟨a, x⟩ (x = 2·mask − 1) to ``f_values`` (K, Z) for every target at once.

    ``masks`` is (K, N) bool; a 1-D ``f_values`` is read as Z = 1. ``method`` is one of
    ``"ols"``, ``"ridge"``, ``"lasso"``, ``"auto"`` (see the module docstring). Deterministic given
    ``rng_seed`` (which only picks the held-out split). Raises ``ValueError`` on an unknown method,
    empty input, mismatched shapes, non-boolean masks or non-finite f-values.
    """
    if method not in METHODS:
        raise ValueError(f"unknown datamodel method {method!r}; choose one of {', '.join(METHODS)}")
    masks, f = _validate(masks, f_values)
    K, N = masks.shape
    used = method
    if method == "auto":
        used = "ols" if K >= 2 * N else "ridge"
    x = 2.0 * masks.astype(np.float64) - 1.0
    if used == "ols":
        c, a, diag = _fit_ols(x, f)
    elif used == "ridge":
        c, a, diag = fit_ridge(x, f, rng_seed)
    else:
        c, a, diag = _fit_lasso(x, f, rng_seed)
    pred = c[None, :] + x @ a.T
    diag["train_mse"] = ((pred - f) ** 2).mean(axis=0).tolist()
    diag["requested_method"] = method
    return Datamodel(
        intercepts=np.ascontiguousarray(c, dtype=np.float64),
        coefficients=np.ascontiguousarray(a, dtype=np.float64),
        method=used,
        num_samples=K,
        diagnostics=diag,
    )
