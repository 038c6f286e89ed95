"""Sample sizes and the guarantee they buy (every formula is derived in ``docs/accounting.md``).

Notation: b = output bound (|f| ≤ b), τ = CHECKEQUIV tolerance, Z = number of targets,
S(ρ) = 1 + 4/ρ (:func:`protocol.residual.sensitivity`), n = pairs per level (tuples),
|E| = 4n challenge members, k = spot checks, |M| = MSE sample size, G = |c| + ‖a‖₁.

δ is split into four equal parts: δ_spot = δ_res = δ_mse = δ_comp = δ/4 (δ_comp is reserved for
the honest prover's own estimation of (c, a); the verifier's guarantees use the other three).
Each of the 4 residual estimates (ŷ0, ŷρ, ŷ2ρ, B̂) of each target gets δ_e = δ_res/(4Z).

* residual half-width   η_res = b²·√(ln(2/δ_e)/(4n)) + S(ρ)·2b²·√(ln(2/δ_e)/(2n))
* fit bias              4ρ²b²                 (upward, favours acceptance: soundness only)
* lies                  m*·Λ,  Λ = (2b²S(ρ) + b²/2)/n
* tolerance             (2bτ + τ²)(S(ρ) + 1)
* MSE half-width        η_mse(G) = (b + G)²·√(ln(2Z/δ_mse)/(2|M|))
* spot checks           miss(|E|, m, k) = C(|E|−m, k)/C(|E|, k);
                        m* = largest m with miss(|E|, m, k) > δ_spot

slack = bias + η_res + m*Λ + τ-charge + η_mse;  ε_cert = ε/2 + slack;  guarantee_met ⇔ ε_cert ≤ ε.
Completeness margin = η_res + τ-charge + η_mse: an honest prover with err ≤ ε/2 − margin passes
w.p. ≥ 1 − δ_res − δ_mse.

Sizes are Python ints (they can reach 1e11 and more in theory mode); no N appears anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from protocol.residual import sensitivity
from protocol.rules.base import RuleName
from protocol.validation import check_delta, check_rho

#: Number of residual estimates per target: ŷ0, ŷρ, ŷ2ρ and B̂.
ESTIMATES_PER_TARGET = 4
#: δ is split into four equal parts.
DELTA_PARTS = 4
#: Relative slack allowed when comparing ε_cert with ε (floating-point rounding of equal budgets).
GUARANTEE_RTOL = 1e-9
#: Default ρ in manual mode.
DEFAULT_RHO = 0.25
#: Above this many terms the exact hypergeometric product is replaced by log-gamma differences.
_EXACT_TERMS = 2_000_000


class ConfigurationError(ValueError):
    """The requested configuration cannot certify the requested ε (e.g. τ too large)."""


# --------------------------------------------------------------------------------------------
# validation helpers


def _pos_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _finite(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _check_common(
    epsilon: Any, delta: Any, output_bound: Any, tolerance: Any, num_targets: Any
) -> tuple[float, float, float, float, int]:
    eps = _finite(epsilon, "epsilon")
    if eps <= 0:
        raise ValueError(f"epsilon must be > 0, got {eps}")
    d = check_delta(delta)
    b = _finite(output_bound, "output_bound")
    if b <= 0:
        raise ValueError(f"output_bound b must be > 0, got {b}")
    tau = _finite(tolerance, "tolerance")
    if tau < 0:
        raise ValueError(f"tolerance τ must be >= 0, got {tau}")
    z = _pos_int(num_targets, "num_targets")
    return eps, d, b, tau, z


# --------------------------------------------------------------------------------------------
# the individual terms


def delta_split(delta: float) -> dict[str, float]:
    """Return the four equal parts of δ: spot, residual, mse, completeness (each δ/4)."""
    part = float(delta) / DELTA_PARTS
    return {"spot": part, "residual": part, "mse": part, "completeness": part}


def per_estimate_delta(delta_res: float, num_targets: int) -> float:
    """δ_e = δ_res / (4Z): 4 estimates per target, union bound over Z targets."""
    return float(delta_res) / (ESTIMATES_PER_TARGET * int(num_targets))


def residual_halfwidth(
    pairs_per_level: int, rho: float, output_bound: float, num_targets: int, delta_res: float
) -> float:
    """η_res = γ_B + S(ρ)·γ_y with γ_y = 2b²√(ln(2/δ_e)/(2n)), γ_B = b²√(ln(2/δ_e)/(4n)).

    W.p. ≥ 1 − δ_res every target's interpolant residual is within η_res of its expectation.
    """
    n = int(pairs_per_level)
    b2 = float(output_bound) ** 2
    log_term = math.log(2.0 / per_estimate_delta(delta_res, num_targets))
    gamma_y = 2.0 * b2 * math.sqrt(log_term / (2.0 * n))
    gamma_b = b2 * math.sqrt(log_term / (4.0 * n))
    return gamma_b + sensitivity(rho) * gamma_y


def fit_bias(rho: float, output_bound: float) -> float:
    """Upper bound 4ρ²b² on the upward bias 4ρ²B_{≥3} of the quadratic fit (needs 2ρ ≤ 1)."""
    return 4.0 * float(rho) ** 2 * float(output_bound) ** 2


def lie_effect(pairs_per_level: int, rho: float, output_bound: float) -> float:
    """Λ = (2b²·S(ρ) + b²/2)/n: the largest move of B̂_{≥2} caused by one lied member."""
    b2 = float(output_bound) ** 2
    return (2.0 * b2 * sensitivity(rho) + b2 / 2.0) / int(pairs_per_level)


def tau_charge(output_bound: float, tolerance: float, rho: float) -> float:
    """(2bτ + τ²)(S(ρ) + 1): the largest move of B̂_{≥2} from all f-values shifted by ≤ τ."""
    b, tau = float(output_bound), float(tolerance)
    return (2.0 * b * tau + tau * tau) * (sensitivity(rho) + 1.0)


def mse_halfwidth(
    output_bound: float,
    datamodel_range: float | np.ndarray,
    mse_samples: int,
    num_targets: int,
    delta_mse: float,
) -> float | np.ndarray:
    """η_mse(G) = (b + G)²·√(ln(2Z/δ_mse)/(2|M|)); vectorised over G (array in, array out)."""
    g = np.asarray(datamodel_range, dtype=np.float64)
    width = (float(output_bound) + g) ** 2
    out = width * math.sqrt(
        math.log(2.0 * int(num_targets) / float(delta_mse)) / (2.0 * int(mse_samples))
    )
    return float(out) if np.ndim(out) == 0 else out


# --------------------------------------------------------------------------------------------
# spot checks (exact hypergeometric)


def miss_probability(num_members: int, lies: int, k: int) -> float:
    """P(k uniform distinct spot checks out of |E| all miss m lied members) = C(|E|−m,k)/C(|E|,k).

    Exact: computed as Π_{i<min(m,k)} (1 − max(m,k)/(|E|−i)) in log space (log1p) when that has at
    most 2e6 terms, else from ``math.lgamma`` differences. Returns 0 if m > |E| − k, 1 if m = 0
    or k = 0.
    """
    e = _pos_int(num_members, "num_members")
    m = _pos_int(lies, "lies", minimum=0)
    kk = _pos_int(k, "k", minimum=0)
    if m > e:
        raise ValueError(f"lies ({m}) cannot exceed num_members ({e})")
    if kk > e:
        raise ValueError(f"k ({kk}) cannot exceed num_members ({e})")
    if m == 0 or kk == 0:
        return 1.0
    if m > e - kk:
        return 0.0
    small, large = min(m, kk), max(m, kk)
    # C(e-m, k)/C(e, k) = Π_{i<k} (e-m-i)/(e-i) = Π_{i<m} (e-k-i)/(e-i): symmetric in (m, k).
    if small <= _EXACT_TERMS:
        i = np.arange(small, dtype=np.float64)
        log_p = float(np.sum(np.log1p(-large / (e - i))))
    else:
        log_p = (
            math.lgamma(e - m + 1)
            + math.lgamma(e - kk + 1)
            - math.lgamma(e - m - kk + 1)
            - math.lgamma(e + 1)
        )
    return min(1.0, math.exp(log_p))


#: Within this distance (in log space) of log δ_spot, a miss probability is decided exactly.
_LGAMMA_MARGIN = 1e-4


def miss_at_most(num_members: int, lies: int, k: int, delta_spot: float) -> bool:
    """``miss_probability(num_members, lies, k) <= delta_spot``, the same answer, faster.

    Far from the boundary it compares the ``math.lgamma`` form of log C(|E|−m,k)/C(|E|,k) with
    log δ_spot, with a margin of 1e-4 plus 1e-13·lgamma(|E| + 1) (its four terms are each good to a
    few ulps); within the margin it decides on the exact product, so the answer is the exact one.
    """
    e, m, kk = int(num_members), int(lies), int(k)
    if m == 0 or kk == 0 or m > e - kk or min(m, kk) < 64:
        return miss_probability(e, m, kk) <= delta_spot
    approx = (
        math.lgamma(e - m + 1)
        + math.lgamma(e - kk + 1)
        - math.lgamma(e - m - kk + 1)
        - math.lgamma(e + 1)
    )
    log_ds = math.log(delta_spot)
    # the terms are up to lgamma(|E| + 1); a few ulps of each is far below 1e-13 of it
    if abs(approx - log_ds) > _LGAMMA_MARGIN + 1e-13 * math.lgamma(e + 1):
        return approx <= log_ds
    return miss_probability(e, m, kk) <= delta_spot


def lie_allowance(num_members: int, k: int, delta_spot: float) -> int:
    """m*: the most lies that k spot checks may miss with probability > δ_spot.

    m* = (smallest m with miss_probability(|E|, m, k) ≤ δ_spot) − 1, so any ≥ m*+1 lies are caught
    w.p. ≥ 1 − δ_spot. If k ≥ |E| then m* = 0 (every lie is caught surely); if k = 0 then m* = |E|.
    """
    e = _pos_int(num_members, "num_members")
    kk = _pos_int(k, "k", minimum=0)
    ds = _finite(delta_spot, "delta_spot")
    if not 0 < ds < 1:
        raise ValueError(f"delta_spot must lie in (0, 1), got {ds}")
    if kk >= e:
        return 0
    if kk == 0:
        return e
    lo, hi = 1, e - kk + 1  # miss(hi) == 0 <= ds
    while lo < hi:
        mid = (lo + hi) // 2
        if miss_at_most(e, mid, kk, ds):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def spot_checks_needed(num_members: int, max_lies_allowed: int, delta_spot: float) -> int:
    """Smallest k with miss_probability(|E|, m*+1, k) ≤ δ_spot (binary search; 0 if m* ≥ |E|)."""
    e = _pos_int(num_members, "num_members")
    m = _pos_int(max_lies_allowed, "max_lies_allowed", minimum=0) + 1
    ds = _finite(delta_spot, "delta_spot")
    if not 0 < ds < 1:
        raise ValueError(f"delta_spot must lie in (0, 1), got {ds}")
    if m > e:
        return 0
    lo, hi = 0, e - m + 1  # miss(m, e-m+1) == 0
    hi = min(hi, e)
    while lo < hi:
        mid = (lo + hi) // 2
        if miss_at_most(e, m, mid, ds):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class Plan:
    """Sample sizes and the guarantee they certify. ``budget`` holds every slack term (floats)."""

    mode: str
    epsilon: float
    delta: float
    output_bound: float
    tolerance: float
    num_targets: int
    rho: float
    pairs_per_level: int
    singles: int
    num_members: int
    spot_checks: int
    mse_samples: int
    lie_allowance: int
    delta_split: dict[str, float]
    budget: dict[str, float]
    guarantee_met: bool
    assumptions: list[str] = field(default_factory=list)
    verifier_retrainings: int = 0
    prover_retrainings: int = 0

    @property
    def rule(self) -> RuleName:
        """The rule these sizes are for (manual or theory: the paper's rule)."""
        return RuleName(self.mode)

    def mse_halfwidth(self, datamodel_range: float) -> float:
        """η_mse with the actual G = |c| + ‖a‖₁ (array in, array out)."""
        return mse_halfwidth(
            self.output_bound,
            datamodel_range,
            self.mse_samples,
            self.num_targets,
            self.delta_split["mse"],
        )

    def soundness_slack(self, datamodel_range: float) -> float:
        """bias + η_res + m*Λ + τ-charge + η_mse(G)."""
        bud = self.budget
        fixed = bud["fit_bias"] + bud["residual_halfwidth"] + bud["lie_effect"] + bud["tau_charge"]
        return fixed + self.mse_halfwidth(datamodel_range)

    def certified_epsilon(self, datamodel_range: float) -> float:
        """ε_cert(G) = ε/2 + slack(G).

        W.p. ≥ 1 − δ_spot − δ_res − δ_mse every target with err > ε_cert is rejected.
        """
        return self.epsilon / 2.0 + self.soundness_slack(datamodel_range)

    def completeness_margin(self, datamodel_range: float) -> float:
        """η_res + τ-charge + η_mse(G).

        An honest prover with err ≤ ε/2 − margin passes w.p. ≥ 1 − δ_res − δ_mse.
        """
        bud = self.budget
        return bud["residual_halfwidth"] + bud["tau_charge"] + self.mse_halfwidth(datamodel_range)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (ints stay Python ints, however large)."""
        d = asdict(self)
        d["delta_split"] = {k: float(v) for k, v in self.delta_split.items()}
        d["budget"] = {k: float(v) for k, v in self.budget.items()}
        d["assumptions"] = list(self.assumptions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "assumptions": list(d.get("assumptions", []))})


def _build_plan(
    mode: str,
    eps: float,
    delta: float,
    b: float,
    tau: float,
    z: int,
    rho: float,
    n: int,
    k: int,
    m_samples: int,
    m_star: int,
    assumptions: list[str],
) -> Plan:
    split = delta_split(delta)
    bias = fit_bias(rho, b)
    eta_res = residual_halfwidth(n, rho, b, z, split["residual"])
    lies = m_star * lie_effect(n, rho, b)
    tau_c = tau_charge(b, tau, rho)
    eta_mse = float(mse_halfwidth(b, b, m_samples, z, split["mse"]))
    slack = bias + eta_res + lies + tau_c + eta_mse
    eps_cert = eps / 2.0 + slack
    budget = {
        "fit_bias": bias,
        "residual_halfwidth": eta_res,
        "lie_effect": lies,
        "tau_charge": tau_c,
        "mse_halfwidth_planned": eta_mse,
        "slack": slack,
        "epsilon_certified": eps_cert,
        "completeness_margin": eta_res + tau_c + eta_mse,
    }
    return Plan(
        mode=mode,
        epsilon=eps,
        delta=delta,
        output_bound=b,
        tolerance=tau,
        num_targets=z,
        rho=rho,
        pairs_per_level=n,
        singles=2 * n,
        num_members=4 * n,
        spot_checks=k,
        mse_samples=m_samples,
        lie_allowance=m_star,
        delta_split=split,
        budget=budget,
        guarantee_met=bool(eps_cert <= eps * (1.0 + GUARANTEE_RTOL)),
        assumptions=assumptions,
        verifier_retrainings=k + m_samples,
        prover_retrainings=4 * n,
    )


_COMMON_ASSUMPTIONS = [
    "every f-value the prover reports lies in [-b, b] (the verifier rejects anything outside)",
    "f-values of one (subset, seed) reproduce within the tolerance τ on any honest machine",
    "spot checks and the MSE sample come from a CSPRNG the prover cannot predict or influence",
    "the mse_halfwidth_planned term assumes a datamodel range G = |c| + ||a||_1 = b; "
    "the decision recomputes it with the actual G of each target",
]


def plan_theory(
    epsilon: float, delta: float, output_bound: float, tolerance: float, num_targets: int
) -> Plan:
    """Worst-case (Hoeffding) sizes so that ε_cert ≤ ε at G = b.

    Budget for ε/2: ε/8 fit bias, ε/8 residual, ε/8 MSE, ε/16 lies, ε/16 τ;
    ρ = min(1/2, √(ε/(32b²))).
    n is the smallest integer with η_res ≤ ε/8; |M| the smallest with η_mse(G=b) ≤ ε/8; k the
    smallest with (1 − q)^k ≤ δ_spot for q = ε/(64(2b²S + b²/2)) (so m*Λ < ε/16), and m* the
    exact hypergeometric ``lie_allowance(4n, k, δ_spot)``. Raises :class:`ConfigurationError`
    if the τ-charge alone exceeds ε/16. The returned sizes are monotone non-increasing in ε and
    in δ, and independent of N (N is not an input).
    """
    eps, d, b, tau, z = _check_common(epsilon, delta, output_bound, tolerance, num_targets)
    split = delta_split(d)
    rho = min(0.5, math.sqrt(eps / (32.0 * b * b)))
    tau_c = tau_charge(b, tau, rho)
    if tau_c > eps / 16.0:
        # largest τ with (2bτ + τ²)(S+1) ≤ ε/16: τ = −b + √(b² + ε/(16(S+1)))
        tau_max = -b + math.sqrt(b * b + eps / (16.0 * (sensitivity(rho) + 1.0)))
        raise ConfigurationError(
            f"tolerance τ={tau:g} is too large for ε={eps:g}: its charge (2bτ+τ²)(S(ρ)+1) = "
            f"{tau_c:.4g} exceeds the ε/16 = {eps / 16:.4g} budgeted for it "
            f"(by {tau_c - eps / 16:.4g}, a factor {tau_c / (eps / 16):.3g}); "
            f"at b={b:g}, ρ={rho:.4g} the largest allowed τ is "
            f"{tau_max:.3g}. Use a larger ε or a task with a smaller tolerance."
        )
    target = eps / 8.0
    s = sensitivity(rho)
    log_term = math.log(2.0 / per_estimate_delta(split["residual"], z))
    n = max(1, math.ceil(log_term * (8.0 * b * b * (0.5 + math.sqrt(2.0) * s) / eps) ** 2))
    while residual_halfwidth(n, rho, b, z, split["residual"]) > target:
        n += 1
    while n > 1 and residual_halfwidth(n - 1, rho, b, z, split["residual"]) <= target:
        n -= 1
    # Lies: m*·Λ ≤ ε/16  ⇔  m*/|E| ≤ q := ε/(64·(2b²S + b²/2)). k is sized with the binomial
    # bound miss(|E|, m, k) ≤ (1 − m/|E|)^k < (1 − q)^k for every m > q|E|, which makes k
    # independent of n and monotone in ε and δ; m* is then the exact hypergeometric allowance
    # at that k, which is < q|E| (so m*·Λ < ε/16).
    q = eps / (64.0 * (2.0 * b * b * s + b * b / 2.0))
    k = 0 if q >= 1.0 else min(4 * n, math.ceil(math.log(split["spot"]) / math.log1p(-q)))
    m_star = lie_allowance(4 * n, k, split["spot"])
    mse_log = math.log(2.0 * z / split["mse"])
    m_samples = max(1, math.ceil((2.0 * b) ** 4 * mse_log / (2.0 * target * target)))
    while float(mse_halfwidth(b, b, m_samples, z, split["mse"])) > target:
        m_samples += 1
    assumptions = [
        *_COMMON_ASSUMPTIONS,
        "theory mode: Hoeffding worst-case constants; budget ε/2 = ε/8 bias + ε/8 residual + "
        "ε/8 MSE + ε/16 lies + ε/16 τ",
    ]
    return _build_plan("theory", eps, d, b, tau, z, rho, n, k, m_samples, m_star, assumptions)


def plan_manual(
    epsilon: float,
    delta: float,
    output_bound: float,
    tolerance: float,
    num_targets: int,
    pairs_per_level: int,
    spot_checks: int,
    mse_samples: int,
    rho: float = DEFAULT_RHO,
) -> Plan:
    """Report the guarantee that user-given sizes achieve (never raises for a weak guarantee).

    m* = lie_allowance(4n, k, δ_spot); every slack term at the given sizes; ε_cert and
    guarantee_met = ε_cert ≤ ε. Raises ``ValueError`` only for invalid inputs.
    """
    eps, d, b, tau, z = _check_common(epsilon, delta, output_bound, tolerance, num_targets)
    r = check_rho(rho)
    n = _pos_int(pairs_per_level, "pairs_per_level")
    k = _pos_int(spot_checks, "spot_checks", minimum=0)
    m_samples = _pos_int(mse_samples, "mse_samples")
    if k > 4 * n:
        raise ValueError(f"spot_checks ({k}) cannot exceed the number of challenges 4n = {4 * n}")
    split = delta_split(d)
    m_star = lie_allowance(4 * n, k, split["spot"])
    assumptions = [*_COMMON_ASSUMPTIONS, "manual mode: sizes given by the user"]
    return _build_plan("manual", eps, d, b, tau, z, r, n, k, m_samples, m_star, assumptions)
