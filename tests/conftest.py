"""Shared fixtures: real prover processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ProverProcess:
    """A running ``prover serve`` subprocess."""

    proc: subprocess.Popen[str]
    address: str
    log_path: Path

    def log(self) -> str:
        """Everything the prover has logged so far."""
        return self.log_path.read_text()

    def wait_for_log(self, needle: str, timeout_s: float = 60.0) -> None:
        """Block until ``needle`` appears in the prover's log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{needle!r} not in prover log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=90)


def start_prover(
    tmp_path: Path, *args: str, timeout_s: float = 120.0, cheat: str | None = None
) -> ProverProcess:
    """Start ``prover serve --port 0`` with ``args`` and wait for its LISTENING line; with
    ``cheat`` (``NAME:STRENGTH``), ``simulations serve`` instead: the one door for cheating
    servers, on the same store."""
    log_path = tmp_path / f"prover-{time.monotonic_ns()}.log"
    serve = ["prover.cli", "serve"] if cheat is None else ["simulations.cli", "serve", cheat]
    cmd = [
        sys.executable, "-m", *serve, "--port", "0", "--no-progress",
        "--store", str(tmp_path / "store.sqlite3"), *args,
    ]  # fmt: skip
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True, env=os.environ.copy()
    )
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING"):
            return ProverProcess(proc, line.split()[1], log_path)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"prover did not start: {log_path.read_text()}")


def run_verifier(address: str, *args: str, timeout_s: float = 300.0) -> tuple[int, dict]:
    """Run ``verifier verify --json`` against ``address``; returns (exit code, parsed JSON)."""
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", address, "--json", *args]
    out = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from verifier (rc={out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.returncode, json.loads(lines[-1])


@pytest.fixture
def prover_factory(tmp_path: Path) -> Iterator:
    """Start provers on demand; every one is stopped at teardown."""
    started: list[ProverProcess] = []

    def factory(*args: str, cheat: str | None = None) -> ProverProcess:
        p = start_prover(tmp_path, *args, cheat=cheat)
        started.append(p)
        return p

    yield factory
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def digits_z2_attribution():
    """OLS datamodel of ``digits-logreg:z=2`` on 3,000 fixed-seed retrainings (shared by the
    certified-check tests)."""
    import numpy as np

    from protocol.tasks import load_task
    from prover.datamodel import fit_datamodel
    from prover.strategy import Attribution

    task = load_task("digits-logreg:z=2")
    rng = np.random.default_rng(0)
    masks = rng.random((3000, task.num_train_points)) < task.p
    f = task.retrain(masks, np.zeros(3000, dtype=np.uint64)).f
    model = fit_datamodel(masks, f, method="ols")
    return Attribution(model.intercepts, model.coefficients, "ols", 3000)


#: Modules whose tests start prover or verifier processes (gRPC over 127.0.0.1).
E2E_MODULES = frozenset(
    {
        *("test_e2e", "test_adversaries_e2e", "test_faults"),
        *("test_limits", "test_tls", "test_precompute", "test_api", "test_hostile_client"),
        *("test_scale_e2e", "test_ray"),
    }
)
#: Modules whose tests assert rates or bounds over fixed-seed trials.
STATISTICAL_MODULES = frozenset(
    {"test_simulations", "test_montecarlo", "test_betting", "test_residual", "test_rules"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests ``e2e`` / ``statistical`` by module, so ``-m "not e2e"`` is a quick inner loop
    and CI (``-m "not slow"``) still runs them all."""
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if module in STATISTICAL_MODULES:
            item.add_marker(pytest.mark.statistical)


def load_benchmark(name: str):  # type: ignore[no-untyped-def]
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
