"""Command-line behaviour that needs no server: plans, refusals and clear errors."""

from __future__ import annotations

import json

import pytest

from prover.cli import main as prover_main
from verifier.cli import main as verifier_main


def test_plan_json_reports_the_papers_rule_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    plans = {}
    for mode in ("theory", "manual"):
        args = ["plan", "--task", "synthetic", "--epsilon", "0.1", "--mode", mode, "--json"]
        assert verifier_main(args) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["mode"] == mode
        plans[mode] = out["plan"]
    for plan in plans.values():
        for key in ("rho", "pairs_per_level", "singles", "num_members", "spot_checks",
                    "mse_samples", "lie_allowance", "verifier_retrainings",
                    "prover_retrainings"):  # fmt: skip
            assert key in plan
        assert plan["budget"]["tau_charge"] >= 0
    assert plans["theory"]["guarantee_met"] is True
    assert plans["manual"]["guarantee_met"] is False
    assert plans["theory"]["verifier_retrainings"] > plans["manual"]["verifier_retrainings"]


def test_practical_plan_json_is_the_default_and_names_its_pilot_seed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["plan", "--task", "synthetic:n=100", "--epsilon", "0.2", "--json"]
    assert verifier_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "practical"
    assert out["checks"] == "retrain"
    assert len(out["plan"]["pilot_seed"]) == 64
    assert out["prediction"]["pilot_seed"] == out["plan"]["pilot_seed"]
    st2 = out["prediction"]["stage2"]
    assert st2["predicted"]["tuples"] > 0  # B≥2 = 0.2 = ε: the challenges are needed
    assert out["practical_verifier_retrainings"] > 0


def test_theory_mode_too_large_to_run_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = verifier_main(
        ["verify", "--prover", "127.0.0.1:1", "--mode", "theory", "--task", "synthetic", "--json"]
    )
    assert rc == 2
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "error"
    assert "not runnable here" in out["reason"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--delta", "1.5"], "--delta must be in (0, 1)"),
        (["--task", "nonsense"], "unknown task 'nonsense'"),
        (["--task", "synthetic:n=abc"], "synthetic task parameter n='abc'"),
        (["--mode", "manual", "--pairs", "0"], "pairs"),
    ],
)
def test_bad_verifier_input_is_exit_2_with_reason(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = verifier_main(["verify", "--prover", "127.0.0.1:1", "--json", *args])
    assert rc == 2
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "error"
    assert needle in out["reason"]


def test_prover_serve_has_no_cheat_door(capsys: pytest.CaptureFixture[str]) -> None:
    # cheating servers are `simulations serve` only: production code never imports simulations
    assert prover_main(["serve", "--task", "synthetic", "--cheat", "scale:0.5"]) == 2
    assert "unrecognized arguments: --cheat" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "extra", "needle"),
    [
        ("bribe:1", [], "unknown adversary 'bribe'"),
        ("scale", [], "needs a strength"),
        ("scale:x", [], "must be a number"),
        ("scale:0.5", ["--strength", "0.5"], "give the strength once"),
        ("scale:inf", [], "must be finite"),
    ],
)
def test_bad_cheat_is_a_clear_simulations_error(
    spec: str, extra: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main as sim_main

    assert sim_main(["serve", spec, *extra, "--task", "synthetic", "--port", "0"]) == 2
    assert needle in capsys.readouterr().err


def test_negative_epsilon_is_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit) as exc:
        verifier_main(["plan", "--epsilon", "-1"])
    assert exc.value.code == 2
