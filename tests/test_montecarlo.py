"""The Monte-Carlo engine of the validity grid: exact draws, exact f, the rule's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.residual import residual_samples
from protocol.tasks import load_task
from simulations.cli import main as sim_main
from simulations.montecarlo import (
    SupportEvaluator,
    TrialDraws,
    best_lies,
    exploit_claim,
    make_claim,
    require_exact_synthetic,
    scale_for_err,
)
from simulations.validity import (
    PROVERS,
    QUICK_CELL,
    GridCell,
    load_trials,
    merge_trials,
    run_cells,
    run_trial,
    summarise,
    validity_cells,
)

TASK = load_task("synthetic:n=40,z=2,seed=3")


@pytest.mark.parametrize("selector", ["synthetic:n=40,z=2,seed=3", "synthetic:n=30,z=1,p=0.3"])
def test_support_evaluator_matches_the_task(selector: str) -> None:
    task = load_task(selector)
    masks = np.random.default_rng(0).random((3000, task.num_train_points)) < task.p
    full = task.retrain(masks, np.zeros(3000, dtype=np.uint64)).f
    got = SupportEvaluator(task)(masks[:, task.support_columns])
    np.testing.assert_allclose(got, full, rtol=1e-12, atol=1e-12)


def test_engine_refuses_tasks_where_the_shortcut_is_not_exact() -> None:
    with pytest.raises(ValueError, match="exact synthetic"):
        require_exact_synthetic(load_task("digits-logreg:z=1"))
    with pytest.raises(ValueError, match="noise-free"):
        require_exact_synthetic(load_task("synthetic:n=20,noise=0.1"))


@pytest.mark.parametrize("rho", [0.2, 0.137])  # coin exact in thousandths, and a float coin
def test_challenge_tuples_have_the_protocols_law(rho: float) -> None:
    """E f(x)f(y_ℓ) = Σ_k ℓ^k B_k at ℓ = 0, ρ, 2ρ, within 5 standard errors."""
    draws = TrialDraws(TASK, ("law", rho), "0" * 64)
    f, _ = draws.tuples(rho, 0, 60_000)
    fx = f[0::4]
    truth = TASK.truth()
    for role, level in ((1, 0.0), (2, rho), (3, 2 * rho)):
        prod = fx * f[role::4]
        se = prod.std(axis=0, ddof=1) / np.sqrt(len(prod))
        assert np.all(np.abs(prod.mean(axis=0) - truth.noise_stability(level)) <= 5 * se)
    r = residual_samples(f, rho)
    b = truth.level_weights
    expect = b[:, 2:].sum(axis=1) + b[:, 3] * rho**2 * 2
    assert np.all(np.abs(r.mean(axis=0) - expect) <= 5 * r.std(axis=0) / np.sqrt(len(r)))


def test_rounds_continue_one_stream() -> None:
    a = TrialDraws(TASK, ("stream",), "0" * 64)
    whole, _ = a.tuples(0.3, 0, 5000)
    b = TrialDraws(TASK, ("stream",), "0" * 64)
    first, _ = b.tuples(0.3, 0, 1234)
    rest, _ = b.tuples(0.3, 1234, 5000 - 1234)
    np.testing.assert_array_equal(np.vstack([first, rest]), whole)


def test_claims_are_restricted_to_the_support() -> None:
    t = TASK.truth()
    claim = make_claim(TASK, "honest", t.intercept, t.coefficients)
    assert np.all(claim.err == 0)
    a = t.coefficients.copy()
    outside = np.setdiff1d(np.arange(TASK.num_train_points), TASK.support_columns)[0]
    a[0, outside] = 0.1
    with pytest.raises(ValueError, match="outside"):
        make_claim(TASK, "bad", t.intercept, a)


def test_scale_and_exploit_claims_have_err_exactly_eps() -> None:
    t = TASK.truth()
    s = scale_for_err(TASK, 0.2)
    assert float(np.max(TASK.truth().err(t.intercept, s * t.coefficients))) == pytest.approx(0.2)
    claim = exploit_claim(TASK, 0.2, 0)
    assert float(np.max(claim.err)) == pytest.approx(0.2)
    assert claim.label.startswith("exploit(")


def test_best_lies_raise_the_residual_and_respect_the_budget() -> None:
    draws = TrialDraws(TASK, ("lies",), "0" * 64)
    f, _ = draws.tuples(0.25, 0, 2000)
    b = TASK.output_bound
    lied, used = best_lies(f, f, 0.25, b, 17)
    assert used == 17
    changed = np.any(lied != f, axis=1)
    assert changed.sum() == 17
    assert np.all(np.abs(lied) <= b)
    before = residual_samples(f, 0.25).sum()
    after = residual_samples(lied, 0.25).sum()
    assert after > before
    # one lie per tuple at most
    assert np.all(np.bincount(np.flatnonzero(changed) // 4) <= 1)


def test_trials_are_reproducible_and_judge_every_prover() -> None:
    one = run_trial(QUICK_CELL, 3)
    two = run_trial(QUICK_CELL, 3)
    strip = [{k: v for k, v in o.items() if k != "seconds"} for o in one]
    assert strip == [{k: v for k, v in o.items() if k != "seconds"} for o in two]
    labels = [o["prover"] for o in one]
    assert labels[:4] == list(PROVERS[:4])
    assert labels[4].startswith("exploit(")
    verdicts = {o["prover"]: o["verdict"] for o in one}
    assert verdicts["honest"] == "accept"
    assert verdicts["scale-2eps"] == "reject"
    assert all(v != "accept" for k, v in verdicts.items() if k != "honest")


def test_grid_resumes_without_redoing_trials(tmp_path: Path) -> None:
    path = run_cells([QUICK_CELL], 2, tmp_path)
    before = path.read_text()
    run_cells([QUICK_CELL], 2, tmp_path)
    assert path.read_text() == before  # nothing recomputed
    run_cells([QUICK_CELL], 3, tmp_path, first=2)
    assert sorted(load_trials(path)[QUICK_CELL.key()]) == [0, 1, 2]
    rows = summarise([QUICK_CELL], path)
    honest = next(r for r in rows if r["prover"] == "honest")
    assert honest["trials"] == 3
    assert honest["accepts"] == 3


def test_merge_trials_appends_only_what_is_missing(tmp_path: Path) -> None:
    a = run_cells([QUICK_CELL], 2, tmp_path / "a")
    b = run_cells([QUICK_CELL], 3, tmp_path / "b", first=1)
    counts = merge_trials([b], a)
    assert counts == {"added": 1, "already": 1}
    assert sorted(load_trials(a)[QUICK_CELL.key()]) == [0, 1, 2]
    (tmp_path / "bad.jsonl").write_text('{"not": "a trial"}\n')
    with pytest.raises(ValueError, match="not a trials file"):
        merge_trials([tmp_path / "bad.jsonl"], a)


def test_grid_definitions_cover_the_issue() -> None:
    cells = validity_cells()
    assert {(c.epsilon, c.n, c.z) for c in cells} == {
        (e, n, z) for e in (0.2, 0.1) for n in (100, 10_000) for z in (1, 10)
    }
    assert len({c.key() for c in cells}) == 8
    assert GridCell(0.2, 100, 1).key() != GridCell(0.2, 100, 1, mse_cap=10).key()
    # one-shot iterables (the CLI once passed generators, and got only the first N's cells)
    once = validity_cells(iter((0.2, 0.1)), (n for n in (100, 10_000)), (z for z in (1, 10)))
    assert [(c.epsilon, c.n, c.z) for c in once] == [(c.epsilon, c.n, c.z) for c in cells]


def test_validity_cli_quick(tmp_path: Path, capsys) -> None:
    rc = sim_main(["validity", "--quick", "--trials", "2", "--json", "--no-progress",
                   "--out", str(tmp_path), "--report", str(tmp_path / "report")])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["prover"]: r for r in out["cells"]}
    assert rows["honest"]["accepts"] == 2
    assert rows["scale-2eps"]["accepts"] == 0
    assert (tmp_path / "report" / "validity.png").stat().st_size > 0
    assert "| against the guarantee |" in (tmp_path / "report" / "table.md").read_text()


def test_validity_cli_refuses_bad_input(tmp_path: Path, capsys) -> None:
    assert sim_main(["validity", "--trials", "0", "--out", str(tmp_path)]) == 2
    assert sim_main(["validity", "--trials", "5", "--first", "9", "--out", str(tmp_path)]) == 2
    assert sim_main(["validity", "--no-run", "--out", str(tmp_path / "none")]) == 2
    assert "error" in capsys.readouterr().err
