"""Language-model token dumps (kind: tokens): what to read (`TokenSpec`, resolved from
the first schema) and a batch of Parquet rows as flat token arrays (`TokenBatch`).

Two layouts, told apart by the target column's type: a row per scored token
("token_rows"), or a row per document whose list columns hold its tokens in order
("documents"). Both become the same arrays, so the same tokens give the same report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xent_kernels.hashing import JACKKNIFE_SEED, buckets_of, key_hash

from ..config import EvalConfig, TokenColumns
from ..errors import DataError
from .reader import _slices, _where
from .sources import InputFile
from .spec import COLUMN_BUFFER_BYTES, READ_BUFFER_BYTES, check_columns_present, slice_columns

TOPK_KEY = b"xent.topk"  # schema metadata: the k of the dump's top-k lists
TOKEN_LAYOUTS = ("token_rows", "documents")
# Tokens read at a time: a token with a top-k list of 20 entries is about 250 bytes in
# Arrow and in the arrays made from it. A documents batch holds about as many tokens.
BATCH_TOKENS = 1 << 18


@dataclass(frozen=True)
class TokenSpec:
    """What to read from every shard of a token dump."""

    layout: str  # "token_rows" | "documents"
    columns: TokenColumns
    has_topk: bool
    has_bytes: bool
    has_first_position: bool
    has_n_bytes: bool
    has_n_words: bool
    slice_by: tuple[str, ...]
    hive_slices: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    doc_cols: tuple[str, ...]
    hive_ids: tuple[str, ...]
    topk: int
    n_buckets: int
    n_bins: int
    on_bad_shard: str
    on_nonfinite: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    reference_file: str = ""
    kind: str = "tokens"
    read_keys: bool = False  # batches carry each token's document key values (a join reads them)

    @property
    def id_cols(self) -> tuple[str, ...]:
        """What identifies a scored token: its document key and position."""
        return (*self.doc_cols, self.columns.position_col)

    def state_options(self) -> dict[str, Any]:
        """The options every piece's ``TokenStats`` is made with, so that all merge."""
        return dict(position_edges=tuple(self.columns.position_edges), n_buckets=self.n_buckets, n_bins=self.n_bins,
                    topk=self.topk)

    def columns_to_read(self) -> list[str]:
        c = self.columns
        names = [name for name in self.doc_cols if name not in self.hive_ids]
        names += [c.target_col, c.target_logprob_col]
        if self.layout == "token_rows":
            names.append(c.position_col)
        if self.has_topk:
            names += [c.topk_ids_col, c.topk_logprobs_col]
        for present, name in ((self.has_bytes, c.target_bytes_col), (self.has_first_position, c.first_position_col),
                              (self.has_n_bytes, c.n_bytes_col), (self.has_n_words, c.n_words_col)):
            if present:
                names.append(name)
        names += [name for name in self.slice_by if name not in self.hive_slices]
        return list(dict.fromkeys(names))

    @property
    def bucket_key(self) -> list[str] | None:
        """What picks a token's jackknife bucket: its document key (None with one bucket)."""
        return list(self.doc_cols) if self.n_buckets > 1 else None

    @property
    def column_buffer(self) -> int:
        low, high = COLUMN_BUFFER_BYTES
        return min(high, max(low, READ_BUFFER_BYTES // len(self.columns_to_read())))

    @property
    def batch_rows(self) -> int:
        """Rows read at a time when their tokens are not known: tokens, or documents of
        256 tokens."""
        return BATCH_TOKENS if self.layout == "token_rows" else max(1, BATCH_TOKENS // 256)

    def rows_per_batch(self, rows: int, tokens: int | None) -> int:
        """Rows read at a time from `rows` rows holding `tokens` tokens (None: not known):
        about BATCH_TOKENS tokens, however long the documents are."""
        if self.layout == "token_rows" or not tokens:
            return self.batch_rows
        return max(1, BATCH_TOKENS * rows // tokens)

    def tokens_in(self, row_group: pq.RowGroupMetaData) -> int | None:
        """The tokens a row group holds, from its footer: the target lists' values."""
        for i in range(row_group.num_columns):
            column = row_group.column(i)
            if column.path_in_schema.split(".")[0] == self.columns.target_col:
                return column.num_values
        return None


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def resolve_token_spec(config: EvalConfig, schema: pa.Schema, where: str, hive: dict[str, str]) -> TokenSpec:
    """The token layout and columns, from the config and the first shard's schema."""
    c = config.tokens
    names = set(schema.names)
    for name in (c.target_col, c.target_logprob_col):
        if name not in names:
            raise DataError(f"{where}: no column '{name}' for kind tokens; columns are {sorted(names)}. Name the token "
                            "columns under tokens: in a config (target_col, target_logprob_col, ...)")
    layout = "documents" if _is_list(schema.field(c.target_col).type) else "token_rows"
    if layout == "token_rows" and c.position_col not in names:
        raise DataError(f"{where}: no position column '{c.position_col}' (a row per token needs each token's position "
                        "in its document); name it with tokens.position_col")
    doc_cols = tuple(c.doc_cols)
    missing = [name for name in doc_cols if name not in names and name not in hive]
    if missing:
        raise DataError(f"{where}: no document key column {missing}; columns are {sorted(names)}. Name it with "
                        "tokens.doc_cols (it picks each document's jackknife bucket)")
    has_topk = c.topk_ids_col in names or c.topk_logprobs_col in names
    if has_topk and not (c.topk_ids_col in names and c.topk_logprobs_col in names):
        present = c.topk_ids_col if c.topk_ids_col in names else c.topk_logprobs_col
        raise DataError(f"{where}: column '{present}' without its partner ('{c.topk_ids_col}' and "
                        f"'{c.topk_logprobs_col}' come together)")
    hive_slices, slice_types = slice_columns(config.slice_by, schema, where, hive)
    metadata = schema.metadata or {}
    topk = c.topk or (int(json.loads(metadata[TOPK_KEY])) if TOPK_KEY in metadata else 0)
    return TokenSpec(
        layout=layout, columns=c, has_topk=has_topk, has_bytes=c.target_bytes_col in names,
        has_first_position=layout == "documents" and c.first_position_col in names,
        has_n_bytes=layout == "documents" and c.n_bytes_col in names,
        has_n_words=layout == "documents" and c.n_words_col in names,
        slice_by=tuple(config.slice_by), hive_slices=tuple(hive_slices), slice_types=tuple(slice_types),
        doc_cols=doc_cols, hive_ids=tuple(name for name in doc_cols if name not in names), topk=topk,
        n_buckets=config.n_buckets, n_bins=config.n_bins, on_bad_shard=config.on_bad_shard,
        on_nonfinite=config.on_nonfinite, storage_options=dict(config.storage_options), reference_file=where,
    )


def check_token_schema(schema: pa.Schema, file: InputFile, spec: TokenSpec) -> None:
    """`schema` has every column the first shard had, in the same layout."""
    check_columns_present(schema, file, spec)
    layout = "documents" if _is_list(schema.field(spec.columns.target_col).type) else "token_rows"
    if layout != spec.layout:
        raise DataError(f"{file.url}: a {layout.replace('_', ' ')} layout, but {spec.reference_file} has "
                        f"{spec.layout.replace('_', ' ')}: a dump holds one layout")


@dataclass
class TokenBatch:
    """A batch of tokens as flat arrays. `row` maps each token to its row in the file
    (the token's own row, or its document's), for messages."""

    first_row: int
    row: np.ndarray
    target: np.ndarray
    target_logprob: np.ndarray
    position: np.ndarray
    buckets: np.ndarray | None
    slice_ids: np.ndarray | None
    slice_keys: list[tuple]
    target_bytes: np.ndarray | None = None
    topk_offsets: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    ignored: np.ndarray | None = None  # per slice: tokens without a target or log-prob (null)
    doc_hashes: np.ndarray | None = None  # each token's document key hash
    doc_keys: list[np.ndarray] | None = None  # each token's document key values (TokenSpec.read_keys)
    documents: dict[str, np.ndarray] | None = None  # documents layout: per-row slice ids, buckets, n_bytes, n_words


def _numbers(column: pa.Array, name: str, first_row: int, file: InputFile, what: str) -> np.ndarray:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{_where(file, name, first_row + row)}: null {what}")
    return column.to_numpy(zero_copy_only=False)


def _lists(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list column's lengths per row (null: 0) and its values."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, pc.list_flatten(column)


def to_token_batch(batch: pa.RecordBatch, first_row: int, file: InputFile, spec: TokenSpec) -> TokenBatch:
    """One record batch as tokens, in either layout."""
    c = spec.columns
    n_rows = batch.num_rows
    slice_ids, slice_keys = _slices(batch, n_rows, file, spec)  # per row
    doc_keys = [np.full(n_rows, file.hive[name], dtype=object) if name in spec.hive_ids
                else _numbers(batch.column(name), name, first_row, file, "document key") for name in spec.doc_cols]
    # a document's key hash picks its jackknife bucket and keys its per-document sums
    row_hashes = key_hash(doc_keys, JACKKNIFE_SEED)
    row_buckets = buckets_of(row_hashes, spec.n_buckets) if spec.n_buckets > 1 else None
    target_col, lp_col = batch.column(c.target_col), batch.column(c.target_logprob_col)
    documents = None
    if spec.layout == "documents":
        lengths, target_col = _lists(target_col)
        lp_lengths, lp_col = _lists(lp_col)
        _same_lengths(lengths, lp_lengths, c.target_logprob_col, c.target_col, first_row, file)
        parent = np.repeat(np.arange(n_rows), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        first = (_numbers(batch.column(c.first_position_col), c.first_position_col, first_row, file, "first position")
                 .astype(np.int64) if spec.has_first_position else np.zeros(n_rows, dtype=np.int64))
        position = first[parent] + (np.arange(len(parent)) - starts[parent])
        documents = {
            "slice_ids": slice_ids if slice_ids is not None else np.zeros(n_rows, dtype=np.int64),
            "buckets": row_buckets if row_buckets is not None else np.zeros(n_rows, dtype=np.int64),
            "n_bytes": _numbers(batch.column(c.n_bytes_col), c.n_bytes_col, first_row, file, "byte count")
            if spec.has_n_bytes else None,
            "n_words": _numbers(batch.column(c.n_words_col), c.n_words_col, first_row, file, "word count")
            if spec.has_n_words else None,
        }
    else:
        parent = np.arange(n_rows)
        lengths = None
        position = _numbers(batch.column(c.position_col), c.position_col, first_row, file, "position").astype(np.int64)
    # a token without a target or a log-prob is left out and counted, as a null label is
    every = target_col.null_count == 0 and lp_col.null_count == 0
    present = (np.ones(len(target_col), dtype=bool) if every else
               ~(target_col.is_null().to_numpy(zero_copy_only=False) | lp_col.is_null().to_numpy(zero_copy_only=False)))

    def kept(values):
        """`values` (per token) of the tokens with a target and a log-prob."""
        if every:
            return values
        return values.filter(pa.array(present)) if isinstance(values, pa.Array) else values[present]

    topk = {}
    if spec.has_topk:
        ids, lps = batch.column(c.topk_ids_col), batch.column(c.topk_logprobs_col)
        if spec.layout == "documents":
            id_lengths, ids = _lists(ids)
            lp_lengths, lps = _lists(lps)
            _same_lengths(lengths, id_lengths, c.topk_ids_col, c.target_col, first_row, file)
            _same_lengths(lengths, lp_lengths, c.topk_logprobs_col, c.target_col, first_row, file)
        id_lengths, id_values = _lists(ids)
        lp_lengths, lp_values = _lists(lps)
        bad = np.flatnonzero(id_lengths != lp_lengths)
        if bad.size:
            raise DataError(f"{_where(file, c.topk_logprobs_col, first_row + parent[bad[0]])}: {lp_lengths[bad[0]]} "
                            f"log-probs for {id_lengths[bad[0]]} ids in '{c.topk_ids_col}'; the two lists go together")
        ids = _numbers(id_values, c.topk_ids_col, first_row, file, "top-k id")
        lps = _numbers(lp_values, c.topk_logprobs_col, first_row, file, "top-k log-prob")
        if not every:  # the lists of the tokens kept
            keep = np.repeat(present, id_lengths)
            ids, lps, id_lengths = ids[keep], lps[keep], id_lengths[present]
        topk = dict(topk_offsets=np.concatenate([[0], np.cumsum(id_lengths)]), topk_ids=ids, topk_logprobs=lps)
    target_bytes = None
    if spec.has_bytes:
        values = batch.column(c.target_bytes_col)
        if spec.layout == "documents":
            byte_lengths, values = _lists(values)
            _same_lengths(lengths, byte_lengths, c.target_bytes_col, c.target_col, first_row, file)
        target_bytes = _numbers(kept(values), c.target_bytes_col, first_row, file, "byte count")
    token_slices = slice_ids[parent] if slice_ids is not None else None
    ignored = np.bincount(token_slices[~present] if token_slices is not None else np.zeros((~present).sum(), np.int64),
                          minlength=len(slice_keys))
    return TokenBatch(
        first_row=first_row, row=first_row + kept(parent),
        target=kept(target_col).to_numpy(zero_copy_only=False),
        target_logprob=kept(lp_col).to_numpy(zero_copy_only=False),
        position=kept(position), buckets=row_buckets[kept(parent)] if row_buckets is not None else None,
        slice_ids=kept(token_slices) if token_slices is not None else None, slice_keys=slice_keys,
        target_bytes=target_bytes, ignored=ignored, documents=documents, doc_hashes=row_hashes[kept(parent)],
        doc_keys=[values[kept(parent)] for values in doc_keys] if spec.read_keys else None,
        **topk,
    )


def _same_lengths(expected: np.ndarray, found: np.ndarray, column: str, of: str, first_row: int, file: InputFile) -> None:
    bad = np.flatnonzero(found != expected)
    if bad.size:
        raise DataError(f"{_where(file, column, first_row + bad[0])}: {found[bad[0]]} entries for the {expected[bad[0]]} "
                        f"tokens in '{of}'; a document's lists are one entry per token")
