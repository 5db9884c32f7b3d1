"""A Parquet file written in parts and stitched into one, so its writer's memory does not grow with its row groups.

Arrow's Parquet writer keeps the footer metadata of every row group it has written in C++ objects until the file is
closed: 15.2 KB a row group of a collection file (18 leaf columns, about 840 bytes each, whatever the encodings and
statistics), half a byte a row at 32,768 rows a group: 35 MiB over the 2 GB benchmark, a few hundred MiB for a
whole-world file. pyarrow exposes no way to drop it (nor Arrow's buffered row groups). :class:`PartedParquetWriter`
writes a file as parts of at most ``part_row_groups`` row groups, each a complete Parquet file written by
``pyarrow.parquet.ParquetWriter`` with the same schema and options; as each part is closed its data pages (the
bytes between its leading magic and its footer) are appended to the final file, and its row groups' metadata,
their file offsets shifted by where the pages now lie, to a file beside it. :meth:`PartedParquetWriter.close`
writes the final footer: the first part's file metadata (schema, key-value metadata such as ``geo`` and
``ARROW:schema``, creator, column orders) with the total row count and every row group, streamed from that file.
The result holds the same pages, row groups and statistics as one writer's file (a test reads both back equal,
with pyarrow and DuckDB).

The footer is Thrift's compact protocol (the Parquet format's ``FileMetaData``); :func:`read_struct` and
:func:`write_struct` read and write any compact-protocol struct generically, as ``[field id, type, value]`` lists,
so fields this module does not know pass through unchanged (a test writes pyarrow's footers back byte for byte).
Only offsets are changed: ``RowGroup.file_offset`` (5), ``ColumnChunk.file_offset`` (2), ``offset_index_offset``
(4) and ``column_index_offset`` (6), and ``ColumnMetaData``'s data, index and dictionary page offsets (9, 10, 11)
and ``bloom_filter_offset`` (14).
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import pyarrow as pa

MAGIC = b"PAR1"
#: Row groups of a part (its writer's metadata: about 1 MiB for a collection file).
PART_ROW_GROUPS = 64
#: Bytes copied at once from a part to the final file.
COPY_BYTES = 1 << 20

# Thrift compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)
# FileMetaData, RowGroup, ColumnChunk and ColumnMetaData field ids (parquet.thrift)
_NUM_ROWS, _ROW_GROUPS = 3, 4
_RG_COLUMNS, _RG_FILE_OFFSET = 1, 5
_CC_OFFSETS = (2, 4, 6)  # file_offset, offset_index_offset, column_index_offset
_CC_META_DATA = 3
# data_page_offset, index_page_offset, dictionary_page_offset, bloom_filter_offset
_CMD_OFFSETS = (9, 10, 11, 14)

Field = list[Any]  # [field id, type, value]


class ParquetFooterError(ValueError):
    """A part's footer that is not the compact Thrift this module reads."""


# --------------------------------------------------------------------------------------------------------------
# Thrift compact protocol


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_zigzag(n: int) -> bytes:
    return _encode_varint((n << 1) ^ (n >> 63))


def _read_value(data: bytes, i: int, kind: int) -> tuple[Any, int]:
    if kind in (_TRUE, _FALSE):
        return kind == _TRUE, i
    if kind == _BYTE:
        return struct.unpack_from("b", data, i)[0], i + 1
    if kind in (_I16, _I32, _I64):
        value, i = _varint(data, i)
        return _unzigzag(value), i
    if kind == _DOUBLE:
        return struct.unpack_from("<d", data, i)[0], i + 8
    if kind == _BINARY:
        size, i = _varint(data, i)
        return bytes(data[i : i + size]), i + size
    if kind in (_LIST, _SET):
        header = data[i]
        i += 1
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size, i = _varint(data, i)
        items = []
        for _ in range(size):
            if element in (_TRUE, _FALSE):  # a list's booleans are a byte each
                items.append(data[i] == _TRUE)
                i += 1
            else:
                item, i = _read_value(data, i, element)
                items.append(item)
        return (element, items), i
    if kind == _MAP:
        size, i = _varint(data, i)
        if not size:
            return (0, 0, []), i
        types = data[i]
        i += 1
        key_kind, value_kind = types >> 4, types & 0x0F
        pairs = []
        for _ in range(size):
            key, i = _read_value(data, i, key_kind)
            value, i = _read_value(data, i, value_kind)
            pairs.append((key, value))
        return (key_kind, value_kind, pairs), i
    if kind == _STRUCT:
        return read_struct(data, i)
    raise ParquetFooterError(f"unknown compact Thrift type {kind} at byte {i}")


def read_struct(data: bytes, i: int = 0) -> tuple[list[Field], int]:
    """A compact-protocol struct at ``data[i:]`` as ``[field id, type, value]`` lists, and the index after it."""
    fields: list[Field] = []
    last = 0
    while True:
        header = data[i]
        i += 1
        if header == 0:
            return fields, i
        kind, delta = header & 0x0F, header >> 4
        if delta:
            number = last + delta
        else:
            value, i = _varint(data, i)
            number = _unzigzag(value)
        value, i = _read_value(data, i, kind)
        fields.append([number, kind, value])
        last = number


def _write_value(out: bytearray, kind: int, value: Any) -> None:
    if kind in (_TRUE, _FALSE):
        return  # in the field header
    if kind == _BYTE:
        out += struct.pack("b", value)
    elif kind in (_I16, _I32, _I64):
        out += _encode_zigzag(value)
    elif kind == _DOUBLE:
        out += struct.pack("<d", value)
    elif kind == _BINARY:
        out += _encode_varint(len(value)) + value
    elif kind in (_LIST, _SET):
        element, items = value
        _write_list_header(out, element, len(items))
        for item in items:
            if element in (_TRUE, _FALSE):
                out.append(_TRUE if item else _FALSE)
            else:
                _write_value(out, element, item)
    elif kind == _MAP:
        key_kind, value_kind, pairs = value
        out += _encode_varint(len(pairs))
        if pairs:
            out.append((key_kind << 4) | value_kind)
            for key, item in pairs:
                _write_value(out, key_kind, key)
                _write_value(out, value_kind, item)
    elif kind == _STRUCT:
        write_struct(out, value)
    else:
        raise ParquetFooterError(f"unknown compact Thrift type {kind}")


def _write_list_header(out: bytearray, element: int, size: int) -> None:
    if size < 15:
        out.append((size << 4) | element)
    else:
        out.append(0xF0 | element)
        out += _encode_varint(size)


def _write_field_header(out: bytearray, last: int, number: int, kind: int) -> None:
    if 0 < number - last <= 15:
        out.append(((number - last) << 4) | kind)
    else:
        out.append(kind)
        out += _encode_zigzag(number)


def _field_kind(kind: int, value: Any) -> int:
    return (_TRUE if value else _FALSE) if kind in (_TRUE, _FALSE) else kind


def write_struct(out: bytearray, fields: list[Field]) -> None:
    """Append a struct read by :func:`read_struct` (changed or not) to ``out``."""
    last = 0
    for number, kind, value in fields:
        _write_field_header(out, last, number, _field_kind(kind, value))
        _write_value(out, kind, value)
        last = number
    out.append(0)


def _field(fields: list[Field], number: int) -> Field | None:
    return next((f for f in fields if f[0] == number), None)


def _shift(field: Field | None, delta: int) -> None:
    """Add ``delta`` to an offset that is set (a zero offset points at the leading magic: none; Arrow writes
    ``ColumnChunk.file_offset`` as zero)."""
    if field is not None and field[2] > 0:
        field[2] += delta


def _shift_row_group(row_group: list[Field], delta: int) -> None:
    """Add ``delta`` to every file offset of a row group's metadata."""
    columns = _field(row_group, _RG_COLUMNS)
    if columns is None:
        raise ParquetFooterError("a row group without columns")
    for chunk in columns[2][1]:
        for number in _CC_OFFSETS:
            _shift(_field(chunk, number), delta)
        if (meta := _field(chunk, _CC_META_DATA)) is not None:
            for number in _CMD_OFFSETS:
                _shift(_field(meta[2], number), delta)
    _shift(_field(row_group, _RG_FILE_OFFSET), delta)


def read_footer(path: Path) -> tuple[list[Field], int]:
    """A Parquet file's ``FileMetaData`` and where its footer starts.

    :raises ParquetFooterError: not a Parquet file with a plain (unencrypted) footer
    """
    with open(path, "rb") as source:
        source.seek(0, os.SEEK_END)
        size = source.tell()
        if size < 12:
            raise ParquetFooterError(f"{path.name}: {size} bytes is no Parquet file")
        source.seek(size - 8)
        tail = source.read(8)
        if tail[4:] != MAGIC:
            raise ParquetFooterError(f"{path.name}: no Parquet magic at the end (an encrypted footer?)")
        length = struct.unpack("<I", tail[:4])[0]
        start = size - 8 - length
        source.seek(start)
        footer = source.read(length)
    metadata, end = read_struct(footer)
    if end != length:
        raise ParquetFooterError(f"{path.name}: the footer is {length} bytes, its metadata {end}")
    return metadata, start


# --------------------------------------------------------------------------------------------------------------
# The writer


class PartedParquetWriter:
    """``pyarrow.parquet.ParquetWriter``'s ``write_table`` and ``close`` for one file, written as parts of at most
    ``part_row_groups`` row groups and stitched (module docstring). ``options`` go to every part's writer.

    Not thread-safe: one thread writes a file (the collections' writer lanes do)."""

    def __init__(
        self, path: Path, schema: pa.Schema, *, part_row_groups: int = PART_ROW_GROUPS, **options: Any
    ) -> None:
        if part_row_groups < 1:
            raise ValueError(f"part_row_groups must be 1 or more, not {part_row_groups}")
        self.path = path
        self.schema = schema
        self.part_row_groups = part_row_groups
        self.options = options
        self.is_open = True
        self._part_path = path.with_name(path.name + ".part")
        self._row_groups_path = path.with_name(path.name + ".row-groups")
        self._writer: Any = None  # the current part's ParquetWriter
        self._part_groups = 0
        self._out = open(path, "wb")  # noqa: SIM115 (closed by close() or discard())
        self._out.write(MAGIC)
        self._row_groups = open(self._row_groups_path, "wb")  # noqa: SIM115
        self._count = 0  # row groups so far
        self._rows = 0
        self._metadata: list[Field] | None = None  # the first part's FileMetaData

    def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
        """Write ``table`` as row groups of ``row_group_size`` rows (a part may end after it, never inside it)."""
        import pyarrow.parquet as pq

        if not self.is_open:
            raise ValueError(f"{self.path.name} is closed")
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._part_path, self.schema, **self.options)
            self._part_groups = 0
        self._writer.write_table(table, row_group_size)
        size = row_group_size or table.num_rows or 1
        self._part_groups += -(-table.num_rows // size)
        if self._part_groups >= self.part_row_groups:
            self._end_part()

    def _end_part(self) -> None:
        """Close the current part, append its pages to the file and its row groups, shifted, beside it."""
        self._writer.close()
        self._writer = None
        metadata, footer_start = read_footer(self._part_path)
        if self._metadata is None:
            self._metadata = metadata
        delta = self._out.tell() - len(MAGIC)  # the part's pages start after its magic, here after ours
        row_groups = _field(metadata, _ROW_GROUPS)
        rows = _field(metadata, _NUM_ROWS)
        if rows is None:
            raise ParquetFooterError(f"{self.path.name}: a part without a row count")
        for row_group in row_groups[2][1] if row_groups is not None else []:
            _shift_row_group(row_group, delta)
            encoded = bytearray()
            write_struct(encoded, row_group)
            self._row_groups.write(encoded)
            self._count += 1
        if row_groups is not None:
            row_groups[2] = (_STRUCT, [])  # kept on disk only
        self._rows += rows[2]
        with open(self._part_path, "rb") as part:
            part.seek(len(MAGIC))
            left = footer_start - len(MAGIC)
            while left:
                chunk = part.read(min(COPY_BYTES, left))
                if not chunk:
                    raise ParquetFooterError(f"{self.path.name}: a part ended early")
                self._out.write(chunk)
                left -= len(chunk)
        self._part_path.unlink()

    def close(self) -> None:
        """Write the last part and the footer (a file without rows gets an empty part's metadata); a second call
        does nothing."""
        import pyarrow.parquet as pq

        if not self.is_open:
            return
        try:
            if self._writer is None and self._metadata is None:
                self._writer = pq.ParquetWriter(self._part_path, self.schema, **self.options)
            if self._writer is not None:
                self._end_part()
            assert self._metadata is not None
            self._row_groups.close()
            footer_start = self._out.tell()
            self._write_footer(self._metadata)
            length = self._out.tell() - footer_start
            self._out.write(struct.pack("<I", length) + MAGIC)
            self._out.close()
        except BaseException:
            self.discard()
            raise
        finally:
            self.is_open = False
            with contextlib.suppress(FileNotFoundError):
                self._row_groups_path.unlink()

    def _write_footer(self, metadata: list[Field]) -> None:
        """The first part's FileMetaData with the total row count and all row groups (streamed from the file
        beside)."""
        out = bytearray()
        last = 0
        for number, kind, value in sorted(metadata, key=lambda f: f[0]):
            if number == _ROW_GROUPS:
                _write_field_header(out, last, number, _LIST)
                _write_list_header(out, _STRUCT, self._count)
                self._out.write(out)
                out = bytearray()
                with open(self._row_groups_path, "rb") as row_groups:
                    while chunk := row_groups.read(COPY_BYTES):
                        self._out.write(chunk)
            else:
                _write_field_header(out, last, number, _field_kind(kind, value))
                _write_value(out, kind, self._rows if number == _NUM_ROWS else value)
            last = number
        out.append(0)
        self._out.write(out)

    def discard(self) -> None:
        """Close and remove everything written (the file, the part, the row groups beside it)."""
        self.is_open = False
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        for handle in (self._out, self._row_groups):
            with contextlib.suppress(Exception):
                handle.close()
        for path in (self.path, self._part_path, self._row_groups_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


__all__ = [
    "PART_ROW_GROUPS",
    "ParquetFooterError",
    "PartedParquetWriter",
    "read_footer",
    "read_struct",
    "write_struct",
]
