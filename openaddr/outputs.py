"""The standard outputs of one layer entry (processing.md §9).

Everything here is written under a temporary name and renamed into place only when complete, so nothing
half-written is ever where the publishing step looks (§1.3).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from datetime import date
from json.encoder import encode_basestring  # the C version when available
from typing import IO, TYPE_CHECKING, Any, TypeGuard, cast

from openaddr.canonical import ADDRESS_COLUMNS, OUTPUT_COLUMNS, is_constant
from openaddr.errors import ConformError

if TYPE_CHECKING:
    from openaddr.canonical import AddressColumns

# Plain decimal numbers, as Arrow parses them (blanks, "nan", "inf" and other texts are invalid coordinates).
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
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
    return encode_basestring(value or "")


# --------------------------------------------------------------------------------------------------------------
# Encoding one batch (pure functions: they may run in a worker process)


def encode_address_csv(rows: Sequence[Sequence[str | None]]) -> bytes:
    """The ``out.csv`` bytes of address rows (11-tuples): excel dialect, minimal quoting, CRLF, UTF-8 (§9.1)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


_CSV_SPECIAL = re.compile(r'[",\r\n]')


def encode_address_csv_columns(columns: Sequence[Sequence[str | None]]) -> bytes:
    """:func:`encode_address_csv` over columns, byte for byte the same.

    The csv module quotes a cell only when it holds a delimiter, quote, CR or LF (excel dialect, minimal quoting);
    columns without any such character are joined as they are, which is several times faster than the writer.
    Columns that need quoting (rare: streets with commas) go through the writer's own rules.
    """
    if not columns or not columns[0]:
        return b""
    cells: list[Sequence[str]] = []
    for column in columns:
        texts = [v or "" for v in column] if None in column else cast("Sequence[str]", column)
        if _CSV_SPECIAL.search("\x00".join(texts)):
            texts = [_csv_cell(v) for v in texts]
        cells.append(texts)
    template = ",".join(["%s"] * len(cells)) + "\r\n"
    return "".join(_fill(template, cells)).encode("utf-8")


def _csv_cell(value: str) -> str:
    if not value:
        return ""  # the writer quotes a lone empty field, but not an empty cell in a longer row
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([value])
    return buf.getvalue()[:-2]


def _finite(text: str | None) -> TypeGuard[str]:
    if text is None:
        return False
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _json_texts(column: Sequence[str | None]) -> list[str]:
    """Each value as a JSON string literal without ASCII escaping, ``""`` for null; repeats encoded once."""
    if len(column) >= 64:
        distinct = set(column)
        if len(distinct) * 2 <= len(column):
            table = {v: encode_basestring(v or "") for v in distinct}
            return list(map(table.__getitem__, column))
    return [encode_basestring(v) if v else '""' for v in column]


_ACCURACY = {str(n): str(n) for n in range(1, 6)}
_ADDRESS_FEATURE = (
    '{"type":"Feature","geometry":%s,"properties":{"hash":"%s","number":%s,"street":%s,"unit":%s,"city":%s,'
    '"district":%s,"region":%s,"postcode":%s,"id":%s,"accuracy":%s}}\n'
)


def _geojson_texts(column: Sequence[str | None], ascii_encoded: list[str] | None) -> list[str]:
    """JSON string literals for GeoJSON properties (null → ``""``).

    For a column of ASCII text the HASH payload's literals are the same bytes (only non-ASCII characters are
    escaped differently), so they are reused instead of encoding every value twice.
    """
    if ascii_encoded is not None and "".join([v for v in column if v]).isascii():
        return [t if t != "null" else '""' for t in ascii_encoded] if None in column else ascii_encoded
    return _json_texts(column)


def _fill(template: str, columns: list[Sequence[str]]) -> list[str]:
    """``template % row`` for every row of ``columns``, with columns holding one value throughout folded into the
    template first (null attributes, a constant region), so each row formats only what varies."""
    parts = template.split("%s")
    varying: list[Sequence[str]] = []
    folded = [parts[0].replace("%", "%%")]
    for column, after in zip(columns, parts[1:], strict=True):
        if is_constant(column):
            folded.append(column[0].replace("%", "%%"))
        else:
            folded.append("%s")
            varying.append(column)
        folded.append(after.replace("%", "%%"))
    text = "".join(folded)
    if not varying:
        return [text % ()] * (len(columns[0]) if columns else 0)
    return [text % row for row in zip(*varying, strict=True)]


def encode_address_geojson(address: AddressColumns, accuracy: Sequence[str | None] | None) -> bytes:
    """Line-delimited GeoJSON of address rows: one Feature a line, same values and HASH as the CSV (§9.3).

    :param address: the batch's canonical columns (:func:`openaddr.canonical.address_columns`)
    :param accuracy: the ``accuracy`` attribute per row (text of an integer or None), or None when absent
    """
    lon, lat, *texts, hashes = address.columns
    if address.plain_coordinates:
        # Canonical plain decimal texts are valid JSON numbers as they are.
        geometry = [f'{{"type":"Point","coordinates":[{x},{y}]}}' for x, y in zip(lon, lat, strict=True)]
    else:
        geometry = [
            f'{{"type":"Point","coordinates":[{float(x)!r},{float(y)!r}]}}'
            if _finite(x) and _finite(y)
            else "null"
            for x, y in zip(lon, lat, strict=True)
        ]
    if accuracy is None:
        acc: Sequence[str] = ["null"] * len(lon)
    else:
        acc = [_ACCURACY.get((v or "").strip(), "null") for v in accuracy]
    encoded: Sequence[list[str] | None] = address.encoded or [None] * len(texts)
    properties = [_geojson_texts(c, e) for c, e in zip(texts, encoded, strict=True)]
    # AddressColumns types every column str | None; HASH never holds None.
    lines = _fill(_ADDRESS_FEATURE, [geometry, cast("Sequence[str]", hashes), *properties, acc])
    return "".join(lines).encode("utf-8")


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

    def add_coordinates(self, lons: Sequence[str | None], lats: Sequence[str | None]) -> None:
        """Fold one batch's coordinate texts into the bounds and counters."""
        import pyarrow as pa
        import pyarrow.compute as pc

        def parse(texts: Sequence[str | None]) -> Any:
            array = pc.utf8_trim_whitespace(pa.array(texts, type=pa.string()))
            numeric = pc.match_substring_regex(array, _NUMBER)
            kept = pc.if_else(numeric, array, None)
            assert isinstance(kept, pa.Array)  # an array's if_else is an array
            return pc.cast(kept, pa.float64()).to_numpy(zero_copy_only=False)

        self.add_values(parse(lons), parse(lats))

    def add_values(self, lon: Any, lat: Any) -> None:
        """Fold one batch's coordinates (float arrays, NaN for an invalid one) into the bounds and counters."""
        import numpy as np

        valid = (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)  # NaN (unparsable, empty) compares False
        self.invalid_coordinates += int(len(lon) - valid.sum())
        if not valid.any():
            return
        lon, lat = lon[valid], lat[valid]
        self.null_island += int(((lon == 0.0) & (lat == 0.0)).sum())
        self.west, self.east = min(self.west, float(lon.min())), max(self.east, float(lon.max()))
        self.south, self.north = min(self.south, float(lat.min())), max(self.north, float(lat.max()))

    def add_filled(self, name: str, values: Sequence[str | None]) -> None:
        """Count the non-empty values of one attribute in a batch."""
        self.filled[name] = self.filled.get(name, 0) + len(values) - values.count("") - values.count(None)

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


class OutputTooLargeError(ConformError):
    """The conform's outputs of one layer entry went over ``OPENADDR_MAX_OUTPUT_BYTES``."""


class OutputBudget:
    """The bytes the conform's outputs of one layer entry may take (``OPENADDR_MAX_OUTPUT_BYTES``).

    Every batch is charged before it is written: ``out.csv``, the zip's CSV member at its uncompressed size and
    ``out.geojson``, or the part files a slice worker writes instead. The count lives in shared memory, so forked
    workers charge the same budget.

    :param limit: bytes
    :param label: names the source and layer entry in messages
    """

    def __init__(self, limit: int, label: str) -> None:
        import multiprocessing

        self.limit = limit
        self.label = label
        self._used = multiprocessing.get_context("fork").Value("q", 0)

    @property
    def used(self) -> int:
        return int(self._used.value)

    def charge(self, size: int) -> None:
        """Count ``size`` more bytes.

        :raises OutputTooLargeError: the outputs would go over the limit
        """
        with self._used.get_lock():
            self._used.value += size
            used = self._used.value
        if used > self.limit:
            raise OutputTooLargeError(
                f"{self.label}: the outputs would exceed {self.limit} bytes (OPENADDR_MAX_OUTPUT_BYTES)"
            )


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

    def append_file(self, path: Path) -> None:
        """Append another file's bytes (copied in the kernel where the platform allows)."""
        self.fh.flush()
        with path.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            try:
                while offset < size:
                    sent = os.sendfile(self.fh.fileno(), src.fileno(), offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent
            except (AttributeError, OSError):  # no sendfile here: copy through user space
                src.seek(offset)
                shutil.copyfileobj(src, self.fh, 1 << 20)

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


def _deflate_compressor() -> Any:
    """A raw-deflate compressor: ISA-L's (a dependency; about ten times as fast as zlib level 6, standard deflate
    output, slightly larger)."""
    from isal import isal_zlib

    return isal_zlib.compressobj(2, isal_zlib.DEFLATED, -15)


class PackageWriter:
    """The published zip (§9.2), written while the CSV is produced: ``README.txt``, ``<name>.vrt``, then the CSV
    member, streamed through the compressor batch by batch, so no second pass over ``out.csv`` is needed.

    Written under a temporary name; :meth:`commit` renames it into place, :meth:`discard` removes it.

    :param path: the final zip path
    :param name: ``<source>`` of §9.2 (e.g. ``us/ca/alameda``)
    """

    def __init__(self, path: Path, name: str, website: str | None, license_text: str | None) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.part")
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        try:
            self.zip.writestr("README.txt", readme_text(website, license_text))
            self.zip.writestr(f"{name}.vrt", vrt_document(name))
            info = zipfile.ZipInfo(f"{name}.csv", date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            self.member = self.zip.open(info, "w", force_zip64=True)
            # zipfile has no hook for another deflate implementation; its writer only calls compress() and
            # flush() on this attribute, so a compatible compressor can take its place.
            if hasattr(self.member, "_compressor"):
                self.member._compressor = _deflate_compressor()
        except BaseException:
            self.discard()
            raise

    def write(self, data: bytes) -> None:
        """Append CSV bytes to the member."""
        self.member.write(data)

    def append_file(self, path: Path) -> None:
        """Append a file's bytes to the member."""
        with path.open("rb") as src:
            shutil.copyfileobj(src, self.member, 1 << 20)

    def commit(self) -> Path:
        """Finish the archive and move it into place."""
        self.member.close()
        self.zip.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Abandon the archive."""
        member = getattr(self, "member", None)
        if member is not None:
            with contextlib.suppress(Exception):
                member.close()  # the zip cannot close while its member is open for writing
        with contextlib.suppress(Exception):
            self.zip.close()
        self.tmp.unlink(missing_ok=True)


def write_package(
    path: Path, name: str, csv_path: Path, website: str | None, license_text: str | None
) -> Path:
    """Write the published zip: README.txt, ``<name>.vrt``, ``<name>.csv`` (deflated, in that order)."""
    package = PackageWriter(path, name, website, license_text)
    try:
        package.append_file(csv_path)
    except BaseException:
        package.discard()
        raise
    return package.commit()


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
