"""Paired differences of two models on the same rows (xent_kernels.paired) against a
brute force in plain numpy/scipy: every delete-one-bucket difference recomputed from
the raw rows, the jackknife t-interval written out, and win/tie/loss counts; plus the
verdicts. The merge laws are in tests/test_merge_laws.py, with every mergeable type's."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats as sps
from scipy.special import log_softmax, softmax

from xent_kernels import STATISTICS
from xent_kernels import STATISTIC
from xent_kernels.hashing import key_buckets
from xent_kernels.paired import PairedStats, direction, paired_partial

K = 20
C = 4
N_BINS = 15
KEYS = [("a",), ("b",)]


def two_models(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    labels[rng.random(n) < 0.03] = -1  # ignored rows
    shared = rng.standard_normal((n, C))  # what both models find hard: the pairing removes it
    base = shared + 1.2 * np.eye(C)[np.maximum(labels, 0)] + 0.5 * rng.standard_normal((n, C))
    cand = shared + 1.4 * np.eye(C)[np.maximum(labels, 0)] + 0.5 * rng.standard_normal((n, C))
    slice_ids = rng.integers(0, len(KEYS), n)
    buckets = key_buckets([np.arange(n, dtype=np.int64)], K)
    return base, cand, labels, slice_ids, buckets


def brute_metrics(pred, labels, rows):
    """Per (slice-free) set of rows: per-class mean CE, accuracy, p_true, entropy, and the
    overall ones plus ECE and macro CE, the obvious way."""
    keep = rows & (labels >= 0)
    lq = log_softmax(pred[keep], axis=1)
    y = labels[keep]
    ce = -lq[np.arange(len(y)), y]
    q = softmax(pred[keep], axis=1)
    top1 = np.argmax(q, axis=1) == y
    p_true = q[np.arange(len(y)), y]
    entropy = -(q * lq).sum(axis=1)
    conf = q.max(axis=1)
    bins = np.minimum((conf * N_BINS).astype(int), N_BINS - 1)
    gap = sum(abs(top1[bins == b].sum() - conf[bins == b].sum()) for b in range(N_BINS))
    per_class = {
        c: {"ce_mean": ce[y == c].mean(), "accuracy": top1[y == c].mean(), "p_true_mean": p_true[y == c].mean(),
            "entropy_mean": entropy[y == c].mean(), "top5_accuracy": np.nan}
        for c in range(C)
    }
    overall = {"ce_mean": ce.mean(), "accuracy": top1.mean(), "p_true_mean": p_true.mean(),
               "entropy_mean": entropy.mean(), "top5_accuracy": np.nan,
               "ece": gap / len(y), "ce_macro": np.mean([ce[y == c].mean() for c in range(C)])}
    return per_class, overall


def jackknife(value, leave_one_out, level=0.95):
    k = len(leave_one_out)
    se = np.sqrt((k - 1) / k * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
    half = sps.t.ppf((1 + level) / 2, k - 1) * se
    return value - half, value + half


def test_paired_differences_match_a_brute_force_per_bucket():
    base, cand, labels, slice_ids, buckets = two_models()
    parts = [slice(0, 1000), slice(1000, 1700), slice(1700, None)]  # any split merges to the same state
    states = [paired_partial(base[p], cand[p], labels[p], buckets=buckets[p], n_buckets=K, slice_ids=slice_ids[p],
                             slice_keys=KEYS, n_bins=N_BINS) for p in parts]
    state = PairedStats.merge(PairedStats.merge(states[0], states[1]), states[2])
    overall = state.collapse_slices().finalize()
    sliced = state.finalize()
    interval_metrics = {s.name for s in STATISTICS if s.interval and not s.reference_only}
    assert set(overall.metrics["per_class"]) | set(overall.metrics["per_slice"]) == interval_metrics
    assert "top5_accuracy" in overall.metrics["per_class"]  # NaN for C <= 5, but present
    for report, slice_rows in ((overall, [np.ones(len(labels), bool)]),
                               (sliced, [slice_ids == s for s in range(len(KEYS))])):
        for s, in_slice in enumerate(slice_rows):
            full = {side: brute_metrics(pred, labels, in_slice) for side, pred in (("b", base), ("c", cand))}
            loo = [{side: brute_metrics(pred, labels, in_slice & (buckets != k)) for side, pred in (("b", base), ("c", cand))}
                   for k in range(K)]
            ps = report.per_slice
            for metric in ("ce_mean", "accuracy", "p_true_mean", "entropy_mean", "ece", "ce_macro"):
                diff = full["c"][1][metric] - full["b"][1][metric]
                thetas = np.array([one["c"][1][metric] - one["b"][1][metric] for one in loo])
                lo, hi = jackknife(diff, thetas)
                assert_allclose(ps[f"{metric}_diff"][s], diff, rtol=1e-9, atol=1e-12, err_msg=metric)
                assert_allclose(ps[f"{metric}_baseline"][s], full["b"][1][metric], rtol=1e-9, err_msg=metric)
                assert_allclose([ps[f"{metric}_diff_lo"][s], ps[f"{metric}_diff_hi"][s]], [lo, hi], rtol=1e-8,
                                atol=1e-12, err_msg=metric)
            pc = report.per_class
            for c in range(C):
                row = np.flatnonzero((pc["slice"] == s) & (pc["class"] == c))[0]
                for metric in ("ce_mean", "accuracy", "p_true_mean", "entropy_mean"):
                    diff = full["c"][0][c][metric] - full["b"][0][c][metric]
                    thetas = np.array([one["c"][0][c][metric] - one["b"][0][c][metric] for one in loo])
                    lo, hi = jackknife(diff, thetas)
                    assert_allclose(pc[f"{metric}_diff"][row], diff, rtol=1e-9, atol=1e-12, err_msg=metric)
                    assert_allclose([pc[f"{metric}_diff_lo"][row], pc[f"{metric}_diff_hi"][row]], [lo, hi],
                                    rtol=1e-8, atol=1e-12, err_msg=metric)
                assert np.isnan(pc["top5_accuracy_diff"][row])
                # per-row CE outcomes
                keep = in_slice & (labels == c)
                ce_b = -log_softmax(base[keep], axis=1)[np.arange(keep.sum()), c]
                ce_c = -log_softmax(cand[keep], axis=1)[np.arange(keep.sum()), c]
                assert pc["wins"][row] == (ce_c < ce_b).sum()
                assert pc["losses"][row] == (ce_c > ce_b).sum()
                assert pc["ties"][row] == (ce_c == ce_b).sum()
                assert pc["n"][row] == keep.sum()


def test_the_pairing_narrows_the_interval_and_finds_the_better_model():
    base, cand, labels, slice_ids, buckets = two_models(seed=3, n=6000)
    report = paired_partial(base, cand, labels, buckets=buckets, n_buckets=K).finalize()
    ps = report.per_slice
    assert ps["ce_mean_diff_hi"][0] < 0 and ps["ce_mean_verdict"][0] == "better"
    assert ps["accuracy_diff_lo"][0] > 0 and ps["accuracy_verdict"][0] == "better"
    assert ps["entropy_mean_verdict"][0] is None and direction("entropy_mean") == 0  # no direction, no verdict
    assert (direction("ce_mean"), direction("f1_macro"), direction("recall_weighted"), direction("ce_std")) == (-1, 1, 1, 0)
    # Swapped sides: the same interval mirrored, and the verdict turned around.
    swapped = paired_partial(cand, base, labels, buckets=buckets, n_buckets=K).finalize().per_slice
    assert_allclose(swapped["ce_mean_diff_lo"], -ps["ce_mean_diff_hi"], rtol=1e-10)
    assert swapped["ce_mean_verdict"][0] == "worse"


def test_the_same_model_on_both_sides_differs_by_exactly_zero():
    base, _, labels, slice_ids, buckets = two_models(seed=5)
    report = paired_partial(base, base.copy(), labels, buckets=buckets, n_buckets=K,
                            slice_ids=slice_ids, slice_keys=KEYS).finalize(base=2)
    assert report.units == "bits"
    for columns in (report.per_class, report.per_slice):
        for name, values in columns.items():
            if name.endswith("_diff") or (name.endswith(("_diff_lo", "_diff_hi")) and not name.startswith("auc")):
                assert_array_equal(np.nan_to_num(values) if name.startswith("top5") else values, 0.0, err_msg=name)
            if name.endswith("_verdict") and not name.startswith(("top5", "auc")) and \
                    STATISTIC[name.replace("_verdict", "")].better:
                assert set(values) == {"no_significant_difference"}, name
        assert_array_equal(columns["wins"], 0)
        assert_array_equal(columns["losses"], 0)
        assert_array_equal(columns["ties"], columns["n"])


def test_tie_tolerance():
    base, cand, labels, slice_ids, buckets = two_models(seed=7, n=500)
    close = base + 1e-9
    exact = paired_partial(base, close, labels, buckets=buckets)
    tolerant = paired_partial(base, close, labels, buckets=buckets, tie_tolerance=1e-6)
    assert exact.outcomes[()][:, 1].sum() < tolerant.outcomes[()][:, 1].sum() == (labels >= 0).sum()


def test_a_negative_tie_tolerance_is_refused():
    with pytest.raises(ValueError, match="tie_tolerance"):
        paired_partial(np.zeros((1, 2)), np.zeros((1, 2)), [0], buckets=[0], tie_tolerance=-1)


def test_paired_states_keep_no_confusion_matrix_and_take_the_roc_bins():
    base, cand, labels, _, buckets = two_models(seed=8, n=300)
    stats = paired_partial(base, cand, labels, buckets=buckets, n_thresholds=0)
    for state in (stats.baseline, stats.candidate):
        assert not state.has_confusion and state.n_thresholds == 0
    report = PairedStats.merge(stats, PairedStats.empty(C, n_thresholds=0)).finalize()
    assert np.isnan(report.per_slice["auc_diff"]).all()  # AUC off: no value to compare
    assert np.isfinite(report.per_slice["f1_macro_diff"]).all()  # precision reads the cells, not the matrix
