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
from ..engine import Evaluation, Progress, evaluate_source
from ..errors import DataError
from ..inputs.spec import ReadSpec
from ..metadata import COMPARE_KEY, CONFIG_KEY, REFERENCE_FINGERPRINT_KEY
from ..report.tables import config_json, report_metadata, report_parts, slice_key_columns
from .gates import breached_gates
from .join import EvaluatedSide, JoinResult, Pairing, Rows, describe_key, join_sides, prepare_join

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
    rows: list[dict]  # the rows of compare.parquet
    breaches: list[str]  # one line per breached (gate, row)


def compare_models(config: CompareConfig, client: Client, progress: Progress | None = None, *,
                   baseline: Any = None, candidate: Any = None) -> CompareReport:
    """Evaluate both dumps, join their rows on the key columns and compute every paired
    difference; `baseline`/`candidate` are in-memory data, or None for the config's paths."""
    candidate_evaluation = evaluate_source(config, client, candidate, progress)
    baseline_evaluation = evaluate_source(config.model_copy(update={"sources": config.baseline}), client, baseline,
                                          progress)
    base_spec, cand_spec = baseline_evaluation.spec, candidate_evaluation.spec
    if base_spec.n_classes != cand_spec.n_classes:
        raise DataError(f"baseline has {base_spec.n_classes} classes ({base_spec.reference_file}), "
                        f"candidate has {cand_spec.n_classes} ({cand_spec.reference_file})")
    sides = {"baseline": EvaluatedSide(baseline_evaluation, baseline),
             "candidate": EvaluatedSide(candidate_evaluation, candidate)}
    key = config.compare.join_key(config.slice_by)
    pairing = compare_pairing(config)
    joins = prepare_join(config, key, sides, client, pairing, n_bins=config.n_bins)
    joined = join_sides(config, config.compare, joins, client, pairing)
    if joined.matched == 0:
        raise DataError(
            f"no row of the candidate dump ({cand_spec.reference_file}) has its key ({', '.join(key)}) in the baseline "
            f"dump ({base_spec.reference_file}): set compare.id_cols (or --id-cols) to columns both dumps share"
        )
    names = cand_spec.names()
    rows = compare_rows(joined, cand_spec.slice_by, names, config.units,
                        config.interval_level)
    breaches = breached_gates(config.gate, rows, cand_spec.slice_by)
    return CompareReport(joined, key, cand_spec.slice_by, cand_spec.slice_types, names, baseline_evaluation,
                         candidate_evaluation, rows, breaches)


def compare_rows(joined: JoinResult, slice_by: tuple[str, ...], class_names: list[str], units: str,
                 level: float) -> list[dict]:
    """The rows of compare.parquet: per slice (all classes, then each class), then the
    same across slices (``overall``). Join counts go on the overall all-classes row."""
    rows = []
    for part, overall in report_parts(joined.stats, slice_by):
        report = part.finalize(base=log_base(units), level=level)
        rows += difference_rows(report, overall, slice_by, class_names)
    for row in rows:
        if row["overall"] and row["class"] is None:
            row.update(n_matched=joined.matched, n_only_baseline=joined.only_first, n_only_candidate=joined.only_second)
    return rows


def difference_rows(report: PairedReport, overall: bool, slice_by: tuple[str, ...], class_names: list[str]) -> list[dict]:
    """A finalized comparison (paired or unpaired) as rows that gates read: per slice
    (all classes, ``class`` None), then per (slice, class); `overall`: the report's one
    slice is all rows. Each row has ``key`` (its slice key), the slice values by name,
    ``overall``, ``class``, ``class_name``, the report's columns and ``verdict``."""
    rows = []
    for scope, columns in (("per_slice", report.per_slice), ("per_class", report.per_class)):
        for i in range(len(columns["slice"])):
            key = () if overall else report.slice_keys[columns["slice"][i]]
            row = {"key": key, **dict(zip(slice_by, key)), "overall": overall}  # slice values by name for gates
            if scope == "per_class":
                cls = int(columns["class"][i])
                row.update({"class": cls, "class_name": class_names[cls]})
            else:
                row.update({"class": None, "class_name": None})
            for name, values in columns.items():
                if name in ("slice", "class"):
                    continue
                value = values[i]
                row[name] = value.item() if isinstance(value, np.generic) else value
            row["verdict"] = row.get("ce_mean_verdict")
            rows.append(row)
    return rows


def compare_columns(rows: list[dict]) -> list[str]:
    """The metric columns of compare.parquet, in order: n, outcomes, verdict, then per
    interval metric (table order) its baseline, candidate, diff, diff_lo, diff_hi and
    verdict, then the join's counts."""
    present = {name for row in rows for name in row}
    metrics = [s.name for s in STATISTICS if f"{s.name}_diff" in present]
    suffixes = ("baseline", "candidate", "diff", "diff_lo", "diff_hi", "verdict")
    return ["n", *OUTCOMES, "verdict", *(f"{m}_{s}" for m in metrics for s in suffixes),
            "n_matched", "n_only_baseline", "n_only_candidate"]


def compare_table(report: CompareReport) -> pa.Table:
    rows = report.rows
    columns = slice_key_columns([row["key"] for row in rows], report.slice_by, report.slice_types)
    columns["overall"] = pa.array([row["overall"] for row in rows], type=pa.bool_())
    columns["class"] = pa.array([row["class"] for row in rows], type=pa.int32())
    columns["class_name"] = pa.array([row["class_name"] for row in rows], type=pa.string())
    for name in compare_columns(rows):
        values = [row.get(name) for row in rows]
        if name.endswith("verdict"):
            arrow_type = pa.string()
        elif name in ("n", *OUTCOMES) or name.startswith("n_"):
            arrow_type = pa.int64()
        else:
            arrow_type = pa.float64()
        columns[name] = pa.array(values, type=arrow_type)
    return pa.table(columns)


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
    return {"compare": compare_table(report).replace_schema_metadata(metadata)}
