"""A new user's first dumps, written with pandas, through the real `xent eval`: each
mistake ends in one stderr line that says what to do, and the settings it names work.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from support import child_env
from flows.cli import main

N, C = 200, 4


def predictions(seed: int = 0) -> pd.DataFrame:
    """What a user writes from predict_proba: an id, a slice, int labels, a list of float64 probabilities."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=N)
    return pd.DataFrame({"id": np.arange(N), "segment": rng.choice(["a", "b"], N),
                         "label": rng.integers(0, C, N), "probs": list(probs)})


def write_dump(folder: Path, frame: pd.DataFrame, shards: int = 2) -> Path:
    """`frame` in `shards` Parquet files written with plain pandas."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), shards + 1).astype(int)
    for i in range(shards):
        frame.iloc[bounds[i]:bounds[i + 1]].to_parquet(folder / f"part-{i}.parquet", index=False)
    return folder


def xent_eval(capsys, dump: Path, out: Path, *flags: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `xent eval DUMP --out OUT --no-prefect FLAGS`."""
    capsys.readouterr()
    code = main(["eval", str(dump), "--out", str(out), "--no-prefect", *flags])
    return code, capsys.readouterr().err.strip().splitlines()


def summary(out: Path) -> dict:
    return next(row for row in pq.read_table(out / "summary.parquet").to_pylist() if row["overall"])


def mean_ce(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


# --------------------------------------------------------------------------- columns


def test_missing_label_column_names_the_flag_and_the_columns(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions().rename(columns={"label": "target"}))
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    assert "no label column 'label'" in err[0] and "--label-col" in err[0]
    assert "['id', 'probs', 'segment', 'target']" in err[0]
    assert "--label-col target" in err[0]  # the one integer column that is not the id


def test_missing_prediction_column_hint_fits_the_kind_given(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions().rename(columns={"probs": "scores"}))
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    assert "no prediction column 'probs' (kind probs)" in err[0]
    assert "--kind probs" not in err[0]  # it was given
    assert "--pred-col scores" in err[0] and "list columns found: ['scores']" in err[0]


def test_missing_prediction_column_without_kind_asks_for_both(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions().rename(columns={"probs": "scores"}))
    code, err = xent_eval(capsys, dump, tmp_path / "out")
    assert code == 1 and len(err) == 1, err
    assert "--pred-col scores" in err[0] and "--kind" in err[0]


# --------------------------------------------------------------------------- labels


@pytest.mark.slow
def test_float_labels_holding_whole_numbers_are_read_nan_ignored(tmp_path, capsys):
    """pandas writes int labels as float64 once a merge leaves a NaN among them."""
    frame = predictions()
    labels = frame["label"].to_numpy()
    frame["label"] = frame["label"].astype("float64")
    frame.loc[[3, 150], "label"] = np.nan
    dump = write_dump(tmp_path / "dump", frame)
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 0, err
    kept = np.ones(N, bool)
    kept[[3, 150]] = False
    row = summary(tmp_path / "out")
    assert row["n"] == N - 2 and row["n_ignored"] == 2
    probs = np.stack(frame["probs"].to_numpy())
    assert row["ce_mean"] == pytest.approx(mean_ce(probs[kept], labels[kept]), rel=1e-12)


def test_float_label_with_a_fraction_names_file_column_and_row(tmp_path, capsys):
    frame = predictions()
    frame["label"] = frame["label"].astype("float64")
    frame.loc[N // 2 + 7, "label"] = 2.5
    dump = write_dump(tmp_path / "dump", frame)
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    assert "part-1.parquet: column 'label', row 7: label 2.5 is not a whole number" in err[0]


# --------------------------------------------------------------------------- probabilities that do not sum to 1


def unnormalised(scale: float = 1.01) -> pd.DataFrame:
    frame = predictions()
    frame["probs"] = [p * scale for p in frame["probs"]]
    return frame


def test_probabilities_off_by_more_than_the_tolerance_show_sum_and_settings(tmp_path, capsys):
    frame = unnormalised()
    dump = write_dump(tmp_path / "dump", frame, shards=1)
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    total = float(np.sum(frame["probs"][0]))
    assert f"part-0.parquet: column 'probs', row 0: probs with a sum of {total:.9g}, not 1" in err[0]
    assert "tolerance 0.0001" in err[0] and "--prob-tolerance" in err[0] and "--renormalize" in err[0]


def test_prob_tolerance_accepts_the_rows_as_given(tmp_path, capsys):
    frame = unnormalised()
    dump = write_dump(tmp_path / "dump", frame)
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs", "--prob-tolerance", "0.02")
    assert code == 0, err
    probs = np.stack(frame["probs"].to_numpy())
    assert summary(tmp_path / "out")["ce_mean"] == pytest.approx(mean_ce(probs, frame["label"].to_numpy()), rel=1e-12)


def test_renormalize_divides_each_row_by_its_sum_and_is_recorded(tmp_path, capsys):
    frame = unnormalised(scale=3.0)
    dump = write_dump(tmp_path / "dump", frame)
    config = tmp_path / "eval.yaml"
    config.write_text("kind: probs\nrenormalize: true\n")
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--config", str(config))
    assert code == 0, err
    probs = np.stack(frame["probs"].to_numpy())
    expected = mean_ce(probs / probs.sum(axis=1, keepdims=True), frame["label"].to_numpy())
    assert summary(tmp_path / "out")["ce_mean"] == pytest.approx(expected, rel=1e-12)
    layout = json.loads(pq.read_schema(tmp_path / "out" / "summary.parquet").metadata[b"xent.layout"])
    assert layout["renormalized"] is True and layout["prob_tolerance"] == 1e-4


def test_renormalize_with_logits_is_a_usage_error(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions())
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--renormalize")
    assert code == 2 and len(err) == 1 and "renormalize" in err[0], err


# --------------------------------------------------------------------------- unreadable files


def test_truncated_shard_mentions_on_bad_shard_skip(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions())
    shard = dump / "part-1.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    assert "part-1.parquet: not a readable Parquet file" in err[0] and "--on-bad-shard skip" in err[0]
    # and with it, the reason kept for the page does not tell to pass what was passed
    code, err = xent_eval(capsys, dump, tmp_path / "skipped", "--kind", "probs", "--on-bad-shard", "skip")
    assert code == 0, err
    reasons = pq.read_table(tmp_path / "skipped" / "bad_shards.parquet").column("reason").to_pylist()
    assert len(reasons) == 1 and "not a readable Parquet file" in reasons[0] and "--on-bad-shard" not in reasons[0]


def test_a_file_that_is_not_parquet_mentions_on_bad_shard_skip(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions(), shards=1)
    (dump / "part-9.parquet").write_text("id,label\n1,2\n")
    code, err = xent_eval(capsys, dump, tmp_path / "out", "--kind", "probs")
    assert code == 1 and len(err) == 1, err
    assert "part-9.parquet" in err[0] and "--on-bad-shard skip" in err[0]


# --------------------------------------------------------------------------- sources over HTTP


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, plus HTTP Range (one range per request) and, when the
    server has `credentials`, Basic authentication."""

    def send_head(self):
        expected = getattr(self.server, "credentials", None)
        if expected and self.headers.get("Authorization") != "Basic " + base64.b64encode(expected.encode()).decode():
            self.send_error(401)
            return None
        spec = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not spec or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = spec.removeprefix("bytes=").partition("-")
        start, end = (size - int(last), size - 1) if not first else (int(first), min(int(last or size - 1), size - 1))
        start = max(start, 0)
        body = path.read_bytes()[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(folder: Path, handler=RangeHandler, credentials: str | None = None):
    """A threaded HTTP server on 127.0.0.1 serving `folder`, stopped on exit; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    server.credentials = credentials
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class PlainHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_server_ignoring_range_requests_is_named(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions())
    with http_server(dump, PlainHandler) as url:
        for source in (f"{url}/part-0.parquet", f"{url}/"):
            code, err = xent_eval(capsys, source, tmp_path / "out", "--kind", "probs")
            assert code == 4 and len(err) == 1, err
            assert f"{url} returned the whole file for a range request" in err[0]
            assert "supports HTTP Range" in err[0] and "copy them locally" in err[0] and "changed" not in err[0]


SECRET = "PASSWORD-9f2c"


def test_url_credentials_never_shown_in_errors(tmp_path, capsys):
    dump = write_dump(tmp_path / "dump", predictions())
    with http_server(dump, credentials=f"xuser7:{SECRET}") as url:
        source = url.replace("http://", f"http://xuser7:{SECRET}@")
        code, err = xent_eval(capsys, f"{source}/nothere.parquet", tmp_path / "out", "--kind", "probs")
        assert code == 1 and len(err) == 1 and err == [f"xent: error: {url}/nothere.parquet: no such file or folder"]
        (dump / "part-1.parquet").write_bytes(b"not parquet at all, PAR1")
        capsys.readouterr()
        code = main(["--verbose", "eval", f"{source}/part-1.parquet", "--out", str(tmp_path / "out"), "--no-prefect",
                     "--kind", "probs"])
        err = capsys.readouterr().err.strip().splitlines()  # the traceback and log lines too
        assert code == 1 and SECRET not in "\n".join(err) and f"{url}/part-1.parquet" in err[-1], err


def test_url_credentials_never_stored_in_report_page_or_output(tmp_path, capsys):
    frame = predictions()
    dump = write_dump(tmp_path / "dump", frame, shards=3)
    shard = dump / "part-2.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated: listed in bad_shards with its URL
    out = tmp_path / "out"
    with http_server(dump, credentials=f"xuser7:{SECRET}") as url:
        source = url.replace("http://", f"http://xuser7:{SECRET}@")
        capsys.readouterr()
        code = main(["--verbose", "eval", f"{source}/part-0.parquet", f"{source}/part-1.parquet", f"{source}/part-2.parquet",
                     "--out", str(out), "--no-prefect", "--kind", "probs", "--on-bad-shard", "skip"])
        printed = capsys.readouterr()
    assert code == 0, printed.err
    assert SECRET not in printed.out + printed.err and "xuser7" not in printed.out + printed.err
    bounds = np.linspace(0, N, 4).astype(int)
    kept = np.arange(N) < bounds[2]  # the rows of the first two shards
    probs = np.stack(frame["probs"].to_numpy())
    assert summary(out)["ce_mean"] == pytest.approx(mean_ce(probs[kept], frame["label"].to_numpy()[kept]), rel=1e-12)
    for path in out.iterdir():
        assert SECRET.encode() not in path.read_bytes() and b"xuser7" not in path.read_bytes(), path.name
    metadata = pq.read_schema(out / "summary.parquet").metadata
    files = [f["url"] for f in json.loads(metadata[b"xent.fingerprint"])["files"]]
    assert files == [f"{url}/part-0.parquet", f"{url}/part-1.parquet", f"{url}/part-2.parquet"]
    assert json.loads(metadata[b"xent.config"])["sources"] == files
    assert pq.read_table(out / "bad_shards.parquet").column("file").to_pylist() == [f"{url}/part-2.parquet"]


@pytest.mark.slow
def test_url_credentials_not_in_prefect_artifacts_run_names_or_parameters(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.cli.commands import run_flow
    from flows.config import EvalConfig
    from flows.pipelines import eval_flow

    dump = write_dump(tmp_path / "dump", predictions())
    with http_server(dump, credentials=f"xuser7:{SECRET}") as url:
        source = url.replace("http://", f"http://xuser7:{SECRET}@")
        # A storage option named like a credential is kept out of the stored parameters too.
        config = EvalConfig(sources=[source + "/"], kind="probs", storage_options={"headers": {"X-Api-Token": SECRET}})
        run_flow(eval_flow, config, str(tmp_path / "out"))
        assert config.sources == [source + "/"]  # the run itself read with the credentials

    async def artifacts_and_runs():
        async with get_client() as client:
            return await client.read_artifacts(), await client.read_flow_runs()

    import asyncio

    artifacts, runs = asyncio.run(artifacts_and_runs())
    shown = [a.key or "" for a in artifacts] + [a.description or "" for a in artifacts] + [r.name for r in runs]
    shown += [json.dumps(r.parameters) for r in runs]  # what the Prefect UI shows as the run's parameters
    assert runs and any(url.removeprefix("http://") in text for text in shown)
    assert shown and not any(SECRET in text or "xuser7" in text for text in shown), shown


# --------------------------------------------------------------------------- optional dependencies


BLOCKED_IMPORT = """
import importlib.abc, os, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Blocked())
from flows.cli import main
code = main({argv!r})
sys.stdout.flush(); sys.stderr.flush(); os._exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("blocked, source, extra", [
    (["aiohttp"], "http://127.0.0.1:9/dump/part-0.parquet", "http"),
    (["s3fs"], "s3://bucket/dump/", "s3"),
])
def test_missing_client_library_is_a_usage_error_naming_the_extra(tmp_path, blocked, source, extra):
    argv = ["eval", source, "--out", str(tmp_path / "out"), "--no-prefect"]
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT.format(blocked=blocked, argv=argv)],
                            capture_output=True, text=True, timeout=120, env=child_env(DASK_SCHEDULER_ADDRESS=None))
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert f"pip install 'xent[{extra}]'" in err[0] and "internal error" not in err[0]


def test_pyproject_has_the_extras_the_messages_name():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("aiohttp") for dep in extras["http"]) and any(dep.startswith("requests") for dep in extras["http"])
    assert any(dep.startswith("s3fs") for dep in extras["s3"])
