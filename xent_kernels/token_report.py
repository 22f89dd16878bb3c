"""A token state's report: the token-weighted metrics per slice and position bucket, the
per-document figures, the frequency buckets and the per-token table, each with its
jackknife interval over document buckets (definitions: :mod:`xent_kernels.tokens`).

It reads a state through the attributes ``TokenState`` names, so that the state's
module imports this one and not the other way round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .intervals import DEFAULT_LEVEL, jackknife_bounds
from .token_documents import DocumentTable, grouped_sums

__all__ = ["F", "TOKEN_FIELDS", "TokenReport", "frequency_edges", "frequency_ranks"]


class TokenState(Protocol):
    """What the report reads of a ``TokenStats``."""

    slice_keys: tuple[tuple, ...]
    position_edges: tuple[int, ...]
    n_buckets: int
    cells: np.ndarray
    cells_comp: np.ndarray
    ece: np.ndarray
    ece_comp: np.ndarray
    text_counts: np.ndarray
    nonfinite: np.ndarray
    ignored: np.ndarray
    token_sums: np.ndarray
    token_rank1: np.ndarray
    token_listed: np.ndarray
    documents: DocumentTable
    has_bytes: bool
    has_text_counts: bool


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

def frequency_edges(distinct: int) -> NDArray[np.int64]:
    """Lower edges of the frequency-rank buckets 1-10, 11-100, 101-1000, ... (ranks from
    1) that cover `distinct` ranks."""
    edges = [1]
    while 10 ** len(edges) + 1 <= distinct and len(edges) < 19:
        edges.append(10 ** len(edges) + 1)
    return np.array(edges, dtype=np.int64)


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
    def of(cls, state: "TokenState", base="e", level: float = DEFAULT_LEVEL, counts: np.ndarray | None = None
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
        token_n = state.token_sums[..., 0].astype(np.int64)
        token_ce = state.token_sums[..., 1] + state.token_sums[..., 2]
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


def _document_metrics(state: "TokenState", scale: float, level: float) -> dict[str, np.ndarray]:
    """Per slice and overall (last): documents, the mean of per-document mean CE, and the
    geometric and arithmetic means of per-document perplexity, with jackknife intervals
    (a document's bucket is its hash modulo K, as its tokens')."""
    table, s, k = state.documents, len(state.slice_keys), state.n_buckets
    scored = table.n > 0  # a document whose every token has an infinite CE is left out, as those tokens are
    doc_slices, doc_hashes, doc_n = table.slice[scored], table.hash[scored], table.n[scored]
    ce = (table.ce + table.ce_comp)[scored]
    # over all slices a document counts once, with its tokens of every slice
    order = np.argsort(doc_hashes, kind="stable")
    hashes = doc_hashes[order]
    start = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]])) if len(hashes) else np.zeros(0, np.int64)
    overall_ce = sum(grouped_sums(ce[order], start))
    overall_n = np.add.reduceat(doc_n[order], start) if len(start) else np.zeros(0, np.int64)
    sums = np.zeros((s + 1, k, 3))  # per (slice, bucket): documents, Σ mean CE, Σ perplexity
    for rows, n, doc_ce, doc_hash in ((doc_slices, doc_n, ce, doc_hashes),
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
