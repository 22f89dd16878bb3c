"""xent on a real Dask cluster: `dask scheduler` and `dask worker` processes on
127.0.0.1, through the API and the CLI, and with a worker killed mid-run. Reports
must equal the in-process LocalCluster's (counts exactly, numbers to 1e-12) and the
float64 reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client

from support import assert_report_matches, assert_same_report, cli_env, dask_cluster, expected_report, run_cli, wait_until
from flows.config import EvalConfig
from flows.engine import dask_client, evaluate
from flows.generate import generate_dump
from flows.api import Report
from oracle import load_arrays

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

SLICE_BY = ("model",)
PIECE = "evaluate_piece-"  # key prefix of the per-piece tasks (pure=False keys: name-uuid)


def read_report(paths: dict[str, str]) -> dict[str, pa.Table]:
    return {name: pq.read_table(path) for name, path in paths.items()}


def run_eval(address: str | None, config: EvalConfig, out: Path) -> dict[str, pa.Table]:
    with dask_client(address) as client:
        evaluation = evaluate(config, client)
    return read_report(Report(evaluation).write(str(out)))


def reference(dump) -> tuple[dict, dict]:
    return expected_report(load_arrays(dump), "logits", slice_by=SLICE_BY)


def piece_records(client: Client) -> list[dict]:
    """Task-stream records (finished tasks) of the per-piece tasks, oldest first."""
    return [r for r in client.get_task_stream() if str(r["key"]).startswith(PIECE)]


@pytest.fixture(scope="module", autouse=True)
def no_ambient_scheduler():
    """`dask_client(None)` must mean the in-process LocalCluster here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One scheduler and two one-thread workers (with nannies), shared by the module."""
    with dask_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2, nanny=True) as cluster:
        with Client(cluster.address, timeout="20s") as monitor:
            monitor.get_task_stream()  # start recording finished tasks
        yield cluster


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    return generate_dump(tmp_path_factory.mktemp("dist") / "dump", rows=200_000, classes=10, shards=24,
                         slices={"model": ["a", "b", "c"]}, seed=21)


@pytest.fixture(scope="module")
def local_report(dump, tmp_path_factory):
    return run_eval(None, EvalConfig(sources=[dump.root], slice_by=list(SLICE_BY)), tmp_path_factory.mktemp("local") / "r")


def test_cluster_report_equals_local_cluster_and_reference(cluster, dump, local_report, tmp_path):
    with Client(cluster.address, timeout="20s") as monitor:
        seen = {r["key"] for r in piece_records(monitor)}
        report = run_eval(cluster.address, EvalConfig(sources=[dump.root], slice_by=list(SLICE_BY)), tmp_path / "r")
        records = [r for r in piece_records(monitor) if r["key"] not in seen]
    # The work really ran on the cluster, one task per shard, spread over both workers.
    assert len(records) == len(dump.files)
    assert len({r["worker"] for r in records}) == 2
    assert_same_report(report, local_report, rtol=1e-12)
    assert_report_matches(report, *reference(dump), slice_by=SLICE_BY)
    metadata, local_metadata = report["summary"].schema.metadata, local_report["summary"].schema.metadata
    assert metadata[b"xent.fingerprint"] == local_metadata[b"xent.fingerprint"]
    overall = report["summary"].to_pylist()[-1]
    assert overall["overall"] and overall["n"] == dump.rows


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


# The Prefect flow (the default) with --scheduler, the plain steps with the variable:
# both reach the cluster through the same dask_client; Prefect costs ~15 s a run.
@pytest.mark.parametrize("how, prefect", [("--scheduler", True), ("DASK_SCHEDULER_ADDRESS", False)])
def test_cli_runs_on_the_cluster(cluster, dump, local_report, prefect_home, tmp_path, how, prefect):
    out = tmp_path / "report"
    args = ["eval", dump.root, "--out", str(out), "--slice-by", ",".join(SLICE_BY)]
    args += [] if prefect else ["--no-prefect"]
    if how == "--scheduler":
        args += ["--scheduler", cluster.address]
        env = cli_env(prefect_home)
    else:
        env = cli_env(prefect_home, DASK_SCHEDULER_ADDRESS=cluster.address)
    with Client(cluster.address, timeout="20s") as monitor:
        seen = {r["key"] for r in piece_records(monitor)}
        result = run_cli(args, env=env, timeout=240, cwd=tmp_path)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        records = [r for r in piece_records(monitor) if r["key"] not in seen]
    assert len(records) == len(dump.files), "the CLI did not run its tasks on the given scheduler"
    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.json", "confusion.parquet", "per_class.parquet", "report.html", "summary.parquet"]
    report = {name: pq.read_table(out / f"{name}.parquet") for name in ("per_class", "summary", "confusion")}
    assert_same_report(report, local_report, rtol=1e-12)
    config = json.loads(report["summary"].schema.metadata[b"xent.config"])
    assert config["scheduler"] == (cluster.address if how == "--scheduler" else None)


# --------------------------------------------------------------------------- a worker killed mid-run


@pytest.fixture
def kill_dump(tmp_path_factory):
    return generate_dump(tmp_path_factory.mktemp("kill") / "dump", rows=600_000, classes=10, shards=96,
                         slices={"model": ["a", "b", "c"]}, seed=23)


def test_worker_killed_mid_run_still_gives_the_right_report(kill_dump, tmp_path):
    settings = dict(sources=[kill_dump.root], slice_by=list(SLICE_BY), batch_logits=20_000, split_every=4)
    expected = run_eval(None, EvalConfig(**settings), tmp_path / "local")
    # Its own cluster, without nannies: the killed worker stays dead and the survivor
    # must redo its lost and interrupted pieces.
    with ThreadPoolExecutor(1) as pool, dask_cluster(tmp_path / "cluster", n_workers=2, nanny=False) as cluster, \
            Client(cluster.address, timeout="20s") as monitor:
        pids = monitor.run(os.getpid)
        by_pid = {w.pid: w for w in cluster.workers}
        assert set(pids.values()) == set(by_pid), "worker processes are not the ones started"
        victim_address = sorted(pids)[0]
        victim = by_pid[pids[victim_address]]
        monitor.get_task_stream()  # start recording
        running = pool.submit(run_eval, cluster.address, EvalConfig(**settings), tmp_path / "remote")
        victim_work: set[str] = set()

        def victim_busy() -> bool:
            """The victim alone holds a finished piece and is running another."""
            if running.done():
                raise AssertionError(f"the run ended before a worker could be killed: {running.exception()!r}")
            processing = {k for k in monitor.processing().get(victim_address, ()) if str(k).startswith(PIECE)}
            held = {k for k, where in monitor.who_has().items() if str(k).startswith(PIECE) and list(where) == [victim_address]}
            victim_work.clear()
            victim_work.update(processing | held)
            return bool(processing and held)

        wait_until(victim_busy, 120, "the victim worker to finish one piece and start another", interval=0.01)
        os.kill(victim.pid, signal.SIGKILL)
        done_at_kill = len(piece_records(monitor))
        try:
            victim.process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("the killed worker is still running")
        assert victim.process.returncode == -signal.SIGKILL
        assert done_at_kill < len(kill_dump.files) // 2, "killed too late to matter"

        report = running.result(timeout=180)
        workers = wait_until(lambda: list(monitor.scheduler_info()["workers"]) if len(monitor.scheduler_info()["workers"]) == 1 else None,
                             30, "the scheduler to drop the dead worker")
        assert workers != [victim_address]
        records = piece_records(monitor)

    # Every piece finished, and what the victim held or was running when it died was
    # done (again) by the survivor.
    assert {r["key"] for r in records} >= victim_work
    assert len({r["key"] for r in records}) == len(kill_dump.files)
    survivor_done = {r["key"] for r in records if r["worker"] == workers[0]}
    assert victim_work & survivor_done, "nothing of the killed worker's was redone"
    assert_same_report(report, expected, rtol=1e-12)
    assert_report_matches(report, *reference(kill_dump), slice_by=SLICE_BY)
    assert report["summary"].to_pylist()[-1]["n"] == kill_dump.rows
