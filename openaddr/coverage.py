"""The coverage check of the quality gate (issue 14): how many of a run's points lie outside its source's country
or, where the source names one that ships, its state or province.

``stats.json`` gets ``outside_coverage`` (:data:`openaddr.quality.OUTSIDE_COVERAGE_KEY`), the rows with valid
coordinates outside the source's country grown by :data:`BUFFER_DEGREES`, and ``coverage_country``, the ISO 3166-1
alpha-2 code it was checked against; the gate holds a run when more than 1 % of its rows are outside.

* **Boundaries**: the country polygons of the preview's basemap (Natural Earth 1:50m Admin 0, ``openaddr/basemap/``),
  decoded by :func:`openaddr.preview.basemap_topology`; and for the United States, Canada, Australia and Brazil
  their states and provinces (Natural Earth Admin 1, simplified to about 1:50m: :data:`SUBDIVISIONS`).
* **Subdivision**: where a source names one of those (:func:`source_subdivision`: ``coverage["ISO 3166"]`` with a
  subdivision part, ``US-CA``, else the second folder of its path, ``sources/us/ca/…`` → US-CA), its points are
  counted against that subdivision instead of the whole country, so a Californian source with points in Nevada
  is flagged. ``stats.json`` then also gets ``coverage_subdivision``. A subdivision named but not shipped
  (``sources/us/pr/…``: Natural Earth draws Puerto Rico as a country) is checked against its country, and the log
  says so.
* **Country**: ``coverage["ISO 3166"]["alpha2"]`` (its part before ``-`` for a subdivision such as ``US-CA``),
  else ``coverage.country``, else the first segment of the source's path below ``sources/`` (``us/ca/…`` → US);
  mapped to the feature's ISO numeric id by :mod:`openaddr.basemap.iso3166`. A source with no such country (a path
  like ``world/…``, a code that is not a country, or a territory too small for 1:50m) is not checked, and its log
  says why.
* **Buffer**: :data:`BUFFER_DEGREES` (0.1°: 11 km north–south, 5.6 km east–west at 60°). 1:50m outlines are
  generalised: small islands are left out and coasts smoothed by kilometres, so a tight buffer would count real
  addresses on islets and fjords; the mistakes the rule is for (a wrong projection, swapped axes, another
  country's data) put points hundreds of kilometres away.
* **Antimeridian**: rings are made continuous across ±180° (as for the preview), and a buffered country that reaches
  past ±180° is also copied 360° the other way, so Fiji, Russia's Chukotka or the Aleutians contain their points on
  both sides.
* **Cost**: the country is buffered and prepared once per process; points are tested in one vectorised
  ``shapely.contains_xy`` call per chunk, on the coordinates the preview reads anyway (no second read).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from openaddr.basemap.iso3166 import ALIASES, BY_NAME, NOT_DRAWN, NUMERIC, PART_OF

if TYPE_CHECKING:
    from collections.abc import Mapping

    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]

log = logging.getLogger(__name__)

#: The ``stats.json`` key of the count (the quality gate's coverage rule reads it).
OUTSIDE_COVERAGE_KEY = "outside_coverage"
#: How far beyond its country's outline a point still counts as inside, in degrees.
BUFFER_DEGREES = 0.1
#: Points tested at a time (bounds the temporary arrays).
CHUNK = 1_000_000
#: Side of the cells points are binned into before testing (:func:`_inside`), in degrees.
CELL_DEGREES = 0.1

_CODE = re.compile(r"^[A-Za-z]{2}$")
#: The subdivision part of an ISO 3166-2 code (``CA``, ``NSW``, ``974``).
_SUBDIVISION = re.compile(r"^[A-Za-z0-9]{1,3}$")
#: The states and provinces of the United States, Canada, Australia and Brazil (see ``basemap/README.md``).
SUBDIVISIONS = Path(__file__).parent / "basemap" / "subdivisions-us-ca-au-br.json"


@dataclass(frozen=True)
class Country:
    """The country a source is checked against: its alpha-2 code, where the code came from and the feature; and
    the subdivision checked instead of the whole country, when the source names one that ships
    (:func:`source_subdivision`)."""

    code: str
    origin: str
    feature: str
    #: The ISO 3166-2 code of the subdivision (``US-CA``) the points are counted against, or None: the country.
    subdivision: str | None = None
    #: Where the subdivision came from, or why a subdivision the source names is not checked.
    subdivision_note: str | None = None

    @property
    def area_name(self) -> str:
        """What the points are counted against: the subdivision's code, else the country's."""
        return self.subdivision or self.code

    @property
    def area_origin(self) -> str:
        """Where the checked area's code came from."""
        return self.subdivision_note if self.subdivision and self.subdivision_note else self.origin


@dataclass(frozen=True)
class NoCheck:
    """Why a source is not checked."""

    reason: str


def _code_from(document: Mapping[str, Any], source_path: PurePath | str) -> tuple[str, str] | None:
    """The (raw) country code of a source and where it came from, or None."""
    coverage = document.get("coverage")
    if isinstance(coverage, dict):
        iso = coverage.get("ISO 3166")
        alpha2 = iso.get("alpha2") if isinstance(iso, dict) else iso
        if isinstance(alpha2, str) and alpha2.strip():
            return alpha2.strip().split("-", 1)[0], 'coverage "ISO 3166"'
        country = coverage.get("country")
        if isinstance(country, str) and country.strip():
            return country.strip(), "coverage.country"
    parts = PurePath(source_path).parts
    if "sources" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("sources") + 1 :]
        if len(below) > 1:  # a directory below sources/: its first one
            return below[0], "the source's path"
    return None


def source_country(document: Mapping[str, Any], source_path: PurePath | str) -> Country | NoCheck:
    """The country of a source (see the module's notes) with its subdivision (:func:`source_subdivision`), or why it
    has none that can be checked."""
    country = _source_country(document, source_path)
    if isinstance(country, NoCheck):
        return country
    found = source_subdivision(document, source_path, country.code)
    if found is None:
        return country
    code, origin = found
    if code in subdivision_codes():
        return dataclasses.replace(country, subdivision=code, subdivision_note=origin)
    note = f"{origin} names {code}, whose boundary does not ship: checked against {country.code}"
    return dataclasses.replace(country, subdivision_note=note)


def source_subdivision(
    document: Mapping[str, Any], source_path: PurePath | str, country: str
) -> tuple[str, str] | None:
    """The ISO 3166-2 code of the subdivision a source names in ``country`` (alpha-2) and where it came from, or
    None: ``coverage["ISO 3166"]`` with a subdivision part (``US-CA``), else, when the first folder of the path below
    ``sources/`` is the country, the second (``sources/us/ca/berkeley.json`` → ``US-CA``). Only countries whose
    subdivisions ship (:func:`subdivision_codes`) are looked at."""
    if country not in {code.split("-", 1)[0] for code in subdivision_codes()}:
        return None
    coverage = document.get("coverage")
    iso = coverage.get("ISO 3166") if isinstance(coverage, dict) else None
    alpha2 = iso.get("alpha2") if isinstance(iso, dict) else iso
    if isinstance(alpha2, str) and "-" in alpha2:
        head, part = alpha2.strip().upper().split("-", 1)
        if ALIASES.get(head, head) == country and _SUBDIVISION.match(part):
            return f"{country}-{part}", 'coverage "ISO 3166"'
    parts = PurePath(source_path).parts
    if "sources" in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1].index("sources") + 1 :]
        if len(below) > 2 and below[0].upper() == country and _SUBDIVISION.match(below[1]):
            return f"{country}-{below[1].upper()}", "the source's path"
    return None


def _source_country(document: Mapping[str, Any], source_path: PurePath | str) -> Country | NoCheck:
    found = _code_from(document, source_path)
    if found is None:
        return NoCheck(
            "it names no country (no coverage country or ISO 3166 code, no country folder in its path)"
        )
    raw, origin = found
    if not _CODE.match(raw):
        return NoCheck(f"{origin} {raw!r} is not a two-letter country code")
    code = ALIASES.get(raw.upper(), raw.upper())
    if code in NOT_DRAWN:
        return NoCheck(f"{origin} {raw!r}: the territory is too small for Natural Earth's 1:50m countries")
    if code in NUMERIC or code in PART_OF:
        return Country(code, origin, NUMERIC.get(code) or PART_OF[code])
    if code in BY_NAME:
        return Country(code, origin, BY_NAME[code])
    return NoCheck(f"{origin} {raw!r} is not a country of Natural Earth's 1:50m countries")


def _polygons(rings: list[FloatArray]) -> Any:
    """A polygon from continuous rings, holes moved by 360° where needed to lie with their exterior."""
    import shapely

    from openaddr.preview import unwrap_ring

    exterior, *holes = (unwrap_ring(r) for r in rings)
    middle = (exterior[:, 0].min() + exterior[:, 0].max()) / 2
    moved = [h + (360.0 * round((middle - h[:, 0].mean()) / 360.0), 0.0) for h in holes]
    return shapely.Polygon(exterior, moved)


@functools.cache
def country_area(feature: str) -> Any:
    """The prepared, buffered area of a feature of the basemap (an ISO numeric id or a name), copied across the
    antimeridian where it reaches past it.

    :raises KeyError: no such feature
    """
    import shapely

    from openaddr.preview import basemap_topology, topology_polygons, topology_ring

    topology, arcs = basemap_topology()
    polygons = [
        _polygons([topology_ring(arcs, ring) for ring in polygon])
        for geometry in topology["objects"]["countries"]["geometries"]
        if feature in (geometry.get("id"), geometry.get("properties", {}).get("name"))
        for polygon in topology_polygons(geometry)
    ]
    if not polygons:
        raise KeyError(feature)
    return _prepared(shapely.buffer(shapely.MultiPolygon(polygons), BUFFER_DEGREES, quad_segs=4))


@functools.cache
def _subdivision_features() -> dict[str, Any]:
    """ISO 3166-2 code → the GeoJSON geometry of :data:`SUBDIVISIONS`."""
    collection = json.loads(SUBDIVISIONS.read_text(encoding="utf-8"))
    return {feature["properties"]["code"]: feature["geometry"] for feature in collection["features"]}


def subdivision_codes() -> frozenset[str]:
    """The ISO 3166-2 codes of the subdivisions that ship."""
    return frozenset(_subdivision_features())


@functools.cache
def subdivision_area(code: str) -> Any:
    """The prepared, buffered area of a subdivision (an ISO 3166-2 code of :func:`subdivision_codes`), copied
    across the antimeridian where it reaches past it (Natural Earth cuts Alaska's Aleutians at ±180°).

    :raises KeyError: no such subdivision
    """
    import shapely
    from shapely.geometry import shape

    geometry = shape(_subdivision_features()[code])
    return _prepared(shapely.buffer(geometry, BUFFER_DEGREES, quad_segs=4))


def _prepared(area: Any) -> Any:
    """A buffered area, also copied 360° the other way where it reaches past ±180°, prepared."""
    import shapely

    west, _, east, _ = area.bounds
    copies = [area]
    if west < -180:
        copies.append(shapely.transform(area, lambda xy: xy + (360.0, 0.0)))
    if east > 180:
        copies.append(shapely.transform(area, lambda xy: xy - (360.0, 0.0)))
    area = shapely.union_all(copies)
    shapely.prepare(area)
    return area


@dataclass
class OutsideCounter:
    """Counts points outside a country's buffered area, chunk by chunk (a :data:`openaddr.preview.Observer`)."""

    country: Country
    points: int = 0
    outside: int = 0
    #: Time spent: the country's area (built once per process) and the tests.
    seconds: float = 0.0
    _area: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        started = time.perf_counter()
        subdivision = self.country.subdivision
        self._area = subdivision_area(subdivision) if subdivision else country_area(self.country.feature)
        self.seconds += time.perf_counter() - started

    def __call__(self, lon: FloatArray, lat: FloatArray) -> None:
        """Count a chunk of points (valid longitudes and latitudes)."""
        started = time.perf_counter()
        for start in range(0, len(lon), CHUNK):
            x, y = lon[start : start + CHUNK], lat[start : start + CHUNK]
            self.points += len(x)
            self.outside += int(len(x) - np.count_nonzero(_inside(self._area, x, y)))
        self.seconds += time.perf_counter() - started


def _inside(area: Any, lon: FloatArray, lat: FloatArray) -> NDArray[np.bool_]:
    """Which points lie inside a prepared area.

    The points are binned into :data:`CELL_DEGREES` cells; each distinct cell is tested once as a box (inside the
    area's interior, or disjoint from it), and only the points of cells that the area's outline crosses are tested
    one by one. Addresses cluster, so a country's million points fall in a few thousand cells, most far from its
    border: this is several times as fast as ``contains_xy`` on every point.
    """
    import shapely

    if len(lon) == 0:
        return np.zeros(0, dtype=bool)
    col = np.floor(lon / CELL_DEGREES).astype(np.int64)
    row = np.floor(lat / CELL_DEGREES).astype(np.int64)
    cells, which = np.unique(col * 4096 + row, return_inverse=True)  # |row| <= 900 < 2048
    cell_col, cell_row = np.divmod(cells + 2048, 4096)
    cell_row -= 2048
    boxes = shapely.box(
        cell_col * CELL_DEGREES,
        cell_row * CELL_DEGREES,
        (cell_col + 1) * CELL_DEGREES,
        (cell_row + 1) * CELL_DEGREES,
    )
    cell_inside = shapely.contains_properly(area, boxes)
    cell_crossed = ~cell_inside & shapely.intersects(area, boxes)
    inside: NDArray[np.bool_] = np.asarray(cell_inside[which], dtype=bool)
    check = np.flatnonzero(cell_crossed[which])
    inside[check] = shapely.contains_xy(area, lon[check], lat[check])
    return inside


def counter_for(
    document: Mapping[str, Any], source_path: PurePath | str, label: str
) -> OutsideCounter | None:
    """The counter of a source's entry, or None when it has no country to check against (logged with why)."""
    country = source_country(document, source_path)
    if isinstance(country, NoCheck):
        log.info("No coverage check for %s: %s", label, country.reason)
        return None
    if country.subdivision is None and country.subdivision_note:
        log.info("Coverage check of %s: %s", label, country.subdivision_note)
    return OutsideCounter(country)


def count_outside(country: Country, lon: FloatArray, lat: FloatArray) -> int:
    """Points (valid longitudes and latitudes) outside a country's buffered area."""
    counter = OutsideCounter(country)
    counter(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    return counter.outside


__all__ = [
    "BUFFER_DEGREES",
    "Country",
    "OUTSIDE_COVERAGE_KEY",
    "NoCheck",
    "OutsideCounter",
    "count_outside",
    "counter_for",
    "country_area",
    "source_country",
    "source_subdivision",
    "subdivision_area",
    "subdivision_codes",
]
