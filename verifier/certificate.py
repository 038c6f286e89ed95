"""Signed verdict certificates: build, sign, write, and the verifier's Ed25519 key file.

A certificate is one JSON object written in canonical form (sorted keys, no whitespace, ASCII
only, a single trailing newline). ``signature`` is an Ed25519 signature by ``verifier_key`` over
the canonical JSON of every other field. :mod:`verifier.audit` checks it offline.
See ``docs/certificates.md`` for the format and what a certificate does and does not prove.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import stat
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.claim import claim_digest
from protocol.rules.base import RuleName

#: The ``format`` field of every certificate this module writes.
CERTIFICATE_FORMAT = "verifiable-attribution/certificate/v1"
#: Environment variable naming the key file (``--key`` wins over it).
KEY_ENV = "ATTRIBUTION_VERIFIER_KEY"


class KeyFileError(ValueError):
    """The verifier's key file is unsafe, unreadable or not an Ed25519 private key."""


class CertificateError(ValueError):
    """No certificate can be written for this result (e.g. the run ended in an error)."""


# ---- canonical JSON -------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` made of dict/list/str/int/float/bool/None only.

    numpy arrays and scalars become lists and Python numbers, bytes become hex, enums their
    values, tuples become lists, and non-finite floats become ``None`` (JSON has no NaN); dict
    keys become strings.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, Enum):  # RuleName, CheckMode, Verdict: their wire names
        return jsonable(obj.value)
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    raise TypeError(f"cannot put a {type(obj).__name__} into a certificate")


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding: sorted keys, no whitespace, ASCII only, no NaN (UTF-8 bytes).

    Floats are written with Python's shortest round-trip repr, so decoding and re-encoding a
    canonical document reproduces it byte for byte.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def signed_bytes(certificate: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the canonical JSON of every field but ``signature``."""
    return canonical_json({k: v for k, v in certificate.items() if k != "signature"})


def encode_certificate(certificate: dict[str, Any]) -> bytes:
    """The file contents: canonical JSON of the whole certificate plus one newline."""
    return canonical_json(certificate) + b"\n"


# ---- attribution digest ---------------------------------------------------------------------


def attribution_digest(intercepts: Any, coefficients: Any) -> str:
    """SHA-256 (hex) of the claim, :func:`protocol.claim.claim_digest` (one home for the bytes)."""
    return claim_digest(intercepts, coefficients).hex()


# ---- key file -------------------------------------------------------------------------------


def default_key_path() -> Path:
    """``$ATTRIBUTION_VERIFIER_KEY`` if set, else the per-user default.

    The default is ``~/.config/verifiable-attribution/verifier.key``.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".config" / "verifiable-attribution" / "verifier.key"


def _check_key_file(path: Path) -> None:
    try:
        st = path.lstat()
    except OSError as exc:
        raise KeyFileError(f"cannot read verifier key {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"verifier key {path} is not a regular file (symlinks are refused)")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"verifier key {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it. Run `chmod 600 {path}` if "
            "nobody else could have read it, otherwise delete it so a new key is created"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise KeyFileError(f"verifier key {path} is owned by another user (uid {st.st_uid})")


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask


def load_or_create_key(path: Path | str | None = None) -> Ed25519PrivateKey:
    """The verifier's Ed25519 private key from ``path`` (default :func:`default_key_path`).

    Creates the key on first use: new parent directories get mode 0700, the file mode 0600, and
    it appears atomically (written to a private temporary file, then hard-linked into place, so
    two verifiers starting at once end up with the same key). Raises :class:`KeyFileError` when
    the file is readable by group/others, not a regular file, owned by someone else, or not an
    unencrypted PKCS#8 PEM Ed25519 key.
    """
    key_path = Path(path).expanduser() if path is not None else default_key_path()
    if not key_path.exists() and not key_path.is_symlink():
        _make_private_dirs(key_path.parent)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(prefix=".verifier-key-", dir=key_path.parent)  # mode 0600
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            # link fails if another process created the key meanwhile: then that key is used.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, key_path)
        finally:
            os.unlink(tmp)
    _check_key_file(key_path)
    try:
        key_obj = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise KeyFileError(
            f"verifier key {key_path} is not a readable PEM private key: {exc}"
        ) from exc
    if not isinstance(key_obj, Ed25519PrivateKey):
        raise KeyFileError(f"verifier key {key_path} is not an Ed25519 key")
    return key_obj


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte Ed25519 public key, hex encoded."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


# ---- building and signing -------------------------------------------------------------------


def sign_certificate(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``body`` with ``verifier_key`` set to ``key``'s public key and a fresh ``signature``."""
    cert = jsonable({k: v for k, v in body.items() if k != "signature"})
    cert["verifier_key"] = {"algorithm": "Ed25519", "public_key": public_key_hex(key)}
    cert["signature"] = key.sign(signed_bytes(cert)).hex()
    return cert


#: The fields of a practical run's decision a certificate carries (audit recomputes them).
PRACTICAL_DECISION_FIELDS = (
    "epsilon", "epsilon_reject", "mse_estimate", "mse_upper", "mse_lower", "residual_lower",
    "residual_upper", "err_upper", "err_lower", "per_target", "certified_epsilon", "mse_samples",
    "tuples",
)  # fmt: skip


def decision_of(result: Any) -> dict[str, Any] | None:
    """The decision a certificate records: the paper rule's numbers, or the practical rule's."""
    details = result.details
    if RuleName.of(details.get("mode")) is RuleName.PRACTICAL:
        if details.get("err_upper") is None:
            return None
        dec = {k: details.get(k) for k in PRACTICAL_DECISION_FIELDS}
    else:
        dec = details.get("decision")
        if dec is None:
            return None
        dec = dict(dec)
    dec["verdict"] = result.verdict
    dec["guarantee_met"] = bool(details.get("guarantee_met"))
    return dec


def build_certificate(
    result: Any,
    session: Any,
    key: Ed25519PrivateKey,
    checks: str | None = None,
    epsilon_rel: float | None = None,
    issued_at: _dt.datetime | None = None,
) -> dict[str, Any]:
    """A signed certificate for a finished run (``result`` from ``run_protocol``).

    ``session`` is the :class:`verifier.session.VerifierSession` that produced it (task
    identity, plan, the received attribution). Raises :class:`CertificateError` when the run
    ended in an error (an error certifies nothing) or the attribution is incomplete on an
    accepting run. An inconclusive run is certified as such: it records the ε it did certify.
    """
    if result.verdict not in ("accept", "reject", "inconclusive"):
        raise CertificateError(
            f"the run ended in {result.verdict!r} ({result.reason}); no certificate is written"
        )
    details = result.details
    ident = session.task.identity()
    plan = session.plan.to_dict()
    complete = bool(
        np.all(np.isfinite(session.intercepts)) and np.all(np.isfinite(session.coefficients))
    )
    if not complete and result.verdict == "accept":
        raise CertificateError("accepted run without a complete attribution (internal error)")
    when = issued_at or _dt.datetime.now(_dt.UTC)
    roots = [r.root.hex() for r in getattr(session, "rounds", []) if r.root is not None]
    body: dict[str, Any] = {
        "format": CERTIFICATE_FORMAT,
        "issued_at": when.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "task": {
            "selector": session.selector,
            "task_hash": ident.task_hash,
            "spec_hash": ident.spec_hash,
            "data_hash": ident.data_hash,
        },
        "parameters": {
            "epsilon": result.epsilon,
            "epsilon_rel": epsilon_rel,
            "delta": result.delta,
            "mode": session.plan.mode,
            "checks": checks or session.checks.value,
        },
        "sizes": plan,
        "transcript_hash": details.get("transcript_hash"),
        "merkle_root": roots[-1] if roots else None,
        "merkle_roots": roots,
        "attribution": {
            "digest": attribution_digest(session.intercepts, session.coefficients)
            if complete
            else None,
            "encoding": "sha256(prefix || Z,N as <u8 || intercepts <f8 || coefficients <f8 "
            "row-major); prefix = 'attribution.v1/datamodel\\x00'",
            "num_targets": int(session.Z),
            "num_train_points": int(session.N),
        },
        # who the claim came from, as the channel authenticated it (TLS: the checked server
        # name and the CA; plain text: only an address, marked unauthenticated)
        "prover_identity": details.get("prover_identity"),
        "verdict": result.verdict,
        "reason": result.reason,
        "decision": decision_of(result),
        "spot_check": details.get("spot_check"),
        "retrainings": {
            "verifier": float(result.verifier_retrainings),
            # what the prover says it spent: signed as reported, not as fact
            "prover_reported": int(result.prover_retrainings),
            # what this run saw it do: committed challenge members and supplied models
            "prover_verified": int(session.prover_retrainings_verified),
        },
    }
    return sign_certificate(body, key)


def write_certificate(path: Path | str, certificate: dict[str, Any]) -> Path:
    """Write ``certificate`` canonically to ``path`` atomically (temp file + rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cert-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode_certificate(certificate))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
