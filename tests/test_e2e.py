"""End to end: real prover and verifier processes talking gRPC on 127.0.0.1.

Sizes (manual mode): 20,000 coupled tuples (|E| = 80,000), 64 spot checks, 4,000 MSE samples,
ρ = 0.25, ε = 0.2 on the synthetic task (Var f = 1, B_1 = 0.8). With these sizes the residual and
MSE estimates have standard errors of a few hundredths, so the honest prover (err ≈ 0.01) sits
several standard errors below the threshold and the a/2 prover (err = 0.2) several above it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.conftest import REPO, run_verifier

TASK = "synthetic:n=500,z=1,p=0.5,seed=0"
SIZES = ["--mode", "manual", "--pairs", "50000", "--spot-checks", "64", "--mse-samples", "4000",
         "--rho", "0.25", "--epsilon", "0.2", "--delta", "0.05"]  # fmt: skip


def test_honest_prover_is_accepted(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES)
    assert out["verdict"] == "accept", out["reason"]
    assert rc == 0
    for key in ("epsilon", "delta", "mse_hat", "residual_hat", "verifier_retrainings",
                "prover_retrainings", "num_train_points", "reason"):  # fmt: skip
        assert key in out
    assert out["num_train_points"] == 500
    assert out["verifier_retrainings"] == 64 + 4000
    assert out["prover_retrainings"] >= 80_000
    assert out["prover_transcript_agrees"] is True
    prover.wait_for_log("finished, verifier says accept")


def test_scaled_prover_is_rejected(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--cheat", "scale:0.5")
    assert "ADVERSARIAL" in prover.log()
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES)
    assert out["verdict"] == "reject", out
    assert rc == 1
    # The scaled prover answers every challenge honestly: it is the MSE check that catches it.
    assert out["mse_hat"][0] > out["residual_hat"][0] + 0.1


def test_fabricating_prover_is_rejected(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--cheat", "fabricate:0.3")
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


def test_prover_killed_mid_protocol_is_an_error_never_accept(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--stall-before-commit", "30")
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", prover.address,
           "--json", "--task", TASK, *SIZES]  # fmt: skip
    verifier = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    prover.wait_for_log("challenge with")
    time.sleep(0.2)
    prover.proc.send_signal(signal.SIGKILL)
    stdout, _ = verifier.communicate(timeout=120)
    assert verifier.returncode == 2, stdout
    assert '"verdict": "error"' in stdout
    assert "unreachable or disconnected" in stdout


def test_unreachable_prover_is_an_error() -> None:
    rc, out = run_verifier("127.0.0.1:1", "--task", TASK, *SIZES, "--timeout", "5")
    assert rc == 2
    assert out["verdict"] == "error"


def test_prover_shuts_down_cleanly_on_sigterm(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    assert prover.stop(signal.SIGTERM) == 0
    assert "server stopped" in prover.log()


def test_stalled_prover_times_out_as_error(prover_factory) -> None:
    prover = prover_factory("--task", TASK, "--stall-before-commit", "30")
    rc, out = run_verifier(prover.address, "--task", TASK, *SIZES, "--timeout", "3")
    assert rc == 2
    assert out["verdict"] == "error"
    assert "timeout" in out["reason"]


def test_several_sessions_at_once(prover_factory) -> None:
    prover = prover_factory("--task", TASK)
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", prover.address,
           "--json", "--task", TASK, *SIZES]  # fmt: skip
    runs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0], outputs
    assert prover.log().count("finished, verifier says accept") == 3


# A real task: digits logistic regression with 3 targets (Var f ≈ 0.02–0.09 per target).
# With 10,000 tuples the residual estimate's standard error is ≈ 0.0014 per target, so the honest
# prover (err ≈ 3e-5) sits > 3.5 SE below the threshold ε/2 = 0.005, and the a → 0.2·a prover
# (err ≈ 0.64·B_1 ≈ 0.02) sits ≈ 10 SE above it.
REAL_TASK = "digits-logreg:z=3"
REAL_SIZES = ["--mode", "manual", "--pairs", "10000", "--spot-checks", "32",
              "--mse-samples", "1000", "--epsilon", "0.01", "--delta", "0.05"]  # fmt: skip


def test_real_task_honest_accepted_and_scaled_rejected(prover_factory) -> None:
    honest = prover_factory("--task", REAL_TASK)
    # Certified checks (the default for this convex task): every challenge from its weights.
    rc, out = run_verifier(honest.address, "--task", REAL_TASK, *REAL_SIZES)
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["spot_check"]["certified_models"] == 40_000
    assert out["spot_check"]["max_f_error_bound"] <= 1e-6
    assert out["verifier_cost"]["gradient_passes"] == 40_000 + 1000
    # Retraining-based spot checks on the same prover.
    rc, out = run_verifier(honest.address, "--task", REAL_TASK, *REAL_SIZES, "--checks", "retrain")
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["spot_check"]["max_abs_diff"] <= 1e-6
    # Certified spot checks: only the 32 secret spot checks opened with weights and certified.
    rc, out = run_verifier(
        honest.address, "--task", REAL_TASK, *REAL_SIZES, "--checks", "certified-spot"
    )
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["spot_check"]["mode"] == "certified-spot"
    assert out["spot_check"]["certified_models"] == 32
    assert out["verifier_cost"]["gradient_passes"] == 32 + 1000
    cheat = prover_factory("--task", REAL_TASK, "--cheat", "scale:0.2")
    rc, out = run_verifier(cheat.address, "--task", REAL_TASK, *REAL_SIZES)
    assert (rc, out["verdict"]) == (1, "reject"), out["reason"]
    assert "msê" in out["reason"]
    rc, out = run_verifier(
        cheat.address, "--task", REAL_TASK, *REAL_SIZES, "--checks", "certified-spot"
    )
    assert (rc, out["verdict"]) == (1, "reject"), out["reason"]
