"""What every reader hands to the conform step: batches of text columns (processing.md §6.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Synthetic columns every reader appends.
OA_X, OA_Y, OA_GEOM = "OA:x", "OA:y", "OA:geom"

#: Rows per batch: large enough to amortise per-batch work, small enough to keep memory flat.
DEFAULT_BATCH_SIZE = 50_000


@dataclass
class Batch:
    """A slice of records, column-oriented.

    :param columns: column name → one text per record, in the source's column order, then ``OA:x``, ``OA:y``
        (EPSG:4326 coordinate texts, full precision) and, for non-address layers, ``OA:geom`` (WKT). Values are
        never None: null is ``''`` (§6.1).
    :param size: number of records
    :param geometries: non-address layers only: the full geometry of each record in EPSG:4326 as a shapely
        geometry (None when missing), for the GeoJSON output
    :param xy: optionally, ``OA:x``/``OA:y`` as float64 arrays, NaN where the text is empty; parsing the texts
        gives exactly these values (they are their ``repr``), so canonicalisation may skip the parsing
    """

    columns: dict[str, list[str]]
    size: int
    geometries: list[Any] | None = None
    xy: tuple[Any, Any] | None = None
