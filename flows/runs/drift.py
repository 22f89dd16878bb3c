"""The drift run as plain steps, free of Prefect.

``xent drift --no-prefect`` runs them directly; the xent-drift flow in
``flows.pipelines`` runs the same steps as tasks. Both measure drift through the
Python API (:func:`flows.api.drift_config`).
"""

from __future__ import annotations

from typing import Callable

from distributed import Client

from ..api import DriftResult, drift_config
from ..config import DriftConfig
from ..engine import Progress, dask_client
from ..errors import UsageError
from ..monitor.drift import DriftReport
from .adhoc import write_report


def drift_on_cluster(config: DriftConfig, client: Client, progress: Progress | None = None) -> DriftResult:
    """Drift metrics of the current dump against the reference."""
    return drift_config(config, client=client, progress=progress or False)


DriftSteps = tuple[Callable, Callable]  # measure drift, write; or their Prefect tasks
PLAIN_STEPS: DriftSteps = (drift_on_cluster, write_report)


def drift_steps(config: DriftConfig, out: str, steps: DriftSteps = PLAIN_STEPS,
                progress: Progress | None = None) -> tuple[dict[str, str], DriftReport]:
    """Measure the current dump's drift from the reference and write ``drift.parquet`` under
    `out`; returns (paths, report). ``xent drift --no-prefect`` runs this directly,
    the xent-drift flow with its steps as tasks; neither imports Prefect here."""
    if not config.reference:
        raise UsageError("no reference dump given (--reference or 'reference' in the config)")
    run, write = steps
    with dask_client(config.scheduler) as client:
        result = run(config, client, progress)
    return write(result, out), result.report
