"""The prover's Ray scale-out on a local cluster (issue #17 item 4).

A worker killed in the middle of a chunk loses no finished chunk: Ray re-runs the lost one and
the store ends bit-for-bit equal to a run without Ray (on the synthetic task, whose retraining
is bitwise deterministic); a restarted run resumes; challenge rounds and supplied models come back
from the cluster equal to in-process retraining: bit for bit where the task is bitwise
deterministic, and within the certified bound for logistic regression, whose BLAS reductions
depend on the thread count (Ray workers run single-threaded).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.challenges import ChallengeRound, ChallengeSpec
from protocol.tasks import load_task
from prover.precompute import DEFAULT_SAMPLE_SEED, precompute, sample_subsets
from prover.store import ResultStore
from prover.strategy import ChallengeRetrainer
from tests.conftest import REPO

ray = pytest.importorskip("ray")

TASK = "synthetic:n=200,z=2"


def _rows(store_path: Path, count: int) -> tuple[np.ndarray, list[bytes]]:
    task = load_task(TASK)
    masks, seeds = sample_subsets(task, DEFAULT_SAMPLE_SEED, 0, count)
    with ResultStore(store_path) as store:
        found, f, digests, _ = store.get_many(task.identity().task_hash, masks, seeds)
    assert found.all()
    return f, list(digests)


def _precompute_cli(store: Path, samples: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "prover.cli", "precompute", "--task", TASK, "--store", str(store),
        "--samples", str(samples), "--no-progress", "--ray",
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_ray_precompute_survives_a_killed_worker_bit_for_bit_and_resumes(tmp_path) -> None:
    task = load_task(TASK)
    with ResultStore(tmp_path / "plain.sqlite3") as store:
        precompute(task, store, 3072, DEFAULT_SAMPLE_SEED, progress=False)
        plain_dm = store.load_datamodel(task.identity().task_hash)
    flag = tmp_path / "killed-once"
    env = {**os.environ, "ATTRIBUTION_RAY_KILL_ONCE": str(flag)}
    out = _precompute_cli(tmp_path / "ray.sqlite3", 2048, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert flag.exists()  # a worker did die in the middle of a chunk
    f_ray, d_ray = _rows(tmp_path / "ray.sqlite3", 2048)
    f_plain, d_plain = _rows(tmp_path / "plain.sqlite3", 2048)
    np.testing.assert_array_equal(f_ray, f_plain)
    assert d_ray == d_plain
    # a restarted, larger run retrains only what the store lacks, on the cluster again
    out = _precompute_cli(tmp_path / "ray.sqlite3", 3072, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1024 retrained now, 2048 reused" in out.stderr
    with ResultStore(tmp_path / "ray.sqlite3") as store:
        ray_dm = store.load_datamodel(task.identity().task_hash)
    np.testing.assert_array_equal(ray_dm.coefficients, plain_dm.coefficients)
    np.testing.assert_array_equal(ray_dm.intercepts, plain_dm.intercepts)


@pytest.fixture(scope="module")
def pool():
    from prover.ray_pool import RayPool

    p = RayPool(num_cpus=2, chunk=128)
    yield p
    p.shutdown()


@pytest.mark.parametrize("selector", ["digits-logreg:z=1", "synthetic:n=60,z=2"])
def test_challenge_rounds_on_the_pool_equal_in_process(pool, selector: str) -> None:
    task = load_task(selector)
    spec = ChallengeSpec(bytes(range(32)), 300, 0.25, task.num_train_points, task.p)
    rnd = ChallengeRound(spec, 100)
    local, seeds_l, _ = ChallengeRetrainer(task, batch_size=128).retrain(rnd)
    remote, seeds_r, _ = ChallengeRetrainer(task, batch_size=128, pool=pool).retrain(rnd)
    np.testing.assert_array_equal(seeds_r, seeds_l)
    if task.bitwise_deterministic:
        np.testing.assert_array_equal(remote.f, local.f)
        assert list(remote.weights_digests) == list(local.weights_digests)
    else:  # both reach ‖∇L_S‖ ≤ tol: f within the certified disagreement
        assert np.max(np.abs(remote.f - local.f)) <= task.certified_disagreement
        assert remote.weights is not None
        assert np.asarray(remote.weights).shape == np.asarray(local.weights).shape


def test_supplied_models_on_the_pool_equal_in_process(pool) -> None:
    from prover.strategy import Attribution, HonestStrategy

    task = load_task("digits-logreg:z=1")
    att = Attribution(np.zeros(1), np.zeros((1, task.num_train_points)), "x", 0)
    masks = np.random.default_rng(0).random((300, task.num_train_points)) < task.p
    local = HonestStrategy(task, att).supply_models(masks)
    remote = HonestStrategy(task, att, ChallengeRetrainer(task, pool=pool)).supply_models(masks)
    assert remote.shape == local.shape
    # weights of one strongly convex optimum: ‖w − w*‖ ≤ tol/λ for each, so within 2·tol/λ
    assert np.max(np.linalg.norm(remote - local, axis=1)) <= 2 * task.tol / task.l2
