"""The token state against float64 NumPy written the obvious way, lm-eval's formulas,
torchmetrics' Perplexity semantics, and the merge laws (xent_kernels.tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from support import random_tokens
from xent_kernels.hashing import splitmix64
from xent_kernels.tokens import TokenStats, token_stats_partial


def partial(data, rows=None, k=5, n_buckets=7, **options):
    rows = np.arange(len(data["target"])) if rows is None else rows
    lengths = np.array([len(data["ids"][i]) for i in rows])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    state, bad, column, reason = token_stats_partial(
        data["target"][rows], data["target_logprob"][rows], slice_ids=data["slice"][rows],
        slice_keys=[("a",), ("b",)], positions=data["position"][rows], buckets=data["bucket"][rows],
        target_bytes=data["bytes"][rows], topk_offsets=offsets,
        topk_ids=np.concatenate([data["ids"][i] for i in rows]) if len(rows) else np.zeros(0, np.int64),
        topk_logprobs=np.concatenate([data["lps"][i] for i in rows]) if len(rows) else np.zeros(0),
        doc_hashes=splitmix64(data["doc"][rows]), n_buckets=n_buckets, topk=k, **options)
    assert bad == -1, (bad, column, reason)
    return state


def test_summary_matches_numpy():
    data = random_tokens(0)
    report = partial(data).finalize()
    overall = {name: values[-1] for name, values in report.summary.items()}
    n = len(data["target"])
    ce = -data["target_logprob"]
    assert overall["tokens"] == n
    assert overall["ce_mean"] == pytest.approx(ce.mean(), rel=1e-12)
    assert overall["perplexity"] == pytest.approx(math.exp(ce.mean()), rel=1e-12)
    # lm-eval: bits_per_byte = -sum(loglik) / sum(bytes) / ln 2; byte_perplexity = exp(-sum(loglik) / sum(bytes))
    assert overall["bits_per_byte"] == pytest.approx(ce.sum() / data["bytes"].sum() / math.log(2), rel=1e-12)
    assert overall["byte_perplexity"] == pytest.approx(math.exp(ce.sum() / data["bytes"].sum()), rel=1e-12)
    # rank of the target in the dense distribution (strictly greater others), top-1 and the top-5
    rank = (data["logp"] > data["target_logprob"][:, None]).sum(axis=1) + 1
    assert overall["top1_accuracy"] == pytest.approx((rank == 1).mean(), rel=1e-12)
    assert overall["topk_share"] == pytest.approx((rank <= 5).mean(), rel=1e-12)
    assert overall["share_rank_2_5"] == pytest.approx(((rank >= 2) & (rank <= 5)).mean(), rel=1e-12)
    # every target is listed here (vLLM style), so none is unlisted
    assert overall["share_unlisted"] == 0
    # coarsened entropy: the listed ids plus one tail bin
    expected = []
    for i in range(n):
        p = np.exp(data["lps"][i])
        tail = max(1 - p.sum(), 0.0)
        expected.append(-(p * np.log(p)).sum() - (tail * math.log(tail) if tail > 0 else 0.0))
    assert overall["entropy_lower_bound"] == pytest.approx(np.mean(expected), rel=1e-10)
    full_entropy = -(np.exp(data["logp"]) * data["logp"]).sum(axis=1)
    assert np.all(np.array(expected) <= full_entropy + 1e-12)
    # ECE of the top-1 probability, 15 equal bins
    confidence = np.exp(data["logp"].max(axis=1))
    bins = np.minimum((confidence * 15).astype(int), 14)
    correct = rank == 1
    ece = sum(abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(15)) / n
    assert overall["ece"] == pytest.approx(ece, rel=1e-10)
    # per slice
    for s in (0, 1):
        assert report.summary["ce_mean"][s] == pytest.approx(ce[data["slice"] == s].mean(), rel=1e-12)


def test_per_document_figures_match_numpy():
    """The mean of per-document mean CE; the geometric mean of per-document perplexity
    (inspect_ai's perplexity per sequence) and the arithmetic mean (HF evaluate's
    mean_perplexity: np.mean of exp(mean NLL) per sequence)."""
    data = random_tokens(8)
    report = partial(data).finalize()
    ce = -data["target_logprob"]
    docs = np.unique(data["doc"])
    per_doc = np.array([ce[data["doc"] == d].mean() for d in docs])
    summary = {name: values[-1] for name, values in report.summary.items()}
    assert summary["documents"] == len(docs)
    assert summary["doc_ce_mean"] == pytest.approx(per_doc.mean(), rel=1e-12)
    assert summary["doc_perplexity_geometric"] == pytest.approx(math.exp(per_doc.mean()), rel=1e-12)
    assert summary["doc_perplexity_arithmetic"] == pytest.approx(np.exp(per_doc).mean(), rel=1e-12)
    # per slice, a document's tokens of that slice
    for s in (0, 1):
        rows = data["slice"] == s
        means = [ce[rows & (data["doc"] == d)].mean() for d in np.unique(data["doc"][rows])]
        assert report.summary["doc_ce_mean"][s] == pytest.approx(np.mean(means), rel=1e-12)


def test_bits_report_divides_by_ln2():
    data = random_tokens(1)
    nats = partial(data).finalize("e").summary
    bits = partial(data).finalize(2).summary
    assert bits["ce_mean"][-1] == pytest.approx(nats["ce_mean"][-1] / math.log(2), rel=1e-12)
    assert bits["perplexity"][-1] == pytest.approx(nats["perplexity"][-1], rel=1e-12)
    assert bits["bits_per_byte"][-1] == pytest.approx(nats["bits_per_byte"][-1], rel=1e-12)


@pytest.mark.slow
def test_interval_is_the_delete_one_bucket_jackknife():
    data = random_tokens(2)
    report = partial(data).finalize()
    ce = -data["target_logprob"]
    values = np.array([ce[data["bucket"] != k].mean() for k in range(7)])
    se = math.sqrt(6 / 7 * ((values - values.mean()) ** 2).sum())
    from scipy.stats import t

    half = t.ppf(0.975, 6) * se
    assert report.summary["ce_mean_lo"][-1] == pytest.approx(ce.mean() - half, rel=1e-10)
    assert report.summary["ce_mean_hi"][-1] == pytest.approx(ce.mean() + half, rel=1e-10)


def test_positions_frequency_and_per_token_tables():
    data = random_tokens(3)
    report = partial(data).finalize()
    ce = -data["target_logprob"]
    pos = report.positions
    overall = pos["slice"] == -1
    for start, tokens, mean in zip(pos["position_from"][overall], pos["tokens"][overall], pos["ce_mean"][overall]):
        edges = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        stop = edges[edges.index(start) + 1] if start < 512 else 1 << 30
        rows = (data["position"] >= start) & (data["position"] < stop)
        assert tokens == rows.sum()
        if tokens:
            assert mean == pytest.approx(ce[rows].mean(), rel=1e-12)
    table = report.per_token
    for target, n, mean in zip(table["target"], table["tokens"], table["ce_mean"]):
        assert n == (data["target"] == target).sum()
        assert mean == pytest.approx(ce[data["target"] == target].mean(), rel=1e-12)
    counts = np.bincount(data["target"], minlength=40)
    order = sorted(range(40), key=lambda i: (-counts[i], i))
    freq = report.frequency
    assert list(freq["rank_from"][:2]) == [1, 11]
    top10 = np.isin(data["target"], order[:10])
    assert freq["ce_mean"][0] == pytest.approx(ce[top10].mean(), rel=1e-12)
    assert freq["tokens"].sum() == len(ce)


def test_torchmetrics_perplexity_on_dense_log_probs():
    """torchmetrics' Perplexity: exp of the mean negative log-likelihood of the targets
    over all non-ignored tokens; written as a dump with k = V, the coarsened entropy is
    the full entropy."""
    data = random_tokens(4, n=500, vocab=12, k=12)
    report = partial(data, k=12).finalize()
    probs = np.exp(data["logp"])
    expected = math.exp(-np.log(probs[np.arange(500), data["target"]]).mean())
    assert report.summary["perplexity"][-1] == pytest.approx(expected, rel=1e-12)
    full_entropy = -(probs * data["logp"]).sum(axis=1).mean()
    assert report.summary["entropy_lower_bound"][-1] == pytest.approx(full_entropy, rel=1e-9)


@pytest.mark.slow
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_any_sharding_gives_the_same_report(seed, parts):
    data = random_tokens(seed % 50, n=400)
    whole = partial(data).finalize()
    rng = np.random.default_rng(seed)
    order = rng.permutation(400)
    cuts = np.sort(rng.choice(np.arange(1, 400), parts - 1, replace=False)) if parts > 1 else []
    states = [partial(data, rows) for rows in np.split(order, cuts)]
    merged = TokenStats.merge(*states).finalize()
    for table in ("summary", "positions", "frequency", "per_token"):
        a, b = getattr(whole, table), getattr(merged, table)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-12, equal_nan=True, err_msg=f"{table}.{name}")


def test_merge_is_commutative_and_has_an_identity():
    data = random_tokens(5, n=600)
    a, b = partial(data, np.arange(300)), partial(data, np.arange(300, 600))
    ab, ba = TokenStats.merge(a, b), TokenStats.merge(b, a)
    for name in ("cells", "cells_comp", "ece", "token_sums"):
        assert np.array_equal(getattr(ab, name), getattr(ba, name))
    empty = TokenStats.empty(n_buckets=7, topk=5)
    same = TokenStats.merge(a, empty)
    assert np.array_equal(same.cells, a.cells) and same.slice_keys == a.slice_keys


@pytest.mark.parametrize("change, column, reason", [
    (lambda d: d["target_logprob"].__setitem__(3, np.nan), "target_logprob", "NaN"),
    (lambda d: d["target_logprob"].__setitem__(3, 0.01), "target_logprob", "above 0"),
    (lambda d: d["target_logprob"].__setitem__(3, -np.inf), "target_logprob", "-inf"),
    (lambda d: d["position"].__setitem__(3, -1), "position", "negative position"),
    (lambda d: d["ids"].__setitem__(3, np.array([1, 1, 2])), "topk_ids", "repeated"),
    (lambda d: d["lps"].__setitem__(3, np.array([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6])[: len(d["ids"][3])]),
     "topk_logprobs", "sum above 1"),
])
def test_bad_token_is_named(change, column, reason):
    data = random_tokens(6, n=50)
    change(data)
    lengths = np.array([len(x) for x in data["ids"]])
    data["lps"] = [np.resize(lp, n) for lp, n in zip(data["lps"], lengths)]
    _, bad, col, why = token_stats_partial(
        data["target"], data["target_logprob"], positions=data["position"],
        topk_offsets=np.concatenate([[0], np.cumsum(lengths)]), topk_ids=np.concatenate(data["ids"]),
        topk_logprobs=np.concatenate(data["lps"]))
    assert (bad, col) == (3, column) and reason in why


def test_negative_infinity_is_counted_when_asked():
    data = random_tokens(7, n=50)
    data["target_logprob"][[4, 9]] = -np.inf
    state, bad, _, _ = token_stats_partial(data["target"], data["target_logprob"], positions=data["position"],
                                           count_nonfinite=True)
    assert bad == -1
    report = state.finalize()
    assert report.summary["n_nonfinite"][-1] == 2 and report.summary["tokens"][-1] == 48


def test_sentinel_entries_are_absent():
    """OpenAI's -9999.0 in a top-k list means 'absent': the row reads as if it were not there."""
    target = np.array([2]); lp = np.array([-0.5])
    with_sentinel = token_stats_partial(target, lp, positions=np.array([0]), topk_offsets=np.array([0, 3]),
                                        topk_ids=np.array([2, 7, 7]), topk_logprobs=np.array([-0.5, -1.5, -9999.0]))[0]
    without = token_stats_partial(target, lp, positions=np.array([0]), topk_offsets=np.array([0, 2]),
                                  topk_ids=np.array([2, 7]), topk_logprobs=np.array([-0.5, -1.5]))[0]
    assert np.array_equal(with_sentinel.cells, without.cells)


def test_a_position_twice_in_a_document_is_named_at_its_second_row():
    positions = np.array([0, 1, 2, 0, 1, 1, 3])
    docs = splitmix64(np.array([5, 5, 5, 6, 6, 5, 6]))  # document 5 has position 1 at rows 1 and 5
    _, bad, column, reason = token_stats_partial(np.zeros(7, np.int64), np.full(7, -1.0), positions=positions,
                                                 doc_hashes=docs)
    assert (bad, column) == (5, "position") and "already has" in reason
    fine = token_stats_partial(np.zeros(7, np.int64), np.full(7, -1.0), positions=np.arange(7), doc_hashes=docs)
    assert fine[1] == -1


def test_folding_batches_into_one_state_gives_the_merge_of_their_states():
    """A piece folds its batches into one state (into=): the report equals the merge of
    one state per batch, also when a later batch brings a new slice or a larger id."""
    data = random_tokens(9, n=900)
    order = np.argsort(data["slice"], kind="stable")  # the first batch holds slice 0 only
    batches = np.array_split(order, 3)
    data["target"][batches[2][-1]] = 39  # the largest id comes last
    states = [partial(data, rows) for rows in batches]
    folded = None
    for rows in batches:
        folded = partial(data, rows, into=folded)
    merged = TokenStats.merge(*states).finalize()
    whole = TokenStats.merge(folded).finalize()
    for table in ("summary", "positions", "frequency", "per_token"):
        for name, values in getattr(merged, table).items():
            np.testing.assert_allclose(getattr(whole, table)[name], values, rtol=1e-12, equal_nan=True,
                                       err_msg=f"{table}.{name}")


def test_predicted_top1_counts_against_numpy():
    # the predicted top-1 id of a token: the best of its listed ids and its target (ties: the smallest id)
    data = random_tokens(31, n=800)
    offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in data["ids"]])])
    state, bad, _, _ = token_stats_partial(
        data["target"], data["target_logprob"], positions=data["position"], topk_offsets=offsets,
        topk_ids=np.concatenate(data["ids"]), topk_logprobs=np.concatenate(data["lps"]))
    assert bad == -1
    expected = np.bincount([ids[np.argmax(lps)] for ids, lps in zip(data["ids"], data["lps"])],
                           minlength=state.vocab)
    assert np.array_equal(state.token_top1, expected)
