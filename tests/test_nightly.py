"""The nightly evaluation: history layout and its readers (DuckDB, pandas, the README's
snippets), outcomes per (source, date) and the exit code, re-runs that keep a stored
breach, missing references, --no-prefect, dates and path templates, Prefect artifact
keys and flow-run names (read back from the Prefect server of prefect_harness)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from support import run_without_prefect
from doc_blocks import marked_blocks
from flows.cli import main
from flows.config import EvalConfig, NightlyConfig, build_config, render_path
from flows.errors import DataError, DriftBreach, UsageError
from flows.generate import generate_dump
from flows.runs.nightly import METRICS_FILE, Outcome, failure, history_table, nightly_run, run_folder
from flows.pipelines import eval_flow, nightly_flow

DAYS = ("2026-11-22", "2026-11-23")


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def make_dumps(folder: Path, name: str = "prod", slices: dict | None = None, days=DAYS) -> None:
    for seed, day in enumerate(days, start=1):
        generate_dump(folder / "dumps" / name / f"date={day}", rows=2000, classes=3, shards=2,
                      slices=slices or {"model": ["a", "b"]}, seed=seed)


def nightly_config(folder: Path, reference=None, thresholds=None, **source) -> Path:
    config = {
        "report_root": str(folder / "reports"),
        "sources": [{"name": "prod", "paths": [str(folder / "dumps" / "prod" / "date={date}")], "reference": reference, **source}],
        "defaults": {"slice_by": ["model"]},
        "drift": {"per_sample": False, "thresholds": thresholds or {}},
    }
    return write_yaml(folder / "nightly.yaml", config)


def stdout_lines(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


# --------------------------------------------------------------------------- flow, history, re-runs


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_nightly_history_rerun_and_replace(tmp_path):
    make_dumps(tmp_path)
    config_path = nightly_config(tmp_path)
    state = nightly_flow(str(config_path), *DAYS, return_state=True)
    assert state.is_completed(), state.message
    assert [(o.run_date, o.status) for o in state.result()] == [(DAYS[0], "written"), (DAYS[1], "written")]

    folder = Path(run_folder(str(tmp_path / "reports"), DAYS[1], "prod"))
    before = (folder / METRICS_FILE).read_bytes()
    assert [o.status for o in nightly_flow(str(config_path), DAYS[1])] == ["unchanged"]
    assert (folder / METRICS_FILE).read_bytes() == before

    generate_dump(tmp_path / "dumps" / "prod" / f"date={DAYS[1]}", rows=2500, classes=3, shards=3,
                  slices={"model": ["a", "b"]}, seed=9, overwrite=True)
    assert [o.status for o in nightly_flow(str(config_path), DAYS[1])] == ["written"]
    per_class = pq.read_table(Path(run_folder(str(tmp_path / "reports-tables"), DAYS[1], "prod")) / "per_class.parquet")
    assert sum(r["n"] for r in per_class.to_pylist() if r["overall"]) == 2500
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_rerun_of_a_breached_date_exits_3_again(tmp_path, capsys):
    make_dumps(tmp_path)
    config_path = nightly_config(tmp_path, reference="previous", thresholds={"marginal_js": 1e-9})
    args = ["nightly", "--config", str(config_path), "--date", DAYS[1]]
    assert main(args) == 3
    first = stdout_lines(capsys)
    assert first[0].startswith(f"prod {DAYS[1]}: written to ") and "threshold(s) breached" in first[0]
    breaches = [line for line in first if line.startswith("BREACH")]
    assert breaches and all("marginal_js" in line for line in breaches)

    assert main(args) == 3  # the stored verdict, not a green run
    second = stdout_lines(capsys)
    assert second[0] == f"prod {DAYS[1]}: unchanged, skipped; stored verdict: drift: {len(breaches)} threshold(s) breached"
    assert [line for line in second if line.startswith("BREACH")] == breaches
    assert main([*args, "--no-prefect"]) == 3 and stdout_lines(capsys) == second


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_missing_reference_and_missing_dump_do_not_stop_the_others(tmp_path, capsys):
    """21st: no dump (data error); 22nd: no previous dump (no reference); 23rd: drift."""
    make_dumps(tmp_path)
    config_path = nightly_config(tmp_path, reference="previous", thresholds={"marginal_js": 10.0})
    assert main(["nightly", "--config", str(config_path), "--from", "2026-11-21", "--to", DAYS[1]]) == 1
    lines = stdout_lines(capsys)
    dumps = tmp_path / "dumps" / "prod"
    assert lines[0] == f"prod 2026-11-21: data error: {dumps / 'date=2026-11-21'}: no such file or folder"
    assert lines[1].startswith(f"prod {DAYS[0]}: written to ")
    assert lines[1].endswith(f"; no reference ({dumps / 'date=2026-11-21'}: no such file or folder)")
    assert lines[2].startswith(f"prod {DAYS[1]}: written to ") and lines[2].endswith("; drift within thresholds")
    assert lines[3] == f"page: {tmp_path / 'reports-tables' / 'history.html'}" and len(lines) == 4
    reports = tmp_path / "reports"
    assert sorted(p.name for p in reports.iterdir()) == [f"run_date={d}" for d in DAYS]
    assert not (Path(run_folder(str(tmp_path / "reports-tables"), DAYS[0], "prod")) / "drift.parquet").exists()
    assert (Path(run_folder(str(tmp_path / "reports-tables"), DAYS[1], "prod")) / "drift.parquet").exists()
    # The reference appears later: the run is redone with drift, not skipped.
    generate_dump(dumps / "date=2026-11-21", rows=2000, classes=3, shards=2, slices={"model": ["a", "b"]}, seed=5)
    assert main(["nightly", "--config", str(config_path), "--date", DAYS[0], "--no-prefect"]) == 0
    assert stdout_lines(capsys)[0].endswith("; drift within thresholds")


def outcome(status="written", breaches=(), **fields) -> Outcome:
    return Outcome("s", "2026-11-23", status, "f", "t", breaches=list(breaches), **fields)


def test_exit_code_is_the_highest_among_outcomes():
    assert failure([outcome(), outcome("unchanged"), outcome(drift="no reference", reference_problem="x")]) is None
    data = failure([outcome(), outcome("data error", error="bad shard")])
    assert isinstance(data, DataError) and data.exit_code == 1 and "bad shard" in str(data)
    worst = failure([outcome("data error", error="bad shard"), outcome("unchanged", ["js too high"]), outcome()])
    assert isinstance(worst, DriftBreach) and worst.exit_code == 3
    assert "js too high" in str(worst) and "bad shard" in str(worst) and len(worst.outcomes) == 3


@pytest.mark.slow
def test_nightly_without_prefect_never_imports_it(tmp_path):
    """`xent nightly --no-prefect` runs the same steps without importing Prefect, and
    bad dates fail (exit 2) before anything is imported or read."""
    make_dumps(tmp_path)
    config_path = nightly_config(tmp_path)
    runs = [["--date", "2026-13-01"], ["--date", "20261123"], ["--from", DAYS[1], "--to", DAYS[0]], ["--date", DAYS[1]]]
    runs = [["nightly", "--config", str(config_path), "--no-prefect", *run] for run in runs]
    codes, prefect_modules, result = run_without_prefect(runs, tmp_path)
    assert codes == [2, 2, 2, 0] and prefect_modules == []
    errors = result.stderr.splitlines()
    assert "--date: '2026-13-01' is not a date (expected YYYY-MM-DD" in errors[0]
    assert "--date: '20261123' is not a date" in errors[1]
    assert f"--from {DAYS[1]} is after --to {DAYS[0]}" in errors[2]
    assert (tmp_path / "reports" / f"run_date={DAYS[1]}" / "source=prod" / METRICS_FILE).exists()


# --------------------------------------------------------------------------- config: templates, tables_root


def test_path_templates_format_the_date():
    assert render_path("/d/date={date}/", "2026-11-03") == "/d/date=2026-11-03/"
    assert render_path("s3://b/{date:%Y/%m/%d}/x", "2026-11-03") == "s3://b/2026/11/03/x"
    assert render_path("/d/{{raw}}/{date:%Y%m%d}", "2026-11-03") == "/d/{raw}/20261103"


BAD_TEMPLATES = ["/d/{date.__class__}", "/d/{date.year}", "/d/{date[0]}", "/d/{today}", "/d/{}", "/d/{0}",
                 "/d/{date!r}", "/d/{date:{x}}", "/d/{date:>30}", "/d/{date:%H}", "/d/{date", "/d/date}"]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_bad_path_templates_are_config_errors(tmp_path, template):
    base = {"report_root": str(tmp_path / "r"), "sources": [{"name": "a", "paths": [template]}]}
    with pytest.raises(UsageError, match=r"key 'sources\.0\.paths'.*path template") as error:
        build_config(NightlyConfig, write_yaml(tmp_path / "paths.yaml", base))
    assert template in str(error.value)
    base["sources"][0].update(paths=["/d/{date}"], reference=[template])
    with pytest.raises(UsageError, match=r"key 'sources\.0\.reference'.*path template"):
        build_config(NightlyConfig, write_yaml(tmp_path / "reference.yaml", base))


@pytest.mark.parametrize("roots, expected", [
    ({"report_root": "/h", "tables_root": "/h/tables"}, "must not contain one another"),
    ({"report_root": "/h/all", "tables_root": "/h"}, "must not contain one another"),
    ({"report_root": "s3://bucket"}, "bucket or file-system root: set tables_root"),
    ({"report_root": "/"}, "bucket or file-system root"),
    ({"report_root": "/h", "sources": [{"name": "a", "paths": ["/d"], "settings": {"slice_by": ["source"]}}]},
     "clash with the history's own columns"),
])
def test_history_roots_and_slice_names_are_checked(tmp_path, roots, expected):
    data = {"sources": [{"name": "a", "paths": ["/d/{date}"]}], **roots}
    with pytest.raises(UsageError, match=expected):
        build_config(NightlyConfig, write_yaml(tmp_path / "roots.yaml", data))


def test_tables_root_defaults_to_a_sibling_of_report_root():
    sources = [{"name": "a", "paths": ["/d/{date}"]}]
    assert NightlyConfig(report_root="s3://b/h/", sources=sources).tables_base == "s3://b/h-tables"
    assert NightlyConfig(report_root="/h", tables_root="/t", sources=sources).tables_base == "/t"


# --------------------------------------------------------------------------- reading the history


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Two dates of two sources sliced by different columns (prod: model; canary: model,
    region), the second date with drift; written with --no-prefect."""
    folder = tmp_path_factory.mktemp("history")
    make_dumps(folder, "prod")
    make_dumps(folder, "canary", slices={"model": ["a"], "region": ["eu", "us"]})
    config = {
        "report_root": str(folder / "reports"),
        "sources": [{"name": name, "paths": [str(folder / "dumps" / name / "date={date}")], "reference": "previous",
                     "settings": {"slice_by": slices}}
                    for name, slices in (("prod", ["model"]), ("canary", ["model", "region"]))],
        "drift": {"per_sample": False, "thresholds": {"marginal_js": 1e-9}},
    }
    config = build_config(NightlyConfig, write_yaml(folder / "nightly.yaml", config))
    outcomes = nightly_run(config, list(DAYS))[0]
    assert [(o.status, o.drift) for o in outcomes] == [("written", "no reference")] * 2 + [("written", "checked")] * 2
    assert all(o.breaches for o in outcomes[2:])
    return folder / "reports"


def metrics_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


@pytest.mark.slow
def test_history_reads_with_duckdb(history):
    files = metrics_files(history)
    assert [f.name for f in files] == [METRICS_FILE] * 4  # the wide tables live elsewhere
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{history}/**/*.parquet', hive_partitioning = true, "
                          "union_by_name = true, filename = true)")
    types = dict(zip(relation.columns, map(str, relation.types)))
    assert {k: types[k] for k in ("run_date", "source", "model", "region", "overall", "class", "n", "value", "breached")} == {
        "run_date": "DATE", "source": "VARCHAR", "model": "VARCHAR", "region": "VARCHAR", "overall": "BOOLEAN",
        "class": "INTEGER", "n": "BIGINT", "value": "DOUBLE", "breached": "BOOLEAN"}
    assert "slice" not in types
    rows = relation.fetchall()
    assert len(rows) == sum(pq.read_metadata(f).num_rows for f in files)
    assert {r[relation.columns.index("filename")].rsplit("/", 1)[-1] for r in rows} == {METRICS_FILE}
    breached = duckdb.sql(f"SELECT DISTINCT source, run_date::VARCHAR, region FROM read_parquet('{history}/**/*.parquet', "
                          "hive_partitioning = true, union_by_name = true) WHERE breached AND NOT overall").fetchall()
    assert {(s, d) for s, d, _ in breached} == {("prod", DAYS[1]), ("canary", DAYS[1])}
    assert {r for s, _, r in breached if s == "canary"} <= {"eu", "us"} and {r for s, _, r in breached if s == "prod"} == {None}


def test_history_reads_with_pandas(history):
    frame = history_table(str(history)).to_pandas(types_mapper=pd.ArrowDtype)
    dtypes = {k: str(v) for k, v in frame.dtypes.items()}
    assert {k: dtypes[k] for k in ("run_date", "source", "model", "region", "overall", "class", "n", "breached")} == {
        "run_date": "date32[day][pyarrow]", "source": "string[pyarrow]", "model": "string[pyarrow]",
        "region": "string[pyarrow]", "overall": "bool[pyarrow]", "class": "int32[pyarrow]", "n": "int64[pyarrow]",
        "breached": "bool[pyarrow]"}
    assert len(frame) == sum(pq.read_metadata(f).num_rows for f in metrics_files(history))
    assert set(frame["scope"]) == {"class", "slice", "drift"}
    canary = frame[(frame["source"] == "canary") & ~frame["overall"]]
    assert canary["region"].notna().all() and set(canary["model"]) == {"a"}

    plain = pd.read_parquet(history, dtype_backend="numpy_nullable")
    assert {k: str(plain.dtypes[k]) for k in ("class", "n", "breached", "overall", "value")} == {
        "class": "Int32", "n": "Int64", "breached": "boolean", "overall": "boolean", "value": "Float64"}
    assert len(plain) == len(frame)


def readme_blocks(language: str) -> list[str]:
    """The docs' code blocks in `language` that are marked to run in the tests."""
    return [body for _, body in marked_blocks("REPORT_ROOT", language)]


def test_readme_snippets_run(history, capsys):
    python, sql = readme_blocks("python"), readme_blocks("sql")
    assert len(python) == 1 and len(sql) == 1
    exec(compile(python[0].replace("REPORT_ROOT", str(history)), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "prod" in printed and "canary" in printed and DAYS[1] in printed
    rows = duckdb.sql(sql[0].replace("REPORT_ROOT", str(history))).fetchall()
    assert rows and {(source, str(day)) for day, source, *_ in rows} == {("prod", DAYS[1]), ("canary", DAYS[1])}


# --------------------------------------------------------------------------- Prefect names and keys


def artifacts_and_name(state) -> tuple[list[str], str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        return sorted(a.key for a in artifacts), client.read_flow_run(run_id).name


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_two_dumps_with_the_same_shard_names_publish_under_different_keys(tmp_path):
    keys = []
    for where in ("x", "y"):
        dump = generate_dump(tmp_path / where / "date=2026-11-23", rows=500, classes=3, shards=2, seed=len(keys))
        state = eval_flow(EvalConfig(sources=[dump.root]), str(tmp_path / where / "out"), return_state=True)
        assert state.is_completed(), state.message
        (key,), name = artifacts_and_name(state)
        assert name == "eval-date=2026-11-23"
        assert re.fullmatch(r"xent-eval-date-2026-11-23-[0-9a-f]{8}", key), key
        keys.append(key)
    assert keys[0] != keys[1]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_nightly_artifacts_and_run_name_name_source_and_date(tmp_path):
    make_dumps(tmp_path)
    state = nightly_flow(str(nightly_config(tmp_path)), *DAYS, return_state=True)
    assert state.is_completed(), state.message
    keys, name = artifacts_and_name(state)
    assert name == f"nightly-{DAYS[0]}-to-{DAYS[1]}"
    assert keys == sorted([f"xent-nightly-prod-{DAYS[0]}", f"xent-nightly-prod-{DAYS[1]}",
                           f"xent-nightly-summary-{DAYS[0]}-to-{DAYS[1]}"])
    keys, name = artifacts_and_name(nightly_flow(str(nightly_config(tmp_path)), DAYS[1], return_state=True))
    assert (keys, name) == ([f"xent-nightly-summary-{DAYS[1]}"], f"nightly-{DAYS[1]}")  # unchanged: no table artifact
