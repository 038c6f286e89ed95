"""The lightweight Verifier: challenges a prover, spot-checks it, and accepts or rejects.

``from verifier import verify`` is the Python front door (``verifier.api.verify``); it is
imported on first use, so ``import verifier.session`` stays free of grpc.
"""

from __future__ import annotations

from typing import Any

__all__ = ["verify"]


def __getattr__(name: str) -> Any:
    if name == "verify":
        from verifier.api import verify

        return verify
    raise AttributeError(f"module 'verifier' has no attribute {name!r}")
