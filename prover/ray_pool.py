"""Retraining on a Ray cluster: chunks of a few hundred models, results written by the driver.

``RayPool(address)`` connects to a running cluster (``ray start --head`` prints its address) or,
with ``address=None``, starts a local one. ``retrain_chunks`` sends each chunk as the task's
selector, the chunk's subsets (bit-packed) and seeds; a worker loads the task once (cached per
worker process) and retrains the chunk, a pure function of (task, subset, seed), so any worker
can redo any chunk. Chunks come back as they finish and the caller (``ResultStore.
retrain_cached``) commits each to the store at once, so a killed worker loses no finished chunk:
Ray retries the lost task (``max_retries``) and a restarted run retrains only what the store
lacks. Ray is an optional extra: ``pip install '.[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from protocol.tasks.base import RetrainResult

#: Models per remote task.
DEFAULT_CHUNK = 256
#: Retries of a chunk whose worker died (Ray re-runs it on another worker).
DEFAULT_RETRIES = 3
#: Test hook: a worker that finds this variable set, and the file it names absent, creates the
#: file and dies in the middle of its chunk (a killed worker, exactly once per file).
KILL_ONCE_ENV = "ATTRIBUTION_RAY_KILL_ONCE"

_TASKS: dict[str, Any] = {}


def _retrain_chunk(
    selector: str, packed: np.ndarray, n: int, seeds: np.ndarray, weights: bool = False
) -> RetrainResult:
    """Worker side: retrain one chunk (the task loaded once per worker process); with
    ``weights`` the trained weights come back too (certified tasks)."""
    from protocol.tasks import load_task

    flag = os.environ.get(KILL_ONCE_ENV)
    if flag:
        try:
            fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(1)  # die mid-chunk, as a SIGKILLed worker would
    if selector not in _TASKS:
        _TASKS[selector] = load_task(selector)
    masks = np.unpackbits(packed, axis=1, count=n).astype(bool)
    task = _TASKS[selector]
    if not weights:
        return task.retrain(masks, seeds)
    from protocol.trainer import weights_digest

    w, norms = task.train(masks)
    w = np.asarray(w, dtype=np.float64)
    return RetrainResult(
        f=task.outputs(w),
        weights_digests=[weights_digest(row) for row in w],
        grad_norms=norms,
        weights=w,
    )


class RayPool:
    """Chunks of retraining on a Ray cluster (see the module docstring)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        max_retries: int = DEFAULT_RETRIES,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ValueError(
                "--ray needs Ray, an optional extra: pip install 'verifiable-attribution[ray]' "
                "(or pip install -e '.[ray]' in a checkout)"
            ) from exc
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.ray = ray
        self.chunk = int(chunk)
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if runtime_env:
                kwargs["runtime_env"] = runtime_env
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
        self._remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_retrain_chunk)

    @property
    def workers(self) -> int:
        """CPUs the cluster offers (one chunk runs per CPU)."""
        return int(self.ray.cluster_resources().get("CPU", 1))

    def retrain_chunks(
        self, selector: str, masks: np.ndarray, seeds: np.ndarray
    ) -> Iterator[tuple[np.ndarray, RetrainResult]]:
        """(row indices, their RetrainResult) per chunk, in the order chunks finish. Raises what
        the chunk raised once Ray's retries are spent."""
        masks = np.asarray(masks, dtype=bool)
        seeds = np.asarray(seeds, dtype=np.uint64)
        batches = (
            (rows, masks[rows], seeds[rows])
            for rows in (
                np.arange(start, min(start + self.chunk, len(masks)))
                for start in range(0, len(masks), self.chunk)
            )
        )
        yield from self.map_batches(selector, batches)

    def map_batches(
        self,
        selector: str,
        batches: Iterator[tuple[Any, np.ndarray, np.ndarray]],
        *,
        weights: bool = False,
        in_flight: int | None = None,
    ) -> Iterator[tuple[Any, RetrainResult]]:
        """(key, result) for each (key, masks, seeds) batch, in the order they finish, with at
        most ``in_flight`` (default 2 per CPU) submitted at once, so a round of millions of
        members never sits in memory as masks. The caller may stop between results (a cancelled
        Commit): what is still running is cancelled."""
        limit = in_flight or 2 * self.workers
        pending: dict[Any, Any] = {}
        source = iter(batches)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < limit:
                    try:
                        key, masks, seeds = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    masks = np.asarray(masks, dtype=bool)
                    ref = self._remote.remote(
                        selector,
                        np.packbits(masks, axis=1),
                        masks.shape[1],
                        np.asarray(seeds, dtype=np.uint64),
                        weights,
                    )
                    pending[ref] = key
                if not pending:
                    break
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=False)

    def shutdown(self) -> None:
        """Disconnect (and stop a cluster this pool started)."""
        self.ray.shutdown()


def pool_from_option(value: str | None) -> RayPool | None:
    """The pool a ``--ray [ADDRESS]`` option asks for: ``None`` without the option, a local
    cluster for ``"local"``, else the cluster at ADDRESS. ``ValueError`` without Ray."""
    if value is None:
        return None
    return RayPool(None if value == "local" else value)
