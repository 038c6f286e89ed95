"""Sweeps: adversary × strength × ε × repetitions against the real verifier (driver and decision).

Each trial runs ``verifier.driver.run_protocol`` with a fresh ``VerifierSession`` (its C, M and
public seed come from the verifier's CSPRNG, never seeded here) against an adversarial strategy,
in-process (:class:`simulations.inprocess.InProcessTransport`) or over gRPC (a real
``ProverServicer`` on 127.0.0.1). Beside the real verdict the same run yields a **naive verdict**:
accept iff msê ≤ (1 − r2_min)·Var̂ f on the verifier's own MSE sample (an "is the MSE low?" check
with no residual estimate and no spot checks).

Results go to ``cells.jsonl`` in the output directory, one line per finished cell; a rerun skips
every cell already there with the same configuration, so an interrupted sweep loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from protocol.accounting import Plan, plan_manual
from protocol.tasks import load_task
from protocol.tasks.base import Task
from prover.strategy import Attribution, HonestStrategy
from simulations.adversaries import AttackContext, make_adversary, resolve, strategy_true_err
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.session import LocalWork, VerificationResult, VerifierSession

log = logging.getLogger("simulations")

#: z for a two-sided 95% Wilson interval.
WILSON_Z = 1.959963984540054
#: The naive verifier accepts when msê ≤ (1 − R2_MIN)·Var̂ f.
R2_MIN = 0.5
#: Default synthetic task of the sweeps: N = 100 points, one target, Var f = 1, B_1 = 0.8.
SYNTHETIC_TASK = "synthetic:n=100,z=1,p=0.5,seed=0"
REAL_TASK = "digits-logreg:z=1"


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default); (0, 1) if no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # the interval always contains p (rounding can push an endpoint past it when p is 0 or 1)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SweepConfig:
    """Everything about a sweep except the grid. Part of each cell's resume key."""

    task: str = SYNTHETIC_TASK
    mode: str = "manual"
    pairs: int = 20_000
    spot_checks: int = 64
    mse_samples: int = 4_000
    rho: float = 0.25
    delta: float = 0.05
    trials: int = 10
    seed: int = 0
    r2_min: float = R2_MIN
    checks: str = "auto"
    grpc: bool = False
    #: Honest attribution for non-synthetic tasks: regression on this many retrainings.
    honest_samples: int = 2_000

    def key(self) -> str:
        """A short hash of the configuration (cells of another configuration are not reused)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CellSpec:
    """One cell of the grid."""

    adversary: str
    strength: float
    epsilon: float

    def key(self, config: SweepConfig) -> str:
        """Resume key: the cell and its configuration."""
        return f"{config.key()}|{self.adversary}|{self.strength!r}|{self.epsilon!r}"


def _plan_manual(task: Task, epsilon: float, config: SweepConfig, checks: str) -> Plan:
    certified = checks == "certified"
    return plan_manual(
        epsilon=epsilon,
        delta=config.delta,
        output_bound=task.output_bound,
        tolerance=task.tolerance,
        num_targets=task.num_targets,
        pairs_per_level=config.pairs,
        spot_checks=4 * config.pairs if certified else config.spot_checks,
        mse_samples=config.mse_samples,
        rho=config.rho,
    )


def _plan_practical(task: Task, epsilon: float, config: SweepConfig, checks: str) -> Plan:
    """Practical sizing: a pilot the verifier retrains itself predicts the sizes."""
    from verifier.practical_flow import make_practical_plan

    plan, _pilot = make_practical_plan(
        task,
        config.delta,
        epsilon=epsilon,
        epsilon_rel=None,
        certified=checks == "certified",
        max_mse_samples=max(config.mse_samples, 2),
    )
    return plan  # type: ignore[return-value]


#: Plan builders by mode: switching the sweep to another mode is one entry here.
PLANNERS: dict[str, Callable[[Task, float, SweepConfig, str], Plan]] = {
    "manual": _plan_manual,
    "practical": _plan_practical,
}


def make_plan(task: Task, epsilon: float, config: SweepConfig, checks: str) -> Plan:
    """The plan for one cell (``config.mode`` picks the planner)."""
    if config.mode not in PLANNERS:
        raise ValueError(f"unknown mode {config.mode!r}; choose one of {', '.join(PLANNERS)}")
    return PLANNERS[config.mode](task, epsilon, config, checks)


def resolve_checks(task: Task, checks: str) -> str:
    """'certified' or 'retrain' ('auto': certified where the task supports it)."""
    from protocol.certify import supports_certified_checks

    if checks == "auto":
        return "certified" if supports_certified_checks(task) else "retrain"
    return checks


_ATTRIBUTIONS: dict[tuple[str, int, int], Attribution] = {}


def honest_attribution(task: Task, samples: int = 2_000, seed: int = 0) -> Attribution:
    """The honest prover's attribution: the exact (c*, a*) on a synthetic task, else a seeded
    regression (``fit_datamodel``, "auto") on ``samples`` fresh retrainings (cached per process).
    """
    truth = getattr(task, "truth", None)
    if callable(truth):
        t = truth()
        return Attribution(t.intercept, t.coefficients, "exact", 0)
    key = (task.identity().task_hash, int(samples), int(seed))
    if key not in _ATTRIBUTIONS:
        from protocol.challenges import PrivateSample
        from prover.datamodel import fit_datamodel

        sample_key = hashlib.sha256(b"simulations/honest" + seed.to_bytes(8, "little")).digest()
        sample = PrivateSample(sample_key, samples, task.num_train_points, task.p)
        masks = sample.masks()
        f = task.retrain(masks, sample.seeds()).f
        model = fit_datamodel(masks, f, method="auto", rng_seed=seed)
        _ATTRIBUTIONS[key] = Attribution(
            model.intercepts, model.coefficients, model.method, model.num_samples
        )
    return _ATTRIBUTIONS[key]


# ---------------------------------------------------------------------------------------------
# one trial


class RecordingVerifierSession(VerifierSession):
    """A ``VerifierSession`` that keeps its MSE-sample work so a naive verdict can be computed.

    Recording only: every check and the decision are the parent's, unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: LocalWork | None = None
        self.recorded_event = threading.Event()

    def _local_work(self, progress: Any) -> LocalWork:
        try:
            work = super()._local_work(progress)
            self.recorded = work
            return work
        finally:
            self.recorded_event.set()

    def certified_local_work(self) -> LocalWork:
        """As the parent's, recorded."""
        work = super().certified_local_work()
        self.recorded = work
        self.recorded_event.set()
        return work

    def naive_verdict(self, r2_min: float, wait_s: float = 120.0) -> dict[str, Any]:
        """Naive check on this run's MSE sample: accept iff msê_t ≤ (1 − r2_min)·Var̂ f_t ∀t.

        The MSE sample is the verifier's own; if the run stopped before it was retrained, it is
        retrained now (``_local_work``). An incomplete attribution is a naive reject.
        """
        from protocol.decision import datamodel_predictions

        if self.recorded is None and self.checks == "retrain" and self.session_id:
            self.recorded_event.wait(wait_s)  # started right after Hello; let it finish
        work = self.recorded
        if work is None:
            work = VerifierSession._local_work(self, None)
        masks, f = work.mse_masks, work.mse_f
        if len(f) < 2 and self.practical:
            # Practical mode consumes M sequentially: judge on what it consumed, or on a fresh
            # slice of M when the run stopped before any (e.g. a failed spot check).
            masks, f = self.consumed_mse_sample()
            if len(f) < 2:
                self.retrain_mse(0, min(self.plan.mse_samples, 4000))
                masks, f = self.consumed_mse_sample()
        if not (np.all(np.isfinite(self.intercepts)) and np.all(np.isfinite(self.coefficients))):
            return {"accept": False, "mse_hat": None, "var_hat": None}
        pred = datamodel_predictions(masks, self.intercepts, self.coefficients)
        mse = np.mean((f - pred) ** 2, axis=0)
        var = np.var(f, axis=0, ddof=1)
        accept = bool(np.all(mse <= (1.0 - r2_min) * var))
        return {"accept": accept, "mse_hat": mse.tolist(), "var_hat": var.tolist()}


@dataclass
class TrialOutcome:
    """One protocol run: the real verdict, the naive verdict and the costs."""

    verdict: str
    reason: str
    naive_accept: bool
    verifier_retrainings: float
    prover_retrainings: int
    seconds: float
    lies: int | None = None


def run_trial(
    task: Task,
    plan: Plan,
    strategy: HonestStrategy,
    checks: str,
    r2_min: float = R2_MIN,
    address: str | None = None,
) -> TrialOutcome:
    """One run of the real driver against ``strategy`` (in-process, or the server at address)."""
    started = time.monotonic()
    session = RecordingVerifierSession(task, plan, checks=checks)
    result: VerificationResult
    if address is None:
        result = run_protocol(session, InProcessTransport(task, strategy))
    else:
        from verifier.client import GrpcTransport

        transport = GrpcTransport(address, timeout_s=300.0)
        try:
            result = run_protocol(session, transport)
        finally:
            transport.close()
    naive = session.naive_verdict(r2_min)
    return TrialOutcome(
        verdict=result.verdict,
        reason=result.reason,
        naive_accept=naive["accept"],
        verifier_retrainings=float(result.verifier_retrainings),
        prover_retrainings=int(result.prover_retrainings),
        seconds=time.monotonic() - started,
        lies=getattr(strategy, "last_lies", None),
    )


def reason_kind(outcome: TrialOutcome) -> str:
    """A short category of why a run ended: accept, mse, spot-check, opening, error, other.

    "other" is any other rejection (e.g. a failed certified check)."""
    if outcome.verdict == "accept":
        return "accept"
    if outcome.verdict != "reject":
        return "error"
    r = outcome.reason
    if r.startswith("reject:") and "msê" in r:
        return "mse"
    if "spot check" in r:
        return "spot-check"
    if r.startswith("open:"):
        return "opening"
    return "other"


# ---------------------------------------------------------------------------------------------
# cells


class _GrpcServer:
    """A real ``ProverServicer`` on 127.0.0.1 (in a thread), serving one strategy."""

    def __init__(self, task: Task, strategy: HonestStrategy) -> None:
        from prover.server import build_server
        from prover.servicer import ProverServicer

        servicer = ProverServicer(task, lambda: strategy, prover_info=strategy.describe())
        self.server, port = build_server(servicer, "127.0.0.1", 0, workers=4)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(1.0).wait()


def run_cell(
    task: Task,
    cell: CellSpec,
    config: SweepConfig,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``config.trials`` trials of one cell; return its JSON-ready record."""
    checks = resolve_checks(task, config.checks)
    plan = make_plan(task, cell.epsilon, config, checks)
    attribution = honest_attribution(task, config.honest_samples, config.seed)
    context = AttackContext(
        epsilon=cell.epsilon, lie_allowance=plan.lie_allowance, seed=config.seed
    )
    strategy = make_adversary(cell.adversary, cell.strength, task, attribution, context=context)
    true_err = strategy_true_err(strategy)
    server = _GrpcServer(task, strategy) if config.grpc else None
    outcomes: list[TrialOutcome] = []
    started = time.monotonic()
    try:
        for _ in range(config.trials):
            address = server.address if server is not None else None
            outcomes.append(run_trial(task, plan, strategy, checks, config.r2_min, address))
            if advance is not None:
                advance(1)
    finally:
        if server is not None:
            server.stop()
    return cell_record(task, cell, config, plan, checks, true_err, outcomes, started)


def cell_record(
    task: Task,
    cell: CellSpec,
    config: SweepConfig,
    plan: Plan,
    checks: str,
    true_err: float | None,
    outcomes: list[TrialOutcome],
    started: float,
) -> dict[str, Any]:
    """Summarise a cell's trials (rates with 95% Wilson intervals, costs, reasons)."""
    n = len(outcomes)
    accepts = sum(o.verdict == "accept" for o in outcomes)
    naive = sum(o.naive_accept for o in outcomes)
    lo, hi = wilson_interval(accepts, n)
    nlo, nhi = wilson_interval(naive, n)
    lies = [o.lies for o in outcomes if o.lies is not None]
    first_reject = next((o.reason for o in outcomes if o.verdict != "accept"), None)
    return {
        "key": cell.key(config),
        "config_key": config.key(),
        "task": config.task,
        "mode": config.mode,
        "checks": checks,
        "transport": "grpc" if config.grpc else "in-process",
        "adversary": cell.adversary,
        "strength": cell.strength,
        "epsilon": cell.epsilon,
        "delta": plan.delta,
        "true_err": true_err,
        "err_over_epsilon": None if true_err is None else true_err / cell.epsilon,
        "true_err_se": None,
        "trials": n,
        "accepts": accepts,
        "accept_rate": accepts / n if n else None,
        "accept_lower": lo,
        "accept_upper": hi,
        "naive_accepts": naive,
        "naive_accept_rate": naive / n if n else None,
        "naive_accept_lower": nlo,
        "naive_accept_upper": nhi,
        "outcomes": dict(Counter(reason_kind(o) for o in outcomes)),
        "example_reason": first_reject,
        "verifier_retrainings": float(np.mean([o.verifier_retrainings for o in outcomes])),
        "prover_retrainings": float(np.mean([o.prover_retrainings for o in outcomes])),
        "lies_mean": float(np.mean(lies)) if lies else None,
        "plan": {
            "pairs_per_level": plan.pairs_per_level,
            "num_members": plan.num_members,
            "spot_checks": plan.spot_checks,
            "mse_samples": plan.mse_samples,
            "rho": plan.rho,
            "lie_allowance": plan.lie_allowance,
            "epsilon_certified": plan.budget.get("epsilon_certified"),
            "guarantee_met": getattr(plan, "guarantee_met", None),
        },
        "seconds": time.monotonic() - started,
    }


# ---------------------------------------------------------------------------------------------
# the sweep


def load_finished(path: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by resume key (a torn last line from an interrupted write is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            done[rec["key"]] = rec
    return done


@dataclass
class SweepResult:
    """The records of every requested cell, and how many were computed now or reused."""

    records: list[dict[str, Any]]
    computed: int
    reused: int
    interrupted: bool = False
    pending: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_sweep(
    cells: Iterable[CellSpec],
    config: SweepConfig,
    out_dir: Path,
    progress: bool = True,
    max_cells: int | None = None,
    task: Task | None = None,
) -> SweepResult:
    """Run every cell not already in ``out_dir/cells.jsonl``; append each as soon as it finishes.

    Guarantees: a finished cell is on disk (one flushed JSON line) before the next starts, so an
    interruption (Ctrl-C, kill, ``max_cells``) loses at most the cell in progress; a rerun with
    the same configuration recomputes none of the finished cells.
    """
    cells = list(cells)
    for c in cells:
        resolve(c.adversary)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cells.jsonl"
    finished = load_finished(path)
    todo = [c for c in cells if c.key(config) not in finished]
    task = task or load_task(config.task)
    computed = 0
    interrupted = False
    from protocol.progress import retraining_progress

    total_trials = len(todo) * config.trials
    desc = f"sweep: {len(todo)} cells ({len(cells) - len(todo)} done before)"
    with retraining_progress(total_trials, desc, enabled=progress) as advance:
        for cell in todo:
            if max_cells is not None and computed >= max_cells:
                interrupted = True
                break
            try:
                record = run_cell(task, cell, config, advance)
            except KeyboardInterrupt:
                interrupted = True
                break
            with path.open("a") as fh:
                fh.write(json.dumps(record, default=_json_default) + "\n")
                fh.flush()
            finished[record["key"]] = record
            computed += 1
    records = [finished[c.key(config)] for c in cells if c.key(config) in finished]
    return SweepResult(
        records=records,
        computed=computed,
        reused=len(cells) - len(todo),
        interrupted=interrupted,
        pending=len(cells) - len(records),
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def with_trials(config: SweepConfig, trials: int) -> SweepConfig:
    """A copy of ``config`` with another number of trials."""
    return replace(config, trials=trials)
