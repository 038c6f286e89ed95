"""Merkle commitments: completeness of proofs, binding of every leaf field, domain separation."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import merkle


def _leaves(n: int, z: int = 2, seed: int = 0) -> tuple[list[bytes], np.ndarray, list[bytes]]:
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, z))
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
    leaves = merkle.build_leaves(np.arange(n), np.arange(n, dtype=np.uint64) + 7, f, digests)
    return leaves, f, digests


def test_leaf_hash_layout_is_exactly_specified():
    f = np.array([1.5, -2.0])
    d = b"\x07" * 32
    expected = hashlib.sha256(
        b"\x00attribution.v1/leaf"
        + (3).to_bytes(8, "little")
        + (9).to_bytes(8, "little")
        + (2).to_bytes(4, "little")
        + f.astype("<f8").tobytes()
        + (32).to_bytes(4, "little")
        + d
    ).digest()
    assert merkle.leaf_hash(3, 9, f, d) == expected
    node_pre = b"\x01" + b"a" * 32 + b"b" * 32
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(node_pre).digest()


def test_build_leaves_matches_leaf_hash():
    n = 37
    leaves, f, digests = _leaves(n, z=3)
    for i in range(n):
        assert leaves[i] == merkle.leaf_hash(i, i + 7, f[i], digests[i])
    # mixed digest lengths take the slow path and still agree
    mixed = [b"", b"x", *digests[2:]]
    slow = merkle.build_leaves(np.arange(n), np.arange(n) + 7, f, mixed)
    assert slow[1] == merkle.leaf_hash(1, 8, f[1], b"x")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"f_values": np.array([np.nan])}, "finite"),
        ({"f_values": np.array([np.inf, 0.0])}, "finite"),
        ({"f_values": np.array([[1.0]])}, "one-dimensional"),
        ({"f_values": np.array(["1"])}, "float64"),
        ({"f_values": np.array([1, 2])}, "float64"),
        ({"f_values": "1.0"}, "float64"),
        ({"index": -1}, "index"),
        ({"index": 2**64}, "index"),
        ({"index": 1.0}, "index"),
        ({"index": True}, "index"),
        ({"seed": -5}, "seed"),
        ({"weights_digest": "abc"}, "digest"),
    ],
)
def test_leaf_hash_rejects_bad_inputs(bad, message):
    args = {"index": 0, "seed": 0, "f_values": np.zeros(1), "weights_digest": b""}
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        merkle.leaf_hash(**args)


def test_build_leaves_rejects_nonfinite_and_bad_shapes():
    with pytest.raises(ValueError, match="finite"):
        merkle.build_leaves([0], [0], np.array([[np.nan]]), [b"x" * 32])
    with pytest.raises(ValueError, match="entries"):
        merkle.build_leaves([0, 1], [0], np.zeros((2, 1)), [b"x" * 32] * 2)
    with pytest.raises(ValueError, match="shape"):
        merkle.build_leaves([0], [0], np.zeros(1), [b"x" * 32])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_every_proof_verifies_and_wrong_ones_fail(n, data):
    leaves, _, _ = _leaves(n)
    tree = merkle.MerkleTree(leaves)
    assert tree.num_leaves == n
    for i in range(n):
        proof = tree.proof(i)
        assert len(proof) == merkle.proof_length(n, i)
        assert merkle.verify_proof(tree.root, n, i, leaves[i], proof)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        assert not merkle.verify_proof(tree.root, n, j, leaves[i], proof)  # wrong index
        assert not merkle.verify_proof(tree.root, n, i, leaves[j], proof)  # wrong leaf
        assert not merkle.verify_proof(tree.root, n, i, leaves[i], proof[:-1])  # truncated
    extended = [*proof, proof[0] if proof else leaves[0]]
    assert not merkle.verify_proof(tree.root, n, i, leaves[i], extended)
    if merkle.proof_length(n + 1, i) != len(proof):
        # A wrong leaf count changes the expected proof shape. (The root alone does not fix the
        # count; the protocol fixes it, since the verifier always supplies |E| itself.)
        assert not merkle.verify_proof(tree.root, n + 1, i, leaves[i], proof)
    assert not merkle.verify_proof(tree.root, n, n, leaves[i], proof)  # out of range
    assert not merkle.verify_proof(tree.root, n, -1, leaves[i], proof)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes(32)
        assert not merkle.verify_proof(tree.root, n, i, leaves[i], bad)


def test_tree_shape_binds_leaf_count_with_num_leaves():
    leaves, _, _ = _leaves(3)
    t3 = merkle.MerkleTree(leaves)
    t4 = merkle.MerkleTree([*leaves, leaves[2]])  # Bitcoin-style duplication would collide here
    assert t3.root != t4.root
    # the promoted node: [a, b, c] has root H(H(a,b), c)
    assert t3.root == merkle.node_hash(merkle.node_hash(leaves[0], leaves[1]), leaves[2])
    assert t3.proof(2) == [merkle.node_hash(leaves[0], leaves[1])]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    data=st.data(),
    field=st.sampled_from(["index", "seed", "f", "digest"]),
)
def test_changing_any_leaf_field_breaks_opening_or_root(n, data, field):
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, 3))
    seeds = [int(s) for s in rng.integers(0, 2**63, size=n)]
    digests = [bytes(rng.integers(0, 256, size=32, dtype=np.uint8)) for _ in range(n)]
    leaves = merkle.build_leaves(np.arange(n), seeds, f, digests)
    tree = merkle.MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    index, seed, fv, dg = i, seeds[i], f[i].copy(), digests[i]
    if field == "index":
        index = data.draw(st.integers(0, 2**64 - 1).filter(lambda v: v != i))
    elif field == "seed":
        seed = data.draw(st.integers(0, 2**64 - 1).filter(lambda v: v != seeds[i]))
    elif field == "f":
        z = data.draw(st.integers(0, 2))
        bit = data.draw(st.integers(0, 63))
        bits = fv.view(np.uint64).copy()
        bits[z] ^= np.uint64(1) << np.uint64(bit)
        fv = bits.view(np.float64)
        if not np.all(np.isfinite(fv)):
            return
    else:
        pos = data.draw(st.integers(0, 31))
        b = bytearray(dg)
        b[pos] ^= data.draw(st.integers(1, 255))
        dg = bytes(b)
    forged = merkle.leaf_hash(index, seed, fv, dg)
    assert forged != leaves[i]
    # the original opening no longer verifies for the changed content, at the claimed position
    assert not merkle.verify_proof(tree.root, n, i, forged, tree.proof(i))
    # and a tree built with the changed leaf has a different root
    changed = list(leaves)
    changed[i] = forged
    assert merkle.MerkleTree(changed).root != tree.root


def test_domain_separation_interior_node_cannot_pose_as_leaf():
    n = 8
    leaves, _, _ = _leaves(n)
    tree = merkle.MerkleTree(leaves)
    level1 = [merkle.node_hash(leaves[2 * k], leaves[2 * k + 1]) for k in range(n // 2)]
    # An interior node presented as a leaf at the committed size fails (proof has the wrong shape).
    for k in range(n // 2):
        for idx in (2 * k, 2 * k + 1):
            assert not merkle.verify_proof(tree.root, n, idx, level1[k], tree.proof(idx)[1:])
            assert not merkle.verify_proof(tree.root, n, idx, level1[k], tree.proof(idx))
    # The leaf and node preimage spaces are disjoint (first byte 0x00 vs 0x01), so no leaf content
    # hashes to an interior node without a SHA-256 collision: a leaf's preimage never parses as a
    # node's preimage.
    pre = merkle.leaf_preimage(0, 0, np.zeros(0), b"")
    assert pre[0] == 0
    assert len(pre) != 65
    for k in range(n // 2):
        node_pre = b"\x01" + leaves[2 * k] + leaves[2 * k + 1]
        assert hashlib.sha256(node_pre).digest() == level1[k]
        assert node_pre[0] != pre[0]
    # Without the prefix a node over (l, r) would equal the hash of the raw 64 bytes l||r; with it,
    # it does not.
    assert level1[0] != hashlib.sha256(leaves[0] + leaves[1]).digest()


@pytest.mark.parametrize(
    ("root", "num_leaves", "index", "leaf", "proof"),
    [
        (b"short", 4, 0, b"x" * 32, []),
        (b"x" * 32, 0, 0, b"x" * 32, []),
        (b"x" * 32, -3, 0, b"x" * 32, []),
        (b"x" * 32, 4, 0, b"x" * 31, [b"y" * 32, b"z" * 32]),
        (b"x" * 32, 4, 0, b"x" * 32, [b"y" * 31, b"z" * 32]),
        (b"x" * 32, 4, 0, b"x" * 32, None),
        (b"x" * 32, 4, 0, b"x" * 32, [None, 3]),
        (b"x" * 32, 4, "0", b"x" * 32, []),
        (b"x" * 32, 4.0, 0, b"x" * 32, []),
        (None, 1, 0, b"x" * 32, []),
        ("x" * 32, 1, 0, "x" * 32, []),
        (b"x" * 32, 2**70, 0, b"x" * 32, [b"y" * 32] * 71),
    ],
)
def test_verify_proof_never_raises(root, num_leaves, index, leaf, proof):
    assert merkle.verify_proof(root, num_leaves, index, leaf, proof) is False


def test_single_leaf_and_array_input():
    leaves, _, _ = _leaves(5)
    t1 = merkle.MerkleTree(leaves[:1])
    assert t1.root == leaves[0]
    assert t1.proof(0) == []
    assert merkle.verify_proof(t1.root, 1, 0, leaves[0], [])
    arr = np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(5, 32)
    assert merkle.MerkleTree(arr).root == merkle.MerkleTree(leaves).root
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.MerkleTree([])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.MerkleTree([b"x" * 31])
    with pytest.raises(ValueError, match="out of range"):
        merkle.MerkleTree(leaves).proof(5)


def test_400k_leaves_are_fast():
    n = 400_000
    f = np.random.default_rng(0).standard_normal((n, 1))
    digests = [b"\x11" * 32] * n
    start = time.perf_counter()
    leaves = merkle.build_leaves(np.arange(n), np.arange(n, dtype=np.uint64), f, digests)
    tree = merkle.MerkleTree(leaves)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, elapsed  # about 1 s on a laptop
    for i in (0, 1, n // 2, n - 1):
        assert merkle.verify_proof(tree.root, n, i, leaves[i], tree.proof(i))
