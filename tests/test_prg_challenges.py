"""The public PRG and the challenge sets: exact byte layout, determinism, statistics, validation."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import challenges, prg
from protocol.challenges import ROLES, ChallengeSpec, PrivateSample, draw_spot_checks

SEED = bytes(range(32))


# ------------------------------------------------------------------------------------- PRG


def test_stream_key_layout_is_exactly_specified():
    expected = hashlib.sha256(
        b"attribution.v1/lbl\x00"
        + (3).to_bytes(8, "little")
        + b"abc"
        + (0).to_bytes(8, "little")
        + (2).to_bytes(8, "little")
        + b"xy"
    ).digest()
    assert prg.stream_key("lbl", b"abc", b"", b"xy") == expected
    # the length prefixes make the encoding injective
    assert prg.stream_key("lbl", b"ab", b"c") != prg.stream_key("lbl", b"a", b"bc")
    assert prg.stream_key("a", b"b") != prg.stream_key("ab")


def test_uniforms_match_rfc8439_block_function():
    # RFC 8439 §2.3.2: key 00..1f, nonce 00000009 0000004a 00000000, block counter 1.
    # Our nonce layout is LE32(counter=0) || LE64(stream) || 0000, so stream = LE64^-1(00000009
    # 0000004a) and uint32 16..19 are the first words of block 1 (serialised 10 f1 e7 e4 ...).
    stream = int.from_bytes(bytes.fromhex("000000090000004a"), "little")
    u = prg.uniforms_u32(bytes(range(32)), stream, 20)
    assert [int(v) for v in u[16:20]] == [0xE4E7F110, 0x15593BD1, 0x1FDD0F50, 0xC47120A3]


def test_uniforms_known_answer_regression_vector():
    # Computed once with this implementation; any change to the PRG breaks every transcript.
    key = prg.stream_key("test", b"abc", b"")
    assert key.hex() == "2e1cfd265bb940daf1925df3e76274e7a176086367859acc1c787f635c09c13d"
    u = prg.uniforms_u32(key, 7, 6)
    assert u.dtype == np.uint32
    assert u.tolist() == [2628520452, 2931319777, 4053484438, 3241989514, 1208595547, 1426297744]
    assert prg.derive_seed(key, 3) == 17905364378149490861


def test_uniforms_equal_raw_chacha20_keystream_and_are_prefix_stable():
    key = prg.stream_key("x")
    nonce = (0).to_bytes(4, "little") + (5).to_bytes(8, "little") + bytes(4)
    raw = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(400))
    u = prg.uniforms_u32(key, 5, 100)
    assert u.tolist() == list(struct.unpack("<100I", raw))
    assert np.array_equal(prg.uniforms_u32(key, 5, 37), u[:37])
    assert not np.array_equal(prg.uniforms_u32(key, 6, 100), u)
    assert prg.uniforms_u32(key, 2**64 - 1, 3).shape == (3,)
    assert prg.uniforms_u32(key, 0, 0).shape == (0,)


def test_derive_seed_layout():
    key = prg.stream_key("seeds")
    digest = hashlib.sha256(key + b"seed" + (12345).to_bytes(8, "little")).digest()
    assert prg.derive_seed(key, 12345) == int.from_bytes(digest[:8], "little")
    assert prg.derive_seeds(key, [12345, 1]).tolist() == [
        prg.derive_seed(key, 12345),
        prg.derive_seed(key, 1),
    ]


def test_threshold_quantisation():
    assert prg.threshold_u32(0.5) == 2**31
    assert prg.threshold_u32(0.0) == 0
    assert prg.threshold_u32(1.0) == 2**32
    assert prg.threshold_u32(-0.1) == 0
    assert prg.threshold_u32(1.7) == 2**32
    assert prg.threshold_u32(0.3) == int(np.floor(0.3 * 2**32))
    u = np.array([0, 1, 2**32 - 1], dtype=np.uint32)
    assert prg.below_threshold(u, 2**32).all()
    assert not prg.below_threshold(u, 0).any()
    assert prg.below_threshold(u, 1).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="finite"):
        prg.threshold_u32(float("nan"))


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0))
def test_threshold_is_within_one_ulp_of_probability(q):
    t = prg.threshold_u32(q)
    assert 0 <= t <= 2**32
    assert abs(t / 2**32 - q) < 2**-32


def test_prg_input_validation():
    with pytest.raises(ValueError, match="32 bytes"):
        prg.uniforms_u32(b"short", 0, 4)
    with pytest.raises(ValueError, match="stream"):
        prg.uniforms_u32(SEED, -1, 4)
    with pytest.raises(ValueError, match="stream"):
        prg.uniforms_u32(SEED, 2**64, 4)
    with pytest.raises(ValueError, match="count"):
        prg.uniforms_u32(SEED, 0, -1)


def test_bernoulli_masks_rows_and_marginal_frequency():
    key = prg.stream_key("freq")
    masks = prg.bernoulli_masks(key, range(200), 500, 0.3)
    assert masks.shape == (200, 500)
    assert masks.dtype == np.bool_
    # 100,000 Bernoulli(0.3) draws: sd of the mean = sqrt(0.21/1e5) ≈ 0.00145; tolerance 5 sd.
    assert abs(masks.mean() - 0.3) < 5 * np.sqrt(0.21 / 1e5)
    t = prg.threshold_u32(0.3)
    assert np.array_equal(masks[17], prg.uniforms_u32(key, 17, 500) < t)
    # numpy stream arrays, uint64 included, give the same rows
    again = prg.bernoulli_masks(key, np.array([17, 3], dtype=np.uint64), 500, 0.3)
    assert np.array_equal(again, masks[[17, 3]])
    assert prg.bernoulli_masks(key, [], 5, 0.3).shape == (0, 5)


def test_private_key_is_fresh():
    a, b = prg.private_key(), prg.private_key()
    assert len(a) == 32
    assert a != b


# ------------------------------------------------------------------------------ challenges


def _reference_tuple(spec: ChallengeSpec, j: int) -> np.ndarray:
    """Re-derive tuple j straight from the docstring, independently of ChallengeSpec."""
    n = spec.num_train_points
    key = hashlib.sha256(
        b"attribution.v1/challenge\x00"
        + (32).to_bytes(8, "little")
        + spec.public_seed
        + (8).to_bytes(8, "little")
        + n.to_bytes(8, "little")
        + (8).to_bytes(8, "little")
        + struct.pack("<d", spec.p)
        + (8).to_bytes(8, "little")
        + struct.pack("<d", spec.rho)
    ).digest()
    u = prg.uniforms_u32(key, j, 3 * n).astype(np.uint64)
    u_x, v, w = u[:n], u[n : 2 * n], u[2 * n :]

    def thr(q: float) -> int:
        return min(int(np.floor(q * 2**32)), 2**32)

    x = u_x < thr(spec.p)
    y0 = w < thr(spec.p)
    yr = np.where(v < thr(spec.rho), x, y0)
    y2r = np.where(v < thr(2 * spec.rho), x, y0)
    return np.stack([x, y0, yr, y2r])


@pytest.mark.parametrize(("rho", "p"), [(0.25, 0.5), (0.5, 0.3), (0.1, 0.7)])
def test_member_masks_follow_the_specification(rho, p):
    spec = ChallengeSpec(SEED, 5, rho, 40, p)
    all_masks = spec.member_masks(np.arange(spec.num_members))
    for j in range(5):
        assert np.array_equal(all_masks[4 * j : 4 * j + 4], _reference_tuple(spec, j))
    if rho == 0.5:  # 2ρ = 1: y_2ρ is a copy of x (but gets its own seed)
        assert np.array_equal(all_masks[3::4], all_masks[0::4])
    seeds = spec.member_seeds(np.arange(spec.num_members))
    key = prg.stream_key("train-seed", SEED)
    assert seeds.dtype == np.uint64
    assert seeds.tolist() == [prg.derive_seed(key, i) for i in range(spec.num_members)]
    assert len(set(seeds.tolist())) == spec.num_members


def test_member_masks_any_order_and_repeats():
    spec = ChallengeSpec(SEED, 6, 0.25, 30, 0.5)
    full = spec.member_masks(range(spec.num_members))
    idx = np.array([23, 0, 5, 5, 22, 1, 14])
    assert np.array_equal(spec.member_masks(idx), full[idx])
    assert spec.member_masks([]).shape == (0, 30)
    with pytest.raises(ValueError, match="indices"):
        spec.member_masks([24])
    with pytest.raises(ValueError, match="indices"):
        spec.member_seeds([-1])


def test_iter_member_batches_covers_everything_in_order():
    spec = ChallengeSpec(SEED, 7, 0.25, 20, 0.4)
    batches = list(spec.iter_member_batches(5))
    assert [b[0].size for b in batches] == [5, 5, 5, 5, 5, 3]
    idx = np.concatenate([b[0] for b in batches])
    assert idx.tolist() == list(range(28))
    assert np.array_equal(np.concatenate([b[1] for b in batches]), spec.member_masks(idx))
    assert np.array_equal(np.concatenate([b[2] for b in batches]), spec.member_seeds(idx))


def test_large_spec_is_lazy():
    # N = 100,000 and n = 100,000 tuples: only what is asked for is generated.
    spec = ChallengeSpec(SEED, 100_000, 0.25, 100_000, 0.5)
    assert spec.num_members == 400_000
    last = spec.member_masks([399_999, 0])
    assert last.shape == (2, 100_000)
    # ~50% inclusion; sd ≈ 0.0016 per row, tolerance 0.01
    assert abs(last.mean() - 0.5) < 0.01
    first = next(spec.iter_member_batches(8))
    assert first[1].shape == (8, 100_000)


def test_challenge_key_binds_every_parameter():
    base = ChallengeSpec(SEED, 2, 0.25, 16, 0.5)
    variants = [
        ChallengeSpec(bytes(32), 2, 0.25, 16, 0.5),
        ChallengeSpec(SEED, 2, 0.2, 16, 0.5),
        ChallengeSpec(SEED, 2, 0.25, 17, 0.5),
        ChallengeSpec(SEED, 2, 0.25, 16, 0.4),
    ]
    keys = {base.challenge_key, *(v.challenge_key for v in variants)}
    assert len(keys) == 5
    # num_tuples does not enter the key: a longer E extends a shorter one
    longer = ChallengeSpec(SEED, 5, 0.25, 16, 0.5)
    assert np.array_equal(longer.member_masks(range(8)), base.member_masks(range(8)))


def test_roles_marginals_and_correlations():
    # 500 tuples x 200 coordinates = 100,000 coordinate pairs per role.
    p, rho = 0.3, 0.2
    spec = ChallengeSpec(SEED, 500, rho, 200, p)
    masks = spec.member_masks(np.arange(spec.num_members))
    x = 2.0 * masks.astype(float) - 1.0
    mu, sigma = 2 * p - 1, np.sqrt(4 * p * (1 - p))
    base = (x[0::4] - mu) / sigma
    # marginals: sd of a frequency over 1e5 draws ≈ 0.00145; tolerance 5 sd
    for role in range(4):
        assert abs(masks[role::4].mean() - p) < 0.0073, ROLES[role]
    # normalised correlation E[φ(x_i) φ(y_i)] = ℓ; sd ≈ 1/sqrt(1e5) ≈ 0.0032 (a bit more for
    # p = 0.3 because φ is skewed); tolerance 0.02 ≈ 6 sd
    for role, expected in ((1, 0.0), (2, rho), (3, 2 * rho)):
        other = (x[role::4] - mu) / sigma
        assert abs(np.mean(base * other) - expected) < 0.02, ROLES[role]


def test_challenge_spec_validation():
    with pytest.raises(ValueError, match="32 bytes"):
        ChallengeSpec(b"x" * 31, 1, 0.25, 10, 0.5)
    with pytest.raises(ValueError, match="num_tuples"):
        ChallengeSpec(SEED, 0, 0.25, 10, 0.5)
    with pytest.raises(ValueError, match="rho"):
        ChallengeSpec(SEED, 1, 0.6, 10, 0.5)
    with pytest.raises(ValueError, match="rho"):
        ChallengeSpec(SEED, 1, 0.0, 10, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ChallengeSpec(SEED, 1, 0.25, 10, 1.0)
    with pytest.raises(ValueError, match="N"):
        ChallengeSpec(SEED, 1, 0.25, 0, 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        next(ChallengeSpec(SEED, 1, 0.25, 10, 0.5).iter_member_batches(0))


def test_public_seed_is_fresh_32_bytes():
    a, b = challenges.public_seed(), challenges.public_seed()
    assert len(a) == 32
    assert a != b


# ----------------------------------------------------------------------------- spot checks


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=250))
def test_spot_checks_distinct_sorted_in_range(num_members, k):
    c = draw_spot_checks(num_members, k)
    assert c.size == min(k, num_members)
    assert np.all(np.diff(c) > 0)
    assert c.size == 0 or (c.min() >= 0 and c.max() < num_members)


def test_spot_checks_all_when_k_large_and_huge_populations():
    assert draw_spot_checks(5, 9).tolist() == [0, 1, 2, 3, 4]
    c = draw_spot_checks(10**12, 50)
    assert c.size == 50
    assert c.max() < 10**12
    with pytest.raises(ValueError, match="k"):
        draw_spot_checks(10, -1)


def test_spot_checks_roughly_uniform():
    # 3000 draws of 3 out of 10: each index has frequency 0.3, sd ≈ 0.0084; tolerance 0.05 (6 sd)
    counts = np.zeros(10)
    for _ in range(3000):
        counts[draw_spot_checks(10, 3)] += 1
    assert np.all(np.abs(counts / 3000 - 0.3) < 0.05)


# ---------------------------------------------------------------------------- private sample


def test_private_sample_derivation_and_secrecy():
    key = bytes([9]) * 32
    ms = PrivateSample(key, 6, 25, 0.4)
    assert key.hex() not in repr(ms)
    assert "key" not in repr(ms)
    expected = prg.bernoulli_masks(prg.stream_key("mse-sample", key), range(6), 25, 0.4)
    assert np.array_equal(ms.masks(), expected)
    seed_key = prg.stream_key("mse-seed", key)
    assert ms.seeds().tolist() == [prg.derive_seed(seed_key, i) for i in range(6)]
    assert np.array_equal(ms.masks([4, 1]), expected[[4, 1]])
    batches = list(ms.iter_batches(4))
    assert np.array_equal(np.concatenate([b[1] for b in batches]), expected)
    a, b = PrivateSample.fresh(4, 25, 0.4), PrivateSample.fresh(4, 25, 0.4)
    assert a.key != b.key
    assert not np.array_equal(a.masks(), b.masks())
    with pytest.raises(ValueError, match="32 bytes"):
        PrivateSample(b"k", 3, 25, 0.4)
    with pytest.raises(ValueError, match="size"):
        PrivateSample(key, 0, 25, 0.4)
