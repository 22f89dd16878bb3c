"""Turn Parquet shards into the NumPy arrays the kernels take.

Only the needed columns are read, a batch at a time, and list columns become 2-D
views of their Arrow buffers (no per-row Python objects). Every problem found in a
file is a :class:`DataError` naming the file, the column and the row.

Memory: a file is read through a small buffer (never a whole row group's column
chunks at once), and Arrow's allocator hands freed memory back to the system after
each batch, so what a task holds is set by ``batch_logits``, not by the size of the
file or of its row groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xent_kernels import find_bad_label

from ..config import EvalConfig
from ..errors import DataError, XentError, as_infrastructure_error
from ..phases import phase
from .integrity import SKIP_HINT, read_error_message
from .sources import InputFile, filesystem, is_local, range_ignored, range_ignored_error
from .spec import COLUMN_BUFFER_BYTES, ReadSpec, number_type, resolve_spec_from_schema


def open_parquet(url: str, storage_options: dict[str, Any], buffer_size: int = COLUMN_BUFFER_BYTES[0],
                 read_dictionary: list[str] | None = None) -> pq.ParquetFile:
    """Open a shard to read `buffer_size` bytes at a time per column (see
    ``ReadSpec.column_buffer``), the `read_dictionary` columns as dictionary arrays; an
    unreadable or corrupt file is a DataError naming it. Pages that carry a CRC are
    verified as they are read (see flows.integrity)."""
    fs, path = filesystem(url, storage_options)
    options = dict(pre_buffer=False, buffer_size=buffer_size, page_checksum_verification=True,
                   read_dictionary=read_dictionary or None)
    # An HTTP server that ignores Range requests fails the first read past the file's
    # start (fsspec: ValueError), wherever it happens: one 2-byte request tells first.
    if range_ignored(fs, path):
        raise range_ignored_error(url)
    try:
        if is_local(fs):
            return pq.ParquetFile(path, **options)
        # No fsspec cache: Arrow's buffers are the cache. s3fs's default (read ahead
        # 50 MiB) fetches a new block at every switch between column chunks.
        return pq.ParquetFile(fs.open(path, "rb", cache_type="none"), **options)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as error:  # a name in a corrupt footer may not decode
        if (failure := as_infrastructure_error(error, url, "cannot read")) is not None:
            raise failure from error
        raise DataError(f"{url}: not a readable Parquet file ({error}){SKIP_HINT}") from None


def read_failure(url: str, where: str, error: BaseException) -> XentError:
    """What a failed read of `where` in `url` means: the disk or the network failed
    (exit 4), or the file is corrupt (exit 1)."""
    return as_infrastructure_error(error, f"{url} ({where})", "cannot read") or DataError(read_error_message(url, where, error))


def resolve_spec(config: EvalConfig, first: InputFile) -> ReadSpec:
    """Decide the layout from the config and the first shard's schema."""
    parquet = open_parquet(first.url, config.storage_options)
    return resolve_spec_from_schema(
        config, parquet.schema_arrow, first.url, first.hive, lambda column: _first_row_length(parquet, column, first.url)
    )


def _first_row_length(parquet: pq.ParquetFile, column: str, url: str) -> int:
    try:
        for batch in parquet.iter_batches(batch_size=64, columns=[column]):
            lengths = pc.list_value_length(batch.column(0)).drop_null()
            if len(lengths):
                return int(lengths[0].as_py())
    except (OSError, pa.ArrowException) as error:
        raise read_failure(url, "the rows read to learn the class count", error) from None
    raise DataError(f"{url}: column '{column}' has no non-null rows to learn the class count from; set n_classes")


@dataclass
class Batch:
    """One batch of a shard as arrays: `first_row` is the index of its first row in the file."""

    first_row: int
    pred: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    slice_ids: np.ndarray | None
    slice_keys: list[tuple]
    ids: list[np.ndarray] | None = None  # one array per key column in spec.id_cols


# Above this share of its worker's memory limit, a task hands Arrow's freed memory back
# after each batch. Below it, not: the pages would only be faulted in again (doing it
# after every batch cost 16-20% of an evaluation). Dask starts spilling at 0.7 and
# pauses the worker at 0.8 of the limit.
RELEASE_ABOVE_LIMIT_SHARE = 0.5


def release_unused_memory() -> None:
    """Give the memory Arrow's allocator keeps after frees back to the system, when the
    Dask worker running this task is above RELEASE_ABOVE_LIMIT_SHARE of its memory limit.

    mimalloc and jemalloc hold on to freed pages for a while; a Dask worker sees them
    as unmanaged memory, pauses at its memory limit and never resumes.
    """
    if _worker_memory_share() > RELEASE_ABOVE_LIMIT_SHARE:
        pa.default_memory_pool().release_unused()


def _worker_memory_share() -> float:
    """This process's RSS over the memory limit of the Dask worker running this task
    (0 outside a worker, or with no limit)."""
    from distributed import get_worker

    try:
        limit = get_worker().memory_manager.memory_limit
    except ValueError:  # not in a worker's task
        return 0.0
    if not limit:
        return 0.0
    import psutil

    return psutil.Process().memory_info().rss / limit


def iter_batches(parquet: pq.ParquetFile, file: InputFile, spec: ReadSpec, row_groups: list[int] | None,
                 convert: Callable | None = None) -> Iterator[Batch]:
    """The rows of `row_groups` (None: all) as Batches of `spec.batch_rows` rows, made
    by `convert(record_batch, first_row, file, spec)` (default ``to_arrays``; a token
    dump's is ``tokens.to_token_batch``).

    Memory is released after each batch: a consumer that holds no earlier batch
    when it asks for the next one (``map``, not a ``for`` loop variable) keeps one
    batch at a time.
    """
    metadata = parquet.metadata
    groups = list(range(metadata.num_row_groups)) if row_groups is None else row_groups
    group_start = np.concatenate([[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])])
    columns = spec.columns_to_read()
    convert = convert or to_arrays
    for group in groups:
        first_row = int(group_start[group])
        try:
            row_group = metadata.row_group(group)
            size = spec.rows_per_batch(row_group.num_rows, spec.tokens_in(row_group))
            batches = parquet.iter_batches(batch_size=size, row_groups=[group], columns=columns)
            while True:
                with phase("read"):
                    record_batch = next(batches, None)
                if record_batch is None:
                    break
                with phase("convert"):
                    batch = convert(record_batch, first_row, file, spec)
                first_row += record_batch.num_rows
                del record_batch
                yield batch
                del batch
                release_unused_memory()
            del batches  # Arrow's reader still holds the group's last batch
            release_unused_memory()
        except (OSError, pa.ArrowException) as error:
            raise read_failure(file.url, f"row group {group}", error) from None


def table_batches(table: pa.Table, source: InputFile, spec: ReadSpec, first_row: int = 0,
                  convert: Callable | None = None) -> Iterator[Batch]:
    """The rows of an in-memory table as Batches of `spec.batch_rows` rows (made by
    `convert`, as in ``iter_batches``). `source` names it in messages, and `first_row`
    is the index of its first row there."""
    convert = convert or to_arrays
    for record_batch in table.select(spec.columns_to_read()).to_batches(max_chunksize=spec.batch_rows):
        yield convert(record_batch, first_row, source, spec)
        first_row += record_batch.num_rows


def _where(file: InputFile, column: str, row: int) -> str:
    return f"{file.url}: column '{column}', row {row}"


def to_arrays(batch: pa.RecordBatch, first_row: int, file: InputFile, spec: ReadSpec) -> Batch:
    n = batch.num_rows
    pred = _predictions(batch, first_row, file, spec)
    if spec.renormalize:
        pred = renormalized(pred, spec.kind)
    labels = _labels(batch.column(spec.label_col), first_row, file, spec)
    weights = None
    if spec.weight_col:
        column = batch.column(spec.weight_col)
        if column.null_count:
            raise DataError(f"{_where(file, spec.weight_col, first_row + _first_null(column))}: null weight")
        weights = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        bad = np.flatnonzero(~(np.isfinite(weights) & (weights >= 0)))
        if bad.size:
            raise DataError(f"{_where(file, spec.weight_col, first_row + bad[0])}: weight {weights[bad[0]]}, expected a finite value >= 0")
    slice_ids, slice_keys = _slices(batch, n, file, spec)
    ids = [_key_values(batch, name, first_row, file, spec) for name in spec.id_cols] if spec.id_cols else None
    return Batch(first_row, pred, labels, weights, slice_ids, slice_keys, ids)


def _key_values(batch: pa.RecordBatch, name: str, first_row: int, file: InputFile, spec: ReadSpec) -> np.ndarray:
    """One key column as an array: integers stay integers, other values become objects."""
    if name in spec.hive_ids:
        return np.full(batch.num_rows, file.hive[name], dtype=object)
    column = batch.column(name)
    if column.null_count:
        raise DataError(
            f"{_where(file, name, first_row + _first_null(column))}: null key value; every row needs its key "
            f"({', '.join(spec.id_cols)}): it joins the dumps for drift, and picks the row's jackknife bucket. "
            "Fill it, name a complete id column (id_col, drift.id_cols), or set n_buckets: 1 for no intervals"
        )
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


def _first_null(column: pa.Array) -> int:
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _as_float_matrix(values: pa.Array, n: int, n_classes: int) -> np.ndarray:
    array = values.to_numpy(zero_copy_only=False)  # zero copy when there are no nulls
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32 if array.dtype.itemsize <= 4 else np.float64)
    return array.reshape(n, n_classes)


def renormalized(pred: np.ndarray, kind: str) -> np.ndarray:
    """probs: each row divided by its sum; log_probs: its logsumexp subtracted. A row whose
    sum is 0 or not finite is left as it is, for the checks to name."""
    from scipy.special import logsumexp

    wide = pred.astype(np.float64, copy=False)
    if kind == "probs":
        total = wide.sum(axis=1, keepdims=True)
        usable = np.isfinite(total) & (total > 0)
        return np.where(usable, wide / np.where(usable, total, 1.0), wide).astype(pred.dtype, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = logsumexp(wide, axis=1, keepdims=True)
    usable = np.isfinite(total)
    return np.where(usable, wide - np.where(usable, total, 0.0), wide).astype(pred.dtype, copy=False)


def _predictions(batch: pa.RecordBatch, first_row: int, file: InputFile, spec: ReadSpec) -> np.ndarray:
    n, n_classes = batch.num_rows, spec.n_classes
    if spec.layout == "list":
        name = spec.pred_columns[0]
        column = batch.column(name)
        if column.null_count:
            raise DataError(f"{_where(file, name, first_row + _first_null(column))}: null prediction")
        if not pa.types.is_fixed_size_list(column.type):
            lengths = np.diff(np.asarray(column.offsets))
            bad = np.flatnonzero(lengths != n_classes)
            if bad.size:
                raise DataError(
                    f"{_where(file, name, first_row + bad[0])}: {lengths[bad[0]]} values, "
                    f"expected {n_classes} (from {spec.reference_file})"
                )
        return _as_float_matrix(column.flatten(), n, n_classes)
    if spec.layout == "wide":
        matrix = np.empty((n, n_classes), dtype=np.float32)
        for j, name in enumerate(spec.pred_columns):
            values = batch.column(name).to_numpy(zero_copy_only=False)
            if values.dtype == np.float64 and matrix.dtype == np.float32:
                matrix = matrix.astype(np.float64)
            matrix[:, j] = values
        return matrix
    # binary: one score per row becomes two classes (0 = negative, 1 = positive)
    name = spec.pred_columns[0]
    score = batch.column(name).to_numpy(zero_copy_only=False)
    if spec.kind == "logits":  # (0, x) is exact in the score's own type: float32 stays float32
        pred = np.zeros((n, 2), dtype=np.float32 if score.dtype == np.float32 else np.float64)
        pred[:, 1] = score
        return pred
    score = score.astype(np.float64, copy=False)
    pred = np.empty((n, 2))
    if spec.kind == "probs":
        pred[:, 0], pred[:, 1] = 1.0 - score, score
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            pred[:, 0], pred[:, 1] = np.log1p(-np.exp(score)), score
    return pred


def _labels(column: pa.Array, first_row: int, file: InputFile, spec: ReadSpec) -> np.ndarray:
    name = spec.label_col
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if spec.label_is_string:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise DataError(f"{file.url}: label column '{name}' is {column.type}, expected strings (as in {spec.reference_file})")
        index = pc.index_in(column, value_set=pa.array(spec.class_names, type=column.type))
        unknown = np.flatnonzero(index.is_null().to_numpy(zero_copy_only=False) & column.is_valid().to_numpy(zero_copy_only=False))
        if unknown.size:
            value = column[int(unknown[0])].as_py()
            raise DataError(f"{_where(file, name, first_row + unknown[0])}: label {value!r} is not one of the classes {list(spec.class_names)[:10]}")
        return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if not number_type(column.type):
        raise DataError(f"{file.url}: label column '{name}' is {column.type}, expected integers (as in {spec.reference_file})")
    if pa.types.is_floating(column.type):
        column = _integral_labels(column, first_row, file, name)
    values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)  # 0: a valid class
    row = find_bad_label(values, spec.n_classes, spec.ignore_index)
    if row >= 0:
        allowed = f"[0, {spec.n_classes}), null" + ("" if spec.ignore_index is None else f" or {spec.ignore_index}")
        raise DataError(f"{_where(file, name, first_row + row)}: label {values[row]} is out of range, expected {allowed}")
    counted = column.is_valid().to_numpy(zero_copy_only=False)
    if spec.ignore_index is not None:
        counted &= values != spec.ignore_index
    return np.where(counted, values, -1)


def _integral_labels(column: pa.Array, first_row: int, file: InputFile, name: str) -> pa.Array:
    """Float labels as int64: pandas writes integer labels as float64 once a NaN is among
    them (after a merge, say). Whole numbers are class indices, NaN is a missing label
    (an ignored row, as null is); anything else is an error naming its row."""
    values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # null -> NaN
    missing = np.isnan(values)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~missing & ~(np.isfinite(values) & (values == np.round(values))))
    if bad.size:
        raise DataError(
            f"{_where(file, name, first_row + bad[0])}: label {values[bad[0]]:g} is not a whole number; float labels "
            "must hold class indices (NaN or null: an ignored row)"
        )
    whole = np.clip(np.where(missing, 0.0, values), -(2.0**62), 2.0**62).astype(np.int64)
    return pa.array(whole, mask=missing)


def _slices(batch: pa.RecordBatch, n: int, file: InputFile, spec: ReadSpec) -> tuple[np.ndarray | None, list[tuple]]:
    if not spec.slice_by:
        return None, [()]
    codes = np.zeros(n, dtype=np.int64)
    per_column_values: list[list] = []
    radix = 1
    for name in spec.slice_by:
        if name in spec.hive_slices:
            per_column_values.append([file.hive[name]])
            continue
        column = batch.column(name)
        if pa.types.is_dictionary(column.type):  # read as a dictionary (text_slices): codes as they are
            encoded = column if not column.null_count else pc.dictionary_encode(column.dictionary_decode(),
                                                                                 null_encoding="encode")
        else:
            encoded = pc.dictionary_encode(column, null_encoding="encode")
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        values = encoded.dictionary.to_pylist()
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        codes = codes * len(values) + indices if radix > 1 else indices
        radix *= len(values)
        per_column_values.append(values)
    if radix == 1:
        return np.zeros(n, dtype=np.int64), [tuple(values[0] for values in per_column_values)]
    if radix <= max(n, 1 << 16):
        # np.unique's result without its sort: the codes present, in order, and each row's index among them
        unique = np.flatnonzero(np.bincount(codes, minlength=radix))
        position = np.zeros(radix, dtype=np.int64)
        position[unique] = np.arange(len(unique))
        inverse = position[codes]
    else:
        unique, inverse = np.unique(codes, return_inverse=True)
    keys = []
    for code in unique:
        key = []
        remainder = int(code)
        for values in reversed(per_column_values):
            key.append(values[remainder % len(values)])
            remainder //= len(values)
        keys.append(tuple(reversed(key)))
    return inverse.astype(np.int64), keys
