"""Markdown table and PNG plot of the validity grid (:mod:`simulations.validity`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulations.validity import PROVERS, verdict_on_row


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "—"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (cell, prover): acceptance with its 95% Wilson interval against the promise."""
    head = (
        "| cell | prover | err/ε | trials | accept (95% Wilson) | verdicts | caught by checks "
        "| accepted had checks missed | mean tuples | mean \\|M\\| | mean checks k "
        "| against the guarantee |\n"
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        if not r["trials"]:
            continue
        lines.append(
            f"| {r['cell']} | {r['prover']} | {r['err_over_eps']:.2f} | {r['trials']} | "
            f"{r['accept_rate']:.3f} [{r['accept_lower']:.3f}, {r['accept_upper']:.3f}] | "
            f"{_counts(r['verdicts'])} | {r['caught']} | {r['accepted_if_missed']} | "
            f"{r['mean_tuples']:,.0f} | {r['mean_mse_samples']:,.0f} | "
            f"{r['mean_spot_checks']:,.0f} | {verdict_on_row(r)} |"
        )
    return head + "\n".join(lines) + "\n"


def plot_grid(rows: list[dict[str, Any]], path: Path) -> Path:
    """Acceptance per cell and prover with Wilson bars, the δ and 1 − δ lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(r["cell"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells)), 4.2))
    width = 0.8 / len(PROVERS)
    for j, prover in enumerate(PROVERS):
        xs, ys, lo, hi = [], [], [], []
        for i, cell in enumerate(cells):
            r = next((r for r in rows if r["cell"] == cell and r["prover"] == prover), None)
            if r is None or not r["trials"]:
                continue
            xs.append(i + (j - (len(PROVERS) - 1) / 2) * width)
            ys.append(r["accept_rate"])
            lo.append(r["accept_rate"] - r["accept_lower"])
            hi.append(r["accept_upper"] - r["accept_rate"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=prover)
    ax.axhline(0.05, color="red", linestyle="--", linewidth=1, label="δ = 0.05")
    ax.axhline(0.95, color="green", linestyle=":", linewidth=1, label="1 − δ")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([c.replace(" N=", "\nN=") for c in cells], fontsize=8)
    ax.set_ylabel("acceptance rate (95% Wilson)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Practical verifier on the exact synthetic task")
    ax.legend(fontsize=7, ncol=3, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
