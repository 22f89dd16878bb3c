"""A nightly run against an earlier run of the same source: unpaired differences and gates.

The two runs evaluated different rows, so each side's interval comes from its own
jackknife buckets (:meth:`xent_kernels.unpaired.UnpairedStats.finalize`); the rows have the
columns of ``compare.parquet`` rows (``<metric>_diff``, ``_diff_lo``, ``_diff_hi``,
slice columns, ``overall``, ``class``/``class_name``, ``small_slice``), so
:func:`flows.monitor.gates.breached_gates` checks them unchanged. "candidate" is the
run being checked, "baseline" the earlier run.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from xent_kernels import STATISTICS, ClassStats
from xent_kernels.unpaired import UnpairedStats

from ..config import Gate, log_base
from ..report.tables import report_parts, slice_key_columns
from .gates import breached_gates
from .paired import difference_rows

SUFFIXES = ("baseline", "candidate", "diff", "diff_lo", "diff_hi", "verdict")


def baseline_rows(baseline: ClassStats, current: ClassStats, slice_by: tuple[str, ...], class_names: list[str],
                  units: str, level: float, min_slice_size: int = 0) -> list[dict]:
    """The rows of gate.parquet: per slice (all classes, then each class), then overall.
    ``small_slice``: the slice has fewer than `min_slice_size` rows in either run."""
    rows = []
    for part, overall in report_parts(UnpairedStats(baseline, current), slice_by):
        report = part.finalize(base=log_base(units), level=level)
        small = (report.per_slice["n"] < min_slice_size) | (report.per_slice["n_baseline"] < min_slice_size)
        position = {key: i for i, key in enumerate(report.slice_keys)}
        for row in difference_rows(report, overall, slice_by, class_names):
            row["small_slice"] = bool(small[0 if overall else position[row["key"]]])
            rows.append(row)
    return rows


def gate_table(rows: list[dict], slice_by: tuple[str, ...], slice_types: tuple[pa.DataType, ...]) -> pa.Table:
    """gate.parquet: slice columns, overall, class, class_name, n, n_baseline,
    small_slice, verdict (of ce_mean), then per interval metric its baseline,
    candidate, diff, diff_lo, diff_hi and verdict."""
    columns = slice_key_columns([row["key"] for row in rows], slice_by, slice_types)
    columns["overall"] = pa.array([row["overall"] for row in rows], type=pa.bool_())
    columns["class"] = pa.array([row["class"] for row in rows], type=pa.int32())
    columns["class_name"] = pa.array([row["class_name"] for row in rows], type=pa.string())
    present = {name for row in rows for name in row}
    metrics = [s.name for s in STATISTICS if f"{s.name}_diff" in present]
    types = {"n": pa.int64(), "n_baseline": pa.int64(), "small_slice": pa.bool_(), "verdict": pa.string()}
    for name in (*types, *(f"{m}_{s}" for m in metrics for s in SUFFIXES)):
        arrow_type = types.get(name, pa.string() if name.endswith("verdict") else pa.float64())
        columns[name] = pa.array([row.get(name) for row in rows], type=arrow_type)
    return pa.table(columns)


def gate_history(gates: Sequence[Gate], rows: list[dict], slice_by: tuple[str, ...]) -> list[dict]:
    """The gated rows for the history (metrics.parquet, scope ``gate``): per gate and
    row with a difference, `metric` ``<metric>_diff``, `value`, `lo`, `hi`, `threshold`
    (the signed limit: +max_increase or -max_decrease) and `breached`."""
    out = []
    for gate in gates:
        limit = gate.max_increase if gate.max_increase is not None else -gate.max_decrease
        for row in rows:
            value = row.get(f"{gate.metric}_diff")
            if value is None:
                continue
            out.append({
                **{name: row.get(name) for name in slice_by}, "overall": row["overall"], "class": row["class"],
                "class_name": row["class_name"], "metric": f"{gate.metric}_diff", "value": value,
                "lo": row.get(f"{gate.metric}_diff_lo"), "hi": row.get(f"{gate.metric}_diff_hi"), "n": row["n"],
                "small_slice": row["small_slice"], "threshold": float(limit),
                "breached": bool(breached_gates([gate], [row], slice_by)),
            })
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

