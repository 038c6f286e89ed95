"""The Prover: retrains, estimates a datamodel, answers challenges.

``from prover import Prover`` serves one from Python (``prover.api.Prover``); it is imported on
first use, so importing a submodule does not start grpc or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Prover"]


def __getattr__(name: str) -> Any:
    if name == "Prover":
        from prover.api import Prover

        return Prover
    raise AttributeError(f"module 'prover' has no attribute {name!r}")
