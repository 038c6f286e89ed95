"""The prover's SQLite result store: roundtrip, dedup, atomicity, threads, WAL, clear errors."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from protocol.tasks.base import RetrainResult
from prover.store import (
    SCHEMA_VERSION,
    ResultStore,
    StoreError,
    subset_digest,
    subset_digests,
)
from tests.fakes import CountingTask

TASK = "ab" * 32
OTHER_TASK = "cd" * 32


def _inputs(k: int, n: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((k, n)) < 0.5
    seeds = rng.integers(0, 2**64, size=k, dtype=np.uint64)
    return masks, seeds


def _origins(k: int, tag: str = "datamodel:00") -> list[str]:
    return [f"{tag}:{i}" for i in range(k)]


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    s = ResultStore(tmp_path / "store.sqlite3")
    yield s
    s.close()


def test_subset_digest_spec() -> None:
    mask = np.array([True, False, True, True, False, False, False, False, True])
    expected = hashlib.sha256(np.packbits(mask).tobytes() + (9).to_bytes(8, "little")).digest()
    assert subset_digest(mask) == expected
    # Same packed bytes, different N: different digests.
    assert subset_digest(mask[:8]) != subset_digest(np.concatenate([mask[:8], [False]]))
    masks, _ = _inputs(5)
    assert subset_digests(masks) == [subset_digest(m) for m in masks]


def test_roundtrip(store: ResultStore) -> None:
    task = CountingTask(grad=True)
    masks, seeds = _inputs(20)
    seeds[0] = np.uint64(2**64 - 1)  # the largest seed survives SQLite's signed INTEGER
    result = task.retrain(masks, seeds)
    store.put_many(TASK, masks, seeds, result, _origins(20))
    assert store.count(TASK) == 20
    assert store.count(OTHER_TASK) == 0
    found, f, digests, grads = store.get_many(TASK, masks, seeds)
    assert found.all()
    np.testing.assert_array_equal(f, result.f)  # bit-exact float64
    assert digests == result.weights_digests
    np.testing.assert_array_equal(grads, result.grad_norms)
    # Another task, another seed or another subset: not found, NaN rows.
    found2, f2, d2, g2 = store.get_many(OTHER_TASK, masks, seeds, num_targets=2)
    assert not found2.any()
    assert f2.shape == (20, 2)
    assert np.isnan(f2).all()
    assert d2 == [None] * 20
    assert np.isnan(g2).all()
    found3, f3, _, _ = store.get_many(TASK, masks, seeds + np.uint64(1))
    assert not found3.any()
    assert f3.shape == (20, 0)
    flipped = masks.copy()
    flipped[3, 0] = ~flipped[3, 0]
    found4, f4, _, _ = store.get_many(TASK, flipped, seeds)
    assert found4.sum() == 19
    assert np.isnan(f4[3]).all()
    np.testing.assert_array_equal(np.delete(f4, 3, axis=0), np.delete(result.f, 3, axis=0))


def test_primary_key_dedup_first_write_wins(store: ResultStore) -> None:
    task = CountingTask()
    masks, seeds = _inputs(6)
    result = task.retrain(masks, seeds)
    store.put_many(TASK, masks, seeds, result, _origins(6))
    fake = RetrainResult(f=result.f + 1.0, weights_digests=[b"x" * 32] * 6)
    store.put_many(TASK, masks, seeds, fake, _origins(6, "challenge:ff"))
    # A batch with an internal duplicate is fine too.
    both = np.concatenate([masks[:2], masks[:2]])
    both_seeds = np.concatenate([seeds[:2]] * 2)
    store.put_many(TASK, both, both_seeds, task.retrain(both, both_seeds), _origins(4))
    assert store.count(TASK) == 6
    _, f, digests, _ = store.get_many(TASK, masks, seeds)
    np.testing.assert_array_equal(f, result.f)
    assert digests == result.weights_digests


def test_put_many_is_atomic(store: ResultStore) -> None:
    task = CountingTask()
    masks, seeds = _inputs(10)
    result = task.retrain(masks, seeds)
    store.put_many(TASK, masks[:3], seeds[:3], task.retrain(masks[:3], seeds[:3]), _origins(3))
    # A row that violates a NOT NULL constraint mid-batch: the whole batch must roll back.
    bad_digests = list(result.weights_digests)
    bad_digests[7] = None  # type: ignore[call-overload]
    bad = RetrainResult(f=result.f, weights_digests=bad_digests)
    with pytest.raises((TypeError, sqlite3.IntegrityError)):
        store.put_many(OTHER_TASK, masks, seeds, bad, _origins(10))
    assert store.count(OTHER_TASK) == 0
    assert store.count(TASK) == 3
    # Validation failures leave nothing behind either.
    with pytest.raises(ValueError, match="origins"):
        store.put_many(OTHER_TASK, masks, seeds, result, _origins(9))
    assert store.count(OTHER_TASK) == 0
    # The store is still usable afterwards.
    store.put_many(OTHER_TASK, masks, seeds, result, _origins(10))
    assert store.count(OTHER_TASK) == 10


def test_retrain_cached_reuses_and_preserves_order(store: ResultStore) -> None:
    task = CountingTask(grad=True)
    th = task.identity().task_hash
    masks, seeds = _inputs(50)
    fresh = CountingTask(grad=True).retrain(masks, seeds)
    # Pre-store every other row.
    sel = np.arange(0, 50, 2)
    pre = CountingTask(grad=True).retrain(masks[sel], seeds[sel])
    store.put_many(th, masks[sel], seeds[sel], pre, _origins(25))
    ticks: list[int] = []
    out = store.retrain_cached(
        task, masks, seeds, _origins(50), batch_size=7, progress=ticks.append
    )
    assert store.last_retrained == 25
    assert store.last_reused == 25
    assert task.trained == 25
    assert all(c <= 7 for c in task.calls)
    assert sum(ticks) == 50
    np.testing.assert_array_equal(out.f, fresh.f)
    assert out.weights_digests == fresh.weights_digests
    np.testing.assert_array_equal(out.grad_norms, fresh.grad_norms)
    assert store.count(th) == 50
    # Everything cached now: nothing retrained.
    out2 = store.retrain_cached(task, masks, seeds, _origins(50))
    assert store.last_retrained == 0
    assert store.last_reused == 50
    assert task.trained == 25
    np.testing.assert_array_equal(out2.f, fresh.f)


def test_retrain_cached_trains_duplicates_once(store: ResultStore) -> None:
    task = CountingTask()
    masks, seeds = _inputs(4)
    masks = np.concatenate([masks, masks[:2]])
    seeds = np.concatenate([seeds, seeds[:2]])
    out = store.retrain_cached(task, masks, seeds, _origins(6))
    assert task.trained == 4
    assert store.last_retrained == 4
    np.testing.assert_array_equal(out.f[4:], out.f[:2])
    assert out.grad_norms is None


def test_retrain_cached_keeps_finished_batches_on_failure(store: ResultStore) -> None:
    task = CountingTask()
    masks, seeds = _inputs(30)
    task.fail_on_call = 2  # the third batch fails
    with pytest.raises(RuntimeError, match="injected"):
        store.retrain_cached(task, masks, seeds, _origins(30), batch_size=10)
    th = task.identity().task_hash
    assert store.count(th) == 20
    task.fail_on_call = None
    task.trained = 0
    store.retrain_cached(task, masks, seeds, _origins(30), batch_size=10)
    assert task.trained == 10
    assert store.count(th) == 30


def test_concurrent_threads(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "threads.sqlite3")
    task = CountingTask()
    th = task.identity().task_hash
    masks, seeds = _inputs(400, seed=5)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            # Overlapping slices: rows 0..99 are written by several threads at once.
            for start in range(w * 40, w * 40 + 200, 20):
                sl = slice(start % 400, start % 400 + 20)
                out = store.retrain_cached(CountingTask(), masks[sl], seeds[sl], _origins(20))
                np.testing.assert_array_equal(out.f, CountingTask().retrain(masks[sl], seeds[sl]).f)
                store.get_many(th, masks, seeds)
                store.count(th)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count(th) == 400
    found, f, _, _ = store.get_many(th, masks, seeds)
    assert found.all()
    np.testing.assert_array_equal(f, task.retrain(masks, seeds).f)
    assert store.integrity_check()
    store.close()


def test_two_connections_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    a, b = ResultStore(path), ResultStore(path)
    task = CountingTask()
    masks, seeds = _inputs(5)
    a.put_many(TASK, masks, seeds, task.retrain(masks, seeds), _origins(5))
    assert b.count(TASK) == 5
    a.close()
    b.close()


def test_wal_mode_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite3"
    with ResultStore(path) as s:
        assert s.journal_mode == "wal"
        assert s.integrity_check()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with ResultStore(tmp_path / "rollback.sqlite3", wal=False) as s:
        assert s.journal_mode == "delete"


def test_datamodel_roundtrip(store: ResultStore) -> None:
    rng = np.random.default_rng(3)
    c, a = rng.normal(size=3), rng.normal(size=(3, 12))
    diag = {"alpha": np.array([0.1, 0.2]), "k": np.int64(5), "ok": True}
    store.save_datamodel(TASK, "default", intercepts=c, coefficients=a, method="ridge",
                         num_samples=100, diagnostics=diag, sample_seed=b"\x01\x02")  # fmt: skip
    dm = store.load_datamodel(TASK, "default")
    np.testing.assert_array_equal(dm.intercepts, c)
    np.testing.assert_array_equal(dm.coefficients, a)
    assert (dm.method, dm.num_samples, dm.sample_seed) == ("ridge", 100, b"\x01\x02")
    assert dm.diagnostics == {"alpha": [0.1, 0.2], "k": 5, "ok": True}
    # Replace.
    store.save_datamodel(TASK, "default", intercepts=c * 0, coefficients=a, method="ols",
                         num_samples=7)  # fmt: skip
    assert store.load_datamodel(TASK).method == "ols"
    with pytest.raises(KeyError, match="no datamodel"):
        store.load_datamodel(OTHER_TASK, "default")
    with pytest.raises(ValueError, match="intercepts"):
        store.save_datamodel(TASK, "x", intercepts=c, coefficients=a[:2], method="ols",
                             num_samples=1)  # fmt: skip


def test_garbage_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a database at all\n" * 100)
    with pytest.raises(StoreError, match="not a result store"):
        ResultStore(path)
    # A file that starts like SQLite but is corrupt.
    bad = tmp_path / "corrupt.sqlite3"
    bad.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(StoreError, match="not a result store"):
        ResultStore(bad)
    with pytest.raises(StoreError, match="directory"):
        ResultStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "missing-dir" / "s.sqlite3")


def test_foreign_sqlite_and_version_mismatch(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite3"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        ResultStore(foreign)
    future = tmp_path / "future.sqlite3"
    ResultStore(future).close()
    conn = sqlite3.connect(future)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version"):
        ResultStore(future)
    # An empty file is an empty database: it becomes a store.
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    with ResultStore(empty) as s:
        assert s.count(TASK) == 0


def test_bad_inputs(store: ResultStore) -> None:
    task = CountingTask()
    masks, seeds = _inputs(3)
    with pytest.raises(ValueError, match="boolean"):
        store.get_many(TASK, masks.astype(int), seeds)
    with pytest.raises(ValueError, match="seeds"):
        store.get_many(TASK, masks, seeds[:2])
    with pytest.raises(ValueError, match="non-negative"):
        store.get_many(TASK, masks, np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match="batch_size"):
        store.retrain_cached(task, masks, seeds, _origins(3), batch_size=0)
