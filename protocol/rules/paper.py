"""The paper's rule (``--mode manual`` or ``theory``), kept by name for study.

Its decision, "accept iff msê ≤ B̂≥2 + ε/2 for every target", is :func:`protocol.decision.decide`
with the sizes of :mod:`protocol.accounting`. What a verdict may *say* is decided here: the rule
saying accept is an ACCEPT only when the sizes certify the requested ε; otherwise it is
INCONCLUSIVE and reports the ε they do certify.
"""

from __future__ import annotations

from protocol.decision import Decision
from protocol.rules.base import Verdict


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
