"""GeoJSON sources that are not ESRI caches (processing.md §6.3), streamed with ijson.

The ``features`` array is parsed one feature at a time (yajl2 C backend, floats as Python floats), so the file is
never loaded whole. Columns are the keys of the first feature's ``properties``; features whose geometry is null
or unparsable are skipped and counted.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import ijson
import numpy as np
import shapely
import shapely.geometry

from openaddr.readers.base import DEFAULT_BATCH_SIZE, OA_GEOM, OA_X, OA_Y, Batch
from openaddr.readers.geometry import centroids, reproject, wkt_texts
from openaddr.readers.projection import transformer_to_wgs84
from openaddr.readers.reader import (
    Reader,
    coordinate_texts,
    parse_srs,
    transform_xy,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Generator, Iterator, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

FEATURES = "features.item"
#: Bytes ijson reads at a time, each chunk checked by the depth and size guard first.
READ_SIZE = 1 << 20
#: Features turned into texts at a time: large batches of live feature objects are slow to build.
_CHUNK = 1000


@dataclass
class _Part:
    texts: dict[str, list[str]]
    x: np.ndarray
    y: np.ndarray
    geoms: np.ndarray | None
    size: int


def iter_features(path: Path, label: str) -> Generator[Any]:
    """The members of the ``features`` array, one at a time.

    The bytes go through a :class:`~openaddr.readers.limits.JsonShape` before ijson parses them, so a feature
    nested too deep or too long is refused before it is built.

    :raises ConformError: the file is not valid JSON
    :raises RecordTooLargeError: a feature over ``OPENADDR_MAX_RECORD_BYTES`` or ``OPENADDR_MAX_JSON_DEPTH``
    :raises TruncatedInputError: the JSON text ends early
    """
    from openaddr.errors import ConformError
    from openaddr.readers.limits import CheckedReader, JsonShape, TruncatedInputError, current_limits

    max_bytes, max_depth = current_limits()
    shape = JsonShape(path.name, label, max_bytes, max_depth)
    try:
        with path.open("rb") as fh:
            yield from ijson.items(CheckedReader(fh, shape), FEATURES, use_float=True, buf_size=READ_SIZE)
    except ijson.IncompleteJSONError as exc:
        if shape.depth > 0 or shape.in_string:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "premature end"
            raise TruncatedInputError(
                f"{label}: cannot parse GeoJSON {path.name}: it ends early at byte {shape.offset} "
                f"(cut short?): {first_line}"
            ) from None
        raise ConformError(f"{label}: cannot parse GeoJSON {path.name}: {exc}") from None
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
        raise ConformError(f"{label}: cannot parse GeoJSON {path.name}: {exc}") from None


def value_texts(values: list[Any]) -> list[str]:
    """§6.1 texts of JSON values: null ``''``, booleans ``True``/``False``, floats ``repr``, objects ``str()``."""
    return [v if type(v) is str else _text(v) for v in values]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is float:
        return repr(value)
    return str(value)


class GeoJsonReader(Reader):
    """Reads a GeoJSON FeatureCollection.

    :param path: the ``.json``/``.geojson`` file
    :param conform: only ``srs`` applies
    :param layer_type: ``addresses`` gets points; other layers also ``OA:geom`` and geometries
    :param label: names the source and layer entry in messages
    :raises ConformError: not valid JSON, unsupported ``srs``
    """

    def __init__(self, path: Path, conform: Mapping[str, Any], *, layer_type: str, label: str) -> None:
        super().__init__(path, label)
        self.addresses = layer_type == "addresses"
        srs = conform.get("srs")
        self._transformer, self.reprojection = (
            transformer_to_wgs84(parse_srs(srs, label), label) if srs else (None, None)
        )
        features = iter_features(path, label)
        try:
            first = next(features, None)
        finally:
            features.close()
        properties = first.get("properties") if isinstance(first, dict) else None
        self.columns = [str(k) for k in properties] if isinstance(properties, dict) else []

    def batches(
        self, batch_size: int = DEFAULT_BATCH_SIZE, *, columns: Collection[str] | None = None
    ) -> Iterator[Batch]:
        """Stream the features as batches of texts (see :meth:`Reader.batches`).

        Features are parsed and reduced to texts and coordinates a thousand at a time, so only small numbers of
        feature objects are ever alive; batches hold up to ``batch_size`` features (skipped ones leave a batch
        short).

        :raises ConformError: the JSON breaks off or is malformed
        """
        wanted = self.wanted(columns)
        skipped_before = self.skipped
        features = iter_features(self.path, self.label)
        parts: list[_Part] = []
        taken = 0
        try:
            while chunk := list(itertools.islice(features, min(_CHUNK, batch_size - taken))):
                taken += len(chunk)
                part = self._part(chunk, wanted)
                if part.size:
                    parts.append(part)
                if taken >= batch_size:
                    if parts:
                        yield self._join(parts, wanted)
                    parts, taken = [], 0
            if parts:
                yield self._join(parts, wanted)
        finally:
            features.close()
            if self.skipped > skipped_before:
                log.warning(
                    "%s: skipped %d features without a usable geometry",
                    self.label,
                    self.skipped - skipped_before,
                )

    def _part(self, features: list[Any], wanted: list[str]) -> _Part:
        """Texts, coordinates and geometries of a few features (those without a usable geometry dropped)."""
        geometries = [f.get("geometry") if type(f) is dict else None for f in features]
        if not all(type(g) is dict for g in geometries):
            kept = [(f, g) for f, g in zip(features, geometries, strict=True) if type(g) is dict]
            self.skipped += len(features) - len(kept)
            features = [f for f, _ in kept]
            geometries = [g for _, g in kept]
        x, y, geoms, keep = self._geometry(cast("list[dict[str, Any]]", geometries))  # all dicts now
        if keep is not None:
            features = [f for f, k in zip(features, keep.tolist(), strict=True) if k]
        properties = [f.get("properties") for f in features]
        if not all(type(p) is dict for p in properties):
            properties = [p if type(p) is dict else {} for p in properties]
        texts = {
            name: value_texts(list(map(dict.get, properties, itertools.repeat(name)))) for name in wanted
        }
        return _Part(texts, x, y, geoms, len(features))

    def _join(self, parts: list[_Part], wanted: list[str]) -> Batch:
        out: dict[str, list[str]] = {}
        for name in wanted:
            column: list[str] = []
            for part in parts:
                column.extend(part.texts[name])
            out[name] = column
        x = np.concatenate([part.x for part in parts])
        y = np.concatenate([part.y for part in parts])
        out[OA_X], out[OA_Y] = coordinate_texts(x, y)
        geometry_list = None
        if not self.addresses:
            geoms = np.concatenate([part.geoms for part in parts if part.geoms is not None])
            out[OA_GEOM] = wkt_texts(geoms)
            geometry_list = geoms.tolist()
        return Batch(columns=out, size=len(x), geometries=geometry_list)

    def _geometry(
        self, geometries: list[dict[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """x, y (EPSG:4326), shapely geometries (other layers) and a keep-mask (None when all parse)."""
        if self.addresses:
            xy = _points(geometries)
            if xy is not None:
                x, y = transform_xy(self._transformer, xy[:, 0].copy(), xy[:, 1].copy())
                return x, y, None, None
        shapes = np.empty(len(geometries), dtype=object)
        keep = np.ones(len(geometries), dtype=bool)
        for i, g in enumerate(geometries):
            try:
                shapes[i] = shapely.geometry.shape(g)
            except Exception:  # noqa: BLE001 - any malformed geometry object is "unparsable" (§6.3)
                keep[i] = False
        bad = int((~keep).sum())
        if bad:
            self.skipped += bad
            shapes = shapes[keep]
        shapes = reproject(shapes, self._transformer)
        x, y = centroids(shapes)
        return x, y, (None if self.addresses else shapes), (keep if bad else None)


def _points(geometries: list[dict[str, Any]]) -> np.ndarray | None:
    """The (n, 2) x/y of a batch of GeoJSON Points, or None unless every one is a point of numbers."""
    if not geometries or not all(g.get("type") == "Point" for g in geometries):
        return None
    coordinates = [g.get("coordinates") for g in geometries]
    try:
        xy = np.array(coordinates)
    except ValueError:  # ragged: some points carry a Z value
        try:
            xy = np.array([c[:2] if type(c) is list else c for c in coordinates])
        except ValueError:
            return None
    if xy.ndim != 2 or xy.shape[1] < 2 or xy.dtype.kind not in "iuf":
        return None
    return np.ascontiguousarray(xy[:, :2], dtype=np.float64)
