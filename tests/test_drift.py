"""Drift: the per-sample join on key columns (several models scoring the same ids),
units, the verdict and breaches on stdout, the Prefect-free path, and the flow's
artifact keys and run names, against an obvious numpy/scipy computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from numpy.testing import assert_allclose
from scipy.special import log_softmax, rel_entr

from support import run_without_prefect
from flows.api import DRIFT
from flows.cli import main
from flows.config import DriftConfig
from flows.drift_statistics import drift_metrics

DRIFT_METRICS = drift_metrics(tokens=False)  # of classifier predictions
from flows.errors import DataError
from flows.generate import generate_dump
from flows.runs.two_sided import two_sided_steps
from oracle import load_arrays

MODELS = ("a", "b", "c")
CLASSES = 4


# --------------------------------------------------------------------------- several models scoring the same ids


def model_dumps(tmp_path: Path, layout: str, string_ids: bool = False) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """A reference and a current dump in which every model scores the same ids.

    Per model and side, a generated dump (the model's own seed; the current side
    drifted by a model-dependent amount, shuffled, and missing the last 100 ids).
    layout "hive": those dumps as they are, in model=<name> folders. layout "column":
    their rows mixed into three shards with a `model` column. Returns the arrays per
    side and model, as written.
    """
    arrays: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for side, rows in (("reference", 900), ("current", 800)):
        arrays[side] = {}
        tables = []
        for i, model in enumerate(MODELS):
            drift = 0.0 if side == "reference" else 0.3 * (i + 1)
            folder = tmp_path / side / f"model={model}" if layout == "hive" else tmp_path / "generated" / side / model
            dump = generate_dump(folder, rows=rows, classes=CLASSES, shards=2, seed=20 + i, drift=drift,
                                 shuffle=side == "current")
            arrays[side][model] = data = load_arrays(dump)
            if layout != "column":
                continue
            tables.append(pa.table({
                "id": pa.array([f"s{v:05d}" for v in data["id"]]) if string_ids else pa.array(data["id"]),
                "label": pa.array(data["label"]),
                "logits": pa.FixedSizeListArray.from_arrays(pa.array(data["pred"].astype(np.float32).ravel()), CLASSES),
                "model": pa.array([model] * len(data["id"])),
            }))
        if layout == "column":
            table = pa.concat_tables(tables)
            table = table.take(np.random.default_rng(len(side)).permutation(table.num_rows))
            (tmp_path / side).mkdir()
            for k, part in enumerate(np.array_split(np.arange(table.num_rows), 3)):
                pq.write_table(table.take(part), tmp_path / side / f"part-{k}.parquet")
    return arrays


def expected_kl(arrays) -> dict[str, np.ndarray]:
    """Per model, KL(reference‖current) of each id present on both sides (joined on model and id)."""
    per_model = {}
    for model in MODELS:
        ref, cur = arrays["reference"][model], arrays["current"][model]
        shared, in_ref, in_cur = np.intersect1d(ref["id"], cur["id"], return_indices=True)
        p = np.exp(log_softmax(ref["pred"][in_ref], axis=1))
        q = np.exp(log_softmax(cur["pred"][in_cur], axis=1))
        per_model[model] = rel_entr(p, q).sum(axis=1)
    return per_model


def rows_by_key(report) -> dict:
    return {(v.key.slice, v.key.metric): v.value for v in report.values if v.key.cls is None}


@pytest.mark.slow
@pytest.mark.parametrize("layout, string_ids, key", [
    ("column", False, None),  # default key: id plus the slice column model
    ("column", True, ["model", "id"]),  # string ids, the key named, no slicing
    ("hive", False, None),  # model from the folder names
    ("hive", False, ["model", "id"]),  # a hive key in the join key without slicing by it
])
def test_models_scoring_the_same_ids_join_model_with_model(tmp_path, layout, string_ids, key):
    arrays = model_dumps(tmp_path, layout, string_ids)
    sliced = key is None
    config = DriftConfig(
        sources=[str(tmp_path / "current")], reference=[str(tmp_path / "reference")],
        slice_by=["model"] if sliced else [], drift={"bucket_rows": 1000, "id_cols": key},
    )
    report = two_sided_steps(DRIFT, config, str(tmp_path / "out"))[1].report
    values = rows_by_key(report)
    per_model = expected_kl(arrays)
    assert values[(None, "n_matched")] == 3 * 800
    assert values[(None, "n_only_reference")] == 3 * 100
    assert values[(None, "n_only_current")] == 0
    assert_allclose(values[(None, "kl_per_sample")], np.concatenate(list(per_model.values())).mean(), rtol=1e-10)
    if sliced:
        for model in MODELS:
            assert_allclose(values[((model,), "kl_per_sample")], per_model[model].mean(), rtol=1e-10)


@pytest.mark.slow
def test_duplicate_keys_name_the_key_columns_and_suggest_id_cols(tmp_path, capsys):
    model_dumps(tmp_path, "column")
    args = ["drift", "--reference", str(tmp_path / "reference"), "--current", str(tmp_path / "current"),
            "--out", str(tmp_path / "out"), "--no-prefect"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "key (id=" in err and "appears 3 times" in err and "join key (id)" in err and "id_cols" in err, err
    assert len(err.strip().splitlines()) == 1
    assert main([*args, "--id-cols", "model,id"]) == 0, capsys.readouterr().err  # as the message suggests
    matched = [r for r in pq.read_table(tmp_path / "out" / "drift.parquet").to_pylist() if r["metric"] == "n_matched"]
    assert [r["value"] for r in matched] == [3 * 800]


def test_key_columns_of_different_types_are_a_data_error(tmp_path):
    reference = generate_dump(tmp_path / "reference", rows=300, classes=3, shards=1, seed=1)
    table = pq.read_table(reference.files[0])
    (tmp_path / "current").mkdir()
    pq.write_table(table.set_column(0, "id", pa.array([str(v) for v in table.column("id").to_pylist()])),
                   tmp_path / "current" / "part-0.parquet")
    config = DriftConfig(sources=[str(tmp_path / "current")], reference=[reference.root])
    with pytest.raises(DataError, match="key column 'id' is integer in the reference dump .* but string in the current"):
        two_sided_steps(DRIFT, config, str(tmp_path / "out"))


def test_a_missing_key_column_is_named(tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=300, classes=3, shards=1, seed=1)
    config = DriftConfig(sources=[dump.root], reference=[dump.root], drift={"id_cols": "model,id"})
    with pytest.raises(DataError, match=r"no key column 'model'.*joined on \(model, id\).*id_cols"):
        two_sided_steps(DRIFT, config, str(tmp_path / "out"))


# --------------------------------------------------------------------------- units


def drift_dumps(tmp_path, drift=1.0):
    common = dict(classes=5, slices={"model": ["a", "b"]}, seed=7)
    reference = generate_dump(tmp_path / "ref", rows=3000, shards=3, **common)
    current = generate_dump(tmp_path / "cur", rows=2500, shards=2, shuffle=True, drift=drift, **common)
    return reference, current


@pytest.mark.slow
def test_bits_divide_every_divergence_and_thresholds_are_in_bits(tmp_path):
    reference, current = drift_dumps(tmp_path)

    def run(units, thresholds):
        config = DriftConfig(sources=[current.root], reference=[reference.root], slice_by=["model"], units=units,
                             drift={"thresholds": thresholds, "bucket_rows": 1000})
        paths, result = two_sided_steps(DRIFT, config, str(tmp_path / units))
        return pq.read_table(paths["drift"]), result.report

    nats, nats_report = run("nats", {})
    kl_nats = rows_by_key(nats_report)[(None, "kl_per_sample")]
    # Between the value in nats and the value in bits (1.44 times larger): breached only in bits.
    bits, bits_report = run("bits", {"kl_per_sample": 1.2 * kl_nats})
    assert nats.column_names == bits.column_names and nats.num_rows == bits.num_rows
    assert bits.schema.metadata[b"xent.units"] == b"bits" and nats.schema.metadata[b"xent.units"] == b"nats"
    metric = nats.column("metric").to_pylist()
    divergence = np.isin(metric, DRIFT_METRICS)
    assert set(np.array(metric)[divergence]) == set(DRIFT_METRICS)  # every kind of divergence is checked
    value_nats, value_bits = nats.column("value").to_numpy(), bits.column("value").to_numpy()
    assert_allclose(value_bits[divergence], value_nats[divergence] / math.log(2), rtol=1e-12)
    assert_allclose(value_bits[~divergence], value_nats[~divergence], rtol=0)  # counts
    kl_class = ~np.isnan(nats.column("kl_mean").to_numpy(zero_copy_only=False))
    assert kl_class.any()
    assert_allclose(bits.column("kl_mean").to_numpy()[kl_class], nats.column("kl_mean").to_numpy()[kl_class] / math.log(2),
                    rtol=1e-12)
    threshold = 1.2 * kl_nats
    breached = {(v.key.slice, v.key.metric) for v in bits_report.breaches}
    assert (None, "kl_per_sample") in breached and kl_nats < threshold
    assert breached == {(v.key.slice, v.key.metric) for v in bits_report.values
                        if v.key.metric == "kl_per_sample" and v.key.cls is None and v.value > threshold}


# --------------------------------------------------------------------------- the CLI: verdict, breaches, --no-prefect


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_without_thresholds_says_so_and_lists_the_values(tmp_path, capsys):
    reference, current = drift_dumps(tmp_path, drift=0.5)
    common = ["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model", "--no-prefect"]
    assert main([*common, "--out", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "no thresholds set" in out and "within thresholds" not in out, out
    for metric in DRIFT_METRICS:
        assert metric in out
    assert str(tmp_path / "none" / "drift.parquet") in out.replace("\n", "")

    config = write_yaml(tmp_path / "d.yaml", {"drift": {"thresholds": {"marginal_js": 10.0}}})
    assert main([*common, "--out", str(tmp_path / "within"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "within thresholds" in out and "no thresholds set" not in out, out


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["flow", "no-prefect"])
def test_every_breach_is_printed_and_exits_3(tmp_path, capsys, mode):
    reference, current = drift_dumps(tmp_path)
    config = write_yaml(tmp_path / "d.yaml", {"drift": {"thresholds": {"kl_per_sample": 0.001, "marginal_js": 1e-6}}})
    args = ["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model",
            "--out", str(tmp_path / "out"), "--config", str(config)]
    code = main(args + (["--no-prefect"] if mode == "no-prefect" else []))
    captured = capsys.readouterr()
    assert code == 3, captured.err
    table = pq.read_table(tmp_path / "out" / "drift.parquet").to_pylist()
    breached = [row for row in table if row["breached"]]
    assert len(breached) == 6  # two metrics, two slices and overall
    lines = [line for line in captured.out.splitlines() if line.startswith("BREACH ")]
    assert len(lines) == len(breached), captured.out
    for row in breached:
        where = "overall" if row["overall"] else f"model={row['model']}"
        assert any(f"BREACH {row['metric']} = " in line and line.endswith(f"({where})") for line in lines), (row, lines)
    assert "drift.parquet" in captured.out


@pytest.mark.slow
def test_no_prefect_never_imports_it(tmp_path):
    """`xent drift --no-prefect` runs the same steps without importing Prefect at all."""
    reference, current = drift_dumps(tmp_path)
    args = ["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model",
            "--out", str(tmp_path / "out"), "--no-prefect", "--units", "bits"]
    codes, prefect_modules, _ = run_without_prefect([args], tmp_path)
    assert codes == [0] and prefect_modules == []
    table = pq.read_table(tmp_path / "out" / "drift.parquet")
    assert table.schema.metadata[b"xent.units"] == b"bits"
    assert "kl_per_sample" in table.column("metric").to_pylist()


# --------------------------------------------------------------------------- the flow: artifact keys and run names


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_drift_runs_on_other_dumps_keep_their_own_artifacts(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.pipelines import drift_flow

    common = dict(rows=1500, classes=3, slices={"model": ["a", "b"]}, seed=3)
    reference = generate_dump(tmp_path / "dumps" / "date=2026-11-22", shards=2, **common)
    runs = {}
    for day, drift in (("2026-11-23", 0.3), ("2026-11-24", 0.6)):
        current = generate_dump(tmp_path / "dumps" / f"date={day}", shards=2, drift=drift, **common)
        config = DriftConfig(sources=[current.root], reference=[reference.root], slice_by=["model"])
        state = drift_flow(config, str(tmp_path / f"out-{day}"), return_state=True)
        assert state.is_completed(), state.message
        runs[day] = state.state_details.flow_run_id

    keys = {}
    with get_client(sync_client=True) as client:
        for day, run_id in runs.items():
            assert client.read_flow_run(run_id).name == f"xent-drift date={day} vs date=2026-11-22"
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
            (artifact,) = [a for a in artifacts if a.key]
            assert artifact.key.startswith(f"xent-drift-date-{day}-"), artifact.key
            assert "kl_per_sample" in str(artifact.data)
            keys[day] = artifact.key
    assert len(set(keys.values())) == 2
