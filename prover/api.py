"""The prover's Python front door: ``Prover(task).start()`` fits (or loads) the datamodel and
serves it over gRPC from a background thread, exactly as ``prover serve`` does."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from protocol.tasks import load_task
from protocol.tasks.base import Task
from prover.attribution import fit_attribution
from prover.precompute import DEFAULT_SAMPLE_SEED
from prover.server import build_server
from prover.servicer import ProverServicer
from prover.session import SessionRegistry
from prover.store import DEFAULT_STORE
from prover.strategy import Attribution, ChallengeRetrainer, HonestStrategy
from prover.tls import check_plaintext_policy

__all__ = ["Prover", "honest_servicer"]


def honest_servicer(
    task: Task,
    attribution: Attribution,
    max_sessions: int = 16,
    session_ttl: float = 600.0,
    stall_before_commit: float = 0.0,
    pool: Any | None = None,
) -> ProverServicer:
    """The honest prover's gRPC servicer for ``attribution`` on ``task``: every session answers
    its challenges by retraining, deterministically (the one honest serving path); with ``pool``
    (``prover.ray_pool.RayPool``) on a Ray cluster."""

    def factory() -> HonestStrategy:
        return HonestStrategy(
            task, attribution, ChallengeRetrainer(task, stall_s=stall_before_commit, pool=pool)
        )

    registry = SessionRegistry(max_sessions, ttl_s=session_ttl)
    return ProverServicer(task, factory, registry, factory().describe())


class Prover:
    """An honest prover server run from Python.

    ``start()`` retrains ``samples`` seeded subsets (resumably, in ``store``), fits the datamodel
    by ``method`` (or serves ``attribution`` as given, e.g. from ``prover.claim_file``), binds
    ``host:port`` (``port=0`` picks a free one) and serves in background threads; it
    returns the address a verifier dials. ``stop()`` (or leaving the ``with`` block) stops it.
    Plain text is refused on a non-loopback host unless ``credentials`` give TLS.
    """

    def __init__(
        self,
        task: str | Task,
        *,
        store: str | Path = DEFAULT_STORE,
        samples: int | None = None,
        sample_seed: bytes = DEFAULT_SAMPLE_SEED,
        method: str = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 8,
        max_sessions: int = 16,
        credentials: grpc.ServerCredentials | None = None,
        progress: bool = False,
        attribution: Attribution | None = None,
    ) -> None:
        self.task = load_task(task) if isinstance(task, str) else task
        if samples is not None and samples < 1:  # before serving; None: fit_attribution's default
            raise ValueError(f"samples must be positive, got {samples}")
        self.samples = samples
        check_plaintext_policy(host, credentials is not None, insecure_plaintext=False)
        self._store, self._seed, self._method = store, sample_seed, method
        self._host, self._port, self._workers = host, port, workers
        self._max_sessions, self._credentials, self._progress = max_sessions, credentials, progress
        self._server: grpc.Server | None = None
        self.address: str | None = None
        #: the claim served; given, it is served as is (no samples are retrained for it)
        self.attribution: Attribution | None = attribution

    def start(self) -> str:
        """Fit (or load) the datamodel and start serving; returns ``host:port``."""
        if self._server is not None:
            raise RuntimeError("this prover is already serving")
        if self.attribution is None:
            self.attribution, _ = fit_attribution(
                self.task, self._store, self.samples, self._seed, self._method, self._progress
            )
        servicer = honest_servicer(self.task, self.attribution, self._max_sessions)
        server, port = build_server(
            servicer, self._host, self._port, self._workers, credentials=self._credentials
        )
        server.start()
        self._server, self.address = server, f"{self._host}:{port}"
        return self.address

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace_s`` seconds); a no-op when not serving."""
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server, self.address = None, None

    def __enter__(self) -> Prover:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
