"""End to end: real prover and verifier processes talking gRPC on 127.0.0.1.

The default (practical) rule at ε = 0.5 on the synthetic task (Var f = 1, B_1 = 0.8, B≥2 = 0.2):
the honest claim (err ≈ 0.01) is accepted on its MSE alone, the a → 0 claim (err = 0.8) is
rejected after a few challenge rounds. The paper's rule at manual sizes (50,000 tuples, 64 spot
checks, 4,000 MSE samples, ε = 0.2) decides too, but its sizes certify a far looser ε, so an
honest run ends inconclusive (exit 3).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from protocol.economics import self_fit_retrainings
from tests.conftest import REPO, run_verifier

TASK = "synthetic:n=500,z=1,p=0.5,seed=0"
PRACTICAL = ["--epsilon", "0.5", "--delta", "0.05"]
SIZES = ["--mode", "manual", "--pairs", "50000", "--spot-checks", "64", "--mse-samples", "4000",
         "--rho", "0.25", "--epsilon", "0.2", "--delta", "0.05"]  # fmt: skip


def test_honest_prover_is_accepted_with_its_guarantee(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    rc, out = run_verifier(prover.address, "--task", TASK, *PRACTICAL)
    assert out["verdict"] == "accept", out["reason"]
    assert rc == 0
    for key in ("epsilon", "delta", "mse_hat", "verifier_retrainings", "prover_retrainings",
                "num_train_points", "reason", "guarantee_met", "certified_epsilon",
                "verifier_cpu_s", "self_fit_retrainings"):  # fmt: skip
        assert key in out
    assert out["guarantee_met"] is True
    assert out["certified_epsilon"][0] <= out["epsilon"]
    assert out["num_train_points"] == 500
    assert out["verifier_cpu_s"] > 0
    # the OLS estimate at the run's point estimates, never below the N + 1 any fit needs
    assert out["self_fit_floor"] == 501
    assert out["self_fit_retrainings"] == self_fit_retrainings(500, out["mse_estimate"], [0.5])
    assert out["self_fit_retrainings"] > out["self_fit_floor"]
    assert out["prover_transcript_agrees"] is True
    # its datamodel's samples (reported) are part of the prover's total, the verified part not
    assert out["prover_retrainings"] >= out["datamodel_samples"] > 0
    assert out["prover_retrainings_verified"] < out["prover_retrainings"]
    prover.wait_for_log("finished, verifier says accept")


def test_scaled_prover_is_rejected(prover_factory) -> None:
    prover = prover_factory("--task", TASK, cheat="scale:0.0")
    assert "ADVERSARIAL" in prover.log()
    rc, out = run_verifier(prover.address, "--task", TASK, *PRACTICAL)
    assert out["verdict"] == "reject", out
    assert rc == 1
    assert out["guarantee_met"] is False
    # The scaled prover answers every challenge honestly: err_lower = mse_lower − B≥2_upper > ε.
    assert out["tuples"] > 0
    assert out["err_lower"][0] > out["epsilon_reject"][0]


def test_papers_rule_at_manual_sizes_is_inconclusive_not_accept(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES)
    assert (rc, out["verdict"]) == (3, "inconclusive"), out["reason"]
    assert out["guarantee_met"] is False
    assert out["certified_epsilon"][0] > 0.2
    assert "guarantee NOT met" in out["reason"]
    assert out["verifier_retrainings"] == 64 + 4000


def test_fabricating_prover_is_rejected(prover_factory) -> None:
    prover = prover_factory("--task", TASK, cheat="fabricate:0.3")
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES)
    assert out["verdict"] == "reject", out
    assert rc == 1
    assert "spot check failed" in out["reason"]


def test_task_hash_mismatch_is_an_error(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    rc, out = run_verifier(prover.address, "--task", "synthetic:n=500,z=1,p=0.5,seed=1", *SIZES)
    assert rc == 2
    assert out["verdict"] == "error"
    assert "task hash mismatch" in out["reason"]
    assert "spec differs" in out["reason"]


def test_prover_killed_mid_protocol_is_a_reject_never_accept(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--stall-before-commit", "30")
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", prover.address,
           "--json", "--task", TASK, *SIZES]  # fmt: skip
    verifier = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    prover.wait_for_log("challenge round of")
    time.sleep(0.2)
    prover.proc.send_signal(signal.SIGKILL)
    stdout, _ = verifier.communicate(timeout=120)
    assert verifier.returncode == 1, stdout  # killed after its claim: an abort, so a reject
    assert '"verdict": "reject"' in stdout
    assert "unreachable or disconnected" in stdout


def test_unreachable_prover_is_an_error() -> None:
    rc, out = run_verifier("127.0.0.1:1", "--task", TASK, *SIZES, "--timeout", "5")
    assert rc == 2
    assert out["verdict"] == "error"


def test_prover_shuts_down_cleanly_on_sigterm(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    assert prover.stop(signal.SIGTERM) == 0
    assert "server stopped" in prover.log()


def test_stalled_prover_times_out_as_reject(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--stall-before-commit", "30")
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES, "--timeout", "3")
    assert rc == 1  # the stall comes after the claim: timing out after commitment is a reject
    assert out["verdict"] == "reject"
    assert "timeout" in out["reason"]


def test_several_sessions_at_once(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", prover.address,
           "--json", "--task", TASK, *SIZES]  # fmt: skip
    cmd = [*cmd[: cmd.index("--task") + 2], *PRACTICAL]
    runs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], outputs
    assert prover.log().count("finished, verifier says accept") == 3


# A real task: digits logistic regression with 3 targets (the standardised margin, b = 1.5).
REAL_TASK = "digits-logreg:z=3"
REAL_SIZES = ["--mode", "manual", "--pairs", "2000", "--spot-checks", "32",
              "--mse-samples", "1000", "--epsilon", "0.05", "--delta", "0.05"]  # fmt: skip


def test_real_task_honest_accepted_and_scaled_rejected(prover_factory) -> None:
    honest = prover_factory("--task", REAL_TASK)
    # The default: the practical rule at ε = 0.1·Var f, certified checks (a convex task).
    rc, out = run_verifier(honest.address, "--task", REAL_TASK, "--epsilon-rel", "0.1")
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["checks"] == "certified"
    assert out["guarantee_met"] is True
    cheat = prover_factory("--task", REAL_TASK, cheat="scale:0.5")
    rc, out = run_verifier(cheat.address, "--task", REAL_TASK, "--epsilon-rel", "0.1")
    assert (rc, out["verdict"]) == (1, "reject"), out["reason"]
    assert out["spot_check"]["certified_models"] == 4 * out["tuples"]
    assert out["spot_check"]["max_f_error_bound"] <= 1e-6
    # The paper's rule with every kind of check on the same honest prover: the checks pass.
    for checks, certified in (("certified", 8000), ("retrain", 0), ("certified-spot", 32)):
        rc, out = run_verifier(honest.address, "--task", REAL_TASK, *REAL_SIZES, "--checks", checks)
        assert out["verdict"] in ("inconclusive", "reject"), out["reason"]
        assert "spot check failed" not in out["reason"]
        assert "certified check failed" not in out["reason"]
        assert out["checks"] == checks
        if certified:
            assert out["spot_check"]["certified_models"] == certified
        else:
            assert out["spot_check"]["max_abs_diff"] <= 1e-6


def test_a_claim_from_a_file_is_judged_like_any_other(prover_factory, tmp_path) -> None:
    """prover serve --attribution FILE (issue #18): the honest OLS claim exported by precompute
    is accepted at ε = 0.1·Var f; the same file with a scaled by 0.5 (err ≈ 0.24·Var f) is
    rejected."""
    import numpy as np

    from protocol.tasks import load_task
    from prover.claim_file import load_attribution_file, save_attribution_file

    task_sel = "digits-logreg:z=1"
    honest = tmp_path / "honest.npz"
    out = subprocess.run(
        [sys.executable, "-m", "prover.cli", "precompute", "--task", task_sel,
         "--store", str(tmp_path / "s.sqlite3"), "--no-progress",
         "--export-attribution", str(honest)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    task = load_task(task_sel)
    att = load_attribution_file(honest, task)
    att.coefficients[:] = 0.5 * np.asarray(att.coefficients)
    scaled = save_attribution_file(tmp_path / "scaled.csv", att, task)
    args = ["--task", task_sel, "--epsilon-rel", "0.1", "--timeout", "120"]
    prover = prover_factory("--task", task_sel, "--attribution", str(honest))
    rc, res = run_verifier(prover.address, *args)
    assert (rc, res["verdict"]) == (0, "accept"), res["reason"]
    prover = prover_factory("--task", task_sel, "--attribution", str(scaled))
    rc, res = run_verifier(prover.address, *args)
    assert (rc, res["verdict"]) == (1, "reject"), res["reason"]
