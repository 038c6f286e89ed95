"""The streamed Monte-Carlo engine gives the in-memory engine's trials: same draws, same moments,
same lies, same verdicts (and it reproduces a committed trial of docs/validity)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from protocol.practical import residual_interval, residual_interval_from_moments, residual_samples
from protocol.tasks import load_task
from simulations.montecarlo import (
    ProverModel,
    cell_plan,
    derive_rng,
    lie_gains,
    require_exact_synthetic,
    resolve_engine,
    run_trial,
    sample_tuples,
    scale_for_err,
)
from simulations.streamed import run_trial_streamed, stream_tuples, streamable
from simulations.sweep import honest_attribution
from simulations.validity import plan_for, validity_cells

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    return require_exact_synthetic(load_task("synthetic:n=40,z=2,p=0.5,seed=3"))


def test_interval_from_moments_is_the_interval() -> None:
    rng = np.random.default_rng(1)
    f = rng.uniform(-2.0, 2.0, size=(4 * 500, 3))
    r = residual_samples(f, 0.2)
    a = residual_interval(f, 0.2, 2.0, 0.01, 7, 1e-9).to_dict()
    b = residual_interval_from_moments(
        500, r.mean(axis=0), r.std(axis=0, ddof=1), 0.2, 2.0, 0.01, 7, 1e-9
    ).to_dict()
    assert a == b
    with pytest.raises(ValueError, match="at least 2"):
        residual_interval_from_moments(1, [0.0], [0.0], 0.2, 2.0, 0.01)
    with pytest.raises(ValueError, match="finite"):
        residual_interval_from_moments(10, [np.nan], [0.0], 0.2, 2.0, 0.01)


@pytest.mark.parametrize(
    ("selector", "rho", "draws"),
    [
        ("synthetic:n=40,z=2,p=0.5,seed=3", 0.2, 1),
        ("synthetic:n=30,z=3,p=0.3,seed=1", 0.1234, 1),
        ("synthetic:n=40,z=2,p=0.5,seed=3", 0.2, 2),
        ("synthetic:n=30,z=3,p=0.3,seed=1", 0.1234, 2),
    ],
)
def test_stream_keeps_the_moments_and_the_top_gains_of_the_same_draws(
    selector: str, rho: float, draws: int
) -> None:
    t = require_exact_synthetic(load_task(selector))
    h = honest_attribution(t)
    n = 600_000  # more than two chunks, so the moments are merged across chunks
    mem = sample_tuples(t, n, rho, derive_rng("same"), h, draws)
    st = stream_tuples(t, n, rho, derive_rng("same"), h, keep_top=40, draws=draws)
    r = residual_samples(mem.f, rho)
    assert st.num_tuples == n
    assert np.allclose(st.mean, r.mean(axis=0), rtol=1e-12, atol=1e-14)
    assert np.allclose(st.sample_sd, r.std(axis=0, ddof=1), rtol=1e-12)
    gains, _ = lie_gains(mem.f, rho, t.output_bound)
    order = np.lexsort((np.arange(len(gains)), -gains))[:40]
    assert np.array_equal(st.top_members, order)
    assert np.allclose(st.top_gains, gains[order], rtol=1e-12)
    rows = mem.f.reshape(n, 4, -1)[order // 4]
    assert np.allclose(st.top_tuples, rows, rtol=0, atol=1e-13)


@pytest.mark.parametrize("draws", [1, 2])
def test_stream_f_values_are_the_in_memory_ones_on_ragged_sizes(draws: int) -> None:
    """A block that is not a multiple of 8 (or 64) tuples and a last byte of fewer than 8 support
    columns (the bit-transpose's and the word spread's edges) still give the in-memory f-values
    of every member (to summation order: one wrong member bit would move f by a term's weight,
    ≫ 1e-13)."""
    t = require_exact_synthetic(load_task("synthetic:n=30,z=3,p=0.3,seed=1"))
    assert len(t.support_columns) % 8 != 0
    h = honest_attribution(t)
    n = 1_003  # 15 full blocks of 64, then 43 tuples (and 125 bytes of 8, then 3)
    mem = sample_tuples(t, n, 0.15, derive_rng("ragged"), h, draws)
    st = stream_tuples(t, n, 0.15, derive_rng("ragged"), h, keep_top=4 * n, draws=draws)
    rows = mem.f.reshape(n, 4, -1)[st.top_members // 4]
    assert np.allclose(st.top_tuples, rows, rtol=0, atol=1e-13)
    assert sorted(st.top_members.tolist()) == list(range(4 * n))


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        dx, dy = asdict(x), asdict(y)
        for key in ("prover", "verdict", "kind", "naive_accept", "mse_samples", "lies", "extra"):
            assert dx[key] == dy[key], (key, dx, dy)
        for key in ("err_upper", "residual_lower"):
            assert (dx[key] is None) == (dy[key] is None)
            if dx[key] is not None:
                assert abs(dx[key] - dy[key]) <= 1e-12


@pytest.mark.parametrize("draws", [1, 2])
def test_streamed_trials_are_the_in_memory_trials(task, draws: int) -> None:
    h = honest_attribution(task)
    plan = cell_plan(task, 1.0, 0.05, "streamed-test", 20_000)
    s1 = scale_for_err(task, 1.0)
    provers = [
        ProverModel("honest"),
        ProverModel("scale", s1),
        ProverModel("targeted", s1),
        ProverModel("boost", 0.3),
    ]
    lies = []
    for i in range(3):
        mem = run_trial(task, plan, provers, h, ("streamed", i), engine="memory", draws=draws)
        st = run_trial(task, plan, provers, h, ("streamed", i), engine="streamed", draws=draws)
        _same(mem, st)
        lies.append(st[2].lies)
        assert st[0].verdict == "accept"
    assert all(0 < k <= plan.lie_allowance for k in lies)  # the lied-moment path is exercised


def test_auto_streams_only_without_answer_attacks(task) -> None:
    assert streamable([ProverModel("honest"), ProverModel("targeted", 0.5)])
    assert not streamable([ProverModel("honest"), ProverModel("lazy", 0.001)])
    assert resolve_engine([ProverModel("honest"), ProverModel("targeted", 0.5)]) == "streamed"
    assert resolve_engine([ProverModel("honest"), ProverModel("lazy", 0.001)]) == "memory"
    assert resolve_engine([ProverModel("honest")], "memory") == "memory"
    h = honest_attribution(task)
    plan = cell_plan(task, 1.0, 0.05, "streamed-test", 20_000)
    with pytest.raises(ValueError, match="answer attacks"):
        run_trial_streamed(task, plan, [ProverModel("lazy", 0.001)], h, 0)
    with pytest.raises(ValueError, match="engine"):
        run_trial(task, plan, [ProverModel("honest")], h, 0, engine="gpu")


def test_streamed_engine_reproduces_a_committed_validity_trial() -> None:
    cell = validity_cells([0.2], [100], [1])[0]
    path = ROOT / "docs" / "validity" / "trials.jsonl"
    committed = None
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["cell"] == cell.key() and rec["trial"] == 0:
            committed = rec["outcomes"]
    assert committed is not None, "docs/validity/trials.jsonl lost trial 0 of ε=0.2 N=100 Z=1"
    task = require_exact_synthetic(load_task(cell.task))
    out = run_trial(task, plan_for(cell), list(cell.provers), honest_attribution(task),
                    (0, cell.key(), 0), engine="streamed")  # fmt: skip
    for o, ref in zip(out, committed, strict=True):
        d = asdict(o)
        for key in ("prover", "verdict", "kind", "mse_samples", "lies", "extra"):
            assert d[key] == ref[key], (key, d, ref)
        if ref["err_upper"] is not None:
            assert abs(d["err_upper"] - ref["err_upper"]) <= 1e-12


def test_a_cell_split_over_processes_gives_the_same_trials(tmp_path: Path) -> None:
    from simulations.validity import GridCell, load_trials, run_cells

    cell = GridCell(
        "synthetic:n=20,z=1,p=0.5,seed=0", 1.0, 0.05,
        (ProverModel("honest"), ProverModel("targeted", 0.3)), "split",
    )  # fmt: skip
    whole = load_trials(run_cells([cell], 3, tmp_path / "whole"))[cell.key()]
    late = load_trials(run_cells([cell], 3, tmp_path / "split", first=2))[cell.key()]
    assert sorted(late) == [2]
    early = load_trials(run_cells([cell], 2, tmp_path / "split"))[cell.key()]
    assert sorted(early) == [0, 1, 2]
    for i in range(3):
        assert early[i] == whole[i]


def test_merge_trials_adds_what_is_missing_and_refuses_a_different_trial(
    tmp_path: Path, capsys
) -> None:
    """Trials split over processes fold into one file: only missing (cell, trial) pairs are
    appended, the kept lines are untouched, and a trial that differs is refused before any
    write."""
    from simulations.cli import main as simulations_main
    from simulations.validity import GridCell, load_trials, run_cells

    cell = GridCell(
        "synthetic:n=20,z=1,p=0.5,seed=0", 1.0, 0.05, (ProverModel("honest"),), "merge", draws=2
    )
    a = run_cells([cell], 2, tmp_path / "a")
    b = run_cells([cell], 4, tmp_path / "b", first=1)
    kept = a.read_text(encoding="utf-8")
    assert simulations_main(["merge-trials", str(b), "--into", str(a)]) == 0
    assert "2 trials added, 1 already there" in capsys.readouterr().out
    assert a.read_text(encoding="utf-8").startswith(kept)
    assert sorted(load_trials(a)[cell.key()]) == [0, 1, 2, 3]
    assert simulations_main(["merge-trials", str(b), "--into", str(a)]) == 0
    assert "0 trials added, 3 already there" in capsys.readouterr().out
    lines = b.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[0])
    bad["outcomes"][0]["verdict"] = "reject"
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps(bad) + "\n", encoding="utf-8")
    before = a.read_text(encoding="utf-8")
    assert simulations_main(["merge-trials", str(forged), "--into", str(a)]) == 2
    assert "differs from the kept one" in capsys.readouterr().err
    assert a.read_text(encoding="utf-8") == before
    assert simulations_main(["merge-trials", str(tmp_path / "none"), "--into", str(a)]) == 2
    assert "no trials file" in capsys.readouterr().err
    forged.write_text('{"verdict": "accept"}\n', encoding="utf-8")
    assert simulations_main(["merge-trials", str(forged), "--into", str(a)]) == 2
    assert "not a trials file" in capsys.readouterr().err
    assert a.read_text(encoding="utf-8") == before
