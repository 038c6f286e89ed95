"""benchmarks/scale.py's self-fit measurement and its table (the benchmark's own arithmetic).

On the exact synthetic task (n = 20, B≥2 = 0.2·Var f) OLS needs about N + 2 + (N + 1)·B≥2/ε
retrainings for err ≤ ε, so at ε = 0.1 (estimate 64 = 3.2N) no point of the grid up to 3N passes,
and at ε = 0.5 (estimate 30.4 = 1.5N) one near 1.5N does.
"""

from __future__ import annotations

from tests.conftest import load_benchmark

scale = load_benchmark("scale")

TASK = "synthetic:n=20,z=1,p=0.5,seed=0"


def test_self_fit_lands_near_the_ols_estimate() -> None:
    loose = scale.measure_self_fit(TASK, 0.5, holdout=20_000, seed=0)
    assert [k for k, _ in loose["curve"]] == [int(g * 20) for g in scale.GRID]
    assert loose["self_fit_retrainings"] in (25, 30, 40)  # 1.25N–2N around the estimate 30.4
    assert loose["self_fit_cpu_s"] > 0
    tight = scale.measure_self_fit(TASK, 0.1, holdout=20_000, seed=0)
    assert tight["self_fit_retrainings"] in (None, 60)  # the estimate 64 lies beyond 2.5N
    first, last = tight["curve"][0][1], tight["curve"][-2][1]
    assert first > last > 0  # err falls as K grows


def test_table_labels_extrapolated_rows() -> None:
    row = {
        "n": 60_000, "verdict": "accept", "verifier_retraining_equivalents": 1731.0,
        "verifier_cpu_s": 253.9, "verifier_wall_s": 326.0, "prover_retrainings": 13_012,
        "self_fit_retrainings": 90_000, "self_fit_method": "extrapolated: K/N = 1.5",
        "verifier_to_self": 1731 / 90_000, "verifier_to_floor": 1731 / 60_001,
        "verifier_to_self_check": 1731 / 13_012,
    }  # fmt: skip
    line = scale.table([row]).splitlines()[-1]
    assert "90,000 (extrapolated)" in line
    assert "0.0192" in line
