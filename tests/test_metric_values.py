"""MetricKey and MetricValue: a key's column spelling, the diff key, and the two table
builders (a long table reads back into the same values; a wide table has one row per
(slice, class) and a value's interval beside it)."""

from __future__ import annotations

import math

import pyarrow as pa

from flows.report.metric_values import MetricKey, MetricValue, long_table, wide_table

SLICE_BY, SLICE_TYPES = ("model",), (pa.string(),)


def test_a_keys_column_names_its_difference_and_part():
    key = MetricKey("ce_mean", ("a",), 2)
    assert key.column == "ce_mean" and not key.overall
    assert key.diff() == MetricKey("ce_mean", ("a",), 2, is_diff=True) and key.diff().column == "ce_mean_diff"
    assert MetricKey("ce_mean", sub_key="baseline").column == "ce_mean_baseline"
    assert MetricKey("ce_mean", sub_key="verdict", is_diff=True).column == "ce_mean_diff_verdict"
    assert MetricKey("kl_per_sample").where(SLICE_BY) == "overall"
    assert MetricKey("kl_per_sample", ("a b",)).where(SLICE_BY) == "model=a b"


def test_a_long_table_reads_back_into_its_values():
    values = [
        MetricValue(MetricKey("kl_per_sample", ("a",)), 0.25, n=10, threshold=0.1, breached=True),
        MetricValue(MetricKey("kl_per_sample", ("a",), 1), 0.5, n=4),
        MetricValue(MetricKey("n_matched"), 12.0),
    ]
    schema = pa.schema([("model", pa.string()), ("overall", pa.bool_()), ("metric", pa.string()),
                        ("class", pa.int32()), ("n", pa.int64()), ("value", pa.float64()),
                        ("threshold", pa.float64()), ("breached", pa.bool_()), ("scope", pa.string())])
    table = long_table(values, schema, SLICE_BY, given={"scope": "drift"})
    assert table.schema == schema
    assert table.column("model").to_pylist() == ["a", "a", None]
    assert table.column("scope").to_pylist() == ["drift"] * 3
    assert [MetricValue.from_row(row, SLICE_BY) for row in table.to_pylist()] == values


def test_a_wide_table_has_a_row_per_slice_and_class_and_the_interval_beside_the_value():
    diff = MetricKey("ce_mean", ("b",), is_diff=True)
    values = [
        MetricValue(MetricKey("n", ("b",)), 7),
        MetricValue(diff, 0.5, lo=0.25, hi=math.nan),
        MetricValue(MetricKey("n", ("b",), 1), 3),
        MetricValue(MetricKey("n"), 9),
    ]
    columns = [("n", pa.int64()), ("ce_mean_diff", pa.float64()), ("ce_mean_diff_lo", pa.float64()),
               ("ce_mean_diff_hi", pa.float64())]
    table = wide_table(values, columns, SLICE_BY, SLICE_TYPES, ["cat", "dog"])
    assert table.column_names == ["model", "overall", "class", "class_name", *(name for name, _ in columns)]
    rows = table.to_pylist()
    assert [(r["model"], r["overall"], r["class"], r["class_name"], r["n"]) for r in rows] == [
        ("b", False, None, None, 7), ("b", False, 1, "dog", 3), (None, True, None, None, 9)]
    assert rows[0]["ce_mean_diff"] == 0.5 and rows[0]["ce_mean_diff_lo"] == 0.25 and math.isnan(rows[0]["ce_mean_diff_hi"])
    assert rows[1]["ce_mean_diff"] is None and rows[1]["ce_mean_diff_lo"] is None  # absent: null
