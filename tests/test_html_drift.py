"""The drift page: drift_distributions.parquet holds what the distribution metrics
compare (checked against numpy and scipy on the dumps' rows), the drift section shows
the numbers of drift.parquet, breaches lead the verdict, names with HTML stay text,
``xent drift`` and ``xent report`` write the page, and headless Chromium draws it with
no console error and no network request."""

from __future__ import annotations

import html as html_text
import json
import math
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax

from flows.api import drift, evaluate
from flows.cli.commands import main
from flows.generate import generate_dump
from flows.report.page import render_html
from oracle import load_arrays

from browser import (
    MISSING, Tables, chart_spec, chromium, console_errors, file_entry, manifest_entry, open_page, requested_urls,
    sections,
)

XSS_SLICE = "<img src=x onerror=\"window.xss=1\">"
MODELS = ["a", XSS_SLICE]
SMOOTHING = 1e-4  # DriftSettings' default
THRESHOLDS = {"kl_per_sample": 0.05, "marginal_js": 1.0}  # per-sample KL breached, marginal JS not


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-html")
    common = dict(classes=5, slices={"model": MODELS}, weights=True, seed=7)
    reference = generate_dump(root / "ref", rows=3000, shards=3, **common)
    current = generate_dump(root / "cur", rows=2500, shards=2, shuffle=True, drift=1.0, **common)
    return reference, current


@pytest.fixture(scope="module")
def written(dumps, client, tmp_path_factory):
    """drift() on the two dumps, written: {table name: Table as read back}, the folder, the result."""
    reference, current = dumps
    result = drift(reference.root, current.root, client=client, slice_by=["model"], weight_col=current.weight_column,
                   drift={"thresholds": THRESHOLDS})
    folder = tmp_path_factory.mktemp("drift-out") / "out"
    paths = result.write(folder)
    return {name: pq.read_table(path) for name, path in paths.items()}, folder, result


def chart_values(page: str, chart_id: str) -> list[dict]:
    return chart_spec(page, chart_id)["data"]["values"]


def where(row: dict) -> str:
    return "all slices" if row["overall"] else f"model={row['model']}"


# --------------------------------------------------------------------------- the data


def test_distributions_are_the_rows_marginals_and_confidence_histograms(dumps, written):
    """drift_distributions against numpy on the dumps' rows, and drift.parquet's KL, JS
    and PSI recomputed from it with scipy."""
    tables, _, _ = written
    distributions = tables["drift_distributions"].to_pylist()
    assert tables["drift_distributions"].schema.metadata == tables["drift"].schema.metadata
    arrays = {side: load_arrays(dump) for side, dump in zip(("reference", "current"), dumps)}
    metrics = {(where(r), r["metric"]): r["value"] for r in tables["drift"].to_pylist() if r["class"] is None}
    for scope in ["all slices", *(f"model={m}" for m in MODELS)]:
        rows = [r for r in distributions if where(r) == scope]
        shares = {}
        for kind in ("marginal", "confidence"):
            weights = {side: np.array([r["weight"] for r in rows if r["side"] == side and r["kind"] == kind])
                       for side in ("reference", "current")}
            bins = [r for r in rows if r["side"] == "reference" and r["kind"] == kind]
            assert [r["bin"] for r in bins] == list(range(len(bins)))
            for side, data in arrays.items():
                keep = np.ones(len(data["label"]), bool) if scope == "all slices" else data["model"] == scope[6:]
                p, w = softmax(data["pred"][keep], axis=1), data["weight"][keep]
                if kind == "marginal":
                    expected = (w[:, None] * p).sum(axis=0)
                else:
                    edges = [r["lo"] for r in bins] + [bins[-1]["hi"]]
                    assert edges[0] == 0.0 and edges[-1] == 1.0 and np.all(np.diff(edges) > 0)
                    expected = np.histogram(p.max(axis=1), bins=edges, weights=w)[0]
                assert_allclose(weights[side], expected, rtol=1e-9, err_msg=f"{scope} {kind} {side}")
            r, c = ((weights[s] / weights[s].sum() + SMOOTHING) / (1 + SMOOTHING * len(bins)) for s in ("reference", "current"))
            assert_allclose(metrics[(scope, f"{kind}_kl")], rel_entr(r, c).sum(), rtol=1e-9)
            assert_allclose(metrics[(scope, f"{kind}_js")], jensenshannon(r, c) ** 2, rtol=1e-9)
            assert_allclose(metrics[(scope, f"{kind}_psi")], np.sum((c - r) * np.log(c / r)), rtol=1e-9)
            shares[kind] = weights
        # Bins at the reference's quantiles: each holds about a tenth of its weight.
        reference_share = shares["confidence"]["reference"] / shares["confidence"]["reference"].sum()
        assert len(reference_share) == 10 and np.all(np.abs(reference_share - 0.1) < 0.05), reference_share


# --------------------------------------------------------------------------- the page


def test_the_section_shows_the_numbers_of_drift_parquet(written):
    tables, _, _ = written
    page = render_html(tables)
    assert sections(page) == {"verdict", "drift", "footer"}
    assert "<title>xent drift report</title>" in page
    expected = [r for r in tables["drift"].to_pylist() if r["class"] is None]
    shown = Tables(page).rows("drift-table")
    assert len(shown) == len(expected)
    by_key = {(cells[0]["text"], cells[1]["text"]): cells for cells in shown}
    for row in expected:
        cells = by_key[(where(row), row["metric"])]
        value, threshold, breached = cells[2], cells[3], cells[4]
        assert float(value["sort"]) == row["value"], row
        assert (float(threshold["sort"]) if threshold["sort"] else None) == row["threshold"], row
        assert breached["text"] == ("BREACHED" if row["breached"] else ""), row
    # The charts' data: each side's share of its weight, per class and per confidence bin.
    distributions = tables["drift_distributions"].to_pylist()
    for chart, kind in (("drift-marginals", "marginal"), ("drift-confidence", "confidence")):
        values = chart_values(page, chart)
        assert len(values) == sum(r["kind"] == kind for r in distributions)  # 2 slices: all charted
        for scope in {v["where"] for v in values}:
            for side in ("reference", "current"):
                rows = [r for r in distributions if where(r) == scope and r["side"] == side and r["kind"] == kind]
                ours = [v["share"] for v in values if v["where"] == scope and v["side"] == side]
                assert_allclose(ours, [r["weight"] / sum(r["weight"] for r in rows) for r in rows], rtol=1e-12)
    kl = sorted((r for r in tables["drift"].to_pylist() if r["class"] is not None and r["overall"]),
                key=lambda r: -r["value"])
    assert [v["kl"] for v in chart_values(page, "drift-kl-classes")] == [r["value"] for r in kl]


def test_breaches_lead_the_verdict(written):
    tables, _, result = written
    page = render_html(tables)
    verdict = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    breaches = [html_text.unescape(b) for b in re.findall(r'<li class="breach" data-kind="drift">(.*?)</li>', verdict)]
    breached = [r for r in tables["drift"].to_pylist() if r["breached"]]
    assert len(breached) == 3 and all(r["metric"] == "kl_per_sample" for r in breached)  # two slices and overall
    assert sorted(breaches) == sorted(f"drift: {text}" for text in result.breaches)
    for row in breached:
        slice_text = "overall" if row["overall"] else where(row)
        assert f"drift: kl_per_sample = {row['value']:.6g} exceeds threshold {row['threshold']:.6g} ({slice_text})" \
            in breaches, row
    assert "none breached" not in page


def test_within_thresholds_is_a_passing_check_and_html_names_stay_text(written):
    tables, _, _ = written
    drift_table = tables["drift"]
    passing = drift_table.set_column(drift_table.column_names.index("breached"), "breached",
                                     [[False] * drift_table.num_rows])
    page = render_html({**tables, "drift": passing})
    assert '<li class="breach"' not in page
    assert '<div class="verdict ok">Drift: 6 value(s) checked against their threshold, none breached.</div>' in page
    assert XSS_SLICE not in page
    assert f"model={XSS_SLICE}" in {cells[0]["text"] for cells in Tables(page).rows("drift-table")}  # shown as text


@pytest.mark.slow
def test_many_slices_and_classes_are_summed_up(tmp_path, client):
    """8 slices (> 6) are charted together only; 40 classes (> 30) in the marginals and
    the per-class KL (max_classes) are cut, saying how many are left out."""
    common = dict(classes=40, slices={"model": [f"m{i}" for i in range(8)]}, seed=5)
    reference = generate_dump(tmp_path / "ref", rows=4000, shards=2, **common)
    current = generate_dump(tmp_path / "cur", rows=4000, shards=2, drift=0.5, **common)
    result = drift(reference.root, current.root, client=client, slice_by=["model"])
    page = result.to_html(max_classes=12)
    assert 'id="drift-slices-not-charted"' in page and "8 slices are too many" in page
    assert {v["where"] for v in chart_values(page, "drift-marginals")} == {"all slices"}
    assert "Marginals: 30 of 40 classes shown" in page
    assert "the 12 classes with the largest mean are shown; 28 more classes are not" in page
    assert len(chart_values(page, "drift-kl-classes")) == 12
    assert "No thresholds set" in page and "Drift: no thresholds set" in page


def test_an_evaluation_with_drift_shows_both(dumps, written, client):
    """A nightly run's tables: the evaluation's sections and the drift section on one page."""
    tables, _, _ = written
    report = evaluate(dumps[1].root, client=client, slice_by=["model"])
    page = render_html({**report.tables, **tables})
    assert {"summary", "per-class", "drift"} <= sections(page)
    assert "<title>xent report</title>" in page and "cross-entropy in nats" in page


# --------------------------------------------------------------------------- the commands


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["no-prefect", "flow"])
def test_xent_drift_writes_the_page_and_ends_with_its_line(dumps, tmp_path, capsys, mode):
    reference, current = dumps
    out = tmp_path / "out"
    args = ["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model",
            "--weight-col", current.weight_column, "--out", str(out), "--config", str(tmp_path / "d.yaml")]
    (tmp_path / "d.yaml").write_text(json.dumps({"drift": {"thresholds": THRESHOLDS}}))
    assert main(args + (["--no-prefect"] if mode == "no-prefect" else [])) == 3  # breached, and written
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"page: {out}/report.html"
    assert manifest_entry(out) == file_entry(out / "report.html")
    assert manifest_entry(out, "drift_distributions.parquet")["bytes"] > 0
    page = (out / "report.html").read_text()
    assert "drift" in sections(page) and page.count('<li class="breach" data-kind="drift">') == 3


def test_xent_report_renders_a_drift_folder(written, tmp_path, capsys):
    tables, folder, _ = written
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {folder}/report.html"
    assert manifest_entry(folder) == file_entry(folder / "report.html")
    page = (folder / "report.html").read_text()
    assert sections(page) == {"verdict", "drift", "footer"}
    assert page.count('data-chart="drift-') == 3
    # The same page as from the tables in memory, but for its creation time.
    assert re.sub(r"created[^<;]*", "", page) == re.sub(r"created[^<;]*", "", render_html(tables))


def test_notebooks_get_the_drift_page_in_an_iframe(written):
    shown = written[2]._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script>" not in shown and "drift-table" in shown


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_drift_page_in_headless_chromium(written, tmp_path):
    from selenium.webdriver.common.by import By

    tables, _, _ = written
    # One value not a number (the overall marginal JS, not breached): it sorts first.
    rows = tables["drift"].to_pylist()
    nan_row = next(i for i, r in enumerate(rows) if r["overall"] and r["class"] is None and r["metric"] == "marginal_js")
    values = [math.nan if i == nan_row else r["value"] for i, r in enumerate(rows)]
    drift_table = tables["drift"].set_column(tables["drift"].column_names.index("value"), "value", [values])
    page = tmp_path / "report.html"
    page.write_text(render_html({**tables, "drift": drift_table}), encoding="utf-8")
    with chromium() as driver:
        open_page(driver, page, 3)  # marginals, confidence, per-class KL
        assert console_errors(driver) == []
        assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == []
        assert driver.find_element("id", "drift").is_displayed()
        for chart in ("drift-marginals", "drift-confidence", "drift-kl-classes"):
            marks = driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg.marks path, #{chart} svg.marks rect")
            assert marks, chart
        assert driver.execute_script("return window.xss") is None
        cells = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#drift-table td.text")]
        assert f"model={XSS_SLICE}" in cells
        breached = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#breaches li")]
        assert len(breached) == 3 and all("kl_per_sample" in b for b in breached)
        # A click on the value header sorts the rows by value ascending, the NaN first; a second click descending.
        header = driver.find_element(By.CSS_SELECTOR, "#drift-table th:nth-child(3)")
        column = "#drift-table tbody td:nth-child(3)"
        expected = sorted(v for i, v in enumerate(values) if rows[i]["class"] is None and i != nan_row)
        header.click()
        shown = driver.find_elements(By.CSS_SELECTOR, column)
        assert shown[0].text == "nan" and shown[0].get_attribute("data-sort") == ""
        assert [float(e.get_attribute("data-sort")) for e in shown[1:]] == expected
        header.click()
        shown = driver.find_elements(By.CSS_SELECTOR, column)
        assert shown[-1].text == "nan"
        assert [float(e.get_attribute("data-sort")) for e in shown[:-1]] == expected[::-1]
        assert console_errors(driver) == []
