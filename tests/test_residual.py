"""Residual estimation: exact bias on noise-free h values, sampling error on real challenge sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from protocol import accounting
from protocol.challenges import ChallengeSpec
from protocol.residual import (
    estimate_residual,
    interpolant_coefficients,
    residual_from_moments,
    sensitivity,
)

SEED = bytes(range(32))


class Poly:
    """f(x) = Σ_S c_S Π_{i∈S} x_i on {±1}^N, with exact p-biased level weights (enumeration)."""

    def __init__(self, n: int, terms: dict[tuple[int, ...], float], p: float) -> None:
        self.n, self.terms, self.p = n, terms, p
        self.bound = sum(abs(c) for c in terms.values())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (K, N) ±1 floats -> (K,) values."""
        out = np.zeros(x.shape[0])
        for s, c in self.terms.items():
            out += c * (np.prod(x[:, list(s)], axis=1) if s else 1.0)
        return out

    def on_masks(self, masks: np.ndarray) -> np.ndarray:
        return self(2.0 * masks.astype(float) - 1.0)

    def level_weights(self) -> np.ndarray:
        """B_0..B_N from the p-biased Fourier coefficients (enumeration over {±1}^N)."""
        p, n = self.p, self.n
        mu, sigma = 2 * p - 1, np.sqrt(4 * p * (1 - p))
        xs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
        w = np.prod(np.where(xs > 0, p, 1 - p), axis=1)
        fx = self(xs)
        phi = (xs - mu) / sigma
        b = np.zeros(n + 1)
        for k in range(n + 1):
            for t in itertools.combinations(range(n), k):
                coef = np.sum(w * fx * (np.prod(phi[:, list(t)], axis=1) if t else 1.0))
                b[k] += coef**2
        return b

    def noise_stability(self, ell: float) -> float:
        """h(ℓ) = E[f(x) f(y)] by enumerating the coupled pair distribution directly."""
        p, n = self.p, self.n
        xs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
        px = np.where(xs > 0, p, 1 - p)
        fx = self(xs)
        # P(x, y) = Π_i [ℓ·P(x_i)·1{x_i = y_i} + (1 − ℓ)·P(x_i)·P(y_i)]
        same = xs[:, None, :] == xs[None, :, :]
        joint = np.prod(
            ell * px[:, None, :] * same + (1 - ell) * px[:, None, :] * px[None, :, :], axis=2
        )
        return float(fx @ joint @ fx)


# B_1 dominant (NNLS constraint inactive), with degree-2, 3 and 4 weight
POLY = Poly(
    6,
    {(): 0.2, (0,): 0.5, (1,): -0.4, (2,): 0.3, (0, 3): 0.25, (1, 4): -0.2, (2, 3, 5): 0.15,
     (0, 1, 4, 5): 0.1},
    p=0.4,
)  # fmt: skip


def exact_bias(b: np.ndarray, rho: float) -> float:
    """Σ_{k≥3} B_k ρ^{k−1}(2^{k−1} − 2): the interpolant's exact upward bias."""
    return float(sum(b[k] * rho ** (k - 1) * (2 ** (k - 1) - 2) for k in range(3, b.size)))


def test_noise_stability_identity_for_the_challenge_coupling():
    b = POLY.level_weights()
    assert np.isclose(b.sum(), POLY.noise_stability(1.0), atol=1e-12)  # Parseval
    for ell in (0.0, 0.1, 0.25, 0.5):
        # h(ℓ) = Σ_k ℓ^k B_k exactly (floating-point tolerance 1e-12)
        assert np.isclose(POLY.noise_stability(ell), np.polyval(b[::-1], ell), atol=1e-12)


@pytest.mark.parametrize("rho", [0.05, 0.1, 0.25, 0.5])
def test_exact_h_values_recover_residual_up_to_stated_bias(rho):
    b = POLY.level_weights()
    h = [np.polyval(b[::-1], t) for t in (0.0, rho, 2 * rho)]
    est = residual_from_moments([h[0]], [h[1]], [h[2]], [b.sum()], rho, num_tuples=1)
    truth = b[2:].sum()
    bias = est.residual_interpolant[0] - truth
    # exact bias formula to 1e-12, and 0 ≤ bias ≤ 4ρ²B_{≥3}
    assert np.isclose(bias, exact_bias(b, rho), atol=1e-12)
    assert -1e-12 <= bias <= 4 * rho**2 * b[3:].sum() + 1e-12
    assert bias <= accounting.fit_bias(rho, POLY.bound)
    # z0 = B_0 exactly; constraint inactive so NNLS = interpolant
    assert np.isclose(est.z0[0], b[0], atol=1e-12)
    assert not est.constraint_active[0]
    assert est.residual[0] == est.residual_interpolant[0]


def test_pure_degree_two_has_no_bias():
    f = Poly(4, {(0, 1): 0.6, (2,): 0.3, (): 0.1}, p=0.5)
    b = f.level_weights()
    h = [np.polyval(b[::-1], t) for t in (0.0, 0.2, 0.4)]
    est = residual_from_moments([h[0]], [h[1]], [h[2]], [b.sum()], 0.2, 1)
    assert np.isclose(est.residual[0], b[2:].sum(), atol=1e-12)
    assert np.isclose(est.z2[0], b[2], atol=1e-12)


def test_nnls_used_when_interpolant_is_infeasible():
    # pure degree 3 at p = 1/2: h(t) = B_3 t³ and the interpolant has z1 = −2ρ²B_3 < 0.
    f = Poly(4, {(0, 1, 2): 0.8}, p=0.5)
    b = f.level_weights()
    rho = 0.25
    ys = [np.polyval(b[::-1], t) for t in (0.0, rho, 2 * rho)]
    est = residual_from_moments([ys[0]], [ys[1]], [ys[2]], [b.sum()], rho, 1)
    _, iz1, _ = interpolant_coefficients(*(np.array([y]) for y in ys), rho)
    assert iz1[0] < 0
    assert est.constraint_active[0]
    design = np.array([[1, 0, 0], [1, rho, rho**2], [1, 2 * rho, 4 * rho**2]])
    sol, _ = nnls(design, np.array(ys))
    np.testing.assert_allclose([est.z0[0], est.z1[0], est.z2[0]], sol, atol=1e-12)
    assert min(est.z0[0], est.z1[0], est.z2[0]) >= 0
    # both versions over-estimate B_{≥2} = 0.64 here, by at most 4ρ²B_3
    for r in (est.residual[0], est.residual_interpolant[0]):
        assert b[2:].sum() - 1e-12 <= r <= b[2:].sum() + 4 * rho**2 * b[3:].sum() + 1e-12


def test_closed_form_interpolant_passes_through_points():
    y = np.array([0.3, -0.2]), np.array([0.5, 0.1]), np.array([0.9, 0.7])
    for rho in (0.1, 0.5):
        z0, z1, z2 = interpolant_coefficients(*y, rho)
        for t, yt in zip((0.0, rho, 2 * rho), y, strict=True):
            np.testing.assert_allclose(z0 + z1 * t + z2 * t * t, yt, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.01, 0.5),
    st.lists(st.floats(-1, 1), min_size=4, max_size=4),
    st.lists(st.floats(-1, 1), min_size=4, max_size=4),
)
def test_sensitivity_bounds_interpolant_moves(rho, base, direction):
    # errors of at most γ in every ŷ and B̂ move R by at most (S(ρ) + 1)·γ
    gamma = 1e-3
    b0 = residual_from_moments(*[[v] for v in base], rho, 1).residual_interpolant[0]
    moved = [[v + gamma * d] for v, d in zip(base, direction, strict=True)]
    b1 = residual_from_moments(*moved, rho, 1).residual_interpolant[0]
    assert abs(b1 - b0) <= (sensitivity(rho) + 1) * gamma * (1 + 1e-9)
    # the exact gradient sum is 4/ρ − 1 ≤ S(ρ)
    assert 4 / rho - 1 <= sensitivity(rho)


def _sampled_f(spec: ChallengeSpec, f: Poly) -> np.ndarray:
    out = [f.on_masks(m) for _, m, _ in spec.iter_member_batches(4096)]
    return np.concatenate(out)[:, None]


@pytest.mark.parametrize("rho", [0.25, 0.5])
def test_sampled_residual_lands_near_truth(rho):
    n = 20_000
    spec = ChallengeSpec(SEED, n, rho, POLY.n, POLY.p)
    fv = _sampled_f(spec, POLY)
    est = estimate_residual(fv, rho)
    assert est.num_tuples == n
    b = POLY.level_weights()
    expected = b[2:].sum() + exact_bias(b, rho)  # E[interpolant residual]
    # R is a mean of i.i.d. per-tuple terms; tolerance = 5 standard errors of that mean
    fx, fy0, fyr, fy2r = (fv[r::4, 0] for r in range(4))
    terms = (
        (fx**2 + fy0**2) / 2
        + (3 / (2 * rho) - 1) * fx * fy0
        - (2 / rho) * fx * fyr
        + (1 / (2 * rho)) * fx * fy2r
    )
    assert np.isclose(terms.mean(), est.residual_interpolant[0], atol=1e-12)
    se = terms.std(ddof=1) / np.sqrt(n)
    assert abs(est.residual_interpolant[0] - expected) < 5 * se
    assert not est.constraint_active[0]
    # the per-level means against exact h (each a mean of n i.i.d. products in [−b², b²])
    for got, ell in ((est.y0[0], 0), (est.yrho[0], rho), (est.y2rho[0], 2 * rho)):
        assert abs(got - np.polyval(b[::-1], ell)) < 5 * POLY.bound**2 / np.sqrt(n)
    # the worst-case accounting half-width (δ_res = 0.01) covers the observed error
    eta = accounting.residual_halfwidth(n, rho, POLY.bound, 1, 0.01)
    assert abs(est.residual[0] - expected) <= eta


def test_multi_target_columns_are_independent():
    spec = ChallengeSpec(SEED, 500, 0.25, POLY.n, POLY.p)
    f1 = _sampled_f(spec, POLY)
    f2 = _sampled_f(spec, Poly(6, {(0,): 0.7, (1, 2): 0.3}, 0.4))
    both = estimate_residual(np.hstack([f1, f2]), 0.25)
    one = estimate_residual(f1, 0.25)
    # summation order may differ between a strided and a contiguous column: tolerance 1e-12
    assert np.isclose(both.residual[0], one.residual[0], rtol=0, atol=1e-12)
    d = both.to_dict()
    assert d["rho"] == 0.25
    assert len(d["residual"]) == 2
    assert all(isinstance(v, float) for v in d["z1"])


def test_validation():
    good = np.zeros((8, 2))
    with pytest.raises(ValueError, match="rho"):
        estimate_residual(good, 0.7)
    with pytest.raises(ValueError, match="4n rows"):
        estimate_residual(np.zeros((6, 2)), 0.25)
    with pytest.raises(ValueError, match="shape"):
        estimate_residual(np.zeros(8), 0.25)
    bad = good.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="member 5, target 1"):
        estimate_residual(bad, 0.25)
    with pytest.raises(ValueError, match="finite"):
        residual_from_moments([np.inf], [0.0], [0.0], [0.0], 0.25, 1)
    with pytest.raises(ValueError, match="shape"):
        residual_from_moments([0.0, 1.0], [0.0], [0.0], [0.0], 0.25, 1)
    with pytest.raises(ValueError, match="rho"):
        sensitivity(0.0)
    assert sensitivity(0.25) == 17.0
