"""Point shapefiles read without GDAL's whole-file ``.shx`` index: attributes from the ``.dbf``, points from the
``.shp`` records themselves.

When GDAL opens a shapefile it reads the whole ``.shx`` into memory: 8 bytes a record in every process that opens
the layer (80 MB at 10 million records; benchmarks/README.md), so a conform's memory would grow with its input
(processing.md §13). A 2D point shapefile without null shapes is an array of fixed-size records (ESRI Shapefile
Technical Description, 1998: a 100-byte header, then per record an 8-byte big-endian header and a 20-byte Point
— type 1, x, y as little-endian doubles), so record *i* is at byte ``100 + 28 i`` and needs no index. This module
checks that a file is exactly that, record by record, without GDAL ever opening it, and then GDAL reads only the
``.dbf`` (opened alone, through a link in a temporary folder) while the points of each batch are read from the
``.shp`` with one positioned read (not a memory map: mapped pages would count in the process's resident memory). Anything else — null shapes,
PointZ/M, multipoints, a record count that disagrees — is left to GDAL's normal reading.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pyogrio

from openaddr.readers.archives import link_file, temporary_folder

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

HEADER_BYTES = 100
FILE_CODE = 9994
POINT = 1
#: One Point record: record number and content length (16-bit words) big-endian, then type, x, y little-endian.
RECORD = np.dtype([("number", ">i4"), ("length", ">i4"), ("type", "<i4"), ("x", "<f8"), ("y", "<f8")])
#: Records checked at a time (keeps the check's memory flat).
CHECK_CHUNK = 1 << 18


class PointRecords:
    """The points of a checked 2D point shapefile, and a ``.dbf``-only path for its attributes.

    Use :meth:`open`; :meth:`close` removes the temporary folder.

    :param shp: the ``.shp`` file
    :param dbf: a path GDAL opens as the attribute table alone
    :param count: records
    :param info: the layer as :func:`pyogrio.read_info` would describe it (see :meth:`open`)
    """

    def __init__(self, shp: Path, dbf: Path, count: int, info: Mapping[str, Any]) -> None:
        self.shp = shp
        self.dbf = dbf
        self.count = count
        self.info = info

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Records ``start`` to ``stop`` (0-based, end excluded), read with ``os.pread`` (no shared file offset,
        so forked workers may read the same open file; here each read opens it)."""
        size = RECORD.itemsize
        with self.shp.open("rb") as stream:
            data = os.pread(stream.fileno(), (stop - start) * size, HEADER_BYTES + start * size)
        if len(data) != (stop - start) * size:
            raise OSError(f"{self.shp.name}: short read at record {start + len(data) // size}")
        return np.frombuffer(data, dtype=RECORD)

    @classmethod
    def for_layer(cls, path: Path, layer: object, *, check_records: bool = True) -> PointRecords | None:
        """:meth:`open` when ``path`` (lower-case extension, as GDAL opens it) is a shapefile and the conform's
        ``layer`` names its only layer (absent, 0 or the file's stem); else None."""
        if path.suffix != ".shp" or layer not in (None, 0, path.stem):
            return None
        return cls.open(path, check_records=check_records)

    @classmethod
    def open(cls, shp: Path, *, check_records: bool = True) -> PointRecords | None:
        """The records of ``shp`` if it is a 2D point shapefile without null shapes whose ``.dbf`` GDAL reads alone
        with the same record count; else None (read it with GDAL).

        :param check_records: check every record (needed to read points; the attributes alone only need the
            header and the record count to agree)

        Nothing here has GDAL open ``shp`` itself (that would load its ``.shx``): the layer's description in
        :attr:`info` (``fields``, ``features``, ``encoding``, ``crs``, ``geometry_type``, ``driver``) comes from
        the ``.dbf`` alone and from the ``.prj`` read by GDAL beside a header-only copy of the ``.shp``, so the
        encoding and the CRS are GDAL's own.
        """
        try:
            size = shp.stat().st_size
            count, remainder = divmod(size - HEADER_BYTES, RECORD.itemsize)
            if count <= 0 or remainder:
                return None
            with shp.open("rb") as stream:
                header = stream.read(HEADER_BYTES)
            if (
                int.from_bytes(header[0:4], "big") != FILE_CODE
                or int.from_bytes(header[24:28], "big") * 2 != size
                or int.from_bytes(header[32:36], "little") != POINT
            ):
                return None
            dbf = _sibling(shp, ".dbf")
            if dbf is None:
                return None
        except OSError:
            return None
        folder = temporary_folder("openaddr-dbf-")
        try:
            alone = folder / "attributes.dbf"
            link_file(dbf, alone)
            cpg = _sibling(shp, ".cpg")
            if cpg is not None:
                link_file(cpg, folder / "attributes.cpg")
            info = pyogrio.read_info(alone)
            if int(info.get("features") or 0) != count:
                raise ValueError("the .dbf alone reads differently")
            records = cls(shp, alone, count, _layer_info(info, header, shp, folder, count))
            if check_records and not records._valid():
                raise ValueError("not every record is a 2D point")
        except Exception as exc:  # noqa: BLE001 - any doubt: GDAL's normal reading
            log.debug("%s: read through GDAL (%s)", shp.name, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        log.debug("%s: %d point records read from the file, attributes from the .dbf alone", shp.name, count)
        return records

    @property
    def folder(self) -> Path:
        """The temporary folder holding the ``.dbf`` link."""
        return self.dbf.parent

    def _valid(self) -> bool:
        """Every record is numbered in order, 20 bytes long and a Point."""
        for start in range(0, self.count, CHECK_CHUNK):
            chunk = self._read(start, min(start + CHECK_CHUNK, self.count))
            numbers = np.arange(start + 1, start + 1 + len(chunk), dtype=np.int64)
            if not (
                np.array_equal(chunk["number"], numbers)
                and bool(np.all(chunk["length"] == 10))
                and bool(np.all(chunk["type"] == POINT))
            ):
                return False
        return True

    def xy(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x and y (float64, the file's CRS) of the records with these feature ids (0-based record numbers)."""
        fids = np.asarray(fids, dtype=np.int64)
        if len(fids) == 0:
            return np.empty(0), np.empty(0)
        first, last = int(fids.min()), int(fids.max())
        if first < 0 or last >= self.count:
            raise OSError(f"{self.shp.name}: feature id {first if first < 0 else last} out of range")
        picked = self._read(first, last + 1)[fids - first]
        return picked["x"].astype(np.float64), picked["y"].astype(np.float64)

    def close(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _layer_info(
    dbf_info: Mapping[str, Any], header: bytes, shp: Path, folder: Path, count: int
) -> dict[str, Any]:
    """The layer description GDAL would give for ``shp``: fields and encoding of the ``.dbf``, and the CRS GDAL
    reads from the ``.prj`` beside an empty shapefile with the same header (None without a ``.prj``)."""
    crs = None
    prj = _sibling(shp, ".prj")
    if prj is not None:
        empty = bytearray(header)
        empty[24:28] = (HEADER_BYTES // 2).to_bytes(4, "big")
        (folder / "projection.shp").write_bytes(empty)
        (folder / "projection.shx").write_bytes(empty)
        link_file(prj, folder / "projection.prj")
        crs = pyogrio.read_info(folder / "projection.shp").get("crs")
    return {
        "fields": dbf_info["fields"],
        "features": count,
        "encoding": dbf_info.get("encoding"),
        "crs": crs,
        "geometry_type": "Point",
        "driver": "ESRI Shapefile",
    }


def _sibling(shp: Path, suffix: str) -> Path | None:
    """The companion file GDAL would use: ``suffix`` in lower case, else in upper case; or None."""
    for candidate in (shp.with_suffix(suffix), shp.with_suffix(suffix.upper())):
        if candidate.is_file():
            return candidate
    return None
