"""Progress bars for long command-line work (``currents import``, ``reconcile``, ...).

On a terminal, a rich progress bar on stderr; otherwise nothing is drawn (the JSON logs carry
the counts), so cron jobs and containers get clean output. rich was chosen over tqdm because
the same library draws the ``status`` summary tables: one dependency for both.

    with progress("importing files", total=len(paths)) as advance:
        for path in paths:
            ...
            advance(1)
"""

from __future__ import annotations

import sys
import typing as t
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

T = t.TypeVar("T")


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal (the only place bars are drawn)."""
    return sys.stderr.isatty()


@contextmanager
def progress(
    description: str, *, total: float | None = None, enabled: bool | None = None
) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)``; draw a bar (with rate and time left) while on a terminal."""
    if enabled is None:
        enabled = on_terminal()
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def track(items: Iterable[T], description: str, *, total: float | None = None) -> Iterator[T]:
    """Iterate ``items`` advancing a bar by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total=total) as advance:
        for item in items:
            yield item
            advance(1)
