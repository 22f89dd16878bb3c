"""The dates of a nightly run: parsed strictly, today in the schedule's timezone, ranges."""

from __future__ import annotations

import datetime as dt
import re

from ...config import NightlyConfig
from ...errors import UsageError


def parse_date(value: str, what: str) -> dt.date:
    """`value` as a date, strictly YYYY-MM-DD; a UsageError naming `what` otherwise."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"{what}: {value!r} is not a date (expected YYYY-MM-DD, e.g. 2026-11-23)")


def today(config: NightlyConfig) -> str:
    """Today's date in the schedule's timezone."""
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(config.schedule.timezone)).date().isoformat()


def run_dates(config: NightlyConfig, first: str | None, last: str | None = None,
              names: tuple[str, str] = ("run_date", "end_date")) -> list[str]:
    """The dates of a run: `first` (default: today) to `last` inclusive, as YYYY-MM-DD.

    Raises
    ------
    UsageError
        A value that is not a YYYY-MM-DD date, or `last` before `first` (`names` name them).
    """
    start = parse_date(first, names[0]) if first else dt.date.fromisoformat(today(config))
    end = parse_date(last, names[1]) if last else start
    if end < start:
        raise UsageError(f"{names[0]} {start} is after {names[1]} {end}: the range is empty")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
