"""What to read from every shard: the `ReadSpec`, resolved once from the config and the
first shard's schema (or an in-memory table's), and each shard's schema checked against it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xent_kernels import SUM_TOLERANCE

from ..config import BINARY_COL, DEFAULT_PRED_COL, WIDE_PREFIX, EvalConfig
from ..errors import DataError
from ..metadata import CLASSES_KEY
from .sources import InputFile


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

    def names(self) -> list[str]:
        """The class names, the class indices as text where the dump has none."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(self.n_classes)]

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

    def rows_per_batch(self, rows: int, tokens: int | None) -> int:
        """Rows read at a time (a token dump's spec sizes its by the tokens they hold)."""
        return self.batch_rows

    def tokens_in(self, row_group: pq.RowGroupMetaData) -> int | None:
        return None

    @property
    def column_buffer(self) -> int:
        """Bytes read at a time per column: READ_BUFFER_BYTES shared by the columns read."""
        low, high = COLUMN_BUFFER_BYTES
        return min(high, max(low, READ_BUFFER_BYTES // len(self.columns_to_read())))


def _float_type(arrow_type: pa.DataType) -> bool:
    return pa.types.is_floating(arrow_type)


def _list_value_type(arrow_type: pa.DataType) -> pa.DataType | None:
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return arrow_type.value_type
    return None


def number_type(arrow_type: pa.DataType) -> bool:
    """Labels may be integers, or floats holding whole numbers (see ``reader._integral_labels``)."""
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
    numbers = sorted(f.name for f in schema if f.name not in taken and number_type(f.type))
    if len(numbers) == 1:
        return f"Name the true-class column with --label-col {numbers[0]} (label_col: in a config)."
    listed = f" (number columns: {numbers})" if numbers else ""
    return f"Name the true-class column with --label-col NAME (label_col: in a config){listed}."


def resolve_spec_from_schema(
    config: EvalConfig, schema: pa.Schema, where: str, hive: dict[str, str], first_row_length: Callable[[str], int]
) -> ReadSpec:
    """Decide the layout from the config and an Arrow schema, in five steps: the
    prediction columns, the class names, the class count, the label type, then the
    weight, key and slice columns.

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
    layout, pred_columns = prediction_columns(config, schema, where)
    class_names = known_class_names(config, schema)
    n_classes = class_count(config, schema, where, layout, pred_columns, class_names, first_row_length)
    label_is_string = label_is_text(config, schema, where, pred_columns, class_names)
    bucket_cols, hive_slices, slice_types = row_columns(config, schema, where, hive)
    return ReadSpec(
        kind=config.kind,
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


def _wide_columns(names: set[str], prefix: str) -> tuple[str, ...]:
    """prefix0, prefix1, ... as far as they go without a gap."""
    count = 0
    while f"{prefix}{count}" in names:
        count += 1
    return tuple(f"{prefix}{i}" for i in range(count))


def prediction_columns(config: EvalConfig, schema: pa.Schema, where: str) -> tuple[str, tuple[str, ...]]:
    """Step 1: the layout ("list", "wide" or "binary") and the prediction column(s)."""
    names = set(schema.names)
    kind = config.kind
    requested = config.pred_col or DEFAULT_PRED_COL[kind]
    if requested in names:
        field_type = schema.field(requested).type
        if _list_value_type(field_type) is not None:
            return "list", (requested,)
        if _float_type(field_type):
            return "binary", (requested,)
        raise DataError(
            f"{where}: column '{requested}' is {field_type}, expected a list of floats "
            "(multi-class) or a float column (binary)"
        )
    if config.pred_col is None and len(_wide_columns(names, WIDE_PREFIX[kind])) >= 2:
        return "wide", _wide_columns(names, WIDE_PREFIX[kind])
    if config.pred_col is None and BINARY_COL[kind] in names:
        return "binary", (BINARY_COL[kind],)
    if config.pred_col is not None and len(_wide_columns(names, requested)) >= 2:
        return "wide", _wide_columns(names, requested)
    raise DataError(
        f"{where}: no prediction column '{requested}' (kind {kind}); columns are {sorted(names)}. "
        f"To fix it, {_prediction_hint(config, schema, lambda prefix: _wide_columns(names, prefix))}"
    )


def known_class_names(config: EvalConfig, schema: pa.Schema) -> tuple[str, ...] | None:
    """Step 2: the class names, from the config, else from the schema's metadata."""
    if config.classes:
        return tuple(config.classes)
    metadata = schema.metadata or {}
    if CLASSES_KEY in metadata:
        return tuple(str(name) for name in json.loads(metadata[CLASSES_KEY]))
    return None


def class_count(config: EvalConfig, schema: pa.Schema, where: str, layout: str, pred_columns: tuple[str, ...],
                class_names: tuple[str, ...] | None, first_row_length: Callable[[str], int]) -> int:
    """Step 3: the class count, from the layout, the list type, the config or the first
    row; a DataError when the config declares another."""
    if layout == "binary":
        n_classes = 2
    elif layout == "wide":
        n_classes = len(pred_columns)
    elif pa.types.is_fixed_size_list(schema.field(pred_columns[0]).type):
        n_classes = schema.field(pred_columns[0]).type.list_size
    elif config.n_classes or class_names:
        n_classes = config.n_classes or len(class_names)
    else:
        n_classes = first_row_length(pred_columns[0])
    for declared, source in ((config.n_classes, "n_classes"), (len(class_names) if class_names else None, "classes")):
        if declared is not None and declared != n_classes:
            raise DataError(
                f"{where}: column '{pred_columns[0]}' has {n_classes} values per row, but the config's "
                f"{source} says {declared}"
            )
    return n_classes


def label_is_text(config: EvalConfig, schema: pa.Schema, where: str, pred_columns: tuple[str, ...],
                  class_names: tuple[str, ...] | None) -> bool:
    """Step 4: whether the labels are strings (then a class list must be known); a
    DataError when the label column is missing or neither numbers nor strings."""
    if config.label_col not in schema.names:
        raise DataError(f"{where}: no label column '{config.label_col}'; columns are {sorted(schema.names)}. "
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
    if not (label_is_string or number_type(label_type)):
        raise DataError(f"{where}: label column '{config.label_col}' is {label_type}, expected integers (floats "
                        "holding whole numbers, NaN for none, are read as integers) or strings")
    return label_is_string


def row_columns(config: EvalConfig, schema: pa.Schema, where: str, hive: dict[str, str]
                ) -> tuple[tuple[str, ...], list[str], list[pa.DataType]]:
    """Step 5: the weight column checked; the key columns that pick jackknife buckets;
    the slices that come from hive folders, and every slice's type."""
    names = set(schema.names)
    if config.weight_col and config.weight_col not in names:
        raise DataError(f"{where}: no weight column '{config.weight_col}'; columns are {sorted(names)}")
    # Buckets by the key when every key column is there (a column, or a hive folder
    # key), else by content: decided once, from this schema, for every shard.
    bucket_cols = config.bucket_columns() if config.n_buckets > 1 else ()
    if not all(name in names or name in hive for name in bucket_cols):
        bucket_cols = ()
    hive_slices, slice_types = slice_columns(config.slice_by, schema, where, hive)
    return tuple(bucket_cols), hive_slices, slice_types


def slice_columns(slice_by: list[str], schema: pa.Schema, where: str, hive: dict[str, str]
                  ) -> tuple[list[str], list[pa.DataType]]:
    """The slices that come from hive folders, and every slice's type (a hive key's is
    string); a DataError for a slice that is neither a column nor a hive key."""
    hive_slices, slice_types = [], []
    for name in slice_by:
        if name in schema.names:
            slice_types.append(schema.field(name).type)
        elif name in hive:
            hive_slices.append(name)
            slice_types.append(pa.string())
        else:
            raise DataError(
                f"{where}: no slice column '{name}' (neither a column nor a hive folder key "
                f"{sorted(hive)}); columns are {sorted(schema.names)}"
            )
    return hive_slices, slice_types


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


def text_slices(spec: Any) -> list[str]:
    """The slice columns of text (a ReadSpec's or a TokenSpec's): read as dictionary
    arrays, a batch's slice codes are the dictionary's indices, with no hashing of text."""
    return [name for name, arrow_type in zip(spec.slice_by, spec.slice_types) if name not in spec.hive_slices
            and (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))]


def check_columns_present(schema: pa.Schema, file: InputFile, spec: Any) -> None:
    """Every column `spec` reads (a ReadSpec or a TokenSpec) is in `schema`, and every
    hive key it takes is in `file`'s path, as in the first shard."""
    for name in spec.columns_to_read():
        if name not in schema.names:
            raise DataError(f"{file.url}: missing column '{name}' (present in {spec.reference_file})")
    for name in dict.fromkeys([*spec.hive_slices, *spec.hive_ids]):
        if name not in file.hive:
            raise DataError(f"{file.url}: no hive folder key '{name}' in its path (present for {spec.reference_file})")


def check_arrow_schema(schema: pa.Schema, file: InputFile, spec: ReadSpec) -> None:
    """`schema` (of a shard, or of an in-memory piece named by `file`) has every needed
    column, of the same layout as the first shard."""
    check_columns_present(schema, file, spec)
    names = set(schema.names)
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
