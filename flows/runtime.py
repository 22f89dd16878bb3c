"""What a command sets up before it starts Prefect; importing xent sets up nothing."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path


def prefect_environment() -> None:
    """No telemetry; Prefect's state (its temporary server's database) under xent's own
    folder unless PREFECT_HOME is set. PREFECT_API_URL, when set, selects a real server."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server starts in ~10 s on an idle machine; a busy one needs longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if "PREFECT_HOME" not in os.environ:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        for home in (Path(data) / "xent" / "prefect", Path(tempfile.gettempdir()) / "xent-prefect"):
            try:
                home.mkdir(parents=True, exist_ok=True)  # Prefect does not create it
            except OSError:
                continue
            if os.access(home, os.W_OK):
                os.environ["PREFECT_HOME"] = str(home)
                break


# The cluster's own loggers: distributed's (scheduler, workers, client), tornado's and
# asyncio's ("Task was destroyed but it is pending!"). Their messages go to the cluster
# log file, never to the terminal, where the user reads one error line.
CLUSTER_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh")
_cluster_handler: logging.Handler | None = None


@functools.cache
def cluster_log_path() -> Path:
    """This process's cluster log: TMPDIR/xent-logs/cluster-YYYYMMDD-HHMMSS-PID.log."""
    return Path(tempfile.gettempdir()) / "xent-logs" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def send_cluster_logs_to_file() -> Path:
    """Route the cluster's loggers to `cluster_log_path()` (created on the first message)
    instead of their terminal handlers; returns the path."""
    global _cluster_handler
    path = cluster_log_path()
    if _cluster_handler is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _cluster_handler = logging.FileHandler(path, delay=True)
        _cluster_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in CLUSTER_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler is not _cluster_handler:
                logger.removeHandler(handler)
        if _cluster_handler not in logger.handlers:
            logger.addHandler(_cluster_handler)
        logger.propagate = False
    return path
