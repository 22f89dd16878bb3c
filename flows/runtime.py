"""What a command sets up before it starts Prefect; importing xent sets up nothing."""

from __future__ import annotations

import os
import tempfile
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
