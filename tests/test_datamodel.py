"""Datamodel regression recovers the synthetic task's exact optimum (c*, a*)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.tasks.synthetic import SyntheticTask
from prover.datamodel import Datamodel, fit_datamodel


def _sample(task: SyntheticTask, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((K, task.num_train_points)) < task.p
    return masks, task.retrain(masks, np.arange(K, dtype=np.uint64)).f


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_ols_recovers_optimum(p):
    n = 200
    task = SyntheticTask(n=n, z=3, p=p, seed=7)
    truth = task.truth()
    K = 20 * n
    masks, f = _sample(task, K, seed=1)
    dm = fit_datamodel(masks, f, "ols")
    assert isinstance(dm, Datamodel)
    assert dm.method == "ols"
    assert dm.num_samples == K
    assert dm.intercepts.shape == (3,)
    assert dm.coefficients.shape == (3, n)
    err = truth.err(dm.intercepts, dm.coefficients)
    # Theory: for K >> N, E err ≈ B_{>=2} (N + 1) / K = 0.2 · 201 / 4000 ≈ 0.010 (exact to first
    # order at p = 1/2); its sd is about E err · sqrt(2 / N) ≈ 0.001. Tolerance: 2x the mean.
    expected = truth.residual * (n + 1) / K
    assert np.all(err < 2 * expected), (err, expected)
    assert np.all(err > 0.3 * expected)  # and it is not suspiciously exact
    # the training MSE is below the truth's residual by about the same amount
    assert np.allclose(dm.diagnostics["train_mse"], truth.residual, atol=3 * expected.max())


def test_ridge_and_lasso_reduce_error():
    n = 200
    task = SyntheticTask(n=n, z=3, p=0.5, seed=8)
    truth = task.truth()
    masks, f = _sample(task, 5 * n, seed=2)  # K = 1000
    var = truth.variance
    for method in ("ridge", "lasso"):
        dm = fit_datamodel(masks, f, method, rng_seed=3)
        err = truth.err(dm.intercepts, dm.coefficients)
        # Var f = 1 is the err of the zero datamodel; OLS theory here is 0.2·201/1000 ≈ 0.04.
        # Ridge lands near that (observed 0.04-0.06), lasso exploits the sparsity (≈ 0.02).
        assert np.all(err < 0.1 * var), (method, err)
    assert fit_datamodel(masks[:399], f[:399], "auto").method == "ridge"  # K < 2N
    assert fit_datamodel(masks[:400], f[:400], "auto").method == "ols"  # K >= 2N
    dm = fit_datamodel(masks, f, "ridge", rng_seed=3)
    assert len(dm.diagnostics["lambda"]) == 3
    # deterministic given the seed
    again = fit_datamodel(masks, f, "ridge", rng_seed=3)
    assert np.array_equal(again.coefficients, dm.coefficients)


def test_underdetermined_ols_and_ridge_work():
    n = 300
    task = SyntheticTask(n=n, z=2, p=0.5, seed=9)
    truth = task.truth()
    masks, f = _sample(task, 150, seed=4)
    ols = fit_datamodel(masks, f, "ols")
    assert ols.diagnostics["rank"] <= 149
    ridge = fit_datamodel(masks, f, "ridge")
    lasso = fit_datamodel(masks, f, "lasso")
    # K = N/2: the min-norm OLS interpolates; ridge shrinks; lasso finds the sparse support.
    assert np.all(truth.err(ridge.intercepts, ridge.coefficients) < truth.variance)
    assert np.all(truth.err(lasso.intercepts, lasso.coefficients) < 0.5 * truth.variance)


def test_exact_linear_function_is_recovered_exactly():
    rng = np.random.default_rng(0)
    masks = rng.random((400, 30)) < 0.5
    a = rng.normal(size=(2, 30))
    c = np.array([0.5, -1.0])
    f = c + (2.0 * masks - 1.0) @ a.T
    dm = fit_datamodel(masks, f, "ols")
    np.testing.assert_allclose(dm.coefficients, a, atol=1e-10)
    np.testing.assert_allclose(dm.intercepts, c, atol=1e-10)
    np.testing.assert_allclose(dm.predict(masks), f, atol=1e-10)
    one = fit_datamodel(masks, f[:, 0], "ols")  # 1-D f is Z = 1
    assert one.coefficients.shape == (1, 30)


@pytest.mark.parametrize(
    ("masks", "f", "method", "message"),
    [
        (np.zeros((0, 5), dtype=bool), np.zeros((0, 1)), "ols", "at least one sample"),
        (np.zeros((4, 5), dtype=bool), np.zeros((3, 1)), "ols", "f_values must have shape"),
        (np.zeros((4, 5), dtype=int), np.zeros((4, 1)), "ols", "boolean"),
        (np.zeros(5, dtype=bool), np.zeros((5, 1)), "ols", "masks must have shape"),
        (np.zeros((4, 5), dtype=bool), np.full((4, 1), np.nan), "ols", "finite"),
        (np.zeros((4, 5), dtype=bool), np.zeros((4, 1)), "magic", "unknown datamodel method"),
        (np.zeros((3, 5), dtype=bool), np.zeros((3, 1)), "ridge", "at least 5 samples"),
    ],
)
def test_bad_inputs(masks, f, method, message):
    with pytest.raises(ValueError, match=message):
        fit_datamodel(masks, f, method)
