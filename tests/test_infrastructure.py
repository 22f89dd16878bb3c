"""Failures of the machine, not of the data, end with exit 4 and one line naming the
resource: a full disk, a read-only output, an unreachable object store, a Dask
scheduler that is unreachable or lost mid-run. Each is caused for real."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from distributed import Client

from support import cli_env, dask_cluster, free_port, run_cli, start_process, wait_until, xent_command
from flows.generate import generate_dump
from flows.report.writing import read_manifest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def tmpfs(where: Path, size: str, read_only: bool = False):
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    return generate_dump(tmp_path_factory.mktemp("infra") / "dump", rows=3000, classes=4, shards=2, seed=4)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


def assert_infrastructure(result, *words: str) -> None:
    assert result.returncode == 4, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xent: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.slow
@needs_root
def test_disk_full_keeps_the_old_report_and_exits_4(dump, tmp_path, prefect_home):
    with tmpfs(tmp_path / "small", "4m") as disk:  # a report (page included) fits twice
        out = disk / "report"
        assert run_cli(["eval", dump.root, "--out", str(out), "--no-prefect"], cli_env(prefect_home)).returncode == 0
        before = read_manifest(str(out))
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        result = run_cli(["eval", dump.root, "--out", str(out), "--no-prefect"], cli_env(prefect_home))
        assert_infrastructure(result, f"cannot write {out}", "disk full")
        assert read_manifest(str(out)) == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "report"]


@pytest.mark.slow
@needs_root
def test_disk_full_while_redrawing_a_page_leaves_the_report_as_it_was(dump, tmp_path, prefect_home):
    """`xent report DIR` (the page into the folder, or --html elsewhere) on a full disk:
    exit 4, the old page and manifest untouched, no partial file left behind."""
    with tmpfs(tmp_path / "small", "4m") as disk:
        out = disk / "report"
        assert run_cli(["eval", dump.root, "--out", str(out), "--no-prefect"], cli_env(prefect_home)).returncode == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        result = run_cli(["report", str(out)], cli_env(prefect_home))
        assert_infrastructure(result, "cannot write", "disk full")
        result = run_cli(["report", str(out), "--html", str(disk / "pages" / "page.html")], cli_env(prefect_home))
        assert_infrastructure(result, "cannot write", "disk full")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p for p in disk.rglob("*") if p.is_file()) == sorted([disk / "filler", *(out / n for n in before)])


@pytest.mark.slow
@needs_root
def test_disk_full_mid_conversion_exits_4_and_leaves_nothing(tmp_path, capsys):
    """A conversion stages each shard as it fills: the disk filling up after some shards
    is exit 4 naming the output, with nothing at the path and no staging left."""
    import json

    import numpy as np

    from flows.cli import main

    rng = np.random.default_rng(5)
    source = tmp_path / "outputs.jsonl"
    with open(source, "w") as handle:
        for d in range(200):  # 20,000 tokens of random top-5 lists: about 1 MB of Parquet
            ids = rng.integers(0, 50_000, 101).tolist()
            logprobs = [None] + [{str(ids[i]): {"logprob": float(-rng.random()), "rank": 1},
                                  **{str(50_000 + j): {"logprob": float(-rng.random() - 1), "rank": j + 2} for j in range(4)}}
                                 for i in range(1, 101)]
            handle.write(json.dumps({"request_id": f"d{d}", "prompt_token_ids": ids, "prompt_logprobs": logprobs}) + "\n")
    with tmpfs(tmp_path / "small", "256k") as disk:
        out = disk / "dump"
        assert main(["convert", "vllm", str(source), "--out", str(out), "--rows-per-shard", "1000"]) == 4
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"cannot write {out}" in err and "disk full" in err, err
        assert list(disk.iterdir()) == []


@pytest.mark.slow
@needs_root
def test_read_only_output_exits_4(dump, tmp_path, prefect_home):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        out = disk / "report"
        result = run_cli(["eval", dump.root, "--out", str(out), "--no-prefect"], cli_env(prefect_home))
        assert_infrastructure(result, f"cannot write {out}", "read-only file system")


@pytest.mark.slow
def test_unreachable_object_store_exits_4(tmp_path, prefect_home):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = tmp_path / "s3.yaml"
    config.write_text(
        "storage_options:\n  key: testing\n  secret: testing\n"
        f"  client_kwargs: {{endpoint_url: '{endpoint}'}}\n  config_kwargs: {{retries: {{max_attempts: 1}}}}\n"
    )
    started = time.monotonic()
    result = run_cli(["eval", "s3://bucket/dump/", "--out", str(tmp_path / "out"), "--config", str(config), "--no-prefect"],
                     cli_env(prefect_home), timeout=180)
    assert_infrastructure(result, "cannot list s3://bucket/dump/", endpoint)
    assert time.monotonic() - started < 120
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unreachable_scheduler_exits_4(dump, tmp_path, prefect_home):
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_cli(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect", "--scheduler", address],
                     cli_env(prefect_home), timeout=120)
    assert_infrastructure(result, f"cannot reach the Dask scheduler at {address}")


@pytest.mark.slow
@pytest.mark.cluster
def test_scheduler_lost_mid_run_exits_4(tmp_path, prefect_home):
    dump = generate_dump(tmp_path / "dump", rows=400_000, classes=10, shards=64, seed=5)
    config = tmp_path / "small-batches.yaml"
    config.write_text("batch_logits: 20000\n")
    with dask_cluster(tmp_path / "cluster", n_workers=2) as cluster, Client(cluster.address, timeout="20s") as monitor:
        out = tmp_path / "out"
        run = start_process(
            "xent", [*xent_command(), "eval", dump.root, "--out", str(out), "--no-prefect",
                     "--scheduler", cluster.address, "--config", str(config)],
            tmp_path / "xent.log", cli_env(prefect_home), cwd=tmp_path,
        )
        try:
            wait_until(lambda: run.check_alive() or any(monitor.processing().values()), 120, "the run's first task")
            monitor.close()
            cluster.scheduler.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            run.process.wait(120)
            stopped = time.monotonic() - killed
        finally:
            run.stop()
    log = run.log_tail()
    assert run.process.returncode == 4, log
    lines = log.strip().splitlines()
    assert lines[-1].startswith(f"xent: error: lost the Dask scheduler at {cluster.address}"), log
    assert stopped < 60, f"took {stopped:.0f} s to notice"
    assert not out.exists()



def test_help_lists_every_exit_code_and_version_is_printed(prefect_home):
    result = run_cli(["--help"], cli_env(prefect_home))
    text = " ".join(result.stdout.split())
    for code in ("0 success", "1 data error", "2 usage or config error", "3 threshold breached", "4 infrastructure",
                 "5 internal error"):
        assert code in text, (code, text)
    version = run_cli(["--version"], cli_env(prefect_home))
    assert version.returncode == 0 and version.stdout.startswith("xent "), version
