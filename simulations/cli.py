"""``simulations`` console command: cheating gRPC servers and acceptance sweeps.

* ``simulations serve ADVERSARY --strength S --port P [--task T]``: a real gRPC prover that cheats
  (prints ``LISTENING host:port`` like ``prover serve``; logs say ADVERSARIAL).
* ``simulations run [--quick] [--json] [--grpc] [--real] ...``: sweep adversary × strength × ε ×
  trials against the real verifier; resumable (``OUT/cells.jsonl``), writes ``table.md`` and plots.
* ``simulations list``: the catalogue.
* ``simulations validity [--trials N] [--report DIR] [--json] [--quick]``: the Monte-Carlo
  validity grid of the practical verifier (:mod:`simulations.validity`); exit 1 if a cell shows a
  violation of the guarantee (err ≥ ε accepted more often than δ).
* ``simulations merge-trials SRC... --into DEST``: append the trials DEST lacks (a grid split by
  ``--first``/``--step``); refuses a trial that differs from the kept one.

Exit codes: 0 done, 2 bad input or startup error, 130 interrupted (finished cells are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from prover.datamodel import CLAIM_METHODS

log = logging.getLogger("simulations")

#: The quick grid at ε = 0.2 on synthetic n = 100 (B_1 = 0.8, B≥2 = 0.2): every adversary at
#: strengths with err ≥ 1.25ε (scale 0.44, boost 0.16 and intercept 0.5 keep msê ≤ Var f / 2,
#: so the naive verifier accepts them), the answer attacks at small fractions, 2 trials each.
QUICK_GRID: dict[str, tuple[float, ...]] = {
    "honest": (1.0,),
    "scale": (0.44, 0.3),
    "boost": (0.16, 0.2),
    "noise": (0.06,),
    "intercept": (0.5,),
    "weak": (60.0,),
    "lazy": (0.01,),
    "targeted": (0.3,),
    "wrong-subset": (0.01,),
    "wrong-seed": (0.01,),
    "equivocate": (0.01,),
    "replay": (0.1,),
    "fp-noise": (1e-10,),
}
QUICK_SIZES = {"pairs": 10_000, "spot_checks": 64, "mse_samples": 4_000, "trials": 2}
#: Lies the targeted adversary spends in a sweep (it cannot see the verifier's m*).
SWEEP_LIES = 64


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the ``simulations`` command."""
    from simulations.adversaries import ADVERSARIES, ALIASES

    names = ["honest", *ADVERSARIES, *ALIASES]
    parser = argparse.ArgumentParser(
        prog="simulations", description="Adversarial provers against the real verifier"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a cheating gRPC prover (ADVERSARIAL)")
    serve.add_argument(
        "adversary",
        metavar="ADVERSARY[:STRENGTH]",
        help=f"one of {', '.join(names)}; the strength may follow a colon (scale:0.5)",
    )
    serve.add_argument("--strength", type=float, default=None)
    serve.add_argument("--task", default="synthetic")
    serve.add_argument(
        "--store",
        default=None,
        help="the honest datamodel from this resumable store, exactly as `prover serve` builds "
        "it (`prover precompute` fills it); without it, the exact truth on synthetic tasks, else "
        "--honest-samples fresh retrainings",
    )
    serve.add_argument("--samples", type=int, default=None, help="with --store: its samples")
    serve.add_argument(
        "--method",
        default="auto",
        choices=CLAIM_METHODS,
        help="with --store: how the honest claim is made, as for `prover serve --method`",
    )
    serve.add_argument("--session-ttl", type=float, default=600.0, metavar="SECONDS")
    serve.add_argument("--no-progress", action="store_true")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50061, help="0 picks a free port")
    serve.add_argument("--workers", type=int, default=8)
    serve.add_argument("--max-sessions", type=int, default=16)
    serve.add_argument("--seed", type=int, default=0, help="the adversary's own randomness")
    serve.add_argument("--epsilon", type=float, default=0.2, help="targeted: the verifier's ε")
    serve.add_argument(
        "--lie-allowance",
        type=int,
        default=None,
        help="targeted: m* (default: from a manual plan with --pairs/--spot-checks)",
    )
    serve.add_argument("--pairs", type=int, default=50_000)
    serve.add_argument("--spot-checks", type=int, default=64)
    serve.add_argument(
        "--honest-samples",
        type=int,
        default=2_000,
        help="non-synthetic tasks: regression samples of the honest attribution",
    )

    run = sub.add_parser("run", help="sweep adversary × strength × ε × trials")
    run.add_argument("--quick", action="store_true", help="small fixed-seed grid (minutes)")
    run.add_argument("--json", action="store_true", help="print one JSON object with the cells")
    run.add_argument("--grpc", action="store_true", help="over real gRPC servers, not in-process")
    run.add_argument("--real", action="store_true", help="also scaling/boosting on digits-logreg")
    run.add_argument("--out", type=Path, default=None, help="output dir (default runs/sweep…)")
    run.add_argument("--task", default=None, help="synthetic task selector")
    run.add_argument("--mode", choices=["practical", "manual"], default="practical")
    run.add_argument("--adversaries", default=None, help="comma-separated subset of the grid")
    run.add_argument("--strengths", type=_floats, default=None, help="override every strength")
    run.add_argument("--epsilons", type=_floats, default=None)
    run.add_argument("--trials", type=int, default=None)
    run.add_argument("--pairs", type=int, default=None)
    run.add_argument("--spot-checks", type=int, default=None)
    run.add_argument("--mse-samples", type=int, default=None)
    run.add_argument("--rho", type=float, default=0.25)
    run.add_argument("--delta", type=float, default=0.05)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    run.add_argument("--no-plots", action="store_true")
    run.add_argument("--no-progress", action="store_true")

    sub.add_parser("list", help="print the adversary catalogue")

    merge = sub.add_parser(
        "merge-trials", help="fold trials.jsonl files (e.g. a cell split by --first) into one"
    )
    merge.add_argument("sources", type=Path, nargs="+", help="trials.jsonl files to read")
    merge.add_argument("--into", type=Path, required=True, help="the trials.jsonl to extend")

    mc = sub.add_parser("validity", help="Monte-Carlo validity grid of the practical verifier")
    mc.add_argument("--trials", type=int, default=None, help="trials per cell (200; --quick: 4)")
    mc.add_argument("--out", type=Path, default=Path("runs") / "validity", help="trials.jsonl dir")
    mc.add_argument("--report", type=Path, default=None, help="write table.md and PNG here")
    mc.add_argument("--json", action="store_true", help="print one JSON object with the rows")
    mc.add_argument("--quick", action="store_true", help="one small cell, 4 trials (minutes)")
    mc.add_argument("--seed", type=int, default=0)
    mc.add_argument(
        "--first",
        type=int,
        default=0,
        help="run trials FIRST, FIRST+STEP, … only (split a grid over processes; trials are "
        "keyed by index, so the split does not change them)",
    )
    mc.add_argument("--step", type=int, default=1, help="stride of the trials this run takes")
    mc.add_argument("--no-progress", action="store_true")
    mc.add_argument("--no-run", action="store_true", help="only report the trials in --out")
    mc.add_argument("--epsilons", type=_floats, default=(0.2, 0.1), help="ε relative to Var f")
    mc.add_argument("--ns", type=_floats, default=(100, 10_000))
    mc.add_argument("--zs", type=_floats, default=(1, 10))
    return parser


# ---------------------------------------------------------------------------------------------
# serve


def _serve(args: argparse.Namespace) -> int:
    from protocol.tasks import load_task
    from prover.server import run_prover
    from prover.servicer import ProverServicer
    from prover.session import SessionRegistry
    from prover.tls import check_plaintext_policy
    from simulations.adversaries import AttackContext, make_adversary
    from simulations.sweep import honest_attribution

    # Same policy as prover serve: plain text only on loopback (no TLS flags here).
    check_plaintext_policy(args.host, tls=False, insecure_plaintext=False)
    name, strength = _adversary_spec(args.adversary, args.strength)
    if not args.session_ttl > 0:
        raise ValueError(f"--session-ttl must be positive, got {args.session_ttl}")
    task = load_task(args.task)
    m_star = SWEEP_LIES if args.lie_allowance is None else args.lie_allowance
    context = AttackContext(epsilon=args.epsilon, lie_allowance=m_star, seed=args.seed)
    if args.store is not None:
        from prover.attribution import fit_attribution
        from prover.precompute import DEFAULT_SAMPLE_SEED

        attribution, _ = fit_attribution(
            task, args.store, args.samples, DEFAULT_SAMPLE_SEED, method=args.method,
            progress=not args.no_progress,
        )  # fmt: skip
    else:
        attribution = honest_attribution(task, args.honest_samples, args.seed)

    def factory() -> Any:
        return make_adversary(name, strength, task, attribution, context=context)

    strategy = factory()
    info = strategy.describe()
    if name != "honest":
        log.warning(
            "*** ADVERSARIAL PROVER: %s strength %g — this server cheats on purpose ***",
            name,
            strength,
        )
        if not info.startswith("ADVERSARIAL"):
            info = f"ADVERSARIAL {info}"
    err = getattr(strategy, "true_err", lambda: None)()
    if err is not None:
        log.info("true err of the claimed attribution: %.6g", err)
    registry = SessionRegistry(args.max_sessions, ttl_s=args.session_ttl)
    servicer = ProverServicer(task, factory, registry, info)
    run_prover(servicer, args.host, args.port, args.workers)
    return 0


def _adversary_spec(text: str, strength: float | None) -> tuple[str, float]:
    """(canonical name, strength) from ``NAME`` plus ``--strength``, or ``NAME:STRENGTH``.

    Raises ``ValueError`` (exit 2) naming the valid adversaries, for a missing, doubled or
    non-finite strength.
    """
    from simulations.adversaries import resolve

    name, sep, value = text.partition(":")
    canonical = resolve(name)
    if sep:
        if strength is not None:
            raise ValueError(f"give the strength once: {text!r} and --strength {strength:g}")
        try:
            strength = float(value)
        except ValueError:
            raise ValueError(f"adversary strength must be a number, got {value!r}") from None
    if strength is None:
        if canonical != "honest":
            raise ValueError(f"adversary {name!r} needs a strength: {name}:S or --strength S")
        strength = 1.0
    if not math.isfinite(strength):
        raise ValueError(f"adversary strength must be finite, got {strength!r}")
    return canonical, float(strength)


# ---------------------------------------------------------------------------------------------
# run


def _grid(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    from simulations.adversaries import ADVERSARIES, resolve

    if args.quick:
        grid = dict(QUICK_GRID)
    else:
        grid = {"honest": (1.0,)}
        grid.update({name: cls.default_strengths for name, cls in ADVERSARIES.items()})
    if args.adversaries:
        chosen = [resolve(a.strip()) for a in args.adversaries.split(",") if a.strip()]
        grid = {a: grid.get(a, QUICK_GRID.get(a, (1.0,))) for a in chosen}
    if args.strengths:
        grid = {a: (1.0,) if a == "honest" else args.strengths for a in grid}
    return grid


def _cells(args: argparse.Namespace) -> list[Any]:
    from simulations.report import ATTRIBUTION_ATTACKS
    from simulations.sweep import CellSpec

    epsilons = args.epsilons or ((0.2,) if args.quick else (0.1, 0.2))
    cells = []
    for name, strengths in _grid(args).items():
        # Answer attacks do not depend on ε: run them at the largest ε only (unless asked).
        eps_for = epsilons
        if name not in ATTRIBUTION_ATTACKS and name != "honest" and not args.epsilons:
            eps_for = (max(epsilons),)
        for eps in eps_for:
            for s in strengths:
                cells.append(CellSpec(name, float(s), float(eps)))
    return cells


def _config(args: argparse.Namespace) -> Any:
    from simulations.sweep import SYNTHETIC_TASK, SweepConfig

    sizes = QUICK_SIZES if args.quick else {"pairs": 20_000, "spot_checks": 64,
                                            "mse_samples": 4_000, "trials": 10}  # fmt: skip
    return SweepConfig(
        task=args.task or SYNTHETIC_TASK,
        mode=args.mode,
        pairs=_given(args.pairs, sizes["pairs"]),
        spot_checks=_given(args.spot_checks, sizes["spot_checks"]),
        mse_samples=_given(args.mse_samples, sizes["mse_samples"]),
        rho=args.rho,
        delta=args.delta,
        trials=_given(args.trials, sizes["trials"]),
        seed=args.seed,
        grpc=args.grpc,
    )


def _summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = (
        "adversary", "strength", "epsilon", "delta", "true_err", "true_err_se", "err_over_epsilon",
        "trials", "accepts", "accept_rate", "accept_lower", "accept_upper", "naive_accept_rate",
        "naive_accept_upper", "outcomes", "verifier_retrainings", "prover_retrainings",
        "lies_mean", "task", "transport", "checks", "mode", "seconds",
    )  # fmt: skip
    return [{k: r.get(k) for k in keep} for r in records]


def _run(args: argparse.Namespace) -> int:
    from simulations.report import write_report
    from simulations.sweep import run_sweep

    for name in ("prover", "verifier", "progress"):  # one line per session would drown the sweep
        logging.getLogger(name).setLevel(logging.WARNING)
    config = _config(args)
    cells = _cells(args)
    default_out = "runs/sweep-quick" if args.quick else "runs/sweep"
    out = args.out or Path(default_out + ("-grpc" if args.grpc else ""))
    show = not args.no_progress
    result = run_sweep(cells, config, out, progress=show, max_cells=args.max_cells)
    records = list(result.records)
    computed, reused, interrupted = result.computed, result.reused, result.interrupted
    if args.real and not interrupted:
        from simulations.real import run_real

        real = run_real(out / "real", progress=show, grpc=args.grpc)
        records += real.records
        computed += real.computed
        reused += real.reused
        interrupted = real.interrupted
    write_report(records, out, title="Adversary sweep", plots=not args.no_plots)
    payload = {
        "out_dir": str(out),
        "config": {**config.__dict__},
        "computed": computed,
        "reused": reused,
        "interrupted": interrupted,
        "pending": len(cells) - len(result.records),
        "cells": _summary(records),
    }
    if args.json:
        print(json.dumps(payload))
    else:
        _print_table(records, out, computed, reused)
    return 130 if interrupted else 0


def _print_table(records: list[dict[str, Any]], out: Path, computed: int, reused: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"acceptance ({computed} cells computed, {reused} reused) → {out}")
    for col in ("adversary", "strength", "ε", "true err", "trials", "accept [95% CI]", "naive"):
        table.add_column(col)
    for r in records:
        err = "—" if r["true_err"] is None else f"{r['true_err']:.3g}"
        table.add_row(
            r["adversary"],
            f"{r['strength']:g}",
            f"{r['epsilon']:g}",
            err,
            str(r["trials"]),
            f"{r['accept_rate']:.2f} [{r['accept_lower']:.2f}, {r['accept_upper']:.2f}]",
            f"{r['naive_accept_rate']:.2f}",
        )
    Console().print(table)


def _given(value: Any, default: Any) -> Any:
    """``value`` unless the flag was not given (None): an explicit 0 is kept, to be refused."""
    return default if value is None else value


def _montecarlo(args: argparse.Namespace) -> int:
    from simulations.validity import QUICK_CELL, run_cells, validity_cells

    trials = args.trials if args.trials is not None else (4 if args.quick else 200)
    if trials < 1:
        raise ValueError("--trials must be >= 1")
    if not 0 <= args.first < trials:
        raise ValueError(f"--first must lie in [0, --trials), got {args.first}")
    cells = [QUICK_CELL] if args.quick else validity_cells(args.epsilons, args.ns, args.zs)
    progress: Any = None
    bar: Any = None
    if args.no_run:
        path = args.out / "trials.jsonl"
        if not path.exists():
            raise ValueError(f"--no-run: no trials file at {path}")
        return _mc_report(args, cells, path)
    if not args.no_progress and not args.json:
        from rich.progress import Progress

        bar = Progress(transient=False)
        tasks = {c.key(): bar.add_task(c.label, total=trials) for c in cells}
        bar.start()

        def progress(cell: Any, done: int, total: int) -> None:
            bar.update(tasks[cell.key()], completed=done)

    try:
        path = run_cells(cells, trials, args.out, seed=args.seed, progress=progress,
                         first=args.first, step=args.step)  # fmt: skip
    finally:
        if bar is not None:
            bar.stop()
    return _mc_report(args, cells, path)


def _mc_report(args: argparse.Namespace, cells: list[Any], path: Path) -> int:
    from simulations.validity import summarise, verdict_on_row
    from simulations.validity_report import markdown_table, plot_grid

    rows = [r for r in summarise(cells, path) if r["trials"]]
    for r in rows:
        r["against_guarantee"] = verdict_on_row(r)
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "table.md").write_text(markdown_table(rows), encoding="utf-8")
        plot_grid(rows, args.report / "validity.png")
    if args.json:
        print(json.dumps({"command": args.command, "trials_file": str(path), "cells": rows}))
    else:
        print(markdown_table(rows))
        print(f"trials: {path} (rerun to resume or extend)")
    bad = [r for r in rows if r["against_guarantee"] == "VIOLATION"]
    return 1 if bad else 0


def _list() -> int:
    from simulations.adversaries import ADVERSARIES

    for name, cls in ADVERSARIES.items():
        print(f"{name:13s} strength = {cls.strength_doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring for exit codes)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s simulations %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "run":
            return _run(args)
        if args.command == "validity":
            return _montecarlo(args)
        if args.command == "merge-trials":
            from simulations.validity import merge_trials

            counts = merge_trials(args.sources, args.into)
            print(f"{args.into}: {counts['added']} trials added, {counts['already']} already there")
            return 0
        return _list()
    except (ValueError, OSError) as exc:
        print(f"simulations: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simulations: interrupted; finished cells are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
