"""The Dask step: shards -> small per-piece states -> one tree-reduced state.

A piece is one file, or a run of row groups of a big file. Each piece is read a
batch at a time and reduced by the fused kernel to a ClassStats of size
O(slices × classes); rows are never shuffled or collected. States are merged in a
tree with a fixed fan-in, so the report does not depend on file order or on which
worker ran what (merge is associative and commutative).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from distributed import Client, LocalCluster

from xent_kernels import ClassStats, class_stats_partial, find_invalid_row

from .config import EvalConfig
from .errors import DataError, InfrastructureError, UsageError
from .reader import Batch, ReadSpec, check_schema, iter_batches, open_parquet, resolve_spec
from .sources import InputFile, fingerprint, list_inputs

log = logging.getLogger("xent")


@dataclass(frozen=True)
class BadShard:
    url: str
    reason: str
    rows: int  # rows in the file (0 when its footer could not be read)


@dataclass(frozen=True)
class Piece:
    file: InputFile
    row_groups: tuple[int, ...] | None  # None: the whole file
    rows: int


@dataclass(frozen=True)
class PieceResult:
    """The mergeable outcome of some pieces: statistics plus the shards left out."""

    stats: ClassStats
    bad_shards: tuple[BadShard, ...] = ()
    rows_read: int = 0

    @staticmethod
    def merge(*results: "PieceResult") -> "PieceResult":
        stats = functools.reduce(ClassStats.merge, (r.stats for r in results))
        bad = tuple(sorted((b for r in results for b in r.bad_shards), key=lambda b: b.url))
        return PieceResult(stats, bad, sum(r.rows_read for r in results))


@dataclass(frozen=True)
class FileInfo:
    file: InputFile
    row_group_rows: tuple[int, ...] = ()
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(self.row_group_rows)


@dataclass
class Evaluation:
    """Everything a report is written from."""

    config: EvalConfig
    spec: ReadSpec
    inputs: list[InputFile]
    result: PieceResult
    fingerprint: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- work done on workers


def inspect_file(file: InputFile, spec: ReadSpec) -> FileInfo:
    """Read a shard's footer and check its schema against the spec."""
    try:
        parquet = open_parquet(file.url, spec.storage_options)
        check_schema(parquet, file, spec)
        metadata = parquet.metadata
        return FileInfo(file, tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)))
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return FileInfo(file, error=str(error))


def evaluate_piece(piece: Piece, spec: ReadSpec) -> PieceResult:
    """Read one piece batch by batch and reduce it to statistics."""
    try:
        return PieceResult(_piece_stats(piece, spec), rows_read=piece.rows)
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return PieceResult(_empty(spec), (BadShard(piece.file.url, str(error), piece.rows),))


def _empty(spec: ReadSpec) -> ClassStats:
    return ClassStats.empty(spec.n_classes, n_bins=spec.n_bins)


def _piece_stats(piece: Piece, spec: ReadSpec) -> ClassStats:
    parquet = open_parquet(piece.file.url, spec.storage_options, spec.column_buffer)
    check_schema(parquet, piece.file, spec)
    groups = None if piece.row_groups is None else list(piece.row_groups)
    # map, not a for loop: no variable keeps a batch alive while the next one is read.
    batches = iter_batches(parquet, piece.file, spec, groups)
    states = map(functools.partial(_batch_stats, file=piece.file, spec=spec), batches)
    return functools.reduce(ClassStats.merge, states, _empty(spec))


def _batch_stats(batch: Batch, file: InputFile, spec: ReadSpec) -> ClassStats:
    if spec.kind != "logits":  # probabilities must also be normalised
        _reject_invalid_rows(batch.pred, batch.first_row, file, spec)
    state = class_stats_partial(
        batch.pred,
        batch.labels,
        kind=spec.kind,
        weights=batch.weights,
        slice_ids=batch.slice_ids,
        slice_keys=batch.slice_keys,
        n_bins=spec.n_bins,
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
    row, reason = find_invalid_row(pred, spec.kind)
    if row >= 0:
        raise DataError(f"{file.url}: column '{spec.pred_label}', row {first_row + index[row]}: {spec.kind} with {reason}")


# --------------------------------------------------------------------------- the client side


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


def tree_reduce(client: Client, futures: list, split_every: int, merge: Callable = PieceResult.merge) -> object:
    """One future for `merge` applied over `futures` in a tree of fan-in `split_every`."""
    level = futures
    while len(level) > 1:
        level = [client.submit(merge, *level[i : i + split_every], pure=False) for i in range(0, len(level), split_every)]
    return level[0]


STALL_TIMEOUT = EvalConfig.model_fields["stall_timeout"].default


def _wait_all(futures: list, on_done: Callable[[object], None], stall_timeout: float = STALL_TIMEOUT) -> None:
    """Wait for `futures`, calling `on_done(future)` as each finishes; the first
    error cancels the rest and is raised here.

    A cluster whose workers are all paused at their memory limit, or gone, never
    fails a task: it waits. When none of `futures` finishes for `stall_timeout`
    seconds, the rest are cancelled and an InfrastructureError names the cause.
    """
    finished: queue.SimpleQueue = queue.SimpleQueue()
    try:
        for future in futures:
            future.add_done_callback(finished.put)
        for _ in futures:
            try:
                future = finished.get(timeout=stall_timeout)
            except queue.Empty:
                raise InfrastructureError(_stall_message(futures[0].client, stall_timeout)) from None
            if future.status == "error":
                future.result()
            on_done(future)
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _stall_message(client: Client, seconds: float) -> str:
    """Why the cluster made no progress, in one line, with the setting to change."""
    head = f"the Dask cluster at {client.scheduler.address} made no progress for {seconds:g} s"
    try:
        workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    except Exception as error:  # noqa: BLE001 - the scheduler itself may be the cause
        return f"{head} and its scheduler does not answer ({error}); check the scheduler, or raise stall_timeout"
    if not workers:
        return f"{head}: it has no workers (they exited or were lost); start workers and check their logs"
    paused = [w for w in workers if w.get("status") == "paused"]
    if paused:
        memory = ", ".join(
            f"{w.get('name')} {w.get('metrics', {}).get('memory', 0) / 2**20:.0f} MiB of "
            f"{w.get('memory_limit', 0) / 2**20:.0f} MiB"
            for w in paused
        )
        return (
            f"{head}: {len(paused)} of {len(workers)} workers paused at their memory limit ({memory}); "
            "raise the workers' --memory-limit, lower batch_logits, or raise stall_timeout"
        )
    return (
        f"{head} with no worker paused ({len(workers)} running): a task is blocked or slower than stall_timeout; "
        "check the workers' logs, lower task_rows, or raise stall_timeout"
    )


def evaluate(
    config: EvalConfig, client: Client, progress: "Progress | None" = None, inputs: list[InputFile] | None = None
) -> Evaluation:
    """Run one evaluation on `client` and return the merged statistics. `inputs`
    defaults to listing `config.sources`."""
    inputs = inputs if inputs is not None else list_inputs(config.sources, config.storage_options)
    spec = resolve_spec(config, inputs[0])
    progress = progress or Progress.quiet()
    with progress.stage("inspecting shards", len(inputs)) as advance:
        futures = client.map(inspect_file, inputs, spec=spec, pure=False)
        _wait_all(futures, lambda future: advance(1), config.stall_timeout)
        infos = [future.result() for future in futures]
    bad = tuple(BadShard(i.file.url, i.error, 0) for i in infos if i.error is not None)
    # With on_bad_shard='skip' a file is one task: a bad row group must drop its whole file.
    pieces = plan_pieces(infos, config.task_rows if config.on_bad_shard == "error" else None)
    result = PieceResult(_empty(spec), bad)
    if pieces:
        with progress.stage("evaluating", sum(p.rows for p in pieces), unit="rows") as advance:
            futures = client.map(evaluate_piece, pieces, spec=spec, pure=False)
            rows = {future.key: piece.rows for future, piece in zip(futures, pieces)}
            total = tree_reduce(client, futures, config.split_every)
            _wait_all(futures, lambda future: advance(rows[future.key]), config.stall_timeout)
            _wait_all([total], lambda future: None, config.stall_timeout)
            result = PieceResult.merge(total.result(), result)
    return Evaluation(config, spec, inputs, result, fingerprint(inputs))


class Progress:
    """A rich progress bar on a terminal, nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @classmethod
    def quiet(cls) -> "Progress":
        return cls(False)

    @classmethod
    def auto(cls) -> "Progress":
        return cls(sys.stderr.isatty())

    @contextmanager
    def stage(self, description: str, total: int, unit: str = "files") -> Iterator[Callable[..., None]]:
        if not self.enabled:
            yield lambda amount=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        with RichProgress(
            TextColumn(f"{description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda amount=1: bar.advance(task, amount)


# --------------------------------------------------------------------------- the cluster


@contextmanager
def dask_client(address: str | None = None, *, n_workers: int | None = None) -> Iterator[Client]:
    """A client for `address` (or $DASK_SCHEDULER_ADDRESS), else a LocalCluster sized to this machine.

    The local cluster runs its workers as threads of this process: the kernels and
    pyarrow release the GIL, and there is no worker start-up or data transfer to pay.
    """
    # distributed logs every connection at INFO, and a worker logs each failed task
    # with its traceback; the error reaches the user once, from the client.
    verbose = logging.getLogger().getEffectiveLevel() < logging.WARNING
    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("distributed.worker").setLevel(logging.INFO if verbose else logging.CRITICAL)
    logging.getLogger("distributed.worker.memory").setLevel(logging.INFO if verbose else logging.WARNING)
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {error}") from None
        with client:
            yield client
        return
    threads = n_workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=":0", silence_logs=logging.WARNING
    ) as cluster, Client(cluster) as client:
        yield client
