"""``xent compare``: a candidate model against a baseline on the same rows.

Both dumps are evaluated (read settings, bad data and fingerprints as for ``xent
eval``), then their rows are joined on the key columns through drift's join
(:mod:`flows.monitor.join`) and each joined bucket is reduced by
:func:`xent_kernels.paired.paired_partial`: both models' statistics in the same
jackknife buckets (a hash of the row key) and per-row CE wins, ties and losses.
:meth:`xent_kernels.paired.PairedStats.finalize` turns the merged state into paired
differences with intervals, :func:`difference_table` makes them compare.parquet, column
by column, and :mod:`flows.monitor.gates` checks them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client

from xent_kernels import STATISTICS
from xent_kernels.hashing import key_buckets
from xent_kernels.paired import OUTCOMES, PairedReport, PairedStats, paired_partial
from xent_kernels.unpaired import UnpairedStats

from ..config import CompareConfig, log_base, nats_per_unit
from ..engine import Evaluation, Progress
from ..errors import DataError
from ..inputs.spec import ReadSpec
from ..metadata import COMPARE_KEY, CONFIG_KEY, REFERENCE_FINGERPRINT_KEY
from ..report.metric_values import MetricKey, slice_fields
from ..report.tables import config_json, report_metadata, report_parts, slice_key_columns
from .gates import breached_gates, gate_rows
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
    table: pa.Table  # compare.parquet without its metadata
    breaches: list[str]  # one line per breached (gate, row)

    @property
    def overall_row(self) -> dict[str, Any]:
        """compare.parquet's row over all slices and classes (the join's counts are on it)."""
        where = pc.and_(self.table.column("overall"), pc.is_null(self.table.column("class")))
        return self.table.filter(where).to_pylist()[0]


def compare_models(config: CompareConfig, client: Client, progress: Progress | None = None, *,
                   baseline: Any = None, candidate: Any = None) -> CompareReport:
    """Evaluate both dumps, join their rows on the key columns and compute every paired
    difference; `baseline`/`candidate` are in-memory data, or None for the config's paths."""
    sides = evaluate_sides(config, client, progress, SIDES, config.baseline, {"baseline": baseline, "candidate": candidate})
    baseline_evaluation, candidate_evaluation = (sides[name].evaluation for name in SIDES)
    spec = candidate_evaluation.spec
    key, joined = join_evaluated(config, config.compare, sides, client, compare_pairing(config), n_bins=config.n_bins,
                                 require_match=True)
    counts = dict(zip(JOIN_COUNTS, (joined.matched, joined.only_first, joined.only_second)))
    table = difference_table(finalized_parts(joined.stats, spec.slice_by, config.units, config.interval_level),
                             COMPARE_LEADING, spec.slice_by, spec.slice_types, spec.names(), overall_counts=counts)
    breaches = breached_gates(config.gate, gate_rows(table, config.gate, spec.slice_by), spec.slice_by)
    return CompareReport(joined, key, spec.slice_by, spec.slice_types, spec.names(), baseline_evaluation,
                         candidate_evaluation, table, breaches)


COMPARE_LEADING = {"n": pa.int64(), **dict.fromkeys(OUTCOMES, pa.int64()), "verdict": pa.string()}
JOIN_COUNTS = ("n_matched", "n_only_baseline", "n_only_candidate")  # on the overall all-classes row


def finalized_parts(stats: PairedStats | UnpairedStats, slice_by: tuple[str, ...], units: str,
                    level: float) -> list[tuple[PairedReport, bool]]:
    """The comparison per slice and, when sliced, across slices: (report, is_overall)."""
    return [(part.finalize(base=log_base(units), level=level), overall)
            for part, overall in report_parts(stats, slice_by)]


def difference_columns(metric: str) -> list[tuple[str, pa.DataType]]:
    """An interval metric's columns in a difference table, each named by its key: the
    baseline's and the candidate's value, the difference with its interval, the verdict."""
    diff = MetricKey(metric, is_diff=True)
    return [(MetricKey(metric, sub_key="baseline").column, pa.float64()),
            (MetricKey(metric, sub_key="candidate").column, pa.float64()),
            *((name, pa.float64()) for name in (diff.column, *diff.bounds)),
            (MetricKey(metric, sub_key="verdict").column, pa.string())]


def difference_table(parts: Sequence[tuple[PairedReport, bool]], leading: Mapping[str, pa.DataType],
                     slice_by: tuple[str, ...], slice_types: tuple[pa.DataType, ...], class_names: list[str], *,
                     slice_flags: Callable[[PairedReport], Mapping[str, np.ndarray]] | None = None,
                     overall_counts: Mapping[str, int] | None = None) -> pa.Table:
    """compare.parquet or gate.parquet, column by column from finalized comparisons
    (paired or unpaired; `parts` as :func:`finalized_parts` gives them): per part its
    slices (all classes, ``class`` null), then its (slice, class) cells.

    The columns: the slice columns, ``overall``, ``class``, ``class_name``; the `leading`
    columns, taken from the reports' counts, ``verdict`` (of ce_mean) and `slice_flags`
    (per slice of a report, copied to the slice's classes); per interval metric (table
    order) its :func:`difference_columns`; then `overall_counts`, set on the overall
    all-classes row only. A column a scope does not have is null there (ece per class).
    """
    present = {name for report, _ in parts for name in (*report.per_slice, *report.per_class)}
    metric_fields = [*leading.items(),
                     *(column for s in STATISTICS if MetricKey(s.name, is_diff=True).column in present
                       for column in difference_columns(s.name)),
                     *dict.fromkeys(overall_counts or {}, pa.int64()).items()]
    place = [*slice_fields(slice_by, slice_types), pa.field("overall", pa.bool_()), pa.field("class", pa.int32()),
             pa.field("class_name", pa.string())]
    pieces: list[list[pa.Array]] = [[] for _ in range(len(place) + len(metric_fields))]
    for report, overall in parts:
        flags = slice_flags(report) if slice_flags else {}
        for columns in (report.per_slice, report.per_class):
            slices, classes = columns["slice"], columns.get("class")
            n = len(slices)
            keys = [()] * n if overall else [report.slice_keys[i] for i in slices]
            given = {**columns, "verdict": columns.get("ce_mean_verdict"),
                     **{name: flag[slices] for name, flag in flags.items()}}
            if overall and classes is None:
                given.update({name: np.full(n, count) for name, count in (overall_counts or {}).items()})
            arrays = [*slice_key_columns(keys, slice_by, slice_types).values(), pa.array(np.full(n, overall)),
                      _array(classes, n, pa.int32()),
                      _array(None if classes is None else [class_names[c] for c in classes], n, pa.string()),
                      *(_array(given.get(name), n, arrow_type) for name, arrow_type in metric_fields)]
            for column, array in zip(pieces, arrays):
                column.append(array)
    schema = pa.schema([*place, *(pa.field(name, arrow_type) for name, arrow_type in metric_fields)])
    return pa.table([pa.concat_arrays(column) for column in pieces], schema=schema)


def _array(values: Any, n: int, arrow_type: pa.DataType) -> pa.Array:
    return pa.nulls(n, arrow_type) if values is None else pa.array(values, type=arrow_type)


def compare_metadata(report: Any, config: CompareConfig, **more: Any) -> dict[bytes, bytes]:
    """A comparison's metadata (classifier or token dumps): the candidate's report
    metadata (units, fingerprint, ...), the baseline's fingerprint, the config, and under
    ``xent.compare`` the join's settings and counts, the gates and their breaches, and `more`."""
    metadata = report_metadata(report.candidate)
    metadata[REFERENCE_FINGERPRINT_KEY] = json.dumps(report.baseline.fingerprint, sort_keys=True).encode()
    metadata[CONFIG_KEY] = config_json(config)
    metadata[COMPARE_KEY] = json.dumps({
        "key": list(report.key), "matched": report.joined.matched, "only_baseline": report.joined.only_first,
        "only_candidate": report.joined.only_second, "n_buckets": config.n_buckets,
        "level": config.interval_level, "tie_tolerance": config.compare.tie_tolerance,
        "gates": [gate.model_dump() for gate in config.gate], "breaches": report.breaches, **more,
    }).encode()
    return metadata


def compare_tables(report: CompareReport, config: CompareConfig) -> dict[str, pa.Table]:
    """compare.parquet with its metadata (:func:`compare_metadata`)."""
    return {"compare": report.table.replace_schema_metadata(compare_metadata(report, config))}
