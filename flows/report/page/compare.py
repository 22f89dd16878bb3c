"""The comparison's sections (``compare.parquet``): the gates' verdict and the join's
counts, summary cards of the overall differences, forest plots of the CE differences
per class and per slice, and sortable tables of every difference per class and per
slice, each with its paired interval and verdict."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...config import Gate
from ...metadata import COMPARE_KEY, REFERENCE_FINGERPRINT_KEY
from ..text import describe_gate
from .common import (
    LABELS, Page, cell, class_label, finite, interval_plot, largest_first, number, signed, slice_label, text_cell,
)
from .evaluation import slice_columns_of

CARD_METRICS = ("ce_mean", "ce_macro", "accuracy", "ece", "brier", "f1_macro", "auc")
VERDICT_TEXT = {"better": "better", "worse": "worse", "no_significant_difference": "no significant difference"}
VERDICT_COLORS = {"better": "#2e7d32", "worse": "#c62828", "no significant difference": "#9e9e9e",
                  "no verdict": "#616161"}


def build(tables: dict[str, pa.Table], page: Page, max_classes: int) -> None:
    """Add the comparison's sections for ``compare``: the verdict (breached and passed
    gates, rows only on one side), cards, forest plots and tables."""
    table = tables["compare"]
    info = page.metadata.get(COMPARE_KEY.decode())
    info = info if isinstance(info, dict) else {}
    # Per (slice, class) rows are not shown: leave them in Arrow (C x slices of them).
    rows = table.filter(pc.or_(table.column("overall"), pc.is_null(table.column("class")))).to_pylist()
    slice_by = slice_columns_of(table)
    metrics = [name.removesuffix("_diff") for name in table.column_names if name.endswith("_diff")]
    overall = next(r for r in rows if r["overall"] and r["class"] is None)
    classes = [r for r in rows if r["overall"] and r["class"] is not None]
    slices = [r for r in rows if not r["overall"] and r["class"] is None]
    for row in classes:
        row["label"] = class_label(row)
    for row in slices:
        row["label"] = slice_label(row, slice_by)

    gate_verdict(page, info)
    join_verdict(page, info, overall)
    matched = overall.get("n_matched")
    page.subtitle.append(f"candidate - baseline on {number(matched if matched is not None else info.get('matched'))} "
                         "joined rows")
    page.subtitle.append(f"{len(classes)} classes")

    worst = sorted(classes, key=worst_first)[:max_classes]
    section: dict[str, Any] = {
        "cards": _cards(overall, metrics, page),
        "about": about(info, page.metadata),
        "classes_left_out": len(classes) - len(worst),
        "per_class": _table(worst, metrics, page, [("class", "num", ""), ("name", "text", "")],
                            lambda r: [{"text": str(r["class"]), "sort": r["class"], "interval": ""},
                                       text_cell(r["class_name"])]) if classes else None,
        "per_slice": _table(sorted(slices, key=worst_first), metrics, page, [(c, "text", "") for c in slice_by],
                            lambda r: [text_cell(r[c]) for c in slice_by]) if slices else None,
    }
    page.sections["compare"] = section
    axis = f"mean CE candidate - baseline ({page.units})"
    if worst:
        chart, named = forest(worst, axis, "class")
        page.chart("compare-forest-classes", "compare", chart,
                   f"Mean CE difference per class ({page.units}), the largest increase first"
                   + (f": {len(worst)} of {len(classes)}" if len(worst) < len(classes) else ""), named)
    if slices:
        chart, named = forest(sorted(slices, key=worst_first), axis, "slice")
        page.chart("compare-forest-slices", "compare", chart,
                   f"Mean CE difference per slice ({page.units}), the largest increase first", named)


def worst_first(row: dict) -> float:
    """Sort key: the largest CE increase first (an infinite one first of all), NaN last."""
    return largest_first(row.get("ce_mean_diff"))


def gate_verdict(page: Page, info: dict) -> None:
    """Breached gates (kind "gate") and a check line for the gates that passed, from the
    ``xent.compare`` metadata `info`."""
    breaches = [str(message) for message in info.get("breaches", [])]
    page.breaches += [{"kind": "gate", "text": message} for message in breaches]
    gates = [describe_gate(Gate(**gate)) for gate in info.get("gates", [])]
    passed = [gate for gate in gates if not any(message.startswith(f"{gate}:") for message in breaches)]
    if passed:
        page.checks.append(f"{len(passed)} of {len(gates)} gate(s) passed: {'; '.join(passed)}.")
    elif not gates:
        page.checks.append("No gates set: nothing decides whether the candidate may ship.")


def join_verdict(page: Page, info: dict, overall: dict, what: str = "rows") -> None:
    """The `what` (rows, tokens) of one dump whose key the other lacks as a data problem,
    else a check line; counts from the overall row, else from `info`."""
    key = ", ".join(info.get("key", []))
    counts = [overall.get(name) if overall.get(name) is not None else info.get(fallback) for name, fallback in
              (("n_matched", "matched"), ("n_only_baseline", "only_baseline"), ("n_only_candidate", "only_candidate"))]
    matched, only_baseline, only_candidate = (count or 0 for count in counts)
    if only_baseline or only_candidate:
        page.problems.append({
            "id": "join",
            "text": f"{what} joined on ({key}): {matched:,} matched; {only_baseline:,} only in the baseline and "
                    f"{only_candidate:,} only in the candidate, left out of every difference",
        })
    else:
        page.checks.append(f"Every {what.removesuffix('s')} joined on ({key}): {matched:,} matched, none only in "
                           "one dump.")


def verdict_class(verdict: Any) -> str:
    return verdict if verdict in ("better", "worse") else ""


def _cards(overall: dict, metrics: list[str], page: Page) -> list[dict[str, Any]]:
    """The overall differences: value, interval, verdict, and both models' values."""
    cards = [{"metric": "n", "label": "rows compared", "text": number(overall["n"]), "value": overall["n"],
              "interval": "", "detail": f"wins/ties/losses {overall['wins']:,}/{overall['ties']:,}/"
                                        f"{overall['losses']:,}", "verdict": "", "verdict_text": ""}]
    for name in CARD_METRICS:
        if name not in metrics or overall.get(f"{name}_diff") is None:  # an infinite difference shows as ∞
            continue
        shown = cell(overall, f"{name}_diff", text=signed)
        verdict = overall.get(f"{name}_verdict")
        cards.append({
            "metric": name, "label": LABELS.get(name, name) + page.units_of(name), "text": shown["text"],
            "value": repr(overall[f"{name}_diff"]), "interval": shown["interval"] or "no interval",
            "detail": f"{number(overall.get(f'{name}_baseline'))} → {number(overall.get(f'{name}_candidate'))}",
            "verdict": verdict_class(verdict), "verdict_text": VERDICT_TEXT.get(verdict, ""),
        })
    return cards


def _table(rows: list[dict], metrics: list[str], page: Page, key_header: list[tuple], key_cells) -> dict[str, Any]:
    """Each row's n, wins/ties/losses, CE verdict, both models' mean CE and every
    difference with its interval, coloured by its verdict; metrics without a value in
    any row are left out."""
    shown = [m for m in metrics if any(finite(r.get(f"{m}_diff")) for r in rows)]
    header = [*key_header, ("n", "num", ""), ("wins", "num", "wins"), ("ties", "num", "ties"),
              ("losses", "num", "losses"), ("verdict", "text", "verdict"),
              ("mean CE baseline" + page.units_of("ce_mean"), "num", "ce_mean_baseline"),
              ("mean CE candidate" + page.units_of("ce_mean"), "num", "ce_mean_candidate")]
    header += [(f"{LABELS.get(m, m)} diff{page.units_of(m)}", "num", f"{m}_diff") for m in shown]
    body = []
    for row in rows:
        verdict = row.get("verdict")
        cells = [*key_cells(row), cell(row, "n"), cell(row, "wins"), cell(row, "ties"), cell(row, "losses"),
                 {**text_cell(VERDICT_TEXT.get(verdict, verdict)), "class": verdict_class(verdict)},
                 cell(row, "ce_mean_baseline"), cell(row, "ce_mean_candidate")]
        cells += [{**cell(row, f"{m}_diff", text=signed), "class": verdict_class(row.get(f"{m}_verdict"))}
                  for m in shown]
        body.append(cells)
    return {"header": header, "rows": body}


def forest(rows: list[dict], axis: str, title: str) -> tuple[dict, list[str]]:
    """The CE difference with its interval per row, coloured by its verdict, and a dashed line at 0."""
    for row in rows:
        row["verdict_text"] = VERDICT_TEXT.get(row.get("ce_mean_verdict"), "no verdict")
    present = {row["verdict_text"] for row in rows}
    colors = {name: color for name, color in VERDICT_COLORS.items() if name in present}  # the legend: these only
    return interval_plot(rows, value="ce_mean_diff", lo="ce_mean_diff_lo", hi="ce_mean_diff_hi", label="label",
                         axis=axis, tooltip_title=title, zero_rule=True, color="verdict_text", colors=colors)


def about(info: dict, metadata: dict) -> dict[str, Any]:
    """How the comparison was made: join key, intervals, tie tolerance, the baseline's inputs."""
    about: dict[str, Any] = {
        "key": ", ".join(info.get("key", [])), "level": info.get("level"), "n_buckets": info.get("n_buckets"),
        "tie_tolerance": info.get("tie_tolerance"),
    }
    baseline = metadata.get(REFERENCE_FINGERPRINT_KEY.decode())
    if isinstance(baseline, dict):
        about["baseline_digest"] = baseline.get("digest")
        about["baseline_files"] = baseline.get("n_files")
    return about
