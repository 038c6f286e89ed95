"""The validity grid of the practical verifier, resumable: ε × N × Z on the exact synthetic task.

Per cell and trial, five provers face the same randomness: the honest datamodel, the datamodel
scaled to err = ε and to err = 2ε exactly, the targeted prover (err = ε plus the m* lies that
raise the residual samples most), and the exploiting prover (err = ε, its claim chosen to make
the MSE bound as narrow as it can without knowing M or E). Each finished trial is appended to
``trials.jsonl`` (flushed and fsynced) with its cell key; a rerun skips the trials already
there, so an interrupted grid loses at most the trial in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.rules.base import CheckMode
from protocol.rules.practical import (
    DEFAULT_MSE_CAP,
    DEFAULT_TUPLE_CAP,
    PracticalPlan,
)
from protocol.tasks import load_task
from simulations.montecarlo import (
    TrialDraws,
    derive_rng,
    exploit_claim,
    judge,
    make_claim,
    require_exact_synthetic,
    scale_for_err,
)
from simulations.stats import wilson_interval

#: Default failure probability of the grid.
DELTA = 0.05
#: The provers of every cell, in order.
PROVERS = ("honest", "scale-eps", "scale-2eps", "targeted-eps", "exploit-eps")
#: Version of the trial computation; part of every cell key (a change makes new cells).
ENGINE = "practical-v3"


@dataclass(frozen=True)
class GridCell:
    """One cell: ε relative to Var f, N, Z (δ = 0.05, retraining spot checks, the CLI's caps)."""

    epsilon: float
    n: int
    z: int
    delta: float = DELTA
    mse_cap: int = DEFAULT_MSE_CAP
    tuple_cap: int = DEFAULT_TUPLE_CAP

    @property
    def task(self) -> str:
        """The synthetic task's selector."""
        return f"synthetic:n={self.n},z={self.z},p=0.5,seed=0"

    @property
    def label(self) -> str:
        """A readable name."""
        return f"ε={self.epsilon:g}·Var f N={self.n} Z={self.z}"

    def key(self) -> str:
        """Stable key of the cell and the engine version: trials of other cells never mix."""
        raw = json.dumps(
            [ENGINE, self.task, self.epsilon, self.delta, self.mse_cap, self.tuple_cap, PROVERS]
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def plan(self) -> PracticalPlan:
        """The practical plan of this cell, made by the verifier's own planner
        (:func:`verifier.planning.make_verifier_plan`, as ``verifier verify`` makes it), with
        retraining spot checks."""
        from verifier.planning import PlanOptions, make_verifier_plan

        task = require_exact_synthetic(load_task(self.task))
        options = PlanOptions(
            epsilon_rel=self.epsilon,
            delta=self.delta,
            checks=CheckMode.RETRAIN.value,
            max_mse_samples=self.mse_cap,
            max_tuples=self.tuple_cap,
        )
        plan, _checks = make_verifier_plan(options, task)
        assert isinstance(plan, PracticalPlan)
        return plan


#: ``simulations validity --quick``: ε = 0.5·Var f on N = 100, Z = 1, with small caps, so the
#: err = ε provers (which can be neither accepted nor rejected) end inconclusive in seconds.
QUICK_CELL = GridCell(0.5, 100, 1, mse_cap=40_000, tuple_cap=60_000)


def validity_cells(
    epsilons: Iterable[float] = (0.2, 0.1),
    ns: Iterable[int] = (100, 10_000),
    zs: Iterable[int] = (1, 10),
) -> list[GridCell]:
    """The grid of issue #14: ε ∈ {0.2, 0.1}·Var f × N ∈ {100, 10,000} × Z ∈ {1, 10}.

    Every combination, whatever iterables are given (they are read once, into tuples).
    """
    ns, zs = tuple(int(n) for n in ns), tuple(int(z) for z in zs)
    return [GridCell(float(e), n, z) for e in tuple(epsilons) for n in ns for z in zs]


def run_trial(cell: GridCell, trial: int, seed: int = 0) -> list[dict[str, Any]]:
    """The five provers of one trial on shared randomness; one record each."""
    task = require_exact_synthetic(load_task(cell.task))
    plan = cell.plan()
    truth = task.truth()
    c, a = truth.intercept, truth.coefficients
    eps = cell.epsilon * float(np.max(truth.variance))
    s1, s2 = scale_for_err(task, eps), scale_for_err(task, 2 * eps)
    claims = [
        (make_claim(task, "honest", c, a), False),
        (make_claim(task, "scale-eps", c, s1 * a), False),
        (make_claim(task, "scale-2eps", c, s2 * a), False),
        (make_claim(task, "targeted-eps", c, s1 * a), True),
        (exploit_claim(task, eps, (seed, cell.key())), False),
    ]
    draws = TrialDraws(task, (seed, cell.key(), trial), plan.pilot_seed)
    out = []
    for claim, targeted in claims:
        rng = derive_rng(seed, cell.key(), trial, "spot", claim.label)
        started = time.monotonic()
        result = judge(plan, claim, draws, rng, targeted=targeted)
        rec = result.to_dict()
        rec["seconds"] = round(time.monotonic() - started, 3)
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# the trials file


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The trial records of a trials.jsonl in file order; a line that is not JSON (a torn last
    line) is skipped, and a JSON line that is not a trial record raises ``ValueError``."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(rec, dict) and {"cell", "trial", "outcomes"} <= rec.keys()):
                raise ValueError(f"{path}: not a trials file (a line lacks cell/trial/outcomes)")
            yield rec


def load_trials(path: Path) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """{cell key: {trial: outcomes}} from a trials.jsonl; empty if there is no file."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    if not path.exists():
        return out
    for rec in _records(path):
        out[rec["cell"]][int(rec["trial"])] = rec["outcomes"]
    return out


def _append(path: Path, record: dict[str, Any]) -> None:
    torn = False
    if path.exists() and path.stat().st_size:
        with path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"  # a crash mid-line: start on a fresh line
    with path.open("a", encoding="utf-8") as fh:
        if torn:
            fh.write("\n")
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_cells(
    cells: list[GridCell],
    trials: int,
    out_dir: Path,
    seed: int = 0,
    progress: Any = None,
    first: int = 0,
    step: int = 1,
) -> Path:
    """Run trials ``first``, ``first + step``, … below ``trials`` of every cell, skipping the
    finished ones; returns the trials file. Trials are keyed by (seed, cell key, index), so
    reruns, extensions and splits over processes reproduce the same draws."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "trials.jsonl"
    done = load_trials(path)
    for cell in cells:
        have = done.get(cell.key(), {})
        for i in range(first, trials, max(1, step)):
            if i in have:
                continue
            started = time.monotonic()
            outcomes = run_trial(cell, i, seed)
            _append(
                path,
                {
                    "cell": cell.key(),
                    "label": cell.label,
                    "trial": i,
                    "engine": ENGINE,
                    "seconds": round(time.monotonic() - started, 3),
                    "outcomes": outcomes,
                },
            )
            if progress is not None:
                progress(cell, i + 1, trials)
    return path


def merge_trials(sources: list[Path], dest: Path) -> dict[str, int]:
    """Append to ``dest`` every trial of ``sources`` whose (cell, trial) it lacks.

    Nothing in ``dest`` is rewritten, and a (cell, trial) present on both sides must carry the
    same outcomes (timings aside), else ``ValueError`` before anything is written."""

    def strip(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in o.items() if k != "seconds"} for o in outcomes]

    have = load_trials(dest)
    new: dict[tuple[str, int], dict[str, Any]] = {}
    already = 0
    for src in sources:
        if not src.exists():
            raise ValueError(f"no trials file at {src}")
        for rec in _records(src):
            cell, trial = rec["cell"], int(rec["trial"])
            known = have.get(cell, {}).get(trial, new.get((cell, trial), {}).get("outcomes"))
            if known is None:
                new[(cell, trial)] = rec
            elif strip(known) != strip(rec["outcomes"]):
                raise ValueError(f"{src}: trial {trial} of {cell} differs from the kept one")
            else:
                already += 1
    for key in sorted(new):
        _append(dest, new[key])
    return {"added": len(new), "already": already}


# ---------------------------------------------------------------------------------------------
# aggregation


def summarise(cells: list[GridCell], path: Path) -> list[dict[str, Any]]:
    """One row per (cell, prover): acceptance with its 95% Wilson interval, the exact err, how
    runs ended, and both sides' work."""
    done = load_trials(path)
    rows = []
    for cell in cells:
        have = done.get(cell.key(), {})
        for prover in PROVERS:
            outs = [o for t in sorted(have) for o in have[t] if _kind(o["prover"]) == prover]
            n = len(outs)
            acc = sum(o["verdict"] == "accept" for o in outs)
            lo, hi = wilson_interval(acc, n)
            rows.append(
                {
                    "cell": cell.label,
                    "epsilon_rel": cell.epsilon,
                    "n": cell.n,
                    "z": cell.z,
                    "prover": prover,
                    "claims": sorted({o["prover"] for o in outs}),
                    "err_over_eps": (float(np.mean([o["err"] for o in outs])) / cell.epsilon)
                    if n
                    else None,
                    "trials": n,
                    "accepts": acc,
                    "accept_rate": acc / n if n else None,
                    "accept_lower": lo,
                    "accept_upper": hi,
                    "verdicts": dict(Counter(o["verdict"] for o in outs)),
                    "caught": sum(bool(o["caught"]) for o in outs),
                    "accepted_if_missed": sum(o["verdict_if_missed"] == "accept" for o in outs),
                    "mean_tuples": _mean(o["tuples"] for o in outs),
                    "mean_mse_samples": _mean(o["mse_samples"] for o in outs),
                    "mean_spot_checks": _mean(o["spot_checks"] for o in outs),
                    "mean_err_upper": _mean(o["err_upper"] for o in outs),
                    "mean_seconds": _mean(o.get("seconds", 0.0) for o in outs),
                    "rhos": dict(Counter(str(o["rho"]) for o in outs)),
                }
            )
    return rows


def _kind(label: str) -> str:
    return "exploit-eps" if label.startswith("exploit") else label


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(np.mean(vals)) if vals else None


def verdict_on_row(row: dict[str, Any], delta: float = DELTA) -> str:
    """ "ok", "VIOLATION", "too few trials" or "no trials" against the guarantee: provers with
    err ≥ ε accepted at most δ (Wilson upper ≤ δ); the honest prover accepted ≥ 1 − δ."""
    if not row["trials"]:
        return "no trials"
    if row["prover"] == "honest":
        return "ok" if row["accept_rate"] >= 1 - delta else "below 1 − δ"
    if row["accept_upper"] <= delta:
        return "ok"
    return "VIOLATION" if row["accept_rate"] > delta else "too few trials"
