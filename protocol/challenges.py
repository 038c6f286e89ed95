"""Challenge sets: the public set E, the secret spot checks C and the secret MSE sample M.

**Public challenge set E (coupled tuples, a design decision).** E consists of ``n = num_tuples``
tuples. Tuple ``j`` holds four members, indexed ``i = 4*j + role`` with roles
``ROLES = ("x", "y0", "yrho", "y2rho")``. All four come from ONE PRG stream ``j`` of the key::

    K_E = stream_key("challenge", public_seed, LE64(N), float64_LE(p), float64_LE(rho))

(see :mod:`protocol.prg`). Draw ``u = uniforms_u32(K_E, j, 3*N)`` and split it, in this order, into
``u_x = u[0:N]``, ``v = u[N:2N]``, ``w = u[2N:3N]``. With ``T = threshold_u32``::

    x       = u_x < T(p)                        (the base subset)
    y0      = w   < T(p)                        (independent of x)
    yrho[i] = x[i]  if v[i] < T(rho)  else y0[i]
    y2rho[i]= x[i]  if v[i] < T(2*rho) else y0[i]

Coordinate-wise, y_ℓ keeps x_i with probability ℓ and otherwise uses a fresh B_p draw, so every
member is marginally B_p, (x, y0) are independent, (x, yrho) are rho-correlated and (x, y2rho) are
2rho-correlated: E[f(x) f(y_ℓ)] = h(ℓ) = Σ_k ℓ^k B_k. The three pairs of one tuple share x, the
fresh draw y0 and the coin v. This coupling is deliberate: each ŷ_ℓ is still an average of n
i.i.d. products (Hoeffding applies per level), while the positive correlation between the three
levels reduces the variance of the differences ŷ_ρ − ŷ_0 and ŷ_2ρ − ŷ_ρ that the quadratic fit
takes. The independent singles for E[f²] are x and y0 of every tuple (2n samples).

**Training seeds.** Member ``i`` trains with seed ``derive_seed(stream_key("train-seed",
public_seed), i)``: every member has its own independent seed, even when two subsets coincide
(e.g. y_2ρ = x when 2ρ = 1). This keeps seed noise consistent between the residual and the MSE.

**Spot checks C.** :func:`draw_spot_checks` samples k distinct members uniformly without
replacement from the OS CSPRNG (``secrets.SystemRandom``); nothing the prover sees determines C.

**MSE sample M.** :class:`PrivateSample` derives fresh B_p subsets and seeds from a private 32-byte
key held by the verifier only.

Memory: masks are produced per tuple / per batch; nothing here materialises all of E at once, so
N = 100,000 and n = 100,000 tuples (400,000 members) work through :meth:`iter_member_batches`.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol import prg
from protocol.validation import check_rho

ROLES = ("x", "y0", "yrho", "y2rho")
"""Member roles within a tuple; member index i = 4*j + ROLES.index(role)."""

MEMBERS_PER_TUPLE = len(ROLES)
SEED_LEN = 32


def public_seed() -> bytes:
    """Return 32 fresh CSPRNG bytes to use as a challenge set's public seed."""
    return prg.private_key()


def _check_pos_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_prob(p: object, name: str = "p") -> float:
    try:
        q = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {p!r}") from None
    if not (math.isfinite(q) and 0.0 < q < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {p!r}")
    return q


def _as_indices(indices: np.ndarray | Sequence[int], upper: int, what: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1:
        raise ValueError(f"{what} indices must be one-dimensional, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{what} indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= upper:
        raise ValueError(
            f"{what} indices must lie in [0, {upper}), got range [{idx.min()}, {idx.max()}]"
        )
    return idx


@dataclass(frozen=True)
class ChallengeSpec:
    """The public description of E; both parties derive every member's subset and seed from it."""

    public_seed: bytes
    num_tuples: int
    rho: float
    num_train_points: int
    p: float

    def __post_init__(self) -> None:
        if not isinstance(self.public_seed, (bytes, bytearray)) or len(self.public_seed) != 32:
            got = (
                f"{len(self.public_seed)} bytes"
                if isinstance(self.public_seed, (bytes, bytearray))
                else type(self.public_seed).__name__
            )
            raise ValueError(f"public_seed must be {SEED_LEN} bytes, got {got}")
        _check_pos_int(self.num_tuples, "num_tuples")
        _check_pos_int(self.num_train_points, "num_train_points (N)")
        check_rho(self.rho)
        _check_prob(self.p, "p")

    @property
    def num_members(self) -> int:
        """|E| = 4 * num_tuples."""
        return MEMBERS_PER_TUPLE * int(self.num_tuples)

    @property
    def challenge_key(self) -> bytes:
        """K_E, the PRG key of the challenge subsets (see module docstring)."""
        return prg.stream_key(
            "challenge",
            bytes(self.public_seed),
            int(self.num_train_points).to_bytes(8, "little"),
            struct.pack("<d", float(self.p)),
            struct.pack("<d", float(self.rho)),
        )

    @property
    def seed_key(self) -> bytes:
        """The PRG key of the training seeds: ``stream_key("train-seed", public_seed)``."""
        return prg.stream_key("train-seed", bytes(self.public_seed))

    def tuple_masks(self, j: int, key: bytes | None = None) -> np.ndarray:
        """Return the (4, N) boolean masks of tuple ``j`` in role order (x, y0, yrho, y2rho)."""
        if not 0 <= int(j) < int(self.num_tuples):
            raise ValueError(f"tuple index must lie in [0, {self.num_tuples}), got {j}")
        n = int(self.num_train_points)
        u = prg.uniforms_u32(self.challenge_key if key is None else key, int(j), 3 * n)
        u_x, v, w = u[:n], u[n : 2 * n], u[2 * n :]
        t = prg.threshold_u32(self.p)
        out = np.empty((MEMBERS_PER_TUPLE, n), dtype=bool)
        out[0] = prg.below_threshold(u_x, t)
        out[1] = prg.below_threshold(w, t)
        out[2] = np.where(prg.below_threshold(v, prg.threshold_u32(self.rho)), out[0], out[1])
        out[3] = np.where(prg.below_threshold(v, prg.threshold_u32(2 * self.rho)), out[0], out[1])
        return out

    def member_masks(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Return the ``(len(indices), N)`` boolean masks of the given members, in the given order.

        Each needed tuple is generated once (one ChaCha20 stream of 3N words); memory is the
        output plus O(N). Raises ``ValueError`` for indices outside [0, |E|).
        """
        idx = _as_indices(indices, self.num_members, "member")
        out = np.empty((idx.size, int(self.num_train_points)), dtype=bool)
        if idx.size == 0:
            return out
        tuples = idx // MEMBERS_PER_TUPLE
        roles = idx % MEMBERS_PER_TUPLE
        order = np.argsort(tuples, kind="stable")
        sorted_t = tuples[order]
        bounds = np.flatnonzero(np.diff(sorted_t)) + 1
        key = self.challenge_key
        for group in np.split(order, bounds):
            rows = self.tuple_masks(int(tuples[group[0]]), key=key)
            out[group] = rows[roles[group]]
        return out

    def member_seeds(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Return the uint64 training seeds of the given members (one independent seed each)."""
        idx = _as_indices(indices, self.num_members, "member")
        return prg.derive_seeds(self.seed_key, idx)

    def iter_member_batches(
        self, batch_size: int, first_member: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, masks, seeds)`` over members [first_member, |E|) in order,
        ``batch_size`` at a time.

        ``indices`` is int64 (B,), ``masks`` bool (B, N), ``seeds`` uint64 (B,), B <= batch_size.
        """
        bs = _check_pos_int(batch_size, "batch_size")
        total = self.num_members
        for start in range(int(first_member), total, bs):
            idx = np.arange(start, min(start + bs, total), dtype=np.int64)
            yield idx, self.member_masks(idx), self.member_seeds(idx)


@dataclass(frozen=True)
class ChallengeRound:
    """One round of a challenge stream: tuples [first_tuple, spec.num_tuples) of ``spec``.

    Every round of a session shares the public seed and ρ, so tuple j (and member 4j + role) is
    the same subset and seed whichever round asks for it; rounds continue where the last ended.
    """

    spec: ChallengeSpec
    first_tuple: int = 0

    def __post_init__(self) -> None:
        if not 0 <= int(self.first_tuple) < int(self.spec.num_tuples):
            raise ValueError(
                f"first_tuple must lie in [0, {self.spec.num_tuples}), got {self.first_tuple}"
            )

    @property
    def num_tuples(self) -> int:
        """Tuples in this round."""
        return int(self.spec.num_tuples) - int(self.first_tuple)

    @property
    def first_member(self) -> int:
        """Global index of the round's first member."""
        return MEMBERS_PER_TUPLE * int(self.first_tuple)

    @property
    def num_members(self) -> int:
        """Members in this round (4 per tuple)."""
        return MEMBERS_PER_TUPLE * self.num_tuples

    @property
    def members(self) -> np.ndarray:
        """The round's global member indices, in order (int64)."""
        return np.arange(self.first_member, self.spec.num_members, dtype=np.int64)


def draw_spot_checks(num_members: int, k: int) -> np.ndarray:
    """Return k distinct member indices in [0, num_members), sorted, uniform without replacement.

    Uses the OS CSPRNG (``secrets.SystemRandom().sample``), so the set is unpredictable to the
    prover. If ``k >= num_members`` every index is returned. Result dtype is int64.
    """
    total = _check_pos_int(num_members, "num_members")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if int(k) >= total:
        return np.arange(total, dtype=np.int64)
    chosen = secrets.SystemRandom().sample(range(total), int(k))
    return np.array(sorted(chosen), dtype=np.int64)


@dataclass(frozen=True)
class PrivateSample:
    """The verifier's secret MSE sample M: ``size`` fresh B_p subsets with fresh seeds.

    Subsets: ``bernoulli_masks(stream_key("mse-sample", key), range(size), N, p)``.
    Seeds: ``derive_seed(stream_key("mse-seed", key), i)``. The key never leaves the verifier
    (it is hidden from ``repr``), so the prover cannot predict M.
    """

    key: bytes = field(repr=False)
    size: int
    num_train_points: int
    p: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, (bytes, bytearray)) or len(self.key) != prg.KEY_LEN:
            raise ValueError(f"PrivateSample key must be {prg.KEY_LEN} bytes")
        _check_pos_int(self.size, "size")
        _check_pos_int(self.num_train_points, "num_train_points (N)")
        _check_prob(self.p, "p")

    @classmethod
    def fresh(cls, size: int, num_train_points: int, p: float) -> PrivateSample:
        """Return a sample keyed by a fresh CSPRNG key (:func:`protocol.prg.private_key`)."""
        return cls(prg.private_key(), size, num_train_points, p)

    def masks(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Return the (size, N) boolean subsets, or only the rows ``indices`` when given."""
        idx = (
            np.arange(int(self.size), dtype=np.int64)
            if indices is None
            else _as_indices(indices, int(self.size), "sample")
        )
        return prg.bernoulli_masks(
            prg.stream_key("mse-sample", bytes(self.key)), idx, int(self.num_train_points), self.p
        )

    def seeds(self, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Return the uint64 seeds (all ``size`` of them, or only rows ``indices``)."""
        idx = (
            np.arange(int(self.size), dtype=np.int64)
            if indices is None
            else _as_indices(indices, int(self.size), "sample")
        )
        return prg.derive_seeds(prg.stream_key("mse-seed", bytes(self.key)), idx)

    def iter_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, masks, seeds)`` over the sample, ``batch_size`` rows at a time."""
        bs = _check_pos_int(batch_size, "batch_size")
        for start in range(0, int(self.size), bs):
            idx = np.arange(start, min(start + bs, int(self.size)), dtype=np.int64)
            yield idx, self.masks(idx), self.seeds(idx)
