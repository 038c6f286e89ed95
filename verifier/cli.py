"""``verifier`` console command: ``verifier verify`` and ``verifier plan``.

Exit codes of ``verify``: 0 accepted (the (ε, δ) guarantee holds at the requested ε), 1 rejected,
2 error (never accept on an error), 3 inconclusive (the run certifies only a looser ε; it says
which).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any

from protocol.accounting import Plan
from protocol.jsonable import json_default
from protocol.rules.base import CheckMode, RuleName, Verdict
from protocol.rules.practical import (
    DEFAULT_MSE_CAP,
    DEFAULT_TUPLE_CAP,
    PILOT_TUPLES,
    PracticalPlan,
)
from protocol.tasks import load_task
from protocol.tasks.base import Task
from protocol.untrusted import printable
from verifier.planning import PlanOptions, check_runnable, make_verifier_plan, predict_practical

log = logging.getLogger("verifier")


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
        help="practical mode: ε = R·Var f, Var f bounded from the verifier's own models",
    )
    p.add_argument("--delta", type=_positive_float, default=0.05, help="failure probability δ")
    p.add_argument(
        "--mode",
        choices=[r.value for r in RuleName],
        default=RuleName.PRACTICAL.value,
        help="practical (default: accept only when err ≤ ε is guaranteed w.p. ≥ 1 − δ), or the "
        "paper's rule at manual or theory sizes (for study; accept only if its sizes certify ε, "
        "else inconclusive)",
    )
    p.add_argument(
        "--max-mse-samples",
        type=int,
        default=DEFAULT_MSE_CAP,
        help="practical: cap on the secret MSE sample (beyond it the run is inconclusive)",
    )
    p.add_argument(
        "--max-tuples",
        type=int,
        default=DEFAULT_TUPLE_CAP,
        help="practical: cap on the challenge tuples (4 retrainings each) over every round",
    )
    p.add_argument(
        "--pilot-tuples",
        type=int,
        default=PILOT_TUPLES,
        help=f"practical: tuples the seeded sizing pilot starts with (9 models each; default "
        f"{PILOT_TUPLES}; it grows to ≤ 3%% of the verifier's predicted work)",
    )
    p.add_argument("--pairs", type=int, default=50_000, help="manual: coupled tuples (pairs/level)")
    p.add_argument("--spot-checks", type=int, default=64, help="manual: spot checks k")
    p.add_argument("--mse-samples", type=int, default=4_000, help="manual: MSE sample size |M|")
    p.add_argument("--rho", type=float, default=0.25, help="manual: correlation ρ")
    p.add_argument(
        "--checks",
        choices=["auto", *(c.value for c in CheckMode)],
        default="auto",
        help="how challenges are checked: certified (every challenge from its weights with one "
        "gradient pass; strongly convex tasks only), certified-spot (sampled spot checks, each "
        "certified from its weights), retrain (spot checks by retraining), or auto (certified "
        "when the task supports it, else retrain)",
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
    verify.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="allow plain text to a non-loopback prover (refused otherwise): unencrypted and "
        "unauthenticated, anyone on the path can alter the claim",
    )
    plan = sub.add_parser("plan", help="print the sizes and guarantee of a run without running it")
    _add_plan_args(plan)
    plan.add_argument(
        "--claim",
        metavar="NPZ",
        help="practical: size stage 2 for this claim (arrays intercepts (Z,), coefficients "
        "(Z, N)) instead of a predicted honest one",
    )
    audit = sub.add_parser("audit", help="check a verdict certificate offline")
    audit.add_argument("certificate", metavar="CERT")
    audit.add_argument(
        "--public-key", metavar="HEX", help="also require the certificate to be signed by this key"
    )
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def options_from_args(args: argparse.Namespace) -> PlanOptions:
    """The CLI's plan options, as the planner takes them."""
    return PlanOptions(
        mode=RuleName(args.mode),
        epsilon=args.epsilon,
        epsilon_rel=args.epsilon_rel,
        delta=args.delta,
        checks=args.checks,
        max_mse_samples=args.max_mse_samples,
        max_tuples=args.max_tuples,
        pilot_tuples=args.pilot_tuples,
        pairs=args.pairs,
        spot_checks=args.spot_checks,
        mse_samples=args.mse_samples,
        rho=args.rho,
    )


def _paper_plan_lines(plan: Plan, task: Task, checks: CheckMode) -> list[str]:
    b = plan.budget
    unit = "gradient passes" if checks.certified else "retrainings"
    return [
        f"plan ({plan.mode}, the paper's rule): ε={plan.epsilon:.4g} δ={plan.delta:g} "
        f"b={plan.output_bound:.4g} τ={plan.tolerance:g} Z={plan.num_targets} "
        f"N={task.num_train_points}",
        f"  ρ={plan.rho:.4g}  pairs/level={plan.pairs_per_level}  |E|={plan.num_members}  "
        f"k={plan.spot_checks}  |M|={plan.mse_samples}  m*={plan.lie_allowance}",
        f"  certified ε at these sizes: {b['epsilon_certified']:.4g} "
        f"({'meets' if plan.guarantee_met else 'does NOT meet'} the requested ε={plan.epsilon:g})",
        f"  work: verifier {plan.verifier_retrainings} {unit}, prover ≥ "
        f"{plan.prover_retrainings} retrainings",
    ]


def _practical_plan_lines(plan: PracticalPlan, task: Task) -> list[str]:
    eps = (
        f"ε = {plan.epsilon_rel:g}·Var f (bounded from the verifier's sample)"
        if plan.epsilon_rel is not None
        else f"ε = {min(plan.epsilon or (0.0,)):.4g}"
    )
    return [
        f"plan (practical): {eps}  δ={plan.delta:g}  b={plan.output_bound:.4g}  "
        f"τ={plan.tolerance:g}  Z={plan.num_targets}  N={task.num_train_points}  "
        f"checks={plan.checks.value}",
        f"  caps: |M| ≤ {plan.mse_cap}, challenge tuples ≤ {plan.tuple_cap}; sizing pilot "
        f"seed {plan.pilot_seed[:16]}… ({plan.pilot_tuples} tuples to start)",
    ]


def _print_result(result: Any, plan: Any, task: Task) -> None:
    if isinstance(plan, PracticalPlan):
        lines = _practical_plan_lines(plan, task)
    else:
        lines = _paper_plan_lines(plan, task, CheckMode(result.details.get("checks", "retrain")))
    for line in lines:
        print(line)
    d = result.details
    verdict = result.verdict.upper()
    if result.verdict == Verdict.ACCEPT.value:
        print(f"verdict: {verdict}  (guarantee met: err ≤ ε with probability ≥ 1 − δ)")
    elif result.verdict == Verdict.INCONCLUSIVE.value:
        cert = d.get("certified_epsilon")
        worst = max(cert) if cert else float("nan")
        print(
            f"verdict: {verdict}  — guarantee NOT met at the requested ε; this run certifies "
            f"only ε = {worst:.4g}"
        )
    else:
        print(f"verdict: {verdict}")
    print(f"reason:  {printable(result.reason)}")
    if RuleName.of(d.get("mode")) is RuleName.PRACTICAL and d.get("err_upper") is not None:
        for t in range(len(d["err_upper"])):
            print(
                f"  target {t}: err ∈ [{d['err_lower'][t]:.4g}, {d['err_upper'][t]:.4g}] vs "
                f"ε={d['epsilon'][t]:.4g}  (msê={d['mse_estimate'][t]:.4g} ≤ "
                f"{d['mse_upper'][t]:.4g}; B≥2 ∈ [{d['residual_lower'][t]:.4g}, "
                f"{d['residual_upper'][t]:.4g}])"
            )
        ch = d.get("challenge")
        where = f"|M| = {d['mse_samples']}"
        if ch:
            where += (
                f", {d['tuples']} challenge tuples (ρ = {ch['rho']:g}, residual on "
                f"{'f − g' if ch['beta'] else 'f'})"
            )
        else:
            where += ", no challenge needed"
        print(f"  evidence: {where}")
    elif result.mse_hat is not None:
        thr = (d.get("decision") or {}).get("threshold", [])
        for t, (m, r) in enumerate(zip(result.mse_hat, result.residual_hat or [], strict=False)):
            extra = f" ≤? threshold {thr[t]:.5g}" if t < len(thr) else ""
            print(f"  target {t}: msê={m:.5g}  B̂≥2={r:.5g}{extra}")
    spot = d.get("spot_check")
    if spot and spot.get("mode") in (CheckMode.CERTIFIED.value, CheckMode.CERTIFIED_SPOT.value):
        which = "spot-checked" if spot.get("sampled") else "all"
        print(
            f"  certified checks: {which} {spot['certified_models']} challenges from their "
            f"weights; largest gradient norm {spot['max_grad_norm']:.3g}, so |f − f*| ≤ "
            f"{spot['max_f_error_bound']:.3g} (τ = {spot['tolerance']:g})"
        )
    elif spot:
        print(
            f"  spot checks: {spot['spot_checks']} passed, max |diff| {spot['max_abs_diff']:.3g} "
            f"(τ = {spot['tolerance']:g})"
        )
    v = float(result.verifier_retrainings)
    cpu = d.get("verifier_cpu_s")
    selfit = d.get("self_fit_retrainings")
    line = f"cost: verifier {v:.1f} retraining-equivalents"
    if cpu is not None:
        line += f" ({cpu:.1f} CPU-s)"
    line += (
        f"; prover {result.prover_retrainings} retrainings reported "
        f"({d.get('prover_retrainings_verified', 0)} verified)"
    )
    print(line)
    if selfit:
        floor = d.get("self_fit_floor")
        extra = f"; no fit needs fewer than {floor}" if floor else ""
        print(
            f"  fitting the datamodel yourself: ≈ {selfit} retrainings (OLS estimate{extra}); "
            f"verifier ÷ self-fit = {v / selfit:.3g}"
        )
    timings = d.get("timings", {})
    if timings:
        print("wall time: " + ", ".join(f"{k} {t:.1f}s" for k, t in timings.items()))


def _verify(args: argparse.Namespace) -> int:
    from verifier.client import run_verification
    from verifier.session import VerifierSession

    task = load_task(args.task)
    plan, checks = make_verifier_plan(options_from_args(args), task)
    check_runnable(plan)
    signing_key = _signing_key(args)  # fail on a bad key before any work
    session = VerifierSession(task, plan, selector=args.task, checks=checks)
    progress_ctx = None
    advance = None
    if not args.no_progress and not args.json:
        from protocol.progress import retraining_progress

        total = plan.mse_cap if isinstance(plan, PracticalPlan) else plan.verifier_retrainings
        progress_ctx = retraining_progress(total, "verifier evidence")
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
            insecure_plaintext=args.insecure_plaintext,
        )
    finally:
        if progress_ctx is not None:
            progress_ctx.__exit__(None, None, None)
    if args.json:
        print(json.dumps(result.to_dict(), default=json_default))
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


def _plan(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    options = options_from_args(args)
    plan, checks = make_verifier_plan(options, task)
    out: dict[str, Any] = {"mode": plan.mode, "checks": checks.value, "plan": plan.to_dict()}
    if isinstance(plan, PracticalPlan):
        claim = _load_claim(args.claim, task) if args.claim else None
        out["prediction"] = predict_practical(task, plan, claim)
        st2 = out["prediction"].get("stage2") or {}
        pred = st2.get("predicted", {})
        out["practical_verifier_retrainings"] = _predicted_work(plan, out["prediction"])
        out["prover_retrainings"] = 4 * int(pred.get("tuples", 0)) + (
            int(out["prediction"]["stage1_mse_samples"]) if checks.certified else 0
        )
    if args.json:
        print(json.dumps(out, default=json_default))
        return 0
    if isinstance(plan, PracticalPlan):
        for line in _practical_plan_lines(plan, task):
            print(line)
        pr = out["prediction"]
        print(
            f"  predicted for {pr['claim']} claim: stage 1 needs ≈ {pr['stage1_mse_samples']} MSE "
            f"samples" + (" and then accepts on the MSE alone" if pr["accept_on_mse_alone"] else "")
        )
        st2 = pr.get("stage2")
        if st2:
            p2 = st2["predicted"]
            print(
                f"  stage 2: ρ = {st2['rho']:g}, residual on {'f − g' if st2['beta'] else 'f'}, "
                f"≈ {p2['tuples']} tuples (rounds up to {st2['schedule'][-1]}), "
                f"{st2['spot_checks']} checks, goal {st2['goal']}"
            )
        print(
            f"  predicted verifier work ≈ {out['practical_verifier_retrainings']:.4g} "
            f"retraining-equivalents; prover ≈ {out['prover_retrainings']} retrainings"
        )
        print(
            "  guarantee: non-asymptotic, anytime-valid; sizes are predictions from the seeded "
            "pilot (the run measures and re-sizes)"
        )
    else:
        for line in _paper_plan_lines(plan, task, checks):
            print(line)
    return 0


def _predicted_work(plan: PracticalPlan, prediction: dict[str, Any]) -> float:
    """Predicted verifier retraining-equivalents: MSE samples, checks and the pilot."""
    m = int(prediction["stage1_mse_samples"])
    st2 = prediction.get("stage2") or {}
    pred = st2.get("predicted", {})
    m = max(m, int(pred.get("mse_samples", 0)))
    members = 4 * int(pred.get("tuples", 0))
    if plan.checks is CheckMode.CERTIFIED:
        checked = plan.check_cost * (members + m)
    elif plan.checks is CheckMode.CERTIFIED_SPOT:
        checked = plan.check_cost * (int(st2.get("spot_checks", 0)) + m)
    else:
        checked = float(int(st2.get("spot_checks", 0)) + m)
    pilot = int(prediction.get("run_pilot_retrainings", 0)) if st2 else 0
    return checked + pilot


def _load_claim(path: str, task: Task) -> tuple[Any, Any]:
    import numpy as np

    from protocol.claim import check_claim

    try:
        with np.load(path) as data:
            c, a = np.asarray(data["intercepts"]), np.asarray(data["coefficients"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"--claim {path!r}: need an .npz with intercepts and coefficients ({exc})"
        ) from exc
    check_claim(c, a, task.num_targets, task.num_train_points)
    return c, a


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
