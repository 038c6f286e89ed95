"""Statistics the simulations report: the Wilson interval of an acceptance rate."""

from __future__ import annotations

import math

#: z of a two-sided 95% interval.
WILSON_Z = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default); (0, 1) if no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # the interval always contains p (rounding can push an endpoint past it when p is 0 or 1)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
