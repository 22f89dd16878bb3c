"""One shape for a metric value, and the builders of every table made of them.

A value has a typed key, as in TFMA's ``MetricKey``: the metric, the slice (None: over
all slices), the class (None: all classes), a sub-key (a part of the metric: the
``baseline`` or ``candidate`` side of a comparison, its ``verdict``) and whether it is a
difference candidate − baseline. Drift and the nightly history make lists of
:class:`MetricValue`, and :func:`long_table` writes one row per value (drift.parquet, the
history's gate rows); :func:`assemble` is where every long table, metrics.parquet
included, gets its columns' types. The wide tables, one row per (slice, class) and one
column per key (compare.parquet, gate.parquet), hold too many values for one object
each: :func:`flows.monitor.paired.difference_table` builds them column by column,
naming each column by its key.
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import pyarrow as pa

SliceKey = tuple[Hashable, ...]

DIFF = "diff"  # a difference's spelling in a column name: <metric>_diff, <metric>_diff_lo


class MetricKey(NamedTuple):  # a tuple: drift and the history's gate rows have a value per (slice, class)
    """Which value: `metric` of slice `slice` (None: all rows), class `cls` (None: all
    classes), part `sub_key` (None: the metric itself), a difference if `is_diff`."""

    metric: str
    slice: SliceKey | None = None
    cls: int | None = None
    sub_key: str | None = None
    is_diff: bool = False

    @property
    def overall(self) -> bool:
        return self.slice is None

    @property
    def column(self) -> str:
        """The key's column (wide tables) or ``metric`` (long tables): ``ce_mean``,
        ``ce_mean_diff``, ``ce_mean_baseline``, ``ce_mean_verdict``."""
        return column_name(self.metric, self.is_diff, self.sub_key)

    @property
    def bounds(self) -> tuple[str, str]:
        """The columns of its interval in a wide table: ``ce_mean_diff_lo``, ``ce_mean_diff_hi``."""
        return f"{self.column}_lo", f"{self.column}_hi"

    def diff(self) -> "MetricKey":
        """The key of the difference candidate − baseline of this metric (TFMA's make_diff_key)."""
        return self._replace(is_diff=True)

    def where(self, slice_by: Sequence[str], separator: str = ", ") -> str:
        """``overall`` or ``model=a, region=eu``."""
        return "overall" if self.slice is None else separator.join(f"{k}={v}" for k, v in zip(slice_by, self.slice))


@functools.lru_cache(maxsize=4096)
def column_name(metric: str, is_diff: bool, sub_key: str | None) -> str:
    return "_".join(part for part in (metric, DIFF if is_diff else None, sub_key) if part)


class MetricValue(NamedTuple):
    """A value with its key: `value` (a float, a count, a flag or a verdict), its
    interval [`lo`, `hi`], the rows `n` it is over, the `threshold` it was checked
    against and whether it `breached` it; `extra` holds the other columns of its row
    (``n_infinite_kl``, ``small_slice``, ...)."""

    key: MetricKey
    value: Any
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    threshold: float | None = None
    breached: bool = False
    extra: Mapping[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], slice_by: Sequence[str]) -> "MetricValue":
        """A row of a long table (drift.parquet, metrics.parquet) as a value."""
        key = MetricKey(row["metric"], None if row["overall"] else tuple(row[name] for name in slice_by), row["class"])
        return cls(key, row["value"], row.get("lo"), row.get("hi"), row.get("n"), row.get("threshold"),
                   bool(row.get("breached")))

    def get(self, name: str, class_names: Sequence[str] | None, slice_by: Sequence[str]) -> Any:
        """This value's entry in column `name` of a long table."""
        if name in slice_by:
            return None if self.key.slice is None else self.key.slice[list(slice_by).index(name)]
        if name == "overall":
            return self.key.overall
        if name == "class":
            return self.key.cls
        if name == "class_name":
            return None if self.key.cls is None or class_names is None else class_names[self.key.cls]
        if name == "metric":
            return self.key.column
        if name in ("value", "lo", "hi", "n", "threshold", "breached"):
            return getattr(self, name)
        return None if self.extra is None else self.extra.get(name)


def assemble(schema: pa.Schema, columns: Mapping[str, Any], n_rows: int) -> pa.Table:
    """A table of `schema` from `columns` (arrays or lists, cast to the schema's types);
    the schema's other columns are null."""
    def column(f: pa.Field):
        given = columns.get(f.name)
        if given is None:
            return pa.nulls(n_rows, f.type)
        if isinstance(given, (pa.Array, pa.ChunkedArray)):
            return pa.chunked_array(given).cast(f.type)
        return pa.array(given, type=f.type)

    return pa.table([column(f) for f in schema], schema=schema)


def long_table(values: Sequence[MetricValue], schema: pa.Schema, slice_by: Sequence[str],
               class_names: Sequence[str] | None = None, given: Mapping[str, Any] | None = None) -> pa.Table:
    """One row per value, the columns of `schema` (`given`: a constant per column, e.g. a scope)."""
    given = given or {}
    columns = {f.name: [given[f.name]] * len(values) if f.name in given
               else [v.get(f.name, class_names, slice_by) for v in values] for f in schema}
    return assemble(schema, columns, len(values))


def slice_fields(slice_by: Sequence[str], slice_types: Sequence[pa.DataType]) -> list[pa.Field]:
    return [pa.field(name, arrow_type) for name, arrow_type in zip(slice_by, slice_types)]
