"""Synthetic language-model token dumps (issue #18) as sharded Parquet.

``generate_token_dump`` writes ``part-00000.parquet`` ... files in one of the two
layouts of the ``tokens`` kind, every page with a CRC-32 (``write_shard``):

``"token_rows"``
    One row per scored token: ``doc_id`` (int64), ``position`` (int32, 0-based in the
    document), ``target`` (int32), ``target_logprob`` (float32), with ``topk > 0``
    ``topk_ids`` (list<int32>) and ``topk_logprobs`` (list<float32>), with
    ``with_bytes`` ``target_bytes`` (int32), and one string column per slice.
``"documents"``
    One row per document: ``doc_id``, the slice columns, and the same token columns
    as lists over the document's tokens in position order (``topk_*`` as lists of
    lists); with ``with_bytes`` also ``n_bytes`` and ``n_words`` (int64). Every
    document starts at position 0, so there is no ``first_position`` column.

Both layouts hold the same tokens: exploding a documents dump's lists gives the
token rows of the token-rows dump of the same arguments, value for value.

The data model. Everything random is a counter-based hash (``streams``) of
``(seed, document, stream)`` for a document's values and ``(seed, document,
position, stream)`` for a token's, so a token is the same whatever ``tokens``,
``shards``, ``shuffle`` or ``layout`` are (``tokens=n`` is a prefix of any larger
dump); its top-k lists also depend on ``topk``, and everything on ``vocab_size``.

* Documents ``0, 1, ...`` have lognormal lengths (median 250 tokens, sigma 1,
  rounded and clipped to [8, 4096]); the last one is cut so the dump holds exactly
  ``tokens`` tokens. Each document takes one value of every slice column, uniformly.
* The vocabulary: token ids ``0 .. V-1`` (``V = vocab_size``) are a keyed
  pseudo-random permutation of frequency ranks, so an id says nothing about its
  frequency (a frequency bucket must count, not read ids). Targets are drawn
  independently from a Zipf law over the ranks, ``P(rank r) ~ (r + 1) ** -1.1``.
  ``target_bytes``, the UTF-8 length of a token's text, is a fixed function of
  ``(seed, id)``: ``round(2.5 * (r + 1) ** 0.08 * exp(0.4 * z))`` clipped to
  [1, 12], ``z`` normal, so frequent tokens are short (about 4 bytes a token on
  average). A document's ``n_bytes`` is the sum of its tokens' bytes plus 0 to 3,
  and ``n_words`` is ``n_bytes`` divided by a number in [4.5, 5.5), rounded (at least 1).
* The model: for every token it predicts a distribution over the vocabulary whose
  ranks follow ``p_j = (1 - 1e-4) * j ** -a / Z(a) + 1e-4 / V`` (rank ``j = 1 .. V``,
  exact normaliser ``Z``; the uniform floor keeps a tail mass and every logprob
  finite). The exponent ``a`` (the token's peakedness, rounded to a grid of step
  0.025 in [1, 4]) is ``1.95`` minus a hardness that adds a per-document effect
  (normal, sd 0.2, plus a fixed effect of each of the document's slice values, sd
  0.1), a position effect (``0.6 * exp(-position / 8)``: early positions are
  harder), a frequency effect (``0.08 * (log(rank + 1) - 3.5)``: rare targets are
  harder) and a token's own noise (normal, sd 0.25). The model is calibrated: the
  target's rank ``R`` in the model's ranking is drawn from ``p`` itself (exactly
  for ranks up to 1024, from the continuous power law beyond), and
  ``target_logprob = log p_R`` (rounded down to float32). So tokens of a document
  are correlated, the mean CE is about 2.5 nats, and the top-1 is the target in
  about half of the rows.
* Top-k (``topk = k > 0``): the ranks other than ``R`` hold distinct ids other than
  the target, drawn spread log-uniformly over the frequency ranks and listed most
  frequent first. A row lists the model's k best entries in rank order, so it
  holds k entries with the target among them when ``R <= k``; when ``R > k`` it
  holds k + 1 entries with the target last (vLLM's shape), except in a fixed 10%
  of those rows (``TARGET_OMITTED_SHARE``), which list the k best only. Ids are
  distinct within a row, the target's entry equals ``target_logprob``, and since
  every float32 logprob is rounded down, ``sum(exp(topk_logprobs)) < 1`` (at
  least the vocabulary's unlisted tokens' mass remains).
* ``shift = s > 0``: a second model of the same tokens (the same documents,
  positions and targets). Token t's target probability is multiplied by
  ``exp(-s_t)`` and the freed mass is given to every other token in proportion
  to its probability: ``target_logprob`` falls by exactly ``s_t`` and every
  other token's logprob (listed or not) rises by the same
  ``log((1 - p_t * exp(-s_t)) / (1 - p_t))``, where ``p_t`` is the first model's
  target probability; the top-k lists are re-sorted (the target may drop out of
  the top k or lose its top-1 place). ``s_t = s * m_d * e_t``, with ``m_d``
  uniform in [0.5, 1.5) per document and ``e_t`` exponential with mean 1 per
  token, so the mean CE grows by ``s`` nats in expectation. ``shift = 0`` is the
  first model, bitwise.

  ``shift_head = m`` (with ``s > 0``) gives the freed mass only to the head: the
  first model's ranks 1 .. m but the target, in proportion to their probability.
  With ``P_H`` the head's mass, each head token's logprob rises by the same
  ``ln c_H``, ``c_H = (P_H + p_t (1 - exp(-s_t))) / P_H``, and every token ranked
  below m keeps its logprob (bitwise, where listed); the lists are re-sorted as
  above. ``m = V`` is the plain shift, to float64 rounding.

  The shifted dump also holds ``true_kl`` (float64; a list in the documents
  layout): each token's exact KL(first model ‖ shifted model) in nats, over the
  whole vocabulary, ``p_t s_t - P_H ln c_H`` (``P_H = 1 - p_t`` without a head;
  derived in :mod:`flows.generate.token_shift`). It is the KL of the float64
  distributions; the stored logprobs are rounded down to float32. The top-k KL
  lower bound of ``xent compare --kind tokens`` merges the ids not listed on both
  sides into one tail bin, which loses nothing where they all have the same ratio
  ``q_j / p_j``: without a head every non-target token is scaled by one ``c``, so
  the bound meets ``true_kl`` up to that rounding whatever k; with a head it does
  when the lists cover the head (``k >= m``), and stays below it when they do not
  (the tail then mixes raised head tokens with unchanged ones).

Shards: the token-rows layout splits the token order evenly (``shuffle`` permutes
tokens across shards first, so a document's tokens are scattered); the documents
layout splits the document order where the token counts are even (``shuffle``
permutes documents first). Each shard is generated and written on its own, so
memory stays bounded by one shard.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import fsspec
import numpy as np
import pyarrow as pa

from ..errors import UsageError
from .streams import MASK64, bits, normals, permute, stream_key, uniform
from .token_shift import shift_tokens
from .write import clear_existing, write_shard

__all__ = ["DEFAULT_TOKEN_SLICES", "TARGET_OMITTED_SHARE", "TOKEN_LAYOUTS", "TokenDump", "generate_token_dump"]

TOKEN_LAYOUTS = ("token_rows", "documents")
DEFAULT_TOKEN_SLICES: Mapping[str, Sequence] = MappingProxyType({"source": ("web", "code", "books")})
# Of the rows whose target is outside the top k, the share that lists only the top k.
TARGET_OMITTED_SHARE = 0.1
MAX_VOCAB = 1 << 22  # the vocabulary's tables are held in memory

# Document lengths.
MIN_DOC_TOKENS, MEDIAN_DOC_TOKENS, MAX_DOC_TOKENS = 8, 250, 4096
DOC_LENGTH_SIGMA = 1.0
# The targets' Zipf exponent and the model's uniform floor.
ZIPF_EXPONENT = 1.1
SMOOTHING = 1e-4
# The peakedness a of each token's predicted distribution, and what moves it.
PEAK_LEVELS = np.linspace(1.0, 4.0, 121)
PEAK_MEAN = 1.95
DOC_SD, SLICE_SD, TOKEN_SD = 0.2, 0.1, 0.25
POSITION_EFFECT, POSITION_SCALE = 0.6, 8.0
FREQUENCY_EFFECT, FREQUENCY_CENTER = 0.08, 3.5
# Ranks whose sampling uses an exact table; beyond them, the continuous power law.
HEAD_RANKS = 1024

_TOKEN_COLUMNS = ("doc_id", "position", "target", "target_logprob", "topk_ids", "topk_logprobs",
                  "target_bytes", "true_kl", "first_position", "n_bytes", "n_words")


@dataclass(frozen=True)
class TokenDump:
    """Description of a dump written by ``generate_token_dump``.

    Attributes
    ----------
    root : str
        The output folder, as given (local path or fsspec URL).
    files : list of str
        Every shard written, in shard order, as ``root + "/" + relative path``.
    tokens : int
        Tokens written in total.
    documents : int
        Documents the tokens belong to.
    vocab_size : int
        Token ids are ``0 .. vocab_size - 1``.
    layout : str
        ``"token_rows"`` or ``"documents"``.
    topk : int
        Entries of the top-k lists (0: no lists).
    slice_columns : list of str
        Slice columns stored in the files.
    """

    root: str
    files: list[str]
    tokens: int
    documents: int
    vocab_size: int
    layout: str
    topk: int
    slice_columns: list[str]


def generate_token_dump(
    path: str | os.PathLike,
    *,
    tokens: int = 100_000,
    vocab_size: int = 32_000,
    layout: str = "token_rows",
    shards: int = 4,
    topk: int = 0,
    slices: Mapping[str, Sequence] | None = DEFAULT_TOKEN_SLICES,
    with_bytes: bool = True,
    seed: int = 0,
    shift: float = 0.0,
    shift_head: int | None = None,
    shuffle: bool = False,
    row_group_rows: int | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> TokenDump:
    """Write a synthetic language-model token dump as sharded Parquet.

    Parameters
    ----------
    path : str or os.PathLike
        Output folder, a local path or an fsspec URL; created if missing.
    tokens : int
        Scored tokens over all shards.
    vocab_size : int
        Vocabulary size ``V``; at least ``topk + 2``, so a tail outside the lists remains.
    layout : {"token_rows", "documents"}
        One row per token, or one row per document with list columns.
    shards : int
        Number of files (some may be empty when documents are fewer).
    topk : int
        ``k > 0`` adds ``topk_ids`` and ``topk_logprobs``: the model's k best entries,
        plus the target when it ranks below them (see the module docstring).
    slices : mapping of str to sequence, optional
        Slice columns and their values; each document takes one value of each.
        ``None`` or ``{}``: no slice columns.
    with_bytes : bool
        Add ``target_bytes`` (and ``n_bytes``, ``n_words`` in the documents layout).
    seed : int
        Seeds everything; the same seed gives the same token at the same (document, position).
    shift : float
        0 for the first model; ``s > 0`` for a second model of the same tokens whose
        target logprobs are lower by ``s`` nats in expectation, with a ``true_kl``
        column: each token's exact KL(first model ‖ this one) in nats (module docstring).
    shift_head : int, optional
        With ``shift > 0``: the freed target mass goes only to the first model's ranks
        1 .. shift_head (2 to vocab_size) but the target, in proportion; the other tokens
        keep their probability. None: to every token but the target.
    shuffle : bool
        Permute tokens (token rows) or documents (documents layout) before sharding.
    row_group_rows : int, optional
        Rows per Parquet row group; default one row group per shard, capped at 1,000,000.
    overwrite : bool
        Delete Parquet files already under ``path`` instead of raising ``FileExistsError``.
    storage_options : dict, optional
        Passed to fsspec for ``path``.

    Returns
    -------
    TokenDump
        Where everything was written.

    Raises
    ------
    UsageError
        (a ``ValueError``) for an argument out of range, naming it.
    """
    slices = {name: list(values) for name, values in (slices or {}).items()}
    _check_args(tokens, vocab_size, layout, shards, topk, slices, shift, shift_head, row_group_rows)
    seed = int(seed) & MASK64
    root = os.fspath(path)
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    clear_existing(fs, base, root, overwrite)

    model = _TokenModel(seed, int(vocab_size), int(topk), float(shift), None if shift_head is None else int(shift_head),
                        slices)
    lengths = _document_lengths(int(tokens), seed)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    width = max(5, len(str(shards - 1)))
    files = []
    for k, (doc, position) in enumerate(_shard_tokens(lengths, starts, layout, shards, shuffle, seed)):
        values = model.tokens(doc, position)
        if layout == "token_rows":
            table = _token_rows_table(doc, position, values, model, with_bytes)
        else:
            table = _documents_table(doc, values, model, with_bytes)
        del values
        rel = f"part-{k:0{width}d}.parquet"
        write_shard(fs, f"{base}/{rel}", table, row_group_rows=row_group_rows, compression="zstd",
                    dictionary_columns=list(slices))
        del table
        files.append(f"{root.rstrip('/')}/{rel}")
    return TokenDump(root=root, files=files, tokens=int(tokens), documents=len(lengths), vocab_size=int(vocab_size),
                     layout=layout, topk=int(topk), slice_columns=list(slices))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_args(tokens, vocab_size, layout, shards, topk, slices, shift, shift_head, row_group_rows) -> None:
    """The arguments' problems as UsageError (a ValueError)."""
    if layout not in TOKEN_LAYOUTS:
        raise UsageError(f"layout must be one of {TOKEN_LAYOUTS} for token dumps, got {layout!r}")
    if not _is_int(tokens) or tokens < 0:
        raise UsageError(f"tokens must be an int >= 0, got {tokens!r}")
    if not _is_int(vocab_size) or not 2 <= vocab_size <= MAX_VOCAB:
        raise UsageError(f"vocab_size must be an int in [2, {MAX_VOCAB}], got {vocab_size!r}")
    if not _is_int(topk) or topk < 0:
        raise UsageError(f"topk must be an int >= 0, got {topk!r}")
    if topk > vocab_size - 2:
        raise UsageError(f"topk {topk} needs vocab_size >= {topk + 2} (the k + 1 listed entries leave a tail), "
                         f"got {vocab_size}")
    if not _is_int(shards) or shards < 1:
        raise UsageError(f"shards must be an int >= 1, got {shards!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift >= 0.0):
        raise UsageError(f"shift must be finite and >= 0, got {shift!r}")
    if shift_head is not None:
        if not _is_int(shift_head) or not 2 <= shift_head <= vocab_size:
            raise UsageError(f"shift_head must be an int in [2, vocab_size = {vocab_size}], got {shift_head!r}")
        if shift == 0.0:
            raise UsageError("shift_head says where a shift's freed mass goes, and shift is 0; give a shift > 0 "
                             "or drop shift_head")
    if row_group_rows is not None and (not _is_int(row_group_rows) or row_group_rows < 1):
        raise UsageError(f"row_group_rows must be a positive int or None, got {row_group_rows!r}")
    if (tokens // shards + MAX_DOC_TOKENS) * (topk + 1) >= 2**31:  # a List column's int32 offsets
        raise UsageError(f"{tokens} tokens in {shards} shards with top-{topk} lists make shards too big for a "
                         "List column; use more shards")
    for name, values in slices.items():
        if name in _TOKEN_COLUMNS:
            raise UsageError(f"slice column {name!r} clashes with a token column; rename it")
        if len(values) == 0:
            raise UsageError(f"slice column {name!r} needs at least one value")


def _document_lengths(tokens: int, seed: int) -> np.ndarray:
    """Lengths of documents 0, 1, ... holding exactly `tokens` tokens (the last one cut)."""
    key = stream_key(seed, "doc/length")
    chunks, total, start = [], 0, 0
    while total < tokens:
        count = (tokens - total) // 400 + 64  # a few more documents than the mean length (~410) needs
        z = normals(np.arange(start, start + count), key, 1)[:, 0]
        chunk = np.clip(np.rint(MEDIAN_DOC_TOKENS * np.exp(DOC_LENGTH_SIGMA * z)), MIN_DOC_TOKENS, MAX_DOC_TOKENS)
        chunks.append(chunk.astype(np.int64))
        total += int(chunks[-1].sum())
        start += count
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    lengths = np.concatenate(chunks)
    ends = np.cumsum(lengths)
    documents = int(np.searchsorted(ends, tokens)) + 1  # the first document reaching `tokens`
    lengths = lengths[:documents]
    lengths[-1] -= int(ends[documents - 1]) - tokens
    return lengths


def _shard_tokens(lengths, starts, layout, shards, shuffle, seed):
    """Each shard's tokens in file order, as (document, position) arrays."""
    tokens = int(starts[-1])
    if layout == "token_rows":
        for k in range(shards):
            order = np.arange(k * tokens // shards, (k + 1) * tokens // shards, dtype=np.int64)
            if shuffle:
                order = permute(order, tokens, seed)
            doc = np.searchsorted(starts, order, side="right") - 1
            yield doc, (order - starts[doc]).astype(np.int32)
        return
    documents = len(lengths)
    order = np.arange(documents, dtype=np.int64)
    if shuffle:
        order = permute(order, documents, seed)
    ends = np.cumsum(lengths[order])
    # A shard ends after the documents that end by its share of the tokens.
    bounds = np.searchsorted(ends, [k * tokens // shards for k in range(shards + 1)], side="right")
    for k in range(shards):
        docs = order[bounds[k]:bounds[k + 1]]
        counts = lengths[docs]
        doc = np.repeat(docs, counts)
        first = np.cumsum(counts) - counts  # each document's first token in the shard
        position = np.arange(len(doc), dtype=np.int64) - np.repeat(first, counts)
        yield doc, position.astype(np.int32)


@dataclass
class _TokenValues:
    """One shard's tokens, in file order: targets, logprobs and the top-k lists."""

    target: np.ndarray  # int32
    target_logprob: np.ndarray  # float32
    target_bytes: np.ndarray  # int32
    topk_lengths: np.ndarray | None  # int64 per token
    topk_ids: np.ndarray | None  # int32, the lists concatenated
    topk_logprobs: np.ndarray | None  # float32, the lists concatenated
    true_kl: np.ndarray | None = None  # float64, KL(first model ‖ shifted model); with a shift only


class _TokenModel:
    """The vocabulary and the model's per-peakedness tables, made once per dump."""

    def __init__(self, seed: int, vocab_size: int, topk: int, shift: float, shift_head: int | None,
                 slices: dict[str, list]):
        self.seed, self.vocab_size, self.topk, self.shift, self.shift_head = seed, vocab_size, topk, shift, shift_head
        v = vocab_size
        frequency_rank = np.arange(v, dtype=np.int64)
        zipf = np.exp(-ZIPF_EXPONENT * np.log1p(frequency_rank.astype(np.float64)))
        self.zipf_cdf = np.cumsum(zipf)
        self.zipf_cdf /= self.zipf_cdf[-1]
        self.id_of_rank = permute(frequency_rank, v, stream_key(seed, "vocab/order")).astype(np.int32)
        self.rank_of_id = np.empty(v, dtype=np.int64)
        self.rank_of_id[self.id_of_rank] = frequency_rank
        z = normals(np.arange(v), stream_key(seed, "vocab/bytes"), 1)[:, 0]
        token_bytes = 2.5 * np.exp(0.08 * np.log1p(self.rank_of_id) + 0.4 * z)
        self.bytes_of_id = np.clip(np.rint(token_bytes), 1, 12).astype(np.int32)

        # Per peakedness level a: log Z(a), the head CDF of the ranks and log p_j for j <= k + 1.
        a = PEAK_LEVELS
        self.head = min(v, HEAD_RANKS)
        weights = np.exp(-a[:, None] * np.log(np.arange(1, self.head + 1.0)))
        head_cdf = np.cumsum(weights, axis=1)
        norm = head_cdf[:, -1] + _power_sum_tail(a, self.head, v)
        if shift_head is not None:  # per level, the mass of ranks 1 .. shift_head
            m = shift_head
            power_sum = head_cdf[:, min(m, self.head) - 1] + _power_sum_tail(a, self.head, m)
            self.shift_head_mass = (1.0 - SMOOTHING) * power_sum / norm + SMOOTHING * m / v
        head_cdf /= norm[:, None]
        # Level g's CDF shifted by g: one sorted array that one searchsorted covers.
        self.flat_cdf = (head_cdf + np.arange(len(a))[:, None]).ravel()
        self.log_norm = np.log(norm)
        self.list_logp = self.log_p(np.arange(len(a))[:, None], np.arange(1, topk + 2.0)[None, :])

        self.slices = {name: (pa.array(values), normals(np.arange(len(values)), stream_key(seed, f"slice_effect/{name}"),
                                                       1)[:, 0] * SLICE_SD)
                       for name, values in slices.items()}

    def log_p(self, level: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """float64 log p_rank of the distributions of peakedness `level`."""
        zipf = math.log1p(-SMOOTHING) - PEAK_LEVELS[level] * np.log(rank) - self.log_norm[level]
        return np.logaddexp(zipf, math.log(SMOOTHING / self.vocab_size))

    def slice_index(self, name: str, doc: np.ndarray) -> np.ndarray:
        """Each document's value of slice column `name`, as an index into its values."""
        count = len(self.slices[name][0])
        u = uniform(doc, stream_key(self.seed, f"slice/{name}"))
        return np.minimum((u * count).astype(np.int64), count - 1)

    def tokens(self, doc: np.ndarray, position: np.ndarray) -> _TokenValues:
        seed, v = self.seed, self.vocab_size
        key = doc * MAX_DOC_TOKENS + position  # distinct for every (document, position)
        u = uniform(key, stream_key(seed, "token/target"))
        frequency_rank = np.minimum(np.searchsorted(self.zipf_cdf, u, side="right"), v - 1)
        target = self.id_of_rank[frequency_rank]

        hardness = DOC_SD * normals(doc, stream_key(seed, "doc/hardness"), 1)[:, 0]
        for name, (_, effects) in self.slices.items():
            hardness += effects[self.slice_index(name, doc)]
        hardness += POSITION_EFFECT * np.exp(-position / POSITION_SCALE)
        hardness += FREQUENCY_EFFECT * (np.log1p(frequency_rank) - FREQUENCY_CENTER)
        hardness -= TOKEN_SD * normals(key, stream_key(seed, "token/noise"), 1)[:, 0]
        step = PEAK_LEVELS[1] - PEAK_LEVELS[0]
        level = np.clip(np.rint((PEAK_MEAN - hardness - PEAK_LEVELS[0]) / step), 0, len(PEAK_LEVELS) - 1).astype(np.intp)
        del hardness
        rank = self._target_rank(key, level)
        target_logp = self.log_p(level, rank.astype(np.float64))

        shift = None
        if self.shift > 0.0:  # skipped at 0 so the first model stays bitwise the same
            head_mass = None if self.shift_head is None else self.shift_head_mass[level]
            shift = shift_tokens(seed, self.shift, self.shift_head, doc, key, target_logp, rank, head_mass)
            target_logp = shift.target_logp
        target_logprob = _round_down(target_logp)

        lengths = ids = logprobs = None
        if self.topk:
            lengths, ids, logprobs = self._lists(key, level, rank, frequency_rank, target, target_logp, target_logprob,
                                                 shift)
        return _TokenValues(target, target_logprob, self.bytes_of_id[target], lengths, ids, logprobs,
                            None if shift is None else shift.true_kl)

    def _target_rank(self, key: np.ndarray, level: np.ndarray) -> np.ndarray:
        """The target's rank (1-based) in the model's ranking, drawn from the model's own p."""
        seed, v, head = self.seed, self.vocab_size, self.head
        u = uniform(key, stream_key(seed, "token/rank"))
        in_head = np.searchsorted(self.flat_cdf, u + level, side="right") - level * head
        rank = np.minimum(in_head, head - 1) + 1
        if v > head:  # beyond the table: invert the continuous power law on [head + 1/2, V + 1/2]
            tail = np.flatnonzero(in_head >= head)
            w = uniform(key[tail], stream_key(seed, "token/tail"))
            b = 1.0 - PEAK_LEVELS[level[tail]]
            span = math.log((v + 0.5) / (head + 0.5))
            safe_b = np.where(b == 0.0, 1.0, b)
            log_x = np.where(b == 0.0, w * span, np.log1p(w * np.expm1(b * span)) / safe_b)
            rank[tail] = np.clip(np.rint((head + 0.5) * np.exp(log_x)), head + 1, v)
        smooth = np.flatnonzero(uniform(key, stream_key(seed, "token/smooth")) < SMOOTHING)
        rank[smooth] = 1 + (u[smooth] * v).astype(np.int64)  # the uniform floor's share
        return rank

    def _lists(self, key, level, rank, frequency_rank, target, target_logp, target_logprob, shift):
        """The top-k lists, concatenated: (entries per token, ids, logprobs)."""
        k = self.topk
        column = np.arange(k)
        # The non-target entries in the model's order: the j-th holds rank j + 1, or j + 2 past the target.
        other_rank = column + 1 + (column + 1 >= rank[:, None])
        other_logp = self.list_logp[level[:, None], other_rank - 1]
        if shift is None:
            place = np.minimum(rank - 1, k)  # the target's place in the list
        else:  # the raised entries keep their order, and stay above the others
            other_logp = shift.raised(other_logp, other_rank)
            place = (other_logp > target_logp[:, None]).sum(axis=1)
        other_ids = self._other_ids(key, frequency_rank)

        outside = place >= k
        omitted = outside & (uniform(key, stream_key(self.seed, "token/omit")) < TARGET_OMITTED_SHARE)
        lengths = np.where(outside & ~omitted, k + 1, k)
        slot = np.arange(k + 1)
        source = np.minimum(slot - (slot > place[:, None]), k - 1)  # which non-target entry fills a slot
        is_target = slot == place[:, None]
        listed = slot < lengths[:, None]
        ids = np.where(is_target, target[:, None], np.take_along_axis(other_ids, source, axis=1))[listed]
        other = _round_down(np.take_along_axis(other_logp, source, axis=1))
        logprobs = np.where(is_target, target_logprob[:, None], other)[listed]
        return lengths, ids.astype(np.int32), logprobs

    def _other_ids(self, key: np.ndarray, frequency_rank: np.ndarray) -> np.ndarray:
        """k distinct ids per token, none the target, spread log-uniformly over the frequency
        ranks and most frequent first: sorted uniforms from exponential spacings, mapped to
        ranks that skip the target's."""
        k, v = self.topk, self.vocab_size
        u = bits(key, stream_key(self.seed, "token/others"), k + 1) >> np.uint64(11)
        spacing = u.astype(np.float64)
        del u
        spacing += 1.0
        spacing *= 2.0**-53  # in (0, 1]: exp, log and plain arithmetic are vectorised where log1p is not
        np.log(spacing, out=spacing)
        sums = np.cumsum(spacing, axis=1)  # negated exponential spacings
        del spacing
        spread = sums[:, :k]
        spread /= sums[:, k:]  # sorted uniforms in [0, 1]
        span = math.log(v - k)
        spread *= span
        np.exp(spread, out=spread)
        spread -= 1.0
        spread *= (v - 1 - k) / math.expm1(span)  # log-uniform over [0, V - 1 - k]
        ranks = spread.astype(np.int64)  # truncation is floor: spread >= 0
        ranks += np.arange(k)  # strictly increasing, at most V - 2
        ranks += ranks >= frequency_rank[:, None]
        return self.id_of_rank[ranks]


def _power_sum_tail(a: np.ndarray, m: int, v: int) -> np.ndarray:
    """sum(j ** -a for j in m+1 .. v) by Euler-Maclaurin (error below 1e-15 for m >= 1024)."""
    if v <= m:
        return np.zeros_like(a)
    span = math.log(v / m)
    x = (1.0 - a) * span
    safe_x = np.where(x == 0.0, 1.0, x)
    exprel = np.where(x == 0.0, 1.0, np.expm1(safe_x) / safe_x)
    integral = m ** (1.0 - a) * span * exprel  # of x ** -a over [m, v]

    def f(x, order):  # the order-th derivative of x ** -a
        coefficient = np.ones_like(a)
        for i in range(order):
            coefficient *= -(a + i)
        return coefficient * float(x) ** (-a - order)

    total = integral + (f(m, 0) + f(v, 0)) / 2 + (f(v, 1) - f(m, 1)) / 12 - (f(v, 3) - f(m, 3)) / 720
    return total - f(m, 0)  # the sum over m .. v, less its first term


def _round_down(x: np.ndarray) -> np.ndarray:
    """float32 of x, rounded toward -inf: exp of the stored value never exceeds the true one."""
    out = x.astype(np.float32)
    up = out.astype(np.float64) > x
    out[up] = np.nextafter(out[up], np.float32(-np.inf))
    return out


def _list_array(lengths: np.ndarray, values: pa.Array) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _slice_columns(model: _TokenModel, doc: np.ndarray) -> dict[str, pa.Array]:
    return {name: values.take(pa.array(model.slice_index(name, doc))) for name, (values, _) in model.slices.items()}


def _token_arrays(values: _TokenValues, with_bytes: bool) -> dict[str, pa.Array]:
    """The token columns, one value (or one list) per token."""
    columns = {"target": pa.array(values.target), "target_logprob": pa.array(values.target_logprob)}
    if values.topk_ids is not None:
        columns["topk_ids"] = _list_array(values.topk_lengths, pa.array(values.topk_ids))
        columns["topk_logprobs"] = _list_array(values.topk_lengths, pa.array(values.topk_logprobs))
    if with_bytes:
        columns["target_bytes"] = pa.array(values.target_bytes)
    if values.true_kl is not None:
        columns["true_kl"] = pa.array(values.true_kl, pa.float64())
    return columns


def _token_rows_table(doc, position, values: _TokenValues, model: _TokenModel, with_bytes: bool) -> pa.Table:
    columns = {"doc_id": pa.array(doc, pa.int64()), "position": pa.array(position, pa.int32())}
    columns.update(_token_arrays(values, with_bytes))
    columns.update(_slice_columns(model, doc))
    return pa.table(columns)


def _documents_table(doc, values: _TokenValues, model: _TokenModel, with_bytes: bool) -> pa.Table:
    """One row per document; `doc` holds each token's document, documents contiguous."""
    first = np.flatnonzero(np.diff(doc, prepend=-1)) if len(doc) else np.zeros(0, dtype=np.int64)
    docs = doc[first]
    counts = np.diff(np.append(first, len(doc)))
    columns = {"doc_id": pa.array(docs, pa.int64())}
    columns.update(_slice_columns(model, docs))
    columns.update({name: _list_array(counts, array) for name, array in _token_arrays(values, with_bytes).items()})
    if with_bytes:
        seed = model.seed
        token_bytes = np.add.reduceat(values.target_bytes.astype(np.int64), first) if len(doc) else np.zeros(0, np.int64)
        n_bytes = token_bytes + (4 * uniform(docs, stream_key(seed, "doc/extra_bytes"))).astype(np.int64)
        bytes_per_word = 4.5 + uniform(docs, stream_key(seed, "doc/words"))
        columns["n_bytes"] = pa.array(n_bytes)
        columns["n_words"] = pa.array(np.maximum(1, np.rint(n_bytes / bytes_per_word)).astype(np.int64))
    return pa.table(columns)
