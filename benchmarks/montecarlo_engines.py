"""In-memory vs streamed Monte-Carlo engine, and draw version 1 vs 2: the same validity-grid
trial, timed side by side.

    python benchmarks/montecarlo_engines.py [--cells 0.1:100:1,0.2:100:10] [--draws 1,2]
        [--engines streamed,memory] [--trial 0] [--json]

For each cell (ε:N:Z of the validity grid) and draw version, one trial is run by the in-memory
engine (``simulations.montecarlo.run_trial(engine="memory")``, every f-value held) and by the
streamed engine (``engine="streamed"``, numba pass per chunk), on the same seed, after one warm-up
trial of the streamed engine so that its compile time is not counted. The verdicts of the two
engines must agree (the run exits 1 otherwise); the table gives both wall times, their ratio, and
the process's peak RSS after the streamed trial and after the in-memory one (run in that order,
since a peak only grows; rows run in the order given, so later rows' streamed peaks include
earlier rows' memory peaks). A last table gives, per cell, the streamed engine's time with draws
1 over draws 2, both under the draws-1 cell's plan so that they judge the same number of tuples
(the two versions draw different tuples of the same law, so their verdicts may differ). Run it
on an otherwise idle machine: one process, one thread (OMP_NUM_THREADS=1 is set here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.tasks import load_task
from simulations.montecarlo import check_draws, require_exact_synthetic, run_trial
from simulations.sweep import honest_attribution
from simulations.validity import plan_for, validity_cells


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cells(text: str) -> list[tuple[float, int, int]]:
    out = []
    for part in text.split(","):
        try:
            eps, n, z = part.split(":")
            out.append((float(eps), int(n), int(z)))
        except ValueError:
            raise SystemExit(f"--cells: expected ε:N:Z[,ε:N:Z...], got {part!r}") from None
    return out


def measure(
    eps: float, n: int, z: int, trial: int, draws: int, engines: tuple[str, ...]
) -> dict[str, object]:
    """Time one trial of cell (ε, N, Z) with draw version ``draws`` in the given engines
    (streamed first, warmed up)."""
    cell = validity_cells([eps], [n], [z], draws=draws)[0]
    task = require_exact_synthetic(load_task(cell.task))
    honest = honest_attribution(task)
    plan = plan_for(validity_cells([eps], [n], [z], draws=1)[0])  # one plan for both versions
    provers = list(cell.provers)
    run_trial(task, plan, provers, honest, ("warm-up", cell.key()), "streamed", draws)
    row: dict[str, object] = {"cell": cell.label, "draws": draws, "tuples": plan.pairs_per_level}
    verdicts = {}
    for engine in engines:  # memory last: the process's peak RSS only grows
        start = time.perf_counter()
        out = run_trial(task, plan, provers, honest, (0, cell.key(), trial), engine, draws)
        row[f"{engine}_s"] = round(time.perf_counter() - start, 2)
        row[f"{engine}_peak_rss_mib"] = round(_peak_mib(), 1)
        verdicts[engine] = [(o.prover, o.verdict, o.kind, o.lies) for o in out]
    if "memory" in engines:
        row["speed_up"] = round(float(row["memory_s"]) / float(row["streamed_s"]), 1)  # type: ignore[arg-type]
    row["same_verdicts"] = len(set(map(tuple, verdicts.values()))) == 1
    return row


def main(argv: list[str] | None = None) -> int:
    """Print one row per cell (or JSON); exit 1 if the engines disagree on any verdict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="0.1:100:1,0.2:100:10")
    ap.add_argument("--draws", default="1,2", help="draw versions, comma-separated")
    ap.add_argument("--engines", default="streamed,memory", help="streamed and/or memory")
    ap.add_argument("--trial", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    engines = tuple(e for e in ("streamed", "memory") if e in args.engines.split(","))
    if not engines or "streamed" not in engines:
        raise SystemExit("--engines: streamed, optionally with memory")
    try:
        versions = [check_draws(int(d)) for d in args.draws.split(",")]
    except ValueError as exc:
        raise SystemExit(f"--draws: {exc}") from None
    rows = [measure(e, n, z, args.trial, d, engines) for e, n, z in _cells(args.cells)
            for d in versions]  # fmt: skip
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}))
        return 0 if all(r["same_verdicts"] for r in rows) else 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, one thread per engine")
    print("| cell | draws | tuples n | memory (s) | streamed (s) | speed-up "
          "| peak RSS, streamed (MiB) | peak RSS, then memory (MiB) | same verdicts |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['draws']} | {r['tuples']:,} | {r.get('memory_s', '—')} | "
              f"{r['streamed_s']} | {r.get('speed_up', '—')}× | {r['streamed_peak_rss_mib']} | "
              f"{r.get('memory_peak_rss_mib', '—')} | {r['same_verdicts']} |")  # fmt: skip
    if {1, 2} <= set(versions):
        print("\n| cell | streamed, draws 1 (s) | streamed, draws 2 (s) | draws 1 ÷ draws 2 |")
        print("|---|---:|---:|---:|")
        for cell in dict.fromkeys(str(r["cell"]) for r in rows):
            by = {r["draws"]: float(r["streamed_s"]) for r in rows if r["cell"] == cell}  # type: ignore[arg-type]
            print(f"| {cell} | {by[1]} | {by[2]} | {by[1] / by[2]:.1f}× |")
    return 0 if all(r["same_verdicts"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
