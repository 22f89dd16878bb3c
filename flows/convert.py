"""Converted token dumps written to a folder: :mod:`flows.inputs.token_convert` streams
the shards into a :class:`flows.report.writing.StagedFolder`, which publishes the folder
all-or-nothing when the whole input is converted. ``xent convert`` runs through here.

Memory stays bounded by about one shard whatever the input's size (the module docstring
of :mod:`flows.inputs.token_convert` says what is held); the staged shards take disk
space beside the output folder (locally) or in a temporary folder (for an object store)
until the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import UsageError
from .inputs.sources import filesystem, is_local
from .inputs.token_convert import DEFAULT_ROWS_PER_SHARD, VOCAB_TABLE, stream_openai, stream_vllm
from .report.writing import MANIFEST, StagedFolder, read_manifest

__all__ = ["WrittenDump", "write_openai_dump", "write_vllm_dump"]


@dataclass(frozen=True)
class WrittenDump:
    """A token dump written to a folder: {table name: path} (the shards ``part-00000``,
    ``part-00001``, ... and, from OpenAI, ``_vocab``), and how many tokens and documents
    the shards hold."""

    paths: dict[str, str]
    tokens: int
    documents: int

    @property
    def shards(self) -> list[str]:
        return [name for name in self.paths if name != VOCAB_TABLE]


def write_vllm_dump(outputs: Iterable[Any] | str | os.PathLike, out: str, *,
                    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                    storage_options: dict[str, Any] | None = None) -> WrittenDump:
    """Convert vLLM prompt log-probs (:func:`flows.inputs.token_convert.stream_vllm`) into
    a token dump at `out`, replacing the dump there all-or-nothing.

    Raises
    ------
    DataError
        The input is not vLLM output; nothing is written.
    UsageError
        `out` holds files that xent did not write, or `rows_per_shard` is below 1.
    InfrastructureError
        The disk or the object store failed.
    """
    _refuse_a_folder_of_other_files(out, storage_options)
    with StagedFolder(out, storage_options) as folder:
        converted = stream_vllm(outputs, folder, rows_per_shard=rows_per_shard)
    return WrittenDump(paths=folder.paths, tokens=converted.tokens, documents=converted.documents)


def write_openai_dump(responses: Iterable[Any] | str | os.PathLike, out: str, *,
                      rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, vocab: str | None = None,
                      storage_options: dict[str, Any] | None = None) -> WrittenDump:
    """Convert OpenAI chat-completion log-probs (:func:`flows.inputs.token_convert.stream_openai`)
    into a token dump at `out` with its ``_vocab.parquet``, replacing the dump there
    all-or-nothing.

    Raises
    ------
    DataError
        The input is not chat-completion log-probs, or `vocab` is not a vocabulary xent
        wrote; nothing is written.
    UsageError
        `out` holds files that xent did not write, or `rows_per_shard` is below 1.
    InfrastructureError
        The disk or the object store failed.
    """
    _refuse_a_folder_of_other_files(out, storage_options)
    with StagedFolder(out, storage_options) as folder:
        converted = stream_openai(responses, folder, rows_per_shard=rows_per_shard, vocab=vocab)
    return WrittenDump(paths=folder.paths, tokens=converted.tokens, documents=converted.documents)


def _refuse_a_folder_of_other_files(out: str, storage_options: dict[str, Any] | None) -> None:
    # The write swaps the whole folder: never over files that a person put there.
    fs, path = filesystem(out, storage_options)
    occupied = fs.exists(path) and (not fs.isdir(path) or fs.ls(path))
    if is_local(fs) and occupied and read_manifest(out, storage_options) is None:
        raise UsageError(f"{out} holds files without a {MANIFEST}, so xent did not write them; converting would "
                         "replace the whole folder: choose a new folder, or empty this one")
