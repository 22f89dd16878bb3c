"""report.html of ``xent compare --kind tokens`` on real token dumps and a real
LocalCluster: the cards, forest plots and tables are the numbers of compare.parquet and
compare_tokens.parquet (the CE difference and the tokens whose CE rose most also against
float64 numpy on the dense distributions the dumps were written from), the KL values are
labelled as a lower bound of KL(baseline‖candidate) beside the mass they see, the join
counts, tokens left out and gate breaches are in the verdict, token text is escaped,
the CLI writes the page and ``xent report`` redraws it from the folder, and in headless
Chromium the page draws with no console error, no network request and nothing cut off."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose

from flows.cli.commands import main
from flows.metadata import COMPARE_KEY
from flows.report.page import render_html
from flows.report.page.token_compare import is_token_compare

from browser import (
    MISSING, TOKEN_COMPARE_GATES, XSS_TOKEN, Tables, card, chart_data, chart_spec, chromium, console_errors,
    file_entry, glued_sentences, layout_problems, manifest_entry, open_page, requested_urls, sections, token_compare,
    token_compare_dumps,
)

CARDS = ("ce_mean", "perplexity", "bits_per_byte", "top1_accuracy")
PERCENTILES = ("median", "p90", "p99", "p999", "max")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    return token_compare_dumps(tmp_path_factory.mktemp("html-token-compare"))


@pytest.fixture(scope="module")
def result(dumps, client):
    return token_compare(dumps, client, slice_by=["source"], gate=TOKEN_COMPARE_GATES)


@pytest.fixture(scope="module")
def page(result):
    return render_html(result.tables)


def rows_of(result, scope: str, overall: bool = True) -> list[dict]:
    return [r for r in result.tables["compare"].to_pylist() if r["scope"] == scope and r["overall"] == overall]


def plotted(spec: dict) -> list[dict]:
    """The points of a forest plot: the layer data that has labels."""
    return next(values for values in chart_data(spec) if "label" in str(values[:1]))


def interval(row: dict, name: str, sign: str = "+") -> str:
    return f"[{row[f'{name}_lo']:{sign}.4f}, {row[f'{name}_hi']:{sign}.4f}]"


def worst_by_numpy(dumps: dict, n: int) -> list[int]:
    """The `n` target ids with the largest summed CE increase, in float64 numpy."""
    increase = np.bincount(dumps["target"], dumps["ce_candidate"] - dumps["ce_baseline"])
    seen = np.flatnonzero(np.bincount(dumps["target"]))
    return [int(i) for i in seen[np.argsort(-increase[seen], kind="stable")][:n]]


# --------------------------------------------------------------------------- the page's content


def test_cards_are_the_overall_differences_of_compare_parquet_and_of_numpy(result, dumps, page):
    assert is_token_compare(result.tables["compare"])
    assert sections(page) == {"verdict", "token-compare", "footer"}
    assert "<title>xent token compare report</title>" in page
    overall = result.report.overall_row
    for metric in CARDS:
        shown = card(page, metric)
        assert float(shown["value"]) == overall[f"{metric}_diff"], metric
        assert shown["text"] == f"{overall[f'{metric}_diff']:+.4f}", metric
        assert shown["interval"] == interval(overall, f"{metric}_diff"), metric
        assert shown["class"] == overall[f"{metric}_verdict"] == "worse", metric  # the student is worse
    # the numbers themselves, from the dense distributions the dumps were written from
    assert card(page, "tokens")["value"] == str(overall["tokens"]) == str(len(dumps["target"]))
    assert_allclose(float(card(page, "ce_mean")["value"]), (dumps["ce_candidate"] - dumps["ce_baseline"]).mean(),
                    rtol=1e-12)
    assert_allclose(overall["perplexity_candidate"], np.exp(dumps["ce_candidate"].mean()), rtol=1e-12)
    assert f"{overall['ce_mean_baseline']:.4f} → {overall['ce_mean_candidate']:.4f}" in page
    wins = int((dumps["ce_candidate"] < dumps["ce_baseline"]).sum())
    assert f"wins/ties/losses {wins:,}/0/{len(dumps['target']) - wins:,}" in page


def test_the_kl_lower_bound_is_named_so_beside_the_mass_it_sees(result, page):
    overall = result.report.overall_row
    shown = card(page, "kl_lower_bound_mean")
    assert float(shown["value"]) == overall["kl_lower_bound_mean"]
    assert shown["interval"] == interval(overall, "kl_lower_bound_mean", "")
    assert "KL(baseline‖candidate) LOWER BOUND, mean (nats)" in page
    assert "KL(candidate‖baseline) LOWER BOUND, mean (nats)" in page
    assert float(card(page, "kl_lower_bound_reverse_mean")["value"]) == overall["kl_lower_bound_reverse_mean"]
    assert (f"median {overall['kl_lower_bound_median']:.4f}, p99 {overall['kl_lower_bound_p99']:.4f}, "
            f"max {overall['kl_lower_bound_max']:.4f}; of {overall['kl_tokens']:,} tokens") in page
    assert (f"The bound sees {overall['baseline_known_mass']:.1%} of the teacher's mass, "
            f"{overall['candidate_known_mass']:.1%} of the student's.") in page
    assert "The baseline is the teacher p, the candidate the student q." in page
    # every heading and table column that names a KL says it is a lower bound
    tables = Tables(page)
    headers = [h["text"] for table in tables.tables.values() for h in table["header"]]

    named = [text for text in headers + re.findall(r"<h3>([^<]*)</h3>", page) if "KL" in text]
    assert len(named) == 3 and all("lower bound" in text.lower() for text in named), named


def test_the_kl_table_shows_each_scope_and_its_percentiles(result, page):
    tables = Tables(page)
    expected = [r for r in [*rows_of(result, "all"), *rows_of(result, "all", overall=False),
                            *rows_of(result, "position"), *rows_of(result, "frequency")] if r["kl_tokens"]]
    shown = tables.rows("token-compare-kl")
    assert len(shown) == len(expected)
    header = [h["metric"] for h in tables.header("token-compare-kl")]
    assert header[1:] == ["kl_tokens", "kl_lower_bound_mean", *(f"kl_lower_bound_{p}" for p in PERCENTILES),
                          "baseline_known_mass", "candidate_known_mass", "kl_infinite"]
    for cells, row in zip(shown, expected):
        for metric, cell in zip(header[1:], cells[1:]):
            assert float(cell["sort"]) == row[metric], (cells[0]["text"], metric)
        assert cells[2]["interval"] == interval(row, "kl_lower_bound_mean", "")
    labels = [cells[0]["text"] for cells in shown]
    assert labels[:3] == ["all tokens", "source=code", "source=web"]
    assert "position 0" in labels and "positions 2-3" in labels and "rank 1-10" in labels
    # how far a percentile read from the histogram may be from the exact one (the kernel's docstring: ±1.16%)
    assert "each is within ±1.16% of the exact one" in page


def test_forest_plots_of_the_ce_difference_by_position_frequency_and_slice(result, page):
    for scope in ("position", "frequency"):
        buckets = [r for r in rows_of(result, scope) if r["tokens"]]
        spec = chart_spec(page, f"token-compare-{scope}")
        points = plotted(spec)
        assert [p["value"] for p in points] == [r["ce_mean_diff"] for r in buckets], scope  # in bucket order
        assert [(p["lo"], p["hi"]) for p in points] == [(r["ce_mean_diff_lo"], r["ce_mean_diff_hi"]) for r in buckets]
        assert [p["n"] for p in points] == [r["tokens"] for r in buckets]
        assert {"x": 0} in [v for values in chart_data(spec) for v in values]
    assert plotted(chart_spec(page, "token-compare-position"))[0]["label"] == "position 0"
    assert plotted(chart_spec(page, "token-compare-frequency"))[0]["label"] == "rank 1-10"
    assert "<h3>Mean CE difference by the target&#39;s frequency rank (nats)</h3>" in page
    slices = sorted(rows_of(result, "all", overall=False), key=lambda r: -r["ce_mean_diff"])
    assert [p["label"] for p in plotted(chart_spec(page, "token-compare-slices"))] == [
        f"source={r['source']}" for r in slices]


def test_the_slice_table_and_the_tokens_whose_ce_rose_most(result, dumps, page):
    tables = Tables(page)
    slices = sorted(rows_of(result, "all", overall=False), key=lambda r: -r["ce_mean_diff"])
    shown = tables.rows("token-compare-slice-table")
    assert [cells[0]["text"] for cells in shown] == [r["source"] for r in slices]
    header = [h["metric"] for h in tables.header("token-compare-slice-table")]
    for cells, row in zip(shown, slices):
        in_slice = dumps["source"] == row["source"]
        assert_allclose(row["ce_mean_diff"], (dumps["ce_candidate"] - dumps["ce_baseline"])[in_slice].mean(), rtol=1e-12)
        for metric, cell in zip(header, cells):
            if metric == "verdict":
                assert cell["text"] == row["verdict"] and "worse" in cell["class"].split()
            elif metric:
                assert float(cell["sort"]) == row[metric], metric
        assert cells[header.index("ce_mean_diff")]["interval"] == interval(row, "ce_mean_diff")

    # the worst tokens: the first 20 rows of compare_tokens.parquet, the order numpy gives
    tokens = result.tables["compare_tokens"].to_pylist()
    shown = tables.rows("token-compare-worst")
    ids = [int(cells[0]["sort"]) for cells in shown]
    assert ids == [r["target"] for r in tokens[:20]] == worst_by_numpy(dumps, 20)
    by_id = {r["target"]: r for r in tokens}
    for cells in shown:
        row = by_id[int(cells[0]["sort"])]
        assert cells[1]["text"] == row["token"]
        assert [float(c["sort"]) for c in cells[2:]] == [
            row[m] for m in ("frequency_rank", "tokens", "ce_mean_baseline", "ce_mean_candidate", "ce_mean_diff",
                             "ce_sum_diff")]
        assert cells[6]["interval"] == interval(row, "ce_mean_diff")
        assert cells[6]["class"].split()[-1] == "worse"  # the interval lies above 0 for every one here
        assert row["tokens"] == int((dumps["target"] == row["target"]).sum())
    assert f"{len(tokens) - 20} more are in compare_tokens.parquet" in page


def test_the_verdict_lists_breached_gates_join_counts_and_tokens_left_out(result, page):
    info = json.loads(result.tables["compare"].schema.metadata[COMPARE_KEY])
    assert info["tokens"] is True and info["breaches"]
    tables = Tables(page)
    assert tables.breaches == info["breaches"]
    verdict = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert f"{len(info['breaches'])} breach(es)" in verdict
    assert "1 of 2 gate(s) passed: top1_accuracy max_decrease 0.5 (interval)." in verdict
    assert ("tokens joined on (doc_id, position): 2,850 matched; 50 only in the baseline and 100 only in the "
            "candidate, left out of every difference") in verdict
    assert ('id="problem-tokens-left-out">1 joined token(s) with a log-probability of -inf on either side, left '
            "out of every difference.") in verdict
    assert 'id="problem-kl-infinite">1 token(s) with an infinite KL(baseline‖candidate) lower bound' in verdict


def test_token_text_is_escaped(result, dumps, page):
    assert 5 in worst_by_numpy(dumps, 20)  # the id named in HTML is shown
    assert XSS_TOKEN not in page and "&lt;script&gt;window.xss=3&lt;/script&gt;" in page
    assert "<b>10</b>" not in page and "&lt;b&gt;10&lt;/b&gt;" in page


@pytest.mark.slow
def test_without_top_k_lists_or_slices_or_the_compare_metadata(dumps, client, tmp_path):
    """Dumps without top-k lists: no KL section but its note, no top-1 card; one slice:
    no slice table or chart; a compare table without its metadata is still read as a
    token comparison by its scope column."""
    folders = {}
    for side in ("baseline", "candidate"):
        table = pq.ParquetDataset(dumps[side]).read().drop_columns(["topk_ids", "topk_logprobs"])
        folders[side] = tmp_path / side
        folders[side].mkdir()
        pq.write_table(table, folders[side] / "part-0.parquet")
    result = token_compare({**dumps, "baseline": str(folders["baseline"]), "candidate": str(folders["candidate"])},
                           client)
    page = render_html(result.tables)
    overall = result.report.overall_row
    assert overall["kl_tokens"] == 0 and math.isnan(overall["top1_accuracy_diff"])
    assert 'id="token-compare-no-kl">No KL lower bound: it needs top-k lists in both dumps.' in page
    assert 'data-metric="kl_lower_bound_mean"' not in page and 'data-metric="top1_accuracy"' not in page
    assert float(card(page, "ce_mean")["value"]) == overall["ce_mean_diff"]
    assert "token-compare-slice-table" not in page and 'data-chart="token-compare-slices"' not in page
    assert "problem-kl-infinite" not in page

    bare = result.tables["compare"].replace_schema_metadata({})
    assert is_token_compare(bare)
    page = render_html({"compare": bare})
    assert float(card(page, "ce_mean")["value"]) == overall["ce_mean_diff"]
    assert "token-compare-worst" not in page  # compare_tokens not given
    assert "Every token joined on (doc_id, position)" not in page and "2,850 matched" in page


# --------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_xent_compare_writes_the_page_and_xent_report_redraws_it(dumps, client, tmp_path, capsys):
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(f"kind: tokens\non_nonfinite: count\ntokens: {{vocab: {dumps['vocab']}}}\n"
                         f"gate: {json.dumps(TOKEN_COMPARE_GATES)}\n")
    out = tmp_path / "out"
    code = main(["compare", "--baseline", dumps["baseline"], "--candidate", dumps["candidate"], "--slice-by", "source",
                 "--config", str(gate_file), "--scheduler", client.scheduler.address, "--no-prefect", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert captured.out.strip().splitlines()[-1] == f"page: {out}/report.html"
    assert manifest_entry(out) == file_entry(out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    table = pq.read_table(out / "compare.parquet")
    assert Tables(page).breaches == json.loads(table.schema.metadata[COMPARE_KEY])["breaches"]
    overall = next(r for r in table.to_pylist() if r["overall"] and r["scope"] == "all")
    assert float(card(page, "ce_mean")["value"]) == overall["ce_mean_diff"]
    assert "token-compare-worst" in page

    # xent report on the folder reads compare_tokens.parquet too and draws the same page
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"page: {out}/report.html"
    assert (out / "report.html").read_text(encoding="utf-8") == page
    assert manifest_entry(out) == file_entry(out / "report.html")


# --------------------------------------------------------------------------- in the browser


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_token_compare_page_in_headless_chromium(result, page, tmp_path):
    from selenium.webdriver.common.by import By

    overall = result.report.overall_row
    path = tmp_path / "token-compare.html"
    path.write_text(page, encoding="utf-8")
    with chromium(1280) as driver:
        open_page(driver, path, 3)  # forest plots: positions, frequency, slices
        assert console_errors(driver) == []
        assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == []
        assert driver.find_element(By.ID, "token-compare").is_displayed()
        points = driver.find_elements(By.CSS_SELECTOR, "#token-compare-slices .mark-symbol.role-mark path")
        assert len(points) == 2
        for element in driver.find_elements(By.CSS_SELECTOR, "#token-compare-cards .card"):
            metric = element.get_attribute("data-metric")
            if metric in CARDS:
                assert element.find_element(By.CSS_SELECTOR, ".value").text == f"{overall[f'{metric}_diff']:+.4f}"
        assert driver.execute_script("return window.xss") is None
        assert XSS_TOKEN in [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#token-compare-worst td.text")]
        worse = driver.find_elements(By.CSS_SELECTOR, "#token-compare-worst td.worse")
        assert {e.value_of_css_property("color") for e in worse} == {"rgba(183, 28, 28, 1)"}
        # a click on the target id header sorts the worst tokens by id
        driver.find_element(By.CSS_SELECTOR, "#token-compare-worst th").click()
        ids = [int(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#token-compare-worst tbody td:first-child")]
        assert ids == sorted(ids)
        assert glued_sentences(driver) == []
        for width in (1280, 800):
            driver.set_window_size(width, 900)
            assert layout_problems(driver) == [], width
        assert console_errors(driver) == []
