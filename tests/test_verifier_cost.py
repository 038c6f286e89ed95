"""The verifier's cost: independent of N, and far below the paper's worst-case sizing."""

from __future__ import annotations

import json

import pytest

from protocol.accounting import plan_manual
from protocol.practical import PilotStats, plan_practical
from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.cli import main as verifier_main
from verifier.driver import run_protocol
from verifier.session import VerifierSession


def _run(n: int) -> tuple[float, int]:
    task = SyntheticTask(n=n, z=1, p=0.5, seed=0)
    truth = task.truth()
    plan = plan_manual(
        epsilon=0.5,
        delta=0.05,
        output_bound=task.output_bound,
        tolerance=task.tolerance,
        num_targets=1,
        pairs_per_level=400,
        spot_checks=16,
        mse_samples=300,
    )
    strategy = HonestStrategy(task, Attribution(truth.intercept, truth.coefficients, "exact", 0))
    result = run_protocol(VerifierSession(task, plan), InProcessTransport(task, strategy))
    assert result.verdict in ("accept", "reject"), result.reason
    return result.verifier_retrainings, result.num_train_points


def test_verifier_cost_is_the_same_at_n_500_and_50000() -> None:
    small, n_small = _run(500)
    large, n_large = _run(50_000)
    assert (n_small, n_large) == (500, 50_000)
    assert small == large == 16 + 300


def test_practical_sizes_do_not_depend_on_n() -> None:
    # plan_practical has no N input at all; with the same pilot statistics the sizes agree.
    pilot = PilotStats.from_hint(1.0, 0.2)
    kwargs = {"epsilon": 0.5, "max_mse_samples": 100_000}
    a = plan_practical(0.05, 4.7, 1e-9, 1, pilot, **kwargs)
    b = plan_practical(0.05, 4.7, 1e-9, 1, pilot, **kwargs)
    assert a.to_dict() == b.to_dict()
    with pytest.raises(TypeError):
        plan_practical(0.05, 4.7, 1e-9, 1, pilot, num_train_points=500, **kwargs)  # type: ignore[call-arg]


def test_practical_is_at_least_10x_cheaper_than_theory(capsys: pytest.CaptureFixture[str]) -> None:
    assert verifier_main(["plan", "--task", "synthetic", "--epsilon", "0.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["practical_verifier_retrainings"] > 0
    assert out["ratio"] >= 10, out["ratio"]
    assert out["theory_verifier_retrainings"] / out["practical_verifier_retrainings"] >= 10
