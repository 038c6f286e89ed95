"""The verifier's Python front door: ``verify(prover=..., task=..., epsilon=..., delta=...)``.

It runs exactly what ``verifier verify`` runs (the same planner, session, driver and gRPC client),
so a notebook gets the same verdict and the same numbers as the command line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from protocol.rules.base import RuleName
from protocol.tasks import load_task
from protocol.tasks.base import Progress, Task
from verifier.client import ClientTLS, run_verification
from verifier.driver import ProverTransport, run_protocol
from verifier.planning import PlanOptions, check_runnable, make_verifier_plan
from verifier.session import VerificationResult, VerifierSession

__all__ = ["verify"]


def verify(
    prover: str | ProverTransport,
    task: str | Task,
    *,
    epsilon: float | None = None,
    epsilon_rel: float | None = None,
    delta: float = 0.05,
    mode: RuleName | str = RuleName.PRACTICAL,
    checks: str = "auto",
    timeout_s: float = 600.0,
    tls: ClientTLS | None = None,
    insecure_plaintext: bool = False,
    progress: Progress | None = None,
    **sizes: Any,
) -> VerificationResult:
    """Verify the prover's claimed datamodel for ``task``; never raises on the prover's behaviour.

    ``prover`` is a gRPC address (``"host:port"``) or any object with the ``ProverTransport``
    calls (an in-process prover). ``task`` is a selector (``"digits-logreg"``) or a ``Task``.
    ``epsilon`` is absolute; ``epsilon_rel`` is relative to each target's Var f (practical rule
    only); ``sizes`` are further ``PlanOptions`` fields (``max_mse_samples``, ``pairs``, …).
    Plain text to a non-loopback address needs ``tls`` or ``insecure_plaintext=True``.

    Guarantees: the result's ``verdict`` is ``"accept"`` (exit code 0) only when the rule's
    (ε, δ) guarantee holds at the requested ε; ``"inconclusive"`` says which looser ε it does
    certify (``details["certified_epsilon"]``); a timeout, malformed message or transport failure
    is ``"error"`` before the prover's claim is complete and ``"reject"`` after it (an abort after
    commitment), a caught prover ``"reject"``. ``to_dict()`` is the ``--json`` document, with
    ``guarantee_met``, ``verifier_cpu_s``, ``verifier_cost`` and ``self_fit_retrainings``.
    Raises ``ValueError`` only for bad arguments (before any contact with the prover).
    """
    the_task = load_task(task) if isinstance(task, str) else task
    unknown = set(sizes) - set(PlanOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown plan option(s): {', '.join(sorted(unknown))}")
    options = replace(
        PlanOptions(),
        mode=RuleName(mode),
        epsilon=epsilon,
        epsilon_rel=epsilon_rel,
        delta=delta,
        checks=checks,
        **sizes,
    )
    plan, check_mode = make_verifier_plan(options, the_task)
    check_runnable(plan)
    session = VerifierSession(the_task, plan, checks=check_mode)
    if isinstance(prover, str):
        return run_verification(
            session,
            prover,
            timeout_s=timeout_s,
            progress=progress,
            tls=tls,
            insecure_plaintext=insecure_plaintext,
        )
    return run_protocol(session, prover, progress)
