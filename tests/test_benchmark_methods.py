"""benchmarks/methods.py's claims and held-out evaluation (the benchmark's own arithmetic)."""

from __future__ import annotations

import numpy as np

from protocol.tasks import load_task
from tests.conftest import load_benchmark

methods = load_benchmark("methods")


def test_claims_and_evaluation_on_digits() -> None:
    """Where a method is centred matters: the calibrated IF at the mean model is within 0.05·Var f
    of OLS on 20N samples, the classic IF at the full-data model more than Var f away (measured
    0.00 and 2.2 on digits-logreg:z=3)."""
    task = load_task("digits-logreg:z=2")
    counts = {"ols": 20 * task.num_train_points, "if-mean": 512, "if-full": 0}
    claims, fit_cpu, per_retrain = methods.make_claims(task, counts, seed=0)
    assert set(claims) == set(counts)
    assert claims["if-full"].num_samples == 0
    assert per_retrain > 0
    assert all(v >= 0 for v in fit_cpu.values())
    quality = methods.evaluate(task, claims, holdout=1500, seed=0)
    assert quality["if-mean"]["err_rel"] < 0.05
    assert quality["if-full"]["err_rel"] > 1.0
    for q in quality.values():
        assert -1.0 <= q["lds"] <= 1.0
        assert q["err_rel_se"] >= 0
    assert quality["if-mean"]["lds"] > quality["if-full"]["lds"] - 0.5
    row = {"method": "x", "retrainings": 0, "cpu_s": 0.1, "err_rel": 0.5, "err_rel_se": 0.01,
           "err_rel_max": 0.7, "lds": 0.9,
           "verdicts": {"0.1": "reject", "0.3": "reject"}}  # fmt: skip
    text = methods.table({"task": "t", "num_train_points": 10, "methods": [row]})
    assert "| x | 0 | 0.10 | 0.5000 | 0.0100 | 0.7000 | 0.900 | reject | reject |" in text
    assert np.isfinite(quality["ols"]["err_rel"])
    # without OLS (large N) the best claim is the reference: it reads 0, the others more
    best = methods.evaluate(task, {k: claims[k] for k in ("if-mean", "if-full")}, 1500, 0, None)
    assert best["if-mean"]["reference"] == "if-mean"
    assert best["if-mean"]["err_rel"] == 0.0
    assert best["if-full"]["err_rel"] > 1.0
