"""The exact synthetic task: a sparse low-degree polynomial in the p-biased Fourier basis.

For each target t, f_t(x) = Σ_T f̂_T φ_T(x) with φ_T(x) = Π_{i∈T} (x_i − μ)/σ, μ = 2p − 1,
σ² = 4p(1 − p). The coefficients are public: they are drawn from ``numpy.random.default_rng(seed)``
(PCG64) by the fixed procedure in :func:`_draw_target` ("v1"), and :meth:`SyntheticTask.data_bytes`
serialises every support and value so the task hash binds the actual function.

Per target: f̂_∅ = 0; degree 1 on min(n, 20) distinct coordinates; degree 2 on min(10, C(n, 2))
distinct pairs; degree 3 on min(5, C(n, 3)) distinct triples. Each level is rescaled so that
B_1 = 0.80, B_2 = 0.15 and B_3 = 0.05 (Var f = 1, most weight at degree 1, as datamodels find on
real data). When n is so small that a level has no terms (n = 1: no pairs; n ≤ 2: no triples) that
level's weight is 0 rather than being moved elsewhere, so Var f < 1 there.

Because every Fourier coefficient is known, the optimal datamodel (c*, a*), the residual B_{≥2},
the exact err(c, a) of any datamodel and the noise stability are all available in closed form
(:meth:`SyntheticTask.truth`); this is the ground truth the protocol's tests check against.

Training noise (``noise=s``): the output of a "training run" is f̄(x) + s·u with u uniform on
[−√3, √3] (so Var = s²), derived from SHAKE-256 of (training seed, subset bits): a pure function of
(subset, seed), mean zero over seeds for every subset. Then the seed-averaged output f̄ is the
polynomial; the noise variance s² adds to mse(c*, a*) and shows up in the protocol's residual
estimate B̂_{≥2} (it behaves like high-degree weight no datamodel can explain). With noise = 0 the
seed is ignored.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.tasks.base import Progress, RetrainResult, Task

#: Level weights B_1, B_2, B_3 the coefficients are scaled to (B_0 = 0: f is centred).
LEVEL_WEIGHTS = (0.80, 0.15, 0.05)
#: Number of terms per level (capped by how many distinct index sets exist).
TERMS_PER_LEVEL = (20, 10, 5)
COEFFICIENT_GENERATOR = "numpy.default_rng/PCG64 v1"
TOLERANCE = 1e-9
#: Relative slack added to the exact bound b to absorb floating-point roundoff in evaluation.
BOUND_SLACK = 1e-12

_PARAM_DOCS = {
    "n": "number of training points N, integer in [1, 1000000] (default 500)",
    "z": "number of targets Z, integer in [1, 1000] (default 1)",
    "p": "inclusion probability, float in (0, 1) (default 0.5)",
    "seed": "coefficient seed, integer ≥ 0 (default 0)",
    "noise": "training-noise standard deviation s ≥ 0 (default 0.0)",
}
_MAX_N = 1_000_000
_MAX_Z = 1000
_ENUMERATE_LIMIT = 4096
_CHUNK_ELEMS = 4_000_000


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"synthetic task parameter {key}={value!r}: {_PARAM_DOCS[key]}") from None


def _parse_float(key: str, value: str) -> float:
    try:
        out = float(value.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"synthetic task parameter {key}={value!r}: {_PARAM_DOCS[key]}") from None
    if not math.isfinite(out):
        raise ValueError(f"synthetic task parameter {key}={value!r}: {_PARAM_DOCS[key]}")
    return out


def _distinct_sets(rng: np.random.Generator, n: int, k: int, count: int) -> np.ndarray:
    """``count`` distinct sorted k-subsets of range(n), as (count, k) int64 (v1 procedure)."""
    total = math.comb(n, k)
    count = min(count, total)
    if count == 0:
        return np.zeros((0, k), dtype=np.int64)
    if total <= _ENUMERATE_LIMIT:
        combos = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
        pick = rng.choice(total, size=count, replace=False)
        return combos[pick]
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        s = tuple(sorted(int(v) for v in rng.choice(n, size=k, replace=False)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return np.array(out, dtype=np.int64)


def _scaled(values: np.ndarray, weight: float) -> np.ndarray:
    norm2 = float(np.dot(values, values))
    if values.size == 0 or norm2 == 0.0:
        return np.zeros_like(values)
    return values * math.sqrt(weight / norm2)


def _draw_target(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One target's terms, level 1..3: (supports (count, k) int64, values (count,) float64)."""
    levels = []
    for k, (count, weight) in enumerate(zip(TERMS_PER_LEVEL, LEVEL_WEIGHTS, strict=True), start=1):
        if k == 1:
            m = min(n, count)
            supports = np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)[:, None]
        else:
            supports = _distinct_sets(rng, n, k, count)
        values = _scaled(rng.standard_normal(supports.shape[0]), weight)
        levels.append((supports, values))
    return levels


@dataclass(frozen=True)
class SyntheticTruth:
    """Closed-form ground truth for a synthetic task (all arrays per target).

    ``intercept`` (Z,) and ``coefficients`` (Z, n) are the optimal datamodel (c*, a*):
    a*_i = f̂({i})/σ and c* = f̂(∅) − μ Σ a*_i. ``level_weights`` (Z, 4) holds B_0..B_3 of the
    seed-averaged function f̄. ``residual`` (Z,) = mse(c*, a*) = B_2 + B_3 + s² and ``variance`` (Z,)
    = E[f²] = Σ B_k + s² (f̂(∅) = 0, so this is also Var f).
    """

    p: float
    mu: float
    sigma: float
    noise: float
    fhat_empty: np.ndarray
    intercept: np.ndarray
    coefficients: np.ndarray
    level_weights: np.ndarray
    residual: np.ndarray
    variance: np.ndarray

    def _check(self, intercepts: np.ndarray, coefficients: np.ndarray) -> tuple[np.ndarray, ...]:
        z, n = self.coefficients.shape
        c = np.asarray(intercepts, dtype=np.float64).reshape(-1)
        a = np.asarray(coefficients, dtype=np.float64)
        if a.ndim == 1 and z == 1:
            a = a[None, :]
        if c.shape != (z,) or a.shape != (z, n):
            raise ValueError(
                f"expected intercepts ({z},) and coefficients ({z}, {n}), got "
                f"{np.shape(intercepts)} and {np.shape(coefficients)}"
            )
        return c, a

    def err(self, intercepts: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Exact err(c, a) = (f̂(∅) − c − μ Σ a_i)² + σ² ‖a − a*‖², per target (Z,)."""
        c, a = self._check(intercepts, coefficients)
        bias = self.fhat_empty - c - self.mu * a.sum(axis=1)
        diff = a - self.coefficients
        return bias**2 + self.sigma**2 * np.einsum("ij,ij->i", diff, diff)

    def mse(self, intercepts: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Exact mse(c, a) = E[(f − c − ⟨a, x⟩)²] over x ∼ B_p and seeds: B_{≥2} + s² + err."""
        return self.residual + self.err(intercepts, coefficients)

    def noise_stability(self, rho: float) -> np.ndarray:
        """h(ρ) = E[f(x) f(x′)] = Σ_k ρ^k B_k for ρ-correlated x, x′ with independent seeds.

        Training noise is independent across the two seeds, so it contributes only at ρ = 1, read as
        E[f²] of a single run (then h(1) = ``variance``).
        """
        rho = float(rho)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must lie in [0, 1], got {rho}")
        powers = rho ** np.arange(self.level_weights.shape[1])
        out = self.level_weights @ powers
        if rho == 1.0:
            out = out + self.noise**2
        return out


class SyntheticTask(Task):
    """A task whose f is a known sparse polynomial of degree ≤ 3 (see the module docstring).

    Retraining is exact and bitwise deterministic: row k of the result depends only on
    (masks[k], seeds[k]), never on the batch it was evaluated in.
    """

    name = "synthetic"

    def __init__(
        self,
        n: int = 500,
        z: int = 1,
        p: float = 0.5,
        seed: int = 0,
        noise: float = 0.0,
        *,
        selector: str | None = None,
    ) -> None:
        n, z, seed = int(n), int(z), int(seed)
        p, noise = float(p), float(noise)
        problems = []
        if not 1 <= n <= _MAX_N:
            problems.append(f"n={n}: {_PARAM_DOCS['n']}")
        if not 1 <= z <= _MAX_Z:
            problems.append(f"z={z}: {_PARAM_DOCS['z']}")
        if not (0.0 < p < 1.0):
            problems.append(f"p={p}: {_PARAM_DOCS['p']}")
        if not 0 <= seed < 2**64:
            problems.append(f"seed={seed}: {_PARAM_DOCS['seed']} and < 2**64")
        if not (math.isfinite(noise) and noise >= 0.0):
            problems.append(f"noise={noise}: {_PARAM_DOCS['noise']}")
        if problems:
            raise ValueError("invalid synthetic task: " + "; ".join(problems))
        if selector is None:
            selector = f"synthetic:n={n},z={z},p={p!r},seed={seed},noise={noise!r}"
        super().__init__(selector)
        self.n, self.z, self._p, self.seed, self.noise = n, z, p, seed, noise
        self.mu = 2.0 * p - 1.0
        self.sigma = math.sqrt(4.0 * p * (1.0 - p))
        self._hi = (1.0 - self.mu) / self.sigma  # φ_{i} when x_i = +1
        self._lo = (-1.0 - self.mu) / self.sigma  # φ_{i} when x_i = −1
        rng = np.random.default_rng(seed)
        terms = [_draw_target(rng, n) for _ in range(z)]
        #: supports[k-1]: (z, count_k, k) int64; values[k-1]: (z, count_k) float64.
        self.supports = [np.stack([t[k][0] for t in terms]) for k in range(3)]
        self.values = [np.stack([t[k][1] for t in terms]) for k in range(3)]
        self.fhat_empty = np.zeros(z)
        m = max(abs(self._hi), abs(self._lo))
        per_target = np.abs(self.fhat_empty) + sum(
            np.abs(v).sum(axis=1) * m ** (k + 1) for k, v in enumerate(self.values)
        )
        exact = float(per_target.max()) + noise * math.sqrt(3.0)
        self._bound = exact * (1.0 + BOUND_SLACK)
        self._cols = np.unique(np.concatenate([s.reshape(-1) for s in self.supports]))
        self._local = [np.searchsorted(self._cols, s) for s in self.supports]

    @classmethod
    def from_params(cls, selector: str, params: dict[str, str]) -> SyntheticTask:
        """Build from selector parameters (strings); ``ValueError`` lists valid keys on error."""
        unknown = sorted(set(params) - set(_PARAM_DOCS))
        if unknown:
            valid = "; ".join(f"{k}: {v}" for k, v in _PARAM_DOCS.items())
            raise ValueError(
                f"unknown synthetic task parameter(s) {', '.join(unknown)}; valid keys: {valid}"
            )
        kwargs: dict[str, Any] = {}
        for key in ("n", "z", "seed"):
            if key in params:
                kwargs[key] = _parse_int(key, params[key])
        for key in ("p", "noise"):
            if key in params:
                kwargs[key] = _parse_float(key, params[key])
        return cls(selector=selector, **kwargs)

    # -- Task interface -------------------------------------------------------------------------

    @property
    def num_train_points(self) -> int:
        """N = n."""
        return self.n

    @property
    def num_targets(self) -> int:
        """Z = z."""
        return self.z

    @property
    def p(self) -> float:
        """The inclusion probability p."""
        return self._p

    @property
    def output_bound(self) -> float:
        """b = max_t Σ_T |f̂_T| m^{|T|} + s√3, m = max |φ_i|, times (1 + 1e-12) for roundoff."""
        return self._bound

    @property
    def tolerance(self) -> float:
        """τ = 1e-9: evaluation is exact up to float roundoff (and bitwise reproducible here)."""
        return TOLERANCE

    @property
    def bitwise_deterministic(self) -> bool:
        """True: the same (subset, seed) always gives the same bits."""
        return True

    def spec(self) -> dict[str, Any]:
        """Canonical description; the coefficients themselves are bound through ``data_bytes``."""
        return {
            "name": self.name,
            "n": self.n,
            "z": self.z,
            "p": self._p,
            "seed": self.seed,
            "noise": self.noise,
            "coefficient_generator": COEFFICIENT_GENERATOR,
            "b": self._bound,
            "tau": TOLERANCE,
        }

    def data_bytes(self) -> bytes:
        """Every coefficient: per target, f̂(∅) then per level k = 1..3 a u32 LE term count, the
        supports as u32 LE (count × k) and the values as float64 LE."""
        parts = [b"attribution.v1/synthetic-coefficients\x00", self.z.to_bytes(4, "little")]
        for t in range(self.z):
            parts.append(np.float64(self.fhat_empty[t]).astype("<f8").tobytes())
            for k in range(3):
                sup, val = self.supports[k][t], self.values[k][t]
                parts.append(int(sup.shape[0]).to_bytes(4, "little"))
                parts.append(sup.astype("<u4").tobytes())
                parts.append(val.astype("<f8").tobytes())
        return b"".join(parts)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """The seed-averaged output f̄ on each row of ``masks`` (K, n) bool, as (K, Z) float64.

        Each row is computed by the same fixed sequence of elementwise float operations, so the
        result does not depend on K or on the other rows.
        """
        return self.evaluate_support(masks, columns_only=False)

    @property
    def support_columns(self) -> np.ndarray:
        """The sorted training-point indices f depends on (union of every target's supports).

        f̄(x) is a function of x restricted to these columns only, so a simulation may draw just
        these coordinates (they are independent of the others under B_p)."""
        return self._cols.copy()

    def evaluate_support(self, masks: np.ndarray, columns_only: bool = True) -> np.ndarray:
        """f̄ from masks restricted to :attr:`support_columns` ((K, |cols|) bool), as (K, Z).

        With ``columns_only=False`` the masks are full (K, n) rows (this is :meth:`evaluate`).
        Bitwise identical to :meth:`evaluate` on the full rows: the same elementwise operations.
        """
        K = masks.shape[0]
        if columns_only and masks.ndim == 2 and masks.shape[1] != len(self._cols):
            raise ValueError(f"expected {len(self._cols)} support columns, got {masks.shape[1]}")
        out = np.empty((K, self.z), dtype=np.float64)
        width = max(len(self._cols), self.z * 3)
        chunk = max(1, _CHUNK_ELEMS // width)
        for start in range(0, K, chunk):
            sub = masks[start : start + chunk]
            if not columns_only:
                sub = sub[:, self._cols]
            y = np.where(sub, self._hi, self._lo)  # (k, |cols|): φ_i(x) for every needed i
            acc = np.zeros((y.shape[0], self.z), dtype=np.float64)
            acc += self.fhat_empty
            for k in range(3):
                local, val = self._local[k], self.values[k]
                for j in range(val.shape[1]):
                    term = y[:, local[:, j, 0]]
                    for d in range(1, k + 1):
                        term = term * y[:, local[:, j, d]]
                    acc += term * val[:, j]
            out[start : start + chunk] = acc
        return out

    def noise_values(self, masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """u (K, Z) uniform on [−√3, √3]: SHAKE-256("synthetic-noise" ‖ seed u64 ‖ n u32 ‖ bits)."""
        K = masks.shape[0]
        packed = np.packbits(masks, axis=1)
        prefix = b"attribution.v1/synthetic-noise\x00"
        n_bytes = self.n.to_bytes(4, "little")
        raw = b"".join(
            hashlib.shake_256(
                prefix + int(seeds[k]).to_bytes(8, "little") + n_bytes + packed[k].tobytes()
            ).digest(8 * self.z)
            for k in range(K)
        )
        words = np.frombuffer(raw, dtype="<u8").reshape(K, self.z)
        unit = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform on [0, 1)
        return math.sqrt(3.0) * (2.0 * unit - 1.0)

    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        """f(x, seed) = f̄(x) (+ s·u(x, seed) when noise > 0), with |f| ≤ b guaranteed.

        ``weights_digests[k]`` = SHA-256("synthetic-weights" ‖ row k's f-values as float64 LE):
        there are no weights, so the digest stands for the "trained model" bit for bit.
        """
        masks = np.asarray(masks)
        seeds = np.asarray(seeds)
        self.validate_inputs(masks, seeds)
        if masks.shape[0] and seeds.dtype.kind not in "iu":
            raise ValueError(f"seeds must be integers, got dtype {seeds.dtype}")
        if seeds.dtype.kind == "i" and np.any(seeds < 0):
            raise ValueError("seeds must be non-negative")
        f = self.evaluate(masks)
        if self.noise > 0.0 and masks.shape[0]:
            f = f + self.noise * self.noise_values(masks, seeds)
        f = np.ascontiguousarray(f, dtype="<f8")
        digests = [hashlib.sha256(b"synthetic-weights" + row.tobytes()).digest() for row in f]
        if progress is not None and masks.shape[0]:
            progress(int(masks.shape[0]))
        return RetrainResult(f=f, weights_digests=digests, grad_norms=None)

    # -- Closed-form truth ------------------------------------------------------------------------

    def level_weights(self) -> np.ndarray:
        """B_0..B_3 of f̄ per target, (Z, 4), computed from the actual coefficients."""
        out = np.zeros((self.z, 4))
        out[:, 0] = self.fhat_empty**2
        for k, v in enumerate(self.values):
            out[:, k + 1] = (v**2).sum(axis=1)
        return out

    def truth(self) -> SyntheticTruth:
        """Closed-form optimal datamodel and Fourier weights (a dense (Z, n) array is allocated)."""
        coef = np.zeros((self.z, self.n))
        rows = np.repeat(np.arange(self.z), self.supports[0].shape[1])
        coef[rows, self.supports[0][:, :, 0].reshape(-1)] = self.values[0].reshape(-1) / self.sigma
        intercept = self.fhat_empty - self.mu * coef.sum(axis=1)
        lw = self.level_weights()
        return SyntheticTruth(
            p=self._p,
            mu=self.mu,
            sigma=self.sigma,
            noise=self.noise,
            fhat_empty=self.fhat_empty.copy(),
            intercept=intercept,
            coefficients=coef,
            level_weights=lw,
            residual=lw[:, 2:].sum(axis=1) + self.noise**2,
            variance=lw.sum(axis=1) + self.noise**2,
        )

    def err(self, intercepts: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Exact err(c, a) per target; see :meth:`SyntheticTruth.err`."""
        return self.truth().err(intercepts, coefficients)

    def mse(self, intercepts: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Exact mse(c, a) per target; see :meth:`SyntheticTruth.mse`."""
        return self.truth().mse(intercepts, coefficients)

    def noise_stability(self, rho: float) -> np.ndarray:
        """Exact h(ρ) per target; see :meth:`SyntheticTruth.noise_stability`."""
        return self.truth().noise_stability(rho)
