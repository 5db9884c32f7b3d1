"""Canonical address rows and HASH (processing.md §8).

The HASH payload must be byte-identical to 7.5.5's ``json.dumps(sorted(row.items()), separators=(",", ":"))``.
Calling :func:`json.dumps` per row is too slow for the throughput target, so the payload is assembled from a fixed
template and :func:`json.encoder.encode_basestring_ascii`, the C function ``json.dumps`` itself uses for strings
(``ensure_ascii=True``); a test proves the two agree on awkward values.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Keys of an address row (§8.1), in CSV order.
ADDRESS_COLUMNS = ("LON", "LAT", "NUMBER", "STREET", "UNIT", "CITY", "DISTRICT", "REGION", "POSTCODE", "ID")
#: Columns of ``out.csv`` (§9.1).
OUTPUT_COLUMNS = ADDRESS_COLUMNS + ("HASH",)

# The attributes behind CITY … ID, passed through unchanged (null stays null).
_PASS_THROUGH = ("city", "district", "region", "postcode", "id")
#: Below this many rows a column is not checked for repeated values.
_DISTINCT_MIN_ROWS = 64
# Texts that Python's float() and Arrow's cast both parse, identically (Arrow rejects blanks and underscores).
_PLAIN_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def random_seed() -> str:
    """A HASH seed for rows transformed without a fingerprint (§8.2): a random UUID4 text."""
    return str(uuid.uuid4())


def canonical_number(value: str | None) -> str:
    """NUMBER: null → ``''``, trimmed, then one trailing ``.0`` removed (§8.1)."""
    value = (value or "").strip()
    return value[:-2] if value.endswith(".0") else value


def canonical_text(value: str | None) -> str:
    """STREET and UNIT: null → ``''``, trimmed (§8.1)."""
    return (value or "").strip()


def canonical_coordinate(value: str) -> str:
    """LON/LAT: ``"%.12g" % round(float(text), 7)`` when the text parses as a float, else unchanged (§8.1)."""
    try:
        return f"{round(float(value), 7):.12g}"
    except (ValueError, OverflowError):
        return value


def _round7(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Python's ``round(x, 7)`` over an array, exactly, where it is cheap to prove.

    ``round`` rounds the exact binary value half-to-even. Here ``x * 1e7`` is computed with its exact rounding error
    (Dekker's product: 1e7 has 17 significant bits, so the split halves multiply exactly), ``rint`` rounds the
    product half-to-even, and an apparent tie is resolved by the sign of the error. ``k / 1e7`` is then the double
    nearest to the decimal result, which is what ``round`` returns.

    :return: the rounded values, and where they may be formatted by :func:`_coordinates`' fast path: finite,
        below 1e5 in magnitude (at most 12 significant digits, so ``%.12g`` shows them exactly) and either zero
        or at least 1e-4 (``%g`` switches to exponent notation below)
    """
    fast = np.abs(x) < 1e5
    xs = np.where(fast, x, 0.0)
    y = xs * 1e7
    split = xs * 134217729.0  # 2**27 + 1
    hi = split - (split - xs)
    lo = xs - hi
    err = (hi * 1e7 - y) + lo * 1e7
    k = np.rint(y)
    frac = y - k
    # np.where rather than arithmetic, which would turn -0.0 into 0.0 ("-0" is a distinct canonical value).
    k = np.where((frac == 0.5) & (err > 0), k + 1.0, k)
    k = np.where((frac == -0.5) & (err < 0), k - 1.0, k)
    rounded = k / 1e7
    fast &= (rounded == 0) | (np.abs(rounded) >= 1e-4)
    return rounded, fast


def _coordinates(
    column: list[str], values: np.ndarray | None = None
) -> tuple[list[str], bool, np.ndarray | None]:
    """:func:`canonical_coordinate` over a column.

    Texts of the plain decimal form are parsed by Arrow (correctly rounded, like ``float``), rounded by
    :func:`_round7` and formatted by Arrow's shortest round-trip formatting, which for the values of the fast path
    prints the same digits as ``%.12g``; every other row goes through :func:`canonical_coordinate`.

    :param values: the column's texts already parsed (NaN for an empty text), when the reader has them
    :return: the canonical texts, whether all of them took the fast path (they then need no JSON escaping), and
        then the rounded values
    """
    if not column:
        return [], True, None
    if values is not None:
        rounded, fast = _round7(values)
        return _formatted(column, rounded, fast & ~np.isnan(values))
    try:
        texts = pa.array(column, type=pa.string())
        plain = pc.match_substring_regex(texts, _PLAIN_NUMBER)
        all_plain = pc.all(plain).as_py()
        numbers = pc.cast(texts if all_plain else pc.if_else(plain, texts, "0"), pa.float64())
    except (pa.ArrowException, UnicodeError):
        # Lone surrogates from a lenient decoder, or a number Arrow will not parse ("1e400"): the slow way.
        return [canonical_coordinate(value) for value in column], False, None
    rounded, fast = _round7(numbers.to_numpy())
    if not all_plain:
        fast &= plain.to_numpy(zero_copy_only=False)
    return _formatted(column, rounded, fast)


def _formatted(
    column: list[str], rounded: np.ndarray, fast: np.ndarray
) -> tuple[list[str], bool, np.ndarray | None]:
    """Texts of the rounded values where ``fast``, :func:`canonical_coordinate` of the text elsewhere."""
    result: list[str] = pc.cast(pa.array(rounded), pa.string()).to_pylist()
    slow = np.flatnonzero(~fast).tolist()
    for index in slow:
        result[index] = canonical_coordinate(column[index])
    return result, not slow, None if slow else rounded


def _json_strings(column: Sequence[str | None]) -> list[str]:
    """Each value as a JSON string literal (ASCII escaping), or ``null``; repeated values are encoded once."""
    if len(column) >= _DISTINCT_MIN_ROWS:
        distinct = set(column)
        if len(distinct) * 2 <= len(column):
            table = {value: "null" if value is None else encode_basestring_ascii(value) for value in distinct}
            return list(map(table.__getitem__, column))
    return [encode_basestring_ascii(value) if value is not None else "null" for value in column]


def is_constant(column: Sequence[object]) -> bool:
    """Whether a non-empty column holds one value throughout (cheap checks first: most columns vary early)."""
    if not column:
        return False
    first = column[0]
    return column[-1] == first and column[len(column) // 2] == first and column.count(first) == len(column)


def _hashes(seed: str, pieces: list[str | list[str]], size: int) -> list[str]:
    """HASH of each row: the first 16 hex digits of SHA-1 over the seed and the row's payload.

    :param pieces: the payload in order: literal texts, and columns of already encoded texts. A column holding one
        value throughout is folded into the template, so the per-row work only fills in the varying columns.
    """
    template = [seed.replace("%", "%%")]
    columns: list[list[str]] = []
    for piece in pieces:
        if isinstance(piece, str):
            template.append(piece.replace("%", "%%"))
        elif is_constant(piece):
            template.append(piece[0].replace("%", "%%"))
        else:
            template.append("%s")
            columns.append(piece)
    text = "".join(template)
    sha1 = hashlib.sha1
    # digest()[:8].hex() equals hexdigest()[:16], and is much cheaper.
    if not columns:
        return [sha1((text % ()).encode()).digest()[:8].hex()] * size
    return [sha1((text % row).encode()).digest()[:8].hex() for row in zip(*columns, strict=True)]


def _quoted_inner(column: list[str], safe: bool) -> list[str]:
    """Texts to place between quotes in the payload: as they are when known safe, else JSON-escaped."""
    if safe:
        return column
    return [encode_basestring_ascii(value)[1:-1] for value in column]


@dataclass
class AddressColumns:
    """Canonical address values of one batch, column-wise (§8.1), with their HASH (§8.2).

    :ivar columns: the 11 output columns ``LON`` … ``ID``, ``HASH`` (None for null ``CITY`` … ``ID``)
    :ivar plain_coordinates: every LON/LAT text is a finite plain decimal number (valid JSON as it is)
    """

    columns: list[Sequence[str | None]]
    plain_coordinates: bool
    #: LON and LAT as numbers, when every row's coordinates are plain finite numbers (else None)
    lonlat: tuple[np.ndarray, np.ndarray] | None = None
    #: NUMBER … ID (indexes 2–9) as JSON string literals with ASCII escaping, ``null`` for null: the HASH
    #: payload's pieces, which the GeoJSON encoder reuses for columns without non-ASCII text
    encoded: list[list[str]] | None = None

    @property
    def rows(self) -> list[tuple[str | None, ...]]:
        """One 11-tuple per row."""
        return list(zip(*self.columns, strict=True))


def address_columns(
    lon: list[str],
    lat: list[str],
    attrs: Mapping[str, list[str | None]],
    seed: str,
    xy: tuple[np.ndarray, np.ndarray] | None = None,
) -> AddressColumns:
    """Canonical address values with their HASH, column-wise over one batch (§8.1, §8.2).

    :param lon: ``OA:x`` texts
    :param lat: ``OA:y`` texts
    :param attrs: the result of :meth:`openaddr.conform.Conform.apply` (``accuracy`` is ignored); a missing
        attribute is null
    :param seed: the run's fingerprint, or :func:`random_seed`
    :param xy: ``lon`` and ``lat`` already parsed (:attr:`openaddr.readers.base.Batch.xy`), when known
    """
    size = len(lon)
    nulls: list[str | None] = [None] * size
    lon_c, lon_safe, lon_v = _coordinates(lon, xy[0] if xy is not None else None)
    lat_c, lat_safe, lat_v = _coordinates(lat, xy[1] if xy is not None else None)
    number = [s[:-2] if (s := (v or "").strip()).endswith(".0") else s for v in attrs.get("number", nulls)]
    street = [(v or "").strip() for v in attrs.get("street", nulls)]
    unit = [(v or "").strip() for v in attrs.get("unit", nulls)]
    city, district, region, postcode, id_ = (attrs.get(name, nulls) for name in _PASS_THROUGH)
    # Pairs sorted by key, as 7.5.5's json.dumps(sorted(row.items())) wrote them.
    encoded = [
        _json_strings(column) for column in (number, street, unit, city, district, region, postcode, id_)
    ]
    e_number, e_street, e_unit, e_city, e_district, e_region, e_postcode, e_id = encoded
    pieces: list[str | list[str]] = [
        '[["CITY",',
        e_city,
        '],["DISTRICT",',
        e_district,
        '],["ID",',
        e_id,
        '],["LAT","',
        _quoted_inner(lat_c, lat_safe),
        '"],["LON","',
        _quoted_inner(lon_c, lon_safe),
        '"],["NUMBER",',
        e_number,
        '],["POSTCODE",',
        e_postcode,
        '],["REGION",',
        e_region,
        '],["STREET",',
        e_street,
        '],["UNIT",',
        e_unit,
        "]]",
    ]
    hashes = _hashes(seed, pieces, size)
    columns: list[Sequence[str | None]] = [
        lon_c, lat_c, number, street, unit, list(city), list(district), list(region), list(postcode), list(id_),
        hashes,
    ]  # fmt: skip
    lonlat = (lon_v, lat_v) if lon_v is not None and lat_v is not None else None
    return AddressColumns(columns, lon_safe and lat_safe, lonlat, encoded)


def address_rows(
    lon: list[str], lat: list[str], attrs: Mapping[str, list[str | None]], seed: str
) -> list[tuple[str | None, ...]]:
    """:func:`address_columns` as one 11-tuple per row: LON … ID (None for null CITY … ID), then HASH."""
    return address_columns(lon, lat, attrs, seed).rows


def feature_hash(seed: str, properties: Mapping[str, str], wkt: str | None) -> str:
    """HASH of a non-address feature (§8.3).

    The payload is the compact ASCII JSON of the property pairs sorted by key (``hash`` left out), followed by
    ``["geometry", <WKT or null>]``.

    :param seed: the run's fingerprint, or :func:`random_seed`
    :param properties: attribute → text (null already turned into ``''``)
    :param wkt: the rounded geometry as WKT, or None
    """
    pairs: list[tuple[str, str | None]] = sorted((k, v) for k, v in properties.items() if k != "hash")
    pairs.append(("geometry", wkt))
    payload = json.dumps(pairs, separators=(",", ":"))
    return hashlib.sha1((seed + payload).encode()).digest()[:8].hex()


def feature_hashes(seed: str, properties: Mapping[str, list[str]], wkts: list[str | None]) -> list[str]:
    """:func:`feature_hash` column-wise over one batch.

    :param seed: the run's fingerprint, or :func:`random_seed`
    :param properties: attribute → one text per row
    :param wkts: one WKT (or None) per row
    """
    keys = sorted(key for key in properties if key != "hash")
    pieces: list[str | list[str]] = ["["]
    for key in keys:
        pieces.extend((f"[{encode_basestring_ascii(key)},", _json_strings(properties[key]), "],"))
    pieces.extend(('["geometry",', _json_strings(wkts), "]]"))
    return _hashes(seed, pieces, len(wkts))
