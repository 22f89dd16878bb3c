"""Writing a dump's files: one atomic write per shard, stale shards cleared first,
and the deliberately truncated shard cut short."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from ..inputs.sources import PARQUET_SUFFIXES

MAX_ROW_GROUP = 1_000_000


def clear_existing(fs, base: str, root: str, overwrite: bool) -> None:
    """Delete the Parquet files already under `base`, or raise FileExistsError
    without `overwrite`: stale shards would otherwise join the dump."""
    existing = _existing_parquet(fs, base)
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {len(existing)} .parquet file(s), e.g. "
                              f"{existing[0]}; pass overwrite=True to delete them")
    for path in existing:
        fs.rm(path)


def write_shard(fs, path: str, table: pa.Table, *, row_group_rows: int | None, compression: str,
                dictionary_columns: list[str], truncate: bool = False) -> None:
    """Write `table` to `path` atomically, with page checksums; `truncate` cuts the file short."""
    group = int(row_group_rows or min(max(table.num_rows, 1), MAX_ROW_GROUP))
    options = dict(row_group_size=group, compression=compression, use_dictionary=dictionary_columns,
                   write_page_checksum=True)

    def write(f):
        if not truncate:
            pq.write_table(table, f, **options)
            return
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, **options)
        f.write(_truncated_bytes(buf.getvalue().to_pybytes()))

    folder = path.rpartition("/")[0]
    fs.makedirs(folder, exist_ok=True)
    _write_atomic(fs, path, write)


def _write_atomic(fs, path: str, write) -> None:
    """Call ``write(file)`` on a hidden temporary file next to ``path``, then rename it."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"  # leading dot: dataset readers skip it
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # the temporary file may never have been created
            pass
        raise


def _truncated_bytes(data: bytes) -> bytes:
    """A Parquet file cut short: at most half of it, and never its footer."""
    footer = int.from_bytes(data[-8:-4], "little") + 8  # metadata + length + b"PAR1"
    return data[: max(0, min(len(data) // 2, len(data) - footer))]


def _existing_parquet(fs, base: str) -> list[str]:
    if not fs.exists(base):
        return []
    return [p for p in fs.find(base)
            if p.endswith(PARQUET_SUFFIXES) and not p.rsplit("/", 1)[-1].startswith(".")]
