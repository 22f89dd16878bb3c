"""Prefect flows run for real (temporary Prefect server from prefect_test_harness),
drift against an obvious numpy/scipy computation, bad configs (the nightly flow: test_nightly.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from numpy.testing import assert_allclose
from scipy.special import log_softmax, rel_entr

from support import run_without_prefect
from flows.runs.adhoc import eval_steps
from flows.cli import main
from flows.config import DriftConfig, EvalConfig, NightlyConfig, build_config
from flows.errors import DriftBreach, UsageError
from flows.generate import generate_dump
from flows.pipelines import drift_flow, eval_flow, find_inputs
from oracle import load_arrays


pytestmark = pytest.mark.usefixtures("prefect_harness")


def probabilities(arrays):
    order = np.argsort(arrays["id"])
    return arrays["id"][order], np.exp(log_softmax(arrays["pred"][order], axis=1)), arrays["model"][order]


# --------------------------------------------------------------------------- ad hoc


@pytest.mark.slow
def test_eval_flow_matches_the_plain_steps(tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=3000, classes=4, shards=3, slices={"model": ["a", "b"]}, seed=1)
    config = EvalConfig(sources=[dump.root], slice_by=["model"])
    state = eval_flow(config, str(tmp_path / "flow"), return_state=True)
    assert state.is_completed()
    plain, _, _ = eval_steps(config, str(tmp_path / "plain"))
    for name, path in state.result().items():
        a, b = pq.read_table(path), pq.read_table(plain[name])
        assert a.column_names == b.column_names
        for column in ("n", "class"):
            if column in a.column_names:
                assert a.column(column).to_pylist() == b.column(column).to_pylist()
        for column in ("ce_mean", "weight"):  # confusion.parquet has no ce_mean
            if column in a.column_names:
                assert_allclose(a.column(column).to_numpy(), b.column(column).to_numpy(), rtol=1e-13)


@pytest.mark.slow
def test_eval_without_prefect_never_imports_it(tmp_path):
    """`xent eval --no-prefect` runs the same steps without importing Prefect at all."""
    dump = generate_dump(tmp_path / "dump", rows=500, classes=3, shards=2, seed=2)
    codes, prefect_modules, _ = run_without_prefect([["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect"]], tmp_path)
    assert codes == [0] and prefect_modules == []
    assert pq.read_table(tmp_path / "out" / "per_class.parquet").num_rows > 0


def test_task_logic_through_fn(tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=500, classes=3, shards=2, seed=2)
    inputs = find_inputs.fn(EvalConfig(sources=[dump.root]))
    assert [i.url for i in inputs] == sorted(dump.files) and all(i.size > 0 for i in inputs)


def test_eval_cli_errors_come_through_the_flow(tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=1000, classes=3, shards=2, bad_shards={"nan": 1}, seed=3)
    assert main(["eval", dump.root, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    (bad_path, defect), = dump.bad.items()
    assert bad_path in err and f"row {defect.row}" in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- drift


def drift_dumps(tmp_path, drift, current_rows=6000):
    common = dict(classes=5, slices={"model": ["a", "b"]}, seed=7)
    reference = generate_dump(tmp_path / "ref", rows=6000, shards=3, **common)
    current = generate_dump(tmp_path / "cur", rows=current_rows, shards=5, shuffle=True, drift=drift, **common)
    return reference, current


def drift_config(reference, current, **thresholds):
    return DriftConfig(
        sources=[current.root], reference=[reference.root], slice_by=["model"],
        drift={"thresholds": thresholds, "bucket_rows": 1500},
    )


def drift_rows(path):
    return {(r["model"], r["metric"], r["class"]): r for r in pq.read_table(path).to_pylist()}


@pytest.mark.slow
def test_no_drift_gives_zero_and_completes(tmp_path):
    reference, current = drift_dumps(tmp_path, drift=0.0)
    config = drift_config(reference, current, kl_per_sample=1e-9, marginal_js=1e-9, confidence_psi=1e-9)
    state = drift_flow(config, str(tmp_path / "out"), return_state=True)
    assert state.is_completed(), state.message
    rows = drift_rows(tmp_path / "out" / "drift.parquet")
    for (model, metric, klass), row in rows.items():
        if metric.startswith(("marginal", "confidence", "kl_per")):
            assert abs(row["value"]) < 1e-12, (model, metric, klass, row["value"])
            assert not row["breached"]
    assert rows[(None, "n_matched", None)]["value"] == 6000


@pytest.mark.slow
def test_drift_matches_numpy_and_breaches(tmp_path, capsys):
    reference, current = drift_dumps(tmp_path, drift=1.0, current_rows=5000)  # ids 5000..5999 only in the reference
    config = drift_config(reference, current, kl_per_sample=0.05)
    state = drift_flow(config, str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    assert "kl_per_sample" in state.message and "threshold 0.05" in state.message and "model=a" in state.message
    with pytest.raises(DriftBreach):
        state.result()
    rows = drift_rows(tmp_path / "out" / "drift.parquet")

    ref_ids, p, models = probabilities(load_arrays(reference))
    cur_ids, q, _ = probabilities(load_arrays(current))
    shared = np.isin(ref_ids, cur_ids)
    per_row = rel_entr(p[shared], q).sum(axis=1)
    assert_allclose(rows[(None, "kl_per_sample", None)]["value"], per_row.mean(), rtol=1e-10)
    for model in ("a", "b"):
        mask = models[shared] == model
        assert_allclose(rows[(model, "kl_per_sample", None)]["value"], per_row[mask].mean(), rtol=1e-10)
        assert rows[(model, "kl_per_sample", None)]["breached"]
    labels = load_arrays(current)["label"][np.argsort(load_arrays(current)["id"])]
    for klass in range(5):
        mask = labels == klass
        assert_allclose(rows[(None, "kl_per_sample", klass)]["kl_mean"], per_row[mask].mean(), rtol=1e-10)
    assert rows[(None, "n_only_reference", None)]["value"] == 1000
    assert rows[(None, "n_only_current", None)]["value"] == 0

    # distribution level: smoothed marginals, the obvious way
    eps = config.drift.smoothing
    def shares(x):
        return (x / x.sum() + eps) / (1 + eps * x.size)
    r, c = shares(p.sum(axis=0)), shares(q.sum(axis=0))
    assert_allclose(rows[(None, "marginal_kl", None)]["value"], rel_entr(r, c).sum(), rtol=1e-9)
    assert_allclose(rows[(None, "marginal_psi", None)]["value"], np.sum((c - r) * np.log(c / r)), rtol=1e-9)

    code = main(["drift", "--reference", reference.root, "--current", current.root, "--out", str(tmp_path / "cli"),
                 "--slice-by", "model", "--config", str(write_yaml(tmp_path / "d.yaml", {"drift": {"thresholds": {"kl_per_sample": 0.05}}}))])
    assert code == 3
    out = capsys.readouterr()
    assert "kl_per_sample" in out.err and "BREACH" in out.out


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- bad configs


BAD_CONFIGS = [
    (EvalConfig, {"kind": "logits", "colour": "blue"}, "key 'colour'"),
    (EvalConfig, {"units": "furlongs"}, "key 'units'"),
    (EvalConfig, {"n_bins": "many"}, "key 'n_bins'"),
    (DriftConfig, {"drift": {"thresholds": {"marginal_jsd": 0.1}}}, "unknown drift metric"),
    (NightlyConfig, {"report_root": "/r", "sources": [{"name": "a", "paths": ["x"]}], "schedule": {"cron": "61 * * * *"}},
     "key 'schedule.cron'"),
    (NightlyConfig, {"report_root": "/r", "sources": [{"name": "a", "paths": ["x"], "settings": {"kindd": "logits"}}]},
     "key 'sources.0.settings.kindd' (a): unknown key; did you mean 'kind'?"),
    (NightlyConfig, {"sources": [{"name": "a", "paths": ["x"]}]}, "key 'report_root'"),
]


@pytest.mark.parametrize("model, data, expected", BAD_CONFIGS)
def test_bad_configs_name_the_key_and_file(tmp_path, model, data, expected):
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(UsageError) as error:
        build_config(model, path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_yaml_cannot_run_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("kind: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        build_config(EvalConfig, path)


def test_bad_config_exits_2_before_any_work(tmp_path, capsys):
    path = write_yaml(tmp_path / "bad.yaml", {"report_root": "/r", "sources": []})
    assert main(["nightly", "--config", str(path)]) == 2
    assert "key 'sources'" in capsys.readouterr().err
    assert main(["serve", "--config", str(path)]) == 2
