"""Turn a user's options into (plan, checks), and predict what a run will cost.

Used by the CLI, the sweeps and the Python front door alike, so the policy lives in one place:
the CLI only parses and prints. Everything here is deterministic: the sizing pilot is seeded
from the task hash (the seed is recorded in the plan), so the same inputs give the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from protocol import validation
from protocol.accounting import Plan
from protocol.certify import supports_certified_checks
from protocol.decision import datamodel_predictions
from protocol.limits import MAX_SESSION_TUPLES
from protocol.rules.base import CheckMode, RuleName
from protocol.rules.by_name import rule_for
from protocol.rules.practical import (
    DEFAULT_MSE_CAP,
    DEFAULT_TUPLE_CAP,
    MSE_BET_CAP,
    PILOT_LEVELS,
    PILOT_MAX_TUPLES,
    PILOT_TUPLES,
    STAGE1_HALFWIDTH,
    ClaimSetup,
    PilotData,
    PracticalPlan,
    pilot_data,
    pilot_residual_weight,
    pilot_size,
    plan_challenges,
)
from protocol.tasks.base import Task

#: Above this many local retrainings the verifier refuses to start and says so.
MAX_LOCAL_RETRAININGS = 10_000_000
#: Largest |E| a run will ask for: 4 × the protocol's tuple limit
#: (protocol.limits.MAX_SESSION_TUPLES); the verifier holds |E|·Z float64 f-values (1.6 GB at
#: Z = 10).
MAX_MEMBERS = 4 * MAX_SESSION_TUPLES


@dataclass(frozen=True)
class PlanOptions:
    """What a user asks for. ``checks``: ``"auto"`` or a :class:`CheckMode` value."""

    mode: RuleName = RuleName.PRACTICAL
    epsilon: float | None = None
    epsilon_rel: float | None = None
    delta: float = 0.05
    checks: str = "auto"
    max_mse_samples: int = DEFAULT_MSE_CAP
    max_tuples: int = DEFAULT_TUPLE_CAP
    pilot_tuples: int = PILOT_TUPLES
    # the paper's rule at manual sizes
    pairs: int = 50_000
    spot_checks: int = 64
    mse_samples: int = 4_000
    rho: float = 0.25


def check_delta(delta: float) -> float:
    """δ as a float in (0, 1); ``ValueError`` otherwise (the one δ check every path calls)."""
    return validation.check_delta(delta, "--delta")


def resolve_checks(option: str, task: Task) -> CheckMode:
    """The check mode: ``auto`` is certified (every member) when the task supports certified
    checks, else retraining. ``ValueError`` for a certified mode on a task without them."""
    if option == "auto":
        return CheckMode.CERTIFIED if supports_certified_checks(task) else CheckMode.RETRAIN
    mode = CheckMode(option)
    if mode.certified and not supports_certified_checks(task):
        raise ValueError(
            f"--checks {option}: task {task.name!r} does not support certified checks (it is not "
            "strongly convex); use --checks retrain"
        )
    return mode


def check_cost(task: Task, checks: CheckMode) -> float:
    """Retraining-equivalents per checked model: 1 for a retraining, the measured gradient-pass
    ratio for a certified check (sizing only)."""
    from verifier.checks import checks_for

    return checks_for(checks).cost_per_model(task)


def make_verifier_plan(options: PlanOptions, task: Task) -> tuple[PracticalPlan | Plan, CheckMode]:
    """(plan, checks) for ``options`` on ``task``; ``ValueError`` with a readable reason."""
    delta = check_delta(options.delta)
    if options.epsilon is not None and options.epsilon_rel is not None:
        raise ValueError("give --epsilon or --epsilon-rel, not both")
    checks = resolve_checks(options.checks, task)
    rule = rule_for(options.mode)
    plan = rule.plan(replace(options, delta=delta), task, checks, lambda: check_cost(task, checks))
    return plan, checks


def local_pilot(task: Task, plan: PracticalPlan, num_tuples: int, claim: Any = None) -> PilotData:
    """The seeded pilot retrained locally, with the claim's predictions when one is given."""

    def retrain(masks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return task.retrain(masks, seeds).f

    predict = None
    if claim is not None:
        c, a = claim

        def predict(masks: np.ndarray) -> np.ndarray:
            return datamodel_predictions(masks, c, a)

    return pilot_data(retrain, predict, num_tuples, task.num_train_points, task.p,
                      plan.pilot_seed)  # fmt: skip


def predict_practical(task: Task, plan: PracticalPlan, claim: Any = None) -> dict[str, Any]:
    """What a practical run is predicted to need, for ``verifier plan`` (deterministic).

    The seeded pilot is taken at the largest size a run could grow it to (2,048 tuples), so the
    prediction is as steady as the pilot allows. With ``claim``
    (intercepts, coefficients) the MSE is the claim's own on the pilot's subsets; without, it is
    an honest claim's, mse = the pilot's estimate of B_{≥2} (noisy: a claim pins it far better).
    The stage-1 MSE samples are predicted to reach half-width ``STAGE1_HALFWIDTH``·ε; stage 2 is
    sized by the rule's own planner from the same numbers. A prediction: the run measures and
    re-sizes.
    """
    from protocol.betting import bet_size, predicted_gap

    pilot = local_pilot(task, plan, max(plan.pilot_tuples, PILOT_MAX_TUPLES), claim)
    setup = None if claim is None else ClaimSetup.of(plan, claim[0], claim[1])
    fx = np.vstack([pilot.f["x"], pilot.f["y0"]])
    var = fx.var(axis=0, ddof=1)
    eps = (
        np.asarray(plan.epsilon, dtype=np.float64)
        if plan.epsilon is not None
        else float(plan.epsilon_rel or 0.0) * var
    )
    if setup is not None and pilot.predictions is not None:
        gx = np.vstack([pilot.predictions["x"], pilot.predictions["y0"]])
        losses = (fx - setup.law.clip(gx, setup.clip)) ** 2
        mse, mse_sd = losses.mean(axis=0), losses.std(axis=0, ddof=1)
        mse_range = setup.bound**2 + setup.tau_loss
        ch = setup.charge_upper
    else:
        b2, _ = pilot_residual_weight(pilot, None, {"mse_upper": var})
        mse, mse_sd = b2, math.sqrt(2.0) * b2
        mse_range = np.full(plan.num_targets, (2.0 * plan.output_bound) ** 2)
        ch = np.zeros(plan.num_targets)
    d_mse = plan.split.accept_delta("mse")
    target = STAGE1_HALFWIDTH * eps

    def enough(m: int) -> bool:
        lam = bet_size(d_mse, m, mse_sd**2 + 1e-30)
        gap = predicted_gap(m, mse_sd, mse_range - mse, d_mse, lam, cap=MSE_BET_CAP)
        return bool(np.all(gap <= target))

    m1 = plan.mse_cap
    lo, hi = 1, plan.mse_cap
    if enough(hi):
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
        m1 = lo
    accept_on_mse = bool(np.all(mse + ch + target <= eps))
    state = {
        "mse_estimate": mse,
        "mse_sd": mse_sd,
        "mse_upper": mse + ch + target,
        "mse_lower": np.maximum(mse - target, 0.0),
        "eps_accept": eps,
        "eps_reject": eps,
        "mse_count": m1,
        "tau_mse": setup.tau_loss if setup is not None else 0.0,
    }
    out: dict[str, Any] = {
        "pilot_seed": plan.pilot_seed,
        "pilot_tuples": pilot.num_tuples,
        "pilot_retrainings": pilot.retrainings,
        "epsilon_predicted": eps.tolist(),
        "variance_predicted": var.tolist(),
        "mse_predicted": np.asarray(mse).tolist(),
        "stage1_mse_samples": int(m1),
        "accept_on_mse_alone": accept_on_mse,
        "claim": "given" if claim is not None else "honest, predicted from the pilot",
    }
    if accept_on_mse or plan.tuple_cap < 1:
        out["stage2"] = None
        return out
    cp = plan_challenges(plan, pilot, setup, state)
    out["stage2"] = cp.to_dict()
    # the run itself grows its pilot only to ≤ 3% of its verifier work
    out["run_pilot_tuples"] = pilot_size(cp, plan)
    out["run_pilot_retrainings"] = pilot_size(cp, plan) * (2 + len(PILOT_LEVELS))
    return out


def check_runnable(plan: PracticalPlan | Plan) -> None:
    """Refuse, with a ``ValueError`` that says what to do, a paper-rule plan too large to run
    here (more than ``MAX_LOCAL_RETRAININGS`` verifier retrainings or ``MAX_MEMBERS`` members);
    the practical rule's plans are bounded by their caps and always pass."""
    if isinstance(plan, Plan) and (
        plan.verifier_retrainings > MAX_LOCAL_RETRAININGS or plan.num_members > MAX_MEMBERS
    ):
        raise ValueError(
            f"{plan.mode} mode needs {plan.verifier_retrainings} verifier retrainings and "
            f"|E| = {plan.num_members}; that is not runnable here — use --mode practical "
            "(see `verifier plan`)"
        )
