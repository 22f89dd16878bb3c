"""Where an evaluation's time goes, phase by phase, for benchmarks.

Off unless :func:`record` turns it on in a process (``client.run(record)`` for a
cluster's workers). Each phase keeps its (start, end) intervals on the process's
monotonic clock, so :func:`summarize` can give both the time summed over tasks and
the wall time during which at least one task was in that phase. On one machine the
clock is shared by every process, so workers' intervals may be pooled.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

PHASES = ("read", "convert", "buckets", "kernel", "merge")  # the workers' phases, in pipeline order

_lock = threading.Lock()
_intervals: dict[str, list[tuple[float, float]]] | None = None  # None: not recording


def record() -> None:
    """Start (or restart) recording phases in this process."""
    global _intervals
    with _lock:
        _intervals = {}


def stop() -> dict[str, list[tuple[float, float]]]:
    """Stop recording; the intervals recorded since :func:`record`."""
    global _intervals
    with _lock:
        recorded, _intervals = _intervals or {}, None
    return recorded


def _add(name: str, start: float, end: float) -> None:
    with _lock:
        if _intervals is not None:
            _intervals.setdefault(name, []).append((start, end))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase `name` when recording (a global check otherwise)."""
    if _intervals is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _add(name, start, time.perf_counter())


def summarize(*recorded: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Per phase, (seconds summed over its intervals, wall seconds covered by their union),
    pooling the intervals of several processes."""
    pooled: dict[str, list[tuple[float, float]]] = {}
    for intervals in recorded:
        for name, spans in intervals.items():
            pooled.setdefault(name, []).extend(spans)
    summary = {}
    for name, spans in pooled.items():
        total = sum(end - start for start, end in spans)
        wall, reach = 0.0, float("-inf")
        for start, end in sorted(spans):
            if end > reach:
                wall += end - max(start, reach)
                reach = end
        summary[name] = (total, wall)
    return summary
