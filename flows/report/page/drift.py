"""The drift section: every metric against its threshold, the predicted-class marginals
and confidence histograms of both sides, and the per-sample KL per class."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ...drift_statistics import DRIFT_STATISTIC
from ...metadata import CLASSES_KEY, REFERENCE_FINGERPRINT_KEY, decoded_metadata
from ..metric_values import MetricValue
from ..text import class_text, describe_breach, infinite_kl_note
from .common import (
    Page, altair, cell, edge_marks, finite, largest_first, nonfinite_rows, number, slice_label, spec, text_cell,
    value_axis,
)
from .evaluation import slice_columns_of

MAX_SLICES_CHARTED = 6  # more slices: the charts show all slices together only
MAX_MARGINAL_CLASSES = 30  # classes in the marginals chart: the largest share differences first
SIDES = ("reference", "current")
ALL = "all slices"


def build(tables: dict[str, pa.Table], page: Page, max_classes: int) -> None:
    """Add the drift section for ``drift`` (with its charts when ``drift_distributions``
    is there), its breaches to the verdict, and a check line when none is breached."""
    drift = tables["drift"]
    slice_by = slice_columns_of(drift)
    rows = drift.to_pylist()
    metrics = [r for r in rows if r["class"] is None]
    for row in metrics:
        row["where"] = ALL if row["overall"] else slice_label(row, slice_by)
    metrics.sort(key=lambda r: not r["overall"])  # overall first, then the slices in table order
    breached = [r for r in metrics if r["breached"]]
    page.breaches += [{"kind": "drift", "text": "drift: " + describe_breach(MetricValue.from_row(r, slice_by), tuple(slice_by))}
                      for r in breached]
    checked = [r for r in metrics if r["threshold"] is not None]
    if not checked:
        page.checks.append("Drift: no thresholds set; the values were not checked.")
    elif not breached:
        page.checks.append(f"Drift: {len(checked)} value(s) checked against their threshold, none breached.")
    slices = sorted({r["where"] for r in metrics if not r["overall"]})
    page.subtitle.append(f"drift against the reference, divergences in {page.units}"
                         + (f"; {len(slices)} slices by {', '.join(slice_by)}" if slices else ""))

    section: dict[str, Any] = {
        "metrics": {
            "header": [("slice", "text", ""), ("metric", "text", ""), (f"value ({page.units} for divergences)", "num", ""),
                       ("threshold", "num", ""), ("breached", "text", "")],
            "rows": [_metric_row(r) for r in metrics],
        },
        "checked": len(checked), "breached": len(breached), "slices": len(slices),
        "charted_slices": len(slices) <= MAX_SLICES_CHARTED,
        "infinite_kl": infinite_kl_note(drift),
    }
    metadata = decoded_metadata(drift)  # the page's may be an evaluation's (a nightly run's tables)
    reference = metadata.get(REFERENCE_FINGERPRINT_KEY.decode())
    if isinstance(reference, dict):
        section["reference"] = {"n_files": reference.get("n_files"), "digest": reference.get("digest")}
    names = metadata.get(CLASSES_KEY.decode())
    label = _class_labeller(names if isinstance(names, list) else None)

    distributions = tables.get("drift_distributions")
    if distributions is not None and distributions.num_rows:
        shown = {ALL, *slices} if section["charted_slices"] else {ALL}
        groups = _groups(distributions.to_pylist(), slice_columns_of(distributions), shown)
        marginals = {where: g for (where, kind), g in groups.items() if kind == "marginal"}
        confidence = {where: g for (where, kind), g in groups.items() if kind == "confidence"}
        if marginals:
            chart, section["marginal_classes"] = _marginals(marginals, label)
            page.chart("drift-marginals", "drift", chart, "Predicted-class marginals: share of the predicted mass")
        if confidence:
            page.chart("drift-confidence", "drift", _confidence(confidence),
                       "Confidence (top probability) histograms, bins at the reference's quantiles")
    class_kl = [r for r in rows if r["class"] is not None and r["overall"] and r["metric"] == "kl_per_sample"]
    if class_kl:
        worst = sorted(class_kl, key=lambda r: largest_first(r["value"]))[:max_classes]
        section["kl_classes"] = {"shown": len(worst), "left_out": len(class_kl) - len(worst)}
        chart, named = _class_kl(worst, label, page.units)
        page.chart("drift-kl-classes", "drift", chart,
                   f"Per-sample KL(reference‖current) per class ({page.units}), all slices, the largest first", named)
    page.sections["drift"] = section


def _metric_row(row: dict) -> list[dict[str, Any]]:
    value = row["value"]
    shown = cell(row, "value", text=number if DRIFT_STATISTIC[row["metric"]].role == "metric" or not finite(value)
                 else lambda v: number(int(v)))
    if row["breached"]:
        shown["class"] = "breached-cell"
    return [text_cell(row["where"]), text_cell(row["metric"]), shown, cell(row, "threshold"),
            {"text": "BREACHED" if row["breached"] else "", "interval": "", "sort": int(bool(row["breached"])),
             "class": "breached-cell" if row["breached"] else ""}]


def _class_labeller(names: list[str] | None):
    """Class index -> its label, with its name from the ``xent.classes`` metadata when known."""
    return lambda index: class_text(index, names[index] if names and index < len(names) else None)


def _groups(rows: list[dict], slice_by: list[str], shown: set[str]) -> dict[tuple[str, str], list[dict]]:
    """The distribution rows by (slice label or ALL, kind), each with its share of its side's weight."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        row["where"] = ALL if row["overall"] else slice_label(row, slice_by)
        if row["where"] in shown:
            groups.setdefault((row["where"], row["kind"]), []).append(row)
    for group in groups.values():
        totals = {side: sum(r["weight"] for r in group if r["side"] == side) for side in SIDES}
        for row in group:
            row["share"] = row["weight"] / totals[row["side"]] if totals[row["side"]] > 0 else None
    return groups


def _order(groups: dict[str, list[dict]]) -> list[str]:
    return [ALL, *sorted(where for where in groups if where != ALL)] if ALL in groups else sorted(groups)


def _bars(values: list[dict], x, x_title: str, y_title: str, tooltip: list, groups: dict[str, list[dict]]) -> dict:
    """Reference and current side by side per x value; one row of bars per slice."""
    alt = altair()
    bars = alt.Chart(alt.Data(values=values)).mark_bar().encode(
        x=x.title(x_title), xOffset=alt.XOffset("side:N", sort=list(SIDES)),
        y=alt.Y("share:Q", title=y_title),
        color=alt.Color("side:N", sort=list(SIDES), scale=alt.Scale(domain=list(SIDES)), title=None),
        tooltip=[alt.Tooltip("where:N", title="slice"), alt.Tooltip("side:N"), *tooltip,
                 alt.Tooltip("share:Q", format=".4f"), alt.Tooltip("weight:Q", format=",.2f")],
    ).properties(width=max(300, min(28 * len({v["x"] for v in values}), 900)), height=140)
    if len(groups) == 1:
        return spec(bars)
    return spec(bars.facet(row=alt.Row("where:N", sort=_order(groups), title=None)))


def _marginals(groups: dict[str, list[dict]], label) -> tuple[dict, dict[str, int]]:
    """Grouped bars per class; with many classes, those whose share changed most (all slices together)."""
    alt = altair()
    basis = groups.get(ALL) or next(iter(groups.values()))
    shares = {(r["side"], r["bin"]): r["share"] or 0.0 for r in basis}
    classes = sorted({r["bin"] for r in basis})
    if len(classes) > MAX_MARGINAL_CLASSES:
        classes = sorted(classes, key=lambda c: -abs(shares.get(("current", c), 0.0) - shares.get(("reference", c), 0.0)))
        classes = sorted(classes[:MAX_MARGINAL_CLASSES])
    kept = set(classes)
    values = [{"x": label(r["bin"]), "where": r["where"], "side": r["side"], "share": r["share"], "weight": r["weight"]}
              for g in groups.values() for r in g if r["bin"] in kept]
    x = alt.X("x:N", sort=[label(c) for c in classes])
    chart = _bars(values, x, "predicted class", "share of predicted mass", [alt.Tooltip("x:N", title="class")], groups)
    return chart, {"shown": len(classes), "total": len({r["bin"] for r in basis})}


def _confidence(groups: dict[str, list[dict]]) -> dict:
    """Grouped bars per confidence bin [lo, hi): each holds about 1/B of the reference's weight."""
    alt = altair()
    values = [{"x": f"{r['lo']:.3f}–{r['hi']:.3f}", "order": r["bin"], "where": r["where"], "side": r["side"],
               "share": r["share"], "weight": r["weight"]} for g in groups.values() for r in g]
    # Slices have their own reference quantiles, hence their own bins: one x scale per row.
    x = alt.X("x:N", sort=alt.EncodingSortField("order"))
    chart = _bars(values, x, "confidence bin (top probability)", "share of weight", [alt.Tooltip("x:N", title="bin")],
                  groups)
    if "facet" in chart:
        chart["resolve"] = {"scale": {"x": "independent", "xOffset": "independent"}}
    return chart


def _class_kl(rows: list[dict], label, units: str) -> tuple[dict, list[str]]:
    """Bars of the mean per-sample KL per class, and the classes whose KL is not finite."""
    alt = altair()
    values, named = nonfinite_rows([{"class": label(r["class"]), "kl": r["value"], "n": r["n"]} for r in rows], "kl",
                                   lambda r: f"class {r['class']}")
    title = f"mean KL ({units})"
    y = alt.Y("class:N", sort=[r["class"] for r in values], title="class")  # ∞ first, as sorted
    rows_tooltip = alt.Tooltip("n:Q", format=",", title="joined rows")
    bars = alt.Chart().mark_bar().encode(
        y=y, x=alt.X("kl:Q", axis=value_axis(title)),
        tooltip=[alt.Tooltip("class:N"), alt.Tooltip("kl:Q", format=".5f", title=title), rows_tooltip])
    edges = edge_marks(values, "x", y=y, tooltip=[alt.Tooltip("class:N"), alt.Tooltip("nonfinite:N", title=title),
                                                  rows_tooltip])
    chart = alt.layer(bars, *edges, data=alt.Data(values=values)).properties(width=520, height=alt.Step(16))
    return spec(chart), named
