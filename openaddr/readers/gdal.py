"""GDAL formats through pyogrio's Arrow stream: shapefile, gdb, GML/KML, GeoPackage (processing.md §6.2).

The layer is streamed in Arrow record batches (geometry as WKB); attribute columns become texts column by
column, in Arrow where the conversion is exact, and the geometry goes through numpy and shapely per batch.
Two helper threads form a pipeline: one has GDAL read the next record batch while the other converts the
previous one, and the caller works on the batch before (GDAL, PROJ and Arrow compute release the GIL).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyogrio
import pyogrio.errors
import pyogrio.raw

from openaddr.readers.archives import lowercase_extension, remove_paths
from openaddr.readers.base import DEFAULT_BATCH_SIZE, OA_GEOM, OA_X, OA_Y, Batch
from openaddr.readers.geometry import (
    centroids,
    geometries_from_wkb,
    geometry_type_name,
    points_from_wkb,
    reproject,
    wkt_texts,
)
from openaddr.readers.projection import transformer_to_wgs84
from openaddr.readers.reader import (
    Reader,
    coordinate_texts,
    crs_from_user_input,
    float_texts,
    parse_srs,
    resolve_encoding,
    texts_or_empty,
    transform_xy,
)
from openaddr.readers.shapefile_points import PointRecords

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

_In = TypeVar("_In")
_Out = TypeVar("_Out")

NO_ENCODING_WARNING = "No encoding given and OGR couldn't guess. Trying ISO-8859-1"

_GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
    pa.ArrowException,
    OSError,
    RuntimeError,
    ValueError,
)


def open_options(path: Path) -> dict[str, Any]:
    """Dataset open options: the GML driver must not write a ``.gfs`` file beside a read-only input.

    Typed as pyogrio's ``**kwargs`` (``Any``), which it passes on to OGR as open options.
    """
    return {"WRITE_GFS": "NO"} if path.suffix.lower() in (".gml", ".xml") else {}


#: Layers a dataset opened with open options may have (each is opened once to learn its name).
MAX_LAYERS = 1000


def layer_names(path: Path, options: Mapping[str, Any]) -> list[str]:
    """The layer names of a dataset, opened with ``options``.

    ``pyogrio.list_layers`` takes no open options, and the GML driver it opens writes a ``.gfs`` beside the input;
    with options, each layer is opened by index with them until there is no next one.
    """
    if not options:
        return [str(row[0]) for row in pyogrio.list_layers(path)]
    names: list[str] = []
    while len(names) < MAX_LAYERS:
        try:
            info = pyogrio.read_info(path, layer=len(names), **options)
        except pyogrio.errors.DataLayerError:
            if not names:
                raise
            break
        names.append(str(info["layer_name"]))
    return names


def resolve_layer(
    path: Path, layer: object, label: str, options: Mapping[str, Any] | None = None
) -> tuple[int, str]:
    """The index and name of ``conform.layer``: an integer is an index, a string a name, absent is 0 (§6.2).

    :param options: dataset open options (:func:`open_options`)
    :raises ConformError: the dataset cannot be opened or has no such layer (the message names the layers)
    """
    from openaddr.errors import ConformError

    try:
        names = layer_names(path, options or {})
    except _GDAL_ERRORS as exc:
        raise ConformError(f"{label}: cannot open {path.name}: {exc}") from None
    if layer is None:
        layer = 0
    if isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer < len(names):
        return layer, names[layer]
    if isinstance(layer, str) and layer in names:
        return names.index(layer), layer
    existing = ", ".join(repr(n) for n in names) or "none"
    raise ConformError(f"{label}: layer {layer!r} not found in {path.name}; layers: {existing}")


class GdalReader(Reader):
    """Reads one layer of a GDAL data source.

    :param path: the file or ``.gdb`` folder
    :param conform: the conform object (``layer``, ``srs``, ``encoding`` apply; ``lon``/``lat`` are ignored)
    :param layer_type: ``addresses`` gives points; other layers also get ``OA:geom`` and geometries
    :param label: names the source and layer entry in messages
    :raises ConformError: unreadable data source, unknown layer, no projection, unknown encoding
    """

    def __init__(
        self,
        path: Path,
        conform: Mapping[str, Any],
        *,
        layer_type: str,
        label: str,
        point_records: bool = True,
    ) -> None:
        super().__init__(path, label)
        self.addresses = layer_type == "addresses"
        self._points: PointRecords | None = None
        self._cleanup: list[Path | None] = []
        try:
            self._open(path, conform, label, point_records)
        except BaseException:
            self.close()  # the temporary links and .dbf folder must not outlive a failed open
            raise

    def _open(self, path: Path, conform: Mapping[str, Any], label: str, point_records: bool) -> None:
        from openaddr.readers.integrity import check_dataset

        self._open_path, tmp = lowercase_extension(path)
        self._cleanup = [tmp]
        check_dataset(self._open_path, label)
        self._options = open_options(path)
        # 2D point shapefiles: points from the .shp records, attributes from the .dbf alone, so no process holds
        # GDAL's whole .shx index (shapefile_points.py); GDAL must not even open the .shp to describe it.
        if point_records and self.addresses:
            self._points = PointRecords.for_layer(self._open_path, conform.get("layer"))
        try:
            if self._points is not None:
                self._layer, self.layer_name = 0, self._open_path.stem
                info: Mapping[str, Any] = self._points.info
            else:
                self._layer, self.layer_name = resolve_layer(
                    self._open_path, conform.get("layer"), label, self._options
                )
                info = pyogrio.read_info(self._open_path, layer=self._layer, **self._options)
        except _GDAL_ERRORS as exc:
            raise self.fail(f"cannot read {path.name}: {exc}") from None
        self.columns = [str(c) for c in info["fields"]]
        self.geometry_type = geometry_type_name(info["geometry_type"])
        self.feature_count = int(info.get("features") or 0)
        self.driver = str(info.get("driver") or "")
        self._skip: int = 0
        self._limit: int | None = None
        # OLCStringsAsUTF8 (shapefiles with .cpg or language id, FileGDB, GeoPackage, GML): GDAL decodes.
        self._decode: str | None = None
        if info.get("encoding") != "UTF-8":
            if conform.get("encoding") is not None:
                self._decode = resolve_encoding(conform.get("encoding"), label)
            else:
                log.warning(NO_ENCODING_WARNING)
                self._decode = "iso8859-1"
        srs = conform.get("srs")
        if srs is not None:
            crs = parse_srs(srs, label)
        elif info.get("crs"):
            crs = crs_from_user_input(str(info["crs"]), label)
        else:
            raise self.fail("No projection found")
        self.crs = crs
        self._transformer, self.reprojection = transformer_to_wgs84(crs, label)
        log.info(
            "Reading %s layer %r (%s, %s, %d features, %s)",
            path.name,
            self.layer_name,
            self.driver,
            self.geometry_type,
            self.feature_count,
            crs.to_string(),
        )

    #: Drivers that seek to a feature index without reading the features before it.
    SEEKABLE_DRIVERS = frozenset({"ESRI Shapefile", "OpenFileGDB", "GPKG"})

    @property
    def seekable(self) -> bool:
        """Whether :meth:`restrict` is cheap: a slice of the layer can be read without reading what precedes it."""
        return self.driver in self.SEEKABLE_DRIVERS and self.feature_count > 0

    def restrict(self, skip: int, limit: int) -> None:
        """Read only ``limit`` features after the first ``skip`` (one slice of the layer, for a worker process)."""
        self._skip, self._limit = skip, limit

    def close(self) -> None:
        """Remove the temporary lower-case links, if any were made."""
        points = getattr(self, "_points", None)
        if points is not None:
            points.close()
            self._points = None
        remove_paths(self._cleanup)
        self._cleanup = []

    def batches(
        self, batch_size: int = DEFAULT_BATCH_SIZE, *, columns: Collection[str] | None = None
    ) -> Iterator[Batch]:
        """Stream the layer as batches of texts (see :meth:`Reader.batches`).

        :raises ConformError: GDAL fails while reading, or a text does not decode
        """
        wanted = self.wanted(columns)
        points = self._points
        try:
            with pyogrio.raw.open_arrow(
                points.dbf if points is not None else self._open_path,
                layer=None if points is not None else self._layer,
                columns=wanted,
                read_geometry=points is None,
                return_fids=points is not None,
                batch_size=batch_size,
                skip_features=self._skip,
                use_pyarrow=True,
                **self._options,
            ) as (meta, stream):
                geometry_name = meta.get("geometry_name") or "wkb_geometry"
                fid_name = meta.get("fid_column") or "OGC_FID"
                record_batches = _threaded(_record_batches(stream, self._limit), _identity, "gdal-read")
                yield from _threaded(
                    record_batches,
                    lambda rb: self._convert(rb, wanted, geometry_name, fid_name),
                    "gdal-convert",
                )
        except _GDAL_ERRORS as exc:
            raise self.fail(f"error reading {self.path.name}: {exc}") from None

    def _convert(self, rb: pa.RecordBatch, wanted: list[str], geometry_name: str, fid_name: str) -> Batch:
        names = rb.schema.names
        columns: dict[str, list[str]] = {}
        first = 1 if self._points is not None and names and names[0] == fid_name else 0
        for i, name in enumerate(wanted, start=first):
            # GDAL returns the attribute columns in layer order (after the FID when asked), then the geometry
            column = rb.column(i) if i < len(names) and names[i] == name else rb.column(name)
            columns[name] = self._texts(column, name)
        n = rb.num_rows
        geometry = rb.column(geometry_name) if geometry_name in names else None
        geometries: list[Any] | None = None
        if self._points is not None:
            x, y = transform_xy(self._transformer, *self._points.xy(rb.column(fid_name).to_numpy()))
            geoms = None
        elif geometry is None:
            x = y = np.full(n, np.nan)
            geoms = np.full(n, None, dtype=object)
        elif self.addresses and (points := points_from_wkb(geometry)) is not None:
            x, y = transform_xy(self._transformer, *points)
            geoms = None
        else:
            geoms, broken = geometries_from_wkb(geometry)
            geoms = reproject(geoms, self._transformer)
            x, y = centroids(geoms, broken)
        columns[OA_X], columns[OA_Y] = coordinate_texts(x, y)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(x) & np.isfinite(y)
        xy = (np.where(ok, x, np.nan), np.where(ok, y, np.nan))
        if not self.addresses:
            assert geoms is not None
            columns[OA_GEOM] = wkt_texts(geoms)
            geometries = geoms.tolist()
        return Batch(columns=columns, size=n, geometries=geometries, xy=xy)

    def _texts(self, column: pa.Array[Any], name: str) -> list[str]:
        if self._decode is not None and (
            pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        ):
            return _decoded_texts(column, self._decode, name, self.label)
        try:
            return arrow_texts(column)
        except UnicodeDecodeError:
            log.warning(
                "%s: field %r holds text that is not UTF-8; undecodable bytes replaced", self.label, name
            )
            return _decoded_texts(column, "utf-8", name, self.label, errors="replace")


def _identity(item: _In) -> _In:
    return item


def _decoded_texts(
    column: pa.Array[Any], encoding: str, name: str, label: str, errors: str = "strict"
) -> list[str]:
    """Texts of a string column whose bytes are in ``encoding`` (GDAL did not recode them)."""
    from openaddr.errors import ConformError

    if errors == "strict" and pc.all(pc.string_is_ascii(column)).as_py() is not False:
        return _null_as_empty(column)
    raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()).to_pylist()
    try:
        return ["" if v is None else v.decode(encoding, errors) for v in raw]
    except UnicodeDecodeError as exc:
        bad = next(v for v in raw if v is not None and not _decodes(v, encoding))
        raise ConformError(
            f"{label}: field {name!r}: cannot decode {bad!r} as {encoding}: {exc.reason}"
        ) from None


def _null_as_empty(texts: Any) -> list[str]:
    """The values of an Arrow string array or a compute result over one, null as ``''``."""
    return cast("list[str]", texts.fill_null("").to_pylist())


def _decodes(value: bytes, encoding: str) -> bool:
    try:
        value.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def arrow_texts(column: pa.Array[Any]) -> list[str]:
    """The §6.1 texts of an Arrow column as GDAL delivers it.

    null → ``''``; integers decimal; floats ``repr``; dates ``YYYY/MM/DD``; date-times ``YYYY/MM/DD HH:MM:SS``;
    booleans ``True``/``False``; lists and anything else ``str()``.
    """
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _null_as_empty(column)
    if pa.types.is_integer(t):
        return _null_as_empty(pc.cast(column, pa.string()))
    if pa.types.is_floating(t):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        texts = float_texts(values)
        if column.null_count:
            for i in np.flatnonzero(np.asarray(column.is_null())).tolist():
                texts[i] = ""
        return texts
    if pa.types.is_boolean(t):
        return _null_as_empty(pc.if_else(column, "True", "False"))
    if pa.types.is_date(t):
        text = pc.cast(column.cast(pa.date32()), pa.string())
        return _null_as_empty(pc.replace_substring(text, "-", "/"))
    if pa.types.is_timestamp(t):
        return [_datetime_text(v) for v in column.to_pylist()]
    if pa.types.is_time(t):
        return [_time_text(v) for v in column.to_pylist()]
    if pa.types.is_null(t):
        return [""] * len(column)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return ["" if v is None else v.hex().upper() for v in column.to_pylist()]
    return texts_or_empty(column.to_pylist())


def _datetime_text(value: Any) -> str:
    """OGR's text form of a date-time: ``YYYY/MM/DD HH:MM:SS``, milliseconds and time zone when present."""
    if value is None:
        return ""
    text = f"{value.year:04d}/{value.month:02d}/{value.day:02d} {value.hour:02d}:{value.minute:02d}"
    text += (
        f":{value.second:02d}"
        if not value.microsecond
        else f":{value.second + value.microsecond / 1e6:06.3f}"
    )
    offset = value.utcoffset() if value.tzinfo is not None else None
    if offset is not None:
        minutes = int(offset.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        hours, rest = divmod(abs(minutes), 60)
        text += f"{sign}{hours:02d}" + (f"{rest:02d}" if rest else "")
    return text


def _time_text(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value.hour:02d}:{value.minute:02d}"
    return text + (
        f":{value.second:02d}"
        if not value.microsecond
        else f":{value.second + value.microsecond / 1e6:06.3f}"
    )


def sample_values(column: pa.Array[Any], decode: str | None) -> list[Any]:
    """Native values for ``sample.json`` (§9.4): integers, floats, strings, null; dates and times as text."""
    t = column.type
    if decode is not None and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raw = column.cast(pa.binary()).to_pylist()
        return [None if v is None else v.decode(decode, "replace") for v in raw]
    if pa.types.is_date(t):
        return [
            None if v is None else text
            for v, text in zip(column.to_pylist(), arrow_texts(column), strict=True)
        ]
    if pa.types.is_timestamp(t):
        return [None if v is None else _datetime_text(v) for v in column.to_pylist()]
    if pa.types.is_time(t):
        return [None if v is None else _time_text(v) for v in column.to_pylist()]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [None if v is None else v.hex().upper() for v in column.to_pylist()]
    try:
        values = column.to_pylist()
    except UnicodeDecodeError:
        raw = column.cast(pa.binary()).to_pylist()
        return [None if v is None else v.decode("utf-8", "replace") for v in raw]
    return [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in values]


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def _record_batches(stream: pa.RecordBatchReader, limit: int | None = None) -> Iterator[pa.RecordBatch]:
    """The stream's batches, cut after ``limit`` rows when given (GDAL's Arrow stream has no row limit)."""
    remaining = limit
    while remaining is None or remaining > 0:
        try:
            batch = stream.read_next_batch()
        except StopIteration:
            return
        if remaining is not None:
            batch = batch.slice(0, remaining)
            remaining -= batch.num_rows
        yield batch


def _threaded(items: Iterator[_In], work: Callable[[_In], _Out], name: str, depth: int = 2) -> Iterator[_Out]:
    """Run ``work`` over ``items`` on a helper thread, ``depth`` results ahead of the caller.

    GDAL reading, PROJ and Arrow compute release the GIL, so a stage reading the next record batch and a stage
    converting the previous one run alongside the caller's own work. The thread is stopped and joined before
    this generator ends (also when the caller stops early), so the dataset is never read after it is closed.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(work(item)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed over to the caller
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                break
            if isinstance(item, _Failed):
                raise item.exc
            yield cast("_Out", item)  # anything else on the queue is a result of work()
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
