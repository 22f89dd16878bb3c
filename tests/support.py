"""The tests' helper library (fixtures stay in conftest.py): free loopback ports,
child processes that are always stopped (terminate, then kill), the `xent` command
run as a child, a Dask cluster made of real `dask scheduler` / `dask worker`
processes, a moto S3 server, and report comparisons (two reports, or a report and
the float64 reference over the same rows).

Every server listens on 127.0.0.1 only, is started by the test session itself and
is stopped when its context exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.testing import assert_allclose

import reference as ref

LOOPBACK = "127.0.0.1"
T = TypeVar("T")

# Report columns compared exactly; every other numeric column to a relative tolerance.
EXACT_COLUMNS = {"n", "class", "class_name", "overall", "n_ignored", "n_nonfinite", "n_skipped", "n_bad_shards"}


# --------------------------------------------------------------------------- ports and waiting


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- child processes


@dataclass
class ServerProcess:
    """A child process in its own process group, its output in a log file."""

    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; last, SIGKILL whatever is left of
        its process group (a nanny's worker, say)."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this process leads


def child_env(**overrides: str | None) -> dict[str, str]:
    """The test's environment for a child process; a None override removes the variable."""
    return _overridden({**os.environ, "PYTHONUNBUFFERED": "1"}, overrides)


def cli_env(prefect_home: Path, **overrides: str | None) -> dict[str, str]:
    """The environment for an `xent` child process: no ambient Dask scheduler, no
    ambient Prefect setting (API URL, profile...), Prefect's state in `prefect_home`,
    no telemetry and no UI; then `overrides` (None removes a variable)."""
    env = {k: v for k, v in child_env(DASK_SCHEDULER_ADDRESS=None).items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false")
    return _overridden(env, overrides)


def _overridden(env: dict[str, str], overrides: dict[str, str | None]) -> dict[str, str]:
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_process(name: str, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> ServerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env if env is not None else child_env(), cwd=cwd, start_new_session=True,
        )
    return ServerProcess(name, process, log)


@contextlib.contextmanager
def stopping(servers: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    """Stop every server in `servers` (also ones appended inside the block), last first."""
    try:
        yield servers
    finally:
        for server in reversed(servers):
            server.stop()


def xent_command() -> list[str]:
    """The installed `xent` command beside this interpreter, else `python -m flows.cli`."""
    script = Path(sys.executable).parent / "xent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def run_without_prefect(runs: list[list[str]], cwd: Path) -> tuple[list[int], list[str], subprocess.CompletedProcess]:
    """Run `flows.cli.main` on each argument list in one fresh interpreter; returns the
    exit codes, the Prefect modules that got imported, and the process.

    The interpreter ends with os._exit, as the `xent` command does: pyarrow can abort
    at native teardown after all work is done (apache/arrow#34314)."""
    code = (
        "import os, sys; from flows import cli; "
        f"codes = [cli.main(run) for run in {runs!r}]; "
        "print(codes, sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))); "
        "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=child_env(DASK_SCHEDULER_ADDRESS=None), cwd=cwd)
    assert result.returncode == 0, result.stderr
    codes, modules = result.stdout.strip().splitlines()[-1].split("] [")
    return json.loads(codes + "]"), json.loads("[" + modules.replace("'", '"')), result


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `xent` command (beside this interpreter), or `python -m flows.cli`."""
    return subprocess.run(
        [*xent_command(), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=env if env is not None else child_env(DASK_SCHEDULER_ADDRESS=None), timeout=timeout, cwd=cwd,
    )


# --------------------------------------------------------------------------- a Dask cluster of real processes


@dataclass
class DaskCluster:
    address: str
    scheduler: ServerProcess
    workers: list[ServerProcess] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail(2000)}" for s in [self.scheduler, *self.workers])


@contextlib.contextmanager
def dask_cluster(folder: Path, n_workers: int = 2, nanny: bool = True, memory_limit: str = "2GiB",
                 start_timeout: float = 60) -> Iterator[DaskCluster]:
    """`dask scheduler` on 127.0.0.1 (a port the OS picks, read back from its scheduler
    file) and `n_workers` `dask worker` processes of one thread each; yields once the
    scheduler has them all, and stops them all on exit."""
    from distributed import Client

    folder.mkdir(parents=True, exist_ok=True)
    env = child_env(DASK_SCHEDULER_ADDRESS=None)
    scheduler_file = folder / "scheduler.json"
    with stopping([]) as servers:
        scheduler = start_process(
            "scheduler",
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", LOOPBACK, "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file), "--idle-timeout", "600"],
            folder / "scheduler.log", env, cwd=folder,
        )
        servers.append(scheduler)

        def read_address() -> str | None:
            scheduler.check_alive()
            if not scheduler_file.exists():
                return None
            with contextlib.suppress(ValueError):  # half-written
                return json.loads(scheduler_file.read_text()).get("address")
            return None

        address = wait_until(read_address, start_timeout, "the scheduler's address")
        assert address.startswith(f"tcp://{LOOPBACK}:"), address
        cluster = DaskCluster(address, scheduler)
        for i in range(n_workers):
            worker = start_process(
                f"worker-{i}",
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", LOOPBACK,
                 "--nthreads", "1", "--nworkers", "1", "--memory-limit", memory_limit, "--no-dashboard",
                 "--name", f"w{i}", "--local-directory", str(folder / f"w{i}"), "--death-timeout", "60",
                 "--nanny" if nanny else "--no-nanny"],
                folder / f"worker-{i}.log", env, cwd=folder,
            )
            servers.append(worker)
            cluster.workers.append(worker)
        try:
            with Client(address, timeout="20s") as client:
                client.wait_for_workers(n_workers, timeout=start_timeout)
        except Exception as error:
            raise RuntimeError(f"the Dask cluster did not come up: {error}\n{cluster.logs()}") from error
        yield cluster


# --------------------------------------------------------------------------- S3: moto and a decoy endpoint


@dataclass
class MotoServer:
    url: str
    server: ServerProcess


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def moto_server(folder: Path, start_timeout: float = 30, attempts: int = 3) -> Iterator[MotoServer]:
    """moto's standalone S3 server on a free 127.0.0.1 port (tried again on a port race)."""
    last_error = ""
    for attempt in range(attempts):
        port = free_port()
        with stopping([]) as servers:
            server = start_process(
                "moto", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                folder / f"moto-{attempt}.log", child_env(), cwd=folder,
            )
            servers.append(server)
            url = f"http://{LOOPBACK}:{port}"
            try:
                wait_until(lambda: server.check_alive() or _http_ok(f"{url}/moto-api/"), start_timeout, "moto")
            except RuntimeError as error:  # exited: most likely the port was taken meanwhile
                last_error = str(error)
                continue
            yield MotoServer(url, server)
            return
    raise RuntimeError(f"moto server did not start in {attempts} attempts:\n{last_error}")


class RecordingHTTPServer:
    """A loopback HTTP endpoint that denies every request (403) and records it.

    Pointed to by the ambient AWS_ENDPOINT_URL, it catches any S3 access that ignores
    the configured storage_options, instead of letting it reach for the real AWS.
    """

    def __init__(self) -> None:
        requests: list[str] = []
        self.requests = requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _deny(self) -> None:
                requests.append(f"{self.command} {self.path}")
                body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>decoy endpoint</Message></Error>"
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _deny

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "RecordingHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --------------------------------------------------------------------------- reports


def assert_same_report(a: dict[str, pa.Table], b: dict[str, pa.Table], rtol: float = 1e-12) -> None:
    """Two reports with the same tables, rows and columns: counts, classes and slice
    keys exactly equal, every other number to `rtol`."""
    assert sorted(a) == sorted(b)
    for name in a:
        left, right = a[name].to_pydict(), b[name].to_pydict()
        assert list(left) == list(right), name
        for column, values in left.items():
            other = right[column]
            assert len(values) == len(other), f"{name}.{column}: {len(values)} rows vs {len(other)}"
            numeric = values and all(isinstance(v, (int, float, list)) and not isinstance(v, bool) for v in values if v is not None)
            if column in EXACT_COLUMNS or not numeric or any(v is None for v in values):
                assert values == other, f"{name}.{column}"
            else:
                assert_allclose(np.array(values, dtype=float), np.array(other, dtype=float), rtol=rtol, atol=0,
                                err_msg=f"{name}.{column}")


# Columns assert_report_matches compares with the reference, per class and per slice.
CLASS_COLUMNS = ["n", "weight", "ce_mean", "ce_std", "accuracy", "p_true_mean", "entropy_mean"]
SLICE_COLUMNS = ["n", "weight", "ce_mean", "ce_macro", "accuracy", "entropy_mean", "ece", "n_ignored"]


def expected_report(arrays, kind, slice_by=(), weighted=False):
    """Reference cells and slices keyed by slice tuple, from the raw arrays."""
    n = len(arrays["label"])
    keys = list(zip(*(arrays[name] for name in slice_by))) if slice_by else [()] * n
    distinct = sorted(set(keys), key=lambda k: tuple((v is None, "" if v is None else v) for v in k))
    index = {k: i for i, k in enumerate(distinct)}
    ids = np.array([index[k] for k in keys], dtype=np.int64)
    cells, slices = ref.class_report(
        arrays["pred"], arrays["label"], kind, weights=arrays.get("weight") if weighted else None,
        slice_ids=ids, n_slices=len(distinct),
    )
    return {(distinct[s], c): v for (s, c), v in cells.items()}, {distinct[s]: v for s, v in slices.items()}


def assert_report_matches(tables, cells, slices, slice_by=(), rtol=1e-10):
    per_class = tables["per_class"].to_pylist()
    summary = tables["summary"].to_pylist()
    sliced_rows = [r for r in per_class if not r["overall"]] if slice_by else per_class
    assert len(sliced_rows) == len(cells)
    for row in sliced_rows:
        key = tuple(row[name] for name in slice_by)
        expected = cells[(key, row["class"])]
        for column in CLASS_COLUMNS:
            assert_allclose(row[column], expected[column], rtol=rtol, atol=1e-12, err_msg=f"{key} {row['class']} {column}")
    for row in summary:
        if slice_by and row["overall"]:
            continue
        expected = slices[tuple(row[name] for name in slice_by)]
        for column in SLICE_COLUMNS:
            assert_allclose(row[column], expected[column], rtol=rtol, atol=1e-12, err_msg=f"summary {column}")
        assert_allclose(row["predicted_marginal"], expected["marginal"], rtol=rtol, atol=1e-13)


# --------------------------------------------------------------------------- Parquet page headers


@dataclass(frozen=True)
class PageHeader:
    """The top-level fields of a Parquet page header, and its encoded length."""

    type: int  # 0 data page, 1 index page, 2 dictionary page, 3 data page v2
    uncompressed_size: int
    compressed_size: int
    crc: int | None
    header_size: int  # bytes of the header; the page's data follows it


def read_page_header(data: bytes | memoryview, offset: int = 0) -> PageHeader:
    """Decode the page header that starts at `data[offset]` with the product's Thrift
    decoder (page type, sizes and crc: field ids 1 to 4 of parquet.thrift's PageHeader);
    tests use it to find the bytes of each page. ValueError if the bytes are not a page
    header, or `data` ends inside it."""
    from flows.inputs.integrity import _Compact  # here, so that importing support imports no flows module

    reader = _Compact(data, offset)
    fields = reader.struct()
    if not all(isinstance(fields.get(i), int) for i in (1, 2, 3)):
        raise ValueError(f"not a Parquet page header at byte {offset}: fields {sorted(fields)}")
    return PageHeader(fields[1], fields[2], fields[3], fields.get(4), reader.pos - offset)


# --------------------------------------------------------------------------- token dumps


def random_tokens(seed: int, n: int = 3000, vocab: int = 40, k: int = 5, docs: int = 60):
    """Tokens of `docs` documents scored by a random dense model over `vocab` ids, with
    each token's top-k list (the target appended when outside, as vLLM lists it)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, vocab))
    from scipy.special import log_softmax

    from xent_kernels.hashing import splitmix64

    logp = log_softmax(logits, axis=1)
    target = rng.integers(0, vocab, n)
    doc = rng.integers(0, docs, n)
    # each document's tokens at distinct positions: its tokens in order, from a random start
    start = rng.integers(0, 250, docs)
    seen = np.zeros(docs, dtype=np.int64)
    position = np.empty(n, dtype=np.int64)
    for i, d in enumerate(doc):
        position[i], seen[d] = start[d] + seen[d], seen[d] + 1
    order = np.argsort(-logp, axis=1, kind="stable")[:, :k]
    ids, lps = [], []
    for i in range(n):
        row = list(order[i])
        if target[i] not in row:
            row.append(target[i])
        ids.append(np.array(row))
        lps.append(logp[i, row])
    return dict(logp=logp, target=target, doc=doc, position=position, ids=ids, lps=lps,
                target_logprob=logp[np.arange(n), target], bytes=rng.integers(1, 9, n),
                slice=rng.integers(0, 2, n), bucket=(splitmix64(doc) % np.uint64(7)).astype(np.int64))


def two_token_models(seed: int, n: int = 2000, vocab: int = 30, k: int = 4, docs: int = 50):
    """Dense teacher and student log-probs of the same tokens, each with its own top-k
    list (the target appended when outside, as vLLM lists it)."""
    from scipy.special import log_softmax

    rng = np.random.default_rng(seed)
    teacher = log_softmax(rng.normal(0, 2, (n, vocab)), axis=1)
    student = log_softmax(np.exp(teacher) * 3 + rng.normal(0, 1.5, (n, vocab)), axis=1)
    target = np.array([rng.choice(vocab, p=np.exp(row)) for row in teacher])
    doc = rng.integers(0, docs, n)

    def lists(logp):
        order = np.argsort(-logp, axis=1, kind="stable")[:, :k]
        offsets, ids = [0], []
        for i in range(n):
            row = list(order[i]) + ([] if target[i] in order[i] else [target[i]])
            ids += row
            offsets.append(len(ids))
        ids = np.array(ids)
        rows = np.repeat(np.arange(n), np.diff(offsets))
        return np.array(offsets), ids, logp[rows, ids]

    return dict(teacher=teacher, student=student, target=target, doc=doc, bucket=doc % 7,
                position=rng.integers(0, 40, n), slice=rng.integers(0, 2, n), bytes=rng.integers(1, 6, n),
                teacher_topk=lists(teacher), student_topk=lists(student), frequency=target % 3)


def positions_of(doc: np.ndarray) -> np.ndarray:
    """Each token's place among its document's tokens, in order."""
    position = np.empty(len(doc), np.int64)
    seen: dict[int, int] = {}
    for i, d in enumerate(doc):
        position[i] = seen.get(d, 0)
        seen[d] = position[i] + 1
    return position


def token_side_table(m: dict, side: str, rows: np.ndarray | None = None) -> pa.Table:
    """One model's tokens as a token-rows table (float64 log-probs: exact against numpy)."""
    n = len(m["target"])
    rows = np.arange(n) if rows is None else rows
    offsets, ids, lps = m[f"{side}_topk"]
    lists_ids = [ids[offsets[i]:offsets[i + 1]].tolist() for i in rows]
    lists_lps = [lps[offsets[i]:offsets[i + 1]].tolist() for i in rows]
    logp = m[side]
    return pa.table({
        "doc_id": pa.array(m["doc"][rows], pa.int64()),
        "position": pa.array(positions_of(m["doc"])[rows], pa.int32()),
        "target": pa.array(m["target"][rows], pa.int32()),
        "target_logprob": pa.array(logp[rows, m["target"][rows]], pa.float64()),
        "topk_ids": pa.array(lists_ids, pa.list_(pa.int32())),
        "topk_logprobs": pa.array(lists_lps, pa.list_(pa.float64())),
        "target_bytes": pa.array(m["bytes"][rows], pa.int32()),
        "source": pa.array(np.array(["web", "code"])[m["slice"][rows]]),
    })


def write_token_shards(table: pa.Table, folder, shards: int, seed: int) -> str:
    folder.mkdir()
    order = np.random.default_rng(seed).permutation(table.num_rows)
    for i, part in enumerate(np.array_split(order, shards)):
        pq.write_table(table.take(pa.array(part)), folder / f"part-{i}.parquet")
    return str(folder)
