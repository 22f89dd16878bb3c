"""xent_kernels losses against plain float64 numpy/scipy/sklearn references.

Tolerances: float32 inputs are compared against the float64 reference evaluated on
the same float32 values cast up (rtol 1e-6); float64 inputs at rtol 1e-10.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss

import reference as ref
from xent_kernels import (
    binary_cross_entropy,
    cross_entropy,
    entropy,
    js_divergence,
    kl_divergence,
)

KINDS = ["logits", "probs", "log_probs"]
DTYPES = [np.float32, np.float64]
REDUCTIONS = ["none", "sum", "mean"]
BASES = ["e", 2]
LN2 = math.log(2.0)


def tol(dtype):
    """rtol 1e-6 for float32 inputs, 1e-10 for float64 (atol only guards exact zeros)."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-6, "atol": 1e-12}
    return {"rtol": 1e-10, "atol": 1e-14}


def as_kind(logits64, kind, dtype):
    """Express float64 logits as `kind`, rounded to `dtype`."""
    logits64 = np.asarray(logits64, dtype=np.float64)
    if kind == "logits":
        out = logits64
    elif kind == "probs":
        out = softmax(logits64, axis=1)
    elif kind == "log_probs":
        out = log_softmax(logits64, axis=1)
    else:
        raise AssertionError(kind)
    return np.ascontiguousarray(out.astype(dtype))


def random_logits(rng, n, c, scale=3.0):
    return rng.normal(0.0, scale, size=(n, c))


def random_soft_targets(rng, n, c, zeros=True):
    t = rng.gamma(0.7, size=(n, c))
    if zeros:
        t[rng.random((n, c)) < 0.3] = 0.0
        t[np.arange(n), rng.integers(0, c, n)] += 0.5  # no all-zero row
    return t / t.sum(axis=1, keepdims=True)


def check(actual, expected, dtype, reduction="none"):
    if reduction == "none":
        actual = np.asarray(actual)
        assert actual.dtype == np.float64, actual.dtype
        assert actual.shape == np.shape(expected)
    else:
        assert np.ndim(actual) == 0, f"reduction {reduction!r} should give a scalar"
        actual = float(actual)
    assert_allclose(actual, expected, **tol(dtype))


# --------------------------------------------------------------------------------------
# cross_entropy, hard labels
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ce_hard_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(1)
    logits = random_logits(rng, 37, 7)
    pred = as_kind(logits, kind, dtype)
    labels = rng.integers(0, 7, 37)
    got = cross_entropy(pred, labels, kind=kind, reduction=reduction, base=base)
    want = ref.ce_hard(pred, labels, kind, reduction=reduction, base=base)
    check(got, want, dtype, reduction)


@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.int64, np.uint8])
def test_ce_hard_accepts_integer_label_dtypes(label_dtype):
    rng = np.random.default_rng(2)
    logits = random_logits(rng, 11, 5)
    labels = rng.integers(0, 5, 11)
    got = cross_entropy(logits, labels.astype(label_dtype))
    check(got, ref.ce_hard(logits, labels, "logits"), np.float64)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ce_hard_weights(kind, dtype, reduction):
    rng = np.random.default_rng(3)
    logits = random_logits(rng, 29, 6)
    pred = as_kind(logits, kind, dtype)
    labels = rng.integers(0, 6, 29)
    weights = rng.uniform(0.1, 3.0, 29)
    got = cross_entropy(pred, labels, kind=kind, weights=weights, reduction=reduction)
    want = ref.ce_hard(pred, labels, kind, weights=weights, reduction=reduction)
    check(got, want, dtype, reduction)
    # weighting must actually matter: the unweighted mean differs by far more than tol
    unweighted = ref.ce_hard(pred, labels, kind, reduction=reduction)
    assert abs(unweighted - want) > 1e-3 * abs(want)


def test_ce_weighted_mean_formula_explicit():
    # two rows, losses -log 0.5 and -log 0.25, weights 1 and 3
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    labels = np.array([0, 1])
    w = np.array([1.0, 3.0])
    l0, l1 = -math.log(0.5), -math.log(0.25)
    assert_allclose(float(cross_entropy(probs, labels, kind="probs", weights=w, reduction="sum")),
                    l0 + 3 * l1, rtol=1e-12)
    assert_allclose(float(cross_entropy(probs, labels, kind="probs", weights=w, reduction="mean")),
                    (l0 + 3 * l1) / 4.0, rtol=1e-12)


@pytest.mark.parametrize("ignore_index", [-100, -1, 2, 255])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ce_ignore_index(kind, dtype, ignore_index):
    rng = np.random.default_rng(4)
    n, c = 31, 5
    pred = as_kind(random_logits(rng, n, c), kind, dtype)
    labels = rng.integers(0, c, n)
    ignored = rng.random(n) < 0.3
    ignored[[0, 7]] = True
    labels[ignored] = ignore_index
    weights = rng.uniform(0.5, 2.0, n)

    none = cross_entropy(pred, labels, kind=kind, ignore_index=ignore_index)
    check(none, ref.ce_hard(pred, labels, kind, ignore_index=ignore_index), dtype)
    assert np.all(np.asarray(none)[labels == ignore_index] == 0.0)

    for reduction in ("sum", "mean"):
        got = cross_entropy(pred, labels, kind=kind, ignore_index=ignore_index,
                            weights=weights, reduction=reduction)
        want = ref.ce_hard(pred, labels, kind, ignore_index=ignore_index,
                           weights=weights, reduction=reduction)
        check(got, want, dtype, reduction)

    # mean over kept rows only: equals the mean of the kept rows alone
    keep = labels != ignore_index
    got_mean = cross_entropy(pred, labels, kind=kind, ignore_index=ignore_index, reduction="mean")
    kept_only = cross_entropy(pred[keep], labels[keep], kind=kind, reduction="mean")
    assert_allclose(float(got_mean), float(kept_only), **tol(dtype))


def test_ce_ignore_index_with_out_of_range_label_value():
    # -100 is not a class, but it is the ignore index: must not raise
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    out = cross_entropy(logits, np.array([-100, 1]))
    assert_allclose(out, [0.0, math.log(3.0)], rtol=1e-12)


# --------------------------------------------------------------------------------------
# cross_entropy, soft targets
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ce_soft_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(5)
    pred = as_kind(random_logits(rng, 23, 9), kind, dtype)
    target = random_soft_targets(rng, 23, 9).astype(dtype)
    got = cross_entropy(pred, target, kind=kind, reduction=reduction, base=base)
    want = ref.ce_soft(pred, target, kind, reduction=reduction, base=base)
    check(got, want, dtype, reduction)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_soft_probs_matches_xlogy(dtype):
    rng = np.random.default_rng(6)
    probs = as_kind(random_logits(rng, 17, 8), "probs", dtype)
    probs[2, 3] = 0.0  # target there is 0 too: 0 * log 0 must be 0
    probs[2] /= probs[2].astype(np.float64).sum()
    target = random_soft_targets(rng, 17, 8)
    target[2, 3] = 0.0
    target[2] /= target[2].sum()
    got = cross_entropy(probs, target, kind="probs")
    assert np.isfinite(got[2])
    check(got, ref.ce_soft_xlogy(probs, target), dtype)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("kind", KINDS)
def test_ce_soft_weights(kind, reduction):
    rng = np.random.default_rng(7)
    pred = as_kind(random_logits(rng, 19, 4), kind, np.float64)
    target = random_soft_targets(rng, 19, 4)
    w = rng.uniform(0.0, 2.0, 19)
    got = cross_entropy(pred, target, kind=kind, weights=w, reduction=reduction)
    check(got, ref.ce_soft(pred, target, kind, weights=w, reduction=reduction), np.float64, reduction)


def test_ce_soft_one_hot_equals_hard():
    rng = np.random.default_rng(8)
    logits = random_logits(rng, 13, 6)
    labels = rng.integers(0, 6, 13)
    one_hot = np.eye(6)[labels]
    assert_allclose(cross_entropy(logits, one_hot), cross_entropy(logits, labels), rtol=1e-12)
    assert_allclose(cross_entropy(logits, one_hot), ref.ce_hard(logits, labels), rtol=1e-10)


def test_ce_soft_positive_target_on_zero_prob_is_inf():
    probs = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    target = np.array([[0.1, 0.4, 0.5], [0.2, 0.3, 0.5]])
    out = cross_entropy(probs, target, kind="probs")
    assert out[0] == np.inf
    assert_allclose(out[1], ref.ce_soft_xlogy(probs, target)[1], rtol=1e-12)


# --------------------------------------------------------------------------------------
# label smoothing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.1, 0.35, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ce_label_smoothing_hard(kind, dtype, smoothing):
    rng = np.random.default_rng(9)
    n, c = 21, 6
    pred = as_kind(random_logits(rng, n, c), kind, dtype)
    labels = rng.integers(0, c, n)
    labels[[4, 9]] = -100
    # reference: soft cross-entropy against (1 - eps) one_hot + eps / C, computed by hand
    keep = labels != -100
    smoothed = (1.0 - smoothing) * np.eye(c)[np.where(keep, labels, 0)] + smoothing / c
    want = np.where(keep, ref.ce_soft(pred, smoothed, kind), 0.0)
    got = cross_entropy(pred, labels, kind=kind, label_smoothing=smoothing)
    check(got, want, dtype)
    got_mean = cross_entropy(pred, labels, kind=kind, label_smoothing=smoothing, reduction="mean")
    check(got_mean, want[keep].mean(), dtype, "mean")
    # and it really differs from the unsmoothed loss
    assert not np.allclose(got, ref.ce_hard(pred, labels, kind), rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_ce_label_smoothing_soft_targets(kind):
    rng = np.random.default_rng(10)
    pred = as_kind(random_logits(rng, 15, 5), kind, np.float64)
    target = random_soft_targets(rng, 15, 5)
    eps = 0.2
    got = cross_entropy(pred, target, kind=kind, label_smoothing=eps)
    want = ref.ce_soft(pred, (1 - eps) * target + eps / 5, kind)
    check(got, want, np.float64)


def test_label_smoothing_makes_zero_prob_class_infinite():
    # smoothing puts eps/C mass on every class, so a class with q = 0 gives +inf
    probs = np.array([[0.5, 0.5, 0.0]])
    assert np.isfinite(cross_entropy(probs, np.array([0]), kind="probs")[0])
    assert cross_entropy(probs, np.array([0]), kind="probs", label_smoothing=0.1)[0] == np.inf


# --------------------------------------------------------------------------------------
# eps and exact zeros
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_prob_on_true_class_is_inf_exactly(dtype):
    probs = np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5], [0.5, 0.5, 0.0]], dtype=dtype)
    labels = np.array([0, 1, 2])
    out = cross_entropy(probs, labels, kind="probs")
    assert out[0] == np.inf and out[2] == np.inf
    assert_allclose(out[1], math.log(4.0), rtol=1e-12)
    assert cross_entropy(probs, labels, kind="probs", reduction="sum") == np.inf
    assert cross_entropy(probs, labels, kind="probs", reduction="mean") == np.inf

    log_probs = np.log(np.array([[0.0, 0.5, 0.5]]), where=np.array([[False, True, True]]),
                       out=np.full((1, 3), -np.inf)).astype(dtype)
    assert cross_entropy(log_probs, np.array([0]), kind="log_probs")[0] == np.inf


@pytest.mark.parametrize("eps", [1e-7, 1e-3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_eps_clips_zero_prob_to_minus_log_eps(dtype, eps):
    probs = np.array([[0.0, 0.5, 0.5], [0.25, 0.25, 0.5]], dtype=dtype)
    labels = np.array([0, 1])
    out = cross_entropy(probs, labels, kind="probs", eps=eps)
    assert_allclose(out, [-math.log(eps), math.log(4.0)], rtol=1e-12)
    assert_allclose(cross_entropy(probs, labels, kind="probs", eps=eps, base=2),
                    [-math.log2(eps), 2.0], rtol=1e-12)
    lp = np.array([[-np.inf, math.log(0.5), math.log(0.5)]], dtype=dtype)
    assert_allclose(cross_entropy(lp, np.array([0]), kind="log_probs", eps=eps),
                    [-math.log(eps)], rtol=1e-12)


def test_eps_clips_from_below_only():
    # q = 1 on the true class: loss 0, not -log(1 - eps)
    probs = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])
    out = cross_entropy(probs, np.array([0, 0]), kind="probs", eps=1e-2)
    assert out[0] == 0.0
    assert_allclose(out[1], -math.log(0.9), rtol=1e-12)
    # probability above eps unchanged
    out2 = cross_entropy(probs, np.array([1, 1]), kind="probs", eps=0.05)
    assert_allclose(out2, [-math.log(0.05), -math.log(0.1)], rtol=1e-12)


def test_eps_with_logits_clips_tiny_probability():
    logits = np.array([[0.0, -100.0, 0.0], [2.0, 1.0, 0.0]])
    labels = np.array([1, 1])
    eps = 1e-7
    got = cross_entropy(logits, labels, eps=eps)
    want = ref.ce_hard(logits, labels, "logits", eps=eps)
    assert_allclose(got, want, rtol=1e-10)
    assert_allclose(got[0], -math.log(eps), rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_eps_soft_targets(kind):
    rng = np.random.default_rng(11)
    logits = random_logits(rng, 12, 5, scale=8.0)
    pred = as_kind(logits, kind, np.float64)
    if kind != "logits":
        pred[0, 2] = 0.0 if kind == "probs" else -np.inf
        if kind == "probs":
            pred[0] /= pred[0].sum()
        else:
            pred[0] -= ref.log_partition(pred[0:1])[0]
    target = random_soft_targets(rng, 12, 5, zeros=False)
    eps = 1e-3
    got = cross_entropy(pred, target, kind=kind, eps=eps)
    check(got, ref.ce_soft(pred, target, kind, eps=eps), np.float64)
    assert np.all(np.isfinite(got))


# --------------------------------------------------------------------------------------
# worked example and sklearn
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_worked_example(dtype):
    probs = np.array([[0.4, 0.4, 0.2]], dtype=dtype)
    label = np.array([1])
    r = tol(dtype)["rtol"]
    assert_allclose(cross_entropy(probs, label, kind="probs"), [0.916291], rtol=1e-6)
    assert_allclose(cross_entropy(probs, label, kind="probs", base=2), [1.321928], rtol=1e-6)
    assert_allclose(cross_entropy(probs, label, kind="probs"),
                    [-math.log(np.float64(probs[0, 1]))], rtol=r)
    logits = np.log(probs.astype(np.float64)).astype(dtype)
    assert_allclose(cross_entropy(logits, label, kind="logits"), [0.916291], rtol=1e-6)
    assert_allclose(cross_entropy(logits, label, kind="logits", base=2), [1.321928], rtol=1e-6)
    assert_allclose(cross_entropy(logits, label, kind="log_probs"), [0.916291], rtol=1e-6)
    # shifting the logits does not change anything
    assert_allclose(cross_entropy(logits + dtype(5), label), [0.916291], rtol=1e-6)


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum")
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_mean_on_probs_matches_sklearn_log_loss(dtype, use_weights):
    rng = np.random.default_rng(12)
    n, c = 40, 6
    probs = as_kind(random_logits(rng, n, c, scale=1.5), "probs", dtype)
    labels = rng.integers(0, c - 1, n)  # class c-1 never appears: needs labels=
    w = rng.uniform(0.2, 4.0, n) if use_weights else None
    want = log_loss(labels, probs.astype(np.float64), labels=np.arange(c), sample_weight=w)
    got = cross_entropy(probs, labels, kind="probs", weights=w, reduction="mean")
    check(got, want, dtype, "mean")
    want_sum = log_loss(labels, probs.astype(np.float64), labels=np.arange(c),
                        sample_weight=w, normalize=False)
    check(cross_entropy(probs, labels, kind="probs", weights=w, reduction="sum"),
          want_sum, dtype, "sum")


def test_bce_mean_on_probs_matches_sklearn_log_loss():
    rng = np.random.default_rng(13)
    p = rng.uniform(0.01, 0.99, 50)
    t = rng.integers(0, 2, 50)
    w = rng.uniform(0.5, 2.0, 50)
    got = binary_cross_entropy(p, t.astype(np.float64), kind="probs", reduction="mean")
    assert_allclose(float(got), log_loss(t, p, labels=[0, 1]), rtol=1e-10)
    got_w = binary_cross_entropy(p, t.astype(np.float64), kind="probs", weights=w, reduction="mean")
    assert_allclose(float(got_w), log_loss(t, p, labels=[0, 1], sample_weight=w), rtol=1e-10)


# --------------------------------------------------------------------------------------
# binary_cross_entropy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_bce_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(14)
    x = rng.normal(0, 3, 41)
    pred = (x if kind == "logits" else 1.0 / (1.0 + np.exp(-x))).astype(dtype)
    hard = rng.integers(0, 2, 41).astype(dtype)
    soft = rng.uniform(0, 1, 41).astype(dtype)
    for target in (hard, soft):
        got = binary_cross_entropy(pred, target, kind=kind, reduction=reduction, base=base)
        want = ref.bce(pred, target, kind, reduction=reduction, base=base)
        check(got, want, dtype, reduction)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_bce_pos_weight_and_weights(kind, dtype):
    rng = np.random.default_rng(15)
    x = rng.normal(0, 2, 30)
    pred = (x if kind == "logits" else 1.0 / (1.0 + np.exp(-x))).astype(dtype)
    t = rng.uniform(0, 1, 30).astype(dtype)
    w = rng.uniform(0.1, 2.0, 30)
    got = binary_cross_entropy(pred, t, kind=kind, pos_weight=3.5)
    check(got, ref.bce(pred, t, kind, pos_weight=3.5), dtype)
    for reduction in ("sum", "mean"):
        got = binary_cross_entropy(pred, t, kind=kind, pos_weight=0.25, weights=w, reduction=reduction)
        want = ref.bce(pred, t, kind, pos_weight=0.25, weights=w, reduction=reduction)
        check(got, want, dtype, reduction)


def test_bce_extreme_logits_float32():
    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0, 50.0, -50.0], dtype=np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=np.float32)
    got = binary_cross_entropy(x, t)
    assert np.all(np.isfinite(got))
    assert_allclose(got, ref.bce(x, t, "logits"), rtol=1e-6, atol=1e-12)
    assert_allclose(got[2:4], [1e4, 1e4], rtol=1e-12)


def test_bce_probs_exact_zero_and_eps():
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.3])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    got = binary_cross_entropy(p, t, kind="probs")
    assert got[0] == np.inf and got[1] == np.inf
    assert got[2] == 0.0 and got[3] == 0.0
    assert_allclose(got[4], -math.log(0.3), rtol=1e-12)
    eps = 1e-4
    got_eps = binary_cross_entropy(p, t, kind="probs", eps=eps)
    assert_allclose(got_eps, ref.bce(p, t, "probs", eps=eps), rtol=1e-10)
    assert_allclose(got_eps[:4], [-math.log(eps), -math.log(eps), -math.log1p(-eps), -math.log1p(-eps)],
                    rtol=1e-10)


def test_bce_worked_example():
    # sigma = 0.8, t = 1: -log 0.8; t = 0: -log 0.2; t = 0.25 mixes them
    x = np.full(3, math.log(4.0))
    t = np.array([1.0, 0.0, 0.25])
    want = [-math.log(0.8), -math.log(0.2), -(0.25 * math.log(0.8) + 0.75 * math.log(0.2))]
    assert_allclose(binary_cross_entropy(x, t), want, rtol=1e-12)
    assert_allclose(binary_cross_entropy(np.full(3, 0.8), t, kind="probs"), want, rtol=1e-12)
    assert_allclose(binary_cross_entropy(x, t, base=2), np.array(want) / LN2, rtol=1e-12)


# --------------------------------------------------------------------------------------
# KL, JS, entropy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kl_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(16)
    p = as_kind(random_logits(rng, 27, 8), kind, dtype)
    q = as_kind(random_logits(rng, 27, 8), kind, dtype)
    got = kl_divergence(p, q, kind=kind, reduction=reduction, base=base)
    check(got, ref.kl(p, q, kind, reduction=reduction, base=base), dtype, reduction)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_js_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(17)
    p = as_kind(random_logits(rng, 27, 8), kind, dtype)
    q = as_kind(random_logits(rng, 27, 8), kind, dtype)
    got = js_divergence(p, q, kind=kind, reduction=reduction, base=base)
    check(got, ref.js(p, q, kind, reduction=reduction, base=base), dtype, reduction)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_entropy_matches_reference(kind, dtype, reduction, base):
    rng = np.random.default_rng(18)
    p = as_kind(random_logits(rng, 27, 8), kind, dtype)
    got = entropy(p, kind=kind, reduction=reduction, base=base)
    check(got, ref.entropy(p, kind, reduction=reduction, base=base), dtype, reduction)


def test_kl_zeros_probs():
    p = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    q = np.array([[0.5, 0.0, 0.5], [0.0, 0.25, 0.75], [0.2, 0.3, 0.5]])
    got = kl_divergence(p, q, kind="probs")
    assert got[0] == np.inf  # p > 0 where q = 0
    assert_allclose(got[1], 0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75), rtol=1e-12)
    assert abs(got[2]) <= 1e-15
    # the same through log_probs, with -inf entries
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log(q)
    got_lp = kl_divergence(lp, lq, kind="log_probs")
    assert got_lp[0] == np.inf
    assert_allclose(got_lp[1:], got[1:], rtol=1e-12, atol=1e-15)


def test_entropy_and_js_with_zero_probs():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    q = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]])
    assert_allclose(entropy(p, kind="probs"), [0.0, math.log(2.0), 1.5 * math.log(2.0)], rtol=1e-12)
    assert_allclose(entropy(p, kind="probs", base=2), [0.0, 1.0, 1.5], rtol=1e-12)
    js = js_divergence(p, q, kind="probs")
    assert np.all(np.isfinite(js))
    assert_allclose(js[0], math.log(2.0), rtol=1e-12)  # disjoint supports
    assert abs(js[1]) <= 1e-15
    assert_allclose(js, ref.js(p, q, "probs"), rtol=1e-10, atol=1e-15)
    assert_allclose(js_divergence(p, q, kind="probs", base=2)[0], 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_probs_with_minus_inf_entries(dtype):
    """log_probs = -inf is probability 0: entropy, KL and JS must treat it as 0 log 0 = 0."""
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    q = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p).astype(dtype), np.log(q).astype(dtype)
    assert_allclose(entropy(lp, kind="log_probs"), ref.entropy(lp, "log_probs"), **tol(dtype))
    assert_allclose(entropy(lp, kind="log_probs")[0], 0.0, atol=1e-15)
    assert_allclose(kl_divergence(lp, lq, kind="log_probs"), ref.kl(lp, lq, "log_probs"), **tol(dtype))
    assert_allclose(kl_divergence(lp, lq, kind="log_probs")[0], math.log(2.0), **tol(dtype))
    assert kl_divergence(lp, lq, kind="log_probs")[1] == np.inf  # p > 0 where q = 0
    assert kl_divergence(lq, lp, kind="log_probs")[0] == np.inf
    assert_allclose(kl_divergence(lq, lp, kind="log_probs")[1], math.log(2.0), **tol(dtype))
    want_js = ref.js(lp, lq, "log_probs")
    assert np.all(np.isfinite(want_js))
    assert_allclose(js_divergence(lp, lq, kind="log_probs"), want_js, **tol(dtype))
    assert_allclose(js_divergence(lq, lp, kind="log_probs"), want_js, **tol(dtype))


def test_kl_mean_is_plain_mean():
    rng = np.random.default_rng(19)
    p = random_logits(rng, 9, 4)
    q = random_logits(rng, 9, 4)
    rows = ref.kl(p, q)
    assert_allclose(float(kl_divergence(p, q, reduction="mean")), rows.mean(), rtol=1e-10)
    assert_allclose(float(kl_divergence(p, q, reduction="sum")), rows.sum(), rtol=1e-10)


# --------------------------------------------------------------------------------------
# sizes and extremes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_two_classes(kind, dtype):
    rng = np.random.default_rng(20)
    pred = as_kind(random_logits(rng, 25, 2), kind, dtype)
    q = as_kind(random_logits(rng, 25, 2), kind, dtype)
    labels = rng.integers(0, 2, 25)
    check(cross_entropy(pred, labels, kind=kind), ref.ce_hard(pred, labels, kind), dtype)
    check(kl_divergence(pred, q, kind=kind), ref.kl(pred, q, kind), dtype)
    check(entropy(pred, kind=kind), ref.entropy(pred, kind), dtype)
    check(js_divergence(pred, q, kind=kind), ref.js(pred, q, kind), dtype)


def test_two_class_ce_equals_bce_on_logit_difference():
    rng = np.random.default_rng(21)
    logits = random_logits(rng, 20, 2)
    labels = rng.integers(0, 2, 20)
    diff = logits[:, 1] - logits[:, 0]
    assert_allclose(cross_entropy(logits, labels),
                    binary_cross_entropy(diff, labels.astype(np.float64)), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_large_vocabulary(kind, dtype):
    rng = np.random.default_rng(22)
    n, c = 3, 32000
    pred = as_kind(random_logits(rng, n, c, scale=4.0), kind, dtype)
    q = as_kind(random_logits(rng, n, c, scale=4.0), kind, dtype)
    labels = np.array([0, 31999, 12345])
    target = random_soft_targets(rng, n, c)
    check(cross_entropy(pred, labels, kind=kind), ref.ce_hard(pred, labels, kind), dtype)
    check(cross_entropy(pred, target, kind=kind), ref.ce_soft(pred, target, kind), dtype)
    check(cross_entropy(pred, labels, kind=kind, label_smoothing=0.1),
          ref.ce_hard(pred, labels, kind, label_smoothing=0.1), dtype)
    check(kl_divergence(pred, q, kind=kind), ref.kl(pred, q, kind), dtype)
    check(entropy(pred, kind=kind), ref.entropy(pred, kind), dtype)


def test_all_rows_ignored():
    logits = np.random.default_rng(23).normal(size=(4, 3))
    labels = np.full(4, -100)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = cross_entropy(logits, labels)
        total = cross_entropy(logits, labels, reduction="sum")
        mean = cross_entropy(logits, labels, reduction="mean")
        wmean = cross_entropy(logits, labels, weights=w, reduction="mean")
    assert np.asarray(none).dtype == np.float64
    assert np.array_equal(none, np.zeros(4))
    assert float(total) == 0.0
    assert math.isnan(float(mean)) and math.isnan(float(wmean))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_input(kind):
    for dtype in DTYPES:
        pred = np.zeros((0, 5), dtype=dtype)
        labels = np.zeros(0, dtype=np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            none = cross_entropy(pred, labels, kind=kind)
            total = cross_entropy(pred, labels, kind=kind, reduction="sum")
            mean = cross_entropy(pred, labels, kind=kind, reduction="mean")
            soft = cross_entropy(pred, np.zeros((0, 5)), kind=kind)
            kl_rows = kl_divergence(pred, pred, kind=kind)
            kl_sum = kl_divergence(pred, pred, kind=kind, reduction="sum")
            h = entropy(pred, kind=kind)
        assert np.asarray(none).shape == (0,) and np.asarray(none).dtype == np.float64
        assert float(total) == 0.0
        assert math.isnan(float(mean))
        assert np.asarray(soft).shape == (0,)
        assert np.asarray(kl_rows).shape == (0,) and float(kl_sum) == 0.0
        assert np.asarray(h).shape == (0,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = binary_cross_entropy(np.zeros(0), np.zeros(0))
        assert np.asarray(b).shape == (0,)
        assert float(binary_cross_entropy(np.zeros(0), np.zeros(0), reduction="sum")) == 0.0


def test_extreme_float32_logits():
    logits = np.array(
        [
            [1e4, -1e4, 0.0, 5.0],
            [-1e4, 1e4, 1e4, -1e4],
            [-1e4, -1e4, -1e4, -1e4],
            [1e4, 1e4, 1e4, 1e4],
            [1e4, 9999.0, -1e4, 0.0],
        ],
        dtype=np.float32,
    )
    labels = np.array([1, 2, 3, 0, 1])
    got = cross_entropy(logits, labels)
    assert np.all(np.isfinite(got))
    want = ref.ce_hard(logits, labels, "logits")
    assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert_allclose(got[0], 2e4, rtol=1e-12)
    assert_allclose(got[1], math.log(2.0), rtol=1e-10)
    assert_allclose(got[2:4], [math.log(4.0)] * 2, rtol=1e-10)
    assert_allclose(got[4], math.log1p(math.exp(1.0)), rtol=1e-10)
    # label 0 in row 0 is the argmax: loss ~ exp(-9995), i.e. 0
    assert cross_entropy(logits[:1], np.array([0]))[0] == pytest.approx(0.0, abs=1e-300)
    # soft targets and smoothing stay finite
    target = np.full((5, 4), 0.25)
    got_soft = cross_entropy(logits, target)
    assert np.all(np.isfinite(got_soft))
    assert_allclose(got_soft, ref.ce_soft(logits, target, "logits"), rtol=1e-6)
    got_ls = cross_entropy(logits, labels, label_smoothing=0.1, reduction="mean")
    assert_allclose(float(got_ls), ref.ce_hard(logits, labels, "logits", label_smoothing=0.1,
                                               reduction="mean"), rtol=1e-6)


def test_extreme_float32_logits_kl_entropy_js():
    p = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3.0, 1e4, -1e4]], dtype=np.float32)
    q = np.array([[-1e4, 1e4, 0.0], [0.0, 1.0, 2.0], [3.0, 1e4, 1e4]], dtype=np.float32)
    for fn, want in (
        (lambda: entropy(p), ref.entropy(p, "logits")),
        (lambda: kl_divergence(p, q), ref.kl(p, q, "logits")),
        (lambda: js_divergence(p, q), ref.js(p, q, "logits")),
    ):
        got = fn()
        assert np.all(np.isfinite(got))
        assert_allclose(got, want, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------
# layout, dtype and input hygiene
# --------------------------------------------------------------------------------------


def test_non_contiguous_inputs():
    rng = np.random.default_rng(24)
    big = random_logits(rng, 30, 12)
    pred = big[::2, ::3]  # strided view, (15, 4)
    fortran = np.asfortranarray(random_logits(rng, 15, 4))
    labels_big = rng.integers(0, 4, 30)
    labels = labels_big[::2]
    for x in (pred, fortran):
        check(cross_entropy(x, labels), ref.ce_hard(x, labels, "logits"), np.float64)
        check(kl_divergence(x, fortran[::-1]), ref.kl(x, fortran[::-1], "logits"), np.float64)
        check(entropy(x), ref.entropy(x, "logits"), np.float64)
    soft = random_soft_targets(rng, 15, 4).T.copy().T  # Fortran-ordered target
    check(cross_entropy(pred, soft), ref.ce_soft(pred, soft, "logits"), np.float64)


def test_inputs_not_modified():
    rng = np.random.default_rng(25)
    logits = random_logits(rng, 10, 5)
    probs = softmax(logits, axis=1)
    probs[0, 1] = 0.0
    probs[0] /= probs[0].sum()
    labels = rng.integers(0, 5, 10)
    labels[3] = -100
    w = rng.uniform(size=10)
    copies = [a.copy() for a in (logits, probs, labels, w)]
    cross_entropy(logits, labels, weights=w, reduction="mean", label_smoothing=0.1)
    cross_entropy(probs, labels, kind="probs", eps=1e-3, weights=w, reduction="sum")
    kl_divergence(probs, probs[::-1].copy(), kind="probs")
    entropy(logits)
    for a, b in zip((logits, probs, labels, w), copies):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

ROW3 = r"row 3\b"


def _six_rows(kind="logits"):
    rng = np.random.default_rng(26)
    return as_kind(random_logits(rng, 6, 4), kind, np.float64), np.array([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_logits_rejected(bad, dtype):
    logits, labels = _six_rows()
    logits = logits.astype(dtype)
    logits[3, 2] = bad
    logits[5, 0] = bad  # only the first offending row is reported
    with pytest.raises(ValueError, match=ROW3):
        cross_entropy(logits, labels)
    with pytest.raises(ValueError, match=ROW3):
        entropy(logits)
    with pytest.raises(ValueError, match=ROW3):
        kl_divergence(np.zeros_like(logits), logits)
    with pytest.raises(ValueError, match=ROW3):
        js_divergence(logits, np.zeros_like(logits))
    x = np.zeros(6, dtype=dtype)
    x[3] = bad
    with pytest.raises(ValueError, match=ROW3):
        binary_cross_entropy(x, np.zeros(6))


@pytest.mark.parametrize("bad_label", [4, 99, -1, -101])
def test_label_out_of_range_rejected(bad_label):
    logits, labels = _six_rows()
    labels[3] = bad_label
    labels[4] = 7
    with pytest.raises(ValueError, match=ROW3) as info:
        cross_entropy(logits, labels)
    assert str(bad_label) in str(info.value)


def test_minus_100_rejected_when_ignore_index_changed():
    logits, labels = _six_rows()
    labels[3] = -100  # not the ignore index here
    with pytest.raises(ValueError, match=ROW3):
        cross_entropy(logits, labels, ignore_index=-1)


@pytest.mark.parametrize("kind", ["probs", "log_probs"])
def test_negative_or_unnormalised_probs_rejected(kind):
    probs, labels = _six_rows("probs")
    bad_rows = {
        "negative": np.array([-0.1, 0.6, 0.3, 0.2]),
        "sum_low": np.array([0.2, 0.2, 0.2, 0.39]),
        "sum_high": np.array([0.25, 0.25, 0.25, 0.2505]),
        "nan": np.array([np.nan, 0.5, 0.25, 0.25]),
    }
    for name, row in bad_rows.items():
        if kind == "log_probs" and name == "negative":
            continue
        p = probs.copy()
        p[3] = row
        p[5] = row
        with np.errstate(divide="ignore", invalid="ignore"):
            pred = p if kind == "probs" else np.log(p)
        with pytest.raises(ValueError, match=ROW3):
            cross_entropy(pred, labels, kind=kind)
        with pytest.raises(ValueError, match=ROW3):
            entropy(pred, kind=kind)
        with pytest.raises(ValueError, match=ROW3):
            kl_divergence(pred, as_kind(np.zeros((6, 4)), kind, np.float64), kind=kind)


@pytest.mark.parametrize("kind", ["probs", "log_probs"])
def test_normalisation_tolerance_is_1e_4(kind):
    probs, labels = _six_rows("probs")
    ok = probs.copy()
    ok[3] *= 1.0 + 5e-5  # within 1e-4: accepted and used literally (not renormalised)
    pred = ok if kind == "probs" else np.log(ok)
    got = cross_entropy(pred, labels, kind=kind)
    assert_allclose(got, -np.log(ok[np.arange(6), labels]), rtol=1e-10)
    bad = probs.copy()
    bad[3] *= 1.0 + 3e-4
    pred = bad if kind == "probs" else np.log(bad)
    with pytest.raises(ValueError, match=ROW3):
        cross_entropy(pred, labels, kind=kind)


def test_bce_probs_out_of_range_rejected():
    p = np.full(6, 0.5)
    p[3] = 1.5
    with pytest.raises(ValueError, match=ROW3):
        binary_cross_entropy(p, np.zeros(6), kind="probs")
    p[3] = -0.1
    with pytest.raises(ValueError, match=ROW3):
        binary_cross_entropy(p, np.zeros(6), kind="probs")


def test_shape_mismatch_rejected():
    logits, labels = _six_rows()
    with pytest.raises(ValueError) as info:
        cross_entropy(logits, np.zeros(5, dtype=np.int64))
    assert "6" in str(info.value) and "5" in str(info.value)
    with pytest.raises(ValueError) as info:
        cross_entropy(logits, np.full((6, 3), 1 / 3))
    assert "4" in str(info.value) and "3" in str(info.value)
    with pytest.raises(ValueError):
        cross_entropy(logits, labels, weights=np.ones(5), reduction="mean")
    with pytest.raises(ValueError):
        cross_entropy(logits[0], labels[:1])  # 1-D pred
    with pytest.raises(ValueError):
        kl_divergence(logits, logits[:, :3])
    with pytest.raises(ValueError):
        js_divergence(logits, logits[:5])
    with pytest.raises(ValueError):
        binary_cross_entropy(np.zeros(6), np.zeros(5))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, object])
def test_non_float_pred_dtype_rejected(dtype):
    logits, labels = _six_rows()
    bad = np.round(logits).astype(dtype)
    with pytest.raises(TypeError) as info:
        cross_entropy(bad, labels)
    assert np.dtype(dtype).name in str(info.value)
    with pytest.raises(TypeError):
        entropy(bad)
    with pytest.raises(TypeError):
        kl_divergence(bad, bad)
    with pytest.raises(TypeError):
        binary_cross_entropy(bad[:, 0], np.zeros(6))


def test_float_labels_rejected():
    logits, labels = _six_rows()
    with pytest.raises(TypeError) as info:
        cross_entropy(logits, labels.astype(np.float64))
    assert "float64" in str(info.value)


@pytest.mark.parametrize("fn", ["cross_entropy", "kl", "js", "entropy", "bce"])
def test_unknown_options_rejected(fn):
    logits, labels = _six_rows()
    calls = {
        "cross_entropy": lambda **kw: cross_entropy(logits, labels, **kw),
        "kl": lambda **kw: kl_divergence(logits, logits, **kw),
        "js": lambda **kw: js_divergence(logits, logits, **kw),
        "entropy": lambda **kw: entropy(logits, **kw),
        "bce": lambda **kw: binary_cross_entropy(logits[:, 0], np.zeros(6), **kw),
    }
    call = calls[fn]
    with pytest.raises(ValueError, match="softmaxed"):
        call(kind="softmaxed")
    with pytest.raises(ValueError, match="average"):
        call(reduction="average")
    with pytest.raises(ValueError, match="10"):
        call(base=10)
    if fn == "bce":
        with pytest.raises(ValueError, match="log_probs"):
            call(kind="log_probs")


def test_find_bad_label_flags_every_label_outside_the_classes():
    from xent_kernels import find_bad_label

    labels = np.array([0, 2, 1, 3, -100, -1])
    assert find_bad_label(labels, 3) == 3  # C itself is not a class, with or without ignore_index
    assert find_bad_label(labels[:3], 3) == -1
    assert find_bad_label(np.array([0, -100, 2]), 3, ignore_index=-100) == -1
    assert find_bad_label(np.array([0, -100, -1]), 3, ignore_index=-100) == 2
    assert find_bad_label(np.array([], dtype=np.int64), 3) == -1
