"""Progress on a terminal: a rich bar per stage; nothing when not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """A rich progress bar on a terminal, nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @classmethod
    def quiet(cls) -> "Progress":
        return cls(False)

    @classmethod
    def auto(cls) -> "Progress":
        return cls(sys.stderr.isatty())

    @contextmanager
    def stage(self, description: str, total: int, unit: str = "files") -> Iterator[Callable[..., None]]:
        if not self.enabled:
            yield lambda amount=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        with RichProgress(
            TextColumn(f"{description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount=1: bar.advance(task, amount)


