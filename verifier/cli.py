"""``verifier`` console command: ``verifier verify`` and ``verifier plan``.

Exit codes of ``verify``: 0 accepted, 1 rejected, 2 error (never accept on an error).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any

from protocol.accounting import Plan, plan_manual, plan_theory
from protocol.tasks import load_task
from protocol.tasks.base import Task
from verifier.certificate import CERTIFIED_MODES, CHECK_MODES
from verifier.practical_flow import PILOT_TUPLES

log = logging.getLogger("verifier")

#: Above this many local retrainings the verifier refuses to start and says so.
MAX_LOCAL_RETRAININGS = 10_000_000
#: Largest |E| a run will ask for: 4 × the prover's tuple limit (prover.session.MAX_TUPLES); the
#: verifier holds |E|·Z float64 f-values (about 2.6 GB at Z = 10).
MAX_MEMBERS = 4 * 8_000_000


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="synthetic", help="task selector NAME[:k=v,...] or a file")
    p.add_argument(
        "--epsilon", type=_positive_float, default=None, help="ε in squared units of f (0.2)"
    )
    p.add_argument(
        "--epsilon-rel",
        type=_positive_float,
        default=None,
        metavar="R",
        help="practical mode: ε = R·Var f, Var f lower-bounded from the verifier's own models",
    )
    p.add_argument("--delta", type=_positive_float, default=0.05, help="failure probability δ")
    p.add_argument("--mode", choices=["theory", "practical", "manual"], default="manual")
    p.add_argument(
        "--max-mse-samples",
        type=int,
        default=200_000,
        help="practical: cap on the sequential MSE sample",
    )
    p.add_argument(
        "--pilot-tuples",
        type=int,
        default=PILOT_TUPLES,
        help=f"practical: coupled tuples the sizing pilot retrains (10 models each; default "
        f"{PILOT_TUPLES}); a larger pilot predicts sizes better and costs verifier retrainings",
    )
    p.add_argument("--pairs", type=int, default=50_000, help="manual: coupled tuples (pairs/level)")
    p.add_argument("--spot-checks", type=int, default=64, help="manual: spot checks k")
    p.add_argument("--mse-samples", type=int, default=4_000, help="manual: MSE sample size |M|")
    p.add_argument("--rho", type=float, default=0.25, help="manual: correlation ρ")
    p.add_argument(
        "--checks",
        choices=["auto", *CHECK_MODES],
        default="auto",
        help="how challenges are checked: certified (every challenge from its weights with one "
        "gradient pass; strongly convex tasks only), certified-spot (sampled spot checks, each "
        "certified from its weights; the cheapest on large plans), retrain (spot checks by "
        "retraining), or auto (certified when the task supports it; in practical mode whichever "
        "of certified and certified-spot checks fewer models)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for the ``verifier`` command."""
    parser = argparse.ArgumentParser(prog="verifier", description="Verify a data attribution")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify a prover's attribution over gRPC")
    verify.add_argument("--prover", required=True, metavar="HOST:PORT")
    _add_plan_args(verify)
    verify.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds per call")
    verify.add_argument("--no-progress", action="store_true")
    verify.add_argument(
        "--certificate", metavar="FILE", help="write a signed JSON certificate of the verdict"
    )
    verify.add_argument("--report", metavar="DIR", help="write report.md and PNG plots to DIR")
    verify.add_argument(
        "--key",
        metavar="FILE",
        help="Ed25519 signing key, created on first use (default $ATTRIBUTION_VERIFIER_KEY or "
        "~/.config/verifiable-attribution/verifier.key)",
    )
    verify.add_argument("--tls-ca", metavar="PEM", help="TLS: CA that issued the prover's cert")
    verify.add_argument("--tls-cert", metavar="PEM", help="mutual TLS: the verifier's cert")
    verify.add_argument("--tls-key", metavar="PEM", help="mutual TLS: key of --tls-cert")
    verify.add_argument("--tls-server-name", metavar="NAME", help="TLS: expected server name")
    plan = sub.add_parser("plan", help="print the sizes and guarantee of a run without running it")
    _add_plan_args(plan)
    audit = sub.add_parser("audit", help="check a verdict certificate offline")
    audit.add_argument("certificate", metavar="CERT")
    audit.add_argument(
        "--public-key", metavar="HEX", help="also require the certificate to be signed by this key"
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def resolve_checks(args: argparse.Namespace, task: Task) -> str:
    """'certified', 'certified-spot' or 'retrain'; 'auto' is 'certified' when the task supports
    certified checks. Raises ``ValueError`` for a certified mode on a task without them."""
    from protocol.certify import supports_certified_checks

    if args.checks == "auto":
        return "certified" if supports_certified_checks(task) else "retrain"
    if args.checks != "retrain" and not supports_certified_checks(task):
        raise ValueError(
            f"--checks {args.checks}: task {task.name!r} does not support certified checks (it "
            "is not strongly convex); use --checks retrain"
        )
    return args.checks


def make_plan(args: argparse.Namespace, task: Task) -> Any:
    """The plan the arguments ask for; raises ``ValueError`` with a readable reason.

    With certified checks every challenge is checked (k = |E|, so no lie escapes: m* = 0); with
    certified-spot checks k is sampled as with retraining, and each check is a gradient pass.
    Practical mode first retrains a small pilot (counted in ``pilot_retrainings``).
    """
    if not 0 < args.delta < 1:
        raise ValueError(f"--delta must be in (0, 1), got {args.delta}")
    if args.epsilon is not None and args.epsilon_rel is not None:
        raise ValueError("give --epsilon or --epsilon-rel, not both")
    args.resolved_checks = resolve_checks(args, task)
    certified = args.resolved_checks == "certified"  # every member checked
    if args.mode == "practical":
        from verifier.practical_flow import make_practical_plan, run_pilot

        if args.max_mse_samples < 2:
            raise ValueError("--max-mse-samples must be at least 2")
        if args.pilot_tuples < 2:
            raise ValueError("--pilot-tuples must be at least 2")
        pilot = run_pilot(task, args.pilot_tuples)

        def sized(all_checked: bool) -> Any:
            return make_practical_plan(
                task,
                args.delta,
                epsilon=None if args.epsilon_rel is not None else (args.epsilon or 0.2),
                epsilon_rel=args.epsilon_rel,
                certified=all_checked,
                max_mse_samples=args.max_mse_samples,
                pilot=pilot,
            )[0]

        args.pilot_retrainings = pilot.retrainings
        if args.checks == "auto" and certified:
            # auto on a convex task: certify every member or a sample, whichever checks fewer
            # models (the same pilot sizes both; sampled checks pay for m* with a larger n)
            return _cheaper_certified_plan(args, sized)
        return sized(certified)
    if args.epsilon_rel is not None:
        raise ValueError("--epsilon-rel needs --mode practical (Var f is estimated there)")
    if args.pairs < 1 or args.spot_checks < 1 or args.mse_samples < 1:
        raise ValueError("--pairs, --spot-checks and --mse-samples must be positive")
    common = {
        "epsilon": args.epsilon or 0.2,
        "delta": args.delta,
        "output_bound": task.output_bound,
        "tolerance": task.tolerance,
        "num_targets": task.num_targets,
    }
    if args.mode == "theory":
        return plan_theory(**common)
    return plan_manual(
        **common,
        pairs_per_level=args.pairs,
        spot_checks=4 * args.pairs if certified else args.spot_checks,
        mse_samples=args.mse_samples,
        rho=args.rho,
    )


def _cheaper_certified_plan(args: argparse.Namespace, sized: Any) -> Any:
    """The practical plan with fewer verifier gradient passes: all members certified, or a sampled
    spot-check set certified; sets ``args.resolved_checks``. Raises the first plan's error when
    neither can be sized."""
    options = []
    errors = []
    for checks, all_checked in (("certified", True), ("certified-spot", False)):
        try:
            options.append((sized(all_checked), checks))
        except ValueError as exc:
            errors.append(exc)
    if not options:
        raise errors[0]
    plan, args.resolved_checks = min(options, key=lambda o: o[0].verifier_retrainings)
    return plan


def _plan_lines(plan: Any, task: Task, checks: str = "retrain") -> list[str]:
    unit = {
        "retrain": "retrainings",
        "certified": "gradient passes (certified checks)",
        "certified-spot": "gradient passes (certified spot checks)",
    }[checks]
    b = plan.budget
    eps = plan.epsilon if isinstance(plan.epsilon, float) else min(plan.epsilon)
    head = [
        f"plan ({plan.mode}): ε={eps:.4g}"
        + (
            f" (= {plan.epsilon_rel:g}·LCB(Var f), smallest target)"
            if getattr(plan, "epsilon_rel", None)
            else ""
        )
        + f" δ={plan.delta:g} b={plan.output_bound:.4g} τ={plan.tolerance:g} "
        f"Z={plan.num_targets} N={task.num_train_points}",
        f"  ρ={plan.rho:.4g}  pairs/level={plan.pairs_per_level}  singles={plan.singles}  "
        f"|E|={plan.num_members}  k={plan.spot_checks}  |M|={plan.mse_samples}"
        f"{' (cap)' if plan.mode == 'practical' else ''}  m*={plan.lie_allowance}",
    ]
    if plan.mode == "practical":
        return [
            *head,
            "  budget (predicted): " + ", ".join(f"{k} {v:.3g}" for k, v in b.items()),
            "  guarantee: non-asymptotic (empirical Bernstein residual, anytime-valid MSE "
            "confidence sequence); sizes are pilot predictions",
            f"  work: verifier ≤ {plan.verifier_retrainings} {unit}, "
            f"prover ≥ {plan.prover_retrainings}",
        ]
    return [
        *head,
        f"  budget: fit bias ≤ {b['fit_bias']:.4g}, residual ±{b['residual_halfwidth']:.4g}, "
        f"lies ≤ {b['lie_effect']:.4g}, τ charge {b['tau_charge']:.4g}, "
        f"MSE ±{b['mse_halfwidth_planned']:.4g} (if |g| ≤ b)",
        f"  certified ε at these sizes: {b['epsilon_certified']:.4g} "
        f"({'meets' if plan.guarantee_met else 'does NOT meet'} the requested ε={eps:g})",
        f"  work: verifier {plan.verifier_retrainings} {unit}, "
        f"prover ≥ {plan.prover_retrainings} retrainings",
    ]


def _print_result(result: Any, plan: Plan, task: Task) -> None:
    checks = (result.details.get("spot_check") or {}).get("mode")
    for line in _plan_lines(plan, task, checks if checks in CHECK_MODES else "retrain"):
        print(line)
    print(f"verdict: {result.verdict.upper()}")
    print(f"reason:  {result.reason}")
    if result.details.get("mode") == "practical":
        dec = result.details["decision"]
        for t in range(len(dec["epsilon"])):
            print(
                f"  target {t}: err ∈ [{dec['err_lower'][t]:.4g}, {dec['err_upper'][t]:.4g}] "
                f"vs ε={dec['epsilon'][t]:.4g}  (msê={dec['mse_estimate'][t]:.4g}, "
                f"B≥2 ∈ [{dec['residual_lower'][t]:.4g}, {dec['residual_upper'][t]:.4g}])"
            )
        print(f"  stopped: {result.details['stop_reason']}")
    elif result.mse_hat is not None:
        dec = result.details.get("decision", {})
        thr = dec.get("threshold", [])
        for t, (m, r) in enumerate(zip(result.mse_hat, result.residual_hat, strict=True)):
            extra = f" ≤? threshold {thr[t]:.5g}" if t < len(thr) else ""
            print(f"  target {t}: msê={m:.5g}  B̂≥2={r:.5g}{extra}")
        cert = dec.get("epsilon_certified")
        if cert is not None:
            print(f"  certified ε (with the claimed datamodel's range): {max(cert):.4g}")
    spot = result.details.get("spot_check")
    if spot and spot.get("mode") in CERTIFIED_MODES:
        which = "spot-checked" if spot.get("mode") == "certified-spot" else "all"
        print(
            f"  certified checks: {which} {spot['certified_models']} challenges from their "
            "weights; "
            f"largest gradient norm {spot['max_grad_norm']:.3g}, so |f − f*| ≤ "
            f"{spot['max_f_error_bound']:.3g} (τ = {spot['tolerance']:g})"
        )
    elif spot:
        print(
            f"  spot checks: {spot['spot_checks']} passed, max |diff| {spot['max_abs_diff']:.3g} "
            f"(τ = {spot['tolerance']:g})"
        )
    v, p = result.verifier_retrainings, result.prover_retrainings
    ratio = f" (prover ÷ verifier = {p / v:.1f})" if v else ""
    cost = result.details.get("verifier_cost")
    if cost:
        print(
            f"retrainings: verifier {v:.1f} retraining-equivalents ("
            f"{cost['gradient_passes']:.0f} gradient passes = "
            f"{cost['gradient_pass_retraining_equivalents']:.1f}, plus "
            f"{cost['calibration_retrainings']:.0f} calibration retrainings), prover {p}{ratio}"
        )
    else:
        print(f"retrainings: verifier {v}, prover {p}{ratio}")
    timings = result.details.get("timings", {})
    if timings:
        print("wall time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def _verify(args: argparse.Namespace) -> int:
    from verifier.client import run_verification
    from verifier.session import VerifierSession

    task = load_task(args.task)
    plan = make_plan(args, task)
    if plan.verifier_retrainings > MAX_LOCAL_RETRAININGS or plan.num_members > MAX_MEMBERS:
        raise ValueError(
            f"{plan.mode} mode needs {plan.verifier_retrainings} verifier retrainings and "
            f"|E| = {plan.num_members}; that is not runnable here — use --mode manual "
            "(see `verifier plan`)"
        )
    signing_key = _signing_key(args)  # fail on a bad key before any work
    session = VerifierSession(task, plan, selector=args.task, checks=args.resolved_checks)
    progress_ctx = None
    advance = None
    if not args.no_progress and not args.json:
        from protocol.progress import retraining_progress

        progress_ctx = retraining_progress(plan.verifier_retrainings, "verifier retraining")
        advance = progress_ctx.__enter__()
    try:
        result = run_verification(
            session,
            args.prover,
            timeout_s=args.timeout,
            progress=advance,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_server_name=args.tls_server_name,
        )
    finally:
        if progress_ctx is not None:
            progress_ctx.__exit__(None, None, None)
    pilot = getattr(args, "pilot_retrainings", 0)
    if pilot:
        result.verifier_retrainings += pilot
        result.details["pilot_retrainings"] = pilot
    if args.json:
        print(json.dumps(result.to_dict(), default=_json_default))
    else:
        _print_result(result, plan, task)
    _write_outputs(args, result, session, signing_key)
    return result.exit_code


def _signing_key(args: argparse.Namespace) -> Any:
    """The verifier's Ed25519 key when ``--certificate`` is given (``KeyFileError`` if unsafe)."""
    if not getattr(args, "certificate", None):
        return None
    from verifier.certificate import load_or_create_key

    return load_or_create_key(args.key)


def _write_outputs(args: argparse.Namespace, result: Any, session: Any, key: Any) -> None:
    """Write the signed certificate and the readable report the options ask for."""
    out = sys.stderr if args.json else sys.stdout
    cert_path = getattr(args, "certificate", None)
    if cert_path:
        from verifier.certificate import CertificateError, build_certificate, write_certificate

        try:
            cert = build_certificate(
                result, session, key, checks=session.checks, epsilon_rel=args.epsilon_rel
            )
            write_certificate(cert_path, cert)
            print(f"certificate: {cert_path} (check with `verifier audit {cert_path}`)", file=out)
        except CertificateError as exc:
            cert_path = None
            print(f"certificate: not written: {exc}", file=out)
    if getattr(args, "report", None):
        from verifier.report import write_report

        ident = session.task.identity()
        path = write_report(
            args.report,
            result.to_dict(),
            session.intercepts,
            session.coefficients,
            task={
                "selector": session.selector,
                "task_hash": ident.task_hash,
                "spec_hash": ident.spec_hash,
                "data_hash": ident.data_hash,
            },
            certificate_path=cert_path,
        )
        print(f"report: {path}", file=out)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _verifier_cost(plan: Any, task: Task, checks: str, pilot: int) -> float:
    """Verifier cost in retraining-equivalents (certified checks cost one gradient pass each:
    every member of E for ``certified``, the plan's sampled k for ``certified-spot``)."""
    if checks == "retrain":
        return float(plan.verifier_retrainings + pilot)
    from verifier.certified import certified_cost

    checked = (
        (plan.num_members if checks == "certified" else plan.spot_checks)
        + plan.mse_samples
        + getattr(plan, "variance_samples", 0) * (getattr(plan, "epsilon_rel", None) is not None)
    )
    return certified_cost(task, int(checked))["retraining_equivalents"] + pilot


def _plan(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    checks = resolve_checks(args, task)
    plans: dict[str, Any] = {}
    costs: dict[str, float] = {}
    mode_checks: dict[str, str] = {}
    epsilon_rel = args.epsilon_rel
    for mode in ("practical", "theory", "manual"):
        args.mode = mode
        args.pilot_retrainings = 0
        if mode != "practical" and epsilon_rel is not None:
            # Theory and manual need an absolute ε: use the practical plan's resolved ε.
            practical = plans.get("practical")
            if not isinstance(practical, Exception) and practical is not None:
                args.epsilon, args.epsilon_rel = min(practical.epsilon), None
        try:
            plans[mode] = make_plan(args, task)
            mode_checks[mode] = args.resolved_checks
            costs[mode] = _verifier_cost(
                plans[mode], task, args.resolved_checks, args.pilot_retrainings
            )
        except ValueError as exc:
            plans[mode] = exc
    ok = {m: p for m, p in plans.items() if not isinstance(p, Exception)}
    summary: dict[str, Any] = {
        "checks": mode_checks.get("practical", checks),
        "theory_verifier_retrainings": costs.get("theory"),
        "practical_verifier_retrainings": costs.get("practical"),
        "manual_verifier_retrainings": costs.get("manual"),
        "prover_retrainings": ok["practical"].prover_retrainings if "practical" in ok else None,
        "ratio": (
            costs["theory"] / costs["practical"]
            if "theory" in costs and "practical" in costs
            else None
        ),
    }
    for m, cost in costs.items():
        summary[f"{m}_leverage"] = ok[m].prover_retrainings / cost if cost else None
    if args.json:
        out = {
            **summary,
            **{m: (p.to_dict() if m in ok else {"error": str(p)}) for m, p in plans.items()},
        }
        print(json.dumps(out, default=_json_default))
        return 0
    for mode, p in plans.items():
        if mode in ok:
            for line in _plan_lines(p, task, mode_checks[mode]):
                print(line)
            unit = "retraining-equivalents" if mode_checks[mode] != "retrain" else "retrainings"
            print(
                f"  verifier cost {costs[mode]:.4g} {unit}; leverage prover ÷ verifier = "
                f"{p.prover_retrainings / costs[mode]:.3g}"
            )
        else:
            print(f"plan ({mode}): not available: {p}")
    if summary["ratio"] is not None:
        print(f"theory ÷ practical verifier cost: {summary['ratio']:.3g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for the ``verifier`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s verifier %(levelname)s %(message)s"
    )
    try:
        if args.command == "verify":
            return _verify(args)
        if args.command == "audit":
            from verifier.audit import audit_main

            return audit_main(args.certificate, args.public_key, args.json)
        return _plan(args)
    except ValueError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"verdict": "error", "reason": str(exc)}))
        else:
            print(f"verifier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verifier: interrupted; no verdict", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
