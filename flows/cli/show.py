"""Print reports as tables on the terminal."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from xent_kernels import class_columns, summary_columns

from ..drift_statistics import DRIFT_COLUMNS, DRIFT_STATISTIC
from ..inputs.sources import filesystem
from ..metadata import INTEGRITY_KEY, INTERVALS_KEY, UNITS_KEY
from ..report.tables import (
    auc_line, bad_shards_summary, integrity_line, intervals_line, metric_columns, with_interval,
)
from ..report.text import compare_view, token_compare_view
from ..report.token_tables import TOKEN_HEADLINE

# Every summary column that is not a slice column.
SUMMARY_COLUMNS = metric_columns("slice", has_reference=True)


def read_report_table(url: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def terminal() -> Console:
    """A console for stdout. On a terminal rich fits its width; piped (CI logs, files),
    nothing is wrapped or cut: tables keep their natural width, paths stay whole."""
    import sys

    if sys.stdout.isatty():
        return Console()
    return Console(width=10_000, soft_wrap=True)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def print_report(
    paths: dict[str, str],
    elapsed: float | None = None,
    console: Console | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """The per-class table (overall rows), the slice summary, and where the files are
    (a token report's headline instead, for kind tokens)."""
    console = console or terminal()
    if "token_summary" in paths:
        print_token_report(paths, console, storage_options)
        _print_paths(paths, elapsed, console)
        return
    per_class = read_report_table(paths["per_class"], storage_options)
    units = (per_class.schema.metadata or {}).get(UNITS_KEY, b"nats").decode()
    rows = [r for r in per_class.to_pylist() if r["overall"]]
    sliced = any(not r["overall"] for r in per_class.select(["overall"]).to_pylist())
    scope = ", all slices together (per-slice rows in per_class.parquet)" if sliced else ""
    table = Table(title=f"per class{scope}; cross-entropy in {units}")
    shown = ["class", "class_name", "n", *class_columns(headline=True)]
    for column in shown:
        table.add_column(column, justify="right")
    metrics = set(class_columns())
    for row in rows:
        table.add_row(*(with_interval(row, c) if c in metrics else _fmt(row[c]) for c in shown))
    console.print(table)

    summary = read_report_table(paths["summary"], storage_options)
    fixed = {"overall", *SUMMARY_COLUMNS, "small_slice", "auc_exact", "n_skipped", "n_bad_shards", "predicted_marginal",
             "confidence_hist", "confidence_hist_accuracy", "confidence_hist_confidence"}
    slice_columns = [name for name in summary.column_names if name not in fixed]
    small = "small_slice" in summary.column_names and any(summary.column("small_slice").to_pylist())
    shown = [*slice_columns, "n", *summary_columns(headline=True), "n_ignored", "n_skipped", *(["small_slice"] if small else [])]
    metrics = set(summary_columns())
    table = Table(title="summary (overall row last)")
    for column in shown:
        table.add_column(column, justify="right")
    for row in summary.to_pylist():
        cells = [("(all)" if row["overall"] and c in slice_columns
                  else with_interval(row, c) if c in metrics else _fmt(row[c])) for c in shown]
        table.add_row(*cells)
    console.print(table)
    metadata = summary.schema.metadata or {}
    if INTERVALS_KEY in metadata:
        console.print(intervals_line(json.loads(metadata[INTERVALS_KEY])), markup=False)
    if (line := auc_line(summary.to_pylist())) is not None:
        console.print(line, markup=False)
    integrity = metadata.get(INTEGRITY_KEY)
    if integrity is not None:
        console.print(integrity_line(json.loads(integrity)))
    overall = summary.to_pylist()[-1]
    if overall.get("n_bad_shards"):
        bad_shards = read_report_table(paths["bad_shards"], storage_options) if "bad_shards" in paths else None
        console.print(f"{bad_shards_summary(overall, bad_shards)}: see {paths.get('bad_shards', 'bad_shards.parquet')}",
                      markup=False)
    _print_paths(paths, elapsed, console)


def _print_paths(paths: dict[str, str], elapsed: float | None, console: Console) -> None:
    for name, path in paths.items():
        console.print(f"{name}: {path}")
    if elapsed is not None:
        console.print(f"done in {elapsed:.1f} s")


def print_drift(path: str, console: Console | None = None, storage_options: dict[str, Any] | None = None) -> None:
    """The drift metrics per slice with thresholds, every breach, the verdict, and where the report is."""
    from ..report.metric_values import MetricValue
    from ..report.text import describe_breach, infinite_kl_note

    console = console or terminal()
    table_data = read_report_table(path, storage_options)
    units = (table_data.schema.metadata or {}).get(UNITS_KEY, b"nats").decode()
    rows = [r for r in table_data.to_pylist() if r["class"] is None]
    slice_columns = tuple(c for c in table_data.column_names if c not in DRIFT_COLUMNS)
    table = Table(title=f"drift against the reference (divergences in {units})")
    for column in ("slice", "metric", "value", "threshold", "breached"):
        table.add_column(column, justify="right")
    for row in rows:
        where = "(all)" if row["overall"] else ",".join(f"{c}={row[c]}" for c in slice_columns)
        value = row["value"] if DRIFT_STATISTIC[row["metric"]].role == "metric" else int(row["value"])
        table.add_row(where, row["metric"], _fmt(value), _fmt(row["threshold"]), "BREACH" if row["breached"] else "")
    console.print(table)
    note = infinite_kl_note(table_data)
    if note:
        console.print(note, soft_wrap=True, markup=False)
    breached = [r for r in rows if r["breached"]]
    for row in breached:
        console.print(f"BREACH {describe_breach(MetricValue.from_row(row, slice_columns), slice_columns)}", soft_wrap=True)
    if breached:
        verdict = f"BREACHED ({len(breached)} threshold(s))"
    elif all(r["threshold"] is None for r in rows):
        verdict = "no thresholds set (the values above were not checked)"
    else:
        verdict = "within thresholds"
    console.print(f"drift verdict: {verdict}")
    console.print(f"drift: {path}", soft_wrap=True)


def print_compare(path: str, console: Console | None = None, storage_options: dict[str, Any] | None = None) -> None:
    """The candidate against the baseline: overall, per slice and the worst classes with
    verdicts, the join counts, every gate breach, and where the report is."""
    from ..metadata import COMPARE_KEY

    console = console or terminal()
    table_data = read_report_table(path, storage_options)
    metadata = table_data.schema.metadata or {}
    units = metadata.get(UNITS_KEY, b"nats").decode()
    info = json.loads(metadata.get(COMPARE_KEY, b"{}"))
    if info.get("tokens"):
        print_token_compare(table_data, info, units, console, path, storage_options)
        _print_gates(info, console)
        console.print(f"compare: {path}", soft_wrap=True)
        return
    header, cells = compare_view(table_data)
    level = info.get("level", 0.95)
    table = Table(title=f"candidate - baseline, {level:.0%} paired intervals (cross-entropy in {units}): overall, per slice, then the classes with the largest CE increase")
    for column in header:
        table.add_column(column, justify="right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    console.print(f"rows joined on ({', '.join(info.get('key', []))}): {info.get('matched', 0):,}; "
                  f"only in the baseline: {info.get('only_baseline', 0):,}; only in the candidate: "
                  f"{info.get('only_candidate', 0):,}", soft_wrap=True)
    _print_gates(info, console)
    console.print(f"compare: {path}", soft_wrap=True)


def _print_gates(info: dict, console: Console) -> None:
    for message in info.get("breaches", []):
        console.print(f"GATE BREACH {message}", soft_wrap=True)
    if info.get("breaches"):
        verdict = f"BREACHED ({len(info['breaches'])})"
    elif not info.get("gates"):
        verdict = "no gates set"
    else:
        verdict = f"passed ({len(info['gates'])} gate(s))"
    console.print(f"gates: {verdict}")


WORST_TOKENS = 5


def print_token_compare(table_data: Any, info: dict, units: str, console: Console, path: str,
                        storage_options: dict[str, Any] | None) -> None:
    """Two language models on the same tokens: the paired differences overall and per
    slice, the KL lower bound, the worst buckets and tokens, the join counts."""
    rows = table_data.to_pylist()
    level = info.get("level", 0.95)
    header, cells = token_compare_view(table_data)
    table = Table(title=f"candidate - baseline on the same tokens, {level:.0%} paired intervals over document "
                        f"buckets (cross-entropy and the KL lower bound in {units}, bits per byte in bits; overall "
                        "row last)")
    for column in header:
        table.add_column(column, justify="right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    overall = next(r for r in rows if r["overall"] and r["scope"] == "all")
    if overall["kl_tokens"]:
        console.print(
            f"KL(baseline‖candidate) LOWER BOUND from the top-k lists, per token ({units}): mean "
            f"{with_interval(overall, 'kl_lower_bound_mean')}, median {_fmt(overall['kl_lower_bound_median'])}, "
            f"p90 {_fmt(overall['kl_lower_bound_p90'])}, p99 {_fmt(overall['kl_lower_bound_p99'])}, "
            f"p99.9 {_fmt(overall['kl_lower_bound_p999'])}, max {_fmt(overall['kl_lower_bound_max'])}; "
            f"the bound sees {overall['baseline_known_mass']:.1%} of the baseline's mass and "
            f"{overall['candidate_known_mass']:.1%} of the candidate's; top-1 ids agree on "
            f"{overall['top1_agreement']:.1%} of {overall['listed_tokens']:,} tokens; reverse KL(candidate‖baseline) "
            f"lower bound mean {with_interval(overall, 'kl_lower_bound_reverse_mean')}", soft_wrap=True, markup=False)
    else:
        console.print("no KL lower bound: it needs top-k lists on both sides", soft_wrap=True)
    for scope, label in (("position", "position"), ("frequency", "frequency rank")):
        buckets = [r for r in rows if r["scope"] == scope and r["overall"] and r["tokens"]]
        worst = sorted(buckets, key=lambda r: -r["ce_mean_diff"])[:WORST_BUCKETS]
        console.print(f"{label} buckets with the largest CE increase: " + "; ".join(
            f"{r['bucket_from']}{'-' + str(r['bucket_to']) if r['bucket_to'] >= 0 else '+'}: "
            f"{with_interval(r, 'ce_mean_diff')} ({r['tokens']:,} tokens)" for r in worst), markup=False, soft_wrap=True)
    tokens_path = f"{path.rsplit('/', 1)[0]}/compare_tokens.parquet" if "/" in path else "compare_tokens.parquet"
    worst_tokens = read_report_table(tokens_path, storage_options).slice(0, WORST_TOKENS).to_pylist()
    console.print("tokens with the largest total CE increase: " + "; ".join(
        f"{r['target']}{' ' + repr(r['token']) if r.get('token') is not None else ''} ({r['tokens']:,} tokens): "
        f"{with_interval(r, 'ce_mean_diff')} each" for r in worst_tokens), markup=False, soft_wrap=True)
    console.print(f"tokens joined on ({', '.join(info.get('key', []))}): {info.get('matched', 0):,}; only in the "
                  f"baseline: {info.get('only_baseline', 0):,}; only in the candidate: {info.get('only_candidate', 0):,}; "
                  f"left out for a -inf log-prob: {overall['n_left_out']:,}", soft_wrap=True)


WORST_BUCKETS = 3


def print_token_report(paths: dict[str, str], console: Console, storage_options: dict[str, Any] | None = None) -> None:
    """A token report's headline per slice, and its worst position and frequency buckets."""
    summary = read_report_table(paths["token_summary"], storage_options)
    units = (summary.schema.metadata or {}).get(UNITS_KEY, b"nats").decode()
    rows = summary.to_pylist()
    slice_columns = summary.column_names[: summary.column_names.index("overall")]
    shown = [name for name in TOKEN_HEADLINE if any(_present(row[name]) for row in rows)]
    table = Table(title=f"token report (overall row last); cross-entropy in {units}, bits per byte in bits")
    for column in [*slice_columns, *shown]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*("(all)" if row["overall"] else _fmt(row[c]) for c in slice_columns),
                      *(with_interval(row, c) if f"{c}_lo" in row else _fmt(row[c]) for c in shown))
    console.print(table)
    for name, label, first in (("token_positions", "position", "position_from"),
                               ("token_frequency", "frequency rank", "rank_from")):
        buckets = [r for r in read_report_table(paths[name], storage_options).to_pylist()
                   if r.get("overall", True) and r["tokens"]]
        worst = sorted(buckets, key=lambda r: -r["ce_mean"])[:WORST_BUCKETS]
        spans = [f"{r[first]}-{r[first.replace('from', 'to')]}" if r[first.replace('from', 'to')] >= 0 else f"{r[first]}+"
                 for r in worst]
        console.print(f"worst {label} buckets by ce_mean: " + "; ".join(
            f"{span}: {with_interval(r, 'ce_mean')} ({r['tokens']:,} tokens)" for span, r in zip(spans, worst)),
            markup=False)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
