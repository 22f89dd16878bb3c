"""`xent serve` end to end: a real `prefect server start` on 127.0.0.1, `xent serve`
registering the nightly deployment with the config's cron schedule, a run of that
deployment created through the API and executed by the served process, and the
report it writes into the history.

Every child process runs with its own PREFECT_HOME (a temporary folder) and is
stopped in `finally`: `xent serve` first (SIGINT, then SIGTERM/SIGKILL), the server
last (a runner whose server went away keeps retrying its API calls).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from support import LOOPBACK, ServerProcess, cli_env, free_port, run_cli, start_process, wait_until
from flows.generate import generate_dump

RUN_DATE = "2026-11-23"
SOURCE = "synthetic"
DEPLOYMENT = "xent-serve-test"
FLOW = "xent-nightly"
CRON = "0 2 * * *"
TIMEZONE = "UTC"
ROWS, CLASSES = 2000, 3

# Bounded waits. On an idle machine the server answers in ~10 s, the deployment shows
# up ~5 s after `xent serve` starts, and the run takes ~15 s; a loaded one needs
# about twice that. Together with the stops they stay well below the test timeout.
BUDGET = 150  # seconds for everything up to the finished run
SERVER_START = 75
DEPLOYMENT_APPEARS = 60
RUN_FINISHES = 120
SERVE_STOP = 15  # after SIGINT, before SIGTERM
SERVER_STOP = 10


class Deadline:
    """One budget shared by the phases of a test, so their waits cannot add up."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, at_most: float) -> float:
        return max(1.0, min(at_most, self.end - time.monotonic()))


def xent_command() -> list[str]:
    script = Path(sys.executable).parent / "xent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]


def prefect_command() -> list[str]:
    script = Path(sys.executable).parent / "prefect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect"]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_prefect_server(folder: Path, env: dict[str, str], deadline: Deadline, attempts: int = 3) -> tuple[ServerProcess, str]:
    """`prefect server start` on a free loopback port, without its background services:
    `xent serve` polls the API for runs due, so no server-side scheduler is needed.
    Returns the process and its API URL once /api/health answers."""
    errors = []
    for attempt in range(attempts):
        port = free_port()
        server = start_process(
            "prefect server",
            [*prefect_command(), "server", "start", "--host", LOOPBACK, "--port", str(port), "--no-services"],
            folder / f"server-{attempt}.log", env, cwd=folder,
        )
        url = f"http://{LOOPBACK}:{port}/api"
        try:
            wait_until(lambda: server.check_alive() or healthy(url), deadline.left(SERVER_START),
                       "the Prefect server's /api/health", interval=0.5)
            return server, url
        except RuntimeError as error:  # exited: most likely the port was taken meanwhile
            errors.append(str(error))
            server.stop(SERVER_STOP)
        except BaseException:
            server.stop(SERVER_STOP)
            raise
    raise RuntimeError(f"the Prefect server did not start in {attempts} attempts:\n" + "\n".join(errors))


def stop_serve(serve: ServerProcess) -> int | None:
    """SIGINT (what Ctrl-C sends), then SIGTERM/SIGKILL if it does not exit in time.
    Returns the exit code after SIGINT, or None if it had to be forced."""
    code = None
    if serve.alive():
        serve.process.send_signal(signal.SIGINT)
        try:
            code = serve.process.wait(SERVE_STOP)
        except subprocess.TimeoutExpired:
            pass
    else:
        code = serve.process.returncode
    serve.stop(5)
    return code


def write_nightly_config(folder: Path) -> tuple[Path, Path]:
    dumps = folder / "dumps"
    generate_dump(dumps / f"date={RUN_DATE}", rows=ROWS, classes=CLASSES, shards=2)
    report_root = folder / "reports"
    config = {
        "report_root": str(report_root),
        "schedule": {"cron": CRON, "timezone": TIMEZONE},
        "deployment_name": DEPLOYMENT,
        "sources": [{"name": SOURCE, "paths": [str(dumps / "date={date}")]}],
    }
    path = folder / "nightly.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, report_root


def test_serve_needs_prefect_api_url(tmp_path):
    config, _ = write_nightly_config(tmp_path)
    home = tmp_path / "prefect-home"
    home.mkdir()
    result = run_cli(["serve", "--config", str(config)], env=cli_env(home), timeout=90, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PREFECT_API_URL" in result.stderr, result.stderr
    assert result.stderr.startswith("xent: error:"), result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_serve_schedules_and_runs_nightly_flow(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    deadline = Deadline(BUDGET)
    config, report_root = write_nightly_config(tmp_path)
    home = tmp_path / "prefect-home"
    home.mkdir()
    serve: ServerProcess | None = None
    server: ServerProcess | None = None

    def logs() -> str:
        return "\n".join(f"--- {p.name} log:\n{p.log_tail(3000)}" for p in (server, serve) if p is not None)

    try:
        server, api_url = start_prefect_server(tmp_path, cli_env(home), deadline)
        # Relative config path on purpose: the deployment must carry its absolute path.
        # The runner polls every 2 s instead of 10 to pick the run up sooner.
        serve = start_process(
            "xent serve", [*xent_command(), "serve", "--config", config.name], tmp_path / "serve.log",
            cli_env(home, PREFECT_API_URL=api_url, PREFECT_RUNNER_POLL_FREQUENCY="2"), cwd=tmp_path,
        )

        # Fewer, shorter client retries than the defaults (5, 60 s) keep each call bounded.
        client_settings = {PREFECT_API_URL: api_url, PREFECT_CLIENT_MAX_RETRIES: 2, PREFECT_API_REQUEST_TIMEOUT: 20}
        with temporary_settings(updates=client_settings), get_client(sync_client=True) as client:

            def deployment():
                serve.check_alive()
                try:
                    return client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
                except ObjectNotFound:
                    return None

            try:
                found = wait_until(deployment, deadline.left(DEPLOYMENT_APPEARS), "the served deployment", interval=0.5)
            except (TimeoutError, RuntimeError) as error:
                pytest.fail(f"{error}\n{logs()}")
            assert found.name == DEPLOYMENT
            assert os.path.realpath(found.parameters["config_path"]) == os.path.realpath(config)
            assert os.path.isabs(found.parameters["config_path"])
            assert len(found.schedules) == 1, found.schedules
            schedule = found.schedules[0]
            assert schedule.active
            assert schedule.schedule.cron == CRON
            assert schedule.schedule.timezone == TIMEZONE

            # Only run_date is given: config_path comes from the deployment, as on a scheduled run.
            created = client.create_flow_run_from_deployment(found.id, parameters={"run_date": RUN_DATE})

            def finished():
                run = client.read_flow_run(created.id)
                if run.state is not None and run.state.is_final():
                    return run
                serve.check_alive()
                return None

            try:
                run = wait_until(finished, deadline.left(RUN_FINISHES), "the flow run to finish", interval=1.0)
            except (TimeoutError, RuntimeError) as error:
                state = client.read_flow_run(created.id).state
                pytest.fail(f"{error} (state: {state!r})\n{logs()}")

        assert run.state.is_completed(), f"{run.state!r}: {run.state.message}\n{logs()}"
        assert run.state.name == "Completed"
        assert run.deployment_id == found.id
        assert run.parameters["run_date"] == RUN_DATE
        assert os.path.realpath(run.parameters["config_path"]) == os.path.realpath(config)

        folder = report_root / f"run_date={RUN_DATE}" / f"source={SOURCE}"
        assert (folder / "metrics.parquet").is_file(), sorted(str(p) for p in report_root.rglob("*"))
        tables = report_root.with_name(f"{report_root.name}-tables") / f"run_date={RUN_DATE}" / f"source={SOURCE}"
        assert (tables / "per_class.parquet").is_file()
        assert (tables / "summary.parquet").is_file()
        summary = pq.read_table(tables / "summary.parquet").to_pylist()
        assert [row["n"] for row in summary if row["overall"]] == [ROWS]
        per_class = pq.read_table(tables / "per_class.parquet")
        assert sorted(per_class.column("class").to_pylist()) == list(range(CLASSES))
        assert sum(per_class.column("n").to_pylist()) == ROWS
        metrics = pq.read_table(folder / "metrics.parquet")
        assert metrics.num_rows > 0 and set(metrics.column("scope").to_pylist()) == {"class", "slice"}

        # Ctrl-C ends `xent serve` cleanly, while its server is still up.
        assert stop_serve(serve) == 0, logs()
    finally:
        # serve first: stopping the server under a live runner leaves it retrying.
        if serve is not None:
            stop_serve(serve)
        if server is not None:
            server.stop(SERVER_STOP)
