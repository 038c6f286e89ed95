"""Fake tasks shared by the tests: small, exact, pure functions of (subset, seed).

``SlowTask`` sleeps or hangs on demand (so a precompute can be killed mid-batch); ``CountingTask``
counts the models it trains and can fail on a chosen call (so the store's caching is visible).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol.tasks.base import Progress, RetrainResult, Task


class _SmallTask(Task):
    """N points, Z targets, p = 1/2, bound b, random weights w (Z, N) from ``weight_seed``."""

    def __init__(self, selector: str, n: int, z: int, bound: float, weight_seed: int) -> None:
        super().__init__(selector)
        self._n, self._z, self._bound = n, z, bound
        self.w = np.random.default_rng(weight_seed).normal(size=(z, n))
        self.trained = 0

    @property
    def num_train_points(self) -> int:
        return self._n

    @property
    def num_targets(self) -> int:
        return self._z

    @property
    def p(self) -> float:
        return 0.5

    @property
    def output_bound(self) -> float:
        return self._bound

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "n": self._n, "z": self._z}

    def data_bytes(self) -> bytes:
        return self.w.tobytes()


class SlowTask(_SmallTask):
    """A deterministic fake task that sleeps ``delay_s`` per model (so a run can be killed midway).

    f_t(x) = tanh(<w_t, x> / sqrt(N)) + 0.01 * u(seed, subset) with u in [-1, 1] from SHA-256: a
    pure function of (subset, seed), like a real retraining with seed-dependent noise. With
    ``pause_after`` set, it creates ``pause_file`` and hangs (until killed) just before training
    model number ``pause_after`` of this process, i.e. in the middle of a batch.
    """

    name = "slow-fake"

    def __init__(
        self,
        delay_s: float = 0.0,
        n: int = 24,
        z: int = 2,
        pause_after: int | None = None,
        pause_file: str | None = None,
    ) -> None:
        # delay and pausing are not part of the identity
        super().__init__(f"slow-fake:n={n},z={z}", n, z, bound=1.01, weight_seed=11)
        self.delay_s = delay_s
        self.pause_after, self.pause_file = pause_after, pause_file

    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        self.validate_inputs(masks, seeds)
        f = np.empty((len(masks), self._z))
        digests = []
        for k, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
            if self.trained == self.pause_after and self.pause_file:
                Path(self.pause_file).touch()
                while True:  # hang mid-batch until the test kills this process
                    time.sleep(0.05)
            if self.delay_s:
                time.sleep(self.delay_s)
            h = hashlib.sha256(np.packbits(mask).tobytes() + int(seed).to_bytes(8, "little"))
            u = int.from_bytes(h.digest()[:8], "little") / 2**64 * 2 - 1
            f[k] = np.tanh(self.w @ (2.0 * mask - 1.0) / np.sqrt(self._n)) + 0.01 * u
            digests.append(h.digest())
            self.trained += 1
            if progress is not None:
                progress(1)
        return RetrainResult(f=f, weights_digests=digests)


class CountingTask(_SmallTask):
    """A tiny exact task: f_t(x) = tanh(<w_t, x>) + 1e-3 * (seed mod 7); counts models trained."""

    name = "counting"

    def __init__(self, n: int = 12, z: int = 2, grad: bool = False) -> None:
        super().__init__(f"counting:n={n},z={z}", n, z, bound=2.0, weight_seed=0)
        self._grad = grad
        self.calls: list[int] = []
        self.fail_on_call: int | None = None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "grad": self._grad}

    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        self.validate_inputs(masks, seeds)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            self.calls.append(len(masks))
            raise RuntimeError("injected training failure")
        self.calls.append(len(masks))
        x = 2.0 * masks - 1.0
        f = np.tanh(x @ self.w.T) + 1e-3 * (seeds % 7).astype(np.float64)[:, None]
        digests = [hashlib.sha256(m.tobytes() + int(s).to_bytes(8, "little")).digest()
                   for m, s in zip(masks, seeds, strict=True)]  # fmt: skip
        self.trained += len(masks)
        if progress is not None:
            progress(len(masks))
        grads = np.abs(f[:, 0]) * 1e-6 if self._grad else None
        return RetrainResult(f=f, weights_digests=digests, grad_norms=grads)
