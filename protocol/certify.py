"""Certified checks for convex (logistic-regression) tasks: one gradient pass instead of retraining.

For a λ-strongly-convex objective L_S, any weights w satisfy ‖w − w*_S‖₂ ≤ ‖∇L_S(w)‖₂ / λ. The
output f_t(w) = b·tanh((y_t·wᵀx̃_t − center_t)/(σ_t·b)) is Lipschitz in w with constant
Lip_t = ‖x̃_t‖₂/σ_t (b·tanh(·/b) is 1-Lipschitz, the margin is linear in w, |y_t| = 1; σ_t = 1
unless the task sets ``scale=auto``, see ``LogisticRegressionTask.output_lipschitz``). So a verifier
that receives a prover's claimed weights w for subset S can bound the true output of the optimum:

    |f_t(w) − f_t(w*_S)| ≤ Lip_t · ‖∇L_S(w)‖₂ / λ,

with one gradient pass over the subset (O(N·d) per model) instead of a full Newton retraining
(O(iterations · N·d²) per model). The bound holds for any w, whatever device or seed produced it.

Byte format of claimed weights: one model's d + 1 weights (bias last) as contiguous little-endian
IEEE-754 float64 (``'<f8'``, C order), exactly ``8·(d+1)`` bytes. ``sha256`` of those bytes is
:func:`protocol.trainer.weights_digest` of the same weights, so an opening of a committed leaf
digest is checked by hashing the received bytes (:func:`check_weights_opening`).

This module never imports ``grpc``, ``prover`` or ``verifier``. See docs/certified-checks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import numpy as np
import torch

from protocol import trainer
from protocol.tasks.base import CertifiableTask, Task
from protocol.tasks.real import LogisticRegressionTask

#: Unit roundoff of float64 (2⁻⁵³).
UNIT_ROUNDOFF = trainer.UNIT_ROUNDOFF

#: Bound on the float64 temporaries of one gradient-pass block (several (models, points) arrays).
CERTIFY_TEMP_MAX_BYTES = 8 * 2**20

#: How many (models, points) float64 temporaries the gradient pass holds at once (margins, mask,
#: sigmoid, weighted residuals, plus slack for torch intermediates).
_TEMPS_PER_MODEL_ROW = 8

#: Models certified together: each block of the design is read once per this many models, so the
#: two matrix products run at matrix-matrix speed instead of re-reading X for every one or two
#: models (at N = 60,000 a whole-row chunk under the byte cap held 2 models).
CERTIFY_MODELS_PER_CHUNK = 64

_F64_LE = np.dtype("<f8")


# --------------------------------------------------------------------------------------------
# Weights on the wire
# --------------------------------------------------------------------------------------------


def weights_to_bytes(weights: np.ndarray) -> list[bytes]:
    """Serialise K models' weights (K, d+1) as K blobs of little-endian float64, C order.

    Guarantees: blob k is exactly ``8·(d+1)`` bytes and ``hashlib.sha256(blob_k).digest() ==
    trainer.weights_digest(weights[k])``; :func:`weights_from_bytes` inverts it bit for bit
    (signed zeros included). Raises ``ValueError`` unless ``weights`` is a 2-D real array of
    finite values (a blob the parser would reject is never produced).
    """
    w = np.asarray(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a 2-D (K, d+1) array, got shape {w.shape}")
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=_F64_LE)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or infinity")
    return [row.tobytes() for row in w]


def weights_from_bytes(blob: bytes, dim: int) -> np.ndarray:
    """Parse one model's weights from exactly ``8·dim`` bytes of little-endian float64.

    Returns a fresh, writable (dim,) float64 array. Raises ``ValueError`` naming the reason when
    ``blob`` is not bytes-like, its length is not a multiple of 8, it holds a number of values
    other than ``dim``, or any value is NaN or infinite. ``dim`` is d + 1 (bias included).
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"weights blob must be bytes, got {type(blob).__name__}")
    raw = bytes(blob)
    if len(raw) % _F64_LE.itemsize:
        raise ValueError(
            f"weights blob has {len(raw)} bytes, not a multiple of 8 (float64 little-endian)"
        )
    count = len(raw) // _F64_LE.itemsize
    if count != int(dim):
        raise ValueError(
            f"weights blob holds {count} float64 values, expected exactly {int(dim)} "
            f"({8 * int(dim)} bytes)"
        )
    w = np.frombuffer(raw, dtype=_F64_LE).astype(np.float64)
    bad = ~np.isfinite(w)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"weights blob value {first} is {w[first]!r} (NaN or infinity)")
    return w


def check_weights_opening(blob: bytes, expected_digest: bytes, dim: int) -> np.ndarray:
    """Parse ``blob`` (see :func:`weights_from_bytes`) and check it opens ``expected_digest``.

    Returns the (dim,) weights only when ``sha256(blob) == expected_digest`` (the committed
    ``trainer.weights_digest``); raises ``ValueError`` otherwise or when the blob is malformed.
    """
    w = weights_from_bytes(blob, dim)
    digest = hashlib.sha256(bytes(blob)).digest()
    if not isinstance(expected_digest, (bytes, bytearray)) or len(expected_digest) != 32:
        raise ValueError("expected digest must be 32 bytes (SHA-256)")
    if not hmac.compare_digest(digest, bytes(expected_digest)):
        raise ValueError(
            f"weights blob does not open the committed digest "
            f"(sha256 {digest.hex()[:16]}…, committed {bytes(expected_digest).hex()[:16]}…)"
        )
    return w


# --------------------------------------------------------------------------------------------
# The certified check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertifiedCheck:
    """Result of certifying K claimed models with one gradient pass each.

    ``grad_norms`` (K,) is ‖∇L_S(w)‖₂ as computed in float64; ``f_values`` (K, Z) are the
    outputs recomputed from the claimed weights; ``f_error_bound`` (K,) satisfies
    |f_t(w_k) − f_t(w*_{S_k})| ≤ f_error_bound[k] for every target t, where w*_{S_k} is the exact
    optimum for subset k (the bound includes a worst-case allowance for the float64 rounding of
    the gradient pass; NaN is reported as +inf). ``task_tolerance`` is the task's declared τ.
    """

    grad_norms: np.ndarray
    f_values: np.ndarray
    f_error_bound: np.ndarray
    task_tolerance: float

    @property
    def num_models(self) -> int:
        """K."""
        return int(self.grad_norms.shape[0])

    def certified(self) -> np.ndarray:
        """(K,) bool: the model is certified near-optimal, f_error_bound ≤ τ."""
        return self.f_error_bound <= self.task_tolerance

    def passed(self, committed_f: np.ndarray, tolerance: float) -> np.ndarray:
        """(K,) bool: model k passes iff it is certified and its committed f matches its weights.

        Passing means |committed_f[k, t] − f_values[k, t]| ≤ ``tolerance`` for every t (the
        committed values are the model's own outputs up to float noise; NaN never matches) AND
        f_error_bound[k] ≤ τ. A passing model's committed value is then within
        ``tolerance + τ`` of the exact optimum's output. Raises ``ValueError`` on a shape
        mismatch or a negative / non-finite ``tolerance``.
        """
        committed = np.asarray(committed_f, dtype=np.float64)
        if committed.shape != self.f_values.shape:
            raise ValueError(
                f"committed f must have shape {self.f_values.shape}, got {committed.shape}"
            )
        tolerance = float(tolerance)
        if not (np.isfinite(tolerance) and tolerance >= 0.0):
            raise ValueError(f"tolerance must be a finite number ≥ 0, got {tolerance!r}")
        if committed.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        close = np.all(np.abs(committed - self.f_values) <= tolerance, axis=1)
        return close & self.certified()


def supports_certified_checks(task: Task) -> bool:
    """True when ``task`` admits certified checks: a λ-strongly-convex :class:`CertifiableTask`.

    Non-convex tasks (MLP) and synthetic tasks have no gradient certificate and return False.
    """
    return isinstance(task, CertifiableTask) and task.strongly_convex


def _rounding_slack(
    task: LogisticRegressionTask, weight_norms: np.ndarray, grad_norms: np.ndarray
) -> np.ndarray:
    """``trainer.gradient_rounding_slack`` for this task's design (one home for the formula)."""
    n, d = task.design.num_points, task.design.dim
    r = float(np.max(np.linalg.norm(task.design.X, axis=1))) if n else 0.0
    return trainer.gradient_rounding_slack(n, d, r, task.l2, weight_norms, grad_norms)


def _gradient_norms(
    X: torch.Tensor, y: torch.Tensor, w: np.ndarray, masks: np.ndarray, l2: float, block: int
) -> np.ndarray:
    """‖∇L_S(w)‖₂ per row: the same formula as the trainer's gradient, without loss or curvature.

    ∇L_S(w) = −(1/N) Σ_i mask_i σ(−y_i wᵀx̃_i) y_i x̃_i + λw, float64 on the CPU, the sum over i
    taken ``block`` points at a time (a different order of the same float64 sum: the rounding
    slack bounds any order).
    """
    n = X.shape[0]
    with torch.no_grad():
        wt = torch.from_numpy(w)
        m = torch.from_numpy(masks)
        grad = torch.zeros_like(wt)
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            xb, yb = X[lo:hi], y[lo:hi]
            r = torch.matmul(wt, xb.T)  # (k, b) raw scores wᵀx̃_i
            r.mul_(yb).neg_().sigmoid_()  # σ(−y_i wᵀx̃_i)
            r.mul_(yb).mul_(m[:, lo:hi])  # mask_i σ(·) y_i (bool mask promotes exactly)
            grad.add_(torch.matmul(r, xb))
        grad.div_(-n).add_(wt, alpha=l2)
        return torch.linalg.vector_norm(grad, dim=1).numpy()


def certify_models(
    task: LogisticRegressionTask, weights: np.ndarray, masks: np.ndarray
) -> CertifiedCheck:
    """Certify K claimed models: one gradient pass per model over its subset, on the CPU.

    ``weights`` (K, d+1) float64 (bias last), ``masks`` (K, N) bool. Models are processed
    ``CERTIFY_MODELS_PER_CHUNK`` at a time and the design in blocks of points sized so that the
    float64 temporaries stay under ``CERTIFY_TEMP_MAX_BYTES``. Guarantees, for every
    k and target t: |f_t(weights[k]) − f_t(w*_{masks[k]})| ≤ f_error_bound[k], where
    f_error_bound[k] = max_t ‖x̃_t‖ · (‖∇L_S(w_k)‖ + rounding slack) / λ · (1 + 8u).
    Raises ``ValueError`` for an unsupported task, wrong shapes or dtypes, or non-finite weights.
    """
    if not supports_certified_checks(task):
        raise ValueError(
            f"task {getattr(task, 'name', task)!r} does not support certified checks "
            "(needs a strongly convex logistic-regression task)"
        )
    n, dim = task.design.num_points, task.design.dim
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n:
        raise ValueError(f"masks must have shape (K, {n}), got {masks.shape}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be boolean, got dtype {masks.dtype}")
    w = np.asarray(weights)
    if w.shape != (masks.shape[0], dim):
        raise ValueError(f"weights must have shape ({masks.shape[0]}, {dim}), got {w.shape}")
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or infinity")

    k = masks.shape[0]
    z = task.num_targets
    grad_norms = np.empty(k)
    f_values = np.empty((k, z))
    X = torch.from_numpy(task.design.X)
    y = torch.from_numpy(task.design.y)
    chunk = CERTIFY_MODELS_PER_CHUNK
    row_bytes = 8 * _TEMPS_PER_MODEL_ROW * min(chunk, max(k, 1))
    block = max(1, min(n, CERTIFY_TEMP_MAX_BYTES // row_bytes))
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        grad_norms[lo:hi] = _gradient_norms(
            X, y, w[lo:hi], np.ascontiguousarray(masks[lo:hi]), task.l2, block
        )
        f_values[lo:hi] = task.outputs(w[lo:hi])

    lip = float(np.max(task.output_lipschitz)) if z else 0.0
    slack = _rounding_slack(task, np.linalg.norm(w, axis=1), grad_norms)
    bound = lip * (grad_norms + slack) / task.l2 * (1.0 + 8.0 * UNIT_ROUNDOFF)
    bound = np.where(np.isnan(bound), np.inf, bound)
    return CertifiedCheck(
        grad_norms=grad_norms,
        f_values=f_values,
        f_error_bound=bound,
        task_tolerance=float(task.tolerance),
    )


# --------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------


def gradient_pass_flops(n: int, d: int, num_targets: int = 0) -> float:
    """FLOPs of certifying one model: one gradient evaluation over N points, d weights.

    ``d`` counts every weight, bias included (``design.dim``), as in
    :func:`protocol.trainer.logreg_flops`, whose per-gradient-evaluation cost (2·N·d for the
    margins, 2·N·d for the transpose matvec) this matches exactly. ``num_targets`` Z adds the
    2·Z·d of recomputing f (0 by default, as logreg_flops does not count f either).
    """
    if n < 0 or d < 0 or num_targets < 0:
        raise ValueError("n, d and num_targets must be ≥ 0")
    return 4.0 * n * d + 2.0 * num_targets * d


def retraining_flops_per_model(
    task: LogisticRegressionTask,
    retraining: trainer.NewtonStats | float,
    *,
    models_trained: int | None = None,
) -> float:
    """FLOPs of one full retraining of ``task``, from measured Newton stats or given directly.

    ``retraining`` is either a float (FLOPs of one retraining, returned as is) or the
    :class:`trainer.NewtonStats` of a ``train_logreg`` call over ``models_trained`` models; its
    :func:`trainer.logreg_flops` total is divided by that count. When ``models_trained`` is
    None it is inferred as ``model_grad_evals − model_iterations`` (the trainer evaluates each
    model's gradient once more than it takes Newton steps).
    """
    if isinstance(retraining, trainer.NewtonStats):
        if models_trained is None:
            models_trained = retraining.model_grad_evals - retraining.model_iterations
        if models_trained < 1:
            raise ValueError(f"need ≥ 1 trained model behind the stats, got {models_trained}")
        total = trainer.logreg_flops(task.design.num_points, task.design.dim, retraining)
        return total / models_trained
    flops = float(retraining)
    if not (np.isfinite(flops) and flops > 0):
        raise ValueError(f"retraining FLOPs must be a positive finite number, got {retraining!r}")
    return flops


def retraining_equivalents(
    task: LogisticRegressionTask,
    num_models_checked: int,
    retraining: trainer.NewtonStats | float,
    *,
    models_trained: int | None = None,
) -> float:
    """Cost of certifying ``num_models_checked`` models, in units of one full retraining.

    = gradient_pass_flops(N, d+1) · K / (FLOPs of one retraining), with the denominator from
    :func:`retraining_flops_per_model` (measured Newton iterations through trainer.logreg_flops,
    or a FLOP count given directly). Counts the dominant terms only, as logreg_flops does.
    """
    if num_models_checked < 0:
        raise ValueError(f"num_models_checked must be ≥ 0, got {num_models_checked}")
    per_retrain = retraining_flops_per_model(task, retraining, models_trained=models_trained)
    per_check = gradient_pass_flops(task.design.num_points, task.design.dim)
    return per_check * num_models_checked / per_retrain


@dataclass(frozen=True)
class CostComparison:
    """Measured wall time and FLOPs of retraining K subsets vs certifying the same K models."""

    num_models: int
    retrain_seconds: float
    certify_seconds: float
    retrain_flops: float
    certify_flops: float
    newton_iterations_per_model: float
    all_certified: bool

    @property
    def wall_ratio(self) -> float:
        """certify_seconds / retrain_seconds (< 1 means certifying is cheaper)."""
        return self.certify_seconds / self.retrain_seconds

    @property
    def flop_ratio(self) -> float:
        """certify_flops / retrain_flops = retraining equivalents per certified model."""
        return self.certify_flops / self.retrain_flops


def measure_costs(
    task: LogisticRegressionTask, masks: np.ndarray, *, device: str = "cpu"
) -> CostComparison:
    """Time a full retraining of ``masks`` (K, N) and then certifying the resulting K models.

    Retraining uses the task's recipe (λ, tol, max_iter, batch size) through
    ``trainer.train_logreg`` on ``device`` with fresh :class:`trainer.NewtonStats`; certifying
    is :func:`certify_models` (CPU) on the weights it produced. Wall times are
    ``time.perf_counter`` spans around each call; FLOPs come from the analytic model.
    """
    stats = trainer.NewtonStats()
    t0 = time.perf_counter()
    weights, _ = trainer.train_logreg(
        task.design,
        masks,
        task.l2,
        tol=task.tol,
        max_iter=task.max_iter,
        device=device,
        batch_size=task.batch_size,
        stats=stats,
    )
    t1 = time.perf_counter()
    check = certify_models(task, weights, masks)
    t2 = time.perf_counter()
    k = masks.shape[0]
    return CostComparison(
        num_models=k,
        retrain_seconds=t1 - t0,
        certify_seconds=t2 - t1,
        retrain_flops=trainer.logreg_flops(task.design.num_points, task.design.dim, stats),
        certify_flops=gradient_pass_flops(task.design.num_points, task.design.dim) * k,
        newton_iterations_per_model=stats.model_iterations / max(k, 1),
        all_certified=bool(np.all(check.certified())),
    )
