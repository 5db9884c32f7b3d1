"""The transformation to EPSG:4326 that every reader uses, the datum grids it needs, and what it reports.

pyproj's wheels carry PROJ's database but no datum grids, so without grids PROJ quietly falls back to a less
accurate operation (EPSG:3068, Berlin's Soldner CRS: a 2 m Helmert shift instead of the 1 m BeTA2007 grid) and
pyproj says so only in a Python warning. This module

* adds the grids shipped in ``openaddr/proj-grids`` (see its ``NOTICE.md``: origin and licence of each) to PROJ's
  search path when it is imported;
* describes, for a CRS and an extent, the operation PROJ uses (the best one whose grids are here), its accuracy, and
  every more accurate operation PROJ knows there whose grid is missing (:class:`Reprojection`);
* logs it for each layer entry: when the reader opens, over the CRS's area of use (INFO); when the entry's rows are
  written, over the extent of its coordinates, as a WARNING naming the missing grids and the accuracy used when a
  better operation is known but not to be had (INFO otherwise), so it lands in ``output.txt``; that last
  description is the ``reprojection`` of ``stats.json``.

"Best" is PROJ's own order (:class:`pyproj.transformer.TransformerGroup`). The transformer itself is built by
:meth:`pyproj.Transformer.from_crs`, which picks per point among the available operations, so a point outside a
grid's extent gets the next operation; the one reported is the best over the extent described.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyproj
import pyproj.datadir
from pyproj.transformer import AreaOfInterest, TransformerGroup

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

#: The datum grids shipped with the package (``NOTICE.md`` there records each grid's origin and licence).
GRIDS_DIR = Path(__file__).resolve().parent.parent / "proj-grids"

_WGS84 = "EPSG:4326"
#: pyproj's own warning about a missing grid, replaced by :meth:`Reprojection.message`.
_PYPROJ_MISSING_GRID = "Best transformation is not available"


def use_shipped_grids() -> None:
    """Add :data:`GRIDS_DIR` to PROJ's data directories (once per process; later calls do nothing)."""
    current = pyproj.datadir.get_data_dir()
    if str(GRIDS_DIR) not in current.split(os.pathsep):
        pyproj.datadir.append_data_dir(GRIDS_DIR)


use_shipped_grids()


@dataclasses.dataclass(frozen=True)
class MissingGrid:
    """A more accurate operation than the one used, not available because its grid is not here."""

    grid: str
    operation: str
    accuracy: float


@dataclasses.dataclass(frozen=True)
class Reprojection:
    """How a CRS is transformed to EPSG:4326 here (see the module text).

    :ivar crs: the source CRS, as ``EPSG:n`` when PROJ identifies it, else its name
    :ivar operation: the operation used over the extent (PROJ's description)
    :ivar accuracy: its accuracy in metres, None when PROJ does not know it (a ballpark offset)
    :ivar grids: the grids it uses (file names as PROJ found them)
    :ivar missing: more accurate operations whose grid is missing, most accurate first
    :ivar extent: west, south, east, north in degrees; None for the CRS's area of use
    :ivar source: the CRS itself
    """

    crs: str
    operation: str
    accuracy: float | None
    grids: tuple[str, ...] = ()
    missing: tuple[MissingGrid, ...] = ()
    extent: tuple[float, float, float, float] | None = None
    source: pyproj.CRS | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def degraded(self) -> bool:
        """Whether a better operation is known but not available, or the accuracy is unknown."""
        return bool(self.missing) or self.accuracy is None

    def as_dict(self) -> dict[str, Any]:
        """The ``reprojection`` object of ``stats.json``."""
        return {
            "crs": self.crs,
            "operation": self.operation,
            "accuracy": self.accuracy,
            "grids": list(self.grids),
            "missing grids": [dataclasses.asdict(m) for m in self.missing],
            "extent": list(self.extent) if self.extent is not None else None,
        }

    def within(self, bounds: Sequence[float] | None) -> Reprojection:
        """The same CRS described over ``bounds`` (west, south, east, north in degrees); self when None."""
        if bounds is None or self.source is None:
            return self
        return describe_reprojection(self.source, bounds)

    def message(self) -> str:
        """One log line: the CRS, the operation and its accuracy, and the missing grids if any."""
        accuracy = "unknown accuracy" if self.accuracy is None else f"accuracy {_metres(self.accuracy)}"
        grids = f", grid {', '.join(self.grids)}" if self.grids else ""
        where = " over the CRS's area of use" if self.extent is None else " over the extent of the data"
        text = f"Reprojecting {self.crs} to {_WGS84}{where} with {self.operation} ({accuracy}{grids})"
        if self.missing:
            best = self.missing[0].accuracy
            names = ", ".join(f"{m.grid} ({_metres(m.accuracy)})" for m in self.missing)
            text += f"; best transformation not available (down to {_metres(best)}): missing grids {names}"
        elif self.accuracy is None:
            text += "; PROJ knows no transformation of known accuracy for this CRS"
        return text


@functools.cache
def _wgs84() -> pyproj.CRS:
    return pyproj.CRS.from_user_input(_WGS84)


def _metres(value: float) -> str:
    return f"{value:g} m"


def _crs_name(crs: pyproj.CRS) -> str:
    authority = crs.to_authority(min_confidence=90)
    return f"{authority[0]}:{authority[1]}" if authority else crs.name


@functools.lru_cache(maxsize=64)
def _describe(wkt: str, extent: tuple[float, float, float, float] | None) -> Reprojection:
    crs = pyproj.CRS.from_wkt(wkt)
    area = AreaOfInterest(*extent) if extent is not None else None
    with warnings.catch_warnings():
        # The same fact is reported by Reprojection, in the entry's log and its stats.
        warnings.filterwarnings("ignore", _PYPROJ_MISSING_GRID, UserWarning)
        group = TransformerGroup(crs, _WGS84, always_xy=True, area_of_interest=area)
    if not group.transformers:
        return Reprojection(_crs_name(crs), "none", None, extent=extent, source=crs)
    best = group.transformers[0]
    accuracy = best.accuracy if best.accuracy >= 0 else None
    used = tuple(
        sorted({Path(g.full_name).name or g.short_name for op in best.operations or () for g in op.grids})
    )
    missing: dict[str, MissingGrid] = {}
    for op in group.unavailable_operations:
        if op.accuracy < 0 or (accuracy is not None and op.accuracy >= accuracy):
            continue
        for grid in op.grids:
            if not grid.available and grid.short_name not in missing:
                missing[grid.short_name] = MissingGrid(grid.short_name, op.name, op.accuracy)
    ordered = tuple(sorted(missing.values(), key=lambda m: (m.accuracy, m.grid)))
    return Reprojection(_crs_name(crs), best.description, accuracy, used, ordered, extent, crs)


def describe_reprojection(crs: pyproj.CRS, bounds: Sequence[float] | None = None) -> Reprojection:
    """How ``crs`` is transformed to EPSG:4326 with the grids this process has (cached).

    :param bounds: west, south, east, north in degrees of the data; None: over the CRS's area of use
    """
    extent = None if bounds is None else (bounds[0], bounds[1], bounds[2], bounds[3])
    return _describe(crs.to_wkt(), extent)


def transformer_to_wgs84(
    crs: pyproj.CRS, label: str
) -> tuple[pyproj.Transformer | None, Reprojection | None]:
    """A transformer from ``crs`` to EPSG:4326 in traditional GIS order (x = longitude), and its description.

    Both are None for EPSG:4326 itself. The description, over the CRS's area of use, is logged at INFO
    (:meth:`Reprojection.message`); :func:`report_reprojection` tells, once the rows are written, what the data got.

    Readers build one per run and reuse it for every batch (pyproj ≥ 3.1 transformers may be used from a
    helper thread). ``always_xy=True`` keeps x/y = longitude/latitude whatever the CRS axis order says (GDAL ≥ 3
    otherwise follows the authority order; the original Machine ran on GDAL 2, where this was implicit).
    """
    if crs == _wgs84():
        return None, None
    reprojection = describe_reprojection(crs)
    log.info("%s: %s", label, reprojection.message())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _PYPROJ_MISSING_GRID, UserWarning)  # in the line just logged
        transformer = pyproj.Transformer.from_crs(crs, _WGS84, always_xy=True)
    return transformer, reprojection


def report_reprojection(
    reprojection: Reprojection | None, bounds: Sequence[float] | None, label: str
) -> Reprojection | None:
    """Describe the transformation over the extent of the written coordinates and log it.

    A WARNING names the missing grids and the accuracy used when a more accurate operation is known there but not
    available, or when the accuracy is unknown; an INFO line otherwise.

    :param reprojection: the reader's, None when the data needed no transformation
    :param bounds: west, south, east, north in degrees (``stats.json``), None when no coordinate was valid
    :return: the description for ``stats.json``
    """
    if reprojection is None:
        return None
    final = reprojection.within(bounds)
    log.log(logging.WARNING if final.degraded else logging.INFO, "%s: %s", label, final.message())
    return final
