"""The compare run as plain steps, free of Prefect.

``xent compare --no-prefect`` runs them directly; the xent-compare flow in
``flows.pipelines`` runs the same steps as tasks. Both compare through the Python
API (:func:`flows.api.compare_config`).
"""

from __future__ import annotations

from typing import Callable

from distributed import Client

from ..api import CompareResult, compare_config
from ..config import CompareConfig
from ..engine import Progress, dask_client
from ..errors import UsageError
from .adhoc import write_report


def compare_on_cluster(config: CompareConfig, client: Client, progress: Progress | None = None) -> CompareResult:
    """Paired differences of the candidate against the baseline, and the gates' breaches."""
    return compare_config(config, client=client, progress=progress or False)


CompareSteps = tuple[Callable, Callable]  # compare, write; or their Prefect tasks
PLAIN_STEPS: CompareSteps = (compare_on_cluster, write_report)


def compare_steps(config: CompareConfig, out: str, steps: CompareSteps = PLAIN_STEPS,
                  progress: Progress | None = None) -> tuple[dict[str, str], CompareResult]:
    """Compare the candidate (``sources``) with the baseline and write ``compare.parquet``
    under `out`, breached gates or not; returns (paths, result). Raising for a breach
    is the caller's: ``result.raise_for_breach()``."""
    if not config.baseline:
        raise UsageError("no baseline dump given (--baseline or 'baseline' in the config)")
    run, write = steps
    with dask_client(config.scheduler) as client:
        result = run(config, client, progress)
    return write(result, out), result
