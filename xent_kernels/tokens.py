"""Language-model token dumps: a mergeable state of scored tokens and its report.

Each scored token is a classification over the vocabulary of which a dump keeps the
target's log-probability and at most the top k. Per (slice, position bucket,
jackknife bucket) the state holds compensated float64 sums of the fields in
``TOKEN_FIELDS``; per (slice, bucket) the ECE bins of the top-1 probability and the
document-level counts; per (target id, bucket) the token's count and CE sum, from which
the per-token table and the frequency buckets are made at finalize.

Definitions (q the model's probability of the target, over the full vocabulary):

* CE = -ln q per token; ``ce_mean`` = ΣCE / tokens (token-weighted, lm-eval's
  ``weighted_perplexity`` is exp of it at token level), ``perplexity`` = exp(ce_mean);
* ``bits_per_byte`` = ΣCE / ln 2 / Σbytes, ``byte_perplexity`` = exp(ΣCE / Σbytes),
  ``word_perplexity`` = exp(ΣCE / Σwords): lm-eval's definitions, with bytes the target
  tokens' UTF-8 bytes (``target_bytes``) or the documents' ``n_bytes``;
* rank r of the target = 1 + the listed ids other than it with a larger log-prob; exact
  when the target is listed, "unlisted" (rank above the list) when it is not;
* top-1 accuracy: r = 1; ECE: of the top-1 probability (the largest listed or target
  probability) against r = 1, over ``n_bins`` equal-width bins;
* ``entropy_lower_bound``: the entropy of the coarsened distribution (the listed ids and
  the target, plus one tail bin of 1 - Σp). Merging ids into one bin never raises the
  entropy, so it is a lower bound of the model's entropy, equal to it when the list is
  the whole vocabulary.

Top-k entries at or below ``ABSENT_LOGPROB`` (OpenAI's -9999.0) mean "absent" and are
skipped. Intervals are jackknife intervals over the document-hash buckets: a document's
tokens share a bucket, since they are correlated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Self

import numpy as np
from numpy.typing import NDArray

from ._numba import strict_kernel
from .intervals import DEFAULT_LEVEL, jackknife_bounds
from .merge_rules import two_sum

__all__ = [
    "ABSENT_LOGPROB", "DEFAULT_POSITION_EDGES", "LOGPROB_TOLERANCE", "TOKEN_FIELDS", "TokenStats", "frequency_edges",
    "token_stats_partial",
]

# Per (slice, position bucket, jackknife bucket): compensated float64 sums.
TOKEN_FIELDS = (
    "tokens",  # scored tokens with a finite CE
    "ce",  # Σ -ln q
    "bytes",  # Σ target_bytes (0 without the column)
    "listed_tokens",  # tokens with a non-empty top-k list
    "rank_1",  # of those: rank 1 (top-1 correct)
    "rank_2_5",
    "rank_6_up",  # listed at rank 6 or more
    "unlisted",  # target not in the list
    "inside_topk",  # rank <= topk (topk declared), else listed
    "entropy_lb",  # Σ entropy of the coarsened distribution
)
F = {name: i for i, name in enumerate(TOKEN_FIELDS)}
DOC_FIELDS = ("documents", "n_bytes", "n_words")  # per (slice, bucket): the documents layout's counts
ECE_FIELDS = ("count", "confidence", "correct")

ABSENT_LOGPROB = -9999.0
LOGPROB_TOLERANCE = 1e-4  # a log-prob above 0 by more than this is an error (top-k mass above 1 too)
# Position buckets 0, 1, 2-3, 4-7, ...: the lower edge of each.
DEFAULT_POSITION_EDGES = (0, *(2**i for i in range(0, 21)))

# The per-token table is dense in the target id: without a declared vocab_size, ids
# above this are taken for a mistake (hashed ids, say) rather than a vocabulary.
MAX_UNDECLARED_VOCAB = 1 << 22

# The kernel's reasons for a bad row, by code.
REASONS = {
    1: ("target_logprob", "NaN log-probability"),
    2: ("target_logprob", "log-probability above 0"),
    3: ("topk_logprobs", "NaN log-probability in the top-k list"),
    4: ("topk_logprobs", "log-probability above 0 in the top-k list"),
    5: ("topk_ids", "a token id repeated in the top-k list"),
    6: ("target", "token id outside [0, vocab_size)"),
    7: ("topk_logprobs", "top-k probabilities (with the target's) sum above 1"),
    8: ("target_logprob", "-inf log-probability (infinite cross-entropy)"),
    9: ("position", "negative position"),
    10: ("topk_ids", "token id outside [0, vocab_size)"),
    11: ("position", "a position its document already has (a token scored twice?)"),
}


def frequency_edges(distinct: int) -> NDArray[np.int64]:
    """Lower edges of the frequency-rank buckets 1-10, 11-100, 101-1000, ... (ranks from
    1) that cover `distinct` ranks."""
    edges = [1]
    while 10 ** len(edges) + 1 <= distinct and len(edges) < 19:
        edges.append(10 ** len(edges) + 1)
    return np.array(edges, dtype=np.int64)


@strict_kernel
def _add(sums, comps, row, col, x):
    # Neumaier's compensated addition of x to sums[row, col]
    s = sums[row, col]
    t = s + x
    if abs(s) >= abs(x):
        comps[row, col] += (s - t) + x
    else:
        comps[row, col] += (x - t) + s
    sums[row, col] = t


@strict_kernel
def _token_pass(group, bucket, target, logprob, n_bytes, offsets, ids, lps, has_topk, topk, vocab_size,
                count_nonfinite, n_positions, n_buckets, cells, cells_comp, ece, ece_comp, token_n, token_ce, token_ce_comp,
                token_rank1, token_listed, nonfinite, n_bins):
    """Fold a batch of tokens into the state arrays; returns (first bad row, reason code) or (-1, 0)."""
    n = target.shape[0]
    for i in range(n):
        lp = logprob[i]
        t = target[i]
        if lp != lp:
            return i, 1
        if lp > 1e-4:
            return i, 2
        if t < 0 or (vocab_size > 0 and t >= vocab_size):
            return i, 6
        g = group[i]
        k = bucket[i]
        if lp == -np.inf:
            if not count_nonfinite:
                return i, 8
            nonfinite[g] += 1
            continue
        if lp > 0.0:
            lp = 0.0
        row = g * n_buckets + k
        ce = -lp
        _add(cells, cells_comp, row, 0, 1.0)
        _add(cells, cells_comp, row, 1, ce)
        _add(cells, cells_comp, row, 2, float(n_bytes[i]))
        token_n[t, k] += 1
        _add(token_ce, token_ce_comp, t, k, ce)
        if not has_topk:
            continue
        start = offsets[i]
        stop = offsets[i + 1]
        listed = False
        greater = 0
        best = lp
        known_mass = 0.0
        plogp = 0.0
        entries = 0
        for j in range(start, stop):
            v = lps[j]
            if v != v:
                return i, 3
            if v <= -9999.0:
                continue
            if v > 1e-4:
                return i, 4
            if v > 0.0:
                v = 0.0
            u = ids[j]
            if u < 0 or (vocab_size > 0 and u >= vocab_size):
                return i, 10
            for m in range(start, j):
                if ids[m] == u and lps[m] > -9999.0:
                    return i, 5
            entries += 1
            if u == t:
                listed = True
                v = lp  # the target's own log-prob stands for its entry
            elif v > lp:
                greater += 1
            if v > best:
                best = v
            p = math.exp(v)
            known_mass += p
            if p > 0.0:
                plogp -= p * v
        if entries == 0:
            continue
        if not listed:
            p = math.exp(lp)
            known_mass += p
            if p > 0.0:
                plogp -= p * lp
        tail = 1.0 - known_mass
        if tail < -1e-4:
            return i, 7
        if tail > 0.0:
            plogp -= tail * math.log(tail)
        rank = greater + 1
        _add(cells, cells_comp, row, 3, 1.0)
        token_listed[t] += 1
        if listed and rank == 1:
            _add(cells, cells_comp, row, 4, 1.0)
            token_rank1[t] += 1
        elif listed and rank <= 5:
            _add(cells, cells_comp, row, 5, 1.0)
        elif listed:
            _add(cells, cells_comp, row, 6, 1.0)
        else:
            _add(cells, cells_comp, row, 7, 1.0)
        if listed and (topk <= 0 or rank <= topk):
            _add(cells, cells_comp, row, 8, 1.0)
        _add(cells, cells_comp, row, 9, plogp)
        confidence = math.exp(best)
        b = min(int(confidence * n_bins), n_bins - 1)
        erow = ((g // n_positions) * n_buckets + k) * n_bins + b
        _add(ece, ece_comp, erow, 0, 1.0)
        _add(ece, ece_comp, erow, 1, confidence)
        if listed and rank == 1:
            _add(ece, ece_comp, erow, 2, 1.0)
    return -1, 0


def _key_order(key):
    return tuple((value is None, "" if value is None else value) for value in key)


@dataclass(frozen=True, eq=False)
class DocumentTable:
    """Per (slice, document): the document's scored tokens and their CE sum, a row per
    document key hash, sorted by (slice, hash). A document's tokens may be spread over
    any pieces: merging adds its partial sums, so the per-document figures do not depend
    on sharding. 40 bytes a document."""

    slice: np.ndarray  # int64: index into the owning state's slice_keys
    hash: np.ndarray  # uint64: the document key's hash (xent_kernels.hashing.key_hash, jackknife seed)
    n: np.ndarray  # int64
    ce: np.ndarray  # float64, with its compensation
    ce_comp: np.ndarray

    @classmethod
    def empty(cls) -> Self:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))

    @classmethod
    def of_tokens(cls, slice_ids: np.ndarray, hashes: np.ndarray, ce: np.ndarray) -> Self:
        """The table of some tokens (their slice, document hash and CE)."""
        if not len(ce):
            return cls.empty()
        order = np.lexsort((hashes, slice_ids))
        slice_ids, hashes, ce = slice_ids[order], hashes[order], ce[order]
        start = np.flatnonzero(np.concatenate([[True], (slice_ids[1:] != slice_ids[:-1]) | (hashes[1:] != hashes[:-1])]))
        sums, comps = _grouped_sums(ce, start)
        return cls(slice_ids[start], hashes[start], np.diff(np.append(start, len(ce))), sums, comps)

    def on(self, rows: np.ndarray) -> Self:
        """The table with slice indices mapped by `rows` (old index -> new), re-sorted."""
        slices = rows[self.slice] if len(self.slice) else self.slice
        order = np.lexsort((self.hash, slices))
        return DocumentTable(slices[order], self.hash[order], self.n[order], self.ce[order], self.ce_comp[order])

    @classmethod
    def merge_two(cls, a: Self, b: Self) -> Self:
        """Both tables' documents, a document in both with its sums added (two_sum: the
        same bits either way round)."""
        if not len(a.n) or not len(b.n):
            return b if not len(a.n) else a
        slices, hashes = np.concatenate([a.slice, b.slice]), np.concatenate([a.hash, b.hash])
        order = np.lexsort((hashes, slices))
        slices, hashes = slices[order], hashes[order]
        n = np.concatenate([a.n, b.n])[order]
        ce, comp = np.concatenate([a.ce, b.ce])[order], np.concatenate([a.ce_comp, b.ce_comp])[order]
        again = np.flatnonzero((slices[1:] == slices[:-1]) & (hashes[1:] == hashes[:-1]))  # a document in both
        n[again] += n[again + 1]
        ce[again], comp[again] = two_sum(ce[again], comp[again], ce[again + 1], comp[again + 1])
        keep = np.ones(len(n), dtype=bool)
        keep[again + 1] = False
        return cls(slices[keep], hashes[keep], n[keep], ce[keep], comp[keep])


def _grouped_sums(values: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compensated sums of consecutive runs of `values` beginning at `start`."""
    sums, comps = np.zeros(len(start)), np.zeros(len(start))
    group = np.repeat(np.arange(len(start)), np.diff(np.append(start, len(values))))
    _fold_groups(values, group, sums, comps)
    return sums, comps


@strict_kernel
def _fold_groups(values, group, sums, comps):
    for i in range(values.shape[0]):
        g = group[i]
        s = sums[g]
        x = values[i]
        t = s + x
        if abs(s) >= abs(x):
            comps[g] += (s - t) + x
        else:
            comps[g] += (x - t) + s
        sums[g] = t


@dataclass(frozen=True, eq=False)
class TokenStats:
    """Sums over scored tokens by (slice, position bucket, bucket), per target id, and
    per (slice, bucket) for documents: ``empty`` / ``merge`` / ``finalize`` as
    :mod:`xent_kernels.mergeable` says. Target ids past ``vocab`` grow it on merge."""

    slice_keys: tuple[tuple, ...]
    position_edges: tuple[int, ...]
    n_buckets: int
    n_bins: int
    topk: int  # declared k of the top-k lists; 0 = undeclared (listed counts as inside)
    cells: np.ndarray  # (S, P, K, F) float64
    cells_comp: np.ndarray
    ece: np.ndarray  # (S, K, n_bins, 3)
    ece_comp: np.ndarray
    text_counts: np.ndarray  # (S, K, 2) int64: the documents' n_bytes and n_words (documents layout)
    nonfinite: np.ndarray  # (S,) int64: tokens with a -inf log-prob, left out
    ignored: np.ndarray  # (S,) int64: tokens without a target or log-prob (null)
    token_n: np.ndarray  # (V, K) int64
    token_ce: np.ndarray  # (V, K) float64
    token_ce_comp: np.ndarray
    token_rank1: np.ndarray  # (V,) int64
    token_listed: np.ndarray  # (V,) int64
    documents: DocumentTable
    has_bytes: bool = False
    has_text_counts: bool = False

    @property
    def vocab(self) -> int:
        return self.token_n.shape[0]

    @classmethod
    def empty(cls, *, slice_keys=(), position_edges=DEFAULT_POSITION_EDGES, n_buckets: int = 1, n_bins: int = 15,
              topk: int = 0, vocab: int = 0, has_bytes: bool = False, has_text_counts: bool = False) -> Self:
        """No tokens: the identity of :meth:`merge`."""
        s, p, k = len(slice_keys), len(position_edges), n_buckets
        return cls(
            tuple(tuple(key) for key in slice_keys), tuple(int(e) for e in position_edges), int(n_buckets),
            int(n_bins), int(topk),
            np.zeros((s, p, k, len(TOKEN_FIELDS))), np.zeros((s, p, k, len(TOKEN_FIELDS))),
            np.zeros((s, k, n_bins, 3)), np.zeros((s, k, n_bins, 3)), np.zeros((s, k, 2), dtype=np.int64),
            np.zeros(s, dtype=np.int64), np.zeros(s, dtype=np.int64),
            np.zeros((vocab, k), dtype=np.int64), np.zeros((vocab, k)), np.zeros((vocab, k)),
            np.zeros(vocab, dtype=np.int64), np.zeros(vocab, dtype=np.int64), DocumentTable.empty(), bool(has_bytes),
            bool(has_text_counts),
        )

    def _shape(self) -> tuple:
        return self.position_edges, self.n_buckets, self.n_bins, self.topk

    def _on(self, keys: tuple, vocab: int) -> dict[str, np.ndarray]:
        """The arrays on slice keys `keys` (a superset of this state's) and `vocab` ids."""
        rows = [keys.index(key) for key in self.slice_keys]
        out = {}
        for name in ("cells", "cells_comp", "ece", "ece_comp", "text_counts", "nonfinite", "ignored"):
            mine = getattr(self, name)
            full = np.zeros((len(keys), *mine.shape[1:]), dtype=mine.dtype)
            full[rows] = mine
            out[name] = full
        for name in ("token_n", "token_ce", "token_ce_comp", "token_rank1", "token_listed"):
            mine = getattr(self, name)
            full = np.zeros((vocab, *mine.shape[1:]), dtype=mine.dtype)
            full[: mine.shape[0]] = mine
            out[name] = full
        out["documents"] = self.documents.on(np.array(rows, dtype=np.int64))
        return out

    @classmethod
    def merge(cls, *states: Self) -> Self:
        """One state of all `states`; commutative bit for bit (two_sum is symmetric)."""
        first = states[0]
        if any(state._shape() != first._shape() for state in states):
            raise ValueError("cannot merge token states of different position buckets, buckets, bins or topk")
        keys = tuple(sorted(set().union(*(s.slice_keys for s in states)), key=_key_order))
        vocab = max(s.vocab for s in states)
        total = first._on(keys, vocab)
        for other in states[1:]:
            y = other._on(keys, vocab)
            for a, b in (("cells", "cells_comp"), ("ece", "ece_comp"), ("token_ce", "token_ce_comp")):
                total[a], total[b] = two_sum(total[a], total[b], y[a], y[b])
            for name in ("text_counts", "nonfinite", "ignored", "token_n", "token_rank1", "token_listed"):
                total[name] = total[name] + y[name]
            total["documents"] = DocumentTable.merge_two(total["documents"], y["documents"])
        return cls(keys, first.position_edges, first.n_buckets, first.n_bins, first.topk, **total,
                   has_bytes=any(s.has_bytes for s in states), has_text_counts=any(s.has_text_counts for s in states))

    def finalize(self, base="e", level: float = DEFAULT_LEVEL, counts: np.ndarray | None = None) -> "TokenReport":
        """The report; `counts` (per token id) rank the targets for the frequency buckets
        instead of this state's own counts."""
        return TokenReport.of(self, base, level, counts)


def token_stats_partial(
    target: np.ndarray,
    target_logprob: np.ndarray,
    *,
    slice_ids: np.ndarray | None = None,
    slice_keys=((),),
    positions: np.ndarray,
    buckets: np.ndarray | None = None,
    target_bytes: np.ndarray | None = None,
    topk_offsets: np.ndarray | None = None,
    topk_ids: np.ndarray | None = None,
    topk_logprobs: np.ndarray | None = None,
    position_edges=DEFAULT_POSITION_EDGES,
    n_buckets: int = 1,
    n_bins: int = 15,
    topk: int = 0,
    vocab_size: int = 0,
    count_nonfinite: bool = False,
    ignored: np.ndarray | None = None,
    doc_hashes: np.ndarray | None = None,
    into: TokenStats | None = None,
) -> tuple[TokenStats, int, str, str]:
    """The state of a batch of scored tokens.

    Returns the state and, for the first bad token, its row, column and reason
    (-1, "", "" when every token is valid; the state is then of no use). `ignored`
    (per slice) counts tokens left out before the call (a null target or log-prob).
    `doc_hashes` (each token's document key hash) gives the per-document figures.
    With `into` (a state of the same options) the batch is folded into it, in place
    when it already holds the batch's slices and ids, and that state is returned: a
    piece's batches then share one state instead of one each, merged.
    """
    n = len(target)
    slice_ids = np.zeros(n, dtype=np.int64) if slice_ids is None else slice_ids.astype(np.int64, copy=False)
    positions = np.asarray(positions, dtype=np.int64)
    if n and positions.min() < 0:
        row = int(np.flatnonzero(positions < 0)[0])
        return TokenStats.empty(slice_keys=slice_keys, position_edges=position_edges, n_buckets=n_buckets),\
            row, *REASONS[9]
    edges = np.asarray(position_edges, dtype=np.int64)
    pbucket = np.searchsorted(edges, positions, side="right") - 1
    group = slice_ids * len(edges) + pbucket
    bucket = np.zeros(n, dtype=np.int64) if buckets is None else buckets.astype(np.int64, copy=False)
    target = target.astype(np.int64, copy=False)
    largest = int(target.max()) if n else -1
    if vocab_size <= 0 and largest >= MAX_UNDECLARED_VOCAB:
        row = int(np.flatnonzero(target >= MAX_UNDECLARED_VOCAB)[0])
        return TokenStats.empty(slice_keys=slice_keys, position_edges=position_edges, n_buckets=n_buckets),\
            row, "target", f"token id {largest} at or above {MAX_UNDECLARED_VOCAB}: declare vocab_size"
    vocab = max(int(vocab_size), largest + 1)
    options = dict(position_edges=position_edges, n_buckets=n_buckets, n_bins=n_bins, topk=topk)
    batch = TokenStats.empty(slice_keys=slice_keys, vocab=vocab, has_bytes=target_bytes is not None, **options)
    if into is None:
        state = batch
    else:
        known = set(into.slice_keys)
        # the rare batch with a new slice or a larger id widens the state (a merge with the empty batch state)
        state = into if known.issuperset(batch.slice_keys) and into.vocab >= vocab else TokenStats.merge(into, batch)
        if state is into and target_bytes is not None and not into.has_bytes:
            state = replace(into, has_bytes=True)
        where = {key: i for i, key in enumerate(state.slice_keys)}
        slice_ids = np.array([where[key] for key in batch.slice_keys], dtype=np.int64)[slice_ids]
        group = slice_ids * len(edges) + pbucket
    s, p = len(state.slice_keys), len(edges)
    # views: the kernel adds into the state's own arrays
    cells, cells_comp = _flat_view(state.cells, len(TOKEN_FIELDS)), _flat_view(state.cells_comp, len(TOKEN_FIELDS))
    ece, ece_comp = _flat_view(state.ece, 3), _flat_view(state.ece_comp, 3)
    has_topk = topk_offsets is not None
    empty_i = np.zeros(1, dtype=np.int64)
    nonfinite_groups = np.zeros(s * p, dtype=np.int64)
    row, code = _token_pass(
        group, bucket, target, target_logprob.astype(np.float64, copy=False),
        np.zeros(n, dtype=np.int64) if target_bytes is None else target_bytes.astype(np.int64, copy=False),
        topk_offsets.astype(np.int64, copy=False) if has_topk else empty_i,
        topk_ids.astype(np.int64, copy=False) if has_topk else empty_i,
        topk_logprobs.astype(np.float64, copy=False) if has_topk else np.zeros(1),
        has_topk, int(topk), int(vocab_size), bool(count_nonfinite), p, int(n_buckets), cells, cells_comp,
        ece, ece_comp, state.token_n, state.token_ce, state.token_ce_comp, state.token_rank1, state.token_listed,
        nonfinite_groups, int(n_bins),
    )
    if row >= 0:
        return state, int(row), *REASONS[int(code)]
    state.nonfinite[:] += nonfinite_groups.reshape(s, p).sum(axis=1)
    if ignored is not None:
        state.ignored[[where[key] for key in batch.slice_keys] if into is not None else slice(None)] += ignored
    if doc_hashes is not None:
        documents, again = _documents(slice_ids, doc_hashes, positions, target_logprob.astype(np.float64, copy=False))
        if again >= 0:
            return state, again, *REASONS[11]
        state = replace(state, documents=DocumentTable.merge_two(state.documents, documents))
    return state, -1, "", ""


def _flat_view(array: np.ndarray, columns: int) -> np.ndarray:
    """`array` as rows of `columns`, sharing its memory (an error rather than a copy)."""
    view = array.view()
    view.shape = (-1, columns)
    return view


def _documents(slice_ids: np.ndarray, hashes: np.ndarray, positions: np.ndarray, logprob: np.ndarray
               ) -> tuple[DocumentTable, int]:
    """The documents of a batch's tokens (their finite CE), and the row of the first
    position its document already has (-1: none). Tokens in runs by document with rising
    positions, as dumps hold them, take one pass; others a sort."""
    n = len(hashes)
    run_slice, run_hash = np.empty(n, np.int64), np.empty(n, np.uint64)
    run_n, run_ce, run_comp = np.empty(n, np.int64), np.empty(n), np.empty(n)
    runs, rising = _document_runs(slice_ids, hashes, positions, logprob, run_slice, run_hash, run_n, run_ce, run_comp)
    order = np.lexsort((run_hash[:runs], run_slice[:runs]))
    once = runs < 2 or not np.any(np.diff(np.sort(run_hash[:runs])) == 0)  # no document in two runs
    if rising and once:
        kept = order[run_n[:runs][order] > 0]
        return DocumentTable(run_slice[kept], run_hash[kept], run_n[kept], run_ce[kept], run_comp[kept]), -1
    order = np.lexsort((positions, hashes))
    again = np.flatnonzero((hashes[order][1:] == hashes[order][:-1]) & (positions[order][1:] == positions[order][:-1]))
    if again.size:
        return DocumentTable.empty(), int(np.maximum(order[again], order[again + 1]).min())
    finite = logprob > -np.inf
    return DocumentTable.of_tokens(slice_ids[finite], hashes[finite], -np.minimum(logprob[finite], 0.0)), -1


@strict_kernel
def _document_runs(slice_ids, hashes, positions, logprob, run_slice, run_hash, run_n, run_ce, run_comp):
    """Runs of consecutive tokens of one (slice, document): each run's finite tokens and
    their compensated CE sum; returns the number of runs and whether positions rise
    within every run."""
    runs = 0
    rising = True
    for i in range(hashes.shape[0]):
        if i == 0 or slice_ids[i] != slice_ids[i - 1] or hashes[i] != hashes[i - 1]:
            run_slice[runs] = slice_ids[i]
            run_hash[runs] = hashes[i]
            run_n[runs] = 0
            run_ce[runs] = 0.0
            run_comp[runs] = 0.0
            runs += 1
        elif positions[i] <= positions[i - 1]:
            rising = False
        lp = logprob[i]
        if lp > -np.inf:
            r = runs - 1
            x = -lp if lp < 0.0 else 0.0
            s = run_ce[r]
            t = s + x
            if abs(s) >= abs(x):
                run_comp[r] += (s - t) + x
            else:
                run_comp[r] += (x - t) + s
            run_ce[r] = t
            run_n[r] += 1
    return runs, rising


def add_text_counts(state: TokenStats, slice_ids: np.ndarray, buckets: np.ndarray, n_bytes: np.ndarray | None,
                    n_words: np.ndarray | None) -> TokenStats:
    """`state` with the byte and word counts of a documents-layout batch's documents
    (a row each; either may be absent)."""
    counts = np.zeros_like(state.text_counts)
    for field, values in enumerate((n_bytes, n_words)):
        if values is not None:
            np.add.at(counts[..., field], (slice_ids, buckets), values.astype(np.int64))
    return replace(state, text_counts=state.text_counts + counts, has_text_counts=True)


# --------------------------------------------------------------------------- finalize


def _jackknife(ratio, per_bucket: np.ndarray, used: np.ndarray, level: float):
    """Point value and jackknife bounds of ``ratio(sums)``, sums over the bucket axis
    (axis 1 of `per_bucket`); `ratio` reduces the trailing axes after it."""
    total = per_bucket.sum(axis=1)
    value = ratio(total)
    leave_one_out = ratio(total[:, None] - per_bucket)
    lo, hi = jackknife_bounds(value.reshape(-1), leave_one_out.reshape(-1, used.shape[-1]),
                              used.reshape(-1, used.shape[-1]), level)
    return value, lo.reshape(value.shape), hi.reshape(value.shape)


def _divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _ece(bins: np.ndarray) -> np.ndarray:
    """ECE from (..., n_bins, 3) sums: Σ_b |Σcorrect - Σconfidence| / count."""
    count = bins[..., 0].sum(axis=-1)
    gap = np.abs(bins[..., 2] - bins[..., 1]).sum(axis=-1)
    return _divide(gap, count)


@dataclass
class TokenReport:
    """The finalized token report: column dicts of NumPy arrays per table, keyed by
    slice index (-1 = all slices) where a table is per slice."""

    summary: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    frequency: dict[str, np.ndarray]
    per_token: dict[str, np.ndarray]
    units: str

    @classmethod
    def of(cls, state: TokenStats, base="e", level: float = DEFAULT_LEVEL, counts: np.ndarray | None = None
           ) -> "TokenReport":
        scale = 1.0 / math.log(2) if base == 2 else 1.0
        units = "bits" if base == 2 else "nats"
        cells = state.cells + state.cells_comp  # (S, P, K, F)
        ece = state.ece + state.ece_comp
        # slice rows: every slice, then all slices together (index -1)
        by_slice = np.concatenate([cells.sum(axis=1), cells.sum(axis=(0, 1))[None]], axis=0)  # (S+1, K, F)
        ece_slice = np.concatenate([ece, ece.sum(axis=0)[None]], axis=0)
        text = np.concatenate([state.text_counts, state.text_counts.sum(axis=0)[None]], axis=0).astype(np.float64)
        slice_index = np.append(np.arange(len(state.slice_keys)), -1)
        summary = {"slice": slice_index}
        summary.update(_token_metrics(by_slice, scale, level))
        used = by_slice[..., F["tokens"]] > 0
        total_ce = by_slice[..., F["ce"]].sum(axis=-1)
        summary["ece"], summary["ece_lo"], summary["ece_hi"] = _jackknife(
            _ece, ece_slice, ece_slice[..., 0].sum(axis=-1) > 0, level)
        summary.update(_document_metrics(state, scale, level))
        text_total = text.sum(axis=1)
        with_text = np.concatenate([by_slice[..., [F["ce"]]], text], axis=-1)  # (S+1, K, 3): CE, bytes, words
        if state.has_text_counts and (text_total[:, 0] > 0).any() and not state.has_bytes:
            summary["bits_per_byte"], summary["bits_per_byte_lo"], summary["bits_per_byte_hi"] = _jackknife(
                lambda s: _divide(s[..., 0], s[..., 1]) / math.log(2), with_text, used, level)
            summary["byte_perplexity"] = np.exp(_divide(total_ce, text_total[:, 0]))
        if state.has_text_counts and (text_total[:, 1] > 0).any():
            value, lo, hi = _jackknife(lambda s: _divide(s[..., 0], s[..., 2]), with_text, used, level)
            summary["word_perplexity"], summary["word_perplexity_lo"], summary["word_perplexity_hi"] = (
                np.exp(value), np.exp(lo), np.exp(hi))
        summary["n_nonfinite"] = np.append(state.nonfinite, state.nonfinite.sum())
        summary["n_ignored"] = np.append(state.ignored, state.ignored.sum())

        # position buckets, per slice and over all slices
        s, p = cells.shape[:2]
        by_position = np.concatenate([cells, cells.sum(axis=0)[None]], axis=0)  # (S+1, P, K, F)
        positions = {"slice": np.repeat(slice_index, p), "position_from": np.tile(np.array(state.position_edges), s + 1)}
        positions.update({name: values.reshape(-1) for name, values in
                          _token_metrics(by_position.reshape((s + 1) * p, *cells.shape[2:]), scale, level).items()})

        # per token id, and the frequency-rank buckets over all slices
        token_n = state.token_n
        token_ce = state.token_ce + state.token_ce_comp
        count = token_n.sum(axis=1)
        seen = np.flatnonzero(count)
        rank = frequency_ranks(count if counts is None else counts, len(count))
        pair = np.stack([token_n.astype(np.float64), token_ce], axis=-1)  # (V, K, 2)
        value, lo, hi = _jackknife(lambda x: _divide(x[..., 1], x[..., 0]) * scale, pair[seen], token_n[seen] > 0, level)
        per_token = {
            "target": seen, "frequency_rank": rank[seen], "tokens": count[seen], "ce_sum": token_ce[seen].sum(axis=1) * scale,
            "ce_mean": value, "ce_mean_lo": lo, "ce_mean_hi": hi,
            "listed_tokens": state.token_listed[seen],
            "top1_accuracy": _divide(state.token_rank1[seen].astype(np.float64), state.token_listed[seen]),
        }
        edges = frequency_edges(max(int(rank[seen].max()) if len(seen) else 1, 1))
        which = np.searchsorted(edges, rank[seen], side="right") - 1
        freq = np.zeros((len(edges), pair.shape[1], 2))
        np.add.at(freq, which, pair[seen])
        value, lo, hi = _jackknife(lambda x: _divide(x[..., 1], x[..., 0]) * scale, freq,
                                   freq[..., 0] > 0, level)
        listed = np.zeros(len(edges)); rank1 = np.zeros(len(edges))
        np.add.at(listed, which, state.token_listed[seen]); np.add.at(rank1, which, state.token_rank1[seen])
        frequency = {
            "rank_from": edges, "rank_to": np.append(edges[1:] - 1, -1),
            "distinct_targets": np.bincount(which, minlength=len(edges)),
            "tokens": freq[..., 0].sum(axis=1).astype(np.int64), "ce_mean": value, "ce_mean_lo": lo, "ce_mean_hi": hi,
            "perplexity": np.exp(value / scale), "top1_accuracy": _divide(rank1, listed),
        }
        return cls(summary, positions, frequency, per_token, units)


def _document_metrics(state: TokenStats, scale: float, level: float) -> dict[str, np.ndarray]:
    """Per slice and overall (last): documents, the mean of per-document mean CE, and the
    geometric and arithmetic means of per-document perplexity, with jackknife intervals
    (a document's bucket is its hash modulo K, as its tokens')."""
    table, s, k = state.documents, len(state.slice_keys), state.n_buckets
    ce = table.ce + table.ce_comp
    # over all slices a document counts once, with its tokens of every slice
    order = np.argsort(table.hash, kind="stable")
    hashes = table.hash[order]
    start = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]])) if len(hashes) else np.zeros(0, np.int64)
    overall_ce = sum(_grouped_sums(ce[order], start))
    overall_n = np.add.reduceat(table.n[order], start) if len(start) else np.zeros(0, np.int64)
    sums = np.zeros((s + 1, k, 3))  # per (slice, bucket): documents, Σ mean CE, Σ perplexity
    for rows, n, doc_ce, doc_hash in ((table.slice, table.n, ce, table.hash),
                                      (np.full(len(start), s), overall_n, overall_ce, hashes[start])):
        mean = doc_ce / np.maximum(n, 1)
        bucket = (doc_hash % np.uint64(k)).astype(np.int64)
        for field, values in enumerate((np.ones(len(n)), mean, np.exp(mean))):
            np.add.at(sums[..., field], (rows, bucket), values)
    used = sums[..., 0] > 0
    out = {"documents": sums[..., 0].sum(axis=1).astype(np.int64)}
    value, lo, hi = _jackknife(lambda x: _divide(x[..., 1], x[..., 0]), sums, used, level)
    out["doc_ce_mean"], out["doc_ce_mean_lo"], out["doc_ce_mean_hi"] = value * scale, lo * scale, hi * scale
    out["doc_perplexity_geometric"], out["doc_perplexity_geometric_lo"], out["doc_perplexity_geometric_hi"] = (
        np.exp(value), np.exp(lo), np.exp(hi))
    out["doc_perplexity_arithmetic"], out["doc_perplexity_arithmetic_lo"], out["doc_perplexity_arithmetic_hi"] = (
        _jackknife(lambda x: _divide(x[..., 2], x[..., 0]), sums, used, level))
    return out


def frequency_ranks(counts: np.ndarray, vocab: int) -> np.ndarray:
    """Each id's frequency rank (1 = the most frequent; ties by id) by `counts`, for ids
    0 .. `vocab` - 1; ids without a count (or past `counts`) rank after all counted ids."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = np.concatenate([counts[:vocab], np.zeros(max(vocab - len(counts), 0))])
    ids = np.arange(vocab)
    order = np.lexsort((ids, -counts))
    rank = np.empty(vocab, dtype=np.int64)
    rank[order] = np.arange(1, vocab + 1)
    return rank


def _token_metrics(sums: np.ndarray, scale: float, level: float) -> dict[str, np.ndarray]:
    """The token-weighted metrics of rows of (K, F) sums, with jackknife intervals."""
    used = sums[..., F["tokens"]] > 0
    total = sums.sum(axis=-2)
    out: dict[str, np.ndarray] = {"tokens": total[..., F["tokens"]].astype(np.int64)}
    ce, lo, hi = _jackknife(lambda x: _divide(x[..., F["ce"]], x[..., F["tokens"]]), sums, used, level)
    out["ce_mean"], out["ce_mean_lo"], out["ce_mean_hi"] = ce * scale, lo * scale, hi * scale
    out["perplexity"], out["perplexity_lo"], out["perplexity_hi"] = np.exp(ce), np.exp(lo), np.exp(hi)
    out["bits_per_byte"], out["bits_per_byte_lo"], out["bits_per_byte_hi"] = _jackknife(
        lambda x: _divide(x[..., F["ce"]], x[..., F["bytes"]]) / math.log(2), sums, used, level)
    out["byte_perplexity"] = np.exp(_divide(total[..., F["ce"]], total[..., F["bytes"]]))
    listed = sums[..., F["listed_tokens"]] > 0
    out["listed_tokens"] = total[..., F["listed_tokens"]].astype(np.int64)
    for name in ("rank_1", "inside_topk", "rank_2_5", "rank_6_up", "unlisted"):
        label = {"rank_1": "top1_accuracy", "inside_topk": "topk_share"}.get(name, f"share_{name}")
        value, lo, hi = _jackknife(lambda x, i=F[name]: _divide(x[..., i], x[..., F["listed_tokens"]]),
                                   sums, listed, level)
        out[label] = value
        if name in ("rank_1", "inside_topk"):
            out[f"{label}_lo"], out[f"{label}_hi"] = lo, hi
    value, lo, hi = _jackknife(lambda x: _divide(x[..., F["entropy_lb"]], x[..., F["listed_tokens"]]),
                               sums, listed, level)
    out["entropy_lower_bound"], out["entropy_lower_bound_lo"], out["entropy_lower_bound_hi"] = (
        value * scale, lo * scale, hi * scale)
    return out
