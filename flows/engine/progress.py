"""Progress on a terminal: a rich bar per stage; nothing when not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Progress:
    """A rich progress bar per stage (done of total, per second, time left) when
    `enabled`, nothing otherwise. `console` is a ``rich.console.Console`` to draw on
    (default: one on stderr, so that stdout carries the report alone)."""

    def __init__(self, enabled: bool, console: Any = None):
        self.enabled = enabled
        self.console = console

    @classmethod
    def quiet(cls) -> "Progress":
        return cls(False)

    @classmethod
    def auto(cls) -> "Progress":
        """Drawn when stderr is a terminal, quiet otherwise (a pipe, a log file, CI)."""
        return cls(sys.stderr.isatty())

    @classmethod
    def of(cls, progress: "bool | Progress | None") -> "Progress":
        """`progress` as a Progress: True draws a bar, False or None is quiet."""
        return progress if isinstance(progress, Progress) else cls(bool(progress))

    @contextmanager
    def stage(self, description: str, total: int, unit: str = "files") -> Iterator[Callable[..., None]]:
        if not self.enabled:
            yield lambda amount=1: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn, TextColumn, TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            """Units done per second, over rich's recent window."""

            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="progress.data.speed")

        with RichProgress(
            TextColumn(description), BarColumn(), MofNCompleteColumn(), TextColumn(unit), Rate(),
            TimeRemainingColumn(), console=self.console or Console(stderr=True), transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount=1: bar.advance(task, amount)
