"""Leverage of a real run: prover retrainings ÷ verifier retraining-equivalents, over gRPC.

Starts a real ``prover serve`` process and runs the real ``verifier verify`` client against it,
once with the honest prover and once with a cheating one (a scaled attribution by default), in
practical mode with certified spot checks. For each run it records the verdict, the cost figures
the verifier reports (prover retrainings, verifier retraining-equivalents, gradient passes,
pilot retrainings) and the measured wall and CPU times of both processes.

    python benchmarks/leverage.py                       # the #4 acceptance run (about 1 hour)
    python benchmarks/leverage.py --quick               # a small version (about a minute)
    python benchmarks/leverage.py --out docs/leverage   # also write runs.jsonl and table.md

Each finished run is appended (fsynced) to ``OUT/runs.jsonl``; ``--resume`` skips runs that are
already there, so an interrupted benchmark loses at most the run in progress.
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

DEFAULT_TASK = "digits-logreg:scale=auto,b=1.5"
QUICK_TASK = "digits-logreg:z=1,scale=auto,b=1.5"


def _children_cpu() -> float:
    """User + system CPU seconds of every waited-for child process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _start_prover(args: argparse.Namespace, workdir: Path, cheat: str | None) -> tuple[Any, str]:
    """Precompute the datamodel's samples, then start ``prover serve``; returns (proc, addr)."""
    store = workdir / "store.sqlite3"
    base = ["--task", args.task, "--store", str(store), "--samples", str(args.samples)]
    subprocess.run(
        [sys.executable, "-m", "prover.cli", "precompute", *base, "--no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cmd = [sys.executable, "-m", "prover.cli", "serve", *base, "--port", "0", "--no-progress"]
    cmd += ["--no-reuse-challenges", "--session-ttl", str(args.timeout)]
    if cheat:
        cmd += ["--cheat", cheat]
    log = open(workdir / "prover.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("LISTENING"):
            return proc, line.split()[1]
    raise RuntimeError(f"prover did not start; see {workdir / 'prover.log'}")


def run_once(args: argparse.Namespace, label: str, cheat: str | None) -> dict[str, Any]:
    """One prover + verifier pair; returns the verifier's JSON result plus timings."""
    with tempfile.TemporaryDirectory(prefix="leverage-") as tmp:
        workdir = Path(tmp)
        cpu0 = _children_cpu()
        proc, addr = _start_prover(args, workdir, cheat)
        precompute_cpu = _children_cpu() - cpu0
        verify = [
            sys.executable, "-m", "verifier.cli", "verify", "--prover", addr,
            "--task", args.task, "--mode", "practical", "--epsilon-rel", str(args.epsilon_rel),
            "--delta", str(args.delta), "--checks", "certified-spot",
            "--pilot-tuples", str(args.pilot_tuples), "--timeout", str(args.timeout),
            "--json", "--no-progress",
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
    details = result  # the verifier's JSON holds its details at the top level
    cost = details.get("verifier_cost", {})
    pilot = details.get("pilot_retrainings", 0)
    v = float(result.get("verifier_retrainings") or 0.0)
    p = int(result.get("prover_retrainings") or 0)
    plan = details.get("plan", {})
    return {
        "label": label,
        "cheat": cheat,
        "task": args.task,
        "epsilon_rel": args.epsilon_rel,
        "delta": args.delta,
        "verdict": result.get("verdict"),
        "reason": result.get("reason"),
        "exit_code": out.returncode,
        "epsilon": result.get("epsilon"),
        "rho": plan.get("rho"),
        "members": plan.get("num_members"),
        "spot_checks": plan.get("spot_checks"),
        "lie_allowance": plan.get("lie_allowance"),
        "mse_samples_used": details.get("mse_samples_used"),
        "mse_cap": details.get("mse_cap"),
        "prover_retrainings": p,
        "verifier_retraining_equivalents": v,
        "gradient_passes": cost.get("gradient_passes"),
        "gradient_pass_retraining_equivalents": cost.get("gradient_pass_retraining_equivalents"),
        "calibration_retrainings": cost.get("calibration_retrainings"),
        "pilot_retrainings": pilot,
        "leverage": p / v if v else None,
        "verifier_wall_s": round(verifier_wall, 1),
        "verifier_cpu_s": round(verifier_cpu, 1),
        "prover_cpu_s": round(prover_cpu, 1),
        "prover_precompute_cpu_s": round(precompute_cpu, 1),
        "timings": details.get("timings"),
        "cpu_ratio": prover_cpu / verifier_cpu if verifier_cpu else None,
    }


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def table(records: list[dict[str, Any]]) -> str:
    """A markdown table of the runs."""
    head = (
        "| run | verdict | ε | ρ | \\|E\\| | k | m* | \\|M\\| used | prover retrainings | "
        "verifier retraining-eq. | leverage | verifier wall / CPU (s) | prover CPU (s) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in records:
        eps = r["epsilon"]
        eps_s = f"{min(eps):.4g}" if isinstance(eps, list) else f"{eps:.4g}"
        rows.append(
            f"| {r['label']} | {r['verdict']} | {eps_s} | {r['rho']} | {r['members']:,} | "
            f"{r['spot_checks']:,} | {r['lie_allowance']} | {r['mse_samples_used']} | "
            f"{r['prover_retrainings']:,} | {r['verifier_retraining_equivalents']:,.0f} | "
            f"{r['leverage']:.0f} | {r['verifier_wall_s']} / {r['verifier_cpu_s']} | "
            f"{r['prover_cpu_s']} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the honest and the cheating pair; exit 1 unless honest accepts and the cheat rejects."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default=None, help=f"task selector (default {DEFAULT_TASK})")
    ap.add_argument("--epsilon-rel", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--pilot-tuples", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=50_000, help="prover datamodel samples")
    ap.add_argument("--cheat", default="scale:0.5", help="the cheating prover's strategy")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per gRPC call")
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TASK} at ε = 0.3·Var f, cheat scale:0"
    )
    ap.add_argument("--only", choices=["honest", "cheat"], help="run one of the two")
    ap.add_argument("--out", type=Path, help="append runs.jsonl and write table.md here")
    ap.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.jsonl")
    args = ap.parse_args(argv)
    if args.task is None:
        args.task = QUICK_TASK if args.quick else DEFAULT_TASK
    if args.quick:
        args.epsilon_rel, args.pilot_tuples, args.samples = 0.3, 128, 4000
        if args.cheat == "scale:0.5":  # err ≈ 0.22·Var f is below ε = 0.3·Var f: not a cheat
            args.cheat = "scale:0"
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
    text = table(records)
    print(text)
    if args.out is not None:
        (args.out / "table.md").write_text(text)
    ok = all((r["verdict"] == "accept") == (r["cheat"] is None) for r in records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
