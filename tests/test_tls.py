"""Transport security end to end: TLS and mutual TLS between real prover and verifier processes on
127.0.0.1, the plain-text policy, health checking and reflection.

Certificates come from ``prover.tls.make_test_pki`` (a fresh CA per module, in tmp). The claim is
checked by the default practical rule at a loose ε = 1 (synthetic n = 100), which accepts an honest
claim on its MSE samples alone in a few seconds; these tests check the transport, not the
statistics.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protocol.addresses import address_host, is_loopback_address, is_loopback_host
from prover.tls import TestPki, check_plaintext_policy, make_test_pki
from tests.conftest import REPO, ProverProcess, run_verifier, start_prover
from verifier.client import GrpcTransport

TASK = "synthetic:n=100"
SIZES = ["--task", TASK, "--epsilon", "1.0", "--timeout", "30"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPki, TestPki]:
    """Our test CA with server and client certificates, and an unrelated second CA's."""
    d = tmp_path_factory.mktemp("pki")
    return make_test_pki(d), make_test_pki(d, prefix="other-")


def _prover(tmp: Path, *args: str) -> Iterator[ProverProcess]:
    prover = start_prover(tmp, "--task", TASK, *args)
    yield prover
    if prover.proc.poll() is None:
        prover.proc.kill()
        prover.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tls_prover(tmp_path_factory, pki) -> Iterator[ProverProcess]:
    """A prover serving TLS (no client certificates)."""
    ours, _ = pki
    yield from _prover(
        tmp_path_factory.mktemp("tls"),
        "--tls-cert", str(ours.server_cert), "--tls-key", str(ours.server_key),
    )  # fmt: skip


@pytest.fixture(scope="module")
def mtls_prover(tmp_path_factory, pki) -> Iterator[ProverProcess]:
    """A prover serving mutual TLS: client certificates from our CA required."""
    ours, _ = pki
    yield from _prover(
        tmp_path_factory.mktemp("mtls"),
        "--tls-cert", str(ours.server_cert), "--tls-key", str(ours.server_key),
        "--tls-client-ca", str(ours.ca_cert),
    )  # fmt: skip


def _client(p: TestPki, ca: TestPki | None = None) -> list[str]:
    ca = ca or p
    return ["--tls-ca", str(ca.ca_cert), "--tls-cert", str(p.client_cert),
            "--tls-key", str(p.client_key)]  # fmt: skip


# ---- TLS ---------------------------------------------------------------------------------------


def test_tls_honest_run_is_accepted(tls_prover, pki) -> None:
    ours, _ = pki
    assert "with TLS" in tls_prover.log()
    rc, out = run_verifier(tls_prover.address, *SIZES, "--tls-ca", str(ours.ca_cert))
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    assert out["prover_transcript_agrees"] is True


def test_tls_server_name_override(tls_prover, pki) -> None:
    ours, _ = pki
    port = tls_prover.address.rsplit(":", 1)[1]
    # Connect by IP but check the certificate against "localhost" (in its subjectAltName).
    rc, out = run_verifier(
        f"127.0.0.1:{port}", *SIZES, "--tls-ca", str(ours.ca_cert), "--tls-server-name", "localhost"
    )
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]
    rc, out = run_verifier(
        tls_prover.address, *SIZES, "--tls-ca", str(ours.ca_cert), "--tls-server-name", "evil.test"
    )
    assert (rc, out["verdict"]) == (2, "error")
    assert "TLS handshake failed" in out["reason"]


def test_client_trusting_the_wrong_ca_is_an_error(tls_prover, pki) -> None:
    _, other = pki
    rc, out = run_verifier(tls_prover.address, *SIZES, "--tls-ca", str(other.ca_cert))
    assert (rc, out["verdict"]) == (2, "error")
    assert "TLS handshake failed" in out["reason"], out["reason"]


def test_plaintext_client_against_tls_prover_is_an_error(tls_prover) -> None:
    rc, out = run_verifier(tls_prover.address, *SIZES)
    assert (rc, out["verdict"]) == (2, "error")
    assert "unreachable or disconnected" in out["reason"]
    assert "--tls-ca" in out["reason"]


# ---- mutual TLS --------------------------------------------------------------------------------


def test_mtls_honest_run_with_client_certificate_is_accepted(mtls_prover, pki) -> None:
    ours, _ = pki
    assert "with mutual TLS" in mtls_prover.log()
    rc, out = run_verifier(mtls_prover.address, *SIZES, *_client(ours))
    assert (rc, out["verdict"]) == (0, "accept"), out["reason"]


def test_mtls_without_client_certificate_is_an_error(mtls_prover, pki) -> None:
    ours, _ = pki
    rc, out = run_verifier(mtls_prover.address, *SIZES, "--tls-ca", str(ours.ca_cert))
    assert (rc, out["verdict"]) == (2, "error")
    assert "client certificates" in out["reason"], out["reason"]


def test_mtls_client_certificate_from_another_ca_is_an_error(mtls_prover, pki) -> None:
    ours, other = pki
    # The client trusts the right server CA but presents a certificate the prover does not trust.
    rc, out = run_verifier(mtls_prover.address, *SIZES, *_client(other, ca=ours))
    assert (rc, out["verdict"]) == (2, "error")
    assert "TLS handshake failed" in out["reason"], out["reason"]


def _mtls_channel(address: str, p: TestPki) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        p.ca_cert.read_bytes(), p.client_key.read_bytes(), p.client_cert.read_bytes()
    )
    return grpc.secure_channel(address, creds)


def test_health_check_reports_serving(mtls_prover, pki) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ours, _ = pki
    with _mtls_channel(mtls_prover.address, ours) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "attribution.v1.Prover"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(mtls_prover, pki) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ours, _ = pki
    with _mtls_channel(mtls_prover.address, ours) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"attribution.v1.Prover", "grpc.health.v1.Health"} <= names


# ---- plain-text policy and flag checks (no network needed) -------------------------------------


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "[::]", "10.0.0.1", "prover.example", ""):
        assert not is_loopback_host(host), host
    assert address_host("[::1]:50051") == "::1"
    assert address_host("dns:///prover.example:443") == "prover.example"
    assert is_loopback_address("localhost:1")
    assert not is_loopback_address("0.0.0.0:1")


def test_plaintext_policy() -> None:
    assert check_plaintext_policy("127.0.0.1", tls=False, insecure_plaintext=False) is None
    assert check_plaintext_policy("0.0.0.0", tls=True, insecure_plaintext=False) is None
    with pytest.raises(ValueError, match="refusing to serve plain-text"):
        check_plaintext_policy("0.0.0.0", tls=False, insecure_plaintext=False)
    warning = check_plaintext_policy("0.0.0.0", tls=False, insecure_plaintext=True)
    assert warning is not None
    assert "INSECURE" in warning


def test_prover_refuses_plaintext_on_non_loopback_before_binding(monkeypatch, capsys) -> None:
    import prover.cli
    import prover.server

    def must_not_bind(*_a, **_k):
        raise AssertionError("build_server must not be reached")

    monkeypatch.setattr(prover.server, "build_server", must_not_bind)
    monkeypatch.setattr(prover.cli, "load_task_on", must_not_bind)
    rc = prover.cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--task", TASK])
    assert rc == 2
    assert "refusing to serve plain-text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "needs --tls-cert"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "cannot read"),
        (["--session-ttl", "0"], "--session-ttl must be positive"),
    ],
)
def test_prover_rejects_bad_transport_flags(monkeypatch, capsys, flags, message) -> None:
    import prover.cli

    def must_not_run(*_a, **_k):
        raise AssertionError("must fail before loading the task")

    monkeypatch.setattr(prover.cli, "load_task_on", must_not_run)
    assert prover.cli.main(["serve", "--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err


def test_verifier_rejects_client_certificate_without_ca(tmp_path) -> None:
    cmd = [sys.executable, "-m", "verifier.cli", "verify", "--prover", "127.0.0.1:1", "--json",
           *SIZES, "--tls-cert", "c.pem", "--tls-key", "c.key"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "need --tls-ca" in out.stdout


def test_client_refuses_plaintext_off_loopback_unless_told(caplog) -> None:
    # Channels connect lazily: no RPC is made, so nothing is sent anywhere.
    with caplog.at_level(logging.WARNING, logger="verifier"):
        GrpcTransport("127.0.0.1:1", 1.0).close()
        assert "plain-text" not in caplog.text
        with pytest.raises(ValueError, match=r"refusing plain-text gRPC to 192\.0\.2\.1:50051"):
            GrpcTransport("192.0.2.1:50051", 1.0)
        GrpcTransport("192.0.2.1:50051", 1.0, insecure_plaintext=True).close()
    assert "INSECURE: plain-text" in caplog.text


def test_verify_cli_refuses_plaintext_off_loopback_with_exit_2() -> None:
    # refused before any channel exists: nothing is sent to the documentation address
    rc, out = run_verifier("192.0.2.1:50051", *SIZES, "--timeout", "5")
    assert (rc, out["verdict"]) == (2, "error")
    assert "--insecure-plaintext" in out["reason"]


def test_tls_binds_the_authenticated_prover_identity_in_the_certificate(
    tls_prover, pki, tmp_path
) -> None:
    import hashlib
    import json

    ours, _ = pki
    cert_path = tmp_path / "cert.json"
    rc, out = run_verifier(
        tls_prover.address, *SIZES, "--tls-ca", str(ours.ca_cert),
        "--certificate", str(cert_path), "--key", str(tmp_path / "k" / "v.key"),
    )  # fmt: skip
    assert rc == 0, out["reason"]
    who = out["prover_identity"]
    assert who["authenticated"] is True
    assert who["transport"] == "tls"
    assert who["server_name"] == tls_prover.address.rsplit(":", 1)[0]
    assert who["ca_sha256"] == hashlib.sha256(ours.ca_cert.read_bytes()).hexdigest()
    cert = json.loads(cert_path.read_text())
    assert cert["prover_identity"] == who  # signed together with the claim's digest
