"""The Python front doors: ``from prover import Prover`` and ``from verifier import verify``.

The README's example block is executed as written (honest prover, ε = 0.5 on the synthetic task
with Var f = 1, B≥2 = 0.2: accepted on its MSE alone); an in-process prover whose claim drops
a (err = B_1 = 0.8 > ε) is rejected through the same call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

TASK = "synthetic:n=500,z=1,p=0.5,seed=0"


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(
        r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S
    )
    assert found, "README.md lost its api-example block"
    return found.group(1)


def test_readme_api_example_runs_and_accepts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(_readme_example(), "README.md:api-example", "exec"), namespace)
    finally:
        os.chdir(here)
    result = namespace["result"]
    assert result.verdict == "accept", result.reason
    assert result.exit_code == 0
    assert result.details["guarantee_met"] is True
    assert result.details["verifier_cpu_s"] > 0
    assert result.details["self_fit_retrainings"] >= 501
    assert capsys.readouterr().out.startswith("accept 0 True")
    assert (tmp_path / "dm.sqlite3").exists()  # the prover's resumable store


def test_prover_stops_and_frees_its_address(tmp_path: Path) -> None:
    from prover import Prover
    from verifier import verify

    prover = Prover(TASK, store=tmp_path / "dm.sqlite3", samples=2_000)
    address = prover.start()
    prover.stop()
    assert prover.address is None
    result = verify(address, TASK, epsilon=0.5, timeout_s=5)
    assert result.verdict == "error"  # nobody listens: an error, never an accept
    assert result.exit_code == 2


def test_in_process_prover_that_drops_a_is_rejected() -> None:
    from protocol.tasks import load_task
    from prover.strategy import Attribution, ChallengeRetrainer, HonestStrategy
    from simulations.inprocess import InProcessTransport
    from verifier import verify

    task = load_task(TASK)
    rng = np.random.default_rng(0)
    masks = rng.random((2_000, task.num_train_points)) < task.p
    f = task.retrain(masks, np.zeros(2_000, dtype=np.uint64)).f
    flat = Attribution(
        intercepts=f.mean(axis=0), coefficients=np.zeros((1, task.num_train_points)), method="flat"
    )
    transport = InProcessTransport(task, HonestStrategy(task, flat, ChallengeRetrainer(task)))
    result = verify(transport, task, epsilon=0.5, delta=0.05)
    assert result.verdict == "reject", result.reason
    assert result.exit_code == 1
    assert result.details["guarantee_met"] is False


def test_bad_arguments_raise_before_any_contact() -> None:
    from verifier import verify

    with pytest.raises(ValueError, match="unknown plan option"):
        verify("127.0.0.1:1", TASK, epsilon=0.5, max_msesamples=10)
    with pytest.raises(ValueError, match="not both"):
        verify("127.0.0.1:1", TASK, epsilon=0.5, epsilon_rel=0.1)
    with pytest.raises(ValueError, match="not a valid"):
        verify("127.0.0.1:1", TASK, epsilon=0.5, mode="nonsense")


def test_plain_text_off_loopback_is_refused() -> None:
    from prover import Prover

    with pytest.raises(ValueError, match="plain-text"):
        Prover(TASK, host="0.0.0.0")
