"""The economics at real scale: the verifier against computing the datamodel yourself, per N.

On ``fashion-mnist-probe:pair=0-rest`` (logistic regression on exact public features of
Fashion-MNIST, one class against the rest) at N = 1,000, 10,000 and 60,000, ε = 0.1·Var f and
δ = 0.05, in the default (certified) mode, for each N it:

* starts a real ``prover serve --method if-mean`` (the calibrated influence claim: 512
  retrainings whatever N) and runs the real verifier client against it over gRPC, recording the
  verdict, the verifier's retraining-equivalents, CPU-seconds and wall time, and the prover's
  retrainings (verified: members committed and models supplied; and the claim's own samples);
* **measures the self-fit**: OLS fitted on growing seeded samples K = 1.1N, 1.25N, 1.5N, 2N,
  2.5N, 3N (normal equations accumulated block by block), each evaluated on held-out
  retrainings as err ≈ mse(g_K) − mse(g_3N) (an under-estimate, so K comes out small and the
  verifier's ratio large), until every target has err ≤ ε;
* prints verifier ÷ self-fit, and beside it verifier ÷ (N + 1), the floor no regression with an
  intercept and N coefficients goes below, and verifier ÷ self-check: the cheapest way we know
  to *know* a datamodel without trusting anyone, computing the if-mean claim (512 retrainings)
  and estimating its MSE on the verifier's own number of retrainings.

Where measuring is out of reach on 2 cores (the self-fit at N = 60,000: about 90,000 retrainings
of 20 ms and 60,000² normal equations), it extrapolates K/N from the largest N measured and
says so in the row (``self_fit_method``).

    python benchmarks/scale.py --quick --json     # N = 1,000 and 10,000 (about 10 minutes)
    python benchmarks/scale.py --out docs/scale   # every N; rows.jsonl and table.md

Each finished row is appended (fsynced) to ``OUT/rows.jsonl``; ``--resume`` skips rows there.
Exit 1 unless every honest run is accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TASK = "fashion-mnist-probe:pair=0-rest,n={n},z={z}"
FULL_NS = (1_000, 10_000, 60_000)
QUICK_NS = (1_000, 10_000)
#: Largest N whose self-fit is measured; above it K/N is extrapolated.
MEASURE_SELF_FIT_UP_TO = 10_000
GRID = (1.1, 1.25, 1.5, 2.0, 2.5, 3.0)


def _proc_cpu(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def verify_at(selector: str, workdir: Path, epsilon_rel: float, delta: float) -> dict[str, Any]:
    """One honest prover server and one verifier run at ``selector``; the row's run figures."""
    from verifier import verify

    log = (workdir / "prover.log").open("w")
    cmd = [
        sys.executable, "-m", "prover.cli", "serve", "--task", selector, "--method", "if-mean",
        "--store", str(workdir / "store.sqlite3"), "--port", "0", "--no-progress",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"prover did not start: {(workdir / 'prover.log').read_text()}")
        address = line.split()[1]
        prover_ready_s = time.monotonic() - started
        prover_cpu0 = _proc_cpu(proc.pid)
        t0 = time.monotonic()
        result = verify(address, selector, epsilon_rel=epsilon_rel, delta=delta, timeout_s=3600)
        wall = time.monotonic() - t0
        prover_cpu = _proc_cpu(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    d = result.details
    if "verifier_cost" not in d:
        raise RuntimeError(f"the run at {selector} ended in {result.verdict}: {result.reason}")
    return {
        "verdict": result.verdict,
        "guarantee_met": bool(d.get("guarantee_met")),
        "verifier_retraining_equivalents": float(d["verifier_cost"]["retraining_equivalents"]),
        "verifier_cpu_s": float(d["verifier_cpu_s"]),
        "verifier_wall_s": wall,
        "mse_samples": d.get("mse_samples"),
        "challenge_tuples": d.get("tuples"),
        "prover_retrainings": int(d["prover_retrainings_verified"]) + int(d["datamodel_samples"]),
        "prover_retrainings_verified": int(d["prover_retrainings_verified"]),
        "datamodel_samples": int(d["datamodel_samples"]),
        "prover_cpu_s_during_verification": prover_cpu - prover_cpu0,
        "prover_startup_s": prover_ready_s,
    }


def measure_self_fit(selector: str, epsilon_rel: float, holdout: int, seed: int) -> dict[str, Any]:
    """The smallest K of the grid at which OLS on K seeded retrainings has held-out err ≤ ε on
    every target, with the CPU it took (retraining and fitting)."""
    import scipy.linalg

    from protocol.tasks.registry import load_task

    task = load_task(selector)
    n, p = task.num_train_points, task.p
    sizes = [int(g * n) for g in GRID]
    largest = sizes[-1]
    rng = np.random.default_rng(seed)

    def draw(k: int) -> np.ndarray:
        return rng.random((k, n)) < p

    cpu0 = time.process_time()
    hold = draw(holdout)
    fh = np.asarray(task.retrain(hold, np.zeros(holdout, np.uint64)).f)
    eps = epsilon_rel * fh.var(axis=0, ddof=1)
    xh = np.hstack([np.ones((holdout, 1)), 2.0 * hold - 1.0])
    gram = np.zeros((n + 1, n + 1))
    rhs = np.zeros((n + 1, fh.shape[1]))
    fits: dict[int, np.ndarray] = {}
    have, retrain_cpu, fit_cpu = 0, 0.0, 0.0
    for k in sizes:
        while have < k:
            step = min(2048, k - have)
            masks = draw(step)
            c0 = time.process_time()
            f = np.asarray(task.retrain(masks, np.zeros(step, np.uint64)).f)
            c1 = time.process_time()
            x = np.hstack([np.ones((step, 1)), 2.0 * masks - 1.0])
            gram += x.T @ x
            rhs += x.T @ f
            retrain_cpu += c1 - c0
            fit_cpu += time.process_time() - c1
            have += step
        c2 = time.process_time()
        fits[k] = scipy.linalg.solve(gram + 1e-9 * np.eye(n + 1), rhs, assume_a="pos")
        fit_cpu += time.process_time() - c2
    base = ((fh - xh @ fits[largest]) ** 2).mean(axis=0)
    curve = []
    found = None
    for k in sizes:
        worst = float(np.max((((fh - xh @ fits[k]) ** 2).mean(axis=0) - base) / eps))
        curve.append([k, round(worst, 4)])
        if found is None and worst <= 1.0:
            found = k
    per_model = retrain_cpu / have
    return {
        "self_fit_retrainings": found,
        "self_fit_method": "measured: OLS on growing samples, held-out err ≤ ε on every target",
        "self_fit_cpu_s": None if found is None else found * per_model + fit_cpu * found / have,
        "retrain_cpu_s_per_model": per_model,
        "curve": curve,
        "holdout": holdout,
        "total_cpu_s": time.process_time() - cpu0,
    }


def row_for(n: int, args: argparse.Namespace, measured: dict[int, dict[str, Any]]) -> dict:
    """Every figure of one N."""
    selector = TASK.format(n=n, z=args.z)
    with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as tmp:
        run = verify_at(selector, Path(tmp), args.epsilon_rel, args.delta)
    if n <= MEASURE_SELF_FIT_UP_TO:
        fit = measure_self_fit(selector, args.epsilon_rel, args.holdout, args.seed)
        measured[n] = fit
    else:
        ref_n = max(measured)
        ref = measured[ref_n]
        ratio = (ref["self_fit_retrainings"] or GRID[-1] * ref_n) / ref_n
        per_model_scale = n / ref_n  # a retraining's cost grows about linearly in N here
        fit = {
            "self_fit_retrainings": int(ratio * n),
            "self_fit_method": (
                f"extrapolated: K/N = {ratio:.3g} as measured at N = {ref_n}, and the measured "
                f"per-model CPU at N = {ref_n} scaled by N (not measured at this N)"
            ),
            "self_fit_cpu_s": ratio * n * ref["retrain_cpu_s_per_model"] * per_model_scale,
            "retrain_cpu_s_per_model": ref["retrain_cpu_s_per_model"] * per_model_scale,
        }
    k = fit["self_fit_retrainings"]
    v = run["verifier_retraining_equivalents"]
    self_check = run["datamodel_samples"] + (run["mse_samples"] or 0)
    return {
        "n": n,
        "task": selector,
        **run,
        **{k2: v2 for k2, v2 in fit.items() if k2 != "curve"},
        "self_fit_curve": fit.get("curve"),
        "self_fit_floor": n + 1,
        "verifier_to_self": None if not k else v / k,
        "verifier_to_self_cpu": (
            run["verifier_cpu_s"] / fit["self_fit_cpu_s"] if fit.get("self_fit_cpu_s") else None
        ),
        "verifier_to_floor": v / (n + 1),
        "self_check_retrainings": self_check,
        "verifier_to_self_check": v / self_check if self_check else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = (
        "| N | verdict | verifier (retraining-eq.) | verifier CPU-s | verifier wall s | prover "
        "retrainings | self-fit retrainings | verifier ÷ self-fit | verifier ÷ (N+1) | verifier "
        "÷ self-check |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        sf = r["self_fit_retrainings"]
        kind = "" if str(r["self_fit_method"]).startswith("measured") else " (extrapolated)"
        lines.append(
            f"| {r['n']:,} | {r['verdict']} | {r['verifier_retraining_equivalents']:,.0f} | "
            f"{r['verifier_cpu_s']:.1f} | {r['verifier_wall_s']:.0f} | "
            f"{r['prover_retrainings']:,} | {sf:,}{kind} | "
            f"{r['verifier_to_self']:.4f} | {r['verifier_to_floor']:.4f} | "
            f"{r['verifier_to_self_check']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the rows (``--json``: one object) and write ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1,000 and 10,000 only")
    ap.add_argument("--ns", help="comma-separated N (default 1000,10000,60000)")
    ap.add_argument("--z", type=int, default=10)
    ap.add_argument("--epsilon-rel", type=float, default=0.1)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="append rows to OUT/rows.jsonl, write OUT/table.md")
    ap.add_argument("--resume", action="store_true", help="skip N already in OUT/rows.jsonl")
    args = ap.parse_args(argv)
    ns = (
        [int(v) for v in args.ns.split(",")]
        if args.ns
        else list(QUICK_NS if args.quick else FULL_NS)
    )
    rows: list[dict[str, Any]] = []
    done: dict[int, dict[str, Any]] = {}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "rows.jsonl"
        if args.resume and path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                done[int(rec["n"])] = rec
    measured: dict[int, dict[str, Any]] = {
        n: {
            "self_fit_retrainings": r["self_fit_retrainings"],
            "retrain_cpu_s_per_model": r["retrain_cpu_s_per_model"],
        }
        for n, r in done.items()
        if str(r["self_fit_method"]).startswith("measured")
    }
    for n in sorted(ns):
        if n in done:
            rows.append(done[n])
            continue
        print(f"scale: N = {n:,} ...", file=sys.stderr, flush=True)
        row = row_for(n, args, measured)
        rows.append(row)
        if args.out is not None:
            with (args.out / "rows.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
    flat = [r["verifier_retraining_equivalents"] for r in rows]
    summary = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "epsilon_rel": args.epsilon_rel,
        "delta": args.delta,
        "rows": rows,
        "verifier_flat_within": (max(flat) - min(flat)) / min(flat) if flat else None,
    }
    if args.out is not None:
        (args.out / "table.md").write_text(table(rows) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print(table(rows))
        print(f"verifier work spread over N: {100 * summary['verifier_flat_within']:.1f}%")
    return 0 if all(r["verdict"] == "accept" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
