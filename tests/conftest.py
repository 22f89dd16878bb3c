"""Fixtures and hooks shared by the test modules; the helpers they use live in
support.py. Importing this module sets nothing up: Prefect's environment and the
Hypothesis profile are applied when pytest configures the session, and every server
or cluster starts when a test first asks for it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import settings

# When this session started: the summary lists the screenshots written since.
_SESSION_STARTED = pytest.StashKey[float]()


def pytest_configure(config):
    from flows.runtime import prefect_environment

    # In-process flow runs get the environment the xent command sets before Prefect starts.
    prefect_environment()
    # Hypothesis profiles, chosen with HYPOTHESIS_PROFILE: "ci" (default) is reproducible
    # and modest, "dev" searches harder. Tests set no max_examples of their own.
    settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True)
    settings.register_profile("dev", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    config.stash[_SESSION_STARTED] = time.time()
    # A background job of a non-interactive shell (as a CI runner may start this) begins
    # with SIGINT ignored, and children inherit that: the tests that press Ctrl-C on a
    # child (test_atomic, test_serve) would see it do nothing. Take the usual handler back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)



def pytest_collection_modifyitems(config, items):
    # Starting the Prefect test server takes 11 s or more (measured with --durations),
    # so every test that needs it is slow.
    for item in items:
        if "prefect_harness" in item.fixturenames:
            item.add_marker(pytest.mark.slow)

@pytest.fixture(scope="session")
def client():
    """One local Dask cluster (worker threads in this process) for the session's
    in-process evaluations. Tests that kill workers, cap their memory or block them
    start their own (support.dask_cluster, or dask_client inside the test)."""
    from flows.engine import dask_client

    with dask_client(None) as running:
        yield running


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the session's in-process flow runs."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # The heartbeat costs about a second per flow run; these runs cannot crash unseen.
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """List the page screenshots this run wrote (tests/browser.py), so anyone can look at them."""
    from browser import SCREENSHOTS

    shots = sorted(p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= config.stash[_SESSION_STARTED])
    if shots:
        terminalreporter.write_sep("-", f"{len(shots)} report page screenshots")
        for shot in shots:
            terminalreporter.write_line(str(shot.relative_to(Path.cwd())) if shot.is_relative_to(Path.cwd()) else str(shot))
