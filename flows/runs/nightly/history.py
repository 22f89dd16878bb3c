"""The nightly history: where each run's files go, the long metrics table, and reading
REPORT_ROOT back (the layout is in :mod:`flows.runs.nightly`)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ...config import NightlyConfig, sibling_tables_root
from ...errors import DataError, as_infrastructure_error
from ...inputs.sources import filesystem
from ...metadata import HISTORY_KEY, NIGHTLY_KEY
from ...report.page import render_history_html
from ...report.page.history import MAX_DATES
from ...report.metric_values import MetricValue, assemble
from ...report.tables import METRIC_FIELDS
from ...report.text import describe_breach
from ...report.writing import replace_file

METRICS_FILE = "metrics.parquet"
HISTORY_PAGE = "history.html"  # in the tables root


def run_folder(root: str, run_date: str, source: str) -> str:
    """The folder of one run under `root` (REPORT_ROOT or the tables root)."""
    return f"{root.rstrip('/')}/run_date={run_date}/source={source}"


def metrics_table(tables: dict[str, pa.Table], slice_by: Sequence[str]) -> pa.Table:
    """Every metric of a run in one long table: `scope` (class, slice, drift; gate rows
    are added by the run, see `gate_history`; a token report's summary rows are its
    slice rows, their `n` its tokens), the run's
    slice columns with their own types, then `METRIC_FIELDS`. Overall rows have
    ``overall = true`` and null slice columns; `lo` and `hi` are the metric's interval
    (null for counts and drift metrics); `breached` is false except for drift metrics
    above their threshold."""
    tokens = "token_summary" in tables  # a token report: its summary rows, n its tokens
    described = tables["token_summary" if tokens else "per_class"]
    schema = pa.schema([pa.field("scope", pa.string()), *(described.schema.field(name) for name in slice_by), *METRIC_FIELDS])
    kept = set(schema.names)

    def piece(table: pa.Table, scope: str, metric: str | None = None) -> pa.Table:
        rows = table.num_rows
        given = {"scope": pa.repeat(scope, rows), "breached": pa.repeat(False, rows)}
        if metric is not None:
            given.update(metric=pa.repeat(metric, rows), value=table.column(metric))
            if f"{metric}_lo" in table.column_names:
                given.update(lo=table.column(f"{metric}_lo"), hi=table.column(f"{metric}_hi"))
        given.update({name: table.column(name) for name in table.column_names if name in kept})
        if tokens and scope == "slice":
            given["n"] = table.column("tokens")
        return assemble(schema, given, rows)

    def metrics_of(table: pa.Table) -> list[str]:
        bounds = {f"{name}_{end}" for name in table.column_names for end in ("lo", "hi")}
        return [f.name for f in table.schema
                if f.name not in kept and f.name not in bounds and not pa.types.is_list(f.type)
                and not pa.types.is_boolean(f.type)]  # auc_exact: a flag, not a metric

    if tokens:
        pieces = [piece(described, "slice", m) for m in metrics_of(described)]
    else:
        pieces = [piece(described, "class", m) for m in metrics_of(described)]
        pieces += [piece(tables["summary"], "slice", m) for m in metrics_of(tables["summary"])]
    if "drift" in tables:  # already long; its kl_mean column repeats `value` on per-class rows
        pieces.append(piece(tables["drift"], "drift"))
    return pa.concat_tables(pieces)


def breach_messages(metrics: pa.Table, slice_by: Sequence[str]) -> list[str]:
    """One line per breached drift threshold in a metrics table (gate lines are in its
    ``xent.gate`` metadata)."""
    messages = []
    for row in metrics.filter(pc.field("breached") & (pc.field("scope") != "gate")).to_pylist():
        messages.append(describe_breach(MetricValue.from_row(row, slice_by), tuple(slice_by)))
    return messages


def history_table(root: str, storage_options: dict[str, Any] | None = None,
                  where: pc.Expression | None = None, files: list[str] | None = None) -> pa.Table:
    """Every run's metrics under REPORT_ROOT in one table, plus `run_date` (date) and
    `source`. Columns are the union over all runs (pyarrow alone takes them from the
    first file), so sources sliced by different columns stack, with nulls. `where`
    keeps the rows it selects (on `run_date` and `source` it skips whole files); `files`
    (paths under the root, as its filesystem names them) are the only files opened."""
    fs, path = filesystem(root, storage_options)
    options = ds.FileSystemFactoryOptions(
        partition_base_dir=path.rstrip("/"),
        partitioning=ds.partitioning(pa.schema([("run_date", pa.date32()), ("source", pa.string())]), flavor="hive"),
        selector_ignore_prefixes=[".", "_"],
    )
    try:
        factory = ds.FileSystemDatasetFactory(
            pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
            files if files is not None else pafs.FileSelector(path.rstrip("/"), recursive=True),
            ds.ParquetFileFormat(), options)
        # Without the first file's metadata: it describes one run, not the history.
        return factory.finish(factory.inspect(fragments=None).remove_metadata()).to_table(filter=where)
    except (OSError, pa.ArrowException) as error:
        if (failure := as_infrastructure_error(error, root, "cannot read")) is not None:
            raise failure from error
        raise DataError(f"{root}: the history holds a file that is not readable Parquet ({error}); move it out of "
                        "REPORT_ROOT, or rerun that date with xent nightly --date, and retry") from None


def read_history(root: str, storage_options: dict[str, Any] | None = None, source: str | None = None,
                 before: str | None = None, max_dates: int | None = MAX_DATES) -> pa.Table | None:
    """`history_table` of the runs of `source` (default: all) on the latest `max_dates`
    run dates (None: all) before the date `before` (default: all); None when REPORT_ROOT
    does not exist yet. Only those runs' files are read (the dates come from a listing);
    how many earlier dates are left out is in the ``xent.history`` metadata, for the page."""
    fs, path = filesystem(root, storage_options)
    if not fs.exists(path):
        return None
    where = pc.scalar(True)
    if source is not None:
        where &= pc.field("source") == source
    if before is not None:
        where &= pc.field("run_date") < pc.scalar(dt.date.fromisoformat(before))
    # The files of the dates wanted, from a listing: the others are never opened.
    found = {p: m.group(1) for p in fs.glob(f"{path.rstrip('/')}/run_date=*/source={source or '*'}/{METRICS_FILE}")
             if (m := re.search(r"run_date=(\d{4}-\d{2}-\d{2})/", p)) and (before is None or m.group(1) < before)}
    dates = sorted(set(found.values()))
    left_out = max(0, len(dates) - max_dates) if max_dates is not None else 0
    files = sorted(p for p, day in found.items() if day >= dates[left_out]) if dates else None
    history = history_table(root, storage_options, where, files)
    return history.replace_schema_metadata({HISTORY_KEY: json.dumps({"dates_left_out": left_out}).encode()}) \
        if left_out else history


def history_page_path(config: NightlyConfig) -> str:
    """Where each nightly run leaves the history page: TABLES_ROOT/history.html."""
    return f"{config.tables_base.rstrip('/')}/{HISTORY_PAGE}"


def tables_root_of(report_root: str, storage_options: dict[str, Any] | None = None) -> str:
    """The tables root of the nightly history at `report_root`: as its newest run
    recorded it (``xent.nightly`` metadata), else the default REPORT_ROOT-tables."""
    fs, path = filesystem(report_root, storage_options)
    for found in sorted(fs.glob(f"{path.rstrip('/')}/run_date=*/source=*/{METRICS_FILE}"), reverse=True):
        with fs.open(found, "rb") as handle:
            raw = (pq.ParquetFile(handle).schema_arrow.metadata or {}).get(NIGHTLY_KEY)
        if raw is not None:
            return json.loads(raw)["tables_root"].rstrip("/")
    return sibling_tables_root(report_root)


def root_options(config: NightlyConfig) -> dict[str, Any]:
    """The storage options the history roots are written with (the first source's)."""
    # Storage options do not depend on the date: any date renders the source's paths.
    return config.eval_config(config.sources[0], "2000-01-01").storage_options


def write_history_page(config: NightlyConfig) -> str:
    """Render the history page from REPORT_ROOT (its latest `MAX_DATES` run dates) and
    write it whole; returns its path as written (on an object store, with its protocol)."""
    options = root_options(config)
    history = read_history(config.report_root, options)
    page = render_history_html(history if history is not None else pa.table({}), root=config.report_root.rstrip("/"))
    return replace_file(history_page_path(config), page.encode(), options)


def with_run(history: pa.Table | None, metrics: pa.Table, source: str, run_date: str) -> pa.Table:
    """The earlier `history` of a source with this run's `metrics` appended, as
    `read_history` would read them once written (with its metadata)."""
    rows = metrics.num_rows
    current = metrics.append_column("run_date", pa.array([dt.date.fromisoformat(run_date)] * rows, pa.date32())) \
        .append_column("source", pa.array([source] * rows, pa.string())).replace_schema_metadata(None)
    if history is None or not history.num_rows:
        return current
    return pa.concat_tables([history.replace_schema_metadata(None), current], promote_options="permissive") \
        .replace_schema_metadata(history.schema.metadata)
