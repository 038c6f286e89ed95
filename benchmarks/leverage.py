"""What verifying costs against not trusting, measured on one real prover/verifier pair over gRPC.

Starts a real ``prover serve`` process and runs the real ``verifier verify`` client against it in
the default mode, once with the honest prover and once with a cheating one (a → a/2 by default).
Beside the two runs it **measures the self-fit**: the retrainings the verifier would need to fit
the datamodel itself to held-out err ≤ ε, by fitting OLS and ridge on growing prefixes of one
seeded sample and evaluating each fit on held-out retrainings. It prints, side by side:

* verifier ÷ self-fit, in retraining-equivalents and in CPU-seconds;
* prover total ÷ the prover's own datamodel fit (its reported retrainings ÷ its datamodel's);
* prover CPU ÷ verifier CPU;
* the prover's challenge retrainings against the earlier committed run (16,667,060).

    python benchmarks/leverage.py                       # digits-logreg, ε = 0.1·Var f (minutes)
    python benchmarks/leverage.py --quick               # z = 1 (about a minute)
    python benchmarks/leverage.py --out docs/leverage   # also write runs.jsonl and table.md

Each finished run is appended (fsynced) to ``OUT/runs.jsonl``; ``--resume`` skips runs already
there. Exit 1 unless the honest prover is accepted and the cheat is not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_TASK = "digits-logreg"
QUICK_TASK = "digits-logreg:z=1"
#: |E| of the committed run this issue measures against (docs/certified-checks.md before #14).
PREVIOUS_CHALLENGE_RETRAININGS = 16_667_060


def _children_cpu() -> float:
    """User + system CPU seconds of every waited-for child process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _start_prover(args: argparse.Namespace, workdir: Path, cheat: str | None) -> tuple[Any, str]:
    """Precompute the datamodel's samples, then start ``prover serve``; returns (proc, addr)."""
    store = workdir / "store.sqlite3"
    base = ["--task", args.task, "--store", str(store)]
    if args.samples is not None:
        base += ["--samples", str(args.samples)]
    subprocess.run(
        [sys.executable, "-m", "prover.cli", "precompute", *base, "--no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # the cheat is `simulations serve` on the same store (the one door for cheating servers)
    serve = ["prover.cli", "serve"] if not cheat else ["simulations.cli", "serve", cheat]
    cmd = [sys.executable, "-m", *serve, *base, "--port", "0", "--no-progress"]
    cmd += ["--session-ttl", str(args.timeout)]
    log = open(workdir / "prover.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("LISTENING"):
            return proc, line.split()[1]
    raise RuntimeError(f"prover did not start; see {workdir / 'prover.log'}")


def run_once(args: argparse.Namespace, label: str, cheat: str | None) -> dict[str, Any]:
    """One prover + verifier pair; the verifier's figures plus measured CPU times."""
    with tempfile.TemporaryDirectory(prefix="leverage-") as tmp:
        workdir = Path(tmp)
        cpu0 = _children_cpu()
        proc, addr = _start_prover(args, workdir, cheat)
        precompute_cpu = _children_cpu() - cpu0
        verify = [
            sys.executable, "-m", "verifier.cli", "verify", "--prover", addr,
            "--task", args.task, "--epsilon-rel", str(args.epsilon_rel),
            "--delta", str(args.delta), "--timeout", str(args.timeout), "--json", "--no-progress",
        ]  # fmt: skip
        print(f"[{label}] {' '.join(shlex.quote(c) for c in verify)}", flush=True)
        cpu1, wall1 = _children_cpu(), time.monotonic()
        out = subprocess.run(verify, check=False, capture_output=True, text=True)
        verifier_wall = time.monotonic() - wall1
        verifier_cpu = _children_cpu() - cpu1
        proc.terminate()
        proc.wait(timeout=60)
        prover_cpu = _children_cpu() - cpu1 - verifier_cpu
        try:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"verifier printed no JSON: {out.stderr[-2000:]}") from None
    cost = result.get("verifier_cost", {})
    eps = result.get("epsilon") or []
    return {
        "label": label,
        "cheat": cheat,
        "task": args.task,
        "epsilon_rel": args.epsilon_rel,
        "delta": args.delta,
        "verdict": result.get("verdict"),
        "guarantee_met": result.get("guarantee_met"),
        "exit_code": out.returncode,
        "reason": result.get("reason"),
        "epsilon": eps,
        "certified_epsilon": result.get("certified_epsilon"),
        "mse_samples": result.get("mse_samples"),
        "tuples": result.get("tuples"),
        "challenge_retrainings": 4 * int(result.get("tuples") or 0),
        "verifier_retraining_equivalents": float(result.get("verifier_retrainings") or 0.0),
        "verifier_local_retrainings": cost.get("local_retrainings"),
        "verifier_pilot_retrainings": cost.get("pilot_retrainings"),
        "verifier_certified_models": cost.get("certified_models"),
        "verifier_cpu_s_reported": result.get("verifier_cpu_s"),
        "verifier_cpu_s": round(verifier_cpu, 2),
        "verifier_wall_s": round(verifier_wall, 1),
        "prover_retrainings": int(result.get("prover_retrainings") or 0),
        "prover_retrainings_verified": result.get("prover_retrainings_verified"),
        "datamodel_samples": result.get("datamodel_samples"),
        "prover_serve_cpu_s": round(prover_cpu, 2),
        "prover_precompute_cpu_s": round(precompute_cpu, 2),
        "self_fit_estimate": result.get("self_fit_retrainings"),
        "timings": result.get("timings"),
    }


def _grid(num_points: int, largest: int) -> list[int]:
    """Sample sizes from N + 2 upwards in steps of 10%."""
    out, k = [], float(num_points + 2)
    while k <= largest:
        out.append(int(k))
        k *= 1.1
    return sorted(set(out))


def measure_self_fit(task_selector: str, epsilon_rel: float, holdout: int, seed: int) -> dict:
    """The fewest retrainings with which OLS or ridge (whichever needs fewer) reaches held-out
    err ≤ ε on every target, and the CPU that costs.

    err(g_K) is estimated on ``holdout`` fresh retrainings as mse(g_K) − mse(g_big), g_big the fit
    on the largest sample: since mse(g_big) = B≥2 + err(g_big) ≥ B≥2 this under-estimates err,
    so the K found is, if anything, too small (the verifier's ratio too large). ε_t = R·Var f_t
    on the held-out values. K is the first point of a 10% grid that passes: the true need lies
    between the grid point before it and K.
    """
    import torch

    from protocol.decision import datamodel_predictions
    from protocol.tasks.registry import load_task
    from prover.datamodel import fit_datamodel

    torch.set_num_threads(1)
    task = load_task(task_selector)
    n, p = task.num_train_points, task.p
    largest = 40 * n
    rng = np.random.default_rng(seed)
    masks = rng.random((largest + holdout, n)) < p
    seeds = rng.integers(0, 2**63, size=largest + holdout, dtype=np.uint64)
    cpu0 = time.process_time()
    f = np.asarray(task.retrain(masks[:largest], seeds[:largest]).f, dtype=np.float64)
    retrain_cpu = (time.process_time() - cpu0) / largest
    fh = np.asarray(task.retrain(masks[largest:], seeds[largest:]).f, dtype=np.float64)
    hold = masks[largest:]
    eps = epsilon_rel * fh.var(axis=0, ddof=1)
    big = fit_datamodel(masks[:largest], f, method="ols")
    base = ((fh - datamodel_predictions(hold, big.intercepts, big.coefficients)) ** 2).mean(0)
    best: dict[str, Any] | None = None
    curves: dict[str, list[tuple[int, float]]] = {}
    for method in ("ols", "ridge"):
        curve = []
        for k in _grid(n, largest):
            cpu1 = time.process_time()
            dm = fit_datamodel(masks[:k], f[:k], method=method)
            fit_cpu = time.process_time() - cpu1
            pred = datamodel_predictions(hold, dm.intercepts, dm.coefficients)
            worst = float(np.max((((fh - pred) ** 2).mean(0) - base) / eps))
            curve.append((k, worst))
            if worst <= 1.0:
                prev = curve[-2][0] if len(curve) > 1 else n + 1
                if best is None or k < best["retrainings"]:
                    best = {
                        "method": method,
                        "retrainings": k,
                        "previous_grid_point": prev,
                        "fit_cpu_s": fit_cpu,
                        "cpu_s": k * retrain_cpu + fit_cpu,
                    }
                break
        curves[method] = curve
    if best is None:
        raise RuntimeError(f"no fit on up to {largest} samples reaches err ≤ ε")
    best.update(
        {
            "retrain_cpu_s_per_model": retrain_cpu,
            "holdout": holdout,
            "largest_sample": largest,
            "curves": {m: [[k, round(w, 4)] for k, w in c] for m, c in curves.items()},
        }
    )
    return best


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def ratios(run: dict[str, Any], self_fit: dict[str, Any]) -> dict[str, float | None]:
    """The four figures of the issue, from one run and the measured self-fit."""
    v, vcpu = run["verifier_retraining_equivalents"], run["verifier_cpu_s"]
    prover_cpu = run["prover_serve_cpu_s"] + run["prover_precompute_cpu_s"]
    dm = run.get("datamodel_samples") or 0
    ch = run["challenge_retrainings"]
    return {
        "verifier_to_self_fit": v / self_fit["retrainings"],
        "verifier_to_self_fit_cpu": vcpu / self_fit["cpu_s"] if self_fit["cpu_s"] else None,
        "prover_total_to_datamodel": run["prover_retrainings"] / dm if dm else None,
        "prover_cpu_to_verifier_cpu": prover_cpu / vcpu if vcpu else None,
        "challenge_retrainings_fall": (PREVIOUS_CHALLENGE_RETRAININGS / ch) if ch else None,
    }


def table(records: list[dict[str, Any]], self_fit: dict[str, Any]) -> str:
    """A markdown table of the runs against the measured self-fit."""
    head = (
        "| run | verdict | guarantee met | \\|M\\| | tuples | verifier retraining-eq. | "
        "verifier CPU (s) | self-fit retrainings | verifier ÷ self-fit (retr.-eq. / CPU) | "
        "prover retrainings (datamodel) | prover total ÷ datamodel | prover CPU ÷ verifier CPU |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
    )
    rows = []
    for r in records:
        q = ratios(r, self_fit)
        cpu_ratio = q["verifier_to_self_fit_cpu"]
        rows.append(
            f"| {r['label']} | {r['verdict']} | {r['guarantee_met']} | {r['mse_samples']:,} | "
            f"{r['tuples']:,} | {r['verifier_retraining_equivalents']:,.1f} | "
            f"{r['verifier_cpu_s']:.1f} | {self_fit['retrainings']:,} | "
            f"{q['verifier_to_self_fit']:.2f} / {cpu_ratio:.2f} | "
            f"{r['prover_retrainings']:,} ({r.get('datamodel_samples') or 0:,}) | "
            f"{q['prover_total_to_datamodel'] or float('nan'):.2f} | "
            f"{q['prover_cpu_to_verifier_cpu'] or float('nan'):.1f} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the honest and the cheating pair and the self-fit; exit 1 on a wrong verdict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=None, help=f"task selector (default {DEFAULT_TASK})")
    ap.add_argument("--epsilon-rel", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=None, help="prover datamodel samples")
    ap.add_argument("--cheat", default="scale:0.5", help="the cheating prover's strategy")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per gRPC call")
    ap.add_argument("--holdout", type=int, default=20_000, help="held-out retrainings (self-fit)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the self-fit's samples")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TASK}, 5,000 held out")
    ap.add_argument("--only", choices=["honest", "cheat"], help="run one of the two")
    ap.add_argument("--out", type=Path, help="append runs.jsonl and write table.md here")
    ap.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.jsonl")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)
    if args.task is None:
        args.task = QUICK_TASK if args.quick else DEFAULT_TASK
    if args.quick:
        args.holdout = min(args.holdout, 5_000)
    done: dict[str, dict[str, Any]] = {}
    runs_path = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        runs_path = args.out / "runs.jsonl"
        if args.resume and runs_path.exists():
            for line in runs_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from an interrupted run
                if rec.get("task") == args.task and rec.get("epsilon_rel") == args.epsilon_rel:
                    done[rec["label"]] = rec
    plan = [("honest", None), (f"cheat {args.cheat}", args.cheat)]
    if args.only:
        plan = [plan[0]] if args.only == "honest" else [plan[1]]
    records = []
    for label, cheat in plan:
        if label in done:
            records.append(done[label])
            continue
        rec = run_once(args, label, cheat)
        print(json.dumps(rec), flush=True)
        if runs_path is not None:
            _append(runs_path, rec)
        records.append(rec)
    self_fit = done.get("self-fit")
    if self_fit is None:
        print("[self-fit] measuring on held-out retrainings ...", flush=True)
        self_fit = {"label": "self-fit", "task": args.task, "epsilon_rel": args.epsilon_rel}
        self_fit.update(measure_self_fit(args.task, args.epsilon_rel, args.holdout, args.seed))
        if runs_path is not None:
            _append(runs_path, self_fit)
    text = table(records, self_fit)
    text += (
        f"\nself-fit: {self_fit['method']} reaches held-out err ≤ ε on every target with "
        f"{self_fit['retrainings']:,} retrainings (the 10% grid point before: "
        f"{self_fit['previous_grid_point']:,}), {self_fit['cpu_s']:.2f} CPU-s "
        f"({self_fit['retrain_cpu_s_per_model'] * 1e3:.3f} ms per retraining, single thread)\n"
    )
    for r in records:
        fall = ratios(r, self_fit)["challenge_retrainings_fall"]
        text += (
            f"{r['label']}: {r['challenge_retrainings']:,} challenge retrainings"
            + (f" ({fall:,.0f}× fewer than the earlier run's 16,667,060)\n" if fall else
               " (the earlier run needed 16,667,060)\n")
        )  # fmt: skip
    if args.json:
        summary = {r["label"]: ratios(r, self_fit) for r in records}
        print(json.dumps({"runs": records, "self_fit": self_fit, "ratios": summary}))
    else:
        print(text)
    if args.out is not None:
        (args.out / "table.md").write_text(text)
    ok = all((r["verdict"] == "accept") == (r["cheat"] is None) for r in records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
