"""Parquet page checksums: does a file carry them, and what a failed one means.

A Parquet writer may store a CRC-32 of every page in the page's header (pyarrow:
``write_page_checksum=True``); :func:`flows.reader.open_parquet` asks pyarrow to
verify them on read. A page without a CRC is read unchecked: a bit flip in it cannot
be detected. Nor can one in the footer, which no checksum covers: row groups whose
row counts do not add up are caught here, a flipped column name or type by the
schema checks, a flipped statistic or key-value entry not at all.

pyarrow's metadata API does not say whether pages have a CRC, so the first page
header of each column chunk read is decoded here, at an offset decoded here from
the footer too: pyarrow's ``RowGroupMetaData.column(i)`` lets a C++ exception escape
on some corrupt footers (a flipped repetition type fails its size-statistics check),
which aborts the whole process, while reading the same file raises a clean OSError.

Both are Thrift structs in the compact protocol
(https://github.com/apache/parquet-format/blob/master/src/main/thrift/parquet.thrift);
the decoder below turns one into nested dicts keyed by field id.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import fsspec
import pyarrow.parquet as pq

from ..errors import DataError
from .sources import filesystem

# Compact-protocol type ids (the low nibble of a field header).
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)

# Field ids in parquet.thrift.
PAGE_CRC = 4  # PageHeader
FILE_ROW_GROUPS = 4  # FileMetaData
GROUP_COLUMNS = 1  # RowGroup
CHUNK_META_DATA = 3  # ColumnChunk
TOTAL_COMPRESSED_SIZE, DATA_PAGE_OFFSET, DICTIONARY_PAGE_OFFSET = 7, 9, 11  # ColumnMetaData

# Enough of a page header to see whether it has a crc: fields 1-3 and the next field's
# header take at most 3 × 6 + 1 bytes.
HEADER_READ_BYTES = 64

CRC_FAILURE = "CRC checksum verification failed"  # in pyarrow's OSError for a page whose CRC does not match


class _Compact:
    """A reader of Thrift compact-protocol values from `data`, starting at `pos`."""

    def __init__(self, data: bytes | memoryview, pos: int = 0):
        self.data, self.pos = memoryview(data), pos

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(f"Thrift struct runs past the {len(self.data)} bytes read")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def list_header(self) -> tuple[int, int]:
        """(size, element type) of a list or set."""
        header = self.byte()
        return (header >> 4 if header >> 4 != 0x0F else self.varint()), header & 0x0F

    def fields(self) -> Iterator[tuple[int, int]]:
        """(field id, type) of a struct's fields; the caller reads each value with
        `field_value` before asking for the next field."""
        last = 0
        while True:
            header = self.byte()
            kind = header & 0x0F
            if kind == _STOP:
                return
            last = last + (header >> 4) if header >> 4 else self.zigzag()
            yield last, kind

    def field_value(self, kind: int) -> Any:
        if kind in (_TRUE, _FALSE):  # a boolean field's value is its type
            return kind == _TRUE
        return self.value(kind)

    def struct(self) -> dict[int, Any]:
        return {field_id: self.field_value(kind) for field_id, kind in self.fields()}

    def value(self, kind: int) -> Any:
        if kind in (_TRUE, _FALSE):  # a boolean inside a list, set or map takes a byte
            return self.byte() == _TRUE
        if kind == _BYTE:
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if kind == _BINARY:
            return bytes(self.take(self.varint()))
        if kind in (_LIST, _SET):
            size, element = self.list_header()
            return [self.value(element) for _ in range(size)]
        if kind == _MAP:
            size = self.varint()
            types = self.byte() if size else 0
            return {self.value(types >> 4): self.value(types & 0x0F) for _ in range(size)}
        if kind == _STRUCT:
            return self.struct()
        raise ValueError(f"not a Thrift compact-protocol type: {kind}")


def header_has_crc(data: bytes | memoryview) -> bool:
    """Whether the page header at the start of `data` has its crc field. Needs only the
    bytes up to that field: writers emit fields in id order, so the first field with an
    id of 4 or more settles it."""
    reader = _Compact(data)
    for field_id, kind in reader.fields():
        if field_id >= PAGE_CRC:
            return field_id == PAGE_CRC and kind == _I32
        reader.field_value(kind)
    return False


def first_page_offset(column: dict[int, Any]) -> int:
    """Where a column chunk's first page (its dictionary page, if any) starts, from its
    decoded ColumnMetaData. An offset of 0 means "none" (byte 0 is the file's magic):
    some writers store it for a missing dictionary page, pyarrow for the data page of a
    chunk without rows."""
    return min(offset for offset in (column.get(DATA_PAGE_OFFSET), column.get(DICTIONARY_PAGE_OFFSET)) if offset)


# Ends the message of a file that cannot be read; `skipped_reason` drops it from the
# reason a skipped file is listed with.
SKIP_HINT = "; to leave out such files and list them in bad_shards.parquet, pass --on-bad-shard skip"


def skipped_reason(error: BaseException) -> str:
    """Why a file was left out with --on-bad-shard skip: its error, without SKIP_HINT."""
    return str(error).replace(SKIP_HINT, "")


def _corrupt(url: str, what: str) -> DataError:
    return DataError(f"{url}: {what}: the file is corrupt; re-write it from its source{SKIP_HINT}")


# What decoding bytes that are not what they should be raises (UnicodeDecodeError is a
# ValueError; garbage can nest structs deeper than Python recurses).
_UNDECODABLE = (ValueError, LookupError, TypeError, AttributeError, RecursionError)


def first_row_group_chunks(parquet: pq.ParquetFile, fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[dict[int, Any]]:
    """The ColumnMetaData of each leaf column in the first row group (empty without row
    groups), decoded from the file's footer (one ranged read of its tail) as far as that
    row group."""
    size = parquet.metadata.serialized_size
    tail = fs.cat_file(path, start=-(size + 8))
    if len(tail) != size + 8 or int.from_bytes(tail[-8:-4], "little") != size:
        raise DataError(f"{url}: the file changed while it was inspected (its footer length differs); run again")
    try:
        reader = _Compact(tail[:-8])
        for field_id, kind in reader.fields():
            if field_id == FILE_ROW_GROUPS and kind == _LIST:
                if reader.list_header()[0] == 0:
                    return []
                return [chunk[CHUNK_META_DATA] for chunk in reader.struct()[GROUP_COLUMNS]]
            reader.field_value(kind)
        return []
    except _UNDECODABLE as error:
        raise _corrupt(url, f"its footer cannot be decoded ({error!r})") from None


def inspect_integrity(parquet: pq.ParquetFile, url: str, columns: list[str], storage_options: dict[str, Any]) -> bool:
    """Check the footer's row counts and return whether the pages of `columns`
    (top-level names) carry CRCs.

    The row groups' row counts must add up to the file's: one flipped lower would
    otherwise make pyarrow read fewer rows without complaint.

    Only the first row group's pages are looked at for CRCs, one small ranged read per
    column chunk: writers turn checksums on for a whole file (pyarrow's
    ``write_page_checksum`` is a file-wide property), and a read per chunk of every row
    group would cost a round trip each on object stores. A file without row groups has
    no page to check and counts as checksummed.

    Raises
    ------
    DataError
        If the footer or a first page header is corrupt.
    """
    metadata = parquet.metadata
    group_rows = sum(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
    if group_rows != metadata.num_rows:
        raise _corrupt(url, f"its footer says {metadata.num_rows} rows but its row groups hold {group_rows}")
    fs, path = filesystem(url, storage_options)
    chunks = first_row_group_chunks(parquet, fs, path, url)
    if not chunks:
        return True
    try:
        paths = parquet.reader.column_paths
    except _UNDECODABLE as error:
        raise _corrupt(url, f"its column names cannot be decoded ({error!r})") from None
    if len(chunks) != len(paths):
        raise _corrupt(url, f"row group 0 has {len(chunks)} column chunks, the schema {len(paths)} columns")
    read = [i for i, leaf in enumerate(paths) if leaf[0] in columns]
    try:
        starts = [first_page_offset(chunks[i]) for i in read]
        ends = [start + min(HEADER_READ_BYTES, chunks[i][TOTAL_COMPRESSED_SIZE]) for start, i in zip(starts, read)]
    except _UNDECODABLE as error:
        raise _corrupt(url, f"row group 0: a column chunk's offsets cannot be decoded ({error!r})") from None
    # One batch of ranged reads: concurrent on object stores.
    heads = fs.cat_ranges([path] * len(read), starts, ends, on_error="raise")
    verified = True
    for i, start, head in zip(read, starts, heads):
        try:
            verified &= header_has_crc(head)
        except _UNDECODABLE as error:
            raise _corrupt(url, f"column '{'.'.join(paths[i])}', row group 0: the page header at byte {start} "
                                f"cannot be decoded ({error!r})") from None
    return verified


def read_error_message(url: str, where: str, error: BaseException) -> str:
    """One line for an error raised while reading `where` (e.g. "row group 3") of `url`."""
    if CRC_FAILURE in str(error):
        return f"{url}: page checksum mismatch in {where} ({error}): the file is corrupt; re-write it from its source{SKIP_HINT}"
    return f"{url}: cannot read {where} ({error}){SKIP_HINT}"
