"""xent flows: everything that touches the world (Parquet, Dask, Prefect, config, CLI).

The numerics live in :mod:`xent_kernels`; this package reads shards, runs those
kernels on a Dask cluster, and writes reports.
"""

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("xent")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"


def _prefect_defaults() -> None:
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


_prefect_defaults()
