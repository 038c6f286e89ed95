"""Which network addresses count as loopback: the one rule both the prover's plain-text policy
and the verifier's plain-text warning apply."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True only when ``host`` is a loopback IP literal (127.0.0.0/8, ::1) or ``localhost``.

    Anything else, including wildcard binds (``0.0.0.0``, ``::``, ``[::]``) and other hostnames,
    counts as non-loopback.
    """
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def address_host(address: str) -> str:
    """The host part of a gRPC target such as ``h:p``, ``[::1]:p`` or ``dns:///h:p``."""
    target = address.split("///", 1)[-1] if "://" in address else address
    if target.startswith("["):
        return target[1:].split("]", 1)[0]
    if target.count(":") > 1:  # a bare IPv6 literal without a port
        return target
    return target.rsplit(":", 1)[0] if ":" in target else target


def is_loopback_address(address: str) -> bool:
    """True when a gRPC target's host is ``localhost`` or a loopback IP literal."""
    return is_loopback_host(address_host(address))
