"""report.html of ``xent compare`` on real dumps and a real LocalCluster: the cards and
table cells are the numbers of compare.parquet, breached gates are listed with their
intervals, names are escaped, the CLI (plain and through the Prefect flow, breach or
not) writes the page in the manifest and says where it is, ``xent report`` renders a
compare folder, and in headless Chromium the page draws with no console error and no
network request."""

from __future__ import annotations

import json
import math
import os
import time

import pyarrow.parquet as pq
import pytest

from flows.api import compare
from flows.cli.commands import main
from flows.report.page import render_html

from browser import (
    COMPARE_GATES, MISSING, Tables, card, chart_data, chart_spec, chromium, compare_dumps, console_errors, file_entry,
    manifest_entry, open_page, requested_urls, sections,
)

MB = 1 << 20
XSS_CLASS = "<script>window.xss=1</script>"
XSS_SLICE = "<img src=x onerror=\"window.xss=2\">"
CLASSES = [XSS_CLASS, "a&b", '"quoted"', "plain"]
CARDS = ("ce_mean", "ce_macro", "accuracy", "ece", "brier", "f1_macro", "auc")
GATE_LIMIT = COMPARE_GATES[0]["max_increase"]  # ce_mean, interval mode: breached by some classes


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    return compare_dumps(tmp_path_factory.mktemp("html-compare"), [XSS_SLICE, "a&b"])


@pytest.fixture(scope="module")
def result(dumps, client):
    baseline, candidate = dumps
    return compare(baseline.root, candidate.root, client=client, slice_by=["model"], gate=COMPARE_GATES,
                   classes=CLASSES)


# --------------------------------------------------------------------------- reading the page back


def plotted(spec: dict) -> list[dict]:
    """The points of a forest plot: the layer data that has labels."""
    return next(values for values in chart_data(spec) if "label" in str(values[:1]))


def interval(row: dict, metric: str) -> str:
    lo, hi = row[f"{metric}_diff_lo"], row[f"{metric}_diff_hi"]
    return f"[{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else ""


def check_table(tables: Tables, table_id: str, rows: list[dict], key) -> None:
    """Every cell of the page's table equals its compare.parquet value; the rows come
    in the order of the largest CE difference first."""
    header = [h["metric"] for h in tables.tables[table_id]["header"]]
    shown = tables.rows(table_id)
    assert len(shown) == len(rows), table_id
    by_key = {key(r): r for r in rows}
    diffs = []
    for cells in shown:
        row = by_key[cells[0]["text"]]
        diffs.append(row["ce_mean_diff"])
        for metric, cell in zip(header, cells):
            if metric is None:
                continue
            value = row[metric]
            if metric == "verdict":
                assert cell["text"] == value.replace("_", " "), (table_id, metric)
                assert (value in cell["class"].split()) == (value in ("better", "worse")), (table_id, metric)
            elif value is None:
                assert cell["sort"] == cell["text"] == "", (table_id, metric, cell)
            elif math.isfinite(value):
                assert float(cell["sort"]) == value, (table_id, metric, cell)
            else:
                assert cell["sort"] == "" and cell["text"] == "nan", (table_id, metric, cell)
            if metric.endswith("_diff"):
                base = metric.removesuffix("_diff")
                assert cell["interval"] == interval(row, base), (table_id, metric)
                verdict = row[f"{base}_verdict"]
                assert (verdict in cell["class"].split()) == (verdict in ("better", "worse")), (table_id, metric)
    assert diffs == sorted(diffs, reverse=True), table_id
    # Every metric with a difference in some row has its column.
    present = {name for name in rows[0]
               if name.endswith("_diff") and any(r[name] is not None and math.isfinite(r[name]) for r in rows)}
    assert {m for m in header if m and m.endswith("_diff")} == present, table_id


# --------------------------------------------------------------------------- the page's content


def test_cards_and_tables_are_the_numbers_of_compare_parquet(result):
    rows = result.tables["compare"].to_pylist()
    render_html(result.tables)  # the vega bundle is built or read once
    started = time.perf_counter()
    page = render_html(result.tables)
    seconds = time.perf_counter() - started
    print(f"compare, C=4 x 2 slices: {len(page.encode()) / MB:.2f} MB in {seconds:.2f} s")
    assert len(page.encode()) < 2 * MB
    assert sections(page) == {"verdict", "compare", "footer"}
    overall = next(r for r in rows if r["overall"] and r["class"] is None)
    for metric in CARDS:
        shown = card(page, metric)
        assert float(shown["value"]) == overall[f"{metric}_diff"], metric
        assert shown["text"] == f"{overall[f'{metric}_diff']:+.4f}", metric
        assert shown["interval"] == (interval(overall, metric) or "no interval"), metric
        verdict = overall[f"{metric}_verdict"]
        assert shown["class"] == (verdict if verdict in ("better", "worse") else ""), metric
    assert card(page, "n")["value"] == str(overall["n"]) and overall["n"] == overall["n_matched"] == 2900
    assert f"wins/ties/losses {overall['wins']:,}/{overall['ties']:,}/{overall['losses']:,}" in page

    tables = Tables(page)
    classes = [r for r in rows if r["overall"] and r["class"] is not None]
    check_table(tables, "compare-class-table", classes, key=lambda r: str(r["class"]))
    names = [cells[1]["text"] for cells in tables.rows("compare-class-table")]
    assert sorted(names) == sorted(CLASSES)  # shown as text
    slices = [r for r in rows if not r["overall"] and r["class"] is None]
    check_table(tables, "compare-slice-table", slices, key=lambda r: r["model"])
    assert {cells[0]["text"] for cells in tables.rows("compare-slice-table")} == {XSS_SLICE, "a&b"}

    # The forest plots: every class (and slice) with its interval, a dashed zero line, coloured by verdict.
    points = plotted(chart_spec(page, "compare-forest-classes"))
    assert [p["value"] for p in points] == sorted((r["ce_mean_diff"] for r in classes), reverse=True)
    by_value = {r["ce_mean_diff"]: r for r in classes}
    for point in points:
        row = by_value[point["value"]]
        assert (point["lo"], point["hi"]) == (row["ce_mean_diff_lo"], row["ce_mean_diff_hi"])
        assert point["color"] == row["ce_mean_verdict"].replace("_", " ")
    assert {"x": 0} in [v for values in chart_data(chart_spec(page, "compare-forest-classes")) for v in values]
    assert len(plotted(chart_spec(page, "compare-forest-slices"))) == 2


def test_breached_gates_are_listed_with_their_intervals(result):
    rows = result.tables["compare"].to_pylist()
    page = render_html(result.tables)
    verdict = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    shown = Tables(page).breaches
    # Independently of the gate code: the rows whose whole ce_mean interval lies above the limit.
    breached = [r for r in rows if r["ce_mean_diff_lo"] > GATE_LIMIT]
    assert len(shown) == len(breached) >= 1
    for row in breached:
        where = "overall" if row["overall"] else f"model={row['model']}"
        what = "all classes" if row["class"] is None else f"class {row['class']} ({row['class_name']})"
        numbers = f"{row['ce_mean_diff']:+.6g} [{row['ce_mean_diff_lo']:+.6g}, {row['ce_mean_diff_hi']:+.6g}]"
        assert sum(f"{where}, {what}: candidate - baseline = {numbers}" in line for line in shown) == 1, (where, what)
    assert all(line.startswith(f"ce_mean max_increase {GATE_LIMIT:g} (interval): ") for line in shown)
    assert f"{len(breached)} breach(es)" in verdict
    assert "1 of 2 gate(s) passed: accuracy max_decrease 0.5 (interval)." in verdict
    assert 'id="problem-join"' in verdict
    assert "2,900 matched; 100 only in the baseline and 100 only in the candidate" in verdict


def test_names_are_escaped(result):
    page = render_html(result.tables)
    assert XSS_CLASS not in page and XSS_SLICE not in page
    assert "&lt;script&gt;window.xss=1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&#34;window.xss=2&#34;&gt;" in page
    for chart in ("compare-forest-classes", "compare-forest-slices"):  # chart data is JSON inside a script
        spec = page.split(f'data-chart="{chart}">', 1)[1].split("</script>", 1)[0]
        assert "</" not in spec.replace("<\\/", "") and "<script" not in spec and "<img" not in spec


def test_many_classes_show_the_largest_increases_and_count_the_rest(result):
    page = render_html(result.tables, max_classes=2)
    assert "2 more classes are not shown" in page
    classes = sorted((r for r in result.tables["compare"].to_pylist() if r["overall"] and r["class"] is not None),
                     key=lambda r: -r["ce_mean_diff"])
    shown = [int(cells[0]["sort"]) for cells in Tables(page).rows("compare-class-table")]
    assert shown == [r["class"] for r in classes[:2]]
    assert [p["value"] for p in plotted(chart_spec(page, "compare-forest-classes"))] == [
        r["ce_mean_diff"] for r in classes[:2]]


@pytest.mark.slow
def test_compare_result_writes_its_page_and_shows_in_a_notebook(result, tmp_path):
    paths = result.write(tmp_path / "out")
    assert set(paths) == {"compare"}
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert sorted(e["file"] for e in manifest["files"]) == ["compare.parquet", "report.html"]
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8") == result.to_html()
    result.write(tmp_path / "bare", html=False)
    assert not (tmp_path / "bare" / "report.html").exists()
    shown = result._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script>" not in shown


# --------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_xent_compare_writes_the_page_breach_or_not_and_xent_report_renders_it(dumps, tmp_path, capsys):
    baseline, candidate = dumps
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(f"gate: {json.dumps(COMPARE_GATES)}\n")
    out = tmp_path / "breached"
    code = main(["compare", "--baseline", baseline.root, "--candidate", candidate.root, "--slice-by", "model",
                 "--no-prefect", "--config", str(gate_file), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.out.strip().splitlines()[-1] == f"page: {out}/report.html"
    assert manifest_entry(out) == file_entry(out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    table = pq.read_table(out / "compare.parquet")
    assert Tables(page).breaches == json.loads(table.schema.metadata[b"xent.compare"])["breaches"]
    overall = next(r for r in table.to_pylist() if r["overall"] and r["class"] is None)
    assert float(card(page, "ce_mean")["value"]) == overall["ce_mean_diff"]

    # xent report on the compare folder renders the same page.
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {out}/report.html"
    assert (out / "report.html").read_text(encoding="utf-8") == page
    assert manifest_entry(out) == file_entry(out / "report.html")

    # The candidate against itself: every row joined, no gate; exit 0 with the page line last.
    out = tmp_path / "same"
    assert main(["compare", "--baseline", candidate.root, "--candidate", candidate.root, "--no-prefect",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {out}/report.html"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Every row joined on (id): 3,000 matched, none only in one dump." in page
    assert "No gates set" in page and 'id="breaches"' not in page and "problem-join" not in page
    assert "compare-slice-table" not in page  # not sliced


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_xent_compare_through_the_flow_writes_the_page_when_a_gate_is_breached(dumps, tmp_path, capsys):
    baseline, candidate = dumps
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(f"gate: {json.dumps(COMPARE_GATES)}\n")
    out = tmp_path / "flow"
    code = main(["compare", "--baseline", baseline.root, "--candidate", candidate.root, "--slice-by", "model",
                 "--config", str(gate_file), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.out.strip().splitlines()[-1] == f"page: {out}/report.html"
    assert manifest_entry(out) == file_entry(out / "report.html")
    assert 'data-kind="gate"' in (out / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- in the browser


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_compare_page_in_headless_chromium(result, tmp_path):
    from selenium.webdriver.common.by import By

    rows = result.tables["compare"].to_pylist()
    overall = next(r for r in rows if r["overall"] and r["class"] is None)
    path = tmp_path / "compare.html"
    path.write_text(result.to_html(), encoding="utf-8")
    with chromium() as driver:
        open_page(driver, path, 2)  # forest plots: classes, slices
        assert console_errors(driver) == []
        assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == []
        for section in ("verdict", "compare", "footer"):
            assert driver.find_element(By.ID, section).is_displayed(), section
        # One point per class in the class forest, drawn.
        points = driver.find_elements(By.CSS_SELECTOR, "#compare-forest-classes .mark-symbol.role-mark path")
        assert len(points) == 4
        for element in driver.find_elements(By.CSS_SELECTOR, "#compare-cards .card"):
            metric = element.get_attribute("data-metric")
            shown = element.find_element(By.CSS_SELECTOR, ".value").text
            assert shown == (f"{overall['n']:,}" if metric == "n" else f"{overall[f'{metric}_diff']:+.4f}"), metric
        assert driver.execute_script("return window.xss") is None
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#compare-class-table td.text")]
        assert XSS_CLASS in names
        assert XSS_SLICE in [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#compare-slice-table td.text")]
        # Worse is red, better green.
        colours = {e.value_of_css_property("color") for e in driver.find_elements(By.CSS_SELECTOR, "#compare-class-table td.worse")}
        assert colours == {"rgba(183, 28, 28, 1)"}
        assert driver.find_elements(By.CSS_SELECTOR, "#compare-class-table td.better")
        # A click on the class header sorts by class.
        driver.find_element(By.CSS_SELECTOR, "#compare-class-table th").click()
        classes = [int(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#compare-class-table tbody td:first-child")]
        assert classes == [0, 1, 2, 3]
        assert console_errors(driver) == []
