"""The prover's crash-safe result store: an embedded SQLite database, WAL mode by default.

Every finished retraining is recorded under the primary key (task, subset digest, training seed):
a retraining is a pure function of those three, so a stored row can stand in for retraining the
same subset with the same seed again. Rows are written one transaction per batch, as soon as the
batch finishes, so a killed prover loses at most the batch it was training. See ``docs/store.md``
for the schema, the durability guarantees and how to inspect a store with ``sqlite3``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.jsonable import json_default
from protocol.tasks.base import Progress, RetrainResult, Task

#: Bumped whenever the schema changes; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: The result store the prover uses when none is given.
DEFAULT_STORE = "prover-store.sqlite3"
#: ``PRAGMA application_id`` of a result store ("ATTR"), so foreign SQLite files are recognised.
APPLICATION_ID = 0x41545452
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE tasks (
    task_id   INTEGER PRIMARY KEY,
    task_hash TEXT NOT NULL UNIQUE
);
CREATE TABLE retrainings (
    task_id        INTEGER NOT NULL REFERENCES tasks(task_id),
    subset_digest  BLOB    NOT NULL,
    train_seed     INTEGER NOT NULL,
    num_points     INTEGER NOT NULL,
    origin         TEXT    NOT NULL,
    f_values       BLOB    NOT NULL,
    weights_digest BLOB    NOT NULL,
    grad_norm      REAL,
    created        REAL    NOT NULL,
    PRIMARY KEY (task_id, subset_digest, train_seed)
) WITHOUT ROWID;
CREATE TABLE datamodels (
    task_id      INTEGER NOT NULL REFERENCES tasks(task_id),
    name         TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    num_samples  INTEGER NOT NULL,
    num_targets  INTEGER NOT NULL,
    num_points   INTEGER NOT NULL,
    intercepts   BLOB    NOT NULL,
    coefficients BLOB    NOT NULL,
    diagnostics  TEXT    NOT NULL,
    sample_seed  BLOB,
    created      REAL    NOT NULL,
    PRIMARY KEY (task_id, name)
);
CREATE VIEW retrainings_v AS
    SELECT t.task_hash, hex(r.subset_digest) AS subset_digest,
           printf('%016x', r.train_seed) AS train_seed_hex,
           r.origin, length(r.f_values) / 8 AS num_targets, hex(r.weights_digest) AS weights_digest,
           r.grad_norm, datetime(r.created, 'unixepoch') AS created
    FROM retrainings r JOIN tasks t USING (task_id);
"""


class StoreError(ValueError):
    """The file is not a usable result store (foreign, corrupt, or a different schema version)."""


@dataclass(frozen=True)
class StoredDatamodel:
    """A datamodel read back from the store: g_t(x) = intercepts[t] + <coefficients[t], x>."""

    intercepts: np.ndarray
    coefficients: np.ndarray
    method: str
    num_samples: int
    diagnostics: dict[str, Any] = field(default_factory=dict)
    sample_seed: bytes | None = None
    created: float = 0.0


def subset_digest(mask: np.ndarray) -> bytes:
    """SHA-256 of ``np.packbits(mask)`` followed by N as a little-endian u64 (32 bytes).

    Two masks get the same digest exactly when they are equal (up to SHA-256 collisions); the
    length suffix keeps masks of different N apart even when their packed bytes coincide.
    """
    mask = np.asarray(mask)
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise ValueError(f"a subset mask must be 1-D boolean, got {mask.dtype} {mask.shape}")
    return hashlib.sha256(np.packbits(mask).tobytes() + struct.pack("<Q", mask.shape[0])).digest()


def subset_digests(masks: np.ndarray) -> list[bytes]:
    """:func:`subset_digest` of every row of a (K, N) boolean array."""
    masks = _check_masks(masks)
    n_suffix = struct.pack("<Q", masks.shape[1])
    packed = np.packbits(masks, axis=1)
    return [hashlib.sha256(row.tobytes() + n_suffix).digest() for row in packed]


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be a (K, N) boolean array, got {masks.dtype} {masks.shape}")
    return masks


def _check_seeds(seeds: np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(seeds)
    if arr.shape != (k,):
        raise ValueError(f"seeds must have shape ({k},), got {arr.shape}")
    if arr.dtype != np.uint64:
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and int(arr.min()) < 0):
            raise ValueError(f"seeds must be non-negative integers (uint64), got dtype {arr.dtype}")
        arr = arr.astype(np.uint64)
    return arr


def _seed_to_sql(seed: np.uint64 | int) -> int:
    """SQLite INTEGER is signed 64-bit: store the uint64 seed's two's-complement reading."""
    value = int(seed)
    return value - (1 << 64) if value >= 1 << 63 else value


def _f_blob(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype="<f8").tobytes()


class ResultStore:
    """A crash-safe, thread-safe store of retraining results and fitted datamodels.

    Guarantees: every ``put_many`` is one atomic transaction (all rows or none); a committed
    transaction survives a kill of this process at any moment. In WAL mode with
    ``synchronous=NORMAL`` a power loss or OS crash may drop the most recently committed
    transactions but never corrupts the file; with ``wal=False`` (rollback journal,
    ``synchronous=FULL``) committed transactions also survive a power loss. One connection is
    shared by all threads behind a lock, so the store may be used from a gRPC thread pool; several
    processes may open the same file (writers wait up to 30 s for each other).
    """

    def __init__(self, path: str | Path, wal: bool = True) -> None:
        self.path = Path(path)
        self.wal = wal
        self._lock = threading.RLock()
        self._local = threading.local()
        self._task_ids: dict[str, int] = {}
        self._check_header()
        try:
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open result store {str(self.path)!r}: {exc}") from exc
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"not a result store: {str(self.path)!r} ({exc})") from exc
        except StoreError:
            self._conn.close()
            raise

    # ----------------------------------------------------------------------------------- setup

    def _check_header(self) -> None:
        if self.path.is_dir():
            raise StoreError(f"not a result store: {str(self.path)!r} is a directory")
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise StoreError(
                    f"cannot create result store {str(self.path)!r}: "
                    f"directory {str(self.path.parent)!r} does not exist"
                )
            return
        with self.path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise StoreError(f"not a result store: {str(self.path)!r} is not an SQLite database")

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = conn.execute(f"PRAGMA journal_mode = {'WAL' if self.wal else 'DELETE'}").fetchone()
        self.journal_mode = str(mode[0]).lower()
        if self.wal and self.journal_mode != "wal":
            raise StoreError(
                f"result store {str(self.path)!r}: could not enable WAL mode (got "
                f"{self.journal_mode!r}); use a local filesystem or open with wal=False"
            )
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if self.wal else 'FULL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")  # serialises schema creation between racing processes
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and app_id == 0 and n_objects == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif app_id != APPLICATION_ID:
                raise StoreError(
                    f"not a result store: {str(self.path)!r} is an SQLite database of another "
                    f"application (application_id {app_id:#x}, {n_objects} schema objects)"
                )
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"result store {str(self.path)!r} has schema version {version}, this prover "
                    f"reads version {SCHEMA_VERSION}; use a new --store file"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (committed data is already safe; this only releases the file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _task_id(self, conn: sqlite3.Connection, task_hash: str, create: bool) -> int | None:
        if not isinstance(task_hash, str) or not task_hash:
            raise ValueError(f"task_hash must be a non-empty string, got {task_hash!r}")
        cached = self._task_ids.get(task_hash)
        if cached is not None:
            return cached
        row = conn.execute("SELECT task_id FROM tasks WHERE task_hash = ?", (task_hash,)).fetchone()
        if row is not None:  # committed already (task rows are never deleted): safe to cache
            self._task_ids[task_hash] = int(row[0])
            return int(row[0])
        if not create:
            return None
        # Not cached: the enclosing transaction might still roll back.
        return int(conn.execute("INSERT INTO tasks (task_hash) VALUES (?)", (task_hash,)).lastrowid)

    # --------------------------------------------------------------------------- retrainings

    def put_many(
        self,
        task_hash: str,
        masks: np.ndarray,
        seeds: np.ndarray,
        result: RetrainResult,
        origins: Sequence[str],
    ) -> None:
        """Record K finished retrainings in one atomic transaction (all rows or none).

        A row whose (task, subset, seed) is already stored is left as it is (first write wins): a
        retraining is a pure function of that key, so both values are equally valid.
        """
        masks = _check_masks(masks)
        k, n = masks.shape
        seeds = _check_seeds(seeds, k)
        f = np.asarray(result.f, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] != k:
            raise ValueError(f"result.f must have shape ({k}, Z), got {f.shape}")
        if len(result.weights_digests) != k:
            raise ValueError(f"expected {k} weights digests, got {len(result.weights_digests)}")
        if len(origins) != k:
            raise ValueError(f"expected {k} origins, got {len(origins)}")
        grads = None
        if result.grad_norms is not None:
            grads = np.asarray(result.grad_norms, dtype=np.float64)
            if grads.shape != (k,):
                raise ValueError(f"result.grad_norms must have shape ({k},), got {grads.shape}")
        digests = subset_digests(masks)
        now = time.time()
        rows = []
        for i in range(k):
            grad = None if grads is None or math.isnan(grads[i]) else float(grads[i])
            rows.append(
                (
                    digests[i],
                    _seed_to_sql(seeds[i]),
                    n,
                    str(origins[i]),
                    _f_blob(f[i]),
                    bytes(result.weights_digests[i]),
                    grad,
                    now,
                )
            )
        with self._transaction() as conn:
            task_id = self._task_id(conn, task_hash, create=True)
            conn.executemany(
                "INSERT OR IGNORE INTO retrainings (task_id, subset_digest, train_seed, num_points,"
                " origin, f_values, weights_digest, grad_norm, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(task_id, *row) for row in rows],
            )

    def get_many(
        self,
        task_hash: str,
        masks: np.ndarray,
        seeds: np.ndarray,
        num_targets: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[bytes | None], np.ndarray]:
        """Look up K (subset, seed) pairs.

        Returns ``(found (K,) bool, f (K, Z) float64 with NaN rows where missing, digests with
        None where missing, grad_norms (K,) with NaN where missing or not recorded)``. Z is taken
        from the stored rows, or from ``num_targets`` (which must then agree); when nothing is
        found and ``num_targets`` is None, f has shape (K, 0).
        """
        masks = _check_masks(masks)
        k = masks.shape[0]
        seeds = _check_seeds(seeds, k)
        digests = subset_digests(masks)
        found = np.zeros(k, dtype=bool)
        blobs: list[bytes | None] = [None] * k
        wdigests: list[bytes | None] = [None] * k
        grads = np.full(k, np.nan)
        with self._lock:
            task_id = self._task_id(self._conn, task_hash, create=False)
            if task_id is not None:
                for i in range(k):
                    row = self._conn.execute(
                        "SELECT f_values, weights_digest, grad_norm FROM retrainings"
                        " WHERE task_id = ? AND subset_digest = ? AND train_seed = ?",
                        (task_id, digests[i], _seed_to_sql(seeds[i])),
                    ).fetchone()
                    if row is not None:
                        found[i] = True
                        blobs[i] = row[0]
                        wdigests[i] = bytes(row[1])
                        if row[2] is not None:
                            grads[i] = row[2]
        z = num_targets
        for blob in blobs:
            if blob is None:
                continue
            if len(blob) % 8:
                raise StoreError(f"result store {str(self.path)!r}: corrupt f-value blob")
            if z is None:
                z = len(blob) // 8
            elif len(blob) // 8 != z:
                raise StoreError(
                    f"result store {str(self.path)!r}: stored row has {len(blob) // 8} f-values, "
                    f"expected {z} for task {task_hash[:16]}"
                )
        f = np.full((k, z or 0), np.nan)
        for i, blob in enumerate(blobs):
            if blob is not None:
                f[i] = np.frombuffer(blob, dtype="<f8")
        return found, f, wdigests, grads

    def count(self, task_hash: str) -> int:
        """Number of stored retrainings for ``task_hash``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM retrainings r JOIN tasks t USING (task_id)"
                " WHERE t.task_hash = ?",
                (task_hash,),
            ).fetchone()
        return int(row[0])

    @property
    def last_retrained(self) -> int:
        """Models trained by this thread's most recent :meth:`retrain_cached` call."""
        return int(getattr(self._local, "retrained", 0))

    @property
    def last_reused(self) -> int:
        """Rows served from the store by this thread's most recent :meth:`retrain_cached` call."""
        return int(getattr(self._local, "reused", 0))

    def retrain_cached(
        self,
        task: Task,
        masks: np.ndarray,
        seeds: np.ndarray,
        origins: Sequence[str],
        *,
        batch_size: int = 256,
        progress: Progress | None = None,
        pool: Any | None = None,
    ) -> RetrainResult:
        """Return ``task.retrain(masks, seeds)``, retraining only rows the store lacks.

        With ``pool`` (a ``prover.ray_pool.RayPool``) the missing rows are retrained on its
        cluster in its chunks, and each chunk is committed as soon as it comes back.

        Missing rows are retrained in batches of ``batch_size``; each finished batch is committed
        before the next starts, so a kill loses at most the batch in flight. Rows are returned in
        input order; a (subset, seed) pair repeated in the input is trained once. ``progress`` is
        advanced once for every row served from the store, by the task for every model it trains,
        and once for every repeated pair, so it reaches K. Afterwards ``last_retrained`` and
        ``last_reused`` (per thread) say how many rows were trained now and how many were reused.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        masks = _check_masks(masks)
        k = masks.shape[0]
        seeds = _check_seeds(seeds, k)
        if len(origins) != k:
            raise ValueError(f"expected {k} origins, got {len(origins)}")
        task_hash = task.identity().task_hash
        z = task.num_targets
        task.validate_inputs(masks, seeds)
        found, f, digests, grads = self.get_many(task_hash, masks, seeds, num_targets=z)
        reused = int(found.sum())
        if progress is not None and reused:
            progress(reused)
        has_grads = bool(np.any(found & ~np.isnan(grads)))

        # Unique missing keys, in first-occurrence order; duplicates are filled from the first.
        keys = subset_digests(masks)
        first: dict[tuple[bytes, int], int] = {}
        dup_of: dict[int, int] = {}
        for i in np.flatnonzero(~found):
            key = (keys[i], int(seeds[i]))
            if key in first:
                dup_of[int(i)] = first[key]
            else:
                first[key] = int(i)
        todo = np.fromiter(first.values(), dtype=np.int64, count=len(first))

        def batches() -> Iterator[tuple[np.ndarray, RetrainResult]]:
            if pool is not None:
                for rows, out in pool.retrain_chunks(task.selector, masks[todo], seeds[todo]):
                    if progress is not None:
                        progress(len(rows))
                    yield todo[rows], out
                return
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                yield idx, task.retrain(masks[idx], seeds[idx], progress=progress)

        for idx, out in batches():
            out_f = np.asarray(out.f, dtype=np.float64)
            if out_f.shape != (len(idx), z):
                raise ValueError(
                    f"task returned f of shape {out_f.shape}, expected {(len(idx), z)}"
                )
            self.put_many(task_hash, masks[idx], seeds[idx], out, [origins[i] for i in idx])
            f[idx] = out_f
            for j, i in enumerate(idx):
                digests[i] = bytes(out.weights_digests[j])
            if out.grad_norms is not None:
                grads[idx] = np.asarray(out.grad_norms, dtype=np.float64)
                has_grads = True
        for i, src in dup_of.items():
            f[i] = f[src]
            digests[i] = digests[src]
            grads[i] = grads[src]
        if progress is not None and dup_of:
            progress(len(dup_of))
        self._local.retrained = len(todo)
        self._local.reused = reused
        return RetrainResult(
            f=f,
            weights_digests=[d if d is not None else b"" for d in digests],
            grad_norms=grads if has_grads else None,
        )

    # ---------------------------------------------------------------------------- datamodels

    def save_datamodel(
        self,
        task_hash: str,
        name: str,
        *,
        intercepts: np.ndarray,
        coefficients: np.ndarray,
        method: str,
        num_samples: int,
        diagnostics: dict[str, Any] | None = None,
        sample_seed: bytes | None = None,
    ) -> None:
        """Store (or replace) the datamodel ``name`` of ``task_hash`` atomically.

        ``intercepts`` is (Z,), ``coefficients`` is (Z, N); both are stored as float64 LE BLOBs
        and read back bit-for-bit. ``diagnostics`` must be JSON-serialisable (numpy values are
        converted).
        """
        c = np.asarray(intercepts, dtype=np.float64)
        a = np.asarray(coefficients, dtype=np.float64)
        if c.ndim != 1 or a.ndim != 2 or a.shape[0] != c.shape[0]:
            raise ValueError(
                f"need intercepts (Z,) and coefficients (Z, N), got {c.shape} and {a.shape}"
            )
        diag = json.dumps(diagnostics or {}, default=json_default, sort_keys=True)
        with self._transaction() as conn:
            task_id = self._task_id(conn, task_hash, create=True)
            conn.execute(
                "INSERT OR REPLACE INTO datamodels (task_id, name, method, num_samples,"
                " num_targets, num_points, intercepts, coefficients, diagnostics, sample_seed,"
                " created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    name,
                    method,
                    int(num_samples),
                    a.shape[0],
                    a.shape[1],
                    _f_blob(c),
                    _f_blob(a),
                    diag,
                    None if sample_seed is None else bytes(sample_seed),
                    time.time(),
                ),
            )

    def load_datamodel(self, task_hash: str, name: str = "default") -> StoredDatamodel:
        """Read back a datamodel saved by :meth:`save_datamodel`; ``KeyError`` if there is none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT d.method, d.num_samples, d.num_targets, d.num_points, d.intercepts,"
                " d.coefficients, d.diagnostics, d.sample_seed, d.created"
                " FROM datamodels d JOIN tasks t USING (task_id)"
                " WHERE t.task_hash = ? AND d.name = ?",
                (task_hash, name),
            ).fetchone()
        if row is None:
            raise KeyError(
                f"no datamodel {name!r} for task {task_hash[:16]} "
                f"in result store {str(self.path)!r}"
            )
        method, num_samples, z, n, c_blob, a_blob, diag, seed, created = row
        if len(c_blob) != 8 * z or len(a_blob) != 8 * z * n:
            raise StoreError(f"result store {str(self.path)!r}: corrupt datamodel {name!r}")
        return StoredDatamodel(
            intercepts=np.frombuffer(c_blob, dtype="<f8").astype(np.float64),
            coefficients=np.frombuffer(a_blob, dtype="<f8").astype(np.float64).reshape(z, n),
            method=method,
            num_samples=int(num_samples),
            diagnostics=json.loads(diag),
            sample_seed=None if seed is None else bytes(seed),
            created=float(created),
        )

    # ---------------------------------------------------------------------------- maintenance

    def integrity_check(self) -> bool:
        """True when SQLite's ``PRAGMA integrity_check`` reports ``ok`` (reads the whole file)."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return [tuple(r) for r in rows] == [("ok",)]
