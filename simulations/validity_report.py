"""Markdown tables and PNG plots for the Monte-Carlo grids (:mod:`simulations.validity`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from simulations.validity import verdict_on_row


def _kinds(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row["reject_kinds"].items())) or "—"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (cell, prover): acceptance with its 95% Wilson interval against the promise."""
    head = (
        "| cell | prover | err/ε | trials | accept (95% Wilson) | naive accept | rejections "
        "| lies | ρ | tuples n | checks k | m* | mean \\|M\\| used | draws "
        "| against the guarantee |\n"
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        if not r["trials"]:
            continue
        lines.append(
            f"| {r['cell']} | {r['prover']} | {r['err_over_eps']:.2f} | {r['trials']} | "
            f"{r['accept_rate']:.3f} [{r['accept_lower']:.3f}, {r['accept_upper']:.3f}] | "
            f"{r['naive_accept_rate']:.2f} | {_kinds(r)} | {r['mean_lies']:.0f} | {r['rho']:g} | "
            f"{r['tuples']:,} | {r['spot_checks']:,} | {r['lie_allowance']} | "
            f"{r['mean_mse_samples']:,.0f} | {r.get('draws', 1)} | {verdict_on_row(r)} |"
        )
    return head + "\n".join(lines) + "\n"


def plot_acceptance(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels. Left: attribution attacks, acceptance (Wilson bars) against err/ε, one curve
    per adversary, the naive verifier dashed, the δ and err = ε lines. Right: the provers with an
    honest attribution (honest, answer attacks), acceptance per prover with the naive rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.35, 1]})
    colours = plt.get_cmap("tab10")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    flat = []
    for r in rows:
        if not r["trials"]:
            continue
        if r["true_err"] > 0:
            groups[r["adversary"]].append(r)
        else:
            flat.append(r)
    delta = rows[0]["delta"] if rows else 0.05
    for i, (name, group) in enumerate(sorted(groups.items())):
        rs = sorted(group, key=lambda r: r["err_over_eps"])
        x = [r["err_over_eps"] for r in rs]
        y = [r["accept_rate"] for r in rs]
        yerr = [
            [max(0.0, r["accept_rate"] - r["accept_lower"]) for r in rs],
            [max(0.0, r["accept_upper"] - r["accept_rate"]) for r in rs],
        ]
        colour = colours(i % 10)
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=name, color=colour)
        ax.plot(x, [r["naive_accept_rate"] for r in rs], "--x", color=colour, alpha=0.6)
    ax.axhline(delta, color="red", linestyle=":", label=f"δ = {delta:g}")
    ax.axvline(1.0, color="grey", linestyle=":", label="err = ε")
    ax.plot([], [], "--x", color="black", alpha=0.6, label="naive verifier (dashed)")
    ax.set_xlabel("true err / ε")
    ax.set_ylabel("acceptance rate (95% Wilson)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("bad attributions")
    ax.legend(fontsize=7, loc="center right")

    ys = range(len(flat))
    rate = [r["accept_rate"] for r in flat]
    err = [
        [max(0.0, r["accept_rate"] - r["accept_lower"]) for r in flat],
        [max(0.0, r["accept_upper"] - r["accept_rate"]) for r in flat],
    ]
    bx.barh(list(ys), rate, xerr=err, capsize=2, color="tab:blue", label="practical verifier")
    bx.scatter([r["naive_accept_rate"] for r in flat], list(ys), marker="x", color="black",
               zorder=3, label="naive verifier")  # fmt: skip
    bx.set_yticks(list(ys))
    bx.set_yticklabels([r["prover"] for r in flat], fontsize=7)
    bx.axvline(delta, color="red", linestyle=":", label=f"δ = {delta:g}")
    bx.axvline(1 - delta, color="green", linestyle=":", label=f"1 − δ = {1 - delta:g}")
    bx.set_xlim(0, 1.05)
    bx.set_xlabel("acceptance rate (95% Wilson)")
    bx.set_title("honest attribution, tampered answers (err = 0)")
    bx.legend(fontsize=7, loc="center")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(rows: list[dict[str, Any]], path: Path) -> Path:
    """The validity grid: per cell, honest acceptance (≥ 1 − δ wanted) and the err = ε provers'
    acceptance (≤ δ wanted), with Wilson bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = []
    for r in rows:
        if r["trials"] and r["cell"] not in cells:
            cells.append(r["cell"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(cells) + 2), 4.6))
    provers = []
    for r in rows:
        ratio = r["err_over_eps"]
        if not r["true_err"]:
            key = r["adversary"]
        elif abs(ratio - 1) < 1e-6:
            key = r["adversary"] + " err=ε"
        else:
            key = r["adversary"] + f" err={ratio:.0f}ε"
        r["_series"] = key
        if key not in provers:
            provers.append(key)
    width = 0.8 / max(1, len(provers))
    for j, key in enumerate(provers):
        xs, ys, lo, hi = [], [], [], []
        for i, cell in enumerate(cells):
            match = [r for r in rows if r["cell"] == cell and r["_series"] == key and r["trials"]]
            if not match:
                continue
            r = match[0]
            xs.append(i + (j - (len(provers) - 1) / 2) * width)
            ys.append(r["accept_rate"])
            lo.append(max(0.0, r["accept_rate"] - r["accept_lower"]))
            hi.append(max(0.0, r["accept_upper"] - r["accept_rate"]))
        bars = ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=2, label=key)
        # a tick at the rate itself, so a rate of 0 is visible
        ax.scatter(xs, ys, marker="_", s=120, color=bars.patches[0].get_facecolor(), zorder=3)
    delta = rows[0]["delta"] if rows else 0.05
    ax.axhline(delta, color="red", linestyle=":", label=f"δ = {delta:g}")
    ax.axhline(1 - delta, color="green", linestyle=":", label=f"1 − δ = {1 - delta:g}")
    ax.set_xticks(range(len(cells)))
    labels = []
    for c in cells:
        first = next(r for r in rows if r["cell"] == c)
        draws = "" if first.get("draws", 1) == 1 else f", draws {first['draws']}"
        labels.append(f"{c}\n({first['trials']} trials{draws})")
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("acceptance rate (95% Wilson)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Practical-mode validity on the exact synthetic task")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    for r in rows:
        r.pop("_series", None)
    return path
