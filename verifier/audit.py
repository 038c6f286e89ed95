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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.accounting import GUARANTEE_RTOL
from protocol.rules.base import CheckMode, RuleName, Verdict
from verifier.certificate import CERTIFICATE_FORMAT, encode_certificate, signed_bytes
from verifier.signing_keys import weak_key_reason

#: Relative tolerance for numbers the certificate derives from others (they are recomputed
#: with the same float64 operations, so in practice they agree exactly).
REL_TOL = 1e-9

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


class _Fail(Exception):
    pass


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


def _get(
    d: Any, key: str, kind: type | tuple[type, ...], where: str, nullable: bool = False
) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _Fail(f"missing field {where}{key}")
    v = d[key]
    if v is None and nullable:
        return None
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _Fail(f"field {where}{key} must be a finite number, got {v!r}")
        return float(v)
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise _Fail(f"field {where}{key} must be an integer, got {v!r}")
    if not isinstance(v, kind):
        raise _Fail(f"field {where}{key} has the wrong type ({type(v).__name__})")
    return v


def _hex64(d: dict[str, Any], key: str, where: str, nullable: bool = False) -> str | None:
    v = _get(d, key, str, where, nullable)
    if v is not None and not _HEX64.match(v):
        raise _Fail(f"field {where}{key} must be 64 lowercase hex digits")
    return v


def _vec(d: dict[str, Any], key: str, z: int, where: str, nullable_items: bool = False) -> list:
    v = _get(d, key, list, where)
    if len(v) != z:
        raise _Fail(f"field {where}{key} has {len(v)} entries, expected Z = {z}")
    out: list[float | None] = []
    for x in v:
        if x is None and nullable_items:
            out.append(None)
        elif isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise _Fail(f"field {where}{key} must hold finite numbers, got {x!r}")
        else:
            out.append(float(x))
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(1.0, abs(a), abs(b))


# ---- the checks -----------------------------------------------------------------------------


def _check_signature(cert: dict[str, Any], trusted_key: str | None) -> str:
    vk = _get(cert, "verifier_key", dict, "")
    if _get(vk, "algorithm", str, "verifier_key.") != "Ed25519":
        raise _Fail("verifier_key.algorithm must be 'Ed25519'")
    pub_hex = _get(vk, "public_key", str, "verifier_key.")
    sig_hex = _get(cert, "signature", str, "")
    if not re.fullmatch(r"[0-9a-f]{64}", pub_hex):
        raise _Fail("verifier_key.public_key must be 32 bytes as lowercase hex")
    if not re.fullmatch(r"[0-9a-f]{128}", sig_hex):
        raise _Fail("signature must be 64 bytes as lowercase hex")
    weak = weak_key_reason(bytes.fromhex(pub_hex))
    if weak is not None:
        raise _Fail(f"verifier_key.public_key is {weak}; it vouches for nothing")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub_hex)).verify(
            bytes.fromhex(sig_hex), signed_bytes(cert)
        )
    except (InvalidSignature, ValueError) as exc:
        raise _Fail(
            "the signature does not verify: the certificate was altered or not signed by "
            f"the key it names ({type(exc).__name__})"
        ) from exc
    if trusted_key is not None and pub_hex != trusted_key.strip().lower():
        raise _Fail(f"signed by key {pub_hex}, not by the expected key {trusted_key}")
    return pub_hex


def _check_structure(cert: dict[str, Any]) -> dict[str, Any]:
    if _get(cert, "format", str, "") != CERTIFICATE_FORMAT:
        raise _Fail(f"format must be {CERTIFICATE_FORMAT!r}, got {cert.get('format')!r}")
    issued = _get(cert, "issued_at", str, "")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", issued):
        raise _Fail(f"issued_at must be a UTC timestamp YYYY-MM-DDTHH:MM:SSZ, got {issued!r}")
    task = _get(cert, "task", dict, "")
    _get(task, "selector", str, "task.")
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
        raise _Fail("task.task_hash does not follow from task.spec_hash and task.data_hash")
    params = _get(cert, "parameters", dict, "")
    mode = _get(params, "mode", str, "parameters.")
    rule = RuleName.of(mode)
    if rule is None:
        raise _Fail(f"parameters.mode must be manual, theory or practical, got {mode!r}")
    if CheckMode.of(_get(params, "checks", str, "parameters.")) is None:
        raise _Fail(f"parameters.checks must be one of {', '.join(c.value for c in CheckMode)}")
    delta = _get(params, "delta", float, "parameters.")
    if not 0 < delta < 1:
        raise _Fail(f"parameters.delta must be in (0, 1), got {delta}")
    eps = params.get("epsilon")
    if not (isinstance(eps, int | float | list)) or isinstance(eps, bool):
        raise _Fail("parameters.epsilon must be a number or a list of numbers")
    _get(params, "epsilon_rel", float, "parameters.", nullable=True)
    sizes = _get(cert, "sizes", dict, "")
    if sizes.get("mode") != mode:
        raise _Fail(f"sizes.mode {sizes.get('mode')!r} differs from parameters.mode {mode!r}")
    if not isinstance(sizes.get("delta"), int | float) or not _close(sizes["delta"], delta):
        raise _Fail("sizes.delta differs from parameters.delta")
    _hex64(cert, "transcript_hash", "")
    verdict = _get(cert, "verdict", str, "")
    if verdict not in ("accept", "reject", "inconclusive"):
        raise _Fail(f"verdict must be 'accept', 'reject' or 'inconclusive', got {verdict!r}")
    _get(cert, "reason", str, "")
    accepting = verdict == "accept"
    _hex64(cert, "merkle_root", "", nullable=True)
    att = _get(cert, "attribution", dict, "")
    _hex64(att, "digest", "attribution.", nullable=not accepting)
    z = _get(att, "num_targets", int, "attribution.")
    n = _get(att, "num_train_points", int, "attribution.")
    if z < 1 or n < 1:
        raise _Fail("attribution.num_targets and num_train_points must be positive")
    if _get(sizes, "num_targets", int, "sizes.") != z:
        raise _Fail("sizes.num_targets differs from attribution.num_targets")
    ret = _get(cert, "retrainings", dict, "")
    _get(ret, "verifier", float, "retrainings.")
    if "prover" in ret:  # certificates before issue #16 signed the prover's own count as is
        _get(ret, "prover", int, "retrainings.")
    else:
        _get(ret, "prover_reported", int, "retrainings.")
        _get(ret, "prover_verified", int, "retrainings.")
    if "prover_identity" in cert:  # absent before issue #16
        _get(cert, "prover_identity", dict, "", nullable=True)
    _get(cert, "decision", dict, "", nullable=not accepting)
    _get(cert, "spot_check", dict, "", nullable=True)  # an accept on the MSE alone has none
    return {"rule": rule, "z": z, "verdict": verdict, "epsilon": eps, "sizes": sizes}


def _check_spot(cert: dict[str, Any]) -> None:
    spot = cert.get("spot_check")
    checks = CheckMode.of(spot.get("mode")) if spot is not None else None
    if spot is None or (checks is not None and checks.certified):
        return
    tau = _get(spot, "tolerance", float, "spot_check.")
    worst = _get(spot, "max_abs_diff", float, "spot_check.")
    _get(spot, "spot_checks", int, "spot_check.")
    if worst > tau:
        raise _Fail(f"spot_check.max_abs_diff {worst:g} exceeds τ = {tau:g}, yet no rejection")
    diffs = spot.get("abs_diffs")
    if diffs is not None:
        vals = _vec(spot, "abs_diffs", len(diffs), "spot_check.")
        if vals and not _close(max(vals), worst):  # type: ignore[type-var]
            raise _Fail("spot_check.abs_diffs disagrees with spot_check.max_abs_diff")


def _check_manual(cert: dict[str, Any], info: dict[str, Any]) -> None:
    dec = cert["decision"]
    z, rule_name, w = info["z"], info["rule"], "decision."
    eps = _get(dec, "epsilon", float, w)
    if not isinstance(info["epsilon"], int | float) or not _close(eps, info["epsilon"]):
        raise _Fail("decision.epsilon differs from parameters.epsilon")
    if not _close(_get(dec, "delta", float, w), _get(cert["parameters"], "delta", float, "")):
        raise _Fail("decision.delta differs from parameters.delta")
    if _get(dec, "plan", dict, w) != info["sizes"]:
        raise _Fail("decision.plan differs from sizes")
    thr = _vec(dec, "threshold", z, w)
    mse = _vec(dec, "mse_hat", z, w)
    res = _vec(dec, "residual_hat", z, w)
    g = _vec(dec, "datamodel_range", z, w)
    _vec(dec, "mse_halfwidth", z, w)
    cert_eps = _vec(dec, "epsilon_certified", z, w)
    per = _get(dec, "per_target_accept", list, w)
    if len(per) != z or not all(isinstance(v, bool) for v in per):
        raise _Fail(f"decision.per_target_accept must be {z} booleans")
    guarantee = _get(dec, "guarantee_met", bool, w)
    est = _get(dec, "residual_estimate", dict, w)
    w2 = "decision.residual_estimate."
    for name in ("y0", "yrho", "y2rho", "second_moment", "z0", "z1", "z2", "residual_interpolant"):
        _vec(est, name, z, w2)
    rho = _get(est, "rho", float, w2)
    if not _close(rho, _get(info["sizes"], "rho", float, "sizes.")):
        raise _Fail("decision.residual_estimate.rho differs from sizes.rho")
    if _vec(est, "residual", z, w2) != res:
        raise _Fail("decision.residual_hat differs from residual_estimate.residual")
    for t in range(z):
        if any(v < 0 for v in (mse[t], g[t])):  # type: ignore[operator]
            raise _Fail(f"target {t}: msê and the datamodel range must be non-negative")
        b = est["second_moment"][t] - est["z0"][t] - est["z1"][t]
        if not _close(b, res[t]):  # type: ignore[arg-type]
            raise _Fail(f"target {t}: B̂≥2 ≠ B̂ − z0 − z1 ({res[t]} vs {b})")
        if not _close(thr[t], res[t] + eps / 2.0):  # type: ignore[operator]
            raise _Fail(f"target {t}: threshold {thr[t]} ≠ B̂≥2 + ε/2 = {res[t] + eps / 2.0}")  # type: ignore[operator]
    rule = [mse[t] <= res[t] + eps / 2.0 for t in range(z)]  # type: ignore[operator]
    cert_ok = [c <= eps * (1.0 + GUARANTEE_RTOL) for c in cert_eps]  # type: ignore[operator]
    both = [r and c for r, c in zip(rule, cert_ok, strict=True)]
    expect = both if rule_name is RuleName.THEORY else rule
    if per != expect:
        t = next(i for i in range(z) if per[i] != expect[i])
        raise _Fail(
            f"target {t}: msê = {mse[t]} vs B̂≥2 + ε/2 = {res[t] + eps / 2.0} gives "  # type: ignore[operator]
            f"{'accept' if expect[t] else 'reject'}, but the certificate records "
            f"{'accept' if per[t] else 'reject'}"
        )
    if guarantee != all(cert_ok):
        raise _Fail("decision.guarantee_met disagrees with decision.epsilon_certified ≤ ε")
    if not all(expect):
        want = Verdict.REJECT
    else:
        want = Verdict.ACCEPT if all(cert_ok) else Verdict.INCONCLUSIVE
    _check_verdict(cert, want)


def _check_practical(cert: dict[str, Any], info: dict[str, Any]) -> None:
    dec = cert["decision"]
    z, w = info["z"], "decision."
    eps = _vec(dec, "epsilon", z, w)
    eps_rej = _vec(dec, "epsilon_reject", z, w)
    _vec(dec, "mse_estimate", z, w, nullable_items=True)
    lo_m = _vec(dec, "mse_lower", z, w)
    hi_m = _vec(dec, "mse_upper", z, w)
    r_lo = _vec(dec, "residual_lower", z, w)
    r_hi = _vec(dec, "residual_upper", z, w)
    err_up = _vec(dec, "err_upper", z, w)
    err_lo = _vec(dec, "err_lower", z, w)
    cert_eps = _vec(dec, "certified_epsilon", z, w)
    per = _get(dec, "per_target", list, w)
    _get(dec, "mse_samples", int, w)
    _get(dec, "tuples", int, w)
    guarantee = _get(dec, "guarantee_met", bool, w)
    ok: list[bool] = []
    bad: list[bool] = []
    for t in range(z):
        if lo_m[t] > hi_m[t] or r_lo[t] > r_hi[t] or eps[t] < 0 or r_lo[t] < 0:  # type: ignore[operator]
            raise _Fail(f"target {t}: needs mse_lower ≤ mse_upper, 0 ≤ B≥2_lower ≤ B≥2_upper")
        up = hi_m[t] - r_lo[t]  # type: ignore[operator]
        lo = lo_m[t] - r_hi[t]  # type: ignore[operator]
        if not _close(up, err_up[t]):  # type: ignore[arg-type]
            raise _Fail(f"target {t}: err_upper {err_up[t]} ≠ mse_upper − B≥2_lower = {up}")
        if not _close(lo, err_lo[t]):  # type: ignore[arg-type]
            raise _Fail(f"target {t}: err_lower {err_lo[t]} ≠ mse_lower − B≥2_upper = {lo}")
        if not _close(max(up, 0.0), cert_eps[t]):  # type: ignore[arg-type]
            raise _Fail(f"target {t}: certified_epsilon {cert_eps[t]} ≠ max(err_upper, 0)")
        ok.append(up <= eps[t])  # type: ignore[operator]
        bad.append(lo > eps_rej[t])  # type: ignore[operator]
        want = "accept" if ok[-1] else ("reject" if bad[-1] else "undetermined")
        if len(per) != z or per[t] != want:
            raise _Fail(f"target {t}: decision.per_target should be {want!r}")
    if all(ok):
        expect = Verdict.ACCEPT
    elif any(bad) or info["verdict"] == "reject":  # a failed check also rejects
        expect = Verdict.REJECT
    else:
        expect = Verdict.INCONCLUSIVE
    if guarantee != (expect is Verdict.ACCEPT):
        raise _Fail("decision.guarantee_met disagrees with the per-target err_upper ≤ ε")
    _check_verdict(cert, expect)


def _check_verdict(cert: dict[str, Any], expect: Verdict) -> None:
    verdict = cert["verdict"]
    if _get(cert["decision"], "verdict", str, "decision.") != verdict:
        raise _Fail(f"decision.verdict differs from the certificate's verdict {verdict!r}")
    if verdict != expect.value:
        raise _Fail(f"the numbers imply {expect.value!r} but the verdict is {verdict!r}")


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
            raise _Fail(f"certificate cannot be canonically encoded: {exc}") from exc
        if raw != canonical:
            raise _Fail(
                "the file is not in canonical form (sorted keys, no whitespace, ASCII, one "
                "trailing newline): it was edited after signing"
            )
        _check_signature(cert, trusted_key)
        info = _check_structure(cert)
        _check_spot(cert)
        if cert["decision"] is None:
            if cert["verdict"] != "reject":
                raise _Fail("only a rejection (a failed check) may come without its decision")
        elif info["rule"] is RuleName.PRACTICAL:
            _check_practical(cert, info)
        else:
            _check_manual(cert, info)
    except _Fail as exc:
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
    if dec is not None and RuleName.of(cert["parameters"]["mode"]) is RuleName.PRACTICAL:
        for t, (up, e) in enumerate(zip(dec["err_upper"], dec["epsilon"], strict=True)):
            lines.append(
                f"  target {t}: err_upper = {up:.6g} {'≤' if up <= e else '>'} ε = {e:.6g}"
            )
    elif dec is not None:
        half = dec["epsilon"] / 2.0
        for t, (m, r) in enumerate(zip(dec["mse_hat"], dec["residual_hat"], strict=True)):
            sign = "≤" if m <= r + half else ">"
            lines.append(f"  target {t}: msê = {m:.6g} {sign} B̂≥2 + ε/2 = {r + half:.6g}")
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
