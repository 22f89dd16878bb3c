"""Decision metrics at the public API (class_stats_partial -> finalize) against sklearn:
the confusion matrix, precision / recall / F1 (per class, macro, weighted), Brier, and
ROC AUC on real model predictions (sklearn models trained on sklearn's bundled data
sets), with the AUC's error bound and DeLong interval checked against textbook DeLong
on the exact scores; and the state size per slice against the README's formula."""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax, ndtr, ndtri, softmax
from sklearn import datasets
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, precision_recall_fscore_support, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from doc_blocks import doc_text
from xent_kernels import CELL_FIELDS, HIST_FIELDS, STATISTICS, class_stats_partial
from xent_kernels.statistics import STATE_ARRAYS
from xent_kernels.stats import (
    DEFAULT_BINS, DEFAULT_EXACT_AUC_VALUES, DEFAULT_THRESHOLDS, MAX_AUC_CLASSES, MAX_CONFUSION_CLASSES,
)

Z = ndtri(0.975)  # the DeLong interval is value ± Z·SE at the default level 0.95


def report(pred, labels, **options):
    return class_stats_partial(pred, labels, **options).finalize()


def per_class(rep, column, s=0):
    """{class: value} of one per-class column in slice s."""
    rows = rep.per_class["slice"] == s
    return dict(zip(rep.per_class["class"][rows].tolist(), rep.per_class[column][rows]))


# --------------------------------------------------------------------------- confusion, precision, recall, F1

N_CLASSES = 5


def confusion_inputs(seed: int):
    """Logits of 5 classes over 2 slices: class 3 is true but never predicted, class 4
    is predicted but never true."""
    rng = np.random.default_rng(seed)
    n = 600
    labels = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    logits = rng.normal(size=(n, N_CLASSES)) + 1.5 * np.eye(N_CLASSES)[labels]
    logits[:, 3] = -30.0
    weights = rng.exponential(size=n)
    slice_ids = rng.integers(0, 2, size=n)
    return logits, labels, weights, slice_ids


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_confusion_precision_recall_f1_equal_sklearn(weighted):
    logits, labels, weights, slice_ids = confusion_inputs(1)
    w = weights if weighted else None
    rep = report(logits, labels, weights=w, slice_ids=slice_ids, slice_keys=[("a",), ("b",)])
    predicted = np.argmax(logits, axis=1)
    for s in range(2):
        rows = slice_ids == s
        true, pred, ws = labels[rows], predicted[rows], None if w is None else w[rows]
        assert 3 in true and 3 not in pred and 4 in pred and 4 not in true  # the cases are exercised
        classes = list(range(N_CLASSES))
        assert_array_equal(rep.confusion_n[s], confusion_matrix(true, pred, labels=classes))
        assert_allclose(rep.confusion_weight[s], confusion_matrix(true, pred, labels=classes, sample_weight=ws),
                        rtol=1e-12, atol=0)
        expected = precision_recall_fscore_support(true, pred, labels=classes, sample_weight=ws, zero_division=0)
        for index, name in enumerate(("precision", "recall", "f1")):
            got = per_class(rep, name, s)
            assert sorted(got) == [0, 1, 2, 3]  # class 4 has no true rows: no per-class row
            assert_allclose([got[c] for c in sorted(got)], expected[index][:4], rtol=1e-12, atol=1e-15)
            for average in ("macro", "weighted"):
                want = precision_recall_fscore_support(true, pred, average=average, sample_weight=ws,
                                                       zero_division=0)[index]
                assert_allclose(rep.per_slice[f"{name}_{average}"][s], want, rtol=1e-12, atol=1e-15)
        assert per_class(rep, "precision", s)[3] == 0.0  # never predicted: sklearn's zero_division=0


# --------------------------------------------------------------------------- Brier


@pytest.mark.parametrize("kind", ["logits", "probs", "log_probs"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_binary_brier_equals_sklearn(kind, weighted):
    rng = np.random.default_rng(2)
    n = 500
    labels = rng.integers(0, 2, size=n)
    logits = rng.normal(size=(n, 2)) + np.eye(2)[labels]
    q = softmax(logits, axis=1)
    pred = {"logits": logits, "probs": q, "log_probs": log_softmax(logits, axis=1)}[kind]
    w = rng.exponential(size=n) if weighted else None
    rep = report(pred, labels, kind=kind, weights=w)
    assert_allclose(rep.per_slice["brier"][0], brier_score_loss(labels, q[:, 1], sample_weight=w), rtol=1e-12)
    got = per_class(rep, "brier")
    for c in (0, 1):
        rows = labels == c
        want = brier_score_loss(labels[rows], q[rows, 1], pos_label=1, sample_weight=None if w is None else w[rows])
        assert_allclose(got[c], want, rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_multiclass_brier_is_the_sum_over_classes(weighted):
    rng = np.random.default_rng(3)
    n, n_classes = 500, 4
    labels = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) + np.eye(n_classes)[labels]
    w = rng.exponential(size=n) if weighted else np.ones(n)
    rep = report(logits, labels, weights=w if weighted else None)
    q = softmax(logits, axis=1)
    row = ((q - np.eye(n_classes)[labels]) ** 2).sum(axis=1)
    assert_allclose(rep.per_slice["brier"][0], np.average(row, weights=w), rtol=1e-12)
    assert_allclose(rep.per_slice["brier"][0],
                    brier_score_loss(labels, q, labels=range(n_classes), sample_weight=w), rtol=1e-12)
    got = per_class(rep, "brier")
    for c in range(n_classes):
        assert_allclose(got[c], np.average(row[labels == c], weights=w[labels == c]), rtol=1e-12)


# --------------------------------------------------------------------------- AUC on real model predictions

DATASETS = {
    "digits": datasets.load_digits,  # 10 classes
    "breast_cancer": datasets.load_breast_cancer,  # binary
    "wine": datasets.load_wine,  # 3 classes
    "iris": datasets.load_iris,  # 3 classes
}
MODELS = {
    "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    "random_forest": lambda: RandomForestClassifier(n_estimators=50, random_state=0),
    "naive_bayes": GaussianNB,
    "gradient_boosting": lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
    "knn": lambda: KNeighborsClassifier(n_neighbors=7),
}
CASES = [(d, m) for d in DATASETS for m in MODELS]


@cache
def predictions(dataset: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Held-out labels and predict_proba of a model trained on 60% of a bundled data set."""
    x, y = DATASETS[dataset](return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, stratify=y, random_state=0)
    with threadpool_limits(1):  # OpenMP threads on a shared 2-core machine make boosting 50x slower
        fitted = MODELS[model]().fit(x_train, y_train)
    return y_test.astype(np.int64), fitted.predict_proba(x_test).astype(np.float64)


def delong(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Textbook DeLong (1988) on exact scores: the AUC as the mean of ψ over all
    (positive, negative) pairs (ties 1/2), and its standard error from the
    structural components V10 (per positive) and V01 (per negative)."""
    x, y = scores[positive], scores[~positive]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.sqrt(v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(y))


def delong_se(auc, lo, hi):
    """The standard error behind an interval value ± Z·SE clipped to [0, 1]."""
    return (auc - lo) / Z if lo > 0.0 else (hi - auc) / Z


@pytest.mark.parametrize("dataset, model", [pytest.param(d, m, id=f"{d}-{m}", marks=[pytest.mark.slow] * (m == "gradient_boosting"))
                                            for d, m in CASES])
def test_auc_within_its_bound_of_sklearn(dataset, model, record_property):
    y, proba = predictions(dataset, model)
    n_classes = proba.shape[1]
    rep = report(proba, y, kind="probs", exact_auc_max_values=0)
    assert rep.per_slice["n"][0] == len(y)
    auc, bound = per_class(rep, "auc"), per_class(rep, "auc_error_bound")
    errors = []
    for c in range(n_classes):
        exact = roc_auc_score(y == c, proba[:, c])
        errors.append((abs(auc[c] - exact), bound[c]))
        assert abs(auc[c] - exact) <= bound[c] + 1e-12, (c, auc[c], exact, bound[c])
    if n_classes == 2:
        exact = roc_auc_score(y, proba[:, 1])
    else:
        exact = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    slice_error, slice_bound = abs(rep.per_slice["auc"][0] - exact), rep.per_slice["auc_error_bound"][0]
    assert slice_error <= slice_bound + 1e-12
    worst = max(errors, key=lambda e: e[0])
    record_property("auc", f"slice error {slice_error:.2e} bound {slice_bound:.2e}; "
                           f"worst class error {worst[0]:.2e} bound {worst[1]:.2e}")
    print(f"{dataset:14s} {model:18s} auc {rep.per_slice['auc'][0]:.4f} |error| {slice_error:.2e} "
          f"bound {slice_bound:.2e}; worst class |error| {worst[0]:.2e} (bound {worst[1]:.2e}), "
          f"largest bound {max(b for _, b in errors):.2e}")


def test_weighted_auc_within_its_bound_of_sklearn():
    y, proba = predictions("digits", "logistic")
    w = np.random.default_rng(4).exponential(size=len(y))
    rep = report(proba, y, kind="probs", exact_auc_max_values=0, weights=w)
    auc, bound = per_class(rep, "auc"), per_class(rep, "auc_error_bound")
    for c in range(proba.shape[1]):
        exact = roc_auc_score(y == c, proba[:, c], sample_weight=w)
        assert abs(auc[c] - exact) <= bound[c] + 1e-12
    exact = roc_auc_score(y, proba, multi_class="ovr", average="macro", sample_weight=w)
    assert abs(rep.per_slice["auc"][0] - exact) <= rep.per_slice["auc_error_bound"][0] + 1e-12


def test_delong_on_binned_scores_is_textbook_delong():
    """Scores already at bin centres lose nothing to the binning: the AUC, its error
    bound (half the share of tied pairs) and the DeLong interval are the textbook ones."""
    y, proba = predictions("breast_cancer", "naive_bayes")
    T = 50  # coarse, so that many pairs share a bin
    q1 = (np.minimum(np.floor(proba[:, 1] * T), T - 1) + 0.5) / T
    rep = report(np.column_stack([1.0 - q1, q1]), y, kind="probs", n_thresholds=T, exact_auc_max_values=0)
    exact, se = delong(q1, y == 1)
    ties = (q1[y == 1][:, None] == q1[y == 0][None, :]).mean()
    s = rep.per_slice
    assert_allclose(s["auc"][0], exact, rtol=1e-12)
    assert_allclose(s["auc_error_bound"][0], 0.5 * ties, rtol=1e-12)
    assert_allclose([s["auc_lo"][0], s["auc_hi"][0]], np.clip([exact - Z * se, exact + Z * se], 0, 1), rtol=1e-12)


def test_delong_interval_agrees_with_exact_delong():
    """Per class, wherever the binning's bound is small (<= 1e-3), the binned DeLong
    standard error is within 5% of textbook DeLong's on the exact scores."""
    checked, worst = 0, 0.0
    for dataset, model in CASES:
        y, proba = predictions(dataset, model)
        rep = report(proba, y, kind="probs", exact_auc_max_values=0)
        auc, lo, hi, bound = (per_class(rep, c) for c in ("auc", "auc_lo", "auc_hi", "auc_error_bound"))
        for c in range(proba.shape[1]):
            exact, se = delong(proba[:, c], y == c)
            assert abs(auc[c] - exact) <= bound[c] + 1e-12
            if bound[c] <= 1e-3 and se >= 1e-4:
                difference = abs(delong_se(auc[c], lo[c], hi[c]) - se) / se
                assert difference <= 0.05, (dataset, model, c, se, bound[c])
                checked, worst = checked + 1, max(worst, difference)
    print(f"DeLong SE, binned vs exact: {checked} classes, largest relative difference {worst:.3f}")
    assert checked >= 40


def test_delong_interval_covers_the_true_auc():
    """1,000 repetitions (one slice each) of 100 positives and 100 negatives from a
    binormal model, scores sigmoid(N(0, 1)) and sigmoid(N(1, 1)): the true AUC is
    Φ(1/√2) = 0.760. The 95% DeLong interval from 200 bins covers it in 92-98%."""
    rng = np.random.default_rng(5)
    repeats, half, shift = 1000, 100, 1.0
    labels = np.tile(np.repeat([0, 1], half), repeats)
    q1 = 1.0 / (1.0 + np.exp(-(rng.standard_normal(len(labels)) + shift * labels)))
    slice_ids = np.repeat(np.arange(repeats), 2 * half)
    rep = report(np.column_stack([1.0 - q1, q1]), labels, kind="probs", n_thresholds=200, exact_auc_max_values=0,
                 slice_ids=slice_ids, slice_keys=[(i,) for i in range(repeats)])
    truth = ndtr(shift / np.sqrt(2.0))
    covered = (rep.per_slice["auc_lo"] <= truth) & (truth <= rep.per_slice["auc_hi"])
    print(f"DeLong 95% interval coverage of the true AUC {truth:.4f}: {covered.mean():.3f} over {repeats}")
    assert 0.92 <= covered.mean() <= 0.98
    assert rep.per_slice["auc_error_bound"].max() < 0.01


# --------------------------------------------------------------------------- state size per slice


def state_bytes(n_classes, *, n_buckets=20, n_bins=DEFAULT_BINS, confusion=None, n_thresholds=None, rows=0,
                exact_auc_max_values=DEFAULT_EXACT_AUC_VALUES) -> int:
    """The README's "State size per slice", in bytes (defaults as class_stats_partial's),
    for a slice of `rows` counted rows (its exact-AUC rows, when within the cap)."""
    C, K, F, T = n_classes, n_buckets, len(CELL_FIELDS), n_thresholds
    if confusion is None:
        confusion = C <= MAX_CONFUSION_CLASSES
    if T is None:
        T = DEFAULT_THRESHOLDS if C <= MAX_AUC_CLASSES else 0
    kept = T and rows * (C + 2) <= exact_auc_max_values
    return (K * C * 8 + K * C * F * 16 + K * C * 8 + K * n_bins * 3 * 16 + C * 16 + 16
            + (C * C * 24 if confusion else 0) + (C * T * 2 * 16 if T else 0) + (rows * (C + 2) * 8 if kept else 0))


def largest_bytes(n_classes) -> int:
    """At the defaults, a slice's largest state: with as many exact-AUC rows as the cap allows."""
    return state_bytes(n_classes, rows=DEFAULT_EXACT_AUC_VALUES // (n_classes + 2))


def measured_bytes(n_classes, n_slices=3, n_buckets=20, **options) -> float:
    """nbytes of a real state of `n_slices` slices of 21 rows each, per slice."""
    rng = np.random.default_rng(6)
    n = 21 * n_slices
    state = class_stats_partial(
        rng.normal(size=(n, n_classes)), rng.integers(0, n_classes, size=n),
        slice_ids=np.arange(n) % n_slices, slice_keys=[(s,) for s in range(n_slices)],
        buckets=rng.integers(0, n_buckets, size=n), n_buckets=n_buckets, **options,
    )
    arrays = [getattr(state, name) for array in STATE_ARRAYS for name in array.attributes]
    arrays += [rows for rows in state.auc_rows if rows is not None]
    return sum(a.nbytes for a in arrays) / n_slices


@pytest.mark.parametrize("n_classes, options", [
    (2, {}), (10, {}), (64, {}), (65, {}), (100, {}), (256, {}), (257, {}), (1000, {}),
    (10, {"confusion": False, "n_thresholds": 0}), (100, {"n_thresholds": 100}), (300, {"confusion": True}),
    (10, {"exact_auc_max_values": 0}), (10, {"exact_auc_max_values": 21 * 12}), (10, {"exact_auc_max_values": 21 * 12 - 1}),
])
def test_state_size_formula(n_classes, options):
    assert len(HIST_FIELDS) == 3  # the formula's 3 histogram fields
    assert measured_bytes(n_classes, **options) == state_bytes(n_classes, rows=21, **options)


def test_state_size_at_the_defaults_stays_under_4_mib():
    sizes = {c: largest_bytes(c) for c in range(1, 1001)}
    for c in (10, 64, 100, 1000):
        print(f"C = {c}: {sizes[c]:,} bytes ({sizes[c] / 2**20:.2f} MiB) per slice at most")
    worst = max(sizes, key=sizes.get)
    assert sizes[worst] < 4 * 2**20, (worst, sizes[worst])


def test_readme_state_size_table_is_the_formula():
    """The README's table of bytes per slice at the defaults is what the formula gives."""
    rows = re.findall(r"^\| ([\d,]+) \| (on|off) \| (on|off) \| ([\d,]+) \([^|]*\| ([\d,]+) \(",
                      doc_text(), re.MULTILINE)
    assert len(rows) >= 3
    for classes, confusion, auc, size, largest in rows:
        c = int(classes.replace(",", ""))
        assert (confusion == "on", auc == "on") == (c <= MAX_CONFUSION_CLASSES, c <= MAX_AUC_CLASSES), c
        assert int(size.replace(",", "")) == state_bytes(c), c
        assert int(largest.replace(",", "")) == largest_bytes(c), c


def test_readme_names_every_report_column():
    text = doc_text()
    assert [s.name for s in STATISTICS if f"`{s.name}`" not in text] == []
