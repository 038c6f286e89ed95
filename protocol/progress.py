"""Progress reporting for long retraining runs (presentation only; never affects results).

On a terminal: a rich progress bar with completed/total, models/s and ETA, drawn on stderr so
stdout stays clean for machine-readable lines. Not on a terminal (CI, logs, pipes): at most one
plain log line every ``log_interval_s`` seconds, plus one at the end. Disabled: nothing at all.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("progress")

#: Callback advancing a progress display by ``n`` finished models.
Advance = Callable[[int], None]


def _noop(n: int) -> None:
    """Ignore progress."""


@contextmanager
def retraining_progress(
    total: int, description: str, enabled: bool = True, log_interval_s: float = 10.0
) -> Iterator[Advance]:
    """Yield ``advance(n)``, which records ``n`` more finished models out of ``total``.

    Guarantees: never raises from ``advance``; with ``enabled=False`` it does nothing at all; when
    stderr is not a TTY it logs (logger ``progress``, level INFO) at most once per
    ``log_interval_s`` seconds and once on exit, so CI logs are not flooded.
    """
    if not enabled or total <= 0:
        yield _noop
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} models/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        start = time.monotonic()
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task_id = bar.add_task(description, total=total, rate="-")
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                done += int(n)
                elapsed = time.monotonic() - start
                rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
                bar.update(task_id, advance=int(n), rate=rate)

            yield advance
        return

    start = time.monotonic()
    state = {"done": 0, "last": start}

    def _line() -> str:
        elapsed = max(time.monotonic() - start, 1e-9)
        done = state["done"]
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        return (
            f"{description}: {done}/{total} models, {rate:.1f} models/s, "
            f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s"
        )

    def advance_plain(n: int) -> None:
        state["done"] += int(n)
        now = time.monotonic()
        if now - state["last"] >= log_interval_s:
            state["last"] = now
            log.info("%s", _line())

    yield advance_plain
    if state["done"]:
        log.info("%s", _line())
