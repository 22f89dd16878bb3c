"""Prefect flows for the three uses: ad-hoc evaluation, nightly evaluation into a
history of reports, and drift monitoring against a reference.

Each flow run owns one Dask cluster (a LocalCluster, or an existing scheduler from
the config or $DASK_SCHEDULER_ADDRESS) and hands its client to the tasks; Prefect's
Dask task runner is not used because it starts a Prefect server per worker when
there is no server. Prefect itself needs no server: without PREFECT_API_URL it
runs against a temporary local one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed

from . import adhoc
from .config import DriftConfig, EvalConfig, NightlyConfig, NightlySource, build_config
from .drift import DriftReport, breach_error, compare, describe_breach, drift_steps, drift_tables, dump_label
from .engine import dask_client
from .errors import DataError, DriftBreach, InfrastructureError, XentError, infrastructure_cause
from .report import build_tables, report_metadata
from .sources import InputFile, filesystem, fingerprint

def _transient(task, task_run, state) -> bool:
    """Retry network hiccups, not data errors (a missing column stays missing) nor a
    full or read-only disk."""
    try:
        state.result()
    except InfrastructureError as error:
        return error.transient
    except XentError:
        return False
    except Exception as error:
        cause = infrastructure_cause(error)
        return cause is None or cause[1]
    return False


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient}
METRICS_FILE = "metrics.parquet"
TABLES_FOLDER = "_tables"  # pyarrow's dataset discovery skips "_" folders: REPORT_ROOT reads as metrics only


# --------------------------------------------------------------------------- tasks


find_inputs = task(cache_policy=NONE, **IO_RETRIES)(adhoc.find_inputs)
evaluate_on_cluster = task(cache_policy=NONE)(adhoc.evaluate_on_cluster)
write_tables = task(cache_policy=NONE, **IO_RETRIES)(adhoc.write_tables)


@task(cache_policy=NONE)
def compare_on_cluster(config: DriftConfig, client: Client) -> DriftReport:
    """Drift metrics of the current dump against the reference."""
    return compare(config, client)


@task(cache_policy=NONE)
def publish_artifact(key: str, rows: list[dict], description: str) -> None:
    """Attach a table to the flow run in Prefect's UI."""
    create_table_artifact(key=key, table=rows, description=description)


# --------------------------------------------------------------------------- helpers


def _artifact_key(*parts: str) -> str:
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")[:100]


def _class_rows(per_class: pa.Table) -> list[dict]:
    columns = ["class", "class_name", "n", "ce_mean", "ce_std", "accuracy", "entropy_mean"]
    rows = [r for r in per_class.select([*columns, "overall"]).to_pylist() if r.pop("overall")]
    return [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def _drift_rows(report: DriftReport) -> list[dict]:
    return [
        {
            "slice": "overall" if row["key"] is None else ",".join(f"{k}={v}" for k, v in zip(report.slice_by, row["key"])),
            "metric": row["metric"],
            "value": round(row["value"], 6),
            "threshold": row["threshold"],
            "breached": row["breached"],
        }
        for row in report.rows
        if row["class"] is None
    ]


def _breach_state(report: DriftReport, result: Any) -> Any:
    error = breach_error(report)
    if error is None:
        return result
    logger = get_run_logger()
    for row in report.breaches:
        logger.warning("drift: %s", describe_breach(row, report.slice_by))
    return Failed(message=str(error), data=error)


_drift_tables = drift_tables  # the nightly flow's name for it


# --------------------------------------------------------------------------- ad hoc


@flow(name="xent-eval", log_prints=False)
def eval_flow(config: EvalConfig, out: str) -> dict[str, str]:
    """Evaluate a prediction dump into per-class and per-slice reports under `out`."""
    paths, tables, inputs = adhoc.eval_steps(config, out, (find_inputs, evaluate_on_cluster, write_tables))
    publish_artifact(_artifact_key("xent-eval", *[i.name for i in inputs[:1]]), _class_rows(tables["per_class"]),
                     f"Per-class cross-entropy ({config.units}) of {len(inputs)} shards; report in {out}")
    return paths


# --------------------------------------------------------------------------- drift


def _drift_run_name() -> str:
    from prefect.runtime import flow_run

    config = DriftConfig.model_validate(flow_run.parameters["config"])
    return f"xent-drift {dump_label(config.sources)} vs {dump_label(config.reference)}"


@flow(name="xent-drift", flow_run_name=_drift_run_name, log_prints=False)
def drift_flow(config: DriftConfig, out: str) -> Any:
    """Compare the current dump with the reference; a breached threshold fails the run."""
    paths, report = drift_steps(config, out, (compare_on_cluster, write_tables))
    # One artifact key per current dump (its name and content digest): runs on other
    # dumps never replace this one's latest table.
    key = _artifact_key("xent-drift", dump_label(config.sources)[:60], report.current.fingerprint["digest"][:8])
    publish_artifact(key, _drift_rows(report), f"Drift ({config.units}) of {config.sources} against {config.reference}")
    return _breach_state(report, {"paths": paths, "breaches": [describe_breach(r, report.slice_by) for r in report.breaches]})


# --------------------------------------------------------------------------- nightly


def run_folder(root: str, run_date: str, source: str) -> str:
    return f"{root.rstrip('/')}/run_date={run_date}/source={source}"


def metrics_table(tables: dict[str, pa.Table], slice_by: list[str]) -> pa.Table:
    """Every metric of a run in one long table with the same columns for every source,
    so that one read of REPORT_ROOT stacks all runs."""
    records = []

    def slice_text(row):
        return None if row["overall"] else ",".join(f"{name}={row[name]}" for name in slice_by)

    skip = {"overall", "class", "class_name", "n", *slice_by}
    for row in tables["per_class"].to_pylist():
        for metric, value in row.items():
            if metric not in skip:
                records.append(("class", slice_text(row), row["class"], row["class_name"], metric, value, row["n"], None, None))
    for row in tables["summary"].to_pylist():
        for metric, value in row.items():
            if metric not in skip and not isinstance(value, list):
                records.append(("slice", slice_text(row), None, None, metric, value, row["n"], None, None))
    if "drift" in tables:
        for row in tables["drift"].to_pylist():
            records.append(("drift", slice_text(row), row["class"], None, row["metric"], row["value"], row["n"], row["threshold"], row["breached"]))
    names = ["scope", "slice", "class", "class_name", "metric", "value", "n", "threshold", "breached"]
    types = [pa.string(), pa.string(), pa.int32(), pa.string(), pa.string(), pa.float64(), pa.int64(), pa.float64(), pa.bool_()]
    columns = list(zip(*records)) if records else [[] for _ in names]
    return pa.table({n: pa.array(list(c), type=t) for n, c, t in zip(names, columns, types)})


def _run_digest(config: EvalConfig, inputs: list[InputFile], reference: list[InputFile] | None, drift: dict) -> str:
    payload = {
        "config": config.model_dump(mode="json"),
        "inputs": fingerprint(inputs)["digest"],
        "reference": fingerprint(reference)["digest"] if reference else None,
        "drift": drift,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _stored_digest(folder: str, storage_options: dict[str, Any]) -> str | None:
    fs, path = filesystem(f"{folder}/{METRICS_FILE}", storage_options)
    try:
        with fs.open(path, "rb") as handle:
            metadata = pq.read_schema(handle).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowException):
        return None
    return metadata.get(b"xent.run_digest", b"").decode() or None


@task(cache_policy=NONE, **IO_RETRIES)
def stored_digest(folder: str, storage_options: dict[str, Any]) -> str | None:
    """The digest of the report already in `folder`, if any."""
    return _stored_digest(folder, storage_options)


def _reference_paths(config: NightlyConfig, source: NightlySource, run_date: str) -> list[str] | None:
    if source.reference is None:
        return None
    if source.reference == "previous":
        previous = (dt.date.fromisoformat(run_date) - dt.timedelta(days=1)).isoformat()
        return [p.format(date=previous) for p in source.paths]
    return [p.format(date=run_date) for p in source.reference]


def nightly_source(config: NightlyConfig, source: NightlySource, run_date: str, client: Client) -> dict[str, Any]:
    """Evaluate one source for one date into the history; skipped when the inputs,
    the reference and the settings are those of the report already there."""
    logger = get_run_logger()
    eval_config = config.eval_config(source, run_date)
    folder = run_folder(config.report_root, run_date, source.name)
    result = {"source": source.name, "run_date": run_date, "folder": folder, "skipped": False, "breaches": []}
    inputs = find_inputs(eval_config)
    reference_paths = _reference_paths(config, source, run_date)
    reference_inputs = find_inputs(eval_config.model_copy(update={"sources": reference_paths})) if reference_paths else None
    digest = _run_digest(eval_config, inputs, reference_inputs, config.drift.model_dump(mode="json"))
    if stored_digest(folder, eval_config.storage_options) == digest:
        logger.info("%s %s: inputs unchanged since the stored report; skipped", source.name, run_date)
        return {**result, "skipped": True}
    evaluation = evaluate_on_cluster(eval_config, inputs, client)
    tables = adhoc.with_metadata(build_tables(evaluation), evaluation)
    if reference_paths:
        drift_config = DriftConfig.model_validate(
            {**eval_config.model_dump(), "reference": reference_paths, "drift": config.drift.model_dump()}
        )
        report = compare_on_cluster(drift_config, client)
        tables.update(_drift_tables(report, drift_config))
        result["breaches"] = [describe_breach(row, report.slice_by) for row in report.breaches]
        for message in result["breaches"]:
            logger.warning("drift: %s %s: %s", source.name, run_date, message)
    metrics = metrics_table(tables, eval_config.slice_by)
    metrics = metrics.replace_schema_metadata({**report_metadata(evaluation), b"xent.run_digest": digest.encode()})
    files = {METRICS_FILE.removesuffix(".parquet"): metrics, **{f"{TABLES_FOLDER}/{k}": v for k, v in tables.items()}}
    write_tables(files, folder, eval_config.storage_options)
    publish_artifact(_artifact_key("xent-nightly", source.name, run_date), _class_rows(tables["per_class"]),
                     f"{source.name} on {run_date}: per-class cross-entropy ({eval_config.units}); history in {config.report_root}")
    return result


def _today(config: NightlyConfig) -> str:
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(config.schedule.timezone)).date().isoformat()


@flow(name="xent-nightly", log_prints=False)
def nightly_flow(config_path: str, run_date: str | None = None, end_date: str | None = None) -> Any:
    """Evaluate every source for `run_date` (default: today in the schedule's timezone),
    or for each date from `run_date` to `end_date` inclusive (a backfill)."""
    config = build_config(NightlyConfig, config_path)
    first = dt.date.fromisoformat(run_date or _today(config))
    last = dt.date.fromisoformat(end_date) if end_date else first
    if last < first:
        raise DataError(f"backfill range is empty: {first} is after {last}")
    dates = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    with dask_client(config.scheduler) as client:
        results = [nightly_source(config, source, day, client) for day in dates for source in config.sources]
    lines = [f"# xent nightly {dates[0]} to {dates[-1]}", ""]
    for r in results:
        status = "unchanged, skipped" if r["skipped"] else f"written to {r['folder']}"
        lines.append(f"- {r['source']} {r['run_date']}: {status}" + "".join(f"\n  - DRIFT {b}" for b in r["breaches"]))
    create_markdown_artifact(key=_artifact_key("xent-nightly-summary"), markdown="\n".join(lines))
    breaches = [f"{r['source']} {r['run_date']}: {b}" for r in results for b in r["breaches"]]
    if breaches:
        message = "drift threshold breached: " + "; ".join(breaches)
        return Failed(message=message, data=DriftBreach(message))
    return Completed(message=f"{len(results)} source-date report(s) up to date", data=results)
