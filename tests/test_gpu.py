"""The prover's retraining on CUDA against the CPU (issue #17 item 3); skipped without a device.

Logistic regression: float64 on both, and a retraining is the same function of (task, subset)
to within the task's certified bound (both reach ‖∇L_S‖ ≤ tol, so their f-values differ by at
most ``certified_disagreement`` ≤ τ). The MLP: the CPU–GPU difference of f after its T steps is
measured and must be below the task's τ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol.tasks import load_task_on

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _masks(task, k: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)  # randomness drawn on the CPU
    masks = rng.random((k, task.num_train_points)) < task.p
    return masks, rng.integers(0, 2**63, size=k, dtype=np.uint64)


@pytest.mark.parametrize("selector", ["digits-logreg", "fashion-mnist-probe:n=2000"])
def test_logreg_on_cuda_agrees_with_cpu_within_the_certified_bound(selector: str) -> None:
    cpu, gpu = load_task_on(selector, "cpu"), load_task_on(selector, "cuda")
    assert cpu.identity().task_hash == gpu.identity().task_hash  # the device is not identity
    masks, seeds = _masks(cpu)
    f_cpu = cpu.retrain(masks, seeds)
    f_gpu = gpu.retrain(masks, seeds)
    assert np.max(f_gpu.grad_norms) <= gpu.tol
    diff = float(np.max(np.abs(f_cpu.f - f_gpu.f)))
    assert diff <= cpu.certified_disagreement <= cpu.tolerance, diff


def test_mlp_on_cuda_agrees_with_cpu_below_tau() -> None:
    cpu, gpu = load_task_on("digits-mlp", "cpu"), load_task_on("digits-mlp", "cuda")
    masks, seeds = _masks(cpu, 128)
    diff = float(np.max(np.abs(cpu.retrain(masks, seeds).f - gpu.retrain(masks, seeds).f)))
    print(f"MLP CPU-GPU max |f difference| = {diff:.3g} (tau = {cpu.tolerance:g})")
    assert diff <= cpu.tolerance, diff


def test_cuda_retraining_is_deterministic() -> None:
    task = load_task_on("digits-mlp", "cuda")
    masks, seeds = _masks(task, 64)
    np.testing.assert_array_equal(task.retrain(masks, seeds).f, task.retrain(masks, seeds).f)
