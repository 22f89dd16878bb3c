"""ClassStats: the fused kernel against the obvious float64 computation, and merges of
states with different slices (the merge laws themselves: tests/test_merge_laws.py)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import log_softmax

import reference as ref
from xent_kernels import ClassStats, class_stats_partial

CELL_COLUMNS = ["n", "weight", "ce_mean", "ce_std", "accuracy", "top5_accuracy", "p_true_mean", "entropy_mean"]
SLICE_COLUMNS = ["n", "weight", "ce_mean", "ce_macro", "accuracy", "entropy_mean", "ece", "n_ignored", "n_nonfinite"]
KEYS = [("a",), ("b",), ("c",)]


def make_data(rng, n, n_classes, kind="logits", dtype=np.float64, scale=3.0):
    logits = rng.normal(scale=scale, size=(n, n_classes))
    labels = rng.integers(0, n_classes, n)
    if kind == "logits":
        pred = logits
    elif kind == "log_probs":
        pred = log_softmax(logits, axis=1)
    else:
        pred = np.exp(log_softmax(logits, axis=1))
    return pred.astype(dtype), labels


def assert_matches_reference(report, cells, slices, rtol):
    pc, ps = report.per_class, report.per_slice
    assert len(pc["n"]) == len(cells)
    for row, (s, c) in enumerate(zip(pc["slice"], pc["class"])):
        expected = cells[(int(s), int(c))]
        for column in CELL_COLUMNS + (["kl_mean"] if "kl_mean" in expected else []):
            assert_allclose(pc[column][row], expected[column], rtol=rtol, atol=1e-13, err_msg=f"{column} {s} {c}")
    for s, expected in slices.items():
        for column in SLICE_COLUMNS:
            assert_allclose(ps[column][s], expected[column], rtol=rtol, atol=1e-13, err_msg=f"slice {s} {column}")
        assert_allclose(report.predicted_marginal[s], expected["marginal"], rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("n_classes", [2, 10, 33, pytest.param(1000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["logits", "probs", "log_probs"])
def test_against_float64_reference(n_classes, kind):
    rng = np.random.default_rng(n_classes)
    n = 3000 if n_classes < 1000 else 400
    pred, labels = make_data(rng, n, n_classes, kind)
    labels[::17] = -1  # ignored
    pred[5, 1] = np.nan  # counted as non-finite, skipped
    weights = rng.uniform(0.0, 2.0, n)
    slice_ids = rng.integers(0, 3, n)
    reference = make_data(rng, n, n_classes, kind)[0]
    report = class_stats_partial(
        pred, labels, kind=kind, weights=weights, slice_ids=slice_ids, slice_keys=KEYS, reference=reference
    ).finalize()
    cells, slices = ref.class_report(
        pred, labels, kind, weights=weights, slice_ids=slice_ids, n_slices=3, reference=reference
    )
    assert_matches_reference(report, cells, slices, rtol=1e-11)
    assert report.per_slice["n_nonfinite"].sum() == (labels[5] >= 0)


@pytest.mark.parametrize("n_classes", [2, 10, 33, pytest.param(1000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_eps_clips_the_true_class_probability(n_classes, kind):
    rng = np.random.default_rng(n_classes + 7)
    n = 3000 if n_classes < 1000 else 400
    pred, labels = make_data(rng, n, n_classes, kind)
    eps = 0.5 / n_classes  # clips a good share of rows
    slice_ids = rng.integers(0, 3, n)
    report = class_stats_partial(pred, labels, kind=kind, slice_ids=slice_ids, slice_keys=KEYS, eps=eps).finalize()
    cells, slices = ref.class_report(pred, labels, kind, slice_ids=slice_ids, n_slices=3, eps=eps)
    assert_matches_reference(report, cells, slices, rtol=1e-11)
    exact = class_stats_partial(pred, labels, kind=kind, slice_ids=slice_ids, slice_keys=KEYS).finalize()
    assert (report.per_class["ce_mean"] < exact.per_class["ce_mean"]).any()
    with pytest.raises(ValueError, match="eps must be in"):
        class_stats_partial(pred, labels, kind=kind, eps=1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_input_accumulates_in_float64(dtype):
    rng = np.random.default_rng(0)
    pred, labels = make_data(rng, 20000, 10, dtype=dtype)
    report = class_stats_partial(pred, labels).finalize()
    cells, slices = ref.class_report(pred.astype(np.float64), labels)
    assert_matches_reference(report, cells, slices, rtol=1e-11)


NEGATIVE_NAN = -np.abs(np.float64(np.nan))  # sign bit set: orders below -inf as an integer key
NON_FINITE = [np.nan, NEGATIVE_NAN, np.inf, -np.inf]


@pytest.mark.parametrize("n_classes", [2, 10, 33, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_non_finite_logit_row_is_counted_and_skipped(n_classes, dtype):
    """Rows holding NaN (either sign), +inf or -inf anywhere, alone or mixed, are counted
    as non-finite and leave the rest of the report exactly as without them; rows of
    finite logits whose spread overflows float64 still count."""
    rng = np.random.default_rng(n_classes)
    n = 600 if n_classes < 1000 else 150
    pred, labels = make_data(rng, n, n_classes, dtype=dtype)
    bad = rng.choice(n, size=n // 5, replace=False)
    for k, row in enumerate(bad):
        cols = rng.choice(n_classes, size=1 + k % min(3, n_classes), replace=False)
        pred[row, cols] = [NON_FINITE[(k + c) % 4] for c in range(len(cols))]
    pred[bad[0]] = -np.inf  # a whole row of -inf
    pred[bad[1], :] = np.nan
    huge = np.setdiff1d(np.arange(n), bad)[:3]
    pred[huge, 0] = np.finfo(dtype).max  # float64: a spread that overflows to inf
    pred[huge, -1] = -np.finfo(dtype).max
    labels[huge] = 0  # CE 0: CEs near the float64 maximum would overflow the sums
    report = class_stats_partial(pred, labels).finalize()
    good = np.setdiff1d(np.arange(n), bad)
    expected = class_stats_partial(pred[good], labels[good]).finalize()
    assert report.per_slice["n_nonfinite"][0] == len(bad)
    for column in CELL_COLUMNS:
        assert_allclose(report.per_class[column], expected.per_class[column], rtol=1e-13, err_msg=column)
    cells, _ = ref.class_report(pred[good].astype(np.float64), labels[good], "logits")
    for row, c in enumerate(report.per_class["class"]):
        assert_allclose(report.per_class["ce_mean"][row], cells[(0, int(c))]["ce_mean"], rtol=1e-11)


def test_extreme_float32_logits():
    pred = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    report = class_stats_partial(pred, np.array([1, 1, 2])).finalize(base=2)
    pc = report.per_class
    # class 1: CE 2e4 in row 0 and exp(3 - 1e4) ≈ 0 in row 1; class 2: log 3
    assert_allclose(pc["ce_mean"], [1e4 / np.log(2), np.log(3) / np.log(2)], rtol=1e-12)
    assert np.all(np.isfinite(pc["entropy_mean"]))


def test_worked_example_in_bits():
    report = class_stats_partial(np.array([[0.4, 0.4, 0.2]]), np.array([1]), kind="probs").finalize(base=2)
    assert_allclose(report.per_class["ce_mean"], [1.321928094887362], rtol=1e-12)
    # argmax picks the lower index on ties, so class 1 is not the top-1 prediction
    assert report.per_class["accuracy"][0] == 0.0


def test_probability_zero_on_true_class_is_infinite():
    report = class_stats_partial(np.array([[1.0, 0.0]]), np.array([1]), kind="probs").finalize()
    assert report.per_class["ce_mean"][0] == np.inf


def test_all_rows_ignored_and_empty_input():
    pred = np.zeros((4, 3))
    report = class_stats_partial(pred, np.full(4, -1)).finalize()
    assert len(report.per_class["n"]) == 0
    assert report.per_slice["n_ignored"][0] == 4
    assert np.isnan(report.per_slice["ce_mean"][0])
    empty = class_stats_partial(np.zeros((0, 3)), np.zeros(0, np.int64)).finalize()
    assert empty.per_slice["n"][0] == 0 and np.isnan(empty.per_slice["ce_mean"][0])


def test_wide_classes():
    rng = np.random.default_rng(3)
    pred, labels = make_data(rng, 40, 32000, dtype=np.float32)
    report = class_stats_partial(pred, labels).finalize()
    cells, slices = ref.class_report(pred, labels)
    assert_matches_reference(report, cells, slices, rtol=1e-11)


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="row 2 has class 3"):
        class_stats_partial(np.zeros((3, 3)), np.array([0, 1, 3]))


# --------------------------------------------------------------------------- merge laws


def stats_of(pred, labels, weights, slice_ids):
    return class_stats_partial(pred, labels, weights=weights, slice_ids=slice_ids, slice_keys=KEYS)


def report_columns(state):
    report = state.finalize()
    return report.slice_keys, report.per_class, report.per_slice, report.predicted_marginal


def assert_same_report(a, b, rtol=1e-12):
    keys_a, pc_a, ps_a, m_a = report_columns(a)
    keys_b, pc_b, ps_b, m_b = report_columns(b)
    assert keys_a == keys_b
    for column in pc_a:
        assert_allclose(pc_a[column], pc_b[column], rtol=rtol, atol=0, err_msg=column)
    for column in ps_a:
        assert_allclose(ps_a[column], ps_b[column], rtol=rtol, atol=0, err_msg=column)
    assert_allclose(m_a, m_b, rtol=rtol, atol=0)


def test_merging_states_with_different_slices():
    rng = np.random.default_rng(5)
    pred, labels = make_data(rng, 300, 4)
    a = class_stats_partial(pred[:100], labels[:100], slice_ids=np.zeros(100, int), slice_keys=[("x",)])
    b = class_stats_partial(pred[100:], labels[100:], slice_ids=np.zeros(200, int), slice_keys=[(None,)])
    merged = ClassStats.merge(a, b)
    assert merged.slice_keys == (("x",), (None,))  # None sorts last
    overall = merged.collapse_slices()
    whole = class_stats_partial(pred, labels)
    assert_same_report(overall, whole)


def test_merge_rejects_mismatched_states():
    with pytest.raises(ValueError, match="different shape"):
        ClassStats.merge(ClassStats.empty(3), ClassStats.empty(4))


def test_variance_does_not_cancel_with_a_large_mean():
    # CE values ~ 1000 with a spread of 1e-3: naive Σx² - (Σx)²/n loses every digit here.
    n = 20000
    rng = np.random.default_rng(9)
    spread = rng.normal(scale=1e-3, size=n)
    pred = np.zeros((n, 2))
    pred[:, 0] = 1000.0 + spread  # true class 1 -> CE ≈ 1000 + spread
    labels = np.ones(n, dtype=np.int64)
    halves = [class_stats_partial(pred[a:b], labels[a:b]) for a, b in [(0, 7000), (7000, n)]]
    report = ClassStats.merge(*halves).finalize()
    ce = -log_softmax(pred, axis=1)[:, 1]
    assert_allclose(report.per_class["ce_std"][0], ce.std(), rtol=1e-6)


def test_zero_weight_rows_count_but_contribute_nothing():
    pred = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    labels = np.array([1, 1, 1])
    report = class_stats_partial(pred, labels, kind="probs", weights=np.array([1.0, 0.0, 1.0])).finalize()
    assert report.per_class["n"][0] == 3 and report.per_class["weight"][0] == 2.0
    assert_allclose(report.per_class["ce_mean"][0], -(np.log(0.5) + np.log(0.75)) / 2, rtol=1e-14)
    assert np.isfinite(report.per_class["ce_std"][0])
    # the same infinite row with weight 1 makes the mean infinite and the spread undefined
    infinite = class_stats_partial(pred, labels, kind="probs").finalize()
    assert infinite.per_class["ce_mean"][0] == np.inf and np.isnan(infinite.per_class["ce_std"][0])
