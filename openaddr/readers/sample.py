"""``sample.json`` and the ``geometry type`` of the state (processing.md §9.4).

The sample is taken before any conform check, as 7.5.5 did, so that a source author sees which columns exist.
It is best effort: any failure is a WARNING and no sample.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyogrio
import pyogrio.raw
import shapely

from openaddr.errors import OpenaddrError
from openaddr.readers.choose import FORMATS, choose_input
from openaddr.readers.csvfile import csv_dialect, limited_lines, open_text, raise_field_size_limit
from openaddr.readers.gdal import NO_ENCODING_WARNING, open_options, resolve_layer, sample_values
from openaddr.readers.geojson import iter_features
from openaddr.readers.geometry import geometry_type_name
from openaddr.readers.reader import resolve_encoding
from openaddr.readers.shapefile_points import PointRecords

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

#: Records in a sample, after the row of column names.
SAMPLE_SIZE = 5
#: Features cut out of a GeoJSON file for GDAL to read.
GEOJSON_EXCERPT = 10
#: Extensions the sample looks for when there is no usable conform, in the order of the extracted paths.
SAMPLE_SUFFIXES = (".shp", ".json", ".geojson", ".csv", ".kml", ".gml", ".gdb")
EXCERPT_WARNING = "Error doing excerpt; skipping"

Rows = list[list[Any]]


def take_sample(
    paths: list[Path],
    root: Path,
    conform: Mapping[str, Any] | None,
    protocol: str,
    *,
    label: str = "",
    size: int = SAMPLE_SIZE,
) -> tuple[Rows | None, str | None]:
    """The sample rows and the geometry type of the input (§9.4).

    :param paths: the extracted paths (§4), or ``[cache file]``
    :param root: the extraction root
    :param conform: the entry's conform object, or None
    :param protocol: the entry's protocol
    :param label: names the source and layer entry in messages
    :param size: records after the row of column names
    :return: the rows (row 0 the column names, then up to ``size`` records; None when fewer than two rows or on
        any failure, with the WARNING "Error doing excerpt; skipping") and the geometry type name or None
    """
    conform = conform if isinstance(conform, Mapping) else None
    esri = str(protocol).lower() == "esri"
    try:
        path, fmt = _sample_path(paths, root, conform, protocol)
        if path is None:
            log.warning(EXCERPT_WARNING)
            return None, None
        if (esri and fmt in ("geojson", "csv")) or (fmt == "csv") or (fmt is None and _is_csv(path, esri)):
            encoding = "utf-8" if esri or conform is None else conform.get("encoding", "utf-8")
            delimiter = "," if esri or conform is None else conform.get("csvsplit", ",")
            rows, geometry_type = csv_sample(path, encoding, delimiter, label, size)
        elif fmt == "geojson" or (fmt is None and path.suffix.lower() in (".json", ".geojson")):
            rows, geometry_type = geojson_sample(path, label, size)
        else:
            rows, geometry_type = gdal_sample(path, conform or {}, label, size)
    except (OpenaddrError, OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
        log.warning("%s: %s", EXCERPT_WARNING, exc)
        return None, None
    if rows is None or len(rows) < 2:
        log.warning(EXCERPT_WARNING)
        return None, geometry_type
    return rows, geometry_type


def _is_csv(path: Path, esri: bool) -> bool:
    return esri or path.suffix.lower() == ".csv" or path.suffix.lower() not in SAMPLE_SUFFIXES


def sample_input(
    paths: list[Path], root: Path, conform: Mapping[str, Any] | None, protocol: str
) -> Path | None:
    """The file the sample reads (§9.4), or None: what :mod:`openaddr.skeleton` names the format after."""
    try:
        return _sample_path(paths, root, conform, protocol)[0]
    except OpenaddrError:
        return None


def _sample_path(
    paths: list[Path], root: Path, conform: Mapping[str, Any] | None, protocol: str
) -> tuple[Path | None, str | None]:
    """The input of §5 and its format when the conform is usable; else the first path with a known extension.

    :return: the path (None when there is none) and the format that decides how to read it (None: by extension)
    """
    fmt = conform.get("format") if conform is not None else None
    if conform is not None and fmt in FORMATS:
        try:
            return choose_input(paths, root, conform, protocol), fmt
        except OpenaddrError as exc:
            log.debug("No input file for the sample (%s); looking for any known file", exc)
    for p in paths:
        if p.suffix.lower() in SAMPLE_SUFFIXES:
            return p, None
    if fmt == "csv" or str(protocol).lower() == "esri":
        files = [p for p in paths if p.is_file()]
        return (files[0], "csv") if files else (None, None)
    return None, None


def csv_sample(
    path: Path, encoding: object, delimiter: object, label: str, size: int
) -> tuple[Rows, str | None]:
    """The first ``size + 1`` records as they are (no ``headers``/``skiplines``), all values strings.

    The geometry type is that of the WKT in the first data row when there is an ``OA:geom`` column (ESRI).
    """
    codec = resolve_encoding(encoding, label)
    raise_field_size_limit()
    with open_text(path, codec) as fh:
        reader = csv.reader(limited_lines(fh, path.name, label), **csv_dialect(delimiter, label))
        rows = [row for row in itertools.islice((r for r in reader if r), size + 1)]
    return rows, _wkt_type(rows)


def _wkt_type(rows: Rows) -> str | None:
    if len(rows) < 2 or "OA:geom" not in rows[0]:
        return None
    i = rows[0].index("OA:geom")
    text = rows[1][i] if i < len(rows[1]) else ""
    geom = shapely.from_wkt(text or None, on_invalid="ignore")
    if geom is None:
        return None
    return geom.geom_type + (" 2.5D" if geom.has_z else "")


def geojson_sample(path: Path, label: str, size: int) -> tuple[Rows, str | None]:
    """The first ten features, cut out by streaming, read as GDAL's GeoJSON driver presents them."""
    features = iter_features(path, label)
    try:
        excerpt = list(itertools.islice(features, GEOJSON_EXCERPT))
    finally:
        features.close()
    if not excerpt:
        return [], None
    document = json.dumps({"type": "FeatureCollection", "features": excerpt}).encode("utf-8")
    return _gdal_rows(document, None, {}, size)


def gdal_sample(path: Path, conform: Mapping[str, Any], label: str, size: int) -> tuple[Rows, str | None]:
    """Field names, then values as native types (integers, floats, strings, null; dates as text)."""
    from openaddr.readers.archives import lowercase_extension, remove_paths

    open_path, tmp = lowercase_extension(path)
    # A point shapefile's attributes come from its .dbf alone: GDAL would load the whole .shx.
    points = PointRecords.for_layer(open_path, conform.get("layer"), check_records=False)
    info: Mapping[str, Any]
    options: Mapping[str, Any]
    try:
        if points is not None:
            source, layer, options, info = points.dbf, None, {}, points.info
        else:
            source, options = open_path, open_options(path)
            layer, _ = resolve_layer(open_path, conform.get("layer"), label, options)
            info = pyogrio.read_info(open_path, layer=layer, **options)
        decode = None
        if info.get("encoding") != "UTF-8":
            if conform.get("encoding") is not None:
                decode = resolve_encoding(conform.get("encoding"), label)
            else:
                log.debug(NO_ENCODING_WARNING)
                decode = "iso8859-1"
        rows, geometry_type = _gdal_rows(source, layer, options, size, decode)
        return rows, info["geometry_type"] if points is not None else geometry_type
    finally:
        if points is not None:
            points.close()
        remove_paths([tmp])


def _gdal_rows(
    source: Path | bytes, layer: int | None, options: Mapping[str, Any], size: int, decode: str | None = None
) -> tuple[Rows, str | None]:
    # pyogrio turns GDAL warnings (e.g. "parsed incompletely to real") into Python warnings: log them instead
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _read_rows(source, layer, options, size, decode)
    for warning in caught[:5]:
        log.debug("GDAL: %s", warning.message)
    return result


def _read_rows(
    source: Path | bytes, layer: int | None, options: Mapping[str, Any], size: int, decode: str | None
) -> tuple[Rows, str | None]:
    with pyogrio.raw.open_arrow(
        io.BytesIO(source) if isinstance(source, bytes) else source,
        layer=layer,
        batch_size=size,
        read_geometry=False,
        use_pyarrow=True,
        **options,
    ) as (meta, stream):
        names = [str(n) for n in meta["fields"]]
        geometry_type = geometry_type_name(meta.get("geometry_type"))
        try:
            batch = stream.read_next_batch()
        except StopIteration:
            return [names], geometry_type
    columns = [sample_values(batch.column(name), decode) for name in names]
    records = [list(values) for values in zip(*columns, strict=True)] if columns else [[]] * batch.num_rows
    return [names, *records[:size]], geometry_type
