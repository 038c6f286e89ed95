"""The prover's claim (c, a): its validation and the digest that binds it.

The claim is sent in full, before the verifier draws the public challenge seed or reveals its
secret MSE sample, and its digest enters both transcripts, so nothing the verdict depends on can
be chosen after the claim. (A hash commitment opened later would hide nothing worth hiding from
the verifier, and would keep the verifier from sizing the run by the claim.)
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np

#: Domain-separation prefix of the claim digest (unchanged since the first certificates).
CLAIM_DIGEST_PREFIX = b"attribution.v1/datamodel\x00"
#: Largest |c| or |a_i| accepted: anything bigger would overflow float64 predictions.
MAX_MAGNITUDE = 1e100


def claim_digest(intercepts: Any, coefficients: Any) -> bytes:
    """SHA-256 over the datamodel, binding its exact float64 values and shape.

    Hashed bytes: :data:`CLAIM_DIGEST_PREFIX`, Z and N as little-endian uint64, the Z
    intercepts, then the Z×N coefficients in row-major order, all float64 little-endian. Raises
    ``ValueError`` unless intercepts is (Z,) and coefficients is (Z, N).
    """
    c = np.asarray(intercepts, dtype="<f8")
    a = np.asarray(coefficients, dtype="<f8")
    if c.ndim != 1 or a.ndim != 2 or a.shape[0] != c.shape[0]:
        raise ValueError(f"need intercepts (Z,) and coefficients (Z, N), got {c.shape}, {a.shape}")
    h = hashlib.sha256(CLAIM_DIGEST_PREFIX)
    h.update(struct.pack("<QQ", a.shape[0], a.shape[1]))
    h.update(np.ascontiguousarray(c).tobytes())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


def check_claim(intercepts: Any, coefficients: Any, num_targets: int, num_points: int) -> None:
    """Raise ``ValueError`` with a readable reason unless (c, a) is a finite (Z,), (Z, N) claim
    whose magnitudes keep every prediction finite."""
    c = np.asarray(intercepts, dtype=np.float64)
    a = np.asarray(coefficients, dtype=np.float64)
    if c.shape != (num_targets,) or a.shape != (num_targets, num_points):
        raise ValueError(
            f"claim has shapes {c.shape} and {a.shape}; the task needs ({num_targets},) and "
            f"({num_targets}, {num_points})"
        )
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(a))):
        raise ValueError("claim contains non-finite numbers (NaN or infinity)")
    if np.any(np.abs(a) > MAX_MAGNITUDE) or np.any(np.abs(c) > MAX_MAGNITUDE):
        raise ValueError(
            f"claim has a number above {MAX_MAGNITUDE:g} in magnitude: too large to evaluate "
            "predictions without overflow"
        )
