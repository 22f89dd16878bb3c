"""``xent compare``: a candidate model against a baseline on the same rows.

Both dumps are evaluated (read settings, bad data and fingerprints as for ``xent
eval``), then their rows are joined on the key columns through drift's join
(:mod:`flows.monitor.join`) and each joined bucket is reduced by
:func:`xent_kernels.paired.paired_partial`: both models' statistics in the same
jackknife buckets (a hash of the row key) and per-row CE wins, ties and losses.
:meth:`xent_kernels.paired.PairedStats.finalize` turns the merged state into paired
differences with intervals; :mod:`flows.monitor.gates` checks them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from distributed import Client

from xent_kernels import STATISTICS
from xent_kernels.hashing import key_buckets
from xent_kernels.paired import OUTCOMES, PairedReport, PairedStats, paired_partial

from ..config import CompareConfig, log_base, nats_per_unit
from ..engine import Evaluation, Progress
from ..errors import DataError
from ..inputs.spec import ReadSpec
from ..metadata import COMPARE_KEY, CONFIG_KEY, REFERENCE_FINGERPRINT_KEY
from ..report.metric_values import MetricKey, MetricValue, wide_table
from ..report.tables import config_json, report_metadata, report_parts
from .gates import breached_gates
from .join import JoinResult, Pairing, Rows, describe_key
from .sides import evaluate_sides, join_evaluated

SIDES = ("baseline", "candidate")


# --------------------------------------------------------------------------- the pairing, on the workers


def _paired_options(spec: ReadSpec, *, n_buckets: int) -> dict:
    return dict(n_classes=spec.n_classes, n_bins=spec.n_bins, n_buckets=n_buckets, n_thresholds=spec.n_thresholds,
                exact_auc_max_values=spec.exact_auc_max_values)


def _paired_reduce(spec: ReadSpec, baseline: Rows, candidate: Rows, *, n_buckets: int, tie_tolerance: float) -> PairedStats:
    """Both models' statistics of the matched rows, sliced by the candidate's slices,
    each row in the jackknife bucket of its key. The rows must agree on label and weight."""
    for what, base, cand in (("label", baseline.labels, candidate.labels),
                             ("weight", baseline.weights, candidate.weights)):
        if base is None or cand is None:
            continue
        differ = base != cand
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise DataError(
                f"key ({describe_key(spec.id_cols, candidate, row)}) has {what} {base[row]!r} in the baseline dump but "
                f"{cand[row]!r} in the candidate dump: a comparison needs the same rows on both sides (set "
                "compare.id_cols, or --id-cols, to the columns that identify a row)"
            )
    return paired_partial(
        baseline.pred, candidate.pred, candidate.labels, kind=spec.kind, weights=candidate.weights,
        slice_ids=candidate.slice_ids, slice_keys=candidate.slice_keys, n_bins=spec.n_bins, eps=spec.eps,
        buckets=key_buckets(candidate.keys, n_buckets), n_buckets=n_buckets,
        tie_tolerance=tie_tolerance, n_thresholds=spec.n_thresholds, exact_auc_max_values=spec.exact_auc_max_values,
    )


def compare_pairing(config: CompareConfig) -> Pairing:
    """The join's pairing for `config`: its buckets and tie tolerance (in nats)."""
    settings = config.compare
    nats = settings.tie_tolerance * nats_per_unit(config.units)
    return Pairing(
        SIDES,
        PairedStats,
        functools.partial(_paired_reduce, n_buckets=config.n_buckets, tie_tolerance=nats),
        functools.partial(_paired_options, n_buckets=config.n_buckets),
        "compare.id_cols",
    )


# --------------------------------------------------------------------------- the comparison


@dataclass
class CompareReport:
    joined: JoinResult  # stats: PairedStats
    key: tuple[str, ...]
    slice_by: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    class_names: list[str]
    baseline: Evaluation
    candidate: Evaluation
    values: list[MetricValue]  # the values of compare.parquet
    breaches: list[str]  # one line per breached (gate, row)

    @functools.cached_property
    def table(self) -> pa.Table:
        """compare.parquet without its metadata (`difference_table`), the join's counts last."""
        return difference_table(self.values, COMPARE_LEADING, self.slice_by, self.slice_types, self.class_names,
                                dict.fromkeys(JOIN_COUNTS, pa.int64()))

    @property
    def rows(self) -> list[dict]:
        """compare.parquet's rows, as gates read them."""
        return self.table.to_pylist()


def compare_models(config: CompareConfig, client: Client, progress: Progress | None = None, *,
                   baseline: Any = None, candidate: Any = None) -> CompareReport:
    """Evaluate both dumps, join their rows on the key columns and compute every paired
    difference; `baseline`/`candidate` are in-memory data, or None for the config's paths."""
    sides = evaluate_sides(config, client, progress, SIDES, config.baseline, {"baseline": baseline, "candidate": candidate})
    baseline_evaluation, candidate_evaluation = (sides[name].evaluation for name in SIDES)
    cand_spec = candidate_evaluation.spec
    key, joined = join_evaluated(config, config.compare, sides, client, compare_pairing(config), n_bins=config.n_bins,
                                 require_match=True)
    report = CompareReport(joined, key, cand_spec.slice_by, cand_spec.slice_types, cand_spec.names(),
                           baseline_evaluation, candidate_evaluation,
                           compare_values(joined, cand_spec.slice_by, config.units, config.interval_level), [])
    report.breaches = breached_gates(config.gate, report.rows, cand_spec.slice_by)
    return report


COMPARE_LEADING = {"n": pa.int64(), **dict.fromkeys(OUTCOMES, pa.int64()), "verdict": pa.string()}
JOIN_COUNTS = ("n_matched", "n_only_baseline", "n_only_candidate")  # on the overall all-classes row
DIFFERENCE_PARTS = ("baseline", "candidate", "diff", "diff_lo", "diff_hi", "verdict")  # per metric, in this order


def compare_values(joined: JoinResult, slice_by: tuple[str, ...], units: str, level: float) -> list[MetricValue]:
    """The values of compare.parquet: per slice (all classes, then each class), then the
    same across slices (overall), then the join's counts."""
    values = []
    for part, overall in report_parts(joined.stats, slice_by):
        report = part.finalize(base=log_base(units), level=level)
        values += difference_values(report, overall)
    counts = (joined.matched, joined.only_first, joined.only_second)
    return values + [MetricValue(MetricKey(name), count) for name, count in zip(JOIN_COUNTS, counts)]


def difference_values(report: PairedReport, overall: bool) -> list[MetricValue]:
    """A finalized comparison (paired or unpaired) as values: per slice (all classes),
    then per (slice, class); `overall`: the report's one slice is all rows. Per interval
    metric its baseline, candidate, difference (with its interval) and verdict; the
    report's counts; and ``verdict``, the verdict of ce_mean."""
    values = []
    for scope, columns in (("per_slice", report.per_slice), ("per_class", report.per_class)):
        metrics = [s.name for s in STATISTICS if f"{s.name}_diff" in columns]
        parts = {f"{m}_{part}" for m in metrics for part in DIFFERENCE_PARTS}
        counts = [name for name in columns if name not in ("slice", "class") and name not in parts]
        listed = {name: column.tolist() for name, column in columns.items()}  # numpy scalars as Python's
        per_metric = [(m, *(listed[f"{m}_{part}"] for part in DIFFERENCE_PARTS)) for m in metrics]
        verdict = listed["ce_mean_verdict"] if "ce_mean" in metrics else [None] * len(listed["slice"])
        for i, slice_index in enumerate(listed["slice"]):
            where = None if overall else report.slice_keys[slice_index]
            cls = listed["class"][i] if scope == "per_class" else None
            values += [MetricValue(MetricKey(name, where, cls), listed[name][i]) for name in counts]
            values.append(MetricValue(MetricKey("verdict", where, cls), verdict[i]))
            for m, baseline, candidate, diff, lo, hi, verdicts in per_metric:
                values += (MetricValue(MetricKey(m, where, cls, "baseline"), baseline[i]),
                           MetricValue(MetricKey(m, where, cls, "candidate"), candidate[i]),
                           MetricValue(MetricKey(m, where, cls, None, True), diff[i], lo[i], hi[i]),
                           MetricValue(MetricKey(m, where, cls, "verdict"), verdicts[i]))
    return values


def difference_table(values: list[MetricValue], leading: dict[str, pa.DataType], slice_by: tuple[str, ...],
                     slice_types: tuple[pa.DataType, ...], class_names: list[str],
                     trailing: dict[str, pa.DataType] | None = None) -> pa.Table:
    """compare.parquet or gate.parquet: one row per (slice, class) of `values`, the slice
    columns, overall, class, class_name, the `leading` columns, then per interval metric
    (table order) its baseline, candidate, diff, diff_lo, diff_hi and verdict, then the
    `trailing` columns."""
    present = {v.key.metric for v in values if v.key.is_diff}
    columns = [*leading.items(),
               *((f"{s.name}_{part}", pa.string() if part == "verdict" else pa.float64())
                 for s in STATISTICS if s.name in present for part in DIFFERENCE_PARTS),
               *(trailing or {}).items()]
    return wide_table(values, columns, slice_by, slice_types, class_names)


def compare_tables(report: CompareReport, config: CompareConfig) -> dict[str, pa.Table]:
    """compare.parquet with the candidate's report metadata (units, fingerprint, ...),
    the baseline's fingerprint, the config and the join's settings and counts."""
    metadata = report_metadata(report.candidate)
    metadata[REFERENCE_FINGERPRINT_KEY] = json.dumps(report.baseline.fingerprint, sort_keys=True).encode()
    metadata[CONFIG_KEY] = config_json(config)
    metadata[COMPARE_KEY] = json.dumps({
        "key": list(report.key), "matched": report.joined.matched, "only_baseline": report.joined.only_first,
        "only_candidate": report.joined.only_second, "n_buckets": config.n_buckets,
        "level": config.interval_level, "tie_tolerance": config.compare.tie_tolerance,
        "gates": [gate.model_dump() for gate in config.gate], "breaches": report.breaches,
    }).encode()
    return {"compare": report.table.replace_schema_metadata(metadata)}
