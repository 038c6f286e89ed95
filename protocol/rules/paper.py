"""The paper's rule (``--mode manual`` or ``theory``), kept by name for study.

Its decision, "accept iff msê ≤ B̂≥2 + ε/2 for every target", is :func:`protocol.decision.decide`
with the sizes of :mod:`protocol.accounting`. What a verdict may *say* is decided here: the rule
saying accept is an ACCEPT only when the sizes certify the requested ε; otherwise it is
INCONCLUSIVE and reports the ε they do certify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from protocol.accounting import GUARANTEE_RTOL, Plan, plan_manual, plan_theory
from protocol.decision import Decision, datamodel_range, decide, mse_estimate
from protocol.residual import estimate_residual
from protocol.rules.base import (
    CheckMode,
    Evidence,
    PlanRequest,
    RecordContext,
    RecordError,
    Rule,
    RuleName,
    RuleOutcome,
    Verdict,
)
from protocol.rules.records import close, read, read_vector


def paper_verdict(decision: Decision) -> tuple[Verdict, str]:
    """(verdict, reason) for a paper-rule decision; ACCEPT only when its guarantee is met."""
    if not decision.accepted:
        return Verdict.REJECT, decision.reason
    if decision.guarantee_met:
        return Verdict.ACCEPT, decision.reason
    cert = float(decision.epsilon_certified.max())
    return Verdict.INCONCLUSIVE, (
        f"INCONCLUSIVE: the paper's rule holds (msê ≤ B̂≥2 + ε/2 for every target), but these "
        f"sizes certify only ε = {cert:.4g}, not the requested ε = {decision.epsilon:g} "
        "(guarantee NOT met; use --mode practical for a verdict at the requested ε)"
    )


class PaperRule(Rule):
    """The paper's rule at manual sizes (``RuleName.MANUAL``) or its worst-case sizes
    (``RuleName.THEORY``, where a target whose sizes cannot certify ε is also rejected)."""

    def __init__(self, name: RuleName) -> None:
        if not name.is_paper:
            raise ValueError(f"{name.value} is not a paper rule")
        self.name = name

    def plan(
        self, request: PlanRequest, task: Any, checks: CheckMode, check_cost: Callable[[], float]
    ) -> Plan:
        """The paper's worst-case sizes (theory) or the user's (manual; every member is
        checked under certified checks); absolute ε only (default 0.2)."""
        if request.epsilon_rel is not None:
            raise ValueError("--epsilon-rel needs --mode practical (Var f is bounded there)")
        if request.pairs < 1 or request.spot_checks < 1 or request.mse_samples < 1:
            raise ValueError("--pairs, --spot-checks and --mse-samples must be positive")
        common = {
            "epsilon": request.epsilon or 0.2,
            "delta": request.delta,
            "output_bound": task.output_bound,
            "tolerance": task.tolerance,
            "num_targets": task.num_targets,
        }
        if self.name is RuleName.THEORY:
            return plan_theory(**common)
        return plan_manual(
            **common,
            pairs_per_level=request.pairs,
            spot_checks=4 * request.pairs if checks.all_members else request.spot_checks,
            mse_samples=request.mse_samples,
            rho=request.rho,
        )

    def run(self, plan: Any, intercepts: Any, coefficients: Any, evidence: Evidence) -> RuleOutcome:
        """One challenge round of ``plan.pairs_per_level`` tuples at ρ, its spot checks, then the
        MSE on ``plan.mse_samples`` secret subsets; accept iff msê ≤ B̂≥2 + ε/2 per target and
        the sizes certify the requested ε (else INCONCLUSIVE, saying which ε they certify)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"the paper's rule needs an accounting.Plan, got {type(plan).__name__}")
        f_values, _ = evidence.challenge(plan.rho, 0, plan.pairs_per_level, False)
        evidence.spot_check(plan.spot_checks)
        mse_f, predictions = evidence.mse(0, plan.mse_samples)
        residual = estimate_residual(f_values, plan.rho)
        mse_hat = mse_estimate(mse_f, predictions)
        decision = decide(plan, residual, mse_hat, datamodel_range(intercepts, coefficients))
        verdict, reason = paper_verdict(decision)
        details = {
            "decision": decision.to_dict(),
            "certified_epsilon": [float(v) for v in decision.epsilon_certified],
            "mse_hat": [float(v) for v in mse_hat],
            "residual_hat": [float(v) for v in residual.residual],
        }
        return RuleOutcome(
            verdict=verdict,
            reason=reason,
            details=details,
            mse_estimate=mse_hat,
            epsilon_estimate=np.full(mse_hat.shape, float(plan.epsilon)),
            self_fit_method="estimate: OLS excess risk with B≥2 ≈ msê (protocol.economics)",
            raw=decision,
        )

    def recheck(self, decision: dict[str, Any], record: RecordContext) -> Verdict:
        """Recompute B̂≥2 = B̂ − z0 − z1, the threshold B̂≥2 + ε/2, each target's verdict and the
        guarantee from the recorded numbers; the verdict they imply."""
        dec, z, w, sizes = decision, record.num_targets, "decision.", record.sizes
        eps = read(dec, "epsilon", float, w)
        if not isinstance(record.epsilon, int | float) or not close(eps, record.epsilon):
            raise RecordError("decision.epsilon differs from parameters.epsilon")
        if not close(read(dec, "delta", float, w), record.delta):
            raise RecordError("decision.delta differs from parameters.delta")
        if read(dec, "plan", dict, w) != sizes:
            raise RecordError("decision.plan differs from sizes")
        thr = read_vector(dec, "threshold", z, w)
        mse = read_vector(dec, "mse_hat", z, w)
        res = read_vector(dec, "residual_hat", z, w)
        g = read_vector(dec, "datamodel_range", z, w)
        read_vector(dec, "mse_halfwidth", z, w)
        cert_eps = read_vector(dec, "epsilon_certified", z, w)
        per = read(dec, "per_target_accept", list, w)
        if len(per) != z or not all(isinstance(v, bool) for v in per):
            raise RecordError(f"decision.per_target_accept must be {z} booleans")
        guarantee = read(dec, "guarantee_met", bool, w)
        est = read(dec, "residual_estimate", dict, w)
        w2 = "decision.residual_estimate."
        for name in ("y0", "yrho", "y2rho", "second_moment", "z0", "z1", "z2",
                     "residual_interpolant"):  # fmt: skip
            read_vector(est, name, z, w2)
        rho = read(est, "rho", float, w2)
        if not close(rho, read(sizes, "rho", float, "sizes.")):
            raise RecordError("decision.residual_estimate.rho differs from sizes.rho")
        if read_vector(est, "residual", z, w2) != res:
            raise RecordError("decision.residual_hat differs from residual_estimate.residual")
        for t in range(z):
            if mse[t] < 0 or g[t] < 0:
                raise RecordError(f"target {t}: msê and the datamodel range must be non-negative")
            b = est["second_moment"][t] - est["z0"][t] - est["z1"][t]
            if not close(b, res[t]):
                raise RecordError(f"target {t}: B̂≥2 ≠ B̂ − z0 − z1 ({res[t]} vs {b})")
            if not close(thr[t], res[t] + eps / 2.0):
                raise RecordError(
                    f"target {t}: threshold {thr[t]} ≠ B̂≥2 + ε/2 = {res[t] + eps / 2.0}"
                )
        rule = [mse[t] <= res[t] + eps / 2.0 for t in range(z)]
        cert_ok = [c <= eps * (1.0 + GUARANTEE_RTOL) for c in cert_eps]
        both = [r and c for r, c in zip(rule, cert_ok, strict=True)]
        expect = both if self.name is RuleName.THEORY else rule
        if per != expect:
            t = next(i for i in range(z) if per[i] != expect[i])
            raise RecordError(
                f"target {t}: msê = {mse[t]} vs B̂≥2 + ε/2 = {res[t] + eps / 2.0} gives "
                f"{'accept' if expect[t] else 'reject'}, but the certificate records "
                f"{'accept' if per[t] else 'reject'}"
            )
        if guarantee != all(cert_ok):
            raise RecordError(
                "decision.guarantee_met disagrees with decision.epsilon_certified ≤ ε"
            )
        if not all(expect):
            return Verdict.REJECT
        return Verdict.ACCEPT if all(cert_ok) else Verdict.INCONCLUSIVE

    def target_lines(self, decision: dict[str, Any]) -> list[str]:
        """``target t: msê ≤ B̂≥2 + ε/2`` (or ``>``) per target."""
        half = decision["epsilon"] / 2.0
        lines = []
        for t, (m, r) in enumerate(zip(decision["mse_hat"], decision["residual_hat"], strict=True)):
            sign = "≤" if m <= r + half else ">"
            lines.append(f"  target {t}: msê = {m:.6g} {sign} B̂≥2 + ε/2 = {r + half:.6g}")
        return lines
