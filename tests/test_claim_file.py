"""Bring your own claim: ``prover serve --attribution FILE`` (issue #18 item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.tasks import load_task
from prover.claim_file import Basis, load_attribution_file, save_attribution_file
from prover.cli import main as prover_main
from prover.strategy import Attribution

TASK = "synthetic:n=100,z=2,p=0.5,seed=0"


@pytest.fixture(scope="module")
def task():
    return load_task(TASK)


def _claim(task, scale: float = 1.0) -> Attribution:
    truth = task.truth()
    return Attribution(truth.intercept, scale * truth.coefficients, "exact", 123)


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".csv"])
def test_round_trip(task, tmp_path, suffix: str) -> None:
    att = _claim(task)
    path = save_attribution_file(tmp_path / f"claim{suffix}", att, task)
    back = load_attribution_file(path, task)
    np.testing.assert_array_equal(back.intercepts, att.intercepts)
    np.testing.assert_array_equal(back.coefficients, att.coefficients)
    assert back.num_samples == (123 if suffix == ".npz" else 0)


def test_mask_basis_is_converted_to_pm1(task, tmp_path) -> None:
    rng = np.random.default_rng(0)
    beta, c0 = rng.normal(size=(2, 100)), rng.normal(size=2)
    np.save(tmp_path / "mask.npy", np.hstack([beta, c0[:, None]]))
    att = load_attribution_file(tmp_path / "mask.npy", task, Basis.MASK)
    masks = rng.random((50, 100)) < 0.5
    direct = c0 + masks @ beta.T  # g in the 0/1 basis
    pm1 = att.intercepts + (2.0 * masks - 1.0) @ att.coefficients.T
    np.testing.assert_allclose(pm1, direct, rtol=0, atol=1e-12)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p, t: _write_npz(p / "a.npz", intercepts=np.zeros(2),
                                 coefficients=np.zeros((2, 99))), "needs 2 × 100"),
        (lambda p, t: _write_npz(p / "b.npz", intercepts=np.zeros(2),
                                 coefficients=np.full((2, 100), np.nan)), "NaN or infinity"),
        (lambda p, t: _write_npz(p / "c.npz", intercepts=np.zeros(2), coefficients=np.zeros(
            (2, 100)), task_hash=np.array("0" * 64)), "made for task hash"),
        (lambda p, t: _write_npz(p / "d.npz", coefficients=np.zeros((2, 100))), "lacks intercepts"),
        (lambda p, t: (p / "e.txt").write_text("1,2") and p / "e.txt", "must end in"),
        (lambda p, t: p / "missing.npz", "does not exist"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_with_exit_2(task, tmp_path, capsys, make, needle: str) -> None:
    path = make(tmp_path, task)
    with pytest.raises(ValueError, match=needle):
        load_attribution_file(path, task)
    rc = prover_main(["serve", "--task", TASK, "--attribution", str(path), "--port", "0"])
    assert rc == 2
    assert needle in capsys.readouterr().err
