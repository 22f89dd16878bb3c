"""Two models' log-probs of the same tokens (xent_kernels.token_pairs): every figure
against float64 numpy written the obvious way on dense distributions, the KL lower
bound against the true KL, the percentiles against numpy's, sharding and merging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy.special import log_softmax, rel_entr

from support import two_token_models
from xent_kernels.token_pair_report import KL_QUANTILES, PERCENTILE_ERROR, TokenPairReport
from xent_kernels.token_pair_report import KL_BINS, KL_FLOOR, kl_quantiles
from xent_kernels.token_pairs import TokenPairStats, kl_bin, token_pairs_partial


def state_of(m, rows=slice(None), **options):
    take = np.arange(len(m["target"]))[rows]

    def lists(topk):
        offsets, ids, lps = topk
        starts, stops = offsets[take], offsets[take + 1]
        new = np.concatenate([[0], np.cumsum(stops - starts)])
        index = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(take) else np.zeros(0, int)
        return new, ids[index], lps[index]

    n = len(m["target"])
    return token_pairs_partial(
        m["target"][take], m["teacher"][take, m["target"][take]] if n else [],
        m["student"][take, m["target"][take]], positions=m["position"][take], frequency_bucket=m["frequency"][take],
        buckets=m["bucket"][take], slice_ids=m["slice"][take], slice_keys=[("a",), ("b",)],
        target_bytes=m["bytes"][take], baseline_topk=lists(m["teacher_topk"]), candidate_topk=lists(m["student_topk"]),
        position_edges=(0, 1, 2, 4, 8, 16, 32), frequency_edges=(1, 2, 3), n_buckets=7, **options)


def reference_kl(m):
    """Per token KL_c(teacher‖student) and the reverse, from the dense log-probs: the
    known ids (listed on both sides, and the target) plus one tail bin."""
    n = len(m["target"])
    forward, reverse, mass_p, mass_q, agree = (np.zeros(n) for _ in range(5))
    for i in range(n):
        t_off, t_ids, _ = m["teacher_topk"]
        s_off, s_ids, _ = m["student_topk"]
        known = sorted((set(t_ids[t_off[i]:t_off[i + 1]]) & set(s_ids[s_off[i]:s_off[i + 1]])) | {m["target"][i]})
        p, q = np.exp(m["teacher"][i, known]), np.exp(m["student"][i, known])
        p = np.append(p, max(1 - p.sum(), 0.0))
        q = np.append(q, max(1 - q.sum(), 0.0))
        forward[i], reverse[i] = rel_entr(p, q).sum(), rel_entr(q, p).sum()
        mass_p[i], mass_q[i] = p[:-1].sum(), q[:-1].sum()
        listed_t, listed_s = t_ids[t_off[i]:t_off[i + 1]], s_ids[s_off[i]:s_off[i + 1]]
        top_t = listed_t[np.argmax(m["teacher"][i, listed_t])]
        top_s = listed_s[np.argmax(m["student"][i, listed_s])]
        agree[i] = top_t == top_s
    return forward, reverse, mass_p, mass_q, agree


def overall(report: TokenPairReport) -> dict:
    row = np.flatnonzero((report.rows["slice"] == -1) & (report.rows["scope"] == "all"))[0]
    return {name: values[row] for name, values in report.rows.items()}


def test_every_figure_against_numpy():
    m = two_token_models(1)
    got = overall(state_of(m).finalize())
    n = len(m["target"])
    ce_t = -m["teacher"][np.arange(n), m["target"]]
    ce_s = -m["student"][np.arange(n), m["target"]]
    forward, reverse, mass_p, mass_q, agree = reference_kl(m)
    assert got["tokens"] == n and got["listed_tokens"] == n and got["kl_tokens"] == n
    assert_allclose(got["ce_mean_baseline"], ce_t.mean(), rtol=1e-12)
    assert_allclose(got["ce_mean_diff"], ce_s.mean() - ce_t.mean(), rtol=1e-12)
    assert_allclose(got["perplexity_diff"], np.exp(ce_s.mean()) - np.exp(ce_t.mean()), rtol=1e-12)
    assert_allclose(got["bits_per_byte_candidate"], ce_s.sum() / np.log(2) / m["bytes"].sum(), rtol=1e-12)
    top1_t = np.argmax(m["teacher"], axis=1) == m["target"]
    top1_s = np.argmax(m["student"], axis=1) == m["target"]
    assert_allclose(got["top1_accuracy_diff"], top1_s.mean() - top1_t.mean(), rtol=1e-12)
    assert got["wins"] == (ce_s < ce_t).sum() and got["losses"] == (ce_s > ce_t).sum()
    assert_allclose(got["target_p_diff"], (np.exp(-ce_s) - np.exp(-ce_t)).mean(), rtol=1e-10)
    assert_allclose(got["kl_lower_bound_mean"], forward.mean(), rtol=1e-12)
    assert_allclose(got["kl_lower_bound_reverse_mean"], reverse.mean(), rtol=1e-12)
    assert_allclose(got["kl_lower_bound_max"], forward.max(), rtol=1e-12)
    assert_allclose(got["baseline_known_mass"], mass_p.mean(), rtol=1e-12)
    assert_allclose(got["candidate_known_mass"], mass_q.mean(), rtol=1e-12)
    assert_allclose(got["top1_agreement"], agree.mean(), rtol=1e-12)
    for name, q in KL_QUANTILES.items():
        exact = np.quantile(forward, q, method="inverted_cdf")
        assert abs(got[f"kl_lower_bound_{name}"] - exact) <= PERCENTILE_ERROR * exact + KL_FLOOR


def test_the_bound_is_below_the_true_kl_and_equal_with_whole_lists():
    m = two_token_models(2, n=400)
    forward, _, _, _, _ = reference_kl(m)
    true = rel_entr(np.exp(m["teacher"]), np.exp(m["student"])).sum(axis=1)
    assert (forward <= true + 1e-12).all() and (forward < true - 1e-6).any()
    whole = two_token_models(2, n=400, k=30)  # k = V: both lists are the whole vocabulary
    got = overall(state_of(whole).finalize())
    assert_allclose(got["kl_lower_bound_mean"], true.mean(), rtol=1e-10)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 12), st.integers(1, 12))
def test_kl_bound_never_above_the_kl(seed, vocab, k):
    m = two_token_models(seed, n=20, vocab=vocab, k=min(k, vocab), docs=3)
    state = state_of(m)
    true = rel_entr(np.exp(m["teacher"]), np.exp(m["student"])).sum(axis=1)
    assert state.kl_max.max() <= true.max() * (1 + 1e-12) + 1e-15
    kl_sum = (state.cells + state.cells_comp)[..., 13].sum()
    assert kl_sum <= true.sum() * (1 + 1e-12) + 1e-15


def test_paired_interval_is_the_jackknife_over_document_buckets():
    m = two_token_models(3)
    got = overall(state_of(m).finalize(level=0.9))
    n = len(m["target"])
    d = -m["student"][np.arange(n), m["target"]] + m["teacher"][np.arange(n), m["target"]]
    leave_out = np.array([d[m["bucket"] != b].mean() for b in range(7)])
    se = np.sqrt(6 / 7 * ((leave_out - leave_out.mean()) ** 2).sum())
    from scipy.stats import t

    half = t.ppf(0.95, 6) * se
    assert_allclose([got["ce_mean_diff_lo"], got["ce_mean_diff_hi"]], [d.mean() - half, d.mean() + half], rtol=1e-10)


def test_same_report_for_any_sharding():
    m = two_token_models(4)
    whole = state_of(m).finalize()
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(len(m["target"]), 5, replace=False))
    parts = [state_of(m, slice(a, b)) for a, b in zip([0, *cuts], [*cuts, len(m["target"])])]
    merged = TokenPairStats.merge(*reversed(parts)).finalize()
    for name, values in whole.rows.items():
        if values.dtype == object:
            assert list(values) == list(merged.rows[name]), name
        else:
            assert_allclose(merged.rows[name], values, rtol=1e-12, atol=1e-15, err_msg=name)
    for name, values in whole.per_token.items():
        assert_allclose(merged.per_token[name], values, rtol=1e-12, atol=1e-15, err_msg=name)


def test_infinite_log_prob_is_left_out_and_counted():
    m = two_token_models(5, n=50)
    m["student"][3, m["target"][3]] = -np.inf
    state = state_of(m)
    report = state.finalize()
    assert report.left_out[-1] == 1 and overall(report)["tokens"] == 49


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-12, 1e5)), min_size=1, max_size=300))
def test_percentiles_within_the_stated_bound(values):
    values = np.array(values)
    hist = np.bincount([kl_bin(v) for v in values], minlength=KL_BINS)
    got = kl_quantiles(hist, values.max(), tuple(KL_QUANTILES.values()))
    for j, q in enumerate(KL_QUANTILES.values()):
        exact = np.quantile(values, q, method="inverted_cdf")
        if exact >= 1e4:  # above the last edge: the largest value stands for it
            assert got[j] == values.max()
            continue
        assert abs(got[j] - exact) <= PERCENTILE_ERROR * exact * (1 + 1e-9) + KL_FLOOR, (q, got[j], exact)


def test_empty_is_the_identity():
    m = two_token_models(6, n=300)
    state = state_of(m)
    empty = TokenPairStats.empty(**state.options())
    merged = TokenPairStats.merge(state, empty)
    assert np.array_equal(merged.cells, state.cells) and np.array_equal(merged.hist_position, state.hist_position)


@pytest.mark.parametrize("value", [0.0, 5e-10, 1e-9, 3.3e-5, 1.0, 9999.0, 1e4, np.inf])
def test_kl_bin_edges(value):
    from xent_kernels.token_pair_report import KL_EDGES

    b = kl_bin(value)
    if value < KL_FLOOR:
        assert b == 0
    elif value >= KL_EDGES[-1]:
        assert b == KL_BINS - 1
    else:
        assert KL_EDGES[b - 1] * (1 - 1e-12) <= value < KL_EDGES[b] * (1 + 1e-12)


def test_merge_is_commutative_bit_for_bit_and_associative():
    m = two_token_models(7, n=600)
    a, b, c = (state_of(m, part) for part in (slice(0, 200), slice(200, 450), slice(450, 600)))
    ab, ba = TokenPairStats.merge(a, b), TokenPairStats.merge(b, a)
    for name in ("cells", "cells_comp", "hist_position", "hist_frequency", "kl_max", "token_sums", "token_base"):
        assert np.array_equal(getattr(ab, name), getattr(ba, name)), name
    left, right = TokenPairStats.merge(ab, c), TokenPairStats.merge(a, TokenPairStats.merge(b, c))
    assert_allclose(left.cells + left.cells_comp, right.cells + right.cells_comp, rtol=1e-15, atol=0)
    assert np.array_equal(left.hist_position, right.hist_position)


def test_the_two_known_wrong_top_k_formulas_give_other_answers():
    """What people compute from top-k lists instead, on the same dense tokens: the plain
    top-k sum goes negative (volcengine/verl#7855 clamped it to 0), renormalising both
    sides over the top-k is 0 at k = 1 whatever the models, and renormalising the teacher
    but not the student (AI-Hypercomputer/maxtext#4056) overshoots the true KL, so it
    bounds nothing. The bound here stays within [0, KL] on every token."""
    m = two_token_models(8, n=400, k=1)
    n = len(m["target"])
    p, q = np.exp(m["teacher"]), np.exp(m["student"])
    true = rel_entr(p, q).sum(axis=1)
    ours, _, _, _, _ = reference_kl(m)
    top = np.argsort(-m["teacher"], axis=1)[:, :5]  # the teacher's top 5
    p_top, q_top = np.take_along_axis(p, top, 1), np.take_along_axis(q, top, 1)
    sharper = np.exp(log_softmax(1.6 * m["teacher"], axis=1))  # a student surer of the teacher's top tokens
    plain = rel_entr(p_top, np.take_along_axis(sharper, top, 1)).sum(axis=1)
    mixed = rel_entr(p_top / p_top.sum(axis=1, keepdims=True), q_top).sum(axis=1)
    p1, q1 = p[np.arange(n), top[:, 0]], q[np.arange(n), top[:, 0]]
    both_at_k1 = rel_entr(p1 / p1, q1 / q1)
    assert (plain < 0).any()
    assert (mixed > true + 1e-9).any()
    assert (both_at_k1 == 0).all() and (true > 1e-3).all()
    assert (ours >= 0).all() and (ours <= true + 1e-12).all() and (ours > 0).all()
    state = state_of(m)
    assert_allclose(overall(state.finalize())["kl_lower_bound_mean"], ours.mean(), rtol=1e-12)


def _coverage(reps: int, iid: bool) -> float:
    """Share of `reps` simulated comparisons whose 95% interval of the token-weighted ΔCE
    covers the truth, with a per-document effect on the difference (tokens of a document
    correlated); `iid`: each token its own bucket, as if tokens were independent."""
    rng = np.random.default_rng(12345 + iid)
    covered = 0
    for _ in range(reps):
        lengths = rng.integers(10, 90, 120)
        doc = np.repeat(np.arange(len(lengths)), lengths)
        n = len(doc)
        effect = rng.normal(0, 0.15, len(lengths))[doc]
        diff = 0.05 + effect + rng.normal(0, 0.05, n)
        base = -rng.uniform(2, 4, n)
        buckets = rng.integers(0, 20, n) if iid else doc % 20
        state = token_pairs_partial(np.zeros(n, np.int64), base, base - diff, positions=np.zeros(n, np.int64),
                                    frequency_bucket=np.zeros(n, np.int64), buckets=buckets, n_buckets=20)
        row = overall(state.finalize())
        covered += row["ce_mean_diff_lo"] <= 0.05 <= row["ce_mean_diff_hi"]
    return covered / reps


@pytest.mark.slow
def test_paired_intervals_over_document_buckets_cover_where_iid_ones_do_not():
    documents, iid = _coverage(500, iid=False), _coverage(500, iid=True)
    assert 0.92 <= documents <= 0.98, documents
    assert iid < 0.8, iid  # token buckets ignore the documents' effect: far too narrow
