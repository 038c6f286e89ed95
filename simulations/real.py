"""The optional real-task part of a sweep: scaling and boosting on ``digits-logreg``.

Checks are certified (``VerifierSession(..., checks="certified")``, the default there). There is no
closed form, so the true err is estimated from held-out retrainings: K fresh B_p subsets are
retrained; the best linear fit ĝ* is fitted on one half and

    err̂(c, a) = mean over the other half of (f − g)² − (f − ĝ*)²,

with the standard error of that paired mean. err(ĝ*) itself is ≈ (B≥2)(N + 1)/(K/2) > 0, so err̂
is biased low by about that much (reported as ``true_err_bias``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from protocol.challenges import PrivateSample
from protocol.tasks import load_task
from protocol.tasks.base import Task
from prover.strategy import Attribution
from simulations.adversaries import AttackContext, make_adversary
from simulations.sweep import CellSpec, SweepConfig, SweepResult, honest_attribution, run_sweep

REAL_TASK = "digits-logreg:z=1"
HELDOUT_SAMPLES = 4_000


_HELDOUT: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, Any]] = {}


#: Real-task cells (``--real``): scaling and boosting on digits-logreg, certified checks.
REAL_GRID: dict[str, tuple[float, ...]] = {"honest": (1.0,), "scale": (0.5, 0.0), "boost": (0.05,)}
REAL_SIZES = {"pairs": 1_000, "mse_samples": 1_000, "trials": 3}


def _heldout(task: Task, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    from prover.datamodel import fit_datamodel

    k = (task.identity().task_hash, samples, seed)
    if k not in _HELDOUT:
        key = hashlib.sha256(b"simulations/heldout" + seed.to_bytes(8, "little")).digest()
        sample = PrivateSample(key, samples, task.num_train_points, task.p)
        masks = sample.masks()
        f = np.asarray(task.retrain(masks, sample.seeds()).f, dtype=np.float64)
        half = samples // 2
        best = fit_datamodel(masks[:half], f[:half], method="ols")
        _HELDOUT[k] = (masks[half:], f[half:], best)
    return _HELDOUT[k]


def estimate_err(
    task: Task, attribution: Attribution, samples: int = HELDOUT_SAMPLES, seed: int = 7
) -> dict[str, float]:
    """Held-out estimate of err(c, a) (max-err target) with its standard error and bias bound.

    The K held-out retrainings are done once per (task, K, seed) and process.
    """
    ev_m, ev_f, best = _heldout(task, samples, seed)
    half = samples // 2
    x = 2.0 * ev_m.astype(np.float64) - 1.0
    g = attribution.intercepts[None, :] + x @ attribution.coefficients.T
    diff = (ev_f - g) ** 2 - (ev_f - best.predict(ev_m)) ** 2
    est = diff.mean(axis=0)
    se = diff.std(axis=0, ddof=1) / math.sqrt(len(diff))
    resid = ((ev_f - best.predict(ev_m)) ** 2).mean(axis=0)
    t = int(np.argmax(est))
    return {
        "err": float(est[t]),
        "se": float(se[t]),
        "bias": float(resid[t] * (task.num_train_points + 1) / half),
    }


def run_real(
    out_dir: Path,
    progress: bool = True,
    grpc: bool = False,
    grid: dict[str, tuple[float, ...]] | None = None,
    epsilon: float = 0.01,
    sizes: dict[str, int] | None = None,
) -> SweepResult:
    """Run the real-task cells (resumable in ``out_dir``) and attach held-out err estimates."""
    grid = grid or REAL_GRID
    sizes = {**REAL_SIZES, **(sizes or {})}
    config = SweepConfig(
        task=REAL_TASK,
        pairs=sizes["pairs"],
        mse_samples=sizes["mse_samples"],
        trials=sizes["trials"],
        checks="certified",
        grpc=grpc,
    )
    task = load_task(REAL_TASK)
    cells = [CellSpec(a, float(s), epsilon) for a, ss in grid.items() for s in ss]
    result = run_sweep(cells, config, out_dir, progress=progress, task=task)
    attribution = honest_attribution(task, config.honest_samples, config.seed)
    cache: dict[Any, dict[str, float]] = {}
    for rec in result.records:
        strategy = make_adversary(
            rec["adversary"], rec["strength"], task, attribution, context=AttackContext()
        )
        k = (rec["adversary"], rec["strength"])
        if k not in cache:
            cache[k] = estimate_err(task, strategy.attribution())
        est = cache[k]
        rec["true_err"] = est["err"]
        rec["true_err_se"] = est["se"]
        rec["true_err_bias"] = est["bias"]
        rec["err_over_epsilon"] = est["err"] / rec["epsilon"]
    return result
