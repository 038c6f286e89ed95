"""Fashion-MNIST at real scale: a linear probe (and an MLP) on fixed public features, N ≤ 60,000.

``fashion-mnist-probe[:pair=0-6|pair=0-rest,n=10000,dim=64,z=10,…]`` is L2-regularised logistic
regression on a public random projection of the 28×28 images; ``fashion-mnist-probe-mlp`` is the
one-hidden-layer MLP on the same features (the non-convex case). Training points come from
Fashion-MNIST's 60,000-image train split and the Z held-out targets from its 10,000-image test
split, so N runs from 1 to 12,000 for a pair of classes and to 60,000 one-vs-rest.

**The features are exact.** The projection R ∈ {−1, +1}^{784×dim} is drawn from SHA-256 in
counter mode under a fixed label (no library RNG, whose streams may change between versions).
Each feature is (Σ_j pixel_j · R_jk) / (255·28): the sum of 784 products of integers in [0, 255]
with ±1 is an integer of magnitude ≤ 199,920, exact in float64 whatever the summation order or
BLAS, and the one division is correctly rounded. So every machine computes the same bytes, and
the task hash (which covers them) agrees between prover and verifier. The features of all 70,000
images are cached on disk (``$XDG_CACHE_HOME/verifiable-attribution``, else
``~/.cache/verifiable-attribution``) under a name that carries the SHA-256 of the raw files and the
projection's parameters; a damaged cache file is recomputed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from protocol.tasks import datasets
from protocol.tasks.base import Task

#: The projection's label; changing it changes every feature (and so the task hash).
PROJECTION_LABEL = "attribution.v1/fashion-mnist-probe/sign-projection"
#: Projection sizes accepted (the issue's 32–128; powers of two are not required).
DIM_RANGE = (8, 256)
DEFAULT_DIM = 64
DEFAULT_N = 10_000
#: The divisor making features O(1): 255 (pixel range) × 28 (= √784, the projection's fan-in).
FEATURE_SCALE = 255.0 * 28.0


def sign_projection(dim: int, fan_in: int = 784, label: str = PROJECTION_LABEL) -> np.ndarray:
    """R ∈ {−1, +1}^{fan_in × dim} as float64, bit (j, k) from SHA-256(label ‖ dim ‖ block):
    a pure function of its arguments on every machine."""
    need = fan_in * dim
    blocks = (need + 255) // 256
    stream = b"".join(
        hashlib.sha256(f"{label}/{fan_in}x{dim}/{i}".encode()).digest() for i in range(blocks)
    )
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:need]
    return (2.0 * bits.astype(np.float64) - 1.0).reshape(fan_in, dim)


def project(images: np.ndarray, dim: int) -> np.ndarray:
    """Exact features of uint8 image rows (see the module docstring)."""
    if images.dtype != np.uint8:
        raise ValueError("projection needs the raw uint8 pixels")
    sums = images.astype(np.float64) @ sign_projection(dim, images.shape[1])
    return sums / FEATURE_SCALE


def cache_dir() -> Path:
    """Where computed features are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "verifiable-attribution"


def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256(b"fashion-mnist-files\x00")
    for p in paths:
        h.update(p.name.encode() + b"\x00" + p.read_bytes())
    return h.hexdigest()[:32]


def probe_features(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(train features (60000, dim), train labels, test features (10000, dim), test labels,
    raw-files digest), from the disk cache when it holds them, else computed and cached
    atomically. ``DatasetUnavailable`` when Debian's package is missing."""
    train_files = datasets.fashion_mnist_files("train")
    test_files = datasets.fashion_mnist_files("t10k")
    digest = _files_digest([*train_files, *test_files])
    path = cache_dir() / f"fashion-probe-{digest}-{dim}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                out = tuple(npz[k] for k in ("Xtr", "ytr", "Xte", "yte"))
            if out[0].shape == (len(out[1]), dim) and out[2].shape == (len(out[3]), dim):
                return (*out, digest)  # type: ignore[return-value]
        except (OSError, ValueError, KeyError):
            pass  # damaged: recompute below
    images, labels = datasets.read_fashion_mnist("train")
    test_images, test_labels = datasets.read_fashion_mnist("t10k")
    Xtr, Xte = project(images, dim), project(test_images, dim)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fashion-probe-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, Xtr=Xtr, ytr=labels, Xte=Xte, yte=test_labels)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the recomputation next time
    return Xtr, labels, Xte, test_labels, digest


def _classes(text: str | None) -> tuple[int, int | None]:
    """``"0-6"`` → (0, 6); ``"0-rest"`` → (0, None): class 0 against every other class."""
    a, _, b = (text or "0-6").partition("-")
    try:
        pos = int(a)
        neg = None if b.strip().lower() == "rest" else int(b)
    except ValueError:
        raise ValueError(
            f"fashion-mnist-probe: pair={text!r}: expected A-B (e.g. 0-6) or A-rest (e.g. 0-rest)"
        ) from None
    if not 0 <= pos <= 9 or (neg is not None and (not 0 <= neg <= 9 or neg == pos)):
        raise ValueError(f"fashion-mnist-probe: pair={text!r}: classes are distinct, 0 to 9")
    return pos, neg


def _pick(name: str, labels: np.ndarray, pos: int, neg: int | None, count: int) -> np.ndarray:
    order = datasets.hash_order(name, len(labels))
    chosen = order if neg is None else order[np.isin(labels[order], [pos, neg])]
    if count > len(chosen):
        raise ValueError(
            f"fashion-mnist-probe: asked for {count} examples of {name}, it has {len(chosen)} "
            "of these classes"
        )
    return chosen[:count]


def probe_split(
    pair: str | None, n: int, z: int, dim: int
) -> tuple[datasets.BinarySplit, dict[str, Any]]:
    """The split and its spec: the first ``n`` train images of the classes in hash order, the
    first ``z`` test images likewise; +1 for the first class."""
    if not DIM_RANGE[0] <= dim <= DIM_RANGE[1]:
        raise ValueError(f"fashion-mnist-probe: dim={dim} must be in {list(DIM_RANGE)}")
    pos, neg = _classes(pair)
    Xtr, ytr, Xte, yte, digest = probe_features(dim)
    trn = _pick("fashion-mnist-train", ytr, pos, neg, n)
    tgt = _pick("fashion-mnist-test", yte, pos, neg, z)
    split = datasets.BinarySplit(
        X_train=np.ascontiguousarray(Xtr[trn]),
        y_train=np.where(ytr[trn] == pos, 1.0, -1.0),
        X_targets=np.ascontiguousarray(Xte[tgt]),
        y_targets=np.where(yte[tgt] == pos, 1.0, -1.0),
        train_index=trn,
        target_index=tgt,
    )
    spec = {
        "name": "fashion-mnist",
        "version": f"Debian dataset-fashion-mnist files, sha256 {digest}",
        "classes": [pos, "rest" if neg is None else neg],
        "features": (
            f"sign projection to {dim} dims: (pixels uint8 @ R) / (255*28), R in {{-1,+1}} "
            f"from SHA-256 counter mode under {PROJECTION_LABEL!r} (exact in float64)"
        ),
        "split": (
            "train: first n of the classes in order sha256('fashion-mnist-train/i'); targets: "
            "first z of the classes in order sha256('fashion-mnist-test/i') over the test split"
        ),
    }
    return split, spec


def _probe_params(name: str, params: dict[str, str], extra: dict[str, str]) -> Any:
    from protocol.tasks.real import _COMMON, TaskParams

    return TaskParams(
        name,
        params,
        {
            "pair": "classes A-B (A is +1) or A-rest (one-vs-rest), default 0-6",
            "dim": f"projection dimension in {list(DIM_RANGE)}, default {DEFAULT_DIM}",
            **_COMMON,
            "n": f"training points (≤ 12,000 for a pair, ≤ 60,000 for A-rest), default {DEFAULT_N}",
            **extra,
        },
    )


def _probe_task_split(
    name: str, params: dict[str, str], extra: dict[str, str]
) -> tuple[Any, datasets.BinarySplit, dict[str, Any]]:
    """(parameters, split, spec) of a probe task: the one reading of pair, n, z and dim."""
    from protocol.tasks.real import DEFAULT_Z

    tp = _probe_params(name, params, extra)
    split, spec = probe_split(
        tp.str("pair", "0-6"),
        tp.int("n", DEFAULT_N, lo=1) or DEFAULT_N,
        tp.int("z", DEFAULT_Z, lo=1) or DEFAULT_Z,
        tp.int("dim", DEFAULT_DIM, lo=1) or DEFAULT_DIM,
    )
    return tp, split, spec


def fashion_mnist_probe(selector: str, params: dict[str, str]) -> Task:
    """``fashion-mnist-probe``: logistic regression on the projected features (certifiable)."""
    from protocol.tasks.real import _LOGREG, LogisticRegressionTask, _logreg_kwargs

    tp, split, spec = _probe_task_split("fashion-mnist-probe", params, _LOGREG)
    return LogisticRegressionTask(
        selector, "fashion-mnist-probe", split, dataset_spec=spec, **_logreg_kwargs(tp)
    )


def fashion_mnist_probe_mlp(selector: str, params: dict[str, str]) -> Task:
    """``fashion-mnist-probe-mlp``: the tanh MLP of ``digits-mlp`` on the same features."""
    from protocol.tasks.real import MLP_PARAMS, mlp_task

    tp, split, spec = _probe_task_split("fashion-mnist-probe-mlp", params, MLP_PARAMS)
    return mlp_task(selector, "fashion-mnist-probe-mlp", tp, split, spec)


FACTORIES = {
    "fashion-mnist-probe": fashion_mnist_probe,
    "fashion-mnist-probe-mlp": fashion_mnist_probe_mlp,
}
