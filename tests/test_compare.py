"""xent compare on real Parquet dumps and a real LocalCluster: paired differences
against numpy written the obvious way, ids on one side only, resharding, the same
model on both sides, gates (point and interval, exit code 3 through the CLI) and the
xent-compare flow run."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose
from scipy import stats as sps
from scipy.special import log_softmax

from flows.api import COMPARE
from flows.cli import main
from flows.config import CompareConfig, Gate
from flows.errors import DataError, GateBreach
from flows.generate import generate_dump
from flows.monitor.gates import breached_gates
from flows.runs.two_sided import two_sided_steps
from oracle import load_arrays
from xent_kernels.hashing import JACKKNIFE_SEED, splitmix64

CLASSES = 4
K = 20


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    """A baseline of ids 0..2999; the candidate (a drifted model, same labels) scores
    ids 100..3099 in two shardings; a reshuffled copy of the baseline."""
    root = tmp_path_factory.mktemp("compare")
    common = dict(classes=CLASSES, seed=11, slices={"model": ["a", "b"]})
    baseline = generate_dump(root / "baseline", rows=3000, shards=2, **common)
    candidate = generate_dump(root / "candidate", rows=3100, shards=3, drift=0.4, shuffle=True, **common)
    resharded = generate_dump(root / "resharded", rows=3100, shards=7, drift=0.4, shuffle=True, row_group_rows=150,
                              **common)
    same = generate_dump(root / "same", rows=3000, shards=5, shuffle=True, **common)
    # The candidate lacks the first 100 ids: drop them from its files.
    for dump in (candidate, resharded):
        for path in dump.files:
            table = pq.read_table(path)
            table = table.filter(np.asarray(table.column("id")) >= 100)
            pq.write_table(table, path, write_page_checksum=True)
    return {"baseline": baseline, "candidate": candidate, "resharded": resharded, "same": same, "root": root}


def config(dumps, candidate="candidate", **options) -> CompareConfig:
    return CompareConfig(sources=[dumps[candidate].root], baseline=[dumps["baseline"].root], slice_by=["model"], **options)


def rows_of(result) -> list[dict]:
    return result.tables["compare"].to_pylist()


def test_paired_differences_match_numpy_and_one_sided_ids_are_counted(dumps, tmp_path):
    _, result = two_sided_steps(COMPARE, config(dumps, compare={"bucket_rows": 700}), str(tmp_path / "out"))
    rows = rows_of(result)
    top = next(r for r in rows if r["overall"] and r["class"] is None)
    assert (top["n_matched"], top["n_only_baseline"], top["n_only_candidate"]) == (2900, 100, 100)
    base, cand = load_arrays(dumps["baseline"]), load_arrays(dumps["candidate"])
    ids, in_base, in_cand = np.intersect1d(base["id"], cand["id"], return_indices=True)
    labels = cand["label"][in_cand]
    assert (base["label"][in_base] == labels).all()
    ce = {name: -log_softmax(arrays["pred"][index], axis=1)[np.arange(len(ids)), labels]
          for name, arrays, index in (("b", base, in_base), ("c", cand, in_cand))}
    correct = {name: np.argmax(arrays["pred"][index], axis=1) == labels
               for name, arrays, index in (("b", base, in_base), ("c", cand, in_cand))}
    models = cand["model"][in_cand]
    # The join key is (id, model): each column's value (a string's CRC-32) mixed into the hash in turn.
    crc = np.array([zlib.crc32(m.encode()) for m in models], dtype=np.uint64)
    seed = np.uint64(JACKKNIFE_SEED)
    buckets = (splitmix64(splitmix64(seed ^ ids.astype(np.uint64)) ^ crc) % np.uint64(K)).astype(np.int64)
    t = sps.t.ppf(0.975, K - 1)
    for row in rows:
        keep = (labels >= 0) & (True if row["overall"] else models == row["model"])
        if row["class"] is not None:
            keep &= labels == row["class"]
        assert row["n"] == keep.sum()
        assert (row["wins"], row["ties"], row["losses"]) == (
            (ce["c"][keep] < ce["b"][keep]).sum(), (ce["c"][keep] == ce["b"][keep]).sum(), (ce["c"][keep] > ce["b"][keep]).sum())
        for metric, values in (("ce_mean", ce), ("accuracy", correct)):
            diff = values["c"][keep].mean() - values["b"][keep].mean()
            theta = np.array([values["c"][keep & (buckets != k)].mean() - values["b"][keep & (buckets != k)].mean()
                              for k in range(K)])
            half = t * np.sqrt((K - 1) / K * ((theta - theta.mean()) ** 2).sum())
            assert_allclose(row[f"{metric}_diff"], diff, rtol=1e-9, atol=1e-12)
            assert_allclose([row[f"{metric}_diff_lo"], row[f"{metric}_diff_hi"]], [diff - half, diff + half], rtol=1e-8)
        lo, hi = row["ce_mean_diff_lo"], row["ce_mean_diff_hi"]
        assert row["verdict"] == ("worse" if lo > 0 else "better" if hi < 0 else "no_significant_difference")
    assert {r["verdict"] for r in rows} >= {"better", "worse"}  # the drifted model gains on some classes, loses on others


@pytest.mark.slow
def test_resharded_candidate_gives_the_same_table(dumps, tmp_path):
    _, one = two_sided_steps(COMPARE, config(dumps), str(tmp_path / "one"))
    _, other = two_sided_steps(COMPARE, config(dumps, "resharded", compare={"bucket_rows": 400}), str(tmp_path / "other"))
    left, right = one.tables["compare"], other.tables["compare"]
    assert left.schema == right.schema and left.num_rows == right.num_rows
    for name in left.column_names:
        a, b = left.column(name), right.column(name)
        if pa.types.is_floating(a.type):  # nulls (a metric absent at this level) as NaN
            assert_allclose(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), rtol=1e-12, atol=1e-15,
                            err_msg=name)
        else:
            assert a.to_pylist() == b.to_pylist(), name


def test_the_same_model_on_both_sides_differs_by_exactly_zero(dumps, tmp_path):
    _, result = two_sided_steps(COMPARE, config(dumps, "same"), str(tmp_path / "out"))
    for row in rows_of(result):
        for name, value in row.items():
            if name.endswith(("_diff", "_diff_lo", "_diff_hi")) and not name.startswith(("top5", "auc")):
                assert value == 0.0 or value is None, (name, row)  # None: a metric absent at this level (ece per class)
        assert row["verdict"] == "no_significant_difference"
        assert row["ties"] == row["n"] and row["wins"] == row["losses"] == 0


@pytest.mark.slow
def test_gates_point_and_interval_and_exit_code_3(dumps, tmp_path, capsys):
    _, result = two_sided_steps(COMPARE, config(dumps), str(tmp_path / "plain"))
    rows = rows_of(result)
    # A limit between the largest lower bound and the largest difference: the point
    # value of some row lies past it, no whole interval does.
    max_lo = max(r["ce_mean_diff_lo"] for r in rows)
    max_diff = max(r["ce_mean_diff"] for r in rows)
    assert 0 < max_lo < max_diff
    limit = (max_lo + max_diff) / 2
    assert breached_gates([Gate(metric="ce_mean", max_increase=limit)], rows, ("model",)) == []
    point = breached_gates([Gate(metric="ce_mean", max_increase=limit, mode="point")], rows, ("model",))
    assert len(point) == sum(r["ce_mean_diff"] > limit for r in rows) >= 1
    worst = max(rows, key=lambda r: r["ce_mean_diff"])
    assert f"{worst['ce_mean_diff']:+.6g}" in " ".join(point)
    # Rows flagged small are skipped; NaN never breaches; max_decrease looks the other way.
    flagged = [{**r, "small_slice": True} for r in rows]
    assert breached_gates([Gate(metric="ce_mean", max_increase=0, mode="point")], flagged, ("model",)) == []
    assert breached_gates([Gate(metric="ece", max_increase=0, mode="point")],
                          [{"overall": True, "class": None, "ece_diff": float("nan")}], ()) == []
    gain = min(rows, key=lambda r: r["accuracy_diff_hi"])
    assert gain["accuracy_diff_hi"] < 0
    assert breached_gates([Gate(metric="accuracy", max_decrease=-gain["accuracy_diff_hi"] / 2)], [gain], ("model",))

    gate_file = tmp_path / "gate.yaml"
    base = ["compare", "--baseline", dumps["baseline"].root, "--candidate", dumps["candidate"].root, "--slice-by",
            "model", "--no-prefect", "--config", str(gate_file)]
    gate_file.write_text(f"gate: {{metric: ce_mean, max_increase: {limit!r}}}\n")
    assert main([*base, "--out", str(tmp_path / "pass")]) == 0, capsys.readouterr().err
    assert "gates: passed (1 gate(s))" in capsys.readouterr().out
    gate_file.write_text(f"gate: [{{metric: ce_mean, max_increase: {limit!r}, mode: point}}]\n")
    assert main([*base, "--out", str(tmp_path / "fail")]) == 3
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xent: error: gate breached"), err
    where = "overall" if worst["overall"] else f"model={worst['model']}"
    assert f"{where}, class {worst['class']}" in err and "[+" in err and "(point)" in err, err
    assert "GATE BREACH" in captured.out
    assert (tmp_path / "fail" / "compare.parquet").exists()  # the report is written all the same


def test_rows_must_agree_on_their_labels(dumps, tmp_path):
    other = generate_dump(dumps["root"] / "other-labels", rows=300, classes=CLASSES, shards=1, seed=99,
                          slices={"model": ["a", "b"]})
    with pytest.raises(DataError, match=r"has label .* in the baseline dump but .* in the candidate dump"):
        two_sided_steps(COMPARE, CompareConfig(sources=[other.root], baseline=[dumps["baseline"].root]), str(tmp_path / "out"))


def test_bad_gates_are_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    for text, expected in (("gate: {metric: ce_std, max_increase: 0.1}", "unknown gate metric 'ce_std'"),
                           ("gate: {metric: ce_mean}", "exactly one of max_increase or max_decrease"),
                           ("gate: {metric: ce_mean, max_increase: 0.1, mode: both}", "gate.0.mode")):
        path.write_text(text)
        code = main(["compare", "--baseline", "x", "--candidate", "y", "--out", str(tmp_path / "o"), "--config", str(path)])
        assert code == 2
        assert expected in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_compare_flow_fails_on_a_breach_and_completes_without(dumps, tmp_path, capsys):
    from flows.pipelines import compare_flow

    state = compare_flow(config(dumps), str(tmp_path / "ok"), return_state=True)
    assert state.is_completed(), state.message
    assert set(state.result()["paths"]) == {"compare"}
    gated = config(dumps, gate={"metric": "ce_mean", "max_increase": 0.0, "mode": "point"})
    state = compare_flow(gated, str(tmp_path / "breach"), return_state=True)
    assert state.is_failed() and "gate breached" in state.message and "ce_mean max_increase 0 (point)" in state.message
    with pytest.raises(GateBreach):
        state.result()
    assert pq.read_table(tmp_path / "breach" / "compare.parquet").num_rows == len(rows_of_table(tmp_path / "ok"))
    # The CLI through the flow: exit code 3, the table printed all the same.
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text("gate: {metric: ce_mean, max_increase: 0.0, mode: point}\n")
    code = main(["compare", "--baseline", dumps["baseline"].root, "--candidate", dumps["candidate"].root, "--slice-by",
                 "model", "--out", str(tmp_path / "cli"), "--config", str(gate_file)])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "candidate - baseline" in captured.out and "GATE BREACH" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("xent: error:")]
    assert len(errors) == 1 and "gate breached" in errors[0], captured.err  # the run log's warnings aside


def rows_of_table(folder: Path) -> list[dict]:
    return pq.read_table(folder / "compare.parquet").to_pylist()
