"""The synthetic task: exact closed forms checked by enumeration and by Monte Carlo."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest

from protocol.tasks.registry import load_task
from protocol.tasks.synthetic import SyntheticTask


def _all_subsets(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Every mask in {0,1}^n with its B_p probability."""
    masks = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)
    weights = np.prod(np.where(masks, p, 1.0 - p), axis=1)
    return masks, weights


def _chars(masks: np.ndarray, p: float, subset: tuple[int, ...]) -> np.ndarray:
    mu, sigma = 2 * p - 1, math.sqrt(4 * p * (1 - p))
    x = 2.0 * masks - 1.0
    out = np.ones(len(masks))
    for i in subset:
        out *= (x[:, i] - mu) / sigma
    return out


def _zeros(k: int) -> np.ndarray:
    return np.zeros(k, dtype=np.uint64)


@pytest.mark.parametrize(("n", "p", "seed"), [(6, 0.5, 0), (8, 0.3, 1), (7, 0.8, 2), (3, 0.6, 3)])
def test_closed_forms_by_full_enumeration(n, p, seed):
    task = SyntheticTask(n=n, z=2, p=p, seed=seed)
    truth = task.truth()
    masks, w = _all_subsets(n, p)
    f = task.retrain(masks, _zeros(len(masks))).f
    x = 2.0 * masks - 1.0
    for t in range(2):
        ft = f[:, t]
        # Fourier coefficients by projection reproduce the level weights B_0..B_3 (and nothing at
        # degree > 3): this checks the basis is orthonormal under B_p and the evaluation is right.
        levels = np.zeros(n + 1)
        for k in range(n + 1):
            for s in itertools.combinations(range(n), k):
                levels[k] += np.dot(w, ft * _chars(masks, p, s)) ** 2
        np.testing.assert_allclose(levels[:4], truth.level_weights[t], atol=1e-12)
        np.testing.assert_allclose(levels[4:], 0.0, atol=1e-12)
        assert abs(np.dot(w, ft) - truth.fhat_empty[t]) < 1e-12
        np.testing.assert_allclose(np.dot(w, ft**2), truth.variance[t], atol=1e-12)
        # the weighted least-squares optimum is (c*, a*), with mse = B_{>=2}
        design = np.column_stack([np.ones(len(x)), x]) * np.sqrt(w)[:, None]
        sol = np.linalg.lstsq(design, ft * np.sqrt(w), rcond=None)[0]
        np.testing.assert_allclose(sol[0], truth.intercept[t], atol=1e-10)
        np.testing.assert_allclose(sol[1:], truth.coefficients[t], atol=1e-10)
    # exact mse and err of an arbitrary (c, a)
    rng = np.random.default_rng(seed)
    c = truth.intercept + rng.normal(size=2)
    a = truth.coefficients + rng.normal(scale=0.3, size=(2, n))
    mse_enum = np.array([np.dot(w, (f[:, t] - c[t] - x @ a[t]) ** 2) for t in range(2)])
    resid = f - truth.intercept - x @ truth.coefficients.T
    mse_star = np.einsum("k,kt->t", w, resid**2)
    np.testing.assert_allclose(mse_star, truth.residual, atol=1e-12)
    np.testing.assert_allclose(mse_enum, truth.mse(c, a), atol=1e-10)
    np.testing.assert_allclose(mse_enum - mse_star, task.err(c, a), atol=1e-10)
    np.testing.assert_allclose(truth.err(truth.intercept, truth.coefficients), 0.0, atol=1e-15)
    # |f| <= b everywhere
    assert np.abs(f).max() <= task.output_bound


@pytest.mark.parametrize(("n", "p", "rho"), [(5, 0.5, 0.3), (6, 0.25, 0.6), (4, 0.7, 1.0)])
def test_noise_stability_by_enumeration(n, p, rho):
    task = SyntheticTask(n=n, z=1, p=p, seed=5)
    masks, w = _all_subsets(n, p)
    f = task.retrain(masks, _zeros(len(masks))).f[:, 0]
    # kernel of one coordinate: keep with prob rho, else redraw from B_p (order: False, True)
    k1 = rho * np.eye(2) + (1 - rho) * np.array([[1 - p, p], [1 - p, p]])
    kernel = np.ones((1, 1))
    for _ in range(n):
        kernel = np.kron(kernel, k1)
    h = np.dot(w * f, kernel @ f)
    np.testing.assert_allclose(h, task.noise_stability(rho), atol=1e-12)


def test_degenerate_small_n():
    assert np.allclose(SyntheticTask(n=1).truth().level_weights, [[0, 0.8, 0, 0]])
    assert np.allclose(SyntheticTask(n=2).truth().level_weights, [[0, 0.8, 0.15, 0]])
    assert np.allclose(SyntheticTask(n=3).truth().level_weights, [[0, 0.8, 0.15, 0.05]])
    assert np.allclose(SyntheticTask(n=500, z=4).truth().level_weights, [[0, 0.8, 0.15, 0.05]] * 4)


@pytest.mark.parametrize(("p", "noise"), [(0.5, 0.0), (0.3, 0.0), (0.5, 0.3)])
def test_monte_carlo_moments_and_mse(p, noise):
    task = SyntheticTask(n=500, z=2, p=p, seed=11, noise=noise)
    truth = task.truth()
    K = 200_000
    rng = np.random.default_rng(123)
    masks = rng.random((K, 500)) < p
    f = task.retrain(masks, np.arange(K, dtype=np.uint64)).f
    x = 2.0 * masks - 1.0
    c_bad = truth.intercept + 0.1
    a_bad = truth.coefficients + rng.normal(scale=0.02, size=truth.coefficients.shape)
    assert np.abs(f).max() <= task.output_bound

    # Tolerance: 5 standard errors of each sample mean (estimated from the same sample).
    def check(samples: np.ndarray, expected: float) -> None:
        se = samples.std() / math.sqrt(len(samples))
        assert abs(samples.mean() - expected) < 5 * se + 1e-12, (samples.mean(), expected, se)

    for t in range(2):
        check(f[:, t], truth.fhat_empty[t])
        check(f[:, t] ** 2, truth.variance[t])
        check((f[:, t] - truth.intercept[t] - x @ truth.coefficients[t]) ** 2, truth.residual[t])
        check((f[:, t] - c_bad[t] - x @ a_bad[t]) ** 2, truth.mse(c_bad, a_bad)[t])
    assert np.all(truth.err(c_bad, a_bad) > 0.01)
    np.testing.assert_allclose(truth.residual, 0.2 + noise**2, atol=1e-12)


def test_noise_is_seed_driven_with_the_polynomial_as_mean():
    task = SyntheticTask(n=50, z=1, seed=3, noise=0.5)
    mask = np.random.default_rng(0).random((1, 50)) < 0.5
    K = 40_000
    f = task.retrain(np.repeat(mask, K, axis=0), np.arange(K, dtype=np.uint64)).f[:, 0]
    mean = task.evaluate(mask)[0, 0]
    # 5 standard errors: sd 0.5 / sqrt(40000) = 0.0025
    assert abs(f.mean() - mean) < 5 * 0.5 / math.sqrt(K)
    assert abs(f.var() - 0.25) < 0.01  # Var of s·U[-√3, √3] is s² = 0.25; se ≈ 0.0011
    assert np.abs(f - mean).max() <= 0.5 * math.sqrt(3) + 1e-12


def test_determinism_and_seed_dependence():
    rng = np.random.default_rng(9)
    masks = rng.random((300, 80)) < 0.4
    s1 = np.arange(300, dtype=np.uint64)
    s2 = s1 + 1000
    clean = SyntheticTask(n=80, z=3, p=0.4, seed=2)
    a = clean.retrain(masks, s1)
    assert np.array_equal(a.f, clean.retrain(masks, s2).f)  # seeds ignored without noise
    assert a.weights_digests == clean.retrain(masks, s2).weights_digests
    # row results do not depend on the batch they are computed in
    parts = np.concatenate(
        [clean.retrain(masks[i : i + 7], s1[i : i + 7]).f for i in range(0, 300, 7)]
    )
    assert np.array_equal(parts, a.f)
    again = SyntheticTask(n=80, z=3, p=0.4, seed=2)
    assert again.data_bytes() == clean.data_bytes()
    assert again.identity().task_hash == clean.identity().task_hash
    assert np.array_equal(again.retrain(masks, s1).f, a.f)
    noisy = SyntheticTask(n=80, z=3, p=0.4, seed=2, noise=0.1)
    b1, b2 = noisy.retrain(masks, s1), noisy.retrain(masks, s2)
    assert np.array_equal(b1.f, noisy.retrain(masks, s1).f)
    assert not np.any(b1.f == b2.f)
    assert b1.weights_digests != b2.weights_digests
    assert noisy.identity().task_hash != clean.identity().task_hash
    assert SyntheticTask(n=80, z=3, p=0.4, seed=3).data_bytes() != clean.data_bytes()


def test_digests_and_result_shape():
    task = SyntheticTask(n=20, z=2)
    masks = np.ones((3, 20), dtype=bool)
    calls: list[int] = []
    res = task.retrain(masks, _zeros(3), progress=calls.append)
    assert res.f.shape == (3, 2)
    assert res.f.dtype == np.float64
    assert res.grad_norms is None
    assert len(res.weights_digests) == 3
    assert all(len(d) == 32 for d in res.weights_digests)
    assert sum(calls) == 3
    expected = hashlib.sha256(b"synthetic-weights" + res.f[0].tobytes()).digest()
    assert res.weights_digests[0] == expected
    with pytest.raises(ValueError, match="boolean"):
        task.retrain(masks.astype(int), _zeros(3))
    with pytest.raises(ValueError, match="masks must have shape"):
        task.retrain(masks[:, :5], _zeros(3))
    with pytest.raises(ValueError, match="seeds must have shape"):
        task.retrain(masks, _zeros(2))


def test_spec_and_bound():
    task = load_task("synthetic")
    assert isinstance(task, SyntheticTask)
    spec = task.spec()
    assert {k: spec[k] for k in ("name", "n", "z", "p", "seed", "noise")} == {
        "name": "synthetic",
        "n": 500,
        "z": 1,
        "p": 0.5,
        "seed": 0,
        "noise": 0.0,
    }
    assert spec["coefficient_generator"] == "numpy.default_rng/PCG64 v1"
    assert spec["b"] == task.output_bound
    assert spec["tau"] == task.tolerance == 1e-9
    assert task.bitwise_deterministic
    # b = Σ|f̂_T| m^{|T|} + s√3; at p = 1/2, m = 1
    exact = sum(np.abs(v).sum() for v in task.values)
    assert exact <= task.output_bound <= exact * (1 + 1e-11)
    noisy = load_task("synthetic:p=0.3,noise=0.2")
    m = 1.4 / math.sqrt(0.84)
    exact = sum(np.abs(v).sum() * m ** (k + 1) for k, v in enumerate(noisy.values))
    exact += 0.2 * math.sqrt(3)
    assert exact <= noisy.output_bound <= exact * (1 + 1e-11)


@pytest.mark.parametrize(
    "selector",
    [
        "synthetic:foo=1",
        "synthetic:n=0",
        "synthetic:n=1000001",
        "synthetic:n=abc",
        "synthetic:n=1.5",
        "synthetic:z=0",
        "synthetic:z=1001",
        "synthetic:p=0",
        "synthetic:p=1",
        "synthetic:p=nan",
        "synthetic:p=x",
        "synthetic:noise=-0.1",
        "synthetic:noise=inf",
        "synthetic:seed=-1",
    ],
)
def test_bad_params(selector):
    with pytest.raises(ValueError, match=r"synthetic task"):
        load_task(selector)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys") as info:
        load_task("synthetic:alpha=0.5")
    for key in ("n:", "z:", "p:", "seed:", "noise:"):
        assert key in str(info.value)


def test_large_n():
    task = load_task("synthetic:n=100000,z=2,seed=4")
    rng = np.random.default_rng(0)
    masks = rng.random((500, 100_000)) < 0.5
    res = task.retrain(masks, _zeros(500))
    assert res.f.shape == (500, 2)
    assert np.abs(res.f).max() <= task.output_bound
    truth = task.truth()
    assert truth.coefficients.shape == (2, 100_000)
    assert np.count_nonzero(truth.coefficients[0]) == 20
    assert task.identity().task_hash


def test_retrain_speed_100k_masks():
    import time

    task = load_task("synthetic")
    masks = np.random.default_rng(0).random((100_000, 500)) < 0.5
    start = time.perf_counter()
    task.retrain(masks, np.arange(100_000, dtype=np.uint64))
    assert time.perf_counter() - start < 5.0  # ~0.1 s here
