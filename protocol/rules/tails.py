"""The law of a committed claim g(x) = c + ⟨a, x⟩ under B_p, and the clipped claim ĝ.

For x ~ B_p the claim is g = m + W with m = c + μ·Σ a_i (exactly) and W = Σ a_i (x_i − μ), a sum
of independent terms each in an interval of width 2|a_i|. By Hoeffding's lemma W is
sub-Gaussian with variance proxy s² = Σ a_i²:

    P(|W| > w) ≤ 2 exp(−w² / (2 s²)).

The verifier knows g on every subset it sees, so it can clip it: ĝ = m + clip(W, −T, T). Then
|ĝ| ≤ |m| + T whatever N or ‖a‖₁ are, and the error e = ĝ − g = −sign(W)(|W| − T)₊ is small in
expectation (docs/guarantee.md §3):

    E|e| ≤ ∫_T^∞ P(|W| > w) dw          ≤ s √(2π) erfc(T/(s√2))                        =: e₁(T)
    E e² ≤ ∫_T^∞ 2(w − T) P(|W| > w) dw ≤ 4s² e^{−T²/(2s²)} − 4Ts √(π/2) erfc(T/(s√2)) =: e₂(T)

These two numbers are all the bounds need: the expectations they charge are over B_p, and each
member of a challenge tuple or of the MSE sample is marginally B_p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erfc

#: Search range for the clip level, in units of s.
_MAX_CLIP_IN_SD = 40.0


def excess_moments(scale: Any, clip: Any) -> tuple[np.ndarray, np.ndarray]:
    """(e₁, e₂): bounds on E|ĝ − g| and E(ĝ − g)² for clip level T and proxy scale s (arrays).

    s = 0 (a constant claim) gives (0, 0): nothing is ever clipped.
    """
    s = np.asarray(scale, dtype=np.float64)
    t = np.asarray(clip, dtype=np.float64)
    s, t = np.broadcast_arrays(s, t)
    safe = np.where(s > 0, s, 1.0)
    tail = erfc(t / (safe * math.sqrt(2.0)))
    e1 = safe * math.sqrt(2.0 * math.pi) * tail
    e2 = (
        4.0 * safe * safe * np.exp(-0.5 * (t / safe) ** 2)
        - 4.0 * t * safe * math.sqrt(0.5 * math.pi) * tail
    )
    zero = s <= 0
    return np.where(zero, 0.0, e1), np.where(zero, 0.0, np.maximum(e2, 0.0))


@dataclass(frozen=True)
class ClaimLaw:
    """The law of the claimed datamodel per target: g = mean + W, W sub-Gaussian with proxy
    ``scale``² (arrays of shape (Z,)). Derived from the claim alone, exactly."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, intercepts: Any, coefficients: Any, p: float) -> ClaimLaw:
        """The law of g = c + ⟨a, x⟩ for x ~ B_p: mean c + (2p − 1)·Σ a_i, proxy √(Σ a_i²)."""
        c = np.asarray(intercepts, dtype=np.float64)
        a = np.asarray(coefficients, dtype=np.float64)
        if a.ndim != 2 or c.shape != (a.shape[0],):
            raise ValueError(
                f"claim must be intercepts (Z,) and coefficients (Z, N), got {a.shape}"
            )
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(a))):
            raise ValueError("claim must be finite")
        mu = 2.0 * float(p) - 1.0
        return cls(mean=c + mu * a.sum(axis=1), scale=np.sqrt(np.einsum("zn,zn->z", a, a)))

    @property
    def num_targets(self) -> int:
        """Z."""
        return int(self.mean.shape[0])

    def clip(self, predictions: Any, clip: Any) -> np.ndarray:
        """ĝ = m + clip(g − m, −T, T) for predictions g (K, Z) and clip levels T (Z,)."""
        g = np.asarray(predictions, dtype=np.float64)
        t = np.asarray(clip, dtype=np.float64)
        return self.mean + np.clip(g - self.mean, -t, t)

    def magnitude(self, clip: Any) -> np.ndarray:
        """max |ĝ| = |m| + T (Z,)."""
        return np.abs(self.mean) + np.asarray(clip, dtype=np.float64)

    def choose_clip(self, charge: Any, budget: Any) -> np.ndarray:
        """Per target, the smallest clip level T with ``charge(T) ≤ budget`` (T in [0, 40 s]).

        ``charge(T)`` maps (Z,) clip levels to (Z,) charges and must decrease in T (every charge
        here does: it is a tail integral times a factor growing only linearly in T). Raises
        ``ValueError`` when even 40 s does not meet the budget.
        """
        z = self.num_targets
        want = np.broadcast_to(np.asarray(budget, dtype=np.float64), (z,))
        s = self.scale
        lo = np.zeros(z)
        hi = _MAX_CLIP_IN_SD * np.maximum(s, 1e-300)
        if np.any(np.asarray(charge(hi)) > want):
            raise ValueError("no clip level meets the tail-charge budget")
        ok0 = np.asarray(charge(lo)) <= want
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            ok = np.asarray(charge(mid)) <= want
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return np.where(ok0, 0.0, hi)
