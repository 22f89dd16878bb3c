"""flows.generate: layouts round-trip, determinism, drift, hive folders and bad shards,
all checked on real Parquet files with plain pyarrow / numpy / scipy."""

from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import expit, log_softmax, logsumexp, rel_entr, softmax

from flows.generate import BAD_KINDS, GeneratedDump, PlantedDefect, generate_dump
from oracle import load_arrays

LAYOUT_KINDS = [
    (layout, kind)
    for layout in ("fixed_size_list", "list", "wide")
    for kind in ("logits", "probs", "log_probs")
] + [("binary", "logits"), ("binary", "probs")]


def gen(tmp_path, name="dump", **kwargs) -> GeneratedDump:
    kwargs.setdefault("rows", 600)
    kwargs.setdefault("shards", 3)
    return generate_dump(tmp_path / name, **kwargs)


def by_id(arrays):
    """The arrays reordered by id."""
    order = np.argsort(arrays["id"], kind="stable")
    return {k: v[order] for k, v in arrays.items()}


def pred_from_table(table: pa.Table, dump: GeneratedDump) -> np.ndarray:
    """Predictions straight from a pyarrow table, shape (n, K) ((n,) for binary), stored dtype."""
    if dump.layout == "wide":  # every prefix_<j> column (a "wrong_classes" shard has one more)
        names = [c for c in table.column_names if c.removeprefix(dump.pred_column).isdigit()]
        return np.column_stack([table.column(c).to_numpy() for c in names])
    column = table.column(dump.pred_column).combine_chunks()
    if dump.layout == "binary":
        return column.to_numpy()
    return column.flatten().to_numpy().reshape(len(column), -1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout,kind", LAYOUT_KINDS)
def test_layout_round_trip(tmp_path, layout, kind, dtype):
    classes = 2 if layout == "binary" else 7
    dump = gen(tmp_path, layout=layout, kind=kind, dtype=dtype, classes=classes)
    arrays = load_arrays(dump)
    assert dump.rows == dump.good_rows == 600 and not dump.bad
    assert [os.path.basename(f) for f in dump.files] == [f"part-0000{k}.parquet" for k in range(3)]
    assert arrays["pred"].shape == (600, classes) and arrays["pred"].dtype == np.float64
    assert_array_equal(arrays["id"], np.arange(600))
    assert arrays["label"].dtype == np.int64 and set(np.unique(arrays["label"])) <= set(range(classes))

    value_type = pa.float32() if dtype == "float32" else pa.float64()
    start = 0
    for path in dump.files:
        table = pq.read_table(path)
        assert table.column("id").type == pa.int64() and table.column("label").type == pa.int64()
        if layout == "fixed_size_list":
            assert table.schema.field(kind).type == pa.list_(value_type, classes)
        elif layout == "list":
            assert table.schema.field(kind).type == pa.list_(value_type)
        elif layout == "wide":
            assert dump.pred_columns == [f"{dump.pred_column}{j}" for j in range(classes)]
            assert all(table.schema.field(c).type == value_type for c in dump.pred_columns)
        else:
            assert dump.pred_column == {"logits": "logit", "probs": "prob"}[kind]
            assert table.schema.field(dump.pred_column).type == value_type
        raw = pred_from_table(table, dump).astype(np.float64)
        n = table.num_rows
        if layout == "binary":  # load_arrays expands to two columns
            expected = np.column_stack([np.zeros(n), raw]) if kind == "logits" else np.column_stack([1 - raw, raw])
            assert_array_equal(arrays["pred"][start : start + n], expected)
        else:
            assert_array_equal(arrays["pred"][start : start + n], raw)
        assert_array_equal(arrays["label"][start : start + n], table.column("label").to_numpy())
        start += n
    assert start == 600


@pytest.mark.parametrize("layout", ["list", "wide"])
def test_layouts_hold_the_same_predictions(tmp_path, layout):
    reference = load_arrays(gen(tmp_path, "fsl", kind="probs"))
    other = load_arrays(gen(tmp_path, layout, kind="probs", layout=layout))
    for key in ("pred", "label", "id"):
        assert_array_equal(other[key], reference[key])


def test_kinds_are_transforms_of_the_same_logits(tmp_path):
    logits = load_arrays(gen(tmp_path, "l", kind="logits", dtype="float64"))
    probs = load_arrays(gen(tmp_path, "p", kind="probs"))
    log_probs = load_arrays(gen(tmp_path, "lp", kind="log_probs", dtype="float64"))
    assert_allclose(log_probs["pred"], log_softmax(logits["pred"], axis=1), rtol=1e-12, atol=1e-12)
    assert_allclose(probs["pred"], softmax(logits["pred"], axis=1), rtol=1e-6, atol=1e-7)
    assert_array_equal(probs["label"], logits["label"])


def test_binary_matches_two_class_logits(tmp_path):
    two = load_arrays(gen(tmp_path, "two", classes=2, dtype="float64"))["pred"]
    logit = load_arrays(gen(tmp_path, "bl", classes=2, layout="binary", dtype="float64"))["pred"]
    prob = load_arrays(gen(tmp_path, "bp", classes=2, layout="binary", kind="probs", dtype="float64"))["pred"]
    assert_allclose(logit[:, 1], two[:, 1] - two[:, 0], rtol=1e-12, atol=1e-12)
    assert_allclose(prob[:, 1], expit(two[:, 1] - two[:, 0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["fixed_size_list", "wide"])
def test_probs_rows_sum_to_one(tmp_path, layout):
    dump = gen(tmp_path, kind="probs", classes=50, rows=3000, layout=layout)
    pred = load_arrays(dump)["pred"]
    assert (pred >= 0).all()
    assert np.abs(pred.sum(axis=1) - 1).max() < 1e-6
    log_probs = load_arrays(gen(tmp_path, "lp", kind="log_probs", classes=50, rows=3000))["pred"]
    assert np.abs(logsumexp(log_probs, axis=1)).max() < 1e-6


def test_model_beats_chance_and_classes_differ(tmp_path):
    arrays = load_arrays(gen(tmp_path, rows=20_000, classes=10, dtype="float64"))
    pred, label = arrays["pred"], arrays["label"]
    assert (pred.argmax(axis=1) == label).mean() > 0.5
    ce = -log_softmax(pred, axis=1)[np.arange(len(label)), label]
    per_class = np.array([ce[label == c].mean() for c in range(10)])
    assert per_class.max() > 1.5 * per_class.min()
    counts = np.bincount(label, minlength=10)
    assert counts.min() > 0 and counts.max() > 1.5 * counts.min()  # imbalanced prior


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b = gen(tmp_path, "a", seed=7), gen(tmp_path, "b", seed=7)
    c = gen(tmp_path, "c", seed=8)
    for fa, fb in zip(a.files, b.files):
        ta, tb = pq.read_table(fa), pq.read_table(fb)
        assert pred_from_table(ta, a).tobytes() == pred_from_table(tb, b).tobytes()
        assert ta.equals(tb)
    assert not np.array_equal(load_arrays(a)["pred"], load_arrays(c)["pred"])


def test_rows_depend_on_id_only(tmp_path):
    small = load_arrays(gen(tmp_path, "small", rows=500, shards=2))
    large = load_arrays(gen(tmp_path, "large", rows=1500, shards=5, row_group_rows=64))
    for key in ("pred", "label", "id"):
        assert_array_equal(large[key][:500], small[key])


def test_shuffle_reorders_the_same_rows(tmp_path):
    kwargs = dict(rows=1000, shards=4, kind="probs", weights=True, slices={"model": ["a", "b"]}, seed=3)
    plain = load_arrays(gen(tmp_path, "plain", **kwargs))
    shuffled_dump = gen(tmp_path, "shuffled", shuffle=True, **kwargs)
    shuffled = load_arrays(shuffled_dump)
    assert not np.array_equal(shuffled["id"], plain["id"])
    assert_array_equal(np.sort(shuffled["id"]), np.arange(1000))
    # Every shard holds ids from all over the range, not a contiguous block.
    first = pq.read_table(shuffled_dump.files[0]).column("id").to_numpy()
    assert first.min() < 100 and first.max() > 900
    resorted = by_id(shuffled)
    for key in plain:
        assert_array_equal(resorted[key], plain[key])


@pytest.mark.parametrize("shuffle", [False, True])
def test_zero_drift_is_bitwise_identical(tmp_path, shuffle):
    base = load_arrays(gen(tmp_path, "base", kind="probs"))
    zero = by_id(load_arrays(gen(tmp_path, "zero", kind="probs", drift=0.0, shuffle=shuffle)))
    assert base["pred"].tobytes() == zero["pred"].tobytes()


def test_kl_grows_with_drift(tmp_path):
    base = load_arrays(gen(tmp_path, "base", rows=4000, kind="probs", dtype="float64"))
    kls = []
    for d in (0.1, 0.5, 1.0, 2.0):
        drifted = by_id(load_arrays(gen(tmp_path, f"d{d}", rows=4000, kind="probs", dtype="float64",
                                        drift=d, shuffle=True)))
        assert_array_equal(drifted["label"], base["label"])
        kls.append(rel_entr(base["pred"], drifted["pred"]).sum(axis=1).mean())
    assert kls[0] > 0
    assert np.all(np.diff(kls) > 0), kls


def test_hive_folders(tmp_path):
    hive = {"date": ["2026-11-23", "2026-11-24"], "region": ["eu west", "us"]}
    dump = gen(tmp_path, rows=800, shards=8, hive=hive, slices={"model": ["a", "b", "c"]})
    folders = {os.path.relpath(os.path.dirname(f), dump.root) for f in dump.files}
    assert folders == {"date=2026-11-23/region=eu%20west", "date=2026-11-23/region=us",
                       "date=2026-11-24/region=eu%20west", "date=2026-11-24/region=us"}
    assert dump.hive_columns == ["date", "region"]
    for path in dump.files:
        table = pq.read_table(path, partitioning=None)
        assert "date" not in table.column_names  # the partition values live in the path only

    table = ds.dataset(dump.root, format="parquet", partitioning="hive").to_table()
    arrays = load_arrays(dump)
    order = np.argsort(table.column("id").to_numpy())
    assert_array_equal(table.column("id").to_numpy()[order], arrays["id"])
    for key in ("date", "region", "model"):
        assert [str(v) for v in table.column(key).to_numpy(zero_copy_only=False)[order]] == list(arrays[key])
    assert set(arrays["region"]) == {"eu west", "us"} and set(arrays["model"]) == {"a", "b", "c"}
    for path, values in dump.partitions.items():
        assert all(f"{k}=" in path for k in values)


def test_hive_needs_a_shard_per_partition(tmp_path):
    with pytest.raises(ValueError, match="hive"):
        gen(tmp_path, shards=2, hive={"date": ["a", "b", "c"]})


def test_weights_slices_and_row_groups(tmp_path):
    dump = gen(tmp_path, rows=3000, shards=2, weights=True, slices={"model": ["a", "b"], "split": [1, 2, 3]},
               row_group_rows=400)
    arrays = load_arrays(dump)
    assert arrays["weight"].dtype == np.float64
    assert arrays["weight"].min() >= 0.5 and arrays["weight"].max() < 2.0
    assert set(arrays["model"]) == {"a", "b"} and set(arrays["split"].tolist()) == {1, 2, 3}
    assert pq.ParquetFile(dump.files[0]).metadata.num_row_groups == 4  # 1500 rows / 400
    default = gen(tmp_path, "default", rows=3000, shards=2)
    assert pq.ParquetFile(default.files[0]).metadata.num_row_groups == 1


def test_string_labels_and_nulls(tmp_path):
    ints = gen(tmp_path, "ints", rows=4000, null_labels=0.2)
    strings = gen(tmp_path, "strings", rows=4000, null_labels=0.2, string_labels=True)
    assert strings.class_names == [f"class_{c}" for c in range(10)] and ints.class_names is None
    table = pq.read_table(strings.files[0])
    assert table.schema.field("label").type == pa.string()
    assert json.loads(table.schema.metadata[b"xent.classes"]) == strings.class_names
    assert set(table.column("label").drop_null().to_pylist()) <= set(strings.class_names)
    a, b = load_arrays(ints), load_arrays(strings)
    assert_array_equal(a["label"], b["label"])
    assert_array_equal(a["pred"], b["pred"])
    null = a["label"] == -1
    assert 0.15 < null.mean() < 0.25
    assert pq.read_table(ints.files[0]).column("label").null_count == null[: table.num_rows].sum()


@pytest.mark.parametrize("layout", ["fixed_size_list", "list", "wide"])
def test_bad_shards(tmp_path, layout):
    counts = {kind: 1 for kind in BAD_KINDS}
    counts["nan"] = 2
    dump = gen(tmp_path, rows=900, shards=9, layout=layout, kind="probs", bad_shards=counts)
    assert dump.files[0] not in dump.bad
    assert sorted(b.kind for b in dump.bad.values()) == sorted(BAD_KINDS + ("nan",))
    assert dump.good_rows == 200 and len(load_arrays(dump)["id"]) == 200
    for path, (kind, row) in dump.bad.items():
        if kind == "truncated":
            assert row is None
            with pytest.raises(pa.ArrowInvalid):
                pq.ParquetFile(path)
            with open(path, "rb") as f:
                data = f.read()
            assert data[:4] == b"PAR1" and data[-4:] != b"PAR1" and len(data) > 100
            continue
        table = pq.read_table(path)
        assert table.num_rows == 100
        if kind == "missing_column":
            assert "label" not in table.column_names and "id" in table.column_names
            continue
        pred = pred_from_table(table, dump)
        if kind == "wrong_classes":
            assert pred.shape == (100, 11)
            if layout == "fixed_size_list":
                assert table.schema.field("probs").type.list_size == 11
            continue
        labels = table.column("label").to_numpy()
        bad_rows = np.zeros(100, bool)
        bad_rows[row] = True
        if kind == "nan":
            assert np.isnan(pred[row, row % 10])
            assert np.isnan(pred).sum() == 1
        elif kind == "bad_label":
            assert labels[row] == 10 and (labels[~bad_rows] < 10).all()
        elif kind == "unnormalized":
            sums = pred.astype(np.float64).sum(axis=1)
            assert abs(sums[row] - 1.5) < 1e-5
            assert np.abs(sums[~bad_rows] - 1).max() < 1e-6


def test_bad_shards_binary_and_string_labels(tmp_path):
    dump = gen(tmp_path, rows=400, shards=4, layout="binary", classes=2, string_labels=True,
               bad_shards={"nan": 1, "bad_label": 1, "truncated": 1})
    assert dump.files[0] not in dump.bad
    for path, (kind, row) in dump.bad.items():
        if kind == "nan":
            assert np.isnan(pq.read_table(path).column("logit").to_numpy()[row])
        elif kind == "bad_label":
            assert pq.read_table(path).column("label")[row].as_py() == "class_2"
    assert len(load_arrays(dump)["id"]) == 100


def test_bad_shard_choice_is_deterministic(tmp_path):
    a = gen(tmp_path, "a", shards=6, bad_shards={"nan": 2, "truncated": 1}, seed=5)
    b = gen(tmp_path, "b", shards=6, bad_shards={"nan": 2, "truncated": 1}, seed=5)
    rel = lambda dump: {os.path.basename(p): v for p, v in dump.bad.items()}  # noqa: E731
    assert rel(a) == rel(b)
    assert all(isinstance(v, PlantedDefect) for v in a.bad.values())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layout="columns"), "layout"),
        (dict(kind="scores"), "kind"),
        (dict(layout="binary", kind="log_probs", classes=2), "kind"),
        (dict(layout="binary", classes=3), "classes=2"),
        (dict(dtype="float16"), "dtype"),
        (dict(classes=1), "classes"),
        (dict(null_labels=1.5), "null_labels"),
        (dict(drift=-1.0), "drift"),
        (dict(bad_shards={"nan": 3}), "first shard"),
        (dict(bad_shards={"broken": 1}), "unknown"),
        (dict(bad_shards={"unnormalized": 1}), "probs"),
        (dict(slices={"label": ["a"]}), "clashes"),
        (dict(slices={"model": []}), "at least one"),
        (dict(slices={"prob_3": [1]}, kind="probs"), "clashes"),
        (dict(rows=-1), "rows"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gen(tmp_path, **kwargs)


def test_atomic_writes_and_existing_files(tmp_path):
    dump = gen(tmp_path)
    names = sorted(os.listdir(dump.root))
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # no temp files left
    with pytest.raises(FileExistsError):
        gen(tmp_path)
    again = gen(tmp_path, shards=2, overwrite=True)
    assert sorted(os.listdir(again.root)) == ["part-00000.parquet", "part-00001.parquet"]
    assert len(pq.read_table(again.root)) == 600


def test_fsspec_url(tmp_path):
    url = f"memory://xent-test-{os.getpid()}-{tmp_path.name}/dump"
    dump = generate_dump(url, rows=300, shards=2, kind="log_probs", hive={"date": ["2026-11-23"]})
    assert all(f.startswith(url + "/date=2026-11-23/") for f in dump.files)
    try:
        local = load_arrays(gen(tmp_path, rows=300, shards=2, kind="log_probs"))
        assert_array_equal(load_arrays(dump)["pred"], local["pred"])
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://").split("/")[0], recursive=True)
