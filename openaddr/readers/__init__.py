"""Readers: from the chosen input file to batches of text columns (processing.md §4–§6, §9.4).

* :func:`openaddr.readers.archives.prepare_input` decompresses the download (§4);
* :func:`openaddr.readers.choose.choose_input` picks the file to read (§5);
* :func:`open_reader` opens it with the reader its format needs (§6);
* :func:`openaddr.readers.sample.take_sample` takes ``sample.json`` and the geometry type (§9.4).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from openaddr.errors import UnknownFormatError
from openaddr.readers.reader import Reader

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

#: Formats read through GDAL (``shapefile-polygon`` is read exactly like ``shapefile``).
GDAL_FORMATS = ("shapefile", "shapefile-polygon", "gdb", "xml", "gpkg")


def open_reader(
    path: Path, conform: Mapping[str, Any], *, layer_type: str, protocol: str, label: str
) -> Reader:
    """Open the input file with the reader of its conform format.

    ``geojson`` and ``csv`` entries of the ``ESRI`` protocol read the ESRI cache CSV (§6.5); ``csv`` reads CSV
    (§6.4), ``geojson`` streams GeoJSON (§6.3), the GDAL formats go through pyogrio (§6.2).

    :param path: the file chosen by :func:`openaddr.readers.choose.choose_input`
    :param conform: the entry's conform object
    :param layer_type: ``addresses``, ``parcels``, ``buildings`` or ``centerlines``
    :param protocol: the entry's protocol (compared case-insensitively)
    :param label: names the source and layer entry in messages
    :return: a :class:`Reader`; use it as a context manager
    :raises UnknownFormatError: the format is absent or names no reader
    :raises ConformError: the file cannot be opened with the conform's options
    """
    fmt = conform.get("format")
    if str(protocol).lower() == "esri" and fmt in ("geojson", "csv"):
        from openaddr.readers.esri import EsriReader

        return EsriReader(path, conform, layer_type=layer_type, label=label)
    if fmt == "csv":
        from openaddr.readers.csvfile import CsvReader

        return CsvReader(path, conform, label=label)
    if fmt == "geojson":
        from openaddr.readers.geojson import GeoJsonReader

        return GeoJsonReader(path, conform, layer_type=layer_type, label=label)
    if fmt in GDAL_FORMATS:
        from openaddr.readers.gdal import GdalReader

        return GdalReader(path, conform, layer_type=layer_type, label=label)
    raise UnknownFormatError(f"{label}: Unknown source conform format {fmt!r}")


__all__ = ["GDAL_FORMATS", "Reader", "open_reader"]
