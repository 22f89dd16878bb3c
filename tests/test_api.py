"""The Python API (`from flows import evaluate, drift`): every kind of source gives the
report `xent eval --no-prefect` writes for the same rows, on a real LocalCluster and
real Parquet files; nothing is written unless asked; errors name the source, column
and row; progress is drawn when asked."""

from __future__ import annotations

import io
import json
import os
import sys
import subprocess
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import assert_same_report
from doc_blocks import marked_blocks
from flows import drift, evaluate
from flows.cli import main
from flows.config import EvalConfig
from flows.engine import Progress
from flows.errors import DataError, DriftBreach, UsageError
from flows.generate import generate_dump

# Metadata that legitimately differs between two runs over the same rows: when, of what
# (files or a frame), and the sources as given.
VARYING_METADATA = {b"xent.created_at", b"xent.fingerprint", b"xent.config", b"xent.integrity"}

CASES = {
    # string labels (class names in the schema metadata, or --classes), nulls, slices, weights
    "sliced-weighted": (dict(rows=4000, classes=5, shards=4, slices={"model": ["a", "b"]}, weights=True,
                             string_labels=True, null_labels=0.05, seed=3),
                        dict(slice_by=["model"], weight_col="weight")),
    # one float column per class, probabilities
    "wide-probs": (dict(rows=3000, classes=4, shards=3, layout="wide", kind="probs", seed=4), dict(kind="probs")),
}
SOURCES = ["files", "folder", "glob", "arrow", "pandas", "dask"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Per case: the dump, the API options, and the tables `xent eval --no-prefect` wrote."""
    built = {}
    for name, (dump_settings, options) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        dump = generate_dump(root / "dump", **dump_settings)
        if dump.class_names:  # in-memory frames lose the schema metadata: name the classes
            options = {**options, "classes": list(dump.class_names)}
        flags = [f"--{key.replace('_', '-')}={','.join(v) if isinstance(v, list) else v}" for key, v in options.items()]
        assert main(["eval", dump.root, "--out", str(root / "cli"), "--no-prefect", *flags]) == 0
        built[name] = dump, options, read_report(root / "cli")
    return built


def read_report(folder: Path) -> dict[str, pa.Table]:
    return {path.stem: pq.read_table(path) for path in sorted(Path(folder).glob("*.parquet"))}


def source_of(kind: str, dump, client):
    files = sorted(dump.files)
    if kind == "files":
        return files
    if kind == "folder":
        return Path(dump.root)
    if kind == "glob":
        return f"{dump.root}/*.parquet"
    table = pa.concat_tables([pq.read_table(f) for f in files])
    if kind == "arrow":
        return table
    if kind == "pandas":
        return table.to_pandas()
    # Arrow dtypes: Dask would turn an object column of arrays into strings.
    return dd.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype), npartitions=3)


def assert_same_as_cli(report, cli: dict[str, pa.Table]) -> None:
    tables = report.to_arrow()
    assert_same_report(tables, cli, rtol=1e-12)
    for name, table in tables.items():
        assert table.schema.equals(cli[name].schema, check_metadata=False), name
        ours, theirs = table.schema.metadata, cli[name].schema.metadata
        assert set(ours) == set(theirs), name
        assert {k: v for k, v in ours.items() if k not in VARYING_METADATA} == \
               {k: v for k, v in theirs.items() if k not in VARYING_METADATA}, name
        config, cli_config = json.loads(ours[b"xent.config"]), json.loads(theirs[b"xent.config"])
        same = set(config) - {"sources", "task_rows"}  # where the rows came from, and how they were cut
        assert {k: config[k] for k in same} == {k: cli_config[k] for k in same}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_gives_the_cli_report(cases, client, kind, case):
    dump, options, cli = cases[case]
    source = source_of(kind, dump, client)
    # In memory: pieces of 700 rows, so several pieces per table and per partition.
    extra = {"task_rows": 700} if kind in ("arrow", "pandas") else {}
    # A Dask DataFrame runs on the current client; the others get it passed.
    report = evaluate(source, **options, **extra) if kind == "dask" else evaluate(source, client=client, **options, **extra)
    assert_same_as_cli(report, cli)
    assert report.units == "nats" and report.metadata["units"] == "nats"
    written = report.tables["summary"].schema.metadata
    assert set(report.metadata) == {k.decode().removeprefix("xent.") for k in written if k.startswith(b"xent.")}
    assert report.metadata["version"] == written[b"xent.version"].decode()  # not JSON: kept as text
    overall = report.summary[report.summary["overall"]]
    assert overall["n"].item() == cli["summary"].filter(cli["summary"].column("overall"))["n"][0].as_py()
    assert list(report.per_class.columns) == cli["per_class"].column_names
    fingerprint = report.metadata["fingerprint"]
    if kind in ("files", "folder", "glob"):
        assert fingerprint["n_files"] == len(dump.files)
    else:
        assert fingerprint["n_files"] == 0 and fingerprint["rows"] == dump.rows
        assert report.evaluation.inputs == [] and report.evaluation.n_files == 0
    assert "rows" in repr(report) and "ce_mean" in repr(report)


def test_class_names_from_pandas_attrs(cases, client):
    dump, options, cli = cases["sliced-weighted"]
    frame = source_of("pandas", dump, client)
    frame.attrs["xent.classes"] = list(dump.class_names)
    report = evaluate(frame, client=client, slice_by=["model"], weight_col="weight")
    assert report.per_class["class_name"].tolist() == cli["per_class"].column("class_name").to_pylist()


@pytest.mark.slow
def test_the_prefect_flow_writes_the_same_tables(cases, prefect_harness, tmp_path):
    from flows.pipelines import eval_flow

    dump, options, cli = cases["sliced-weighted"]
    paths = eval_flow(EvalConfig(sources=[dump.root], **options), str(tmp_path / "flow"))
    assert_same_report({name: pq.read_table(path) for name, path in paths.items()}, cli, rtol=1e-12)


def test_write_reads_back_as_to_arrow_and_evaluate_writes_nothing(cases, client, tmp_path, monkeypatch):
    dump, options, _ = cases["wide-probs"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(p for p in tmp_path.rglob("*")), sorted(Path(dump.root).rglob("*"))
    report = evaluate(dump.root, client=client, **options)
    evaluate(source_of("pandas", dump, client), client=client, **options)
    assert (sorted(p for p in tmp_path.rglob("*")), sorted(Path(dump.root).rglob("*"))) == before
    paths = report.write(tmp_path / "out")
    assert sorted(paths) == ["confusion", "per_class", "summary"] and (tmp_path / "out" / "_manifest.json").exists()
    back = {name: pq.read_table(path) for name, path in paths.items()}
    assert_same_report(back, report.to_arrow(), rtol=0)  # NaN where there is no top-5 (4 classes) equals NaN
    for name, table in report.to_arrow().items():
        assert back[name].schema.metadata == table.schema.metadata, name


def test_bad_options_are_usage_errors_naming_them(cases, client):
    dump, _, _ = cases["wide-probs"]
    with pytest.raises(UsageError, match=r"evaluate\(\): key 'colour'"):
        evaluate(dump.root, client=client, colour="blue")
    with pytest.raises(UsageError, match=r"evaluate\(\): key 'units'"):
        evaluate(dump.root, client=client, units="furlongs")
    with pytest.raises(UsageError, match="'sources' is not an option"):
        evaluate(dump.root, client=client, sources=[dump.root])
    with pytest.raises(UsageError, match="cannot evaluate a builtins.int"):
        evaluate(3, client=client)
    with pytest.raises(UsageError, match=r"drift\(\): current is a builtins.int"):
        drift(dump.root, 3, client=client)


def test_a_bad_row_names_the_source_column_and_row(cases, client):
    dump, options, _ = cases["wide-probs"]
    frame = source_of("pandas", dump, client)
    frame.loc[1234, "label"] = 9  # 4 classes
    with pytest.raises(DataError, match=r"^<pandas\.DataFrame>: column 'label', row 1234: label 9 is out of range"):
        evaluate(frame, client=client, task_rows=500, **options)
    with pytest.raises(DataError, match=r"^<pyarrow\.Table>: column 'label', row 1234: label 9"):
        evaluate(pa.Table.from_pandas(frame, preserve_index=False), client=client, **options)
    # 3 partitions of 1000 rows: row 1234 is row 234 of partition 1
    partitions = dd.from_pandas(frame, npartitions=3)
    assert partitions.divisions == (0, 1000, 2000, 2999)
    with pytest.raises(DataError, match=r"^<dask partition 1>: column 'label', row 234: label 9"):
        evaluate(partitions, client=client, **options)


def test_progress_bar_counts_rows(cases, client):
    from rich.console import Console

    dump, options, _ = cases["wide-probs"]
    screen = io.StringIO()
    evaluate(source_of("arrow", dump, client), client=client, task_rows=500,
             progress=Progress(True, Console(file=screen, force_terminal=True, color_system=None, width=160)), **options)
    text = screen.getvalue()
    assert "evaluating" in text and "3000/3000 rows" in text and "rows/s" in text, text
    quiet = io.StringIO()
    evaluate(dump.root, client=client, progress=Progress(False, Console(file=quiet, force_terminal=True)), **options)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_the_cli_draws_progress_only_on_a_terminal(cases, tmp_path):
    dump, _, _ = cases["wide-probs"]
    args = [sys.executable, "-m", "flows.cli", "eval", dump.root, "--kind", "probs", "--no-prefect"]
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": "", "COLUMNS": "160"}
    piped = subprocess.run([*args, "--out", str(tmp_path / "piped")], capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0 and "rows/s" not in piped.stderr, piped.stderr
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen([*args, "--out", str(tmp_path / "tty")], stdout=subprocess.DEVNULL, stderr=follower,
                          env=env) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(120) == 0
    os.close(leader)
    assert b"rows" in b"".join(chunks) and b"evaluating" in b"".join(chunks), b"".join(chunks)[-2000:]


# --------------------------------------------------------------------------- drift


@pytest.mark.slow
def test_drift_matches_the_cli(tmp_path, client, capsys):
    common = dict(classes=4, slices={"model": ["a", "b"]}, seed=9)
    reference = generate_dump(tmp_path / "ref", rows=2000, shards=2, **common)
    current = generate_dump(tmp_path / "cur", rows=1800, shards=3, shuffle=True, drift=0.8, **common)
    settings = {"thresholds": {"kl_per_sample": 0.01}, "bucket_rows": 700}
    (tmp_path / "drift.yaml").write_text(json.dumps({"drift": settings}))
    code = main(["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model",
                 "--config", str(tmp_path / "drift.yaml"), "--out", str(tmp_path / "cli"), "--no-prefect"])
    assert code == 3, capsys.readouterr().err
    result = drift(reference.root, current.root, client=client, slice_by=["model"], drift=settings)
    cli = read_report(tmp_path / "cli")
    assert_same_report(result.to_arrow(), cli, rtol=1e-12)
    assert result.tables["drift"].schema.equals(cli["drift"].schema, check_metadata=False)
    assert result.breaches and all("kl_per_sample" in b for b in result.breaches)
    assert result.table["breached"].sum() == len(result.breaches)
    with pytest.raises(DriftBreach, match="kl_per_sample"):
        result.raise_for_breach()
    paths = result.write(tmp_path / "api")
    assert_same_report({name: pq.read_table(path) for name, path in paths.items()}, result.to_arrow(), rtol=0)


@pytest.fixture(scope="module")
def drift_dumps(tmp_path_factory, client):
    """A reference and a drifted, shuffled current dump (string labels, two models),
    the drift options, and drift() on their Parquet files."""
    root = tmp_path_factory.mktemp("drift-sources")
    common = dict(classes=4, slices={"model": ["a", "b"]}, string_labels=True, seed=11)
    reference = generate_dump(root / "ref", rows=1500, shards=2, **common)
    current = generate_dump(root / "cur", rows=1200, shards=3, shuffle=True, drift=0.6, **common)
    # Frames lose the schema metadata the class names are in: name the classes.
    options = dict(slice_by=["model"], classes=list(current.class_names), task_rows=500,
                   drift={"thresholds": {"kl_per_sample": 0.01, "marginal_js": 1.0}, "bucket_rows": 600})
    return reference, current, options, drift(reference.root, current.root, client=client, **options)


@pytest.mark.parametrize("kinds", [("pandas", "pandas"), ("arrow", "arrow"), ("dask", "dask"), ("files", "pandas"),
                                   ("dask", "arrow")])
def test_drift_of_in_memory_sources_is_drift_of_their_files(drift_dumps, client, kinds):
    reference, current, options, on_files = drift_dumps
    result = drift(source_of(kinds[0], reference, client), source_of(kinds[1], current, client), client=client, **options)
    metrics = set(result.table["metric"])
    assert {"kl_per_sample", "n_matched", "marginal_js", "confidence_psi"} <= metrics
    assert result.table.loc[result.table["metric"] == "n_matched", "value"].item() == 1200
    ours, theirs = result.tables["drift"], on_files.tables["drift"]
    assert ours.schema.equals(theirs.schema, check_metadata=False)
    assert ours.drop(["value", "kl_mean"]).equals(theirs.drop(["value", "kl_mean"]))  # keys, n, thresholds, breaches
    for column in ("value", "kl_mean"):
        a, b = (t.column(column).to_numpy(zero_copy_only=False).astype(float) for t in (ours, theirs))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=column)
    assert result.breaches == on_files.breaches and any("kl_per_sample" in b for b in result.breaches)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path, monkeypatch):
    ((_, block),) = marked_blocks("API", "python")
    common = dict(rows=1500, classes=4, shards=2, slices={"model": ["a", "b"]}, seed=11)
    generate_dump(tmp_path / "dumps" / "date=2026-11-22", **common)
    generate_dump(tmp_path / "dumps" / "date=2026-11-23", shuffle=True, **common)  # same rows: no drift
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert pq.read_table(tmp_path / "reports" / "2026-11-23" / "summary.parquet").num_rows == 3
