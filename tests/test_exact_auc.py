"""Exact AUC when a slice's rows are few enough to keep: each slice carries its rows' AUC
inputs (q_0 .. q_{C-1}, true class, weight) while rows × (C + 2) is at most
``exact_auc_max_values``, and its AUC is then sklearn's ``roc_auc_score`` with DeLong's
SE from exact midranks and ``auc_error_bound`` 0; past the cap it is binned as before.
Against sklearn and a pairwise DeLong (``reference.delong``) on real predictions and
drawn data, merge laws and sharding (crossing the cap), the state's Parquet round trip,
the comparison path, and the trial's logistic regression through the CLI and the page."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import reference as ref
from flows.cli import main
from flows.report.state import STATE_KEY, state_from_table, state_table
from xent_kernels import STATISTIC, ClassStats, class_stats_partial
from xent_kernels.paired import paired_partial
from xent_kernels.statistics import Totals, canonical_rows
from xent_kernels.stats import DEFAULT_EXACT_AUC_VALUES

TOL = 1e-12


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-out predict_proba of real models: the trial's LogisticRegression and a
    RandomForest (hard zeros, many ties) on load_digits, a LogisticRegression on breast_cancer."""
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    out = {}
    for data, name, model in ((load_digits, "digits_lr", LogisticRegression(max_iter=2000)),
                              (load_digits, "digits_rf", RandomForestClassifier(n_estimators=100, random_state=0)),
                              (load_breast_cancer, "cancer_lr", LogisticRegression(max_iter=5000))):
        x, y = data(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
        out[name] = (model.fit(x_train, y_train).predict_proba(x_test), y_test)
    return out


def sklearn_auc(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None):
    """Per class one-vs-rest (NaN for a class without positives or negatives) and the
    slice value: class 1 for a binary model, else the macro mean over classes with a value."""
    per_class = np.array([roc_auc_score(labels == j, probs[:, j], sample_weight=weights)
                          if 0 < (labels == j).sum() < len(labels) else np.nan for j in range(probs.shape[1])])
    present = per_class[np.isfinite(per_class)]
    return per_class, per_class[1] if probs.shape[1] == 2 else present.mean() if len(present) else np.nan


def weights_for(n: int, weighted: bool) -> np.ndarray | None:
    return np.random.default_rng(n).uniform(0.1, 3.0, n) if weighted else None


# --------------------------------------------------------------------------- against sklearn


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", ["digits_lr", "digits_rf", "cancer_lr"])
def test_exact_auc_is_sklearns_on_real_predictions(models, name, weighted):
    probs, labels = models[name]
    weights = weights_for(len(labels), weighted)
    report = class_stats_partial(probs, labels, kind="probs", weights=weights).finalize()
    per_class, overall = sklearn_auc(probs, labels, weights)
    assert report.auc_exact.tolist() == [True]
    np.testing.assert_allclose(report.per_class["auc"], per_class[report.per_class["class"]], rtol=0, atol=TOL)
    np.testing.assert_allclose(report.per_slice["auc"], [overall], rtol=0, atol=TOL)
    if probs.shape[1] > 2:
        assert report.per_slice["auc"][0] == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", sample_weight=weights), abs=TOL)
    assert (report.per_class["auc_error_bound"] == 0).all() and report.per_slice["auc_error_bound"][0] == 0


@given(
    n=st.integers(2, 120),
    n_classes=st.sampled_from([2, 3, 5]),
    levels=st.sampled_from([3, 10, 1000, 0]),  # few score values, many ties; 0: continuous scores
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_auc_is_sklearns_on_drawn_data_with_ties(n, n_classes, levels, weighted, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_classes), n)
    probs = np.round(probs * levels) / levels if levels else probs
    probs = np.where(probs.sum(axis=1, keepdims=True) > 0, probs, 1.0 / n_classes)
    labels = rng.integers(0, n_classes, n)
    weights = rng.uniform(0.0, 2.0, n) if weighted else None
    report = class_stats_partial(probs, labels, kind="probs", weights=weights).finalize()
    per_class, overall = sklearn_auc(probs, labels, weights)
    want = per_class[report.per_class["class"]]
    np.testing.assert_allclose(report.per_class["auc"], want, rtol=0, atol=TOL)
    np.testing.assert_allclose(report.per_slice["auc"], [overall], rtol=0, atol=TOL)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", ["digits_lr", "digits_rf", "cancer_lr"])
def test_delong_se_is_the_pairwise_midrank_reference(models, name, weighted):
    """DeLong's SE of each class from the exact scores, against DeLong (1988) pair by pair."""
    probs, labels = models[name]
    weights = weights_for(len(labels), weighted)
    state = class_stats_partial(probs, labels, kind="probs", weights=weights)
    se = STATISTIC["auc"].standard_error[0](Totals.of(state))
    for j in range(probs.shape[1]):
        auc, want = ref.delong(probs[:, j], labels == j, weights)
        assert se[j] == pytest.approx(want, rel=1e-10, abs=TOL), j
        assert state.finalize().per_class["auc"][j] == pytest.approx(auc, abs=TOL)


def test_logits_and_log_probs_are_scored_by_their_probabilities(models):
    probs, labels = models["digits_lr"]
    per_class, _ = sklearn_auc(probs, labels)
    with np.errstate(divide="ignore"):
        for pred, kind in ((np.log(probs), "logits"), (np.log(probs), "log_probs")):
            report = class_stats_partial(pred, labels, kind=kind).finalize()
            assert report.auc_exact.all()
            np.testing.assert_allclose(report.per_class["auc"], per_class, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- merge laws, sharding, the cap


def same_rows(a: ClassStats, b: ClassStats) -> bool:
    """The same slices, each with the same multiset of AUC rows (a state keeps them in merge order)."""
    return a.slice_keys == b.slice_keys and all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(canonical_rows(x), canonical_rows(y)))
        for x, y in zip(a.auc_rows, b.auc_rows))


def shard_states(probs, labels, weights, segment, cuts, **options) -> list[ClassStats]:
    keys = [("even",), ("odd",)]
    return [class_stats_partial(probs[part], labels[part], kind="probs", weights=weights[part], slice_ids=segment[part],
                                slice_keys=keys, n_buckets=4, buckets=labels[part] % 4, **options)
            for part in cuts]


def test_merge_is_associative_commutative_with_empty_as_identity(models):
    probs, labels = models["digits_lr"]
    weights, segment = weights_for(len(labels), True), np.arange(len(labels)) % 2
    parts = np.array_split(np.random.default_rng(1).permutation(len(labels)), 3)
    a, b, c = shard_states(probs, labels, weights, segment, parts)
    identity = ClassStats.empty(10, **a.options())
    assert same_rows(ClassStats.merge(a, b), ClassStats.merge(b, a))
    assert same_rows(ClassStats.merge(ClassStats.merge(a, b), c), ClassStats.merge(a, ClassStats.merge(b, c)))
    assert same_rows(ClassStats.merge(a, identity), a) and same_rows(ClassStats.merge(identity, a), a)
    left = ClassStats.merge(ClassStats.merge(a, b), c).finalize()
    right = ClassStats.merge(c, ClassStats.merge(b, a)).finalize()
    assert np.array_equal(left.per_class["auc"], right.per_class["auc"])


def tree_merge(states: list[ClassStats], rng: random.Random) -> ClassStats:
    states = list(states)
    while len(states) > 1:
        rng.shuffle(states)
        states = [ClassStats.merge(*states[i:i + 2]) if i + 1 < len(states) else states[i]
                  for i in range(0, len(states), 2)]
    return states[0]


@pytest.mark.parametrize("cap", [2_000, 3_000, DEFAULT_EXACT_AUC_VALUES])
@pytest.mark.parametrize("shards", [1, 2, 4, 13])
def test_the_report_does_not_depend_on_sharding_even_across_the_cap(models, shards, cap):
    """A slice of 225 rows × 12 values is 2,700 values: with a cap of 2,000 its pieces
    keep rows until their merge passes the cap (binned), with 3,000 the slices are exact
    but the overall row (5,400) is binned, with the default all are exact."""
    probs, labels = models["digits_lr"]
    weights, segment = weights_for(len(labels), True), np.arange(len(labels)) % 2
    whole = shard_states(probs, labels, weights, segment, [np.arange(len(labels))], exact_auc_max_values=cap)[0]
    order = np.random.default_rng(shards).permutation(len(labels))
    states = shard_states(probs, labels, weights, segment, np.array_split(order, shards), exact_auc_max_values=cap)
    merged = tree_merge(states, random.Random(shards))
    assert same_rows(merged, whole)
    slices_exact, overall_exact = {2_000: (False, False), 3_000: (True, False)}.get(cap, (True, True))
    assert merged.auc_exact.tolist() == [slices_exact] * 2
    assert merged.collapse_slices().auc_exact.tolist() == [overall_exact]
    for got, want in ((merged.finalize(), whole.finalize()),
                      (merged.collapse_slices().finalize(), whole.collapse_slices().finalize())):
        np.testing.assert_allclose(got.per_class["auc"], want.per_class["auc"], rtol=1e-13)
        np.testing.assert_allclose(got.per_class["auc_error_bound"], want.per_class["auc_error_bound"], rtol=1e-13)
    binned = shard_states(probs, labels, weights, segment, [np.arange(len(labels))], exact_auc_max_values=0)[0]
    for s in range(2):
        rows = segment == s
        per_class, _ = sklearn_auc(probs[rows], labels[rows], weights[rows])
        got, want = merged.slice(s).finalize(), binned.slice(s).finalize()
        if slices_exact:
            np.testing.assert_allclose(got.per_class["auc"], per_class, rtol=0, atol=TOL)
        else:  # binned as with exact AUC off (a bound of 0 alone does not say exact: no pair may share a bin)
            for name in ("auc", "auc_error_bound"):
                np.testing.assert_allclose(got.per_class[name], want.per_class[name], rtol=1e-13)


@given(
    n=st.integers(0, 80),
    n_classes=st.sampled_from([2, 4]),
    cap_rows=st.integers(0, 60),  # the cap in rows of a slice: crossed by some merges, not others
    cuts=st.lists(st.integers(0, 80), max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_drawn_shardings_give_the_state_of_the_whole(n, n_classes, cap_rows, cuts, seed):
    rng = np.random.default_rng(seed)
    probs = np.round(rng.dirichlet(np.ones(n_classes), n) * 20) / 20
    probs = np.where(probs.sum(axis=1, keepdims=True) > 0, probs, 1.0 / n_classes)
    labels, weights = rng.integers(0, n_classes, n), rng.uniform(0.0, 2.0, n)
    segment = rng.integers(0, 2, n)
    options = dict(exact_auc_max_values=cap_rows * (n_classes + 2))
    whole = shard_states(probs, labels, weights, segment, [np.arange(n)], **options)[0]
    parts = np.split(rng.permutation(n), sorted(c for c in cuts if c <= n))
    merged = tree_merge(shard_states(probs, labels, weights, segment, parts, **options), random.Random(seed))
    assert same_rows(merged, whole)
    assert merged.auc_exact.tolist() == [0 < cap_rows and (segment == s).sum() <= cap_rows for s in range(2)]
    np.testing.assert_allclose(merged.finalize().per_class["auc"], whole.finalize().per_class["auc"], rtol=1e-13)


def test_a_slice_past_the_cap_is_binned_with_its_bound(models):
    probs, labels = models["digits_lr"]
    n_values = len(labels) * 12
    binned = class_stats_partial(probs, labels, kind="probs", exact_auc_max_values=0)
    assert binned.exact_auc_max_values == 0 and binned.auc_rows == (None,)
    past = class_stats_partial(probs, labels, kind="probs", exact_auc_max_values=n_values - 1)
    assert past.auc_rows == (None,)  # never materialised
    at = class_stats_partial(probs, labels, kind="probs", exact_auc_max_values=n_values)
    assert at.auc_rows[0].shape == (len(labels), 12)
    want = binned.finalize()
    for state in (binned, past):
        report = state.finalize()
        assert report.auc_exact.tolist() == [False]
        for name in ("auc", "auc_lo", "auc_hi", "auc_error_bound"):
            assert np.array_equal(report.per_class[name], want.per_class[name])
            assert np.array_equal(report.per_slice[name], want.per_slice[name])
    assert want.per_slice["auc_error_bound"][0] > 0
    assert abs(want.per_slice["auc"][0] - at.finalize().per_slice["auc"][0]) <= want.per_slice["auc_error_bound"][0]


def test_ignored_and_nonfinite_rows_are_left_out_as_the_kernel_counts_them(models):
    probs, labels = models["digits_lr"]
    probs, labels = probs.copy(), labels.copy()
    labels[:7] = -1
    probs[7:10, 3] = np.nan
    state = class_stats_partial(probs, labels, kind="probs")
    assert state.auc_rows[0].shape[0] == int(state.counts.sum()) == len(labels) - 10
    per_class, _ = sklearn_auc(probs[10:], labels[10:])
    np.testing.assert_allclose(state.finalize().per_class["auc"], per_class, rtol=0, atol=TOL)


# --------------------------------------------------------------------------- stored states, comparisons


def test_the_stored_state_round_trips_bit_for_bit_and_older_states_load_binned(models):
    probs, labels = models["digits_lr"]
    weights, segment = weights_for(len(labels), True), np.arange(len(labels)) % 2
    cuts = [np.arange(len(labels))]
    state = shard_states(probs, labels, weights, segment, cuts, exact_auc_max_values=2_750)[0]
    state = ClassStats.merge(state, shard_states(probs[:5], labels[:5], weights[:5], segment[:5] * 0,
                                                 [np.arange(5)], exact_auc_max_values=2_750)[0])
    assert state.auc_exact.tolist() == [False, True]  # "even" passed the cap, "odd" did not
    import pyarrow as pa

    table = state_table(state, ["segment"], [pa.string()])
    loaded = state_from_table(pq.read_table(pa.BufferReader(_parquet_bytes(table))))
    assert same_rows(loaded, state) and loaded.options() == state.options()
    for name in ("counts", "cell_sum", "cell_comp", "roc_sum", "roc_comp"):
        assert np.array_equal(getattr(loaded, name), getattr(state, name))
    assert np.array_equal(loaded.finalize().per_class["auc"], state.finalize().per_class["auc"], equal_nan=True)

    # A state written before exact AUC: format 1, no auc_rows column, no cap option.
    import json

    options = json.loads(table.schema.metadata[STATE_KEY])
    options.pop("exact_auc_max_values")
    options["format"] = 1
    old = table.drop_columns(["auc_rows"]).replace_schema_metadata({STATE_KEY: json.dumps(options).encode()})
    loaded = state_from_table(old)
    assert loaded.exact_auc_max_values == 0 and loaded.auc_rows == (None, None)
    binned = shard_states(probs, labels, weights, segment, cuts, exact_auc_max_values=0)[0]
    binned = ClassStats.merge(binned, shard_states(probs[:5], labels[:5], weights[:5], segment[:5] * 0,
                                                   [np.arange(5)], exact_auc_max_values=0)[0])
    assert np.array_equal(loaded.finalize().per_class["auc"], binned.finalize().per_class["auc"], equal_nan=True)


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_a_comparison_reports_both_models_exact_auc(models):
    (lr, labels), (rf, _) = models["digits_lr"], models["digits_rf"]
    stats = paired_partial(lr, rf, labels, kind="probs", buckets=np.arange(len(labels)) % 20)
    report = stats.finalize()
    for side, probs in (("baseline", lr), ("candidate", rf)):
        per_class, overall = sklearn_auc(probs, labels)
        np.testing.assert_allclose(report.per_class[f"auc_{side}"], per_class, rtol=0, atol=TOL)
        np.testing.assert_allclose(report.per_slice[f"auc_{side}"], [overall], rtol=0, atol=TOL)


# --------------------------------------------------------------------------- the trial, through the CLI


@pytest.fixture(scope="module")
def lr_dump(models, tmp_path_factory) -> str:
    """The trial's logistic regression written with pandas in four shards (id, segment, label, probs)."""
    probs, labels = models["digits_lr"]
    folder = tmp_path_factory.mktemp("lr")
    frame = pd.DataFrame({"id": np.arange(len(labels)), "segment": np.where(np.arange(len(labels)) % 2, "odd", "even"),
                          "label": labels.astype(np.int64), "probs": list(probs)})
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 4)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder)


def test_the_trials_logistic_regression_gets_sklearns_auc_through_the_cli(client, models, lr_dump, tmp_path, capsys):
    """The slices (225 rows) and the overall row (450) are exact at the default cap; with
    a cap of 0 every row is binned, and with 3,000 values the slices are exact, the
    overall row binned: summary.parquet's auc_exact and the terminal say which."""
    probs, labels = models["digits_lr"]
    out = tmp_path / "exact"
    args = ["eval", lr_dump, "--kind", "probs", "--slice-by", "segment", "--no-prefect",
            "--scheduler", client.scheduler.address]
    assert main([*args, "--out", str(out)]) == 0
    assert "auc: exact (sklearn's roc_auc_score) in every summary row" in capsys.readouterr().out
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    overall = summary[-1]
    assert overall["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=TOL)
    assert all(row["auc_exact"] and row["auc_error_bound"] == 0 for row in summary)
    for row in summary[:-1]:
        rows = (np.arange(len(labels)) % 2) == (row["segment"] == "odd")
        assert row["auc"] == pytest.approx(roc_auc_score(labels[rows], probs[rows], multi_class="ovr"), abs=TOL)
    for row in pq.read_table(out / "per_class.parquet").to_pylist():
        if row["overall"]:
            c = row["class"]
            assert row["auc"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]), abs=TOL)
            assert row["auc_error_bound"] == 0

    config = tmp_path / "binned.yaml"
    config.write_text(yaml.safe_dump({"exact_auc_max_values": 0}))
    assert main([*args, "--out", str(tmp_path / "binned"), "--config", str(config)]) == 0
    binned = pq.read_table(tmp_path / "binned" / "summary.parquet").to_pylist()[-1]
    assert binned["auc_exact"] is False and binned["auc_error_bound"] > 0
    assert abs(binned["auc"] - overall["auc"]) <= binned["auc_error_bound"]
    assert "auc: binned in every summary row, within auc_error_bound" in capsys.readouterr().out

    config.write_text(yaml.safe_dump({"exact_auc_max_values": 3_000}))
    assert main([*args, "--out", str(tmp_path / "mixed"), "--config", str(config)]) == 0
    mixed = pq.read_table(tmp_path / "mixed" / "summary.parquet").to_pylist()
    assert [row["auc_exact"] for row in mixed] == [True, True, False]
    assert "auc: exact in 2 of 3 summary rows, binned in the others" in capsys.readouterr().out


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(__import__("browser").MISSING is not None, reason="needs chromium and chromium-driver")
def test_the_auc_card_says_exact_in_chromium(client, lr_dump, tmp_path):
    from selenium.webdriver.common.by import By

    from browser import chromium, open_page

    out = tmp_path / "lr"
    assert main(["eval", lr_dump, "--out", str(out), "--kind", "probs", "--no-prefect",
                 "--scheduler", client.scheduler.address]) == 0
    with chromium(1280, 900) as driver:
        open_page(driver, out / "report.html", charts=1)
        card = driver.find_element(By.CSS_SELECTOR, '.card[data-metric="auc"]').text
        assert "exact" in card and "binning" not in card
