"""The nightly history as pictures: CE, accuracy, ECE and drift metrics per source and
slice over run dates, intervals as rules, breached runs marked.

The same section serves a nightly run's page (its source, up to that run) and the
history page (``xent report REPORT_ROOT``, every source). `history` is what
:func:`flows.runs.nightly.history_table` reads: metrics.parquet rows plus ``run_date``
and ``source``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...metadata import HISTORY_COLUMNS, HISTORY_KEY
from .common import LABELS, Page, altair, edge_marks, nonfinite_rows

# Trends drawn, per scope of metrics.parquet: the summary's overall and per-slice rows,
# and the drift metrics of all classes together (these, and every other drift metric
# with a threshold).
TREND_METRICS = {"slice": ("ce_mean", "accuracy", "ece", "perplexity", "bits_per_byte", "top1_accuracy"),
                 "drift": ("kl_per_sample", "marginal_js", "confidence_psi")}
MAX_DATES = 90  # run dates drawn, the latest; the page says how many earlier ones are left out
OVERALL = "overall"
BREACHED = "#b71c1c"
# The chart's rows, written as CSV (a third of the size of JSON objects) and parsed by Vega.
CSV_FIELDS = ("date", "source", "series", "metric", "value", "lo", "hi", "threshold", "breached", "run", "nonfinite")
CSV_PARSE = {"value": "number", "lo": "number", "hi": "number", "threshold": "number", "breached": "boolean",
             "run": "boolean"}


def slice_columns(history: pa.Table, source: str) -> list[str]:
    """The slice columns of `source`: the history's other columns that are set on its
    per-slice rows (sources sliced by other columns stack with nulls)."""
    rows = history.filter((pc.field("source") == source) & ~pc.field("overall") & (pc.field("scope") == "slice"))
    return [name for name in history.column_names
            if name not in HISTORY_COLUMNS and rows.num_rows and rows.column(name).null_count < rows.num_rows]


def series_label(row: dict, columns: list[str]) -> str:
    return OVERALL if row["overall"] else ", ".join(f"{c}={row[c]}" for c in columns)


def day(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def breached_runs(history: pa.Table) -> dict[tuple[str, str], dict[str, int]]:
    """{(source, run date): {"drift": rows, "gate": rows}} of the runs with a breached
    drift threshold or gate row."""
    runs: dict[tuple[str, str], dict[str, int]] = {}
    breached = history.filter(pc.field("breached") & pc.field("scope").isin(["drift", "gate"]))
    for row in breached.select(["source", "run_date", "scope"]).to_pylist():
        counts = runs.setdefault((row["source"], day(row["run_date"])), {"drift": 0, "gate": 0})
        counts[row["scope"]] += 1
    return runs


def drift_metrics(history: pa.Table) -> list[str]:
    """The drift metrics drawn: the defaults, then every other one with a threshold."""
    drift = history.filter((pc.field("scope") == "drift") & pc.field("class").is_null())
    present = set(pc.unique(drift.column("metric")).to_pylist()) if drift.num_rows else set()
    thresholded = drift.filter(pc.field("threshold").is_valid())
    others = set(pc.unique(thresholded.column("metric")).to_pylist()) if thresholded.num_rows else set()
    defaults = [m for m in TREND_METRICS["drift"] if m in present]
    return defaults + sorted(others - set(defaults))


def metric_label(name: str, page: Page | None) -> str:
    """The metric's label, with the run's units when the page knows them."""
    return LABELS.get(name, name) + (page.units_of(name) if page is not None else "")


def trend_rows(history: pa.Table, page: Page | None = None) -> tuple[list[dict], list[str]]:
    """One row per (source, slice, date, metric) drawn, keys with no value left out, a
    non-finite value as its text in ``nonfinite``; metrics labelled with `page`'s units
    if given. And the note's names of the non-finite values."""
    wanted = ((pc.field("scope") == "slice") & pc.field("metric").isin(list(TREND_METRICS["slice"]))) | (
        (pc.field("scope") == "drift") & pc.field("metric").isin(pa.array(drift_metrics(history), pa.string())))
    picked = history.filter(wanted & pc.field("class").is_null())
    runs = breached_runs(history)
    columns = {source: slice_columns(history, source) for source in pc.unique(picked.column("source")).to_pylist()}
    out = []
    for row in picked.to_pylist():
        date = day(row["run_date"])
        item = {"date": date, "source": row["source"], "series": series_label(row, columns[row["source"]]),
                "metric": metric_label(row["metric"], page), "value": row["value"], "lo": row["lo"],
                "hi": row["hi"], "threshold": row["threshold"], "breached": row["breached"] or None,
                "run": (row["source"], date) in runs or None}
        out.append(item)
    out.sort(key=lambda r: (r["source"], r["metric"], r["series"], r["date"]))
    out, named = nonfinite_rows(out, "value", lambda r: f"{r['metric']} of {r['source']} {r['series']} on {r['date']}")
    return [{k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and not math.isfinite(v))}
            for r in out], named


def rows_csv(rows: list[dict]) -> str:
    """`rows` as CSV with `CSV_FIELDS`: floats as `repr` (exact), true as ``true``,
    missing values empty (Vega parses them as null)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in rows:
        writer.writerow(["true" if (v := row.get(name)) is True else "" if v is None else v for name in CSV_FIELDS])
    return out.getvalue()


def window(history: pa.Table, max_dates: int) -> tuple[pa.Table, int]:
    """The rows of the latest `max_dates` run dates, and how many earlier dates are left
    out (also those the reader left out, per the table's ``xent.history`` metadata)."""
    earlier = json.loads((history.schema.metadata or {}).get(HISTORY_KEY, b"{}")).get("dates_left_out", 0)
    dates = sorted(pc.unique(history.column("run_date")).to_pylist())
    if len(dates) <= max_dates:
        return history, earlier
    return history.filter(pc.field("run_date") >= pc.scalar(dates[-max_dates])), earlier + len(dates) - max_dates


def trend_chart(rows: list[dict], n_sources: int, order: list[str]) -> dict:
    """Each metric a row of panels, each source a column, each slice a colour: the
    value per date with its interval as a rule, breached values ringed and breached runs
    as dashed red rules."""
    alt = altair()
    x = alt.X("date:T", title=None, axis=alt.Axis(format="%Y-%m-%d", labelAngle=-40, labelOverlap="greedy",
                                                  tickCount={"interval": "day", "step": 1}))
    series = len({r["series"] for r in rows})
    color = alt.Color("series:N", title="slice", legend=alt.Legend(labelLimit=320),
                      scale=alt.Scale(scheme="tableau10" if series <= 10 else "category20"))
    tooltip = [alt.Tooltip("date:T", format="%Y-%m-%d"), alt.Tooltip("source:N"), alt.Tooltip("series:N", title="slice"),
               alt.Tooltip("metric:N"), alt.Tooltip("value:Q", format=".5f"), alt.Tooltip("lo:Q", format=".5f"),
               alt.Tooltip("hi:Q", format=".5f"), alt.Tooltip("threshold:Q", format=".5g"),
               alt.Tooltip("breached:N")]
    runs = alt.Chart().transform_filter("datum.run").mark_rule(color=BREACHED, strokeDash=[3, 3], opacity=0.5).encode(x=x)
    intervals = alt.Chart().transform_filter("isValid(datum.lo) && isValid(datum.hi)").mark_rule(opacity=0.45).encode(
        x=x, y=alt.Y("lo:Q"), y2="hi:Q", color=color)
    lines = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)), color=color, tooltip=tooltip)
    rings = alt.Chart().transform_filter("datum.breached").mark_point(
        size=160, filled=False, strokeWidth=2, color=BREACHED).encode(x=x, y="value:Q", tooltip=tooltip)
    edges = edge_marks(rows, "y", x=x, tooltip=[alt.Tooltip("date:T", format="%Y-%m-%d"), alt.Tooltip("source:N"),
                                                alt.Tooltip("series:N", title="slice"), alt.Tooltip("metric:N"),
                                                alt.Tooltip("nonfinite:N", title="value")])
    width = 640 if n_sources == 1 else max(220, 900 // n_sources)
    # The spec is validated without its rows (altair's validation of ~6,000 rows takes seconds); they go in after.
    layered = alt.layer(runs, intervals, lines, rings, *edges, data=alt.Data(name="trends")).properties(
        width=width, height=130)
    chart = layered.facet(
        row=alt.Row("metric:N", sort=order, title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
        column=alt.Column("source:N", title=None),
    ).resolve_scale(y="independent")
    spec = chart.to_dict()
    spec["data"] = {"values": rows_csv(rows), "format": {"type": "csv", "parse": CSV_PARSE}}
    return spec


def build(page: Page, history: pa.Table, *, source: str | None = None, up_to: str | None = None,
          max_dates: int = MAX_DATES, units: bool = False) -> None:
    """Add the "history" section: the trends of `source` (default: every source) over
    its latest `max_dates` run dates up to `up_to` (default: all), and the table of
    breached runs; with `units`, CE and divergences are labelled with the page's units."""
    if source is not None:
        history = history.filter(pc.field("source") == source)
    if up_to is not None:
        history = history.filter(pc.field("run_date") <= pc.scalar(dt.date.fromisoformat(up_to)))
    if not history.num_rows:
        return
    history, left_out = window(history, max_dates)
    dates = sorted({day(d) for d in pc.unique(history.column("run_date")).to_pylist()})
    sources = sorted(pc.unique(history.column("source")).to_pylist())
    rows, named = trend_rows(history, page if units else None)
    runs = breached_runs(history)
    page.sections["history"] = {
        "dates": dates, "sources": sources, "left_out": left_out,
        "breached": [{"source": s, "date": d, "drift": c["drift"], "gate": c["gate"]}
                     for (s, d), c in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0]), reverse=True)],
    }
    if rows:
        drawn = {row["metric"] for row in rows}
        order = [label for label in (metric_label(m, page if units else None)
                                     for m in (*TREND_METRICS["slice"], *drift_metrics(history))) if label in drawn]
        page.chart("history-chart", "history", trend_chart(rows, len(sources), order), nonfinite=named)


def latest_verdicts(page: Page, history: pa.Table) -> None:
    """The verdict of the history page: each source's latest run, breached or not."""
    runs = breached_runs(history)
    for source in sorted(pc.unique(history.column("source")).to_pylist()):
        dates = history.filter(pc.field("source") == source).column("run_date")
        latest = day(pc.max(dates).as_py())
        counts = runs.get((source, latest))
        if counts:
            page.breaches.append({"kind": "run", "text": f"{source} {latest} (its latest run): "
                                  f"{counts['drift']} drift threshold(s) and {counts['gate']} gate row(s) breached"})
        else:
            page.checks.append(f"{source} {latest} (its latest run): no threshold or gate breached.")


def overall_by_date(history: pa.Table, source: str) -> dict[str, dict[str, dict[str, Any]]]:
    """{run date: {metric: {value, lo, hi}}} of the overall summary rows of `source`
    (``n``: the rows evaluated), for the changes since the previous run."""
    rows = history.filter((pc.field("source") == source) & (pc.field("scope") == "slice") & pc.field("overall")
                          & pc.field("class").is_null()).select(["run_date", "metric", "value", "lo", "hi", "n"])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows.to_pylist():
        metrics = out.setdefault(day(row["run_date"]), {})
        metrics[row["metric"]] = {"value": row["value"], "lo": row["lo"], "hi": row["hi"]}
        metrics["n"] = {"value": row["n"], "lo": None, "hi": None}
    return out

