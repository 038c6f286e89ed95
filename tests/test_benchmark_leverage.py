"""benchmarks/leverage.py's measured self-fit and ratios (the benchmark's own arithmetic).

On the exact synthetic task (n = 20, B≥2 = 0.2·Var f) OLS needs about N + 2 + (N + 1)·B≥2/ε
retrainings for err ≤ ε: the measured K must land near that, and never below N + 2.
"""

from __future__ import annotations

import pytest

from protocol.economics import self_fit_retrainings
from tests.conftest import load_benchmark

leverage = load_benchmark("leverage")

TASK = "synthetic:n=20,z=1,p=0.5,seed=0"


def test_measured_self_fit_is_near_the_ols_estimate() -> None:
    out = leverage.measure_self_fit(TASK, 0.1, holdout=20_000, seed=0)
    # B≥2 = 0.2, ε = 0.1·Var f = 0.1: the estimate is 22 + 21·2 = 64
    estimate = self_fit_retrainings(20, [0.2], [0.1])
    assert out["retrainings"] >= 22
    assert out["previous_grid_point"] < out["retrainings"]
    assert 0.5 * estimate <= out["retrainings"] <= 2.0 * estimate, out
    assert out["cpu_s"] > 0
    # a looser ε needs fewer retrainings
    loose = leverage.measure_self_fit(TASK, 0.5, holdout=20_000, seed=0)
    assert loose["retrainings"] < out["retrainings"]


def test_ratios_divide_by_the_measured_self_fit() -> None:
    run = {"verifier_retraining_equivalents": 300.0, "verifier_cpu_s": 2.0,
           "prover_serve_cpu_s": 6.0, "prover_precompute_cpu_s": 2.0,
           "prover_retrainings": 3000, "datamodel_samples": 1000,
           "challenge_retrainings": 0}  # fmt: skip
    q = leverage.ratios(run, {"retrainings": 600, "cpu_s": 4.0})
    assert q["verifier_to_self_fit"] == pytest.approx(0.5)
    assert q["verifier_to_self_fit_cpu"] == pytest.approx(0.5)
    assert q["prover_total_to_datamodel"] == pytest.approx(3.0)
    assert q["prover_cpu_to_verifier_cpu"] == pytest.approx(4.0)
    assert q["challenge_retrainings_fall"] is None
