"""One batched trainer for both parties: K models per computation, CPU or CUDA.

A retraining is a pure function of (task, subset, seed). Everything here is float64, and all
randomness (the MLP's initialisation) is drawn on the CPU from the seed, so the device changes
only floating-point rounding, never the recipe.

Two recipes:

* :func:`train_logreg` — L2-regularised logistic regression

      L_S(w) = (1/N) Σ_i mask_i · log(1 + exp(−y_i wᵀx̃_i)) + (λ/2)‖w‖²,   x̃_i = (x_i, 1),

  where N is the *full* training-set size (not |S|) and the bias is regularised too, so L_S is
  λ-strongly convex for every subset, including the empty one (optimum w = 0). It is minimised by
  batched damped Newton (a (K, d+1, d+1) Hessian per iteration and one ``torch.linalg.solve``) until
  ‖∇L_S(w)‖₂ ≤ ``tol`` for each model separately. Each model stops at its own first iterate that
  meets the tolerance, so its stopping rule does not depend on the other models in its batch. The
  optimum is unique and seed-independent, and strong convexity gives ‖w − w*‖ ≤ ‖∇L_S(w)‖/λ.

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
# Logistic regression by batched Newton
# --------------------------------------------------------------------------------------------


@dataclass
class NewtonStats:
    """Work counters of one :func:`train_logreg` call (used to count FLOPs analytically)."""

    #: Newton iterations summed over models (one Hessian + solve each).
    model_iterations: int = 0
    #: Loss evaluations in the line search summed over models (one (N, d) matvec each).
    model_loss_evals: int = 0
    #: Gradient evaluations summed over models.
    model_grad_evals: int = 0
    #: How Hessians were formed: ``"packed"`` (one GEMM against packed outer products) or ``"bmm"``.
    hessian_paths: set[str] = field(default_factory=set)


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
        """(X, y, packed outer products or None, triangle index) on ``device`` (cached)."""
        key = f"{device}/{packed}"
        if key not in self._cache:
            X = torch.from_numpy(self.X).to(device)
            y = torch.from_numpy(self.y).to(device)
            d = self.dim
            iu = torch.triu_indices(d, d, device=device)
            # full (d, d) -> position in the packed triangle, for a deterministic gather
            pos = torch.empty((d, d), dtype=torch.long, device=device)
            idx = torch.arange(iu.shape[1], device=device)
            pos[iu[0], iu[1]] = idx
            pos[iu[1], iu[0]] = idx
            outer = (X[:, iu[0]] * X[:, iu[1]]).contiguous() if packed else torch.empty(0)
            self._cache[key] = (X, y, outer, pos.reshape(-1))
        return self._cache[key]


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


def _loss(
    X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, m: torch.Tensor, *, l2: float, n: int
) -> torch.Tensor:
    z = y * (w @ X.T)
    return (m * torch.nn.functional.softplus(-z)).sum(1) / n + 0.5 * l2 * (w * w).sum(1)


def _newton_batch(
    design: LogisticDesign,
    masks: np.ndarray,
    *,
    l2: float,
    tol: float,
    max_iter: int,
    device: torch.device,
    stats: NewtonStats,
) -> tuple[np.ndarray, np.ndarray]:
    """Damped Newton for one batch; returns weights (K, d+1) and gradient norms (K,)."""
    n, d = design.num_points, design.dim
    k_all = masks.shape[0]
    # The packed GEMM amortises over many models; a lone model is faster with a plain matmul.
    packed = k_all >= 8 and design.packed_bytes() <= OUTER_DESIGN_MAX_BYTES
    X, y, outer, pos = design.tensors(device, packed)
    stats.hessian_paths.add("packed" if packed else "bmm")
    eye = torch.eye(d, dtype=torch.float64, device=device)
    diag = pos.reshape(d, d).diagonal()

    w_out = torch.zeros((k_all, d), dtype=torch.float64, device=device)
    g_out = torch.full((k_all,), np.inf, dtype=torch.float64, device=device)
    m_all = torch.from_numpy(masks).to(device=device, dtype=torch.float64)
    active = torch.arange(k_all, device=device)
    w = w_out.clone()
    m = m_all
    for it in range(max_iter + 1):
        loss, grad, curv = _logistic_parts(X, y, w, m, l2=l2, n=n)
        stats.model_grad_evals += int(active.numel())
        gnorm = torch.linalg.vector_norm(grad, dim=1)
        # A model stops at its first iterate meeting the tolerance, or after max_iter iterations.
        done = gnorm <= tol if it < max_iter else torch.ones_like(gnorm, dtype=torch.bool)
        if bool(done.any()):
            w_out[active[done]] = w[done]
            g_out[active[done]] = gnorm[done]
            keep = ~done
            active, w, m = active[keep], w[keep], m[keep]
            loss, grad, curv = loss[keep], grad[keep], curv[keep]
        if active.numel() == 0:
            break
        ka = int(active.numel())
        stats.model_iterations += ka
        if packed:
            Hp = curv @ outer  # (ka, d(d+1)/2): one GEMM for every model's Hessian triangle
            Hp[:, diag] += l2
            H = torch.index_select(Hp, 1, pos).reshape(ka, d, d)
        else:
            # (chunk, d, N) scaled copies of Xᵀ, with chunks sized to bound that temporary
            chunk = max(1, BMM_TEMP_MAX_BYTES // (8 * n * d))
            H = torch.cat(
                [
                    torch.bmm(
                        X.T.expand(c.shape[0], d, n) * c[:, None, :], X.expand(c.shape[0], n, d)
                    )
                    for c in curv.split(chunk)
                ]
            )
            H = H + l2 * eye
        step = torch.linalg.solve(H, -grad)
        slope = (grad * step).sum(1)  # = −(Newton decrement)² < 0
        # Backtracking (Armijo, c = 1e-4) per model. Near the optimum (decrement² < 1e-12) the
        # full step is taken without a test, because loss differences there are below rounding.
        t = torch.ones(ka, dtype=torch.float64, device=device)
        need = -slope >= 1e-12
        for _ls in range(60):
            if not bool(need.any()):
                break
            idx = need.nonzero().squeeze(1)
            trial = _loss(X, y, w[idx] + t[idx, None] * step[idx], m[idx], l2=l2, n=n)
            stats.model_loss_evals += int(idx.numel())
            ok = trial <= loss[idx] + 1e-4 * t[idx] * slope[idx]
            t[idx[~ok]] *= 0.5
            need[idx[ok]] = False
        w = w + t[:, None] * step
    return w_out.cpu().numpy(), g_out.cpu().numpy()


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
    ``max_iter`` Newton iterations keeps its last iterate and reports its (larger) norm.
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
        for lo in range(0, k, batch_size):
            hi = min(k, lo + batch_size)
            weights[lo:hi], norms[lo:hi] = _newton_batch(
                design,
                masks[lo:hi],
                l2=l2,
                tol=tol,
                max_iter=max_iter,
                device=dev,
                stats=stats,
            )
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

    Counts only the O(N·d²) and O(d³) terms plus the O(N·d) matvecs: per Newton iteration the
    Hessian (2·N·d(d+1)/2 packed or 2·N·d² with bmm) and an LU solve (2/3·d³); per gradient or loss
    evaluation one (N, d) matvec (2·N·d) plus the gradient's transpose matvec (2·N·d).
    """
    if packed is None:
        packed = stats.hessian_paths == {"packed"}
    hess = 2.0 * n * d * (d + 1) / 2 if packed else 2.0 * n * d * d
    per_iter = hess + (2.0 / 3.0) * d**3 + 2.0 * d * d
    return (
        stats.model_iterations * per_iter
        + stats.model_grad_evals * 4.0 * n * d
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
