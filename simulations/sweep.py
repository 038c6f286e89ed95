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
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.jsonable import json_default
from protocol.rules.base import CheckMode
from protocol.tasks import load_task
from protocol.tasks.base import Task
from prover.strategy import Attribution, HonestStrategy
from simulations.adversaries import AttackContext, make_adversary, resolve, strategy_true_err
from simulations.inprocess import InProcessTransport
from simulations.stats import wilson_interval
from verifier.driver import run_protocol
from verifier.session import VerificationResult, VerifierSession

log = logging.getLogger("simulations")

#: The naive verifier accepts when msê ≤ (1 − R2_MIN)·Var̂ f.
R2_MIN = 0.5
#: Default synthetic task of the sweeps: N = 100 points, one target, Var f = 1, B_1 = 0.8.
SYNTHETIC_TASK = "synthetic:n=100,z=1,p=0.5,seed=0"
REAL_TASK = "digits-logreg:z=1"


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SweepConfig:
    """Everything about a sweep except the grid. Part of each cell's resume key."""

    task: str = SYNTHETIC_TASK
    mode: str = "practical"
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
    #: Practical mode's caps (beyond them a run is inconclusive).
    max_mse_samples: int = 200_000
    max_tuples: int = 2_000_000

    def __post_init__(self) -> None:
        for name, least in (("trials", 1), ("pairs", 1), ("spot_checks", 0), ("mse_samples", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= {least}, "
                                 f"got {value!r}")  # fmt: skip

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


def make_plan(task: Task, epsilon: float, config: SweepConfig, checks: str) -> Any:
    """(plan, checks) for one cell, by the verifier's own planner (``config.mode``)."""
    from protocol.rules.base import RuleName
    from verifier.planning import PlanOptions, make_verifier_plan

    options = PlanOptions(
        mode=RuleName(config.mode),
        epsilon=epsilon,
        delta=config.delta,
        checks=checks,
        max_mse_samples=config.max_mse_samples,
        max_tuples=config.max_tuples,
        pairs=config.pairs,
        spot_checks=config.spot_checks,
        mse_samples=config.mse_samples,
        rho=config.rho,
    )
    return make_verifier_plan(options, task)


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


def naive_verdict(session: VerifierSession, r2_min: float, samples: int = 4_000) -> dict[str, Any]:
    """The naive check on this run's own MSE sample: accept iff msê_t ≤ (1 − r2_min)·Var̂ f_t ∀t.

    It judges the members of M the run consumed; if the run stopped before any, it retrains a
    fresh slice of M (the verifier's own models). An incomplete claim is a naive reject.
    """
    from protocol.decision import datamodel_predictions

    if not (np.all(np.isfinite(session.intercepts)) and np.all(np.isfinite(session.coefficients))):
        return {"accept": False, "mse_hat": None, "var_hat": None}
    masks, f = session.consumed_mse_sample()
    if len(f) < 2:
        idx = np.arange(min(samples, session.mse_sample.size))
        masks = session.mse_sample.masks(idx)
        f = np.asarray(session.task.retrain(masks, session.mse_sample.seeds(idx)).f)
    pred = datamodel_predictions(masks, session.intercepts, session.coefficients)
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
    plan: Any,
    strategy: HonestStrategy,
    checks: CheckMode,
    r2_min: float = R2_MIN,
    address: str | None = None,
) -> TrialOutcome:
    """One run of the real driver against ``strategy`` (in-process, or the server at address)."""
    started = time.monotonic()
    session = VerifierSession(task, plan, checks=checks)
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
    naive = naive_verdict(session, r2_min)
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
    """A short category of why a run ended: accept, inconclusive, err (err > ε certified),
    spot-check, opening, error or other (e.g. a failed certified check)."""
    if outcome.verdict in ("accept", "inconclusive"):
        return outcome.verdict
    if outcome.verdict != "reject":
        return "error"
    r = outcome.reason
    if "err > ε" in r or "msê" in r:
        return "err"
    if "spot check" in r:
        return "spot-check"
    if "open" in r.split(":", 1)[0] or "Merkle" in r or "equivocation" in r:
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
    plan, checks = make_plan(task, cell.epsilon, config, config.checks)
    attribution = honest_attribution(task, config.honest_samples, config.seed)
    context = AttackContext(
        epsilon=cell.epsilon, lie_allowance=getattr(plan, "lie_allowance", None), seed=config.seed
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
    plan: Any,
    checks: CheckMode,
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
        "checks": checks.value,
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
        "plan": plan.to_dict(),
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
                fh.write(json.dumps(record, default=json_default) + "\n")
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
