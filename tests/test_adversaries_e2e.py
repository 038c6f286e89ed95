"""Cheating provers as real gRPC servers (``simulations serve``) against the unchanged client.

Sizes (manual mode, small for speed): synthetic n = 100, 10,000 coupled tuples (|E| = 40,000),
64 spot checks, 2,000 MSE samples, ρ = 0.25, ε = 0.2. Each adversary's strength makes the catch
sure up to ~1e-6 or less (half of E fabricated: P(64 spot checks all miss) ≈ 2⁻⁶⁴).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, ProverProcess, run_verifier

TASK = "synthetic:n=100,z=1,p=0.5,seed=0"
SIZES = ["--mode", "manual", "--pairs", "10000", "--spot-checks", "64", "--mse-samples", "2000",
         "--rho", "0.25", "--epsilon", "0.2", "--delta", "0.05"]  # fmt: skip


def start_adversary(tmp_path: Path, name: str, strength: str) -> ProverProcess:
    """``simulations serve NAME --strength S --port 0``, waiting for its LISTENING line."""
    log_path = tmp_path / f"adversary-{name}-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "simulations.cli", "serve", name, "--strength", strength,
           "--port", "0", "--task", TASK, "--pairs", "10000"]  # fmt: skip
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True, env=os.environ.copy()
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING"):
            return ProverProcess(proc, line.split()[1], log_path)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"adversary did not start: {log_path.read_text()}")


@pytest.fixture
def adversary(tmp_path: Path):
    started: list[ProverProcess] = []

    def factory(name: str, strength: str) -> ProverProcess:
        p = start_adversary(tmp_path, name, strength)
        started.append(p)
        return p

    yield factory
    for p in started:
        if p.proc.poll() is None:
            p.stop()


@pytest.mark.parametrize(
    ("name", "strength", "reason"),
    [
        ("scale", "0.0", "target"),  # err = 0.8: the paper's rule on msê
        ("lazy", "0.5", "spot check failed"),  # half of E fabricated
        ("equivocate", "0.5", "equivocation"),  # half of E re-answered at opening
        ("replay", "1.0", "not its assigned seed"),  # the whole earlier session
    ],
)
def test_cheating_server_is_caught(adversary, name: str, strength: str, reason: str) -> None:
    server = adversary(name, strength)
    assert "ADVERSARIAL" in server.log()
    rc, out = run_verifier(server.address, "--task", TASK, "--checks", "retrain", *SIZES)
    assert out["verdict"] == "reject", out
    assert rc == 1
    assert reason in out["reason"], out["reason"]
    server.wait_for_log("challenge round of")  # the session really ran on the cheating server
