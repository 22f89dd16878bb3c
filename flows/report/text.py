"""Report rows in words, shared by the terminal, the page and Prefect's artifacts."""

from __future__ import annotations

import json
import math

import pyarrow as pa

from ..config import Gate
from ..metadata import CONFIG_KEY
from ..drift_statistics import INFINITE_KL
from .metric_values import MetricValue




def infinite_kl_note(drift: pa.Table) -> str | None:
    """How many joined rows had infinite per-sample KL, and whether smoothing made them
    finite (the terminal and the page); None without per-sample KL."""
    rows = {r["metric"]: r for r in drift.to_pylist() if r["overall"] and r["class"] is None}
    if rows.get("kl_per_sample", {}).get(INFINITE_KL) is None:
        return None
    infinite, matched = rows["kl_per_sample"][INFINITE_KL], int(rows["n_matched"]["value"])
    config = json.loads((drift.schema.metadata or {}).get(CONFIG_KEY, b"{}"))
    smoothing = (config.get("drift") or {}).get("per_sample_smoothing")
    if smoothing is not None:
        return (f"per-sample KL: both sides smoothed with eps = {smoothing:g} (drift.per_sample_smoothing); "
                f"{infinite:,} of {matched:,} joined rows are infinite without it")
    if not infinite:
        return f"per-sample KL: 0 of {matched:,} joined rows infinite (exact, no smoothing)"
    return (f"per-sample KL: {infinite:,} of {matched:,} joined rows infinite (the current side gives probability 0 "
            "to a class the reference gives mass); set drift.per_sample_smoothing (--per-sample-smoothing) to "
            "smooth both sides")


def class_text(index: int, name: str | None, parenthesized: bool = False) -> str:
    """A class as shown: its index, then its name (in parentheses if `parenthesized`)
    unless the name is the index or unknown."""
    if name is None or name == str(index):
        return str(index)
    return f"{index} ({name})" if parenthesized else f"{index} {name}"


def describe_breach(value: MetricValue, slice_by: tuple[str, ...]) -> str:
    return (f"{value.key.column} = {value.value:.6g} exceeds threshold {value.threshold:.6g} "
            f"({value.key.where(slice_by)})")


def describe_gate(gate: Gate) -> str:
    limit = f"max_increase {gate.max_increase:g}" if gate.max_increase is not None else f"max_decrease {gate.max_decrease:g}"
    return f"{gate.metric} {limit} ({gate.mode})"


COMPARE_FIXED = {"overall", "class", "class_name", "n", "wins", "ties", "losses", "verdict", "n_matched",
                 "n_only_baseline", "n_only_candidate"}


def _interval(row: dict, metric: str) -> str:
    value = row.get(f"{metric}_diff")
    if value is None or math.isnan(value):
        return ""
    return f"{value:+.4f} [{row[f'{metric}_diff_lo']:+.4f}, {row[f'{metric}_diff_hi']:+.4f}]"


TOKEN_DIFFERENCES = ("ce_mean", "perplexity", "bits_per_byte", "top1_accuracy")


def token_compare_view(table: pa.Table) -> tuple[list[str], list[list[str]]]:
    """The short view of a token comparison's compare.parquet: each slice's row of all
    its tokens, then the overall one, with the differences, the KL lower bound's mean
    and the verdict, as header and text cells."""
    slice_columns = table.column_names[: table.column_names.index("overall")]
    rows = sorted((r for r in table.to_pylist() if r["scope"] == "all"), key=lambda r: r["overall"])
    metrics = [m for m in TOKEN_DIFFERENCES if f"{m}_diff" in table.column_names
               and any(r[f"{m}_diff"] is not None and not math.isnan(r[f"{m}_diff"]) for r in rows)]
    header = ["slice", "tokens", *(f"{m} diff [interval]" for m in metrics), "KL lower bound mean [interval]",
              "wins/ties/losses", "verdict"]
    cells = []
    for row in rows:
        where = "(all)" if row["overall"] else ",".join(f"{c}={row[c]}" for c in slice_columns)
        bound = row["kl_lower_bound_mean"]
        kl = "" if bound is None or math.isnan(bound) else (
            f"{bound:.4f} [{row['kl_lower_bound_mean_lo']:.4f}, {row['kl_lower_bound_mean_hi']:.4f}]")
        cells.append([where, f"{row['tokens']:,}", *(_interval(row, m) for m in metrics), kl,
                      f"{row['wins']:,}/{row['ties']:,}/{row['losses']:,}", row["verdict"] or ""])
    return header, cells


def compare_view(table: pa.Table, worst: int = 5) -> tuple[list[str], list[list[str]]]:
    """The short view of compare.parquet: the overall row, each slice's row, and the
    `worst` classes overall by CE difference (largest first), as header and text cells."""
    slice_columns = [c for c in table.column_names if c not in COMPARE_FIXED and not c.endswith(
        ("_baseline", "_candidate", "_diff", "_diff_lo", "_diff_hi", "_verdict"))]
    rows = table.to_pylist()
    overall = [r for r in rows if r["overall"] and r["class"] is None]
    slices = [r for r in rows if not r["overall"] and r["class"] is None]
    classes = sorted((r for r in rows if r["overall"] and r["class"] is not None),
                     key=lambda r: -(r["ce_mean_diff"] if r["ce_mean_diff"] == r["ce_mean_diff"] else -math.inf))[:worst]
    metrics = [m for m in ("ce_mean", "accuracy", "ece") if f"{m}_diff" in table.column_names]
    header = ["slice", "class", "n", *(f"{m} diff [interval]" for m in metrics), "wins/ties/losses", "verdict"]
    cells = []
    for row in [*overall, *slices, *classes]:
        where = "(all)" if row["overall"] else ",".join(f"{c}={row[c]}" for c in slice_columns)
        cls = "(all)" if row["class"] is None else class_text(row["class"], row["class_name"])
        cells.append([where, cls, f"{row['n']:,}", *(_interval(row, m) for m in metrics),
                      f"{row['wins']:,}/{row['ties']:,}/{row['losses']:,}", row["verdict"] or ""])
    return header, cells
