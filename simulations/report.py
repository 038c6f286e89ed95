"""Sweep reports: a markdown table and PNG plots (matplotlib, Agg backend) from cell records."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

#: Adversaries whose attribution is bad (plotted against err/ε).
ATTRIBUTION_ATTACKS = ("scale", "boost", "noise", "intercept", "weak", "targeted")


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per cell: accept rate (95% Wilson interval), naive rate, true err, costs."""
    head = (
        "| adversary | strength | ε | true err | err/ε | trials | accept (95% CI) "
        "| naive accept | outcomes | V retrain | P retrain |\n"
        "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|\n"
    )
    rows = []
    for r in records:
        err = r.get("true_err")
        se = r.get("true_err_se")
        err_s = _fmt(err) if se is None or err is None else f"{err:.3g} ± {se:.2g}"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.get("outcomes", {}).items()))
        lies = r.get("lies_mean")
        if lies is not None:
            outcomes += f" (lies ≈ {lies:.0f})"
        rows.append(
            f"| {r['adversary']} | {r['strength']:g} | {r['epsilon']:g} | {err_s} | "
            f"{_fmt(r.get('err_over_epsilon'), '.2f')} | {r['trials']} | "
            f"{r['accept_rate']:.2f} [{r['accept_lower']:.2f}, {r['accept_upper']:.2f}] | "
            f"{r['naive_accept_rate']:.2f} | {outcomes} | {r['verifier_retrainings']:.0f} | "
            f"{r['prover_retrainings']:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def write_report(
    records: list[dict[str, Any]], out_dir: Path, title: str = "Sweep", plots: bool = True
) -> list[Path]:
    """Write ``table.md`` and (if ``plots``) the PNGs into ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    table = out_dir / "table.md"
    first = records[0] if records else {}
    plan = first.get("plan", {})
    lines = [
        f"# {title}",
        "",
        f"task `{first.get('task')}`, mode {first.get('mode')}, checks {first.get('checks')}, "
        f"transport {first.get('transport')}; pairs/level {plan.get('pairs_per_level')}, "
        f"|E| {plan.get('num_members')}, k {plan.get('spot_checks')}, "
        f"|M| {plan.get('mse_samples')}, ρ {plan.get('rho')}, m* {plan.get('lie_allowance')}, "
        f"δ {first.get('delta')}. Accept rates with 95% Wilson intervals; the naive verifier "
        "accepts when msê ≤ (1 − 0.5)·Var̂ f on the same run's MSE sample.",
        "",
        markdown_table(records),
    ]
    table.write_text("\n".join(lines))
    paths.append(table)
    if plots and records:
        paths += plot_acceptance(records, out_dir)
    return paths


def plot_acceptance(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Acceptance vs err/ε (attribution attacks, one panel per ε) and vs strength (the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_eps: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["adversary"] in ATTRIBUTION_ATTACKS and r.get("true_err") is not None:
            by_eps[r["epsilon"]].append(r)
    if by_eps:
        eps_values = sorted(by_eps)
        fig, axes = plt.subplots(
            1, len(eps_values), figsize=(6.2 * len(eps_values), 4.6), squeeze=False
        )
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, eps in zip(axes[0], eps_values, strict=True):
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in by_eps[eps]:
                groups[r["adversary"]].append(r)
            for i, (name, unsorted) in enumerate(sorted(groups.items())):
                rs = sorted(unsorted, key=lambda r: r["err_over_epsilon"])
                x = [r["err_over_epsilon"] for r in rs]
                y = [r["accept_rate"] for r in rs]
                lo = [max(0.0, r["accept_rate"] - r["accept_lower"]) for r in rs]
                hi = [max(0.0, r["accept_upper"] - r["accept_rate"]) for r in rs]
                c = colours[i % len(colours)]
                ax.errorbar(x, y, yerr=[lo, hi], marker="o", color=c, capsize=3, label=name)
                ax.plot(
                    x,
                    [r["naive_accept_rate"] for r in rs],
                    linestyle="--",
                    marker="x",
                    color=c,
                    alpha=0.6,
                    label=f"{name} (naive)",
                )
            delta = by_eps[eps][0]["delta"]
            ax.axhline(delta, color="red", linestyle=":", label=f"δ = {delta:g}")
            ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
            ax.axvline(0.5, color="grey", linestyle="-.", linewidth=0.8)
            ax.set_xlabel("true err / ε  (dotted: err = ε; dash-dot: ε/2)")
            ax.set_ylabel("acceptance probability")
            ax.set_title(f"ε = {eps:g}: real verifier (solid) vs naive MSE check (dashed)")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, ncol=2, loc="center right")
        fig.tight_layout()
        path = out_dir / "acceptance_vs_err.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    others: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["adversary"] not in ATTRIBUTION_ATTACKS and r["adversary"] != "honest":
            others[r["adversary"]].append(r)
    if others:
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for name, unsorted in sorted(others.items()):
            rs = sorted(unsorted, key=lambda r: r["strength"])
            x = [r["strength"] for r in rs]
            y = [r["accept_rate"] for r in rs]
            lo = [max(0.0, r["accept_rate"] - r["accept_lower"]) for r in rs]
            hi = [max(0.0, r["accept_upper"] - r["accept_rate"]) for r in rs]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=name)
        delta = next(iter(others.values()))[0]["delta"]
        ax.axhline(delta, color="red", linestyle=":", label=f"δ = {delta:g}")
        ax.set_xscale("log")
        ax.set_xlabel("strength (fraction of members tampered; fp-noise: max |Δf|)")
        ax.set_ylabel("acceptance probability")
        ax.set_title("Answer attacks: caught by spot checks / openings")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "acceptance_answer_attacks.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
