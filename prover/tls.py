"""Transport security for the prover: TLS / mutual-TLS credentials, the plaintext policy, and a
helper that makes a throw-away test PKI (CA, server and client certificates) with ``cryptography``.

Run ``python -m prover.tls make-test-certs DIR`` to write a test CA, a server certificate for
``localhost`` / ``127.0.0.1`` and a client certificate into ``DIR``. These certificates are for
tests and local experiments only: the CA key is written next to them, unencrypted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from protocol.addresses import is_loopback_host

#: Hostnames and addresses the test server certificate is valid for (subjectAltName).
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def check_plaintext_policy(host: str, tls: bool, insecure_plaintext: bool) -> str | None:
    """Enforce "plain-text only on loopback": raise or return a warning to log.

    Returns ``None`` when the configuration is fine (TLS, or plain-text on loopback), a warning
    string when plain-text on a non-loopback address was explicitly allowed with
    ``insecure_plaintext``, and raises ``ValueError`` with a readable reason when plain-text on a
    non-loopback address was not allowed.
    """
    if tls or is_loopback_host(host):
        return None
    if not insecure_plaintext:
        raise ValueError(
            f"refusing to serve plain-text gRPC on non-loopback address {host!r}: give "
            "--tls-cert/--tls-key (and --tls-client-ca for mutual TLS), or --insecure-plaintext "
            "to accept that anyone on the network can read and alter the protocol"
        )
    return (
        f"INSECURE: serving plain-text gRPC on non-loopback address {host} "
        "(--insecure-plaintext); traffic is neither encrypted nor authenticated"
    )


def _read(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {str(path)!r} is not a PEM file")
    return data


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS server credentials from PEM files; with ``client_ca``, mutual TLS.

    With ``client_ca`` the server requires every client to present a certificate that chains to
    that CA and refuses the handshake otherwise. Raises ``ValueError`` naming an unreadable file.
    """
    pair = (_read(key, "--tls-key"), _read(cert, "--tls-cert"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=_read(client_ca, "--tls-client-ca"),
        require_client_auth=True,
    )


# --------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class TestPki:
    """Paths of a generated test PKI (all PEM)."""

    __test__ = False  # not a pytest test class

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert, path: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(names: Sequence[str]):  # type: ignore[no-untyped-def]
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_test_pki(
    directory: str | Path,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    prefix: str = "",
    days: int = 30,
) -> TestPki:
    """Write a fresh test CA, a server certificate and a client certificate into ``directory``.

    The server certificate's subjectAltName lists ``server_names`` (DNS names or IP literals) and
    is for serverAuth; the client certificate (CN ``verifier``) is for clientAuth; both are signed
    by the new CA (ECDSA P-256, SHA-256, valid ``days`` days). Files are named
    ``{prefix}ca.pem``, ``{prefix}ca.key``, ``{prefix}server.pem``, ``{prefix}server.key``,
    ``{prefix}client.pem`` and ``{prefix}client.key``; keys are unencrypted and mode 0600.
    For tests and local experiments only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "verifiable-attribution test"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    ca_key = _key()
    ca_name = name(f"{prefix}test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, names: Sequence[str]):  # type: ignore[no-untyped-def]
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("prover", ExtendedKeyUsageOID.SERVER_AUTH, server_names)
    client_key, client_cert = leaf("verifier", ExtendedKeyUsageOID.CLIENT_AUTH, ["verifier"])

    pki = TestPki(
        ca_cert=out / f"{prefix}ca.pem",
        ca_key=out / f"{prefix}ca.key",
        server_cert=out / f"{prefix}server.pem",
        server_key=out / f"{prefix}server.key",
        client_cert=out / f"{prefix}client.pem",
        client_key=out / f"{prefix}client.key",
    )
    _write_cert(ca_cert, pki.ca_cert)
    _write_key(ca_key, pki.ca_key)
    _write_cert(server_cert, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(client_cert, pki.client_cert)
    _write_key(client_key, pki.client_key)
    return pki


def main(argv: list[str] | None = None) -> int:
    """``python -m prover.tls make-test-certs DIR [--name NAME ...]``; exit 0 on success."""
    parser = argparse.ArgumentParser(prog="python -m prover.tls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-test-certs", help="write a test CA, server and client certificate")
    mk.add_argument("directory")
    mk.add_argument(
        "--name",
        action="append",
        default=None,
        help="server subjectAltName (DNS name or IP), repeatable (default localhost 127.0.0.1 ::1)",
    )
    mk.add_argument("--prefix", default="", help="prefix for every file name")
    mk.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    pki = make_test_pki(
        args.directory, tuple(args.name or DEFAULT_SERVER_NAMES), args.prefix, args.days
    )
    for field, path in vars(pki).items():
        print(f"{field:12s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
