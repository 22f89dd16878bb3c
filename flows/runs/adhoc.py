"""The ad-hoc evaluation as plain steps, free of Prefect.

``xent eval --no-prefect`` runs them directly and never imports Prefect (about 0.8 s
of the command); the xent-eval flow in ``pipelines`` runs the same steps as tasks.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa
from distributed import Client

from ..config import EvalConfig
from ..engine import Evaluation, dask_client, evaluate
from ..inputs.sources import InputFile, list_inputs
from ..report.tables import build_tables, report_metadata
from ..report.writing import write_tables_atomically


def find_inputs(config: EvalConfig) -> list[InputFile]:
    """List and fingerprint the shards."""
    return list_inputs(config.sources, config.storage_options)


def evaluate_on_cluster(config: EvalConfig, inputs: list[InputFile], client: Client) -> Evaluation:
    """Reduce the shards to per-class statistics on the Dask cluster."""
    return evaluate(config, client, inputs=inputs)


def write_tables(tables: dict[str, pa.Table], out: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """Write report tables atomically."""
    return write_tables_atomically(tables, out, storage_options)


def with_metadata(tables: dict[str, pa.Table], evaluation: Evaluation) -> dict[str, pa.Table]:
    metadata = report_metadata(evaluation)
    return {name: t.replace_schema_metadata({**(t.schema.metadata or {}), **metadata}) for name, t in tables.items()}


Steps = tuple[Callable, Callable, Callable]  # find_inputs, evaluate_on_cluster, write_tables or their tasks
PLAIN_STEPS: Steps = (find_inputs, evaluate_on_cluster, write_tables)


def eval_steps(
    config: EvalConfig, out: str, steps: Steps = PLAIN_STEPS
) -> tuple[dict[str, str], dict[str, pa.Table], list[InputFile]]:
    """Evaluate the dump into reports under `out`; returns (paths, tables, inputs)."""
    find, run, write = steps
    inputs = find(config)
    with dask_client(config.scheduler) as client:
        evaluation = run(config, inputs, client)
    tables = with_metadata(build_tables(evaluation), evaluation)
    return write(tables, out, config.storage_options), tables, inputs
