"""Print reports as tables on the terminal."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from .integrity import INTEGRITY_KEY
from .sources import filesystem


def read_report_table(url: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def integrity_line(integrity: dict[str, int]) -> str:
    """The terminal line for a report's `xent.integrity` metadata."""
    files, verified = integrity["files"], integrity["page_checksums_verified"]
    line = f"inputs: {files} files, {verified} with page checksums verified"
    if verified < files:
        line += f"; {files - verified} without: bit flips in them cannot be detected"
    return line


def print_report(
    paths: dict[str, str],
    elapsed: float | None = None,
    console: Console | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """The per-class table (overall rows), the slice summary, and where the files are."""
    console = console or Console()
    per_class = read_report_table(paths["per_class"], storage_options)
    units = (per_class.schema.metadata or {}).get(b"xent.units", b"nats").decode()
    rows = [r for r in per_class.to_pylist() if r["overall"]]
    table = Table(title=f"per class (cross-entropy in {units})")
    for column in ("class", "class_name", "n", "ce_mean", "ce_std", "accuracy", "p_true_mean", "entropy_mean"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in ("class", "class_name", "n", "ce_mean", "ce_std", "accuracy", "p_true_mean", "entropy_mean")))
    console.print(table)

    summary = read_report_table(paths["summary"], storage_options)
    fixed = {"overall", "n", "weight", "ce_mean", "ce_macro", "accuracy", "top5_accuracy", "p_true_mean",
             "entropy_mean", "ece", "n_ignored", "n_nonfinite", "n_skipped", "n_bad_shards",
             "predicted_marginal", "confidence_hist"}
    slice_columns = [name for name in summary.column_names if name not in fixed]
    shown = [*slice_columns, "n", "ce_mean", "ce_macro", "accuracy", "ece", "n_ignored", "n_skipped"]
    table = Table(title="summary (overall row last)")
    for column in shown:
        table.add_column(column, justify="right")
    for row in summary.to_pylist():
        cells = [("(all)" if row["overall"] and c in slice_columns else _fmt(row[c])) for c in shown]
        table.add_row(*cells)
    console.print(table)
    integrity = (summary.schema.metadata or {}).get(INTEGRITY_KEY)
    if integrity is not None:
        console.print(integrity_line(json.loads(integrity)), soft_wrap=True)
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    if elapsed is not None:
        console.print(f"done in {elapsed:.1f} s")


def print_drift(path: str, console: Console | None = None, storage_options: dict[str, Any] | None = None) -> None:
    """The drift metrics per slice with thresholds, and the verdict."""
    console = console or Console()
    rows = [r for r in read_report_table(path, storage_options).to_pylist() if r["class"] is None]
    fixed = {"overall", "metric", "class", "n", "value", "kl_mean", "threshold", "breached"}
    slice_columns = [c for c in (rows[0] if rows else {}) if c not in fixed]
    table = Table(title="drift against the reference")
    for column in ("slice", "metric", "value", "threshold", "breached"):
        table.add_column(column, justify="right")
    for row in rows:
        where = "(all)" if row["overall"] else ",".join(f"{c}={row[c]}" for c in slice_columns)
        table.add_row(where, row["metric"], _fmt(row["value"]), _fmt(row["threshold"]), "BREACH" if row["breached"] else "")
    console.print(table)
    breached = [r for r in rows if r["breached"]]
    console.print(f"drift verdict: {'BREACHED (' + str(len(breached)) + ' threshold(s))' if breached else 'within thresholds'}")
    console.print(f"drift: {path}")
