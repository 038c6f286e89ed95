"""The batched trainer: convergence, batch-independence, seeds, edge cases and input errors."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import trainer
from protocol.tasks.real import REAL_TASK_FACTORIES, LogisticRegressionTask, MLPTask


@pytest.fixture(scope="module")
def digits() -> LogisticRegressionTask:
    task = REAL_TASK_FACTORIES["digits-logreg"]("digits-logreg", {})
    assert isinstance(task, LogisticRegressionTask)
    return task


@pytest.fixture(scope="module")
def mlp() -> MLPTask:
    # few steps keep the tests fast; the recipe is otherwise the default one
    task = REAL_TASK_FACTORIES["digits-mlp"]("digits-mlp", {"steps": "25", "n": "120"})
    assert isinstance(task, MLPTask)
    return task


def _masks(task, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((k, task.num_train_points)) < task.p


def test_newton_reaches_gradient_tolerance(digits: LogisticRegressionTask) -> None:
    masks = _masks(digits, 12, 0)
    weights, norms = digits.train(masks)
    assert np.all(norms <= digits.tol)
    # an independent CPU recomputation of the gradient agrees (rounding slack: 2x)
    recomputed = digits.gradient_norm(weights, masks)
    assert np.all(recomputed <= 2 * digits.tol)
    # and a loose point is far from stationary: the check has teeth
    assert np.all(digits.gradient_norm(weights * 0.9, masks) > 1e3 * digits.tol)


def test_batched_matches_sequential_single_model_path(digits: LogisticRegressionTask) -> None:
    masks = _masks(digits, 16, 1)
    seeds = np.arange(16, dtype=np.uint64)
    batched = digits.retrain(masks, seeds)
    single = np.vstack([digits.retrain(masks[i : i + 1], seeds[i : i + 1]).f for i in range(16)])
    assert np.max(np.abs(batched.f - single)) <= digits.certified_disagreement <= digits.tolerance


def test_result_independent_of_batch_composition(digits: LogisticRegressionTask) -> None:
    masks = _masks(digits, 20, 2)
    seeds = np.zeros(20, dtype=np.uint64)
    ref = digits.retrain(masks, seeds).f
    # the same subsets in a different order, split into different batches
    perm = np.random.default_rng(3).permutation(20)
    old = digits.batch_size
    try:
        digits.batch_size = 7
        shuffled = digits.retrain(masks[perm], seeds)
    finally:
        digits.batch_size = old
    assert np.max(np.abs(shuffled.f - ref[perm])) <= digits.tolerance


def test_logreg_seed_does_not_matter(digits: LogisticRegressionTask) -> None:
    masks = _masks(digits, 6, 4)
    a = digits.retrain(masks, np.arange(6, dtype=np.uint64))
    b = digits.retrain(masks, np.arange(6, dtype=np.uint64) + np.uint64(2**40))
    assert np.max(np.abs(a.f - b.f)) <= digits.tolerance


def test_degenerate_subsets_are_well_posed(digits: LogisticRegressionTask) -> None:
    n = digits.num_train_points
    masks = np.zeros((3, n), dtype=bool)
    masks[1, 5] = True  # a single point
    masks[2, :] = True  # everything
    res = digits.retrain(masks, np.zeros(3, dtype=np.uint64))
    assert np.all(np.isfinite(res.f))
    # Empty subset: the regulariser's optimum is w = 0, so every margin is 0 and f is the
    # squashed public centring offset (in units of the public scale).
    b = digits.output_bound
    expected = b * np.tanh(-digits.center / (digits.scale * b))
    assert np.allclose(res.f[0], expected, rtol=0, atol=1e-15)
    assert res.grad_norms is not None
    assert np.all(res.grad_norms <= digits.tol)
    assert np.all(np.abs(res.f) <= digits.output_bound)


def test_empty_batch(digits: LogisticRegressionTask) -> None:
    res = digits.retrain(np.zeros((0, digits.num_train_points), bool), np.zeros(0, np.uint64))
    assert res.f.shape == (0, digits.num_targets)
    assert res.weights_digests == []


def test_progress_reports_every_model(digits: LogisticRegressionTask) -> None:
    seen: list[int] = []
    old = digits.batch_size
    try:
        digits.batch_size = 4
        digits.retrain(_masks(digits, 10, 5), np.zeros(10, np.uint64), progress=seen.append)
    finally:
        digits.batch_size = old
    assert seen == [4, 4, 2]


def test_bad_inputs_raise_clear_errors(digits: LogisticRegressionTask) -> None:
    n = digits.num_train_points
    good = np.zeros((2, n), dtype=bool)
    seeds = np.zeros(2, dtype=np.uint64)
    with pytest.raises(ValueError, match="shape"):
        digits.retrain(np.zeros((2, n + 1), bool), seeds)
    with pytest.raises(ValueError, match="boolean"):
        digits.retrain(good.astype(np.int8), seeds)
    with pytest.raises(ValueError, match="seeds"):
        digits.retrain(good, np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="batch_size"):
        trainer.train_logreg(digits.design, good, 1e-2, batch_size=0)
    with pytest.raises(ValueError, match="l2"):
        trainer.train_logreg(digits.design, good, 0.0)
    with pytest.raises(ValueError, match="tol"):
        trainer.train_logreg(digits.design, good, 1e-2, tol=-1.0)
    with pytest.raises(ValueError, match="device"):
        trainer.resolve_device("tpu")
    with pytest.raises(ValueError, match="labels"):
        trainer.LogisticDesign(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        trainer.LogisticDesign(np.full((2, 2), np.nan), np.array([1.0, -1.0]))


def test_max_iter_cap_reports_the_achieved_norm(digits: LogisticRegressionTask) -> None:
    masks = _masks(digits, 3, 6)
    _, norms = trainer.train_logreg(digits.design, masks, digits.l2, tol=1e-10, max_iter=1)
    assert np.all(norms > 1e-10)  # one Newton step from 0 is not enough, and it says so


def test_auto_device_is_cpu_without_cuda() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.resolve_device("auto").type == expected
    assert trainer.resolve_device("cpu").type == "cpu"


def test_squash_is_bounded() -> None:
    x = np.array([-1e300, -50.0, 0.0, 3.0, 1e300])
    out = trainer.squash(x, 10.0)
    assert np.all(np.abs(out) <= 10.0)
    assert out[2] == 0.0
    assert abs(out[3] - 10 * np.tanh(0.3)) < 1e-15


def test_flop_count_is_positive(digits: LogisticRegressionTask) -> None:
    stats = trainer.NewtonStats()
    trainer.train_logreg(digits.design, _masks(digits, 9, 7), digits.l2, stats=stats)
    assert stats.model_iterations >= 9
    # protocol.certify relies on this: one evaluation at the start, then one per accepted step
    assert stats.model_grad_evals - stats.model_iterations == 9
    assert stats.model_newton_steps <= stats.model_iterations
    assert trainer.logreg_flops(digits.design.num_points, digits.design.dim, stats) > 0


def test_reference_start_is_cached_and_stationary(digits: LogisticRegressionTask) -> None:
    ref = digits.design.reference(digits.l2)
    assert digits.design.reference(digits.l2) is ref  # computed once, shared by every batch
    # w0 is the optimum of the half-weighted full-data problem
    n = digits.num_train_points
    X, y = digits.design.X, digits.design.y
    s = 1.0 / (1.0 + np.exp(y * (X @ ref.w0)))
    grad = -trainer.REFERENCE_WEIGHT * ((s * y) @ X) / n + digits.l2 * ref.w0
    assert np.linalg.norm(grad) <= 1e-12
    assert np.all(ref.curvature >= 0)
    assert ref.basis.shape == (digits.design.dim, digits.design.dim)


def test_exact_newton_path_agrees_with_frozen_path(digits: LogisticRegressionTask) -> None:
    import torch

    masks = _masks(digits, 10, 11)
    m = torch.from_numpy(masks).to(torch.float64)
    stats = trainer.NewtonStats()
    # no reference: every model starts at 0 and takes exact (packed-Hessian) Newton steps
    w_newton, g_newton = trainer._solve_batch(
        digits.design,
        m,
        None,
        l2=digits.l2,
        tol=digits.tol,
        max_iter=100,
        device=torch.device("cpu"),
        stats=stats,
    )
    assert stats.hessian_paths == {"packed"}
    assert stats.model_newton_steps == stats.model_iterations
    assert bool((g_newton <= digits.tol).all())
    w_frozen, g_frozen = digits.train(masks)
    assert np.all(g_frozen <= digits.tol)
    f_newton = digits.outputs(w_newton.numpy())
    assert np.max(np.abs(f_newton - digits.outputs(w_frozen))) <= digits.certified_disagreement


@pytest.mark.parametrize("p", [0.02, 0.3, 0.9, 1.0])
def test_converges_for_subset_sizes_far_from_the_reference(
    digits: LogisticRegressionTask, p: float
) -> None:
    # the shared start point and preconditioner are built for |S| ≈ N/2; other sizes must still
    # converge (by the per-model scaling, backtracking or the switch to exact Newton)
    masks = np.random.default_rng(12).random((16, digits.num_train_points)) < p
    stats = trainer.NewtonStats()
    weights, norms = trainer.train_logreg(
        digits.design, masks, digits.l2, tol=digits.tol, stats=stats
    )
    assert np.all(norms <= digits.tol)
    assert np.all(digits.gradient_norm(weights, masks) <= 2 * digits.tol)
    assert stats.model_iterations <= 40 * 16


def test_mlp_same_seed_identical_different_seed_differs(mlp: MLPTask) -> None:
    masks = _masks(mlp, 4, 8)
    seeds = np.array([1, 2, 3, 2**64 - 1], dtype=np.uint64)
    a = mlp.retrain(masks, seeds)
    b = mlp.retrain(masks, seeds)
    assert a.weights_digests == b.weights_digests
    assert np.array_equal(a.f, b.f)
    c = mlp.retrain(masks, seeds + np.uint64(7))
    assert np.max(np.abs(a.f - c.f)) > 1e-3  # the seed picks the initialisation


def test_mlp_batched_matches_single(mlp: MLPTask) -> None:
    masks = _masks(mlp, 5, 9)
    masks[0] = False  # the empty subset trains only the regulariser
    seeds = np.arange(5, dtype=np.uint64)
    batched = mlp.retrain(masks, seeds)
    single = np.vstack([mlp.retrain(masks[i : i + 1], seeds[i : i + 1]).f for i in range(5)])
    assert np.max(np.abs(batched.f - single)) <= mlp.tolerance
    assert np.all(np.abs(batched.f) <= mlp.output_bound)
    assert batched.grad_norms is not None
    assert batched.grad_norms.shape == (5,)


def test_mlp_init_seed_is_domain_separated() -> None:
    assert trainer.init_seed(0) != trainer.init_seed(1)
    assert 0 <= trainer.init_seed(2**64 - 1) < 2**63
