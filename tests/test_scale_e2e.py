"""Attribution at N = 10,000 over gRPC, in the default (certified) mode (issue #17).

The honest prover claims the calibrated influence function at the mean model (``--method
if-mean``: 512 retrainings whatever N); the verifier accepts it at ε = 0.1·Var f, δ = 0.05, and
rejects the same claim scaled by 0.3. Needs Debian's ``dataset-fashion-mnist`` (``.ci/run``
installs it); skipped without it. About three minutes on 2 cores.
"""

from __future__ import annotations

import pytest

from protocol.tasks.datasets import FASHION_MNIST_DIR
from tests.conftest import run_verifier, start_prover

TASK = "fashion-mnist-probe:n=10000,z=5"
VERIFY = ["--task", TASK, "--epsilon-rel", "0.1", "--delta", "0.05", "--timeout", "300"]

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)",
)


def test_honest_accepted_and_scaled_rejected_at_n_10000(tmp_path) -> None:
    honest = start_prover(tmp_path, "--task", TASK, "--method", "if-mean", timeout_s=300)
    try:
        rc, out = run_verifier(honest.address, *VERIFY, timeout_s=600)
    finally:
        honest.stop()
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["num_train_points"] == 10_000
    assert out["guarantee_met"] is True
    assert out["checks"] == "certified"
    assert out["datamodel_samples"] == 512  # the claim cost 512 retrainings at N = 10,000
    # the verifier's work against fitting the datamodel itself (OLS needs more than N samples)
    assert out["verifier_cost"]["retraining_equivalents"] < 0.5 * out["self_fit_floor"]
    cheat = start_prover(
        tmp_path, "--task", TASK, "--method", "if-mean", cheat="scale:0.3", timeout_s=300
    )
    try:
        rc, out = run_verifier(cheat.address, *VERIFY, timeout_s=600)
    finally:
        cheat.stop()
    assert (rc, out["verdict"]) == (1, "reject"), out["reason"]
    assert "err > ε" in out["reason"] or "err_lower" in out["reason"]
