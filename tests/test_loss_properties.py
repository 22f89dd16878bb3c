"""Property-based tests (hypothesis) for the xent_kernels losses.

Logits stay in [-50, 50] here; the explicit extreme-value tests live in test_losses.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose
from scipy.special import log_softmax, softmax

import reference as ref
from xent_kernels import (
    binary_cross_entropy,
    cross_entropy,
    entropy,
    js_divergence,
    kl_divergence,
)

SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])
KINDS = ["logits", "probs", "log_probs"]
LN2 = math.log(2.0)


@st.composite
def shapes(draw, max_rows=6, max_classes=12):
    return draw(st.integers(1, max_rows)), draw(st.integers(2, max_classes))


def logits_arrays(shape, lo=-50.0, hi=50.0):
    return hnp.arrays(
        np.float64,
        shape,
        elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False),
    )


@st.composite
def prob_rows(draw, shape):
    """Rows of a probability table, with exact zeros allowed (each row keeps some mass)."""
    raw = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.one_of(st.just(0.0), st.floats(1e-3, 1.0)),
        )
    )
    empty = raw.sum(axis=1) == 0
    raw[empty, draw(st.integers(0, shape[1] - 1))] = 1.0
    return raw / raw.sum(axis=1, keepdims=True)


@st.composite
def dist_pair(draw, allow_zeros=True):
    """(p, q, kind): two (n, C) tables of the same kind, plus their probabilities."""
    shape = draw(shapes())
    kind = draw(st.sampled_from(KINDS))
    if kind == "logits" or not allow_zeros or draw(st.booleans()):
        a = draw(logits_arrays(shape))
        b = draw(logits_arrays(shape))
        pa, pb = softmax(a, axis=1), softmax(b, axis=1)
        if kind == "logits":
            return a, b, kind, pa, pb
        if kind == "probs":
            return pa, pb, kind, pa, pb
        return log_softmax(a, axis=1), log_softmax(b, axis=1), kind, pa, pb
    pa = draw(prob_rows(shape))
    pb = draw(prob_rows(shape))
    if kind == "probs":
        return pa, pb, kind, pa, pb
    with np.errstate(divide="ignore"):
        return np.log(pa), np.log(pb), kind, pa, pb


# --------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(dist_pair())
def test_kl_nonnegative(case):
    p, q, kind, _, _ = case
    out = np.asarray(kl_divergence(p, q, kind=kind))
    assert out.shape == (p.shape[0],)
    assert not np.any(np.isnan(out))
    assert np.all(out >= -1e-12), out


@SETTINGS
@given(dist_pair())
def test_kl_matches_reference(case):
    p, q, kind, _, _ = case
    assert_allclose(kl_divergence(p, q, kind=kind), ref.kl(p, q, kind), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(dist_pair())
def test_kl_self_is_zero(case):
    p, _, kind, _, _ = case
    out = np.asarray(kl_divergence(p, p, kind=kind))
    assert_allclose(out, 0.0, atol=1e-12, rtol=0)


@pytest.mark.slow
@SETTINGS
@given(dist_pair())
def test_cross_entropy_is_entropy_plus_kl(case):
    """H(p, q) = H(p) + KL(p || q), with p as a soft target and q as a prediction."""
    p, q, kind, p_probs, _ = case
    h_pq = np.asarray(cross_entropy(q, p_probs, kind=kind))
    h_p = np.asarray(entropy(p, kind=kind))
    d = np.asarray(kl_divergence(p, q, kind=kind))
    assert_allclose(h_pq, h_p + d, rtol=1e-9, atol=1e-9)
    # and the same in bits
    h_pq2 = np.asarray(cross_entropy(q, p_probs, kind=kind, base=2))
    assert_allclose(h_pq2, h_pq / LN2, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------


@st.composite
def logits_with_shift(draw):
    n, c = draw(shapes())
    logits = draw(logits_arrays((n, c)))
    shift = draw(logits_arrays((n, 1), -1e3, 1e3))
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    target = draw(prob_rows((n, c)))
    return logits, shift, labels, target


@pytest.mark.slow
@SETTINGS
@given(logits_with_shift())
def test_ce_invariant_to_row_constant(case):
    logits, shift, labels, target = case
    shifted = logits + shift
    assert_allclose(cross_entropy(shifted, labels), cross_entropy(logits, labels),
                    rtol=1e-9, atol=1e-9)
    assert_allclose(cross_entropy(shifted, target), cross_entropy(logits, target),
                    rtol=1e-9, atol=1e-9)
    assert_allclose(cross_entropy(logits, labels), ref.ce_hard(logits, labels, "logits"),
                    rtol=1e-10, atol=1e-13)


@SETTINGS
@given(logits_with_shift(), st.floats(0.0, 1.0, exclude_max=True))
def test_label_smoothing_is_linear_mix(case, smoothing):
    """CE with smoothing eps = (1 - eps) * CE(y) + eps * mean_c(-log q_c)."""
    logits, _, labels, _ = case
    got = cross_entropy(logits, labels, label_smoothing=smoothing)
    lq = log_softmax(logits, axis=1)
    want = (1 - smoothing) * -lq[np.arange(len(labels)), labels] + smoothing * -lq.mean(axis=1)
    assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(logits_with_shift(), st.sampled_from(KINDS))
def test_hard_labels_equal_one_hot_soft_targets(case, kind):
    logits, _, labels, _ = case
    pred = {"logits": logits, "probs": softmax(logits, axis=1),
            "log_probs": log_softmax(logits, axis=1)}[kind]
    one_hot = np.eye(logits.shape[1])[labels]
    assert_allclose(cross_entropy(pred, labels, kind=kind),
                    cross_entropy(pred, one_hot, kind=kind), rtol=1e-10, atol=1e-12)


@st.composite
def weighted_case(draw):
    n, c = draw(shapes(max_rows=10))
    logits = draw(logits_arrays((n, c)))
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, c - 1)))
    labels[labels == -1] = -100  # some ignored rows
    weights = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0.01, 10.0)))
    return logits, labels, weights


@SETTINGS
@given(weighted_case())
def test_reductions_consistent_with_rows(case):
    logits, labels, weights = case
    rows = np.asarray(cross_entropy(logits, labels))
    keep = labels != -100
    assert np.all(rows[~keep] == 0.0)
    total = float(cross_entropy(logits, labels, weights=weights, reduction="sum"))
    assert_allclose(total, np.sum(weights * rows), rtol=1e-10, atol=1e-12)
    mean = float(cross_entropy(logits, labels, weights=weights, reduction="mean"))
    if keep.any():
        assert_allclose(mean, np.sum(weights * rows) / np.sum(weights[keep]), rtol=1e-10, atol=1e-12)
    else:
        assert math.isnan(mean)
    assert_allclose(rows, ref.ce_hard(logits, labels, "logits"), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------
# JS and entropy
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(dist_pair())
def test_js_symmetric_and_bounded(case):
    p, q, kind, _, _ = case
    pq = np.asarray(js_divergence(p, q, kind=kind))
    qp = np.asarray(js_divergence(q, p, kind=kind))
    assert np.all(np.isfinite(pq))
    assert_allclose(pq, qp, rtol=1e-12, atol=1e-13)
    assert np.all(pq >= -1e-12)
    assert np.all(pq <= LN2 + 1e-12)
    bits = np.asarray(js_divergence(p, q, kind=kind, base=2))
    assert np.all(bits <= 1.0 + 1e-12)
    assert_allclose(pq, ref.js(p, q, kind), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(dist_pair())
def test_entropy_bounded(case):
    p, _, kind, _, _ = case
    c = p.shape[1]
    h = np.asarray(entropy(p, kind=kind))
    assert np.all(h >= -1e-12)
    assert np.all(h <= math.log(c) * (1 + 1e-12))
    h2 = np.asarray(entropy(p, kind=kind, base=2))
    assert np.all(h2 <= math.log2(c) * (1 + 1e-12))
    assert_allclose(h, ref.entropy(p, kind), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 40))
def test_uniform_entropy_is_log_c(n, c):
    p = np.full((n, c), 1.0 / c)
    assert_allclose(entropy(p, kind="probs"), math.log(c), rtol=1e-12)
    assert_allclose(entropy(np.zeros((n, c))), math.log(c), rtol=1e-12)
    assert_allclose(entropy(np.zeros((n, c)), base=2), math.log2(c), rtol=1e-12)


# --------------------------------------------------------------------------------------
# BCE
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(
    hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-50, 50)),
    st.data(),
)
def test_bce_logits_probs_agree_and_match_reference(x, data):
    t = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0.0, 1.0)))
    got = np.asarray(binary_cross_entropy(x, t))
    assert np.all(got >= -1e-12)
    assert_allclose(got, ref.bce(x, t, "logits"), rtol=1e-9, atol=1e-12)
    # BCE(x, t) = BCE(-x, 1 - t)
    assert_allclose(binary_cross_entropy(-x, 1.0 - t), got, rtol=1e-9, atol=1e-12)
    # probabilities away from 0/1, where 1 - sigma is representable
    xs = np.clip(x, -15, 15)
    s = 1.0 / (1.0 + np.exp(-xs))
    assert_allclose(binary_cross_entropy(s, t, kind="probs"), binary_cross_entropy(xs, t),
                    rtol=1e-7, atol=1e-9)
