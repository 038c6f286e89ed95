"""Adversary catalogue and sweeps, in-process (fast: about 40 s on 2 cores).

Every statistical assertion states its trials and tolerance. The verifier's secrets come from its
CSPRNG (never seeded); task and adversaries are seeded, so only the verifier's draws vary.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution
from simulations import cli
from simulations.adversaries import AttackContext, favoured_group, make_adversary
from simulations.inprocess import InProcessTransport
from simulations.sweep import CellSpec, SweepConfig, run_sweep, wilson_interval
from verifier.driver import run_protocol
from verifier.session import VerifierSession

TASK_SELECTOR = "synthetic:n=100,z=1,p=0.5,seed=0"
TASK = SyntheticTask(n=100, z=1, p=0.5, seed=0)
TRUTH = TASK.truth()
EXACT = Attribution(TRUTH.intercept, TRUTH.coefficients, "exact", 0)
B1 = float(TRUTH.level_weights[0, 1])


def _mc_err(att: Attribution, samples: int = 200_000, seed: int = 5) -> tuple[float, float]:
    """Monte-Carlo err = E[(f − g)² − (f − g*)²] on fresh B_p subsets, with its standard error."""
    rng = np.random.default_rng(seed)
    masks = rng.random((samples, TASK.n)) < TASK.p
    f = TASK.evaluate(masks)[:, 0]
    x = 2.0 * masks - 1.0
    g = att.intercepts[0] + x @ att.coefficients[0]
    g_star = TRUTH.intercept[0] + x @ TRUTH.coefficients[0]
    d = (f - g) ** 2 - (f - g_star) ** 2
    return float(d.mean()), float(d.std() / math.sqrt(samples))


CLOSED_FORMS = {
    # name: (strength, closed-form err at p = 1/2 with the exact honest datamodel)
    "scale": (0.5, (1 - 0.5) ** 2 * B1),
    "targeted": (0.7, (1 - 0.7) ** 2 * B1),
    "boost": (0.1, len(favoured_group(TASK.n)) * 0.1**2),
    "intercept": (0.3, 0.3**2),
    "noise": (0.03, None),  # realised err exact (truth.err); E err = N σ_n² = 0.09
    "weak": (400, None),  # realised err exact; E err ≈ B≥2 (N+1)/K ≈ 0.05
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_form_err_matches_monte_carlo(name: str) -> None:
    strength, formula = CLOSED_FORMS[name]
    adv = make_adversary(name, strength, TASK, EXACT, context=AttackContext(seed=1))
    exact = adv.true_err()
    assert exact is not None
    if formula is not None:
        assert exact == pytest.approx(formula, rel=1e-9)
    mc, se = _mc_err(adv.attribution())
    # 200,000 paired samples: the MC estimate lies within 5 standard errors (+1e-4 absolute).
    assert abs(mc - exact) <= 5 * se + 1e-4, (mc, se, exact)


def test_noise_and_weak_errs_are_near_their_expectations() -> None:
    noise = make_adversary("noise", 0.03, TASK, EXACT, context=AttackContext(seed=1))
    # E err = N σ² = 0.09; with N = 100 coordinates the realised err is within 40%.
    assert noise.true_err() == pytest.approx(100 * 0.03**2, rel=0.4)
    weak = make_adversary("weak", 400, TASK, EXACT, context=AttackContext(seed=1))
    expected = float(TRUTH.residual[0]) * 101 / 400
    assert weak.true_err() == pytest.approx(expected, rel=0.6)


def test_answer_adversaries_keep_the_honest_err() -> None:
    for name in ("lazy", "wrong-subset", "wrong-seed", "equivocate", "replay", "fp-noise"):
        adv = make_adversary(name, 0.01, TASK, EXACT)
        assert adv.true_err() == pytest.approx(0.0, abs=1e-20), name


def test_adversaries_by_name_alias_and_strength() -> None:
    from simulations.adversaries import Lazy, Scale

    _adversary_spec = cli._adversary_spec
    assert _adversary_spec("scale:0.5", None) == ("scale", 0.5)
    assert _adversary_spec("fabricate:0.3", None) == ("lazy", 0.3)
    assert _adversary_spec("scale", 0.25) == ("scale", 0.25)
    assert isinstance(make_adversary("scale", 0.5, TASK, EXACT), Scale)
    assert isinstance(make_adversary("fabricate", 0.3, TASK, EXACT), Lazy)
    with pytest.raises(ValueError, match="unknown adversary"):
        _adversary_spec("nope:1", None)
    with pytest.raises(ValueError, match="needs a strength"):
        _adversary_spec("scale", None)
    with pytest.raises(ValueError, match="once"):
        _adversary_spec("scale:0.5", 0.5)
    with pytest.raises(ValueError, match="fraction"):
        make_adversary("fabricate", 1.5, TASK, EXACT)


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(0, 73)
    assert lo == 0.0
    assert hi < 0.05  # 73 clean trials bound the rate below δ = 0.05
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi
    for n in range(1, 400):  # the interval contains the rate (a plot's error bars need it)
        for k in (0, n):
            lo, hi = wilson_interval(k, n)
            assert lo <= k / n <= hi


def _plan(pairs: int, epsilon: float):
    from protocol.accounting import plan_manual

    return plan_manual(epsilon=epsilon, delta=0.05, output_bound=TASK.output_bound,
                       tolerance=TASK.tolerance, num_targets=1, pairs_per_level=pairs,
                       spot_checks=64, mse_samples=2000, rho=0.25)  # fmt: skip


def test_in_process_transport_runs_the_real_driver() -> None:
    from verifier.planning import PlanOptions, make_verifier_plan

    practical, checks = make_verifier_plan(PlanOptions(epsilon=0.5), TASK)
    session = VerifierSession(TASK, practical, checks=checks)
    result = run_protocol(session, InProcessTransport(TASK, _honest()))
    assert result.verdict == "accept", result.reason
    assert result.details["prover_transcript_agrees"] is True
    plan = _plan(2000, 0.3)  # the paper's rule: one challenge round, spot checks opened at once
    equivocate = make_adversary("equivocate", 0.5, TASK, EXACT)
    result = run_protocol(VerifierSession(TASK, plan), InProcessTransport(TASK, equivocate))
    assert result.verdict == "reject"
    assert "equivocation" in result.reason
    other = SyntheticTask(n=100, z=1, p=0.5, seed=1)
    result = run_protocol(VerifierSession(other, plan), InProcessTransport(TASK, _honest()))
    assert result.verdict == "error"
    assert "mismatch" in result.reason


def _honest():
    from prover.strategy import HonestStrategy

    return HonestStrategy(TASK, EXACT)


def _soundness_slice(tmp_path, trials: int, **caps: int) -> tuple[int, int, list]:
    """Four attribution attacks at err ≥ 1.02 against the default rule at ε = 1.0 (δ = 0.05),
    ``trials`` each, at the default caps unless ``caps`` (``max_mse_samples``, ``max_tuples``)
    say otherwise; returns (accepts, trials, records)."""
    config = SweepConfig(task=TASK_SELECTOR, trials=trials, seed=3, **caps)
    cells = [CellSpec("scale", -0.3, 1.0), CellSpec("boost", 0.32, 1.0),
             CellSpec("intercept", 1.1, 1.0), CellSpec("noise", 0.11, 1.0)]  # fmt: skip
    result = run_sweep(cells, config, tmp_path / "sound", progress=False, task=TASK)
    assert all(r["true_err"] >= 1.0 for r in result.records)
    return (
        sum(r["accepts"] for r in result.records),
        sum(r["trials"] for r in result.records),
        result.records,
    )


def test_soundness_sanity_rejects_err_above_epsilon(tmp_path) -> None:
    """Two trials per attack: none may be accepted (each would be a ≤ δ-probability event).

    Smaller caps than the default (the slow test below keeps those): the err ≈ ε attacks, which
    no cap can decide, end inconclusive after 40,000 MSE samples instead of 200,000. Every bound
    is anytime-valid, so the caps change how long a run goes on, not what an accept means."""
    accepts, trials, records = _soundness_slice(
        tmp_path, 2, max_mse_samples=40_000, max_tuples=200_000
    )
    assert trials == 8
    assert accepts == 0, records


@pytest.mark.slow
def test_soundness_slice_rejects_err_above_epsilon(tmp_path) -> None:
    """Adversaries with err ≥ ε are accepted at a rate ≤ δ (95% Wilson upper bound): 19 trials of
    each of four attacks, 76 pooled, so zero accepts give a Wilson upper bound of 0.048 ≤ δ."""
    accepts, trials, records = _soundness_slice(tmp_path, 19)
    assert trials == 76
    assert wilson_interval(accepts, trials)[1] <= 0.05, records


def test_naive_verifier_accepts_what_the_real_one_rejects(tmp_path) -> None:
    """Scaling s = 0.5 (err 0.2) and boosting β = 0.14 (err 0.196) at ε = 0.1.

    The paper's rule: msê − B̂≥2 ≈ 0.2 against ε/2 = 0.05, 3 standard errors above (20,000
    tuples). Naive: msê ≈ 0.4 ≤ 0.5·Var̂ f ≈ 0.5. 4 trials each: the naive verifier accepts at
    least 3 of 4, the paper's rule rejects at least 3 of 4 (per-trial error rates of a few per
    mille each way), and nothing is accepted.
    """
    config = SweepConfig(task=TASK_SELECTOR, mode="manual", pairs=20_000, spot_checks=64,
                         mse_samples=4000, trials=4, seed=0)  # fmt: skip
    cells = [CellSpec("scale", 0.5, 0.1), CellSpec("boost", 0.14, 0.1)]
    result = run_sweep(cells, config, tmp_path, progress=False, task=TASK)
    for rec in result.records:
        assert rec["naive_accepts"] >= 3, rec
        assert rec["accepts"] == 0, rec  # the paper's rule at manual sizes never accepts
        assert rec["outcomes"].get("err", 0) >= 3, rec  # it rejects on msê > B̂≥2 + ε/2


def test_sweep_resumes_without_recomputing_finished_cells(tmp_path) -> None:
    config = SweepConfig(task=TASK_SELECTOR, mode="manual", pairs=500, spot_checks=16,
                         mse_samples=500, trials=1)  # fmt: skip
    cells = [CellSpec("honest", 1.0, 0.3), CellSpec("scale", 0.5, 0.3),
             CellSpec("lazy", 0.1, 0.3), CellSpec("replay", 1.0, 0.3)]  # fmt: skip
    first = run_sweep(cells, config, tmp_path, progress=False, max_cells=2, task=TASK)
    assert first.interrupted
    assert first.computed == 2
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 2
    before = (tmp_path / "cells.jsonl").read_text().splitlines()
    second = run_sweep(cells, config, tmp_path, progress=False, task=TASK)
    assert (second.computed, second.reused, second.interrupted) == (2, 2, False)
    after = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert after[:2] == before  # finished cells untouched, not recomputed
    assert [r["adversary"] for r in second.records] == ["honest", "scale", "lazy", "replay"]
    third = run_sweep(cells, config, tmp_path, progress=False, task=TASK)
    assert third.computed == 0
    # A different configuration does not reuse these cells.
    other = run_sweep(cells[:1], SweepConfig(task=TASK_SELECTOR, mode="manual", pairs=500,
                      spot_checks=16, mse_samples=500, trials=2), tmp_path, progress=False,
                      task=TASK)  # fmt: skip
    assert other.computed == 1


def test_quick_json_has_the_fields(tmp_path, capsys) -> None:
    rc = cli.main(["run", "--quick", "--json", "--no-progress", "--out", str(tmp_path),
                   "--mode", "manual", "--adversaries", "honest,scale,lazy", "--trials", "1",
                   "--pairs", "500", "--mse-samples", "500"])  # fmt: skip
    assert rc == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["cells"]
    for cell in payload["cells"]:
        for key in ("adversary", "strength", "epsilon", "delta", "true_err", "trials",
                    "accept_rate", "accept_upper", "naive_accept_rate"):  # fmt: skip
            assert key in cell
    assert (tmp_path / "table.md").exists()
    assert (tmp_path / "acceptance_vs_err.png").exists()
    assert (tmp_path / "acceptance_answer_attacks.png").exists()


def test_practical_mode_sweep_runs(tmp_path, capsys) -> None:
    # The default (practical) rule at ε = 1.0 on the default synthetic task (seconds a trial):
    # a → −0.3·a has err = 1.69·B_1 = 1.35 > ε and must be rejected.
    rc = cli.main(["run", "--json", "--no-progress", "--out", str(tmp_path),
                   "--adversaries", "scale", "--strengths", "-0.3",
                   "--epsilons", "1.0", "--trials", "1"])  # fmt: skip
    assert rc == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert [c["adversary"] for c in cells] == ["scale"]
    assert cells[0]["true_err"] > 1.0
    assert cells[0]["accept_rate"] == 0.0
    # The naive verifier judges on the MSE sample practical mode consumed (never NaN).
    assert cells[0]["naive_accept_rate"] in (0.0, 1.0)


def test_serve_refuses_plain_text_off_loopback(capsys) -> None:
    # Refused before anything is loaded or bound (same policy as `prover serve`).
    rc = cli.main(["serve", "scale", "--strength", "0.5", "--host", "0.0.0.0", "--port", "0"])
    assert rc == 2
    assert "refusing to serve plain-text" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--trials", "--pairs", "--mse-samples"])
def test_run_refuses_an_explicit_zero_instead_of_using_the_default(flag, tmp_path, capsys) -> None:
    # `--trials 0` once fell back to the default (0 is falsy) and ran a full sweep
    rc = cli.main(["run", flag, "0", "--no-progress", "--out", str(tmp_path)])
    assert rc == 2
    assert "must be an integer >= " in capsys.readouterr().err
    assert not (tmp_path / "cells.jsonl").exists()
