"""Fault injection with real processes on 127.0.0.1: a prover that dies, stalls or restarts, and a
verifier that is interrupted. None of them may produce an accept, and the prover's result store
must pass SQLite's ``PRAGMA integrity_check`` afterwards.

Sizes (the paper's rule at manual sizes, so that a challenge round happens at once) are tiny:
synthetic n = 20, 2,000 tuples, 16 spot checks, 500 MSE samples, ε = 1.0; the faults come from
``--stall-before-commit``. Reruns that must accept use the default rule at ε = 1.0.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from prover.store import ResultStore
from tests.conftest import REPO, ProverProcess, run_verifier, start_prover

TASK = "synthetic:n=20,z=1,p=0.5,seed=0"
SIZES = ["--task", TASK, "--mode", "manual", "--pairs", "2000", "--spot-checks", "16",
         "--mse-samples", "500", "--epsilon", "1.0", "--no-progress"]  # fmt: skip
# The default rule at ε = 1.0 (B≥2 = 0.2): an honest claim is accepted on its MSE in seconds.
PRACTICAL = ["--task", TASK, "--epsilon", "1.0", "--no-progress"]


def _verifier_cmd(address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "verifier.cli", "verify", "--prover", address, "--json",
            *SIZES, *extra]  # fmt: skip


def _verdict(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from the verifier:\n{stdout}"
    return json.loads(lines[-1])


def _store_ok(tmp_path: Path) -> bool:
    store = ResultStore(tmp_path / "store.sqlite3")
    try:
        return store.integrity_check()
    finally:
        store.close()


def _kill(prover: ProverProcess) -> None:
    if prover.proc.poll() is None:
        prover.proc.kill()
    prover.proc.wait(timeout=30)


def test_prover_killed_mid_commit_is_a_reject(tmp_path: Path) -> None:
    """SIGKILL while the verifier waits on the Commit stream, after the claim: reject (1), an
    abort after commitment is never a retryable error (issue #16)."""
    prover = start_prover(tmp_path, "--task", TASK, "--stall-before-commit", "30")
    try:
        verifier = subprocess.Popen(
            _verifier_cmd(prover.address), cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        prover.wait_for_log("challenge round of")
        time.sleep(0.3)
        prover.proc.send_signal(signal.SIGKILL)
        stdout, _ = verifier.communicate(timeout=60)
    finally:
        _kill(prover)
    out = _verdict(stdout)
    assert verifier.returncode == 1, out
    assert out["verdict"] == "reject", out
    assert out["aborted_after_commit"] is True
    assert "during Commit" in out["reason"], out["reason"]
    assert "after committing to its claim" in out["reason"], out["reason"]
    assert "TLS" not in out["reason"]  # a disconnect after Hello is not a handshake failure
    assert _store_ok(tmp_path)


def test_prover_stalling_past_the_deadline_is_a_timeout_reject(tmp_path: Path) -> None:
    """The prover sleeps 20 s before its commitment, after its claim; the verifier's 2 s
    deadline gives reject (1): timing out after commitment is an abort."""
    prover = start_prover(tmp_path, "--task", TASK, "--stall-before-commit", "20")
    try:
        started = time.monotonic()
        rc, out = run_verifier(prover.address, *SIZES, "--timeout", "2", timeout_s=60)
        elapsed = time.monotonic() - started
    finally:
        _kill(prover)
    assert rc == 1, out
    assert out["verdict"] == "reject"
    assert "timeout" in out["reason"], out["reason"]
    assert "after committing to its claim" in out["reason"], out["reason"]
    assert elapsed < 15, elapsed  # the deadline, not the stall, ended the run
    assert _store_ok(tmp_path)


def test_prover_restarted_mid_session_is_a_reject_then_a_fresh_run_accepts(
    tmp_path: Path,
) -> None:
    """Kill the prover during Commit and restart it on the same port: the old session is gone.

    The interrupted verifier ends with reject (1), the prover having committed; the restarted
    prover knows nothing of its
    session (a late call would get NOT_FOUND "unknown or expired session"); a new verifier run
    against the restarted prover on the same port accepts.
    """
    prover = start_prover(tmp_path, "--task", TASK, "--stall-before-commit", "30")
    port = prover.address.rsplit(":", 1)[1]
    restarted: ProverProcess | None = None
    try:
        verifier = subprocess.Popen(
            _verifier_cmd(prover.address, "--timeout", "20"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        prover.wait_for_log("challenge round of")
        prover.proc.send_signal(signal.SIGKILL)
        prover.proc.wait(timeout=30)
        restarted = start_prover(tmp_path, "--task", TASK, "--port", port)
        assert restarted.address.endswith(f":{port}")
        stdout, _ = verifier.communicate(timeout=60)
        out = _verdict(stdout)
        assert verifier.returncode == 1, out
        assert out["verdict"] == "reject", out
        rc, fresh = run_verifier(restarted.address, *PRACTICAL, "--timeout", "60", timeout_s=120)
        assert fresh["verdict"] == "accept", fresh
        assert rc == 0
    finally:
        _kill(prover)
        if restarted is not None:
            restarted.stop()
    assert _store_ok(tmp_path)


def test_verifier_interrupted_then_rerun_accepts(tmp_path: Path) -> None:
    """SIGINT to the verifier mid-protocol: non-zero exit, no accept; a rerun accepts."""
    prover = start_prover(tmp_path, "--task", TASK, "--stall-before-commit", "2")
    try:
        # A shell without job control starts background jobs with SIGINT ignored, and an ignored
        # SIGINT is inherited (Python then keeps it ignored). A handled one is reset to the
        # default at exec, so handle it here while the verifier starts, as a terminal would.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            verifier = subprocess.Popen(
                _verifier_cmd(prover.address), cwd=REPO, stdout=subprocess.PIPE, text=True
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        prover.wait_for_log("challenge round of")
        verifier.send_signal(signal.SIGINT)
        stdout, _ = verifier.communicate(timeout=60)
        assert verifier.returncode != 0, stdout
        assert '"verdict": "accept"' not in stdout
        rc, out = run_verifier(prover.address, *PRACTICAL, "--timeout", "60", timeout_s=120)
        assert out["verdict"] == "accept", out
        assert rc == 0
    finally:
        prover.stop()
    assert _store_ok(tmp_path)
