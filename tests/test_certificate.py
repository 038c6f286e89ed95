"""Signed certificates: real in-process runs, offline audit, tampering, and the key file.

The practical rule at ε = 0.3 on synthetic n = 50, z = 2 (B≥2 = 0.2, so the honest claim is
accepted on its MSE in a few seconds); the paper's rule at the sizes of tests/test_sessions.py
(inconclusive: its sizes certify a far looser ε).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from protocol.accounting import plan_manual
from protocol.rules.base import CheckMode
from protocol.tasks.synthetic import SyntheticTask
from prover.strategy import Attribution, HonestStrategy
from simulations.adversaries import Scale
from simulations.inprocess import InProcessTransport
from verifier import cli
from verifier.audit import audit_file
from verifier.certificate import (
    KeyFileError,
    attribution_digest,
    build_certificate,
    encode_certificate,
    load_or_create_key,
    sign_certificate,
    write_certificate,
)
from verifier.driver import run_protocol
from verifier.planning import PlanOptions, make_verifier_plan
from verifier.session import VerifierSession

TASK = SyntheticTask(n=50, z=2, p=0.5, seed=3)


def _plan(practical: bool = True, epsilon: float = 0.3):
    if practical:
        return make_verifier_plan(PlanOptions(epsilon=epsilon), TASK)[0]
    return plan_manual(
        epsilon=0.3,
        delta=0.05,
        output_bound=TASK.output_bound,
        tolerance=TASK.tolerance,
        num_targets=TASK.num_targets,
        pairs_per_level=4000,
        spot_checks=32,
        mse_samples=2000,
        rho=0.25,
    )


def _exact() -> Attribution:
    truth = TASK.truth()
    return Attribution(truth.intercept, truth.coefficients, "exact", 0)


def _run(strategy=None, practical: bool = True, epsilon: float = 0.3):
    session = VerifierSession(TASK, _plan(practical, epsilon), checks=CheckMode.RETRAIN)
    result = run_protocol(
        session, InProcessTransport(TASK, strategy or HonestStrategy(TASK, _exact()))
    )
    return session, result


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(certificate path, key, session, result) of one honest accepted run."""
    base = tmp_path_factory.mktemp("cert")
    key = load_or_create_key(base / "keys" / "verifier.key")
    session, result = _run()
    assert result.verdict == "accept", result.reason
    path = write_certificate(base / "cert.json", build_certificate(result, session, key))
    return path, key, session, result


def _audit_rc(path: Path, *extra: str) -> int:
    return cli.main(["audit", str(path), *extra])


def test_real_run_certificate_is_accepted_by_audit(signed, capsys) -> None:
    path, _key, session, result = signed
    assert _audit_rc(path) == 0
    out = capsys.readouterr().out
    assert "certificate holds" in out
    assert "does NOT prove" in out
    cert = json.loads(path.read_text())
    assert cert["verdict"] == "accept"
    assert cert["task"]["task_hash"] == TASK.identity().task_hash
    assert cert["transcript_hash"] == result.details["transcript_hash"]
    # one committed Merkle root per challenge round, in order (none here: accepted on the MSE)
    assert cert["merkle_roots"] == [r.root.hex() for r in session.rounds]
    assert cert["attribution"]["digest"] == attribution_digest(
        session.intercepts, session.coefficients
    )
    assert cert["attribution"]["digest"] == result.details["claim_digest"]
    assert cert["decision"]["err_upper"] == result.details["err_upper"]
    assert cert["decision"]["guarantee_met"] is True
    assert cert["parameters"]["mode"] == "practical"
    assert cert["parameters"]["checks"] == "retrain"
    assert cert["parameters"]["delta"] == 0.05
    assert cert["issued_at"].endswith("Z")


def test_pinned_public_key(signed, capsys) -> None:
    path, _key, _, _ = signed
    pub = json.loads(path.read_text())["verifier_key"]["public_key"]
    assert _audit_rc(path, "--public-key", pub) == 0
    assert _audit_rc(path, "--public-key", "00" * 32) == 1


def test_attribution_digest_binds_values_and_shape() -> None:
    truth = TASK.truth()
    d = attribution_digest(truth.intercept, truth.coefficients)
    a = truth.coefficients.copy()
    a[1, 7] = float(a[1, 7]) + 1e-15 * max(1.0, abs(float(a[1, 7])))
    assert attribution_digest(truth.intercept, a) != d
    assert attribution_digest(truth.intercept[:1], truth.coefficients[:1]) != d
    with pytest.raises(ValueError, match="need intercepts"):
        attribution_digest(truth.intercept, truth.coefficients.ravel())


def _positions(raw: bytes) -> list[int]:
    """Every 7th byte plus positions inside the numbers, verdict, signature and public key."""
    text = raw.decode()
    picks = set(range(0, len(raw), 7)) | {len(raw) - 1}
    needles = ('"verdict":"accept"', '"signature":"', '"public_key":"', '"err_upper":[',
               '"mse_upper":[', '"residual_lower":[', '"task_hash":"', '"digest":"')  # fmt: skip
    for needle in needles:
        start = text.index(needle)
        picks.update(range(start, start + len(needle) + 12))
    return sorted(p for p in picks if p < len(raw))


def test_any_single_byte_flip_fails_audit(signed, tmp_path) -> None:
    path, _, _, _ = signed
    raw = path.read_bytes()
    target = tmp_path / "flipped.json"
    positions = _positions(raw)
    assert len(positions) > 500
    for pos in positions:
        for mask in (0x01, 0x20):  # low bit (digit/hex/letter changes) and case/space bit
            data = bytearray(raw)
            data[pos] ^= mask
            target.write_bytes(bytes(data))
            try:
                ok = audit_file(target).ok
            except Exception:  # unreadable counts as a failure (exit 2)
                ok = False
            assert not ok, f"flip {mask:#x} at byte {pos} ({raw[pos : pos + 1]!r}) went unnoticed"


def test_flip_exit_codes(signed, tmp_path) -> None:
    path, _, _, _ = signed
    raw = bytearray(path.read_bytes())
    i = raw.index(b'"verdict":"accept"') + len('"verdict":"')
    raw[i] ^= 0x01  # accept -> `ccept
    (tmp_path / "a.json").write_bytes(bytes(raw))
    assert _audit_rc(tmp_path / "a.json") == 1
    (tmp_path / "b.json").write_bytes(b"{not json")
    assert _audit_rc(tmp_path / "b.json") == 2
    assert _audit_rc(tmp_path / "missing.json") == 2


def _resign(cert: dict, key, tmp_path: Path, name: str) -> Path:
    return write_certificate(tmp_path / name, sign_certificate(cert, key))


def test_resigned_contradiction_fails(signed, tmp_path, capsys) -> None:
    path, key, _, _ = signed
    original = json.loads(path.read_text())
    # Untouched and re-signed: still holds (the signing path itself is sound).
    assert _audit_rc(_resign(original, key, tmp_path, "same.json")) == 0
    # An MSE upper bound far above ε, verdict still accept (err_upper made to match).
    cert = json.loads(path.read_text())
    cert["decision"]["mse_upper"][1] = 5.0
    assert _audit_rc(_resign(cert, key, tmp_path, "mse.json")) == 1
    assert "target 1" in capsys.readouterr().out
    cert = json.loads(path.read_text())
    cert["decision"]["mse_upper"][1] = 5.0
    cert["decision"]["err_upper"][1] = 5.0 - cert["decision"]["residual_lower"][1]
    cert["decision"]["certified_epsilon"][1] = cert["decision"]["err_upper"][1]
    assert _audit_rc(_resign(cert, key, tmp_path, "mse2.json")) == 1
    assert "per_target" in capsys.readouterr().out
    # Verdict flipped to reject or inconclusive while the numbers say accept.
    for other in ("reject", "inconclusive"):
        cert = json.loads(path.read_text())
        cert["verdict"] = other
        cert["decision"]["verdict"] = other
        assert _audit_rc(_resign(cert, key, tmp_path, f"verdict-{other}.json")) == 1
    # err_upper inconsistent with mse_upper − B≥2_lower.
    cert = json.loads(path.read_text())
    cert["decision"]["err_upper"][0] -= 0.01
    assert _audit_rc(_resign(cert, key, tmp_path, "err.json")) == 1
    # Task hash that does not follow from spec and data hashes.
    cert = json.loads(path.read_text())
    cert["task"]["task_hash"] = "0" * 64
    assert _audit_rc(_resign(cert, key, tmp_path, "task.json")) == 1
    # Missing and mistyped fields.
    cert = json.loads(path.read_text())
    del cert["transcript_hash"]
    assert _audit_rc(_resign(cert, key, tmp_path, "missing.json")) == 1
    cert = json.loads(path.read_text())
    cert["decision"]["mse_upper"][0] = "0.1"
    assert _audit_rc(_resign(cert, key, tmp_path, "type.json")) == 1


def test_non_canonical_file_fails(signed, tmp_path) -> None:
    path, _, _, _ = signed
    cert = json.loads(path.read_text())
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(cert, indent=1, sort_keys=True))
    assert not audit_file(pretty).ok
    assert encode_certificate(cert) == path.read_bytes()


def test_papers_rule_inconclusive_certificate_holds_and_says_so(tmp_path) -> None:
    key = load_or_create_key(tmp_path / "k" / "verifier.key")
    session, result = _run(practical=False)
    assert result.verdict == "inconclusive", result.reason
    path = write_certificate(tmp_path / "inc.json", build_certificate(result, session, key))
    assert _audit_rc(path) == 0
    cert = json.loads(path.read_text())
    assert cert["decision"]["guarantee_met"] is False
    cert["verdict"] = "accept"
    cert["decision"]["verdict"] = "accept"
    assert _audit_rc(_resign(cert, key, tmp_path, "inc2.json")) == 1


def test_rejected_run_certificate_holds(tmp_path) -> None:
    key = load_or_create_key(tmp_path / "k" / "verifier.key")
    session, result = _run(Scale(TASK, _exact(), -0.3))
    assert result.verdict == "reject"
    path = write_certificate(tmp_path / "rej.json", build_certificate(result, session, key))
    assert _audit_rc(path) == 0
    cert = json.loads(path.read_text())
    cert["verdict"] = "accept"
    if cert["decision"] is not None:
        cert["decision"]["verdict"] = "accept"
    assert _audit_rc(_resign(cert, key, tmp_path, "rej2.json")) == 1


def test_key_file_permissions(tmp_path, monkeypatch) -> None:
    path = tmp_path / "cfg" / "sub" / "verifier.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    # Second use loads the same key.
    same = load_or_create_key(path)
    assert same.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    # The environment variable names the default.
    monkeypatch.setenv("ATTRIBUTION_VERIFIER_KEY", str(path))
    env_key = load_or_create_key()
    assert env_key.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match="chmod 600"):
            load_or_create_key(path)
    os.chmod(path, 0o600)
    load_or_create_key(path)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="PEM"):
        load_or_create_key(bad)


def test_verify_refuses_open_key_before_running(tmp_path, capsys) -> None:
    key = tmp_path / "open.key"
    load_or_create_key(key)
    os.chmod(key, 0o644)
    rc = cli.main(
        ["verify", "--prover", "127.0.0.1:1", "--task", "synthetic:n=20,z=1",
         "--certificate", str(tmp_path / "c.json"), "--key", str(key), "--no-progress"]
    )  # fmt: skip
    assert rc == 2
    assert "accessible by group or others" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


# ---- issue #16 item 5: keys that vouch for nothing, reported numbers, the unpinned signer ----

#: Ed25519 encodings of small-order points: the identity (y = 1), the point of order 2
#: (y = −1), and one of order 4 (x² = −1 on the twisted curve: y = 0).
IDENTITY = (1).to_bytes(32, "little")
ORDER_2 = (2**255 - 19 - 1).to_bytes(32, "little")
ORDER_4 = (0).to_bytes(32, "little")


def _forge(cert: dict, public_key: bytes, signature: bytes, path: Path) -> Path:
    forged = {k: v for k, v in cert.items() if k != "signature"}
    forged["verifier_key"] = {"algorithm": "Ed25519", "public_key": public_key.hex()}
    forged["signature"] = signature.hex()
    path.write_bytes(encode_certificate(forged))
    return path


def test_identity_key_forgery_fails_audit(signed, tmp_path, capsys) -> None:
    """(A = identity, R = identity, S = 0) satisfies S·B = R + h·A for every message: a
    "signature" no one holds a key for. The audit refuses small-order keys before verifying."""
    path, _key, _, _ = signed
    cert = json.loads(path.read_text())
    identity_r = (1).to_bytes(32, "little")
    forged = _forge(cert, IDENTITY, identity_r + bytes(32), tmp_path / "forged.json")
    assert _audit_rc(forged) == 1
    out = capsys.readouterr().out
    assert "small order" in out
    assert "certificate holds" not in out


@pytest.mark.parametrize("point", [IDENTITY, ORDER_2, ORDER_4], ids=["identity", "o2", "o4"])
def test_small_order_and_noncanonical_keys_are_weak(point: bytes) -> None:
    from verifier.signing_keys import weak_key_reason

    assert weak_key_reason(point) is not None
    assert "small order" in weak_key_reason(point)  # type: ignore[operator]
    noncanonical = (2**255 - 19 + 1).to_bytes(32, "little")  # y = p + 1 names y = 1 again
    assert "canonical" in weak_key_reason(noncanonical)  # type: ignore[operator]


def test_real_keys_are_not_weak(signed) -> None:
    from verifier.signing_keys import weak_key_reason

    path, _key, _, _ = signed
    pub = bytes.fromhex(json.loads(path.read_text())["verifier_key"]["public_key"])
    assert weak_key_reason(pub) is None
    for i in range(20):  # fresh keys: a false alarm here would refuse honest certificates
        fresh = load_or_create_key(path.parent / f"k{i}" / "v.key")
        raw = bytes.fromhex(sign_certificate({}, fresh)["verifier_key"]["public_key"])
        assert weak_key_reason(raw) is None


def test_prover_count_is_signed_as_reported_beside_the_verified_one(signed, capsys) -> None:
    path, _key, session, result = signed
    cert = json.loads(path.read_text())
    ret = cert["retrainings"]
    assert "prover" not in ret
    assert ret["prover_reported"] == result.prover_retrainings
    assert ret["prover_verified"] == session.prover_retrainings_verified
    assert _audit_rc(path) == 0
    out = capsys.readouterr().out
    assert "reported (unverified)" in out


def test_audit_without_a_pinned_key_says_what_it_has_not_checked(signed, capsys) -> None:
    path, _key, _, _ = signed
    assert _audit_rc(path) == 0
    assert "SIGNER NOT CHECKED" in capsys.readouterr().out
    pub = json.loads(path.read_text())["verifier_key"]["public_key"]
    assert _audit_rc(path, "--public-key", pub) == 0
    assert "SIGNER NOT CHECKED" not in capsys.readouterr().out
    assert _audit_rc(path, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signer_pinned"] is False
    assert any("SIGNER NOT CHECKED" in line for line in doc["not_checked"])
