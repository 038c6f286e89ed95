"""Building and running the prover's gRPC server, with clean shutdown on SIGINT/SIGTERM.

Besides the ``attribution.v1.Prover`` service the server exposes the standard gRPC health service
(``grpc.health.v1.Health``) and server reflection when ``grpcio-health-checking`` and
``grpcio-reflection`` are installed. Transport security (TLS, mutual TLS) comes in as
``grpc.ServerCredentials`` (see ``prover.tls``); without them the server speaks plain text.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from proto.attribution.v1 import attribution_pb2 as pb
from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from prover.servicer import ProverServicer

log = logging.getLogger("prover")

#: Largest message either side accepts (64 MiB); streams keep each chunk far below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Fully qualified name of the prover service (what health and reflection report).
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Prover"].full_name

# Health servicers by server, so serve_forever can flip them to NOT_SERVING on shutdown.
_HEALTH: dict[int, object] = {}


def _add_health(server: grpc.Server) -> bool:
    try:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    except ImportError:
        log.info("grpcio-health-checking not installed: no health service")
        return False
    servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", SERVICE_NAME):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    _HEALTH[id(server)] = servicer
    return True


def _add_reflection(server: grpc.Server, health: bool) -> None:
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:
        log.info("grpcio-reflection not installed: no server reflection")
        return
    names = [SERVICE_NAME, reflection.SERVICE_NAME]
    if health:
        from grpc_health.v1 import health_pb2

        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection(names, server)


def build_server(
    servicer: ProverServicer,
    host: str,
    port: int,
    workers: int = 8,
    credentials: grpc.ServerCredentials | None = None,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    health: bool = True,
    reflection: bool = True,
) -> tuple[grpc.Server, int]:
    """Create (not start) a server bound to host:port; returns it and the bound port.

    With ``credentials`` the port speaks TLS (mutual TLS when they require client certificates),
    otherwise plain text; the plain-text-on-loopback policy is the caller's
    (``prover.tls.check_plaintext_policy``). Messages above ``max_message_bytes`` are refused with
    RESOURCE_EXHAUSTED; beyond ``max_concurrent_rpcs`` (default ``4 * workers``) in flight, new
    RPCs are refused with RESOURCE_EXHAUSTED. Health and reflection services are added when their
    packages are installed. Raises ``OSError`` with a readable message when the address cannot be
    bound.
    """
    if workers < 1:
        raise ValueError(f"--workers must be positive, got {workers}")
    if max_concurrent_rpcs is None:
        max_concurrent_rpcs = 4 * workers
    if max_concurrent_rpcs < 1:
        raise ValueError(f"--max-concurrent-rpcs must be positive, got {max_concurrent_rpcs}")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prover"),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    pb_grpc.add_ProverServicer_to_server(servicer, server)
    has_health = _add_health(server) if health else False
    if reflection:
        _add_reflection(server, has_health)
    address = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {address} (address in use or not available)")
    return server, bound


def serve_forever(
    server: grpc.Server,
    grace_s: float = 5.0,
    on_started: Callable[[], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Start ``server`` and block until SIGINT or SIGTERM, then stop it gracefully.

    Signal handlers are installed before the server starts and before ``on_started`` runs, so a
    signal that arrives as soon as the server is announced still shuts it down cleanly. On
    shutdown the health service (if any) reports NOT_SERVING and ``on_stopping`` runs (the
    servicer's cancellation: computations in progress stop within a batch) before in-flight RPCs
    drain.
    """
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    if on_started is not None:
        on_started()
    try:
        while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        health = _HEALTH.pop(id(server), None)
        if health is not None:
            health.enter_graceful_shutdown()  # type: ignore[attr-defined]
        if on_stopping is not None:
            on_stopping()
        server.stop(grace_s).wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("server stopped")


def run_prover(
    servicer: ProverServicer,
    host: str,
    port: int,
    workers: int = 8,
    *,
    credentials: grpc.ServerCredentials | None = None,
    max_concurrent_rpcs: int | None = None,
    security: str = "plain text",
) -> None:
    """Build, announce (``LISTENING host:port`` on stdout) and serve until SIGINT/SIGTERM.

    The one serving path of ``prover serve`` and ``simulations serve``: both print the same
    announcement line, which scripts and tests wait for.
    """
    server, bound = build_server(
        servicer, host, port, workers, credentials=credentials,
        max_concurrent_rpcs=max_concurrent_rpcs,
    )  # fmt: skip

    def announce() -> None:
        log.info("listening on %s:%d with %s (%s)", host, bound, security, servicer.prover_info)
        print(f"LISTENING {host}:{bound}", flush=True)

    serve_forever(server, on_started=announce, on_stopping=servicer.shutdown.set)
