"""Geometry work shared by the readers: WKB → points or shapely geometries, reprojection, centroids, WKT.

Everything works on whole batches (numpy arrays of coordinates or of shapely geometries); nothing loops over
features in Python except where a batch holds broken geometries.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import shapely

if TYPE_CHECKING:
    import pyproj

log = logging.getLogger(__name__)

#: WKB type codes of a 2D point and of a 3D point (ISO and extended "25D" forms).
_POINT_2D = 1
_POINT_3D = (1001, 0x80000001)

#: A number as GEOS writes it in WKT (plus its spellings of non-finite values).
_WKT_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[Nn]a[Nn]|[Ii]nf(?:inity)?)")
#: A MULTIPOINT whose members GEOS wrapped in parentheses; 7.5.5 (GEOS 3.8) wrote none.
_MULTIPOINT = re.compile(r"MULTIPOINT( Z)? \(((?:\([^()]*\)|EMPTY)(?:, (?:\([^()]*\)|EMPTY))*)\)")


def points_from_wkb(wkb: pa.Array[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """x and y of a WKB column that holds only little-endian 2D or 3D points (and nulls), parsed with numpy.

    This is the fast path for address points: no geometry object is built.

    :return: two float64 arrays (NaN for null geometries and ``POINT EMPTY``), or None when the column holds
        anything else and must go through shapely
    """
    n = len(wkb)
    if n == 0:
        return np.empty(0), np.empty(0)
    offset_type: type[np.signedinteger[Any]]
    if pa.types.is_large_binary(wkb.type):
        offset_type = np.int64
    elif pa.types.is_binary(wkb.type):
        offset_type = np.int32
    else:
        return None
    _, offset_buffer, data_buffer = wkb.buffers()
    assert offset_buffer is not None  # a binary array always has its offsets
    offsets = np.frombuffer(
        memoryview(offset_buffer),
        dtype=offset_type,
        count=n + 1,
        offset=wkb.offset * np.dtype(offset_type).itemsize,
    ).astype(np.int64)
    data = (
        np.frombuffer(memoryview(data_buffer), dtype=np.uint8)
        if data_buffer is not None
        else np.empty(0, np.uint8)
    )
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    valid = np.asarray(wkb.is_valid()) if wkb.null_count else np.ones(n, dtype=bool)
    valid &= lengths > 0
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    if not valid.any():
        return x, y
    s = starts[valid]
    length = lengths[valid]
    if not np.all((length == 21) | (length == 29)) or not np.all(data[s] == 1):
        return None
    code = (
        data[s + 1].astype(np.uint32)
        | (data[s + 2].astype(np.uint32) << 8)
        | (data[s + 3].astype(np.uint32) << 16)
        | (data[s + 4].astype(np.uint32) << 24)
    )
    ok = ((length == 21) & (code == _POINT_2D)) | ((length == 29) & np.isin(code, _POINT_3D))
    if not ok.all():
        return None
    if len(s) == n and (length == 21).all() and (n == 1 or (np.diff(s) == 21).all()):
        # the usual layout: one 2D point after the other, read in place with a strided view
        x[:] = np.ndarray((n,), dtype="<f8", buffer=data, offset=int(s[0]) + 5, strides=(21,))
        y[:] = np.ndarray((n,), dtype="<f8", buffer=data, offset=int(s[0]) + 13, strides=(21,))
        return x, y
    columns = np.arange(8)
    x[valid] = data[(s + 5)[:, None] + columns].view("<f8").ravel()
    y[valid] = data[(s + 13)[:, None] + columns].view("<f8").ravel()
    return x, y


def geometries_from_wkb(wkb: pa.Array[Any] | list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Shapely geometries of a WKB column, M values dropped.

    :return: the geometries (None where missing) and a mask of *broken* ones: WKB GEOS refuses (a ring that
        is not closed, a line of one point) is repaired as far as GEOS can, and its centroid is replaced by the
        centre of its bounding box (processing.md §6.7); None if GEOS cannot read it at all
    """
    raw = wkb.to_numpy(zero_copy_only=False) if isinstance(wkb, pa.Array) else np.asarray(wkb, dtype=object)
    geoms = shapely.from_wkb(raw, on_invalid="ignore")
    failed = np.flatnonzero(shapely.is_missing(geoms) & np.array([v is not None for v in raw], dtype=bool))
    broken = np.zeros(len(geoms), dtype=bool)
    if len(failed):
        geoms[failed] = shapely.from_wkb(raw[failed], on_invalid="fix")
        broken[failed] = True
    return _drop_m(geoms), broken


def _drop_m(geoms: np.ndarray) -> np.ndarray:
    # GEOS 3.8, which 7.5.5 used, had no M values; shapely's transform mishandles XYZM.
    m = shapely.has_m(geoms)
    if m.any():
        z = shapely.has_z(geoms)
        parts: tuple[tuple[np.ndarray, Literal[2, 3]], ...] = ((m & z, 3), (m & ~z, 2))
        for mask, dims in parts:
            if mask.any():
                geoms[mask] = shapely.from_wkb(shapely.to_wkb(geoms[mask], output_dimension=dims))
    return geoms


def reproject(geoms: np.ndarray, transformer: pyproj.Transformer | None) -> np.ndarray:
    """Transform geometries to EPSG:4326 (x, y only; Z values are kept as they are)."""
    if transformer is None or len(geoms) == 0:
        return geoms

    def _xy(coords: np.ndarray) -> np.ndarray:
        out = np.array(coords, dtype=np.float64, copy=True)
        if len(out):
            xx, yy = transformer.transform(out[:, 0], out[:, 1], errcheck=False)
            out[:, 0] = xx
            out[:, 1] = yy
        return out

    # include_z=None (shapely >= 2.1) keeps each geometry's own dimensions; types-shapely still says bool.
    reprojected: np.ndarray = shapely.transform(geoms, _xy, include_z=None)  # type: ignore[call-overload]
    return reprojected


def centroids(geoms: np.ndarray, broken: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The point of each geometry for address layers (processing.md §6.7).

    A point stays itself; lines and polygons give the GEOS centroid. Where GEOS 3.8 failed with "Invalid number
    of points in LinearRing" (rings of 1–3 points) or the WKB was broken, the centre of the bounding box,
    computed as 7.5.5 did (``xmin/2 + xmax/2``). Empty or missing geometries give NaN.
    """
    n = len(geoms)
    if n == 0:
        return np.empty(0), np.empty(0)
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    c = shapely.centroid(geoms)
    has_point = ~(shapely.is_missing(c) | shapely.is_empty(c))
    x[has_point] = shapely.get_x(c[has_point])
    y[has_point] = shapely.get_y(c[has_point])
    use_box = np.zeros(n, dtype=bool) if broken is None else broken.copy()
    types = shapely.get_type_id(geoms)
    polygonal = (types == 3) | (types == 6) | (types == 7)
    if polygonal.any():
        parts, part_index = shapely.get_parts(geoms[polygonal], return_index=True)
        rings, ring_index = shapely.get_rings(parts, return_index=True)
        if len(rings):
            counts = shapely.get_num_coordinates(rings)
            short = (counts > 0) & (counts < 4)
            if short.any():
                owners = np.flatnonzero(polygonal)[part_index[ring_index[short]]]
                use_box[owners] = True
    if use_box.any():
        bounds = shapely.bounds(geoms[use_box])
        x[use_box] = bounds[:, 0] / 2 + bounds[:, 2] / 2
        y[use_box] = bounds[:, 1] / 2 + bounds[:, 3] / 2
    return x, y


def wkt_texts(geoms: np.ndarray) -> list[str]:
    """WKT as 7.5.5 wrote it through GEOS 3.8 (processing.md §3.6.6); ``''`` for missing geometries.

    Numbers are C ``%.16g``, MultiPoint members carry no parentheses. GEOS lays out the structure; its numbers
    are replaced in order by the formatted coordinates.
    """
    out = [""] * len(geoms)
    present = np.flatnonzero(~shapely.is_missing(geoms))
    if not len(present):
        return out
    has_z = shapely.has_z(geoms[present])
    for group, include_z in ((present[~has_z], False), (present[has_z], True)):
        if len(group):
            for i, text in zip(group.tolist(), _wkt_group(geoms[group], include_z), strict=True):
                out[i] = text
    return out


def _wkt_group(geoms: np.ndarray, include_z: bool) -> list[str]:
    geos = shapely.to_wkt(geoms, rounding_precision=-1, trim=True).tolist()
    numbers = [f"{v:.16g}" for v in shapely.get_coordinates(geoms, include_z=include_z).ravel().tolist()]
    joined = "\n".join(geos)
    if "MULTIPOINT" in joined:
        joined = _MULTIPOINT.sub(lambda m: f"MULTIPOINT{m.group(1) or ''} ({_unwrap(m.group(2))})", joined)
    if len(_WKT_NUMBER.findall(joined)) != len(numbers):
        # Collections mixing 2D and 3D members: format GEOS's own numbers instead (they are shortest
        # round-trip texts for all but tiny magnitudes).
        return _WKT_NUMBER.sub(_reformat, joined).split("\n")
    position = iter(numbers)
    return _WKT_NUMBER.sub(lambda _: next(position), joined).split("\n")


def _reformat(match: re.Match[str]) -> str:
    return f"{float(match.group()):.16g}"


def _unwrap(members: str) -> str:
    return members.replace("(", "").replace(")", "")


def geometry_type_name(name: str | None) -> str | None:
    """The §9.4 name of a layer geometry type as pyogrio reports it (``Point Z`` → ``Point 2.5D``)."""
    if name is None:
        return None
    base = name.split(" ")[0]
    if base == "Unknown":
        return "Unknown"
    suffix = name[len(base) :].strip()
    return f"{base} 2.5D" if "Z" in suffix else base
