"""``prover`` console command: ``prover serve`` and ``prover precompute``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from protocol.tasks import load_task

log = logging.getLogger("prover")

DEFAULT_STORE = "prover-store.sqlite3"
#: Fixed default seed for the datamodel's own samples, so a restarted prover reuses its work.
DEFAULT_SAMPLE_SEED = "00" * 32


def _sample_seed(text: str) -> bytes:
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sample-seed must be hex, got {text!r}") from exc
    if not seed:
        raise argparse.ArgumentTypeError("--sample-seed must not be empty")
    return seed


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="synthetic", help="task selector NAME[:k=v,...] or a file")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite result store (resumable)")
    p.add_argument("--samples", type=int, default=None, help="datamodel regression samples")
    p.add_argument("--sample-seed", type=_sample_seed, default=bytes.fromhex(DEFAULT_SAMPLE_SEED))
    p.add_argument("--method", default="auto", choices=["auto", "ols", "ridge", "lasso"])
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the ``prover`` command."""
    parser = argparse.ArgumentParser(
        prog="prover", description="Verifiable data attribution prover"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a gRPC prover server")
    _add_common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    serve.add_argument("--workers", type=int, default=8)
    serve.add_argument("--max-sessions", type=int, default=16)
    serve.add_argument(
        "--stall-before-commit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fault injection for tests: sleep this long before answering each challenge",
    )
    serve.add_argument(
        "--cheat",
        default=None,
        metavar="NAME:STRENGTH",
        help="ADVERSARIAL: run a cheating strategy, e.g. scale:0.5 or fabricate:0.3",
    )
    pre = sub.add_parser("precompute", help="retrain and fit the datamodel ahead of any session")
    _add_common(pre)
    return parser


def _attribution(args: argparse.Namespace, task: object):  # type: ignore[no-untyped-def]
    from prover.attribution import default_num_samples, fit_attribution

    samples = args.samples if args.samples is not None else default_num_samples(task)  # type: ignore[arg-type]
    if samples < 1:
        raise ValueError(f"--samples must be positive, got {samples}")
    return fit_attribution(
        task,  # type: ignore[arg-type]
        args.store,
        samples,
        args.sample_seed,
        method=args.method,
        progress=not args.no_progress,
    )


def _serve(args: argparse.Namespace) -> int:
    from prover.server import build_server, serve_forever
    from prover.servicer import ProverServicer
    from prover.session import SessionRegistry
    from prover.strategy import ChallengeRetrainer, HonestStrategy

    cheat = None
    if args.cheat:
        from simulations.cheats import make_cheat, parse_cheat

        cheat = parse_cheat(args.cheat)
    task = load_task(args.task)
    log.info(
        "task %s: N=%d, Z=%d, hash %s",
        args.task,
        task.num_train_points,
        task.num_targets,
        task.identity().task_hash[:16],
    )
    attribution = _attribution(args, task)

    def factory() -> HonestStrategy:
        retrainer = ChallengeRetrainer(task, stall_s=args.stall_before_commit)
        if cheat is not None:
            return make_cheat(cheat[0], cheat[1], task, attribution, retrainer)
        return HonestStrategy(task, attribution, retrainer)

    info = factory().describe()
    if cheat is not None:
        banner = f"*** ADVERSARIAL PROVER: {args.cheat} — this server cheats on purpose ***"
        log.warning(banner)
        info = f"ADVERSARIAL {args.cheat}: {info}"
    try:
        host_ip = ipaddress.ip_address(args.host)
        loopback = host_ip.is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        log.warning("serving plain-text gRPC on non-loopback address %s", args.host)
    servicer = ProverServicer(task, factory, SessionRegistry(args.max_sessions), info)
    server, port = build_server(servicer, args.host, args.port, args.workers)

    def announce() -> None:
        log.info("listening on %s:%d (%s)", args.host, port, info)
        print(f"LISTENING {args.host}:{port}", flush=True)

    serve_forever(server, on_started=announce)
    return 0


def _precompute(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    attribution = _attribution(args, task)
    print(
        f"datamodel ready: {attribution.method} on {attribution.num_samples} samples, "
        f"stored in {Path(args.store).resolve()}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit 0 on clean shutdown, 2 on bad input or a startup error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s prover %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "serve":
            return _serve(args)
        return _precompute(args)
    except (ValueError, OSError) as exc:
        print(f"prover: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
