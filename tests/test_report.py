"""The readable report: files exist, PNGs are real images, report.md carries the run's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.tasks.synthetic import SyntheticTask
from protocol.untrusted import markdown_text
from prover.strategy import Attribution, HonestStrategy
from simulations.inprocess import InProcessTransport
from verifier.driver import run_protocol
from verifier.planning import PlanOptions, make_verifier_plan
from verifier.report import top_bottom, write_report
from verifier.session import VerifierSession

TASK = SyntheticTask(n=50, z=2, p=0.5, seed=3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run():
    # ε = 0.25 against B≥2 = 0.2: the honest claim needs (and passes) the challenge rounds
    plan, checks = make_verifier_plan(PlanOptions(epsilon=0.25), TASK)
    truth = TASK.truth()
    session = VerifierSession(TASK, plan, checks=checks)
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
    assert markdown_text(result.reason) in text  # rendered as plain text (escaped Markdown)
    dec = result.details
    assert dec["tuples"] > 0
    for t in range(TASK.num_targets):
        for key in ("mse_upper", "residual_lower", "err_upper"):
            assert f"{dec[key][t]:.6g}" in text
    assert result.details["transcript_hash"] in text
    assert result.details["claim_digest"] in text
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
