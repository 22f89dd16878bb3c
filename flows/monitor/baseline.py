"""A nightly run against an earlier run of the same source: unpaired differences and gates.

The two runs evaluated different rows, so each side's interval comes from its own
jackknife buckets (:meth:`xent_kernels.unpaired.UnpairedStats.finalize`); gate.parquet is
built as compare.parquet is (:func:`flows.monitor.paired.difference_table`), so
:func:`flows.monitor.gates.breached_gates` checks its rows unchanged. "candidate" is the
run being checked, "baseline" the earlier run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from xent_kernels import ClassStats
from xent_kernels.paired import PairedReport
from xent_kernels.unpaired import UnpairedStats

from ..config import Gate
from ..report.metric_values import MetricKey, MetricValue
from .gates import breached_gates, gate_rows
from .paired import difference_table, finalized_parts

GATE_LEADING = {"n": pa.int64(), "n_baseline": pa.int64(), "small_slice": pa.bool_(), "verdict": pa.string()}


def gate_table(baseline: ClassStats, current: ClassStats, slice_by: tuple[str, ...],
               slice_types: tuple[pa.DataType, ...], class_names: list[str], units: str, level: float,
               min_slice_size: int = 0) -> pa.Table:
    """gate.parquet (`difference_table`): n, n_baseline, small_slice and verdict (of
    ce_mean) first. ``small_slice``: the slice has fewer than `min_slice_size` rows in
    either run."""
    def small_slice(report: PairedReport) -> dict[str, np.ndarray]:
        rows = report.per_slice
        return {"small_slice": (rows["n"] < min_slice_size) | (rows["n_baseline"] < min_slice_size)}

    parts = finalized_parts(UnpairedStats(baseline, current), slice_by, units, level)
    return difference_table(parts, GATE_LEADING, slice_by, slice_types, class_names, slice_flags=small_slice)


def gate_history(gates: Sequence[Gate], table: pa.Table, slice_by: tuple[str, ...]) -> list[MetricValue]:
    """The gated values for the history (metrics.parquet, scope ``gate``): per gate and
    row of gate.parquet with a difference, the difference ``<metric>_diff`` with its
    interval, `threshold` (the signed limit: +max_increase or -max_decrease) and whether
    the gate is `breached` there."""
    rows = gate_rows(table, gates, slice_by)
    out = []
    for gate in gates:
        limit = gate.max_increase if gate.max_increase is not None else -gate.max_decrease
        diff = MetricKey(gate.metric, is_diff=True)
        for row in rows:
            value = row.get(diff.column)
            if value is None:
                continue
            where = None if row["overall"] else tuple(row[name] for name in slice_by)
            key = diff._replace(slice=where, cls=row["class"])
            lo, hi = (row.get(bound) for bound in diff.bounds)
            out.append(MetricValue(key, value, lo, hi, row["n"], float(limit),
                                   bool(breached_gates([gate], [row], slice_by)), {"small_slice": row["small_slice"]}))
    return out


def comparable(baseline: ClassStats, current: ClassStats, baseline_names: list[str] | None,
               class_names: list[str], baseline_slices: Sequence[str], slice_by: Sequence[str]) -> str | None:
    """Why two runs' states cannot be compared (classes or slice columns changed), or None."""
    if baseline.n_classes != current.n_classes:
        return f"it has {baseline.n_classes} classes, this run {current.n_classes}"
    if baseline_names is not None and list(baseline_names) != list(class_names):
        return f"its class names {baseline_names} differ from this run's {class_names}"
    if list(baseline_slices) != list(slice_by):
        return f"it is sliced by {list(baseline_slices)}, this run by {list(slice_by)}"
    return None

