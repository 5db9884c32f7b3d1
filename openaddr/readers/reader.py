"""What every reader shares: the :class:`Reader` interface, CRS and encoding resolution, number texts.

The texts follow processing.md §6.1: null is ``''``, floats are Python ``repr``. Float columns are formatted by
Arrow's shortest round-trip conversion, which gives the same digits as ``repr`` (both print the shortest string
that reads back to the same double); only the notation differs for whole numbers, very small and very large
magnitudes, and those few values are patched with ``repr`` itself.
"""

from __future__ import annotations

import abc
import codecs
import functools
import logging
import re
from typing import TYPE_CHECKING, Any, Self, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyproj

from openaddr.errors import ConformError
from openaddr.readers.base import DEFAULT_BATCH_SIZE

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator
    from pathlib import Path
    from types import TracebackType

    from openaddr.readers.base import Batch
    from openaddr.readers.projection import Reprojection

log = logging.getLogger(__name__)

_EPSG = re.compile(r"EPSG:(\d+)")
_DIGITS = re.compile(r"\d+")


class Reader(abc.ABC):
    """A source file opened for reading, batch by batch (processing.md §6).

    :param path: the file (or ``.gdb`` folder) chosen by §5
    :param label: names the source and layer entry in messages
    :ivar columns: the source's column names, in source order, without the synthetic ``OA:*`` columns
    :ivar geometry_type: the GDAL geometry type name of the layer (§9.4 form), or None when not known
    :ivar skipped: records skipped so far (CSV rows too long, GeoJSON features without geometry)
    :ivar reprojection: how the coordinates are transformed to EPSG:4326, None when they are not (stats.json)
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self.columns: list[str] = []
        self.geometry_type: str | None = None
        self.skipped = 0
        self.reprojection: Reprojection | None = None

    @abc.abstractmethod
    def batches(
        self, batch_size: int = DEFAULT_BATCH_SIZE, *, columns: Collection[str] | None = None
    ) -> Iterator[Batch]:
        """Yield the records in order, ``batch_size`` at a time.

        :param batch_size: records per batch (the last one may be smaller)
        :param columns: when given, only these source columns are materialised (names not in
            :attr:`columns` are ignored); the synthetic ``OA:*`` columns are always present. Reading fewer
            columns is much faster for wide files.
        :raises ConformError: the data cannot be read
        """

    def close(self) -> None:  # noqa: B027 - a no-op default; readers holding resources override it
        """Release whatever the reader holds open."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def fail(self, message: str) -> ConformError:
        """A :class:`ConformError` whose text names the source and layer entry."""
        return ConformError(f"{self.label}: {message}")

    def wanted(self, columns: Collection[str] | None) -> list[str]:
        """The source columns to materialise, in source order."""
        if columns is None:
            return list(self.columns)
        keep = set(columns)
        return [c for c in self.columns if c in keep]


def resolve_encoding(name: object, label: str) -> str:
    """Resolve a ``conform.encoding`` through Python's codec registry (processing.md §6.4).

    Every corpus spelling works: ``EUCKR``, ``SHIFT_JISX0213``, ``ISO-8859-1``, ``CP949``, ``latin1``, …

    :return: the codec's canonical name, e.g. ``euc_kr``
    :raises ConformError: the name is not a string or names no codec
    """
    if not isinstance(name, str) or not name.strip():
        raise ConformError(f"{label}: invalid encoding {name!r}")
    try:
        return codecs.lookup(name.strip()).name
    except LookupError:
        raise ConformError(f"{label}: unknown encoding {name!r}") from None


def is_utf8(codec_name: str) -> bool:
    """Whether a canonical codec name is UTF-8 (with or without a byte-order mark)."""
    return codec_name in ("utf-8", "utf-8-sig")


def parse_srs(value: object, label: str, *, allow_integer: bool = False) -> pyproj.CRS:
    """The CRS named by a ``conform.srs`` (processing.md §6.6).

    ``EPSG:<digits>``; for CSV also a bare integer. Deprecated codes resolve, with a WARNING naming the
    replacement.

    :raises ConformError: any other value, or a code PROJ does not know
    """
    code: str | None = None
    if isinstance(value, str):
        match = _EPSG.fullmatch(value.strip())
        if match:
            code = match.group(1)
        elif allow_integer and _DIGITS.fullmatch(value.strip()):
            code = value.strip()
    elif allow_integer and isinstance(value, int) and not isinstance(value, bool):
        code = str(value)
    if code is None:
        raise ConformError(f"{label}: unsupported srs {value!r}; expected EPSG:<number>")
    return crs_from_user_input(f"EPSG:{int(code)}", label)


def crs_from_user_input(text: str, label: str) -> pyproj.CRS:
    """A CRS from an ``EPSG:n`` text, WKT or PROJJSON, logging a WARNING for deprecated codes.

    :raises ConformError: PROJ cannot make a CRS of it
    """
    try:
        crs = _crs(text)
    except pyproj.exceptions.CRSError as exc:
        raise ConformError(f"{label}: unknown projection {text!r}: {exc}") from None
    if crs.is_deprecated:
        replacements = ", ".join(
            f"{c.to_authority()[0]}:{c.to_authority()[1]}" if c.to_authority() else c.name
            for c in crs.get_non_deprecated()
        )
        log.warning(
            "%s: %s (%s) is deprecated; replaced by %s", label, text, crs.name, replacements or "nothing"
        )
    return crs


@functools.lru_cache(maxsize=64)
def _crs(text: str) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(text)


def transform_xy(
    transformer: pyproj.Transformer | None, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Transform coordinate arrays (float64) to EPSG:4326; a point PROJ cannot transform becomes NaN."""
    if transformer is None or len(x) == 0:
        return x, y
    xx, yy = transformer.transform(x, y, errcheck=False)
    xx = np.asarray(xx, dtype=np.float64)
    yy = np.asarray(yy, dtype=np.float64)
    bad = ~(np.isfinite(xx) & np.isfinite(yy))
    if bad.any():
        xx[bad] = np.nan
        yy[bad] = np.nan
    return xx, yy


def float_texts(values: np.ndarray) -> list[str]:
    """Python ``repr`` of each float64, computed column-wise.

    NaN gives ``'nan'`` (callers that mean "missing" replace it).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if len(values) == 0:
        return []
    # A float64 array has no nulls here, so neither has its text.
    texts = cast("list[str]", pc.cast(pa.array(values, type=pa.float64()), pa.string()).to_pylist())
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(values)
        # Arrow and repr agree on the digits; they differ in notation for whole numbers ("5" vs "5.0"),
        # below 1e-4 ("0.00001" vs "1e-05"), from 1e10 up (Arrow switches to exponents earlier) and for
        # non-finite values. Those are patched; the bound keeps a margin below 1e10.
        plain = (magnitude >= 1e-4) & (magnitude < 1e9) & (values != np.trunc(values))
    patch = np.flatnonzero(~plain)
    if len(patch):
        for i, v in zip(patch.tolist(), values[patch].tolist(), strict=True):
            texts[i] = repr(v)
    return texts


def coordinate_texts(x: np.ndarray, y: np.ndarray) -> tuple[list[str], list[str]]:
    """``OA:x``/``OA:y`` texts: full-precision ``repr``; missing (NaN or infinite) → ``''`` for both."""
    xs = float_texts(x)
    ys = float_texts(y)
    with np.errstate(invalid="ignore"):
        missing = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    for i in missing.tolist():
        xs[i] = ys[i] = ""
    return xs, ys


def texts_or_empty(values: list[Any]) -> list[str]:
    """``str()`` of each value, ``''`` for None (§6.1's fallback for values of no particular kind)."""
    return ["" if v is None else str(v) for v in values]
