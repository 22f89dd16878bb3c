"""report.html: the page's sections follow the data, every value is escaped, the page
stays small, and in headless Chromium it draws with no console error and no network
request, showing the numbers of the Parquet report."""

from __future__ import annotations

import json
import math
import os
import re
import time

import pyarrow.parquet as pq
import pytest

from flows.api import evaluate
from flows.cli.commands import main
from flows.generate import generate_dump
from flows.metadata import INTEGRITY_KEY
from flows.report.page import render_html

from browser import (
    MISSING, SCREENSHOTS, Tables, card, chart_data, chart_spec, chromium, console_errors, file_entry, manifest_entry, open_page,
    requested_urls, sections, write_screenshots,
)

MB = 1 << 20
XSS_CLASS = "<script>window.xss=1</script>"
XSS_SLICE = "<img src=x onerror=\"window.xss=2\">"
SECTIONS = ("verdict", "summary", "per-class", "per-slice", "forest", "reliability", "confusion", "footer")


@pytest.fixture(scope="module")
def reports(tmp_path_factory, client):
    """C = 10 by 20 slices; C = 1,000; a dump with a bad shard, a file without page
    checksums and HTML in its class and slice names; and C = 2 by 2 slices, in nats
    and in bits."""
    root = tmp_path_factory.mktemp("html")
    ten = generate_dump(root / "c10", rows=40_000, classes=10, shards=2,
                        slices={"model": [f"m{i:02d}" for i in range(20)]}, seed=1)
    wide = generate_dump(root / "c1000", rows=20_000, classes=1000, shards=2, seed=2)
    bad = generate_dump(root / "bad", rows=4_000, classes=4, shards=4, bad_shards={"truncated": 1},
                        slices={"model": [XSS_SLICE, "a&b"]}, seed=3)
    good = sorted(set(bad.files) - set(bad.bad))
    pq.write_table(pq.read_table(good[0]), good[0], write_page_checksum=False)  # a file without checksums
    binary = generate_dump(root / "c2", rows=3_000, classes=2, shards=2, slices={"model": ["a", "b"]}, seed=5)
    return {
        "c10": evaluate(ten.root, client=client, slice_by=["model"]),
        "c1000": evaluate(wide.root, client=client),
        "bad": evaluate(bad.root, client=client, slice_by=["model"], on_bad_shard="skip",
                        classes=[XSS_CLASS, "a&b", '"quoted"', "plain"]),
        "c2": evaluate(binary.root, client=client, slice_by=["model"]),
        "c2-bits": evaluate(binary.root, client=client, slice_by=["model"], units="bits"),
    }


def timed_render(tables, **options) -> tuple[str, float]:
    started = time.perf_counter()
    page = render_html(tables, **options)
    return page, time.perf_counter() - started


def overall(report) -> dict:
    return next(r for r in report.tables["summary"].to_pylist() if r["overall"])


@pytest.mark.slow
def test_every_section_of_a_sliced_report_with_its_numbers(reports):
    report = reports["c10"]
    render_html(report.tables)  # the vega bundle is built or read once
    page, seconds = timed_render(report.tables)
    size = len(page.encode())
    print(f"C=10 x 20 slices: {size / MB:.2f} MB in {seconds:.2f} s")
    assert size < 3 * MB
    assert sections(page) == set(SECTIONS)
    assert "No data problems" in page
    row = overall(report)
    for metric in ("ce_mean", "accuracy", "ece", "brier", "auc", "f1_macro"):
        shown = card(page, metric)
        assert float(shown["value"]) == row[metric] and shown["text"] == f"{row[metric]:.4f}", metric
        assert shown["interval"] == f"[{row[f'{metric}_lo']:.4f}, {row[f'{metric}_hi']:.4f}]", metric
    assert card(page, "n")["value"] == str(row["n"]) and card(page, "n")["text"] == f"{row['n']:,}"
    assert page.count("<tr>") >= 10 + 20  # every class and every slice
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page.split("</script>", 1)[1])  # after the bundle


# --------------------------------------------------------------------------- every number against the Parquet


def label(index: int, name: str) -> str:
    """A class as the page names it: its index, then its name unless the name is the index."""
    return str(index) if name == str(index) else f"{index} {name}"


def interval_text(row: dict, metric: str) -> str:
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    finite = all(v is not None and math.isfinite(v) for v in (lo, hi))
    return f"[{lo:.4f}, {hi:.4f}]" if finite else ""


def check_cells(header: list[dict], cells: list[dict], row: dict) -> None:
    """Each cell of a metric column (and n) shows the Parquet row's value: its sort key is
    the value, its text the value to 4 places, its interval ``[lo, hi]`` of the _lo/_hi columns."""
    assert len(cells) == len(header)
    for head, cell in zip(header, cells):
        metric = head["metric"] or ("n" if head["text"] == "n" else None)
        if metric is None:
            continue
        value = row[metric]
        if metric == "n":
            assert (cell["sort"], cell["text"], cell["interval"]) == (str(value), f"{value:,}", ""), cell
            continue
        if value is None:
            assert cell["sort"] == cell["text"] == "", (metric, cell)
        elif math.isfinite(value):
            assert float(cell["sort"]) == value and cell["text"] == f"{value:.4f}", (metric, cell)
        else:
            assert cell["sort"] == "" and cell["text"] == "nan", (metric, cell)
        assert cell["interval"] == interval_text(row, metric), (metric, cell)


@pytest.mark.parametrize("name", ["c10", "bad", "c2", "c2-bits"])
def test_per_class_and_per_slice_cells_are_the_numbers_of_the_parquet(reports, name):
    report = reports[name]
    tables = Tables(render_html(report.tables))
    per_class = report.tables["per_class"]
    classes = {r["class"]: r for r in per_class.to_pylist() if r["overall"]}
    header = tables.header("per-class-table")
    assert [h["text"] for h in header[:3]] == ["class", "name", "n"]
    metrics = [h["metric"] for h in header[3:]]
    assert {"ce_mean", "accuracy"} <= set(metrics) <= set(per_class.column_names)
    shown = tables.rows("per-class-table")
    assert sorted(int(cells[0]["sort"]) for cells in shown) == sorted(classes)  # every class, once
    for cells in shown:
        row = classes[int(cells[0]["sort"])]
        assert (cells[0]["text"], cells[1]["text"]) == (str(row["class"]), row["class_name"])
        check_cells(header, cells, row)
    ce = [classes[int(cells[0]["sort"])]["ce_mean"] for cells in shown]
    assert ce == sorted(ce, reverse=True)  # the worst first

    slices = {r["model"]: r for r in report.tables["summary"].to_pylist() if not r["overall"]}
    header = tables.header("per-slice-table")
    assert [h["text"] for h in header[:2]] == ["model", "n"] and {"ce_mean", "ece"} <= {h["metric"] for h in header}
    shown = tables.rows("per-slice-table")
    assert sorted(cells[0]["text"] for cells in shown) == sorted(slices)
    for cells in shown:
        check_cells(header, cells, slices[cells[0]["text"]])


@pytest.mark.parametrize("name", ["c10", "c2", "c2-bits"])
def test_the_reliability_chart_is_the_summarys_confidence_histogram(reports, name):
    row = overall(reports[name])
    weights, accuracy = row["confidence_hist"], row["confidence_hist_accuracy"]
    confidence, bins = row["confidence_hist_confidence"], len(row["confidence_hist"])
    diagonal, curve, bars = chart_data(chart_spec(render_html(reports[name].tables), "reliability-chart"))
    assert diagonal == [{"x": 0, "y": 0}, {"x": 1, "y": 1}]
    assert [b["weight"] for b in bars] == weights
    assert [(b["lo"], b["hi"]) for b in bars] == [(i / bins, (i + 1) / bins) for i in range(bins)]
    assert [b["share"] for b in bars] == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)
    # One point per bin with weight: its mean confidence and its accuracy.
    expected = [(confidence[i], accuracy[i]) for i in range(bins) if weights[i] > 0]
    assert [(p["confidence"], p["accuracy"]) for p in curve] == expected and len(expected) >= 2


@pytest.mark.parametrize("name", ["c10", "bad", "c2", "c2-bits"])
def test_the_confusion_heat_map_and_top_confusions_are_confusion_parquet(reports, name):
    report = reports[name]
    page = render_html(report.tables)
    cells = [r for r in report.tables["confusion"].to_pylist() if r["overall"]]
    totals: dict[int, float] = {}
    for c in cells:
        totals[c["true"]] = totals.get(c["true"], 0.0) + c["weight"]
    expected = {(label(c["true"], c["true_name"]), label(c["predicted"], c["predicted_name"])):
                (c["n"], c["weight"], c["weight"] / totals[c["true"]]) for c in cells}
    (heat,) = chart_data(chart_spec(page, "confusion-chart"))
    assert len(heat) == len(expected) == len({(h["true"], h["predicted"]) for h in heat})  # every class shown
    for h in heat:
        n, _, share = expected[(h["true"], h["predicted"])]
        assert h["n"] == n and h["share"] == pytest.approx(share, rel=1e-12), h
    # Top confusions: the largest off-diagonal weights, each with its share of the true class.
    off = sorted((c for c in cells if c["true"] != c["predicted"]), key=lambda c: -c["weight"])[:10]
    shown = [[cell["text"] for cell in cells] for cells in Tables(page).rows("top-confusions")]
    assert [row[3] for row in shown] == [f"{c['weight']:.4f}" for c in off] and shown
    for true, predicted, n, weight, share in shown:
        assert true != predicted
        expected_n, expected_weight, expected_share = expected[(true, predicted)]
        assert (n, weight, share) == (f"{expected_n:,}", f"{expected_weight:.4f}", f"{expected_share:.4f}")


def test_a_report_in_bits_says_bits(reports):
    bits, nats = reports["c2-bits"], reports["c2"]
    page = render_html(bits.tables)
    shown = page.split("</script>", 1)[1]  # after the vega bundle
    assert "nats" not in shown
    assert "2 classes; cross-entropy in bits" in page
    assert re.search(r'data-metric="ce_mean" data-value="[^"]*">\s*<div class="label">mean CE \(bits\)</div>', page)
    units = {h["metric"]: h["text"] for h in Tables(page).header("per-class-table") if h["metric"]}
    assert units["ce_mean"] == "mean CE (bits)" and units["entropy_mean"] == "mean entropy (bits)"
    assert units["accuracy"] == "accuracy"
    assert "Mean CE per class (bits)" in page and "Mean CE per slice (bits)" in page
    for chart in ("forest-classes", "forest-slices"):
        assert 'mean CE (bits)' in json.dumps(chart_spec(page, chart)), chart
    # The numbers are those of the bits Parquet, which are the nats ones over ln 2.
    assert float(card(page, "ce_mean")["value"]) == overall(bits)["ce_mean"]
    assert overall(bits)["ce_mean"] == pytest.approx(overall(nats)["ce_mean"] / math.log(2), rel=1e-12)
    assert overall(bits)["accuracy"] == overall(nats)["accuracy"]


@pytest.mark.slow
def test_a_report_without_integrity_metadata_claims_no_checksums(reports):
    """An old report folder, written before ``xent.integrity``: no problem to list, and
    no claim that checksums were verified."""
    tables = {name: table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                   if k != INTEGRITY_KEY})
              for name, table in reports["c10"].tables.items()}
    page = render_html(tables)
    verdict = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert "No data problems: no bad shards, no non-finite rows; page checksums were not recorded for this report." \
        in verdict
    assert "checksums verified" not in page.split("</script>", 1)[1]  # not in the verdict, not in the footer
    assert "every input file&#39;s page checksums verified" in render_html(reports["c10"].tables)


def test_the_class_count_is_said_only_when_known(reports):
    tables = dict(reports["c10"].tables)
    assert re.search(r'<div class="sub">10 classes; cross-entropy in nats', render_html(tables))
    del tables["per_class"]
    subtitle = re.search(r'<div class="sub">([^<]*)</div>', render_html(tables)).group(1)
    assert subtitle.startswith("cross-entropy in nats") and "classes" not in subtitle


def test_sections_without_their_data_are_left_out(reports):
    tables = dict(reports["c10"].tables)
    del tables["confusion"]
    summary = tables["summary"]
    keep = [c for c in summary.column_names if c not in ("confidence_hist_accuracy", "confidence_hist_confidence")]
    tables["summary"] = summary.filter(summary.column("overall")).select(keep).drop_columns(["model"])
    tables["per_class"] = tables["per_class"].filter(tables["per_class"].column("overall")).drop_columns(["model"])
    page = render_html(tables)
    assert sections(page) == set(SECTIONS) - {"per-slice", "confusion"}
    assert "no per-bin accuracy" in page  # a report written before the per-bin columns
    assert 'data-chart="forest-slices"' not in page


def test_a_thousand_classes_show_the_worst_and_count_the_rest(reports):
    report = reports["c1000"]
    page, seconds = timed_render(report.tables, max_classes=50)
    size = len(page.encode())
    print(f"C=1000: {size / MB:.2f} MB in {seconds:.2f} s")
    assert size < 3 * MB
    assert "confusion" not in sections(page)  # C > max_confusion_classes: no confusion.parquet
    assert "950 more classes are not shown" in page
    rows = [r for r in report.tables["per_class"].to_pylist() if r["overall"] and not math.isnan(r["ce_mean"])]
    worst = max(rows, key=lambda r: r["ce_mean"])
    table = page.split('id="per-class-table"', 1)[1]
    assert re.search(r'<tbody>\s*<tr><td class="num" data-sort="(\d+)"', table).group(1) == str(worst["class"])


def test_names_are_escaped_and_problems_listed(reports):
    page = render_html(reports["bad"].tables)
    assert XSS_CLASS not in page and XSS_SLICE not in page
    assert "&lt;script&gt;window.xss=1&lt;/script&gt;" in page  # jinja2's autoescape
    tables = Tables(page)
    assert XSS_CLASS in [cells[1]["text"] for cells in tables.rows("per-class-table")]  # shown as text
    assert XSS_SLICE in [cells[0]["text"] for cells in tables.rows("per-slice-table")]
    problems = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert 'id="problem-bad-shards"' in problems and "1 bad shard skipped (rows unknown)" in problems
    assert "checksums" not in problems  # the rewritten file has none: information, in the footer
    assert "inputs: 4 files, 2 with page checksums verified; 1 without" in page.split('<footer id="footer">', 1)[1]
    # The skipped shard's file, reason and rows, as in bad_shards.parquet.
    bad = reports["bad"].tables["bad_shards"].to_pylist()
    assert len(bad) == 1
    assert [[c["text"] for c in cells] for cells in tables.rows("problem-bad-shards-table")] == [
        [bad[0]["file"], bad[0]["reason"], "unknown"]]  # a truncated file: its footer is unreadable


@pytest.mark.slow
def test_eval_writes_the_page_in_its_manifest_and_report_renders_a_folder(reports, tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=3_000, classes=3, shards=2, seed=4)
    out = tmp_path / "report"
    assert main(["eval", dump.root, "--out", str(out), "--no-prefect"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"page: {out}/report.html"
    assert manifest_entry(out) == file_entry(out / "report.html")

    elsewhere = tmp_path / "new" / "folder" / "page.html"  # its folder is made
    assert main(["report", str(out), "--html", str(elsewhere)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {elsewhere}"
    assert sections(elsewhere.read_text()) == set(SECTIONS) - {"per-slice"}
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [e for e in manifest["files"] if e["file"] == "report.html"] == [file_entry(out / "report.html")]
    assert main(["report", str(tmp_path)]) == 2  # not a report folder


def test_notebooks_get_the_page_in_an_iframe(reports):
    shown = reports["bad"]._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script>" not in shown


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_pages_in_headless_chromium(reports, tmp_path):
    with chromium() as driver:
        for name, report in reports.items():
            page = tmp_path / f"{name}.html"
            page.write_text(report.to_html(), encoding="utf-8")
            # forest (classes, slices), reliability, confusion
            expected = {"c10": 4, "c1000": 2, "bad": 4, "c2": 4, "c2-bits": 4}[name]
            open_page(driver, page, expected)
            assert console_errors(driver) == [], name
            assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == [], name
            for section in sections(page.read_text()):
                assert driver.find_element("id", section).is_displayed(), (name, section)
            row = overall(report)
            from selenium.webdriver.common.by import By

            for card in driver.find_elements(By.CSS_SELECTOR, ".card"):
                metric = card.get_attribute("data-metric")
                shown = card.find_element(By.CSS_SELECTOR, ".value").text
                assert shown == (f"{row[metric]:,}" if metric == "n" else f"{row[metric]:.4f}"), (name, metric)
            assert driver.execute_script("return window.xss") is None, name
            if name == "bad":
                names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#per-class-table td.text")]
                assert XSS_CLASS in names
                slices = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#per-slice-table td.text")]
                assert XSS_SLICE in slices
            # a click on the class header sorts the rows by class
            driver.find_element(By.CSS_SELECTOR, "#per-class-table th").click()
            classes = [int(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#per-class-table tbody tr td:first-child")]
            assert classes == sorted(classes) and len(classes) == min(50, len(row["predicted_marginal"])), name
            assert console_errors(driver) == [], name


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_screenshot_script_writes_a_png_per_page_kind():
    written = write_screenshots(SCREENSHOTS)  # listed at the end of the test run (conftest)
    assert [p.name for p in written][:3] == ["c10-20-slices.png", "c1000.png", "problems-and-html-names.png"]
    assert {"drift-breached.png", "compare-gate-breached.png", "nightly-run.png", "nightly-history.png"} <= {
        p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000 for p in written)
