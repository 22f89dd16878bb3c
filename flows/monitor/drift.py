"""Drift of a current dump against a reference dump: every metric with its threshold.

Two kinds of evidence, per slice and overall:

1. Per-sample KL(reference‖current), joining rows on key columns (by default the id
   and the slice columns, so several models scoring the same ids join model with
   model): :mod:`flows.monitor.join`.
2. Distribution-level KL, JS and PSI between the predicted class marginals, and
   between confidence histograms re-binned at the reference's quantiles (see
   :mod:`xent_kernels.drift` for the smoothing). These need no ids.

Every divergence is reported in the config's units (nats, or bits); thresholds are
in the same units.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from distributed import Client

from xent_kernels.drift import histogram_divergences, quantile_bin_edges, rebin
from xent_kernels.statistics import Totals

from ..config import DRIFT_METRICS, DriftConfig, DriftSettings, nats_per_unit
from ..engine import Evaluation, Progress
from ..errors import DriftBreach
from ..metadata import CONFIG_KEY, REFERENCE_FINGERPRINT_KEY
from ..report.tables import config_json, report_metadata, report_parts, slice_key_columns
from ..report.text import INFINITE_KL, describe_breach
from .join import EvaluatedSide, kl_pairing
from .sides import evaluate_sides, join_evaluated

FINE_BINS = 200  # confidence histogram resolution before re-binning at reference quantiles
SIDES = ("reference", "current")  # as the per-sample join's pairing names them


# --------------------------------------------------------------------------- distribution level


def histograms(reference: Evaluation, current: Evaluation, settings: DriftSettings) -> list[dict]:
    """Per slice key of the current dump (None: overall), what the distribution metrics
    compare, each side's weights: ``marginal`` (the predicted class marginals, Σ w·p per
    class) and ``confidence`` (the top-probability histogram re-binned at the
    reference's quantiles; ``edges`` its bin edges on [0, 1]). Both are None for a
    slice the reference does not have."""
    entries = []
    ref_parts = dict(_parts_by_key(reference))
    for key, cur_stats in _parts_by_key(current):
        entry = {"key": key, "marginal": None, "confidence": None, "edges": None}
        ref_stats = ref_parts.get(key)
        if ref_stats is not None:
            ref_totals, cur_totals = Totals.of(ref_stats).values, Totals.of(cur_stats).values  # over buckets
            entry["marginal"] = (ref_totals["marginal"][0], cur_totals["marginal"][0])
            fine_ref, fine_cur = ref_totals["hist"][0, :, 0], cur_totals["hist"][0, :, 0]
            edges = quantile_bin_edges(fine_ref, settings.confidence_bins)
            entry["confidence"] = (rebin(fine_ref, edges), rebin(fine_cur, edges))
            entry["edges"] = edges / fine_ref.size
        entries.append(entry)
    return entries


def distribution_rows(entries: list[dict], settings: DriftSettings) -> list[dict]:
    """Metric rows (slice key, metric, value) for marginals and confidence histograms (`histograms`)."""
    rows = []
    for entry in entries:
        for kind in ("marginal", "confidence"):
            pair = entry[kind]
            divergences = (histogram_divergences(*pair, settings.smoothing) if pair is not None
                           else dict.fromkeys(("kl", "js", "psi"), math.nan))
            rows += [{"key": entry["key"], "metric": f"{kind}_{name}", "value": value}
                     for name, value in divergences.items()]
    return rows


def _parts_by_key(evaluation: Evaluation):
    """(slice key or None for overall, single-slice ClassStats) for each slice and overall."""
    stats = evaluation.result.stats
    for part, overall in report_parts(stats, evaluation.spec.slice_by):
        if overall:
            yield None, part
        else:
            for i, key in enumerate(part.slice_keys):
                yield key, part.slice(i, key)



# --------------------------------------------------------------------------- the whole comparison




@dataclass
class DriftReport:
    rows: list[dict]  # key (slice tuple or None), metric, value, threshold, breached, class, n
    slice_by: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    reference: Evaluation
    current: Evaluation
    histograms: list[dict] = field(default_factory=list)  # what the distribution metrics compare: `histograms`

    @property
    def breaches(self) -> list[dict]:
        return [row for row in self.rows if row["breached"]]


def measure_drift(config: DriftConfig, client: Client, progress: Progress | None = None, *, reference: Any = None,
                  current: Any = None) -> DriftReport:
    """Evaluate both sides and compute every drift metric, in the config's units, with its threshold.

    `reference` and `current` are each None, for the config's ``reference`` and
    ``sources`` (Parquet paths), or that side's in-memory data (a pyarrow Table, a
    pandas or a Dask DataFrame: ``flows.inputs.memory.is_in_memory``).
    """
    # Drift reads no intervals: one jackknife bucket, so no bucket hashing and a small state.
    fine = config.model_copy(update={"n_bins": FINE_BINS, "n_buckets": 1})
    sides = evaluate_sides(fine, client, progress, SIDES, config.reference, {"reference": reference, "current": current})
    reference_evaluation, current_evaluation = (sides[name].evaluation for name in SIDES)
    current_spec = current_evaluation.spec
    entries = histograms(reference_evaluation, current_evaluation, config.drift)
    rows = distribution_rows(entries, config.drift)
    if config.drift.per_sample:
        rows += _per_sample_rows(config, sides, client)
    divisor = nats_per_unit(config.units)
    for row in rows:
        if row["metric"] in DRIFT_METRICS:  # divergences; counts stay counts
            row["value"] /= divisor
        row.setdefault("class", None)
        row.setdefault("n", None)
        threshold = threshold_for(config.drift, config.slice_by, row["key"], row["metric"]) if row["class"] is None else None
        row["threshold"] = threshold
        row["breached"] = bool(threshold is not None and not (row["value"] <= threshold))
    return DriftReport(rows, current_spec.slice_by, current_spec.slice_types, reference_evaluation, current_evaluation,
                       entries)


def _per_sample_rows(config: DriftConfig, sides: dict[str, EvaluatedSide], client: Client) -> list[dict]:
    _, joined = join_evaluated(config, config.drift, sides, client, kl_pairing(config.drift.per_sample_smoothing))
    rows = [
        {"key": None, "metric": "n_matched", "value": float(joined.matched)},
        {"key": None, "metric": "n_only_reference", "value": float(joined.only_first)},
        {"key": None, "metric": "n_only_current", "value": float(joined.only_second)},
    ]
    for part, overall in report_parts(joined.stats, sides["current"].evaluation.spec.slice_by):
        report = part.stats.finalize()
        infinite = part.infinite_counts(report.slice_keys)  # rows whose exact KL is inf, smoothed or not
        for i, slice_key in enumerate(report.slice_keys):
            rows.append({"key": None if overall else slice_key, "metric": "kl_per_sample",
                         "value": float(report.per_slice["kl_mean"][i]), "n": int(report.per_slice["n"][i]),
                         INFINITE_KL: int(infinite[i].sum())})
        pc = report.per_class
        for j in range(len(pc["class"])):
            slice_key = None if overall else report.slice_keys[pc["slice"][j]]
            rows.append({"key": slice_key, "metric": "kl_per_sample", "value": float(pc["kl_mean"][j]),
                         "class": int(pc["class"][j]), "n": int(pc["n"][j]),
                         INFINITE_KL: int(infinite[pc["slice"][j], pc["class"][j]])})
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
    columns = slice_key_columns(keys, report.slice_by, report.slice_types)
    columns["overall"] = pa.array([row["key"] is None for row in report.rows])
    columns["metric"] = pa.array([row["metric"] for row in report.rows], type=pa.string())
    columns["class"] = pa.array([row["class"] for row in report.rows], type=pa.int32())
    columns["n"] = pa.array([row["n"] for row in report.rows], type=pa.int64())
    columns["value"] = pa.array([row["value"] for row in report.rows], type=pa.float64())
    columns["kl_mean"] = pa.array([row["value"] if row["class"] is not None else None for row in report.rows], type=pa.float64())
    columns[INFINITE_KL] = pa.array([row.get(INFINITE_KL) for row in report.rows], type=pa.int64())
    columns["threshold"] = pa.array([row["threshold"] for row in report.rows], type=pa.float64())
    columns["breached"] = pa.array([row["breached"] for row in report.rows], type=pa.bool_())
    return pa.table(columns)


def distributions_table(report: DriftReport) -> pa.Table:
    """What the distribution metrics compare, one row per (slice, side, kind, bin): the
    slice columns, ``overall``, ``side`` (reference or current), ``kind`` (marginal:
    ``bin`` is the class; confidence: ``bin`` is the bin, on [``lo``, ``hi``) of the top
    probability, edges at the reference's quantiles) and ``weight`` (Σ w·p for a class,
    Σ w for a confidence bin), before smoothing. Slices the reference lacks have no rows."""
    rows = []
    for entry in report.histograms:
        for kind in ("marginal", "confidence"):
            if entry[kind] is None:
                continue
            edges = entry["edges"]
            for side, weights in zip(("reference", "current"), entry[kind]):
                for i, weight in enumerate(weights):
                    lo, hi = (float(edges[i]), float(edges[i + 1])) if kind == "confidence" else (None, None)
                    rows.append({"key": entry["key"], "side": side, "kind": kind, "bin": i, "lo": lo, "hi": hi,
                                 "weight": float(weight)})
    columns = slice_key_columns([row["key"] or () for row in rows], report.slice_by, report.slice_types)
    columns["overall"] = pa.array([row["key"] is None for row in rows], type=pa.bool_())
    for name, arrow_type in (("side", pa.string()), ("kind", pa.string()), ("bin", pa.int32()), ("lo", pa.float64()),
                             ("hi", pa.float64()), ("weight", pa.float64())):
        columns[name] = pa.array([row[name] for row in rows], type=arrow_type)
    return pa.table(columns)


DISTRIBUTIONS_TABLE = "drift_distributions"


def drift_tables(report: DriftReport, config: DriftConfig) -> dict[str, pa.Table]:
    """The drift table and the distributions it compares (``drift_distributions``), with
    the current dump's report metadata (units included), the reference's fingerprint and
    the drift config."""
    metadata = report_metadata(report.current)
    metadata[REFERENCE_FINGERPRINT_KEY] = json.dumps(report.reference.fingerprint, sort_keys=True).encode()
    metadata[CONFIG_KEY] = config_json(config)
    return {"drift": drift_table(report).replace_schema_metadata(metadata),
            DISTRIBUTIONS_TABLE: distributions_table(report).replace_schema_metadata(metadata)}


def breach_error(report: DriftReport) -> DriftBreach | None:
    """The error a breached threshold ends the run with (exit code 3), naming every breach."""
    messages = [describe_breach(row, report.slice_by) for row in report.breaches]
    return DriftBreach("drift threshold breached: " + "; ".join(messages)) if messages else None
