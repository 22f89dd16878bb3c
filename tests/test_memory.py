"""Memory-bounded clusters finish or fail, never hang.

A task's memory is set by batch_logits, not by the size of a file or of its row
groups; workers capped in memory evaluate the dump with the report of a local run;
a cluster that stops making progress (workers paused at their memory limit, or
gone, or a blocked task) fails within stall_timeout with exit 4 and a message that
names the cause and the setting to change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from distributed import Client

from support import assert_same_report, cli_env, dask_cluster, run_cli, wait_until
from flows.config import EvalConfig, build_config
from flows.engine import wait_all, dask_client, evaluate
from flows.errors import InfrastructureError, UsageError
from flows.generate import generate_dump
from flows.api import Report

pytestmark = pytest.mark.timeout(240)

REPORT_TABLES = ("per_class", "summary", "confusion")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def read_report(folder: Path) -> dict:
    return {name: pq.read_table(folder / f"{name}.parquet") for name in REPORT_TABLES}


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


# --------------------------------------------------------------------------- a task's peak


# Run in a fresh interpreter: one warm-up piece on a tiny file (the Numba kernel and
# pyarrow's readers loaded), then the peak RSS (VmHWM, reset through clear_refs) of
# one piece over a whole file, above the RSS before it.
PEAK_CODE = """
import json, sys
from flows import engine
from flows.config import EvalConfig
from flows.inputs.reader import resolve_spec
from flows.inputs.sources import list_inputs

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def piece(folder, batch_logits):
    config = EvalConfig(sources=[folder], batch_logits=batch_logits, task_rows=10**12)
    inputs = list_inputs(config.sources, {})
    spec = resolve_spec(config, inputs[0])
    return engine.plan_pieces([engine.inspect_file(inputs[0], spec)], config.task_rows)[0], spec

warm, folder, batch_logits = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine.evaluate_piece(*piece(warm, batch_logits))
measured = piece(folder, batch_logits)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
engine.evaluate_piece(*measured)
print(json.dumps({"rows": measured[0].rows, "peak_above": status("VmHWM") - before}))
"""


def task_peak(warm: str, folder: str, batch_logits: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", PEAK_CODE, warm, folder, str(batch_logits)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_a_task_peak_is_set_by_batch_logits_not_by_the_row_group(tmp_path):
    # One row group per file, of 250k and 2M rows of 20 float32 logits (20 MB and
    # 160 MB decoded), read 250k values (1 MB) at a time.
    warm = generate_dump(tmp_path / "warm", rows=1_000, classes=20, shards=1, seed=3)
    small = generate_dump(tmp_path / "small", rows=250_000, classes=20, shards=1, seed=3)
    large = generate_dump(tmp_path / "large", rows=2_000_000, classes=20, shards=1, seed=3, row_group_rows=2_000_000)
    assert pq.ParquetFile(large.files[0]).metadata.num_row_groups == 1
    small_peak = task_peak(warm.root, small.root, 250_000)
    large_peak = task_peak(warm.root, large.root, 250_000)
    assert large_peak["rows"] == 2_000_000
    # Before, a reader loaded a row group's whole column chunks first: the peak grew by
    # about the compressed size of the larger group (~130 MB more here).
    assert large_peak["peak_above"] < small_peak["peak_above"] + 32 * 2**20, (small_peak, large_peak)
    assert large_peak["peak_above"] < 2_000_000 * 20 * 4 / 2, (small_peak, large_peak)


# --------------------------------------------------------------------------- capped workers finish


@pytest.mark.slow
@pytest.mark.cluster
def test_workers_capped_in_memory_finish_with_the_local_report(tmp_path, prefect_home):
    """500 MiB workers pause at 400 MiB. An xent worker holds about 300 MiB before it
    reads anything (Numba's compiled kernel, pyarrow); reading 2 M values at a time
    adds about 35 MiB. Before, a worker loaded a file's 47 MB row group whole and kept
    the memory after the piece: both paused for good at about 405 MiB, and the run
    hung."""
    dump = generate_dump(tmp_path / "dump", rows=1_000_000, classes=50, shards=4, seed=5)
    settings = {"batch_logits": 2_000_000}
    with dask_client(None) as client:
        local = Report(evaluate(EvalConfig(sources=[dump.root], **settings), client)).write(str(tmp_path / "local"))
    config = write_yaml(tmp_path / "eval.yaml", {**settings, "stall_timeout": 60})
    with dask_cluster(tmp_path / "cluster", n_workers=2, nanny=True, memory_limit="500MiB") as cluster, \
            Client(cluster.address, timeout="20s") as monitor:
        pids = monitor.run(os.getpid)
        result = run_cli(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect", "--config", str(config),
                          "--scheduler", cluster.address], env=cli_env(prefect_home), timeout=150, cwd=tmp_path)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}\n{cluster.logs()}"
        assert monitor.run(os.getpid) == pids, "a worker was restarted (it exceeded its memory limit)"
    assert_same_report(read_report(tmp_path / "out"), {name: pq.read_table(path) for name, path in local.items()})


@pytest.mark.slow
@pytest.mark.cluster
def test_workers_killed_at_their_memory_limit_fail_the_run_with_exit_4(tmp_path, prefect_home):
    """A worker holds about 300 MiB once it has loaded the kernel: capped at 256 MiB, its
    nanny restarts it on every try, and Dask gives up on the piece (KilledWorker)."""
    dump = generate_dump(tmp_path / "dump", rows=2_000, classes=5, shards=2, seed=9)
    with dask_cluster(tmp_path / "cluster", n_workers=2, nanny=True, memory_limit="256MiB") as cluster:
        result = run_cli(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect", "--scheduler", cluster.address],
                         env=cli_env(prefect_home), timeout=120, cwd=tmp_path)
    assert result.returncode == 4, f"exit {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "a Dask worker died while running a task, on every try" in lines[0], result.stderr
    assert "raise the workers' memory limit or lower batch_logits" in lines[0], lines[0]


# --------------------------------------------------------------------------- a stalled cluster fails


STALL = 3  # seconds


@pytest.mark.slow
@pytest.mark.cluster
def test_paused_workers_fail_the_run_with_exit_4_naming_the_memory_limit(tmp_path, prefect_home, monkeypatch):
    # Workers pause at 15% of 1 GiB (154 MiB): idle they run (about 60 MiB), but after
    # their first task has loaded xent they stay paused for good.
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE", "0.15")
    dump = generate_dump(tmp_path / "dump", rows=20_000, classes=5, shards=12, seed=7)
    config = write_yaml(tmp_path / "eval.yaml", {"stall_timeout": STALL})
    with dask_cluster(tmp_path / "cluster", n_workers=2, nanny=True, memory_limit="1GiB") as cluster:
        started = time.monotonic()
        result = run_cli(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect", "--config", str(config),
                          "--scheduler", cluster.address], env=cli_env(prefect_home), timeout=90, cwd=tmp_path)
        elapsed = time.monotonic() - started
    assert result.returncode == 4, f"exit {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"made no progress for {STALL} s: 2 of 2 workers paused at their memory limit (w" in lines[0], lines[0]
    assert "MiB of 1024 MiB" in lines[0] and "--memory-limit" in lines[0] and "stall_timeout" in lines[0], lines[0]
    assert elapsed < STALL + 30, f"took {elapsed:.0f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_cluster_without_workers_fails_naming_it(tmp_path):
    dump = generate_dump(tmp_path / "dump", rows=2_000, classes=3, shards=2, seed=8)
    with dask_cluster(tmp_path / "cluster", n_workers=1, nanny=False) as cluster:
        cluster.workers[0].stop()
        with Client(cluster.address, timeout="20s") as client:
            wait_until(lambda: not client.scheduler_info()["workers"], 30, "the scheduler to drop the stopped worker")
            started = time.monotonic()
            with pytest.raises(InfrastructureError, match=f"made no progress for {STALL} s: it has no workers"):
                evaluate(EvalConfig(sources=[dump.root], stall_timeout=STALL), client)
            assert time.monotonic() - started < STALL + 10


RELEASE = threading.Event()


def blocked_task() -> None:
    """A task that finishes only when the test lets it (workers run in this process)."""
    RELEASE.wait(60)


@pytest.mark.slow
def test_a_blocked_task_fails_the_wait_and_is_cancelled():
    with dask_client(None) as client:
        try:
            future = client.submit(blocked_task, pure=False)
            with pytest.raises(InfrastructureError, match=r"made no progress for 1 s with no worker paused \(1 running\): "
                                                          r"a task is blocked.* raise stall_timeout"):
                wait_all([future], lambda f: None, stall_timeout=1)
            assert future.cancelled()
        finally:
            RELEASE.set()


def test_stall_timeout_is_validated(tmp_path):
    with pytest.raises(UsageError, match="key 'stall_timeout': Input should be greater than or equal to 1"):
        build_config(EvalConfig, write_yaml(tmp_path / "c.yaml", {"stall_timeout": 0}))
