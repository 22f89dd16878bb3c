"""Work done on the workers: a shard's footer inspected, a piece of it read batch by
batch and reduced by the fused kernel to a small mergeable state.

A piece is one file, or a run of row groups of a big file, or in-memory rows that
come with the task: a chunk of a pyarrow Table or pandas DataFrame, or a Dask
DataFrame partition. Every kind is read through the same ``to_arrays`` and kernel.
Rows are never shuffled or collected: a piece returns a ``PieceResult`` of size
O(slices × classes).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from xent_kernels import ClassStats, class_stats_partial, find_invalid_row
from xent_kernels.hashing import content_buckets, key_buckets
from xent_kernels.mergeable import merge_states
from xent_kernels.tokens import RepeatedPosition, TokenStats, add_text_counts, token_stats_partial

from ..config import EvalConfig
from ..kinds import TOKENS
from ..errors import DataError
from ..inputs.integrity import inspect_integrity, skipped_reason
from ..inputs.memory import as_arrow
from ..inputs.reader import Batch, iter_batches, open_parquet, resolve_spec, table_batches
from ..inputs.sources import InputFile
from ..inputs.spec import ReadSpec, check_arrow_schema, text_slices
from ..inputs.tokens import TokenBatch, TokenSpec, check_token_schema, resolve_token_spec, to_token_batch
from ..phases import phase


@dataclass(frozen=True)
class BadShard:
    url: str
    reason: str
    rows: int | None  # rows its footer declares; None (unknown) when the footer could not be read


@dataclass(frozen=True)
class Piece:
    file: InputFile  # a shard, or the stand-in naming an in-memory source (flows.inputs.memory)
    row_groups: tuple[int, ...] | None  # None: the whole file
    rows: int
    first_row: int = 0  # in memory: the index of the piece's first row in its source, for messages
    in_memory: bool = False  # the rows come with the task (``data``), not from the file


@dataclass(frozen=True)
class PieceResult:
    """The mergeable outcome of some pieces: statistics (a ``ClassStats``, or a
    ``TokenStats`` for token dumps) plus the shards left out (``empty``/``merge`` as in
    :mod:`xent_kernels.mergeable`)."""

    stats: ClassStats | TokenStats
    bad_shards: tuple[BadShard, ...] = ()
    rows_read: int = 0
    probability_like: tuple[str, ...] = ()  # files read as logits whose rows look like probabilities

    @classmethod
    def empty(cls, spec: "ReadSpec | TokenSpec") -> "PieceResult":
        """No pieces read: the identity of :meth:`merge`, for a read of `spec`."""
        return cls(empty_state(spec))

    @classmethod
    def merge(cls, *results: "PieceResult") -> "PieceResult":
        """One result of all `results`, as :mod:`xent_kernels.mergeable` says a merge is."""
        stats = merge_states(*(r.stats for r in results))
        bad = tuple(sorted((b for r in results for b in r.bad_shards), key=lambda b: b.url))
        suspicious = tuple(sorted({url for r in results for url in r.probability_like}))
        return cls(stats, bad, sum(r.rows_read for r in results), suspicious)


@dataclass(frozen=True)
class FileInfo:
    file: InputFile
    row_group_rows: tuple[int, ...] = ()  # a bad file's: (its footer's row count,), or () if unreadable
    error: str | None = None
    checksummed: bool = False  # the pages read carry CRCs, verified as they are read

    @property
    def rows(self) -> int:
        return sum(self.row_group_rows)

    def bad_shard(self) -> BadShard:
        """This file, rejected, as a bad shard: its rows unknown when its footer was not read."""
        return BadShard(self.file.url, self.error or "", self.rows if self.row_group_rows else None)



def inspect_file(file: InputFile, spec: ReadSpec) -> FileInfo:
    """Read a shard's footer, check its schema against the spec, and see whether its
    pages carry checksums. A bad shard's rows are what its footer declares, if readable."""
    declared = None
    try:
        parquet = open_parquet(file.url, spec.storage_options)
        declared = parquet.metadata.num_rows
        check_any_schema(parquet.schema_arrow, file, spec)
        checksummed = inspect_integrity(parquet, file.url, spec.columns_to_read(), spec.storage_options)
        metadata = parquet.metadata
        rows = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
        return FileInfo(file, rows, checksummed=checksummed)
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return FileInfo(file, (declared,) if declared is not None else (), error=skipped_reason(error))


def evaluate_piece(piece: Piece, spec: ReadSpec | TokenSpec, data: Any = None) -> PieceResult:
    """Read one piece batch by batch and reduce it to statistics. An in-memory piece's
    rows are `data` (a pyarrow Table or a pandas DataFrame)."""
    try:
        if isinstance(spec, TokenSpec):
            stats, rows, probability_like = _piece_token_stats(piece, spec, data), 0, False
        else:
            stats, rows, probability_like = _piece_stats(piece, spec, data)
        return PieceResult(stats, rows_read=rows, probability_like=(piece.file.url,) if probability_like else ())
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return PieceResult(empty_state(spec), (BadShard(piece.file.url, skipped_reason(error), piece.rows),))


def empty_state(spec: ReadSpec | TokenSpec) -> ClassStats | TokenStats:
    """The state of no rows for a read of `spec`."""
    if isinstance(spec, TokenSpec):
        return TokenStats.empty(**spec.state_options())
    return ClassStats.empty(spec.n_classes, **spec.state_options())


def check_any_schema(schema: pa.Schema, file: InputFile, spec: ReadSpec | TokenSpec) -> None:
    """`schema` (of a shard, or of an in-memory piece named by `file`) fits `spec`."""
    if isinstance(spec, TokenSpec):
        check_token_schema(schema, file, spec)
    else:
        check_arrow_schema(schema, file, spec)


def batch_buckets(batch: Batch, spec: ReadSpec) -> np.ndarray | None:
    """Each row's jackknife bucket: a hash of its key columns when the spec reads them,
    else of its label and prediction bytes; None with one bucket. Never the row's
    file or position, so intervals do not depend on sharding."""
    if spec.n_buckets == 1:
        return None
    if batch.ids is not None:
        return key_buckets(batch.ids, spec.n_buckets)
    return content_buckets(batch.pred, batch.labels, spec.n_buckets)


def piece_batches(piece: Piece, spec: ReadSpec | TokenSpec, data: Any = None) -> Iterator[Batch | TokenBatch]:
    """A piece's rows as Batches (TokenBatches for a token dump), its schema checked
    against the spec: from its file, or, in memory, from `data` (a pyarrow Table or a
    pandas DataFrame)."""
    convert = to_token_batch if isinstance(spec, TokenSpec) else None
    if piece.in_memory:
        table = as_arrow(data, piece.file.url)
        check_any_schema(table.schema, piece.file, spec)
        return table_batches(table, piece.file, spec, piece.first_row, convert)
    parquet = open_parquet(piece.file.url, spec.storage_options, spec.column_buffer, text_slices(spec))
    check_any_schema(parquet.schema_arrow, piece.file, spec)
    return iter_batches(parquet, piece.file, spec, None if piece.row_groups is None else list(piece.row_groups), convert)


def _piece_stats(piece: Piece, spec: ReadSpec, data: Any = None) -> tuple[ClassStats, int, bool]:
    """The piece's statistics, its rows, and whether its first batch, read as logits,
    looks like probabilities instead."""
    batches = piece_batches(piece, spec, data)
    first_looks_like_probabilities: list[bool] = []
    rows = [0]

    def batch_stats(batch: Batch) -> ClassStats:
        rows[0] += len(batch.labels)
        if not first_looks_like_probabilities:
            first_looks_like_probabilities.append(spec.kind == "logits" and _looks_like_probabilities(batch.pred))
        return _batch_stats(batch, piece.file, spec)

    # map, not a for loop: no variable keeps a batch alive while the next one is read.
    states = map(batch_stats, batches)
    stats = functools.reduce(_merged, states, empty_state(spec))
    return stats, rows[0], any(first_looks_like_probabilities)


def _merged(a: ClassStats | TokenStats, b: ClassStats | TokenStats) -> ClassStats | TokenStats:
    with phase("merge"):
        return merge_states(a, b)


def _piece_token_stats(piece: Piece, spec: TokenSpec, data: Any = None) -> TokenStats:
    """A token dump piece's state."""
    # each batch folds into the piece's one state (no state per batch to merge)
    fold = functools.partial(_token_batch_stats, file=piece.file, spec=spec)
    return functools.reduce(fold, piece_batches(piece, spec, data), empty_state(spec))


def _token_batch_stats(into: TokenStats, batch: TokenBatch, file: InputFile, spec: TokenSpec) -> TokenStats:
    with phase("kernel"), repeats_as_data_errors(spec):
        state, bad, column, reason = token_stats_partial(
            batch.target, batch.target_logprob, slice_ids=batch.slice_ids, slice_keys=batch.slice_keys,
            positions=batch.position, buckets=batch.buckets, target_bytes=batch.target_bytes,
            topk_offsets=batch.topk_offsets, topk_ids=batch.topk_ids, topk_logprobs=batch.topk_logprobs,
            vocab_size=spec.columns.vocab_size or 0, count_nonfinite=spec.on_nonfinite == "count",
            ignored=batch.ignored, doc_hashes=batch.doc_hashes, source=file.url, into=into,
            **spec.state_options(),
        )
    if bad >= 0:
        name = getattr(spec.columns, f"{column}_col")
        where = f"{file.url}: column '{name}', row {batch.row[bad]}"
        if spec.layout == "documents":
            where += f" (the document's token at position {batch.position[bad]})"
        hint = {"target_logprob": "; a token with an infinite cross-entropy is left out and counted with "
                "--on-nonfinite count"}.get(column, "") if "-inf" in reason else ""
        raise DataError(f"{where}: {reason}{hint}")
    if batch.documents is not None and (batch.documents["n_bytes"] is not None or batch.documents["n_words"] is not None):
        docs = batch.documents
        state = add_text_counts(state, docs["slice_ids"], docs["buckets"], docs["n_bytes"], docs["n_words"])
    return state


@contextmanager
def repeats_as_data_errors(spec: ReadSpec | TokenSpec) -> Iterator[None]:
    """A position repeated within a document, found when token states merge
    (xent_kernels' RepeatedPosition), as a DataError: one line saying what was found,
    in which files, and how to find the rows."""
    try:
        yield
    except RepeatedPosition as error:
        c = spec.columns
        key = ", ".join(spec.doc_cols)
        if spec.layout == "token_rows":
            where, group = f"column '{c.position_col}'", f"{key}, {c.position_col}"
        else:  # a document's positions follow from its rows: a repeat is in two of them
            where, group = "two rows of one document", key
        files = " and ".join(name for name in error.sources if name) or "the dump"
        raise DataError(
            f"{files}: {where}: {error} (a shard listed twice, or a document written to two shards?); list each "
            f"shard once, or find the repeats with SELECT {group}, count(*) FROM <dump> GROUP BY {group} HAVING "
            "count(*) > 1"
        ) from None


def _looks_like_probabilities(pred: np.ndarray, rows: int = 4096) -> bool:
    """Every one of the first `rows` rows is non-negative and sums to 1 (within 1e-4)."""
    head = pred[:rows]
    return len(head) > 0 and bool((head >= 0).all() and (np.abs(head.sum(axis=1, dtype=np.float64) - 1.0) <= 1e-4).all())


def _batch_stats(batch: Batch, file: InputFile, spec: ReadSpec) -> ClassStats:
    if spec.kind != "logits":  # probabilities must also be normalised
        _reject_invalid_rows(batch.pred, batch.first_row, file, spec)
    with phase("buckets"):
        buckets = batch_buckets(batch, spec)
    with phase("kernel"):
        state = class_stats_partial(
            batch.pred,
            batch.labels,
            kind=spec.kind,
            weights=batch.weights,
            slice_ids=batch.slice_ids,
            slice_keys=batch.slice_keys,
            eps=spec.eps,
            buckets=buckets,
            **spec.state_options(),
        )
    if spec.on_nonfinite == "error" and state.n_nonfinite:
        _reject_invalid_rows(batch.pred[batch.labels >= 0], batch.first_row, file, spec, batch.labels >= 0)
    return state


def _reject_invalid_rows(
    pred: np.ndarray, first_row: int, file: InputFile, spec: ReadSpec, rows_of: np.ndarray | None = None
) -> None:
    """Raise a DataError naming the first invalid row. With on_nonfinite='count', rows
    holding NaN/inf are left to the kernel (counted) and only the others are checked.
    `rows_of` maps the rows of `pred` back to the batch when `pred` is a subset."""
    index = np.flatnonzero(rows_of) if rows_of is not None else np.arange(len(pred))
    if spec.on_nonfinite == "count":
        finite = np.isfinite(pred).all(axis=1) if spec.kind != "log_probs" else ~np.isnan(pred).any(axis=1)
        pred, index = pred[finite], index[finite]
    row, reason = find_invalid_row(pred, spec.kind, spec.prob_tolerance)
    if row >= 0:
        settings = ("; to accept such rows, raise --prob-tolerance (prob_tolerance: in a config), or divide each row by "
                    "its sum with --renormalize (renormalize: true)") if "tolerance" in reason else ""
        raise DataError(
            f"{file.url}: column '{spec.pred_label}', row {first_row + index[row]}: {spec.kind} with {reason}{settings}"
        )



@dataclass(frozen=True)
class PartitionInfo:
    """An in-memory partition's first rows, as Arrow, to learn the layout from."""

    head: pa.Table


def inspect_partition(data: Any, head_rows: int = 64) -> PartitionInfo:
    """The first `head_rows` rows of a pandas DataFrame or pyarrow Table partition."""
    return PartitionInfo(as_arrow(data.head(head_rows) if hasattr(data, "head") else data.slice(0, head_rows)))


# --------------------------------------------------------------------------- the client side


def resolve_any_spec(config: EvalConfig, first: InputFile) -> ReadSpec | TokenSpec:
    """The read settings of `config` (a token dump's for kind tokens) from `first`'s schema."""
    if config.kind == TOKENS:
        return resolve_token_spec(config, open_parquet(first.url, config.storage_options).schema_arrow, first.url,
                                  first.hive)
    return resolve_spec(config, first)


def first_readable_spec(config: EvalConfig, inputs: list[InputFile]) -> tuple[ReadSpec | TokenSpec, tuple[BadShard, ...]]:
    """The read settings, from the first file that yields them. With on_bad_shard='skip',
    files before it that cannot (unreadable, or another layout) are bad shards; with
    'error', the first file decides."""
    if config.on_bad_shard == "error":
        return resolve_any_spec(config, inputs[0]), ()
    skipped: list[BadShard] = []
    for file in inputs:
        try:
            return resolve_any_spec(config, file), tuple(skipped)
        except DataError as error:
            skipped.append(BadShard(file.url, skipped_reason(error), _footer_rows(file, config.storage_options)))
    raise DataError(f"no file yields the read settings; the first: {skipped[0].reason}")


def _footer_rows(file: InputFile, storage_options: dict) -> int | None:
    """Rows a file's footer declares; None when the footer cannot be read."""
    try:
        return open_parquet(file.url, storage_options).metadata.num_rows
    except DataError:
        return None


def plan_pieces(infos: list[FileInfo], task_rows: int | None) -> list[Piece]:
    """One piece per file, or per run of row groups of about `task_rows` rows
    (None: whole files, so that a bad file is left out whole)."""
    pieces = []
    for info in infos:
        if info.error is not None:
            continue
        if task_rows is None or info.rows <= task_rows or len(info.row_group_rows) == 1:
            pieces.append(Piece(info.file, None, info.rows))
            continue
        start, rows = 0, 0
        for g, group_rows in enumerate(info.row_group_rows):
            rows += group_rows
            if rows >= task_rows or g == len(info.row_group_rows) - 1:
                pieces.append(Piece(info.file, tuple(range(start, g + 1)), rows))
                start, rows = g + 1, 0
    return pieces

