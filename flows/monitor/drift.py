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

from ..config import DriftConfig, DriftSettings, nats_per_unit
from ..engine import Evaluation, Progress
from ..errors import DriftBreach
from ..metadata import CONFIG_KEY, REFERENCE_FINGERPRINT_KEY
from ..report.metric_values import MetricKey, MetricValue, long_table, slice_fields
from ..report.tables import config_json, report_metadata, report_parts, slice_key_columns
from ..report.text import describe_breach
from ..drift_statistics import DRIFT_COLUMNS, DRIFT_STATISTIC, INFINITE_KL
from ..kinds import TOKENS
from .join import EvaluatedSide, kl_pairing
from .sides import evaluate_sides, join_evaluated
from .token_drift import token_drift_values

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


def distribution_values(entries: list[dict], settings: DriftSettings) -> list[MetricValue]:
    """The divergences of the marginals and confidence histograms (`histograms`), in nats."""
    values = []
    for entry in entries:
        for kind in ("marginal", "confidence"):
            pair = entry[kind]
            divergences = (histogram_divergences(*pair, settings.smoothing) if pair is not None
                           else dict.fromkeys(("kl", "js", "psi"), math.nan))
            values += [MetricValue(MetricKey(f"{kind}_{name}", entry["key"]), value)
                       for name, value in divergences.items()]
    return values


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
    values: list[MetricValue]  # the rows of drift.parquet, in the config's units, with their thresholds
    slice_by: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    reference: Evaluation
    current: Evaluation
    histograms: list[dict] = field(default_factory=list)  # what the distribution metrics compare: `histograms`
    bucket_rows: list[dict] = field(default_factory=list)  # token dumps: drift_distributions rows (token_drift)

    @property
    def breaches(self) -> list[MetricValue]:
        return [value for value in self.values if value.breached]


def measure_drift(config: DriftConfig, client: Client, progress: Progress | None = None, *, reference: Any = None,
                  current: Any = None) -> DriftReport:
    """Evaluate both sides and compute every drift metric, in the config's units, with its threshold.

    `reference` and `current` are each None, for the config's ``reference`` and
    ``sources`` (Parquet paths), or that side's in-memory data (a pyarrow Table, a
    pandas or a Dask DataFrame: ``flows.inputs.memory.is_in_memory``).
    """
    if config.kind == TOKENS:
        values, rows, reference_evaluation, current_evaluation = token_drift_values(config, client, progress,
                                                                                     reference, current)
        spec = current_evaluation.spec
        return DriftReport([checked(config, in_units(value, config.units)) for value in values], spec.slice_by,
                           spec.slice_types, reference_evaluation, current_evaluation, bucket_rows=rows)
    # Drift reads no intervals: one jackknife bucket, so no bucket hashing and a small state.
    fine = config.model_copy(update={"n_bins": FINE_BINS, "n_buckets": 1})
    sides = evaluate_sides(fine, client, progress, SIDES, config.reference, {"reference": reference, "current": current})
    reference_evaluation, current_evaluation = (sides[name].evaluation for name in SIDES)
    current_spec = current_evaluation.spec
    entries = histograms(reference_evaluation, current_evaluation, config.drift)
    values = distribution_values(entries, config.drift)
    if config.drift.per_sample:
        values += _per_sample_values(config, sides, client)
    values = [checked(config, in_units(value, config.units)) for value in values]
    return DriftReport(values, current_spec.slice_by, current_spec.slice_types, reference_evaluation, current_evaluation,
                       entries)


def in_units(value: MetricValue, units: str) -> MetricValue:
    """`value` (in nats) in `units` if it is information (`DRIFT_STATISTICS`); counts stay counts."""
    if DRIFT_STATISTIC[value.key.metric].units != "information":
        return value
    return value._replace(value=value.value / nats_per_unit(units))


def checked(config: DriftConfig, value: MetricValue) -> MetricValue:
    """`value` with its threshold (none per class) and whether it is breached (NaN is)."""
    key = value.key
    threshold = threshold_for(config.drift, config.slice_by, key.slice, key.metric) if key.cls is None else None
    return value._replace(threshold=threshold, breached=bool(threshold is not None and not (value.value <= threshold)))


def _per_sample_values(config: DriftConfig, sides: dict[str, EvaluatedSide], client: Client) -> list[MetricValue]:
    """The join's counts and the per-sample KL per slice and per (slice, class), in nats."""
    _, joined = join_evaluated(config, config.drift, sides, client, kl_pairing(config.drift.per_sample_smoothing))
    values = [MetricValue(MetricKey(name), float(count)) for name, count in (
        ("n_matched", joined.matched), ("n_only_reference", joined.only_first), ("n_only_current", joined.only_second))]
    for part, overall in report_parts(joined.stats, sides["current"].evaluation.spec.slice_by):
        report = part.stats.finalize()
        infinite = part.infinite_counts(report.slice_keys)  # rows whose exact KL is inf, smoothed or not
        for i, slice_key in enumerate(report.slice_keys):
            values.append(MetricValue(MetricKey("kl_per_sample", None if overall else slice_key),
                                      float(report.per_slice["kl_mean"][i]), n=int(report.per_slice["n"][i]),
                                      extra={INFINITE_KL: int(infinite[i].sum())}))
        pc = report.per_class
        for j in range(len(pc["class"])):
            slice_key = None if overall else report.slice_keys[pc["slice"][j]]
            values.append(MetricValue(MetricKey("kl_per_sample", slice_key, int(pc["class"][j])), float(pc["kl_mean"][j]),
                                      n=int(pc["n"][j]), extra={INFINITE_KL: int(infinite[pc["slice"][j], pc["class"][j]])}))
    return values


def threshold_for(settings: DriftSettings, slice_by: list[str], key: tuple | None, metric: str) -> float | None:
    """The most specific threshold: a matching slice override, else the global one."""
    if key is not None:
        values = dict(zip(slice_by, key))
        for override in settings.slice_thresholds:
            if metric in override.thresholds and all(str(values.get(k)) == str(v) for k, v in override.slice.items()):
                return override.thresholds[metric]
    return settings.thresholds.get(metric)


def drift_table(report: DriftReport) -> pa.Table:
    """drift.parquet: the slice columns, then `DRIFT_COLUMNS`, one row per value; a
    per-class value repeats in ``kl_mean``."""
    schema = pa.schema([*slice_fields(report.slice_by, report.slice_types),
                        *(pa.field(name, getattr(pa, arrow_type)()) for name, (arrow_type, _) in DRIFT_COLUMNS.items())])
    values = [v if v.key.cls is None else v._replace(extra={**(v.extra or {}), "kl_mean": v.value}) for v in report.values]
    return long_table(values, schema, report.slice_by)


def distributions_table(report: DriftReport) -> pa.Table:
    """What the distribution metrics compare, one row per (slice, side, kind, bin): the
    slice columns, ``overall``, ``side`` (reference or current), ``kind`` (marginal:
    ``bin`` is the class; confidence: ``bin`` is the bin, on [``lo``, ``hi``) of the top
    probability, edges at the reference's quantiles) and ``weight`` (Σ w·p for a class,
    Σ w for a confidence bin), before smoothing. Slices the reference lacks have no rows.
    Token dumps have kinds ``position_ce`` and ``frequency_ce`` instead (:mod:`flows.monitor.token_drift`)."""
    rows = list(report.bucket_rows)
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
    messages = [describe_breach(value, report.slice_by) for value in report.breaches]
    return DriftBreach("drift threshold breached: " + "; ".join(messages)) if messages else None
