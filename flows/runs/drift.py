"""The drift run as plain steps, free of Prefect.

``xent drift --no-prefect`` runs them directly; the xent-drift flow in
``flows.pipelines`` runs the same steps as tasks.
"""

from __future__ import annotations

from typing import Callable

from ..config import DriftConfig
from ..engine import dask_client
from ..errors import UsageError
from ..monitor.compare import DriftReport, compare, drift_tables
from ..report.writing import write_tables_atomically


DriftSteps = tuple[Callable, Callable]  # compare, write tables; or their Prefect tasks
PLAIN_STEPS: DriftSteps = (compare, write_tables_atomically)


def drift_steps(config: DriftConfig, out: str, steps: DriftSteps = PLAIN_STEPS) -> tuple[dict[str, str], DriftReport]:
    """Compare the current dump with the reference and write ``drift.parquet`` under
    `out`; returns (paths, report). ``xent drift --no-prefect`` runs this directly,
    the xent-drift flow with its steps as tasks; neither imports Prefect here."""
    if not config.reference:
        raise UsageError("no reference dump given (--reference or 'reference' in the config)")
    run, write = steps
    with dask_client(config.scheduler) as client:
        report = run(config, client)
    return write(drift_tables(report, config), out, config.storage_options), report
