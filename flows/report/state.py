"""A merged ``ClassStats`` as a Parquet table, to finalize again later (nightly gates).

One row per slice: the slice columns with their own types, then one ``large_list``
column per state array attribute (``xent_kernels.stats.STATE_ATTRIBUTES``: counts,
cell_sum, cell_comp, ...) holding that slice's part of the array, flattened in C
order. Every state array has the slice axis first, so the slice's row is the whole
of its state. A ``large_list`` column ``auc_rows`` holds the rows a slice kept for an
exact AUC (``ClassStats.auc_rows``, flattened; null for a binned slice). The schema
metadata key ``xent.state`` (JSON) holds the shape options (n_classes, n_bins,
has_reference, n_buckets, confusion, n_thresholds, exact_auc_max_values) and the slice
column names. Integers and float64 round-trip exactly (the compensation terms too),
so the loaded state finalizes to the very report it was written with. States of
format 1 (before exact AUC) load with every slice binned.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xent_kernels import ClassStats
from xent_kernels.statistics import STATE_ARRAYS, canonical_rows
from xent_kernels.stats import STATE_ATTRIBUTES

from ..errors import DataError
from ..inputs.sources import filesystem
from .tables import slice_key_columns

STATE_KEY = b"xent.state"
STATE_FORMAT = 2
READ_FORMATS = (1, 2)  # 1: no auc_rows column, no exact_auc_max_values option
STATE_TABLE = "state"  # written as state.parquet beside the report tables


def state_table(stats: ClassStats, slice_by: Sequence[str], slice_types: Sequence[pa.DataType],
                metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """`stats` as a table (one row per slice), with `metadata` added to its schema."""
    for array in STATE_ARRAYS:
        if array.axes[0] != "slice":  # a row per slice holds the whole state only then
            raise ValueError(f"state array {array.name} has axes {array.axes}: expected the slice axis first")
    n_slices = len(stats.slice_keys)
    columns = slice_key_columns(list(stats.slice_keys), tuple(slice_by), tuple(slice_types)) if slice_by else {}
    for name in STATE_ATTRIBUTES:
        array = getattr(stats, name)
        size = int(np.prod(array.shape[1:]))
        offsets = pa.array(np.arange(n_slices + 1, dtype=np.int64) * size, pa.int64())
        columns[name] = pa.LargeListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(array).reshape(-1)))
    # Sorted, so a stored state does not depend on how the rows were sharded.
    columns["auc_rows"] = pa.array([None if rows is None else canonical_rows(rows).reshape(-1) for rows in stats.auc_rows],
                                   pa.large_list(pa.float64()))
    options = {"n_classes": stats.n_classes, "slice_by": list(slice_by), "format": STATE_FORMAT, **stats.options()}
    return pa.table(columns).replace_schema_metadata({**(metadata or {}), STATE_KEY: json.dumps(options).encode()})


def state_from_table(table: pa.Table, where: str = "state table") -> ClassStats:
    """The ``ClassStats`` that :func:`state_table` wrote, exactly.

    Raises
    ------
    DataError
        The table is not a state xent wrote (no ``xent.state`` metadata, or arrays of
        the wrong size); `where` names it.
    """
    raw = (table.schema.metadata or {}).get(STATE_KEY)
    if raw is None:
        raise DataError(f"{where}: no {STATE_KEY.decode()} metadata; not a state written by xent")
    options = json.loads(raw)
    if options.pop("format") not in READ_FORMATS:
        raise DataError(f"{where}: state format {json.loads(raw)['format']}, this xent reads formats "
                        f"{', '.join(map(str, READ_FORMATS))}")
    options.setdefault("exact_auc_max_values", 0)  # format 1: every slice binned
    n_classes, slice_by = options.pop("n_classes"), options.pop("slice_by")
    rows = {name: table.column(name).to_pylist() for name in slice_by}
    keys = [tuple(rows[name][i] for name in slice_by) for i in range(table.num_rows)] if slice_by else \
        [()] * table.num_rows
    like = ClassStats.empty(n_classes, slice_keys=keys, **options)
    arrays = {}
    for name in STATE_ATTRIBUTES:
        shape = getattr(like, name).shape
        values = pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False)
        if values.size != int(np.prod(shape)):
            raise DataError(f"{where}: column {name} holds {values.size} values, expected {int(np.prod(shape))} "
                            f"for shape {shape}")
        arrays[name] = values.astype(getattr(like, name).dtype, copy=False).reshape(shape)
    auc_rows = like.auc_rows
    if "auc_rows" in table.column_names:
        width = n_classes + 2
        auc_rows = tuple(None if rows is None else np.asarray(rows, dtype=np.float64).reshape(-1, width)
                         for rows in table.column("auc_rows").to_pylist())
    return ClassStats(n_classes=like.n_classes, n_bins=like.n_bins, has_reference=like.has_reference,
                      slice_keys=like.slice_keys, **arrays, exact_auc_max_values=like.exact_auc_max_values,
                      auc_rows=auc_rows)


def read_state(folder: str, storage_options: dict[str, Any] | None = None) -> tuple[ClassStats, dict[bytes, bytes]]:
    """The state stored in `folder` (``state.parquet``) and its schema metadata."""
    url = f"{folder.rstrip('/')}/{STATE_TABLE}.parquet"
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    return state_from_table(table, url), dict(table.schema.metadata or {})
