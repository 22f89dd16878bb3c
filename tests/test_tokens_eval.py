"""Token dumps (kind tokens) read from real Parquet files on a real Dask cluster: both
layouts of the same tokens give the same report, any sharding does, lm-eval's document
formulas hold, bad tokens are named, and the command line and page show the report."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from browser import MISSING, chromium, console_errors, open_page, requested_urls
from flows import evaluate
from flows.config import EvalConfig
from flows.errors import DataError
from support import random_tokens, run_cli

COMPARED = ("token_summary", "token_positions", "token_frequency", "per_token")


def token_rows_table(data: dict, rows: np.ndarray | None = None) -> pa.Table:
    rows = np.arange(len(data["target"])) if rows is None else rows
    return pa.table({
        "doc_id": pa.array(data["doc"][rows], pa.int64()),
        "position": pa.array(data["position"][rows], pa.int32()),
        "target": pa.array(data["target"][rows], pa.int32()),
        "target_logprob": pa.array(data["target_logprob"][rows], pa.float64()),
        "topk_ids": pa.array([data["ids"][i].tolist() for i in rows], pa.list_(pa.int32())),
        "topk_logprobs": pa.array([data["lps"][i].tolist() for i in rows], pa.list_(pa.float64())),
        "target_bytes": pa.array(data["bytes"][rows], pa.int32()),
        "source": pa.array(np.where(data["doc"][rows] % 2 == 0, "web", "code")),
    })


def documents_table(data: dict, n_bytes=None, n_words=None) -> pa.Table:
    """The same tokens a row per document, in position order (positions made distinct per document)."""
    docs = np.unique(data["doc"])
    lists = {name: [] for name in ("target", "target_logprob", "topk_ids", "topk_logprobs", "target_bytes")}
    first = []
    for doc in docs:
        rows = np.flatnonzero(data["doc"] == doc)
        rows = rows[np.argsort(data["position"][rows])]
        first.append(int(data["position"][rows[0]]))
        assert (np.diff(data["position"][rows]) == 1).all()
        lists["target"].append(data["target"][rows].tolist())
        lists["target_logprob"].append(data["target_logprob"][rows].tolist())
        lists["topk_ids"].append([data["ids"][i].tolist() for i in rows])
        lists["topk_logprobs"].append([data["lps"][i].tolist() for i in rows])
        lists["target_bytes"].append(data["bytes"][rows].tolist())
    columns = {
        "doc_id": pa.array(docs, pa.int64()),
        "source": pa.array(np.where(docs % 2 == 0, "web", "code")),
        "first_position": pa.array(first, pa.int32()),
        "target": pa.array(lists["target"], pa.list_(pa.int32())),
        "target_logprob": pa.array(lists["target_logprob"], pa.list_(pa.float64())),
        "topk_ids": pa.array(lists["topk_ids"], pa.list_(pa.list_(pa.int32()))),
        "topk_logprobs": pa.array(lists["topk_logprobs"], pa.list_(pa.list_(pa.float64()))),
        "target_bytes": pa.array(lists["target_bytes"], pa.list_(pa.int32())),
    }
    if n_bytes is not None:
        columns["n_bytes"] = pa.array(n_bytes, pa.int64())
    if n_words is not None:
        columns["n_words"] = pa.array(n_words, pa.int64())
    return pa.table(columns)


def contiguous_tokens(seed: int, n: int = 4000):
    """random_tokens with each document's positions made consecutive (as a real dump has them)."""
    data = random_tokens(seed, n=n)
    order = np.lexsort((data["position"], data["doc"]))
    data = {name: ([values[i] for i in order] if isinstance(values, list) else values[order])
            if name != "logp" else values[order] for name, values in data.items()}
    starts = {}
    position = np.empty(n, dtype=np.int64)
    for i, doc in enumerate(data["doc"]):
        position[i] = starts.get(doc, 3 * int(doc) % 5)  # some documents start past 0
        starts[doc] = position[i] + 1
    data["position"] = position
    return data


def write_shards(folder: Path, table: pa.Table, shards: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    for i, rows in enumerate(np.array_split(order, shards)):
        pq.write_table(table.take(rows), folder / f"part-{i:05d}.parquet", row_group_size=300)
    return folder


def assert_same_tables(a, b, skip=()):
    for name in COMPARED:
        x, y = a.tables[name], b.tables[name]
        for column in x.column_names:
            if column in skip:
                continue
            left, right = x.column(column).to_numpy(zero_copy_only=False), y.column(column).to_numpy(zero_copy_only=False)
            if left.dtype.kind == "f":
                np.testing.assert_allclose(right, left, rtol=1e-12, equal_nan=True, err_msg=f"{name}.{column}")
            else:
                assert list(left) == list(right), f"{name}.{column}"


@pytest.fixture(scope="module")
def data():
    return contiguous_tokens(11)


def test_both_layouts_and_any_sharding_give_one_report(tmp_path, client, data):
    options = dict(kind="tokens", slice_by=["source"], client=client, tokens={"topk": 5})
    rows_one = evaluate(write_shards(tmp_path / "rows1", token_rows_table(data), 1), **options)
    rows_many = evaluate(write_shards(tmp_path / "rows5", token_rows_table(data), 5, seed=3), **options)
    documents = evaluate(write_shards(tmp_path / "docs", documents_table(data), 3, seed=4), **options)
    assert_same_tables(rows_one, rows_many)
    assert_same_tables(rows_one, documents)
    summary = rows_one.summary.set_index("overall").loc[True]
    ce = -data["target_logprob"]
    assert summary["tokens"] == len(ce)
    assert summary["documents"] == len(np.unique(data["doc"]))
    assert summary["ce_mean"] == pytest.approx(ce.mean(), rel=1e-12)
    # in memory, as an Arrow table, a pandas DataFrame and a Dask DataFrame (Arrow dtypes,
    # so that Dask keeps the lists), the same again
    table = token_rows_table(data)
    assert_same_tables(rows_one, evaluate(table, **options))
    assert_same_tables(rows_one, evaluate(table.to_pandas(), **options))
    frame = dd.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype), npartitions=3)
    assert_same_tables(rows_one, evaluate(frame, **options))


def test_documents_give_lm_eval_word_and_byte_perplexity(tmp_path, client, data):
    """lm-eval: word_perplexity = exp(-Σ loglik / Σ words), byte_perplexity = exp(-Σ loglik / Σ bytes),
    bits_per_byte = -Σ loglik / Σ bytes / ln 2, the sums over documents."""
    docs = np.unique(data["doc"])
    n_bytes = (docs * 7 % 50 + 100).astype(np.int64)
    n_words = (docs * 3 % 11 + 20).astype(np.int64)
    folder = write_shards(tmp_path / "docs", documents_table(data, n_bytes, n_words).drop_columns(["target_bytes"]), 2)
    report = evaluate(folder, kind="tokens", client=client)
    overall = report.summary.iloc[-1]
    loglik = data["target_logprob"].sum()
    assert overall["documents"] == len(docs)
    assert overall["word_perplexity"] == pytest.approx(math.exp(-loglik / n_words.sum()), rel=1e-12)
    assert overall["byte_perplexity"] == pytest.approx(math.exp(-loglik / n_bytes.sum()), rel=1e-12)
    assert overall["bits_per_byte"] == pytest.approx(-loglik / n_bytes.sum() / math.log(2), rel=1e-12)
    assert overall["word_perplexity_lo"] < overall["word_perplexity"] < overall["word_perplexity_hi"]


@pytest.mark.slow
@pytest.mark.parametrize("change, where", [
    (lambda t: t.set_column(3, "target_logprob", pa.array(np.where(np.arange(t.num_rows) == 17, 0.5,
                                                                   t.column(3).to_numpy()))),
     "column 'target_logprob', row 17: log-probability above 0"),
    (lambda t: t.set_column(4, "topk_ids", pa.array([[1, 1] if i == 9 else ids for i, ids in enumerate(
        t.column(4).to_pylist())], pa.list_(pa.int32()))).set_column(5, "topk_logprobs", pa.array(
            [[-1.0, -2.0] if i == 9 else lps for i, lps in enumerate(t.column(5).to_pylist())], pa.list_(pa.float64()))),
     "column 'topk_ids', row 9: a token id repeated"),
    (lambda t: t.set_column(5, "topk_logprobs", pa.array([lps[:-1] if i == 4 else lps for i, lps in enumerate(
        t.column(5).to_pylist())], pa.list_(pa.float64()))),
     "column 'topk_logprobs', row 4: "),
    (lambda t: t.set_column(1, "position", pa.array(np.where(np.arange(t.num_rows) == 12, t.column(1).to_numpy()[11],
                                                             t.column(1).to_numpy()), pa.int32())),
     "column 'position', row 12: a position its document already has"),
])
def test_a_bad_token_is_named_and_nothing_is_written(tmp_path, data, change, where):
    folder = tmp_path / "dump"
    folder.mkdir()
    pq.write_table(change(token_rows_table(data).slice(0, 100)), folder / "part-0.parquet")
    with pytest.raises(DataError, match="part-0.parquet: " + where.replace("(", r"\(")):
        evaluate(folder, kind="tokens")
    result = run_cli(["eval", str(folder), "--kind", "tokens", "--out", str(tmp_path / "out"), "--no-prefect"])
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and where.split(":")[0] in result.stderr
    assert not (tmp_path / "out").exists()


def test_infinite_cross_entropy_is_an_error_or_counted(tmp_path, data):
    table = token_rows_table(data).slice(0, 200)
    logprob = table.column("target_logprob").to_numpy().copy()
    logprob[[5, 50]] = -np.inf
    folder = tmp_path / "dump"
    folder.mkdir()
    pq.write_table(table.set_column(3, "target_logprob", pa.array(logprob)), folder / "part-0.parquet")
    with pytest.raises(DataError, match="row 5: -inf log-probability.*--on-nonfinite count"):
        evaluate(folder, kind="tokens")
    report = evaluate(folder, kind="tokens", on_nonfinite="count")
    assert report.summary["n_nonfinite"].iloc[-1] == 2 and report.summary["tokens"].iloc[-1] == 198
    # the page's verdict says what was left out; the intervals line claims no AUC and no clipping
    page = report.to_html()
    assert "Left out: 2 tokens with an infinite CE." in page and "No data problems" not in page
    assert "jackknife over 20 buckets by the hash of doc_id; bounds not clipped" in page and "DeLong" not in page
    clean = evaluate(folder, kind="tokens", on_nonfinite="count", n_buckets=1).to_html()
    assert "intervals: none (n_buckets = 1); bounds not clipped" in clean


@pytest.mark.slow
def test_cli_prints_the_headline_and_writes_the_page(tmp_path, data):
    folder = write_shards(tmp_path / "dump", token_rows_table(data), 2)
    out = tmp_path / "report"
    result = run_cli(["eval", str(folder), "--kind", "tokens", "--slice-by", "source", "--units", "bits",
                      "--out", str(out), "--no-prefect"])
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "worst position buckets" in result.stdout
    ce_bits = (-data["target_logprob"]).mean() / math.log(2)
    summary = pq.read_table(out / "token_summary.parquet").to_pylist()
    assert summary[-1]["ce_mean"] == pytest.approx(ce_bits, rel=1e-12)
    page = (out / "report.html").read_text()
    assert "Language-model tokens" in page and "xent token report" in page
    assert "No data problems: no bad shards, every token with a target and a finite log-probability." in page
    assert 'data-metric="perplexity"' in page


@pytest.mark.slow
def test_the_document_bucket_interval_covers_where_tokens_are_correlated():
    """Tokens of a document share a difficulty: over 500 repetitions the interval over
    document buckets covers the true token-weighted CE in 92-98% of them; an interval
    that takes tokens as independent (buckets by token) covers far less."""
    from xent_kernels.tokens import token_stats_partial

    rng = np.random.default_rng(2026)
    docs, per_doc, truth = 400, 25, 2.0
    covered = {"documents": 0, "tokens": 0}
    repetitions = 500
    for _ in range(repetitions):
        difficulty = rng.gamma(2.0, 0.25, docs)  # a document's CE offset: mean 0.5, variance 0.125
        doc = np.repeat(np.arange(docs), per_doc)
        ce = truth - 1.0 + difficulty[doc] + rng.exponential(0.5, len(doc))  # a token's own: mean 0.5, variance 0.25
        for name, buckets in (("documents", (doc * 2654435761) % 20),
                              ("tokens", rng.integers(0, 20, len(ce)))):
            state = token_stats_partial(np.zeros(len(ce), np.int64), -ce, positions=np.zeros(len(ce), np.int64),
                                        buckets=buckets, n_buckets=20)[0]
            summary = state.finalize().summary
            covered[name] += summary["ce_mean_lo"][-1] <= truth <= summary["ce_mean_hi"][-1]
    share = {name: count / repetitions for name, count in covered.items()}
    assert 0.92 <= share["documents"] <= 0.98, share
    assert share["tokens"] < 0.85, share  # measured: documents 0.96, tokens 0.53


@pytest.mark.slow
def test_the_readme_token_example_runs_and_its_numbers_are_numpys(tmp_path, monkeypatch):
    """README "Language-model token dumps": each command exits 0 in an empty folder, and the
    overall perplexity is exp of NumPy's mean of -target_logprob over the dump."""
    import shlex

    from doc_blocks import marked_blocks
    from flows.cli import main

    monkeypatch.chdir(tmp_path)
    (block,) = marked_blocks("TOKENS")
    for line in block[1].splitlines():
        assert main(shlex.split(line)[1:]) == 0, line
    dump = pq.read_table(tmp_path / "lm").to_pandas()
    summary = pq.read_table(tmp_path / "lm-report" / "token_summary.parquet").to_pandas()
    overall = summary[summary["overall"]].iloc[0]
    expected = math.exp(-dump["target_logprob"].astype(np.float64).mean())
    assert overall["tokens"] == 200_000
    assert overall["perplexity"] == pytest.approx(expected, rel=1e-12)
    assert (tmp_path / "lm-report" / "report.html").is_file()


def test_the_prefect_flow_and_xent_report_give_the_same_token_report(tmp_path, prefect_harness, client, data):
    """The eval flow writes the tables the API makes (with a Prefect artifact per slice);
    `xent report` on the folder draws the token page again from them."""
    from flows.cli import main
    from flows.config import EvalConfig
    from flows.pipelines import eval_flow

    folder = write_shards(tmp_path / "dump", token_rows_table(data), 2)
    expected = evaluate(folder, kind="tokens", slice_by=["source"], client=client)
    paths = eval_flow(EvalConfig(sources=[str(folder)], kind="tokens", slice_by=["source"]), str(tmp_path / "flow"))
    assert sorted(paths) == sorted(COMPARED)
    assert_same_tables(expected, SimpleNamespace(tables={name: pq.read_table(path) for name, path in paths.items()}))
    (tmp_path / "flow" / "report.html").unlink()
    assert main(["report", str(tmp_path / "flow")]) == 0
    assert "Language-model tokens" in (tmp_path / "flow" / "report.html").read_text()


@pytest.mark.slow
def test_a_nightly_token_source_writes_history_rows_and_a_page_with_changes(tmp_path):
    """Two dates of a token source (the second scored by a model shifted 0.3 nats worse):
    metrics.parquet holds its summary rows (n its tokens), with the perplexity of NumPy,
    the page shows the change since the previous run; drift or gates on a token source
    are refused when the config loads."""
    import yaml

    from flows.config import NightlyConfig, build_config
    from flows.errors import ConfigError
    from flows.generate import generate_token_dump
    from flows.runs.nightly import nightly_run

    days = ("2026-11-22", "2026-11-23")
    for day, shift in zip(days, (0.0, 0.3)):
        generate_token_dump(tmp_path / "lm" / f"date={day}", tokens=20_000, topk=5, shards=2, shift=shift,
                            slices={"domain": ["web", "code"]}, seed=4)
    source = {"name": "lm", "paths": [str(tmp_path / "lm" / "date={date}")],
              "settings": {"kind": "tokens", "slice_by": ["domain"]}}
    config = {"report_root": str(tmp_path / "reports"), "sources": [source]}
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(config))
    outcomes = nightly_run(build_config(NightlyConfig, tmp_path / "nightly.yaml"), list(days))[0]
    assert [o.status for o in outcomes] == ["written", "written"]
    history = pq.read_table(tmp_path / "reports").to_pandas()
    rows = history[(history["metric"] == "perplexity") & history["overall"]].sort_values("run_date")
    for day, row in zip(days, rows.itertuples()):
        dump = pq.read_table(tmp_path / "lm" / f"date={day}").to_pandas()
        assert row.n == len(dump)
        assert row.value == pytest.approx(math.exp(-dump["target_logprob"].astype(np.float64).mean()), rel=1e-12)
        assert row.lo < row.value < row.hi
    assert rows["value"].iloc[1] > rows["value"].iloc[0]  # the shifted model is worse
    page = Path(outcomes[1].page).read_text()
    assert "Language-model tokens" in page and "nightly run of lm on 2026-11-23" in page
    assert 'data-metric="ce_mean"' in page and "data-change=" in page

    refused = {"gate": [{"metric": "ce_mean", "max_increase": 0.1}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "sources": [{**source, **refused}]}))
    with pytest.raises(ConfigError, match=r"sources.0 \(lm\): kind tokens has no nightly gate"):
        build_config(NightlyConfig, tmp_path / "bad.yaml")

    # drift against the previous day: the thresholds of the token kind apply, a classifier one is left to classifiers
    drifting = {**config, "report_root": str(tmp_path / "drift-reports"), "sources": [{**source, "reference": "previous"}],
                "drift": {"thresholds": {"ce_shift": 0.1, "marginal_js": 0.001}}}
    (tmp_path / "drift.yaml").write_text(yaml.safe_dump(drifting))
    outcomes = nightly_run(build_config(NightlyConfig, tmp_path / "drift.yaml"), list(days))[0]
    assert [o.drift for o in outcomes] == ["no reference", "checked"]
    # the headline of a token run names token figures (it said "accuracy ;", empty, before)
    assert outcomes[1].headline.startswith("tokens 20,000; perplexity ") and "accuracy ;" not in outcomes[1].headline
    assert "change since 2026-11-22: perplexity +" in outcomes[1].headline
    assert outcomes[1].breaches and all("ce_shift" in line for line in outcomes[1].breaches)
    history = pq.read_table(tmp_path / "drift-reports").to_pandas()
    shift = history[(history["metric"] == "ce_shift") & history["overall"]]
    first, second = (pq.read_table(tmp_path / "lm" / f"date={day}").to_pandas() for day in days)
    expected = -second["target_logprob"].astype(np.float64).mean() + first["target_logprob"].astype(np.float64).mean()
    assert shift["value"].tolist() == [pytest.approx(expected, rel=1e-12)] and shift["breached"].all()
    assert not (history["metric"] == "marginal_js").any()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_token_page_draws_in_headless_chromium(tmp_path, client, data):
    """The token page draws its two charts (CE by position and by frequency bucket) with
    no console error and no network request; the cards show the report's numbers."""
    from selenium.webdriver.common.by import By

    report = evaluate(write_shards(tmp_path / "dump", token_rows_table(data), 2), kind="tokens",
                      slice_by=["source"], client=client)
    page = tmp_path / "tokens.html"
    page.write_text(report.to_html(), encoding="utf-8")
    overall = report.summary.iloc[-1]
    with chromium() as driver:
        open_page(driver, page, 2)
        assert console_errors(driver) == []
        assert [u for u in requested_urls(driver) if not u.startswith(("file:", "data:", "about:"))] == []
        for card in driver.find_elements(By.CSS_SELECTOR, ".card"):
            metric = card.get_attribute("data-metric")
            shown = card.find_element(By.CSS_SELECTOR, ".value").text
            assert shown == (f"{overall[metric]:,}" if metric == "tokens" else f"{overall[metric]:.4f}"), metric
        rows = driver.find_elements(By.CSS_SELECTOR, "#worst-tokens tbody tr")
        assert len(rows) == 20
        assert driver.find_element("id", "tokens").is_displayed()


def test_a_vocabulary_names_the_tokens_and_given_counts_rank_them(tmp_path, client, data):
    """tokens.vocab adds each target's text to per_token (and the page); tokens.counts
    ranks the targets for the frequency buckets instead of the dump's own counts."""
    folder = write_shards(tmp_path / "dump", token_rows_table(data), 2)
    vocab, counts = tmp_path / "vocab.parquet", tmp_path / "counts.parquet"
    pq.write_table(pa.table({"id": pa.array(range(40), pa.int32()), "token": [f"<{i}>" for i in range(40)]}), vocab)
    given = np.arange(40)[::-1] * 1000  # id 0 the most frequent, then 1, 2, ...
    pq.write_table(pa.table({"id": np.arange(40), "count": given}), counts)
    report = evaluate(folder, kind="tokens", client=client, tokens={"vocab": str(vocab), "counts": str(counts)})
    per_token = report.per_token
    assert (per_token["token"] == [f"<{i}>" for i in per_token["target"]]).all()
    assert (per_token["frequency_rank"] == per_token["target"] + 1).all()
    ce = -data["target_logprob"]
    first = report.frequency.iloc[0]
    assert first["tokens"] == (data["target"] < 10).sum()
    assert first["ce_mean"] == pytest.approx(ce[data["target"] < 10].mean(), rel=1e-12)
    page = report.to_html()
    shown = re.findall(r'<td class="text"[^>]*>&lt;(\d+)&gt;</td>', page)  # escaped, in the worst-tokens table
    assert len(shown) == 20 and not re.search(r"<\d+>", page)

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"key": [1]}), bad)
    with pytest.raises(DataError, match="bad.parquet: cannot read the vocabulary"):
        evaluate(folder, kind="tokens", client=client, tokens={"vocab": str(bad)})


def test_tokens_without_a_target_or_log_prob_are_counted_and_left_out(tmp_path, client, data):
    table = token_rows_table(data)
    missing = np.zeros(table.num_rows, dtype=bool)
    missing[[3, 70, 71, 500]] = True
    even = np.arange(table.num_rows) % 2 == 0  # a null target at 70 and 500, a null log-prob at 3 and 71
    target = pa.array(table.column(2).to_numpy(), pa.int32(), mask=missing & even)
    logprob = pa.array(table.column(3).to_numpy(), pa.float64(), mask=missing & ~even)
    with_nulls = table.set_column(2, "target", target).set_column(3, "target_logprob", logprob)
    options = dict(kind="tokens", slice_by=["source"], client=client, tokens={"topk": 5})
    report = evaluate(write_shards(tmp_path / "nulls", with_nulls, 2), **options)
    expected = evaluate(write_shards(tmp_path / "without", table.filter(pa.array(~missing)), 2), **options)
    assert report.summary["n_ignored"].iloc[-1] == 4
    assert_same_tables(expected, report, skip=("n_ignored",))


def test_float16_log_probs_and_settings_a_token_report_does_not_take(tmp_path, client, data):
    """float16 log-probabilities read as their float64 values; weights, renormalize and eps
    are refused with kind tokens rather than ignored."""
    table = token_rows_table(data).slice(0, 500)
    half = table.set_column(3, "target_logprob", pa.array(table.column(3).to_numpy().astype(np.float16)))
    folder = write_shards(tmp_path / "half", half, 1)
    report = evaluate(folder, kind="tokens", client=client)
    expected = -half.column("target_logprob").to_numpy().astype(np.float64)
    assert report.summary["ce_mean"].iloc[-1] == pytest.approx(expected.mean(), rel=1e-12)
    for option in ({"weight_col": "w"}, {"eps": 1e-6}):
        with pytest.raises(ValueError, match="kind tokens does not take"):
            evaluate(folder, kind="tokens", client=client, **option)


def test_hive_folder_keys_slice_a_token_dump(tmp_path, client, data):
    table = token_rows_table(data)
    web = pc.equal(table.column("source"), "web")
    for value, rows in (("a", table.filter(web)), ("b", table.filter(pc.invert(web)))):
        write_shards(tmp_path / "dump" / f"model={value}", rows.drop_columns(["source"]), 2)
    report = evaluate(tmp_path / "dump", kind="tokens", slice_by=["model"], client=client)
    by_model = report.summary.set_index("model")
    ce = -data["target_logprob"]
    is_web = data["doc"] % 2 == 0
    assert by_model.loc["a", "ce_mean"] == pytest.approx(ce[is_web].mean(), rel=1e-12)
    assert by_model.loc["b", "tokens"] == (~is_web).sum()


def test_long_documents_are_read_a_bounded_number_of_tokens_at_a_time(tmp_path, client, monkeypatch):
    """A documents batch holds about BATCH_TOKENS tokens, sized from the row group's footer:
    20 documents of 5,000 tokens with BATCH_TOKENS = 6,000 are read a document at a time
    (not 1,024 of them), and the report is the token rows' report."""
    import flows.inputs.tokens as tokens_module
    from flows.engine.pieces import Piece, piece_batches, resolve_any_spec
    from flows.inputs.sources import list_inputs

    rng = np.random.default_rng(5)
    docs, length = 20, 5000
    doc = np.repeat(np.arange(docs), length)
    data = {"doc": doc, "position": np.tile(np.arange(length), docs), "target": rng.integers(0, 50, docs * length),
            "target_logprob": -rng.exponential(2.0, docs * length)}
    lists = lambda values: pa.array([values[doc == d].tolist() for d in range(docs)])  # noqa: E731
    (tmp_path / "docs").mkdir()
    pq.write_table(pa.table({"doc_id": np.arange(docs), "target": lists(data["target"]),
                             "target_logprob": lists(data["target_logprob"])}), tmp_path / "docs" / "part-0.parquet")
    (tmp_path / "rows").mkdir()
    pq.write_table(pa.table({"doc_id": data["doc"], "position": data["position"], "target": data["target"],
                             "target_logprob": data["target_logprob"]}), tmp_path / "rows" / "part-0.parquet")
    monkeypatch.setattr(tokens_module, "BATCH_TOKENS", 6000)
    config = EvalConfig(sources=[str(tmp_path / "docs")], kind="tokens")
    (file,) = list_inputs(config.sources, {})
    spec = resolve_any_spec(config, file)
    sizes = [len(batch.target) for batch in piece_batches(Piece(file, None, docs), spec)]
    assert sizes == [length] * docs
    documents = evaluate(tmp_path / "docs", kind="tokens", client=client)
    rows = evaluate(tmp_path / "rows", kind="tokens", client=client)
    assert_same_tables(rows, documents)


def by_document(folder: Path, table: pa.Table, shards: int) -> Path:
    """`table` in `shards` files, each document's rows whole in one, as dumps are written."""
    folder.mkdir(parents=True)
    for i in range(shards):
        pq.write_table(table.filter(pa.array(table.column("doc_id").to_numpy() % shards == i)),
                       folder / f"part-{i}.parquet")
    return folder


@pytest.mark.slow
def test_a_shard_listed_twice_is_named_and_nothing_is_written(tmp_path, client, data):
    """The usual cause of a position repeated within a document: a shard copied under a
    second name. Each file is fine alone; where their states merge, the documents'
    positions are found twice, and the run stops naming both files (with
    on_bad_shard skip too: neither file is the bad one)."""
    folder = by_document(tmp_path / "dump", token_rows_table(data), 3)
    clean = evaluate(folder, kind="tokens", client=client).summary.iloc[-1]
    assert (clean["tokens"], clean["documents"]) == (len(data["doc"]), len(np.unique(data["doc"])))
    shutil.copy(folder / "part-1.parquet", folder / "part-1-copy.parquet")
    result = run_cli(["eval", str(folder), "--kind", "tokens", "--out", str(tmp_path / "out"), "--no-prefect"])
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(r"part-1-copy\.parquet and \S+part-1\.parquet: column 'position': the document with key hash "
                     r"0x[0-9a-f]{16} has position \d+ twice \(a shard listed twice, or a document written to two "
                     r"shards\?\); list each shard once, or find the repeats with SELECT doc_id, position, count\(\*\)",
                     result.stderr), result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="part-1-copy.parquet and .* twice"):
        evaluate(folder, kind="tokens", client=client, on_bad_shard="skip")


def test_a_document_twice_in_the_documents_layout_or_in_one_file_is_named(tmp_path, client, data, monkeypatch):
    """A documents-layout shard copied: its documents' rows twice. A file holding the same
    token rows twice, read in two batches: the repeat is found as the batches fold
    into the piece's state, and named at that file."""
    import flows.inputs.tokens as tokens_module

    docs = by_document(tmp_path / "docs", documents_table(data), 2)
    shutil.copy(docs / "part-0.parquet", docs / "part-0-copy.parquet")
    with pytest.raises(DataError, match=r"part-0-copy.parquet and \S+part-0.parquet: two rows of one document: .* "
                                        r"twice .* SELECT doc_id, count\(\*\) FROM <dump> GROUP BY doc_id HAVING"):
        evaluate(docs, kind="tokens", client=client)
    table = token_rows_table(data).slice(0, 200)
    (tmp_path / "one").mkdir()
    pq.write_table(pa.concat_tables([table, table]), tmp_path / "one" / "part-0.parquet", row_group_size=200)
    monkeypatch.setattr(tokens_module, "BATCH_TOKENS", 200)
    with pytest.raises(DataError, match=r"\S+/part-0.parquet: column 'position': the document .* twice"):
        evaluate(tmp_path / "one", kind="tokens", client=client)
