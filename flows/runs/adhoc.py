"""The ad-hoc evaluation as plain steps, free of Prefect.

``xent eval --no-prefect`` runs them directly and never imports Prefect (about 0.8 s
of the command); the xent-eval flow in ``pipelines`` runs the same steps as tasks.
Both evaluate through the Python API (:mod:`flows.api`) and write with ``Report.write``.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa
from distributed import Client

from ..api import Report, evaluate_config
from ..config import EvalConfig
from ..engine import Progress, dask_client
from ..inputs.sources import InputFile, list_inputs
from ..report.writing import write_tables_atomically


def find_inputs(config: EvalConfig) -> list[InputFile]:
    """List and fingerprint the shards."""
    return list_inputs(config.sources, config.storage_options)


def evaluate_on_cluster(config: EvalConfig, inputs: list[InputFile], client: Client,
                        progress: Progress | None = None) -> Report:
    """Reduce the shards to a report on the Dask cluster."""
    return evaluate_config(config, client=client, progress=progress or False, inputs=inputs)


def write_report(report: Any, out: str) -> dict[str, str]:
    """Write a report (or a drift or compare result) atomically."""
    return report.write(out)


def write_tables(tables: dict[str, pa.Table], out: str, storage_options: dict[str, Any],
                 files: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write report tables (and `files`, such as ``report.html``) atomically."""
    return write_tables_atomically(tables, out, storage_options, files)


Steps = tuple[Callable, Callable, Callable]  # find_inputs, evaluate_on_cluster, write_report or their tasks
PLAIN_STEPS: Steps = (find_inputs, evaluate_on_cluster, write_report)


def eval_steps(
    config: EvalConfig, out: str, steps: Steps = PLAIN_STEPS, progress: Progress | None = None
) -> tuple[dict[str, str], dict[str, pa.Table], list[InputFile]]:
    """Evaluate the dump into reports under `out`; returns (paths, tables, inputs)."""
    find, run, write = steps
    inputs = find(config)
    with dask_client(config.scheduler) as client:
        report = run(config, inputs, client, progress)
    return write(report, out), report.tables, inputs
