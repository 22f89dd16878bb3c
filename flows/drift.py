"""Drift of a current dump against a reference dump.

Two kinds of evidence, per slice and overall:

1. Per-sample KL(reference‖current), joining rows on key columns (by default the id
   and the slice columns, so several models scoring the same ids join model with
   model). Neither dump is ever held whole: each shard's rows are hashed by key into
   buckets spilled to a scratch folder, then each bucket is joined exactly and
   reduced to per-(slice, class) statistics by the fused kernel. Keys found on one
   side only are counted.
2. Distribution-level KL, JS and PSI between the predicted class marginals, and
   between confidence histograms re-binned at the reference's quantiles (see
   :mod:`xent_kernels.drift` for the smoothing). These need no ids.

Every divergence is reported in the config's units (nats, or bits); thresholds are
in the same units. ``drift_steps`` is the whole run without Prefect; the xent-drift
flow runs the same steps as tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import shutil
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
from distributed import Client

from xent_kernels import ClassStats, class_stats_partial
from xent_kernels.drift import histogram_divergences, quantile_bin_edges, rebin

from .config import DRIFT_METRICS, DriftConfig, DriftSettings
from .engine import Evaluation, FileInfo, wait_all, dask_client, evaluate, inspect_file, plan_pieces, tree_reduce
from .errors import DataError, DriftBreach, UsageError
from .reader import ReadSpec, iter_batches, open_parquet
from .report import _slice_columns, config_json, report_metadata, report_parts
from .writing import write_tables_atomically

FINE_BINS = 200  # confidence histogram resolution before re-binning at reference quantiles


# --------------------------------------------------------------------------- distribution level


def distribution_rows(reference: Evaluation, current: Evaluation, settings: DriftSettings) -> list[dict]:
    """Metric rows (slice key, metric, value) for marginals and confidence histograms."""
    rows = []
    ref_parts = dict(_parts_by_key(reference))
    for key, cur_stats in _parts_by_key(current):
        ref_stats = ref_parts.get(key)
        if ref_stats is None:
            for metric in ("marginal_kl", "marginal_js", "marginal_psi", "confidence_kl", "confidence_js", "confidence_psi"):
                rows.append({"key": key, "metric": metric, "value": math.nan})
            continue
        marg_ref = ref_stats.marginal_sum[0] + ref_stats.marginal_comp[0]
        marg_cur = cur_stats.marginal_sum[0] + cur_stats.marginal_comp[0]
        for name, value in histogram_divergences(marg_ref, marg_cur, settings.smoothing).items():
            rows.append({"key": key, "metric": f"marginal_{name}", "value": value})
        fine_ref = (ref_stats.hist_sum + ref_stats.hist_comp)[0, :, 0]
        fine_cur = (cur_stats.hist_sum + cur_stats.hist_comp)[0, :, 0]
        edges = quantile_bin_edges(fine_ref, settings.confidence_bins)
        for name, value in histogram_divergences(rebin(fine_ref, edges), rebin(fine_cur, edges), settings.smoothing).items():
            rows.append({"key": key, "metric": f"confidence_{name}", "value": value})
    return rows


def _parts_by_key(evaluation: Evaluation):
    """(slice key or None for overall, single-slice ClassStats) for each slice and overall."""
    stats = evaluation.result.stats
    for part, overall in report_parts(stats, evaluation.spec.slice_by):
        if overall:
            yield None, part
        else:
            for i, key in enumerate(part.slice_keys):
                yield key, part._single_slice(i, key)


# --------------------------------------------------------------------------- per-sample join


@dataclass(frozen=True)
class JoinResult:
    stats: ClassStats
    matched: int = 0
    only_reference: int = 0
    only_current: int = 0

    @staticmethod
    def merge(*results: "JoinResult") -> "JoinResult":
        stats = functools.reduce(ClassStats.merge, (r.stats for r in results))
        return JoinResult(
            stats,
            sum(r.matched for r in results),
            sum(r.only_reference for r in results),
            sum(r.only_current for r in results),
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping): consecutive integers spread evenly."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def bucket_of(keys: list[np.ndarray], n_buckets: int) -> np.ndarray:
    """A bucket per row of the key columns, the same on every worker and in every
    process (no salted hashes). Integer columns are hashed vectorized; other values by
    the CRC-32 of their text, once per distinct value."""
    h = np.zeros(len(keys[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for values in keys:
            if values.dtype.kind in "iub":
                code = values.astype(np.uint64)
            else:
                distinct, inverse = np.unique(values.astype(str), return_inverse=True)
                crc = np.fromiter((zlib.crc32(v.encode()) for v in distinct), dtype=np.uint64, count=len(distinct))
                code = crc[inverse]
            h = _splitmix64(h ^ code)
    return (h % np.uint64(n_buckets)).astype(np.int64)


@dataclass
class _Rows:
    """One side's rows of a bucket."""

    keys: list[np.ndarray]  # one array per key column
    pred: np.ndarray
    labels: np.ndarray
    slice_ids: np.ndarray
    slice_keys: list[tuple]  # the key of each slice id

    def __len__(self) -> int:
        return len(self.labels)


def spill_piece(piece, side: str, index: int, *, spec: ReadSpec, scratch: str, n_buckets: int) -> int:
    """Split one piece's rows into bucket files under scratch/side/bucket; returns rows."""
    parquet = open_parquet(piece.file.url, spec.storage_options, spec.column_buffer)
    groups = None if piece.row_groups is None else list(piece.row_groups)
    rows = 0
    for b, batch in enumerate(iter_batches(parquet, piece.file, spec, groups)):
        buckets = bucket_of(batch.ids, n_buckets)
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
        slice_ids = batch.slice_ids if batch.slice_ids is not None else np.zeros(len(order), np.int64)
        for k in range(n_buckets):
            take = order[bounds[k] : bounds[k + 1]]
            if not take.size:
                continue
            folder = os.path.join(scratch, side, f"{k:05d}")
            os.makedirs(folder, exist_ok=True)
            part = _Rows([values[take] for values in batch.ids], batch.pred[take], batch.labels[take], slice_ids[take],
                         list(batch.slice_keys))
            # pickle, not np.savez: np.load parses each array header with ast.literal_eval,
            # which fails at random in concurrent worker threads on CPython 3.11
            # ("AST constructor recursion depth mismatch", python/cpython#106905).
            with open(os.path.join(folder, f"{index:06d}-{b:05d}.pkl"), "wb") as handle:
                pickle.dump(part, handle, protocol=pickle.HIGHEST_PROTOCOL)
        rows += len(order)
    return rows


def _load_bucket(folder: str) -> _Rows | None:
    """One side's spilled rows of a bucket, with slice ids renumbered over all its parts."""
    parts = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), "rb") as handle:
            parts.append(pickle.load(handle))  # written by spill_piece into this run's own scratch folder
    if not parts:
        return None
    keys: dict[tuple, int] = {}
    slice_ids = []
    for part in parts:
        local = np.array([keys.setdefault(k, len(keys)) for k in part.slice_keys], dtype=np.int64)
        slice_ids.append(local[part.slice_ids] if local.size else part.slice_ids)
    return _Rows(
        [_concatenate([p.keys[j] for p in parts]) for j in range(len(parts[0].keys))],
        np.concatenate([p.pred for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate(slice_ids),
        list(keys),
    )


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate key arrays exactly: int64 with uint64 would promote to float64."""
    if np.result_type(*arrays).kind == "f" and all(a.dtype.kind in "iu" for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


def _key_codes(reference: _Rows, current: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of both sides' key rows, equal exactly when the keys are equal:
    each column is factorized over both sides, and codes are combined column by column
    and re-factorized, so they stay below the row count (no overflow, no collisions)."""
    n_ref = len(reference)
    codes = np.zeros(n_ref + len(current), dtype=np.int64)
    for ref_values, cur_values in zip(reference.keys, current.keys):
        _, column = np.unique(_concatenate([ref_values, cur_values]), return_inverse=True)
        _, codes = np.unique(codes * (int(column.max()) + 1) + column, return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:n_ref], codes[n_ref:]


def _check_unique(side: str, codes: np.ndarray, rows: _Rows, key: tuple[str, ...]) -> None:
    counts = np.bincount(codes)
    if counts.max(initial=0) > 1:
        row = int(np.flatnonzero(counts[codes] > 1)[0])
        value = ", ".join(f"{name}={values[row:row + 1].tolist()[0]!r}" for name, values in zip(key, rows.keys))
        raise DataError(
            f"{side} dump: key ({value}) appears {counts[codes[row]]} times, but the join key ({', '.join(key)}) "
            "must identify one row: set drift.id_cols (or --id-cols) to the columns that do, e.g. [model, id]"
        )


def join_bucket(scratch: str, bucket: int, *, spec: ReadSpec) -> JoinResult:
    """Join one bucket's reference and current rows on the key columns; KL(reference‖current) statistics."""
    empty = ClassStats.empty(spec.n_classes, n_bins=spec.n_bins, has_reference=True)
    ref = _load_bucket(os.path.join(scratch, "reference", f"{bucket:05d}"))
    cur = _load_bucket(os.path.join(scratch, "current", f"{bucket:05d}"))
    if ref is None or cur is None:
        return JoinResult(empty, 0, 0 if ref is None else len(ref), 0 if cur is None else len(cur))
    ref_codes, cur_codes = _key_codes(ref, cur)
    _check_unique("reference", ref_codes, ref, spec.id_cols)
    _check_unique("current", cur_codes, cur, spec.id_cols)
    _, in_ref, in_cur = np.intersect1d(ref_codes, cur_codes, assume_unique=True, return_indices=True)
    stats = class_stats_partial(
        cur.pred[in_cur], cur.labels[in_cur], kind=spec.kind, slice_ids=cur.slice_ids[in_cur], slice_keys=cur.slice_keys,
        reference=ref.pred[in_ref], reference_kind=spec.kind, n_bins=spec.n_bins,
    ) if len(in_cur) else empty
    return JoinResult(ClassStats.merge(stats, empty), len(in_cur), len(ref) - len(in_ref), len(cur) - len(in_cur))


def per_sample_kl(config: DriftConfig, specs: dict[str, ReadSpec], infos: dict[str, list[FileInfo]], client: Client) -> JoinResult:
    """Hash both dumps' rows by key into buckets spilled to scratch, then join each bucket."""
    settings = config.drift
    total_rows = sum(i.rows for side in infos.values() for i in side)
    n_buckets = max(1, math.ceil(total_rows / settings.bucket_rows))
    scratch = os.path.join(settings.scratch_dir or tempfile.gettempdir(), f"xent-drift-{uuid.uuid4().hex[:12]}")
    os.makedirs(scratch)
    try:
        spills = []
        for side in ("reference", "current"):
            pieces = plan_pieces(infos[side], config.task_rows)
            spills += client.map(
                spill_piece, pieces, [side] * len(pieces), range(len(pieces)),
                spec=specs[side], scratch=scratch, n_buckets=n_buckets, pure=False,
            )
        wait_all(spills, lambda future: None, config.stall_timeout)
        joins = client.map(join_bucket, [scratch] * n_buckets, range(n_buckets), spec=specs["current"], pure=False)
        total = tree_reduce(client, joins, config.split_every, JoinResult.merge)
        wait_all(joins, lambda future: None, config.stall_timeout)
        wait_all([total], lambda future: None, config.stall_timeout)
        return total.result()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- the whole comparison


UNIT_DIVISORS = {"nats": 1.0, "bits": math.log(2)}  # divergences are computed in nats


@dataclass
class DriftReport:
    rows: list[dict]  # key (slice tuple or None), metric, value, threshold, breached, class, n
    slice_by: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    reference: Evaluation
    current: Evaluation

    @property
    def breaches(self) -> list[dict]:
        return [row for row in self.rows if row["breached"]]


def compare(config: DriftConfig, client: Client) -> DriftReport:
    """Evaluate both dumps and compute every drift metric, in the config's units, with its threshold."""
    fine = {"n_bins": FINE_BINS}
    current = evaluate(config.model_copy(update=fine), client)
    reference = evaluate(config.model_copy(update={**fine, "sources": config.reference}), client)
    if reference.spec.n_classes != current.spec.n_classes:
        raise DataError(
            f"reference has {reference.spec.n_classes} classes ({reference.spec.reference_file}), "
            f"current has {current.spec.n_classes} ({current.spec.reference_file})"
        )
    rows = distribution_rows(reference, current, config.drift)
    if config.drift.per_sample:
        rows += _per_sample_rows(config, reference, current, client)
    divisor = UNIT_DIVISORS[config.units]
    for row in rows:
        if row["metric"] in DRIFT_METRICS:  # divergences; counts stay counts
            row["value"] /= divisor
        row.setdefault("class", None)
        row.setdefault("n", None)
        threshold = threshold_for(config.drift, config.slice_by, row["key"], row["metric"]) if row["class"] is None else None
        row["threshold"] = threshold
        row["breached"] = bool(threshold is not None and not (row["value"] <= threshold))
    return DriftReport(rows, current.spec.slice_by, current.spec.slice_types, reference, current)


def _comparable_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)


def _key_spec(evaluation: Evaluation, key: tuple[str, ...], side: str) -> tuple[ReadSpec, list[str]]:
    """The evaluation's spec, reading the key columns too (hive folder keys from the
    path), and each key column's type as compared across the two dumps."""
    first = evaluation.inputs[0]
    schema = open_parquet(first.url, evaluation.spec.storage_options).schema_arrow
    hive, types = [], []
    for name in key:
        if name in schema.names:  # a column wins over a hive key, as for slices
            types.append(_comparable_type(schema.field(name).type))
        elif name in first.hive:
            hive.append(name)
            types.append("string")
        else:
            raise DataError(
                f"{side} dump {first.url}: no key column '{name}' (neither a column nor a hive folder key "
                f"{sorted(first.hive)}); columns are {sorted(schema.names)}. Rows are joined on "
                f"({', '.join(key)}): set drift.id_cols (or --id-cols) to columns both dumps have"
            )
    return dataclasses.replace(evaluation.spec, id_cols=key, hive_ids=tuple(hive), n_bins=1), types


def _per_sample_rows(config: DriftConfig, reference: Evaluation, current: Evaluation, client: Client) -> list[dict]:
    key = config.drift.join_key(config.slice_by)
    specs, types, infos = {}, {}, {}
    for side, evaluation in (("reference", reference), ("current", current)):
        specs[side], types[side] = _key_spec(evaluation, key, side)
    for name, ref_type, cur_type in zip(key, types["reference"], types["current"]):
        if ref_type != cur_type:
            raise DataError(
                f"key column '{name}' is {ref_type} in the reference dump ({reference.spec.reference_file}) but "
                f"{cur_type} in the current dump ({current.spec.reference_file}); the join needs one type on both sides"
            )
    for side, evaluation in (("reference", reference), ("current", current)):
        futures = client.map(inspect_file, evaluation.inputs, spec=specs[side], pure=False)
        wait_all(futures, lambda future: None, config.stall_timeout)
        infos[side] = [future.result() for future in futures]
    joined = per_sample_kl(config, specs, infos, client)
    rows = [
        {"key": None, "metric": "n_matched", "value": float(joined.matched)},
        {"key": None, "metric": "n_only_reference", "value": float(joined.only_reference)},
        {"key": None, "metric": "n_only_current", "value": float(joined.only_current)},
    ]
    for part, overall in report_parts(joined.stats, current.spec.slice_by):
        report = part.finalize()
        for i, slice_key in enumerate(report.slice_keys):
            rows.append({"key": None if overall else slice_key, "metric": "kl_per_sample",
                         "value": float(report.per_slice["kl_mean"][i]), "n": int(report.per_slice["n"][i])})
        pc = report.per_class
        for j in range(len(pc["class"])):
            slice_key = None if overall else report.slice_keys[pc["slice"][j]]
            rows.append({"key": slice_key, "metric": "kl_per_sample", "value": float(pc["kl_mean"][j]),
                         "class": int(pc["class"][j]), "n": int(pc["n"][j])})
    return rows


def threshold_for(settings: DriftSettings, slice_by: list[str], key: tuple | None, metric: str) -> float | None:
    """The most specific threshold: a matching slice override, else the global one."""
    if key is not None:
        values = dict(zip(slice_by, key))
        for override in settings.slice_thresholds:
            if metric in override.thresholds and all(str(values.get(k)) == str(v) for k, v in override.slice.items()):
                return override.thresholds[metric]
    return settings.thresholds.get(metric)


def drift_table(report: DriftReport) -> pa.Table:
    keys = [row["key"] or () for row in report.rows]
    columns = _slice_columns(keys, report.slice_by, report.slice_types)
    columns["overall"] = pa.array([row["key"] is None for row in report.rows])
    columns["metric"] = pa.array([row["metric"] for row in report.rows], type=pa.string())
    columns["class"] = pa.array([row["class"] for row in report.rows], type=pa.int32())
    columns["n"] = pa.array([row["n"] for row in report.rows], type=pa.int64())
    columns["value"] = pa.array([row["value"] for row in report.rows], type=pa.float64())
    columns["kl_mean"] = pa.array([row["value"] if row["class"] is not None else None for row in report.rows], type=pa.float64())
    columns["threshold"] = pa.array([row["threshold"] for row in report.rows], type=pa.float64())
    columns["breached"] = pa.array([row["breached"] for row in report.rows], type=pa.bool_())
    return pa.table(columns)


def drift_tables(report: DriftReport, config: DriftConfig) -> dict[str, pa.Table]:
    """The drift table with the current dump's report metadata (units included), the
    reference's fingerprint and the drift config."""
    metadata = report_metadata(report.current)
    metadata[b"xent.reference_fingerprint"] = json.dumps(report.reference.fingerprint, sort_keys=True).encode()
    metadata[b"xent.config"] = config_json(config)
    return {"drift": drift_table(report).replace_schema_metadata(metadata)}


def describe_breach(row: dict, slice_by: tuple[str, ...]) -> str:
    where = "overall" if row["key"] is None else ", ".join(f"{k}={v}" for k, v in zip(slice_by, row["key"]))
    return f"{row['metric']} = {row['value']:.6g} exceeds threshold {row['threshold']:.6g} ({where})"


def breach_error(report: DriftReport) -> DriftBreach | None:
    """The error a breached threshold ends the run with (exit code 3), naming every breach."""
    messages = [describe_breach(row, report.slice_by) for row in report.breaches]
    return DriftBreach("drift threshold breached: " + "; ".join(messages)) if messages else None


# --------------------------------------------------------------------------- the steps


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
