"""Jackknife intervals over buckets: coverage on a known model, independence of
sharding, agreement with the analytic intervals, the merge laws with buckets, and
the t quantile against SciPy."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats as sps
from scipy.special import log_softmax

from xent_kernels import (
    STATISTICS,
    ClassStats,
    class_stats_partial,
    interval_columns,
)
from xent_kernels.hashing import splitmix64
from xent_kernels.statistics import STATE_ARRAYS, Totals

K = 20
KEYS = [("a",), ("b",), ("c",)]


def bucket_of(row_ids, n_buckets=K):
    return (splitmix64(np.asarray(row_ids, dtype=np.uint64)) % np.uint64(n_buckets)).astype(np.int64)


# --------------------------------------------------------------------------- coverage

MEANS = np.array([[2.0, 0.5, 0.0], [0.5, 1.5, 0.3], [0.0, 0.6, 1.2]])  # logit mean vector per true class
PRIOR = np.array([0.5, 0.3, 0.2])
NOISE = 1.5


def draw(rng, n):
    labels = rng.choice(len(PRIOR), size=n, p=PRIOR)
    logits = MEANS[labels] + NOISE * rng.standard_normal((n, len(PRIOR)))
    return logits, labels


@lru_cache(maxsize=None)
def truth():
    """Expected CE and accuracy of the model, from 4 M draws (Monte-Carlo SE about
    5e-4 for CE, 2.5e-4 for accuracy: 1-2% of the intervals' half-widths below)."""
    rng = np.random.default_rng(20240611)
    ce, correct = [], []
    for _ in range(4):
        logits, labels = draw(rng, 1_000_000)
        ce.append(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels])
        correct.append(np.argmax(logits, axis=1) == labels)
    return float(np.concatenate(ce).mean()), float(np.concatenate(correct).mean())


@pytest.mark.slow
def test_intervals_cover_the_true_value():
    """500 repetitions of 2,000 rows (one slice each, buckets from the row id): the
    95% interval of mean CE and of accuracy covers the truth in 92-98% of them."""
    reps, n = 500, 2000
    rng = np.random.default_rng(7)
    logits, labels = draw(rng, reps * n)
    rep = np.repeat(np.arange(reps), n)
    state = class_stats_partial(
        logits, labels, slice_ids=rep, slice_keys=[(r,) for r in range(reps)],
        buckets=bucket_of(np.arange(reps * n)), n_buckets=K,
    )
    report = state.finalize(level=0.95).per_slice
    true_ce, true_accuracy = truth()
    for name, true in (("ce_mean", true_ce), ("accuracy", true_accuracy)):
        covered = (report[f"{name}_lo"] <= true) & (true <= report[f"{name}_hi"])
        print(f"{name}: truth {true:.5f}, coverage {covered.mean():.3f}, "
              f"mean half-width {np.mean(report[f'{name}_hi'] - report[name]):.4f}")
        assert 0.92 <= covered.mean() <= 0.98, (name, covered.mean())


# --------------------------------------------------------------------------- sharding


def make_rows(n_classes, n, seed):
    rng = np.random.default_rng([seed, n_classes])
    logits = rng.normal(scale=2.0, size=(n, n_classes))
    labels = rng.integers(0, n_classes, n)
    labels[::23] = -1
    return dict(
        pred=logits, labels=labels, weights=rng.uniform(0.0, 2.0, n), slice_ids=rng.integers(0, len(KEYS), n),
        buckets=bucket_of(np.arange(n)),
    )


def partial(rows, index=slice(None), **extra):
    return class_stats_partial(**{k: v[index] for k, v in rows.items()}, slice_keys=KEYS, n_buckets=K, **extra)


@pytest.mark.parametrize("n_classes", [4, 10, 50])  # narrow (vertical, scatter) and wide
def test_bounds_do_not_depend_on_sharding(n_classes):
    rows = make_rows(n_classes, 6000, seed=1)
    whole = partial(rows).finalize()
    rng = np.random.default_rng(n_classes)
    order = rng.permutation(6000)  # 13 pieces of shuffled rows, merged in random order
    pieces = [partial(rows, index) for index in np.array_split(order, 13)]
    merged = ClassStats.empty(n_classes, n_buckets=K)
    for i in rng.permutation(13):
        merged = ClassStats.merge(merged, pieces[i])
    merged = merged.finalize()
    for level in ("per_class", "per_slice"):
        columns = interval_columns(level[4:])
        assert set(columns) <= set(getattr(whole, level))
        for column in columns:
            a, b = getattr(whole, level)[column], getattr(merged, level)[column]
            assert np.isfinite(a).any() or (column.startswith("top5") and n_classes <= 5), column
            assert_allclose(b, a, rtol=0, atol=1e-12, err_msg=f"{level} {column}")


# --------------------------------------------------------------------------- the state with buckets


def test_each_bucket_holds_the_state_of_its_rows():
    rows = make_rows(10, 3000, seed=2)
    state = partial(rows)
    assert state.n_buckets == K and state.counts.shape == (len(KEYS), K, 10)
    for k in (0, 7, K - 1):
        alone = class_stats_partial(
            **{name: v[rows["buckets"] == k] for name, v in rows.items() if name != "buckets"}, slice_keys=KEYS,
        )
        got, expected = Totals.by_bucket(state), Totals.by_bucket(alone)
        bucketed = [array.name for array in STATE_ARRAYS if "bucket" in array.axes]
        assert bucketed == ["counts", "cell", "ce_m2", "hist"]
        for name in bucketed:
            assert_allclose(got[name][:, k], expected[name][:, 0], rtol=1e-12, atol=1e-12, err_msg=name)


def test_buckets_leave_the_point_values_unchanged():
    rows = make_rows(10, 3000, seed=3)
    with_buckets = partial(rows).finalize()
    without = class_stats_partial(**{k: v for k, v in rows.items() if k != "buckets"}, slice_keys=KEYS).finalize()
    for level in ("per_class", "per_slice"):
        plain = getattr(without, level)
        assert set(getattr(with_buckets, level)) == set(plain)
        for column, value in plain.items():
            if column in interval_columns(level[4:]):
                continue
            assert_allclose(getattr(with_buckets, level)[column], value, rtol=1e-11, atol=1e-13, err_msg=column)
    assert_allclose(with_buckets.confidence_hist, without.confidence_hist, rtol=1e-12)
    # one bucket: every jackknife bound is NaN (AUC's are DeLong's, from the histograms)
    for column in interval_columns("class"):
        assert np.isnan(without.per_class[column]).all() == (not column.startswith("auc")), column


def test_one_bucket_is_bitwise_the_state_without_buckets():
    rows = make_rows(10, 3000, seed=4)
    plain = {k: v for k, v in rows.items() if k != "buckets"}
    a = class_stats_partial(**plain, slice_keys=KEYS)
    b = class_stats_partial(**plain, slice_keys=KEYS, buckets=np.zeros(3000, np.int64), n_buckets=1)
    for name, array in a._arrays().items():
        assert_array_equal(getattr(b, name), array, err_msg=name)
    assert a.n_buckets == 1


def test_merge_laws_with_buckets():
    rows = make_rows(10, 3000, seed=5)
    a, b, c = (partial(rows, slice(i, j)) for i, j in [(0, 800), (800, 2000), (2000, 3000)])
    merge = ClassStats.merge

    def bounds(state):
        report = state.finalize()
        return {(level, column): getattr(report, level)[column]
                for level in ("per_class", "per_slice") for column in interval_columns(level[4:])}

    ab, ba = bounds(merge(a, b)), bounds(merge(b, a))
    left, right = bounds(merge(merge(a, b), c)), bounds(merge(a, merge(b, c)))
    for key in ab:
        assert_array_equal(ab[key], ba[key], err_msg=str(key))
        assert_allclose(left[key], right[key], rtol=0, atol=1e-12, err_msg=str(key))
    empty = ClassStats.empty(10, n_buckets=K)
    for name, array in a._arrays().items():
        assert_array_equal(getattr(merge(a, empty), name), array, err_msg=name)
    assert merge(a, b).slice(1).n_buckets == K and merge(a, b).collapse_slices().n_buckets == K
    with pytest.raises(ValueError, match="different shape"):
        merge(a, ClassStats.empty(10))
    with pytest.raises(ValueError, match="different shape"):
        merge(a, ClassStats.empty(10, n_buckets=K - 1))


def test_bad_buckets_are_rejected():
    rows = make_rows(4, 50, seed=6)
    with pytest.raises(ValueError, match=r"row 3 has bucket 20, expected a bucket in \[0, 20\)"):
        partial({**rows, "buckets": np.where(np.arange(50) == 3, 20, rows["buckets"])})
    with pytest.raises(ValueError, match="buckets must be"):
        partial({**rows, "buckets": rows["buckets"].astype(float)})
    with pytest.raises(ValueError, match="needs buckets"):
        class_stats_partial(rows["pred"], rows["labels"], n_buckets=5)
    with pytest.raises(ValueError, match="level must be"):
        partial(rows).finalize(level=1.0)


def test_empty_buckets_are_skipped():
    """Rows in only 3 of 20 buckets: K' = 3, so t has 2 degrees of freedom, and the
    interval is the jackknife of those 3 buckets written out by hand."""
    rng = np.random.default_rng(8)
    n = 300
    pred = rng.normal(size=(n, 3))
    labels = np.zeros(n, np.int64)
    buckets = np.array([2, 9, 17])[np.arange(n) % 3]
    report = class_stats_partial(pred, labels, buckets=buckets).finalize(level=0.9)
    ce = -log_softmax(pred, axis=1)[:, 0]
    theta = np.array([ce[buckets != b].mean() for b in (2, 9, 17)])
    se = math.sqrt(2 / 3 * ((theta - theta.mean()) ** 2).sum())
    half = sps.t.ppf(0.95, 2) * se
    assert_allclose(report.per_slice["ce_mean_lo"], [ce.mean() - half], rtol=1e-12)
    assert_allclose(report.per_class["ce_mean_hi"], [ce.mean() + half], rtol=1e-12)
    # a cell with rows in one bucket only has no interval
    labels[0] = 1
    report = class_stats_partial(pred, labels, buckets=buckets).finalize()
    assert np.isnan(report.per_class["ce_mean_lo"][1]) and np.isfinite(report.per_class["ce_mean_lo"][0])


# --------------------------------------------------------------------------- agreement with analytic intervals


def test_agreement_with_analytic_intervals():
    """Over 50 slices of 4,000 rows: the jackknife SE of a class's mean CE against
    ce_std / sqrt(n), and of accuracy against Wilson's half-width / z. Both estimate
    the same standard error; the jackknife's, from 20 buckets, scatters by about
    1/sqrt(2 * 19) = 16% around it."""
    n_slices, n = 50, 4000
    rng = np.random.default_rng(9)
    logits, labels = draw(rng, n_slices * n)
    state = class_stats_partial(
        logits, labels, slice_ids=np.repeat(np.arange(n_slices), n), slice_keys=[(s,) for s in range(n_slices)],
        buckets=bucket_of(np.arange(n_slices * n)),
    )
    report = state.finalize()
    t19 = sps.t.ppf(0.975, K - 1)
    pc = report.per_class
    count = pc["n"]
    jack_ce = (pc["ce_mean_hi"] - pc["ce_mean_lo"]) / (2 * t19)
    analytic_ce = pc["ce_std"] * np.sqrt(count / (count - 1)) / np.sqrt(count)
    z = sps.norm.ppf(0.975)
    p, m = pc["accuracy"], count
    wilson = z / (1 + z * z / m) * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    jack_accuracy = (pc["accuracy_hi"] - pc["accuracy_lo"]) / (2 * t19)
    for name, ratio in (("ce_mean", jack_ce / analytic_ce), ("accuracy", jack_accuracy / (wilson / z))):
        deviation = np.abs(ratio - 1)
        print(f"{name}: SE ratio median {np.median(ratio):.3f}, mean {ratio.mean():.3f}, "
              f"90th percentile of |ratio - 1| {np.quantile(deviation, 0.9):.3f}")
        assert abs(ratio.mean() - 1) < 0.05, name
        assert np.quantile(deviation, 0.9) < 0.3, name


# --------------------------------------------------------------------------- the table


def test_every_metric_but_ce_std_has_an_interval():
    assert {s.name for s in STATISTICS if s.interval} == {
        s.name for s in STATISTICS if s.role == "metric" and s.name not in ("ce_std", "auc_error_bound")
    }
    assert interval_columns("class")[:4] == ["ce_mean_lo", "ce_mean_hi", "accuracy_lo", "accuracy_hi"]
    assert "kl_mean_lo" in interval_columns("slice", has_reference=True)
    assert "kl_mean_lo" not in interval_columns("slice")
