"""Shapefiles and XML documents checked for truncation before GDAL reads them: no silent partial output (processing.md §13).

GDAL reads a shapefile whose ``.dbf`` or ``.shp`` was cut short without an error: a ``.dbf`` cut in half gave 2
of 6 rows, a ``.shp`` cut to a third 114 of 347, and the run succeeded. The files' own headers say how long
they are (ESRI Shapefile Technical Description, 1998; dBase III header), so a few header reads tell:

* ``.shp``: the file length in its header (16-bit words) against the file's size;
* ``.shx``: its header length against its size, and its last record (offset + length) inside the ``.shp``;
* ``.dbf``: header length + record count × record length against the file's size;
* the ``.shx`` record count against the ``.dbf`` record count;
* no shape longer than ``OPENADDR_MAX_RECORD_BYTES`` (the ``.shx`` lengths, read 1 MiB at a time).

FileGDB tables (``.gdbtable``, version 3) must be as long as their headers say. GML (and other XML) documents must end with their root element's closing tag: GDAL reads one cut short as far as
it goes, silently.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from openaddr.readers.limits import TruncatedInputError

if TYPE_CHECKING:
    from pathlib import Path

_SHP_HEADER = 100
_FILE_CODE = 9994
_SHX_RECORD = 8
_DBF_HEADER = 32
#: ``.shx`` records read at a time.
_SHX_CHUNK = 1 << 17


def check_dataset(path: Path, label: str) -> None:
    """Check a shapefile (``.shp`` or a lone ``.dbf``) for truncation; other formats pass.

    :raises TruncatedInputError: naming the file and what disagrees
    """
    suffix = path.suffix.lower()
    if suffix == ".shp" and path.is_file():
        check_shapefile(path, label)
    elif suffix == ".dbf" and path.is_file():
        dbf_records(path, label)
    elif suffix in (".gml", ".xml", ".kml") and path.is_file():
        check_xml_end(path, label)
    elif suffix == ".gdb" and path.is_dir():
        check_filegdb(path, label)


#: The header of a FileGDB 10 table (``.gdbtable``, version 3): the file's own size is at bytes 24–32.
_GDBTABLE_HEADER = 40
_GDBTABLE_VERSION = 3


def check_filegdb(folder: Path, label: str) -> None:
    """Every version-3 ``.gdbtable`` of a FileGDB folder is as long as its header says (GDAL reads a table cut short
    as far as it goes: 1 of 6 rows). Other versions pass.

    :raises TruncatedInputError: naming the table
    """
    for table in sorted(folder.iterdir()):
        if table.suffix.lower() != ".gdbtable" or not table.is_file():
            continue
        size = table.stat().st_size
        with table.open("rb") as fh:
            header = fh.read(_GDBTABLE_HEADER)
        if len(header) < _GDBTABLE_HEADER:
            raise _truncated(label, table, f"only {size} bytes, not even a table header")
        if int.from_bytes(header[0:4], "little") != _GDBTABLE_VERSION:
            continue
        declared = int.from_bytes(header[24:32], "little")
        if size < declared:
            raise _truncated(label, table, f"its header says {declared} bytes, the file has {size}")


#: The root element's name: after the XML declaration, comments, processing instructions and a DOCTYPE.
_XML_ROOT = re.compile(rb"<(?!\?|!)([A-Za-z_][\w.:-]*)")
_XML_HEAD = 1 << 16
_XML_TAIL = 1 << 12


def check_xml_end(path: Path, label: str) -> None:
    """The XML document ends with its root element's closing tag (GDAL's GML driver reads a document cut short
    without an error, as far as it goes).

    Documents it cannot judge pass: UTF-16, a root not found in the first 64 KiB, a self-closing root, a comment or
    processing instruction after the root.

    :raises TruncatedInputError: the closing tag is missing
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(_XML_HEAD)
        fh.seek(max(0, size - _XML_TAIL))
        tail = fh.read().rstrip()
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\0" in head[:4]:
        return
    root = _XML_ROOT.search(head)
    if root is None or tail.endswith((b"-->", b"?>")):
        return
    name = root.group(1)
    opening = re.compile(rb"[^>]*>").match(head, root.end())
    if opening is not None and opening.group(0).endswith(b"/>"):
        return  # an empty document: <root/>
    if not re.search(rb"</\s*" + re.escape(name) + rb"\s*>$", tail):
        raise _truncated(
            label,
            path,
            f"it does not end with the closing tag of its root element <{name.decode(errors='replace')}>",
        )


def check_shapefile(shp: Path, label: str) -> None:
    """The ``.shp``, its ``.shx`` and ``.dbf`` (when present) are complete and agree on the record count.

    :raises TruncatedInputError: naming the file and what disagrees
    """
    shp_size = shp.stat().st_size
    declared = _declared_length(shp, label)
    if shp_size < declared:
        raise _truncated(label, shp, f"its header says {declared} bytes, the file has {shp_size}")
    shx = _companion(shp, ".shx")
    dbf = _companion(shp, ".dbf")
    shx_records = None
    if shx is not None:
        shx_size = shx.stat().st_size
        shx_declared = _declared_length(shx, label)
        if shx_size < shx_declared:
            raise _truncated(label, shx, f"its header says {shx_declared} bytes, the file has {shx_size}")
        shx_records = (shx_declared - _SHP_HEADER) // _SHX_RECORD
        _check_record_lengths(shx, shx_records, label)
        if shx_records > 0:
            with shx.open("rb") as fh:
                fh.seek(_SHP_HEADER + (shx_records - 1) * _SHX_RECORD)
                last = fh.read(_SHX_RECORD)
            offset = int.from_bytes(last[0:4], "big") * 2
            length = int.from_bytes(last[4:8], "big") * 2
            end = offset + 8 + length
            if end > shp_size:
                raise _truncated(
                    label,
                    shp,
                    f"record {shx_records} ends at byte {end} by {shx.name}, the file has {shp_size} bytes",
                )
    if dbf is not None:
        dbf_count = dbf_records(dbf, label)
        if shx_records is not None and dbf_count != shx_records:
            raise TruncatedInputError(
                f"{label}: {shx.name if shx else shp.name} has {shx_records} records and {dbf.name} "
                f"{dbf_count}: the shapefile's parts disagree (cut short?)"
            )


def _check_record_lengths(shx: Path, records: int, label: str) -> None:
    """Every shape is at most ``OPENADDR_MAX_RECORD_BYTES`` long (GDAL reads one whole shape at a time).

    :raises RecordTooLargeError: naming the record
    """
    from openaddr.readers.limits import RecordTooLargeError, current_limits

    limit = current_limits()[0]
    entries = np.dtype([("offset", ">i4"), ("length", ">i4")])
    with shx.open("rb") as fh:
        fh.seek(_SHP_HEADER)
        for first in range(0, records, _SHX_CHUNK):
            count = min(_SHX_CHUNK, records - first)
            chunk = np.frombuffer(fh.read(count * _SHX_RECORD), dtype=entries)
            lengths = chunk["length"].astype(np.int64) * 2
            if len(lengths) and int(lengths.max()) > limit:
                index = first + int(np.argmax(lengths > limit))
                raise RecordTooLargeError(
                    f"{label}: shape {index + 1} of {shx.with_suffix('.shp').name} is {int(lengths.max())} bytes, "
                    f"more than {limit} (OPENADDR_MAX_RECORD_BYTES)"
                )


def dbf_records(dbf: Path, label: str) -> int:
    """The record count of a complete ``.dbf``.

    :raises TruncatedInputError: the file is shorter than its header says
    """
    size = dbf.stat().st_size
    with dbf.open("rb") as fh:
        header = fh.read(_DBF_HEADER)
    if len(header) < _DBF_HEADER:
        raise _truncated(label, dbf, f"only {size} bytes, not even a dBase header")
    count = int.from_bytes(header[4:8], "little")
    header_length = int.from_bytes(header[8:10], "little")
    record_length = int.from_bytes(header[10:12], "little")
    expected = header_length + count * record_length
    if size < expected:
        raise _truncated(
            label,
            dbf,
            f"its header says {count} records of {record_length} bytes after {header_length} "
            f"({expected} bytes), the file has {size} ({max(size - header_length, 0) // max(record_length, 1)} "
            "whole records)",
        )
    return count


def _declared_length(path: Path, label: str) -> int:
    with path.open("rb") as fh:
        header = fh.read(_SHP_HEADER)
    if len(header) < _SHP_HEADER or int.from_bytes(header[0:4], "big") != _FILE_CODE:
        raise _truncated(label, path, "no complete shapefile header")
    return int.from_bytes(header[24:28], "big") * 2


def _companion(shp: Path, suffix: str) -> Path | None:
    """The companion GDAL would use: ``suffix`` in lower case, else upper case; or None."""
    for candidate in (shp.with_suffix(suffix), shp.with_suffix(suffix.upper())):
        if candidate.is_file():
            return candidate
    return None


def _truncated(label: str, path: Path, detail: str) -> TruncatedInputError:
    return TruncatedInputError(f"{label}: {path.name} is incomplete (cut short?): {detail}")
