"""Building and running the prover's gRPC server, with clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

from proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from prover.servicer import ProverServicer

log = logging.getLogger("prover")

#: Largest message either side accepts (64 MiB); streams keep each chunk far below it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def build_server(
    servicer: ProverServicer, host: str, port: int, workers: int = 8
) -> tuple[grpc.Server, int]:
    """Create (not start) a server bound to host:port; returns it and the bound port.

    Raises ``OSError`` with a readable message when the address cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prover"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=4 * workers,
    )
    pb_grpc.add_ProverServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {address} (address in use or not available)")
    return server, bound


def serve_forever(
    server: grpc.Server, grace_s: float = 5.0, on_started: Callable[[], None] | None = None
) -> None:
    """Start ``server`` and block until SIGINT or SIGTERM, then stop it gracefully.

    Signal handlers are installed before the server starts and before ``on_started`` runs, so a
    signal that arrives as soon as the server is announced still shuts it down cleanly.
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
        server.stop(grace_s).wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("server stopped")
