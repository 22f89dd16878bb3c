"""``xent compare`` on token dumps (#19): two models' Parquet dumps of the same tokens,
joined on document key and position, against float64 numpy on the dense distributions
they were written from; sharding, layouts, one-sided tokens, bad keys, gates."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from numpy.testing import assert_allclose
from scipy.special import rel_entr

import flows
from flows.errors import DataError, UsageError
from support import token_side_table, two_token_models, write_token_shards


@pytest.fixture(scope="module")
def models():
    return two_token_models(11, n=3000, vocab=25, k=4, docs=80)


def assert_same_table(a: pa.Table, b: pa.Table) -> None:
    """The same columns and rows, floats to 1e-12."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        if pa.types.is_floating(a.schema.field(name).type):
            assert_allclose(b[name].to_numpy(zero_copy_only=False), a[name].to_numpy(zero_copy_only=False),
                            rtol=1e-12, atol=1e-15, err_msg=name)
        else:
            assert a[name].to_pylist() == b[name].to_pylist(), name


def overall(result) -> dict:
    return result.report.overall_row


@pytest.mark.slow
def test_against_numpy_on_the_dense_distributions(models, tmp_path):
    m = models
    base = write_token_shards(token_side_table(m, "teacher"), tmp_path / "base", 3, 0)
    cand = write_token_shards(token_side_table(m, "student"), tmp_path / "cand", 4, 1)
    result = flows.compare(base, cand, kind="tokens", slice_by=["source"])
    row = overall(result)
    n = len(m["target"])
    ce_t = -m["teacher"][np.arange(n), m["target"]]
    ce_s = -m["student"][np.arange(n), m["target"]]
    assert row["n_matched"] == n and row["n_only_baseline"] == 0 and row["tokens"] == n
    assert_allclose(row["ce_mean_diff"], ce_s.mean() - ce_t.mean(), rtol=1e-12)
    assert_allclose(row["perplexity_candidate"], np.exp(ce_s.mean()), rtol=1e-12)
    assert_allclose(row["bits_per_byte_diff"], (ce_s.sum() - ce_t.sum()) / np.log(2) / m["bytes"].sum(), rtol=1e-12)
    top1 = {side: (np.argmax(m[side], axis=1) == m["target"]).mean() for side in ("teacher", "student")}
    assert_allclose(row["top1_accuracy_diff"], top1["student"] - top1["teacher"], rtol=1e-12)
    # the bound: below the true KL of the dense distributions, and what the top-k lists allow
    true_kl = rel_entr(np.exp(m["teacher"]), np.exp(m["student"])).sum(axis=1).mean()
    assert 0 < row["kl_lower_bound_mean"] < true_kl
    assert row["kl_lower_bound_mean_lo"] < row["kl_lower_bound_mean"] < row["kl_lower_bound_mean_hi"]
    web = result.table[(result.table["source"] == "web") & (result.table["scope"] == "all")].iloc[0]
    in_web = m["slice"] == 0
    assert_allclose(web["ce_mean_diff"], ce_s[in_web].mean() - ce_t[in_web].mean(), rtol=1e-12)
    tokens = result.tables["compare_tokens"].to_pandas()
    assert tokens["tokens"].sum() == n and (np.diff(tokens["ce_sum_diff"]) <= 0).all()
    first = tokens.iloc[0]
    is_first = m["target"] == first["target"]
    assert_allclose(first["ce_mean_diff"], (ce_s - ce_t)[is_first].mean(), rtol=1e-10)


@pytest.mark.slow
def test_same_report_for_any_sharding_and_either_side_in_memory(models, tmp_path):
    m = models
    base_table, cand_table = token_side_table(m, "teacher"), token_side_table(m, "student")
    one = flows.compare(write_token_shards(base_table, tmp_path / "b1", 1, 0), write_token_shards(cand_table, tmp_path / "c1", 1, 0),
                        kind="tokens", slice_by=["source"])
    many = flows.compare(write_token_shards(base_table, tmp_path / "b7", 7, 3), cand_table.to_pandas(),
                         kind="tokens", slice_by=["source"])
    assert_same_table(one.tables["compare"], many.tables["compare"])


@pytest.mark.slow
def test_tokens_on_one_side_are_counted_not_compared(models, tmp_path):
    m = models
    n = len(m["target"])
    base = write_token_shards(token_side_table(m, "teacher", np.arange(0, n - 100)), tmp_path / "base", 2, 0)
    cand = write_token_shards(token_side_table(m, "student", np.arange(50, n)), tmp_path / "cand", 2, 0)
    row = overall(flows.compare(base, cand, kind="tokens"))
    assert (row["n_matched"], row["n_only_baseline"], row["n_only_candidate"]) == (n - 150, 50, 100)
    both = np.arange(50, n - 100)
    ce_diff = (-m["student"][both, m["target"][both]] + m["teacher"][both, m["target"][both]]).mean()
    assert_allclose(row["ce_mean_diff"], ce_diff, rtol=1e-12)


def test_a_different_target_at_the_same_key_names_the_key(models, tmp_path):
    m = models
    table = token_side_table(m, "student")
    targets = table["target"].to_numpy().copy()
    targets[7] = (targets[7] + 1) % 25
    moved = table.set_column(table.schema.get_field_index("target"), "target", pa.array(targets, pa.int32()))
    base = write_token_shards(token_side_table(m, "teacher"), tmp_path / "base", 1, 0)
    cand = write_token_shards(moved, tmp_path / "cand", 1, 0)
    with pytest.raises(DataError) as error:
        flows.compare(base, cand, kind="tokens")
    doc, position = table["doc_id"][7].as_py(), table["position"][7].as_py()
    assert f"doc_id={doc}, position={position}" in str(error.value)
    assert "baseline dump" in str(error.value) and "the same on both sides" in str(error.value)


@pytest.mark.slow
def test_gate_on_a_token_metric_fails_the_command_with_exit_3(models, tmp_path):
    m = models
    base = write_token_shards(token_side_table(m, "teacher"), tmp_path / "base", 2, 0)
    cand = write_token_shards(token_side_table(m, "student"), tmp_path / "cand", 2, 0)
    config = tmp_path / "gate.yaml"
    config.write_text("kind: tokens\ngate: {metric: ce_mean, max_increase: 0.001}\n")
    run = subprocess.run([sys.executable, "-m", "flows.cli", "compare", "--config", str(config), "--baseline", base,
                          "--candidate", cand, "--out", str(tmp_path / "out"), "--no-prefect"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr
    assert "GATE BREACH" in run.stdout and "all classes" not in run.stdout
    assert "LOWER BOUND" in run.stdout
    assert (tmp_path / "out" / "compare.parquet").exists() and (tmp_path / "out" / "compare_tokens.parquet").exists()


def test_a_classifier_gate_metric_is_refused_for_tokens():
    with pytest.raises(UsageError, match="not a token metric"):
        flows.compare("a", "b", kind="tokens", gate={"metric": "accuracy", "max_decrease": 0.01})


@pytest.mark.slow
def test_files_in_the_same_order_are_paired_without_a_hash_join_and_agree_with_it(models, tmp_path):
    m = models
    base_table, cand_table = token_side_table(m, "teacher"), token_side_table(m, "student")
    base = write_token_shards(base_table, tmp_path / "base", 3, 5)
    in_order = flows.compare(base, write_token_shards(cand_table, tmp_path / "same", 3, 5), kind="tokens",
                             slice_by=["source"])
    # the same shards' sizes, other rows in each: paired in order until the first key that differs, then hashed
    reordered = flows.compare(base, write_token_shards(cand_table, tmp_path / "other", 3, 6), kind="tokens",
                              slice_by=["source"])
    hashed = flows.compare(base, write_token_shards(cand_table, tmp_path / "four", 4, 5), kind="tokens",
                           slice_by=["source"])
    joins = [json.loads(r.tables["compare"].schema.metadata[b"xent.compare"])["join"] for r in (in_order, reordered, hashed)]
    assert joins == ["in order", "hash", "hash"]
    for other in (reordered, hashed):
        a, b = in_order.tables["compare"], other.tables["compare"]
        assert_same_table(a, b)


def test_a_token_reports_config_keeps_its_tokens_section_and_still_hides_credentials():
    # The tokens section was shown as "***" ("token" is a credential word), so a report's footer lost its
    # vocabulary, counts and position edges; a storage option named token is a credential and stays hidden.
    from flows.config import CompareConfig
    from flows.report.tables import config_json

    config = CompareConfig(kind="tokens", tokens={"topk": 5, "vocab_size": 100},
                           storage_options={"token": "s3cr3t", "client_kwargs": {"aws_session_token": "abc"}})
    shown = json.loads(config_json(config))
    assert shown["tokens"]["topk"] == 5 and shown["tokens"]["vocab_size"] == 100
    assert shown["storage_options"]["token"] == "***"
    assert shown["storage_options"]["client_kwargs"]["aws_session_token"] == "***"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_compare_flow_runs_on_token_dumps_and_its_artifact_names_the_bound(models, tmp_path):
    # Through Prefect the token comparison failed after writing: its artifact read a classifier table's class column.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.config import CompareConfig
    from flows.pipelines import compare_flow

    m = models
    base = write_token_shards(token_side_table(m, "teacher"), tmp_path / "base", 2, 0)
    cand = write_token_shards(token_side_table(m, "student"), tmp_path / "cand", 2, 0)
    config = CompareConfig(sources=[cand], baseline=[base], kind="tokens", slice_by=["source"],
                           gate={"metric": "ce_mean", "max_increase": 0.001})
    state = compare_flow(config, str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and "gate breached" in state.message, state.message
    assert "all classes" not in state.message  # a token gate row is a slice, not a class
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    (artifact,) = [a for a in artifacts if a.key]
    assert artifact.key.startswith("xent-compare-cand-"), artifact.key
    text = str(artifact.data)
    assert "KL lower bound" in text and "ce_mean diff" in text and "BREACHED" in text
