"""Report tables (per class, per slice, bad shards), self-describing.

Every table carries Parquet key-value metadata: the resolved config, the input
fingerprint, xent's version, the units and the creation time. ``Report.write``
(:mod:`flows.api`) writes them all-or-nothing with :mod:`flows.report.writing`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from xent_kernels import ClassReport, ClassStats, interval_columns, report_columns

from ..config import log_base
from ..engine import Evaluation, probability_warning
from ..errors import without_credentials
from ..inputs.spec import ReadSpec
from ..inputs.tokens import TokenSpec
from ..metadata import (
    CLASSES_KEY,
    CONFIG_KEY,
    CREATED_AT_KEY,
    EPS_KEY,
    FINGERPRINT_KEY,
    INTEGRITY_KEY,
    INTERVALS_KEY,
    LAYOUT_KEY,
    METRIC_COLUMNS,
    UNITS_KEY,
    VERSION,
    VERSION_KEY,
    WARNINGS_KEY,
)


# The history's metric fields as Arrow types (their names and meanings: flows.metadata).
METRIC_FIELDS = [pa.field(name, getattr(pa, arrow_type)()) for name, arrow_type in METRIC_COLUMNS.items()]


def _column(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.int64() if values.dtype.kind in "iu" else pa.float64())


def slice_key_columns(keys: list[tuple], names: tuple[str, ...], types: tuple[pa.DataType, ...]) -> dict[str, pa.Array]:
    return {
        name: pa.array([key[i] if key else None for key in keys], type=arrow_type)
        for i, (name, arrow_type) in enumerate(zip(names, types))
    }


def report_parts(stats: ClassStats, slice_by: tuple[str, ...]) -> list[tuple[ClassReport, bool]]:
    """The finalized report per slice and, when sliced, the overall one: (report, is_overall)."""
    parts = []
    if slice_by:
        parts.append((stats, False))
    parts.append((stats.collapse_slices(), True))
    return parts


def metric_columns(scope: str, has_reference: bool = False) -> list[str]:
    """The report columns of `scope` ("class" or "slice") in table order: each metric
    followed by its ``_lo``/``_hi`` bounds when it has an interval."""
    bounds = set(interval_columns(scope, has_reference))
    return [column for name in report_columns(scope, has_reference)
            for column in (name, f"{name}_lo", f"{name}_hi") if column == name or column in bounds]


def with_interval(row: dict, name: str, digits: int = 4) -> str:
    """A metric of a report row as text, with its interval when the row has finite
    bounds: ``0.9163 [0.9012, 0.9301]``."""
    value, lo, hi = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")

    def text(x) -> str:
        return "nan" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    if value is None:
        return ""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return text(value)
    return f"{text(value)} [{text(lo)}, {text(hi)}]"


def skipped_rows(rows: list[int | None]) -> int | None:
    """The rows of the bad shards skipped (``n_skipped``): None, unknown, when a shard's is."""
    return None if None in rows else sum(rows)


def bad_shards_line(count: int, known_rows: int, unknown: int) -> str:
    """The line (terminal, report page) for `count` bad shards skipped, holding
    `known_rows` rows besides the `unknown` ones whose footer could not be read:
    "2 bad shards skipped (at least 180 rows; rows of 1 unknown)"."""
    if not unknown:
        rows = f"{known_rows:,} rows"
    elif unknown == count:
        rows = "rows unknown"
    else:
        rows = f"at least {known_rows:,} rows; rows of {unknown} unknown"
    return f"{count} bad shard{'s' if count != 1 else ''} skipped ({rows})"


def bad_shards_summary(overall: dict, bad_shards: pa.Table | None) -> str:
    """``bad_shards_line`` of a report: from its bad_shards table when there, else from
    the overall summary row (where one unknown count makes ``n_skipped`` null)."""
    count = overall["n_bad_shards"]
    if bad_shards is not None and bad_shards.num_rows == count:
        rows = bad_shards.column("rows").to_pylist()
        return bad_shards_line(count, sum(r for r in rows if r is not None), rows.count(None))
    known = overall.get("n_skipped")
    return bad_shards_line(count, known or 0, 0 if known is not None else count)


def integrity_line(integrity: dict[str, int]) -> str:
    """The line (terminal, report page footer) for a report's `xent.integrity` metadata:
    information, not a problem, as files without page checksums are the writers' default."""
    files, verified = integrity["files"], integrity["page_checksums_verified"]
    without = integrity.get("without_page_checksums", files - verified)  # older reports count bad shards in it
    line = f"inputs: {files} files, {verified} with page checksums verified"
    if without:
        line += f"; {without} without (pandas' and pyarrow's default; write_page_checksum=True adds them)"
    if files - verified - without > 0:
        line += f"; {files - verified - without} not inspected (bad shards)"
    return line


def intervals_line(intervals: dict[str, Any]) -> str:
    """The line (terminal, report page) for a report's `xent.intervals` metadata (a token
    report's says ``"tokens": true``: no AUC, bounds not clipped)."""
    tokens = intervals.get("tokens", False)
    clipped = "bounds not clipped" if tokens else "bounds clipped to each metric's range"  # Statistic.clip
    auc = "" if tokens else "; auc: DeLong"
    if intervals["bucket_key"] is None:
        none = "none (n_buckets = 1)" if tokens else f"none but AUC's (n_buckets = 1); auc: DeLong at {intervals['level']:g}"
        return f"intervals: {none}; {clipped}"
    key = intervals["bucket_key"]
    by = "the hash of each row's label and prediction" if key == "content" else f"the hash of {', '.join(key)}"
    return (f"intervals: [lo, hi] at {intervals['level']:g}, jackknife over {intervals['n_buckets']} buckets "
            f"by {by}{auc}; {clipped}")


def auc_line(summary: list[dict]) -> str | None:
    """The terminal's line on how a report's AUC was computed, from its summary rows
    (``auc_exact``); None with AUC off (or a report written before exact AUC)."""
    flags = [row.get("auc_exact") for row in summary]
    if not flags or None in flags:
        return None
    if all(flags):
        return "auc: exact (sklearn's roc_auc_score) in every summary row"
    why = "rows × (classes + 2) past exact_auc_max_values, or it is 0"
    if not any(flags):
        return f"auc: binned in every summary row, within auc_error_bound ({why})"
    return f"auc: exact in {sum(flags)} of {len(flags)} summary rows, binned in the others, within auc_error_bound ({why})"


def build_tables(evaluation: Evaluation) -> dict[str, pa.Table]:
    spec, result, config = evaluation.spec, evaluation.result, evaluation.config
    base = log_base(config.units)
    names = spec.names()
    per_class, summary, confusion = [], [], []
    for stats, overall in report_parts(result.stats, spec.slice_by):
        report = stats.finalize(base=base, level=config.interval_level)
        small = report.per_slice["n"] < config.min_slice_size  # per slice of this part
        keys = [report.slice_keys[i] if not overall else () for i in report.per_class["slice"]]
        pc_cols = slice_key_columns(keys, spec.slice_by, spec.slice_types)
        pc_cols["overall"] = pa.array(np.full(len(keys), overall))
        pc_cols["class"] = pa.array(report.per_class["class"], type=pa.int32())
        pc_cols["class_name"] = pa.array([names[c] for c in report.per_class["class"]], type=pa.string())
        for name in metric_columns("class"):
            pc_cols[name] = _column(report.per_class[name])
        pc_cols["small_slice"] = pa.array(small[report.per_class["slice"]], type=pa.bool_())
        per_class.append(pa.table(pc_cols))

        keys = [key if not overall else () for key in report.slice_keys]
        ps = report.per_slice
        s_cols = slice_key_columns(keys, spec.slice_by, spec.slice_types)
        s_cols["overall"] = pa.array(np.full(len(keys), overall))
        for name in metric_columns("slice"):
            s_cols[name] = _column(ps[name])
        s_cols["small_slice"] = pa.array(small, type=pa.bool_())
        # Exact (auc_error_bound 0) or binned AUC per slice; null with AUC off.
        s_cols["auc_exact"] = pa.array(report.auc_exact, type=pa.bool_(), mask=np.full(len(keys), not spec.n_thresholds))
        skipped = skipped_rows([b.rows for b in result.bad_shards])
        s_cols["n_skipped"] = pa.array([skipped if overall else None] * len(keys), type=pa.int64())
        s_cols["n_bad_shards"] = pa.array([len(result.bad_shards) if overall else None] * len(keys), type=pa.int64())
        s_cols["predicted_marginal"] = pa.array(list(report.predicted_marginal), type=pa.list_(pa.float64()))
        hist = report.confidence_hist  # (S, bins, 3): Σw, Σw·correct, Σw·confidence per bin
        weight = hist[..., 0]
        s_cols["confidence_hist"] = pa.array(list(weight), type=pa.list_(pa.float64()))
        for name, field in (("confidence_hist_accuracy", 1), ("confidence_hist_confidence", 2)):
            per_bin = np.divide(hist[..., field], weight, out=np.full_like(weight, np.nan), where=weight > 0)
            s_cols[name] = pa.array(list(per_bin), type=pa.list_(pa.float64()))
        summary.append(pa.table(s_cols))
        if report.confusion_n.shape[1]:
            confusion.append(_confusion_table(report, keys, overall, spec, names))
    tables = {"per_class": pa.concat_tables(per_class), "summary": pa.concat_tables(summary)}
    if confusion:
        tables["confusion"] = pa.concat_tables(confusion)
    if evaluation.config.on_bad_shard == "skip":
        tables["bad_shards"] = pa.table(
            {
                "file": pa.array([without_credentials(b.url) for b in result.bad_shards], type=pa.string()),
                "reason": pa.array([b.reason for b in result.bad_shards], type=pa.string()),
                "rows": pa.array([b.rows for b in result.bad_shards], type=pa.int64()),
            }
        )
    return tables


def _confusion_table(report: ClassReport, keys: list[tuple], overall: bool, spec, names: list[str]) -> pa.Table:
    """The confusion matrix in long format, one row per (slice, true, predicted) cell
    with rows (empty cells are left out): slice columns, overall, true, predicted,
    their names, n and weight."""
    slices, true, predicted = np.nonzero(report.confusion_n)
    columns = slice_key_columns([keys[i] for i in slices], spec.slice_by, spec.slice_types)
    columns["overall"] = pa.array(np.full(len(slices), overall))
    columns["true"] = pa.array(true, type=pa.int32())
    columns["predicted"] = pa.array(predicted, type=pa.int32())
    columns["true_name"] = pa.array([names[c] for c in true], type=pa.string())
    columns["predicted_name"] = pa.array([names[c] for c in predicted], type=pa.string())
    columns["n"] = pa.array(report.confusion_n[slices, true, predicted], type=pa.int64())
    columns["weight"] = pa.array(report.confusion_weight[slices, true, predicted], type=pa.float64())
    return pa.table(columns)


def config_json(config) -> bytes:
    """The resolved config for report metadata, without credentials (its JSON form never has them)."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()


def layout_metadata(spec: ReadSpec | TokenSpec) -> dict[str, Any]:
    """``xent.layout``: what was read, and how."""
    if isinstance(spec, TokenSpec):
        return {"kind": spec.kind, "layout": spec.layout, "columns": spec.columns_to_read(), "topk": spec.topk}
    return {"kind": spec.kind, "layout": spec.layout, "columns": list(spec.pred_columns),
            "prob_tolerance": spec.prob_tolerance, "renormalized": spec.renormalize}


def report_metadata(evaluation: Evaluation) -> dict[bytes, bytes]:
    spec = evaluation.spec
    metadata = {
        VERSION_KEY: VERSION.encode(),
        CREATED_AT_KEY: dt.datetime.now(dt.timezone.utc).isoformat().encode(),
        UNITS_KEY: evaluation.config.units.encode(),
        EPS_KEY: json.dumps(evaluation.config.eps).encode(),
        CONFIG_KEY: config_json(evaluation.config),
        FINGERPRINT_KEY: json.dumps(evaluation.fingerprint, sort_keys=True).encode(),
        LAYOUT_KEY: json.dumps(layout_metadata(spec)).encode(),
        INTEGRITY_KEY: json.dumps({"files": evaluation.n_files, "page_checksums_verified": evaluation.n_files_verified,
                                   "without_page_checksums": evaluation.n_files_without_checksums}).encode(),
        INTERVALS_KEY: json.dumps(intervals_metadata(evaluation)).encode(),
        WARNINGS_KEY: json.dumps(run_warnings(evaluation)).encode(),
    }
    if isinstance(spec, ReadSpec):
        metadata[CLASSES_KEY] = json.dumps(spec.names()).encode()
    return metadata


def run_warnings(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The run's warnings (``xent.warnings``; the page's verdict shows them): each an id,
    a one-line text, and what it concerns. Every warning of a run goes here."""
    warnings = []
    if evaluation.result.probability_like:
        files = list(evaluation.result.probability_like)
        warnings.append({"id": "probability_like", "text": probability_warning(files), "files": files})
    return warnings


def intervals_metadata(evaluation: Evaluation) -> dict[str, Any]:
    """How the ``_lo``/``_hi`` columns were made: a jackknife t-interval at `level` over
    `n_buckets` buckets picked by `bucket_key` (key column names, "content", or None
    with one bucket, when every bound is NaN)."""
    intervals = {"method": "jackknife", "level": evaluation.config.interval_level,
                 "n_buckets": evaluation.spec.n_buckets, "bucket_key": evaluation.spec.bucket_key}
    return {**intervals, "tokens": True} if isinstance(evaluation.spec, TokenSpec) else intervals


def report_tables(evaluation: Evaluation) -> dict[str, pa.Table]:
    """The report tables as written: ``build_tables`` with ``report_metadata`` on each."""
    metadata = report_metadata(evaluation)
    return {
        name: table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        for name, table in build_tables(evaluation).items()
    }
