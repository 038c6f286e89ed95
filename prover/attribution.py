"""The honest prover's attribution: a datamodel fitted on its own p-biased retrainings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from protocol.tasks.base import Task
from prover.precompute import DEFAULT_BATCH_SIZE, PrecomputeReport, precompute, sample_subsets
from prover.store import ResultStore
from prover.strategy import Attribution

log = logging.getLogger("prover")


def default_num_samples(task: Task, method: str = "auto") -> int:
    """Samples used when the user does not say: for a regression 20 per training point
    (≥ 2,000) — with OLS, err(c, a) is about B_{>=2} * N / K, so K = 20 N puts the honest error
    near 5% of the residual weight; for an influence claim (``if-mean``) the 512 that calibrate
    it, whatever N."""
    from prover.influence import CALIBRATION_SAMPLES, INFLUENCE_METHODS

    if method in INFLUENCE_METHODS:
        return CALIBRATION_SAMPLES
    return max(2_000, 20 * task.num_train_points)


def fit_attribution(
    task: Task,
    store_path: str | Path,
    num_samples: int | None,
    sample_seed: bytes,
    method: str = "auto",
    progress: bool = True,
    pool: Any | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[Attribution, PrecomputeReport]:
    """Retrain ``num_samples`` seeded B_p subsets (resumably, via the store) and fit a datamodel;
    ``None`` means :func:`default_num_samples` for the task and method, and anything below 1 is a
    ``ValueError``.

    Guarantees: the subsets and seeds are a pure function of ``sample_seed``; finished retrainings
    are stored as they complete, so a restarted prover redoes none of them. The returned
    attribution keeps its training set so sessions can refit with their challenge retrainings.
    Returns the attribution and the run's report (how many samples were retrained and reused).
    """
    if num_samples is None:
        num_samples = default_num_samples(task, method)
    if num_samples < 1:
        raise ValueError(f"samples must be positive, got {num_samples}")
    store = ResultStore(store_path)
    run = precompute(
        task, store, num_samples, sample_seed, batch_size=batch_size, progress=progress,
        method=method, pool=pool,
    )  # fmt: skip
    model = store.load_datamodel(task.identity().task_hash, "default")
    log.info(
        "datamodel: %s on %d samples (%d retrained now, %d reused from %s)",
        model.method,
        model.num_samples,
        run.retrained,
        run.reused,
        store_path,
    )
    masks, _seeds = sample_subsets(task, sample_seed, 0, num_samples)
    found, f, _digests, _norms = store.get_many(task.identity().task_hash, masks, _seeds)
    if not np.all(found):  # pragma: no cover - precompute just stored every one of them
        raise RuntimeError("datamodel samples missing from the store after precompute")
    attribution = Attribution(
        intercepts=model.intercepts,
        coefficients=model.coefficients,
        method=model.method,
        num_samples=model.num_samples,
        training_masks=masks,
        training_f=f,
    )
    return attribution, run
