"""The preview image of a run (``preview.png``, processing.md §9.7, machine-ci.md §5 step 3).

A PNG of :data:`WIDTH` × :data:`HEIGHT` pixels: the entry's points, or the outlines of its parcels, buildings and
centrelines, as a density over a light basemap of Natural Earth's 1:50m land, coastlines and country boundaries
(``openaddr/basemap/``, shipped with the package: no tile service, no key). 7.5.5 drew its preview with cairo over
Mapzen's vector tiles, which needed a key and a network; this draws everything locally.

* **Projection**: Web Mercator (EPSG:3857 on the sphere, as web maps and 7.5.5's preview), latitudes clamped to
  ±85.0511°. The extent is the data's, with far-flung mistakes left out as 7.5.5 did (points beyond five standard
  deviations of the mean on either axis), padded by :data:`PADDING` and widened to the image's 4:3 shape.
* **Points** are counted per pixel (``numpy.bincount``) and coloured on a logarithmic ramp, so a million points
  cost a few tens of milliseconds; up to :data:`MARKER_LIMIT` points are drawn as round markers instead, so that a
  small run is visible at all.
* **Shapes** (polygons, lines) are drawn as outlines: every segment is sampled at least once per pixel along its
  length and the samples are counted like points, so a million parcels cost what their vertices cost and no
  Python loop runs per feature. A shape smaller than a pixel becomes a dot.
* **Basemap**: Pillow's ``ImageDraw`` fills the land and strokes coastlines and boundaries, clipped to the view
  with shapely first.

:func:`render_state_preview` is what a run calls after its outputs are written: it reads ``out.csv`` (address
layers) or ``out.geojson`` (the other layers) of the state directory and writes ``preview.png`` atomically, or
nothing when no row has valid coordinates.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from numpy.typing import NDArray
    from PIL import Image

    FloatArray = NDArray[np.float64]
    #: Called with the longitudes and latitudes a preview reads (valid ones only), chunk by chunk: the coverage
    #: check (:mod:`openaddr.coverage`) counts them without reading the outputs a second time.
    Observer = Callable[[FloatArray, FloatArray], None]

log = logging.getLogger(__name__)

#: Size of every preview, in pixels (4:3; GitHub shows it scaled to the comment's width).
WIDTH, HEIGHT = 1024, 768
#: Share of the data's extent added on each side.
PADDING = 0.05
#: The smallest extent shown, in Web Mercator units (radians of longitude): about 640 m at the equator, so a single
#: point gets a neighbourhood rather than an infinite zoom.
MIN_SPAN = 1e-4
#: Points beyond this many standard deviations of the mean (on either axis) do not widen the extent (7.5.5's rule).
OUTLIER_SIGMAS = 5.0
#: Up to this many points are drawn as markers; more are drawn as a density.
MARKER_LIMIT = 1000
#: Marker radius in pixels.
MARKER_RADIUS = 3
#: A density covering fewer pixels than this is thickened by one pixel on every side, so that it can be seen.
SPARSE_PIXELS = 20_000
#: Points sampled along outlines per step (about 200 MB of temporary arrays at most).
SAMPLE_BATCH = 4_000_000
#: Features or rows read per chunk.
CHUNK = 200_000
#: Web Mercator's latitude limit.
MAX_LATITUDE = 85.0511287798066

# Colours (RGB): a light basemap, and an orange-to-brown ramp for the data.
SEA = (219, 231, 240)
LAND = (246, 244, 238)
COAST = (160, 178, 194)
BORDER = (196, 184, 196)
RAMP_LOW = np.array([241, 105, 19], dtype=np.float64)
RAMP_HIGH = np.array([103, 0, 13], dtype=np.float64)
MARKER_FILL = (230, 85, 13)
MARKER_OUTLINE = (127, 39, 4)

BASEMAP = Path(__file__).parent / "basemap" / "countries-50m.json"

#: The first bytes of every line of ``out.geojson`` (``openaddr.outputs.encode_feature_geojson``).
_FEATURE_PREFIX = '{"type":"Feature","geometry":'
_PROPERTIES = ',"properties":'


class PreviewError(Exception):
    """The preview could not be drawn (the run goes on without one)."""


# --------------------------------------------------------------------------------------------------------------
# Projection and extent


def mercator(lon: Any, lat: Any) -> tuple[FloatArray, FloatArray]:
    """Web Mercator on the unit sphere: longitude and latitude in degrees → x, y in radians."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.clip(np.asarray(lat, dtype=np.float64), -MAX_LATITUDE, MAX_LATITUDE)
    return np.radians(lon), np.log(np.tan(np.pi / 4 + np.radians(lat) / 2))


@dataclass(frozen=True)
class Viewport:
    """What the image shows: Web Mercator ``x0`` (left) and ``y1`` (top) and the pixels per unit."""

    x0: float
    y1: float
    scale: float
    width: int = WIDTH
    height: int = HEIGHT

    @classmethod
    def fit(cls, west: float, south: float, east: float, north: float) -> Viewport:
        """The view of a Web Mercator extent (``west``/``east`` x, ``south``/``north`` y), padded, at least
        :data:`MIN_SPAN` wide and high, centred in the image's shape."""
        dx, dy = east - west, north - south
        west, east = west - dx * PADDING, east + dx * PADDING
        south, north = south - dy * PADDING, north + dy * PADDING
        cx, cy = (west + east) / 2, (south + north) / 2
        dx, dy = max(east - west, MIN_SPAN), max(north - south, MIN_SPAN)
        scale = min(WIDTH / dx, HEIGHT / dy)
        return cls(cx - WIDTH / scale / 2, cy + HEIGHT / scale / 2, scale)

    @classmethod
    def of_points(cls, x: FloatArray, y: FloatArray) -> Viewport:
        """The view of projected points, leaving out those beyond :data:`OUTLIER_SIGMAS` standard deviations."""
        keep = np.ones(len(x), dtype=bool)
        for values in (x, y):
            mean, sd = float(values.mean()), float(values.std())
            keep &= np.abs(values - mean) <= OUTLIER_SIGMAS * sd
        if not keep.any():  # cannot happen for finite values (the mean is within the range); kept as a guard
            keep[:] = True
        kx, ky = x[keep], y[keep]
        return cls.fit(float(kx.min()), float(ky.min()), float(kx.max()), float(ky.max()))

    def pixels(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Projected coordinates → fractional pixel coordinates (column, row; may fall outside the image)."""
        return (x - self.x0) * self.scale, (self.y1 - y) * self.scale

    def pixel_of(self, lon: float, lat: float) -> tuple[int, int]:
        """The pixel (column, row) a point in longitude and latitude is counted in."""
        px, py = self.pixels(*mercator([lon], [lat]))
        return int(np.floor(px[0])), int(np.floor(py[0]))

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """West, south, east, north of the view in degrees."""
        x1 = self.x0 + self.width / self.scale
        y0 = self.y1 - self.height / self.scale
        lat = [math.degrees(math.atan(math.sinh(v))) for v in (y0, self.y1)]
        return math.degrees(self.x0), lat[0], math.degrees(x1), lat[1]


# --------------------------------------------------------------------------------------------------------------
# The basemap


@dataclass(frozen=True)
class _Basemap:
    """The decoded basemap: plain coordinate arrays and their boxes; shapely objects are made only for the parts
    a view shows."""

    land: list[list[FloatArray]]  # polygons as rings (the exterior first), longitude and latitude
    land_boxes: FloatArray  # west, south, east, north of each polygon
    coast: list[FloatArray]
    coast_boxes: FloatArray
    borders: list[FloatArray]
    border_boxes: FloatArray


def _boxes(parts: list[FloatArray]) -> FloatArray:
    return np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in parts]).reshape(
        -1, 4
    )


@functools.cache
def basemap_topology() -> tuple[dict[str, Any], list[FloatArray]]:
    """The shipped TopoJSON and its arcs decoded to longitude and latitude (once per process); shared by the
    preview's basemap and the coverage check (:mod:`openaddr.coverage`)."""
    topology = json.loads(BASEMAP.read_bytes())
    sx, sy = topology["transform"]["scale"]
    tx, ty = topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        quantized = np.cumsum(np.asarray(arc, dtype=np.float64), axis=0)  # delta-encoded (TopoJSON §2.1.3)
        arcs.append(quantized * (sx, sy) + (tx, ty))
    return topology, arcs


def topology_ring(arcs: list[FloatArray], indices: list[int]) -> FloatArray:
    """A ring of the topology from its arc indices (a negative index ``~i`` is arc ``i`` reversed)."""
    parts = [arcs[i] if i >= 0 else arcs[~i][::-1] for i in indices]
    return np.concatenate([parts[0], *(p[1:] for p in parts[1:])])


def topology_polygons(geometry: dict[str, Any]) -> Iterator[list[list[int]]]:
    """The polygons (lists of rings of arc indices) of a TopoJSON geometry; none for other types."""
    if geometry["type"] == "Polygon":
        yield geometry["arcs"]
    elif geometry["type"] == "MultiPolygon":
        yield from geometry["arcs"]


@functools.cache
def _basemap() -> _Basemap:
    """Natural Earth's land, coastlines and country boundaries from the shipped TopoJSON (decoded once)."""
    topology, arcs = basemap_topology()

    def ring(indices: list[int]) -> FloatArray:
        return topology_ring(arcs, indices)

    polygons = topology_polygons

    def used(collection: str) -> set[int]:
        return {
            i if i >= 0 else ~i
            for geometry in topology["objects"][collection]["geometries"]
            for polygon in polygons(geometry)
            for rings in polygon
            for i in rings
        }

    land: list[list[FloatArray]] = []
    for geometry in topology["objects"]["land"]["geometries"]:
        for polygon in polygons(geometry):
            rings = [unwrap_ring(ring(r)) for r in polygon]
            land.append(rings)
            west, east = rings[0][:, 0].min(), rings[0][:, 0].max()
            if west < -180 or east > 180:  # the part across the antimeridian, on the other side
                shift = np.array([360.0 if west < -180 else -360.0, 0.0])
                land.append([r + shift for r in rings])
    coast_arcs = used("land")
    border_arcs = used("countries") - coast_arcs

    def lines(indices: set[int]) -> list[FloatArray]:
        return [part for i in sorted(indices) for part in _split(arcs[i]) if len(part) > 1]

    coast, borders = lines(coast_arcs), lines(border_arcs)
    return _Basemap(land, _boxes([r[0] for r in land]), coast, _boxes(coast), borders, _boxes(borders))


def _in_box(boxes: FloatArray, box: tuple[float, float, float, float]) -> NDArray[np.intp]:
    """Indices of the boxes that overlap ``box``."""
    west, south, east, north = box
    overlap = (boxes[:, 0] <= east) & (boxes[:, 2] >= west) & (boxes[:, 1] <= north) & (boxes[:, 3] >= south)
    return np.flatnonzero(overlap)


def unwrap_ring(ring: FloatArray) -> FloatArray:
    """A ring whose longitude jumps by more than 180° (it crosses the antimeridian) made continuous, so that it
    reaches beyond ±180° instead of drawing a line across the world."""
    step = np.diff(ring[:, 0])
    offset = np.concatenate(
        [[0.0], np.cumsum(np.where(step > 180, -360.0, np.where(step < -180, 360.0, 0.0)))]
    )
    if not offset.any():
        return ring
    return np.column_stack([ring[:, 0] + offset, ring[:, 1]])


def _split(line: FloatArray) -> list[FloatArray]:
    """A line cut where its longitude jumps by more than 180° (across the antimeridian)."""
    cuts = np.flatnonzero(np.abs(np.diff(line[:, 0])) > 180) + 1
    return np.split(line, cuts) if len(cuts) else [line]


def _view_box(view: Viewport, margin: float = 0.02) -> tuple[float, float, float, float]:
    """The view's longitude and latitude box, a little larger (so clipped outlines end outside the image)."""
    west, south, east, north = view.lonlat_bounds()
    dx, dy = (east - west) * margin, (north - south) * margin
    return max(west - dx, -180.0), max(south - dy, -90.0), min(east + dx, 180.0), min(north + dy, 90.0)


def _pixel_paths(geometry: Any, view: Viewport) -> Iterator[tuple[str, list[tuple[float, float]]]]:
    """Each ring or line of a clipped basemap geometry as ("exterior" | "interior" | "line", pixel coordinates)."""
    import shapely

    for part in shapely.get_parts(geometry):
        if part.geom_type == "Polygon":
            rings = [("exterior", part.exterior), *(("interior", r) for r in part.interiors)]
        elif part.geom_type == "LineString":
            rings = [("line", part)]
        else:
            continue
        for kind, line in rings:
            coords = shapely.get_coordinates(line)
            if len(coords) < 2:
                continue
            px, py = view.pixels(*mercator(coords[:, 0], coords[:, 1]))
            yield kind, list(zip(px.tolist(), py.tolist(), strict=True))


def render_basemap(view: Viewport) -> Image.Image:
    """The basemap of a view: sea, land, country boundaries, coastlines."""
    import shapely
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (view.width, view.height), SEA)
    draw = ImageDraw.Draw(image)
    basemap = _basemap()
    box = _view_box(view)
    for i in _in_box(basemap.land_boxes, box):
        rings = basemap.land[i]
        clipped = shapely.clip_by_rect(shapely.Polygon(rings[0], rings[1:]), *box)
        for kind, path in _pixel_paths(clipped, view):
            if len(path) >= 3:
                draw.polygon(path, fill=LAND if kind == "exterior" else SEA)
    for lines, boxes, colour in (
        (basemap.borders, basemap.border_boxes, BORDER),
        (basemap.coast, basemap.coast_boxes, COAST),
    ):
        shown = [lines[i] for i in _in_box(boxes, box)]
        if shown:
            for _, path in _pixel_paths(shapely.clip_by_rect(shapely.MultiLineString(shown), *box), view):
                draw.line(path, fill=colour, width=1)
    return image


# --------------------------------------------------------------------------------------------------------------
# The data


def _density_rgb(counts: NDArray[np.int64]) -> NDArray[np.uint8]:
    """Colours of positive counts on the logarithmic ramp: a count of one at the light end, the largest at the
    dark end."""
    top = float(counts.max())
    share = np.log(counts) / math.log(top) if top > 1 else np.zeros(counts.shape)
    rgb = RAMP_LOW + share[..., None] * (RAMP_HIGH - RAMP_LOW)
    return np.round(rgb).astype(np.uint8)


def _thicken(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Each pixel's count replaced by the largest count of its 3 × 3 neighbourhood."""
    padded = np.pad(counts, 1)
    height, width = counts.shape
    result = counts.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(result, padded[dy : dy + height, dx : dx + width], out=result)
    return result


class Canvas:
    """Counts per pixel of a view, then drawn over the basemap."""

    def __init__(self, view: Viewport) -> None:
        self.view = view
        self.counts = np.zeros(view.width * view.height, dtype=np.int64)
        self.markers: list[tuple[float, float]] = []

    def add_pixels(self, px: FloatArray, py: FloatArray) -> None:
        """Count fractional pixel coordinates (those outside the image are dropped)."""
        ix, iy = np.floor(px), np.floor(py)
        inside = (ix >= 0) & (ix < self.view.width) & (iy >= 0) & (iy < self.view.height)
        index = iy[inside].astype(np.int64) * self.view.width + ix[inside].astype(np.int64)
        self.counts += np.bincount(index, minlength=self.counts.size)

    def add_points(self, x: FloatArray, y: FloatArray, *, markers: bool = False) -> None:
        """Count projected points; with ``markers`` they are drawn as round markers too."""
        px, py = self.view.pixels(x, y)
        self.add_pixels(px, py)
        if markers:
            self.markers.extend(zip(px.tolist(), py.tolist(), strict=True))

    def add_segments(self, x: FloatArray, y: FloatArray, line: NDArray[np.int64]) -> None:
        """Count the outlines of projected lines: vertices ``x``, ``y`` and the line each belongs to, sampled at
        least once per pixel along every segment."""
        px, py = self.view.pixels(x, y)
        self.add_pixels(px, py)
        same = line[1:] == line[:-1]
        x0, y0, x1, y1 = px[:-1][same], py[:-1][same], px[1:][same], py[1:][same]
        # A segment longer than the image's diagonal lies mostly outside it: more samples would add nothing seen.
        steps = np.clip(np.ceil(np.hypot(x1 - x0, y1 - y0)), 1, 2 * (self.view.width + self.view.height))
        steps = steps.astype(np.int64)
        if steps.sum() == len(steps):
            return  # every segment within one pixel: its ends were counted
        # Samples are made SAMPLE_BATCH at a time, so long lines cannot take memory without bound.
        ends = np.cumsum(steps)
        start = 0
        while start < len(steps):
            before = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, before + SAMPLE_BATCH, side="right")))
            part = slice(start, stop)
            self._sample(x0[part], y0[part], x1[part], y1[part], steps[part])
            start = stop

    def _sample(
        self, x0: FloatArray, y0: FloatArray, x1: FloatArray, y1: FloatArray, steps: NDArray[np.int64]
    ) -> None:
        segment = np.repeat(np.arange(len(steps)), steps)
        first = np.cumsum(steps) - steps
        t = (np.arange(len(segment)) - first[segment] + 0.5) / steps[segment]
        self.add_pixels(x0[segment] + t * (x1 - x0)[segment], y0[segment] + t * (y1 - y0)[segment])

    def render(self) -> Image.Image:
        """The basemap with the counts (or markers) drawn over it."""
        from PIL import Image, ImageDraw

        image = render_basemap(self.view)
        counts = self.counts.reshape(self.view.height, self.view.width)
        if self.markers and len(self.markers) <= MARKER_LIMIT:
            draw = ImageDraw.Draw(image)
            r = MARKER_RADIUS
            for px, py in self.markers:
                draw.ellipse((px - r, py - r, px + r, py + r), fill=MARKER_FILL, outline=MARKER_OUTLINE)
            return image
        if np.count_nonzero(counts) < SPARSE_PIXELS:
            counts = _thicken(counts)
        mask = counts > 0
        pixels = np.asarray(image).copy()
        pixels[mask] = _density_rgb(counts[mask])
        return Image.fromarray(pixels, "RGB")


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Reading a run's outputs


_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"


def read_csv_points(path: Path) -> tuple[FloatArray, FloatArray]:
    """Longitudes and latitudes of the rows of an ``out.csv`` whose coordinates are valid (finite numbers within
    ±180 and ±90; the rule of ``stats.json``).

    The columns are read as numbers by Arrow's CSV parser (blanks become NaN); a file where some value is not a
    number at all (a hostile source's text kept as it was) is read again as text, each value matched against the
    plain-number pattern first, which is about three times as slow.
    """
    import pyarrow as pa

    try:
        return _read_csv_columns(path, pa.float64())
    except pa.ArrowInvalid:
        log.debug("%s has coordinates that are not numbers: reading them as text", path)
        return _read_csv_columns(path, pa.string())


def _read_csv_columns(path: Path, kind: Any) -> tuple[FloatArray, FloatArray]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pv

    def numbers(column: Any) -> FloatArray:
        if kind == pa.string():
            text = pc.utf8_trim_whitespace(column)
            column = pc.if_else(pc.match_substring_regex(text, _NUMBER), text, None)
            assert isinstance(column, pa.Array)  # an array's if_else is an array
            column = pc.cast(column, pa.float64())
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)

    # Only the two columns are kept (Arrow parses the blocks on several threads): 16 bytes a row.
    convert = pv.ConvertOptions(include_columns=["LON", "LAT"], column_types={"LON": kind, "LAT": kind})
    table = pv.read_csv(path, read_options=pv.ReadOptions(block_size=16 << 20), convert_options=convert)
    lon = numbers(table.column("LON").combine_chunks())
    lat = numbers(table.column("LAT").combine_chunks())
    valid = (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)  # NaN compares False
    return lon[valid], lat[valid]


def read_geojson_geometries(path: Path) -> Iterator[Any]:
    """The geometries of an ``out.geojson`` in chunks (numpy arrays of shapely geometries, None for a null one).

    The file is this package's own line-delimited output (``encode_feature_geojson``): each line starts with the
    geometry, which ends where the properties begin, so only the geometry text is parsed (by GEOS).

    :raises PreviewError: a line that is not such a feature
    """
    import shapely

    texts: list[str | None] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            end = line.find(_PROPERTIES)
            if not line.startswith(_FEATURE_PREFIX) or end < 0:
                raise PreviewError(f"{path}: line {number} is not a feature of openaddr's GeoJSON output")
            text = line[len(_FEATURE_PREFIX) : end]
            texts.append(None if text == "null" else text)
            if len(texts) >= CHUNK:
                yield shapely.from_geojson(np.asarray(texts, dtype=object), on_invalid="ignore")
                texts = []
    if texts:
        yield shapely.from_geojson(np.asarray(texts, dtype=object), on_invalid="ignore")


def _valid_lonlat(geometries: Any) -> Any:
    """The geometries that are present, not empty and whose bounds lie within ±180 and ±90."""
    import shapely

    present = geometries[~shapely.is_missing(geometries)]
    present = present[~shapely.is_empty(present)]
    bounds = shapely.bounds(present)
    ok = (np.abs(bounds[:, [0, 2]]) <= 180).all(axis=1) & (np.abs(bounds[:, [1, 3]]) <= 90).all(axis=1)
    return present[ok]


def render_points(lon: FloatArray, lat: FloatArray) -> Image.Image | None:
    """The preview of points in longitude and latitude (valid ones only), or None when there are none."""
    if len(lon) == 0:
        return None
    x, y = mercator(lon, lat)
    canvas = Canvas(Viewport.of_points(x, y))
    canvas.add_points(x, y, markers=len(x) <= MARKER_LIMIT)
    return canvas.render()


def render_geometries(chunks: Iterable[Any]) -> Image.Image | None:
    """The preview of shapes (chunks of shapely geometries in longitude and latitude), or None when none is valid.

    The extent comes from the centres of the geometries' bounds (far-flung ones left out), widened to take in
    the whole of those kept. Only the projected vertices are kept between chunks, not the geometries.
    """
    import shapely

    bounds: list[FloatArray] = []
    outlines: list[tuple[FloatArray, FloatArray, NDArray[np.int64]]] = []
    lines_before = 0
    for chunk in chunks:
        valid = _valid_lonlat(chunk)
        if not len(valid):
            continue
        bounds.append(shapely.bounds(valid))
        lines = shapely.get_parts(_outlines(valid))
        coords, index = shapely.get_coordinates(lines, return_index=True)
        x, y = mercator(coords[:, 0], coords[:, 1])
        outlines.append((x, y, index.astype(np.int64) + lines_before))
        lines_before += len(lines)
    if not bounds:
        return None
    box = np.concatenate(bounds)
    west, south = mercator(box[:, 0], box[:, 1])
    east, north = mercator(box[:, 2], box[:, 3])
    cx, cy = (west + east) / 2, (south + north) / 2
    keep = np.ones(len(cx), dtype=bool)
    for values in (cx, cy):
        keep &= np.abs(values - values.mean()) <= OUTLIER_SIGMAS * values.std()
    view = Viewport.fit(
        float(west[keep].min()), float(south[keep].min()), float(east[keep].max()), float(north[keep].max())
    )
    canvas = Canvas(view)
    for x, y, index in outlines:
        canvas.add_segments(x, y, index)
    return canvas.render()


def _outlines(geometries: Any) -> Any:
    """Polygons as their boundaries; lines and points as they are (collections are taken apart)."""
    import shapely

    parts = shapely.get_parts(geometries)
    types = shapely.get_type_id(parts)
    polygonal = (types == 3) | (types == 6)
    out = parts.copy()
    out[polygonal] = shapely.boundary(parts[polygonal])
    return out


def _observed(chunks: Iterable[Any], observe: Observer) -> Iterator[Any]:
    """The chunks of geometries, each shown first to ``observe`` as the centres of its valid geometries' bounds."""
    import shapely

    for chunk in chunks:
        bounds = shapely.bounds(_valid_lonlat(chunk))
        observe((bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2)
        yield chunk


def render_state_preview(state_dir: Path, layer_type: str, observe: Observer | None = None) -> Path | None:
    """Draw ``preview.png`` of a state directory from its ``out.csv`` (addresses) or ``out.geojson``.

    :param observe: also given the coordinates read: the points of ``out.csv``, or the centres of the bounds of
        ``out.geojson``'s geometries (valid ones only)
    :returns: the PNG's path, or None when no row has valid coordinates (nothing is written)
    :raises PreviewError: the output could not be read as expected
    """
    from openaddr.outputs import write_atomic

    if layer_type == "addresses" and (state_dir / "out.csv").exists():
        lon, lat = read_csv_points(state_dir / "out.csv")
        if observe is not None:
            observe(lon, lat)
        image = render_points(lon, lat)
    else:
        chunks = read_geojson_geometries(state_dir / "out.geojson")
        image = render_geometries(chunks if observe is None else _observed(chunks, observe))
    if image is None:
        return None
    return write_atomic(state_dir / "preview.png", png_bytes(image))


__all__ = [
    "HEIGHT",
    "WIDTH",
    "Canvas",
    "basemap_topology",
    "PreviewError",
    "Viewport",
    "mercator",
    "read_csv_points",
    "read_geojson_geometries",
    "render_basemap",
    "render_geometries",
    "render_points",
    "render_state_preview",
    "topology_polygons",
    "topology_ring",
    "unwrap_ring",
]
