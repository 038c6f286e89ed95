"""Certified checks: gradient-pass certificates for logistic regression (protocol/certify.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from protocol import certify, trainer
from protocol.tasks import registry
from protocol.tasks.real import LogisticRegressionTask


@pytest.fixture(scope="module")
def task() -> LogisticRegressionTask:
    t = registry.load_task("digits-logreg")
    assert isinstance(t, LogisticRegressionTask)
    return t


@pytest.fixture(scope="module")
def masks(task: LogisticRegressionTask) -> np.ndarray:
    rng = np.random.default_rng(20250)  # fixed seed
    return rng.random((12, task.num_train_points)) < task.p


@pytest.fixture(scope="module")
def honest(task: LogisticRegressionTask, masks: np.ndarray) -> np.ndarray:
    weights, norms = task.train(masks)
    assert np.all(norms <= task.tol)
    return weights


@pytest.fixture(scope="module")
def optimum(task: LogisticRegressionTask, masks: np.ndarray) -> np.ndarray:
    """Near-exact optima: Newton to ‖∇L‖ ≤ 1e-13, i.e. f within ~5e-11 of f(w*)."""
    weights, norms = trainer.train_logreg(
        task.design, masks, task.l2, tol=1e-13, max_iter=200, device="cpu"
    )
    assert np.all(norms <= 1e-13)
    return weights


def test_honest_weights_pass(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray
) -> None:
    check = certify.certify_models(task, honest, masks)
    assert check.num_models == masks.shape[0]
    assert check.grad_norms.shape == (12,)
    assert check.f_values.shape == (12, task.num_targets)
    assert check.f_error_bound.shape == (12,)
    assert np.all(check.grad_norms <= task.tol * (1 + 1e-6))
    # honest training reaches tol, which certifies f within certified_disagreement/2 ≤ τ/2
    assert np.all(check.f_error_bound <= task.certified_disagreement / 2 * (1 + 1e-3))
    assert np.all(check.f_error_bound <= task.tolerance)
    assert np.all(check.certified())
    retrained = task.retrain(masks, np.zeros(masks.shape[0], dtype=np.uint64))
    assert np.all(np.abs(retrained.f - check.f_values) <= task.tolerance)
    assert np.all(check.passed(retrained.f, 1e-12))
    assert np.all(check.passed(check.f_values, 0.0))


def test_bound_holds_against_optimum(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray, optimum: np.ndarray
) -> None:
    f_star = task.outputs(optimum)
    check = certify.certify_models(task, honest, masks)
    # honest weights: within their (tiny) bound of the near-exact optimum (slack 1e-10 covers the
    # optimum's own residual error ≤ 1e-13·max‖x̃_t‖/λ ≈ 5e-11)
    assert np.all(np.abs(check.f_values - f_star) <= check.f_error_bound[:, None] + 1e-10)


@pytest.mark.parametrize("scale", [1e-6, 1e-5, 1e-3, 1e-1])
def test_perturbed_weights_fail_and_bound_is_valid(
    task: LogisticRegressionTask,
    masks: np.ndarray,
    honest: np.ndarray,
    optimum: np.ndarray,
    scale: float,
) -> None:
    rng = np.random.default_rng(7)  # fixed seed
    perturbed = honest + scale * rng.standard_normal(honest.shape)
    check = certify.certify_models(task, perturbed, masks)
    # a perturbation of norm ≈ scale·√65 moves the gradient by ≥ λ·‖Δw‖, so bound ≥ scale·√65·R_t
    assert np.all(check.f_error_bound > task.tolerance)
    assert not np.any(check.certified())
    assert not np.any(check.passed(check.f_values, 1e-12))
    # validity: the true optimum's outputs lie within the bound (1e-10 covers the optimum's error)
    f_star = task.outputs(optimum)
    assert np.all(np.abs(check.f_values - f_star) <= check.f_error_bound[:, None] + 1e-10)
    # and the parameter-space certificate ‖w − w*‖ ≤ ‖∇L‖/λ holds
    dist = np.linalg.norm(perturbed - optimum, axis=1)
    assert np.all(dist <= check.grad_norms / task.l2 + 1e-11)


def test_tiny_perturbation_stays_certified(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray
) -> None:
    # the check does not demand bit-identical weights: float-noise-sized changes still pass
    rng = np.random.default_rng(11)  # fixed seed
    direction = rng.standard_normal(honest.shape)
    tiny = honest + 1e-12 * direction
    assert np.all(certify.certify_models(task, tiny, masks).certified())


def test_wrong_subset_fails(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray
) -> None:
    shifted = np.roll(masks, 1, axis=0)  # every model checked against another subset
    check = certify.certify_models(task, honest, shifted)
    assert not np.any(check.certified())
    # flipping a single training point is caught too
    one_flip = masks.copy()
    one_flip[:, 0] = ~one_flip[:, 0]
    check1 = certify.certify_models(task, honest, one_flip)
    assert not np.any(check1.passed(check1.f_values, 1e-12))


def test_lying_f_values_fail(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray
) -> None:
    check = certify.certify_models(task, honest, masks)
    lie = check.f_values.copy()
    lie[3, 5] += 1e-3
    lie[7, 0] = np.nan
    ok = check.passed(lie, 1e-9)
    assert ok.tolist() == [k not in (3, 7) for k in range(12)]
    with pytest.raises(ValueError, match="shape"):
        check.passed(lie[:, :2], 1e-9)
    with pytest.raises(ValueError, match="tolerance"):
        check.passed(lie, -1.0)


def test_batching_matches_single(
    task: LogisticRegressionTask,
    masks: np.ndarray,
    honest: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = certify.certify_models(task, honest, masks)
    # force tiny chunks: one model per chunk, then blocks of one point and of 7 points
    monkeypatch.setattr(certify, "CERTIFY_MODELS_PER_CHUNK", 1)
    for cap in (1, 8 * 8 * 7):
        monkeypatch.setattr(certify, "CERTIFY_TEMP_MAX_BYTES", cap)
        chunked = certify.certify_models(task, honest, masks)
        np.testing.assert_allclose(chunked.grad_norms, whole.grad_norms, rtol=1e-6, atol=1e-15)
        np.testing.assert_allclose(chunked.f_values, whole.f_values, rtol=0, atol=1e-14)
    empty = certify.certify_models(task, honest[:0], masks[:0])
    assert empty.f_values.shape == (0, task.num_targets)
    assert empty.passed(empty.f_values, 0.0).shape == (0,)


def test_gradient_matches_trainer(task: LogisticRegressionTask, masks: np.ndarray) -> None:
    rng = np.random.default_rng(3)  # fixed seed; arbitrary (far from optimal) weights
    w = rng.standard_normal((masks.shape[0], task.design.dim))
    ours = certify.certify_models(task, w, masks).grad_norms
    ref = trainer.logreg_gradient_norm(task.design, w, masks, task.l2)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)  # same formula, float noise only
    np.testing.assert_allclose(ours, task.gradient_norm(w, masks), rtol=1e-12, atol=0)


def test_certify_input_validation(
    task: LogisticRegressionTask, masks: np.ndarray, honest: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="boolean"):
        certify.certify_models(task, honest, masks.astype(np.int8))
    with pytest.raises(ValueError, match="shape"):
        certify.certify_models(task, honest[:, :-1], masks)
    with pytest.raises(ValueError, match="shape"):
        certify.certify_models(task, honest[:3], masks)
    bad = honest.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        certify.certify_models(task, bad, masks)


def test_weights_bytes_round_trip(honest: np.ndarray) -> None:
    w = honest.copy()
    w[0, 0] = -0.0
    blobs = certify.weights_to_bytes(w)
    assert len(blobs) == w.shape[0]
    for k, blob in enumerate(blobs):
        assert len(blob) == 8 * w.shape[1]
        assert hashlib.sha256(blob).digest() == trainer.weights_digest(w[k])
        back = certify.weights_from_bytes(blob, w.shape[1])
        assert back.dtype == np.float64
        assert back.flags.writeable
        assert back.tobytes() == w[k].tobytes()  # bit-exact, signed zero included
        opened = certify.check_weights_opening(blob, trainer.weights_digest(w[k]), w.shape[1])
        assert np.array_equal(opened, w[k])
    assert np.signbit(certify.weights_from_bytes(blobs[0], w.shape[1])[0])
    # big-endian or Fortran-ordered input serialises to the same bytes
    assert certify.weights_to_bytes(np.asfortranarray(w).astype(">f8")) == blobs


def test_weights_bytes_strict_parsing(honest: np.ndarray) -> None:
    dim = honest.shape[1]
    blob = certify.weights_to_bytes(honest[:1])[0]
    with pytest.raises(ValueError, match="not a multiple of 8"):
        certify.weights_from_bytes(blob[:-3], dim)
    with pytest.raises(ValueError, match=f"expected exactly {dim}"):
        certify.weights_from_bytes(blob[:-8], dim)
    with pytest.raises(ValueError, match=f"expected exactly {dim}"):
        certify.weights_from_bytes(blob + bytes(8), dim)
    with pytest.raises(ValueError, match=f"expected exactly {dim}"):
        certify.weights_from_bytes(b"", dim)
    for special in (np.nan, np.inf, -np.inf):
        w = honest[0].copy()
        w[4] = special
        with pytest.raises(ValueError, match="value 4"):
            certify.weights_from_bytes(w.astype("<f8").tobytes(), dim)
    with pytest.raises(ValueError, match="must be bytes"):
        certify.weights_from_bytes(blob.hex(), dim)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        certify.weights_from_bytes(blob, 0)
    with pytest.raises(ValueError, match="does not open"):
        certify.check_weights_opening(blob, bytes(32), dim)
    with pytest.raises(ValueError, match="32 bytes"):
        certify.check_weights_opening(blob, b"short", dim)
    with pytest.raises(ValueError, match="2-D"):
        certify.weights_to_bytes(honest[0])
    bad = honest[:2].copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        certify.weights_to_bytes(bad)


def test_unsupported_tasks(task: LogisticRegressionTask, masks: np.ndarray) -> None:
    assert certify.supports_certified_checks(task)
    mlp = registry.load_task("digits-mlp")
    synthetic = registry.load_task("synthetic")
    assert not certify.supports_certified_checks(mlp)
    assert not certify.supports_certified_checks(synthetic)
    with pytest.raises(ValueError, match="does not support certified checks"):
        certify.certify_models(mlp, np.zeros((1, 65)), masks[:1])  # type: ignore[arg-type]


def test_cost_model(task: LogisticRegressionTask, masks: np.ndarray) -> None:
    n, dim = task.design.num_points, task.design.dim
    assert certify.gradient_pass_flops(n, dim) == 4.0 * n * dim
    assert certify.gradient_pass_flops(n, dim, num_targets=10) == 4.0 * n * dim + 20.0 * dim
    stats = trainer.NewtonStats()
    trainer.train_logreg(task.design, masks, task.l2, tol=task.tol, device="cpu", stats=stats)
    k = masks.shape[0]
    per_model = trainer.logreg_flops(n, dim, stats) / k
    assert certify.retraining_flops_per_model(task, stats) == pytest.approx(per_model)
    eq = certify.retraining_equivalents(task, 200_000, stats)
    assert eq == pytest.approx(200_000 * 4.0 * n * dim / per_model)
    assert certify.retraining_equivalents(task, 200_000, stats, models_trained=k) == eq
    assert certify.retraining_equivalents(task, 10, per_model) == pytest.approx(
        10 * 4.0 * n * dim / per_model
    )
    # any retraining evaluates ≥ 2 gradients (start and stop), so one pass is < half of it
    assert eq < 200_000 / 2
    with pytest.raises(ValueError, match="positive"):
        certify.retraining_equivalents(task, 1, 0.0)
    with pytest.raises(ValueError, match="num_models_checked"):
        certify.retraining_equivalents(task, -1, per_model)


def test_measure_costs(task: LogisticRegressionTask, masks: np.ndarray) -> None:
    cmp = certify.measure_costs(task, masks[:8])
    assert cmp.num_models == 8
    assert cmp.all_certified
    assert cmp.retrain_seconds > 0
    assert cmp.certify_seconds > 0
    assert 0 < cmp.flop_ratio < 0.5
    assert cmp.newton_iterations_per_model >= 1


def test_certified_checks_follow_the_certifiable_task_interface() -> None:
    from protocol.tasks.base import CertifiableTask
    from prover.strategy import trains_weights

    logreg = registry.load_task("digits-logreg:z=1")
    assert isinstance(logreg, CertifiableTask)
    assert certify.supports_certified_checks(logreg)
    assert trains_weights(logreg)
    for selector in ("digits-mlp", "synthetic:n=20"):  # non-convex, and no weights at all
        other = registry.load_task(selector)
        assert not isinstance(other, CertifiableTask)
        assert not certify.supports_certified_checks(other)
        assert not trains_weights(other)
    logreg.l2 = 0.0  # weights still, but no longer strongly convex: no certificate
    assert trains_weights(logreg)
    assert not certify.supports_certified_checks(logreg)


def test_no_capability_is_sniffed_from_a_task_class_or_attribute() -> None:
    """CertifiableTask is the one test of what a task can do: nothing outside protocol/tasks asks
    isinstance(..., LogisticRegressionTask) for it, or probes ``train``/``outputs`` by name."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    sniff = re.compile(r"getattr\([^)]*[\"'](train|outputs)[\"']|isinstance\(task, LogisticRegr")
    found = []
    for d in ("protocol", "prover", "verifier", "simulations"):
        for p in (root / d).rglob("*.py"):
            rel = str(p.relative_to(root))
            if not rel.startswith("protocol/tasks/") and sniff.search(p.read_text()):
                found.append(rel)
    assert found == []
