"""report.html: the page's sections follow the data, every value is escaped, the page
stays small, and in headless Chromium it draws with no console error and no network
request, showing the numbers of the Parquet report."""

from __future__ import annotations

import hashlib
import html as html_text
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
from flows.report.page import render_html

from browser import MISSING, chromium, console_errors, open_page, requested_urls, write_screenshots

MB = 1 << 20
XSS_CLASS = "<script>window.xss=1</script>"
XSS_SLICE = "<img src=x onerror=\"window.xss=2\">"
SECTIONS = ("verdict", "summary", "per-class", "per-slice", "forest", "reliability", "confusion", "footer")


@pytest.fixture(scope="module")
def reports(tmp_path_factory, client):
    """C = 10 by 20 slices; C = 1,000; and a dump with a bad shard, a file without page
    checksums and HTML in its class and slice names."""
    root = tmp_path_factory.mktemp("html")
    ten = generate_dump(root / "c10", rows=40_000, classes=10, shards=2,
                        slices={"model": [f"m{i:02d}" for i in range(20)]}, seed=1)
    wide = generate_dump(root / "c1000", rows=20_000, classes=1000, shards=2, seed=2)
    bad = generate_dump(root / "bad", rows=4_000, classes=4, shards=4, bad_shards={"truncated": 1},
                        slices={"model": [XSS_SLICE, "a&b"]}, seed=3)
    good = sorted(set(bad.files) - set(bad.bad))
    pq.write_table(pq.read_table(good[0]), good[0], write_page_checksum=False)  # a file without checksums
    return {
        "c10": evaluate(ten.root, client=client, slice_by=["model"]),
        "c1000": evaluate(wide.root, client=client),
        "bad": evaluate(bad.root, client=client, slice_by=["model"], on_bad_shard="skip",
                        classes=[XSS_CLASS, "a&b", '"quoted"', "plain"]),
    }


def sections(page: str) -> set[str]:
    return set(re.findall(r'<(?:section|footer) id="([^"]+)"', page))


def timed_render(tables, **options) -> tuple[str, float]:
    started = time.perf_counter()
    page = render_html(tables, **options)
    return page, time.perf_counter() - started


def overall(report) -> dict:
    return next(r for r in report.tables["summary"].to_pylist() if r["overall"])


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
        match = re.search(rf'data-metric="{metric}" data-value="([^"]+)"', page)
        assert match and float(match.group(1)) == row[metric], metric
        assert f"[{row[f'{metric}_lo']:.4f}, {row[f'{metric}_hi']:.4f}]" in page, metric
    assert f'data-value="{row["n"]}"' in page
    assert page.count("<tr>") >= 10 + 20  # every class and every slice
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page.split("</script>", 1)[1])  # after the bundle


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
    assert html_text.escape(XSS_CLASS, quote=False) in page or "&lt;script&gt;" in page
    problems = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert 'id="problem-bad-shards"' in problems and "1 bad shard(s) skipped" in problems
    assert "2 of 4 input file(s) without page checksums" in problems  # the rewritten one and the truncated one
    assert "truncated" in problems or "Parquet" in problems  # the reason, from bad_shards.parquet


def test_eval_writes_the_page_in_its_manifest_and_report_renders_a_folder(reports, tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=3_000, classes=3, shards=2, seed=4)
    out = tmp_path / "report"
    assert main(["eval", dump.root, "--out", str(out), "--no-prefect"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"page: {out}/report.html"
    manifest = json.loads((out / "_manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["file"] == "report.html")
    data = (out / "report.html").read_bytes()
    assert entry == {"file": "report.html", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    elsewhere = tmp_path / "page.html"
    assert main(["report", str(out), "--html", str(elsewhere)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {elsewhere}"
    assert sections(elsewhere.read_text()) == set(SECTIONS) - {"per-slice"}
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    data = (out / "report.html").read_bytes()
    assert [e for e in manifest["files"] if e["file"] == "report.html"] == [
        {"file": "report.html", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert main(["report", str(tmp_path)]) == 2  # not a report folder


def test_notebooks_get_the_page_in_an_iframe(reports):
    shown = reports["bad"]._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script>" not in shown


@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_pages_in_headless_chromium(reports, tmp_path):
    with chromium() as driver:
        for name, report in reports.items():
            page = tmp_path / f"{name}.html"
            page.write_text(report.to_html(), encoding="utf-8")
            expected = {"c10": 4, "c1000": 2, "bad": 4}[name]  # forest (classes, slices), reliability, confusion
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


@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_screenshot_script_writes_a_png_per_page_kind(tmp_path):
    written = write_screenshots(tmp_path / "shots")
    print("screenshots:", *written)
    assert [p.name for p in written][:3] == ["c10-20-slices.png", "c1000.png", "problems-and-html-names.png"]
    assert {"drift-breached.png", "compare-gate-breached.png", "nightly-run.png", "nightly-history.png"} <= {
        p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000 for p in written)
