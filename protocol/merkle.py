"""SHA-256 Merkle commitments over per-challenge leaves, with leaf/node domain separation.

Leaf preimages start with ``0x00`` and interior-node preimages with ``0x01``, so no leaf can be
reinterpreted as an interior node (or vice versa) without a SHA-256 collision.

Tree shape: leaves are paired left to right, level by level. An odd node at the end of a level is
**promoted unchanged** to the next level; it is never paired with a copy of itself. Duplicating the
last node (Bitcoin's rule) makes the trees over ``[a, b, c]`` and ``[a, b, c, c]`` share one root
(CVE-2012-2459), so a root would not fix the number of leaves. With promotion, and with the verifier
always supplying ``num_leaves`` from the protocol, that ambiguity cannot arise.

Inclusion proofs list the sibling hashes bottom-up and skip the levels at which the node was
promoted; :func:`verify_proof` recomputes the same shape from ``(num_leaves, index)`` and requires
exactly that many siblings.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
LEAF_LABEL = b"attribution.v1/leaf"
HASH_LEN = 32
_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1


def _check_uint(value: Any, name: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if not 0 <= v <= maximum:
        raise ValueError(f"{name} must lie in [0, {maximum}], got {v}")
    return v


def _check_f_values(f_values: Any) -> np.ndarray:
    if isinstance(f_values, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in f_values):
            raise ValueError("f_values must contain only real numbers")
        f_values = np.asarray(f_values, dtype=np.float64)
    if not isinstance(f_values, np.ndarray):
        raise ValueError(f"f_values must be a float64 array, got {type(f_values).__name__}")
    if f_values.dtype.kind != "f" or f_values.dtype.itemsize > 8:
        raise ValueError(f"f_values must be a float64 array, got dtype {f_values.dtype}")
    if f_values.ndim != 1:
        raise ValueError(f"f_values must be one-dimensional (Z,), got shape {f_values.shape}")
    if f_values.shape[0] > _U32_MAX:
        raise ValueError("too many f-values for one leaf")
    out = f_values.astype("<f8")  # float16/32 -> float64 is exact
    if not np.all(np.isfinite(out)):
        raise ValueError("f_values must be finite (no NaN or infinity)")
    return out


def _check_digest(digest: Any) -> bytes:
    if not isinstance(digest, (bytes, bytearray, memoryview)):
        raise ValueError(f"weights digest must be bytes, got {type(digest).__name__}")
    d = bytes(digest)
    if len(d) > _U32_MAX:
        raise ValueError("weights digest too long")
    return d


def leaf_preimage(index: int, seed: int, f_values: np.ndarray, weights_digest: bytes) -> bytes:
    """The exact bytes :func:`leaf_hash` hashes (validated as in :func:`leaf_hash`)."""
    idx = _check_uint(index, "index", _U64_MAX)
    sd = _check_uint(seed, "seed", _U64_MAX)
    f = _check_f_values(f_values)
    d = _check_digest(weights_digest)
    return b"".join(
        (
            LEAF_PREFIX,
            LEAF_LABEL,
            idx.to_bytes(8, "little"),
            sd.to_bytes(8, "little"),
            len(f).to_bytes(4, "little"),
            f.tobytes(),
            len(d).to_bytes(4, "little"),
            d,
        )
    )


def leaf_hash(index: int, seed: int, f_values: np.ndarray, weights_digest: bytes) -> bytes:
    """Hash one committed challenge answer into a 32-byte leaf.

    SHA-256(0x00 ‖ "attribution.v1/leaf" ‖ index u64 LE ‖ seed u64 LE ‖ Z u32 LE ‖ f-values as
    float64 LE ‖ len(digest) u32 LE ‖ digest). Every field has a fixed width or a length prefix, so
    the encoding is injective. Raises ``ValueError`` on non-finite f-values, negative or oversized
    integers, or arguments of the wrong type.
    """
    return hashlib.sha256(leaf_preimage(index, seed, f_values, weights_digest)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): an interior node over two 32-byte children."""
    return hashlib.sha256(NODE_PREFIX + bytes(left) + bytes(right)).digest()


def build_leaves(
    indices: Sequence[int] | np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    f_values: np.ndarray,
    digests: Sequence[bytes],
) -> list[bytes]:
    """Leaf hashes for L challenges at once: leaf k = ``leaf_hash(indices[k], seeds[k], ...)``.

    ``f_values`` is (L, Z). Identical to calling :func:`leaf_hash` per row, but vectorised when
    all digests have the same length (the usual case), so 400,000 leaves take well under a second.
    """
    f = np.asarray(f_values)
    if f.ndim != 2:
        raise ValueError(f"f_values must have shape (L, Z), got {f.shape}")
    L, Z = f.shape
    if len(indices) != L or len(seeds) != L or len(digests) != L:
        raise ValueError(
            f"indices, seeds and digests must each have {L} entries, got "
            f"{len(indices)}, {len(seeds)}, {len(digests)}"
        )
    if L == 0:
        return []
    idx_arr = np.asarray(indices)
    seed_arr = np.asarray(seeds)
    dlens = {len(d) for d in digests if isinstance(d, (bytes, bytearray, memoryview))}
    fast = (
        len(dlens) == 1
        and all(isinstance(d, (bytes, bytearray)) for d in digests)
        and f.dtype == np.float64
        and idx_arr.dtype.kind in "iu"
        and seed_arr.dtype.kind in "iu"
        and idx_arr.ndim == 1
        and seed_arr.ndim == 1
    )
    if not fast:
        return [
            leaf_hash(i, s, row, d) for i, s, row, d in zip(indices, seeds, f, digests, strict=True)
        ]
    if not np.all(np.isfinite(f)):
        raise ValueError("f_values must be finite (no NaN or infinity)")
    if np.any(idx_arr < 0) or np.any(seed_arr < 0):
        raise ValueError("indices and seeds must be non-negative")
    (D,) = dlens
    head = LEAF_PREFIX + LEAF_LABEL
    fields: list[tuple[Any, ...]] = [
        ("head", f"S{len(head)}"),
        ("index", "<u8"),
        ("seed", "<u8"),
        ("z", "<u4"),
        ("f", "<f8", (Z,)),
        ("dlen", "<u4"),
    ]
    if D:
        fields.append(("digest", f"V{D}"))
    rec = np.dtype(fields, align=False)
    buf = np.zeros(L, dtype=rec)
    buf["head"] = head
    buf["index"] = idx_arr.astype(np.uint64)
    buf["seed"] = seed_arr.astype(np.uint64)
    buf["z"] = Z
    buf["f"] = f
    buf["dlen"] = D
    raw = buf.view(np.uint8).reshape(L, rec.itemsize)
    if D:
        raw[:, rec.itemsize - D :] = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(L, D)
    mv = memoryview(raw.tobytes())
    size = rec.itemsize
    sha = hashlib.sha256
    return [sha(mv[k * size : (k + 1) * size]).digest() for k in range(L)]


def _as_leaf_array(leaves: Sequence[bytes] | np.ndarray) -> np.ndarray:
    if isinstance(leaves, np.ndarray):
        if leaves.ndim != 2 or leaves.shape[1] != HASH_LEN or leaves.dtype != np.uint8:
            raise ValueError(f"leaf array must be (L, 32) uint8, got {leaves.shape} {leaves.dtype}")
        return np.ascontiguousarray(leaves)
    leaves = list(leaves)
    for k, leaf in enumerate(leaves):
        if not isinstance(leaf, (bytes, bytearray, memoryview)) or len(leaf) != HASH_LEN:
            raise ValueError(f"leaf {k} must be {HASH_LEN} bytes")
    return np.frombuffer(b"".join(bytes(x) for x in leaves), dtype=np.uint8).reshape(
        len(leaves), HASH_LEN
    )


def _next_level(level: np.ndarray) -> np.ndarray:
    n = level.shape[0]
    pairs = n // 2
    pre = np.empty((pairs, 1 + 2 * HASH_LEN), dtype=np.uint8)
    pre[:, 0] = NODE_PREFIX[0]
    pre[:, 1:] = level[: 2 * pairs].reshape(pairs, 2 * HASH_LEN)
    mv = memoryview(pre.tobytes())
    step = 1 + 2 * HASH_LEN
    sha = hashlib.sha256
    out = b"".join([sha(mv[k * step : (k + 1) * step]).digest() for k in range(pairs)])
    parents = np.frombuffer(out, dtype=np.uint8).reshape(pairs, HASH_LEN)
    if n % 2:
        parents = np.concatenate([parents, level[-1:]], axis=0)  # promote the odd node unchanged
    return parents


class MerkleTree:
    """A Merkle tree over 32-byte leaf hashes (see the module docstring for its exact shape).

    Accepts a sequence of 32-byte ``bytes`` or an (L, 32) ``uint8`` array. Construction does
    L − 1 SHA-256 calls, level by level (about a second for 400,000 leaves); every level is kept so
    proofs cost O(log L).
    """

    def __init__(self, leaves: Sequence[bytes] | np.ndarray) -> None:
        level = _as_leaf_array(leaves)
        if level.shape[0] == 0:
            raise ValueError("a Merkle tree needs at least one leaf")
        self._levels: list[np.ndarray] = [level]
        while level.shape[0] > 1:
            level = _next_level(level)
            self._levels.append(level)

    @property
    def root(self) -> bytes:
        """The 32-byte root (for a single leaf, the leaf itself)."""
        return self._levels[-1][0].tobytes()

    @property
    def num_leaves(self) -> int:
        """L, the number of leaves."""
        return int(self._levels[0].shape[0])

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][self._check_index(index)].tobytes()

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"leaf index must be an integer, got {type(index).__name__}")
        if not 0 <= int(index) < self.num_leaves:
            raise ValueError(f"leaf index {index} out of range [0, {self.num_leaves})")
        return int(index)

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from the leaf level upward, skipping levels where the node is promoted."""
        idx = self._check_index(index)
        out: list[bytes] = []
        for level in self._levels[:-1]:
            n = level.shape[0]
            if not (idx == n - 1 and n % 2 == 1):
                out.append(level[idx ^ 1].tobytes())
            idx //= 2
        return out


def proof_length(num_leaves: int, index: int) -> int:
    """How many siblings an inclusion proof for ``index`` in a tree of ``num_leaves`` carries."""
    count, n, idx = 0, num_leaves, index
    while n > 1:
        if not (idx == n - 1 and n % 2 == 1):
            count += 1
        idx //= 2
        n = (n + 1) // 2
    return count


def verify_proof(
    root: bytes, num_leaves: int, index: int, leaf: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows ``leaf`` at position ``index`` of the tree with ``root``.

    The tree shape is recomputed from ``num_leaves``; the proof must carry exactly the expected
    number of 32-byte siblings. Never raises: any malformed input (wrong types or lengths, index
    out of range, too few or too many siblings) gives ``False``.
    """
    try:
        if isinstance(num_leaves, bool) or isinstance(index, bool):
            return False
        if not isinstance(num_leaves, (int, np.integer)) or not isinstance(
            index, (int, np.integer)
        ):
            return False
        n, idx = int(num_leaves), int(index)
        if n < 1 or not 0 <= idx < n or n > _U64_MAX:
            return False
        if not isinstance(root, (bytes, bytearray, memoryview)) or len(root) != HASH_LEN:
            return False
        if not isinstance(leaf, (bytes, bytearray, memoryview)) or len(leaf) != HASH_LEN:
            return False
        siblings = list(proof)
        if len(siblings) != proof_length(n, idx) or len(siblings) > math.ceil(math.log2(n)) + 1:
            return False
        h = bytes(leaf)
        k = 0
        while n > 1:
            if not (idx == n - 1 and n % 2 == 1):
                sib = siblings[k]
                if not isinstance(sib, (bytes, bytearray, memoryview)) or len(sib) != HASH_LEN:
                    return False
                h = node_hash(h, sib) if idx % 2 == 0 else node_hash(sib, h)
                k += 1
            idx //= 2
            n = (n + 1) // 2
        return k == len(siblings) and hmac.compare_digest(h, bytes(root))
    except Exception:  # never raise on malformed input
        return False
