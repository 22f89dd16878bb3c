"""A nightly run's additions to its page: each summary card's change since the
previous run of the source (from the history), and the gates' verdict against the
baseline run (the ``xent.gate`` metadata, and the run's gate rows from the history:
difference, interval, limit, breached)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from xent_kernels import STATISTIC

from ...metadata import GATE_KEY, NIGHTLY_KEY
from .common import Page, cell, class_label, finite, number, signed, text_cell
from .history import day, overall_by_date, series_label, slice_columns

MAX_GATE_ROWS = 40  # rows of the gate table: breached rows first, then overall and per-slice rows
MAX_CHANGED_CLASSES = 10  # rows of the class-changes table: the largest change of mean CE first


def title(metadata: dict[str, Any]) -> str | None:
    """"xent nightly: SOURCE on DATE" from a nightly run's ``xent.nightly`` metadata, else None."""
    nightly = metadata.get(NIGHTLY_KEY.decode())
    if isinstance(nightly, dict) and nightly.get("source") and nightly.get("run_date"):
        return f"xent nightly: {nightly['source']} on {nightly['run_date']}"
    return None


def run_of(page: Page, history: pa.Table | None) -> tuple[str | None, str | None]:
    """(source, run date) of the page: from its ``xent.nightly`` metadata, else the
    history's only source and latest date."""
    nightly = page.metadata.get(NIGHTLY_KEY.decode())
    if isinstance(nightly, dict):
        return nightly.get("source"), nightly.get("run_date")
    if history is None or not history.num_rows:
        return None, None
    sources = pc.unique(history.column("source")).to_pylist()
    return (sources[0] if len(sources) == 1 else None), day(pc.max(history.column("run_date")).as_py())


def changes(history: pa.Table, source: str, run_date: str) -> tuple[str | None, dict[str, Any]]:
    """(the previous run date, {metric: its overall value}) of `source` before `run_date`."""
    by_date = overall_by_date(history, source)
    earlier = sorted(d for d in by_date if d < run_date)
    if not earlier:
        return None, {}
    return earlier[-1], {name: v["value"] for name, v in by_date[earlier[-1]].items()}


def change(name: str, current: Any, previous: Any, since: str) -> dict[str, Any] | None:
    """A card's change: its text, ``better``/``worse`` by the metric's direction, and the value."""
    if previous is None or current is None:  # an infinite value changes by ∞ (or nan), shown as such
        return None
    delta = current - previous
    shown = change_text(delta)
    return {"text": f"{shown} since {since}", "shown": shown, "class": direction(name, delta), "value": repr(delta)}


def direction(name: str, delta: float) -> str:
    """``better``, ``worse`` or '' for a change of metric `name` by `delta` (its ``Statistic.better``)."""
    statistic = STATISTIC.get(name)
    better = statistic.better if statistic is not None else 0
    return "better" if delta * better > 0 else "worse" if delta * better < 0 else ""


def build(tables: dict[str, pa.Table], page: Page, history: pa.Table | None) -> None:
    """Add the changes since the previous run to the summary cards, a check line when
    drift was not checked (no reference), and the gate section."""
    source, run_date = run_of(page, history)
    if run_date:
        page.subtitle.insert(0, f"nightly run of {source} on {run_date}" if source else f"nightly run on {run_date}")
    summary = page.sections.get("summary")
    if summary and history is not None and source and run_date:
        since, previous = changes(history, source, run_date)
        table = tables["summary"] if "summary" in tables else tables["token_summary"]
        overall = next(r for r in table.to_pylist() if r["overall"])
        for card in summary["cards"]:
            if since is not None:
                card["change"] = change(card["metric"], overall.get(card["metric"]), previous.get(card["metric"]), since)
        if since is not None and "per_class" in tables:
            _class_changes(page, tables["per_class"], history, source, since)
    run = page.metadata.get(NIGHTLY_KEY.decode())
    if isinstance(run, dict) and run.get("drift") == "no reference":
        page.checks.append(f"Drift not checked: no reference ({run.get('reference_problem') or 'none found'}).")
    verdict = page.metadata.get(GATE_KEY.decode())
    if isinstance(verdict, dict):
        _gate(page, verdict, history, source, run_date)


def _class_changes(page: Page, per_class: pa.Table, history: pa.Table, source: str, since: str) -> None:
    """The classes whose mean CE (all slices together) changed most since the previous
    run, with their accuracy change: the current run's per_class against the previous
    run's class rows in the history."""
    previous_rows = history.filter(
        (pc.field("source") == source) & (pc.field("scope") == "class") & pc.field("overall")
        & (pc.field("run_date") == pc.scalar(dt.date.fromisoformat(since)))
        & pc.field("metric").isin(["ce_mean", "accuracy"])).select(["class", "metric", "value"]).to_pylist()
    before = {(r["class"], r["metric"]): r["value"] for r in previous_rows}
    rows = []
    for row in per_class.filter(pc.field("overall")).to_pylist():
        ce_before = before.get((row["class"], "ce_mean"))
        if ce_before is None or not (finite(ce_before) and finite(row["ce_mean"])):
            continue
        accuracy_before = before.get((row["class"], "accuracy"))
        rows.append({**row, "ce_before": ce_before, "ce_change": row["ce_mean"] - ce_before,
                     "accuracy_change": row["accuracy"] - accuracy_before
                     if accuracy_before is not None and finite(accuracy_before) and finite(row["accuracy"]) else None})
    if not rows:
        return
    rows.sort(key=lambda r: -abs(r["ce_change"]))
    shown = rows[:MAX_CHANGED_CLASSES]

    def changed(value: Any, name: str) -> dict[str, Any]:
        shown = cell({"change": value}, "change", text=signed)
        return {**shown, "class": direction(name, value)} if finite(value) else shown

    units = page.units_of("ce_mean")
    page.sections["class_changes"] = {
        "since": since, "total": len(rows), "shown": len(shown),
        "header": [("class", "text", ""), ("n", "num", ""), (f"mean CE {since}{units}", "num", "ce_before"),
                   (f"mean CE now{units}", "num", "ce_mean"), (f"change{units}", "num", "ce_change"),
                   ("accuracy change", "num", "accuracy_change")],
        "rows": [[text_cell(class_label(r)), cell(r, "n"), cell(r, "ce_before"), cell(r, "ce_mean"),
                  changed(r["ce_change"], "ce_mean"), changed(r["accuracy_change"], "accuracy")] for r in shown],
    }


def _gate(page: Page, verdict: dict, history: pa.Table | None, source: str | None, run_date: str | None) -> None:
    status, baseline, detail = verdict.get("status"), verdict.get("baseline"), verdict.get("detail")
    if status == "no baseline":
        detail = detail or f"no earlier run of {source} to compare with"
    against = f" against the run of {baseline}" if baseline else ""
    text = {"breached": f"Gates breached{against}", "passed": f"Gates passed{against}",
            "no baseline": "Gates not checked",
            "not comparable": f"Gates not checked{against}"}.get(status, f"Gates {status}{against}")
    section: dict[str, Any] = {"status": status, "text": text, "detail": detail}
    if status == "breached":
        page.breaches += [{"kind": "gate", "text": f"gate against {baseline}: {line}"} for line in verdict["breaches"]]
    elif status == "passed":
        page.checks.append(f"Gates passed{against}.")
    elif status == "no baseline":
        page.checks.append(f"Gates not checked: {detail}.")
    elif status == "not comparable":
        page.problems.append({"id": "gate", "text": f"gates not checked: {detail}"})
    if history is not None and source and run_date:
        rows = history.filter((pc.field("source") == source) & (pc.field("scope") == "gate")
                              & (pc.field("run_date") == pc.scalar(dt.date.fromisoformat(run_date))))
        if rows.num_rows:
            section["table"], section["left_out"] = _gate_table(rows, slice_columns(history, source))
    page.sections["gate"] = section


def _gate_table(rows: pa.Table, columns: list[str]) -> tuple[dict[str, Any], int]:
    """The breached rows, then the overall and per-slice rows (all classes), at most
    `MAX_GATE_ROWS`; and how many rows are left out."""
    listed = rows.to_pylist()
    key = lambda r: (not r["breached"], not r["overall"], r["class"] is not None, r["metric"])  # noqa: E731
    shown = sorted([r for r in listed if r["breached"] or r["class"] is None], key=key)[:MAX_GATE_ROWS]
    limit = lambda v: {"text": signed(v), "interval": "", "sort": v if finite(v) else ""}  # noqa: E731
    table = {
        "header": [("slice", "text", ""), ("class", "text", ""), ("gate", "text", ""), ("difference", "num", "value"),
                   ("limit", "num", "threshold"), ("breached", "text", "breached")],
        "rows": [[text_cell(series_label(r, columns)), text_cell("all" if r["class"] is None else class_label(r)),
                  text_cell(r["metric"]), cell(r, "value", "lo", "hi", text=signed), limit(r["threshold"]),
                  {**text_cell("BREACHED" if r["breached"] else "no"), **({"class": "breached-cell"} if r["breached"] else {})}]
                 for r in shown],
    }
    return table, len(listed) - len(shown)


def change_text(delta: Any) -> str:
    """A change with its sign: ``+1,200`` rows, ``-0.0123`` otherwise."""
    return f"{delta:+,}" if isinstance(delta, int) else (f"{delta:+.4f}" if finite(delta) else number(delta))
