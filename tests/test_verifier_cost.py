"""What a practical plan costs, and that the answer is reproducible and does not grow with N."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verifier.cli import main as verifier_main


def _plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert verifier_main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_two_plans_with_the_same_arguments_are_identical(capsys) -> None:
    args = ("--task", "synthetic:n=500", "--epsilon", "0.1", "--delta", "0.05")
    assert _plan_json(capsys, *args) == _plan_json(capsys, *args)


def _honest_claim(tmp_path, n: int) -> str:
    from protocol.tasks import load_task

    truth = load_task(f"synthetic:n={n}").truth()
    path = tmp_path / f"claim-{n}.npz"
    np.savez(path, intercepts=truth.intercept, coefficients=truth.coefficients)
    return str(path)


def test_plans_at_n_500_and_50000_agree_within_10_percent(capsys, tmp_path) -> None:
    """The verifier's predicted work and the challenge size come from the task's output range,
    its variances, the claim's law and (ε, δ, Z): N enters nowhere. The two plans are made from
    two different tasks' seeded pilots, so they agree up to the pilots' sampling noise."""
    small = _plan_json(capsys, "--task", "synthetic:n=500", "--epsilon", "0.1",
                       "--claim", _honest_claim(tmp_path, 500))  # fmt: skip
    large = _plan_json(capsys, "--task", "synthetic:n=50000", "--epsilon", "0.1",
                       "--claim", _honest_claim(tmp_path, 50_000))  # fmt: skip
    assert small["plan"]["pilot_seed"] != large["plan"]["pilot_seed"]  # two tasks, two pilots
    for key in ("practical_verifier_retrainings", "prover_retrainings"):
        a, b = small[key], large[key]
        assert abs(a - b) <= 0.1 * max(a, b), (key, a, b)
    ta = small["prediction"]["stage2"]["predicted"]["tuples"]
    tb = large["prediction"]["stage2"]["predicted"]["tuples"]
    assert abs(ta - tb) <= 0.1 * max(ta, tb)


def test_practical_is_far_cheaper_than_theory(capsys) -> None:
    args = ("--task", "synthetic:n=100", "--epsilon", "0.2")
    practical = _plan_json(capsys, *args)
    theory = _plan_json(capsys, *args, "--mode", "theory")
    assert theory["plan"]["verifier_retrainings"] > 10 * practical["practical_verifier_retrainings"]
