"""The documents of a token dump's state: each document's scored tokens and CE sum, by
the hash of its key, merged across pieces so that the per-document figures do not
depend on sharding; and a batch's documents, from one pass when its tokens come in
runs by document (as dumps hold them), else from a sort.

A position repeated within a document is bad input. Among the tokens read together it
is found by a sort (``batch_documents``); across batches and files, by a check that
needs no positions kept: a document's table row holds its smallest and largest
position and its number of tokens, and a merge whose tokens outnumber the positions
between its smallest and largest (pigeonhole), or whose two parts share their smallest
or their largest position, has a repeat (``RepeatedPosition``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np

from ._numba import strict_kernel
from .merge_rules import two_sum

__all__ = ["DocumentTable", "RepeatedPosition", "batch_documents", "grouped_sums", "neumaier"]


class RepeatedPosition(ValueError):
    """Two parts of a document, merged, hold a position twice: either the same
    position is the smallest (or the largest) of both (`position`), or the document
    has more tokens than positions between its smallest and largest (`position` -1).
    `sources` names the files that hold it: those of the shared position, else of the
    parts' positions nearest their overlap."""

    def __init__(self, doc_hash: int, tokens: int, first: int, last: int, position: int, sources: tuple[str, ...]):
        super().__init__(doc_hash, tokens, first, last, position, sources)  # the arguments, so that it pickles
        self.doc_hash, self.tokens, self.first, self.last = doc_hash, tokens, first, last
        self.position, self.sources = position, sources

    def __str__(self) -> str:
        found = (f"position {self.position:,} twice" if self.position >= 0 else
                 f"{self.tokens:,} scored tokens at positions {self.first:,} to {self.last:,}, so some position twice")
        return f"the document with key hash {self.doc_hash:#018x} has {found}"


@dataclass(frozen=True, eq=False)
class DocumentTable:
    """Per (slice, document): the document's finite-CE tokens and their CE sum (the
    per-document figures), and for the repeated-position check its scored tokens of
    every kind, its smallest and largest position and the files holding them; a row
    per document key hash, sorted by (slice, hash). A document's tokens may be spread
    over any pieces: merging adds its partial sums, so the per-document figures do not
    depend on sharding. 72 bytes a document, and the names of the files its rows
    point to.

    Merging finds a repeated position whenever the document's repeats outnumber the
    gaps between its positions: always when its positions are consecutive, as dumps
    write them (the documents layout's always are), so then a shard listed twice is
    always found. Whatever the positions, it finds a document listed twice whole (the
    two parts share their smallest position). A repeat among sparse positions that
    the gaps hide, in parts that share neither end, passes unseen."""

    slice: np.ndarray  # int64: index into the owning state's slice_keys
    hash: np.ndarray  # uint64: the document key's hash (xent_kernels.hashing.key_hash, jackknife seed)
    n: np.ndarray  # int64: tokens with a finite CE
    ce: np.ndarray  # float64, with its compensation
    ce_comp: np.ndarray
    tokens: np.ndarray  # int64: scored tokens, a -inf log-prob's too
    first: np.ndarray  # int64: the smallest position
    last: np.ndarray  # int64: the largest position
    first_source: np.ndarray  # int32: index into sources of the file holding the smallest position
    last_source: np.ndarray  # int32: of the file holding the largest
    sources: tuple[str, ...] = ()  # file names, sorted; only those some row points to

    @classmethod
    def empty(cls) -> Self:
        i64, i32 = np.zeros(0, np.int64), np.zeros(0, np.int32)
        return cls(i64, np.zeros(0, np.uint64), i64, np.zeros(0), np.zeros(0), i64, i64, i64, i32, i32)

    @classmethod
    def of_tokens(cls, slice_ids: np.ndarray, hashes: np.ndarray, positions: np.ndarray, logprob: np.ndarray,
                  source: str = "") -> Self:
        """The table of some tokens (their slice, document hash, position and log-prob)."""
        if not len(hashes):
            return cls.empty()
        order = np.lexsort((hashes, slice_ids))
        slice_ids, hashes, positions, logprob = slice_ids[order], hashes[order], positions[order], logprob[order]
        start = np.flatnonzero(np.concatenate([[True], (slice_ids[1:] != slice_ids[:-1]) | (hashes[1:] != hashes[:-1])]))
        finite = logprob > -np.inf
        # an infinite CE adds 0.0: the finite ones are summed in the same order, to the same bits
        sums, comps = grouped_sums(np.where(finite, -np.minimum(logprob, 0.0), 0.0), start)
        n = np.add.reduceat(finite.astype(np.int64), start)
        tokens = np.diff(np.append(start, len(hashes)))
        first, last = np.minimum.reduceat(positions, start), np.maximum.reduceat(positions, start)
        here = np.zeros(len(start), np.int32)
        return cls(slice_ids[start], hashes[start], n, sums, comps, tokens, first, last, here, here, (source,))

    def on(self, rows: np.ndarray) -> Self:
        """The table with slice indices mapped by `rows` (old index -> new), re-sorted."""
        slices = rows[self.slice] if len(self.slice) else self.slice
        order = np.lexsort((self.hash, slices))
        return DocumentTable(slices[order], self.hash[order], self.n[order], self.ce[order], self.ce_comp[order],
                             self.tokens[order], self.first[order], self.last[order], self.first_source[order],
                             self.last_source[order], self.sources)

    @classmethod
    def merge_two(cls, a: Self, b: Self) -> Self:
        """Both tables' documents, a document in both with its sums added (two_sum: the
        same bits either way round). Raises RepeatedPosition when the two parts of a
        document hold a position twice, as far as the table can tell (see the class)."""
        if not len(a.n) or not len(b.n):
            return b if not len(a.n) else a
        sources, (a_first, a_last), (b_first, b_last) = _joined_sources(a, b)
        columns = {name: np.concatenate([getattr(a, name), getattr(b, name)]) for name in _SUMMED + _ENDS}
        columns["first_source"] = np.concatenate([a_first, b_first])
        columns["last_source"] = np.concatenate([a_last, b_last])
        slices, hashes = np.concatenate([a.slice, b.slice]), np.concatenate([a.hash, b.hash])
        order = np.lexsort((hashes, slices))
        slices, hashes = slices[order], hashes[order]
        again = np.flatnonzero((slices[1:] == slices[:-1]) & (hashes[1:] == hashes[:-1]))  # a document in both
        keep = np.ones(len(order), dtype=bool)
        keep[again + 1] = False
        rows = order[keep]  # each document's first part, in the concatenation
        out = {name: values[rows] for name, values in columns.items()}
        if len(again):
            at = again - np.arange(len(again))  # where the documents in both sit in `out`
            one, two = order[again], order[again + 1]
            parts = {name: (values[one], values[two]) for name, values in columns.items()}
            _check_positions(hashes[again], parts, sources)
            for name in ("n", "tokens"):
                out[name][at] = parts[name][0] + parts[name][1]
            (ce, ce_other), (comp, comp_other) = parts["ce"], parts["ce_comp"]
            out["ce"][at], out["ce_comp"][at] = two_sum(ce, comp, ce_other, comp_other)
            (first, first_other), (last, last_other) = parts["first"], parts["last"]
            # no ties: a position the smallest or largest of both parts has raised
            (source, source_other), (end, end_other) = parts["first_source"], parts["last_source"]
            out["first_source"][at] = np.where(first_other < first, source_other, source)
            out["last_source"][at] = np.where(last_other > last, end_other, end)
            out["first"][at], out["last"][at] = np.minimum(first, first_other), np.maximum(last, last_other)
        return _referenced(cls(slices[keep], hashes[keep], **out, sources=sources))


_SUMMED = ("n", "ce", "ce_comp", "tokens")
_ENDS = ("first", "last")


def _joined_sources(a: DocumentTable, b: DocumentTable) -> tuple[tuple[str, ...], tuple, tuple]:
    """Both tables' file names, sorted, and each table's (first_source, last_source)
    as indices into them."""
    if a.sources == b.sources:
        return a.sources, (a.first_source, a.last_source), (b.first_source, b.last_source)
    sources = tuple(sorted(set(a.sources) | set(b.sources)))
    where = {name: i for i, name in enumerate(sources)}
    index = [np.array([where[name] for name in t.sources], np.int32) for t in (a, b)]
    return sources, (index[0][a.first_source], index[0][a.last_source]), (index[1][b.first_source],
                                                                          index[1][b.last_source])


def _referenced(table: DocumentTable) -> DocumentTable:
    """`table` without the file names no row points to (a name kept per file read
    would grow with the files, not the documents)."""
    if len(table.sources) < 2:  # one file (a piece's batches): its documents point to it
        return table
    used = (np.bincount(table.first_source, minlength=len(table.sources)) > 0) | (
        np.bincount(table.last_source, minlength=len(table.sources)) > 0)
    if used.all():
        return table
    index = (np.cumsum(used) - 1).astype(np.int32)
    sources = tuple(name for name, kept in zip(table.sources, used) if kept)
    return DocumentTable(table.slice, table.hash, table.n, table.ce, table.ce_comp, table.tokens, table.first,
                         table.last, index[table.first_source], index[table.last_source], sources)


def _check_positions(hashes: np.ndarray, parts: dict[str, tuple[np.ndarray, np.ndarray]],
                     sources: tuple[str, ...]) -> None:
    """Raise RepeatedPosition for the first document (of key hashes `hashes`) whose two
    parts (`parts`: each column's values in either) hold a position twice: they share
    their smallest or largest position, or have more tokens than positions between
    their smallest and largest."""
    (first, first_other), (last, last_other) = parts["first"], parts["last"]
    tokens = parts["tokens"][0] + parts["tokens"][1]
    low, high = np.minimum(first, first_other), np.maximum(last, last_other)
    same_first, same_last = first == first_other, last == last_other
    repeated = same_first | same_last | (tokens > high - low + 1)
    if not repeated.any():
        return
    j = int(np.argmax(repeated))
    if same_first[j]:
        position, files = first[j], [side[j] for side in parts["first_source"]]
    elif same_last[j]:
        position, files = last[j], [side[j] for side in parts["last_source"]]
    else:  # the part starting later and the part ending sooner hold positions where the parts overlap
        later, sooner = int(first_other[j] > first[j]), int(last_other[j] < last[j])
        position, files = -1, [parts["first_source"][later][j], parts["last_source"][sooner][j]]
    raise RepeatedPosition(int(hashes[j]), int(tokens[j]), int(low[j]), int(high[j]), int(position),
                           tuple(sorted({sources[f] for f in files})))


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


def batch_documents(slice_ids: np.ndarray, hashes: np.ndarray, positions: np.ndarray, logprob: np.ndarray,
                    source: str = "") -> tuple[DocumentTable, int]:
    """The documents of a batch's tokens, read from `source` (a file's name), and the row
    of the first position its document already has (-1: none). Tokens in runs by
    document with rising positions, as dumps hold them, take one pass; others a sort."""
    n = len(hashes)
    run_slice, run_hash = np.empty(n, np.int64), np.empty(n, np.uint64)
    run_n, run_ce, run_comp = np.empty(n, np.int64), np.empty(n), np.empty(n)
    run_tokens, run_first, run_last = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
    runs, rising = _document_runs(slice_ids, hashes, positions, logprob, run_slice, run_hash, run_n, run_ce, run_comp,
                                  run_tokens, run_first, run_last)
    once = runs < 2 or not np.any(np.diff(np.sort(run_hash[:runs])) == 0)  # no document in two runs
    if rising and once:
        if not runs:
            return DocumentTable.empty(), -1
        o = np.lexsort((run_hash[:runs], run_slice[:runs]))
        here = np.zeros(runs, np.int32)
        return DocumentTable(run_slice[o], run_hash[o], run_n[o], run_ce[o], run_comp[o], run_tokens[o], run_first[o],
                             run_last[o], here, here, (source,)), -1
    order = np.lexsort((positions, hashes))
    again = np.flatnonzero((hashes[order][1:] == hashes[order][:-1]) & (positions[order][1:] == positions[order][:-1]))
    if again.size:
        return DocumentTable.empty(), int(np.maximum(order[again], order[again + 1]).min())
    return DocumentTable.of_tokens(slice_ids, hashes, positions, logprob, source), -1


@strict_kernel
def _document_runs(slice_ids, hashes, positions, logprob, run_slice, run_hash, run_n, run_ce, run_comp, run_tokens,
                   run_first, run_last):
    """Runs of consecutive tokens of one (slice, document): each run's tokens, smallest
    and largest position, and its finite-CE tokens and their compensated CE sum;
    returns the number of runs and whether positions rise within every run."""
    runs = 0
    rising = True
    for i in range(hashes.shape[0]):
        position = positions[i]
        if i == 0 or slice_ids[i] != slice_ids[i - 1] or hashes[i] != hashes[i - 1]:
            run_slice[runs] = slice_ids[i]
            run_hash[runs] = hashes[i]
            run_n[runs] = 0
            run_ce[runs] = 0.0
            run_comp[runs] = 0.0
            run_tokens[runs] = 0
            run_first[runs] = position
            runs += 1
        elif position <= positions[i - 1]:
            rising = False
        r = runs - 1
        run_tokens[r] += 1
        run_last[r] = position  # the largest while positions rise; the sort path is taken otherwise
        lp = logprob[i]
        if lp > -np.inf:
            run_ce[r], error = neumaier(run_ce[r], -lp if lp < 0.0 else 0.0)
            run_comp[r] += error
            run_n[r] += 1
    return runs, rising
