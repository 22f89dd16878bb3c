"""In-memory inputs: a pyarrow Table, a pandas DataFrame, or the partitions of a Dask
DataFrame, read through the same ``to_arrays`` as Parquet shards.

Such a source has no URL: messages name it ``<pandas.DataFrame>``, ``<pyarrow.Table>``
or ``<dask partition 3>``, and it stands where a shard would as an ``InputFile`` of
that name (size 0, no version, no hive keys).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from ..errors import DataError
from ..metadata import CLASSES_KEY
from .sources import InputFile

ARROW_LABEL = "<pyarrow.Table>"
PANDAS_LABEL = "<pandas.DataFrame>"
DASK_LABEL = "<dask.DataFrame>"


def partition_label(index: int) -> str:
    return f"<dask partition {index}>"


def memory_source(label: str) -> InputFile:
    """The stand-in for a shard that names an in-memory source in messages."""
    return InputFile(url=label, size=0, version="")


def is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and type(data).__name__ == "DataFrame"


def is_dask_dataframe(data: Any) -> bool:
    return type(data).__module__.startswith("dask") and type(data).__name__ == "DataFrame"


def is_in_memory(data: Any) -> bool:
    """`data` is a source read in memory: a pyarrow Table or RecordBatch, a pandas or a Dask DataFrame."""
    return isinstance(data, (pa.Table, pa.RecordBatch)) or is_pandas(data) or is_dask_dataframe(data)


def memory_label(data: Any) -> str:
    """The name of in-memory `data` in messages and fingerprints."""
    if is_dask_dataframe(data):
        return DASK_LABEL
    return PANDAS_LABEL if is_pandas(data) else ARROW_LABEL


def as_arrow(data: Any, label: str = PANDAS_LABEL) -> pa.Table:
    """`data` (a pyarrow Table or RecordBatch, or a pandas DataFrame) as a pyarrow Table;
    a DataFrame Arrow cannot convert (a column of mixed types) is a DataError naming `label`.

    pandas' text columns arrive as large_string; they are cast to string, so that
    slice columns have the types they have when the same rows are read from Parquet.
    A pandas DataFrame's ``attrs["xent.classes"]`` (a list of names) becomes the
    schema metadata the class names are read from, as in a shard.
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if not is_pandas(data):
        raise TypeError(f"expected a pyarrow Table or a pandas DataFrame, got {type(data).__name__}")
    try:
        table = pa.Table.from_pandas(data, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as error:
        raise DataError(f"{label}: cannot convert to Arrow ({error}); give each column one type") from None
    fields = [field.with_type(_small_strings(field.type)) for field in table.schema]
    metadata = {}
    classes = data.attrs.get(CLASSES_KEY.decode())
    if classes is not None:
        metadata[CLASSES_KEY] = json.dumps([str(name) for name in classes]).encode()
    schema = pa.schema(fields, metadata=metadata or None)
    return table.cast(schema) if schema != table.schema else table.replace_schema_metadata(schema.metadata)


def _small_strings(arrow_type: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(arrow_type):
        return pa.string()
    if pa.types.is_dictionary(arrow_type) and pa.types.is_large_string(arrow_type.value_type):
        return pa.dictionary(arrow_type.index_type, pa.string(), arrow_type.ordered)
    return arrow_type


def memory_fingerprint(label: str, schema: pa.Schema, rows: int, nbytes: int, parts: int = 1) -> dict[str, Any]:
    """Identity of an in-memory input, as far as it is cheap to know: its kind, row and
    column counts and a digest of its schema. The values are not hashed (that would
    cost a pass over the data): two frames of the same shape and schema share a digest."""
    schema_digest = hashlib.sha256(schema.remove_metadata().serialize().to_pybytes()).hexdigest()
    identity = {"source": label, "rows": rows, "columns": len(schema), "schema_sha256": schema_digest, "parts": parts}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, **identity, "files": [], "n_files": 0, "bytes": nbytes}
