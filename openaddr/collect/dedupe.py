"""The cross-source dedupe of address rows, sharded spatially, and the ``-processed`` collections (issue 13 2(b)).

**The rule.** Two address rows *match* when they come from different sources (layer entries: two address layers
of one source file are two sources), have the same normalised number, street and unit (:func:`normalise_number`,
:func:`normalise_street`, :func:`normalise_unit`; a row whose number or street normalises to nothing is never
matched) and lie within ``distance_m`` (10 m) of each other on the sphere (:func:`haversine_m`). Rows are totally
ordered by *priority*: a row with a postcode first, then the row of the source covering the smaller area (the
spherical area of the bounding box of the rows its run published, grown by 0.001° on every side and rounded to
three significant figures, :func:`source_area_m2`), then the source path, then the row's ``HASH``
(:func:`hash_digest`), then the source's name and the row's position. A row is **dropped when a
row of higher priority matches it**; the row that beat it is the best of those (for the report). This is a
property of pairs only, so the result does not depend on the order rows are read in or on how they are sharded;
in a cluster of matching rows the best one always stays (nothing that matches it beats it).

**Sharding.** The sphere is cut into cells of ``cell_degrees`` (0.01°, ≈ 1.1 km north–south). Every row has a
*home* cell, where its fate is decided, and is also written as a *guest* into every other cell that a point within
``distance_m`` of it can have as home: the latitude rows spanned by ±δ (δ = ``distance_m`` / R) and, per latitude
row, the longitude columns spanned by ±asin(sin δ / cos φ), the exact longitude half-width of a spherical cap
(plus 10⁻⁷° against rounding). So every row a home row can match is in its home cell's shard, and each row is
decided exactly once: the global result is the union of the shards, with no pair missed or counted twice at a cell
edge or corner. Columns are taken modulo 360°, so a cell at 179.99° has the cell at −180° as a neighbour (the
antimeridian is no edge). Within about 0.1° of a pole (|lat| > 89.91°, where a 0.01° column is under 2 m wide)
each latitude row is one cell around the pole, so a point near a pole is never written into thousands of columns.

**Shards on disk.** Cells are grouped into 1° tiles, and tiles are hashed into ``partitions`` spill files of
fixed-size binary records (53 bytes a row, 4 % more for the guests at 0.01°); nothing but one batch of rows is in
memory while reading. Each spill
file is then read and decided on its own; one that holds more than ``shard_rows`` records is split again into
``partitions`` files, first by cell, then by cell and key (matches only happen within one cell and one key, so any
split by those is exact), recursively. Memory is bounded by ``shard_rows`` records, or by the largest group of
rows sharing one cell and one key, which cannot be split (it is decided in blocks of pairs, so only its records,
not its pairs, are in memory). The decisions (dropped rows, with the source that beat them) are written to sorted
files and read back a slice at a time when the ``-processed`` collections are written.

**Regions.** One pass per licence class over that class's ``global`` collection decides both the ``global`` and
the regional ``-processed`` collections: a row is dropped from ``global`` when any better match exists, and from
its own regional collection when a better match *from a source of the same region* exists (a region's collection
holds only its own sources, so a row beaten only by a source outside the region stays there). Share-alike and
other sources are never compared: each collection is deduped within itself.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import heapq
import io
import itertools
import logging
import math
import re
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from openaddr.canonical import OUTPUT_COLUMNS
from openaddr.collect.archive import (
    CollectionZip,
    LicenseBlock,
    summary_csv,
    summary_names,
    summary_vrt,
)
from openaddr.collect.areas import AREAS

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from numpy.typing import NDArray

log = logging.getLogger(__name__)

#: Mean Earth radius (IUGG), metres.
EARTH_RADIUS_M = 6_371_008.8
#: Two rows closer than this (metres) can be duplicates.
DEFAULT_DISTANCE_M = 10.0
#: Side of a grid cell, degrees.
DEFAULT_CELL_DEGREES = 0.01
#: Rows of spill records per shard before it is split again.
DEFAULT_SHARD_ROWS = 200_000
#: Spill files per level.
DEFAULT_PARTITIONS = 64
#: Latitude (degrees) beyond which a latitude row is one cell around the pole.
POLAR_CAP_LATITUDE = 89.9
#: Name of the report inside a ``-processed`` collection.
REPORT_NAME = "dedupe-report.csv"
REPORT_COLUMNS = ("kept_source", "dropped_source", "count")

_MARGIN_DEGREES = 1e-7
_BATCH = 50_000
_PAIR_BLOCK = 1024
#: Pairs built at once in one shard.
_PAIR_CHUNK = 1 << 20
_WIDTH = len(OUTPUT_COLUMNS)
#: The fields of a row short of columns: no number, so never matched.
_SHORT = ("", "", "", "", "")
#: Decisions read from a decision file at once.
_DROP_CHUNK = 1 << 16
#: Spill record: cell, key digest, position, row ordinal, HASH digest, member, flags (1 home, 2 postcode).
RECORD = np.dtype(
    [
        ("cell", "<i8"),
        ("key", "<u8"),
        ("lon", "<f8"),
        ("lat", "<f8"),
        ("ordinal", "<i8"),
        ("hash", "<u8"),
        ("member", "<i4"),
        ("flags", "u1"),
    ]
)
#: A decision: the dropped row's ordinal, and the member that beat it (-1: kept) for global and for its region.
DROP = np.dtype([("ordinal", "<i8"), ("member", "<i4"), ("kept_global", "<i4"), ("kept_regional", "<i4")])
_HOME = 1
_POSTCODE = 2

# --------------------------------------------------------------------------------------------------------------
# Normalisation

#: Street-type and directional abbreviations unified to their full word (USPS Publication 28, appendix C1 and the
#: directionals, the most common ones). Applied to every token of the street, so "St John St" and "St John Street"
#: meet; a mapping applied to both sides can only merge names that differ by these words.
STREET_WORDS: dict[str, str] = {
    "st": "street", "str": "street", "ave": "avenue", "av": "avenue", "avn": "avenue", "aven": "avenue",
    "rd": "road", "blvd": "boulevard", "boul": "boulevard", "dr": "drive", "drv": "drive", "ln": "lane",
    "ct": "court", "crt": "court", "pl": "place", "sq": "square", "ter": "terrace", "terr": "terrace",
    "pkwy": "parkway", "pky": "parkway", "hwy": "highway", "hway": "highway", "cir": "circle", "trl": "trail",
    "expy": "expressway", "fwy": "freeway", "cres": "crescent", "hts": "heights", "ctr": "center",
    "plz": "plaza", "aly": "alley", "crk": "creek", "xing": "crossing", "cv": "cove", "pt": "point",
    "n": "north", "s": "south", "e": "east", "w": "west",
    "ne": "northeast", "nw": "northwest", "se": "southeast", "sw": "southwest",
}  # fmt: skip
#: Unit designators dropped from a unit ("Apt 4", "Unit 4", "#4" and "4" are one unit).
UNIT_WORDS = frozenset({"apt", "apartment", "unit", "ste", "suite", "flat", "rm", "room", "no", "number"})

_DELETED = re.compile(r"['’.]")
_SEPARATORS = re.compile(r"[^\w\s]|_")
_DIGIT_LETTER = re.compile(r"(?<=\d) (?=[^\W\d_])|(?<=[^\W\d_]) (?=\d)")


def normalise_text(value: str) -> str:
    """Case-fold, strip accents (NFKD, combining marks removed), delete apostrophes and periods, turn other
    punctuation into spaces, collapse whitespace: ``"  Rue de l'Église. "`` → ``"rue de leglise"``."""
    folded = unicodedata.normalize("NFKD", value.casefold())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(_SEPARATORS.sub(" ", _DELETED.sub("", folded)).split())


@functools.lru_cache(maxsize=1 << 16)
def normalise_number(value: str) -> str:
    """A house number: :func:`normalise_text`, and no space between a digit and a letter (``"12 A"`` = ``"12a"``)."""
    return _DIGIT_LETTER.sub("", normalise_text(value))


@functools.lru_cache(maxsize=1 << 16)
def normalise_street(value: str) -> str:
    """A street: :func:`normalise_text`, each token through :data:`STREET_WORDS`."""
    return " ".join(STREET_WORDS.get(token, token) for token in normalise_text(value).split())


@functools.lru_cache(maxsize=1 << 16)
def normalise_unit(value: str) -> str:
    """A unit: :func:`normalise_text` without the designators of :data:`UNIT_WORDS` (``"#"`` is punctuation)."""
    tokens = [t for t in normalise_text(value).split() if t not in UNIT_WORDS]
    return _DIGIT_LETTER.sub("", " ".join(tokens))


def _digest(text: str) -> int:
    """A non-zero 64-bit BLAKE2b digest."""
    data = text.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") | 1


@functools.lru_cache(maxsize=1 << 16)
def _number_digest(value: str) -> int:
    normalised = normalise_number(value)
    return _digest(normalised) if normalised else 0


@functools.lru_cache(maxsize=1 << 16)
def _street_digest(value: str) -> int:
    normalised = normalise_street(value)
    return _digest(normalised) if normalised else 0


@functools.lru_cache(maxsize=1 << 12)
def _unit_digest(value: str) -> int:
    return _digest(normalise_unit(value))


def _combine(number: Any, street: Any, unit: Any) -> Any:
    """The key of each row from its three parts' digests (uint64 arrays): mixed in turn, so order matters."""
    return _mix(_mix(_mix(number, 21) ^ street, 22) ^ unit, 23)


def address_key(number: str, street: str, unit: str) -> int | None:
    """The 64-bit key of the normalised number, street and unit (each part's digest, cached, then mixed); None
    when the number or street normalises to nothing."""
    n, s = _number_digest(number), _street_digest(street)
    if not n or not s:
        return None
    parts = (np.array([v], dtype=np.uint64) for v in (n, s, _unit_digest(unit)))
    return int(_combine(*parts)[0])


def hash_digest(value: str) -> int:
    """The tie-break value of a row's ``HASH``: its 16 hex digits as a number (the text's own order), any other
    text by its 64-bit BLAKE2b digest."""
    if len(value) == 16:
        with contextlib.suppress(ValueError):
            if value == value.lower():
                return int(value, 16)
    return _digest(value)


# --------------------------------------------------------------------------------------------------------------
# Geometry


def haversine_m(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> Any:
    """Great-circle distance in metres (haversine, mean Earth radius); numbers or numpy arrays. Symmetric, and
    right across the antimeridian (only the sine of half the longitude difference enters)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def bbox_area_m2(west: float, south: float, east: float, north: float) -> float:
    """Area of a longitude/latitude box on the sphere: R² · Δλ · (sin φn − sin φs), in m²."""
    return (
        EARTH_RADIUS_M**2
        * math.radians(max(east - west, 0.0))
        * (math.sin(math.radians(north)) - math.sin(math.radians(south)))
    )


@dataclass
class _Box:
    """Bounding box of a source's rows, in [-180, 180) and in [0, 360) longitudes (the narrower is its box)."""

    south: float = math.inf
    north: float = -math.inf
    west: float = math.inf
    east: float = -math.inf
    west360: float = math.inf
    east360: float = -math.inf

    def add(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> None:
        keep = ~((lon == 0.0) & (lat == 0.0))  # zero-island rows are errors, not coverage
        lon, lat = lon[keep], lat[keep]
        if not lon.size:
            return
        shifted = np.mod(lon, 360.0)
        self.south, self.north = min(self.south, float(lat.min())), max(self.north, float(lat.max()))
        self.west, self.east = min(self.west, float(lon.min())), max(self.east, float(lon.max()))
        self.west360, self.east360 = (
            min(self.west360, float(shifted.min())),
            max(self.east360, float(shifted.max())),
        )

    def area(self) -> float:
        """m²; infinite for a source without rows. A box across the antimeridian is measured in [0, 360)."""
        if self.south > self.north:
            return math.inf
        return source_area_m2(self.south, self.north, min(self.east - self.west, self.east360 - self.west360))


#: Degrees added on each side of a source's box before it is measured (≈ 110 m of latitude).
AREA_PAD_DEGREES = 0.001


def source_area_m2(south: float, north: float, width: float) -> float:
    """The area of a source: its rows' box (latitudes, longitude width) grown by :data:`AREA_PAD_DEGREES` on
    every side, so that a source along one street or at one point still has an area that grows with its extent;
    rounded to three significant figures, so that sources of practically the same extent tie (and go on to the
    source path) instead of being told apart by rounding."""
    south, north = max(south - AREA_PAD_DEGREES, -90.0), min(north + AREA_PAD_DEGREES, 90.0)
    return float(f"{bbox_area_m2(0.0, south, min(width + 2 * AREA_PAD_DEGREES, 360.0), north):.2e}")


class Grid:
    """The cells of the dedupe (module docstring): ``cell_degrees`` squares, columns modulo 360°, one cell per
    latitude row beyond ±:data:`POLAR_CAP_LATITUDE`."""

    def __init__(
        self, cell_degrees: float = DEFAULT_CELL_DEGREES, distance_m: float = DEFAULT_DISTANCE_M
    ) -> None:
        if not 0 < cell_degrees <= 1 or round(360 / cell_degrees) * cell_degrees != 360:
            raise ValueError(f"cell size {cell_degrees}° must divide 360°")
        self.size = cell_degrees
        self.rows = math.ceil(180 / cell_degrees)
        self.cols = round(360 / cell_degrees)
        self.delta = distance_m / EARTH_RADIUS_M  # radians
        self.cap_south = self.row(-POLAR_CAP_LATITUDE) - 1  # rows <= this are polar cells
        self.cap_north = self.row(POLAR_CAP_LATITUDE) + 1  # rows >= this are polar cells
        self.tile = max(1, round(1 / cell_degrees))  # cells per 1° tile side

    def row(self, lat: Any) -> Any:
        """Latitude row of each latitude (clamped to the grid)."""
        return np.clip(np.floor((np.asarray(lat, dtype=float) + 90.0) / self.size), 0, self.rows - 1).astype(
            np.int64
        )

    def col(self, lon: Any) -> Any:
        """Column without the modulo (callers reduce it)."""
        return np.floor((np.asarray(lon, dtype=float) + 180.0) / self.size).astype(np.int64)

    def is_cap(self, row: Any) -> Any:
        """Whether each latitude row is a polar one (one cell around the pole)."""
        return (row <= self.cap_south) | (row >= self.cap_north)

    def cell(self, row: Any, col: Any) -> Any:
        """Cell id of each (row, column): columns modulo the circle, column 0 in a polar row."""
        col = np.where(self.is_cap(row), 0, np.mod(col, self.cols))
        return row * self.cols + col

    def home(self, lon: Any, lat: Any) -> Any:
        """Home cell of each point."""
        return self.cell(self.row(lat), self.col(lon))

    def emissions(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> tuple[Any, Any]:
        """For each point, every cell it must be written to: (point index, cell) arrays, the home cell included
        once (the caller marks which one is home)."""
        delta_deg = math.degrees(self.delta) * (1 + 1e-9) + _MARGIN_DEGREES
        r_lo, r_hi = self.row(lat - delta_deg), self.row(lat + delta_deg)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = math.sin(self.delta) / np.cos(np.radians(np.abs(lat) + math.degrees(self.delta)))
        # A point near enough to a pole for its cap to hold the pole is only ever in polar rows (the cap is 0.1°).
        ratio = np.where((ratio >= 1) | ~np.isfinite(ratio) | (ratio < 0), 1.0, ratio)
        half = np.degrees(np.arcsin(ratio)) * (1 + 1e-9) + _MARGIN_DEGREES
        c_lo, c_hi = self.col(lon - half), self.col(lon + half)
        all_cap = self.is_cap(r_lo) & self.is_cap(r_hi) & ((r_lo > self.cap_south) == (r_hi > self.cap_south))
        ncols = np.where(all_cap, 1, np.minimum(c_hi - c_lo + 1, self.cols))
        nrows = r_hi - r_lo + 1
        points, cells = [], []
        for dr in range(int(nrows.max(initial=1))):
            for dc in range(int(ncols.max(initial=1))):
                row = r_lo + dr
                ok = (dr < nrows) & (dc < ncols)
                cap = self.is_cap(row)
                ok &= ~cap | (dc == 0)
                idx = np.flatnonzero(ok)
                points.append(idx)
                cells.append(self.cell(row[idx], (c_lo + dc)[idx]))
        point = np.concatenate(points)
        cell = np.concatenate(cells)
        # Different (dr, dc) can reach the same polar cell only once per row; columns modulo 360° can repeat
        # only when a range covers every column, which is capped above. Remove exact repeats anyway.
        pairs = np.unique(np.stack([point, cell]), axis=1)
        return pairs[0], pairs[1]

    def tile_of(self, cell: Any) -> Any:
        """The 1° tile of each cell (the first-level spill file is a hash of it)."""
        row, col = np.divmod(cell, self.cols)
        return (row // self.tile) * (self.cols // self.tile + 1) + col // self.tile


def _mix(values: Any, salt: int) -> Any:
    """splitmix64 of int64/uint64 values (wrapping arithmetic), to spread cells and keys over spill files."""
    z = np.asarray(values).astype(np.uint64) + np.uint64(
        (0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF
    )
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# --------------------------------------------------------------------------------------------------------------
# The sharded dedupe


@dataclass(frozen=True)
class Member:
    """One source (a CSV member of a collection): its name, the source path of the tie-break, and its region
    (an index; -1 for none)."""

    name: str
    path: str
    region: int = -1


@dataclass
class DedupeStats:
    """What a dedupe did: rows read, rows with a key, spill records (homes and guests), shards decided, the
    largest shard (records), shards split again, the deepest split level, pairs that matched, rows dropped from
    global and from their region, and the seconds spent reading and spilling, deciding, and writing the
    ``-processed`` collections."""

    rows: int = 0
    keyed: int = 0
    records: int = 0
    shards: int = 0
    largest_shard: int = 0
    splits: int = 0
    depth: int = 0
    pairs: int = 0
    dropped_global: int = 0
    dropped_regional: int = 0
    seconds_read: float = 0.0
    seconds_decide: float = 0.0
    seconds_write: float = 0.0


class Deduper:
    """The sharded dedupe of one universe of rows (module docstring): :meth:`add` every row, :meth:`finish`,
    then :meth:`decisions` for consecutive ordinal ranges.

    :param work: an empty folder for the spill files (removed by the caller)
    :param members: the sources; rows name theirs by index
    """

    def __init__(
        self,
        work: Path,
        members: Sequence[Member],
        *,
        distance_m: float = DEFAULT_DISTANCE_M,
        cell_degrees: float = DEFAULT_CELL_DEGREES,
        partitions: int = DEFAULT_PARTITIONS,
        shard_rows: int = DEFAULT_SHARD_ROWS,
    ) -> None:
        if distance_m <= 0 or distance_m > 1000:
            raise ValueError(f"dedupe distance {distance_m} m must be within (0, 1000]")
        self.work = work
        self.members = list(members)
        self.distance = distance_m
        self.grid = Grid(cell_degrees, distance_m)
        self.partitions = partitions
        self.shard_rows = max(2, shard_rows)
        self.boxes = [_Box() for _ in self.members]
        self.stats = DedupeStats()
        self._pending: list[tuple[int, float, float, str, str, str, str, str]] = []
        self._spills = [work / f"spill-{p}.bin" for p in range(partitions)]
        self._handles: list[IO[bytes]] | None = [path.open("wb") for path in self._spills]
        self._drop_files: list[Path] = []
        self._drop_sizes: list[int] = []
        self._drop_first: list[int] = []
        self._heap: list[tuple[int, int, int]] = []
        self._heap_at = -1

    def add(
        self,
        member: int,
        lon: float,
        lat: float,
        number: str,
        street: str,
        unit: str,
        postcode: str,
        row_hash: str,
    ) -> int:
        """Add one row (valid coordinates, or NaN for a row never to be matched); return its ordinal (0, 1, … in the
        order added)."""
        self._pending.append((member, lon, lat, number, street, unit, postcode, row_hash))
        if len(self._pending) >= _BATCH:
            self._flush()
        return self.stats.rows + len(self._pending) - 1

    def add_rows(self, member: int, rows: Sequence[Sequence[str]]) -> None:
        """Add a batch of one source's collection rows (the 11 output columns), in order; a row whose coordinates
        are not numbers, or that is short of columns, is never matched."""
        self._flush()
        if not rows:
            return
        try:
            lon = np.array([r[0] for r in rows], dtype=np.float64)
            lat = np.array([r[1] for r in rows], dtype=np.float64)
        except ValueError:
            lon = np.array([_coordinate(r[0]) for r in rows], dtype=np.float64)
            lat = np.array([_coordinate(r[1]) for r in rows], dtype=np.float64)
        self._spill(
            np.full(len(rows), member, dtype=np.int32),
            lon,
            lat,
            [(r[2], r[3], r[4], r[8], r[10]) if len(r) >= _WIDTH else _SHORT for r in rows],
        )

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._spill(
            np.array([p[0] for p in pending], dtype=np.int32),
            np.array([p[1] for p in pending], dtype=np.float64),
            np.array([p[2] for p in pending], dtype=np.float64),
            [p[3:] for p in pending],
        )

    def _spill(
        self,
        member: NDArray[np.int32],
        lon: NDArray[np.float64],
        lat: NDArray[np.float64],
        fields: Sequence[Sequence[str]],
    ) -> None:
        """Key, box and spill a batch: ``fields`` is number, street, unit, postcode and HASH per row."""
        assert self._handles is not None
        n = member.size
        ordinal = np.arange(self.stats.rows, self.stats.rows + n, dtype=np.int64)
        self.stats.rows += n
        numbers = np.fromiter((_number_digest(f[0]) for f in fields), dtype=np.uint64, count=n)
        streets = np.fromiter((_street_digest(f[1]) for f in fields), dtype=np.uint64, count=n)
        valid = (lon == lon) & (lat == lat)
        keyed = valid & (numbers != 0) & (streets != 0)
        for m in np.unique(member[valid]).tolist():
            mask = valid & (member == m)
            self.boxes[m].add(lon[mask], lat[mask])
        chosen = np.flatnonzero(keyed)
        self.stats.keyed += int(chosen.size)
        if not chosen.size:
            return
        units = np.fromiter(
            (_unit_digest(fields[i][2]) for i in chosen.tolist()), dtype=np.uint64, count=chosen.size
        )
        key = _combine(numbers[chosen], streets[chosen], units)
        digest = np.fromiter(
            (hash_digest(fields[i][4]) for i in chosen.tolist()), dtype=np.uint64, count=chosen.size
        )
        postcode = np.fromiter(
            (bool(fields[i][3].strip()) for i in chosen.tolist()), dtype=bool, count=chosen.size
        )
        member, lon, lat, ordinal = member[chosen], lon[chosen], lat[chosen], ordinal[chosen]
        point, cell = self.grid.emissions(lon, lat)
        home = self.grid.home(lon, lat)
        records = np.empty(point.size, dtype=RECORD)
        records["cell"] = cell
        records["key"] = key[point]
        records["lon"] = lon[point]
        records["lat"] = lat[point]
        records["ordinal"] = ordinal[point]
        records["hash"] = digest[point]
        records["member"] = member[point]
        records["flags"] = np.where(cell == home[point], _HOME, 0) | np.where(postcode[point], _POSTCODE, 0)
        self.stats.records += records.size
        self._scatter(records, self._partition(records, 0), self._handles)

    def _partition(self, records: NDArray[Any], level: int) -> Any:
        if level == 0:
            mixed = _mix(self.grid.tile_of(records["cell"]), 0)
        elif level == 1:
            mixed = _mix(records["cell"], 1)
        else:
            mixed = _mix(_mix(records["cell"], level) ^ records["key"], level)
        return (mixed % np.uint64(self.partitions)).astype(np.int64)

    @staticmethod
    def _scatter(records: NDArray[Any], part: Any, handles: Sequence[IO[bytes]]) -> None:
        order = np.argsort(part, kind="stable")
        part = part[order]
        bounds = np.searchsorted(part, np.arange(len(handles) + 1))
        for p, handle in enumerate(handles):
            if bounds[p] < bounds[p + 1]:
                handle.write(records[order[bounds[p] : bounds[p + 1]]].tobytes())

    def finish(self) -> DedupeStats:
        """Decide every shard; the spill files are removed as they are read."""
        self._flush()
        assert self._handles is not None
        for handle in self._handles:
            handle.close()
        self._handles = None
        areas = np.array([box.area() for box in self.boxes], dtype=float)
        # Dense rank of (area, path): sources with equal area and path tie here and go on to the row hash.
        order = sorted(range(len(self.members)), key=lambda m: (areas[m], self.members[m].path))
        self._source_rank = np.zeros(len(self.members), dtype=np.int64)
        rank, last = -1, None
        for m in order:
            current = (areas[m], self.members[m].path)
            if current != last:
                rank, last = rank + 1, current
            self._source_rank[m] = rank
        self._region = np.array([m.region for m in self.members] or [0], dtype=np.int64)
        for path in self._spills:
            self._shard(path, 1)
        return self.stats

    def close(self) -> None:
        """Close the spill files and let go of the decisions (the caller removes the folder)."""
        if self._handles is not None:
            for handle in self._handles:
                handle.close()
            self._handles = None
        self._heap = []

    def _shard(self, path: Path, level: int) -> None:
        size = path.stat().st_size // RECORD.itemsize
        if size == 0:
            path.unlink()
            return
        if size > self.shard_rows and level <= 8:
            subs = [path.with_name(f"{path.stem}-{p}.bin") for p in range(self.partitions)]
            with contextlib.ExitStack() as stack:
                handles = [stack.enter_context(sub.open("wb")) for sub in subs]
                # read, not mapped: a mapped file's pages would stay counted in the process's memory
                with path.open("rb") as spilled:
                    while (chunk := np.fromfile(spilled, dtype=RECORD, count=self.shard_rows)).size:
                        self._scatter(chunk, self._partition(chunk, level), handles)
            sizes = [sub.stat().st_size for sub in subs]
            if max(sizes) < path.stat().st_size or level < 2:
                path.unlink()
                self.stats.splits += 1
                self.stats.depth = max(self.stats.depth, level)
                for sub in subs:
                    self._shard(sub, level + 1)
                return
            for sub in subs:  # one cell and one key: cannot be split; decided as it is
                sub.unlink()
            log.warning("Dedupe: a shard of %d rows shares one cell and one key; decided whole", size)
        records = np.fromfile(path, dtype=RECORD)
        path.unlink()
        self.stats.shards += 1
        self.stats.largest_shard = max(self.stats.largest_shard, records.size)
        drops = self._decide(records)
        if drops.size:
            out = path.with_name(f"drops-{len(self._drop_files)}.bin")
            drops.tofile(out)
            self._drop_files.append(out)
            self._drop_sizes.append(drops.size)
            self._drop_first.append(int(drops["ordinal"][0]))

    def _decide(self, rec: NDArray[Any]) -> NDArray[Any]:
        """The dropped home rows of one shard, sorted by ordinal."""
        n = rec.size
        member = rec["member"].astype(np.int64)
        no_postcode = (rec["flags"] & _POSTCODE) == 0
        by_priority = np.lexsort(
            (rec["ordinal"], member, rec["hash"], self._source_rank[member], no_postcode)
        )
        rank = np.empty(n, dtype=np.int64)
        rank[by_priority] = np.arange(n)
        order = np.lexsort((rec["key"], rec["cell"]))
        cell, key = rec["cell"][order], rec["key"][order]
        starts = np.flatnonzero(np.r_[True, (cell[1:] != cell[:-1]) | (key[1:] != key[:-1])])
        sizes = np.diff(np.r_[starts, n])
        best_g = np.full(n, n, dtype=np.int64)
        best_r = np.full(n, n, dtype=np.int64)
        home = (rec["flags"] & _HOME) != 0
        region = self._region[member]
        lon, lat = rec["lon"], rec["lat"]

        def compare(i: Any, j: Any) -> None:
            ok = home[i] & (member[i] != member[j]) & (rank[j] < rank[i])
            i, j = i[ok], j[ok]
            ok = haversine_m(lon[i], lat[i], lon[j], lat[j]) <= self.distance
            i, j = i[ok], j[ok]
            self.stats.pairs += int(i.size)
            np.minimum.at(best_g, i, rank[j])
            same = (region[i] == region[j]) & (region[i] >= 0)
            np.minimum.at(best_r, i[same], rank[j[same]])

        small = (sizes >= 2) & (sizes <= _PAIR_BLOCK)
        if small.any():
            g_start, g_size = starts[small], sizes[small]
            # every element of those groups, with its group's start and size
            elem_group = np.repeat(np.arange(g_start.size), g_size)
            elem = g_start[elem_group] + (
                np.arange(elem_group.size) - np.repeat(np.cumsum(g_size) - g_size, g_size)
            )
            elem_start, elem_size = g_start[elem_group], g_size[elem_group]
            # pairs, a chunk of elements at a time so no more than ~1 M pairs are built at once
            cum = np.cumsum(elem_size)
            begin = 0
            while begin < elem.size:
                end = int(np.searchsorted(cum, (cum[begin - 1] if begin else 0) + _PAIR_CHUNK, side="right"))
                end = max(end, begin + 1)
                e, s, z = elem[begin:end], elem_start[begin:end], elem_size[begin:end]
                i_sorted = np.repeat(e, z)
                j_sorted = np.repeat(s - np.cumsum(z) + z, z) + np.arange(int(z.sum()))
                compare(order[i_sorted], order[j_sorted])
                begin = end
        for start, size in zip(
            starts[sizes > _PAIR_BLOCK].tolist(), sizes[sizes > _PAIR_BLOCK].tolist(), strict=True
        ):
            group = order[start : start + size]
            for a in range(0, size, _PAIR_BLOCK):
                for b in range(0, size, _PAIR_BLOCK):
                    gi, gj = group[a : a + _PAIR_BLOCK], group[b : b + _PAIR_BLOCK]
                    compare(np.repeat(gi, gj.size), np.tile(gj, gi.size))
        dropped = np.flatnonzero(best_g < n)
        out = np.empty(dropped.size, dtype=DROP)
        out["ordinal"] = rec["ordinal"][dropped]
        out["member"] = member[dropped]
        out["kept_global"] = member[by_priority[best_g[dropped]]]
        regional = best_r[dropped]
        out["kept_regional"] = np.where(regional < n, member[by_priority[np.minimum(regional, n - 1)]], -1)
        self.stats.dropped_global += int(dropped.size)
        self.stats.dropped_regional += int((regional < n).sum())
        out.sort(order="ordinal")
        return out

    def decisions(self, start: int, stop: int) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
        """For the rows ``start`` ≤ ordinal < ``stop``: the member that beat each (-1: kept) in global and in
        its region. Meant for consecutive ranges: a heap of the decision files by their next ordinal touches only
        the files with decisions in the range, read from where the last range left them (any other call starts the
        heap afresh). Files are read, not mapped, so memory holds one chunk of each file touched."""
        kept_global = np.full(stop - start, -1, dtype=np.int32)
        kept_regional = np.full(stop - start, -1, dtype=np.int32)
        if self._heap_at != start:
            self._heap = [(first, i, 0) for i, first in enumerate(self._drop_first)]
            heapq.heapify(self._heap)
        while self._heap and self._heap[0][0] < stop:
            _, index, cursor = heapq.heappop(self._heap)
            size = self._drop_sizes[index]
            while cursor < size:
                part = np.fromfile(
                    self._drop_files[index], dtype=DROP, count=_DROP_CHUNK, offset=cursor * DROP.itemsize
                )
                part = part[part["ordinal"] >= start]  # a fresh heap starts files at their beginning
                inside = part[part["ordinal"] < stop]
                at = inside["ordinal"] - start
                kept_global[at] = inside["kept_global"]
                kept_regional[at] = inside["kept_regional"]
                done = int((part["ordinal"] < stop).sum())
                skipped = min(_DROP_CHUNK, size - cursor) - part.size
                cursor += skipped + done
                if done < part.size:  # the rest is for later ranges
                    heapq.heappush(self._heap, (int(part["ordinal"][done]), index, cursor))
                    break
        self._heap_at = stop
        return kept_global, kept_regional

    def reports(self) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
        """Rows dropped per (kept member, dropped member): from global, and from the dropped row's region."""
        found: list[dict[tuple[int, int], int]] = [{}, {}]
        width = np.int64(max(len(self.members), 1))
        for path in self._drop_files:
            drops = np.fromfile(path, dtype=DROP)
            for report, column in zip(found, ("kept_global", "kept_regional"), strict=True):
                kept = drops[column].astype(np.int64)
                dropped = drops["member"].astype(np.int64)
                mask = kept >= 0
                codes, counts = np.unique(kept[mask] * width + dropped[mask], return_counts=True)
                for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
                    pair = divmod(code, int(width))
                    report[pair] = report.get(pair, 0) + count
        return found[0], found[1]


# --------------------------------------------------------------------------------------------------------------
# The -processed collections


def processed_name(area: str, license_attr: str) -> str:
    """``openaddr-collected-<area>[-sa]-processed.zip``."""
    suffix = f"-{license_attr}" if license_attr else ""
    return f"openaddr-collected-{area}{suffix}-processed.zip"


def processed_readme(readme: str, distance_m: float, removed: int) -> str:
    """The collection's ``README.txt`` followed by what the dedupe removed."""
    return readme + (
        "\n"
        "This is the processed collection: address rows that another source in it also\n"
        "holds were removed. Two rows are the same address when their number, street\n"
        "and unit match after normalisation (case, accents, punctuation, street-type\n"
        f"abbreviations) and they lie within {distance_m:g} m of each other. Of two such rows from\n"
        "different sources the row with a postcode is kept, else the row of the source\n"
        "covering the smaller area, else the first by source path and row hash.\n"
        f"{removed} rows were removed; {REPORT_NAME} counts them per pair of sources.\n"
    )


@dataclass
class Processed:
    """One ``-processed`` collection written to a local file: rows kept and dropped (as written), its sources,
    and the report (kept source, dropped source) → rows (from the decisions; the two agree)."""

    area: str
    license_attr: str
    name: str
    path: Path
    address_count: int = 0
    dropped: int = 0
    sources: int = 0
    report: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class DedupeSettings:
    """The dedupe's parameters (module docstring)."""

    distance_m: float = DEFAULT_DISTANCE_M
    cell_degrees: float = DEFAULT_CELL_DEGREES
    partitions: int = DEFAULT_PARTITIONS
    shard_rows: int = DEFAULT_SHARD_ROWS


def _csv_members(archive: zipfile.ZipFile) -> list[str]:
    return [
        n
        for n in archive.namelist()
        if n.lower().endswith(".csv") and not n.startswith("summary/") and n != REPORT_NAME
    ]


def _rows(archive: zipfile.ZipFile, name: str) -> Iterator[tuple[list[str], str | None]]:
    """The records of a collection's CSV member (header skipped), each with its line when it has no quote
    character (then the line is the record as the writer would write it: minimal quoting), else None."""
    with archive.open(name) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        lines = iter(text)
        next(csv.reader(lines), None)
        for line in lines:
            if '"' not in line:
                stripped = line.rstrip("\r\n")
                if stripped:
                    yield stripped.split(","), stripped + "\r\n"
            else:
                row = next(csv.reader(itertools.chain((line,), lines)), [])
                if row:
                    yield row, None


def _coordinate(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _square_index(values: NDArray[np.float64]) -> NDArray[np.int64]:
    """:func:`openaddr.collect.archive.square`, column-wise."""
    i = np.floor(values * 10)
    i += (i + 1) / 10 <= values
    i -= i / 10 > values
    return i.astype(np.int64)


def build_processed(
    folder: Path,
    collections: Mapping[tuple[str, str], tuple[Path, Sequence[LicenseBlock]]],
    readme: str,
    date_time: tuple[int, int, int, int, int, int],
    source_paths: Mapping[str, str],
    settings: DedupeSettings = DedupeSettings(),
) -> tuple[list[Processed], dict[str, DedupeStats]]:
    """Dedupe each licence class of the address collections and write the ``-processed`` collections.

    :param folder: where the zips and the spill folders are written
    :param collections: (area, licence class) → the finished address collection and its licence blocks
    :param readme: the collections' ``README.txt``
    :param date_time: the members' time
    :param source_paths: CSV member without ``.csv`` → its source path (the tie-break); others use the member name
    :return: the processed collections in area and licence order, and the dedupe's figures per licence class
    """
    attrs = sorted({attr for _, attr in collections})
    built: dict[tuple[str, str], Processed] = {}
    stats: dict[str, DedupeStats] = {}
    for attr in attrs:
        processed, stats[attr] = _build_class(
            folder, attr, collections, readme, date_time, source_paths, settings
        )
        built.update(processed)
    order = [(area, attr) for area in AREAS for attr in attrs if (area, attr) in built]
    return [built[key] for key in order], stats


def _build_class(
    folder: Path,
    attr: str,
    collections: Mapping[tuple[str, str], tuple[Path, Sequence[LicenseBlock]]],
    readme: str,
    date_time: tuple[int, int, int, int, int, int],
    source_paths: Mapping[str, str],
    settings: DedupeSettings,
) -> tuple[dict[tuple[str, str], Processed], DedupeStats]:
    areas = [area for area in AREAS if (area, attr) in collections]
    regional_areas = [area for area in areas if area != "global"]
    region_of: dict[str, int] = {}
    for index, area in enumerate(regional_areas):
        with zipfile.ZipFile(collections[area, attr][0]) as archive:
            for name in _csv_members(archive):
                if name in region_of:
                    log.warning("Dedupe: %s is in two regional collections; decided with the first", name)
                    continue
                region_of[name] = index
    work = folder / f"dedupe-{attr or 'open'}"
    work.mkdir()
    written: dict[tuple[str, str], Processed] = {}
    zips: dict[str, CollectionZip] = {}
    with zipfile.ZipFile(collections["global", attr][0]) as source:
        names = _csv_members(source)
        members = [
            Member(
                name[: -len(".csv")],
                source_paths.get(name[: -len(".csv")], name[: -len(".csv")]),
                region_of.get(name, -1),
            )
            for name in names
        ]
        deduper = Deduper(
            work,
            members,
            distance_m=settings.distance_m,
            cell_degrees=settings.cell_degrees,
            partitions=settings.partitions,
            shard_rows=settings.shard_rows,
        )
        try:
            started = time.perf_counter()
            for index, name in enumerate(names):
                batch: list[list[str]] = []
                for row, _ in _rows(source, name):
                    batch.append(row)
                    if len(batch) >= _BATCH:
                        deduper.add_rows(index, batch)
                        batch = []
                deduper.add_rows(index, batch)
            read = time.perf_counter()
            figures = deduper.finish()
            figures.seconds_read, figures.seconds_decide = read - started, time.perf_counter() - read
            log.info(
                "Dedupe %s: %d rows, %d with a key, %d spill records in %d shards (largest %d), %d dropped",
                attr or "open", figures.rows, figures.keyed, figures.records, figures.shards, figures.largest_shard,
                figures.dropped_global,
            )  # fmt: skip
            global_report, regional_report = deduper.reports()
            for area in areas:
                name = processed_name(area, attr)
                region = regional_areas.index(area) if area != "global" else -1
                pairs = (
                    global_report
                    if region < 0
                    else {pair: n for pair, n in regional_report.items() if members[pair[1]].region == region}
                )
                report = {(members[k].name, members[d].name): n for (k, d), n in pairs.items()}
                written[area, attr] = Processed(area, attr, name, folder / name, report=report)
            try:
                for area in areas:
                    processed = written[area, attr]
                    removed = sum(processed.report.values())
                    text = processed_readme(readme, settings.distance_m, removed)
                    zips[area] = CollectionZip(processed.path, text, date_time)
                _write_members(source, names, regional_areas, region_of, deduper, zips, written, attr)
                for area in areas:
                    zips[area].write_text(REPORT_NAME, report_csv(written[area, attr].report))
                    zips[area].blocks = list(collections[area, attr][1])
                    zips[area].close()
                figures.seconds_write = time.perf_counter() - read - figures.seconds_decide
            except BaseException:
                for target in zips.values():
                    target.discard()
                raise
        finally:
            deduper.close()
            for leftover in sorted(work.iterdir()):
                leftover.unlink()
            work.rmdir()
    return written, figures


def _write_members(
    source: zipfile.ZipFile,
    names: Sequence[str],
    regional_areas: Sequence[str],
    region_of: Mapping[str, int],
    deduper: Deduper,
    zips: Mapping[str, CollectionZip],
    written: Mapping[tuple[str, str], Processed],
    attr: str,
) -> None:
    """Every member of the global collection, in its order, into the processed global collection and (when the
    member is in one) its regional one: CSVs without the dropped rows and with a new summary, others copied."""
    csv_names = set(names)
    ordinal = 0
    for info in source.infolist():
        name = info.filename
        if name in ("README.txt", "LICENSE.txt") or name.startswith("summary/") or info.is_dir():
            continue
        region = region_of.get(name if name in csv_names else f"{name.rsplit('.', 1)[0]}.csv", -1)
        areas = ["global"] + ([regional_areas[region]] if region >= 0 else [])
        targets = [zips[area] for area in areas]
        if name not in csv_names:
            data = source.read(name)
            for target in targets:
                with target.member(name) as handle:
                    handle.write(data)
            continue
        squares: list[dict[tuple[int, int], int]] = [{} for _ in areas]
        counts = [[0, 0] for _ in areas]  # rows kept, rows dropped
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(target.member(name)) for target in targets]
            for handle in handles:
                handle.write(_HEADER)
            batch: list[tuple[list[str], str | None]] = []
            for row in itertools.chain(_rows(source, name), [None]):
                if row is not None:
                    batch.append(row)
                if batch and (row is None or len(batch) >= _BATCH):
                    decided = deduper.decisions(ordinal, ordinal + len(batch))
                    ordinal += len(batch)
                    _write_batch(
                        batch,
                        [decided[0] if a == "global" else decided[1] for a in areas],
                        handles,
                        squares,
                        counts,
                    )
                    batch.clear()
        csv_name, vrt_name = summary_names(name)
        for area, target, square_counts, (kept, dropped) in zip(areas, targets, squares, counts, strict=True):
            with target.member(csv_name) as handle:
                for chunk in summary_csv(square_counts):
                    handle.write(chunk.encode("utf-8"))
            target.write_text(vrt_name, summary_vrt(csv_name.rsplit("/", 1)[-1]))
            target.address_count += kept
            processed = written[area, attr]
            processed.address_count += kept
            processed.dropped += dropped
            processed.sources += 1


_HEADER = (",".join(OUTPUT_COLUMNS) + "\r\n").encode()


def _write_batch(
    batch: Sequence[tuple[list[str], str | None]],
    beaten: Sequence[NDArray[np.int32]],
    handles: Sequence[IO[bytes]],
    squares: Sequence[dict[tuple[int, int], int]],
    counts: Sequence[list[int]],
) -> None:
    """Write a batch's kept rows to each target (``beaten[t] < 0``), counting their squares, kept and dropped."""
    lon = np.array([_coordinate(r[0]) for r, _ in batch])
    lat = np.array([_coordinate(r[1]) for r, _ in batch])
    side = io.StringIO()
    writer = csv.writer(side, lineterminator="\r\n")
    lines = []
    for row, line in batch:
        if line is None:
            writer.writerow(row)
            line = side.getvalue()
            side.seek(0)
            side.truncate()
        lines.append(line)
    for t, handle in enumerate(handles):
        keep = beaten[t] < 0
        handle.write("".join(itertools.compress(lines, keep.tolist())).encode("utf-8", "surrogateescape"))
        kept = int(keep.sum())
        counts[t][0] += kept
        counts[t][1] += len(batch) - kept
        _count(lon[keep], lat[keep], squares[t])


def _count(lon: NDArray[np.float64], lat: NDArray[np.float64], squares: dict[tuple[int, int], int]) -> None:
    valid = (lon == lon) & (lat == lat)
    if not valid.any():
        return
    keys = (_square_index(lat[valid]) + 1000) * 10_000 + (_square_index(lon[valid]) + 2000)
    found, counts = np.unique(keys, return_counts=True)
    for key, count in zip(found.tolist(), counts.tolist(), strict=True):
        square_key = (key // 10_000 - 1000, key % 10_000 - 2000)
        squares[square_key] = squares.get(square_key, 0) + count


def report_csv(report: Mapping[tuple[str, str], int]) -> str:
    """The report: ``kept_source,dropped_source,count`` per pair of sources, by kept then dropped source."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for (kept, dropped), count in sorted(report.items()):
        writer.writerow((kept, dropped, count))
    return out.getvalue()


__all__ = [
    "DEFAULT_DISTANCE_M",
    "REPORT_NAME",
    "STREET_WORDS",
    "UNIT_WORDS",
    "DedupeSettings",
    "DedupeStats",
    "Deduper",
    "Grid",
    "Member",
    "Processed",
    "address_key",
    "bbox_area_m2",
    "source_area_m2",
    "build_processed",
    "haversine_m",
    "normalise_number",
    "normalise_street",
    "normalise_text",
    "normalise_unit",
    "processed_name",
    "processed_readme",
    "report_csv",
    "summary_names",
]
