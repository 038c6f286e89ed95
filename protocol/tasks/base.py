"""The task abstraction: a retraining is a pure function of (task, subset, seed)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

#: Optional progress callback: called with the number of models just finished.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TaskIdentity:
    """Hashes that identify a task; two parties may proceed only if ``task_hash`` agrees."""

    selector: str
    task_hash: str
    spec_hash: str
    data_hash: str
    canonical_spec: str

    @classmethod
    def from_message(cls, message: Any) -> TaskIdentity:
        """Read an identity from any object with the five string fields (e.g. the wire message)."""
        return cls(**{f.name: str(getattr(message, f.name)) for f in fields(cls)})

    def as_fields(self) -> dict[str, str]:
        """The five fields as a dict, e.g. to build the wire message."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def mismatch(self, other: TaskIdentity) -> str | None:
        """Return ``None`` when both identities name the same task, else a readable reason.

        The reason says which part differs (spec, data, or both) and shows the two specs when the
        spec differs, so a user can see e.g. a different ``n`` or ``p``.
        """
        if self.task_hash == other.task_hash:
            return None
        parts = []
        if self.spec_hash != other.spec_hash:
            parts.append(
                f"task spec differs (ours {self.spec_hash[:12]}…, "
                f"theirs {other.spec_hash[:12]}…): "
                f"ours={self.canonical_spec} theirs={other.canonical_spec}"
            )
        if self.data_hash != other.data_hash:
            parts.append(
                f"dataset bytes differ (ours {self.data_hash[:12]}…, "
                f"theirs {other.data_hash[:12]}…)"
            )
        if not parts:
            parts.append("task hashes differ though spec and data hashes agree (corrupt identity)")
        return "task hash mismatch: " + "; ".join(parts)


@dataclass(frozen=True)
class RetrainResult:
    """Outputs of K retrainings.

    ``f`` has shape (K, Z) and every entry lies in [-output_bound, output_bound].
    ``weights_digests`` holds K SHA-256 digests (32 bytes each) of the trained weights.
    ``grad_norms`` is (K,) for tasks trained to a gradient-norm tolerance, else ``None``.
    """

    f: np.ndarray
    weights_digests: list[bytes]
    grad_norms: np.ndarray | None = None
    #: (K, d) trained weights when the caller asked to keep them, else ``None``.
    weights: np.ndarray | None = None


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` as canonical JSON: sorted keys, no whitespace, floats via ``repr``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class Task(ABC):
    """A shared task. Subclasses must make ``retrain`` a pure function of (masks, seeds).

    ``masks`` is a (K, N) boolean array: ``masks[k, i]`` is True when training point i is in the
    k-th subset (x_i = +1). ``seeds`` is a (K,) uint64 array of training seeds.
    """

    #: Registry name, e.g. ``"synthetic"``.
    name: str = ""

    def __init__(self, selector: str) -> None:
        self.selector = selector
        self._identity: TaskIdentity | None = None

    @property
    @abstractmethod
    def num_train_points(self) -> int:
        """N, the number of training points a subset ranges over."""

    @property
    @abstractmethod
    def num_targets(self) -> int:
        """Z, the number of outputs each retraining yields."""

    @property
    @abstractmethod
    def p(self) -> float:
        """Inclusion probability of the p-biased subset distribution B_p."""

    @property
    @abstractmethod
    def output_bound(self) -> float:
        """b: every f-value is guaranteed to lie in [-b, b] by the definition of f."""

    @property
    def tolerance(self) -> float:
        """τ: the absolute tolerance CHECKEQUIV allows between two retrainings of one challenge."""
        return 0.0

    @property
    def bitwise_deterministic(self) -> bool:
        """True when two retrainings of the same (subset, seed) give identical weight digests."""
        return False

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The canonical, JSON-serialisable description of the task (everything but data bytes)."""

    @abstractmethod
    def data_bytes(self) -> bytes:
        """The dataset bytes covered by the task hash (empty for a purely synthetic task)."""

    @abstractmethod
    def retrain(
        self, masks: np.ndarray, seeds: np.ndarray, progress: Progress | None = None
    ) -> RetrainResult:
        """Train one model per row of ``masks`` with the matching seed and evaluate f.

        Guarantees: the result depends only on (task, masks[k], seeds[k]) for each k, not on
        batch composition or device, up to the declared ``tolerance``.
        """

    def identity(self) -> TaskIdentity:
        """Return the task's identity hashes (computed once, then cached)."""
        if self._identity is None:
            spec_json = canonical_json(self.spec())
            spec_hash = hashlib.sha256(spec_json.encode()).hexdigest()
            data_hash = hashlib.sha256(self.data_bytes()).hexdigest()
            task_hash = hashlib.sha256(
                b"attribution.v1/task\x00" + bytes.fromhex(spec_hash) + bytes.fromhex(data_hash)
            ).hexdigest()
            self._identity = TaskIdentity(
                selector=self.selector,
                task_hash=task_hash,
                spec_hash=spec_hash,
                data_hash=data_hash,
                canonical_spec=spec_json,
            )
        return self._identity

    def validate_inputs(self, masks: np.ndarray, seeds: np.ndarray) -> None:
        """Raise ``ValueError`` with a clear message unless masks/seeds have the right shapes."""
        if masks.ndim != 2 or masks.shape[1] != self.num_train_points:
            raise ValueError(
                f"masks must have shape (K, {self.num_train_points}), got {tuple(masks.shape)}"
            )
        if masks.dtype != np.bool_:
            raise ValueError(f"masks must be boolean, got dtype {masks.dtype}")
        if seeds.shape != (masks.shape[0],):
            raise ValueError(f"seeds must have shape ({masks.shape[0]},), got {seeds.shape}")


class CertifiableTask(Task):
    """A task whose models are the weights of a convex objective: ``train`` returns them and
    ``outputs`` maps them to f-values, so a prover can open its weights and a verifier can check
    them instead of retraining.

    When :attr:`strongly_convex` (λ = ``l2`` > 0), ‖w − w*_S‖ ≤ ‖∇L_S(w)‖/λ, so one gradient pass
    over ``design`` certifies a model's f within the task's tolerance (``protocol.certify``).
    """

    #: The training design (features with the bias column, labels), read by the gradient pass.
    design: Any
    #: λ, the L2 penalty of the objective.
    l2: float
    #: Gradient-norm tolerance every honest retraining reaches.
    tol: float

    @abstractmethod
    def train(
        self, masks: np.ndarray, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weights (K, d+1) and achieved gradient norms (K,), one row per mask row."""

    @abstractmethod
    def outputs(self, weights: np.ndarray) -> np.ndarray:
        """f-values (K, Z) of weights (K, d+1)."""

    @property
    def strongly_convex(self) -> bool:
        """True when λ > 0 is finite: models can be certified from their weights."""
        return bool(self.l2 > 0 and np.isfinite(self.l2))
