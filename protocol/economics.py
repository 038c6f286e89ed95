"""What verifying costs against not trusting: the retrainings a self-fit would need.

The verifier's alternative to trusting a prover is to fit the datamodel itself. For ordinary
least squares on K subsets drawn from B_p, with N coordinates and an intercept, the excess error
of the fit is, for a Gaussian design (and close to it for independent ±1 coordinates),

    E err(ĝ_K) = B_{≥2} · (N + 1) / (K − N − 2),

B_{≥2} = mse(g*) being what no datamodel explains. So err ≤ ε needs
K ≥ N + 2 + (N + 1)·B_{≥2}/ε retrainings, on average: the self-fit grows with N, the verifier's
work does not. This is the estimate a run reports; ``benchmarks/`` measure it by fitting on
growing samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def self_fit_retrainings(num_points: int, residual: Any, epsilon: Any) -> int:
    """Retrainings an OLS self-fit needs for mean excess error ≤ ε on every target (the max).

    ``residual``: B_{≥2} per target (an upper bound, such as the claim's certified MSE, makes this
    an overestimate of the OLS need); ``epsilon``: ε per target. Raises ``ValueError`` for ε ≤ 0.
    """
    n = int(num_points)
    b2 = np.maximum(np.asarray(residual, dtype=np.float64), 0.0)
    eps = np.asarray(epsilon, dtype=np.float64)
    if np.any(~np.isfinite(eps)) or np.any(eps <= 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    need = n + 2 + (n + 1) * b2 / eps
    return math.ceil(float(np.max(need)))
