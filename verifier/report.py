"""Readable run report (``verifier verify --report DIR``): report.md plus PNG plots.

Plots (matplotlib, Agg backend): the noise-stability points and fitted quadratic (manual/theory)
or the B≥2 interval (practical); the MSE estimate with its confidence interval against the
acceptance threshold; the spot-check differences against τ; the 10 largest and 10 smallest
coefficients of each target. Every plotted number comes from the run's result and attribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protocol.rules.base import CheckMode, RuleName
from protocol.untrusted import markdown_text
from verifier.certificate import PRACTICAL_DECISION_FIELDS

#: At most this many targets get their own panel (the table in report.md lists them all).
MAX_PANELS = 6


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt: Any, count: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_noise_stability(decision: dict[str, Any], rule: RuleName, path: Path) -> Path:
    """Manual/theory: (0, ŷ0), (ρ, ŷρ), (2ρ, ŷ2ρ), the fitted P(t) = z0 + z1 t + z2 t² and B̂ at
    t = 1 (B̂≥2 = B̂ − z0 − z1). Practical: the B≥2 estimate with its confidence interval."""
    plt = _plt()
    if rule is RuleName.PRACTICAL:
        lo = np.asarray(decision["residual_lower"], dtype=float)
        hi = np.minimum(np.asarray(decision["residual_upper"], dtype=float),
                        np.asarray(decision["mse_upper"], dtype=float))  # fmt: skip
        mid = (lo + hi) / 2
        t = np.arange(lo.size)
        fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * lo.size + 2), 3.4))
        ax.errorbar(t, mid, yerr=[mid - lo, hi - mid], fmt="o", capsize=5, label="B≥2 bounds")
        ax.scatter(t, lo, marker="_", s=200, color="C3", label="lower end (used in err_upper)")
        ax.set_xticks(t)
        ax.set_xlabel("target")
        ax.set_ylabel("B≥2 (residual)")
        ax.set_title(f"Residual bounds ({decision.get('tuples', 0)} challenge tuples)")
        ax.legend(fontsize=8)
    else:
        est = decision["residual_estimate"]
        rho = float(est["rho"])
        z = len(est["y0"])
        fig, axes = _grid(plt, min(z, MAX_PANELS))
        grid_t = np.linspace(0.0, 1.0, 101)
        for t, ax in enumerate(axes):
            ys = [est["y0"][t], est["yrho"][t], est["y2rho"][t]]
            z0, z1, z2 = est["z0"][t], est["z1"][t], est["z2"][t]
            ax.plot(grid_t, z0 + z1 * grid_t + z2 * grid_t**2, color="C0", label="fitted P(t)")
            ax.plot([0, rho, 2 * rho], ys, "o", color="C1", label="ŷ0, ŷρ, ŷ2ρ")
            ax.plot([1.0], [est["second_moment"][t]], "s", color="C2", label="B̂ = mean f²")
            ax.plot([0, 1], [z0, z0 + z1], "--", color="gray", lw=1, label="z0 + z1 t")
            ax.set_title(f"target {t}: B̂≥2 = {est['residual'][t]:.4g}", fontsize=10)
            ax.set_xlabel("correlation t")
            ax.set_ylabel("noise stability")
            if t == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mse(decision: dict[str, Any], rule: RuleName, path: Path) -> Path:
    """The MSE estimate with its confidence interval against the acceptance threshold."""
    plt = _plt()
    if rule is RuleName.PRACTICAL:
        est = np.asarray(decision["mse_estimate"], dtype=float)
        lo = np.asarray(decision["mse_lower"], dtype=float)
        hi = np.asarray(decision["mse_upper"], dtype=float)
        eps = np.asarray(decision["epsilon"], dtype=float)
        # err_upper ≤ ε  ⇔  mse_upper ≤ ε + B≥2_lower
        limit = eps + np.asarray(decision["residual_lower"], dtype=float)
        err_lo = np.asarray(decision["err_lower"], dtype=float)
        err_hi = np.asarray(decision["err_upper"], dtype=float)
        t = np.arange(est.size)
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 1.2 * est.size + 6), 3.6))
        mid = np.where(np.isfinite(est), est, (lo + hi) / 2)
        ax.errorbar(t, mid, yerr=[mid - lo, hi - mid], fmt="o", capsize=5, label="MSE (CI)")
        ax.scatter(t, limit, marker="_", s=400, color="C3", label="accept iff upper ≤ this")
        ax.set_title(f"MSE confidence interval (|M| = {decision['mse_samples']})")
        ax.set_xlabel("target")
        ax.set_ylabel("mean squared error")
        ax.set_xticks(t)
        ax.legend(fontsize=8)
        emid = (err_lo + err_hi) / 2
        ax2.errorbar(
            t, emid, yerr=[emid - err_lo, err_hi - emid], fmt="o", capsize=5, label="err bounds"
        )
        ax2.scatter(t, eps, marker="_", s=400, color="C3", label="ε")
        ax.margins(y=0.3)
        ax2.margins(y=0.3)
        ax2.set_title("excess error bounds vs ε")
        ax2.set_xlabel("target")
        ax2.set_xticks(t)
        ax2.legend(fontsize=8)
    else:
        mse = np.asarray(decision["mse_hat"], dtype=float)
        half = np.asarray(decision["mse_halfwidth"], dtype=float)
        thr = np.asarray(decision["threshold"], dtype=float)
        t = np.arange(mse.size)
        fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * mse.size + 3), 3.6))
        ax.errorbar(t, mse, yerr=half, fmt="o", capsize=5, label="msê ± planned half-width")
        ax.scatter(t, thr, marker="_", s=400, color="C3", label="threshold B̂≥2 + ε/2")
        ax.set_title(f"MSE vs threshold (ε = {decision['epsilon']:g})")
        ax.set_xlabel("target")
        ax.set_ylabel("mean squared error")
        ax.set_xticks(t)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spot_checks(spot: dict[str, Any], path: Path) -> Path:
    """Per-check |committed − retrained| (or the worst one, or the certified bound) against τ."""
    plt = _plt()
    tau = float(spot.get("tolerance", 0.0))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    checks = CheckMode.of(spot.get("mode"))
    if checks is not None and checks.certified:
        vals = np.array([float(spot.get("max_f_error_bound", 0.0))])
        ax.bar([0], vals, color="C0")
        ax.set_xticks([0], ["certified |f − f*| bound"])
        which = "sampled " if checks is CheckMode.CERTIFIED_SPOT else ""
        title = f"certified checks ({spot.get('certified_models', '?')} {which}challenges)"
    elif "abs_diffs" in spot:
        vals = np.asarray(spot["abs_diffs"], dtype=float)
        ax.plot(np.arange(vals.size), vals, "o", ms=3, color="C0", label="|diff| per check")
        ax.set_xlabel("spot check")
        title = f"{vals.size} spot checks"
    else:
        vals = np.array([float(spot.get("max_abs_diff", 0.0))])
        ax.bar([0], vals, color="C0")
        ax.set_xticks([0], [f"max |diff| over {spot.get('spot_checks', '?')} checks"])
        title = "spot checks (per-check differences not recorded)"
    ax.axhline(tau, color="C3", ls="--", label=f"τ = {tau:g}")
    ax.set_ylabel("|committed f − verifier's f|")
    top = max(float(vals.max()) if vals.size else 0.0, tau)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_bottom(coefficients: np.ndarray, k: int = 10) -> list[tuple[list[int], list[int]]]:
    """Per target: indices of the ``k`` largest (descending) and ``k`` smallest (ascending)."""
    out = []
    for row in np.asarray(coefficients, dtype=float):
        order = np.argsort(row, kind="stable")
        kk = min(k, row.size)
        out.append(([int(i) for i in order[::-1][:kk]], [int(i) for i in order[:kk]]))
    return out


def plot_attributions(coefficients: np.ndarray, path: Path, k: int = 10) -> Path:
    """Bar charts of the ``k`` largest and ``k`` smallest coefficients of each target."""
    plt = _plt()
    a = np.asarray(coefficients, dtype=float)
    panels = min(a.shape[0], MAX_PANELS)
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False)
    for t, ((top, bottom), ax) in enumerate(zip(top_bottom(a, k), axes[:, 0], strict=False)):
        idx = top + [i for i in bottom[::-1] if i not in top]
        vals = a[t, idx]
        colors = ["C2" if v >= 0 else "C3" for v in vals]
        ax.bar(range(len(idx)), vals, color=colors)
        ax.set_xticks(range(len(idx)), [str(i) for i in idx], rotation=90, fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"target {t}: {len(top)} largest and {len(bottom)} smallest coefficients")
        ax.set_xlabel("training point")
        ax.set_ylabel("coefficient a_i")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "–"
    return str(v)


def _target_table(decision: dict[str, Any], rule: RuleName) -> list[str]:
    if rule is RuleName.PRACTICAL:
        cols = [
            *("epsilon", "mse_estimate", "mse_lower", "mse_upper"),
            *("residual_lower", "residual_upper", "err_lower", "err_upper", "per_target"),
        ]
    else:
        cols = [
            *("mse_hat", "residual_hat", "threshold", "mse_halfwidth", "datamodel_range"),
            *("epsilon_certified", "per_target_accept"),
        ]
    lines = ["| target | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for t in range(len(decision[cols[0]])):
        lines.append(f"| {t} | " + " | ".join(_fmt(decision[c][t]) for c in cols) + " |")
    return lines


def write_report(
    directory: Path | str,
    result: dict[str, Any],
    intercepts: np.ndarray,
    coefficients: np.ndarray,
    task: dict[str, str] | None = None,
    certificate_path: str | None = None,
) -> Path:
    """Write ``report.md`` and its PNGs into ``directory``; return the report's path.

    ``result`` is ``VerificationResult.to_dict()``; ``intercepts`` (Z,) and ``coefficients``
    (Z, N) the attribution the prover sent (plots of it are skipped if it is incomplete).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rule = RuleName.of(result.get("mode")) or RuleName.MANUAL
    decision = result.get("decision")
    if rule is RuleName.PRACTICAL:
        decision = None
        if result.get("err_upper") is not None:
            decision = {k: result.get(k) for k in PRACTICAL_DECISION_FIELDS}
            if not isinstance(decision["epsilon"], list):
                decision["epsilon"] = [decision["epsilon"]]
    md: list[str] = [f"# Verification report: {markdown_text(str(result['verdict']).upper())}", ""]
    md += [
        f"**Verdict:** {markdown_text(result['verdict'])}  ",
        f"**Reason:** {markdown_text(result['reason'])}",
        "",
    ]
    if task:
        md += ["## Task", ""] + [f"- {k}: {markdown_text(v)}" for k, v in task.items()] + [""]
    md += [
        "## Run",
        "",
        f"- mode: {rule.value}; ε = {_fmt(result.get('epsilon'))}; δ = {_fmt(result.get('delta'))}",
        f"- transcript hash: `{result.get('transcript_hash')}`",
        f"- claim digest: `{result.get('claim_digest')}`",
        f"- retrainings: verifier {_fmt(result.get('verifier_retrainings'))}, "
        f"prover {_fmt(result.get('prover_retrainings'))}",
    ]
    if result.get("timings"):
        md.append(
            "- wall time: " + ", ".join(f"{k} {v:.2f}s" for k, v in result["timings"].items())
        )
    if certificate_path:
        md.append(f"- signed certificate: `{certificate_path}` (check with `verifier audit`)")
    md.append("")
    complete = bool(np.all(np.isfinite(intercepts)) and np.all(np.isfinite(coefficients)))
    if complete:
        from verifier.certificate import attribution_digest

        md += [f"- attribution digest: `{attribution_digest(intercepts, coefficients)}`", ""]
    if decision is not None:
        md += ["## Decision numbers", ""]
        if rule is RuleName.PRACTICAL:
            md.append(
                "Accept iff err_upper = mse_upper − B≥2_lower ≤ ε for every target; reject iff "
                "err_lower = mse_lower − B≥2_upper > ε for some target; else inconclusive."
            )
        else:
            md.append(f"Accept iff msê ≤ B̂≥2 + ε/2 for every target (ε = {decision['epsilon']:g}).")
        md += ["", *_target_table(decision, rule), ""]
        plot_noise_stability(decision, rule, out / "noise_stability.png")
        plot_mse(decision, rule, out / "mse.png")
        md += [
            "## Noise stability" + (" (residual interval)" if rule is RuleName.PRACTICAL else ""),
            "",
            "![noise stability](noise_stability.png)",
            "",
            "## MSE against the threshold",
            "",
            "![mse](mse.png)",
            "",
        ]
    spot = result.get("spot_check")
    if spot:
        plot_spot_checks(spot, out / "spot_checks.png")
        checks = CheckMode.of(spot.get("mode"))
        if checks is not None and checks.certified:
            which = "spot-checked" if checks is CheckMode.CERTIFIED_SPOT else "all"
            text = (
                f"{which} {spot.get('certified_models')} challenges certified from their weights; "
                f"|f − f*| ≤ {_fmt(spot.get('max_f_error_bound'))} (τ = {_fmt(spot['tolerance'])})"
            )
        else:
            text = (
                f"{spot['spot_checks']} spot checks passed; max |diff| "
                f"{_fmt(spot['max_abs_diff'])} (τ = {_fmt(spot['tolerance'])})"
            )
        md += ["## Spot checks", "", text, "", "![spot checks](spot_checks.png)", ""]
    if complete:
        plot_attributions(coefficients, out / "attributions.png")
        md += ["## Attributions", ""]
        for t, (top, bottom) in enumerate(top_bottom(coefficients)):
            if t >= MAX_PANELS:
                md.append(f"(targets {MAX_PANELS}..{len(coefficients) - 1} omitted)")
                break
            md.append(f"- target {t} (intercept {intercepts[t]:.6g}):")
            md.append("  largest: " + ", ".join(f"{i} ({coefficients[t, i]:.4g})" for i in top))
            md.append("  smallest: " + ", ".join(f"{i} ({coefficients[t, i]:.4g})" for i in bottom))
        md += ["", "![attributions](attributions.png)", ""]
    md += [
        "## What this report is",
        "",
        "A readable summary written by the verifier. It is not signed; the certificate is. "
        "The numbers are the verifier's own; nothing here shows that it ran honestly.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
