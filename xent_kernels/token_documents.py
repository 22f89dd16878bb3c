"""The documents of a token dump's state: each document's scored tokens and CE sum, by
the hash of its key, merged across pieces so that the per-document figures do not
depend on sharding; and a batch's documents, from one pass when its tokens come in
runs by document (as dumps hold them), else from a sort."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from ._numba import strict_kernel
from .merge_rules import two_sum

__all__ = ["DocumentTable", "batch_documents", "grouped_sums", "neumaier"]


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
        sums, comps = grouped_sums(ce, start)
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


def grouped_sums(values: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compensated sums of consecutive runs of `values` beginning at `start`."""
    sums, comps = np.zeros(len(start)), np.zeros(len(start))
    group = np.repeat(np.arange(len(start)), np.diff(np.append(start, len(values))))
    _fold_groups(values, group, sums, comps)
    return sums, comps


@strict_kernel
def neumaier(total, x):
    """total + x and its rounding error (Neumaier's compensated addition)."""
    t = total + x
    if abs(total) >= abs(x):
        return t, (total - t) + x
    return t, (x - t) + total


@strict_kernel
def _fold_groups(values, group, sums, comps):
    for i in range(values.shape[0]):
        g = group[i]
        sums[g], error = neumaier(sums[g], values[i])
        comps[g] += error


def batch_documents(slice_ids: np.ndarray, hashes: np.ndarray, positions: np.ndarray, logprob: np.ndarray
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
            run_ce[r], error = neumaier(run_ce[r], -lp if lp < 0.0 else 0.0)
            run_comp[r] += error
            run_n[r] += 1
    return runs, rising
