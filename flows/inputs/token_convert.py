"""Convert vLLM and OpenAI log-probability outputs into xent token dumps.

A token dump is written in the token-rows layout of issue #18, one row per scored token:
``doc_id``, ``position`` (int32, 0-based in the document), ``target`` (int32 token id),
``target_logprob`` (float32), ``topk_ids`` (list<int32>) and ``topk_logprobs``
(list<float32>) sorted by log-probability, highest first (ties by id), and
``target_bytes`` (int32, the UTF-8 bytes of the target token). The folder holds
``part-00000.parquet``, ``part-00001.parquet``, ... of at most ``rows_per_shard`` rows
each (a document may continue in the next shard).

The conversion streams: :func:`stream_vllm` and :func:`stream_openai` read the input
record by record and hand each shard to a :class:`ShardSink` as soon as it is full. What
they hold meanwhile is bounded by one shard, not by the input: the rows of the shard being
filled (flat arrays, 28 bytes a token plus 8 bytes a top-k entry, which its Arrow table
shares) and, while it is handed over, the Parquet writer's buffers, about as much again (a
shard of a million tokens with 20-entry top-k lists peaks near 500 MB). Besides that they
hold one entry per document (its key and where it was first seen, to refuse a document
seen twice: bounded by the documents, not the tokens) and, from OpenAI, the vocabulary.
Two facts are known only at the end: the top-k lists' k (vLLM's largest rank) and whether
any token of an OpenAI dump has top-k lists. A shard written before they were known is
read back from the sink and written again at the end, one at a time (rare: the first
shard almost always shows both).

``xent convert`` streams into a :class:`flows.report.writing.StagedFolder` (wired by
:mod:`flows.convert`, as this package cannot import ``flows.report``, which imports
``flows.inputs``): the shards go to a staging place, and the folder is published with
page checksums and a ``_manifest.json`` all-or-nothing at the end, so bad input anywhere,
or a crash, writes nothing. :func:`convert_vllm` and :func:`convert_openai` stream into
memory instead and return the tables (:class:`TokenDump`), for inputs small enough to hold.

vLLM (:func:`convert_vllm`): ``RequestOutput`` objects, dicts of the same fields, or a
JSONL file of such dicts. Position 0 of ``prompt_logprobs`` is None (the first token has
no context) and is not written, so a prompt of n tokens gives positions 1 to n - 1. The
target at position i is ``prompt_token_ids[i]``, its log-prob the entry of that id in
``prompt_logprobs[i]``; every entry of that dict, the target's included, goes into the
top-k lists (vLLM adds the target to its top k when it is not among them, so a list may
hold k + 1 entries). ``doc_id`` is the ``request_id`` (string) when the outputs have one,
else the output's 0-based index among the records (int64; blank lines of a file do not
count). ``target_bytes`` is the UTF-8 length of the
target's ``decoded_token`` as vLLM detokenised it (a token holding part of a multi-byte
character may decode to U+FFFD, 3 bytes); it is written when every target has one.

OpenAI (:func:`convert_openai`): chat-completion responses (dicts, or a JSONL file with
one response per line; a Batch API output line is unwrapped to its ``response.body``).
Every ``choices[].logprobs.content[]`` item is a scored token; positions count from 0 in
each choice, and ``doc_id`` is the string ``"<response id>:<choice index>"``. OpenAI gives
no token ids, so the conversion numbers the tokens it meets, 0, 1, 2, ..., in order of
first appearance (a target before its top-k list), and keeps that vocabulary beside the
shards as ``_vocab.parquet`` (``id`` int32, ``token`` string, ``bytes`` binary). A token
is keyed by its ``bytes`` (by its text when ``bytes`` is null; it then counts 0 bytes). Small dense ids keep
``target`` the int32 of the contract and let a per-token table index by id, which a
63-bit hash of the bytes would not, and no two tokens can share an id, which a 31-bit
hash cannot promise over a vocabulary of 100k tokens. The leading underscore keeps the
file out of the shards a reader lists. Ids depend on the order tokens are met: to number
the tokens of several dumps alike (two models, two days), pass the ``_vocab.parquet`` of
an earlier conversion as ``vocab``; its ids are kept and new tokens are added after them.
OpenAI writes the log-prob -9999.0 for "absent" (a token outside its top 20): such
entries of ``top_logprobs`` are dropped, and a target with that log-prob is an error,
its log-prob being unknown. The target is not added to its top-k list: a list that
lacks it says the target was outside the top k.

Bad input stops the conversion with a :class:`flows.errors.DataError` naming the file and
line (or the record's index), the field and what to do: a missing field, a log-prob
above 0 by more than ``LOGPROB_TOLERANCE`` or NaN, a token id repeated in one top-k list,
None at a scored position, lists whose lengths disagree, a document key seen twice.
-inf is a valid log-prob. Log-probs within the tolerance above 0 are written as 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from array import array
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator, Protocol

import fsspec
from fsspec.compression import compr
from fsspec.utils import infer_compression
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, UsageError
from .sources import filesystem, is_local
from .tokens import TOPK_KEY

DEFAULT_ROWS_PER_SHARD = 1_000_000
LOGPROB_TOLERANCE = 1e-6  # rounding noise of a log-softmax, above 0
OPENAI_ABSENT = -9999.0
VOCAB_TABLE = "_vocab"  # written as _vocab.parquet
_INT32_MAX = 2**31 - 1
_MISSING = object()
# Where a value was found, for an error message: a string, or a function that builds it
# (formatting a location for each of millions of values would cost more than the checks).
Where = str | Callable[[], str]


class ShardSink(Protocol):
    """Where a conversion puts its tables, one at a time: a staged folder
    (:class:`flows.report.writing.StagedFolder`) or memory (:class:`TablesInMemory`)."""

    def write_table(self, name: str, table: pa.Table) -> None:
        """Keep `table` as `name`, replacing an earlier table of that name."""

    def read_table(self, name: str) -> pa.Table:
        """The table kept as `name`."""


class TablesInMemory:
    """A :class:`ShardSink` that keeps the tables: {table name: table}, in the order written."""

    def __init__(self) -> None:
        self.tables: dict[str, pa.Table] = {}

    def write_table(self, name: str, table: pa.Table) -> None:
        self.tables[name] = table

    def read_table(self, name: str) -> pa.Table:
        return self.tables[name]


@dataclass(frozen=True)
class Conversion:
    """What a conversion handed to its sink: the shards' names, in order (``part-00000``,
    ``part-00001``, ...; from OpenAI the sink also gets the table ``_vocab``), and how many
    tokens and documents the shards hold."""

    shards: list[str]
    tokens: int
    documents: int


@dataclass(frozen=True)
class TokenDump:
    """A converted dump in memory: {table name: table}, each written as ``<name>.parquet``
    (the shards ``part-00000``, ``part-00001``, ... and, from OpenAI, ``_vocab``), and how
    many tokens and documents the shards hold."""

    tables: dict[str, pa.Table]
    tokens: int
    documents: int

    @property
    def shards(self) -> list[str]:
        return [name for name in self.tables if name != VOCAB_TABLE]


# --------------------------------------------------------------------------- public API


def convert_vllm(outputs: Iterable[Any] | str | os.PathLike, *,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> TokenDump:
    """vLLM prompt log-probs as the tables of a token dump, in memory (see
    :func:`stream_vllm`, which takes the same input and raises the same errors)."""
    sink = TablesInMemory()
    converted = stream_vllm(outputs, sink, rows_per_shard=rows_per_shard)
    return TokenDump(tables=sink.tables, tokens=converted.tokens, documents=converted.documents)


def convert_openai(responses: Iterable[Any] | str | os.PathLike, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                   vocab: str | None = None) -> TokenDump:
    """OpenAI chat-completion log-probs as the tables of a token dump and its ``_vocab``,
    in memory (see :func:`stream_openai`, which takes the same input and raises the same
    errors)."""
    sink = TablesInMemory()
    converted = stream_openai(responses, sink, rows_per_shard=rows_per_shard, vocab=vocab)
    return TokenDump(tables=sink.tables, tokens=converted.tokens, documents=converted.documents)


def stream_vllm(outputs: Iterable[Any] | str | os.PathLike, sink: ShardSink, *,
                rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> Conversion:
    """vLLM prompt log-probs as the shards of a token dump, each handed to `sink` as soon
    as it is full (see the module docstring).

    Parameters
    ----------
    outputs
        vLLM ``RequestOutput`` objects or dicts with ``prompt_token_ids`` and
        ``prompt_logprobs`` (and optionally ``request_id``), or the path of a JSONL file
        of such dicts (token ids as the keys of each ``prompt_logprobs`` entry).
    sink
        Takes the shards; on an error it may hold some of them (a StagedFolder then
        publishes nothing).
    rows_per_shard
        At most this many tokens per Parquet file.

    Raises
    ------
    DataError
        The input is not vLLM output as described (the message names the record and field).
    UsageError
        `rows_per_shard` below 1.
    """
    rows = _TokenRows(sink, rows_per_shard, topk=True)
    keyed_by_request = None
    for index, (where, record) in enumerate(_records(outputs, "vLLM output")):
        request_id = _field(record, "request_id")
        has_id = request_id is not _MISSING and request_id is not None
        if keyed_by_request is None:
            keyed_by_request = rows.doc_ids_are_strings = has_id
        elif has_id != keyed_by_request:
            raise DataError(f"{where}: {'a' if has_id else 'no'} request_id, unlike the first record: give every "
                            "output a request_id, or none (the doc_id is then the output's index)")
        doc_id = str(request_id) if has_id else index
        where = f"{where} (request_id {request_id!r})" if has_id else where
        rows.start_document(doc_id, where)
        _add_vllm_output(rows, record, where)
    return rows.finish()


def stream_openai(responses: Iterable[Any] | str | os.PathLike, sink: ShardSink, *,
                  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, vocab: str | None = None) -> Conversion:
    """OpenAI chat-completion log-probs as the shards of a token dump, each handed to
    `sink` as soon as it is full, then the vocabulary of its token ids as the table
    ``_vocab`` (see the module docstring).

    Parameters
    ----------
    responses
        Chat-completion responses (dicts as the API returns them, or objects with the
        same attributes), or the path of a JSONL file of them, one per line.
    sink
        Takes the tables; on an error it may hold some of them (a StagedFolder then
        publishes nothing).
    rows_per_shard
        At most this many tokens per Parquet file.
    vocab
        The ``_vocab.parquet`` of an earlier conversion: its tokens keep their ids.

    Raises
    ------
    DataError
        The input is not chat-completion log-probs as described (the message names the
        line, choice and field), or `vocab` is not a vocabulary this function wrote.
    UsageError
        `rows_per_shard` below 1.
    """
    rows = _TokenRows(sink, rows_per_shard, topk=False)
    vocabulary = _Vocabulary.read(vocab) if vocab else _Vocabulary()
    rows.doc_ids_are_strings = True
    for where, record in _records(responses, "response"):
        body = record
        if _field(record, "choices") is _MISSING and isinstance(_field(record, "response"), dict):
            body = _required(_required(record, "response", where), "body", f"{where}, response")  # Batch API line
        response_id = _required(body, "id", where)
        choices = _required(body, "choices", where)
        for number, choice in enumerate(_sequence(choices, f"{where}, choices")):
            index = _field(choice, "index")
            index = number if index is _MISSING or index is None else index
            field = f"{where} (id {response_id!r}), choices[{number}]"
            rows.start_document(f"{response_id}:{index}", field)
            logprobs = _required(choice, "logprobs", field, hint="request the completion with logprobs=true")
            content = _required(logprobs, "content", f"{field}.logprobs", hint="request the completion with logprobs=true")
            for position, item in enumerate(_sequence(content, f"{field}.logprobs.content")):
                _add_openai_token(rows, vocabulary, item, position, f"{field}.logprobs.content[{position}]")
    converted = rows.finish()
    sink.write_table(VOCAB_TABLE, vocabulary.table())
    return converted


# --------------------------------------------------------------------------- vLLM


def _add_vllm_output(rows: _TokenRows, record: Any, where: str) -> None:
    token_ids = _sequence(_required(record, "prompt_token_ids", where), f"{where}, prompt_token_ids")
    logprobs = _sequence(_required(record, "prompt_logprobs", where,
                                   hint="generate with SamplingParams(prompt_logprobs=k)"), f"{where}, prompt_logprobs")
    if len(logprobs) != len(token_ids):
        raise DataError(f"{where}: prompt_logprobs has {len(logprobs)} entries but prompt_token_ids {len(token_ids)}: "
                        "they must be the same prompt's, one entry per token")
    if logprobs and logprobs[0] is not None:
        raise DataError(f"{where}, prompt_logprobs[0]: expected None (vLLM does not score the first prompt token), "
                        "found an entry: is the list shifted by one?")
    for position in range(1, len(token_ids)):
        field = f"{where}, prompt_logprobs[{position}]"
        entries = logprobs[position]
        if entries is None:
            raise DataError(f"{field}: None at a scored position (only position 0 may be None); "
                            "re-export the output unchanged")
        if not hasattr(entries, "items"):
            raise DataError(f"{field}: expected a dict of token id -> logprob, found {type(entries).__name__}")
        target = _token_id(token_ids[position], f"{where}, prompt_token_ids[{position}]")
        topk: dict[int, float] = {}
        target_entry = _MISSING
        for key, entry in entries.items():
            token = _token_id(key, lambda: f"{field}, key {key!r}")
            if token in topk:
                raise DataError(f"{field}: token id {token} appears twice; each id may appear once in a top-k list")
            value = _required(entry, "logprob", lambda: f"{field}[{key!r}]")
            topk[token] = _logprob(value, lambda: f"{field}[{key!r}].logprob")
            if token == target:
                target_entry = entry
            elif isinstance(rank := _field(entry, "rank"), int):
                # vLLM's k: the others fill ranks 1..k (a target outside them is appended)
                rows.topk = max(rows.topk, rank)
        if target_entry is _MISSING:
            raise DataError(f"{field}: no entry for the target token id {target} (prompt_token_ids[{position}]); "
                            "vLLM always includes the prompt token: are the two lists from the same prompt?")
        decoded = _field(target_entry, "decoded_token")
        n_bytes = None if decoded is _MISSING or decoded is None else len(str(decoded).encode("utf-8"))
        rows.add(position, target, topk[target], topk, n_bytes, field)


# --------------------------------------------------------------------------- OpenAI


class _Vocabulary:
    """Token ids for OpenAI tokens, numbered as they are first met; keyed by their bytes
    (a ``bytes`` key), or their text when they have no bytes (a ``str`` key)."""

    def __init__(self) -> None:
        self.ids: dict[bytes | str, int] = {}
        self.texts: list[str] = []
        self.keys: list[bytes | str] = []

    @classmethod
    def read(cls, path: str) -> _Vocabulary:
        fs, local = filesystem(path)
        try:
            with fs.open(local, "rb") as handle:
                table = pq.read_table(handle)
        except FileNotFoundError:
            raise DataError(f"{path}: no such vocabulary file (the {VOCAB_TABLE}.parquet of an earlier conversion)") from None
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"{path}: not a Parquet vocabulary ({error}); pass the {VOCAB_TABLE}.parquet of an earlier "
                            "conversion") from None
        missing = {"id", "token", "bytes"} - set(table.column_names)
        if missing:
            raise DataError(f"{path}: no column {', '.join(sorted(missing))}; pass the {VOCAB_TABLE}.parquet of an earlier "
                            "conversion")
        vocabulary = cls()
        columns = table.to_pydict()
        for row, (token_id, text, raw) in enumerate(zip(columns["id"], columns["token"], columns["bytes"])):
            key = raw if raw is not None else text
            if token_id != row or key in vocabulary.ids:
                raise DataError(f"{path}: row {row}: expected id {row} and a token not seen before, found id "
                                f"{token_id} for {text!r}; pass a {VOCAB_TABLE}.parquet written by xent, unchanged")
            vocabulary.ids[key] = row
            vocabulary.texts.append(text)
            vocabulary.keys.append(key)
        return vocabulary

    def id(self, key: bytes | str, text: str) -> int:
        token_id = self.ids.get(key)
        if token_id is None:
            token_id = self.ids[key] = len(self.texts)
            self.texts.append(text)
            self.keys.append(key)
        return token_id

    def table(self) -> pa.Table:
        return pa.table({
            "id": pa.array(range(len(self.texts)), pa.int32()),
            "token": pa.array(self.texts, pa.string()),
            "bytes": pa.array([key if isinstance(key, bytes) else None for key in self.keys], pa.binary()),
        })


def _openai_token(item: Any, where: Where) -> tuple[bytes | str, str, int]:
    """An OpenAI token's vocabulary key, text and UTF-8 bytes."""
    text = _required(item, "token", where)
    if not isinstance(text, str):
        raise DataError(f"{_said(where)}.token: expected a string, found {type(text).__name__}")
    raw = _field(item, "bytes")
    if raw is _MISSING:
        raise DataError(f"{_said(where)}: field 'bytes' is missing (null is allowed: a token without bytes)")
    if raw is None:
        return text, text, 0
    try:
        key = bytes(raw if isinstance(raw, list) else _sequence(raw, ""))
    except (TypeError, ValueError):
        raise DataError(f"{_said(where)}.bytes: expected a list of integers 0-255 or null, found {raw!r:.80}") from None
    return key, text, len(key)


def _add_openai_token(rows: _TokenRows, vocabulary: _Vocabulary, item: Any, position: int, where: str) -> None:
    key, text, n_bytes = _openai_token(item, where)
    target_logprob = _logprob(_required(item, "logprob", where), f"{where}.logprob")
    if target_logprob == OPENAI_ABSENT:
        raise DataError(f"{where}.logprob: {OPENAI_ABSENT} is OpenAI's mark for a token outside its top 20, whose "
                        "log-prob is unknown; leave this response out, or sample with a lower temperature")
    target = vocabulary.id(key, text)  # before its top-k list: ids follow the order tokens are met in
    topk: dict[int, float] = {}
    alternatives = _sequence(_required(item, "top_logprobs", where), f"{where}.top_logprobs")
    for j, alternative in enumerate(alternatives):
        def field(j=j) -> str:
            return f"{where}.top_logprobs[{j}]"
        logprob = _logprob(_required(alternative, "logprob", field), lambda: f"{field()}.logprob")
        if logprob == OPENAI_ABSENT:
            continue  # "absent", not a log-prob
        alternative_key, alternative_text, _ = _openai_token(alternative, field)
        token = vocabulary.id(alternative_key, alternative_text)
        if token in topk:
            raise DataError(f"{field()}: token {alternative_text!r} appears twice in one top_logprobs list; each "
                            "token may appear once")
        topk[token] = logprob
    rows.add(position, target, target_logprob, topk, n_bytes, where)


# --------------------------------------------------------------------------- rows and shards


class _TokenRows:
    """The dump's rows, shard by shard: the shard being filled in flat arrays, handed to
    the sink as a table when it is full."""

    def __init__(self, sink: ShardSink, rows_per_shard: int, topk: bool) -> None:
        if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
            raise UsageError(f"rows_per_shard must be a whole number of at least 1, found {rows_per_shard!r}")
        self.sink = sink
        self.rows_per_shard = rows_per_shard
        self.shard: dict[str, Any] | None = None  # the shard being filled
        self.written: dict[str, tuple[bool, int]] = {}  # shard name -> (top-k columns, k) it was written with
        self.documents: dict[Any, str] = {}  # doc_id -> where it was first seen
        self.doc_id: Any = None
        self.doc_ids_are_strings = False
        self.any_topk = topk  # vLLM always has top-k lists; OpenAI only when asked for top_logprobs > 0
        self.bytes_where: tuple[bool, str] | None = None  # whether the first token had bytes, and where
        self.tokens = 0
        self.topk = 0  # the top-k lists' k when the input says it (vLLM's ranks); 0 = unknown

    def start_document(self, doc_id: Any, where: str) -> None:
        if doc_id in self.documents:
            raise DataError(f"{where}: document {doc_id!r} was already converted from {self.documents[doc_id]}; "
                            "each document may appear once")
        self.documents[doc_id] = where
        self.doc_id = doc_id

    def add(self, position: int, target: int, target_logprob: float, topk: dict[int, float],
            n_bytes: int | None, where: str) -> None:
        if self.bytes_where is None:
            self.bytes_where = (n_bytes is not None, where)
        elif (n_bytes is not None) != self.bytes_where[0]:
            first = self.bytes_where[1]
            raise DataError(f"{where}: the target has {'a' if n_bytes is not None else 'no'} decoded_token, unlike "
                            f"{first}: give every token its text, or none")
        if self.shard is None:
            # float32 as written: NumPy and Arrow then use these buffers without a copy
            self.shard = {"doc_id": [], "position": array("i"), "target": array("i"), "target_logprob": array("f"),
                          "target_bytes": array("i"), "offsets": array("i", [0]), "topk_ids": array("i"),
                          "topk_logprobs": array("f")}
        shard = self.shard
        shard["doc_id"].append(self.doc_id)
        shard["position"].append(position)
        shard["target"].append(target)
        shard["target_logprob"].append(target_logprob)
        shard["target_bytes"].append(n_bytes or 0)
        for token, logprob in sorted(topk.items(), key=lambda pair: (-pair[1], pair[0])):
            shard["topk_ids"].append(token)
            shard["topk_logprobs"].append(logprob)
        shard["offsets"].append(len(shard["topk_ids"]))
        self.any_topk = self.any_topk or bool(topk)
        self.tokens += 1
        if len(shard["position"]) == self.rows_per_shard:
            self._hand_over()

    def _hand_over(self) -> None:
        """The shard being filled to the sink; the next token starts a new one."""
        name = f"part-{len(self.written):05d}"
        self.sink.write_table(name, self._table(self.shard))
        self.written[name] = (self.any_topk, self.topk)
        self.shard = None

    def _table(self, shard: dict[str, Any]) -> pa.Table:
        columns = {
            "doc_id": pa.array(shard["doc_id"], pa.string() if self.doc_ids_are_strings else pa.int64()),
            "position": pa.array(np.asarray(shard["position"], np.int32)),
            "target": pa.array(np.asarray(shard["target"], np.int32)),
            "target_logprob": pa.array(np.asarray(shard["target_logprob"], np.float32)),
        }
        if self.any_topk:
            offsets = pa.array(np.asarray(shard["offsets"], np.int32))
            ids = pa.array(np.asarray(shard["topk_ids"], np.int32))
            columns["topk_ids"] = pa.ListArray.from_arrays(offsets, ids)
            columns["topk_logprobs"] = pa.ListArray.from_arrays(offsets, pa.array(np.asarray(shard["topk_logprobs"], np.float32)))
        if self.bytes_where and self.bytes_where[0]:
            columns["target_bytes"] = pa.array(np.asarray(shard["target_bytes"], np.int32))
        return pa.table(columns, metadata=self._metadata())

    def _metadata(self) -> dict[bytes, bytes] | None:
        # xent eval reads the k from here: a target ranked above it is outside the top-k
        return {TOPK_KEY: str(self.topk).encode()} if self.topk else None

    def finish(self) -> Conversion:
        """Hand over the last shard, then write again the shards written before the k or
        the top-k columns were known (one at a time)."""
        if not self.tokens:
            raise DataError("no scored token in the input: nothing to write (are the outputs empty, or every "
                            "prompt one token long?)")
        if self.shard is not None:
            self._hand_over()
        for name, written in self.written.items():
            if written != (self.any_topk, self.topk):
                self.sink.write_table(name, self._amended(self.sink.read_table(name)))
        return Conversion(shards=list(self.written), tokens=self.tokens, documents=len(self.documents))

    def _amended(self, table: pa.Table) -> pa.Table:
        """A shard written early, as it would be written now: with the final k, and with
        the top-k columns (empty lists) when a later token had a top-k list."""
        if self.any_topk and "topk_ids" not in table.column_names:
            empty = np.zeros(table.num_rows + 1, np.int32)
            at = table.column_names.index("target_logprob") + 1
            table = table.add_column(at, "topk_logprobs", pa.ListArray.from_arrays(empty, pa.array([], pa.float32())))
            table = table.add_column(at, "topk_ids", pa.ListArray.from_arrays(empty, pa.array([], pa.int32())))
        return table.replace_schema_metadata(self._metadata())


# --------------------------------------------------------------------------- reading records


def _records(source: Iterable[Any] | str | os.PathLike, noun: str) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record: ``FILE: line N`` for a JSONL file, else
    ``<noun> I`` (its 0-based index)."""
    if not isinstance(source, (str, os.PathLike)):
        for index, record in enumerate(source):
            yield f"{noun} {index}", record
        return
    name = os.fspath(source)
    with contextlib.ExitStack() as closing:
        try:
            handle = _open_jsonl(name, closing)
        except (FileNotFoundError, IsADirectoryError):
            raise DataError(f"{name}: no such file (expected a JSONL file, one record per line)") from None
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:  # bytes: an encoding error is reported like any other line that is not JSON
                record = json.loads(line, object_pairs_hook=_object_without_repeated_keys)
            except _RepeatedKey as repeated:
                raise DataError(f"{name}: line {number}: key {repeated.args[0]!r} appears twice in one JSON object "
                                "(a token id repeated in a top-k list?); each key may appear once") from None
            except ValueError as error:
                raise DataError(f"{name}: line {number}: not JSON ({error}); expected one record per line") from None
            yield f"{name}: line {number}", record


def _open_jsonl(name: str, closing: contextlib.ExitStack) -> IO[bytes]:
    """The file `name`, decompressed by its suffix (``.gz``, ...). A local file is opened
    by Python rather than fsspec, whose local files seek to their end: so a named pipe
    (``<(zstdcat outputs.jsonl.zst)``) streams too."""
    fs, path = filesystem(name)
    if not is_local(fs):
        return closing.enter_context(fsspec.open(name, "rb", compression="infer").open())
    handle = closing.enter_context(open(path, "rb"))
    compression = infer_compression(path)
    return closing.enter_context(compr[compression](handle, mode="rb")) if compression else handle


class _RepeatedKey(ValueError):
    pass


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a key seen twice raises instead of keeping the last value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return obj


def _field(record: Any, name: str) -> Any:
    """A dict's entry or an object's attribute, or _MISSING."""
    if isinstance(record, dict):
        return record.get(name, _MISSING)
    return getattr(record, name, _MISSING)


def _said(where: Where) -> str:
    return where() if callable(where) else where


def _required(record: Any, name: str, where: Where, hint: str = "") -> Any:
    value = _field(record, name)
    if value is _MISSING or value is None:
        found = "missing" if value is _MISSING else "null"
        raise DataError(f"{_said(where)}: field '{name}' is {found}" + (f"; {hint}" if hint else ""))
    return value


def _sequence(value: Any, where: Where) -> list[Any]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise DataError(f"{_said(where)}: expected a list, found {type(value).__name__}")
    return value


def _token_id(value: Any, where: Where) -> int:
    if type(value) is int and 0 <= value <= _INT32_MAX:
        return value
    try:
        token = int(value)
    except (TypeError, ValueError):
        token = None
    if token is None or isinstance(value, (bool, float)) or not 0 <= token <= _INT32_MAX:
        raise DataError(f"{_said(where)}: expected a token id (an integer from 0 to {_INT32_MAX}), found {value!r:.40}")
    return token


def _logprob(value: Any, where: Where) -> float:
    if type(value) is float and value <= 0.0:  # the common case; NaN fails the comparison
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"{_said(where)}: expected a number, found {value!r:.40}")
    logprob = float(value)
    if math.isnan(logprob) or logprob > LOGPROB_TOLERANCE:
        raise DataError(f"{_said(where)}: log-prob {logprob!r}: expected a log-probability <= 0 (or -inf); "
                        "is this a probability or a logit?")
    return min(logprob, 0.0)
