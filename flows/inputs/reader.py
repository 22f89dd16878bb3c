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

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xent_kernels import SUM_TOLERANCE, find_bad_label

from ..config import BINARY_COL, DEFAULT_PRED_COL, WIDE_PREFIX, EvalConfig
from ..errors import DataError, XentError, as_infrastructure_error
from ..metadata import CLASSES_KEY
from .integrity import SKIP_HINT, read_error_message
from .sources import InputFile, filesystem, is_local, range_ignored, range_ignored_error


# Bytes read from a file at a time, over all the columns read (each column has its
# own buffer), within 64 KiB..8 MiB a column. With Arrow's default (pre_buffer) a
# reader loads a row group's whole column chunks before decoding any of it: a 1 M-row
# group of 50 float32 logits is 200 MB held whatever batch_logits says. On an object
# store each buffer refill is one ranged GET, so a column's buffer is kept large.
READ_BUFFER_BYTES = 16 << 20
COLUMN_BUFFER_BYTES = (64 << 10, 8 << 20)


@dataclass(frozen=True)
class ReadSpec:
    """What to read from every shard, resolved once from the config and the first shard."""

    kind: str
    layout: str  # "list" | "wide" | "binary"
    pred_columns: tuple[str, ...]  # one list or float column, or the C wide columns
    n_classes: int
    class_names: tuple[str, ...] | None
    label_col: str
    label_is_string: bool
    weight_col: str | None
    slice_by: tuple[str, ...]
    slice_types: tuple[pa.DataType, ...]
    hive_slices: tuple[str, ...]  # the slice_by keys that come from hive folders
    ignore_index: int | None
    on_bad_shard: str
    on_nonfinite: str
    n_bins: int
    batch_logits: int
    eps: float | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    reference_file: str = ""  # the shard the layout was taken from, for messages
    id_cols: tuple[str, ...] = ()  # row key columns, read for the drift join or to pick jackknife buckets
    hive_ids: tuple[str, ...] = ()  # the id_cols that come from hive folders
    n_buckets: int = 1  # jackknife buckets: by a hash of id_cols, else of the row's label and prediction
    confusion: bool = False  # keep the confusion matrix (C <= max_confusion_classes)
    n_thresholds: int = 0  # ROC histogram bins for AUC; 0 = off (C > max_auc_classes)
    exact_auc_max_values: int = 0  # exact AUC for slices with rows × (C + 2) <= this; 0 = binned only
    prob_tolerance: float = SUM_TOLERANCE  # probs: largest |row sum - 1| (log_probs: |logsumexp|)
    renormalize: bool = False  # probs: rows divided by their sums (log_probs: logsumexp subtracted) as read

    def state_options(self) -> dict[str, Any]:
        """The options of every ``ClassStats`` of this read: ``ClassStats.empty`` and
        ``class_stats_partial`` take them, so all pieces' states merge."""
        return dict(n_bins=self.n_bins, n_buckets=self.n_buckets, confusion=self.confusion,
                    n_thresholds=self.n_thresholds, exact_auc_max_values=self.exact_auc_max_values)

    @property
    def bucket_key(self) -> list[str] | str | None:
        """What picks a row's jackknife bucket: the key columns, "content" (the row's
        label and prediction bytes), or None with one bucket (no intervals)."""
        if self.n_buckets == 1:
            return None
        return list(self.id_cols) if self.id_cols else "content"

    @property
    def pred_label(self) -> str:
        return self.pred_columns[0] if self.layout != "wide" else f"{self.pred_columns[0]}..{self.pred_columns[-1]}"

    def columns_to_read(self) -> list[str]:
        file_slices = [name for name in self.slice_by if name not in self.hive_slices]
        file_ids = [name for name in self.id_cols if name not in self.hive_ids]
        extra = [name for name in (self.weight_col, *file_ids) if name]
        return list(dict.fromkeys([*self.pred_columns, self.label_col, *extra, *file_slices]))

    @property
    def batch_rows(self) -> int:
        return max(1024, self.batch_logits // self.n_classes)

    @property
    def column_buffer(self) -> int:
        """Bytes read at a time per column: READ_BUFFER_BYTES shared by the columns read."""
        low, high = COLUMN_BUFFER_BYTES
        return min(high, max(low, READ_BUFFER_BYTES // len(self.columns_to_read())))

def open_parquet(url: str, storage_options: dict[str, Any], buffer_size: int = COLUMN_BUFFER_BYTES[0]) -> pq.ParquetFile:
    """Open a shard to read `buffer_size` bytes at a time per column (see
    ``ReadSpec.column_buffer``); an unreadable or corrupt file is a DataError naming it.
    Pages that carry a CRC are verified as they are read (see flows.integrity)."""
    fs, path = filesystem(url, storage_options)
    options = dict(pre_buffer=False, buffer_size=buffer_size, page_checksum_verification=True)
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


def _float_type(arrow_type: pa.DataType) -> bool:
    return pa.types.is_floating(arrow_type)


def _list_value_type(arrow_type: pa.DataType) -> pa.DataType | None:
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return arrow_type.value_type
    return None


def _number_type(arrow_type: pa.DataType) -> bool:
    """Labels may be integers, or floats holding whole numbers (see ``_integral_labels``)."""
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def _prediction_hint(config: EvalConfig, schema: pa.Schema, wide_columns: Callable[[str], tuple[str, ...]]) -> str:
    """What to pass when the prediction column is not found: fits what was given and
    what the schema holds."""
    other_kinds = [other for other in DEFAULT_PRED_COL if other != config.kind and (
        DEFAULT_PRED_COL[other] in schema.names or BINARY_COL[other] in schema.names
        or len(wide_columns(WIDE_PREFIX[other])) >= 2)]
    if other_kinds:
        return f"the dump looks like --kind {other_kinds[0]}: pass it, or name the prediction column with --pred-col."
    lists = sorted(f.name for f in schema if (_list_value_type(f.type) is not None and _float_type(_list_value_type(f.type))))
    floats = sorted(f.name for f in schema if _float_type(f.type) and f.name != config.label_col)
    if lists:
        hint = f"name the prediction column with --pred-col {lists[0]} (list columns found: {lists})"
    elif floats:
        hint = (f"name the prediction column with --pred-col: a binary model's float column (float columns found: "
                f"{floats}), or the prefix of wide columns such as logit_")
    else:
        hint = ("name the prediction column with --pred-col (a list column, a float column, or a wide-column prefix "
                "such as logit_); this file has no list or float column")
    if "kind" not in config.model_fields_set:
        hint += ", and say what its numbers are with --kind logits, probs or log_probs (default logits)"
    return hint + "."


def _label_hint(config: EvalConfig, schema: pa.Schema, pred_columns: tuple[str, ...]) -> str:
    """Name the true-class column with --label-col, suggesting the number columns that
    could be it (string labels need a class list, so a lone number column comes first)."""
    taken = {*pred_columns, config.id_col, config.weight_col, *config.slice_by}
    numbers = sorted(f.name for f in schema if f.name not in taken and _number_type(f.type))
    if len(numbers) == 1:
        return f"Name the true-class column with --label-col {numbers[0]} (label_col: in a config)."
    listed = f" (number columns: {numbers})" if numbers else ""
    return f"Name the true-class column with --label-col NAME (label_col: in a config){listed}."


def resolve_spec(config: EvalConfig, first: InputFile) -> ReadSpec:
    """Decide the layout from the config and the first shard's schema."""
    parquet = open_parquet(first.url, config.storage_options)
    return resolve_spec_from_schema(
        config, parquet.schema_arrow, first.url, first.hive, lambda column: _first_row_length(parquet, column, first.url)
    )


def resolve_spec_from_schema(
    config: EvalConfig, schema: pa.Schema, where: str, hive: dict[str, str], first_row_length: Callable[[str], int]
) -> ReadSpec:
    """Decide the layout from the config and an Arrow schema.

    Parameters
    ----------
    config
        The evaluation settings.
    schema
        The schema of the first shard, or of an in-memory table.
    where
        What the schema belongs to, for messages: a shard's URL, or ``<pandas.DataFrame>``.
    hive
        Hive folder keys of the first shard (empty for in-memory data).
    first_row_length
        Values per row of a variable-length list column, read from the data; called
        only when neither the type nor the config gives the class count.
    """
    names = set(schema.names)
    kind = config.kind
    requested = config.pred_col or DEFAULT_PRED_COL[kind]

    def wide_columns(prefix: str) -> tuple[str, ...]:
        count = 0
        while f"{prefix}{count}" in names:
            count += 1
        return tuple(f"{prefix}{i}" for i in range(count))

    if requested in names:
        field_type = schema.field(requested).type
        if _list_value_type(field_type) is not None:
            layout, pred_columns = "list", (requested,)
        elif _float_type(field_type):
            layout, pred_columns = "binary", (requested,)
        else:
            raise DataError(
                f"{where}: column '{requested}' is {field_type}, expected a list of floats "
                "(multi-class) or a float column (binary)"
            )
    elif config.pred_col is None and len(wide_columns(WIDE_PREFIX[kind])) >= 2:
        layout, pred_columns = "wide", wide_columns(WIDE_PREFIX[kind])
    elif config.pred_col is None and BINARY_COL[kind] in names:
        layout, pred_columns = "binary", (BINARY_COL[kind],)
    elif config.pred_col is not None and len(wide_columns(requested)) >= 2:
        layout, pred_columns = "wide", wide_columns(requested)
    else:
        raise DataError(
            f"{where}: no prediction column '{requested}' (kind {kind}); columns are {sorted(names)}. "
            f"To fix it, {_prediction_hint(config, schema, wide_columns)}"
        )

    class_names = tuple(config.classes) if config.classes else None
    metadata = schema.metadata or {}
    if class_names is None and CLASSES_KEY in metadata:
        class_names = tuple(str(name) for name in json.loads(metadata[CLASSES_KEY]))

    if layout == "binary":
        n_classes = 2
    elif layout == "wide":
        n_classes = len(pred_columns)
    elif pa.types.is_fixed_size_list(schema.field(requested).type):
        n_classes = schema.field(requested).type.list_size
    elif config.n_classes or class_names:
        n_classes = config.n_classes or len(class_names)
    else:
        n_classes = first_row_length(requested)
    for declared, source in ((config.n_classes, "n_classes"), (len(class_names) if class_names else None, "classes")):
        if declared is not None and declared != n_classes:
            raise DataError(
                f"{where}: column '{pred_columns[0]}' has {n_classes} values per row, but the config's "
                f"{source} says {declared}"
            )

    if config.label_col not in names:
        raise DataError(f"{where}: no label column '{config.label_col}'; columns are {sorted(names)}. "
                        f"{_label_hint(config, schema, pred_columns)}")
    label_type = schema.field(config.label_col).type
    if pa.types.is_dictionary(label_type):
        label_type = label_type.value_type
    label_is_string = pa.types.is_string(label_type) or pa.types.is_large_string(label_type)
    if label_is_string and class_names is None:
        raise DataError(
            f"{where}: labels in '{config.label_col}' are strings but no class list is known: "
            f"give --classes, or store it as JSON under the schema metadata key {CLASSES_KEY.decode()}"
        )
    if not (label_is_string or _number_type(label_type)):
        raise DataError(f"{where}: label column '{config.label_col}' is {label_type}, expected integers (floats "
                        "holding whole numbers, NaN for none, are read as integers) or strings")

    if config.weight_col and config.weight_col not in names:
        raise DataError(f"{where}: no weight column '{config.weight_col}'; columns are {sorted(names)}")
    # Buckets by the key when every key column is there (a column, or a hive folder
    # key), else by content: decided once, from this schema, for every shard.
    bucket_cols = config.bucket_columns() if config.n_buckets > 1 else ()
    if not all(name in names or name in hive for name in bucket_cols):
        bucket_cols = ()
    hive_slices, slice_types = [], []
    for name in config.slice_by:
        if name in names:
            slice_types.append(schema.field(name).type)
        elif name in hive:
            hive_slices.append(name)
            slice_types.append(pa.string())
        else:
            raise DataError(
                f"{where}: no slice column '{name}' (neither a column nor a hive folder key "
                f"{sorted(hive)}); columns are {sorted(names)}"
            )
    return ReadSpec(
        kind=kind,
        layout=layout,
        pred_columns=pred_columns,
        n_classes=n_classes,
        class_names=class_names,
        label_col=config.label_col,
        label_is_string=label_is_string,
        weight_col=config.weight_col,
        slice_by=tuple(config.slice_by),
        slice_types=tuple(slice_types),
        hive_slices=tuple(hive_slices),
        ignore_index=config.ignore_index,
        on_bad_shard=config.on_bad_shard,
        on_nonfinite=config.on_nonfinite,
        n_bins=config.n_bins,
        batch_logits=config.batch_logits,
        eps=config.eps,
        storage_options=dict(config.storage_options),
        reference_file=where,
        id_cols=tuple(bucket_cols),
        hive_ids=tuple(name for name in bucket_cols if name not in names),
        n_buckets=config.n_buckets,
        confusion=n_classes <= config.max_confusion_classes,
        n_thresholds=config.auc_thresholds if n_classes <= config.max_auc_classes else 0,
        exact_auc_max_values=config.exact_auc_max_values,
        prob_tolerance=config.prob_tolerance or SUM_TOLERANCE,
        renormalize=config.renormalize,
    )


def resolve_table_spec(config: EvalConfig, table: pa.Table, where: str) -> ReadSpec:
    """Decide the layout from the config and an in-memory table (`where` names it)."""

    def first_row_length(column: str) -> int:
        lengths = pc.list_value_length(table.column(column)).drop_null()
        if len(lengths):
            return int(lengths[0].as_py())
        raise DataError(f"{where}: column '{column}' has no non-null rows to learn the class count from; set n_classes")

    try:
        return resolve_spec_from_schema(config, table.schema, where, {}, first_row_length)
    except DataError as error:
        requested = config.pred_col or DEFAULT_PRED_COL[config.kind]
        if requested in table.schema.names and pa.types.is_string(table.schema.field(requested).type):
            raise DataError(
                f"{error}. Dask turns object columns (an array per row) into strings: give the predictions an Arrow "
                "list dtype (table.to_pandas(types_mapper=pd.ArrowDtype)), or set dask.config "
                "'dataframe.convert-string': False"
            ) from None
        raise


def _first_row_length(parquet: pq.ParquetFile, column: str, url: str) -> int:
    try:
        for batch in parquet.iter_batches(batch_size=64, columns=[column]):
            lengths = pc.list_value_length(batch.column(0)).drop_null()
            if len(lengths):
                return int(lengths[0].as_py())
    except (OSError, pa.ArrowException) as error:
        raise read_failure(url, "the rows read to learn the class count", error) from None
    raise DataError(f"{url}: column '{column}' has no non-null rows to learn the class count from; set n_classes")


def check_schema(parquet: pq.ParquetFile, file: InputFile, spec: ReadSpec) -> None:
    """The shard has every needed column, of the same layout as the first shard."""
    check_arrow_schema(parquet.schema_arrow, file, spec)


def check_arrow_schema(schema: pa.Schema, file: InputFile, spec: ReadSpec) -> None:
    """`schema` (of a shard, or of an in-memory piece named by `file`) has every needed
    column, of the same layout as the first shard."""
    names = set(schema.names)
    for name in spec.columns_to_read():
        if name not in names:
            raise DataError(f"{file.url}: missing column '{name}' (present in {spec.reference_file})")
    for name in dict.fromkeys([*spec.hive_slices, *spec.hive_ids]):
        if name not in file.hive:
            raise DataError(f"{file.url}: no hive folder key '{name}' in its path (present for {spec.reference_file})")
    if spec.layout == "list":
        field_type = schema.field(spec.pred_columns[0]).type
        if _list_value_type(field_type) is None or not _float_type(_list_value_type(field_type)):
            raise DataError(f"{file.url}: column '{spec.pred_columns[0]}' is {field_type}, expected a list of floats")
        if pa.types.is_fixed_size_list(field_type) and field_type.list_size != spec.n_classes:
            raise DataError(
                f"{file.url}: column '{spec.pred_columns[0]}' has {field_type.list_size} values per row, "
                f"expected {spec.n_classes} (from {spec.reference_file})"
            )
    else:
        if spec.layout == "wide" and f"{spec.pred_columns[0][:-1]}{spec.n_classes}" in names:
            raise DataError(
                f"{file.url}: has a column '{spec.pred_columns[0][:-1]}{spec.n_classes}': more than the "
                f"{spec.n_classes} prediction columns of {spec.reference_file}"
            )
        for name in spec.pred_columns:
            if not _float_type(schema.field(name).type):
                raise DataError(f"{file.url}: column '{name}' is {schema.field(name).type}, expected float")


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


def iter_batches(parquet: pq.ParquetFile, file: InputFile, spec: ReadSpec, row_groups: list[int] | None) -> Iterator[Batch]:
    """The rows of `row_groups` (None: all) as Batches of `spec.batch_rows` rows.

    Memory is released after each batch: a consumer that holds no earlier batch
    when it asks for the next one (``map``, not a ``for`` loop variable) keeps one
    batch at a time.
    """
    metadata = parquet.metadata
    groups = list(range(metadata.num_row_groups)) if row_groups is None else row_groups
    group_start = np.concatenate([[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])])
    columns = spec.columns_to_read()
    for group in groups:
        first_row = int(group_start[group])
        try:
            batches = parquet.iter_batches(batch_size=spec.batch_rows, row_groups=[group], columns=columns)
            for record_batch in batches:
                batch = to_arrays(record_batch, first_row, file, spec)
                first_row += record_batch.num_rows
                del record_batch
                yield batch
                del batch
                release_unused_memory()
            del batches  # Arrow's reader still holds the group's last batch
            release_unused_memory()
        except (OSError, pa.ArrowException) as error:
            raise read_failure(file.url, f"row group {group}", error) from None


def table_batches(table: pa.Table, source: InputFile, spec: ReadSpec, first_row: int = 0) -> Iterator[Batch]:
    """The rows of an in-memory table as Batches of `spec.batch_rows` rows. `source`
    names it in messages, and `first_row` is the index of its first row there."""
    for record_batch in table.select(spec.columns_to_read()).to_batches(max_chunksize=spec.batch_rows):
        yield to_arrays(record_batch, first_row, source, spec)
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
    score = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    pred = np.empty((n, 2))
    if spec.kind == "logits":
        pred[:, 0], pred[:, 1] = 0.0, score
    elif spec.kind == "probs":
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
    if not _number_type(column.type):
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
        encoded = pc.dictionary_encode(batch.column(name), null_encoding="encode")
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        values = encoded.dictionary.to_pylist()
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        codes = codes * len(values) + indices if radix > 1 else indices
        radix *= len(values)
        per_column_values.append(values)
    if radix == 1:
        return np.zeros(n, dtype=np.int64), [tuple(values[0] for values in per_column_values)]
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
