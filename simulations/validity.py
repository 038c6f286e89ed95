"""Resumable Monte-Carlo grids of the practical verifier: the validity grid (issue #4: ε × N × Z,
honest and err = ε provers, the targeted few-lies attack) and the catch-rate catalogue (issue #5:
every adversary at strengths with err ≥ ε, beside the naive verifier).

Each finished trial is appended to ``trials.jsonl`` (flushed and fsynced) with its cell key; a
rerun skips the trials already there, so an interrupted grid loses at most the trial in flight.
Aggregation gives, per (cell, prover): acceptance with a 95% Wilson interval, the naive verifier's
acceptance, the exact err, why runs were rejected, and both sides' retrainings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.practical import PracticalPlan
from protocol.tasks import load_task
from simulations.adversaries import AttackContext
from simulations.montecarlo import (
    PILOT_TUPLES,
    ProverModel,
    cell_plan,
    check_draws,
    require_exact_synthetic,
    resolve_engine,
    run_trial,
    scale_for_err,
    true_err,
)
from simulations.sweep import honest_attribution, wilson_interval

#: Default failure probability of the grids.
DELTA = 0.05
#: Pilot tuples for the validity grid's plans (the catalogue keeps the engine default).
VALIDITY_PILOT = 4096
#: Cap on the sequential MSE sample (the plan's predicted need is far below it at these ε).
MAX_MSE = 200_000


@dataclass(frozen=True)
class GridCell:
    """One cell: a synthetic task, ε (absolute; Var f = 1 on the default synthetic task), δ and
    the prover models judged on the same randomness in each trial."""

    task: str
    epsilon: float
    delta: float
    provers: tuple[ProverModel, ...]
    label: str = ""
    #: Tuples of the seeded sizing pilot (more tuples: sizes closer to the real need).
    pilot_tuples: int = PILOT_TUPLES
    #: Draw version of the challenge tuples (``simulations.montecarlo.DRAW_VERSIONS``).
    draws: int = 1

    def key(self) -> str:
        """Stable key of the cell (task, ε, δ, provers, pilot size, draw version): trials of
        other cells are never mixed."""
        parts: list[Any] = [self.task, self.epsilon, self.delta, [asdict(p) for p in self.provers]]
        if self.pilot_tuples != PILOT_TUPLES:
            parts.append(self.pilot_tuples)
        if check_draws(self.draws) != 1:
            parts.append(["draws", self.draws])
        raw = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


#: (ε, N, Z) of the cells whose committed trials (docs/validity) were made with draw version 1:
#: they keep it, so their keys and trials stay valid. Every other cell draws with version 2.
DRAWS_1_CELLS = frozenset(
    (eps, n, z)
    for eps in (0.2, 0.1, 0.05)
    for n in (100, 10_000)
    for z in (1, 10)
    if (eps, n, z) != (0.05, 10_000, 10)
)


def validity_cells(
    epsilons: Iterable[float] = (0.2, 0.1, 0.05),
    ns: Iterable[int] = (100, 10_000),
    zs: Iterable[int] = (1, 10),
    delta: float = DELTA,
    draws: int | None = None,
) -> list[GridCell]:
    """The #4 grid: per (ε, N, Z) the honest prover, scaling with err = ε and = 2ε exactly, and the
    targeted few-lies attack with err = ε. ``draws`` sets every cell's draw version; by default
    the cells in ``DRAWS_1_CELLS`` keep version 1 and the others use version 2."""
    cells = []
    for eps in epsilons:
        for n in ns:
            for z in zs:
                sel = f"synthetic:n={n},z={z},p=0.5,seed=0"
                task = require_exact_synthetic(load_task(sel))
                s1, s2 = scale_for_err(task, eps), scale_for_err(task, 2 * eps)
                provers = (
                    ProverModel("honest"),
                    ProverModel("scale", round(s1, 12)),
                    ProverModel("scale", round(s2, 12)),
                    ProverModel("targeted", round(s1, 12)),
                )
                label = f"ε={eps:g} N={n} Z={z}"
                version = draws if draws is not None else 1 if (eps, n, z) in DRAWS_1_CELLS else 2
                cells.append(GridCell(sel, eps, delta, provers, label, VALIDITY_PILOT, version))
    return cells


#: The #5 catalogue at ε = 0.2 on synthetic n = 100 (B_1 = 0.8, B_{≥2} = 0.2): strengths chosen
#: with err ≥ ε (exact), plus one weak strength with err < ε where the naive verifier differs.
CATALOGUE = (
    ProverModel("honest"),
    ProverModel("scale", 0.9),
    ProverModel("scale", 0.5),
    ProverModel("scale", 0.3),
    ProverModel("boost", 0.05),
    ProverModel("boost", 0.1415),
    ProverModel("boost", 0.2),
    ProverModel("noise", 0.045),
    ProverModel("noise", 0.06),
    ProverModel("intercept", 0.45),
    ProverModel("intercept", 0.6),
    ProverModel("weak", 100),
    ProverModel("weak", 60),
    ProverModel("targeted", 0.5),
    ProverModel("targeted", 0.3),
    ProverModel("lazy", 0.001),
    ProverModel("lazy", 0.00001),
    ProverModel("wrong-subset", 0.001),
    ProverModel("wrong-seed", 0.001),
    ProverModel("replay", 0.001),
    ProverModel("replay", 1.0),
    ProverModel("equivocate", 0.001),
    ProverModel("fp-noise", 1e-10),
    ProverModel("fp-noise", 1e-6),
)


def catalogue_cells(epsilon: float = 0.2, delta: float = DELTA) -> list[GridCell]:
    """The #5 catch-rate cell: every catalogue prover on synthetic n = 100, Z = 1."""
    sel = "synthetic:n=100,z=1,p=0.5,seed=0"
    return [GridCell(sel, epsilon, delta, CATALOGUE, f"catalogue ε={epsilon:g}")]


# ---------------------------------------------------------------------------------------------
# running


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
    """{cell key: {trial: outcomes}} from a trials.jsonl; empty if there is no file. A torn last
    line is ignored; a line that is not a trial record raises ``ValueError``."""
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


def plan_for(cell: GridCell) -> PracticalPlan:
    """The cell's practical plan (seeded pilot keyed by the cell)."""
    task = require_exact_synthetic(load_task(cell.task))
    return cell_plan(
        task, cell.epsilon, cell.delta, ("plan", cell.key()), MAX_MSE, cell.pilot_tuples
    )


def run_cells(
    cells: list[GridCell],
    trials: int,
    out_dir: Path,
    seed: int = 0,
    progress: Any = None,
    first: int = 0,
) -> Path:
    """Run trials ``first``..``trials − 1`` of every cell (skipping finished ones); returns the
    trials file.

    ``progress(cell, done, total)`` is called after every trial when given. Trials are keyed by
    (seed, cell key, index), so reruns, extensions and splits over processes (``first``)
    reproduce the same draws."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "trials.jsonl"
    done = load_trials(path)
    for cell in cells:
        task = require_exact_synthetic(load_task(cell.task))
        honest = honest_attribution(task)
        plan = plan_for(cell)
        have = done.get(cell.key(), {})
        for i in range(first, trials):
            if i in have:
                continue
            started = time.monotonic()
            outcomes = run_trial(task, plan, list(cell.provers), honest, (seed, cell.key(), i),
                                 draws=cell.draws)  # fmt: skip
            _append(
                path,
                {
                    "cell": cell.key(),
                    "trial": i,
                    "engine": resolve_engine(list(cell.provers)),
                    "draws": cell.draws,
                    "seconds": round(time.monotonic() - started, 3),
                    "outcomes": [asdict(o) for o in outcomes],
                },
            )
            if progress is not None:
                progress(cell, i + 1, trials)
    return path


def merge_trials(sources: list[Path], dest: Path) -> dict[str, int]:
    """Append to ``dest`` every trial of ``sources`` whose (cell, trial) it lacks; returns
    {"added": …, "already": …}.

    Guarantee: nothing in ``dest`` is rewritten (records are appended, fsynced, as by a run), and
    a (cell, trial) present on both sides must carry the same outcomes (the same seed gives the
    same trial; only its timing may differ), else ``ValueError`` is raised before anything is
    written. A torn last line of a source is skipped, as :func:`load_trials` skips it."""
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
            elif known != rec["outcomes"]:
                raise ValueError(f"{src}: trial {trial} of {cell} differs from the kept one")
            else:
                already += 1
    for key in sorted(new):
        _append(dest, new[key])
    return {"added": len(new), "already": already}


# ---------------------------------------------------------------------------------------------
# aggregation


def summarise(cells: list[GridCell], path: Path, trials: int | None = None) -> list[dict[str, Any]]:
    """One row per (cell, prover) with acceptance, Wilson interval, naive acceptance, exact err,
    rejection kinds and costs (the first ``trials`` trials of each cell when given)."""
    done = load_trials(path)
    rows = []
    for cell in cells:
        task = require_exact_synthetic(load_task(cell.task))
        honest = honest_attribution(task)
        plan = plan_for(cell)
        have = done.get(cell.key(), {})
        idx = sorted(have)[: trials if trials is not None else None]
        context = AttackContext(epsilon=cell.epsilon, lie_allowance=plan.lie_allowance)
        for model in cell.provers:
            outs = [o for i in idx for o in have[i] if o["prover"] == model.label]
            n = len(outs)
            acc = sum(o["verdict"] == "accept" for o in outs)
            naive = sum(bool(o["naive_accept"]) for o in outs)
            lo, hi = wilson_interval(acc, n)
            err = true_err(model, task, honest, context)
            mse_used = [o["mse_samples"] for o in outs]
            rows.append(
                {
                    "cell": cell.label,
                    "task": cell.task,
                    "draws": cell.draws,
                    "adversary": model.name,
                    "strength": model.strength,
                    "prover": model.label,
                    "epsilon": cell.epsilon,
                    "delta": cell.delta,
                    "true_err": err,
                    "err_over_eps": err / cell.epsilon,
                    "trials": n,
                    "accepts": acc,
                    "accept_rate": acc / n if n else None,
                    "accept_lower": lo,
                    "accept_upper": hi,
                    "naive_accept_rate": naive / n if n else None,
                    "reject_kinds": dict(
                        Counter(o["kind"] for o in outs if o["verdict"] != "accept")
                    ),
                    "mean_lies": float(np.mean([o["lies"] for o in outs])) if n else None,
                    "mean_mse_samples": float(np.mean(mse_used)) if n else None,
                    "tolerance": plan.tolerance,
                    "rho": plan.rho,
                    "tuples": plan.pairs_per_level,
                    "spot_checks": plan.spot_checks,
                    "lie_allowance": plan.lie_allowance,
                    "mse_cap": plan.mse_samples,
                    "prover_retrainings": plan.num_members,
                    "verifier_retrainings_mean": plan.spot_checks + float(np.mean(mse_used))
                    if n
                    else None,
                }
            )
    return rows


def verdict_on_row(row: dict[str, Any]) -> str:
    """What the row shows against the guarantee: "ok", "VIOLATION" or "too few trials".

    err ≥ ε: the Wilson upper bound on acceptance must be ≤ δ. err = 0 with honest answers
    (honest, fp-noise ≤ τ): acceptance must be ≥ 1 − δ (its Wilson interval is reported beside it).
    Otherwise (0 < err < ε, or tampered answers with an honest attribution) there is no promise."""
    if not row["trials"]:
        return "no trials"
    if row["true_err"] >= row["epsilon"] * (1 - 1e-9):
        if row["accept_upper"] <= row["delta"]:
            return "ok"
        return "VIOLATION" if row["accept_rate"] > row["delta"] else "too few trials"
    within_tau = row["adversary"] == "fp-noise" and row["strength"] <= row.get("tolerance", 0.0)
    if row["prover"] == "honest" or within_tau:  # completeness: an honest report must pass
        return "ok" if row["accept_rate"] >= 1 - row["delta"] else "below 1 − δ"
    return "no promise"
