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

from ._numba import strict_kernel
from .intervals import DEFAULT_LEVEL
from .merge_rules import two_sum
from .token_documents import DocumentTable, RepeatedPosition, batch_documents, neumaier
from .token_report import TOKEN_FIELDS, TokenReport

__all__ = [
    "ABSENT_LOGPROB", "DEFAULT_POSITION_EDGES", "LOGPROB_TOLERANCE", "RepeatedPosition", "TokenStats",
    "add_text_counts", "token_stats_partial",
]

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


@strict_kernel
def _add(sums, comps, row, col, x):
    sums[row, col], error = neumaier(sums[row, col], x)
    comps[row, col] += error


@strict_kernel
def _token_pass(slice_ids, slice_map, positions, edges, bucket, target, logprob, n_bytes, offsets, ids, lps,
                has_slices, has_buckets, has_bytes, has_topk, topk, vocab_size, count_nonfinite, n_buckets, cells,
                cells_comp, ece, ece_comp, token_sums, token_rank1, token_listed, token_top1, nonfinite, n_bins, stamp):
    """Fold a batch of tokens into the state arrays; returns (first bad row, reason code)
    or (-1, 0). A token's group is its slice (`slice_map` of its batch slice id) times
    the position buckets plus its position's bucket (the last of `edges` at or below
    it). `stamp` (-1 for every listed id) finds an id repeated within a list."""
    n = target.shape[0]
    n_positions = edges.shape[0]
    for i in range(n):
        lp = logprob[i]
        t = target[i]
        if lp != lp:
            return i, 1
        if lp > LOGPROB_TOLERANCE:
            return i, 2
        if t < 0 or (vocab_size > 0 and t >= vocab_size):
            return i, 6
        position = positions[i]
        if position < 0:
            return i, 9
        low, high = 0, n_positions  # edges[low] <= position < edges[high]
        while high - low > 1:
            middle = (low + high) // 2
            if edges[middle] <= position:
                low = middle
            else:
                high = middle
        g = (slice_map[slice_ids[i]] if has_slices else slice_map[0]) * n_positions + low
        k = bucket[i] if has_buckets else 0
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
        if has_bytes:
            _add(cells, cells_comp, row, 2, float(n_bytes[i]))
        token_sums[t, k, 0] += 1.0
        token_sums[t, k, 1], error = neumaier(token_sums[t, k, 1], ce)
        token_sums[t, k, 2] += error
        if not has_topk:
            continue
        start = offsets[i]
        stop = offsets[i + 1]
        listed = False
        greater = 0
        best = lp
        best_id = t
        known_mass = 0.0
        plogp = 0.0
        entries = 0
        for j in range(start, stop):
            v = lps[j]
            if v != v:
                return i, 3
            if v <= ABSENT_LOGPROB:
                continue
            if v > LOGPROB_TOLERANCE:
                return i, 4
            if v > 0.0:
                v = 0.0
            u = ids[j]
            if u < 0 or (vocab_size > 0 and u >= vocab_size):
                return i, 10
            if stamp[u] == i:
                return i, 5
            stamp[u] = i
            entries += 1
            if u == t:
                listed = True
                v = lp  # the target's own log-prob stands for its entry
            elif v > lp:
                greater += 1
            if v > best or (v == best and u < best_id):  # ties: the smallest id
                best = v
                best_id = u
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
        if tail < -LOGPROB_TOLERANCE:
            return i, 7
        if tail > 0.0:
            plogp -= tail * math.log(tail)
        rank = greater + 1
        _add(cells, cells_comp, row, 3, 1.0)
        token_listed[t] += 1
        token_top1[best_id] += 1
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
    token_sums: np.ndarray  # (V, K, 3) float64: tokens, CE sum, its compensation (one cache line a token)
    token_rank1: np.ndarray  # (V,) int64
    token_listed: np.ndarray  # (V,) int64
    token_top1: np.ndarray  # (V,) int64: tokens whose predicted top-1 (listed or target) is this id
    documents: DocumentTable
    has_bytes: bool = False
    has_text_counts: bool = False

    @property
    def vocab(self) -> int:
        return self.token_sums.shape[0]

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
            np.zeros((vocab, k, 3)),
            np.zeros(vocab, dtype=np.int64), np.zeros(vocab, dtype=np.int64), np.zeros(vocab, dtype=np.int64),
            DocumentTable.empty(), bool(has_bytes),
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
        for name in ("token_sums", "token_rank1", "token_listed", "token_top1"):
            mine = getattr(self, name)
            full = np.zeros((vocab, *mine.shape[1:]), dtype=mine.dtype)
            full[: mine.shape[0]] = mine
            out[name] = full
        out["documents"] = self.documents.on(np.array(rows, dtype=np.int64))
        return out

    @classmethod
    def merge(cls, *states: Self) -> Self:
        """One state of all `states`; commutative bit for bit (two_sum is symmetric).
        Raises RepeatedPosition when two states hold a position of a document twice,
        as far as their document tables can tell (:class:`DocumentTable`)."""
        first = states[0]
        if any(state._shape() != first._shape() for state in states):
            raise ValueError("cannot merge token states of different position buckets, buckets, bins or topk")
        keys = tuple(sorted(set().union(*(s.slice_keys for s in states)), key=_key_order))
        vocab = max(s.vocab for s in states)
        total = first._on(keys, vocab)
        for other in states[1:]:
            y = other._on(keys, vocab)
            for a, b in (("cells", "cells_comp"), ("ece", "ece_comp")):
                total[a], total[b] = two_sum(total[a], total[b], y[a], y[b])
            mine, theirs = total["token_sums"], y["token_sums"]  # mine: a copy, _on's
            mine[..., 1], mine[..., 2] = two_sum(mine[..., 1], mine[..., 2], theirs[..., 1], theirs[..., 2])
            mine[..., 0] += theirs[..., 0]
            for name in ("text_counts", "nonfinite", "ignored", "token_rank1", "token_listed", "token_top1"):
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
    source: str = "",
    into: TokenStats | None = None,
) -> tuple[TokenStats, int, str, str]:
    """The state of a batch of scored tokens.

    Returns the state and, for the first bad token, its row, column and reason
    (-1, "", "" when every token is valid; the state is then of no use). `ignored`
    (per slice) counts tokens left out before the call (a null target or log-prob).
    `doc_hashes` (each token's document key hash) gives the per-document figures;
    `source` names the batch's file there, for the message of a position repeated
    across files.
    With `into` (a state of the same options) the batch is folded into it, in place
    when it already holds the batch's slices and ids, and that state is returned: a
    piece's batches then share one state instead of one each, merged. A position
    of a document in this batch and in one folded `into` before raises
    RepeatedPosition, as ``TokenStats.merge`` does (when the document table can tell).
    """
    n = len(target)
    largest = int(target.max()) if n else -1
    if vocab_size <= 0 and largest >= MAX_UNDECLARED_VOCAB:
        row = int(np.flatnonzero(target >= MAX_UNDECLARED_VOCAB)[0])
        return TokenStats.empty(slice_keys=slice_keys, position_edges=position_edges, n_buckets=n_buckets),\
            row, "target", f"token id {largest} at or above {MAX_UNDECLARED_VOCAB}: declare vocab_size"
    has_topk = topk_offsets is not None
    largest_listed = int(topk_ids.max()) if has_topk and len(topk_ids) else 0
    if vocab_size <= 0 and largest_listed >= MAX_UNDECLARED_VOCAB:
        row = int(np.searchsorted(topk_offsets, np.argmax(topk_ids >= MAX_UNDECLARED_VOCAB), side="right") - 1)
        return TokenStats.empty(slice_keys=slice_keys, position_edges=position_edges, n_buckets=n_buckets),\
            row, "topk_ids", f"token id {largest_listed} at or above {MAX_UNDECLARED_VOCAB}: declare vocab_size"
    # listed ids count too: a predicted top-1 may be an id no target has
    vocab = max(int(vocab_size), largest + 1, largest_listed + 1 if has_topk and len(topk_ids) else 0)
    keys = tuple(tuple(key) for key in slice_keys)
    if into is not None and set(into.slice_keys).issuperset(keys) and into.vocab >= vocab:
        state = into if target_bytes is None or into.has_bytes else replace(into, has_bytes=True)
    else:
        # a piece's first batch, or the rare one with a new slice or a larger id: a state that holds it
        batch = TokenStats.empty(slice_keys=keys, vocab=vocab, has_bytes=target_bytes is not None,
                                 position_edges=position_edges, n_buckets=n_buckets, n_bins=n_bins, topk=topk)
        state = batch if into is None else TokenStats.merge(into, batch)
    where = {key: i for i, key in enumerate(state.slice_keys)}
    slice_map = np.array([where[key] for key in keys], dtype=np.int64)  # batch slice id -> the state's
    edges = np.asarray(position_edges, dtype=np.int64)
    s, p = len(state.slice_keys), len(edges)
    # views: the kernel adds into the state's own arrays
    cells, cells_comp = _flat_view(state.cells, len(TOKEN_FIELDS)), _flat_view(state.cells_comp, len(TOKEN_FIELDS))
    ece, ece_comp = _flat_view(state.ece, 3), _flat_view(state.ece_comp, 3)
    stamp = np.full(max(largest_listed, 0) + 1 if has_topk else 1, -1, dtype=np.int64)
    empty_i = np.zeros(1, dtype=np.int64)
    nonfinite_groups = np.zeros(s * p, dtype=np.int64)
    positions = np.asarray(positions).astype(np.int64, copy=False)
    row, code = _token_pass(
        empty_i if slice_ids is None else slice_ids.astype(np.int64, copy=False), slice_map, positions, edges,
        empty_i if buckets is None else buckets.astype(np.int64, copy=False), target.astype(np.int64, copy=False),
        target_logprob.astype(np.float64, copy=False),
        empty_i if target_bytes is None else target_bytes.astype(np.int64, copy=False),
        topk_offsets.astype(np.int64, copy=False) if has_topk else empty_i,
        topk_ids.astype(np.int64, copy=False) if has_topk else empty_i,
        topk_logprobs.astype(np.float64, copy=False) if has_topk else np.zeros(1),
        slice_ids is not None, buckets is not None, target_bytes is not None, has_topk, int(topk), int(vocab_size),
        bool(count_nonfinite), int(n_buckets), cells, cells_comp, ece, ece_comp, state.token_sums, state.token_rank1,
        state.token_listed, state.token_top1, nonfinite_groups, int(n_bins), stamp,
    )
    if row >= 0:
        return state, int(row), *REASONS[int(code)]
    state.nonfinite[:] += nonfinite_groups.reshape(s, p).sum(axis=1)
    if ignored is not None:
        state.ignored[slice_map] += ignored
    if doc_hashes is not None:
        doc_slices = np.full(n, slice_map[0]) if slice_ids is None else slice_map[slice_ids]
        documents, again = batch_documents(doc_slices, doc_hashes, positions,
                                           target_logprob.astype(np.float64, copy=False), source)
        if again >= 0:
            return state, again, *REASONS[11]
        state = replace(state, documents=DocumentTable.merge_two(state.documents, documents))
    return state, -1, "", ""


def _flat_view(array: np.ndarray, columns: int) -> np.ndarray:
    """`array` as rows of `columns`, sharing its memory (an error rather than a copy)."""
    view = array.view()
    view.shape = (-1, columns)
    return view


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


