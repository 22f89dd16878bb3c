"""Gates: may a candidate ship? Limits on how much worse it is than a baseline.

A gate (``flows.config.Gate``) names an interval metric and a limit on its difference
candidate - baseline: ``max_increase`` (for metrics where lower is better, such as
ce_mean) or ``max_decrease`` (accuracy). In ``interval`` mode a row breaches only when
its whole interval lies past the limit, so noise never fails a run; in ``point`` mode
when the difference itself does. A NaN difference or bound never breaches, and rows
flagged ``small_slice`` are skipped.

The rows are those of a difference table (``compare.parquet``, ``gate.parquet``:
:func:`flows.monitor.paired.difference_table`), read as dicts (:func:`gate_rows`):
``<metric>_diff``, ``<metric>_diff_lo`` and ``<metric>_diff_hi``, the slice columns,
``overall`` and ``class``/``class_name``, so any paired difference table can be gated.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import pyarrow as pa

from ..config import Gate
from ..errors import GateBreach
from ..report.metric_values import MetricKey
from ..report.text import class_text, describe_gate


def _where(row: dict, slice_by: Sequence[str]) -> str:
    scope = "overall" if row.get("overall") or not slice_by else ", ".join(f"{k}={row.get(k)}" for k in slice_by)
    if "class" not in row:  # a table without classes (token dumps)
        return scope
    if row.get("class") is None:
        return f"{scope}, all classes"
    return f"{scope}, class {class_text(row['class'], row.get('class_name'), parenthesized=True)}"


def _breached(gate: Gate, value: float, lo: float, hi: float) -> bool:
    if gate.max_increase is not None:
        past = value if gate.mode == "point" else lo
        return past > gate.max_increase  # NaN compares false: never a breach
    past = value if gate.mode == "point" else hi
    return past < -gate.max_decrease


def gate_rows(table: pa.Table, gates: Iterable[Gate], slice_by: Sequence[str]) -> list[dict]:
    """The rows of a difference table with the columns gates read: the row's place (slice
    columns, overall, class, class_name), ``n``, ``small_slice`` and each gated metric's
    difference and interval. The rest stays columnar: a table of a thousand classes has
    over a hundred columns."""
    diffs = [MetricKey(gate.metric, is_diff=True) for gate in gates]
    wanted = [*slice_by, "overall", "class", "class_name", "n", "small_slice",
              *(name for key in diffs for name in (key.column, *key.bounds))]
    return table.select([name for name in dict.fromkeys(wanted) if name in table.column_names]).to_pylist()


def breached_gates(gates: Iterable[Gate], rows: Iterable[dict], slice_by: Sequence[str]) -> list[str]:
    """One line per (gate, row) breached: the gate, slice, class, the difference and its interval."""
    rows = list(rows)
    messages = []
    for gate in gates:
        diff = MetricKey(gate.metric, is_diff=True)
        for row in rows:
            if row.get("small_slice"):
                continue
            value = row.get(diff.column)
            if value is None:  # the metric has no value at this level (ece per class)
                continue
            lo, hi = (row.get(bound) for bound in diff.bounds)
            lo, hi = (math.nan if v is None else v for v in (lo, hi))
            if not _breached(gate, value, lo, hi):
                continue
            side = "above" if gate.max_increase is not None else "below"
            limit = gate.max_increase if gate.max_increase is not None else -gate.max_decrease
            how = "the difference is" if gate.mode == "point" else "the whole interval lies"
            messages.append(f"{describe_gate(gate)}: {_where(row, slice_by)}: candidate - baseline = {value:+.6g} "
                            f"[{lo:+.6g}, {hi:+.6g}]; {how} {side} {limit:+.6g}")
    return messages


def gate_error(messages: list[str]) -> GateBreach | None:
    """The error a breached gate ends the run with (exit code 3), naming every breach."""
    if not messages:
        return None
    return GateBreach(f"gate breached ({len(messages)}): " + "; ".join(messages))
