"""Precompute the prover's datamodel: retrain seeded B_p subsets (resumably), fit, store.

The training samples are a pure function of ``sample_seed``: sample j (j = 0 … K−1) has subset
``bernoulli_masks(stream_key("datamodel-samples", sample_seed), [j], N, p)`` and training seed
``derive_seed(stream_key("datamodel-train-seed", sample_seed), j)``. Every retraining goes through
:meth:`prover.store.ResultStore.retrain_cached`, so a killed run resumes where it stopped (losing
at most the batch in flight) and a finished run costs no retraining when repeated.

Command line: ``prover precompute`` (``prover/cli.py``), the one precompute command.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from protocol.jsonable import json_default
from protocol.progress import retraining_progress
from protocol.tasks.base import Task
from prover.store import ResultStore

log = logging.getLogger("prover")

#: Fixed default seed of the datamodel's own samples, so a restarted prover reuses its work.
DEFAULT_SAMPLE_SEED = bytes(32)
#: Models retrained (and committed to the store) per batch.
DEFAULT_BATCH_SIZE = 256
#: Name under which the precomputed datamodel is saved in the store.
DATAMODEL_NAME = "default"


@dataclass(frozen=True)
class PrecomputeReport:
    """What one :func:`precompute` run did."""

    task_hash: str
    num_samples: int
    sample_seed: str  #: hex
    retrained: int  #: models trained by this run
    reused: int  #: samples served from the store
    wall_s: float  #: whole run, including the fit
    retrain_s: float  #: time spent retraining and storing
    fit_s: float
    models_per_s: float  #: retrained / retrain_s (0 when nothing was retrained)
    method: str  #: the method the fit actually used
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The report as one line of JSON."""
        return json.dumps(asdict(self), sort_keys=True, default=json_default)


def sample_origin(sample_seed: bytes, index: int) -> str:
    """Provenance string recorded in the store for datamodel sample ``index``."""
    return f"datamodel:{sample_seed.hex()}:{index}"


def sample_subsets(
    task: Task, sample_seed: bytes, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masks (stop−start, N) bool and seeds (stop−start,) uint64 of datamodel samples start…stop−1.

    A pure function of (task N and p, ``sample_seed``, index): any slice of the sample sequence
    can be regenerated independently of the others.
    """
    from protocol import prg

    indices = list(range(start, stop))
    masks = prg.bernoulli_masks(
        prg.stream_key("datamodel-samples", sample_seed), indices, task.num_train_points, task.p
    )
    seed_key = prg.stream_key("datamodel-train-seed", sample_seed)
    seeds = np.array([prg.derive_seed(seed_key, j) for j in indices], dtype=np.uint64)
    return np.asarray(masks, dtype=bool), seeds


def precompute(
    task: Task,
    store: ResultStore,
    num_samples: int,
    sample_seed: bytes,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    method: str = "auto",
    pool: Any | None = None,
) -> PrecomputeReport:
    """Retrain datamodel samples 0…num_samples−1 (reusing stored ones), fit, save as "default".

    Guarantees: samples are reproducible from ``sample_seed``; each finished batch is committed
    before the next starts, so after a kill a rerun retrains only the rows that were not yet
    committed; a rerun of a finished precompute retrains nothing and refits the same data, so it
    saves the same datamodel. The datamodel is saved with ``sample_seed`` and ``num_samples``.
    With ``pool`` (``prover.ray_pool.RayPool``) the retraining runs on a Ray cluster, each chunk
    committed by this process as it comes back, with bit-identical results.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not sample_seed:
        raise ValueError("sample_seed must not be empty")
    task_hash = task.identity().task_hash
    t0 = time.monotonic()
    masks_parts: list[np.ndarray] = []
    f_parts: list[np.ndarray] = []
    retrained = reused = 0
    description = f"retraining {task.selector}"
    if pool is not None:  # enough rows per round to keep every worker busy
        batch_size = max(batch_size, 4 * pool.chunk * pool.workers)
    with retraining_progress(num_samples, description, enabled=progress) as advance:
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            masks, seeds = sample_subsets(task, sample_seed, start, stop)
            origins = [sample_origin(sample_seed, j) for j in range(start, stop)]
            result = store.retrain_cached(
                task, masks, seeds, origins, batch_size=batch_size, progress=advance, pool=pool
            )
            retrained += store.last_retrained
            reused += store.last_reused
            masks_parts.append(masks)
            f_parts.append(np.asarray(result.f, dtype=np.float64))
    t1 = time.monotonic()

    from prover.influence import fit_claim

    model = fit_claim(task, method, np.concatenate(masks_parts), np.concatenate(f_parts))
    store.save_datamodel(
        task_hash,
        DATAMODEL_NAME,
        intercepts=model.intercepts,
        coefficients=model.coefficients,
        method=model.method,
        num_samples=model.num_samples,
        diagnostics=model.diagnostics,
        sample_seed=sample_seed,
    )
    t2 = time.monotonic()
    retrain_s = t1 - t0
    return PrecomputeReport(
        task_hash=task_hash,
        num_samples=num_samples,
        sample_seed=sample_seed.hex(),
        retrained=retrained,
        reused=reused,
        wall_s=t2 - t0,
        retrain_s=retrain_s,
        fit_s=t2 - t1,
        models_per_s=retrained / retrain_s if retrained and retrain_s > 0 else 0.0,
        method=model.method,
        diagnostics=dict(model.diagnostics),
    )
