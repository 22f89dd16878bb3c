"""A generated dump read back into plain numpy arrays, without the evaluation engine,
so tests can compare the engine's report against what the files hold.

Nothing here imports xent_kernels or flows' reader.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.generate import GeneratedDump


def _column_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Numeric columns as numeric arrays; strings and others as object arrays."""
    return column.to_numpy(zero_copy_only=False)


def _read_pred(table: pa.Table, dump: GeneratedDump) -> np.ndarray:
    c = dump.classes
    if dump.layout == "binary":
        x = table.column(dump.pred_column).to_numpy().astype(np.float64)
        if dump.kind == "logits":  # softmax([0, l]) == [1 - sigmoid(l), sigmoid(l)]
            return np.column_stack([np.zeros_like(x), x])
        return np.column_stack([1.0 - x, x])
    if dump.layout == "wide":
        if table.num_rows == 0:
            return np.empty((0, c))
        return np.column_stack([table.column(name).to_numpy() for name in dump.pred_columns]).astype(np.float64)
    column = table.column(dump.pred_column).combine_chunks()
    if dump.layout == "list" and len(column) and not pc.all(pc.equal(pc.list_value_length(column), c)).as_py():
        raise ValueError(f"{dump.pred_column}: not every row holds {c} values")
    return column.flatten().to_numpy().astype(np.float64).reshape(-1, c)


def _read_label(table: pa.Table, dump: GeneratedDump) -> np.ndarray:
    column = table.column(dump.label_column)
    if dump.class_names is not None:
        column = pc.index_in(column, value_set=pa.array(dump.class_names))
    return column.fill_null(-1).to_numpy().astype(np.int64)


def load_arrays(dump: GeneratedDump, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read the good shards of a dump back into numpy, without the evaluation engine.

    Parameters
    ----------
    dump : GeneratedDump
        What ``generate_dump`` returned.
    storage_options : dict, optional
        Passed to fsspec for the dump's files.

    Returns
    -------
    dict of str to numpy.ndarray
        Rows of all good shards in file order: ``pred`` (n, C) float64 (for the binary
        layout ``[0, logit]`` or ``[1 - p, p]``), ``label`` (n,) int64 with -1 for
        null, ``id`` (n,) int64, ``weight`` (n,) float64 if present, and one array per
        slice and hive column (strings as object arrays).
    """
    parts: dict[str, list[np.ndarray]] = {"pred": [], "label": [], "id": []}
    extra = ([dump.weight_column] if dump.weight_column else []) + dump.slice_columns
    for name in extra + dump.hive_columns:
        parts[name] = []
    for path in dump.good_files:
        fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
        with fs.open(fs_path, "rb") as f:
            table = pq.read_table(f)
        parts["pred"].append(_read_pred(table, dump))
        parts["label"].append(_read_label(table, dump))
        parts["id"].append(table.column("id").to_numpy())
        for name in extra:
            parts[name].append(_column_numpy(table.column(name)))
        for name in dump.hive_columns:
            value = dump.partitions[path][name]
            parts[name].append(np.full(table.num_rows, value, dtype=object if isinstance(value, str) else None))
    out: dict[str, np.ndarray] = {}
    for name, chunks in parts.items():
        if chunks:
            out[name] = np.concatenate(chunks)
        elif name == "pred":
            out[name] = np.empty((0, dump.classes))
        else:
            out[name] = np.empty(0, dtype=np.int64 if name in ("label", "id") else np.float64)
    return out
