"""``prover`` console command: ``prover serve`` and ``prover precompute``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from protocol.tasks import load_task_on
from prover.claim_file import Basis
from prover.datamodel import CLAIM_METHODS
from prover.precompute import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLE_SEED
from prover.store import DEFAULT_STORE

log = logging.getLogger("prover")


def _sample_seed(text: str) -> bytes:
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--sample-seed must be hex, got {text!r}") from exc
    if not seed:
        raise argparse.ArgumentTypeError("--sample-seed must not be empty")
    return seed


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_claim_options(p: argparse.ArgumentParser) -> None:
    """--method, --device and --ray: how and where the prover makes its claim (the one home of
    these options, for ``prover serve`` and ``prover precompute``)."""
    p.add_argument(
        "--method",
        default="auto",
        choices=CLAIM_METHODS,
        help="how the claim is made: a regression on the samples (auto, ols, ridge, lasso) or, "
        "for logistic-regression tasks, an influence method (if-mean, calibrated on 512 "
        "samples; if-full, if-mean-raw, rif, rif-mean, ns, empirical-influence, ridge-prior; "
        "prover/influence.py)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="retrain on a Ray cluster: ADDRESS of `ray start --head`, or none for a local "
        "one (needs the extra: pip install -e '.[ray]')",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where retraining runs: auto (CUDA when available), cpu, cuda or cuda:I; results "
        "are the same function of (task, subset, seed) on each (docs/retraining.md)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="synthetic", help="task selector NAME[:k=v,...] or a file")
    p.add_argument("--store", default=DEFAULT_STORE, help="SQLite result store (resumable)")
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help="datamodel samples K (default: 20 per training point, at least 2,000; 512 for an "
        "influence method)",
    )
    p.add_argument(
        "--sample-seed",
        type=_sample_seed,
        default=DEFAULT_SAMPLE_SEED,
        help="hex seed the samples are derived from (default: 32 zero bytes)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_claim_options(p)


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
    serve.add_argument("--max-sessions", type=int, default=16, help="live sessions at most")
    serve.add_argument(
        "--session-ttl",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a session idle this long is forgotten (default 600)",
    )
    serve.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=None,
        help="RPCs in flight at most; more are refused with RESOURCE_EXHAUSTED (4 × workers)",
    )
    tls = serve.add_argument_group("transport security (see docs/transport-security.md)")
    tls.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: serve TLS")
    tls.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    tls.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: require client certificates issued by this CA",
    )
    tls.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="allow plain-text gRPC on a non-loopback address (refused otherwise)",
    )
    serve.add_argument(
        "--stall-before-commit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fault injection for tests: sleep this long before answering each challenge",
    )
    serve.add_argument(
        "--attribution",
        metavar="FILE",
        help="serve this claim (c, a) instead of fitting one: .npz (intercepts, coefficients), "
        ".npy or .csv with one row per target of N coefficients then the intercept; challenges "
        "are still answered honestly by retraining (prover/claim_file.py)",
    )
    serve.add_argument(
        "--attribution-basis",
        choices=[b.value for b in Basis],
        default=Basis.PM1.value,
        help="what the file's coefficients multiply: pm1 (x = 2·mask − 1, the protocol's) or "
        "mask (the 0/1 indicator most tools export)",
    )
    pre = sub.add_parser(
        "precompute",
        help="retrain seeded datamodel samples (resumably) and fit the claim ahead of any session",
    )
    _add_common(pre)
    pre.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="models per batch"
    )
    pre.add_argument("--json", action="store_true", help="print the run's report as one JSON line")
    pre.add_argument(
        "--export-attribution",
        metavar="FILE",
        help="also write the claim to FILE (.npz with the task hash, .npy or .csv)",
    )
    return parser


def _attribution(  # type: ignore[no-untyped-def]
    args: argparse.Namespace, task: object, batch_size: int = DEFAULT_BATCH_SIZE
):
    from prover.attribution import fit_attribution

    return fit_attribution(
        task,  # type: ignore[arg-type]
        args.store,
        args.samples,
        args.sample_seed,
        method=args.method,
        progress=not args.no_progress,
        pool=_pool(args),
        batch_size=batch_size,
    )


def _pool(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The Ray pool ``--ray`` asks for (one per process), or None."""
    if getattr(args, "_pool", None) is None and args.ray is not None:
        from prover.ray_pool import pool_from_option

        args._pool = pool_from_option(args.ray)
    return getattr(args, "_pool", None)


def _transport_credentials(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Validate the serve limits and TLS flags; TLS credentials, or None for plain text.

    Raises ``ValueError`` (exit 2) for inconsistent flags, unreadable PEM files, or plain text on a
    non-loopback address without ``--insecure-plaintext``; logs a warning when it is allowed.
    """
    from prover.tls import check_plaintext_policy, server_credentials

    if args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be positive, got {args.max_sessions}")
    if not args.session_ttl > 0:
        raise ValueError(f"--session-ttl must be positive, got {args.session_ttl}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = bool(args.tls_cert)
    if tls and args.insecure_plaintext:
        raise ValueError("--insecure-plaintext contradicts --tls-cert")
    warning = check_plaintext_policy(args.host, tls, args.insecure_plaintext)
    if warning:
        log.warning(warning)
    if not tls:
        return None
    return server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)


def _serve(args: argparse.Namespace) -> int:
    from prover.api import honest_servicer
    from prover.server import run_prover

    credentials = _transport_credentials(args)
    task = load_task_on(args.task, args.device)
    log.info(
        "task %s: N=%d, Z=%d, hash %s",
        args.task,
        task.num_train_points,
        task.num_targets,
        task.identity().task_hash[:16],
    )
    if args.attribution:
        from prover.claim_file import load_attribution_file

        attribution = load_attribution_file(args.attribution, task, args.attribution_basis)
        log.info("claim: %s (%d targets × %d)", attribution.method, *attribution.coefficients.shape)
    else:
        attribution, _ = _attribution(args, task)

    servicer = honest_servicer(
        task,
        attribution,
        args.max_sessions,
        args.session_ttl,
        args.stall_before_commit,
        pool=_pool(args),
    )
    security = "plain text"
    if credentials is not None:
        security = "mutual TLS" if args.tls_client_ca else "TLS"
    run_prover(
        servicer,
        args.host,
        args.port,
        args.workers,
        credentials=credentials,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        security=security,
    )
    return 0


def _precompute(args: argparse.Namespace) -> int:
    task = load_task_on(args.task, args.device)
    attribution, report = _attribution(args, task, args.batch_size)
    if args.json:
        print(report.to_json(), flush=True)
    else:
        print(
            f"datamodel ready: {attribution.method} on {attribution.num_samples} samples "
            f"({report.retrained} retrained, {report.reused} reused, {report.wall_s:.1f}s, "
            f"{report.models_per_s:.1f} models/s), stored in {Path(args.store).resolve()}",
            flush=True,
        )
    if args.export_attribution:
        from prover.claim_file import save_attribution_file

        print(
            f"claim written to {save_attribution_file(args.export_attribution, attribution, task)}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit 0 on clean shutdown or a finished precompute, 2 on bad arguments, bad
    input or a startup error, 130 when interrupted (a precompute's finished batches are kept)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for bad arguments
        return int(exc.code or 0)
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
        if args.command == "precompute":
            print(
                "prover: interrupted; finished batches are stored, rerun to resume", file=sys.stderr
            )
        return 130


if __name__ == "__main__":
    sys.exit(main())
