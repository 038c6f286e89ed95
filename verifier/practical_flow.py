"""Practical mode on the verifier's side: pilot-based sizing and the sequential MSE check.

Sizes are *predicted* from a small pilot the verifier retrains itself (never from the prover's
answers); the guarantee comes from the variance-adaptive bounds of ``protocol.practical``
whatever the sizes. The MSE sample is consumed batch by batch under an anytime-valid confidence
sequence, and the run stops as soon as the verdict is determined.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.decision import datamodel_predictions, datamodel_range
from protocol.practical import (
    PilotStats,
    PracticalDecision,
    PracticalPlan,
    mse_confidence_sequence,
    pilot_masks,
    plan_practical,
    practical_decision,
    relative_epsilon,
    residual_interval,
)
from protocol.tasks.base import Progress, Task

#: ρ values the pilot evaluates (each adds up to two subset levels per pilot tuple).
PILOT_RHOS = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Pilot tuples the verifier retrains for sizing.
PILOT_TUPLES = 64
#: MSE-sample models fetched between two looks at the confidence sequence.
MSE_BATCH = 512


@dataclass
class PilotResult:
    """The pilot's statistics and what it cost."""

    stats: PilotStats
    retrainings: int


def run_pilot(
    task: Task, num_tuples: int = PILOT_TUPLES, rng: np.random.Generator | None = None
) -> PilotResult:
    """Retrain a small coupled pilot to predict variances for sizing.

    The pilot is CSPRNG-seeded unless ``rng`` is given (simulations pass a seeded one so their
    plans are reproducible); it only sizes the run, never enters a guarantee."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    masks = pilot_masks(num_tuples, task.num_train_points, task.p, PILOT_RHOS, rng)
    keys = list(masks)
    stacked = np.concatenate([masks[k] for k in keys], axis=0)
    seeds = rng.integers(0, 2**63, size=len(stacked), dtype=np.uint64)
    f = task.retrain(stacked, seeds).f
    values = {k: f[i * num_tuples : (i + 1) * num_tuples] for i, k in enumerate(keys)}
    return PilotResult(PilotStats.from_f_values(values, PILOT_RHOS), len(stacked))


def make_practical_plan(
    task: Task,
    delta: float,
    *,
    epsilon: float | None,
    epsilon_rel: float | None,
    certified: bool,
    max_mse_samples: int,
    pilot: PilotResult | None = None,
) -> tuple[PracticalPlan, PilotResult]:
    """Run the pilot (unless given) and size a practical-mode run."""
    pilot = pilot or run_pilot(task)
    plan = plan_practical(
        delta,
        task.output_bound,
        task.tolerance,
        task.num_targets,
        pilot.stats,
        epsilon=epsilon,
        epsilon_rel=epsilon_rel,
        all_checked=certified,
        max_mse_samples=max_mse_samples,
    )
    return plan, pilot


@dataclass
class SequentialOutcome:
    """The final practical decision and why the MSE loop stopped."""

    decision: PracticalDecision
    stop_reason: str
    mse_samples_used: int
    epsilon: np.ndarray
    residual: Any


def run_sequential_mse(
    plan: PracticalPlan,
    task: Task,
    f_values: np.ndarray | None,
    intercepts: np.ndarray,
    coefficients: np.ndarray,
    sample_masks: Callable[[np.ndarray], np.ndarray],
    fetch: Callable[[int, int], np.ndarray],
    progress: Progress | None = None,
    residual: Any = None,
) -> SequentialOutcome:
    """Residual interval, then the MSE sample batch by batch until the verdict is determined.

    ``fetch(first, count)`` returns the f-values (count, Z) of MSE-sample members
    [first, first + count) — retrained locally or certified from supplied models;
    ``sample_masks(indices)`` their subsets. With ε relative to Var f, the first
    ``plan.variance_samples`` members also give the variance lower bound (a fixed-size bound).
    ``residual``: the :func:`residual_interval` of exactly these ``f_values`` under this plan, when
    the caller has it already (simulations judging several provers on the same values, or
    streaming them); ``f_values`` may then be None.
    """
    split = plan.delta_split
    b, tau = task.output_bound, task.tolerance
    if residual is None:
        if f_values is None:
            raise ValueError("run_sequential_mse needs f_values or their residual interval")
        residual = residual_interval(
            f_values,
            plan.rho,
            b,
            split["residual_per_target"],
            lie_allowance=plan.lie_allowance,
            tolerance=tau,
        )
    ranges = datamodel_range(intercepts, coefficients)
    cs = mse_confidence_sequence(b, ranges, tau, split["mse_per_target"])
    cap = plan.mse_samples
    first = 0
    epsilon: np.ndarray
    if plan.epsilon_rel is not None:
        count = max(plan.variance_samples, 1)
        variance_f = fetch(0, count)
        epsilon = relative_epsilon(variance_f, b, plan.epsilon_rel, split["variance_per_target"])
        cap = max(cap, count)
        first = count
        _update(cs, variance_f, sample_masks(np.arange(count)), intercepts, coefficients)
        if progress is not None:
            progress(count)
    else:
        epsilon = np.asarray(plan.epsilon, dtype=np.float64)
    while True:
        decision = practical_decision(
            residual,
            cs.lower,
            cs.upper,
            epsilon,
            ranges,
            mse_estimate=cs.mean if cs.count else None,
            mse_count=cs.count,
            final=first >= cap,
        )
        if decision.determined:
            reason = (
                f"verdict determined after {cs.count} of at most {cap} MSE samples"
                if first < cap
                else f"MSE sample cap of {cap} reached"
            )
            return SequentialOutcome(decision, reason, cs.count, epsilon, residual)
        count = min(MSE_BATCH, cap - first)
        f = fetch(first, count)
        _update(cs, f, sample_masks(np.arange(first, first + count)), intercepts, coefficients)
        first += count
        if progress is not None:
            progress(count)


def _update(cs: Any, f: np.ndarray, masks: np.ndarray, c: np.ndarray, a: np.ndarray) -> None:
    predictions = datamodel_predictions(masks, c, a)
    cs.update((f - predictions) ** 2)
