"""The evaluation's sections: data problems, summary cards, per-class and per-slice
tables, forest plots of CE, the reliability diagram and the confusion matrix."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from xent_kernels import class_columns
from xent_kernels import summary_columns

from ...metadata import INTEGRITY_KEY
from ..tables import bad_shards_summary
from .common import (
    LABELS, Page, altair, cell, class_label, finite, interval_plot, largest_first, number, slice_label, spec, text_cell,
)

MAX_CONFUSION_CLASSES = 30  # rows and columns of the confusion heat map
TOP_CONFUSIONS = 10
CARD_METRICS = ("ce_mean", "accuracy", "ece", "brier", "auc", "f1_macro")


def slice_columns_of(summary: pa.Table) -> list[str]:
    """The slice key columns: they come before ``overall``."""
    return summary.column_names[: summary.column_names.index("overall")]


def build(tables: dict[str, pa.Table], page: Page, max_classes: int) -> None:
    """Add the evaluation's sections for ``summary`` (with ``per_class``, ``confusion``
    and ``bad_shards`` when present)."""
    summary = tables["summary"]
    summary_rows = summary.to_pylist()
    slice_by = slice_columns_of(summary)
    overall = next(r for r in summary_rows if r["overall"])
    slices = [r for r in summary_rows if not r["overall"]]
    problems = _problems(overall, tables.get("bad_shards"), slices, slice_by)
    page.problems += problems
    if not problems:
        # Files without page checksums are no problem (the footer counts them): only a
        # verification that ran on every file is claimed here.
        integrity = page.metadata.get(INTEGRITY_KEY.decode())  # older reports lack it
        verified = ("; page checksums were not recorded for this report" if not isinstance(integrity, dict)
                    else "; every input file's page checksums verified"
                    if 0 < integrity["files"] == integrity["page_checksums_verified"] else "")
        page.checks.append(f"No data problems: no bad shards, no non-finite rows{verified}.")
    page.sections["summary"] = {"cards": _cards(overall, page)}

    per_class = tables.get("per_class")
    class_rows = [r for r in per_class.to_pylist() if r["overall"]] if per_class is not None else []
    if per_class is not None:
        page.subtitle.append(f"{len(class_rows)} classes")
    for row in class_rows:
        row["label"] = class_label(row)
    worst = sorted(class_rows, key=lambda r: largest_first(r["ce_mean"]))[:max_classes]
    if class_rows:
        metrics = [c for c in class_columns(headline=True) if c in per_class.column_names]
        page.sections["per_class"] = {
            "header": [("class", "num", ""), ("name", "text", ""), ("n", "num", "")]
                      + [(LABELS.get(m, m) + page.units_of(m), "num", m) for m in metrics],
            "rows": [[{"text": str(r["class"]), "sort": r["class"], "interval": ""}, text_cell(r["class_name"]),
                      cell(r, "n")] + [cell(r, m) for m in metrics] for r in worst],
            "left_out": len(class_rows) - len(worst),
        }
        chart, named = _forest(worst, page.units, "class")
        page.chart("forest-classes", "forest", chart, f"Mean CE per class ({page.units}), the worst {len(worst)}", named)
    if slices:
        metrics = [c for c in summary_columns(headline=True) if c in summary.column_names]
        page.sections["per_slice"] = {
            "header": [(c, "text", "") for c in slice_by] + [("n", "num", "")]
                      + [(LABELS.get(m, m) + page.units_of(m), "num", m) for m in metrics],
            "rows": [[text_cell(r[c]) for c in slice_by] + [cell(r, "n")] + [cell(r, m) for m in metrics]
                     for r in slices],
        }
        for row in slices:
            row["label"] = slice_label(row, slice_by)
        ranked = sorted(slices, key=lambda r: largest_first(r["ce_mean"]))
        chart, named = _forest(ranked, page.units, "slice")
        page.chart("forest-slices", "forest", chart, f"Mean CE per slice ({page.units})", named)
    if class_rows or slices:
        page.sections["forest"] = True
    if overall.get("confidence_hist") and sum(overall["confidence_hist"]) > 0:
        page.sections["reliability"] = {"has_accuracy": bool(overall.get("confidence_hist_accuracy")),
                                        "ece": cell(overall, "ece") if "ece" in overall else None}
        page.chart("reliability-chart", "reliability", _reliability(overall))
    confusion = tables.get("confusion")
    if confusion is not None and confusion.num_rows and class_rows:
        section = _confusion_section(confusion, class_rows, worst)
        page.chart("confusion-chart", "confusion", section.pop("spec"))
        page.sections["confusion"] = section


def _cards(overall: dict, page: Page) -> list[dict[str, Any]]:
    cards = [{"metric": "n", "label": "rows", "text": number(overall["n"]), "value": overall["n"], "interval": ""}]
    for name in CARD_METRICS:
        if overall.get(name) is not None:  # an infinite CE shows as ∞
            shown = cell(overall, name)
            cards.append({"metric": name, "label": LABELS.get(name, name) + page.units_of(name), "text": shown["text"],
                          "value": repr(overall[name]), "interval": shown["interval"]})
    auc, bound = next((c for c in cards if c["metric"] == "auc"), None), overall.get("auc_error_bound")
    if auc is not None and overall.get("auc_exact"):
        auc["detail"] = "exact"
    elif auc is not None and finite(bound) and bound > 0:  # the binned AUC's worst case; 0 when no pair shares a bin
        mantissa, exponent = f"{bound:.1e}".split("e")
        auc["detail"] = f"± binning ≤ {mantissa}e{int(exponent)}"
    return cards


def _forest(rows: list[dict], units: str, title: str) -> tuple[dict, list[str]]:
    """CE with its interval per row (class or slice), in the order given, and the rows whose CE is not finite."""
    return interval_plot(rows, value="ce_mean", lo="ce_mean_lo", hi="ce_mean_hi", label="label",
                         axis=f"mean CE ({units})", tooltip_title=title)


def _reliability(overall: dict) -> dict:
    """Accuracy against mean confidence per bin, the diagonal, and the weight per bin."""
    alt = altair()
    weights = overall["confidence_hist"]
    bins = len(weights)
    accuracy = overall.get("confidence_hist_accuracy")
    confidence = overall.get("confidence_hist_confidence")
    total = sum(weights) or 1.0
    rows = [{"lo": i / bins, "hi": (i + 1) / bins, "share": w / total, "weight": w,
             "accuracy": accuracy[i] if accuracy else None, "confidence": confidence[i] if confidence else None}
            for i, w in enumerate(weights)]
    bars = alt.Chart(alt.Data(values=rows)).mark_rect(opacity=0.6, stroke="white").encode(
        x=alt.X("lo:Q", title="confidence (top probability)", scale=alt.Scale(domain=[0, 1])), x2="hi:Q",
        y=alt.Y("share:Q", title="share of weight"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("lo:Q", title="from"), alt.Tooltip("hi:Q", title="to"),
                 alt.Tooltip("weight:Q", format=",.2f"), alt.Tooltip("share:Q", format=".3f")],
    ).properties(width=360, height=110)
    if not accuracy:
        return spec(bars)
    diagonal = alt.Chart(alt.Data(values=[{"x": 0, "y": 0}, {"x": 1, "y": 1}])).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    points = [r for r in rows if r["weight"] > 0 and r["accuracy"] is not None and math.isfinite(r["accuracy"])]
    curve = alt.Chart(alt.Data(values=points)).mark_line(point=True).encode(
        x=alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("weight:Q", format=",.2f")])
    return spec(alt.vconcat((diagonal + curve).properties(width=360, height=300), bars))


def _confusion(cells: list[dict], shown: list[str], units_note: str) -> dict:
    alt = altair()
    base = alt.Chart(alt.Data(values=cells)).encode(
        x=alt.X("predicted:N", sort=shown, title="predicted class"),
        y=alt.Y("true:N", sort=shown, title="true class"))
    heat = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title=units_note),
        tooltip=[alt.Tooltip("true:N"), alt.Tooltip("predicted:N"), alt.Tooltip("share:Q", format=".4f"),
                 alt.Tooltip("n:Q", format=",")])
    size = max(300, min(24 * len(shown), 720))
    return spec(heat.properties(width=size, height=size))


def _problems(overall: dict, bad_shards: pa.Table | None, slices: list[dict],
              slice_by: list[str]) -> list[dict]:
    """Data problems, each as a headline and optional detail rows."""
    problems = []
    if overall.get("n_bad_shards"):
        rows = bad_shards.to_pylist() if bad_shards is not None else []
        problems.append({"id": "bad-shards",
                         "text": bad_shards_summary(overall, bad_shards),
                         "rows": [[r["file"], r["reason"], "unknown" if r["rows"] is None else number(r["rows"])]
                                  for r in rows],
                         "header": ["file", "reason", "rows"]})
    if overall.get("n_nonfinite"):
        problems.append({"id": "nonfinite", "text": f"{overall['n_nonfinite']:,} row(s) with non-finite predictions "
                         "were counted and left out"})
    small = [slice_label(r, slice_by) for r in slices if r.get("small_slice")]
    if small:
        problems.append({"id": "small-slices", "text": f"{len(small)} small slice(s): {', '.join(small)}"})
    return problems


def _confusion_section(confusion: pa.Table, class_rows: list[dict], worst: list[dict]) -> dict[str, Any]:
    cells = [r for r in confusion.to_pylist() if r["overall"]]
    labels = {r["class"]: r["label"] for r in class_rows}
    for c in cells:
        for side in ("true", "predicted"):
            labels.setdefault(c[side], class_label(c, side, f"{side}_name"))
    totals: dict[int, float] = {}
    for c in cells:
        totals[c["true"]] = totals.get(c["true"], 0.0) + c["weight"]
    shown_ids = [r["class"] for r in (class_rows if len(class_rows) <= MAX_CONFUSION_CLASSES else worst)]
    shown_ids = sorted(shown_ids[:MAX_CONFUSION_CLASSES])
    shown = set(shown_ids)
    heat = [{"true": labels[c["true"]], "predicted": labels[c["predicted"]], "n": c["n"],
             "share": c["weight"] / totals[c["true"]] if totals[c["true"]] else 0.0}
            for c in cells if c["true"] in shown and c["predicted"] in shown]
    off = sorted((c for c in cells if c["true"] != c["predicted"]), key=lambda c: -c["weight"])[:TOP_CONFUSIONS]
    top = [{"true": labels[c["true"]], "predicted": labels[c["predicted"]], "n": number(c["n"]),
            "weight": number(c["weight"]),
            "share": number(c["weight"] / totals[c["true"]] if totals[c["true"]] else math.nan)} for c in off]
    return {"spec": _confusion(heat, [labels[c] for c in shown_ids], "share of the true class"),
            "shown": len(shown_ids), "total": len(class_rows), "top": top}
