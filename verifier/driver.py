"""The verifier's protocol driver, independent of the transport.

``run_protocol`` walks a ``VerifierSession`` through the steps against any ``ProverTransport``:
the gRPC client (``verifier.client``) and in-process simulations use the same driver, so what is
simulated is exactly what runs over the wire. It never accepts on an error, and it says ACCEPT
only when the (ε, δ) guarantee holds at the ε the user asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from proto.attribution.v1 import attribution_pb2 as pb
from protocol.accounting import Plan
from protocol.economics import self_fit_retrainings
from protocol.rules.base import ClaimRejected, Verdict
from protocol.rules.by_name import rule_for
from protocol.rules.practical import PracticalPlan
from protocol.tasks.base import Progress
from protocol.untrusted import printable
from verifier.certified import certified_cost
from verifier.evidence import TransportEvidence
from verifier.recording import RecordingTransport
from verifier.session import (
    Rejection,
    VerificationError,
    VerificationResult,
    VerifierSession,
)

log = logging.getLogger("verifier")


class TransportError(Exception):
    """The transport failed (timeout, disconnect, RPC error); ``str`` is a readable reason."""


class ProverTransport(Protocol):
    """The prover's calls, as the driver sees them. Implementations raise ``TransportError``."""

    def hello(self, request: pb.HelloRequest) -> pb.HelloReply:
        """Open a session."""
        ...

    def claim(self, request: pb.ClaimRequest) -> Iterable[pb.ClaimChunk]:
        """The attribution."""
        ...

    def commit(self, request: pb.ChallengeRequest) -> Iterable[pb.CommitChunk]:
        """One challenge round."""
        ...

    def open(self, request: pb.OpenRequest) -> Iterable[pb.Opening]:
        """The spot-check openings (sampled checks)."""
        ...

    def open_all(self, request: pb.OpenAllRequest) -> Iterable[pb.OpeningBatch]:
        """Every member of a round with its weights (certified checks)."""
        ...

    def supply_models(self, request: pb.ModelsRequest) -> Iterable[pb.SuppliedModel]:
        """Models of the revealed MSE sample (certified checks)."""
        ...

    def finish(self, request: pb.FinishRequest) -> pb.FinishReply:
        """Close the session."""
        ...


def _floats(values: Any) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.atleast_1d(values)]


def _costs(session: VerifierSession) -> dict[str, Any]:
    """The verifier's work in retraining-equivalents: its own retrainings plus certified models
    at their measured cost."""
    out: dict[str, Any] = {
        "local_retrainings": session.local_retrainings,
        "pilot_retrainings": session.pilot_retrainings,
        "certified_models": session.certified_models,
    }
    total = float(session.local_retrainings)
    if session.certified_models:
        cost = certified_cost(session.task, session.certified_models)
        out.update(cost)
        total += cost["retraining_equivalents"]
    out["retraining_equivalents"] = total
    return out


def error_result(
    session: VerifierSession, reason: str, verdict: Verdict = Verdict.ERROR
) -> VerificationResult:
    """A non-accepting result carrying ``reason``."""
    plan = session.plan
    eps = plan.epsilon if isinstance(plan, Plan) else (plan.epsilon or plan.epsilon_rel)
    return VerificationResult(
        verdict=verdict.value,
        reason=printable(reason),
        epsilon=eps,
        delta=plan.delta,
        num_train_points=session.N,
        verifier_retrainings=float(session.local_retrainings),
        prover_retrainings=session.prover_retrainings_reported,
        details={
            "mode": session.rule.value,
            "checks": session.checks.value,
            "guarantee_met": False,
            "certified_epsilon": None,
            "claim_digest": session.claim_digest_hex,
            "transcript_hash": session.transcript.hexdigest,
        },
    )


def _decide(
    session: VerifierSession, transport: ProverTransport, progress: Progress | None
) -> tuple[Verdict, str, dict[str, Any]]:
    """The session's rule run on evidence from ``transport``, with the self-fit estimate."""
    evidence = TransportEvidence(session, transport, progress)
    outcome = rule_for(session.rule).run(
        session.plan, session.intercepts, session.coefficients, evidence
    )
    details = dict(outcome.details)
    details["spot_check"] = session.spot_summary
    eps = np.asarray(outcome.epsilon_estimate, dtype=np.float64)
    known = eps > 0  # a target whose Var f estimate is not positive has no self-fit ε
    details["self_fit_retrainings"] = (
        self_fit_retrainings(session.N, outcome.mse_estimate[known], eps[known])
        if known.any()
        else None
    )
    details["self_fit_floor"] = session.N + 1
    details["self_fit_method"] = outcome.self_fit_method
    return outcome.verdict, outcome.reason, details


def _tell_prover(session: VerifierSession, transport: ProverTransport, verdict: str) -> None:
    """Best effort: let the prover log the verdict and release the session."""
    if not session.session_id:
        return
    try:
        transport.finish(
            pb.FinishRequest(
                session_id=session.session_id,
                verdict=verdict,
                transcript_hash=session.transcript.digest,
            )
        )
    except TransportError as exc:
        log.info("could not tell the prover the verdict: %s", exc)


def run_protocol(
    session: VerifierSession,
    transport: ProverTransport,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> VerificationResult:
    """Run the protocol; return accept, reject, inconclusive or error.

    Guarantees: "accept" only if every message arrived well-formed, every opening and check held,
    and the rule's (ε, δ) guarantee holds at the requested ε; "inconclusive" when the run
    certifies only a looser ε (it says which); a caught prover "reject". A transport failure or
    malformed message gives "error" before the prover has committed to its claim and "reject"
    after (``details["aborted_after_commit"]``); a crash of the verifier itself gives "error".
    Each comes with a reason a person understands.
    """
    started = time.monotonic()
    cpu_started = time.process_time()
    step = "hello"
    transport = RecordingTransport(transport, session.transcript)  # the only way messages pass

    def enter(name: str) -> None:
        nonlocal step
        step = name
        if on_step is not None:
            on_step(name)

    try:
        enter("hello")
        session.check_hello(transport.hello(session.hello_request()))
        enter("claim")
        for chunk in transport.claim(session.claim_request()):
            session.ingest_claim(chunk)
        session.require_claim()
        session.timing("claim_s", started)
        enter("verify")
        verdict, reason, details = _decide(session, transport, progress)
        session.timing("evidence_s", started)
        result = _result(session, verdict, reason, details, cpu_started)
        enter("finish")
        try:
            fin = transport.finish(
                pb.FinishRequest(
                    session_id=session.session_id,
                    verdict=result.verdict,
                    transcript_hash=session.transcript.digest,
                )
            )
            result.details["prover_transcript_agrees"] = (
                bytes(fin.transcript_hash) == session.transcript.digest
            )
        except TransportError as exc:  # the verdict stands; the prover just missed the news
            log.warning("finish: %s", exc)
        session.timing("total_s", started)
        result.details["wall_time_s"] = time.monotonic() - started
        result.details["timings"] = session.timings
        return result
    except (TransportError, VerificationError) as exc:
        if session.claim_summary is None:  # before commitment an error is an error
            return _finish_error(session, f"{step}: {exc}", Verdict.ERROR, cpu_started)
        result = _finish_error(session, abort_reason(step, exc), Verdict.REJECT, cpu_started)
        result.details["aborted_after_commit"] = True
        _tell_prover(session, transport, result.verdict)
        return result
    except (Rejection, ClaimRejected) as exc:
        result = _finish_error(session, f"{step}: {exc}", Verdict.REJECT, cpu_started)
        _tell_prover(session, transport, result.verdict)
        return result
    except Exception as exc:  # a crash must never become an accept
        log.exception("verifier crashed during %s", step)
        return _finish_error(
            session, f"{step}: internal error {type(exc).__name__}: {exc}", Verdict.ERROR,
            cpu_started,
        )  # fmt: skip


def abort_reason(step: str, exc: Exception) -> str:
    """The reason of a reject for a run the prover did not complete after committing.

    Once the claim is committed, failing to finish (refusing, aborting, timing out,
    disconnecting, a malformed answer) is a reject, never a retryable error: a prover that can
    foresee its verdict (it knows M when it supplies M's models) or dislikes a challenge seed
    would otherwise abort and be asked again (docs/protocol.md, "Retry policy").
    """
    return (
        f"{step}: the prover did not complete the protocol after committing to its claim "
        f"({exc}); an abort after commitment is a reject, not a retry"
    )


def _finish_error(
    session: VerifierSession, reason: str, verdict: Verdict, cpu_started: float
) -> VerificationResult:
    result = error_result(session, reason, verdict)
    result.details["verifier_cpu_s"] = time.process_time() - cpu_started
    return result


def _result(
    session: VerifierSession,
    verdict: Verdict,
    reason: str,
    details: dict[str, Any],
    cpu_started: float,
) -> VerificationResult:
    plan = session.plan
    costs = _costs(session)
    if isinstance(plan, PracticalPlan):
        eps: Any = details.get("epsilon")
        eps = eps[0] if isinstance(eps, list) and len(eps) == 1 else eps
    else:
        eps = plan.epsilon
    mse_hat = details.pop("mse_hat", details.get("mse_estimate"))
    residual_hat = details.pop("residual_hat", None)
    if residual_hat is None and details.get("residual_lower") is not None:
        residual_hat = details.get("residual_lower")
    verified = session.prover_retrainings_verified
    out = {
        "mode": session.rule.value,
        "checks": session.checks.value,
        "guarantee_met": verdict is Verdict.ACCEPT,
        "certified_epsilon": details.pop("certified_epsilon", None),
        "verifier_cpu_s": time.process_time() - cpu_started,
        "verifier_cost": costs,
        "prover_retrainings_verified": verified,
        "prover_retrainings_reported": session.prover_retrainings_reported,
        # the samples behind the prover's datamodel, as it reports them (unverified)
        "datamodel_samples": (
            int(session.claim_summary.datamodel_samples) if session.claim_summary else 0
        ),
        "claim_digest": session.claim_digest_hex,
        "plan": plan.to_dict(),
        "transcript_hash": session.transcript.hexdigest,
        **details,
    }
    return VerificationResult(
        verdict=verdict.value,
        reason=printable(reason),
        epsilon=eps,
        delta=plan.delta,
        num_train_points=session.N,
        verifier_retrainings=costs["retraining_equivalents"],
        prover_retrainings=session.prover_retrainings_reported,
        mse_hat=None if mse_hat is None else _floats(mse_hat),
        residual_hat=None if residual_hat is None else _floats(residual_hat),
        details=out,
    )
