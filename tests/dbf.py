"""Reading DBF files from the file format itself, for tests that need an independent route to shapefile data."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: (name, type letter, width, decimals) of one DBF field.
Field = tuple[str, str, int, int]


def dbf_records(path: Path) -> tuple[list[Field], Iterator[bytes]]:
    """The fields of a DBF and its raw records (deleted ones included, flag byte first)."""
    data = path.read_bytes()
    count, header_length, record_length = struct.unpack("<IHH", data[4:12])
    fields: list[Field] = []
    offset = 32
    while data[offset] != 0x0D:
        name = data[offset : offset + 11].split(b"\0")[0].decode("ascii")
        fields.append((name, chr(data[offset + 11]), data[offset + 16], data[offset + 17]))
        offset += 32
    records = (
        data[header_length + i * record_length : header_length + (i + 1) * record_length]
        for i in range(count)
    )
    return fields, records
