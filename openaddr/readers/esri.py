"""The ESRI cache CSV (processing.md §6.5): read as the downloader wrote it (§3.6.6).

UTF-8, comma, header on the first line. ``OA:x``/``OA:y`` are the coordinates and ``OA:geom`` the geometry.
The conform's ``encoding``, ``csvsplit``, ``headers``, ``skiplines``, ``lon`` and ``lat`` do not apply. A ``srs``
is applied as for CSV: some servers ignore ``outSR=4326`` and answer in their own grid while labelling it 4326
(``corpus/sources/ua/63/city_of_kharkiv.json``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from openaddr.readers.base import OA_GEOM, OA_X, OA_Y, Batch
from openaddr.readers.csvfile import CsvBase, csv_dialect, reproject_texts
from openaddr.readers.geometry import reproject, wkt_texts
from openaddr.readers.projection import transformer_to_wgs84
from openaddr.readers.reader import parse_srs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

_SYNTHETIC = (OA_X, OA_Y, OA_GEOM)


class EsriReader(CsvBase):
    """Reads the cache CSV of an ESRI entry.

    :param path: the cache CSV
    :param conform: only ``srs`` applies
    :param layer_type: ``addresses`` gets ``OA:x``/``OA:y``; other layers also ``OA:geom`` and geometries
    :param label: names the source and layer entry in messages
    :raises ConformError: unreadable file, missing ``OA:x``/``OA:y`` columns, unsupported ``srs``
    """

    def __init__(self, path: Path, conform: Mapping[str, Any], *, layer_type: str, label: str) -> None:
        super().__init__(path, label)
        self.addresses = layer_type == "addresses"
        self.dialect = csv_dialect(",", label)
        srs = conform.get("srs")
        self._transformer, self.reprojection = (
            transformer_to_wgs84(parse_srs(srs, label, allow_integer=True), label) if srs else (None, None)
        )
        self._reproject = srs is not None
        rows = self._open()
        try:
            self.header = self._read_header(rows)
        finally:
            rows.close()
        self._index = {name: i for i, name in enumerate(self.header)}
        for name in (OA_X, OA_Y):
            if name not in self._index:
                raise self.fail(f"ESRI cache {path.name} has no {name} column")
        self._geom_index = self._index.get(OA_GEOM)
        self.columns = [c for c in self._index if c not in _SYNTHETIC]

    def _needed(self, picks: list[tuple[str, int]]) -> set[int]:
        needed = {self._index[OA_X], self._index[OA_Y]}
        if not self.addresses and self._geom_index is not None:
            needed.add(self._geom_index)
        return needed

    def _batch(self, column: Callable[[int], list[str]], size: int, picks: list[tuple[str, int]]) -> Batch:
        out: dict[str, list[str]] = {name: column(i) for name, i in picks}
        xs = column(self._index[OA_X])
        ys = column(self._index[OA_Y])
        if self._reproject:
            xs, ys = reproject_texts(xs, ys, self._transformer)
        out[OA_X], out[OA_Y] = xs, ys
        geometries = None
        if not self.addresses:
            wkt = column(self._geom_index) if self._geom_index is not None else [""] * size
            geoms = shapely.from_wkt(np.array([t or None for t in wkt], dtype=object), on_invalid="ignore")
            if self._reproject:
                geoms = reproject(geoms, self._transformer)
                wkt = wkt_texts(geoms)
            out[OA_GEOM] = wkt
            geometries = geoms.tolist()
        return Batch(columns=out, size=size, geometries=geometries)
