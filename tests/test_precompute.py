"""Precompute: reproducible samples, resumable retraining (real SIGKILL), CLI, progress."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.progress import retraining_progress
from prover.store import ResultStore

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

pytest.importorskip("protocol.prg", reason="protocol.prg not written yet")
pytest.importorskip("prover.datamodel", reason="prover.datamodel not written yet")

from prover.cli import main  # noqa: E402
from prover.precompute import precompute, sample_subsets  # noqa: E402
from tests.fakes import SlowTask  # noqa: E402

SEED = bytes.fromhex("5eed" * 8)

_SCRIPT = """
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from fakes import SlowTask
from prover.precompute import precompute
from prover.store import ResultStore

task = SlowTask({delay!r}, pause_after={pause!r}, pause_file={pause_file!r})
with ResultStore({store!r}) as store:
    report = precompute(task, store, {k}, bytes.fromhex({seed!r}), batch_size={batch},
                        progress=False)
print(report.to_json(), flush=True)
"""


def _script(
    tmp_path: Path,
    store: Path,
    k: int,
    batch: int,
    delay: float = 0.0,
    pause: int | None = None,
    name: str = "run_precompute.py",
) -> Path:
    """Write a script that runs ``precompute`` on :class:`SlowTask` in its own process."""
    path = tmp_path / name
    pause_file = str(tmp_path / "paused") if pause is not None else None
    path.write_text(
        textwrap.dedent(
            _SCRIPT.format(
                repo=str(REPO), tests=str(TESTS), store=str(store), delay=delay, k=k,
                seed=SEED.hex(), batch=batch, pause=pause, pause_file=pause_file,
            )
        )
    )  # fmt: skip
    return path


def _run_to_end(script: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start(script: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_kill_mid_batch_loses_only_that_batch(tmp_path: Path) -> None:
    k, batch, pause = 480, 16, 100  # hangs in batch 7 after 6 committed batches (96 rows)
    store_path = tmp_path / "store.sqlite3"
    task = SlowTask()
    th = task.identity().task_hash
    with ResultStore(store_path) as store:
        proc = _start(_script(tmp_path, store_path, k, batch, pause=pause))
        try:
            deadline = time.monotonic() + 30
            while not (tmp_path / "paused").exists():
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, "precompute never reached the pause point"
                time.sleep(0.01)
            assert store.count(th) == 96  # some but not all rows
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        stored_before = store.count(th)
    assert stored_before == 96  # the 4 models trained in the killed batch are lost, no more

    script = _script(tmp_path, store_path, k, batch, name="resume.py")
    report = _run_to_end(script)
    assert report["retrained"] == k - stored_before  # (1) nothing redone
    assert report["reused"] == stored_before

    with ResultStore(store_path) as store:
        assert store.count(th) == k  # (2) every sample stored
        masks, seeds = sample_subsets(task, SEED, 0, k)
        found, f, digests, _ = store.get_many(th, masks, seeds)
        assert found.all()
        fresh = task.retrain(masks, seeds)
        np.testing.assert_array_equal(f, fresh.f)  # (3) stored values equal fresh retrainings
        assert digests == fresh.weights_digests
        assert store.integrity_check()  # (4)
        first = store.load_datamodel(th, "default")
    assert first.num_samples == k
    assert first.sample_seed == SEED

    again = _run_to_end(script)  # a finished precompute: nothing retrained, same datamodel
    assert again["retrained"] == 0
    assert again["reused"] == k
    with ResultStore(store_path) as store:
        second = store.load_datamodel(th, "default")
    np.testing.assert_array_equal(second.intercepts, first.intercepts)
    np.testing.assert_array_equal(second.coefficients, first.coefficients)
    assert second.method == first.method


def test_kills_at_random_moments_never_lose_committed_batches(tmp_path: Path) -> None:
    # Kills land anywhere, including inside a commit. A run that finishes before its kill is fine.
    k, batch = 480, 8
    store_path = tmp_path / "store.sqlite3"
    task = SlowTask()
    th = task.identity().task_hash
    script = _script(tmp_path, store_path, k, batch, delay=0.004)  # ~2 s of sleeping in all
    rng = np.random.default_rng(7)
    previous = 0
    with ResultStore(store_path) as store:
        for _ in range(3):
            proc = _start(script)
            time.sleep(float(rng.uniform(0.35, 0.7)))
            proc.kill()
            proc.wait(timeout=30)
            now = store.count(th)
            assert now >= previous  # committed rows never disappear
            assert now % batch == 0  # batches are all-or-nothing
            assert store.integrity_check()
            previous = now
    report = _run_to_end(script)
    assert report["retrained"] == k - previous
    with ResultStore(store_path) as store:
        masks, seeds = sample_subsets(task, SEED, 0, k)
        found, f, _, _ = store.get_many(th, masks, seeds)
        assert found.all()
        np.testing.assert_array_equal(f, task.retrain(masks, seeds).f)


def test_samples_are_reproducible_and_sliceable() -> None:
    task = SlowTask()
    m_all, s_all = sample_subsets(task, SEED, 0, 40)
    m_a, s_a = sample_subsets(task, SEED, 0, 15)
    m_b, s_b = sample_subsets(task, SEED, 15, 40)
    np.testing.assert_array_equal(m_all, np.concatenate([m_a, m_b]))
    np.testing.assert_array_equal(s_all, np.concatenate([s_a, s_b]))
    assert m_all.shape == (40, 24)
    assert m_all.dtype == np.bool_
    assert s_all.dtype == np.uint64
    m_other, s_other = sample_subsets(task, b"\x01" + SEED[1:], 0, 40)
    assert not np.array_equal(m_all, m_other)
    assert not np.array_equal(s_all, s_other)
    assert len(set(s_all.tolist())) == 40


def test_precompute_in_process(tmp_path: Path) -> None:
    task = SlowTask()
    with ResultStore(tmp_path / "s.sqlite3") as store:
        r1 = precompute(task, store, 100, SEED, batch_size=32, progress=False, method="ols")
        assert (r1.retrained, r1.reused, task.trained) == (100, 0, 100)
        assert r1.method == "ols"
        assert r1.models_per_s > 0
        assert "train_mse" in r1.diagnostics
        # Growing the sample: only the new samples are trained.
        r2 = precompute(task, store, 150, SEED, batch_size=32, progress=False, method="ols")
        assert (r2.retrained, r2.reused, task.trained) == (50, 100, 150)
        dm = store.load_datamodel(task.identity().task_hash)
        assert dm.num_samples == 150
        assert dm.sample_seed == SEED
        assert dm.coefficients.shape == (2, 24)
        json.loads(r2.to_json())
        with pytest.raises(ValueError, match="num_samples"):
            precompute(task, store, 0, SEED)


def test_cli_on_synthetic_task(tmp_path: Path) -> None:
    pytest.importorskip("protocol.tasks.synthetic")
    store = tmp_path / "cli.sqlite3"
    cmd = [sys.executable, "-m", "prover.cli", "precompute", "--task", "synthetic:n=20",
           "--store", str(store), "--samples", "100", "--batch-size", "32", "--json",
           "--no-progress"]  # fmt: skip
    runs = []
    for _ in range(2):
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert (runs[0]["retrained"], runs[0]["reused"]) == (100, 0)
    assert (runs[1]["retrained"], runs[1]["reused"]) == (0, 100)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "e.sqlite3")
    base = ["precompute", "--task", "synthetic:n=20", "--store", store]
    assert main([*base, "--samples", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main([*base, "--samples", "10", "--sample-seed", "xyz"]) == 2
    assert "hex" in capsys.readouterr().err
    assert main([*base, "--samples", "10", "--batch-size", "-1"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main([*base, "--samples", "10", "--no-such-flag"]) == 2
    assert "--no-such-flag" in capsys.readouterr().err
    assert main(["precompute", "--task", "no-such-task", "--store", store, "--samples", "5"]) == 2
    assert "unknown task" in capsys.readouterr().err
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_text("hello")
    assert main(["precompute", "--task", "synthetic:n=20", "--store", str(garbage),
                 "--samples", "5"]) == 2  # fmt: skip
    assert "not a result store" in capsys.readouterr().err


def test_progress_degrades_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with retraining_progress(10, "off", enabled=False) as advance:
        advance(5)
    caplog.set_level(logging.INFO, logger="progress")
    # Under pytest stderr is not a TTY: plain log lines, rate-limited, plus one at the end.
    with retraining_progress(1000, "plain", log_interval_s=3600) as advance:
        for _ in range(1000):
            advance(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert lines == [lines[-1]]
    assert "1000/1000" in lines[-1]
