"""A new user's first day, the statistics: interval bounds clipped to each metric's range
(as the README says, on the page and in comparisons), drift's per-sample smoothing and
its count of infinite rows, and the AUC card's binning bound. Real Parquet shards written
with pandas, the real CLI, a real LocalCluster; numbers against numpy/scipy/sklearn."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from doc_blocks import doc_text
from flows.cli import main
from xent_kernels import STATISTICS



def write_pandas_shards(frame: pd.DataFrame, folder: Path, shards: int = 4) -> str:
    """`frame` as `shards` Parquet files written with plain pandas, as a user does."""
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), shards)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder)


def finite(value) -> bool:
    return value is not None and math.isfinite(value)


def on(client) -> list[str]:
    """CLI flags that run on the module's LocalCluster (one cluster start per module)."""
    return ["--scheduler", client.scheduler.address]


def probs_frame(probs: np.ndarray, labels: np.ndarray, segment: np.ndarray | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"id": np.arange(len(labels)), "label": labels.astype(np.int64),
                          "probs": list(probs.astype(np.float64))})
    if segment is not None:
        frame["segment"] = segment
    return frame


# --------------------------------------------------------------------------- intervals


def _intervals_paragraph() -> str:
    text = doc_text()
    start = text.index("**Intervals.**")
    return text[start:text.index("\n\n", start)]


def test_readme_states_each_metrics_clip_range_as_the_table_has_it():
    """The README's Intervals paragraph says bounds are clipped, and lists each interval
    metric's range exactly as its ``Statistic.clip``."""
    paragraph = " ".join(_intervals_paragraph().split())
    assert "not clipped" not in paragraph
    ranges = re.search(r"The ranges: (.*?)\.", paragraph)
    assert ranges, "the Intervals paragraph names no ranges"
    documented = {}
    for part in ranges.group(1).split(";"):
        match = re.fullmatch(r"\s*\[(\S+), (\S+?)[\])]: (.*)", part)
        assert match, part
        low, high = (math.inf if x == "∞" else float(x) for x in match.group(1, 2))
        for name in re.findall(r"`(\w+)`", match.group(3)):
            documented[name] = (low, high)
    assert documented == {s.name: tuple(map(float, s.clip)) for s in STATISTICS if s.interval}


def test_accuracy_near_one_has_its_upper_bound_clipped_at_one(client, tmp_path, capsys):
    """Two wrong rows in 200: the t-interval reaches past 1, the report's bound is 1.0
    exactly, the lower bound keeps the half-width (the interval is symmetric before
    clipping) and the terminal and the page say the bounds are clipped."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.1)
    probs[np.arange(200), labels] = 0.8
    probs[:2] = np.roll(probs[:2], 1, axis=1)  # two rows predict the wrong class
    source = write_pandas_shards(probs_frame(probs, labels), tmp_path / "dump")
    out = tmp_path / "out"
    assert main(["eval", source, "--out", str(out), "--kind", "probs", "--no-prefect", *on(client)]) == 0
    printed = capsys.readouterr().out
    overall = pq.read_table(out / "summary.parquet").to_pylist()[-1]
    assert overall["accuracy"] == pytest.approx(0.99)
    assert overall["accuracy_hi"] == 1.0
    unclipped_hi = 2 * overall["accuracy"] - overall["accuracy_lo"]
    assert unclipped_hi > 1.0
    assert "bounds clipped to each metric's range" in printed
    assert "bounds clipped to each metric's range" in html.unescape((out / "report.html").read_text())


@pytest.mark.slow
def test_compare_clips_a_difference_to_its_own_range(client, tmp_path):
    """An accuracy difference lies in [-1, 1]: a candidate right on every row against a
    baseline right on 3 of 100 has a paired t-interval past 1, reported as 1.0."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    right = np.eye(2)[labels] * 0.8 + 0.1
    wrong = right[:, ::-1].copy()
    wrong[:3] = right[:3]
    base = write_pandas_shards(probs_frame(wrong, labels), tmp_path / "base", 2)
    cand = write_pandas_shards(probs_frame(right, labels), tmp_path / "cand", 2)
    out = tmp_path / "cmp"
    assert main(["compare", "--baseline", base, "--candidate", cand, "--out", str(out), "--kind", "probs",
                 "--no-prefect", *on(client)]) == 0
    rows = pq.read_table(out / "compare.parquet").to_pylist()
    overall = next(r for r in rows if r["overall"] and r["class"] is None)
    assert overall["accuracy_diff"] == pytest.approx(0.97)
    assert 2 * overall["accuracy_diff"] - overall["accuracy_diff_lo"] > 1.0  # the unclipped bound
    assert overall["accuracy_diff_hi"] == 1.0
    for row in rows:
        for statistic in STATISTICS:
            if statistic.interval and finite(row.get(f"{statistic.name}_diff_lo")):
                low, high = statistic.clip
                assert low - high <= row[f"{statistic.name}_diff_lo"] <= row[f"{statistic.name}_diff_hi"] <= high - low


# --------------------------------------------------------------------------- drift: per-sample smoothing


def smoothed(p: np.ndarray, eps: float) -> np.ndarray:
    return (p + eps) / (1.0 + p.shape[1] * eps)


def random_rows(seed: int, n: int = 300, classes: int = 5):
    """Probability rows with hard zeros on both sides, labels and 3 slices."""
    rng = np.random.default_rng(seed)
    ref, cur = (rng.dirichlet(np.ones(classes), n) for _ in range(2))
    for p in (ref, cur):
        p[rng.random((n, classes)) < 0.15] = 0.0
        p[p.sum(axis=1) == 0, 0] = 1.0
        p /= p.sum(axis=1, keepdims=True)
    return ref, cur, rng.integers(0, classes, n), rng.integers(0, 3, n)


@pytest.mark.parametrize("eps", [None, 1e-6, 1e-2])
@pytest.mark.parametrize("kind", ["probs", "log_probs"])
def test_per_sample_kl_against_scipy(eps, kind):
    """Mean KL per (slice, class) and per slice against scipy's rel_entr of the smoothed
    rows, and the infinite rows (of the exact KL) counted per slice and class."""
    from scipy.special import rel_entr

    from xent_kernels.drift import per_sample_kl_partial

    ref, cur, labels, slices = random_rows(0)
    with np.errstate(divide="ignore"):
        given = (ref, cur) if kind == "probs" else (np.log(ref), np.log(cur))
    state = per_sample_kl_partial(*given, labels, kind=kind, slice_ids=slices, slice_keys=[(0,), (1,), (2,)],
                                  smoothing=eps)
    report = state.stats.finalize()
    exact = rel_entr(ref, cur).sum(axis=1)
    kl = exact if eps is None else rel_entr(smoothed(ref, eps), smoothed(cur, eps)).sum(axis=1)
    infinite = state.infinite_counts(report.slice_keys)
    for s in range(3):
        rows = slices == s
        np.testing.assert_allclose(report.per_slice["kl_mean"][s], kl[rows].mean(), rtol=1e-12)
        for c in range(5):
            assert infinite[s, c] == np.isinf(exact[rows & (labels == c)]).sum()
    pc = report.per_class
    for j in range(len(pc["class"])):
        rows = (slices == pc["slice"][j]) & (labels == pc["class"][j])
        np.testing.assert_allclose(pc["kl_mean"][j], kl[rows].mean(), rtol=1e-12)
    assert infinite.sum() == np.isinf(exact).sum() > 0
    assert np.isfinite(report.per_slice["kl_mean"]).all() == (eps is not None)


def test_per_sample_kl_merges_like_one_pass_in_any_order():
    """Merge is associative and commutative with empty() as identity: any split of the
    rows gives the one-pass state (KL to 1e-12, infinite counts exactly)."""
    from xent_kernels.drift import PerSampleKL, per_sample_kl_partial

    ref, cur, labels, slices = random_rows(1)
    keys = [(0,), (1,), (2,)]

    def part(rows):
        present = sorted(set(slices[rows]))
        local = np.searchsorted(present, slices[rows])
        return per_sample_kl_partial(ref[rows], cur[rows], labels[rows], kind="probs", slice_ids=local,
                                     slice_keys=[keys[s] for s in present], smoothing=1e-4)

    whole = part(np.arange(300))
    a, b, c = (part(rows) for rows in np.array_split(np.random.default_rng(2).permutation(300), 3))
    empty = PerSampleKL.empty(5)
    for merged in (PerSampleKL.merge(PerSampleKL.merge(a, b), c), PerSampleKL.merge(c, PerSampleKL.merge(b, a)),
                   PerSampleKL.merge(empty, PerSampleKL.merge(PerSampleKL.merge(a, empty), PerSampleKL.merge(b, c)))):
        got, want = merged.stats.finalize(), whole.stats.finalize()
        assert got.slice_keys == want.slice_keys
        np.testing.assert_allclose(got.per_slice["kl_mean"], want.per_slice["kl_mean"], rtol=1e-12)
        np.testing.assert_array_equal(merged.infinite_counts(keys), whole.infinite_counts(keys))
        np.testing.assert_array_equal(merged.collapse_slices().infinite_counts([()]),
                                      whole.infinite_counts(keys).sum(axis=0, keepdims=True))


@pytest.fixture(scope="module")
def digits_dumps(tmp_path_factory) -> dict[str, str]:
    """The trial's two models on sklearn's load_digits (test split of 450 rows): a
    LogisticRegression reference and a RandomForest current whose predict_proba has hard
    zeros, each written with pandas in four shards (id, segment, label, probs)."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    root = tmp_path_factory.mktemp("digits")
    segment = np.where(np.arange(len(y_test)) % 2 == 0, "even", "odd")
    out = {"labels": y_test}
    for name, model in (("lr", LogisticRegression(max_iter=2000)),
                        ("rf", RandomForestClassifier(n_estimators=100, random_state=0))):
        probs = model.fit(x_train, y_train).predict_proba(x_test)
        out[f"{name}_probs"] = probs
        out[name] = write_pandas_shards(probs_frame(probs, y_test, segment), root / name)
    return out


@pytest.mark.slow
def test_drift_counts_infinite_rows_and_smoothing_lets_a_threshold_pass(client, digits_dumps, tmp_path, capsys):
    """Exact per-sample KL of a RandomForest against a LogisticRegression is inf, so any
    threshold breaches (exit 3): the terminal, drift.parquet and the page say how many
    rows are infinite. With --per-sample-smoothing 1e-6 the KL is scipy's of the smoothed
    rows, below the threshold (exit 0), the count is still said and eps is in the metadata."""
    from scipy.special import rel_entr

    import yaml

    ref, cur = digits_dumps["lr_probs"], digits_dumps["rf_probs"]
    exact = rel_entr(ref, cur).sum(axis=1)
    n_infinite = int(np.isinf(exact).sum())
    assert 0 < n_infinite < len(exact)
    config = tmp_path / "drift.yaml"
    config.write_text(yaml.safe_dump({"drift": {"thresholds": {"kl_per_sample": 0.5}}}))
    args = ["drift", "--reference", digits_dumps["lr"], "--current", digits_dumps["rf"], "--kind", "probs",
            "--slice-by", "segment", "--config", str(config), "--no-prefect", *on(client)]

    assert main([*args, "--out", str(tmp_path / "exact")]) == 3
    printed = capsys.readouterr().out
    assert f"per-sample KL: {n_infinite:,} of 450 joined rows infinite" in printed
    assert "--per-sample-smoothing" in printed
    rows = pq.read_table(tmp_path / "exact" / "drift.parquet").to_pylist()
    counts = {(r["segment"], r["class"]): r["n_infinite_kl"] for r in rows if r["metric"] == "kl_per_sample"}
    assert all(r["n_infinite_kl"] is None for r in rows if r["metric"] != "kl_per_sample")
    assert counts[(None, None)] == n_infinite
    labels = digits_dumps["labels"]
    for s, name in enumerate(("even", "odd")):
        in_slice = np.arange(450) % 2 == s
        assert counts[(name, None)] == np.isinf(exact[in_slice]).sum()
    for c in range(10):
        assert counts[(None, c)] == np.isinf(exact[labels == c]).sum()
    page = html.unescape((tmp_path / "exact" / "report.html").read_text())
    assert f"{n_infinite:,} of 450 joined rows infinite" in page

    assert main([*args, "--out", str(tmp_path / "smooth"), "--per-sample-smoothing", "1e-6"]) == 0
    printed = capsys.readouterr().out
    assert f"both sides smoothed with eps = 1e-06 (drift.per_sample_smoothing); {n_infinite:,} of 450" in printed
    table = pq.read_table(tmp_path / "smooth" / "drift.parquet")
    overall = {r["metric"]: r for r in table.to_pylist() if r["segment"] is None and r["class"] is None}
    want = rel_entr(smoothed(ref, 1e-6), smoothed(cur, 1e-6)).sum(axis=1).mean()
    np.testing.assert_allclose(overall["kl_per_sample"]["value"], want, rtol=1e-10)
    assert overall["kl_per_sample"]["value"] < 0.5 and not overall["kl_per_sample"]["breached"]
    assert overall["kl_per_sample"]["n_infinite_kl"] == n_infinite
    recorded = json.loads(table.schema.metadata[b"xent.config"])
    assert recorded["drift"]["per_sample_smoothing"] == 1e-6
    page = html.unescape((tmp_path / "smooth" / "report.html").read_text())
    assert "both sides smoothed with eps = 1e-06" in page


# --------------------------------------------------------------------------- AUC: the binning's bound

SUPERSCRIPT = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def _readme_auc_claim() -> list[float]:
    """The four numbers of the README's measured claim on the trial's logistic regression."""
    text = " ".join(doc_text().split())
    number = r"([\d.]+)·10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)"
    match = re.search(rf"summary AUC is off by {number} under a bound of {number} and the worst class by "
                      rf"{number} under {number}", text)
    assert match, "the README states no measured AUC error for logistic regression"
    parts = match.groups()
    return [float(parts[i]) * 10.0 ** int(parts[i + 1].translate(SUPERSCRIPT)) for i in range(0, 8, 2)]


def binned_only(tmp_path: Path) -> list[str]:
    """CLI flags for a config with exact AUC off: the binned AUC even for 450 rows."""
    import yaml

    config = tmp_path / "binned.yaml"
    config.write_text(yaml.safe_dump({"exact_auc_max_values": 0}))
    return ["--config", str(config)]


def test_auc_error_of_the_trials_logistic_regression_is_as_the_readme_says(client, digits_dumps, tmp_path):
    """The README's figure for logistic regression is measured here, through the CLI on
    the pandas dump with exact AUC off: the summary and worst class errors against
    sklearn's roc_auc_score and their bounds, to the two digits the README gives."""
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "lr"
    assert main(["eval", digits_dumps["lr"], "--out", str(out), "--kind", "probs", "--no-prefect", *on(client),
                 *binned_only(tmp_path)]) == 0
    labels, probs = digits_dumps["labels"], digits_dumps["lr_probs"]
    overall = pq.read_table(out / "summary.parquet").to_pylist()[-1]
    classes = [r for r in pq.read_table(out / "per_class.parquet").to_pylist() if r["overall"]]
    summary_error = abs(overall["auc"] - roc_auc_score(labels, probs, multi_class="ovr"))
    class_errors = [abs(r["auc"] - roc_auc_score(labels == r["class"], probs[:, r["class"]])) for r in classes]
    measured = [summary_error, overall["auc_error_bound"], max(class_errors), max(r["auc_error_bound"] for r in classes)]
    assert measured[0] <= measured[1] and measured[2] <= measured[3]
    for claimed, got in zip(_readme_auc_claim(), measured):
        assert float(f"{got:.1e}") == pytest.approx(claimed, rel=1e-9), (claimed, got)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(__import__("browser").MISSING is not None, reason="needs chromium and chromium-driver")
def test_the_auc_card_shows_the_binning_bound_in_chromium(client, digits_dumps, tmp_path):
    """With exact AUC off, the evaluation page's AUC card says its binning bound (from
    summary.parquet) as Chromium shows it, and no other card does."""
    from selenium.webdriver.common.by import By

    from browser import chromium, open_page

    out = tmp_path / "lr"
    assert main(["eval", digits_dumps["lr"], "--out", str(out), "--kind", "probs", "--no-prefect", *on(client),
                 *binned_only(tmp_path)]) == 0
    bound = pq.read_table(out / "summary.parquet").to_pylist()[-1]["auc_error_bound"]
    mantissa, exponent = f"{bound:.1e}".split("e")
    with chromium(1280, 900) as driver:
        open_page(driver, out / "report.html", charts=1)
        auc = driver.find_element(By.CSS_SELECTOR, '.card[data-metric="auc"]')
        assert f"± binning ≤ {mantissa}e{int(exponent)}" in auc.text
        assert "binning" not in driver.find_element(By.CSS_SELECTOR, '.card[data-metric="accuracy"]').text
