"""The Dask step: shards (or in-memory tables, or Dask DataFrame partitions) -> small
per-piece states -> one tree-reduced state.

States are merged in a tree with a fixed fan-in, so the report does not depend on
file order or on which worker ran what (merge is associative and commutative).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pyarrow as pa
from distributed import Client

from ..config import EvalConfig
from ..errors import DataError
from ..inputs.memory import (
    DASK_LABEL, as_arrow, is_dask_dataframe, memory_fingerprint, memory_label, memory_source, partition_label,
)
from ..inputs.sources import InputFile, fingerprint, list_inputs
from ..inputs.spec import ReadSpec, resolve_table_spec
from ..inputs.tokens import TokenSpec, resolve_token_spec
from ..kinds import TOKENS
from .cluster import STALL_TIMEOUT, map_all, map_reduce
from .pieces import (
    BadShard, FileInfo, Piece, PieceResult, evaluate_piece, first_readable_spec, inspect_file, inspect_partition,
    plan_pieces, repeats_as_data_errors, resolve_any_spec,
)
from .progress import Progress

log = logging.getLogger("xent")


@dataclass
class Evaluation:
    """Everything a report is written from."""

    config: EvalConfig
    spec: ReadSpec
    inputs: list[InputFile]  # the shards; empty for in-memory data
    result: PieceResult
    fingerprint: dict = field(default_factory=dict)  # of the shards, or flows.inputs.memory.memory_fingerprint
    n_files_verified: int = 0  # inputs whose pages carry checksums, verified as they are read
    n_files_without_checksums: int = 0  # inputs inspected whose pages carry none (pandas' and pyarrow's default)

    @property
    def n_files(self) -> int:
        return len(self.inputs)


def evaluate(
    config: EvalConfig, client: Client, progress: Progress | None = None, inputs: list[InputFile] | None = None
) -> Evaluation:
    """Run one evaluation on `client` and return the merged statistics. `inputs`
    defaults to listing `config.sources`."""
    inputs = inputs if inputs is not None else list_inputs(config.sources, config.storage_options)
    spec, unreadable = first_readable_spec(config, inputs)
    progress = progress or Progress.quiet()
    readable = [file for file in inputs if file.url not in {b.url for b in unreadable}]
    infos = inspect_files(client, readable, spec, progress, config.stall_timeout)
    rejected = [info for info in infos if info.error is not None]
    if 2 * len(rejected) > len(infos):
        # The file the settings came from may be the odd one out: take the other layout
        # if it fits more files.
        try:
            other_spec = resolve_any_spec(config, rejected[0].file)
        except DataError:
            other_spec = None
        if other_spec is not None:
            other = inspect_files(client, readable, other_spec, progress, config.stall_timeout)
            if sum(i.error is None for i in other) > len(infos) - len(rejected):
                spec, infos = other_spec, other
    bad = unreadable + tuple(info.bad_shard() for info in infos if info.error is not None)
    # With on_bad_shard='skip' a file is one task: a bad row group must drop its whole file.
    pieces = plan_pieces(infos, config.task_rows if config.on_bad_shard == "error" else None)
    result = reduce_pieces(client, config, spec, pieces, progress, bad=bad)
    verified = sum(info.checksummed for info in infos)
    without = sum(info.error is None and not info.checksummed for info in infos)
    return Evaluation(config, spec, inputs, result, fingerprint(inputs), n_files_verified=verified,
                      n_files_without_checksums=without)


def evaluate_source(config: EvalConfig, client: Client, source: Any = None, progress: Progress | None = None) -> Evaluation:
    """Run one evaluation of `source`: None for the config's ``sources`` (Parquet paths),
    or in-memory data (a pyarrow Table or RecordBatch, a pandas DataFrame or a Dask
    DataFrame; see ``flows.inputs.memory.is_in_memory``)."""
    if source is None:
        return evaluate(config, client, progress)
    if is_dask_dataframe(source):
        return evaluate_partitions(config, client, source, progress)
    label = memory_label(source)
    return evaluate_table(config, client, as_arrow(source, label), label, progress)


def evaluate_table(config: EvalConfig, client: Client, table: pa.Table, label: str, progress: Progress | None = None) -> Evaluation:
    """Run one evaluation of an in-memory table on `client`; `label` names it in messages
    (``<pandas.DataFrame>``). The table is cut into pieces of ``task_rows`` rows (one
    piece with on_bad_shard='skip', as a file is one task), scattered to the cluster and
    reduced as shards' pieces are."""
    spec = _table_spec(config, table, label)
    pieces, data = _table_pieces(config, client, table, label)
    result = reduce_pieces(client, config, spec, pieces, progress, data=data)
    return Evaluation(config, spec, [], result, memory_fingerprint(label, table.schema, table.num_rows, table.nbytes, len(pieces)))


def evaluate_partitions(config: EvalConfig, client: Client, frame: Any, progress: Progress | None = None) -> Evaluation:
    """Run one evaluation of a Dask DataFrame on `client`: its partitions are computed
    there and each is a piece (``<dask partition i>`` in messages). Only the first
    non-empty partition's first rows reach the client, to learn the layout from; a
    partition's rows are released as soon as its piece is reduced."""
    pieces, parts, first, head = _partition_pieces(config, client, frame)
    spec = _table_spec(config, head, partition_label(first))
    result = reduce_pieces(client, config, spec, pieces, progress, data=parts, unit="partitions")
    identity = memory_fingerprint(DASK_LABEL, head.schema, result.rows_read, 0, len(pieces))
    return Evaluation(config, spec, [], result, identity)


def _table_spec(config: EvalConfig, table: pa.Table, label: str) -> ReadSpec | TokenSpec:
    if config.kind == TOKENS:
        return resolve_token_spec(config, table.schema, label, {})
    return resolve_table_spec(config, table, label)


@dataclass
class MemoryPieces:
    """In-memory data cut into pieces on the cluster, as an evaluation of it cuts them."""

    pieces: list[Piece]
    data: list[Any]  # one future per piece: its rows
    schema: pa.Schema  # of the table, or of the first non-empty partition
    source: InputFile  # the stand-in naming the data in messages (flows.inputs.memory)


def memory_pieces(config: EvalConfig, client: Client, source: Any) -> MemoryPieces:
    """`source` (in-memory data, as ``evaluate_source`` takes) as pieces whose rows are
    on the cluster, for ``map_all`` over (piece, ..., data); ``piece_batches`` reads them."""
    if is_dask_dataframe(source):
        pieces, parts, _, head = _partition_pieces(config, client, source)
        return MemoryPieces(pieces, parts, head.schema, memory_source(DASK_LABEL))
    label = memory_label(source)
    table = as_arrow(source, label)
    pieces, data = _table_pieces(config, client, table, label)
    return MemoryPieces(pieces, data, table.schema, memory_source(label))


def _table_pieces(config: EvalConfig, client: Client, table: pa.Table, label: str) -> tuple[list[Piece], list[Any]]:
    """Pieces of ``task_rows`` rows (one with on_bad_shard='skip'), scattered."""
    source, rows = memory_source(label), table.num_rows
    step = config.task_rows if config.on_bad_shard == "error" else max(rows, 1)
    pieces = [Piece(source, None, min(step, rows - start), first_row=start, in_memory=True) for start in range(0, rows, step)]
    data = client.scatter([table.slice(piece.first_row, piece.rows) for piece in pieces], hash=False) if pieces else []
    return pieces, data


def _partition_pieces(config: EvalConfig, client: Client, frame: Any) -> tuple[list[Piece], list[Any], int, pa.Table]:
    """A piece per partition, the partitions' futures, and the index and first rows of
    the first non-empty partition (of the first one when all are empty)."""
    parts = client.compute(frame.to_delayed())
    heads = []
    for i in range(len(parts)):  # usually the first partition has rows
        heads.append(map_all(client, inspect_partition, [parts[i]], stall_timeout=config.stall_timeout)[0].head)
        if heads[-1].num_rows:
            break
    first, head = (len(heads) - 1, heads[-1]) if heads[-1].num_rows else (0, heads[0])
    # Rows per partition are known only once read (0 here, and for a bad partition
    # left out with on_bad_shard='skip'): progress counts partitions.
    pieces = [Piece(memory_source(partition_label(i)), None, 0, in_memory=True) for i in range(len(parts))]
    return pieces, parts, first, head


def reduce_pieces(client: Client, config: EvalConfig, spec: ReadSpec, pieces: Sequence[Piece],
                  progress: Progress | None = None, data: list[Any] | None = None,
                  bad: tuple[BadShard, ...] = (), unit: str = "rows") -> PieceResult:
    """Every piece reduced to statistics on the cluster and merged in one tree, with the
    shards already known to be bad. In-memory pieces take their rows from `data` (one
    future per piece); each entry is dropped as its piece is done, so that the cluster
    can forget those rows. Progress counts `unit`: rows, or pieces."""
    progress = progress or Progress.quiet()
    result = replace(PieceResult.empty(spec), bad_shards=bad)
    if pieces:
        # The spec as an argument per piece when data follows it: client.map's keyword
        # arguments are constants, and evaluate_piece takes (piece, spec, data).
        iterables = (pieces,) if data is None else (pieces, [spec] * len(pieces), data)
        constants = {"spec": spec} if data is None else {}
        per_piece = (lambda piece: piece.rows) if unit == "rows" else (lambda piece: 1)
        with progress.stage("evaluating", sum(map(per_piece, pieces)), unit=unit) as advance:

            def done(i: int) -> None:
                advance(per_piece(pieces[i]))
                if data is not None:
                    data[i] = None

            with repeats_as_data_errors(spec):  # raised where pieces' states merge, on the workers
                total = map_reduce(
                    client, evaluate_piece, *iterables, split_every=config.split_every,
                    stall_timeout=config.stall_timeout, on_done=done, **constants,
                )
                result = PieceResult.merge(total, result)
    if result.probability_like:
        log.warning("%s", probability_warning(result.probability_like))
    return result


def probability_warning(files: Sequence[str]) -> str:
    """The warning for `files` whose rows, read as logits, look like probabilities."""
    more = f" and {len(files) - 1} more file(s)" if len(files) > 1 else ""
    return (f"{files[0]}{more}: every row read as logits is non-negative and sums to 1: these look like "
            "probabilities: pass --kind probs (kind: probs in a config) if they are")


def inspect_files(client: Client, files: list[InputFile], spec: ReadSpec, progress: Progress | None = None,
                  stall_timeout: float = STALL_TIMEOUT) -> list[FileInfo]:
    """Each file's row groups, schema check and checksum status (``FileInfo``), in order."""
    progress = progress or Progress.quiet()
    with progress.stage("inspecting shards", len(files)) as advance:
        return map_all(client, inspect_file, files, spec=spec, stall_timeout=stall_timeout, on_done=lambda i: advance(1))

