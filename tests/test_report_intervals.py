"""Jackknife intervals in reports: real Parquet shards, a real LocalCluster. Bounds do
not depend on sharding (with and without an id column), follow the documented bucket
hash (recomputed here in plain Python and NumPy), sit around their value; small
slices are flagged; level and buckets reach the metadata, the terminal, the Prefect
artifact rows and the nightly history."""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose
from scipy import stats as sps
from scipy.special import log_softmax

from reference import splitmix64_int
from flows import evaluate
from flows.api import Report
from flows.cli import main
from flows.config import DriftConfig, EvalConfig
from flows.engine import evaluate as evaluate_files
from flows.errors import DataError, UsageError
from flows.runs.nightly import metrics_table
from xent_kernels import STATISTIC, interval_columns

CLASSES = 6
MASK = 2**64 - 1


def make_table(n: int, seed: int, id_type: str | None = "int", sizes: dict[str, int] | None = None) -> pa.Table:
    """Rows with float32 logits that predict the label fairly well, a `model` slice,
    and an id column (int64 or string, shuffled) unless `id_type` is None."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, CLASSES, n)
    logits = (rng.normal(size=(n, CLASSES)) + 2.0 * np.eye(CLASSES)[label]).astype(np.float32)
    sizes = sizes or {"a": n // 2, "b": n - n // 2}
    model = np.repeat(list(sizes), list(sizes.values()))
    columns = {"logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), CLASSES),
               "label": pa.array(label), "model": pa.array(model)}
    ids = rng.permutation(n) * 7 + 3
    if id_type == "int":
        columns["id"] = pa.array(ids, type=pa.int64())
    elif id_type == "str":
        columns["id"] = pa.array([f"row-{i}" for i in ids])
    return pa.table(columns)


def write_shards(table: pa.Table, folder: Path, shards: int, seed: int = 0) -> str:
    """`table` in `shards` files, rows shuffled across them."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(table.num_rows) if shards > 1 else np.arange(table.num_rows)
    for i, part in enumerate(np.array_split(order, shards)):
        pq.write_table(table.take(pa.array(part)), folder / f"part-{i:03d}.parquet")
    return str(folder)


def run(client, source: str, **settings) -> dict[str, pa.Table]:
    return Report(evaluate_files(EvalConfig(sources=[source], **settings), client)).tables


def intervals(tables: dict[str, pa.Table]) -> dict:
    return json.loads(tables["summary"].schema.metadata[b"xent.intervals"])


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("id_type", ["int", None])
def test_bounds_do_not_depend_on_sharding(client, tmp_path, id_type):
    table = make_table(6000, seed=1, id_type=id_type)
    one = run(client, write_shards(table, tmp_path / "one", 1), slice_by=["model"])
    many = run(client, write_shards(table, tmp_path / "many", 13, seed=2), slice_by=["model"], task_rows=100,
               batch_logits=2000)
    assert intervals(one) == intervals(many) == {
        "method": "jackknife", "level": 0.95, "n_buckets": 20, "bucket_key": ["id"] if id_type else "content"}
    for name, scope in (("per_class", "class"), ("summary", "slice")):
        for column in interval_columns(scope):
            a, b = one[name].column(column).to_numpy(), many[name].column(column).to_numpy()
            assert np.isfinite(a).all(), (name, column)
            assert_allclose(b, a, rtol=0, atol=1e-12, err_msg=f"{name}.{column}")


# --------------------------------------------------------------------------- the values


def test_bounds_are_next_to_their_metric_finite_and_around_it(client, tmp_path):
    tables = run(client, write_shards(make_table(5000, seed=3), tmp_path / "d", 3), slice_by=["model"])
    for name, scope in (("per_class", "class"), ("summary", "slice")):
        table = tables[name]
        names = table.column_names
        for bound in interval_columns(scope):
            metric = bound.rsplit("_", 1)[0]
            assert names.index(bound) == names.index(metric) + (1 if bound.endswith("_lo") else 2), bound
        for column in {c.rsplit("_", 1)[0] for c in interval_columns(scope)}:
            value, lo, hi = (table.column(c).to_numpy() for c in (column, f"{column}_lo", f"{column}_hi"))
            finite = np.isfinite(value) if column == "top5_accuracy" else np.ones(len(value), bool)  # NaN for C <= 5
            assert np.isfinite(lo[finite]).all() and np.isfinite(hi[finite]).all(), (name, column)
            assert (lo[finite] <= value[finite]).all() and (value[finite] <= hi[finite]).all(), (name, column)
            if column == "ce_mean":
                assert (lo < value).all() and (value < hi).all()


def test_one_bucket_gives_nan_bounds(client, tmp_path):
    tables = run(client, write_shards(make_table(1000, seed=4), tmp_path / "d", 2), n_buckets=1)
    assert intervals(tables)["bucket_key"] is None and intervals(tables)["n_buckets"] == 1
    for column in interval_columns("slice"):
        jackknife = STATISTIC[column.rsplit("_", 1)[0]].standard_error is None  # AUC's bounds are DeLong's
        assert np.isnan(tables["summary"].column(column).to_numpy()).all() == jackknife, column


# --------------------------------------------------------------------------- the documented bucket hash


splitmix64 = splitmix64_int


SEED = 0x78656E742D6A6B  # JACKKNIFE_SEED, as the README documents it


def id_buckets(*columns: list, n_buckets: int) -> np.ndarray:
    """h = seed, h = splitmix64(h ^ code) per key column, mod K; code the integer, or the
    CRC-32 of the text."""
    out = []
    for values in zip(*columns):
        h = SEED
        for value in values:
            code = value if isinstance(value, int) else zlib.crc32(str(value).encode())
            h = splitmix64(h ^ (code & MASK))
        out.append(h % n_buckets)
    return np.array(out)


def content_buckets_reference(logits: np.ndarray, labels: np.ndarray, n_buckets: int) -> np.ndarray:
    """The README's content hash, in NumPy: keys k_j from the splitmix64 generator."""
    keys = np.array([splitmix64(SEED + (j + 1) * 0x9E3779B97F4A7C15) for j in range(logits.shape[1])], dtype=np.uint64)
    words = logits.astype(np.float32).view(np.uint32).astype(np.uint64)
    x = (words ^ keys) * np.uint64(0xFF51AFD7ED558CCD)
    total = (x ^ (x >> np.uint64(29))).sum(axis=1, dtype=np.uint64)
    out = []
    for label, s in zip(labels.tolist(), total.tolist()):
        out.append(splitmix64(splitmix64(SEED ^ (label & MASK)) ^ s) % n_buckets)
    return np.array(out)


def jackknife(values: np.ndarray, buckets: np.ndarray, level: float) -> tuple[float, float]:
    """The delete-one-bucket jackknife t-interval of a mean, written out."""
    used = np.unique(buckets)
    theta = np.array([values[buckets != b].mean() for b in used])
    k = len(used)
    se = math.sqrt((k - 1) / k * ((theta - theta.mean()) ** 2).sum())
    half = sps.t.ppf((1 + level) / 2, k - 1) * se
    return values.mean() - half, values.mean() + half


@pytest.mark.parametrize("id_type", ["int", "str", "model,id", None])
def test_buckets_are_the_documented_hash(client, tmp_path, id_type):
    """K = 7 at level 0.9: the overall and per-slice intervals of mean CE and accuracy
    are the jackknife over buckets recomputed here from the ids (or the rows' bytes);
    "model,id": a drift config's key columns, a string and an integer."""
    table = make_table(3000, seed=5, id_type={"int": "int", "str": "str", "model,id": "int", None: None}[id_type])
    source = write_shards(table, tmp_path / "d", 4, seed=6)
    settings = dict(sources=[source], slice_by=["model"], n_buckets=7, interval_level=0.9)
    config = DriftConfig(**settings, drift={"id_cols": ["model", "id"]}) if id_type == "model,id" else EvalConfig(**settings)
    tables = Report(evaluate_files(config, client)).tables
    key = id_type.split(",") if id_type == "model,id" else ["id"] if id_type else "content"
    assert intervals(tables) == {"method": "jackknife", "level": 0.9, "n_buckets": 7, "bucket_key": key}
    logits = np.asarray(table.column("logits").combine_chunks().flatten()).reshape(-1, CLASSES)
    labels = table.column("label").to_numpy()
    buckets = (id_buckets(*(table.column(name).to_pylist() for name in key), n_buckets=7) if id_type
               else content_buckets_reference(logits, labels, 7))
    ce = -log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(labels)), labels]
    correct = (np.argmax(logits, axis=1) == labels).astype(float)
    models = table.column("model").to_numpy(zero_copy_only=False)
    for row in tables["summary"].to_pylist():
        rows = np.ones(len(labels), bool) if row["overall"] else models == row["model"]
        for name, values in (("ce_mean", ce), ("accuracy", correct)):
            lo, hi = jackknife(values[rows], buckets[rows], 0.9)
            assert_allclose([row[f"{name}_lo"], row[f"{name}_hi"]], [lo, hi], rtol=1e-9, err_msg=f"{row['model']} {name}")


def test_a_null_id_names_file_column_and_row(client, tmp_path):
    table = make_table(500, seed=13)
    ids = table.column("id").to_pylist()
    ids[321] = None
    source = write_shards(table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids, pa.int64())),
                          tmp_path / "d", 1)
    with pytest.raises(DataError, match=r"part-000.parquet: column 'id', row 321: null key value.*n_buckets: 1"):
        run(client, source)
    assert intervals(run(client, source, n_buckets=1))["bucket_key"] is None  # the ids are not read


# --------------------------------------------------------------------------- small slices


def test_small_slices_are_flagged(client, tmp_path):
    table = make_table(3300, seed=7, sizes={"a": 300, "b": 3000})
    source = write_shards(table, tmp_path / "d", 2)
    tables = run(client, source, slice_by=["model"], min_slice_size=1000)
    flags = {(r["model"], r["overall"]): r["small_slice"] for r in tables["summary"].to_pylist()}
    assert flags == {("a", False): True, ("b", False): False, (None, True): False}
    for row in tables["per_class"].to_pylist():
        assert row["small_slice"] == (row["model"] == "a"), row
    default = run(client, source, slice_by=["model"])
    assert not any(default["summary"].column("small_slice").to_pylist())
    assert not any(default["per_class"].column("small_slice").to_pylist())
    # exactly min_slice_size rows is not small
    at_size = run(client, source, slice_by=["model"], min_slice_size=300)
    assert not any(at_size["summary"].column("small_slice").to_pylist())


# --------------------------------------------------------------------------- config, API, CLI, history


@pytest.mark.parametrize("option, value, message", [
    ("n_buckets", 0, "greater than or equal to 1"),
    ("interval_level", 1.0, "less than 1"),
    ("interval_level", 0.0, "greater than 0"),
    ("min_slice_size", -1, "greater than or equal to 0"),
])
def test_bad_interval_settings_name_the_key(option, value, message):
    with pytest.raises(UsageError, match=f"evaluate\\(\\): key '{option}': Input should be {message}"):
        evaluate(make_table(10, seed=8), **{option: value})


@pytest.mark.parametrize("flags, key", [(["--buckets", "0"], "n_buckets"), (["--level", "1.5"], "interval_level"),
                                        (["--min-slice-size", "-3"], "min_slice_size")])
def test_bad_interval_flags_exit_2(tmp_path, capsys, flags, key):
    source = write_shards(make_table(100, seed=9), tmp_path / "d", 1)
    assert main(["eval", source, "--out", str(tmp_path / "out"), "--no-prefect", *flags]) == 2
    assert f"key '{key}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_api_returns_the_bounds_of_the_files(client, tmp_path):
    table = make_table(2000, seed=10)
    files = run(client, write_shards(table, tmp_path / "d", 3), slice_by=["model"], n_buckets=10)
    frame = evaluate(table.to_pandas(), client=client, slice_by=["model"], n_buckets=10)
    assert frame.metadata["intervals"]["bucket_key"] == ["id"]
    assert re.search(r"ce_mean \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] nats, accuracy \d\.\d{4} \[", repr(frame)), repr(frame)
    for name, scope in (("per_class", "class"), ("summary", "slice")):
        got = getattr(frame, name)
        for column in interval_columns(scope):
            assert_allclose(got[column].to_numpy(), files[name].column(column).to_numpy(), rtol=0, atol=1e-12,
                            err_msg=column)


def test_cli_prints_intervals(tmp_path, capsys):
    source = write_shards(make_table(2000, seed=11), tmp_path / "d", 2)
    assert main(["eval", source, "--out", str(tmp_path / "out"), "--no-prefect", "--slice-by", "model",
                 "--buckets", "10", "--level", "0.9", "--min-slice-size", "1001"]) == 0
    out = capsys.readouterr().out
    summary = pq.read_table(tmp_path / "out" / "summary.parquet").to_pylist()
    overall = summary[-1]
    shown = f"{overall['ce_mean']:.4f} [{overall['ce_mean_lo']:.4f}, {overall['ce_mean_hi']:.4f}]"
    assert shown in out
    assert len(re.findall(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", out)) >= 4 * CLASSES
    assert "intervals: [lo, hi] at 0.9, jackknife over 10 buckets by the hash of id" in out
    assert "small_slice" in out  # some slice is small: the column is shown


def test_artifact_rows_and_history_carry_the_intervals(client, tmp_path):
    from flows.pipelines import _class_rows

    tables = run(client, write_shards(make_table(2000, seed=12, sizes={"a": 500, "b": 1500}), tmp_path / "d", 2),
                 slice_by=["model"],
                 min_slice_size=1001)
    rows = _class_rows(tables["per_class"])
    overall = [r for r in tables["per_class"].to_pylist() if r["overall"]]
    assert rows[0]["ce_mean"] == (f"{overall[0]['ce_mean']:.6f} [{overall[0]['ce_mean_lo']:.6f}, "
                                  f"{overall[0]['ce_mean_hi']:.6f}]")
    metrics = metrics_table(tables, ["model"]).to_pylist()
    assert not any(r["metric"].endswith(("_lo", "_hi")) or r["metric"] == "small_slice" for r in metrics)
    summary = tables["summary"].to_pylist()
    for row in (r for r in metrics if r["scope"] == "slice"):
        wide = next(s for s in summary if s["model"] == row["model"] and s["overall"] == row["overall"])
        assert row["small_slice"] == wide["small_slice"]
        if f"{row['metric']}_lo" in wide:
            assert (row["lo"], row["hi"]) == (wide[f"{row['metric']}_lo"], wide[f"{row['metric']}_hi"])
        else:
            assert row["lo"] is None and row["hi"] is None, row["metric"]
    assert {r["small_slice"] for r in metrics if r["scope"] == "slice" and not r["overall"]} == {True, False}
