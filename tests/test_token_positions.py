"""A position repeated within a document across the pieces of a token dump (issue #18):
the document table's check when states merge (xent_kernels.token_documents), held to
the obvious truth, a (document, position) pair that np.unique finds twice."""

from __future__ import annotations

import itertools
import pickle
from random import Random

import numpy as np
import pytest
from hypothesis import given, strategies as st

from xent_kernels.hashing import splitmix64
from xent_kernels.mergeable import merge_states
from xent_kernels.tokens import RepeatedPosition, TokenStats, token_stats_partial


def doc_state(docs, positions, source: str = "", logprob=None, into: TokenStats | None = None) -> TokenStats:
    """The state of tokens of documents `docs` at `positions`, read from file `source`."""
    docs, positions = np.asarray(docs, np.int64), np.asarray(positions, np.int64)
    logprob = -np.log1p(positions % 7.0) if logprob is None else np.asarray(logprob, np.float64)
    state, bad, column, reason = token_stats_partial(
        np.zeros(len(docs), np.int64), logprob, positions=positions, doc_hashes=splitmix64(docs), source=source,
        count_nonfinite=True, into=into)
    assert bad == -1, (bad, column, reason)
    return state


def has_repeat(docs: np.ndarray, positions: np.ndarray) -> bool:
    pairs = np.stack([docs, positions], axis=1)
    return len(np.unique(pairs, axis=0)) < len(pairs)


def test_a_document_over_two_shards_merges_and_a_shard_listed_twice_is_found():
    # document 7 has positions 0..99: 0..59 in X (with all of document 8), 60..99 in Y
    x = doc_state([7] * 60 + [8] * 50, [*range(60), *range(50)], "x.parquet")
    y = doc_state([7] * 40, range(60, 100), "y.parquet")
    merged = TokenStats.merge(x, y)
    table = merged.documents
    seven = table.hash == splitmix64(np.array([7]))[0]
    assert (table.tokens[seven].tolist(), table.tokens[~seven].tolist()) == ([100], [50])
    assert (table.first[seven].tolist(), table.last[seven].tolist()) == ([0], [99])
    # the names kept are the files of each document's smallest and largest position
    assert table.sources == ("x.parquet", "y.parquet")
    assert [table.sources[i] for i in (table.first_source[seven][0], table.last_source[seven][0])] == \
        ["x.parquet", "y.parquet"]
    flipped = TokenStats.merge(y, x).documents
    assert (flipped.first_source.tolist(), flipped.last_source.tolist()) == \
        (table.first_source.tolist(), table.last_source.tolist())
    ce = np.log1p(np.arange(100) % 7.0)
    assert merged.finalize().summary["doc_ce_mean"][-1] == pytest.approx(
        np.mean([ce.mean(), ce[:50].mean()]), rel=1e-12)
    # Y listed twice: found in any order and any tree, naming the two files that hold position 99
    copy = doc_state([7] * 40, range(60, 100), "y-copy.parquet")
    for a, b, c in itertools.permutations([x, y, copy]):
        for tree in (lambda: TokenStats.merge(a, b, c), lambda: TokenStats.merge(a, TokenStats.merge(b, c))):
            with pytest.raises(RepeatedPosition) as found:
                tree()
            assert found.value.sources == ("y-copy.parquet", "y.parquet")
    with pytest.raises(RepeatedPosition, match=r"key hash 0x[0-9a-f]{16} has position 99 twice") as found:
        TokenStats.merge(merged, copy)
    assert found.value.sources == ("y-copy.parquet", "y.parquet")


def test_overlapping_dense_parts_are_found_by_counting():
    """No position is the smallest or largest of both parts: the tokens outnumber the
    positions between, and the files named hold the overlap's ends."""
    x = doc_state([7] * 60, range(60), "x.parquet")
    z = doc_state([7] * 45, range(55, 100), "z.parquet")  # 55..59 twice
    with pytest.raises(RepeatedPosition, match="105 scored tokens at positions 0 to 99, so some position twice") as found:
        TokenStats.merge(z, x)
    assert found.value.position == -1 and found.value.sources == ("x.parquet", "z.parquet")
    assert has_repeat(np.full(105, 7), np.r_[0:60, 55:100])


def test_sparse_positions_a_document_listed_twice_is_found_a_hidden_repeat_is_not():
    a = doc_state([3] * 3, [0, 10, 20], "a.parquet")
    with pytest.raises(RepeatedPosition, match="position 0 twice"):
        TokenStats.merge(a, doc_state([3] * 3, [0, 10, 20], "b.parquet"))
    # 10 is in both, but 6 tokens fit in positions 0..30 and the ends differ: the table cannot tell
    assert has_repeat(np.full(6, 3), np.array([0, 10, 20, 5, 10, 30]))
    merged = TokenStats.merge(a, doc_state([3] * 3, [5, 10, 30], "b.parquet"))
    assert merged.documents.tokens.tolist() == [6]


def test_tokens_with_an_infinite_cross_entropy_count_for_the_check_not_for_the_document():
    """A part whose tokens all have a -inf log-prob: no finite token for the per-document
    figures, but its positions are there; the report counts the document once."""
    inf = doc_state([4] * 5, range(5), "a.parquet", logprob=np.full(5, -np.inf))
    with pytest.raises(RepeatedPosition, match="10 scored tokens at positions 0 to 7"):
        TokenStats.merge(inf, doc_state([4] * 5, range(3, 8), "b.parquet"))
    rest = doc_state([4] * 5, range(5, 10), "b.parquet", logprob=[-1.0, -2.0, -3.0, -4.0, -5.0])
    summary = TokenStats.merge(inf, rest).finalize().summary
    assert (summary["documents"][-1], summary["tokens"][-1], summary["n_nonfinite"][-1]) == (1, 5, 5)
    assert summary["doc_ce_mean"][-1] == pytest.approx(3.0, rel=1e-15)
    assert TokenStats.merge(inf).finalize().summary["documents"][-1] == 0


def test_a_batch_folded_twice_into_a_piece_is_found():
    state = doc_state([1, 1, 2], [0, 1, 0], "part-0.parquet")
    with pytest.raises(RepeatedPosition, match=r"position 0 twice") as found:
        doc_state([1, 1, 2], [0, 1, 0], "part-0.parquet", into=state)
    assert found.value.sources == ("part-0.parquet",)
    same = pickle.loads(pickle.dumps(found.value))  # as a Dask worker sends it
    assert str(same) == str(found.value) and same.sources == found.value.sources


@pytest.mark.slow
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_merges_find_a_repeat_exactly_when_positions_are_dense(seed, dense, copied):
    """Documents with consecutive positions (or sparse ones), cut into parts at random,
    a part listed twice (or a random subset of one), merged in a random tree: a found
    repeat is always real, and with consecutive positions every real one is found."""
    rng, random = np.random.default_rng(seed), Random(seed)
    lengths = rng.integers(1, 40, rng.integers(1, 4))  # few documents: each repeat's finding counts
    docs = np.repeat(np.arange(len(lengths)), lengths)
    positions = np.concatenate([rng.integers(0, 5) + (np.arange(n) if dense else np.sort(
        rng.choice(3 * n, n, replace=False))) for n in lengths])
    order = rng.permutation(len(docs))
    parts = [rows for rows in np.array_split(order, rng.integers(1, 6)) if len(rows)]
    if copied:
        twice = parts[rng.integers(len(parts))]
        parts.append(twice if rng.random() < 0.5 else twice[rng.random(len(twice)) < 0.5])
    rows = np.concatenate(parts)
    states = [doc_state(docs[p], positions[p], f"part-{i}") for i, p in enumerate(parts)]
    random.shuffle(states)
    try:
        while len(states) > 1:
            i = random.randrange(len(states) - 1)
            states[i : i + 2] = [merge_states(*states[i : i + 2])]
        found = False
    except RepeatedPosition:
        found = True
    truth = has_repeat(docs[rows], positions[rows])
    assert found <= truth
    if dense:
        assert found == truth
