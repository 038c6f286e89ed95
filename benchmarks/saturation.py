"""How often the bounded output of a logistic-regression task saturates, per target.

The logistic-regression tasks report f_t = b·tanh(u_t/b), u_t = (margin_t − o_t)/σ_t the margin
centred and scaled by public per-target constants. f is close to u while |u| ≪ b and flattens
beyond. This retrains the task on fresh B_p subsets and prints, per target, the standard deviation
of u and the fraction of subsets with |u| > b (where tanh has lost 24% of its slope's worth:
f/u < tanh(1) = 0.76) and with |f| > 0.95·b (f within 5% of the bound).

    python benchmarks/saturation.py                         # digits-logreg, 20,000 subsets
    python benchmarks/saturation.py --task 'digits-logreg:scale=none,b=2' --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def saturation(task_selector: str, subsets: int, seed: int) -> dict:
    """Per-target sd(u), P(|u| > b) and P(|f| > 0.95 b) over ``subsets`` fresh B_p subsets."""
    from protocol.tasks.registry import load_task

    task = load_task(task_selector)
    b = float(task.output_bound)
    rng = np.random.default_rng(seed)
    masks = rng.random((subsets, task.num_train_points)) < task.p
    seeds = rng.integers(0, 2**63, size=subsets, dtype=np.uint64)
    f = np.asarray(task.retrain(masks, seeds).f, dtype=np.float64)
    u = b * np.arctanh(np.clip(f / b, -1 + 1e-16, 1 - 1e-16))
    return {
        "task": task_selector,
        "output_bound": b,
        "subsets": subsets,
        "sd_u": u.std(axis=0).round(4).tolist(),
        "sd_f": f.std(axis=0).round(4).tolist(),
        "frac_u_beyond_b": (np.abs(u) > b).mean(axis=0).round(5).tolist(),
        "frac_f_within_5pct_of_b": (np.abs(f) > 0.95 * b).mean(axis=0).round(5).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the table (or one JSON object)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-logreg")
    ap.add_argument("--subsets", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = saturation(args.task, args.subsets, args.seed)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['task']}: b = {out['output_bound']:g}, {out['subsets']:,} subsets")
    print("| target | sd u | sd f | P(|u| > b) | P(|f| > 0.95 b) |\n|---:|---:|---:|---:|---:|")
    for t, row in enumerate(
        zip(out["sd_u"], out["sd_f"], out["frac_u_beyond_b"], out["frac_f_within_5pct_of_b"],
            strict=True)
    ):  # fmt: skip
        print(f"| {t} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.4f} | {row[3]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
