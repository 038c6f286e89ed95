"""Offline audit of a verdict certificate (``verifier audit CERT``).

Checks, without contacting anyone: the file is in canonical form, every required field exists
with the right type, the Ed25519 signature over the other fields verifies, the task hash follows
from the spec and data hashes, and the verdict follows from the numbers in the certificate by the
protocol's decision rule (practical: err_upper = mse_upper − B≥2_lower ≤ ε for every target is
accept, some err_lower = mse_lower − B≥2_upper > ε is reject, else inconclusive; the paper's
rule: msê ≤ B̂≥2 + ε/2 per target, and accept only when its sizes certify ε, else inconclusive).
Exit 0 holds, 1 fails, 2 unreadable.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.rules.base import CheckMode, RecordContext, RecordError, RuleName, Verdict
from protocol.rules.by_name import rule_for
from protocol.rules.records import close, read, read_vector
from protocol.validation import check_delta
from verifier.certificate import CERTIFICATE_FORMAT, encode_certificate, signed_bytes
from verifier.signing_keys import weak_key_reason

PROVES = (
    "This certificate proves: the holder of the Ed25519 key {key} signed the verdict "
    "{verdict!r} for task {task}, protocol transcript {transcript}, Merkle root {root} and "
    "attribution digest {digest}, together with the numbers printed above, and those numbers "
    "imply that verdict under the protocol's decision rule."
)
DOES_NOT_PROVE = (
    "It does NOT prove: that the verifier ran the protocol honestly or kept its spot-check and "
    "MSE samples secret; that the numbers came from real retrainings; that this key belongs to "
    "anyone you trust (compare the key with one you obtained independently, e.g. "
    "--public-key); or anything about any attribution other than the one with this digest."
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Unreadable(Exception):
    """The certificate file cannot be read or parsed as a JSON object."""


@dataclass
class AuditResult:
    """``ok`` iff ``problems`` is empty; ``certificate`` is the parsed document."""

    certificate: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True iff every check held."""
        return not self.problems


def read_certificate(path: Path | str) -> tuple[bytes, dict[str, Any]]:
    """The raw bytes and parsed object of a certificate file; raises :class:`Unreadable`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(f"{path} is not a JSON document: {exc}") from exc
    if not isinstance(obj, dict):
        raise Unreadable(f"{path} does not hold a JSON object")
    return raw, obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# ---- small typed accessors ------------------------------------------------------------------


def _hex64(d: dict[str, Any], key: str, where: str, nullable: bool = False) -> str | None:
    v = read(d, key, str, where, nullable)
    if v is not None and not _HEX64.match(v):
        raise RecordError(f"field {where}{key} must be 64 lowercase hex digits")
    return v


# ---- the checks -----------------------------------------------------------------------------


def _check_signature(cert: dict[str, Any], trusted_key: str | None) -> str:
    vk = read(cert, "verifier_key", dict, "")
    if read(vk, "algorithm", str, "verifier_key.") != "Ed25519":
        raise RecordError("verifier_key.algorithm must be 'Ed25519'")
    pub_hex = read(vk, "public_key", str, "verifier_key.")
    sig_hex = read(cert, "signature", str, "")
    if not re.fullmatch(r"[0-9a-f]{64}", pub_hex):
        raise RecordError("verifier_key.public_key must be 32 bytes as lowercase hex")
    if not re.fullmatch(r"[0-9a-f]{128}", sig_hex):
        raise RecordError("signature must be 64 bytes as lowercase hex")
    weak = weak_key_reason(bytes.fromhex(pub_hex))
    if weak is not None:
        raise RecordError(f"verifier_key.public_key is {weak}; it vouches for nothing")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub_hex)).verify(
            bytes.fromhex(sig_hex), signed_bytes(cert)
        )
    except (InvalidSignature, ValueError) as exc:
        raise RecordError(
            "the signature does not verify: the certificate was altered or not signed by "
            f"the key it names ({type(exc).__name__})"
        ) from exc
    if trusted_key is not None and pub_hex != trusted_key.strip().lower():
        raise RecordError(f"signed by key {pub_hex}, not by the expected key {trusted_key}")
    return pub_hex


def _check_structure(cert: dict[str, Any]) -> dict[str, Any]:
    if read(cert, "format", str, "") != CERTIFICATE_FORMAT:
        raise RecordError(f"format must be {CERTIFICATE_FORMAT!r}, got {cert.get('format')!r}")
    issued = read(cert, "issued_at", str, "")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", issued):
        raise RecordError(f"issued_at must be a UTC timestamp YYYY-MM-DDTHH:MM:SSZ, got {issued!r}")
    task = read(cert, "task", dict, "")
    read(task, "selector", str, "task.")
    th = _hex64(task, "task_hash", "task.")
    sh = _hex64(task, "spec_hash", "task.")
    dh = _hex64(task, "data_hash", "task.")
    assert th is not None
    assert sh is not None
    assert dh is not None
    expect = hashlib.sha256(
        b"attribution.v1/task\x00" + bytes.fromhex(sh) + bytes.fromhex(dh)
    ).hexdigest()
    if th != expect:
        raise RecordError("task.task_hash does not follow from task.spec_hash and task.data_hash")
    params = read(cert, "parameters", dict, "")
    mode = read(params, "mode", str, "parameters.")
    rule = RuleName.of(mode)
    if rule is None:
        raise RecordError(f"parameters.mode must be manual, theory or practical, got {mode!r}")
    if CheckMode.of(read(params, "checks", str, "parameters.")) is None:
        raise RecordError(
            f"parameters.checks must be one of {', '.join(c.value for c in CheckMode)}"
        )
    delta = read(params, "delta", float, "parameters.")
    try:
        check_delta(delta, "parameters.delta")
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    eps = params.get("epsilon")
    if not (isinstance(eps, int | float | list)) or isinstance(eps, bool):
        raise RecordError("parameters.epsilon must be a number or a list of numbers")
    read(params, "epsilon_rel", float, "parameters.", nullable=True)
    sizes = read(cert, "sizes", dict, "")
    if sizes.get("mode") != mode:
        raise RecordError(f"sizes.mode {sizes.get('mode')!r} differs from parameters.mode {mode!r}")
    if not isinstance(sizes.get("delta"), int | float) or not close(sizes["delta"], delta):
        raise RecordError("sizes.delta differs from parameters.delta")
    _hex64(cert, "transcript_hash", "")
    verdict = read(cert, "verdict", str, "")
    if verdict not in ("accept", "reject", "inconclusive"):
        raise RecordError(f"verdict must be 'accept', 'reject' or 'inconclusive', got {verdict!r}")
    read(cert, "reason", str, "")
    accepting = verdict == "accept"
    _hex64(cert, "merkle_root", "", nullable=True)
    att = read(cert, "attribution", dict, "")
    _hex64(att, "digest", "attribution.", nullable=not accepting)
    z = read(att, "num_targets", int, "attribution.")
    n = read(att, "num_train_points", int, "attribution.")
    if z < 1 or n < 1:
        raise RecordError("attribution.num_targets and num_train_points must be positive")
    if read(sizes, "num_targets", int, "sizes.") != z:
        raise RecordError("sizes.num_targets differs from attribution.num_targets")
    ret = read(cert, "retrainings", dict, "")
    read(ret, "verifier", float, "retrainings.")
    if "prover" in ret:  # certificates before issue #16 signed the prover's own count as is
        read(ret, "prover", int, "retrainings.")
    else:
        read(ret, "prover_reported", int, "retrainings.")
        read(ret, "prover_verified", int, "retrainings.")
    if "prover_identity" in cert:  # absent before issue #16
        read(cert, "prover_identity", dict, "", nullable=True)
    read(cert, "decision", dict, "", nullable=not accepting)
    read(cert, "spot_check", dict, "", nullable=True)  # an accept on the MSE alone has none
    return {
        "rule": rule, "z": z, "verdict": verdict, "epsilon": eps, "delta": delta, "sizes": sizes,
    }  # fmt: skip


def _check_spot(cert: dict[str, Any]) -> None:
    spot = cert.get("spot_check")
    checks = CheckMode.of(spot.get("mode")) if spot is not None else None
    if spot is None or (checks is not None and checks.certified):
        return
    tau = read(spot, "tolerance", float, "spot_check.")
    worst = read(spot, "max_abs_diff", float, "spot_check.")
    read(spot, "spot_checks", int, "spot_check.")
    if worst > tau:
        raise RecordError(
            f"spot_check.max_abs_diff {worst:g} exceeds τ = {tau:g}, yet no rejection"
        )
    diffs = spot.get("abs_diffs")
    if diffs is not None:
        vals = read_vector(spot, "abs_diffs", len(diffs), "spot_check.")
        if vals and not close(max(vals), worst):  # type: ignore[type-var]
            raise RecordError("spot_check.abs_diffs disagrees with spot_check.max_abs_diff")


def _check_verdict(cert: dict[str, Any], expect: Verdict) -> None:
    verdict = cert["verdict"]
    if read(cert["decision"], "verdict", str, "decision.") != verdict:
        raise RecordError(f"decision.verdict differs from the certificate's verdict {verdict!r}")
    if verdict != expect.value:
        raise RecordError(f"the numbers imply {expect.value!r} but the verdict is {verdict!r}")


def audit_bytes(raw: bytes, cert: dict[str, Any], trusted_key: str | None = None) -> AuditResult:
    """Run every check on a parsed certificate (``raw`` is its file content).

    Returns an :class:`AuditResult` whose ``problems`` name the first failed check (empty when
    the certificate holds). Never raises on malformed content.
    """
    result = AuditResult(cert)
    try:
        try:
            canonical = encode_certificate(cert)
        except (TypeError, ValueError) as exc:
            raise RecordError(f"certificate cannot be canonically encoded: {exc}") from exc
        if raw != canonical:
            raise RecordError(
                "the file is not in canonical form (sorted keys, no whitespace, ASCII, one "
                "trailing newline): it was edited after signing"
            )
        _check_signature(cert, trusted_key)
        info = _check_structure(cert)
        _check_spot(cert)
        if cert["decision"] is None:
            if cert["verdict"] != "reject":
                raise RecordError("only a rejection (a failed check) may come without its decision")
        else:
            record = RecordContext(
                num_targets=info["z"],
                epsilon=info["epsilon"],
                delta=info["delta"],
                sizes=info["sizes"],
                verdict=Verdict.parse(cert["verdict"]),
            )
            _check_verdict(cert, rule_for(info["rule"]).recheck(cert["decision"], record))
    except RecordError as exc:
        result.problems.append(str(exc))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        result.problems.append(f"malformed certificate: {type(exc).__name__}: {exc}")
    return result


def audit_file(path: Path | str, trusted_key: str | None = None) -> AuditResult:
    """Audit the certificate at ``path``; raises :class:`Unreadable` if it cannot be parsed."""
    raw, cert = read_certificate(path)
    return audit_bytes(raw, cert, trusted_key)


def summary_lines(cert: dict[str, Any]) -> list[str]:
    """Readable lines with the certificate's key facts (assumes it passed the audit)."""
    lines = [
        f"verdict:     {cert['verdict'].upper()}",
        f"reason:      {cert['reason']}",
        f"task:        {cert['task']['selector']}  (task hash {cert['task']['task_hash']})",
        f"parameters:  mode {cert['parameters']['mode']}, checks {cert['parameters']['checks']}, "
        f"ε = {cert['parameters']['epsilon']}, δ = {cert['parameters']['delta']}",
        f"attribution: digest {cert['attribution']['digest']} "
        f"(Z = {cert['attribution']['num_targets']}, "
        f"N = {cert['attribution']['num_train_points']})",
        f"transcript:  {cert['transcript_hash']}   Merkle root {cert['merkle_root']}",
        f"issued at:   {cert['issued_at']}",
        f"signed by:   Ed25519 {cert['verifier_key']['public_key']}",
    ]
    who = cert.get("prover_identity")
    if who is not None:
        if who.get("authenticated"):
            lines.append(
                f"prover:      {who.get('server_name')} authenticated by {who.get('transport')} "
                f"(CA sha256 {who.get('ca_sha256')})"
            )
        else:
            lines.append(f"prover:      {who.get('address')} NOT authenticated (plain text)")
    ret = cert["retrainings"]
    if "prover" in ret:
        lines.append(f"retrainings: prover {ret['prover']} (reported by the prover, unverified)")
    else:
        lines.append(
            f"retrainings: prover {ret['prover_reported']} reported (unverified), "
            f"{ret['prover_verified']} verified; verifier {ret['verifier']:.6g}"
        )
    dec = cert.get("decision")
    rule = RuleName.of(cert["parameters"]["mode"])
    if dec is not None and rule is not None:
        lines.extend(rule_for(rule).target_lines(dec))
    return lines


def not_checked(trusted_key: str | None) -> list[str]:
    """What an audit did not establish: always the prover's self-reported retraining count, and,
    without ``--public-key``, who the signer is."""
    out = [
        "retrainings.prover_reported is the prover's own, unverified count; "
        "retrainings.prover_verified is what the verifier saw it compute"
    ]
    if trusted_key is None:
        out.insert(
            0,
            "SIGNER NOT CHECKED: no --public-key was given, so this only shows that SOME key "
            "signed it; anyone can make a key. Pin the verifier's key with --public-key HEX "
            "(obtained independently of this file) before relying on it",
        )
    return out


def audit_main(path: str, trusted_key: str | None = None, as_json: bool = False) -> int:
    """CLI body of ``verifier audit``: print the outcome; 0 holds, 1 fails, 2 unreadable."""
    try:
        result = audit_file(path, trusted_key)
    except Unreadable as exc:
        if as_json:
            print(json.dumps({"holds": False, "unreadable": True, "reason": str(exc)}))
        else:
            print(f"verifier audit: cannot read certificate: {exc}")
        return 2
    cert = result.certificate
    unchecked = not_checked(trusted_key)
    if as_json:
        doc = {
            "holds": result.ok,
            "problems": result.problems,
            "signer_pinned": trusted_key is not None,
            "not_checked": unchecked,
        }
        print(json.dumps(doc, ensure_ascii=False))
        return 0 if result.ok else 1
    if not result.ok:
        print(f"certificate does NOT hold: {result.problems[0]}")
        print("Nothing in it should be relied on.")
        return 1
    print("certificate holds: signature valid, fields complete, verdict follows from its numbers")
    for line in summary_lines(cert):
        print(line)
    for line in unchecked:
        print(f"WARNING: {line}")
    print()
    print(
        PROVES.format(
            key=cert["verifier_key"]["public_key"],
            verdict=cert["verdict"],
            task=cert["task"]["task_hash"],
            transcript=cert["transcript_hash"],
            root=cert["merkle_root"],
            digest=cert["attribution"]["digest"],
        )
    )
    print(DOES_NOT_PROVE)
    return 0
