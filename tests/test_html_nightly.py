"""Nightly pages: each run's report.html (in its tables folder and manifest, REPORT_ROOT
left holding Parquet only), its cards' changes since the previous run against the two
runs' summary.parquet, its gate verdict and rows; the history page from REPORT_ROOT
against metrics.parquet; the CLI's and the Prefect artifact's page paths and headline
numbers; headless Chromium; HTML in slice names shown as text; the page size for 60
dates x 3 sources x 5 slices, and for a year of 2 sources x 20 slices (the latest
MAX_DATES run dates drawn, only they read); every thresholded drift metric drawn; a
first run in bits (no baseline, no reference)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from markupsafe import escape

from flows.cli import main
from flows.config import NightlyConfig, build_config
from flows.generate import generate_dump
from flows.pipelines import nightly_flow
from flows.report.page import MAX_DATES, render_history_html
from flows.report.page.nightly import MAX_CHANGED_CLASSES
from flows.runs.nightly import GATE_TABLE, METRICS_FILE, history_page_path, nightly_run, read_history, run_folder
from xent_kernels import STATISTIC

from browser import MISSING, Tables, chromium, console_errors, open_page, requested_urls

DAYS = ("2026-11-21", "2026-11-22", "2026-11-23")
SOURCES = ("prod", "canary")
XSS_SLICE = "<img src=x onerror=\"window.xss=2\">"
MB = 1 << 20


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, prefect_harness):
    """Two sources over three days with drift (a breach on days 2 and 3) and a CE gate
    (day 2 passes; day 3 breaches, prod's with a clearly worse model).
    Days 1-2 as one Prefect flow run, day 3 through the CLI (with Prefect)."""
    folder = tmp_path_factory.mktemp("nightly-pages")
    for i, day in enumerate(DAYS):
        for name in SOURCES:
            generate_dump(folder / "dumps" / name / f"date={day}", rows=3000, classes=3, shards=2,
                          slices={"model": [XSS_SLICE, "a&b"]}, seed=i + 1,
                          drift=3.0 if (name, day) == ("prod", DAYS[2]) else 0.0)
    config = {
        "report_root": str(folder / "reports"),
        "sources": [{"name": name, "paths": [str(folder / "dumps" / name / "date={date}")], "reference": "previous"}
                    for name in SOURCES],
        "defaults": {"slice_by": ["model"]},
        "drift": {"per_sample": True, "id_col": "id", "thresholds": {"marginal_js": 1e-9}},
        "gate": {"metric": "ce_mean", "max_increase": 0.01, "mode": "interval"},
    }
    path = folder / "nightly.yaml"
    path.write_text(yaml.safe_dump(config))
    state = nightly_flow(str(path), DAYS[0], DAYS[1], return_state=True)
    assert state.is_failed() and "drift threshold breached" in state.message
    return {"folder": folder, "config": build_config(NightlyConfig, path), "config_path": path, "state": state}


def tables_folder(nightly, day: str, source: str) -> Path:
    return Path(run_folder(nightly["config"].tables_base, day, source))


def cards(page: str) -> dict[str, dict]:
    """{metric: {value, change, class}} of the summary cards."""
    found = {}
    summary = page.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    for chunk in summary.split('<div class="card" data-metric="')[1:]:
        change = re.search(r'<div class="change ([^"]*)" data-change="([^"]+)">', chunk)
        found[chunk.split('"', 1)[0]] = {"change": float(change.group(2)) if change else None,
                                         "class": change.group(1) if change else None}
    return found


def overall(path: Path) -> dict:
    return next(r for r in pq.read_table(path).to_pylist() if r["overall"])


def chart_spec(page: str, chart: str) -> dict:
    raw = re.search(rf'<script type="application/json" data-chart="{chart}">(.*?)</script>', page, re.S).group(1)
    return json.loads(raw)


def trend_values(page: str) -> list[dict]:
    """The history chart's rows (inline CSV), empty fields left out, numbers and flags parsed
    as the spec's `format.parse` tells Vega to."""
    data = chart_spec(page, "history-chart")["data"]
    parse = {"number": float, "boolean": lambda v: v == "true"}
    return [{k: parse[data["format"]["parse"][k]](v) if k in data["format"]["parse"] else v
             for k, v in row.items() if v != ""} for row in csv.DictReader(io.StringIO(data["values"]))]


@pytest.fixture(scope="module")
def third_day(nightly):
    """Day 3 through the CLI: exit 3 (prod's gate), its stdout lines."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["nightly", "--config", str(nightly["config_path"]), "--date", DAYS[2]])
    assert code == 3
    return out.getvalue().strip().splitlines()


@pytest.mark.slow
def test_each_run_page_is_in_its_manifest_and_report_root_stays_parquet(nightly, third_day):
    for day in DAYS:
        for source in SOURCES:
            folder = tables_folder(nightly, day, source)
            data = (folder / "report.html").read_bytes()
            manifest = json.loads((folder / "_manifest.json").read_text())
            assert {"file": "report.html", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} in manifest["files"]
            assert f"xent nightly: {source} on {day}" in data.decode()
    reports = nightly["folder"] / "reports"
    assert {p.name for p in reports.rglob("*") if p.is_file()} == {METRICS_FILE, "_manifest.json"}  # no page
    # The CLI: each written run names its page; the last line is the history page.
    for source, line in zip(SOURCES, third_day):
        assert line.startswith(f"{source} {DAYS[2]}: written to ")
        assert f", page {tables_folder(nightly, DAYS[2], source)}/report.html)" in line
    assert third_day[-1] == f"page: {history_page_path(nightly['config'])}"


def test_cards_show_the_change_since_the_previous_run(nightly, third_day):
    for source in SOURCES:
        first = cards((tables_folder(nightly, DAYS[0], source) / "report.html").read_text())
        assert first and all(card["change"] is None for card in first.values())  # no earlier run
        for previous, day in zip(DAYS, DAYS[1:]):
            shown = cards((tables_folder(nightly, day, source) / "report.html").read_text())
            before = overall(tables_folder(nightly, previous, source) / "summary.parquet")
            now = overall(tables_folder(nightly, day, source) / "summary.parquet")
            for metric, card in shown.items():
                assert card["change"] == now[metric] - before[metric], (source, day, metric)
                better = STATISTIC[metric].better if metric in STATISTIC else 0
                sign = np.sign((now[metric] - before[metric]) * better)
                assert card["class"] == {1: "better", -1: "worse", 0: ""}[sign], (source, day, metric)
    worse = cards((tables_folder(nightly, DAYS[2], "prod") / "report.html").read_text())
    assert worse["ce_mean"]["class"] == "worse" and worse["ce_mean"]["change"] > 0.1


def test_the_classes_that_changed_most_since_the_previous_run(nightly, third_day):
    """Each run after the first lists the classes whose mean CE (all slices) changed most,
    with both runs' values from their per_class.parquet and the accuracy change."""
    for source in SOURCES:
        assert 'id="class-changes"' not in (tables_folder(nightly, DAYS[0], source) / "report.html").read_text()
        for previous, day in zip(DAYS, DAYS[1:]):
            before = {r["class"]: r for r in pq.read_table(tables_folder(nightly, previous, source) / "per_class.parquet")
                      .to_pylist() if r["overall"]}
            now = [r for r in pq.read_table(tables_folder(nightly, day, source) / "per_class.parquet").to_pylist()
                   if r["overall"]]
            expected = sorted(now, key=lambda r: -abs(r["ce_mean"] - before[r["class"]]["ce_mean"]))[:MAX_CHANGED_CLASSES]
            table = Tables((tables_folder(nightly, day, source) / "report.html").read_text()).tables["class-changes-table"]
            rows = [row for row in table["rows"] if row]
            assert len(rows) == len(expected) == min(3, MAX_CHANGED_CLASSES)
            for row, want in zip(rows, expected):
                _, n, ce_before, ce_now, ce_change, accuracy_change = row
                was = before[want["class"]]
                assert int(n["sort"]) == want["n"]
                assert float(ce_before["sort"]) == was["ce_mean"] and float(ce_now["sort"]) == want["ce_mean"]
                assert float(ce_change["sort"]) == want["ce_mean"] - was["ce_mean"]
                assert float(accuracy_change["sort"]) == want["accuracy"] - was["accuracy"]
                assert ("worse" in ce_change["class"]) == (want["ce_mean"] > was["ce_mean"])


def test_gate_breaches_and_rows_are_on_the_page(nightly, third_day):
    page = (tables_folder(nightly, DAYS[2], "prod") / "report.html").read_text()
    metrics = pq.read_table(Path(run_folder(nightly["config"].report_root, DAYS[2], "prod")) / METRICS_FILE)
    gate_rows = [r for r in metrics.to_pylist() if r["scope"] == "gate"]
    breached = [r for r in gate_rows if r["breached"]]
    assert breached and len(re.findall(r'<li class="breach" data-kind="gate">', page)) == len(breached)
    verdict = json.loads(pq.read_schema(tables_folder(nightly, DAYS[2], "prod") / f"{GATE_TABLE}.parquet").metadata[b"xent.gate"])
    for line in verdict["breaches"]:
        assert f"gate against {DAYS[1]}: {escape(line)}" in page  # as jinja2 escapes it
    assert 'id="gate-verdict" data-status="breached"' in page
    table = page.split('id="gate-table"', 1)[1].split("</table>", 1)[0]
    assert table.count(">BREACHED<") == len(breached)
    shown = [float(v) for v in re.findall(r'<td class="num" data-sort="([^"]+)">[+-]', table)]
    assert all(any(math.isclose(v, r["value"], rel_tol=0, abs_tol=1e-12) or v == r["threshold"] for r in gate_rows)
               for v in shown)
    passed = (tables_folder(nightly, DAYS[1], "canary") / "report.html").read_text()
    assert f"Gates passed against the run of {DAYS[0]}." in passed and 'data-status="passed"' in passed
    assert "data-kind=\"gate\"" not in passed
    first = (tables_folder(nightly, DAYS[0], "prod") / "report.html").read_text()
    assert 'data-status="no baseline"' in first
    assert ('<div class="verdict ok">Gates not checked: no earlier run of prod with a stored state.parquet under '
            f'{nightly["config"].tables_base}.</div>') in first
    assert "Drift not checked: no reference" in first  # day 1 has no previous day's dump
    assert "Drift not checked" not in passed


def test_history_page_from_the_root_matches_metrics(nightly, third_day, tmp_path, capsys):
    root = nightly["folder"] / "reports"
    written = Path(history_page_path(nightly["config"]))
    assert main(["report", str(root)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {written}"
    elsewhere = tmp_path / "history.html"
    assert main(["report", str(root), "--html", str(elsewhere)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {elsewhere}"
    page = written.read_text()
    assert {p.name for p in root.rglob("*") if p.is_file()} == {METRICS_FILE, "_manifest.json"}  # no page there
    assert XSS_SLICE not in page
    assert re.findall(r'<section id="([^"]+)"', page) == ["verdict", "history"]

    # Every drawn value is the metrics.parquet value of its source, date, slice and metric.
    expected, breached_runs = {}, set()
    for file in root.rglob(METRICS_FILE):
        day, source = (re.search(r"run_date=([\d-]+)", str(file)).group(1), re.search(r"source=(\w+)", str(file)).group(1))
        for r in pq.read_table(file).to_pylist():
            if r["breached"] and r["scope"] in ("drift", "gate"):
                breached_runs.add((source, day))
            if r["class"] is None and r["metric"] in ("ce_mean", "accuracy", "ece", "kl_per_sample", "marginal_js",
                                                       "confidence_psi") and r["scope"] in ("slice", "drift"):
                series = "overall" if r["overall"] else f"model={r['model']}"
                expected[(source, day, series, r["metric"])] = (r["value"], r["lo"], r["hi"], bool(r["breached"]))
    names = {"mean CE": "ce_mean", "accuracy": "accuracy", "ECE": "ece"}
    values = trend_values(page)
    drawn = {(v["source"], v["date"], v["series"], names.get(v["metric"], v["metric"])):
             (v["value"], v.get("lo"), v.get("hi"), v.get("breached", False)) for v in values}
    assert drawn == expected
    assert {v["date"] for v in values} == set(DAYS)
    assert {(v["source"], v["date"]) for v in values if v.get("run")} == breached_runs
    assert breached_runs == {(s, d) for s in SOURCES for d in DAYS[1:]}
    listed = set(re.findall(r'<tr data-source="([^"]+)" data-date="([^"]+)">', page))
    assert listed == breached_runs
    assert '<li class="breach" data-kind="run">prod 2026-11-23 (its latest run)' in page


def test_the_artifact_has_headline_numbers_and_page_paths(nightly):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = nightly["state"].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    (markdown,) = [a.data for a in artifacts if a.key == f"xent-nightly-summary-{DAYS[0]}-to-{DAYS[1]}"]
    for source in SOURCES:
        row = overall(tables_folder(nightly, DAYS[1], source) / "summary.parquet")
        before = overall(tables_folder(nightly, DAYS[0], source) / "summary.parquet")
        assert (f"n {row['n']:,}; mean CE {row['ce_mean']:.4f} [{row['ce_mean_lo']:.4f}, {row['ce_mean_hi']:.4f}]; "
                f"accuracy {row['accuracy']:.4f} [{row['accuracy_lo']:.4f}, {row['accuracy_hi']:.4f}]; "
                f"change since {DAYS[0]}: mean CE {row['ce_mean'] - before['ce_mean']:+.4f}, "
                f"accuracy {row['accuracy'] - before['accuracy']:+.4f}") in markdown
        for day in DAYS[:2]:
            assert f"  - page: {tables_folder(nightly, day, source)}/report.html" in markdown
    assert markdown.endswith(f"History page: {history_page_path(nightly['config'])}")


def synthetic_history(dates: int, sources: int, slices: int, drift: dict[str, float | None] | None = None) -> pa.Table:
    """A history as `history_table` reads it: per run the summary's CE, accuracy and ECE
    (with intervals) and drift metrics (default: three, thresholds 0.09), overall and per slice."""
    drift = drift or {"kl_per_sample": 0.09, "marginal_js": 0.09, "confidence_psi": 0.09}
    rng = np.random.default_rng(0)
    rows = []
    start = dt.date(2026, 1, 1)
    for d in range(dates):
        for s in range(sources):
            for k in [None, *range(slices)]:
                base = {"run_date": start + dt.timedelta(days=d), "source": f"s{s}", "model": None if k is None else f"m{k}",
                        "overall": k is None, "class": None, "n": 10_000}
                for metric in ("ce_mean", "accuracy", "ece"):
                    v = float(rng.uniform(0.1, 1.0))
                    rows.append({**base, "scope": "slice", "metric": metric, "value": v, "lo": v - 0.01, "hi": v + 0.01,
                                 "threshold": None, "breached": False})
                for metric, threshold in drift.items():
                    v = float(rng.uniform(0, 0.1))
                    rows.append({**base, "scope": "drift", "metric": metric, "value": v, "lo": None, "hi": None,
                                 "threshold": threshold, "breached": threshold is not None and v > threshold})
    return pa.Table.from_pylist(rows)


@pytest.mark.slow
def test_history_page_of_60_dates_3_sources_5_slices_stays_small():
    history = synthetic_history(60, 3, 5)
    render_history_html(history)  # the vega bundle is built or read once
    started = time.perf_counter()
    page = render_history_html(history)
    seconds = time.perf_counter() - started
    size = len(page.encode())
    print(f"history page, 60 dates x 3 sources x 5 slices: {size / MB:.2f} MB in {seconds:.2f} s")
    assert size < 3 * MB
    assert len(trend_values(page)) == 60 * 3 * 6 * 6
    assert "history-dates-left-out" not in page


@pytest.mark.slow
def test_a_year_of_history_draws_the_latest_dates_and_reads_only_them(tmp_path):
    """365 run dates x 2 sources x 20 slices as real metrics.parquet files: the reader
    reads only the latest MAX_DATES dates (an unreadable older file is never opened), and
    the page draws them, says how many are left out, and stays under 3 MB."""
    history = synthetic_history(365, 2, 20)
    root = tmp_path / "reports"
    for day, source in {(r["run_date"], r["source"]) for r in history.select(["run_date", "source"]).to_pylist()}:
        rows = history.filter((pc.field("run_date") == pc.scalar(day)) & (pc.field("source") == source))
        folder = Path(run_folder(str(root), day.isoformat(), source))
        folder.mkdir(parents=True)
        pq.write_table(rows.drop_columns(["run_date", "source"]), folder / METRICS_FILE)
    (Path(run_folder(str(root), "2026-01-01", "s0")) / METRICS_FILE).write_bytes(b"not parquet")  # outside the window

    read = read_history(str(root))
    dates = sorted({d.isoformat() for d in read.column("run_date").to_pylist()})
    last = dt.date(2026, 1, 1) + dt.timedelta(days=364)
    assert dates == [(last - dt.timedelta(days=MAX_DATES - 1 - i)).isoformat() for i in range(MAX_DATES)]
    assert json.loads(read.schema.metadata[b"xent.history"]) == {"dates_left_out": 365 - MAX_DATES}
    assert read_history(str(root), source="s1", before=last.isoformat(), max_dates=2).column("run_date").unique().to_pylist() \
        == [last - dt.timedelta(days=2), last - dt.timedelta(days=1)]

    render_history_html(read)  # the vega bundle is built or read once
    started = time.perf_counter()
    page = render_history_html(read)
    seconds = time.perf_counter() - started
    size = len(page.encode())
    print(f"history page, 365 dates x 2 sources x 20 slices: {size / MB:.2f} MB in {seconds:.2f} s")
    assert size < 3 * MB
    assert (f'<span id="history-dates-left-out" data-count="{365 - MAX_DATES}">{365 - MAX_DATES} earlier run date(s) '
            "are left out") in page
    assert {v["date"] for v in trend_values(page)} == set(dates)
    # Given the whole table (as `history_table` reads it), the page windows it the same way.
    assert render_history_html(history) == page


def test_a_corrupt_run_in_the_history_is_a_data_error_naming_the_file(tmp_path, capsys):
    folder = Path(run_folder(str(tmp_path / "reports"), "2026-11-01", "prod"))
    folder.mkdir(parents=True)
    (folder / METRICS_FILE).write_bytes(b"junk")
    assert main(["report", str(tmp_path / "reports")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("xent: error: ") and str(folder / METRICS_FILE) in line and "not readable Parquet" in line
    assert not list(tmp_path.rglob("*.html"))


def test_every_drift_metric_with_a_threshold_is_drawn():
    """Thresholds on marginal_kl and confidence_js (not on the default three): they are
    drawn with the defaults; a metric without a threshold that is not a default is not."""
    drift = {"kl_per_sample": None, "marginal_js": None, "confidence_psi": None, "marginal_kl": 0.05,
             "confidence_js": 0.05, "marginal_psi": None}
    page = render_history_html(synthetic_history(4, 1, 2, drift))
    values = trend_values(page)
    assert {v["metric"] for v in values} == {"mean CE", "accuracy", "ECE", "kl_per_sample", "marginal_js",
                                             "confidence_psi", "marginal_kl", "confidence_js"}
    breached = {(v["date"], v["series"]) for v in values if v.get("breached")}
    assert breached and all(v["metric"] in ("marginal_kl", "confidence_js") for v in values if v.get("breached"))
    assert {(v["date"], v["series"]) for v in values if v["metric"] == "marginal_kl" and v["value"] > 0.05} <= breached
    assert chart_spec(page, "history-chart")["facet"]["row"]["sort"] == [
        "mean CE", "accuracy", "ECE", "kl_per_sample", "marginal_js", "confidence_psi", "confidence_js", "marginal_kl"]


@pytest.mark.slow
def test_first_run_in_bits_without_reference_or_baseline(tmp_path):
    """A source in bits, first run: its gate has no baseline and its drift no reference;
    the page says both were not checked, and shows bits on the cards and the trends."""
    generate_dump(tmp_path / "dumps" / "2026-11-23", rows=2000, classes=3, shards=2, slices={"model": ["a", "b"]}, seed=1)
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump({
        "report_root": str(tmp_path / "reports"),
        "sources": [{"name": "bitsy", "paths": [str(tmp_path / "dumps" / "{date}")], "reference": "previous"}],
        "defaults": {"slice_by": ["model"], "units": "bits"},
        "drift": {"per_sample": False, "thresholds": {"marginal_kl": 0.1}},
        "gate": {"metric": "ce_mean", "max_increase": 0.01},
    }))
    config = build_config(NightlyConfig, path)
    (outcome,), written = nightly_run(config, ["2026-11-23"])
    assert written == history_page_path(config)
    assert (outcome.status, outcome.drift, outcome.gate.status) == ("written", "no reference", "no baseline")
    page = Path(outcome.page).read_text()
    assert "<title>xent nightly: bitsy on 2026-11-23</title>" in page
    assert ('<div class="verdict ok">Gates not checked: no earlier run of bitsy with a stored state.parquet under '
            f"{config.tables_base}.</div>") in page
    assert re.search(r'<div class="verdict ok">Drift not checked: no reference \(.*2026-11-22.*\)\.</div>', page)
    assert re.search(r'id="gate-verdict" data-status="no baseline"><span class="">Gates not checked</span>: '
                     r"no earlier run of bitsy", page)
    assert 'id="drift"' not in page
    assert re.search(r'data-metric="ce_mean" data-value="[^"]*">\s*<div class="label">mean CE \(bits\)</div>', page), "card label"
    assert {v["metric"] for v in trend_values(page)} == {"mean CE (bits)", "accuracy", "ECE"}


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_nightly_and_history_pages_in_headless_chromium(nightly, third_day, tmp_path):
    from selenium.webdriver.common.by import By

    run_page = tables_folder(nightly, DAYS[2], "prod") / "report.html"
    history = Path(history_page_path(nightly["config"]))
    small = tmp_path / "small-history.html"
    small.write_text(render_history_html(synthetic_history(60, 3, 5)), encoding="utf-8")
    with chromium() as driver:
        for path, charts in ((run_page, 5), (history, 1), (small, 1)):
            open_page(driver, path, charts)
            assert console_errors(driver) == [], path.name
            assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == [], path.name
            assert driver.execute_script("return window.xss") is None
            section = driver.find_element(By.ID, "history")
            assert section.is_displayed()
            # the trend chart drew a line per slice and source in each metric's panel
            assert len(section.find_elements(By.CSS_SELECTOR, ".chart svg path")) > 6
        open_page(driver, run_page, 5)
        slices = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#gate-table td.text")]
        assert f"model={XSS_SLICE}" in slices  # shown as text, not run
        changes = driver.find_elements(By.CSS_SELECTOR, "#summary .change.worse")
        assert changes and all(" since 2026-11-22" in c.text for c in changes)


def test_report_on_a_run_tables_folder_draws_the_nightly_page(nightly, third_day, tmp_path, capsys):
    """xent report on a run's tables folder finds its history through the tables'
    xent.nightly metadata: the same changes, gates and trends up to that run only."""
    folder = tables_folder(nightly, DAYS[1], "prod")
    out = tmp_path / "again.html"
    assert main(["report", str(folder), "--html", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {out}"
    again, written = out.read_text(), (folder / "report.html").read_text()
    assert cards(again) == cards(written) and any(c["change"] is not None for c in cards(again).values())
    assert {"gate", "history"} <= set(re.findall(r'<section id="([^"]+)"', again))
    assert {v["date"] for v in trend_values(again)} == set(DAYS[:2])
