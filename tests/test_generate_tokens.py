"""flows.generate.tokens: synthetic language-model token dumps (issue #18), read back from
real Parquet files with plain pyarrow and numpy: the column contract, determinism, the two
layouts and any sharding holding the same tokens, the top-k invariants, the data model's
shape (Zipf targets, correlated documents, position and frequency effects), the shift
of the second model (to every other token, or to the first model's head) and its true KL,
which `xent compare --kind tokens` is held to."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import rel_entr

import flows
from doc_blocks import marked_blocks
from flows.cli.commands import main
from flows.generate import TokenDump, generate_token_dump
from flows.generate.token_shift import shift_kl, shift_tokens
from flows.generate.tokens import TARGET_OMITTED_SHARE, TOKEN_LAYOUTS
from flows.inputs.integrity import inspect_integrity
from support import assert_same_report
from xent_kernels.token_pair_report import PERCENTILE_ERROR

TOKEN_COLUMNS = ("target", "target_logprob", "topk_ids", "topk_logprobs", "target_bytes", "true_kl")


def gen(root, name="dump", **kwargs) -> TokenDump:
    kwargs.setdefault("tokens", 20_000)
    kwargs.setdefault("shards", 3)
    return generate_token_dump(root / name, **kwargs)


def read_table(dump: TokenDump) -> pa.Table:
    """Every shard, in file order."""
    return pa.concat_tables([pq.read_table(path) for path in dump.files])


def token_rows(dump: TokenDump) -> pa.Table:
    """The dump as token rows, in file order: a documents dump's lists exploded."""
    table = read_table(dump)
    if dump.layout == "token_rows":
        return table
    lengths = pc.list_value_length(table.column("target")).to_numpy()
    first = np.cumsum(lengths) - lengths
    columns = {
        "doc_id": pa.array(np.repeat(table.column("doc_id").to_numpy(), lengths)),
        "position": pa.array((np.arange(lengths.sum()) - np.repeat(first, lengths)).astype(np.int32)),
    }
    for name in TOKEN_COLUMNS:
        if name in table.column_names:
            columns[name] = pc.list_flatten(table.column(name))
    repeat = pa.array(np.repeat(np.arange(table.num_rows), lengths))
    for name in dump.slice_columns:
        columns[name] = table.column(name).take(repeat)
    return pa.table(columns)


def by_key(table: pa.Table) -> pa.Table:
    return table.sort_by([("doc_id", "ascending"), ("position", "ascending")])


def cross_entropy(table: pa.Table) -> np.ndarray:
    return -table.column("target_logprob").to_numpy().astype(np.float64)


def row_lists(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entries per row, ids, float64 logprobs) of the top-k lists, concatenated."""
    ids = table.column("topk_ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy()
    logprobs = pc.list_flatten(table.column("topk_logprobs")).to_numpy().astype(np.float64)
    return lengths, pc.list_flatten(ids).to_numpy(), logprobs


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> pa.Table:
    """200k tokens with top-20 lists, for the statistical checks."""
    dump = generate_token_dump(tmp_path_factory.mktemp("big"), tokens=200_000, topk=20, shards=2)
    return read_table(dump)


@pytest.mark.parametrize("layout", ["token_rows", "documents"])
def test_columns_types_and_checksums(tmp_path, layout):
    dump = gen(tmp_path, layout=layout, topk=5, slices={"source": ["web", "code"], "domain": ["a", "b", "c"]})
    assert dump.tokens == 20_000 and dump.layout == layout and dump.vocab_size == 32_000 and dump.topk == 5
    assert [path.rsplit("/", 1)[1] for path in dump.files] == [f"part-0000{k}.parquet" for k in range(3)]
    schema = pq.read_schema(dump.files[0])
    token_types = {"target": pa.int32(), "target_logprob": pa.float32(), "topk_ids": pa.list_(pa.int32()),
                   "topk_logprobs": pa.list_(pa.float32()), "target_bytes": pa.int32()}
    if layout == "token_rows":
        expected = {"doc_id": pa.int64(), "position": pa.int32(), **token_types}
    else:
        expected = {"doc_id": pa.int64(), **{name: pa.list_(t) for name, t in token_types.items()},
                    "n_bytes": pa.int64(), "n_words": pa.int64()}
    expected.update(source=pa.string(), domain=pa.string())
    assert {name: schema.field(name).type for name in schema.names} == expected
    table = read_table(dump)
    assert len(token_rows(dump)) == 20_000
    assert len(np.unique(table.column("doc_id").to_numpy())) == dump.documents
    for path in dump.files:
        parquet = pq.ParquetFile(path)
        assert inspect_integrity(parquet, path, parquet.schema_arrow.names, {})


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first, again = gen(tmp_path, "a", topk=3), gen(tmp_path, "b", topk=3)
    other = gen(tmp_path, "c", topk=3, seed=1)
    for x, y in zip(first.files, again.files):
        assert open(x, "rb").read() == open(y, "rb").read()
    assert not read_table(first).equals(read_table(other))


def test_both_layouts_hold_the_same_tokens(tmp_path):
    for shuffle in (False, True):
        rows = gen(tmp_path, f"rows{shuffle}", topk=4, shuffle=shuffle)
        documents = gen(tmp_path, f"docs{shuffle}", topk=4, layout="documents", shuffle=shuffle)
        assert rows.documents == documents.documents
        if not shuffle:  # the same file order too
            assert token_rows(documents).equals(token_rows(rows))
        assert by_key(token_rows(documents)).equals(by_key(token_rows(rows)))


@pytest.mark.parametrize("layout", ["token_rows", "documents"])
def test_shards_and_shuffle_only_reorder(tmp_path, layout):
    base = by_key(token_rows(gen(tmp_path, "base", layout=layout, shards=1, topk=3)))
    for shards in (2, 5):
        for shuffle in (False, True):
            dump = gen(tmp_path, f"s{shards}{shuffle}", layout=layout, shards=shards, shuffle=shuffle, topk=3)
            assert len(dump.files) == shards
            rows = token_rows(dump)
            assert by_key(rows).equals(base)
            keys = rows.column("doc_id").to_numpy() * 4096 + rows.column("position").to_numpy()
            assert (np.diff(keys) > 0).all() != shuffle  # unshuffled files are in token order
    shuffled = gen(tmp_path, "spread", layout=layout, shards=4, shuffle=True)
    per_file = [set(pq.read_table(path, columns=["doc_id"]).column("doc_id").to_numpy()) for path in shuffled.files]
    if layout == "token_rows":  # a document's tokens are scattered over the shards
        assert len(per_file[0] & per_file[1]) > 0
    else:  # each document whole in one shard
        assert sum(len(ids) for ids in per_file) == shuffled.documents


def test_fewer_tokens_are_a_prefix(tmp_path):
    small, large = gen(tmp_path, "small", tokens=3_001, topk=3), gen(tmp_path, "large", topk=3)
    assert token_rows(small).equals(token_rows(large).slice(0, 3_001))
    lengths = np.bincount(token_rows(small).column("doc_id").to_numpy())
    assert lengths.sum() == 3_001 and (lengths[:-1] >= 8).all() and (lengths <= 4096).all()


def test_empty_dump_and_empty_shards(tmp_path):
    empty = gen(tmp_path, "empty", tokens=0, topk=2)
    assert empty.documents == 0 and len(empty.files) == 3 and len(read_table(empty)) == 0
    sparse = gen(tmp_path, "sparse", tokens=300, shards=6, layout="documents", topk=2)
    assert sum(pq.read_metadata(path).num_rows for path in sparse.files) == sparse.documents
    assert len(token_rows(sparse)) == 300


@pytest.mark.parametrize("k,vocab,shift,head", [(6, 1_000, 0.0, None), (6, 1_000, 1.0, None), (6, 1_000, 1.0, 4),
                                                (48, 50, 0.0, None), (48, 50, 2.0, None),
                                                pytest.param(48, 50, 2.0, 20, marks=pytest.mark.slow)])
def test_top_k_invariants(tmp_path, k, vocab, shift, head):
    dump = gen(tmp_path, topk=k, vocab_size=vocab, shift=shift, shift_head=head)
    table = read_table(dump)
    target = table.column("target").to_numpy()
    target_logprob = table.column("target_logprob").to_numpy().astype(np.float64)
    assert (target_logprob <= 0).all() and np.isfinite(target_logprob).all()
    assert ((target >= 0) & (target < vocab)).all()
    lengths, ids, logprobs = row_lists(table)
    assert set(np.unique(lengths)) == {k, k + 1}
    assert (logprobs <= 0).all() and np.isfinite(logprobs).all()
    rows = np.repeat(np.arange(len(table)), lengths)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # Distinct ids within a row.
    order = np.lexsort((ids, rows))
    assert not ((np.diff(ids[order]) == 0) & (np.diff(rows[order]) == 0)).any()
    # A tail mass remains.
    assert (np.add.reduceat(np.exp(logprobs), starts) < 1.0).all()
    # Listed in non-increasing order.
    same_row = np.diff(rows) == 0
    assert (np.diff(logprobs)[same_row] <= 0).all()
    # The target's entry, where listed, is its logprob; k + 1 entries always hold it, last.
    is_target = ids == target[rows]
    listed = np.add.reduceat(is_target.astype(np.int64), starts) == 1
    assert_array_equal(logprobs[is_target], target_logprob[rows[is_target]])
    assert listed[lengths == k + 1].all() and is_target[ends[lengths == k + 1] - 1].all()
    # A stated share of the rows whose target is outside the top k lists the top k only.
    outside = (lengths == k + 1) | ~listed
    top1 = (ids[starts] == target).mean()
    if vocab == 1_000:  # enough rows outside the top k
        assert outside.sum() > 1_000 and abs((~listed).sum() / outside.sum() - TARGET_OMITTED_SHARE) < 0.02
        assert (0.4 <= top1 <= 0.6) if shift == 0 else top1 < 0.4


def test_bytes_and_words(tmp_path):
    dump = gen(tmp_path, layout="documents")
    table = read_table(dump)
    rows = token_rows(dump)
    target, token_bytes = rows.column("target").to_numpy(), rows.column("target_bytes").to_numpy()
    assert ((token_bytes >= 1) & (token_bytes <= 12)).all() and 3.0 < token_bytes.mean() < 5.0
    first_bytes = np.full(32_000, -1)
    first_bytes[target] = token_bytes
    assert_array_equal(first_bytes[target], token_bytes)  # a function of the id
    sums = np.array([sum(x) for x in table.column("target_bytes").to_pylist()])
    extra = table.column("n_bytes").to_numpy() - sums
    assert set(np.unique(extra)) == {0, 1, 2, 3}
    bytes_per_word = table.column("n_bytes").to_numpy() / table.column("n_words").to_numpy()
    assert ((bytes_per_word > 4.0) & (bytes_per_word < 6.0)).all()
    no_bytes = gen(tmp_path, "plain", layout="documents", with_bytes=False)
    assert not {"target_bytes", "n_bytes", "n_words"} & set(pq.read_schema(no_bytes.files[0]).names)


@pytest.mark.slow
def test_targets_follow_zipf(big):
    target = big.column("target").to_numpy()
    counts = np.sort(np.bincount(target, minlength=32_000))[::-1]
    zipf = np.arange(1, 32_001) ** -1.1
    zipf /= zipf.sum()
    assert_allclose(counts[:10] / len(target), zipf[:10], rtol=0.1)
    assert_allclose(counts[:1000].sum() / len(target), zipf[:1000].sum(), rtol=0.02)
    # Ids are a permutation of frequency ranks: the most frequent ids are not 0, 1, 2, ...
    top = np.argsort(np.bincount(target, minlength=32_000))[::-1][:10]
    assert set(top) != set(range(10))


def test_difficulty_effects(big):
    ce = cross_entropy(big)
    assert 2.0 < ce.mean() < 3.0
    doc = big.column("doc_id").to_numpy()
    lengths = np.bincount(doc)
    long_documents = np.flatnonzero(lengths >= 50)  # long enough for a mean

    def between_document_variance(values):
        sums = np.bincount(doc, weights=values, minlength=len(lengths))
        return (sums[long_documents] / lengths[long_documents]).var()

    iid = np.random.default_rng(0).permutation(ce)  # the same tokens without their documents
    assert between_document_variance(ce) > 3 * between_document_variance(iid)
    position = big.column("position").to_numpy()
    assert ce[position < 4].mean() > ce[position >= 64].mean() + 1.0
    target = big.column("target").to_numpy()
    counts = np.bincount(target)
    rank = np.argsort(np.argsort(-counts, kind="stable"), kind="stable")[target]
    assert ce[rank >= 1000].mean() > ce[rank < 10].mean() + 1.0


@pytest.mark.slow
def test_shift_moves_the_target_logprob_as_documented(tmp_path):
    first, second = gen(tmp_path, "first", topk=5), gen(tmp_path, "second", topk=5, shift=0.5)
    a, b = read_table(first), read_table(second)
    for name in ("doc_id", "position", "target", "target_bytes", "source"):
        assert a.column(name).equals(b.column(name))
    t1, t2 = a.column("target_logprob").to_numpy().astype(float), b.column("target_logprob").to_numpy().astype(float)
    drop = t1 - t2
    assert (drop >= -1e-5).all() and abs(drop.mean() - 0.5) < 0.03
    # Every other token's logprob rises by log((1 - p2) / (1 - p1)), the same within a row.
    rise = np.log(-np.expm1(t2)) - np.log(-np.expm1(t1))
    lengths1, ids1, lp1 = row_lists(a)
    lengths2, ids2, lp2 = row_lists(b)
    starts1, starts2 = np.cumsum(lengths1) - lengths1, np.cumsum(lengths2) - lengths2
    target = a.column("target").to_numpy()
    for row in range(0, len(a), 7):
        one = dict(zip(ids1[starts1[row]:starts1[row] + lengths1[row]], lp1[starts1[row]:starts1[row] + lengths1[row]]))
        two = dict(zip(ids2[starts2[row]:starts2[row] + lengths2[row]], lp2[starts2[row]:starts2[row] + lengths2[row]]))
        for token in (one.keys() & two.keys()) - {target[row]}:
            assert_allclose(two[token] - one[token], rise[row], atol=2e-6 + 1e-6 * abs(one[token]))
    unshifted = gen(tmp_path, "zero", topk=5, shift=0.0)
    for x, y in zip(first.files, unshifted.files):
        assert open(x, "rb").read() == open(y, "rb").read()


def test_the_shift_kl_is_the_relative_entropy_of_the_construction():
    """The closed form of the module docstring against scipy's rel_entr summed over dense
    float64 distributions built the same way: q_t = p_t exp(-s), every other q_j = c p_j."""
    rng = np.random.default_rng(7)
    n, vocab = 500, 6
    p = rng.dirichlet(np.ones(vocab), size=n)
    target = rng.integers(0, vocab, n)
    s = np.concatenate([[0.0], 10.0 ** rng.uniform(-2, 0.7, n - 1)])  # 0, and 0.01 to 5 nats
    rows = np.arange(n)
    p_t = p[rows, target]
    c = (1 - p_t * np.exp(-s)) / (1 - p_t)
    q = p * c[:, None]
    q[rows, target] = p_t * np.exp(-s)
    assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    reference = rel_entr(p, q).sum(axis=1)
    assert_allclose(p_t * s - (1 - p_t) * np.log(c), reference, rtol=1e-8, atol=1e-15)
    kl = shift_kl(np.log(p_t), s)
    assert_allclose(kl, reference, rtol=1e-8, atol=1e-15)
    assert kl[0] == 0.0 and (kl[1:] > 0).all()


@pytest.mark.parametrize("vocab,head", [(6, 2), (6, 4), (6, 6), (40, 3), (40, 25)])
def test_the_head_shift_is_its_construction_and_true_kl_its_relative_entropy(vocab, head):
    """shift_tokens with a head m, on dense float64 distributions whose column j is rank j + 1:
    the target falls by the drop, the tokens of ranks 1 .. m but the target are c_H times
    likelier and the others keep their log-probs bitwise, the result sums to 1, and true_kl is
    scipy's rel_entr summed, as is the closed form p_t s_t - P_H ln c_H."""
    rng = np.random.default_rng(11)
    n = 2_000
    p = -np.sort(-rng.dirichlet(np.ones(vocab), size=n), axis=1)
    rows = np.arange(n)
    target = rng.integers(0, vocab, n)
    p_t = p[rows, target]
    shift = shift_tokens(5, 1.0, head, rows // 10, rows, np.log(p_t), target + 1, p[:, :head].sum(axis=1))
    s = np.log(p_t) - shift.target_logp
    assert (s > 0).all() and 0.9 < s.mean() < 1.1
    others = np.arange(vocab) != target[:, None]
    in_head = (np.arange(vocab) < head) & others
    p_h = (p * in_head).sum(axis=1)
    c_h = (p_h + p_t * (1 - np.exp(-s))) / p_h
    q = np.where(in_head, p * c_h[:, None], p)
    q[rows, target] = p_t * np.exp(-s)
    assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    reference = rel_entr(p, q).sum(axis=1)
    assert (reference > 0).all()
    assert_allclose(p_t * s - p_h * np.log(c_h), reference, rtol=1e-8, atol=1e-15)
    assert_allclose(shift.true_kl, reference, rtol=1e-8, atol=1e-15)
    raised = shift.raised(np.log(p), np.broadcast_to(np.arange(1, vocab + 1), p.shape))
    assert_allclose(raised[others], np.log(q)[others], rtol=0, atol=1e-12)
    assert_array_equal(raised[others & ~in_head], np.log(p)[others & ~in_head])


def test_a_head_of_the_whole_vocabulary_is_the_plain_shift(tmp_path):
    """shift_head = V gives the freed mass to every token but the target, as the plain
    shift does: the same dump but for float64 rounding (true_kl to 1e-12, log-probs to one
    float32 step)."""
    plain = read_table(gen(tmp_path, "plain", tokens=5_000, vocab_size=64, topk=20, shift=0.5))
    whole = read_table(gen(tmp_path, "whole", tokens=5_000, vocab_size=64, topk=20, shift=0.5, shift_head=64))
    for name in ("doc_id", "position", "target", "target_logprob", "topk_ids"):
        assert plain.column(name).equals(whole.column(name)), name
    assert_allclose(whole.column("true_kl").to_numpy(), plain.column("true_kl").to_numpy(), rtol=1e-12)
    np.testing.assert_array_max_ulp(row_lists(whole)[2].astype(np.float32), row_lists(plain)[2].astype(np.float32), 1)


def test_a_head_shift_holds_the_same_tokens_whatever_the_sharding(tmp_path):
    options = dict(topk=4, shift=0.3, shift_head=10)
    base = by_key(token_rows(gen(tmp_path, "base", shards=1, **options)))
    for layout in TOKEN_LAYOUTS:
        dump = gen(tmp_path, layout, shards=5, shuffle=True, layout=layout, **options)
        assert by_key(token_rows(dump)).equals(base)
    assert base.num_rows == 20_000 and "true_kl" in base.column_names


@pytest.mark.slow
def test_the_head_shift_raises_the_head_and_keeps_the_rest(tmp_path):
    """shift_head = 3 with top-5 lists: the target log-probs are the plain shift's, bitwise (the
    same drops); the listed ids of the first model's ranks 1 .. 3 (its lists' first three
    entries) but the target rise by ln c_H, with c_H from the first dump's lists, and ranks 4
    and 5 keep their log-probs bitwise."""
    first, second = gen(tmp_path, "first", topk=5), gen(tmp_path, "second", topk=5, shift=0.5, shift_head=3)
    a, b = read_table(first), read_table(second)
    plain = read_table(gen(tmp_path, "plain", topk=5, shift=0.5))
    assert b.column("target_logprob").equals(plain.column("target_logprob"))
    t1, t2 = a.column("target_logprob").to_numpy().astype(float), b.column("target_logprob").to_numpy().astype(float)
    lengths1, ids1, lp1 = row_lists(a)
    lengths2, ids2, lp2 = row_lists(b)
    starts1, starts2 = np.cumsum(lengths1) - lengths1, np.cumsum(lengths2) - lengths2
    target = a.column("target").to_numpy()
    raised = kept = 0
    for row in range(0, len(a), 7):
        one = list(zip(ids1[starts1[row]:starts1[row] + lengths1[row]], lp1[starts1[row]:starts1[row] + lengths1[row]]))
        two = dict(zip(ids2[starts2[row]:starts2[row] + lengths2[row]], lp2[starts2[row]:starts2[row] + lengths2[row]]))
        p_h = sum(np.exp(lp) for token, lp in one[:3] if token != target[row])
        rise = np.log1p(np.exp(t1[row]) * -np.expm1(t2[row] - t1[row]) / p_h)
        for rank, (token, lp) in enumerate(one[:5], start=1):
            if token == target[row] or token not in two:
                continue
            if rank <= 3:
                assert_allclose(two[token] - lp, rise, atol=2e-6 + 1e-6 * abs(lp))
                raised += 1
            else:
                assert two[token] == lp
                kept += 1
    assert raised > 3_000 and kept > 2_000


def dense_distributions(table: pa.Table, vocab: int) -> np.ndarray:
    """(tokens, vocab) probabilities of token rows: the listed ids' and the target's, and
    the rest of the mass shared equally by the ids neither lists; which ids those are."""
    lengths, ids, logprobs = row_lists(table)
    n = table.num_rows
    p = np.full((n, vocab), np.nan)
    p[np.repeat(np.arange(n), lengths), ids] = np.exp(logprobs)
    p[np.arange(n), table.column("target").to_numpy()] = np.exp(table.column("target_logprob").to_numpy())
    unknown = np.isnan(p)
    rest = 1.0 - np.nansum(p, axis=1)
    p[unknown] = np.repeat(rest / np.maximum(unknown.sum(axis=1), 1), unknown.sum(axis=1))
    return p, unknown


@pytest.mark.parametrize("layout,head", [("token_rows", None), ("documents", None), ("token_rows", 3)])
def test_true_kl_is_the_kl_between_the_two_dumps(tmp_path, layout, head):
    """The shifted dump's true_kl, read back, against the closed form of the two dumps'
    target logprobs (with a head, its mass P_H from the first dump's lists) and against
    rel_entr of their dense distributions, on a vocabulary of 8 with top-6 lists; the first
    model's dump has no such column."""
    first = gen(tmp_path, "first", tokens=5_000, vocab_size=8, topk=6, layout=layout)
    second = gen(tmp_path, "second", tokens=5_000, vocab_size=8, topk=6, layout=layout, shift=1.0, shift_head=head)
    assert "true_kl" not in pq.read_schema(first.files[0]).names
    expected_type = pa.float64() if layout == "token_rows" else pa.list_(pa.float64())
    assert pq.read_schema(second.files[0]).field("true_kl").type == expected_type
    a, b = token_rows(first), token_rows(second)
    true_kl = b.column("true_kl").to_numpy()
    assert (true_kl >= 0).all() and 0.05 < true_kl.mean() < 1.0
    # The dumps hold float32 logprobs rounded down, off by up to |logprob| * 2**-23 (about
    # 1e-6 nats here), the column is the float64 KL: they agree to that (measured: 4e-7).
    lp1, lp2 = (t.column("target_logprob").to_numpy().astype(np.float64) for t in (a, b))
    p_t, s = np.exp(lp1), lp1 - lp2
    p_h = 1 - p_t
    if head is not None:  # the first model lists its ranks 1 .. 6 first, in order
        lengths, ids, logprobs = row_lists(a)
        rows, slot = np.repeat(np.arange(len(a)), lengths), np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        in_head = (slot < head) & (ids != a.column("target").to_numpy()[rows])
        p_h = np.bincount(rows, np.exp(logprobs) * in_head, minlength=len(a))
    c = (p_h + p_t * (1 - np.exp(-s))) / p_h
    assert_allclose(true_kl, p_t * s - p_h * np.log(c), rtol=0, atol=2e-6)
    # A row's dense distribution is known but for how the unlisted mass splits among the
    # unlisted ids; the shift scales them all by one factor (c, or 1 outside a head the lists
    # cover), so any split gives the true KL where both models leave out the same ids (most
    # rows: the target's drop can change them).
    p, unknown_p = dense_distributions(a, 8)
    q, unknown_q = dense_distributions(b, 8)
    same = (unknown_p == unknown_q).all(axis=1)
    assert same.mean() > 0.8
    assert_allclose(true_kl[same], rel_entr(p, q).sum(axis=1)[same], rtol=0, atol=2e-6)


@pytest.mark.slow
def test_compare_finds_the_true_kl_at_any_k(tmp_path):
    """`xent compare --kind tokens` of a first and a shifted dump: the KL lower bound's mean,
    median and max against true_kl, with top-1 and top-62 lists of a vocabulary of 64 (both
    layouts). Every non-target token's probability is scaled by the same c, so merging the
    unlisted ids into the bound's tail bin loses nothing here and the bound is the truth at
    any k (a student that moved the unlisted tokens unevenly would leave it below)."""
    bounds, truths = [], []
    for k, layout in ((1, "token_rows"), (62, "documents")):
        first = gen(tmp_path, f"first{k}", vocab_size=64, topk=k, layout=layout)
        second = gen(tmp_path, f"second{k}", vocab_size=64, topk=k, layout=layout, shift=0.5)
        row = flows.compare(first.root, second.root, kind="tokens").report.overall_row
        true_kl = by_key(token_rows(second)).column("true_kl").to_numpy()
        assert row["kl_tokens"] == len(true_kl) == 20_000
        # The bound reads the float32 logprobs of the dumps, each rounded down (off by less
        # than 2**-23 of itself), the truth is float64: the bound may exceed it by that
        # rounding (measured: 4e-8 of it), so the two meet to 1e-6, not exactly.
        assert_allclose(row["kl_lower_bound_mean"], true_kl.mean(), rtol=1e-6)
        assert_allclose(row["kl_lower_bound_max"], true_kl.max(), rtol=1e-6)
        # A percentile is read from a log histogram: within PERCENTILE_ERROR of numpy's.
        median = np.quantile(true_kl, 0.5, method="inverted_cdf")
        assert abs(row["kl_lower_bound_median"] / median - 1) <= PERCENTILE_ERROR + 1e-6
        bounds.append(row["kl_lower_bound_mean"])
        truths.append(true_kl)
    assert_array_equal(truths[0], truths[1])  # the lists do not change the models
    assert_allclose(bounds[0], bounds[1], rtol=1e-9)


@pytest.mark.slow
def test_compare_stays_below_a_head_shift_until_the_lists_cover_the_head(tmp_path):
    """A student with shift_head = 8 on a vocabulary of 64: with top-1 and top-4 lists the
    bound's tail bin merges raised head tokens with unchanged ones and its mean falls below the
    mean true_kl (measured: 3% and 2%); with top-8 lists, which cover the head on both sides,
    the tail holds unchanged tokens only and the bound meets true_kl as the plain shift's does."""
    truths = []
    for k, layout in ((1, "token_rows"), (4, "documents"), (8, "token_rows")):
        first = gen(tmp_path, f"first{k}", vocab_size=64, topk=k, layout=layout)
        second = gen(tmp_path, f"second{k}", vocab_size=64, topk=k, layout=layout, shift=0.5, shift_head=8)
        row = flows.compare(first.root, second.root, kind="tokens").report.overall_row
        true_kl = by_key(token_rows(second)).column("true_kl").to_numpy()
        assert row["kl_tokens"] == len(true_kl) == 20_000
        if k < 8:
            assert row["kl_lower_bound_mean"] < 0.99 * true_kl.mean()
        else:  # to the float32 rounding, as in test_compare_finds_the_true_kl_at_any_k
            assert_allclose(row["kl_lower_bound_mean"], true_kl.mean(), rtol=1e-6)
            assert_allclose(row["kl_lower_bound_max"], true_kl.max(), rtol=1e-6)
        truths.append(true_kl)
    assert_array_equal(truths[0], truths[2])


@pytest.mark.slow
def test_eval_reads_a_shifted_dump_as_if_it_had_no_true_kl(tmp_path, client):
    """xent eval reads only the token columns it needs: a shifted dump gives the report of
    the same files written without true_kl."""
    second = gen(tmp_path, "second", topk=5, layout="documents", shift=0.5)
    (tmp_path / "plain").mkdir()
    for path in second.files:
        pq.write_table(pq.read_table(path).drop_columns(["true_kl"]), tmp_path / "plain" / path.rsplit("/", 1)[1])
    with_column = flows.evaluate(second.root, kind="tokens", slice_by=["source"], client=client)
    without = flows.evaluate(str(tmp_path / "plain"), kind="tokens", slice_by=["source"], client=client)
    assert_same_report(with_column.tables, without.tables, rtol=0)


@pytest.mark.slow
def test_the_readme_teacher_student_example(tmp_path, monkeypatch, capsys):
    """README "Two models on the same tokens", in an empty folder: the commands exit 0,
    the terminal shows the output block's lines (each part between "…" in one line, in
    order), and the Python block prints what its comment says: the mean of true_kl (NumPy's
    on the files) and the bound of compare.parquet, which meet."""
    monkeypatch.chdir(tmp_path)
    (_, commands), (_, output), (_, query) = marked_blocks("TEACHER_STUDENT")
    for line in commands.splitlines():
        argv = shlex.split(line)
        assert argv[0] == "xent" and main(argv[1:]) == 0, line
    printed = capsys.readouterr().out.splitlines()
    for line in output.splitlines():
        pattern = ".*".join(re.escape(part.strip()) for part in line.split("…") if part.strip())
        assert any(re.search(pattern, out) for out in printed), line
    exec(compile(query, "README.md", "exec"), {})
    shown = query.rsplit("# ", 1)[1].strip()
    assert capsys.readouterr().out.strip() == shown
    truth = pq.read_table(tmp_path / "student", columns=["true_kl"]).column("true_kl").to_numpy().mean()
    compare = pq.read_table(tmp_path / "lm-compare" / "compare.parquet").to_pandas()
    bound = compare[compare["overall"] & (compare["scope"] == "all")]["kl_lower_bound_mean"].iloc[0]
    assert shown == f"true KL {truth:.6f}, lower bound {bound:.6f}"
    assert bound < truth  # top-20 lists do not cover a head of 50


@pytest.mark.parametrize("kwargs,match", [
    (dict(layout="list"), "layout must be one of"),
    (dict(topk=31_999), "needs vocab_size >= 32001"),
    (dict(vocab_size=1), "vocab_size must be"),
    (dict(shift=-0.1), "shift must be"),
    (dict(shift=0.5, shift_head=1), "shift_head must be an int in"),
    (dict(shift=0.5, shift_head=32_001), "shift_head must be an int in"),
    (dict(shift=0.5, shift_head=8.0), "shift_head must be an int in"),
    (dict(shift_head=8), "shift is 0"),
    (dict(tokens=-1), "tokens must be"),
    (dict(slices={"target": ["a"]}), "clashes with a token column"),
    (dict(slices={"source": []}), "needs at least one value"),
])
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gen(tmp_path, **kwargs)
    assert not (tmp_path / "dump").exists()


def test_cli_writes_a_token_dump(tmp_path, capsys):
    out = tmp_path / "lm"
    code = main(["generate", str(out), "--kind", "tokens", "--tokens", "5000", "--vocab", "500", "--topk", "4",
                 "--layout", "documents", "--slice", "domain=news,code", "--shards", "2", "--seed", "3", "--shift", "0.2",
                 "--shift-head", "50"])
    assert code == 0
    assert "5,000 tokens" in capsys.readouterr().out
    generate_token_dump(tmp_path / "api", tokens=5000, vocab_size=500, topk=4, layout="documents",
                        slices={"domain": ["news", "code"]}, shards=2, seed=3, shift=0.2, shift_head=50)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "api"))
    assert main(["generate", str(tmp_path / "default"), "--kind", "tokens", "--tokens", "1000"]) == 0
    assert pq.read_schema(next((tmp_path / "default").glob("*.parquet"))).names == [
        "doc_id", "position", "target", "target_logprob", "target_bytes", "source"]


@pytest.mark.parametrize("argv,message", [
    (["--kind", "tokens", "--rows", "10"], "--rows: only for classifier dumps"),
    (["--kind", "tokens", "--drift", "1", "--weights"], "--weights, --drift: only for classifier dumps"),
    (["--topk", "5"], "--topk: only for token dumps"),
    (["--shift-head", "5"], "--shift-head: only for token dumps"),
    (["--layout", "documents"], "--layout documents does not go with --kind logits"),
    (["--kind", "tokens", "--layout", "wide"], "--layout wide does not go with --kind tokens"),
    (["--kind", "tokens", "--topk", "40", "--vocab", "40"], "needs vocab_size >= 42"),
])
def test_cli_rejects_meaningless_combinations(tmp_path, capsys, argv, message):
    assert main(["generate", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_cli_classifier_dumps_still_work(tmp_path):
    assert main(["generate", str(tmp_path / "c"), "--rows", "300", "--classes", "3", "--shards", "2",
                 "--slice", "model=a,b", "--drift", "0.5"]) == 0
    table = pq.read_table(tmp_path / "c")
    assert table.num_rows == 300 and {"id", "label", "logits", "model"} <= set(table.column_names)
