"""The attributions people compute, measured and verified (issue #18).

For every claim method on a logistic-regression task it makes the claim from seeded samples (the
regressions and empirical influence on their K samples, the influence methods from the task
alone, ``if-mean`` calibrated on 512, ``ridge-prior`` on 512), then reports:

* the retrainings and CPU-seconds the claim cost (retrainings at the CPU each one measured here,
  plus the fit);
* its true err estimated on H held-out retrainings, err ≈ mse(claim) − mse(reference), with the
  reference the OLS fit on the largest sample (so err is, if anything, under-estimated for every
  method alike), as err ÷ Var f averaged over targets, with its standard error from the paired
  per-subset differences;
* LDS, the Spearman correlation of predicted and actual outputs over the held-out subsets,
  averaged over targets;
* the verifier's verdict at ε = 0.1·Var f and 0.3·Var f, δ = 0.05, in the default mode, over gRPC
  against ``prover.Prover`` serving exactly that claim.

    python benchmarks/methods.py --quick --json     # digits-logreg:z=3, six methods, capped
    python benchmarks/methods.py --task digits-logreg:z=3 --max-mse-samples 50000 \
        --max-tuples 50000 --out docs/methods/digits    # every method; table.md, methods.png
    python benchmarks/methods.py --task fashion-mnist-probe:n=10000,z=3 --no-ols \
        --methods if-full,rif,rif-mean,if-mean,ridge-prior --max-mse-samples 50000 \
        --max-tuples 50000 --out docs/methods/fashion10k   # N = 10,000, err against the best

``--json`` prints one object with a ``methods`` list (``method``, ``retrainings``, ``cpu_s``,
``err_rel``, ``err_rel_se``, ``lds``, ``verdicts``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EPSILONS = (0.1, 0.3)
#: ``--quick``: the reference, the classic influence functions at the full-data model, and the
#: three cheap claims centred at the mean model (the rest take minutes each to verify near ε).
QUICK_METHODS = ("ols", "if-full", "rif", "rif-mean", "if-mean", "ridge-prior")
#: ``--quick``'s caps on the verifier's sizes (a claim whose err is within a few percent of ε then
#: ends ``inconclusive`` instead of drawing up to 200,000 MSE samples and 2,000,000 tuples).
QUICK_CAPS = {"max_mse_samples": 20_000, "max_tuples": 20_000}


def sample_counts(n: int) -> dict[str, int]:
    """Samples each method is given at N training points: the regressions as the prover would
    use them, the influence methods none (if-mean: its 512 calibration samples)."""
    return {
        "ols": 20 * n,
        "ridge": n,
        "lasso": n,
        "empirical-influence": 20 * n,
        "if-full": 0,
        "if-mean-raw": 0,
        "rif": 0,
        "ns": 0,
        "rif-mean": 0,
        "if-mean": 512,
        "ridge-prior": 512,
    }


def make_claims(task: Any, counts: dict[str, int], seed: int) -> tuple[dict, dict, float]:
    """(claims by method, fit CPU-s by method, CPU-s per retraining): every method's claim from
    the first K of one seeded sample (so a method given K samples uses exactly those)."""
    from prover.influence import fit_claim
    from prover.strategy import Attribution

    largest = max(counts.values())
    rng = np.random.default_rng(seed)
    masks = rng.random((largest, task.num_train_points)) < task.p
    c0 = time.process_time()
    f = np.asarray(task.retrain(masks, np.zeros(largest, np.uint64)).f)
    per_retrain = (time.process_time() - c0) / largest
    claims, fit_cpu = {}, {}
    for method, k in counts.items():
        c1 = time.process_time()
        dm = fit_claim(task, method, masks[:k], f[:k])
        fit_cpu[method] = time.process_time() - c1
        claims[method] = Attribution(dm.intercepts, dm.coefficients, method, k)
    return claims, fit_cpu, per_retrain


def evaluate(
    task: Any, claims: dict, holdout: int, seed: int, reference: str | None = "ols"
) -> dict[str, dict[str, float]]:
    """err ÷ Var f (mean over targets) with its standard error, and LDS, per method, against the
    ``reference`` claim (None: whichever claim has the lowest held-out MSE, which then reads 0)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed + 1)
    masks = rng.random((holdout, task.num_train_points)) < task.p
    f = np.asarray(task.retrain(masks, np.zeros(holdout, np.uint64)).f)
    x = 2.0 * masks - 1.0
    var = f.var(axis=0, ddof=1)
    preds = {m: a.intercepts + x @ a.coefficients.T for m, a in claims.items()}
    if reference is None:
        mses = {m: float((((f - g) ** 2) / var).mean()) for m, g in preds.items()}
        reference = min(mses, key=mses.__getitem__)
    loss_ref = (f - preds[reference]) ** 2
    out = {}
    for method, g in preds.items():
        d = ((f - g) ** 2 - loss_ref) / var  # paired per-subset differences, relative
        per_target = d.mean(axis=0)
        se = np.sqrt((d.var(axis=0, ddof=1) / holdout).sum()) / d.shape[1]
        lds = [spearmanr(g[:, t], f[:, t]).statistic for t in range(f.shape[1])]
        out[method] = {
            "err_rel": float(per_target.mean()),
            "err_rel_se": float(se),
            "err_rel_max": float(per_target.max()),
            "lds": float(np.nanmean(lds)),
            "reference": reference,
        }
    return out


def verdicts(task: Any, claim: Any, caps: dict[str, int]) -> dict[str, str]:
    """The verifier's verdict on ``claim`` at each ε in EPSILONS (default mode, over gRPC).
    ``caps`` (``max_mse_samples``, ``max_tuples``) bound its sizes: a claim whose err is so near ε
    that the cap is reached before the verdict is decided comes out ``inconclusive``."""
    from prover import Prover
    from verifier import verify

    out = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        Prover(task, store=Path(tmp) / "s.sqlite3", attribution=claim) as prover,
    ):
        for eps in EPSILONS:
            assert prover.address is not None
            result = verify(
                prover.address, task, epsilon_rel=eps, delta=0.05, timeout_s=600, **caps
            )
            out[f"{eps:g}"] = result.verdict
    return out


def run(
    selector: str,
    holdout: int,
    seed: int,
    methods: list[str] | None,
    caps: dict[str, int],
    with_ols: bool = True,
) -> dict[str, Any]:
    """Every figure for one task. ``with_ols=False`` (large N, where 20N retrainings and an N × N
    fit do not fit the machine) measures err against the best claim run instead of OLS."""
    from protocol.tasks import load_task

    task = load_task(selector)
    counts = sample_counts(task.num_train_points)
    ols = counts["ols"]
    if methods:
        counts = {m: k for m, k in counts.items() if m in methods or m == "ols"}
    if not with_ols:
        counts.pop("ols", None)
    claims, fit_cpu, per_retrain = make_claims(task, counts, seed)
    quality = evaluate(task, claims, holdout, seed, "ols" if with_ols else None)
    rows = []
    for method, k in counts.items():
        print(f"methods: {selector} {method} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        verdict = verdicts(task, claims[method], caps)
        rows.append(
            {
                "method": method,
                "retrainings": k,
                "cpu_s": k * per_retrain + fit_cpu[method],
                **quality[method],
                "verdicts": verdict,
                "verify_wall_s": time.monotonic() - t0,
            }
        )
    for r in rows:  # against the OLS prover's default sample, 20N, whether or not it ran
        r["retrainings_vs_ols"] = r["retrainings"] / ols
    return {
        "task": selector,
        "num_train_points": task.num_train_points,
        "reference": rows[0]["reference"] if rows else None,
        "holdout": holdout,
        "verifier_caps": caps,
        "methods": rows,
    }


def table(result: dict[str, Any]) -> str:
    """One task's rows as Markdown."""
    lines = [
        f"**{result['task']}** (N = {result['num_train_points']:,}; err against "
        f"{result.get('reference') or 'ols'})",
        "",
        "| method | retrainings | CPU-s | err ÷ Var f | ± s.e. | worst target | LDS | "
        "ε = 0.1·Var f | ε = 0.3·Var f |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["methods"], key=lambda r: r["err_rel"]):
        v = r["verdicts"]
        lines.append(
            f"| {r['method']} | {r['retrainings']:,} | {r['cpu_s']:.2f} | {r['err_rel']:.4f} | "
            f"{r['err_rel_se']:.4f} | {r.get('err_rel_max', float('nan')):.4f} | {r['lds']:.3f} | "
            f"{v['0.1']} | {v['0.3']} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """err ÷ Var f per method with its standard error, and the two ε lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["methods"], key=lambda r: r["err_rel"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = np.arange(len(rows))
    ax.errorbar(
        xs,
        [r["err_rel"] for r in rows],
        yerr=[2 * r["err_rel_se"] for r in rows],
        fmt="none",
        ecolor="black",
    )
    colours = {"accept": "tab:green", "inconclusive": "tab:orange", "reject": "tab:red"}
    for key, marker, offset in (("0.1", "o", -0.12), ("0.3", "s", 0.12)):
        for verdict, colour in colours.items():
            pick = [i for i, r in enumerate(rows) if r["verdicts"].get(key) == verdict]
            ax.scatter(
                xs[pick] + offset,
                [rows[i]["err_rel"] for i in pick],
                marker=marker,
                color=colour,
                zorder=3,
                label=f"verifier at ε = {key}·Var f: {verdict}",
            )
    for eps, style in zip(EPSILONS, ("--", ":"), strict=True):
        ax.axhline(eps, color="grey", linestyle=style, label=f"ε = {eps:g}·Var f")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xticks(
        xs,
        [f"{r['method']}\n{r['retrainings']:,} retr." for r in rows],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("err ÷ Var f (held out, ±2 s.e.)")
    ref = result.get("reference") or "ols"
    ax.set_title(f"{result['task']}: err of each attribution (against the {ref} claim)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run, print (``--json``: one object), write ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="digits-logreg")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"digits-logreg:z=3, 2,000 held out, methods {', '.join(QUICK_METHODS)}, verifier "
        "capped at 20,000 MSE samples and 20,000 tuples",
    )
    ap.add_argument("--holdout", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", help="comma-separated subset (ols is always run: the reference)")
    ap.add_argument(
        "--no-ols",
        action="store_true",
        help="skip OLS (large N: 20N retrainings and an N x N fit); err is then measured against "
        "the claim with the lowest held-out MSE",
    )
    ap.add_argument(
        "--max-mse-samples",
        type=int,
        help="cap on the verifier's MSE sample (default: the verifier's own; --quick: 20,000)",
    )
    ap.add_argument(
        "--max-tuples",
        type=int,
        help="cap on the verifier's challenge tuples (default: its own; --quick: 20,000)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    selector = "digits-logreg:z=3" if args.quick else args.task
    holdout = 2000 if args.quick else args.holdout
    methods = args.methods.split(",") if args.methods else None
    if args.quick and methods is None:
        methods = list(QUICK_METHODS)
    caps = dict(QUICK_CAPS) if args.quick else {}
    if args.max_mse_samples is not None:
        caps["max_mse_samples"] = args.max_mse_samples
    if args.max_tuples is not None:
        caps["max_tuples"] = args.max_tuples
    started = time.monotonic()
    result = run(selector, holdout, args.seed, methods, caps, with_ols=not args.no_ols)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    result["wall_s"] = time.monotonic() - started
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "table.md").write_text(table(result) + "\n")
        plot(result, args.out / "methods.png")
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
