"""xent against a real S3 protocol server: moto's standalone server on 127.0.0.1.

Dumps are generated into a bucket (with hive folders) and must evaluate to the same
report as the same dump on local disk; reports are written back to the bucket. The
ambient AWS endpoint is a local decoy that denies and records every request, so any
S3 access that ignores the configured storage_options fails here, and nothing ever
reaches for the real AWS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

s3fs = pytest.importorskip("s3fs")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("flask", reason="moto's standalone server needs moto[server]")

from support import RecordingHTTPServer, assert_report_matches, assert_same_report, cli_env, expected_report, moto_server, run_cli  # noqa: E402
from flows.config import EvalConfig  # noqa: E402
from flows.engine import dask_client, evaluate  # noqa: E402
from flows.generate import generate_dump  # noqa: E402
from flows.report.tables import report_tables  # noqa: E402
from flows.errors import InfrastructureError  # noqa: E402
from flows.api import Report  # noqa: E402
from flows.report.writing import read_manifest, write_tables_atomically  # noqa: E402
from flows.inputs.sources import filesystem, list_inputs  # noqa: E402
from oracle import load_arrays  # noqa: E402

pytestmark = pytest.mark.timeout(180)

BUCKET = "xent-test"
KEY, SECRET = "testing", "testing-secret-4f1d"  # moto checks neither; the secret is easy to spot
SLICE_BY = ("date", "model")
DUMP = dict(rows=30_000, classes=6, shards=6, slices={"model": ["a", "b"]},
            hive={"date": ["2026-11-22", "2026-11-23", "2026-11-24"]}, weights=True, seed=31)


@dataclass
class S3:
    url: str  # the moto endpoint
    storage_options: dict
    fs: "s3fs.S3FileSystem"
    decoy: RecordingHTTPServer

    def config_file(self, folder: Path) -> Path:
        path = folder / "s3.yaml"
        path.write_text(json.dumps({"storage_options": self.storage_options}))  # JSON is YAML
        return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3")
    with moto_server(folder) as moto, RecordingHTTPServer() as decoy, pytest.MonkeyPatch.context() as env:
        # Fake credentials, no profile or config files, no instance metadata, and the
        # decoy as the default endpoint: for this process and the CLI processes it starts.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", KEY)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
        env.setenv("AWS_ENDPOINT_URL", decoy.url)
        env.setenv("AWS_ENDPOINT_URL_S3", decoy.url)
        boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        storage_options = {"client_kwargs": {"endpoint_url": moto.url, "region_name": "us-east-1"}, "key": KEY, "secret": SECRET}
        try:
            yield S3(moto.url, storage_options, s3fs.S3FileSystem(**storage_options), decoy)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(autouse=True)
def nothing_bypasses_storage_options(request, s3):
    """Every S3 request goes to the configured endpoint, none to the ambient one."""
    s3.decoy.requests.clear()
    yield
    assert s3.decoy.requests == [], "S3 requests that ignored storage_options"


@pytest.fixture(scope="module")
def client():
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        with dask_client(None) as client:
            yield client


@pytest.fixture(scope="module")
def dumps(s3, tmp_path_factory):
    """The same dump on local disk and in the bucket."""
    local = generate_dump(tmp_path_factory.mktemp("local") / "dump", **DUMP)
    remote = generate_dump(f"s3://{BUCKET}/dump/", storage_options=s3.storage_options, **DUMP)
    return local, remote


def read_s3_report(s3: S3, paths: dict[str, str]) -> dict[str, pa.Table]:
    return {name: pq.read_table(path.removeprefix("s3://"), filesystem=s3.fs) for name, path in paths.items()}


def config(sources: list[str], **settings) -> EvalConfig:
    return EvalConfig(sources=sources, slice_by=list(SLICE_BY), weight_col="weight", **settings)


@pytest.mark.slow
def test_s3_dump_evaluates_like_the_local_one(s3, client, dumps, tmp_path):
    local, remote = dumps
    relative = sorted(f.removeprefix(local.root).lstrip("/") for f in local.files)
    assert relative[0].startswith("date=2026-11-22/part-")
    assert sorted(s3.fs.find(f"{BUCKET}/dump")) == [f"{BUCKET}/dump/{r}" for r in relative]

    local_report = {name: pq.read_table(path) for name, path in
                    Report(evaluate(config([local.root]), client)).write(str(tmp_path / "local")).items()}
    evaluation = evaluate(config([remote.root], storage_options=s3.storage_options), client)
    assert [f.url for f in evaluation.inputs] == sorted(remote.files)
    assert evaluation.inputs[0].hive == {"date": "2026-11-22"}
    paths = Report(evaluation).write(f"s3://{BUCKET}/reports/x/", s3.storage_options)
    assert paths == {name: f"s3://{BUCKET}/reports/x/{name}.parquet" for name in ("per_class", "summary", "confusion")}
    assert sorted(s3.fs.ls(f"{BUCKET}/reports/x")) == [
        f"{BUCKET}/reports/x/{name}" for name in
        ("_manifest.json", "confusion.parquet", "per_class.parquet", "report.html", "summary.parquet")]

    report = read_s3_report(s3, paths)
    assert_same_report(report, local_report, rtol=1e-12)
    arrays = load_arrays(remote, storage_options=s3.storage_options)
    assert_report_matches(report, *expected_report(arrays, "logits", slice_by=SLICE_BY, weighted=True), slice_by=SLICE_BY)
    dates = {row["date"] for row in report["summary"].to_pylist() if not row["overall"]}
    assert dates == set(DUMP["hive"]["date"])
    assert json.loads(report["summary"].schema.metadata[b"xent.config"])["sources"] == [remote.root]


@pytest.mark.slow
def test_fingerprint_carries_the_objects_etags(s3, client, dumps):
    _, remote = dumps
    evaluation = evaluate(config([remote.root], storage_options=s3.storage_options), client)
    paths = Report(evaluation).write(f"s3://{BUCKET}/reports/fp/", s3.storage_options)
    fingerprint = json.loads(read_s3_report(s3, paths)["per_class"].schema.metadata[b"xent.fingerprint"])
    assert fingerprint["n_files"] == len(remote.files)
    assert [f["url"] for f in fingerprint["files"]] == sorted(remote.files)
    for entry in fingerprint["files"]:
        info = s3.fs.info(entry["url"], refresh=True)
        assert entry["version"] == info["ETag"].strip('"')
        assert entry["size"] == info["size"]
        # a single-part upload's ETag is the MD5 of the object
        assert entry["version"] == hashlib.md5(s3.fs.cat_file(entry["url"])).hexdigest()
    assert fingerprint["bytes"] == sum(f["size"] for f in fingerprint["files"])


@pytest.mark.slow
def test_fingerprint_changes_with_the_content(s3):
    url = f"s3://{BUCKET}/rewritten/"
    small = dict(rows=2000, classes=3, shards=2, storage_options=s3.storage_options)
    generate_dump(url, seed=1, **small)
    first = list_inputs([url], s3.storage_options)
    generate_dump(url, seed=2, overwrite=True, **small)
    second = list_inputs([url], s3.storage_options)
    generate_dump(url, seed=2, overwrite=True, **small)
    third = list_inputs([url], s3.storage_options)
    assert [f.url for f in first] == [f.url for f in second]
    assert all(a.version != b.version for a, b in zip(first, second))
    assert [f.version for f in second] == [f.version for f in third]  # same bytes, same ETag


@pytest.mark.slow
def test_single_file_source_sees_an_object_replaced_by_another_writer(s3, client):
    url = f"s3://{BUCKET}/replaced/"
    generate_dump(url, rows=2000, classes=3, shards=2, seed=1, storage_options=s3.storage_options)
    evaluate(EvalConfig(sources=[url], storage_options=s3.storage_options), client)  # lists the folder
    another_writer = {**s3.storage_options, "skip_instance_cache": True}
    generate_dump(url, rows=6000, classes=3, shards=2, seed=2, storage_options=another_writer, overwrite=True)
    first = f"{url}part-00000.parquet"
    evaluation = evaluate(EvalConfig(sources=[first], storage_options=s3.storage_options), client)
    assert evaluation.fingerprint["files"][0]["version"] == hashlib.md5(s3.fs.cat_file(first)).hexdigest()
    assert evaluation.result.rows_read == 3000


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


@pytest.mark.slow
def test_cli_reads_s3_with_storage_options_from_config(s3, dumps, prefect_home, tmp_path):
    local, remote = dumps
    out = tmp_path / "report"
    result = run_cli(["eval", remote.root, "--out", str(out), "--config", str(s3.config_file(tmp_path)),
                      "--slice-by", ",".join(SLICE_BY), "--weight-col", "weight", "--no-prefect"],
                     env=cli_env(prefect_home), timeout=120, cwd=tmp_path)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    report = {name: pq.read_table(out / f"{name}.parquet") for name in ("per_class", "summary")}
    arrays = load_arrays(local)
    assert_report_matches(report, *expected_report(arrays, "logits", slice_by=SLICE_BY, weighted=True), slice_by=SLICE_BY)


# A missing source through the Prefect flow (the default; ~15 s) and through the plain steps.
@pytest.mark.slow
@pytest.mark.parametrize("where, prefect", [("missing prefix", True), ("missing prefix", False), ("missing bucket", False)])
def test_cli_missing_s3_source_is_a_data_error(s3, prefect_home, tmp_path, where, prefect):
    url = f"s3://{BUCKET}/no-such-dump/" if where == "missing prefix" else "s3://xent-no-such-bucket/dump/"
    args = ["eval", url, "--out", str(tmp_path / "report"), "--config", str(s3.config_file(tmp_path))]
    result = run_cli(args + ([] if prefect else ["--no-prefect"]), env=cli_env(prefect_home), timeout=240, cwd=tmp_path)
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stderr}"
    assert result.stderr.strip().splitlines()[-1] == f"xent: error: {url}: no such file or folder", result.stderr
    if not prefect:  # (Prefect logs the failed task with its traceback first)
        assert "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_cli_writes_the_report_to_s3(s3, dumps, prefect_home, tmp_path):
    _, remote = dumps
    out = f"s3://{BUCKET}/reports/cli/"
    result = run_cli(["eval", remote.root, "--out", out, "--config", str(s3.config_file(tmp_path)), "--no-prefect"],
                     env=cli_env(prefect_home), timeout=120, cwd=tmp_path)
    assert s3.fs.exists(f"{BUCKET}/reports/cli/summary.parquet")  # written, in any case
    assert s3.decoy.requests == [], f"requests that ignored storage_options: {s3.decoy.requests}"
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-2000:]}"


@pytest.mark.slow
def test_report_metadata_holds_no_credentials(s3, client, dumps):
    _, remote = dumps
    evaluation = evaluate(config([remote.root], storage_options=s3.storage_options), client)
    paths = Report(evaluation).write(f"s3://{BUCKET}/reports/secret/", s3.storage_options)
    for table in read_s3_report(s3, paths).values():
        for key, value in table.schema.metadata.items():
            assert SECRET.encode() not in value, key


def test_s3_report_is_complete_exactly_when_its_manifest_lists_it(s3, client, dumps, monkeypatch):
    """Object stores have no rename: the old manifest goes first, the new one comes last,
    and tables of an older report that the new one lacks are removed."""
    _, remote = dumps
    out = f"s3://{BUCKET}/reports/manifest/"
    evaluation = evaluate(config([remote.root], storage_options=s3.storage_options), client)
    tables = report_tables(evaluation)
    write_tables_atomically({**tables, "extra": tables["summary"]}, out, s3.storage_options)
    assert [e["file"] for e in read_manifest(out, s3.storage_options)["files"]] == [
        "per_class.parquet", "summary.parquet", "confusion.parquet", "extra.parquet"]

    # A writer that dies after its first upload leaves no manifest: readers know.
    fs = filesystem(out, s3.storage_options)[0]  # fsspec's cached instance, the one the writer gets
    real_pipe, calls = fs.pipe_file, []

    def dying_pipe(path, data, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise ConnectionResetError("writer died")
        return real_pipe(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", dying_pipe)
    with pytest.raises(InfrastructureError, match="cannot write"):
        write_tables_atomically(tables, out, s3.storage_options)
    monkeypatch.undo()
    assert read_manifest(out, s3.storage_options) is None

    write_tables_atomically(tables, out, s3.storage_options)
    manifest = read_manifest(out, s3.storage_options)
    root = f"{BUCKET}/reports/manifest"
    assert sorted(s3.fs.ls(root, refresh=True)) == [
        f"{root}/{n}" for n in ("_manifest.json", "confusion.parquet", "per_class.parquet", "summary.parquet")]
    for entry in manifest["files"]:
        data = s3.fs.cat_file(f"{root}/{entry['file']}")
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.slow
def test_a_conversion_to_s3_uploads_nothing_until_its_input_is_read_whole(s3, tmp_path, monkeypatch):
    """A token dump streamed to an object store waits in a local staging folder: bad
    input in the last record leaves the dump already in the bucket as it was."""
    import tempfile

    from flows.convert import write_vllm_dump
    from flows.errors import DataError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the staging folders go

    def output(i: int) -> dict:
        return {"request_id": f"r{i}", "prompt_token_ids": [5, 6, 7],
                "prompt_logprobs": [None, {"6": {"logprob": -0.5, "rank": 1}}, {"7": {"logprob": -1.5, "rank": 1}}]}

    out, root = f"s3://{BUCKET}/tokens/day1/", f"{BUCKET}/tokens/day1"
    written = write_vllm_dump([output(i) for i in range(5)], out, rows_per_shard=3, storage_options=s3.storage_options)
    assert written.shards == ["part-00000", "part-00001", "part-00002", "part-00003"]
    before = {path: s3.fs.cat_file(path) for path in s3.fs.find(root, refresh=True)}
    assert sorted(before) == [f"{root}/{name}" for name in ("_manifest.json", *(f"{s}.parquet" for s in written.shards))]

    bad = [output(i) for i in range(9)]
    bad[-1]["prompt_logprobs"][2] = None
    with pytest.raises(DataError, match=r"vLLM output 8 \(request_id 'r8'\), prompt_logprobs\[2\]: None"):
        write_vllm_dump(bad, out, rows_per_shard=3, storage_options=s3.storage_options)
    s3.fs.invalidate_cache()
    assert {path: s3.fs.cat_file(path) for path in s3.fs.find(root, refresh=True)} == before

    written = write_vllm_dump([output(i) for i in range(2)], out, rows_per_shard=3, storage_options=s3.storage_options)
    assert sorted(s3.fs.find(root, refresh=True)) == [f"{root}/{n}" for n in ("_manifest.json", "part-00000.parquet",
                                                                               "part-00001.parquet")]
    assert pq.read_table(written.paths["part-00001"].removeprefix("s3://"), filesystem=s3.fs).num_rows == 1
    assert list(tmp_path.iterdir()) == []  # every staging folder removed
