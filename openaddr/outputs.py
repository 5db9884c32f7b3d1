"""The standard outputs of one layer entry (processing.md §9).

Everything here is written under a temporary name and renamed into place only when complete, so nothing
half-written is ever where the publishing step looks (§1.3).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from datetime import date
from json.encoder import encode_basestring  # type: ignore[attr-defined]  # the C version when available
from typing import IO, TYPE_CHECKING, Any

from openaddr.canonical import ADDRESS_COLUMNS, OUTPUT_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

#: Keys of the state record, in order (processing.md §9.7).
STATE_KEYS = (
    "source",
    "skipped",
    "cache",
    "sample",
    "website",
    "license",
    "geometry type",
    "address count",
    "version",
    "fingerprint",
    "cache time",
    "processed",
    "process time",
    "output",
    "preview",
    "slippymap",
    "attribution required",
    "attribution name",
    "share-alike",
    "source problem",
    "code version",
    "tests passed",
)

#: Address attributes as GeoJSON property names, in order (§9.3).
_ADDRESS_PROPERTIES = ("number", "street", "unit", "city", "district", "region", "postcode", "id")


def _text(value: str | None) -> str:
    return encode_basestring(value or "")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------------------
# Encoding one batch (pure functions: they may run in a worker process)


def encode_address_csv(rows: Sequence[Sequence[str | None]]) -> bytes:
    """The ``out.csv`` bytes of address rows (11-tuples): excel dialect, minimal quoting, CRLF, UTF-8 (§9.1)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _finite(text: str | None) -> bool:
    try:
        return math.isfinite(float(text))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def encode_address_geojson(
    rows: Sequence[Sequence[str | None]], accuracy: Sequence[str | None] | None
) -> bytes:
    """Line-delimited GeoJSON of address rows: one Feature a line, same values and HASH as the CSV (§9.3).

    :param rows: 11-tuples ``LON, LAT, NUMBER, STREET, UNIT, CITY, DISTRICT, REGION, POSTCODE, ID, HASH``
    :param accuracy: the ``accuracy`` attribute per row (text of an integer or None), or None when absent
    """
    out: list[str] = []
    append = out.append
    for i, row in enumerate(rows):
        lon, lat, number, street, unit, city, district, region, postcode, id_, hash_ = row
        if _finite(lon) and _finite(lat):
            # Canonical coordinate texts are "%.12g" numbers, valid JSON as they are.
            geometry = f'{{"type":"Point","coordinates":[{float(lon)!r},{float(lat)!r}]}}'  # type: ignore[arg-type]
        else:
            geometry = "null"
        acc = "null"
        if accuracy is not None:
            value = accuracy[i]
            if value is not None and value.strip() in ("1", "2", "3", "4", "5"):
                acc = value.strip()
        append(
            f'{{"type":"Feature","geometry":{geometry},"properties":{{"hash":{_text(hash_)},'
            f'"number":{_text(number)},"street":{_text(street)},"unit":{_text(unit)},"city":{_text(city)},'
            f'"district":{_text(district)},"region":{_text(region)},"postcode":{_text(postcode)},'
            f'"id":{_text(id_)},"accuracy":{acc}}}}}\n'
        )
    return "".join(out).encode("utf-8")


def encode_feature_geojson(
    geometries: Sequence[str | None],
    attributes: Sequence[str],
    values: Mapping[str, Sequence[str | None]],
    hashes: Sequence[str],
) -> bytes:
    """Line-delimited GeoJSON of non-address features (§9.3).

    :param geometries: each feature's GeoJSON geometry text (coordinates already rounded to 7 decimals) or None
    :param attributes: the layer type's attribute names in output order
    :param values: attribute → values (None → ``''``)
    :param hashes: each feature's HASH (§8.3)
    """
    out: list[str] = []
    columns = [values[a] for a in attributes]
    names = [encode_basestring(a) for a in attributes]
    for i, geometry in enumerate(geometries):
        props = "".join(f",{name}:{_text(col[i])}" for name, col in zip(names, columns, strict=True))
        out.append(
            f'{{"type":"Feature","geometry":{geometry or "null"},"properties":{{"hash":{_text(hashes[i])}{props}}}}}\n'
        )
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------------------------------------------
# Statistics (§9.5)


@dataclass
class Stats:
    """Counts for ``stats.json``: rows, filled attributes, bounds, invalid and null-island coordinates."""

    count: int = 0
    filled: dict[str, int] = field(default_factory=dict)
    west: float = math.inf
    south: float = math.inf
    east: float = -math.inf
    north: float = -math.inf
    invalid_coordinates: int = 0
    null_island: int = 0

    def add_coordinates(self, lons: Iterable[str | None], lats: Iterable[str | None]) -> None:
        """Fold one batch's coordinate texts into the bounds and counters."""
        for lon_text, lat_text in zip(lons, lats, strict=True):
            try:
                lon, lat = float(lon_text), float(lat_text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self.invalid_coordinates += 1
                continue
            if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
                self.invalid_coordinates += 1  # NaN fails the comparisons too
                continue
            if lon == 0.0 and lat == 0.0:
                self.null_island += 1
            self.west, self.east = min(self.west, lon), max(self.east, lon)
            self.south, self.north = min(self.south, lat), max(self.north, lat)

    def add_filled(self, name: str, values: Iterable[str | None]) -> None:
        """Count the non-empty values of one attribute in a batch."""
        self.filled[name] = self.filled.get(name, 0) + sum(1 for v in values if v)

    def merge(self, other: Stats) -> None:
        """Add another batch's statistics."""
        self.count += other.count
        for name, n in other.filled.items():
            self.filled[name] = self.filled.get(name, 0) + n
        self.west, self.east = min(self.west, other.west), max(self.east, other.east)
        self.south, self.north = min(self.south, other.south), max(self.north, other.north)
        self.invalid_coordinates += other.invalid_coordinates
        self.null_island += other.null_island

    def as_dict(self) -> dict[str, Any]:
        """The ``stats.json`` document."""
        bounds = [self.west, self.south, self.east, self.north] if self.west <= self.east else None
        return {
            "count": self.count,
            "filled": self.filled,
            "bounds": bounds,
            "invalid_coordinates": self.invalid_coordinates,
            "null_island": self.null_island,
        }


# --------------------------------------------------------------------------------------------------------------
# Files


class AtomicFile:
    """A binary file written under a temporary name and renamed into place by :meth:`commit`.

    :meth:`discard` (or leaving a ``with`` block by an exception) removes the temporary file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.part")
        self.fh: IO[bytes] = self.tmp.open("wb")

    def write(self, data: bytes) -> None:
        """Append bytes."""
        self.fh.write(data)

    def commit(self) -> Path:
        """Close and move into place; return the final path."""
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file."""
        self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.discard()


def write_atomic(path: Path, data: bytes) -> Path:
    """Write a whole small file atomically."""
    f = AtomicFile(path)
    try:
        f.write(data)
    except BaseException:
        f.discard()
        raise
    return f.commit()


def write_json(path: Path, document: Any) -> Path:
    """Write ``document`` as JSON with a 2-space indent."""
    return write_atomic(path, json.dumps(document, indent=2).encode("utf-8"))


def write_sample(path: Path, sample: list[list[Any]]) -> Path:
    """Write ``sample.json`` (§9.4)."""
    return write_atomic(path, json.dumps(sample, indent=2, default=str).encode("utf-8"))


def write_state(directory: Path, state: Mapping[str, Any]) -> None:
    """Write ``index.json`` and ``index.txt`` (§9.7) from a mapping holding every key of :data:`STATE_KEYS`."""
    values = [state.get(key) for key in STATE_KEYS]
    write_atomic(directory / "index.json", json.dumps([list(STATE_KEYS), values], indent=2).encode("utf-8"))
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel-tab", lineterminator="\r\n")
    writer.writerow(STATE_KEYS)
    writer.writerow(["" if v is None else v for v in values])
    write_atomic(directory / "index.txt", buf.getvalue().encode("utf-8"))


def csv_header() -> bytes:
    """The header line of ``out.csv``."""
    return encode_address_csv([OUTPUT_COLUMNS])


# --------------------------------------------------------------------------------------------------------------
# The published zip (§9.2)


def package_name(source_path: Path, entry_name: str, first_address_entry: bool) -> str:
    """``<source>`` of §9.2: the path below ``sources/`` without ``.json``, plus ``-<name>`` for later entries."""
    parts = source_path.with_suffix("").parts
    if "sources" in parts:
        index = len(parts) - 1 - parts[::-1].index("sources")
        name = "/".join(parts[index + 1 :])
    else:
        name = parts[-1]
    return name if first_address_entry else f"{name}-{entry_name}"


def vrt_document(name: str) -> str:
    """A GDAL VRT that reads ``<last component>.csv`` beside it as EPSG:4326 points from LON/LAT."""
    base = name.rsplit("/", 1)[-1]
    return (
        "<OGRVRTDataSource>\n"
        f'    <OGRVRTLayer name="{_xml(base)}">\n'
        f'        <SrcDataSource relativeToVRT="1">{_xml(base)}.csv</SrcDataSource>\n'
        "        <GeometryType>wkbPoint</GeometryType>\n"
        "        <LayerSRS>EPSG:4326</LayerSRS>\n"
        '        <GeometryField encoding="PointFromColumns" x="LON" y="LAT" reportSrcColumn="false"/>\n'
        "    </OGRVRTLayer>\n"
        "</OGRVRTDataSource>\n"
    )


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def readme_text(website: str | None, license_text: str | None, today: date | None = None) -> str:
    """``README.txt`` of the published zip."""
    day = (today or date.today()).isoformat()
    return (
        f"Data packaged around {day} by OpenAddresses (http://openaddresses.io).\n"
        "\n"
        f"Website: {website or 'Unknown'}\n"
        f"License: {license_text or 'Unknown'}\n"
    )


def write_package(
    path: Path, name: str, csv_path: Path, website: str | None, license_text: str | None
) -> Path:
    """Write the published zip: README.txt, ``<name>.vrt``, ``<name>.csv`` (deflated, in that order)."""
    part = path.with_name(f".{path.name}.part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            zf.writestr("README.txt", readme_text(website, license_text))
            zf.writestr(f"{name}.vrt", vrt_document(name))
            zf.write(csv_path, f"{name}.csv")
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "ADDRESS_COLUMNS",
    "OUTPUT_COLUMNS",
    "STATE_KEYS",
    "AtomicFile",
    "Stats",
    "csv_header",
    "encode_address_csv",
    "encode_address_geojson",
    "encode_feature_geojson",
    "package_name",
    "readme_text",
    "vrt_document",
    "write_json",
    "write_package",
    "write_sample",
    "write_state",
]
