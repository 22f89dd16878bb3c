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
from .errors import DataError, InfrastructureError, XentError, infrastructure_cause
from .integrity import inspect_integrity
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
    probability_like: tuple[str, ...] = ()  # files read as logits whose rows look like probabilities

    @staticmethod
    def merge(*results: "PieceResult") -> "PieceResult":
        stats = functools.reduce(ClassStats.merge, (r.stats for r in results))
        bad = tuple(sorted((b for r in results for b in r.bad_shards), key=lambda b: b.url))
        suspicious = tuple(sorted({url for r in results for url in r.probability_like}))
        return PieceResult(stats, bad, sum(r.rows_read for r in results), suspicious)


@dataclass(frozen=True)
class FileInfo:
    file: InputFile
    row_group_rows: tuple[int, ...] = ()
    error: str | None = None
    checksummed: bool = False  # the pages read carry CRCs, verified as they are read

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
    n_files_verified: int = 0  # inputs whose pages carry checksums, verified as they are read

    @property
    def n_files(self) -> int:
        return len(self.inputs)


# --------------------------------------------------------------------------- work done on workers


def inspect_file(file: InputFile, spec: ReadSpec) -> FileInfo:
    """Read a shard's footer, check its schema against the spec, and see whether its
    pages carry checksums. A bad shard's rows are what its footer declares, if readable."""
    declared = 0
    try:
        parquet = open_parquet(file.url, spec.storage_options)
        declared = parquet.metadata.num_rows
        check_schema(parquet, file, spec)
        checksummed = inspect_integrity(parquet, file.url, spec.columns_to_read(), spec.storage_options)
        metadata = parquet.metadata
        rows = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
        return FileInfo(file, rows, checksummed=checksummed)
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return FileInfo(file, (declared,) if declared else (), error=str(error))


def evaluate_piece(piece: Piece, spec: ReadSpec) -> PieceResult:
    """Read one piece batch by batch and reduce it to statistics."""
    try:
        stats, probability_like = _piece_stats(piece, spec)
        return PieceResult(stats, rows_read=piece.rows, probability_like=(piece.file.url,) if probability_like else ())
    except DataError as error:
        if spec.on_bad_shard == "error":
            raise
        return PieceResult(_empty(spec), (BadShard(piece.file.url, str(error), piece.rows),))


def _empty(spec: ReadSpec) -> ClassStats:
    return ClassStats.empty(spec.n_classes, n_bins=spec.n_bins)


def _piece_stats(piece: Piece, spec: ReadSpec) -> tuple[ClassStats, bool]:
    """The piece's statistics, and whether its first batch, read as logits, looks
    like probabilities instead."""
    parquet = open_parquet(piece.file.url, spec.storage_options, spec.column_buffer)
    check_schema(parquet, piece.file, spec)
    groups = None if piece.row_groups is None else list(piece.row_groups)
    first_looks_like_probabilities: list[bool] = []

    def batch_stats(batch: Batch) -> ClassStats:
        if not first_looks_like_probabilities:
            first_looks_like_probabilities.append(spec.kind == "logits" and _looks_like_probabilities(batch.pred))
        return _batch_stats(batch, piece.file, spec)

    # map, not a for loop: no variable keeps a batch alive while the next one is read.
    states = map(batch_stats, iter_batches(parquet, piece.file, spec, groups))
    stats = functools.reduce(ClassStats.merge, states, _empty(spec))
    return stats, any(first_looks_like_probabilities)


def _looks_like_probabilities(pred: np.ndarray, rows: int = 4096) -> bool:
    """Every one of the first `rows` rows is non-negative and sums to 1 (within 1e-4)."""
    head = pred[:rows]
    return len(head) > 0 and bool((head >= 0).all() and (np.abs(head.sum(axis=1, dtype=np.float64) - 1.0) <= 1e-4).all())


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
        eps=spec.eps,
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


def first_readable_spec(config: EvalConfig, inputs: list[InputFile]) -> tuple[ReadSpec, tuple[BadShard, ...]]:
    """The read settings, from the first file that yields them. With on_bad_shard='skip',
    files before it that cannot (unreadable, or another layout) are bad shards; with
    'error', the first file decides."""
    if config.on_bad_shard == "error":
        return resolve_spec(config, inputs[0]), ()
    skipped: list[BadShard] = []
    for file in inputs:
        try:
            return resolve_spec(config, file), tuple(skipped)
        except DataError as error:
            skipped.append(BadShard(file.url, str(error), _footer_rows(file, config.storage_options)))
    raise DataError(f"no file yields the read settings; the first: {skipped[0].reason}")


def _footer_rows(file: InputFile, storage_options: dict) -> int:
    """Rows a file's footer declares; 0 when the footer cannot be read."""
    try:
        return open_parquet(file.url, storage_options).metadata.num_rows
    except DataError:
        return 0


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


def wait_all(futures: list, on_done: Callable[[object], None], stall_timeout: float = STALL_TIMEOUT) -> None:
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
    spec, unreadable = first_readable_spec(config, inputs)
    progress = progress or Progress.quiet()
    readable = [file for file in inputs if file.url not in {b.url for b in unreadable}]
    infos = _inspect(client, readable, spec, progress, config.stall_timeout)
    rejected = [info for info in infos if info.error is not None]
    if 2 * len(rejected) > len(infos):
        # The file the settings came from may be the odd one out: take the other layout
        # if it fits more files.
        try:
            other_spec = resolve_spec(config, rejected[0].file)
        except DataError:
            other_spec = None
        if other_spec is not None:
            other = _inspect(client, readable, other_spec, progress, config.stall_timeout)
            if sum(i.error is None for i in other) > len(infos) - len(rejected):
                spec, infos = other_spec, other
    bad = unreadable + tuple(BadShard(i.file.url, i.error, i.rows) for i in infos if i.error is not None)
    # With on_bad_shard='skip' a file is one task: a bad row group must drop its whole file.
    pieces = plan_pieces(infos, config.task_rows if config.on_bad_shard == "error" else None)
    result = PieceResult(_empty(spec), bad)
    if pieces:
        with progress.stage("evaluating", sum(p.rows for p in pieces), unit="rows") as advance:
            futures = client.map(evaluate_piece, pieces, spec=spec, pure=False)
            rows = {future.key: piece.rows for future, piece in zip(futures, pieces)}
            total = tree_reduce(client, futures, config.split_every)
            wait_all(futures, lambda future: advance(rows[future.key]), config.stall_timeout)
            wait_all([total], lambda future: None, config.stall_timeout)
            result = PieceResult.merge(total.result(), result)
    verified = sum(info.checksummed for info in infos)
    if result.probability_like:
        first, more = result.probability_like[0], len(result.probability_like) - 1
        log.warning("%s%s: every row read as logits is non-negative and sums to 1: these look like probabilities; "
                    "if they are, pass --kind probs (kind: probs in a config)", first,
                    f" and {more} more file(s)" if more else "")
    return Evaluation(config, spec, inputs, result, fingerprint(inputs), n_files_verified=verified)


def _inspect(client: Client, files: list[InputFile], spec: ReadSpec, progress: "Progress",
             stall_timeout: float) -> list[FileInfo]:
    with progress.stage("inspecting shards", len(files)) as advance:
        futures = client.map(inspect_file, files, spec=spec, pure=False)
        wait_all(futures, lambda future: advance(1), stall_timeout)
        return [future.result() for future in futures]


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
    logging.getLogger("distributed.client").setLevel(logging.INFO if verbose else logging.CRITICAL)
    logging.getLogger("distributed.worker.memory").setLevel(logging.INFO if verbose else logging.WARNING)
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise InfrastructureError(
                f"cannot reach the Dask scheduler at {address}: {error} (check the address and that the scheduler runs)",
                transient=True,
            ) from None
        with client, _cluster_failures_named(address):
            yield client
        return
    threads = n_workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=":0", silence_logs=logging.WARNING
    ) as cluster, Client(cluster) as client, _cluster_failures_named(cluster.scheduler_address):
        yield client


# Errors by which distributed says the cluster itself failed, whatever the data.
_LOST_SCHEDULER = ("CommClosedError", "StreamClosedError", "FutureCancelledError", "CancelledError")


@contextmanager
def _cluster_failures_named(address: str) -> Iterator[None]:
    """Turn the cluster's own failures (scheduler lost, workers dying) into an
    InfrastructureError naming the scheduler; other errors pass unchanged."""
    try:
        yield
    except XentError:
        raise
    except Exception as error:
        name = type(error).__name__
        if name in _LOST_SCHEDULER:
            raise InfrastructureError(f"lost the Dask scheduler at {address} ({name}: {error})", transient=True) from error
        if name == "KilledWorker":
            cause = infrastructure_cause(error)[0]
            raise InfrastructureError(f"Dask cluster at {address}: {cause}; {error}") from error
        raise
