"""The streamed Monte-Carlo engine: the same trials as :func:`simulations.montecarlo.run_trial`
for the validity grid's provers, without ever holding the 4n f-values.

Why: at ε = 0.05 the practical plan asks for 25–45 million tuples, i.e. 100–180 million members
per target; the in-memory engine holds (4n, Z) float64 f-values several times over and spends
most of its time on temporary arrays. Here one compiled pass per chunk (numba) evaluates f on the
four members of every tuple, its residual sample r_j and every member's lie gain, and keeps only:

* the running count, mean and M2 of r_j per target (merged chunk by chunk, Chan et al.), which is
  all :func:`protocol.practical.residual_interval_from_moments` needs, so the verifier's interval
  is still computed by the protocol's code;
* the m* members with the largest lie gains, with their tuples' f-values, which is all the
  targeted few-lies attack (:func:`simulations.montecarlo.targeted_lies`) touches. The lied
  residual moments are the honest ones corrected on the lied tuples only.

The draws are exactly those of :func:`simulations.montecarlo.sample_tuples` (same generator, same
calls, same order), so a trial keyed by the same seed sees the same tuples in both engines; the
verdicts agree, and err_upper / residual_lower agree to floating-point summation order
(``tests/test_streamed.py`` checks both on committed seeds). Answer attacks (lazy, replay, …) need
every reported value and stay on the in-memory engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from protocol.challenges import MEMBERS_PER_TUPLE
from protocol.practical import (
    PracticalPlan,
    ResidualInterval,
    residual_coefficients,
    residual_interval_from_moments,
    residual_samples,
)
from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution
from simulations.adversaries import AttackContext, resolve
from simulations.montecarlo import (
    CHUNK_TUPLES,
    MseSample,
    Outcome,
    ProverModel,
    _check_exact,
    bernoulli_packed,
    check_draws,
    coin_draw,
    derive_rng,
    fewest_lies,
    judged_outcome,
    lie_gains,
    lie_goal,
    naive_accept,
    prover_attribution,
    tuple_words,
)
from verifier.practical_flow import run_sequential_mse

#: Provers the streamed engine judges (everything but the answer attacks).
STREAMED_PROVERS = frozenset({"honest", "scale", "boost", "noise", "intercept", "weak", "targeted"})
#: Tuples per block of the compiled pass: a multiple of 64, so a block of draw version 2 starts
#: on a word, and small enough that the block's member bytes (4 · |support| · _BLOCK) stay in a
#: core's L2 cache at |support| ≈ 540 (256 was 25% slower there; the results do not depend on it).
_BLOCK = 64
#: _SPREAD[v]: the 8 bits of v as 8 bytes of 0/1, bit r in byte r (little-endian).
_SPREAD = np.array(
    [sum(((v >> r) & 1) << (8 * r) for r in range(8)) for v in range(256)], dtype=np.uint64
)


@numba.njit(cache=True, inline="always")
def _transpose8(x: np.uint64) -> np.uint64:
    """Transpose the 8×8 bit matrix whose bit (r, s) is bit 8r + s of x (delta swaps)."""
    t = (x ^ (x >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return x ^ t ^ (t << np.uint64(28))


@numba.njit(cache=True, nogil=True)
def _block_terms(
    bits: np.ndarray,
    acc: np.ndarray,
    j0: int,
    nb: int,
    terms: tuple,
) -> float:
    """One block of ``nb`` tuples starting at tuple ``j0``, from its member bits (``bits[column,
    role, tuple]``, 0/1 bytes): f on all four members (sum of weight·Π φ over the terms, in the
    task's term order), r_j per target, and each member's lie gain summed over targets (the rise
    of r_j when that member alone reports its best value in ±b, as
    :func:`simulations.montecarlo.lie_gains`). Returns max |f| over the block.

    ``terms`` is the tuple :func:`stream_tuples` builds: the task's terms (columns, degree,
    weight, target, as :func:`_terms`), f̂∅, φ(1), φ(0), the residual coefficients (a, b, c), the
    output bound b, and the chunk's outputs f_out, r_out, gain_out.
    Each term's update runs over a contiguous block of tuples (vectorised), with φ chosen by a
    select, never a data-dependent branch."""
    cols, deg, weight, target, fhat0, yhi, ylo, coef_a, coef_b, coef_c, bound = terms[:11]
    f_out, r_out, gain_out = terms[11:]
    z = fhat0.shape[0]
    nterm = weight.shape[0]
    biggest = 0.0
    for t in range(z):
        for q in range(4):
            for jj in range(nb):
                acc[t, q, jj] = fhat0[t]
    for k in range(nterm):
        t = target[k]
        w = weight[k]
        c0 = cols[k, 0]
        d = deg[k]
        if d == 1:
            for q in range(4):
                for jj in range(nb):
                    acc[t, q, jj] += w * (yhi if bits[c0, q, jj] else ylo)
        elif d == 2:
            c1 = cols[k, 1]
            for q in range(4):
                for jj in range(nb):
                    acc[t, q, jj] += (w * (yhi if bits[c0, q, jj] else ylo)) * (
                        yhi if bits[c1, q, jj] else ylo
                    )
        else:
            c1 = cols[k, 1]
            c2 = cols[k, 2]
            for q in range(4):
                for jj in range(nb):
                    acc[t, q, jj] += (
                        (w * (yhi if bits[c0, q, jj] else ylo)) * (yhi if bits[c1, q, jj] else ylo)
                    ) * (yhi if bits[c2, q, jj] else ylo)
    for jj in range(nb):
        j = j0 + jj
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        g3 = 0.0
        for t in range(z):
            u = acc[t, 0, jj]
            v0 = acc[t, 1, jj]
            w = acc[t, 2, jj]
            s = acc[t, 3, jj]
            f_out[4 * j, t] = u
            f_out[4 * j + 1, t] = v0
            f_out[4 * j + 2, t] = w
            f_out[4 * j + 3, t] = s
            biggest = max(biggest, abs(u), abs(v0), abs(w), abs(s))
            r = 0.5 * (u * u + v0 * v0) + u * (coef_a * v0 - coef_b * w + coef_c * s)
            r_out[j, t] = r
            k0 = coef_a * v0 - coef_b * w + coef_c * s
            nu = bound if k0 >= 0 else -bound
            g0 += 0.5 * (nu * nu + v0 * v0) + nu * k0 - r
            nv = bound if coef_a * u >= 0 else -bound
            g1 += 0.5 * (u * u + nv * nv) + u * (coef_a * nv - coef_b * w + coef_c * s) - r
            nw = -bound if u >= 0 else bound
            g2 += 0.5 * (u * u + v0 * v0) + u * (coef_a * v0 - coef_b * nw + coef_c * s) - r
            ns = bound if u >= 0 else -bound
            g3 += 0.5 * (u * u + v0 * v0) + u * (coef_a * v0 - coef_b * w + coef_c * ns) - r
        gain_out[4 * j] = g0
        gain_out[4 * j + 1] = g1
        gain_out[4 * j + 2] = g2
        gain_out[4 * j + 3] = g3
    return biggest


@numba.njit(cache=True, nogil=True)
def _tuple_pass(
    xp: np.ndarray,
    y0p: np.ndarray,
    coin: np.ndarray,
    lo: Any,
    hi: Any,
    terms: tuple,
) -> float:
    """One chunk of draw version 1 (:func:`simulations.montecarlo.sample_tuples`): member bits
    from the packed draws and the coin, then :func:`_block_terms` per block of ``_BLOCK`` tuples.
    Returns max |f| over the chunk.

    The members' bits are first formed byte by byte (eight columns at once, bitwise) and then
    turned column-major by 8×8 bit transposes."""
    m = xp.shape[0]
    c = coin.shape[1]
    z = terms[4].shape[0]
    nbytes = xp.shape[1]
    words = _BLOCK // 8
    rows = nbytes * _BLOCK
    packed = np.zeros(4 * nbytes * words, np.uint64)  # member bits packed, [role, byte, tuple]
    packed8 = packed.view(np.uint8)
    wide = np.zeros(c * 4 * words, np.uint64)  # member bits as 0/1 bytes, [column, role, tuple]
    bits = wide.view(np.uint8).reshape((c, 4, _BLOCK))
    acc = np.empty((z, 4, _BLOCK))
    biggest = 0.0
    for j0 in range(0, m, _BLOCK):
        nb = min(_BLOCK, m - j0)
        # 1. per tuple, row-major: each packed byte of x and y0 and the two coin masks give the
        #    byte of every member (yρ takes x where v < lo, y2ρ where v < hi, else y0).
        for jj in range(nb):
            j = j0 + jj
            for b in range(nbytes):
                xb = np.uint64(xp[j, b])
                yb = np.uint64(y0p[j, b])
                near = np.uint64(0)  # columns where yρ takes x
                far = np.uint64(0)  # columns where y2ρ takes x
                for k in range(min(8, c - 8 * b)):
                    v = coin[j, 8 * b + k]
                    near |= np.uint64(v < lo) << np.uint64(7 - k)
                    far |= np.uint64(v < hi) << np.uint64(7 - k)
                at = b * _BLOCK + jj
                packed8[at] = xb
                packed8[rows + at] = yb
                packed8[2 * rows + at] = (xb & near) | (yb & (near ^ np.uint64(255)))
                packed8[3 * rows + at] = (xb & far) | (yb & (far ^ np.uint64(255)))
        # 2. to column-major: 8 tuples × 8 columns at a time, an 8×8 bit transpose, then each
        #    column's byte spread to 8 bytes of 0/1.
        for q in range(4):
            for b in range(nbytes):
                kmax = min(8, c - 8 * b)
                for word in range((nb + 7) // 8):
                    x = _transpose8(packed[(q * nbytes + b) * words + word])
                    for k in range(kmax):
                        byte = (x >> np.uint64(8 * (7 - k))) & np.uint64(255)
                        wide[((8 * b + k) * 4 + q) * words + word] = _SPREAD[byte]
        biggest = max(biggest, _block_terms(bits, acc, j0, nb, terms))
    return biggest


@numba.njit(cache=True, nogil=True)
def _word_pass(
    coins: tuple,
    m: int,
    terms: tuple,
) -> float:
    """One chunk of draw version 2: ``coins`` is :func:`simulations.montecarlo.tuple_words`'s
    (x, y0, near, far) words, column-major already (``[column, w]``, bit l of word w = tuple
    64w + l), so each block forms the member words (:func:`simulations.montecarlo.member_words`'s
    rule) and spreads them to 0/1 bytes before :func:`_block_terms`. Returns max |f| over the
    chunk's ``m`` tuples."""
    x, y0, near, far = coins
    c = x.shape[0]
    z = terms[4].shape[0]
    sub = _BLOCK // 8
    wide = np.zeros(c * 4 * sub, np.uint64)  # member bits as 0/1 bytes, [column, role, tuple]
    bits = wide.view(np.uint8).reshape((c, 4, _BLOCK))
    acc = np.empty((z, 4, _BLOCK))
    member = np.zeros(4, np.uint64)
    biggest = 0.0
    for j0 in range(0, m, _BLOCK):
        nb = min(_BLOCK, m - j0)
        w0 = j0 // 64
        for col in range(c):
            for i in range((nb + 63) // 64):
                xw = x[col, w0 + i]
                yw = y0[col, w0 + i]
                member[0] = xw
                member[1] = yw
                member[2] = (xw & near[col, w0 + i]) | (yw & ~near[col, w0 + i])
                member[3] = (xw & far[col, w0 + i]) | (yw & ~far[col, w0 + i])
                for q in range(4):
                    base = (col * 4 + q) * sub + 8 * i
                    for b in range(8):
                        byte = (member[q] >> np.uint64(8 * b)) & np.uint64(255)
                        wide[base + b] = _SPREAD[byte]
        biggest = max(biggest, _block_terms(bits, acc, j0, nb, terms))
    return biggest


def _terms(task: SyntheticTask) -> tuple[np.ndarray, ...]:
    """The task's terms flattened: local columns (T, 3), degree (T,), weight (T,), target (T,)."""
    cols, deg, weight, target = [], [], [], []
    for local, val in zip(task._local, task.values, strict=True):
        z, count, k = local.shape
        if count == 0:
            continue
        padded = np.zeros((z * count, 3), dtype=np.int64)
        padded[:, :k] = local.reshape(z * count, k)
        cols.append(padded)
        deg.append(np.full(z * count, k, dtype=np.int64))
        weight.append(val.reshape(-1))
        target.append(np.repeat(np.arange(z, dtype=np.int64), count))
    return (np.concatenate(cols), np.concatenate(deg), np.concatenate(weight),
            np.concatenate(target))  # fmt: skip


@dataclass
class StreamedSample:
    """What a streamed pass keeps of n coupled tuples.

    ``mean`` and ``m2`` (Z,) are the count-weighted mean of r_j and Σ(r_j − mean)²;
    ``top_members`` (K,) the global member indices (4j + role) with the largest lie gains, ordered
    by gain (largest first, ties by index), ``top_gains`` their gains and ``top_tuples`` (K, 4, Z)
    the f-values of their tuples."""

    num_tuples: int
    mean: np.ndarray
    m2: np.ndarray
    top_members: np.ndarray
    top_gains: np.ndarray
    top_tuples: np.ndarray
    rho: float

    @property
    def sample_sd(self) -> np.ndarray:
        """The r_j's sample sd (ddof = 1)."""
        return np.sqrt(self.m2 / (self.num_tuples - 1))


def stream_tuples(
    task: SyntheticTask,
    num_tuples: int,
    rho: float,
    rng: np.random.Generator,
    honest: Attribution,
    keep_top: int = 0,
    draws: int = 1,
) -> StreamedSample:
    """Draw ``num_tuples`` coupled tuples exactly as :func:`simulations.montecarlo.sample_tuples`
    (same draw version, same generator calls in the same order) and keep their residual moments
    and the ``keep_top`` members with the largest lie gains.

    Guarantee: ``mean`` and ``sample_sd`` equal those of ``residual_samples(sample_tuples(...).f)``
    on the same generator state up to summation order; raises ``ValueError`` if any f-value leaves
    [−b, b] (which the exact task never does)."""
    _check_exact(task, honest)
    check_draws(draws)
    n, c, z = int(num_tuples), len(task.support_columns), task.num_targets
    cols, deg, weight, target = _terms(task)
    coef_a, coef_b, coef_c = residual_coefficients(rho)
    bound = float(task.output_bound)
    fhat0 = np.asarray(task.fhat_empty, dtype=np.float64)
    draw_coin, lo, hi = coin_draw(rho, rng)
    chunk = min(CHUNK_TUPLES, n)
    f_buf = np.empty((MEMBERS_PER_TUPLE * chunk, z))
    r_buf = np.empty((chunk, z))
    g_buf = np.empty(MEMBERS_PER_TUPLE * chunk)
    count, mean, m2 = 0, np.zeros(z), np.zeros(z)
    top_idx = np.zeros(0, dtype=np.int64)
    top_gain = np.zeros(0)
    top_f = np.zeros((0, MEMBERS_PER_TUPLE, z))
    for start in range(0, n, CHUNK_TUPLES):
        m = min(CHUNK_TUPLES, n - start)
        f, r, g = f_buf[: MEMBERS_PER_TUPLE * m], r_buf[:m], g_buf[: MEMBERS_PER_TUPLE * m]
        terms = (cols, deg, weight, target, fhat0, task._hi, task._lo, coef_a, coef_b, coef_c,
                 bound, f, r, g)  # fmt: skip
        if draws == 2:
            biggest = _word_pass(tuple_words(rng, task.p, rho, c, m), m, terms)
        else:
            xp = bernoulli_packed(rng, task.p, (m, c))
            y0p = bernoulli_packed(rng, task.p, (m, c))
            biggest = _tuple_pass(xp, y0p, draw_coin((m, c)), lo, hi, terms)
        if biggest > bound:
            raise ValueError(f"f-value {biggest!r} outside [-b, b] (b = {bound!r})")
        c_mean = r.mean(axis=0)
        c_m2 = np.sum((r - c_mean) ** 2, axis=0)
        total = count + m
        diff = c_mean - mean
        mean = mean + diff * (m / total)
        m2 = m2 + c_m2 + diff * diff * (count * m / total)
        count = total
        if keep_top > 0:
            k = min(keep_top, len(g))
            pick = np.argpartition(-g, k - 1)[:k] if k < len(g) else np.arange(len(g))
            local_tuple = pick // MEMBERS_PER_TUPLE
            rows = f.reshape(m, MEMBERS_PER_TUPLE, z)[local_tuple]
            top_idx = np.concatenate([top_idx, pick + MEMBERS_PER_TUPLE * start])
            top_gain = np.concatenate([top_gain, g[pick]])
            top_f = np.concatenate([top_f, rows])
            order = np.lexsort((top_idx, -top_gain))[:keep_top]
            top_idx, top_gain, top_f = top_idx[order], top_gain[order], top_f[order]
    return StreamedSample(n, mean, m2, top_idx, top_gain, top_f, float(rho))


def lied_residual(
    sample: StreamedSample, count: int, plan: PracticalPlan, task: SyntheticTask
) -> ResidualInterval:
    """The verifier's residual interval after the targeted prover lies on the ``count`` members
    with the largest gains (each set to its best value in ±b, as :func:`lie_gains` chooses it).

    The honest moments are corrected on the lied tuples only: Σr and Σ(r − mean)² change by the
    lied tuples' r_new − r_old (computed by :func:`protocol.practical.residual_samples`)."""
    n, z = sample.num_tuples, len(sample.mean)
    members = sample.top_members[:count]
    tuples, first = np.unique(members // MEMBERS_PER_TUPLE, return_index=True)
    d_r = plan.delta_split["residual_per_target"]
    args = (plan.rho, task.output_bound, d_r, plan.lie_allowance, task.tolerance)
    if len(tuples) == 0:
        return residual_interval_from_moments(n, sample.mean, sample.sample_sd, *args)
    where = {int(t): i for i, t in enumerate(tuples)}
    original = sample.top_tuples[:count][first].reshape(-1, z)
    _, best = lie_gains(original, plan.rho, task.output_bound)
    lied = original.copy()
    for member in members:
        row = MEMBERS_PER_TUPLE * where[int(member) // MEMBERS_PER_TUPLE]
        row += int(member) % MEMBERS_PER_TUPLE
        lied[row] = best[row]
    r_old = residual_samples(original, plan.rho)
    r_new = residual_samples(lied, plan.rho)
    shift = np.sum(r_new - r_old, axis=0)
    mean = sample.mean + shift / n
    # Σ(r − mean')² = Σr² − n·mean'², written against the honest M2 to avoid cancellation.
    m2 = sample.m2 + np.sum(r_new * r_new - r_old * r_old, axis=0)
    m2 = m2 - shift * (mean + sample.mean)
    sd = np.sqrt(np.maximum(m2, 0.0) / (n - 1))
    return residual_interval_from_moments(n, mean, sd, *args)


def streamable(provers: list[ProverModel]) -> bool:
    """True when every prover is one the streamed engine judges (no answer attacks)."""
    return all(p.name == "honest" or resolve(p.name) in STREAMED_PROVERS for p in provers)


def run_trial_streamed(
    task: SyntheticTask,
    plan: PracticalPlan,
    provers: list[ProverModel],
    honest: Attribution,
    seed: Any,
    draws: int = 1,
) -> list[Outcome]:
    """One trial, judged as :func:`simulations.montecarlo.run_trial` judges it (same draws, same
    protocol code for the interval, the sequential MSE and the decision), streaming the tuples.

    Guarantee: the same verdicts as the in-memory engine on the same seed, with err_upper and
    residual_lower equal up to summation order. Raises ``ValueError`` for an answer attack."""
    if not streamable(provers):
        raise ValueError("the streamed engine judges attribution attacks only (no answer attacks)")
    eps = np.broadcast_to(np.asarray(plan.epsilon, dtype=np.float64), (task.num_targets,))
    m_star = int(plan.lie_allowance)
    keep = (
        m_star if any(p.name != "honest" and resolve(p.name) == "targeted" for p in provers) else 0
    )
    sample = stream_tuples(task, plan.pairs_per_level, plan.rho, derive_rng(seed, "E"), honest,
                           keep_top=keep, draws=draws)  # fmt: skip
    mse = MseSample(task, (seed, "M"))
    members = MEMBERS_PER_TUPLE * sample.num_tuples
    context = AttackContext(epsilon=float(eps.min()), lie_allowance=plan.lie_allowance, seed=0)
    honest_residual = lied_residual(sample, 0, plan, task)
    out: list[Outcome] = []
    for model in provers:
        prng = derive_rng(seed, "prover", model.label)
        vrng = derive_rng(seed, "checks", model.label)
        name = "honest" if model.name == "honest" else resolve(model.name)
        claimed = honest if name == "honest" else prover_attribution(model, task, honest, context)
        residual, lies = honest_residual, 0
        if name == "targeted" and m_star > 0:
            goal = lie_goal(plan, task, claimed, eps, prng)

            def reaches(count: int, goal: np.ndarray = goal) -> bool:
                return bool(np.all(lied_residual(sample, count, plan, task).lower >= goal))

            lies = fewest_lies(reaches, min(m_star, members))
            residual = lied_residual(sample, lies, plan, task)
        hit = lies > 0 and int(vrng.hypergeometric(lies, members - lies, plan.spot_checks)) > 0
        c = np.asarray(claimed.intercepts, dtype=np.float64)
        a = np.asarray(claimed.coefficients, dtype=np.float64)
        naive = naive_accept(mse, c, a)
        seq = run_sequential_mse(plan, task, None, c, a, mse.masks, mse.f, residual=residual)
        d = seq.decision
        if hit:
            out.append(Outcome(model.label, "reject", "spot-check", naive, 0, lies, lies, None,
                               None, {"verdict_if_missed": d.verdict}))  # fmt: skip
            continue
        out.append(judged_outcome(model.label, seq, naive, lies, lies))
    return out
