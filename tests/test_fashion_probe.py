"""The Fashion-MNIST probe tasks at real scale (issue #17): exact features, N up to 60,000."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.tasks import load_task
from protocol.tasks.datasets import FASHION_MNIST_DIR, read_fashion_mnist
from protocol.tasks.fashion_probe import FEATURE_SCALE, cache_dir, project, sign_projection

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)",
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_projection_is_signs_and_a_pure_function() -> None:
    r = sign_projection(32)
    assert r.shape == (784, 32)
    assert set(np.unique(r).tolist()) == {-1.0, 1.0}
    assert 0.45 < (r > 0).mean() < 0.55
    np.testing.assert_array_equal(r, sign_projection(32))
    assert not np.array_equal(r[:, :16], sign_projection(16))  # the size is in the label


def test_features_are_exact_integers_over_the_scale() -> None:
    images, _ = read_fashion_mnist("t10k")
    images = images[:500]
    feats = project(images, 64)
    exact = images.astype(np.int64) @ sign_projection(64).astype(np.int64)  # integer arithmetic
    # the float64 product is the exact integer sum, whatever BLAS summed it in which order
    np.testing.assert_array_equal(images.astype(np.float64) @ sign_projection(64), exact)
    np.testing.assert_array_equal(feats, exact / FEATURE_SCALE)  # then one correct rounding


def test_pair_and_one_vs_rest_sizes() -> None:
    task = load_task("fashion-mnist-probe:n=1000,z=4,dim=32")
    assert (task.num_train_points, task.num_targets, task.design.dim) == (1000, 4, 33)
    assert set(np.unique(task.split.y_train).tolist()) == {-1.0, 1.0}
    rest = load_task("fashion-mnist-probe:pair=0-rest,n=60000,z=3,dim=32")
    assert rest.num_train_points == 60_000
    assert 0.08 < (rest.split.y_train > 0).mean() < 0.12  # class 0 is a tenth of the data
    with pytest.raises(ValueError, match="it has 12000"):
        load_task("fashion-mnist-probe:n=12001")
    with pytest.raises(ValueError, match="dim=4"):
        load_task("fashion-mnist-probe:dim=4")
    with pytest.raises(ValueError, match="expected A-B"):
        load_task("fashion-mnist-probe:pair=shirts")


def test_the_hash_is_stable_through_the_disk_cache_and_a_damaged_one() -> None:
    first = load_task("fashion-mnist-probe:n=500,z=2,dim=16").identity().task_hash
    cached = list(cache_dir().glob("fashion-probe-*-16.npz"))
    assert len(cached) == 1
    assert load_task("fashion-mnist-probe:n=500,z=2,dim=16").identity().task_hash == first
    cached[0].write_bytes(b"not an npz")
    assert load_task("fashion-mnist-probe:n=500,z=2,dim=16").identity().task_hash == first


def test_mlp_variant_on_the_same_features() -> None:
    task = load_task("fashion-mnist-probe-mlp:n=300,z=2,dim=16,steps=20")
    probe = load_task("fashion-mnist-probe:n=300,z=2,dim=16")
    np.testing.assert_array_equal(task.split.X_train, probe.split.X_train)
    f = task.retrain(np.ones((2, 300), bool), np.array([1, 2], np.uint64)).f
    assert f.shape == (2, 2)
    assert np.all(np.abs(f) <= task.output_bound)


def test_at_n_60000_tau_covers_the_rounding_floor_and_honest_models_certify() -> None:
    """At N = 60,000 the worst-case float64 error of the verifier's gradient pass alone bounds
    f only within ~2e-6, above the default τ = 1e-6, and an honest model was rejected there.
    The task now takes the next 1-2-5 τ above 4× that floor (it is in the spec and the hash)."""
    from protocol.certify import certify_models

    task = load_task("fashion-mnist-probe:pair=0-rest,n=60000,z=2,dim=64")
    assert task.rounding_floor > 0.25e-6  # the default τ would not have covered it
    assert task.tolerance >= 4 * task.rounding_floor
    assert task.spec()["tolerance"] == task.tolerance
    masks = np.random.default_rng(0).random((2, 60_000)) < task.p
    weights, _ = task.train(masks)
    report = certify_models(task, weights, masks)
    assert report.certified().all(), report.f_error_bound
    small = load_task("fashion-mnist-probe:n=1000,z=2,dim=64")
    assert small.tolerance == 1e-6  # small N keeps the default (and its task hash)
