"""The one progress helper: a rich bar on a terminal, plain lines in logs, nothing when disabled.

Everything long-running (feature extraction, BRISQUE features, scoring, pretraining) reports through
:func:`progress_bar`, always on stderr so that stdout stays machine-readable::

    with progress_bar("features", total=len(paths)) as bar:
        task = bar.add_task("features", total=len(paths))
        for ...:
            bar.update(task, advance=1, info="12.3 img/s")
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["LineProgress", "progress_bar", "stderr_console", "stderr_is_terminal"]


def stderr_console() -> Console:
    """The console every progress bar and log line of the package writes to (stderr)."""
    return Console(stderr=True, highlight=False)


def stderr_is_terminal() -> bool:
    return stderr_console().is_terminal


class _InfoColumn(ProgressColumn):
    """The free-text ``info`` field of a task (a rate, a loss), empty when absent."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")))


class LineProgress:
    """Plain progress lines on stderr, one per ~10 % of each task: the form a log file can hold.

    Offers the part of ``rich.progress.Progress`` the package uses (``add_task``, ``update``,
    ``advance``, context manager).
    """

    def __init__(self) -> None:
        self._tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int | None = None, **fields: Any) -> int:
        self._tasks[len(self._tasks)] = {"desc": description, "total": max(int(total or 0), 1), "done": 0, "next": 0.1}
        return len(self._tasks) - 1

    def update(self, task: int, advance: int = 0, completed: int | None = None, **fields: Any) -> None:
        t = self._tasks[task]
        t["done"] = completed if completed is not None else t["done"] + advance
        frac = t["done"] / t["total"]
        if frac >= t["next"] or t["done"] == t["total"]:
            info = fields.get("info", "")
            print(f"{t['desc']}: {t['done']}/{t['total']} {info}".rstrip(), file=sys.stderr, flush=True)
            while t["next"] <= frac:
                t["next"] += 0.1

    def advance(self, task: int, advance: int = 1) -> None:
        self.update(task, advance=advance)


def progress_bar(*, enabled: bool = True, lines: bool = True, transient: bool = False) -> Progress | LineProgress:
    """A progress display on stderr.

    Args:
        enabled: False gives a display that prints nothing.
        lines: when stderr is not a terminal, print plain lines (:class:`LineProgress`) instead of
            nothing.
        transient: remove the bar from the terminal when done.

    Returns:
        ``rich.progress.Progress`` on a terminal (columns: description, bar, done/total, the task's
        ``info`` field, elapsed, remaining), :class:`LineProgress` in a log, or a disabled ``Progress``.
    """
    console = stderr_console()
    if enabled and lines and not console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _InfoColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or not console.is_terminal,
        transient=transient,
    )
