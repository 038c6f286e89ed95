"""The readable report: files exist, PNGs are real images, report.md carries the run's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.accounting import plan_manual
from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.report import top_bottom, write_report
from verifier.session import VerifierSession

TASK = SyntheticTask(n=50, z=2, p=0.5, seed=3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run():
    plan = plan_manual(
        epsilon=0.3,
        delta=0.05,
        output_bound=TASK.output_bound,
        tolerance=TASK.tolerance,
        num_targets=TASK.num_targets,
        pairs_per_level=4000,
        spot_checks=32,
        mse_samples=2000,
        rho=0.25,
    )
    truth = TASK.truth()
    session = VerifierSession(TASK, plan)
    strategy = HonestStrategy(TASK, Attribution(truth.intercept, truth.coefficients, "exact", 0))
    result = run_protocol(session, InProcessTransport(TASK, strategy))
    assert result.verdict == "accept", result.reason
    return session, result


def test_report_files_and_numbers(run, tmp_path) -> None:
    session, result = run
    path = write_report(
        tmp_path / "rep", result.to_dict(), session.intercepts, session.coefficients,
        task={"selector": session.selector}, certificate_path="cert.json",
    )  # fmt: skip
    assert path.name == "report.md"
    for png in ("noise_stability.png", "mse.png", "spot_checks.png", "attributions.png"):
        data = (path.parent / png).read_bytes()
        assert data.startswith(PNG_MAGIC), png
        assert len(data) > 5_000, png
        assert f"({png})" in path.read_text()
    text = path.read_text()
    assert "# Verification report: ACCEPT" in text
    assert result.reason in text
    dec = result.details["decision"]
    for t in range(TASK.num_targets):
        for key in ("mse_hat", "residual_hat", "threshold"):
            assert f"{dec[key][t]:.6g}" in text
    assert result.details["transcript_hash"] in text
    assert result.details["merkle_root"] in text
    assert f"{result.details['spot_check']['max_abs_diff']:.6g}" in text
    top, bottom = top_bottom(session.coefficients)[0]
    assert top[0] == int(np.argmax(session.coefficients[0]))
    assert bottom[0] == int(np.argmin(session.coefficients[0]))
    assert f"{top[0]} ({session.coefficients[0, top[0]]:.4g})" in text


def test_report_for_rejection_without_decision(tmp_path) -> None:
    result = {
        "verdict": "reject",
        "reason": "open: spot check failed on challenge 3",
        "transcript_hash": "ab" * 32,
    }
    path = write_report(tmp_path, result, np.full(2, np.nan), np.full((2, 5), np.nan))
    text = path.read_text()
    assert "REJECT" in text
    assert "spot check failed on challenge 3" in text
    assert not (tmp_path / "mse.png").exists()


def test_top_bottom_small_n() -> None:
    a = np.array([[3.0, -1.0, 2.0]])
    assert top_bottom(a) == [([0, 2, 1], [1, 2, 0])]
