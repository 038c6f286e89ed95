"""One batched trainer for both parties: K models per computation, CPU or CUDA.

A retraining is a pure function of (task, subset, seed). Everything here is float64, and all
randomness (the MLP's initialisation) is drawn on the CPU from the seed, so the device changes
only floating-point rounding, never the recipe.

Two recipes:

* :func:`train_logreg` — L2-regularised logistic regression

      L_S(w) = (1/N) Σ_i mask_i · log(1 + exp(−y_i wᵀx̃_i)) + (λ/2)‖w‖²,   x̃_i = (x_i, 1),

  where N is the *full* training-set size (not |S|) and the bias is regularised too, so L_S is
  λ-strongly convex for every subset, including the empty one (optimum w = 0). It is minimised by
  batched damped Newton-type steps until ‖∇L_S(w)‖₂ ≤ ``tol`` for each model separately. Every
  model starts from the same task-derived point (scaled by |S|/N) and steps with a frozen
  preconditioner shared by the whole task (two small GEMMs per step, no per-model Hessian); a model
  that makes poor progress switches to exact Newton (packed-GEMM Hessian, Cholesky). Each model
  stops at its own first iterate that meets the tolerance, so its stopping rule does not depend on
  the other models in its batch. The optimum is unique and seed-independent, and strong convexity
  gives ‖w − w*‖ ≤ ‖∇L_S(w)‖/λ; the start point and preconditioner change only the path.

* :func:`train_mlp` — a one-hidden-layer tanh MLP trained by T steps of full-batch gradient
  descent with heavy-ball momentum on the same mask-weighted logistic loss. Non-convex: the seed
  picks the initialisation (drawn on the CPU from ``torch.Generator``), and the same seed gives the
  same model.

The single-model path is the same code with K = 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Optional progress callback: called with the number of models just finished.
Progress = Callable[[int], None]

#: Default number of models trained in one batched computation.
DEFAULT_BATCH_SIZE = 256

#: Above this many bytes the packed outer-product design (N, d(d+1)/2) is not built and the Hessian
#: is formed with a batched matmul instead.
OUTER_DESIGN_MAX_BYTES = 96 * 2**20

#: Bound on the (models, d, N) temporary of the batched-matmul Hessian path.
BMM_TEMP_MAX_BYTES = 32 * 2**20


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to train on.

    ``None`` or ``"auto"`` picks CUDA when available, else CPU; the environment variable
    ``ATTRIBUTION_DEVICE`` overrides ``auto``. Raises ``ValueError`` for an unknown or unavailable
    device.
    """
    if isinstance(device, torch.device):
        chosen = device
    else:
        name = (device or "auto").strip().lower()
        if name == "auto":
            name = os.environ.get("ATTRIBUTION_DEVICE", "auto").strip().lower() or "auto"
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            chosen = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:i]'") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {chosen}; use 'auto', 'cpu' or 'cuda[:i]'")
    return chosen


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Enable ``torch.use_deterministic_algorithms`` on CUDA for the duration, then restore it.

    On the CPU every op used here is already deterministic for a fixed batch shape, so nothing is
    changed there.
    """
    if device.type != "cuda":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def weights_digest(weights: np.ndarray) -> bytes:
    """SHA-256 of one model's weights as contiguous little-endian float64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f8").tobytes()).digest()


def squash(margin: np.ndarray, bound: float) -> np.ndarray:
    """The output map f = b·tanh(margin / b): 1-Lipschitz, monotone, and |f| ≤ b exactly.

    This is part of the definition of f (both parties apply it), not clipping of predictions.
    """
    return np.clip(bound * np.tanh(np.asarray(margin, dtype=np.float64) / bound), -bound, bound)


def _check_masks(masks: np.ndarray, n: int) -> None:
    if not isinstance(masks, np.ndarray) or masks.ndim != 2 or masks.shape[1] != n:
        shape = getattr(masks, "shape", None)
        raise ValueError(f"masks must be a (K, {n}) boolean array, got shape {shape}")
    if masks.dtype != np.bool_:
        raise ValueError(f"masks must be boolean, got dtype {masks.dtype}")


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# --------------------------------------------------------------------------------------------
# Logistic regression by batched preconditioned Newton
# --------------------------------------------------------------------------------------------

#: Weight of every point in the reference problem whose optimum is the shared starting point.
REFERENCE_WEIGHT = 0.5

#: Gradient tolerance to which the reference problem is solved (it only fixes a starting point).
REFERENCE_TOL = 1e-13

#: A model leaves the frozen preconditioner for exact Newton after an accepted frozen step that
#: needed backtracking or shrank ‖∇L_S‖ by less than this factor.
SWITCH_RATIO = 0.8

#: Armijo constant and the squared-decrement floor below which a step is taken untested.
ARMIJO_C = 1e-4
UNTESTED_DECREMENT = 1e-12
MAX_HALVINGS = 60


@dataclass
class NewtonStats:
    """Work counters of one :func:`train_logreg` call (used to count FLOPs analytically).

    Invariant relied on by :mod:`protocol.certify`: ``model_grad_evals − model_iterations`` is the
    number of models trained (each model is evaluated once at its start, then once per accepted
    step).
    """

    #: Accepted steps summed over models (frozen-preconditioner and exact-Newton steps).
    model_iterations: int = 0
    #: Of those, exact Newton steps (one Hessian + Cholesky each).
    model_newton_steps: int = 0
    #: Loss-only evaluations in the line search summed over models (one (N, d) matvec each).
    model_loss_evals: int = 0
    #: Rejected line-search trial points summed over models (one loss-free gradient pass each).
    model_rejected_trials: int = 0
    #: Accepted loss + gradient evaluations summed over models (start point + one per step).
    model_grad_evals: int = 0
    #: How Hessians were formed: ``"packed"`` (one GEMM against packed outer products) or ``"bmm"``.
    hessian_paths: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class LogisticReference:
    """Task-derived data shared by every model of one (design, λ): start point, preconditioner.

    ``w0`` is the optimum of the reference objective (ρ/N) Σ_i log(1 + exp(−y_i wᵀx̃_i)) + (λ/2)‖w‖²
    with ρ = :data:`REFERENCE_WEIGHT` (the expected objective of a subset drawn with p = ρ), solved
    on the CPU by exact damped Newton from 0 to ‖∇‖ ≤ :data:`REFERENCE_TOL`. ``basis`` (d, d) and
    ``curvature`` (d,) are the eigendecomposition of the unit-weight data curvature
    (1/N) Σ_i σ_i(1 − σ_i) x̃_i x̃_iᵀ at ``w0``; a model with |S| = qN is preconditioned with
    basis · diag(q·curvature + λ) · basisᵀ, which for q = ρ is the reference problem's Hessian.
    """

    w0: np.ndarray
    basis: np.ndarray
    curvature: np.ndarray


class LogisticDesign:
    """The fixed design of a logistic-regression task, prepared once per device.

    ``X`` is (N, d) float64 features; a bias column of ones is appended internally, so weights have
    d + 1 entries with the bias last. ``y`` holds ±1 labels.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"need X (N, d) and y (N,), got {X.shape} and {y.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("features contain NaN or infinity")
        if not np.all(np.abs(y) == 1.0):
            raise ValueError("labels must be ±1")
        self.X = np.hstack([X, np.ones((X.shape[0], 1))])
        self.y = y
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self._references: dict[float, LogisticReference] = {}

    @property
    def num_points(self) -> int:
        """N."""
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        """d + 1, the number of weights including the bias."""
        return self.X.shape[1]

    def packed_bytes(self) -> int:
        """Bytes of the packed outer-product design (N, (d+1)(d+2)/2)."""
        d = self.dim
        return self.num_points * d * (d + 1) // 2 * 8

    def tensors(self, device: torch.device, packed: bool) -> tuple[torch.Tensor, ...]:
        """(X̃, y·X̃, packed outer products or empty, lower-triangle positions) on ``device``.

        Cached per device. ``y·X̃`` has row i equal to y_i·x̃_i, so margins are one matmul. The
        packed outer products have one column per entry (i ≤ j) of the upper triangle, and the
        positions say where that entry sits in the row-major lower triangle (j, i) of a (d, d)
        matrix, which is the only triangle the Cholesky factorisation reads.
        """
        key = f"{device}/{packed}"
        if key not in self._cache:
            X = torch.from_numpy(self.X).to(device)
            y = torch.from_numpy(self.y).to(device)
            Xy = (y[:, None] * X).contiguous()
            d = self.dim
            iu = torch.triu_indices(d, d, device=device)
            lower = (iu[1] * d + iu[0]).contiguous()
            outer = (X[:, iu[0]] * X[:, iu[1]]).contiguous() if packed else torch.empty(0)
            self._cache[key] = (X, Xy, outer, lower)
        return self._cache[key]

    def reference(self, l2: float) -> LogisticReference:
        """The shared start point and preconditioner for λ = ``l2`` (:class:`LogisticReference`).

        Computed once on the CPU and cached, so it is the same whatever device trains: a pure
        function of (X, y, λ) and of this code.
        """
        key = float(l2)
        if key not in self._references:
            cpu = torch.device("cpu")
            weights = torch.full((1, self.num_points), REFERENCE_WEIGHT, dtype=torch.float64)
            w0, _ = _solve_batch(
                self,
                weights,
                None,
                l2=key,
                tol=REFERENCE_TOL,
                max_iter=200,
                device=cpu,
                stats=NewtonStats(),
            )
            X, Xy, _, _ = self.tensors(cpu, False)
            s = torch.sigmoid(-(w0 @ Xy.T))[0]
            data = (X.T * (s * (1.0 - s) / self.num_points)) @ X
            curvature, basis = torch.linalg.eigh(data)
            self._references[key] = LogisticReference(
                w0=w0[0].numpy().copy(),
                basis=basis.numpy().copy(),
                curvature=curvature.clamp(min=0.0).numpy().copy(),
            )
        return self._references[key]


#: float64 unit roundoff u.
UNIT_ROUNDOFF = 2.0**-53


def _gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u), the classical bound on relative rounding of an n-term sum."""
    nu = n * UNIT_ROUNDOFF
    return nu / (1.0 - nu)


def gradient_rounding_slack(
    n: int, d: int, max_row_norm: float, l2: float, weight_norms: Any, grad_norms: Any
) -> Any:
    """Worst-case float64 error of a computed ‖∇L_S(w)‖₂ (standard rounding model), doubled.

    With R = max_i ‖x̃_i‖₂, the data term (1/N)Σ m_i σ_i y_i x̃_i has error ≤ R·(γ_N + δσ) where
    δσ ≤ γ_{d}·‖w‖·R/4 + 4u bounds the sigmoid's error (margin rounding times σ' ≤ 1/4, plus a few
    ulps for the sigmoid itself); the λw term adds u·λ‖w‖ and the norm itself γ_{d+2}·‖g‖.
    It grows with N (γ_N ≈ N·u): at N = 60,000 it is about 1e-11·R.
    """
    dsig = _gamma(d) * weight_norms * max_row_norm / 4.0 + 4.0 * UNIT_ROUNDOFF
    slack = (
        max_row_norm * (_gamma(n + 2) + dsig)
        + UNIT_ROUNDOFF * l2 * weight_norms
        + _gamma(d + 2) * grad_norms
    )
    return 2.0 * slack


def weighted_optimum(design: LogisticDesign, weight: float, l2: float, tol: float) -> np.ndarray:
    """argmin_w (weight/N) Σ_i log(1 + exp(−y_i wᵀx̃_i)) + (λ/2)‖w‖² by exact damped Newton on
    the CPU to ‖∇‖ ≤ ``tol``: the expected objective of a subset drawn with p = ``weight`` (the
    centre of influence-function claims). A pure function of (design, weight, λ, tol)."""
    weights = torch.full((1, design.num_points), float(weight), dtype=torch.float64)
    w, _ = _solve_batch(
        design,
        weights,
        None,
        l2=float(l2),
        tol=float(tol),
        max_iter=200,
        device=torch.device("cpu"),
        stats=NewtonStats(),
    )
    return w[0].numpy().copy()


def _logistic_parts(
    X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, m: torch.Tensor, *, l2: float, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss (K,), gradient (K, d) and curvature weights (K, N) at w for masks m (K, N) in {0,1}."""
    z = y * (w @ X.T)  # (K, N) margins y_i wᵀx̃_i
    loss = (m * torch.nn.functional.softplus(-z)).sum(1) / n + 0.5 * l2 * (w * w).sum(1)
    s = torch.sigmoid(-z)  # −dℓ/dz
    grad = -((m * s * y) @ X) / n + l2 * w
    curv = m * s * (1.0 - s) / n
    return loss, grad, curv


def _gradient(
    XyT: torch.Tensor, Xy: torch.Tensor, w: torch.Tensor, m: torch.Tensor, *, l2: float, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (K, d) and σ(−margin) (K, N) at w (K, d) for point weights m (K, N)."""
    z = torch.mm(w, XyT)  # (K, N) margins y_i wᵀx̃_i
    s = torch.sigmoid(z.neg_())  # −dℓ/dz
    grad = torch.mm(s.mul_(m), Xy)  # Σ_i m_i σ_i y_i x̃_i (s now holds m·σ)
    return torch.add(l2 * w, grad, alpha=-1.0 / n), s


def _loss(
    XyT: torch.Tensor, w: torch.Tensor, m: torch.Tensor, *, l2: float, n: int
) -> torch.Tensor:
    """Loss (K,) at w (K, d) for point weights m (K, N)."""
    # log(1 + exp(−z)) = −log σ(z), accurate for every margin z
    nll = torch.nn.functional.logsigmoid(torch.mm(w, XyT))
    return torch.linalg.vecdot(m, nll) / (-n) + 0.5 * l2 * (w * w).sum(1)


def _newton_directions(
    X: torch.Tensor,
    XyT: torch.Tensor,
    outer: torch.Tensor,
    lower: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    grad: torch.Tensor,
    *,
    l2: float,
    n: int,
    packed: bool,
    stats: NewtonStats,
) -> torch.Tensor:
    """Exact Newton directions −H⁻¹∇ (k, d) by Cholesky, H = X̃ᵀ diag(m σ(1−σ)/N) X̃ + λI."""
    k, d = grad.shape
    s = torch.sigmoid(torch.mm(w, XyT))
    curv = m * s * (1.0 - s) / n
    if packed:
        stats.hessian_paths.add("packed")
        hp = curv @ outer  # (k, d(d+1)/2): one GEMM for every model's Hessian triangle
        H = torch.zeros((k, d * d), dtype=grad.dtype, device=grad.device)
        H.index_copy_(1, lower, hp)  # only the lower triangle: the factorisation reads no more
        H = H.reshape(k, d, d)
    else:
        stats.hessian_paths.add("bmm")
        chunk = max(1, BMM_TEMP_MAX_BYTES // (8 * n * d))
        H = torch.cat([torch.matmul(X.T * c[:, None, :], X) for c in curv.split(chunk)])
    H.diagonal(dim1=1, dim2=2).add_(l2)
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):  # not expected (H ⪰ λI), but never return garbage
        H = H.tril() + H.tril(-1).mT
        return torch.linalg.solve(H, -grad)
    return torch.cholesky_solve(-grad.unsqueeze(-1), L).squeeze(-1)


def _solve_batch(
    design: LogisticDesign,
    m: torch.Tensor,
    ref: LogisticReference | None,
    *,
    l2: float,
    tol: float,
    max_iter: int,
    device: torch.device,
    stats: NewtonStats,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise each row's objective; returns weights (K, d) and achieved gradient norms (K,).

    ``m`` (K, N) are the point weights (the 0/1 mask). With ``ref`` every model starts at ref.w0
    and steps with the frozen preconditioner until it switches to exact Newton; without it every
    model starts at 0 and takes exact Newton steps throughout.
    """
    n, d = design.num_points, design.dim
    k_all = m.shape[0]
    # The packed GEMM amortises over many models; a lone model is faster with a plain matmul.
    packed_ok = design.packed_bytes() <= OUTER_DESIGN_MAX_BYTES
    X, Xy, outer, lower = design.tensors(device, packed_ok and k_all >= 8)
    XyT = Xy.T
    w_out = torch.zeros((k_all, d), dtype=torch.float64, device=device)
    g_out = torch.full((k_all,), np.inf, dtype=torch.float64, device=device)
    if k_all == 0:
        return w_out, g_out
    ones = torch.ones(k_all, dtype=torch.bool, device=device)
    if ref is None:
        w = torch.zeros((k_all, d), dtype=torch.float64, device=device)
        newton = ones
        basis = inv_eig = torch.empty(0)
    else:
        basis = torch.from_numpy(ref.basis).to(device)
        curvature = torch.from_numpy(ref.curvature).to(device)
        q = m.mean(1, keepdim=True)  # |S| / N
        # start at (q/ρ)·w0: w0 itself for a typical subset, exactly 0 (the optimum) for S = ∅
        w = (q / REFERENCE_WEIGHT) * torch.from_numpy(ref.w0).to(device)
        newton = ~ones
        # per model: eigenvalues q·a + λ of its frozen preconditioner
        inv_eig = 1.0 / (q * curvature + l2)
    active = torch.arange(k_all, device=device)
    grad, _ = _gradient(XyT, Xy, w, m, l2=l2, n=n)
    stats.model_grad_evals += k_all
    gnorm = torch.linalg.vector_norm(grad, dim=1)
    steps = torch.zeros(k_all, dtype=torch.long, device=device)
    fresh = ones  # at a newly accepted point
    all_fresh = True
    direction = torch.zeros_like(w)
    slope = torch.zeros(k_all, dtype=torch.float64, device=device)
    t = torch.ones(k_all, dtype=torch.float64, device=device)
    halvings = torch.zeros(k_all, dtype=torch.long, device=device)
    while True:
        # A model stops at its first accepted iterate meeting the tolerance, or after max_iter
        # accepted steps; it is then removed, so its stopping rule ignores its batch mates.
        done = fresh & ((gnorm <= tol) | (steps >= max_iter))
        if bool(done.any()):
            w_out[active[done]] = w[done]
            g_out[active[done]] = gnorm[done]
            keep = ~done
            active, w, m, grad, gnorm, steps, newton = (
                v[keep] for v in (active, w, m, grad, gnorm, steps, newton)
            )
            fresh, direction, slope, t, halvings = (
                v[keep] for v in (fresh, direction, slope, t, halvings)
            )
            if ref is not None:
                inv_eig = inv_eig[keep]
        ka = int(active.numel())
        if ka == 0:
            break
        if all_fresh or bool(fresh.any()):
            if ref is not None:
                # frozen preconditioner: −V diag(1/(q·a + λ)) Vᵀ ∇, two small GEMMs
                frozen = torch.mm(torch.mm(grad, basis).mul_(inv_eig), basis.T).neg_()
                direction = frozen if all_fresh else torch.where(fresh[:, None], frozen, direction)
            idx = (fresh & newton).nonzero().squeeze(1)
            if idx.numel() > 0:
                stats.model_newton_steps += int(idx.numel())
                direction[idx] = _newton_directions(
                    X,
                    XyT,
                    outer,
                    lower,
                    w[idx],
                    m[idx],
                    grad[idx],
                    l2=l2,
                    n=n,
                    packed=packed_ok and ka >= 8 and idx.numel() >= 8,
                    stats=stats,
                )
            new_slope = torch.linalg.vecdot(grad, direction)
            if all_fresh:
                slope = new_slope
                t = torch.ones(ka, dtype=torch.float64, device=device)
                halvings = torch.zeros(ka, dtype=torch.long, device=device)
            else:
                slope = torch.where(fresh, new_slope, slope)
                t = torch.where(fresh, 1.0, t)
                halvings = torch.where(fresh, 0, halvings)
        # One trial point per model; backtracking models retry with half the step.
        w_new = torch.addcmul(w, t[:, None], direction)
        grad_new, _ = _gradient(XyT, Xy, w_new, m, l2=l2, n=n)
        # Armijo: L(w + t·p) ≤ L(w) + c·t·∇L(w)ᵀp with c = 1e-4. By convexity
        # L(w + t·p) ≤ L(w) + t·∇L(w + t·p)ᵀp, so ∇L(w + t·p)ᵀp ≤ c·∇L(w)ᵀp already implies it and
        # the losses are compared only where that test fails. Near the optimum (squared decrement
        # < 1e-12) the step is taken untested: loss differences there are below rounding.
        ok = (
            (torch.linalg.vecdot(grad_new, direction) <= ARMIJO_C * slope)
            | (-slope < UNTESTED_DECREMENT)
            | (halvings >= MAX_HALVINGS)
        )
        undecided = (~ok).nonzero().squeeze(1)
        if undecided.numel() > 0:
            mu = m[undecided]
            before = _loss(XyT, w[undecided], mu, l2=l2, n=n)
            after = _loss(XyT, w_new[undecided], mu, l2=l2, n=n)
            tu, su = t[undecided], slope[undecided]
            ok[undecided] = after <= before + ARMIJO_C * tu * su
            stats.model_loss_evals += 2 * int(undecided.numel())  # before and after
        n_ok = int(ok.sum())
        stats.model_grad_evals += n_ok
        stats.model_iterations += n_ok
        stats.model_rejected_trials += ka - n_ok
        gnorm_new = torch.linalg.vector_norm(grad_new, dim=1)
        if ref is not None:
            # leave the frozen preconditioner for exact Newton when it makes poor progress
            slow = ok & ~newton & ((t < 1.0) | (gnorm_new > SWITCH_RATIO * gnorm))
            newton = newton | slow
        steps = steps + ok
        all_fresh = n_ok == ka
        if all_fresh:
            w, grad, gnorm = w_new, grad_new, gnorm_new
        else:
            w = torch.where(ok[:, None], w_new, w)
            grad = torch.where(ok[:, None], grad_new, grad)
            gnorm = torch.where(ok, gnorm_new, gnorm)
            t = torch.where(ok, t, 0.5 * t)
            halvings = halvings + ~ok
        fresh = ok
    return w_out, g_out


def train_logreg(
    design: LogisticDesign,
    masks: np.ndarray,
    l2: float,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    stats: NewtonStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train one logistic regression per row of ``masks`` to ‖∇L_S‖₂ ≤ ``tol``.

    Returns (weights (K, d+1) float64 with the bias last, achieved gradient norms (K,)). Each model
    is trained independently of the others in its batch up to floating-point rounding, and the
    returned norms are the ones actually achieved; a model that does not reach ``tol`` within
    ``max_iter`` accepted steps keeps its last iterate and reports its (larger) norm.
    """
    _check_masks(masks, design.num_points)
    _check_batch_size(batch_size)
    if not (l2 > 0 and np.isfinite(l2)):
        raise ValueError(f"l2 must be a positive finite number (strong convexity), got {l2!r}")
    if not (tol > 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    dev = resolve_device(device)
    stats = stats if stats is not None else NewtonStats()
    k = masks.shape[0]
    weights = np.zeros((k, design.dim))
    norms = np.zeros(k)
    with deterministic_algorithms(dev), torch.no_grad():
        ref = design.reference(l2) if k > 0 else None
        for lo in range(0, k, batch_size):
            hi = min(k, lo + batch_size)
            m = torch.from_numpy(masks[lo:hi]).to(device=dev, dtype=torch.float64)
            w, g = _solve_batch(
                design, m, ref, l2=l2, tol=tol, max_iter=max_iter, device=dev, stats=stats
            )
            weights[lo:hi], norms[lo:hi] = w.cpu().numpy(), g.cpu().numpy()
            if progress is not None:
                progress(hi - lo)
    return weights, norms


def logreg_gradient_norm(
    design: LogisticDesign, weights: np.ndarray, masks: np.ndarray, l2: float
) -> np.ndarray:
    """‖∇L_S(w)‖₂ for each row of ``weights`` (K, d+1) and ``masks`` (K, N), computed on the CPU.

    With λ-strong convexity this certifies ‖w − w*_S‖₂ ≤ ‖∇L_S(w)‖₂ / λ.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    masks = np.atleast_2d(masks)
    _check_masks(masks, design.num_points)
    if weights.shape != (masks.shape[0], design.dim):
        raise ValueError(f"weights must have shape ({masks.shape[0]}, {design.dim})")
    X = torch.from_numpy(design.X)
    y = torch.from_numpy(design.y)
    m = torch.from_numpy(masks.astype(np.float64))
    _, grad, _ = _logistic_parts(X, y, torch.from_numpy(weights), m, l2=l2, n=design.num_points)
    return torch.linalg.vector_norm(grad, dim=1).numpy()


def logreg_flops(n: int, d: int, stats: NewtonStats, packed: bool | None = None) -> float:
    """Analytic floating-point operation count of the work recorded in ``stats``.

    Counts only the matmul terms: per gradient evaluation (accepted or rejected trial) the margins
    and the gradient matvecs, 2·N·d each; per loss-only evaluation the margins, 2·N·d; per
    accepted step the frozen preconditioner's two (d, d) matvecs, 4·d²; per exact Newton step in
    addition the margins for the curvature (2·N·d), the Hessian (2·N·d(d+1)/2 packed or 2·N·d²
    otherwise), the Cholesky factorisation (d³/3) and its two triangular solves (2·d²).
    Elementwise work (sigmoid, log-sigmoid, the line search's bookkeeping) is not counted.
    """
    if packed is None:
        packed = "bmm" not in stats.hessian_paths
    hess = 2.0 * n * d * (d + 1) / 2 if packed else 2.0 * n * d * d
    per_newton = 2.0 * n * d + hess + d**3 / 3.0 + 2.0 * d * d
    return (
        stats.model_iterations * 4.0 * d * d
        + stats.model_newton_steps * per_newton
        + (stats.model_grad_evals + stats.model_rejected_trials) * 4.0 * n * d
        + stats.model_loss_evals * 2.0 * n * d
    )


# --------------------------------------------------------------------------------------------
# Small MLP by batched full-batch gradient descent
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPRecipe:
    """A one-hidden-layer tanh MLP, d → hidden → 1, trained by full-batch GD with momentum.

    Objective per model: (1/N) Σ_i mask_i · log(1 + exp(−y_i · out(x_i))) + (λ/2)‖θ‖² over all
    parameters θ. Initialisation: W1 ~ N(0, 1/d), W2 ~ N(0, 1/hidden), biases 0, drawn on the CPU
    from ``torch.Generator().manual_seed(init_seed(seed))`` in the order W1, W2.
    """

    hidden: int = 32
    steps: int = 300
    lr: float = 0.5
    momentum: float = 0.9
    l2: float = 1e-3

    def spec(self) -> dict[str, object]:
        """Canonical description for the task spec."""
        return {
            "model": f"mlp(d->{self.hidden} tanh->1)",
            "optimizer": "full-batch gradient descent, heavy-ball momentum",
            "steps": self.steps,
            "lr": self.lr,
            "momentum": self.momentum,
            "l2": self.l2,
            "init": "W1~N(0,1/d), W2~N(0,1/hidden), biases 0; torch.Generator(cpu) "
            "seeded with init_seed(seed) = first 8 bytes LE of SHA-256('mlp-init'||seed u64 LE) "
            "masked to 63 bits",
        }


def init_seed(seed: int) -> int:
    """The 63-bit torch generator seed derived from a training seed (domain-separated)."""
    digest = hashlib.sha256(b"mlp-init" + int(seed).to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _mlp_init(seeds: np.ndarray, d: int, hidden: int) -> list[torch.Tensor]:
    k = len(seeds)
    W1 = torch.empty((k, d, hidden), dtype=torch.float64)
    W2 = torch.empty((k, hidden, 1), dtype=torch.float64)
    for i, s in enumerate(seeds):
        gen = torch.Generator(device="cpu").manual_seed(init_seed(int(s)))
        W1[i] = torch.randn((d, hidden), generator=gen, dtype=torch.float64) / np.sqrt(d)
        W2[i] = torch.randn((hidden, 1), generator=gen, dtype=torch.float64) / np.sqrt(hidden)
    b1 = torch.zeros((k, 1, hidden), dtype=torch.float64)
    b2 = torch.zeros((k, 1, 1), dtype=torch.float64)
    return [W1, b1, W2, b2]


def _mlp_forward(params: list[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    W1, b1, W2, b2 = params
    h = torch.tanh(torch.matmul(X, W1) + b1)  # (K, N, hidden)
    return (torch.bmm(h, W2) + b2).squeeze(-1)  # (K, N)


def _mlp_batch(
    X: torch.Tensor,
    y: torch.Tensor,
    masks: np.ndarray,
    seeds: np.ndarray,
    *,
    recipe: MLPRecipe,
    device: torch.device,
) -> tuple[list[np.ndarray], np.ndarray]:
    n, d = X.shape
    params = [p.to(device).requires_grad_(True) for p in _mlp_init(seeds, d, recipe.hidden)]
    velocity = [torch.zeros_like(p) for p in params]
    m = torch.from_numpy(masks).to(device=device, dtype=torch.float64)

    def objective() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = _mlp_forward(params, X)
        data = (m * torch.nn.functional.softplus(-y * out)).sum(1) / n
        reg = sum((p * p).flatten(1).sum(1) for p in params)
        per_model = data + 0.5 * recipe.l2 * reg
        # Models are independent, so the gradient of the sum is each model's own gradient.
        grads = torch.autograd.grad(per_model.sum(), params)
        return per_model, list(grads)

    for _ in range(recipe.steps):
        _, grads = objective()
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads, strict=True):
                v.mul_(recipe.momentum).add_(g)
                p.sub_(recipe.lr * v)
    _, grads = objective()
    gnorm = torch.sqrt(sum((g * g).flatten(1).sum(1) for g in grads))
    return [p.detach().cpu().numpy() for p in params], gnorm.detach().cpu().numpy()


def train_mlp(
    X: np.ndarray,
    y: np.ndarray,
    masks: np.ndarray,
    seeds: np.ndarray,
    *,
    recipe: MLPRecipe,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Train one MLP per (mask, seed) row; returns ([W1, b1, W2, b2] stacked over K, grad norms).

    The result for row k depends only on (masks[k], seeds[k]) up to floating-point rounding; the
    same seed gives the same initialisation on every device.
    """
    X = np.asarray(X, dtype=np.float64)
    _check_masks(masks, X.shape[0])
    _check_batch_size(batch_size)
    seeds = np.asarray(seeds)
    if seeds.shape != (masks.shape[0],):
        raise ValueError(f"seeds must have shape ({masks.shape[0]},), got {seeds.shape}")
    dev = resolve_device(device)
    Xt = torch.from_numpy(X).to(dev)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float64)).to(dev)
    chunks: list[list[np.ndarray]] = []
    norms: list[np.ndarray] = []
    with deterministic_algorithms(dev):
        for lo in range(0, masks.shape[0], batch_size):
            hi = min(masks.shape[0], lo + batch_size)
            p, g = _mlp_batch(Xt, yt, masks[lo:hi], seeds[lo:hi], recipe=recipe, device=dev)
            chunks.append(p)
            norms.append(g)
            if progress is not None:
                progress(hi - lo)
    if not chunks:
        empty = [np.zeros((0, *s)) for s in ((X.shape[1], recipe.hidden), (1, recipe.hidden))]
        empty += [np.zeros((0, recipe.hidden, 1)), np.zeros((0, 1, 1))]
        return empty, np.zeros(0)
    params = [np.concatenate([c[i] for c in chunks]) for i in range(4)]
    return params, np.concatenate(norms)


def mlp_forward_numpy(params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """Outputs (K, M) of K stacked MLPs on inputs X (M, d), computed on the CPU."""
    with torch.no_grad():
        tp = [torch.from_numpy(np.ascontiguousarray(p)) for p in params]
        return _mlp_forward(tp, torch.from_numpy(np.asarray(X, dtype=np.float64))).numpy()
