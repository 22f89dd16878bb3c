"""MetricKey and MetricValue: a key's column spelling, the diff key and its interval's
columns; a long table reads back into the same values; a difference table (compare.parquet,
gate.parquet) has one row per slice and per (slice, class), built from a real comparison,
each column named by its key and a difference's interval beside it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flows.config import Gate
from flows.monitor.gates import gate_rows
from flows.monitor.paired import difference_table, finalized_parts
from flows.report.metric_values import MetricKey, MetricValue, long_table
from xent_kernels.paired import paired_partial

SLICE_BY, SLICE_TYPES = ("model",), (pa.string(),)
NAMES = ["cat", "dog", "eel"]


def test_a_keys_column_names_its_difference_and_part():
    key = MetricKey("ce_mean", ("a",), 2)
    assert key.column == "ce_mean" and not key.overall
    assert key.diff() == MetricKey("ce_mean", ("a",), 2, is_diff=True) and key.diff().column == "ce_mean_diff"
    assert key.diff().bounds == ("ce_mean_diff_lo", "ce_mean_diff_hi")
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


def _comparison(slice_by: tuple[str, ...]):
    """A real paired comparison of 3 classes in slices a and b: its finalized parts."""
    rng = np.random.default_rng(0)
    n, n_classes = 400, 3
    baseline = rng.normal(size=(n, n_classes))
    slices = {"slice_ids": rng.integers(0, 2, n), "slice_keys": [("a",), ("b",)]} if slice_by else {}
    candidate = baseline + rng.normal(scale=0.3, size=(n, n_classes))
    stats = paired_partial(baseline, candidate, rng.integers(0, n_classes, n), buckets=rng.integers(0, 10, n),
                           n_buckets=10, **slices)
    return finalized_parts(stats, slice_by, "nats", 0.9)


def test_a_difference_table_has_a_row_per_slice_and_class_and_a_column_per_key():
    parts = _comparison(SLICE_BY)
    leading = {"n": pa.int64(), "wins": pa.int64(), "flagged": pa.bool_(), "verdict": pa.string()}
    table = difference_table(parts, leading, SLICE_BY, SLICE_TYPES, NAMES, overall_counts={"n_matched": 400},
                             slice_flags=lambda report: {"flagged": np.array([k == ("a",) for k in report.slice_keys])})
    ce = MetricKey("ce_mean", is_diff=True)
    assert table.column_names[:8] == ["model", "overall", "class", "class_name", "n", "wins", "flagged", "verdict"]
    assert table.column_names[8:14] == [MetricKey("ce_mean", sub_key="baseline").column,
                                        MetricKey("ce_mean", sub_key="candidate").column, ce.column, *ce.bounds,
                                        MetricKey("ce_mean", sub_key="verdict").column]
    assert table.column_names[-1] == "n_matched"
    rows = table.to_pylist()
    # the slices (class null), then each (slice, class); then the same across slices (overall)
    assert [(r["model"], r["overall"], r["class"], r["class_name"]) for r in rows] == [
        ("a", False, None, None), ("b", False, None, None), *(("a", False, c, name) for c, name in enumerate(NAMES)),
        *(("b", False, c, name) for c, name in enumerate(NAMES)),
        (None, True, None, None), *((None, True, c, name) for c, name in enumerate(NAMES))]
    report = parts[0][0]
    b_eel = rows[2 + 3 + 2]
    i = int(np.flatnonzero((report.per_class["slice"] == 1) & (report.per_class["class"] == 2))[0])
    assert (b_eel["n"], b_eel["wins"]) == (report.per_class["n"][i], report.per_class["wins"][i])
    assert (b_eel[ce.column], b_eel[ce.bounds[0]], b_eel[ce.bounds[1]]) == tuple(
        report.per_class[f"ce_mean_diff{bound}"][i] for bound in ("", "_lo", "_hi"))
    assert b_eel["verdict"] == b_eel["ce_mean_verdict"] == report.per_class["ce_mean_verdict"][i]
    assert [r["flagged"] for r in rows] == [True, False, *[True] * 3, *[False] * 7]  # a slice's, on its classes
    assert rows[0]["ece_diff"] is not None and rows[2]["ece_diff"] is None  # ece has no value per class: null
    assert [r["n_matched"] for r in rows] == [None] * 8 + [400, None, None, None]  # on the overall all-classes row only


def test_an_unsliced_difference_table_is_its_overall_rows_and_gates_read_a_few_of_its_columns():
    table = difference_table(_comparison(()), {"n": pa.int64(), "verdict": pa.string()}, (), (), NAMES,
                             overall_counts={"n_matched": 400})
    assert table.column("overall").to_pylist() == [True] * 4
    assert table.column("class").to_pylist() == [None, 0, 1, 2]
    assert table.column("n_matched").to_pylist() == [400, None, None, None]
    rows = gate_rows(table, [Gate(metric="accuracy", max_decrease=0.1)], ())
    assert list(rows[0]) == ["overall", "class", "class_name", "n", *(f"accuracy_diff{b}" for b in ("", "_lo", "_hi"))]
