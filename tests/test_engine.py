"""`xent eval` end to end: real Parquet shards, a real LocalCluster, reports compared
with a plain float64 computation over the same rows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import reference as ref
from flows.cli import main
from flows.config import EvalConfig
from flows.engine import evaluate
from flows.errors import DataError
from flows.generate import generate_dump
from flows.api import Report
from oracle import load_arrays
from support import CLASS_COLUMNS, assert_report_matches, assert_same_report, expected_report, run_cli


def run(client, out: Path, **settings) -> dict[str, pa.Table]:
    config = EvalConfig(**settings)
    paths = Report(evaluate(config, client)).write(str(out))
    return {name: pq.read_table(path) for name, path in paths.items()}


@pytest.mark.parametrize(
    "layout, kind, dtype",
    [
        ("fixed_size_list", "logits", "float32"),
        ("list", "logits", "float64"),
        ("wide", "probs", "float32"),
        ("fixed_size_list", "log_probs", "float64"),
        ("binary", "logits", "float32"),
        ("binary", "probs", "float64"),
    ],
)
def test_layouts_and_kinds_match_reference(client, tmp_path, layout, kind, dtype):
    classes = 2 if layout == "binary" else 7
    dump = generate_dump(tmp_path / "dump", rows=6000, classes=classes, shards=3, layout=layout, kind=kind,
                         dtype=dtype, null_labels=0.05, seed=3)
    tables = run(client, tmp_path / "out", sources=[dump.root], kind=kind)
    arrays = load_arrays(dump)
    cells, slices = expected_report(arrays, kind)
    assert_report_matches(tables, cells, slices)
    overall = tables["summary"].to_pylist()[-1]
    assert overall["n_ignored"] == int((arrays["label"] < 0).sum()) > 0


def test_slices_weights_hive_and_string_labels(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=9000, classes=5, shards=4, slices={"model": ["a", "b"]},
                         hive={"date": ["2026-11-22", "2026-11-23"]}, weights=True, string_labels=True, seed=4)
    tables = run(client, tmp_path / "out", sources=[dump.root], slice_by=["date", "model"], weight_col="weight")
    arrays = load_arrays(dump)
    cells, slices = expected_report(arrays, "logits", slice_by=("date", "model"), weighted=True)
    assert_report_matches(tables, cells, slices, slice_by=("date", "model"))
    names = tables["per_class"].column("class_name").to_pylist()
    assert set(names) == set(dump.class_names)
    overall = [r for r in tables["summary"].to_pylist() if r["overall"]]
    assert len(overall) == 1 and overall[0]["date"] is None and overall[0]["n"] == len(arrays["label"])


def test_report_metadata_and_units(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=2000, classes=3, shards=2, seed=5)
    nats = run(client, tmp_path / "nats", sources=[dump.root])
    bits = run(client, tmp_path / "bits", sources=[dump.root], units="bits")
    assert_allclose(bits["per_class"].column("ce_mean").to_numpy(), nats["per_class"].column("ce_mean").to_numpy() / np.log(2), rtol=1e-14)
    metadata = bits["summary"].schema.metadata
    assert metadata[b"xent.units"] == b"bits"
    config = json.loads(metadata[b"xent.config"])
    assert config["units"] == "bits" and config["sources"] == [dump.root]
    fingerprint = json.loads(metadata[b"xent.fingerprint"])
    assert fingerprint["n_files"] == 2 and {f["url"] for f in fingerprint["files"]} == set(dump.files)
    assert all(f["size"] > 0 and f["version"] for f in fingerprint["files"])
    assert b"xent.version" in metadata and b"xent.created_at" in metadata
    assert bits["per_class"].schema.field("class").type == pa.int32()


@pytest.mark.slow
def test_row_group_pieces_and_file_order_do_not_change_the_report(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=20000, classes=4, shards=3, row_group_rows=1000, slices={"s": ["x", "y"]}, seed=6)
    whole = run(client, tmp_path / "a", sources=[dump.root], slice_by=["s"])
    split = run(client, tmp_path / "b", sources=list(reversed(dump.files)), slice_by=["s"], task_rows=2500,
                batch_logits=3000, split_every=2)
    for name in ("per_class", "summary"):
        a, b = whole[name].to_pydict(), split[name].to_pydict()
        for column in a:
            if column in ("n", "class", "s", "overall", "class_name", "n_ignored", "n_nonfinite", "n_skipped", "n_bad_shards"):
                assert a[column] == b[column], column
            elif column in ("predicted_marginal", "confidence_hist"):
                assert_allclose(np.array(a[column], float), np.array(b[column], float), rtol=1e-12)
            else:
                assert_allclose(np.array(a[column], float), np.array(b[column], float), rtol=1e-12, err_msg=column)


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, 999), max_size=5, unique=True), seed=st.integers(0, 1000))
def test_random_shardings_give_the_same_report(client, tmp_path_factory, cuts, seed):
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(seed)
    n, classes = 1000, 6
    pred = rng.normal(scale=4, size=(n, classes)).astype(np.float32)
    label = rng.integers(0, classes, n)
    table = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(pred.ravel()), classes), "label": label})
    pq.write_table(table, folder / "whole.parquet")
    bounds = [0, *sorted(cuts), n]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        (folder / "parts").mkdir(exist_ok=True)
        pq.write_table(table.slice(a, b - a), folder / "parts" / f"part-{i:03d}.parquet")
    whole = run(client, folder / "r1", sources=[str(folder / "whole.parquet")])
    parts = run(client, folder / "r2", sources=[str(folder / "parts")])
    for column in CLASS_COLUMNS:
        assert_allclose(parts["per_class"].column(column).to_numpy(), whole["per_class"].column(column).to_numpy(), rtol=1e-12)


# --------------------------------------------------------------------------- bad input


BAD_CASES = {
    "truncated": "not a readable Parquet file",
    "nan": "NaN or infinite",
    "bad_label": "out of range",
    "wrong_classes": "expected 5",
    "missing_column": "missing column 'label'",
}


@pytest.mark.parametrize("bad", sorted(BAD_CASES))
def test_bad_shard_is_a_clear_error_and_writes_nothing(client, tmp_path, bad):
    dump = generate_dump(tmp_path / "dump", rows=4000, classes=5, shards=4, bad_shards={bad: 1}, seed=7)
    (bad_path, defect), = dump.bad.items()
    with pytest.raises(DataError) as error:
        run(client, tmp_path / "out", sources=[dump.root])
    message = str(error.value)
    assert bad_path in message and BAD_CASES[bad] in message
    if defect.row is not None:
        assert f"row {defect.row}" in message
    assert not (tmp_path / "out").exists()


def test_unnormalized_probabilities_name_the_row(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=3000, classes=4, shards=3, kind="probs", bad_shards={"unnormalized": 1}, seed=8)
    (bad_path, defect), = dump.bad.items()
    with pytest.raises(DataError, match=f"row {defect.row}: probs with a sum of [0-9.]+, not 1 \\(tolerance 0.0001\\)") as error:
        run(client, tmp_path / "out", sources=[dump.root], kind="probs")
    assert bad_path in str(error.value) and "'probs'" in str(error.value)


def test_skip_mode_leaves_bad_shards_out_and_lists_them(client, tmp_path):
    bad = {"truncated": 1, "nan": 1, "bad_label": 1}
    dump = generate_dump(tmp_path / "dump", rows=8000, classes=5, shards=6, bad_shards=bad, seed=9, row_group_rows=200)
    # task_rows would split files by row group; a bad row group must still drop its whole file
    tables = run(client, tmp_path / "out", sources=[dump.root], on_bad_shard="skip", task_rows=300)
    listed = tables["bad_shards"].to_pylist()
    assert {row["file"] for row in listed} == set(dump.bad)
    assert all(row["reason"] for row in listed)
    arrays = load_arrays(dump)
    cells, slices = expected_report(arrays, "logits")
    assert_report_matches(tables, cells, slices)
    overall = tables["summary"].to_pylist()[-1]
    # The truncated file's footer is unreadable: its rows, and so the total, are unknown.
    assert [row["rows"] is None for row in listed].count(True) == 1
    assert overall["n_bad_shards"] == 3 and overall["n_skipped"] is None


@pytest.mark.parametrize("kind", ["truncated", "missing_column", "wrong_classes"])
def test_skip_mode_skips_a_bad_file_that_sorts_first(client, tmp_path, kind, capsys):
    """The read settings come from the first readable file, not from whichever sorts first."""
    dump = generate_dump(tmp_path / "dump", rows=3000, classes=4, shards=4, bad_shards={kind: 1}, seed=19)
    (bad_path, _), = dump.bad.items()
    first = Path(dump.root) / "a-sorts-first.parquet"
    os.rename(bad_path, first)
    good = [f for f in dump.files if f != bad_path]
    tables = run(client, tmp_path / "out", sources=[dump.root], on_bad_shard="skip")
    expected = run(client, tmp_path / "expected", sources=good)
    kept = {name: [c for c in expected[name].column_names if c not in ("n_skipped", "n_bad_shards")]
            for name in ("per_class", "summary")}
    assert_same_report({name: tables[name].select(columns) for name, columns in kept.items()},
                       {name: expected[name].select(columns) for name, columns in kept.items()})
    (listed,) = tables["bad_shards"].to_pylist()
    assert listed["file"] == str(first) and listed["reason"]
    footer_rows = None if kind == "truncated" else pq.ParquetFile(first).metadata.num_rows
    assert listed["rows"] == footer_rows
    overall = tables["summary"].to_pylist()[-1]
    assert overall["n_bad_shards"] == 1 and overall["n_skipped"] == footer_rows
    assert main(["eval", dump.root, "--out", str(tmp_path / "cli"), "--on-bad-shard", "skip", "--no-prefect"]) == 0
    assert "1 bad shard skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_probabilities_read_as_logits_are_flagged(tmp_path, capsys):
    dump = generate_dump(tmp_path / "probs", rows=3000, classes=4, shards=3, kind="probs", seed=20)
    out = str(tmp_path / "out")
    # The default kind finds no 'logits' column and says which kind the dump looks like.
    assert main(["eval", dump.root, "--out", out, "--no-prefect"]) == 1
    err = capsys.readouterr().err
    assert "no prediction column 'logits'" in err and "--kind probs" in err and len(err.strip().splitlines()) == 1
    # Naming the column reads the probabilities as logits: allowed, but not silently.
    result = run_cli(["eval", dump.root, "--out", out, "--no-prefect", "--pred-col", "probs"])
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "look like probabilities" in line]
    assert len(warnings) == 1 and "--kind probs" in warnings[0] and "and 2 more file(s)" in warnings[0], warnings
    assert sorted(dump.files)[0] in warnings[0]
    assert main(["eval", dump.root, "--out", out, "--no-prefect", "--kind", "probs"]) == 0
    logits = generate_dump(tmp_path / "logits", rows=3000, classes=4, shards=3, seed=20)
    result = run_cli(["eval", logits.root, "--out", out, "--no-prefect"])
    assert result.returncode == 0 and "look like probabilities" not in result.stderr, result.stderr


@pytest.mark.slow
def test_eps_clips_only_when_asked_and_is_recorded(tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=4000, classes=5, shards=2, seed=21)
    arrays = load_arrays(dump)
    for eps in (None, 0.2):
        out = tmp_path / f"out-{eps}"
        args = ["eval", dump.root, "--out", str(out), "--no-prefect"] + ([] if eps is None else ["--eps", str(eps)])
        assert main(args) == 0
        tables = {name: pq.read_table(out / f"{name}.parquet") for name in ("per_class", "summary")}
        cells, slices = ref.class_report(arrays["pred"], arrays["label"], "logits", eps=eps)
        assert_report_matches(tables, {((), c): v for (_, c), v in cells.items()}, {(): slices[0]})
        metadata = tables["summary"].schema.metadata
        assert json.loads(metadata[b"xent.eps"]) == eps and json.loads(metadata[b"xent.config"])["eps"] == eps
    assert main(["eval", dump.root, "--out", str(tmp_path / "bad"), "--no-prefect", "--eps", "1.5"]) == 2


def test_nonfinite_rows_can_be_counted_instead(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=3000, classes=3, shards=3, bad_shards={"nan": 1}, seed=10)
    tables = run(client, tmp_path / "out", sources=[dump.root], on_nonfinite="count")
    assert tables["summary"].to_pylist()[-1]["n_nonfinite"] == 1


def test_failed_run_keeps_the_previous_report(client, tmp_path):
    good = generate_dump(tmp_path / "good", rows=1000, classes=3, shards=2, seed=11)
    bad = generate_dump(tmp_path / "bad", rows=1000, classes=3, shards=2, bad_shards={"nan": 1}, seed=11)
    run(client, tmp_path / "out", sources=[good.root])
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError):
        run(client, tmp_path / "out", sources=[bad.root])
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["bad", "good", "out"]  # no staging folders left


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_exit_codes(tmp_path, capsys, prefect_harness):
    dump = generate_dump(tmp_path / "dump", rows=2000, classes=3, shards=2, bad_shards={"bad_label": 1}, seed=12)
    assert main(["eval", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o1")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["eval", dump.root, "--out", str(tmp_path / "o2")]) == 1
    assert "out of range" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("kind: logits\nunits: furlongs\nbogus_key: 1\n")
    assert main(["eval", dump.root, "--out", str(tmp_path / "o3"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "key 'units'" in err and "key 'bogus_key'" in err and str(config) in err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--out"])
    assert exit_info.value.code == 2
    assert main(["eval", dump.root, "--out", str(tmp_path / "o4"), "--on-bad-shard", "skip"]) == 0
    assert (tmp_path / "o4" / "bad_shards.parquet").exists()
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


@pytest.mark.slow
def test_confusion_parquet_equals_sklearn_per_slice(client, tmp_path):
    from sklearn.metrics import confusion_matrix

    dump = generate_dump(tmp_path / "dump", rows=6000, classes=4, shards=3, slices={"model": ["a", "b"]},
                         weights=True, string_labels=True, seed=7)
    tables = run(client, tmp_path / "out", sources=[dump.root], slice_by=["model"], weight_col="weight")
    arrays = load_arrays(dump)
    labels, predicted = arrays["label"], np.argmax(arrays["pred"], axis=1)
    rows = tables["confusion"].to_pylist()
    assert {r["true_name"] for r in rows} <= set(dump.class_names)
    for model in ("a", "b", None):
        keep = np.ones(len(labels), bool) if model is None else arrays["model"] == model
        expected_n = confusion_matrix(labels[keep], predicted[keep], labels=range(4))
        expected_w = confusion_matrix(labels[keep], predicted[keep], labels=range(4), sample_weight=arrays["weight"][keep])
        got_n, got_w = np.zeros((4, 4), np.int64), np.zeros((4, 4))
        for r in rows:
            if r["model"] == model and r["overall"] == (model is None):
                got_n[r["true"], r["predicted"]] = r["n"]
                got_w[r["true"], r["predicted"]] = r["weight"]
        np.testing.assert_array_equal(got_n, expected_n)
        assert_allclose(got_w, expected_w, rtol=1e-12)
        assert all(r["n"] > 0 for r in rows)  # empty cells are left out


def test_confusion_and_auc_can_be_switched_off(client, tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=2000, classes=4, shards=2, seed=8)
    tables = run(client, tmp_path / "out", sources=[dump.root], max_confusion_classes=3, max_auc_classes=0)
    assert "confusion" not in tables
    assert np.isnan(tables["summary"].column("auc").to_numpy()).all()
    assert not np.isnan(tables["summary"].column("f1_macro").to_numpy()).any()  # from the per-bucket cells


def test_a_float32_binary_logit_column_gives_the_report_of_its_float64_values(client):
    # The reader keeps a float32 logit column float32 (its (0, x) rows are exact); the
    # report must be the one the same values give as float64, bit for bit.
    import flows

    rng = np.random.default_rng(3)
    n = 40_000
    logit = (rng.normal(size=n) * 3).astype(np.float32)
    frame = {"id": np.arange(n), "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64),
             "region": np.where(rng.random(n) < 0.3, "eu", "us")}
    narrow = flows.evaluate(pa.table({**frame, "logit": logit}), client=client, slice_by=["region"])
    wide = flows.evaluate(pa.table({**frame, "logit": logit.astype(np.float64)}), client=client, slice_by=["region"])
    for name in ("per_class", "summary"):
        assert narrow.tables[name].to_pandas().equals(wide.tables[name].to_pandas())  # exact values, NaN where NaN


def test_a_text_slice_with_nulls_read_as_a_dictionary_gives_its_null_slice(tmp_path, client):
    """Text slice columns are read as dictionaries; a null slice value is its own slice,
    as it was when the column was read as text."""
    from flows import evaluate

    rng = np.random.default_rng(3)
    n = 3000
    logits = rng.normal(size=(n, 3)).astype(np.float32)
    region = np.array(["eu", "us", None], dtype=object)[rng.integers(0, 3, n)]
    table = pa.table({"id": np.arange(n), "label": rng.integers(0, 3, n),
                      "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), 3),
                      "region": pa.array(region, pa.string())})
    (tmp_path / "dump").mkdir()
    pq.write_table(table.slice(0, 1500), tmp_path / "dump" / "a.parquet", row_group_size=500)
    pq.write_table(table.slice(1500), tmp_path / "dump" / "b.parquet", row_group_size=700)
    report = evaluate(tmp_path / "dump", slice_by=["region"], client=client)
    memory = evaluate(table, slice_by=["region"], client=client)  # in memory: text, not a dictionary
    rows = report.summary[~report.summary["overall"]]
    assert report.tables["summary"].column("region").to_pylist()[:3] == ["eu", "us", None]
    assert list(rows["n"]) == [int((region == v).sum()) for v in ("eu", "us")] + [sum(v is None for v in region)]
    np.testing.assert_allclose(rows["ce_mean"], memory.summary[~memory.summary["overall"]]["ce_mean"], rtol=1e-12)
