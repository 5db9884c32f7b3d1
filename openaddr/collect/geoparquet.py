"""The GeoParquet collections (issue 13, 2a): ``openaddr-collected-<area>[-sa]-<layer>.parquet``.

One GeoParquet 1.1 file per area, licence class and layer type, built beside the zips in the same pass over the
runs (:func:`openaddr.collect.collect` hands every input to :class:`GeoParquetCollections` as it reads it):

* **addresses** come from the rewritten CSV of each run zip, with the zip collections' rule: a row whose ``LON`` or
  ``LAT`` is not a plain finite decimal within ±180 / ±90 is dropped, so an address GeoParquet file holds exactly
  the rows of the zip of the same area and licence class; the attributes are the CSV's (``number`` … ``hash``,
  the names the GeoJSON uses), as text, empty values empty;
* **parcels, buildings, centerlines** come from each run's line-delimited GeoJSON (``out.geojson.gz``), the
  attributes being the layer type's properties (``hash`` first); a feature without a geometry, with an empty one or
  with coordinates outside ±180 / ±90 is dropped.

Every row also carries ``source_path`` (the source file, ``sources/….json``), ``source_layer`` and ``layer_name``
(the layer entry; the names of the ``runs`` columns, which no layer type's attribute takes: centerlines have a
``name``) and ``run_id``; then the WKB ``geometry`` and the ``bbox`` covering column ``{xmin, ymin, xmax, ymax}``. The file's
``geo`` metadata (GeoParquet 1.1.0) names the primary column, the WKB encoding, the geometry types found, the
file's bounding box and the covering; ``crs`` is omitted, which the specification defines as OGC:CRS84
(longitude, latitude on WGS 84).

**Order.** Rows are sorted by the Hilbert index of their bounding box's centre (32 bits per axis over the whole
globe, :func:`hilbert_index`), so each row group (:data:`ROW_GROUP_ROWS` rows) covers a compact area and a reader
filtering on ``bbox`` skips the others by their column statistics. The sort is external and memory stays flat
whatever the collection's size. The collections of one licence class and layer type (``global`` and the areas)
share one sort: a row is buffered once with a bit for each collection it goes to (a point layer's row as its
longitude and latitude; WKB and bbox are built as it is written); when all buffers together pass
:data:`BUFFER_BYTES` the largest is sorted and spilled to a temporary Arrow IPC file (a sorted run) with its keys
in a file beside it; at the end each sorter's runs are merged by their keys (:func:`_merge`: windows of keys read
ahead, rows read as taken, about a window of rows a round whatever the number of runs), split among the
collections by their bits and written by one writer each, in row groups (pyarrow's ``ParquetWriter`` a part of
:data:`~openaddr.collect.parquet_parts.PART_ROW_GROUPS` row groups at a time, the parts stitched into the file
by :class:`~openaddr.collect.parquet_parts.PartedParquetWriter`, so the writer's footer metadata stays bounded);
a file is finished as soon as the merge passes its highest key, and when the files hold more than
:data:`PENDING_BYTES` of rows between row groups, the one that has waited longest for rows writes a shorter group.
A sorter that never spilled is sorted in memory. Each file holds the same rows in the same order as if its
collection had been sorted alone.

**Threads** (:class:`Workers`, one per core by default): the caller's thread inflates, routes rows and keeps the
merge's books; the workers parse and convert blocks, sort and spill buffers, and take and split merge rounds
(:func:`_ordered_map` keeps every result in order, so the files do not depend on timing); a writer thread per
worker finishes and encodes row groups. The files are the same with any number of workers, none included.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openaddr.canonical import OUTPUT_COLUMNS
from openaddr.collect.parquet_parts import PART_ROW_GROUPS, PartedParquetWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

#: The GeoParquet version written.
GEOPARQUET_VERSION = "1.1.0"
#: Rows per row group of a published file (GDAL writes 65,536 by default, DuckDB 122,880: half GDAL's keeps a
#: file's row groups in flight on the writer threads within the memory target, and lets a bbox filter skip finer).
ROW_GROUP_ROWS = 32_768
#: Bytes of merged rows the files of a sorter may hold between row groups together: over it, the file that has
#: waited longest for rows writes a shorter row group (a file of each of 18 areas held up to a row group each).
PENDING_BYTES = 16 << 20
#: Bytes of rows all collections may buffer before the largest buffer is sorted and spilled (one more buffer is
#: being sorted and spilled on a worker thread meanwhile).
BUFFER_BYTES = 16 << 20
#: How long jemalloc keeps freed pages before it hands them back (its default, 1 s, kept about 100 MiB of the
#: short-lived tables of the worker threads resident; 0 costs about a fifth more CPU in page faults).
JEMALLOC_DECAY_MS = 100
#: glibc malloc arenas at most while collections are built (:func:`_limit_malloc_arenas`).
MALLOC_ARENAS = 2
#: Rows per batch of a spilled run (the merge holds one batch per run).
SPILL_BATCH_ROWS = 512
#: Rows of a sorted buffer taken and written at once as it is spilled.
SPILL_TAKE_ROWS = 16_384
#: Keys of each run the merge reads ahead (8 bytes each, from the run's key file): a merge round takes about this
#: many rows (at most twice), whatever the number of runs (over 51 M rows: 4,096 took 159 s and 358 MiB, 16,384
#: 89 s and 332 MiB, 32,768 98 s and 397 MiB).
MERGE_WINDOW_KEYS = 16_384
#: A merge round that would take too many rows finds its lower threshold from every this-many-th key.
CAP_SAMPLE_STRIDE = 16
#: Keys of a run's window loaded at first (more as a round needs them): a round takes a few hundred rows from each
#: of the many runs it touches, and whole windows loaded for each held about 23 MiB over 51 M rows.
MERGE_KEY_CHUNK = 2_048
#: Runs merged at once at most (two open files each; more runs are first merged in contiguous groups of the
#: oldest, as few as bring the count down to this). Only the runs a round touches hold keys and rows.
MERGE_FAN_IN = 512
#: Records read at once from a CSV member or a GeoJSON file.
READ_BLOCK_BYTES = 2 << 20
#: Parquet compression of the published files (GDAL, DuckDB and GeoPandas all read it).
COMPRESSION: Literal["zstd"] = "zstd"

#: Columns that are (nearly) unique per row: dictionary encoding would only cost time (Arrow tries, then gives up
#: on each row group); every other text column is dictionary encoded.
UNIQUE_COLUMNS = ("id", "hash")
#: Attribute columns of an address file: the CSV's columns after LON and LAT, lower case.
ADDRESS_ATTRIBUTES = tuple(column.lower() for column in OUTPUT_COLUMNS[2:])
#: Columns every row carries before its attributes.
PROVENANCE = (
    ("source_path", pa.string()),
    ("source_layer", pa.string()),
    ("layer_name", pa.string()),
    ("run_id", pa.int64()),
)
BBOX_TYPE = pa.struct([(n, pa.float64()) for n in ("xmin", "ymin", "xmax", "ymax")])
#: shapely's geometry type ids → GeoParquet's names (LinearRing cannot come out of GeoJSON).
_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
_KEY = "_key"
_INPUT = "_input"
_TARGETS = "_targets"
_X = "_x"
_Y = "_y"
#: Layer types whose geometry is a point built from a longitude and a latitude (the address CSVs).
POINT_LAYERS = frozenset({"addresses"})
#: Collections one sorter (a licence class and layer type) can feed: a bit each in a uint64.
MAX_SORTER_COLLECTIONS = 64
_POINT_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])


class GeoParquetError(ValueError):
    """A run's output that cannot be read into a GeoParquet collection (the message names run, source and layer)."""


def parquet_name(area: str, license_attr: str, layer: str) -> str:
    """``openaddr-collected-<area>[-sa]-<layer>.parquet``."""
    suffix = f"-{license_attr}" if license_attr else ""
    return f"openaddr-collected-{area}{suffix}-{layer}.parquet"


def layer_attributes(layer: str) -> tuple[str, ...]:
    """The attribute columns of a layer type's files: the address CSV's, else ``hash`` and the layer type's
    properties (:data:`openaddr.conform.ATTRIBUTES`)."""
    if layer == "addresses":
        return ADDRESS_ATTRIBUTES
    from openaddr.conform import ATTRIBUTES

    return ("hash", *ATTRIBUTES[layer])


def file_schema(layer: str) -> pa.Schema:
    """The Arrow schema of a layer type's files (without the ``geo`` metadata)."""
    fields: list[pa.Field[Any]] = [
        *(pa.field(name, kind, nullable=False) for name, kind in PROVENANCE),
        *(pa.field(name, pa.string(), nullable=False) for name in layer_attributes(layer)),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX_TYPE, nullable=False),
    ]
    return pa.schema(fields)


def _buffer_schema(layer: str) -> pa.Schema:
    """Rows as buffered and spilled: the curve key, the input's index, the collections the row goes to (a bit per
    collection of its sorter), the attributes, and the spatial columns: a point layer's (addresses) longitude and
    latitude only (its WKB and bbox are built as it is written: 16 bytes a row instead of 57 to sort and spill),
    another layer's WKB and bounds."""
    spatial = (
        [(_X, pa.float64()), (_Y, pa.float64())]
        if layer in POINT_LAYERS
        else [("geometry", pa.binary()), *((f"_{n}", pa.float64()) for n in BBOX_TYPE.names)]
    )
    fields: list[pa.Field[Any]] = [
        pa.field(_KEY, pa.uint64(), nullable=False),
        pa.field(_INPUT, pa.int32(), nullable=False),
        pa.field(_TARGETS, pa.uint64(), nullable=False),
        *(pa.field(name, pa.string(), nullable=False) for name in layer_attributes(layer)),
        *(pa.field(name, kind, nullable=False) for name, kind in spatial),
    ]
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------------------------
# The curve


def _interleave(v: np.ndarray) -> np.ndarray:
    """Spread the low 32 bits of each value to the even bits of a 64-bit value."""
    v = v & np.uint64(0xFFFFFFFF)
    for shift, mask in (
        (16, 0x0000FFFF0000FFFF),
        (8, 0x00FF00FF00FF00FF),
        (4, 0x0F0F0F0F0F0F0F0F),
        (2, 0x3333333333333333),
        (1, 0x5555555555555555),
    ):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def hilbert_index(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The index along the Hilbert curve of order 32 of cells ``(x, y)`` (integers in ``[0, 2**32)``), as uint64.

    Branch-free and column-wise: the prefix-scan formulation of the curve's state machine by Fabian Giesen
    (``hilbertXYToIndex`` of github.com/rawrunprotected/hilbert_curves, public domain), widened from 16 to 32 bits
    per axis: one more doubling round. A test checks it is a Hilbert curve: a permutation of the cells in which
    consecutive indices are neighbouring cells.
    """
    u = np.uint64
    ones = u(0xFFFFFFFF)
    x = np.asarray(x, dtype=np.uint64) & ones
    y = np.asarray(y, dtype=np.uint64) & ones
    one = u(1)
    a = x ^ y
    b = ones ^ a
    c = ones ^ (x | y)
    d = x & (y ^ ones)
    big_a = a | (b >> one)
    big_b = (a >> one) ^ a
    big_c = ((c >> one) ^ (b & (d >> one))) ^ c
    big_d = ((a & (c >> one)) ^ (d >> one)) ^ d
    for shift in (u(2), u(4), u(8)):
        a, b, c, d = big_a, big_b, big_c, big_d
        big_a = (a & (a >> shift)) ^ (b & (b >> shift))
        big_b = (a & (b >> shift)) ^ (b & ((a ^ b) >> shift))
        big_c = c ^ ((a & (c >> shift)) ^ (b & (d >> shift)))
        big_d = d ^ ((b & (c >> shift)) ^ ((a ^ b) & (d >> shift)))
    shift = u(16)
    a, b, c, d = big_a, big_b, big_c, big_d
    big_c = c ^ ((a & (c >> shift)) ^ (b & (d >> shift)))
    big_d = d ^ ((b & (c >> shift)) ^ ((a ^ b) & (d >> shift)))
    a = big_c ^ (big_c >> one)
    b = big_d ^ (big_d >> one)
    i0 = x ^ y
    i1 = b | (ones ^ (i0 | a))
    result: np.ndarray = (_interleave(i1) << one) | _interleave(i0)
    return result


def curve_keys(xmin: np.ndarray, ymin: np.ndarray, xmax: np.ndarray, ymax: np.ndarray) -> np.ndarray:
    """The sort key of each row: the Hilbert index of its bbox centre on a 2**32 × 2**32 grid over the globe."""
    scale = 2.0**32
    cx = np.floor(((xmin + xmax) / 2 + 180.0) / 360.0 * scale)
    cy = np.floor(((ymin + ymax) / 2 + 90.0) / 180.0 * scale)
    top = scale - 1
    return hilbert_index(np.clip(cx, 0, top).astype(np.uint64), np.clip(cy, 0, top).astype(np.uint64))


def stable_order(keys: np.ndarray) -> np.ndarray:
    """The stable sort order of ``keys`` (equal keys keep their order), like ``np.argsort(keys, kind="stable")``
    but about four times as fast on uint64: numpy's quicksort, then only the runs of equal keys put back in
    order."""
    order: np.ndarray = np.argsort(keys)
    ranked = keys[order]
    same = ranked[1:] == ranked[:-1]
    if not same.any():
        return order
    tied = np.zeros(len(keys), dtype=bool)
    tied[1:] = same
    tied[:-1] |= same
    runs = np.cumsum(~np.concatenate(([False], same)))[tied]  # the run of equal keys of each tied position
    positions = order[tied]
    order[tied] = positions[np.lexsort((positions, runs))]
    return order


# --------------------------------------------------------------------------------------------------------------
# Reading rows


def _as_text(array: pa.Array[Any]) -> pa.Array[Any]:
    """A binary column as UTF-8 text; bytes that are not UTF-8 become U+FFFD (Parquet strings must be UTF-8,
    unlike the zips, which pass them through)."""
    if array.type == pa.string():
        return array
    try:
        return array.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array(
            [None if v is None else v.decode("utf-8", "replace") for v in array.to_pylist()], pa.string()
        )


def _coordinates(array: pa.Array[Any], limit: float) -> np.ndarray:
    """Coordinate texts as floats, NaN where the zips drop the row: not a plain decimal number (blanks around it
    allowed; the rule of stats.json, ``openaddr.outputs._NUMBER``) or beyond ±``limit``. The zip step's parser
    (:func:`openaddr.collect.archive._parse_numbers`: plain texts cast at once, only the others matched against
    the pattern)."""
    from openaddr.collect.archive import _parse_numbers

    values: np.ndarray = np.asarray(_parse_numbers(_as_text(array)), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        values[~(np.abs(values) <= limit)] = np.nan
    return values


def point_wkb(lon: np.ndarray, lat: np.ndarray) -> pa.Array[Any]:
    """ISO WKB points (little endian, 21 bytes each), built column-wise."""
    size = len(lon)
    points = np.empty(size, dtype=_POINT_WKB)
    points["order"] = 1
    points["type"] = 1
    points["x"] = lon
    points["y"] = lat
    offsets = np.arange(0, _POINT_WKB.itemsize * (size + 1), _POINT_WKB.itemsize, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(),
        size,
        [None, pa.py_buffer(cast("Any", offsets)), pa.py_buffer(cast("Any", points.view(np.uint8)))],
    )


def _bbox(xmin: np.ndarray, ymin: np.ndarray, xmax: np.ndarray, ymax: np.ndarray) -> pa.StructArray:
    return pa.StructArray.from_arrays(
        [pa.array(v, pa.float64()) for v in (xmin, ymin, xmax, ymax)], fields=list(BBOX_TYPE)
    )


@dataclass
class _Batch:
    """Rows of one input ready for the collections: the curve key, the attributes, the spatial columns as buffered
    (:func:`_buffer_schema`: longitude and latitude of a point layer, else WKB and bounds), the geometry types and
    bounds."""

    key: np.ndarray
    attributes: list[pa.Array[Any]]
    spatial: list[pa.Array[Any]]
    types: set[str]
    bounds: tuple[float, float, float, float]

    def __len__(self) -> int:
        return len(self.key)


def _address_batch(columns: Mapping[str, pa.Array[Any]], size: int) -> tuple[_Batch | None, int]:
    """Address rows from CSV columns by name (binary; a missing column is empty): the batch of valid rows and how
    many were dropped."""
    empty = pa.array([b""] * size, pa.binary()) if size else pa.array([], pa.binary())
    lon = _coordinates(columns.get("LON", empty), 180.0)
    lat = _coordinates(columns.get("LAT", empty), 90.0)
    valid = ~(np.isnan(lon) | np.isnan(lat))
    kept = int(valid.sum())
    if kept == 0:
        return None, size
    mask = pa.array(valid)
    lon, lat = lon[valid], lat[valid]
    attributes = [
        _as_text(columns[name].filter(mask)) if name in columns else pa.array([""] * kept, pa.string())
        for name in OUTPUT_COLUMNS[2:]
    ]
    bounds = (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()))
    spatial: list[pa.Array[Any]] = [pa.array(lon, pa.float64()), pa.array(lat, pa.float64())]
    batch = _Batch(curve_keys(lon, lat, lon, lat), attributes, spatial, {"Point"}, bounds)
    return batch, size - kept


def _record_end(data: bytes) -> int:
    """The index just past the last line end of ``data`` that ends a CSV record (one outside quotes: an even number
    of quote characters before it, counting from a record start), 0 when there is none. Line ends inside quotes
    are rare, so this walks back from the last one, counting the quotes after it."""
    quotes = data.count(b'"')
    end = len(data)
    while (end := data.rfind(b"\n", 0, end)) >= 0:
        if (quotes - data.count(b'"', end)) % 2 == 0:
            return end + 1
    return 0


def _first_record_end(data: bytes) -> int:
    """The index just past the first record of ``data`` (its first line end outside quotes), or its length."""
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        if data.count(b'"', 0, end) % 2 == 0:
            return end + 1
        start = end + 1
    return len(data)


def _record_blocks(member: IO[bytes], block_bytes: int) -> Iterator[bytes]:
    """The member's bytes in blocks of whole records (about ``block_bytes`` each; a longer record makes a longer
    block)."""
    rest = b""
    while chunk := member.read(block_bytes):
        data = rest + chunk
        cut = _record_end(data)
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def read_address_csv(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    block_bytes: int = READ_BLOCK_BYTES,
    workers: Workers | None = None,
) -> Iterator[tuple[_Batch | None, int]]:
    """The address rows of a CSV member, batch by batch, with the rows dropped per batch.

    Columns are taken by name from the header like the zips' rewrite (the first of a repeated name; a missing one
    is empty). The member is decompressed in blocks of whole records, each parsed by Arrow's CSV reader (Arrow's
    streaming reader holds several blocks at once: twice the memory); a record it refuses (a field count other
    than the header's) is parsed by the csv module instead, padded or cut to the header, as the zip step keeps it:
    row order does not matter here, the rows are sorted afterwards.

    With ``workers``, blocks are parsed and converted on their threads while this thread inflates the next ones
    (:func:`_ordered_map`: the batches still come in the member's order).
    """
    import pyarrow.csv as pacsv

    with archive.open(info) as member:
        if info.compress_type == zipfile.ZIP_DEFLATED and hasattr(member, "_decompressor"):
            # zipfile has no hook for another inflate implementation; ISA-L's is compatible and about twice as
            # fast (archive.py swaps the compressor the same way).
            from isal import isal_zlib

            member._decompressor = isal_zlib.decompressobj(-15)
        blocks = _record_blocks(member, block_bytes)
        first = next(blocks, b"")
        header_end = _first_record_end(first)
        header_text = first[:header_end].decode("utf-8", "surrogateescape")
        header = next(csv.reader(io.StringIO(header_text, newline="")), None) or []
        if not header:
            return
        wanted: dict[str, int] = {}
        for index, name in enumerate(header):
            if name in OUTPUT_COLUMNS and name not in wanted:
                wanted[name] = index
        names = [f"c{i}" for i in range(len(header))]
        read_options = pacsv.ReadOptions(column_names=names, use_threads=False)
        # Text columns (the parser validates UTF-8 as it converts); a block that is not all UTF-8 is parsed again
        # as bytes, and its columns decoded with replacement characters (:func:`_as_text`).
        convert_options, binary_options = (
            pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, kind),
                include_columns=[names[i] for i in wanted.values()],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            )
            for kind in (pa.string(), pa.binary())
        )

        def read(block: bytes, options: pacsv.ConvertOptions, parse_options: pacsv.ParseOptions) -> pa.Table:
            return pacsv.read_csv(
                cast("Any", pa.py_buffer(block)),  # the stubs omit buffers, which read_csv takes
                read_options=read_options,
                parse_options=parse_options,
                convert_options=options,
            )

        def parse(block: bytes) -> tuple[pa.Table | None, list[str]]:
            """A block's table (None when blank) and the records the parser refused."""
            refused: list[str] = []

            def refuse(row: pacsv.InvalidRow) -> Literal["skip", "error"]:
                refused.append(row.text)
                return "skip"

            if not block or block.isspace():  # no copy, unlike strip()
                return None, refused
            parse_options = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=refuse)
            try:
                table = read(block, convert_options, parse_options)
            except pa.ArrowInvalid:
                refused.clear()
                table = read(block, binary_options, parse_options)
            return table, refused

        def convert(block: bytes) -> list[tuple[_Batch | None, int]]:
            table, refused = parse(block)
            batches = []
            if table is not None and table.num_rows:
                columns = {
                    name: table.column(names[index]).combine_chunks() for name, index in wanted.items()
                }
                batches.append(_address_batch(columns, table.num_rows))
            if refused:
                batches.append(_refused_rows(refused, wanted))
            return batches

        for batches in _ordered_map(convert, itertools.chain([first[header_end:]], blocks), workers):
            yield from batches


_T = TypeVar("_T")
_R = TypeVar("_R")
#: Rows of a merge round and the order to take them in (None: already in order).
_Piece = tuple[pa.Table, "np.ndarray | None"]


@dataclass(frozen=True)
class Workers:
    """Threads that parse and convert blocks of rows, sort and spill buffers, and take and split merge rounds (as
    many writer threads finish and encode row groups), while the caller's thread inflates, routes and merges
    rows: pyarrow, numpy's sorts, ISA-L and shapely release the GIL for the heavy part of each, so they run on
    every core. ``window``: calls queued or running at most in
    :func:`_ordered_map` (each holds a block of rows)."""

    pool: ThreadPoolExecutor
    count: int
    window: int

    @classmethod
    def start(cls, count: int) -> Workers:
        return cls(ThreadPoolExecutor(count, thread_name_prefix="geoparquet"), count, count + 2)


def default_workers() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ordered_map(
    function: Callable[[_T], _R], items: Iterable[_T], workers: Workers | None, window: int | None = None
) -> Iterator[_R]:
    """``map(function, items)``, the calls run on the workers' threads (at most ``window`` queued or running,
    default ``workers.window``, so the memory they hold stays bounded) while the caller's thread takes the next
    items; the results still come in the items' order. Without workers, plain ``map``."""
    if workers is None:
        yield from map(function, items)
        return
    pending: deque[Future[_R]] = deque()
    try:
        for item in items:
            pending.append(workers.pool.submit(function, item))
            if len(pending) >= (window or workers.window):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for future in pending:
            with contextlib.suppress(BaseException):
                future.result()  # a call already running: let it end before its inputs go


def _refused_rows(texts: list[str], wanted: dict[str, int]) -> tuple[_Batch | None, int]:
    rows = [
        row
        for row in csv.reader(io.StringIO("".join(t if t.endswith("\n") else t + "\n" for t in texts)))
        if row
    ]
    return _rows_batch(rows, wanted)


def _rows_batch(rows: list[list[str]], wanted: dict[str, int]) -> tuple[_Batch | None, int]:
    columns = {
        name: pa.array(
            [(row[index] if index < len(row) else "").encode("utf-8", "surrogateescape") for row in rows],
            pa.binary(),
        )
        for name, index in wanted.items()
    }
    return _address_batch(columns, len(rows))


def _feature_batch(lines: list[bytes], attributes: Sequence[str], where: str) -> tuple[_Batch | None, int]:
    """Features from GeoJSON lines: the batch of those with a valid geometry and how many were dropped."""
    import pyarrow.json as pajson
    import shapely

    size = len(lines)
    geometries = shapely.from_geojson(np.array(lines, dtype=object), on_invalid="ignore")
    schema = pa.schema([("properties", pa.struct([(name, pa.string()) for name in attributes]))])
    try:
        table = pajson.read_json(
            io.BytesIO(b"\n".join(lines)),
            read_options=pajson.ReadOptions(block_size=max(READ_BLOCK_BYTES, sum(map(len, lines)) + size)),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except pa.ArrowInvalid as exc:
        raise GeoParquetError(
            f"{where}: not line-delimited GeoJSON features with text properties: {exc}"
        ) from exc
    if table.num_rows != size:
        raise GeoParquetError(f"{where}: {size} lines but {table.num_rows} features")
    bounds = shapely.bounds(geometries)  # NaN for None and empty geometries
    xmin, ymin, xmax, ymax = (bounds[:, i] for i in range(4))
    with np.errstate(invalid="ignore"):
        valid = (np.abs(xmin) <= 180) & (np.abs(xmax) <= 180) & (np.abs(ymin) <= 90) & (np.abs(ymax) <= 90)
    kept = int(valid.sum())
    if kept == 0:
        return None, size
    mask = pa.array(valid)
    properties = table.column("properties").combine_chunks().filter(mask)
    columns = [pc.fill_null(pc.struct_field(properties, name), "") for name in attributes]
    chosen = geometries[valid]
    xmin, ymin, xmax, ymax = xmin[valid], ymin[valid], xmax[valid], ymax[valid]
    type_ids = np.unique(shapely.get_type_id(chosen))
    wkb = pa.array(shapely.to_wkb(chosen, output_dimension=2, byte_order=1, flavor="iso"), pa.binary())
    spatial: list[pa.Array[Any]] = [wkb, *(pa.array(v, pa.float64()) for v in (xmin, ymin, xmax, ymax))]
    batch = _Batch(
        curve_keys(xmin, ymin, xmax, ymax), columns, spatial, {_TYPE_NAMES[int(t)] for t in type_ids},
        (float(xmin.min()), float(ymin.min()), float(xmax.max()), float(ymax.max())),
    )  # fmt: skip
    return batch, size - kept


def read_geojson_lines(
    path: Path,
    attributes: Sequence[str],
    where: str,
    block_bytes: int = READ_BLOCK_BYTES,
    workers: Workers | None = None,
) -> Iterator[tuple[_Batch | None, int]]:
    """The features of a gzipped line-delimited GeoJSON file, batch by batch, with the features dropped per
    batch (with ``workers``, blocks are converted on their threads, in order, as :func:`read_address_csv` does).

    :raises GeoParquetError: a line that is no GeoJSON feature with text properties (``where`` names the run)
    """
    from isal import igzip

    def blocks() -> Iterator[list[bytes]]:
        rest = b""
        with igzip.open(path, "rb") as source:
            while chunk := source.read(block_bytes):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                lines = [line for line in lines if line.strip()]
                if lines:
                    yield lines
        if rest.strip():
            yield [rest]

    yield from _ordered_map(lambda lines: _feature_batch(lines, attributes, where), blocks(), workers)


# --------------------------------------------------------------------------------------------------------------
# The collections


@dataclass(frozen=True)
class Entry:
    """The run rows come from: ``source_path`` (``sources/….json``), layer type, layer name and run id."""

    source_path: str
    layer: str
    name: str
    run_id: int


@dataclass
class ParquetFile:
    """A finished collection file: its path, rows, geometry types and bounds (None when empty), and the number of
    row groups."""

    path: Path
    rows: int
    geometry_types: list[str]
    bbox: list[float] | None
    row_groups: int


@dataclass
class _Collection:
    """A file being built: the sorter its rows go through and its bit there, and what it holds so far."""

    key: tuple[str, str, str]
    sorter: _Sorter
    bit: int
    rows: int = 0
    types: set[str] = field(default_factory=set)
    bounds: list[float] = field(default_factory=lambda: [math.inf, math.inf, -math.inf, -math.inf])
    members: set[str] = field(default_factory=set)
    #: The highest curve key of its rows: once the merge has gone past it, the file is finished and closed.
    last_key: int = -1


@dataclass
class _Sorter:
    """The rows of one licence class and layer type, sorted once for all its collections: ``global`` and each
    area take the same rows in the same order, so a row is buffered, spilled and merged once, carrying a bit per
    collection it goes to (``_targets``), and split among the files only as it is written."""

    layer: str
    schema: pa.Schema
    collections: list[_Collection] = field(default_factory=list)
    buffered: list[pa.RecordBatch] = field(default_factory=list)
    buffered_bytes: int = 0
    runs: list[Path] = field(default_factory=list)


class _Background:
    """One thread that runs the tasks given to it in order (finishing and encoding row groups: pyarrow releases
    the GIL, so the caller merges the next rows on the other core meanwhile); at most ``depth`` tasks are given
    and not done (the one running included), so the row groups in flight stay bounded. The first error stops the
    rest and is raised by :meth:`submit` or :meth:`close`."""

    def __init__(self, depth: int = 1) -> None:
        import queue
        import threading

        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="geoparquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is None:
                try:
                    task()
                except BaseException as exc:  # raised again in the caller's thread
                    self._error = exc
            del task  # its row group
            self._slots.release()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, task: Callable[[], None]) -> None:
        self._slots.acquire()
        self._check()
        self._queue.put(task)

    def close(self) -> None:
        """Wait for the tasks given so far; raise the first error."""
        self._queue.put(None)
        self._thread.join()
        self._check()


class _Inline:
    """:class:`_Background`'s interface, running each task at once in the caller's thread."""

    def submit(self, task: Callable[[], None]) -> None:
        task()

    def close(self) -> None:
        pass


def geo_metadata(geometry_types: Iterable[str], bbox: Sequence[float] | None) -> dict[str, Any]:
    """The ``geo`` file metadata of a collection (GeoParquet 1.1.0; ``crs`` omitted: OGC:CRS84)."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(set(geometry_types)),
        "covering": {"bbox": {name: ["bbox", name] for name in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bbox is not None:
        column["bbox"] = list(bbox)
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (``libc.so.6``), else None (musl and others: the calls below do nothing)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not os.path.basename(name).startswith("libc.so"):
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    return library if hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None


def _limit_malloc_arenas(count: int) -> None:
    """At most ``count`` glibc malloc arenas from now on (process-wide; numpy's arrays and Python's blocks come
    from malloc): each worker thread got its own, and their freed memory stayed in them (peak RSS over 51 M rows
    402 MiB with glibc's default of 8 per core, 359 MiB with 2). Nothing on another C library."""
    if (libc := _glibc()) is not None:
        libc.mallopt(-8, count)  # M_ARENA_MAX


def _trim_malloc() -> None:
    """Hand glibc's free pages back to the system, those between allocations too (``malloc_trim(0)``): the
    merge's many short-lived arrays of every size left tens of MiB free but resident between Arrow's footer
    metadata, which stays until a file is closed."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


def _memory_pool() -> pa.MemoryPool:
    """jemalloc when this pyarrow has it, else the default pool: for what pyarrow's Python calls allocate. Arrow's
    C++ internals (the Parquet writer's page buffers) keep the process default, chosen before pyarrow loads
    (:mod:`openaddr.arrow_pool`: jemalloc for collect processes)."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()


class GeoParquetCollections:
    """The GeoParquet collections being built, keyed by (area, licence class, layer type) (module docstring).

    While it is open (until :meth:`close` or :meth:`discard`) Arrow's default memory pool is
    :func:`_memory_pool` (buffers go back to the pool they came from, so the switch is safe).

    :param folder: a folder for the spilled runs and the finished files (created; :meth:`close` leaves only the
        files, :meth:`discard` nothing)
    :param buffer_bytes: rows all collections may buffer before one is spilled
    :param row_group_rows: rows per row group of the files
    :param merge_fan_in: spilled runs merged at once at most
    :param merge_window: keys of each run the merge reads ahead (about the rows of a merge round)
    :param block_bytes: bytes of CSV or GeoJSON read and converted at once
    :param pending_bytes: bytes of merged rows the files of a sorter may hold between row groups together (over
        it, the file that has waited longest for rows writes a shorter row group)
    :param part_row_groups: row groups of each part a file is written as and stitched from
        (:mod:`openaddr.collect.parquet_parts`: the writer's footer metadata stays bounded); default
        :data:`~openaddr.collect.parquet_parts.PART_ROW_GROUPS`
    :param workers: threads that parse and convert blocks, sort and spill buffers, and finish and encode row
        groups (:class:`Workers`), while the caller's thread inflates, routes and merges rows; default: one per
        core this process may run on (:func:`default_workers`); 0: all of it on the caller's thread. The files
        are the same whatever the number
    """

    def __init__(
        self,
        folder: Path,
        *,
        buffer_bytes: int = BUFFER_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
        merge_fan_in: int = MERGE_FAN_IN,
        merge_window: int = MERGE_WINDOW_KEYS,
        block_bytes: int = READ_BLOCK_BYTES,
        workers: int | None = None,
        pending_bytes: int = PENDING_BYTES,
        part_row_groups: int | None = None,
    ) -> None:
        count = default_workers() if workers is None else workers
        if count < 0:
            raise ValueError(f"workers must be 0 or more, not {count}")
        self.workers = Workers.start(count) if count else None
        self._spilling: Future[None] | None = None
        self.merge_fan_in = merge_fan_in
        self.merge_window = merge_window
        self.block_bytes = block_bytes
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.spill_folder = Path(tempfile.mkdtemp(prefix="spill-", dir=folder))
        self.buffer_bytes = buffer_bytes
        self.row_group_rows = row_group_rows
        self.pending_bytes = pending_bytes
        self.part_row_groups = PART_ROW_GROUPS if part_row_groups is None else part_row_groups
        self.collections: dict[tuple[str, str, str], _Collection] = {}
        #: One per licence class and layer type (:class:`_Sorter`).
        self.sorters: dict[tuple[str, str], _Sorter] = {}
        self.entries: list[Entry] = []
        self._buffered = 0
        #: Sorted runs written to the spill folder so far (merge passes included).
        self.spills = 0
        self._previous_pool: pa.MemoryPool | None = pa.default_memory_pool()
        pa.set_memory_pool(_memory_pool())
        if pa.default_memory_pool().backend_name == "jemalloc":
            # for the arenas of the threads that start from now on (process-wide; JEMALLOC_DECAY_MS)
            pa.jemalloc_set_decay_ms(JEMALLOC_DECAY_MS)
        _limit_malloc_arenas(MALLOC_ARENAS)

    def _release_unused(self) -> None:
        """Hand the memory the pools keep from freed buffers back to the system: after a spill and a row group
        (the process default pool, which Arrow's C++ internals such as the Parquet encoder use, is mimalloc in
        the wheels, and it kept it)."""
        pa.default_memory_pool().release_unused()
        if self._previous_pool is not None:
            self._previous_pool.release_unused()
        _trim_malloc()

    def _restore_pool(self) -> None:
        if self._previous_pool is not None:
            pa.set_memory_pool(self._previous_pool)
            self._previous_pool = None

    def add_collection(self, area: str, license_attr: str, layer: str) -> None:
        """Declare a collection (every declared one gets a file, empty or not)."""
        key = (area, license_attr, layer)
        if key in self.collections:
            return
        sorter = self.sorters.get((license_attr, layer))
        if sorter is None:
            sorter = self.sorters[license_attr, layer] = _Sorter(layer, _buffer_schema(layer))
        if len(sorter.collections) >= MAX_SORTER_COLLECTIONS:
            raise ValueError(
                f"more than {MAX_SORTER_COLLECTIONS} areas for licence class {license_attr!r}, layer {layer}"
            )
        collection = _Collection(key, sorter, len(sorter.collections))
        sorter.collections.append(collection)
        self.collections[key] = collection

    def _entry(self, entry: Entry) -> int:
        self.entries.append(entry)
        return len(self.entries) - 1

    def _targets(self, keys: Sequence[tuple[str, str, str]], member: str) -> list[_Collection]:
        targets = []
        for key in keys:
            collection = self.collections[key]
            if member in collection.members:
                log.warning("%s already holds %s; skipped", parquet_name(*key), member)
                continue
            collection.members.add(member)
            targets.append(collection)
        return targets

    def add_run_zip(
        self, zip_path: Path, entry: Entry, keys: Sequence[tuple[str, str, str]]
    ) -> tuple[int, int]:
        """Add the address rows of a run zip's CSV members to the collections ``keys`` (address ones).

        :return: rows added (to each target) and rows dropped for their coordinates
        """
        index = self._entry(entry)
        added = dropped = 0
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or not name.lower().endswith(".csv"):
                    continue
                targets = self._targets(keys, name)
                if not targets:
                    continue
                for batch, lost in read_address_csv(archive, info, self.block_bytes, self.workers):
                    dropped += lost
                    if batch is not None:
                        added += len(batch)
                        self._add(batch, index, targets)
        return added, dropped

    def add_geojson(
        self, gz_path: Path, member: str, entry: Entry, keys: Sequence[tuple[str, str, str]]
    ) -> tuple[int, int]:
        """Add the features of a run's ``out.geojson.gz`` (a parcels, buildings or centerlines run) to the
        collections ``keys`` of its layer type.

        :param member: the member name it has in the GeoJSON collections (a collection takes one of each)
        :return: features added (to each target) and features dropped
        :raises GeoParquetError: the file holds something other than GeoJSON features
        """
        targets = self._targets(keys, member)
        if not targets:
            return 0, 0
        index = self._entry(entry)
        where = f"run {entry.run_id} ({entry.source_path}, layer {entry.layer} {entry.name!r})"
        added = dropped = 0
        for batch, lost in read_geojson_lines(
            gz_path, layer_attributes(entry.layer), where, self.block_bytes, self.workers
        ):
            dropped += lost
            if batch is not None:
                added += len(batch)
                self._add(batch, index, targets)
        return added, dropped

    def _add(self, batch: _Batch, index: int, targets: Sequence[_Collection]) -> None:
        size = len(batch)
        masks: dict[int, tuple[_Sorter, int]] = {}
        for collection in targets:
            collection.rows += size
            collection.types |= batch.types
            b = collection.bounds
            b[0], b[1] = min(b[0], batch.bounds[0]), min(b[1], batch.bounds[1])
            b[2], b[3] = max(b[2], batch.bounds[2]), max(b[3], batch.bounds[3])
            sorter, mask = masks.get(id(collection.sorter), (collection.sorter, 0))
            masks[id(sorter)] = (sorter, mask | 1 << collection.bit)
        last_key = int(batch.key.max())
        for collection in targets:
            collection.last_key = max(collection.last_key, last_key)
        key = pa.array(batch.key, pa.uint64())
        inputs = pa.array(np.full(size, index, dtype=np.int32))
        for sorter, mask in masks.values():
            record = pa.RecordBatch.from_arrays(
                [
                    key,
                    inputs,
                    pa.array(np.full(size, mask, dtype=np.uint64)),
                    *batch.attributes,
                    *batch.spatial,
                ],
                schema=sorter.schema,
            )
            sorter.buffered.append(record)
            sorter.buffered_bytes += record.nbytes
            self._buffered += record.nbytes
        while self._buffered > self.buffer_bytes:
            self._spill(max(self.sorters.values(), key=lambda s: s.buffered_bytes))

    @staticmethod
    def _sorted(schema: pa.Schema, batches: list[pa.RecordBatch]) -> pa.Table:
        table = pa.Table.from_batches(batches, schema=schema)
        order = stable_order(table.column(_KEY).to_numpy())
        return table.take(order)

    def _spill(self, sorter: _Sorter) -> None:
        """Sort the sorter's buffer and write it as a sorted run: on a worker thread when there are workers, one
        spill at a time (the buffer being spilled and the one filling are all the memory rows take)."""
        batches, schema = sorter.buffered, sorter.schema
        path = self._next_run_path()
        sorter.runs.append(path)  # in the order rows came in, whenever it is written
        self._drop_buffer(sorter)

        def spill() -> None:
            self._write_run(path, schema, _sorted_pieces(schema, batches))
            self._release_unused()

        if self.workers is None:
            spill()
            return
        self._wait_for_spill()
        self._spilling = self.workers.pool.submit(spill)

    def _wait_for_spill(self) -> None:
        if self._spilling is not None:
            spilling, self._spilling = self._spilling, None
            spilling.result()

    def _drop_buffer(self, sorter: _Sorter) -> None:
        self._buffered -= sorter.buffered_bytes
        sorter.buffered = []
        sorter.buffered_bytes = 0

    def _next_run_path(self) -> Path:
        self.spills += 1
        return self.spill_folder / f"run-{self.spills}.arrow"

    @staticmethod
    def _write_run(path: Path, schema: pa.Schema, pieces: Iterable[pa.Table]) -> None:
        """A sorted run in a new spill file (Arrow IPC, uncompressed: lz4 costs more CPU than the disk saves
        time), in batches of :data:`SPILL_BATCH_ROWS`, and its keys alone beside it (``<path>.keys``, uint64:
        the merge reads them far ahead of the rows)."""
        import pyarrow.ipc as ipc

        with (
            pa.OSFile(str(path), "wb") as sink,
            ipc.new_file(sink, schema) as writer,
            open(_keys_path(path), "wb") as keys,
        ):
            for piece in pieces:
                writer.write_table(piece, max_chunksize=SPILL_BATCH_ROWS)
                for chunk in piece.column(_KEY).chunks:
                    keys.write(chunk.to_numpy().astype("<u8", copy=False).tobytes())

    def close(self) -> dict[tuple[str, str, str], ParquetFile]:
        """Merge and write every collection's file (``<folder>/<name>``); remove the spilled runs."""
        files: dict[tuple[str, str, str], ParquetFile] = {}
        try:
            # every buffer that spilled before goes to disk too, so no sorter holds its buffer in memory while
            # another is merged (a sorter that never spilled is sorted in memory)
            for sorter in self.sorters.values():
                if sorter.runs and sorter.buffered:
                    self._spill(sorter)
            self._wait_for_spill()
            for sorter in self.sorters.values():
                files.update(self._write(sorter))
        finally:
            self._stop_workers()
            shutil.rmtree(self.spill_folder, ignore_errors=True)
            self._restore_pool()
        return {key: files[key] for key in self.collections}

    def discard(self) -> None:
        """Remove everything written (after a failure)."""
        self._stop_workers()
        self._restore_pool()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _stop_workers(self) -> None:
        """Let a spill still running end (its error, if any, is the caller's to raise first) and stop the
        threads."""
        with contextlib.suppress(BaseException):
            self._wait_for_spill()
        if self.workers is not None:
            self.workers.pool.shutdown(wait=True, cancel_futures=True)
            self.workers = None

    def _write(self, sorter: _Sorter) -> dict[tuple[str, str, str], ParquetFile]:
        """Write the files of a sorter's collections, all at once: each merged piece of rows is split among them
        by the ``_targets`` bits; a file's rows are finished (provenance, WKB, bbox) and encoded a row group at a
        time on a writer thread: one per worker (:class:`_Background`), each file on one of them, the files
        shared out by rows so the threads take about as many each."""
        layer = sorter.layer
        attributes = layer_attributes(layer)
        paths = pa.array([e.source_path for e in self.entries], pa.string())
        layers = pa.array([e.layer for e in self.entries], pa.string())
        names = pa.array([e.name for e in self.entries], pa.string())
        run_ids = pa.array([e.run_id for e in self.entries], pa.int64())
        points = layer in POINT_LAYERS

        def finished(table: pa.Table, schema: pa.Schema) -> pa.Table:
            # one chunk a column: the merge's pieces can be a few rows each, and the encoder's cost per chunk
            # made writing a row group of 100-row chunks 4 times as slow as writing it in one
            table = table.combine_chunks()
            index = table.column(_INPUT)
            if points:
                x, y = table.column(_X).to_numpy(), table.column(_Y).to_numpy()
                spatial: list[Any] = [point_wkb(x, y), _bbox(x, y, x, y)]
            else:
                bounds = [table.column(f"_{n}").to_numpy() for n in BBOX_TYPE.names]
                spatial = [table.column("geometry"), _bbox(*bounds)]
            return pa.Table.from_arrays(
                [
                    paths.take(index), layers.take(index), names.take(index), run_ids.take(index),
                    *(table.column(name) for name in attributes), *spatial,
                ],
                schema=schema,
            )  # fmt: skip

        @dataclass
        class Output:
            collection: _Collection
            path: Path
            schema: pa.Schema
            writer: PartedParquetWriter
            pending: list[pa.Table] = field(default_factory=list)
            pending_rows: int = 0
            pending_bytes: int = 0
            fed: int = 0  # the last merge round that gave it rows
            groups: int = 0
            open: bool = True

        def write(output: Output, table: pa.Table) -> None:
            output.groups += 1
            writer, schema = output.writer, output.schema

            def task() -> None:
                writer.write_table(finished(table, schema), self.row_group_rows)
                self._release_unused()

            lane_of[id(output)].submit(task)

        outputs: list[Output] = []
        lanes: list[_Background | _Inline] = (
            [_Background(depth=2) for _ in range(self.workers.count)]
            if self.workers is not None
            else [_Inline()]
        )
        # each file on the writer thread with the fewest rows so far, the largest files first
        load = [0] * len(lanes)
        lane_of: dict[int, _Background | _Inline] = {}
        try:
            for collection in sorter.collections:
                bbox = collection.bounds if collection.rows else None
                schema = file_schema(layer).with_metadata(
                    {"geo": json.dumps(geo_metadata(collection.types, bbox), separators=(",", ":"))}
                )
                path = self.folder / parquet_name(*collection.key)
                writer = PartedParquetWriter(
                    path,
                    schema,
                    part_row_groups=self.part_row_groups,
                    compression=COMPRESSION,
                    # the stubs omit the list of columns, which ParquetWriter takes
                    use_dictionary=cast(
                        "Any",
                        [
                            n
                            for n in (*(name for name, _ in PROVENANCE), *attributes)
                            if n not in UNIQUE_COLUMNS
                        ],
                    ),
                    write_statistics=[
                        *(name for name, _ in PROVENANCE),
                        *(f"bbox.{n}" for n in BBOX_TYPE.names),
                    ],
                    store_schema=True,
                )
                outputs.append(Output(collection, path, schema, writer))
            for output in sorted(outputs, key=lambda o: -o.collection.rows):
                lightest = load.index(min(load))
                lane_of[id(output)] = lanes[lightest]
                load[lightest] += output.collection.rows
            bits = [np.uint64(1 << output.collection.bit) for output in outputs]
            pending_total = 0  # bytes of rows all files hold between row groups

            def split(piece: _Piece) -> tuple[list[tuple[int, pa.Table]], int]:
                """A merged piece's rows of each file, in order (the take of the merge and the split among the
                files in one go, on a worker thread), without the key and targets columns; and the piece's
                highest key."""
                table, order = piece
                keys = table.column(_KEY)
                last = int(keys[-1 if order is None else int(order[-1])].as_py())
                targets = table.column(_TARGETS).to_numpy()
                table = table.drop_columns([_KEY, _TARGETS])
                if order is not None:
                    # one take out of the round's many run slices; each file's share is filtered from its result
                    table = table.take(order)
                    targets = targets[order]
                if len(outputs) == 1:
                    return [(0, table)], last
                parts = []
                for index, bit in enumerate(bits):
                    has = (targets & bit) != 0
                    count = int(has.sum())
                    if count == len(has):
                        parts.append((index, table))
                    elif count:
                        parts.append((index, table.filter(pa.array(has))))
                return parts, last

            def flush(output: Output, rows: int | None = None) -> None:
                """Write ``rows`` of the file's pending rows as a row group (all of them by default)."""
                nonlocal pending_total
                table = pa.concat_tables(output.pending)
                rest = table.slice(rows if rows is not None else table.num_rows)
                write(output, table.slice(0, rows) if rows is not None else table)
                pending_total -= output.pending_bytes
                output.pending = [rest] if rest.num_rows else []
                output.pending_rows = rest.num_rows
                output.pending_bytes = rest.nbytes if rest.num_rows else 0
                pending_total += output.pending_bytes

            def finish(output: Output) -> None:
                """The file's last row group, then its footer (the writer's metadata, about 15 KB a row group,
                is freed)."""
                if output.pending_rows:
                    flush(output)
                output.open = False
                lane_of[id(output)].submit(output.writer.close)

            # Every decision below is taken on this thread, in the merge's order: the files do not depend on the
            # number of workers or on timing.
            for output in outputs:
                if output.collection.rows == 0:
                    finish(output)
            # a merge round holds up to two windows of rows: one round per worker in flight
            count = self.workers.count if self.workers is not None else None
            merged = _ordered_map(split, self._merged(sorter), self.workers, count)
            for round_no, (parts, last) in enumerate(merged, 1):
                for index, part in parts:
                    output = outputs[index]
                    output.fed = round_no
                    output.pending.append(part)
                    output.pending_rows += part.num_rows
                    output.pending_bytes += part.nbytes
                    pending_total += part.nbytes
                    while output.pending_rows >= self.row_group_rows:
                        flush(output, self.row_group_rows)
                # the merge is past a file's last key: no more rows come to it
                for output in outputs:
                    if output.open and output.collection.last_key < last:
                        finish(output)
                # over the budget, the file that has waited longest for rows writes what it has (its area is
                # behind the merge, for now): a shorter row group, as compact in space as a full one
                while pending_total > self.pending_bytes:
                    flush(min((o for o in outputs if o.pending_rows), key=lambda o: (o.fed, -o.pending_rows)))
            for output in outputs:
                if output.open:
                    finish(output)
            _close_all(lanes)
        except BaseException:
            with contextlib.suppress(BaseException):
                _close_all(lanes)
            for output in outputs:
                output.writer.discard()  # no half-written file left behind
            raise
        return {
            output.collection.key: ParquetFile(
                output.path,
                output.collection.rows,
                sorted(output.collection.types),
                list(output.collection.bounds) if output.collection.rows else None,
                output.groups,
            )
            for output in outputs
        }

    def _merged(self, sorter: _Sorter) -> Iterator[_Piece]:
        """The sorter's rows in key order: its spilled runs and its buffer, merged by their keys (:func:`_merge`);
        while there are more than the fan-in, contiguous groups of the oldest runs are first merged into one each.
        Rows with equal keys stay in the order they came in (stable sorts, runs merged in order), so a file does
        not depend on when its rows were spilled."""
        count = self.workers.count if self.workers is not None else None
        fan_in = _fan_in(self.merge_fan_in)
        done = 0  # runs at the front that are merges of this pass (not merged again in it)
        while len(sorter.runs) > fan_in:
            if done >= fan_in:
                done = 0  # more than fan-in squared runs: another pass
            # the next oldest runs not merged yet, as few as leave at most the fan-in (in contiguous groups, so
            # equal keys keep the order rows came in): every row is merged twice at most until there are more
            # than fan-in squared runs
            size = min(fan_in, len(sorter.runs) - fan_in + 1, len(sorter.runs) - done)
            group = sorter.runs[done : done + size]
            with contextlib.ExitStack() as stack:
                merged = _ordered_map(
                    _taken,
                    _merge(
                        [_Run.spilled(stack, path, self.merge_window) for path in group],
                        2 * self.merge_window,
                    ),
                    self.workers,
                    count,
                )
                # in the group's place: its rows came after the runs before it and before those after it
                path = self._next_run_path()
                self._write_run(path, sorter.schema, merged)
                sorter.runs[done : done + size] = [path]
                done += 1
            for path in group:
                path.unlink()
                _keys_path(path).unlink()
        with contextlib.ExitStack() as stack:
            sources = [_Run.spilled(stack, path, self.merge_window) for path in sorter.runs]
            if sorter.buffered:
                table = self._sorted(sorter.schema, sorter.buffered)
                self._drop_buffer(sorter)
                sources.append(_Run.in_memory(table, self.merge_window))
            yield from _merge(sources, 2 * self.merge_window)


def _sorted_pieces(schema: pa.Schema, batches: list[pa.RecordBatch]) -> Iterator[pa.Table]:
    """The buffered rows in key order, :data:`SPILL_TAKE_ROWS` at a time (a sorted copy of the whole buffer held
    as much again while it was written); ``batches`` is emptied."""
    table = pa.Table.from_batches(batches, schema=schema)
    batches.clear()
    order = stable_order(table.column(_KEY).to_numpy())
    for start in range(0, len(order), SPILL_TAKE_ROWS):
        yield table.take(order[start : start + SPILL_TAKE_ROWS])


def _taken(piece: _Piece) -> pa.Table:
    table, order = piece
    return table if order is None else table.take(order)


def _close_all(lanes: Sequence[_Background | _Inline]) -> None:
    """Close every lane (each waits for its tasks), then raise the first error any of them had."""
    errors: list[BaseException] = []
    for lane in lanes:
        try:
            lane.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _fan_in(wanted: int) -> int:
    """``wanted``, or fewer when the process may not open two files a run (its rows and its keys) with room to
    spare (a worker's soft limit is often 1,024)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(2, min(wanted, (soft - 256) // 2))


def _keys_path(path: Path) -> Path:
    return path.with_name(path.name + ".keys")


class _Run:
    """A sorted run being merged, read lazily: of its current window of ``window`` keys (more when equal keys go
    on past it: a window ends between two different keys) only the first and last key until the merge reaches it
    (then the window, from the run's key file), and its rows batch by batch as the merge takes them.
    :meth:`release` drops what is loaded (the merge does, for runs a round did not touch), to be read again when
    the merge comes back: memory follows the runs a round touches, not how many there are."""

    def __init__(
        self,
        batch: Callable[[int], pa.RecordBatch],
        keys: Callable[[int, int], np.ndarray],
        count: int,
        window: int,
    ) -> None:
        self._read_batch = batch
        self._read_keys = keys
        self._count = count
        self._window = window
        self._start = self._end = 0  # the current window's keys not taken yet, and its end
        self._keys: np.ndarray | None = None  # the rest of the current window, once loaded
        self.first = self.last = 0  # Python integers: compared every round, faster than numpy's scalars
        self._batch_no = 0  # the batch holding the next row, and the rows of it taken
        self._batch_taken = 0
        self._batch: pa.RecordBatch | None = None
        self.done = count == 0
        self._next_window()

    @classmethod
    def spilled(cls, stack: contextlib.ExitStack, path: Path, window: int) -> _Run:
        import pyarrow.ipc as ipc

        reader = ipc.open_file(stack.enter_context(pa.OSFile(str(path), "rb")))
        keys_file = stack.enter_context(open(_keys_path(path), "rb"))

        def read_keys(start: int, count: int) -> np.ndarray:
            keys_file.seek(8 * start)
            return np.frombuffer(keys_file.read(8 * count), dtype="<u8").astype(np.uint64)

        def read_batch(index: int) -> pa.RecordBatch:
            return reader.get_batch(index)

        return cls(read_batch, read_keys, _keys_path(path).stat().st_size // 8, window)

    @classmethod
    def in_memory(cls, table: pa.Table, window: int) -> _Run:
        keys = table.column(_KEY).to_numpy()
        batches = table.to_batches(max_chunksize=SPILL_BATCH_ROWS)
        return cls(batches.__getitem__, lambda start, count: keys[start : start + count], len(keys), window)

    def _next_window(self) -> None:
        self._start = self._end
        if self._start >= self._count:
            self.done = True
            return
        self._end = min(self._start + self._window, self._count)
        self._keys = None
        self.first = int(self._read_keys(self._start, 1)[0])
        self.last = int(self._read_keys(self._end - 1, 1)[0])
        # a window never ends inside a run of equal keys: the merge takes a window's keys up to a threshold, and
        # the rest of such a run would come a round later, after the other runs' equal keys
        while self._end < self._count:
            ahead = self._read_keys(self._end, self._window)
            same = int(np.searchsorted(ahead, self.last, side="right"))
            self._end += same
            if same < len(ahead):
                break

    def keys(self) -> np.ndarray:
        """The window's next keys loaded so far: :data:`MERGE_KEY_CHUNK` of them at first (loaded the first time
        the merge reaches the window, or again after :meth:`release`), more as :meth:`cut` needs them."""
        if self._keys is None:
            self._keys = self._read_keys(self._start, min(MERGE_KEY_CHUNK, self._end - self._start))
        return self._keys

    def cut(self, threshold: int) -> int:
        """How many of the window's next keys are at most ``threshold`` (the keys loaded then hold them all)."""
        keys = self.keys()
        bound = np.uint64(threshold)
        count = int(np.searchsorted(keys, bound, side="right"))
        while count == len(keys) and self._start + count < self._end:
            # all loaded keys are at most the threshold: load as many again, up to the window's end
            more = self._read_keys(self._start + count, min(count, self._end - self._start - count))
            keys = self._keys = np.concatenate((keys, more))
            count += int(np.searchsorted(more, bound, side="right"))
        return count

    def take(self, count: int) -> tuple[np.ndarray, list[pa.RecordBatch]]:
        """The window's next ``count`` keys and their rows (slices of the run's batches)."""
        keys = self.keys()
        taken, self._keys = keys[:count], keys[count:]
        self._start += count
        pieces = []
        while count:
            if self._batch is None:
                self._batch = self._read_batch(self._batch_no)
            left = self._batch.num_rows - self._batch_taken
            if left == 0:
                self._batch, self._batch_no, self._batch_taken = None, self._batch_no + 1, 0
                continue
            size = min(count, left)
            pieces.append(self._batch.slice(self._batch_taken, size))
            self._batch_taken += size
            count -= size
        if len(self._keys):
            self.first = int(self._keys[0])
        elif self._start < self._end:
            self._keys = None
            self.first = int(self.keys()[0])
        else:
            self._next_window()
        return taken, pieces

    def release(self) -> None:
        """Drop the loaded keys and batch (read again when next needed)."""
        self._keys = None
        self._batch = None


def _sampled_cap(reached: list[_Run], cuts: list[int], threshold: int, most: int) -> tuple[int, list[int]]:
    """A lower threshold for a merge round that would take more than ``most`` rows, found from every
    :data:`CAP_SAMPLE_STRIDE`-th key the runs reach (a small copy: the exact ``most``-th smallest of all of them
    took two copies of up to a million keys a round), and the cuts it gives: at most ``most`` rows unless the
    sample cannot tell (rows sharing keys), which the caller then settles exactly."""
    stride = CAP_SAMPLE_STRIDE
    # each sampled key of rank i stands for at most ``stride`` keys, and each run's keys past its last sample
    # for fewer than ``stride`` more: taking the sample of this rank keeps a round under ``most``
    rank = most // stride - len(reached) - 1
    samples = [run.keys()[stride - 1 : cut : stride] for run, cut in zip(reached, cuts, strict=True)]
    if rank < 0 or sum(map(len, samples)) <= rank:
        return threshold, cuts
    threshold = int(np.partition(np.concatenate(samples), rank)[rank])
    return threshold, [run.cut(threshold) for run in reached]


def _merge(runs: list[_Run], most: int | None = None) -> Iterator[_Piece]:
    """K-way merge of sorted runs, by their keys: each round takes from every run the rows with a key up to the
    smallest last key of the runs' current key windows (no later row of any run can sort before those: about a
    window of rows a round, whatever the number of runs; only the runs with a key that low are read), lowered so
    that a round takes at most ``most`` rows (rows sharing one key, however many, go out run by run in pieces of
    ``most``), and gives them with their order (the take is the caller's: on a worker thread), None when they come
    from one run. Rows with equal keys keep the runs' order (stable sort over
    the runs' rows in run order). The runs a round does not touch drop what they had loaded."""
    live = [run for run in runs if not run.done]
    touched: list[_Run] = []
    while live:
        threshold = min(run.last for run in live)
        reached = [run for run in live if run.first <= threshold]
        cuts = [run.cut(threshold) for run in reached]
        if most is not None and sum(cuts) > most:
            threshold, cuts = _sampled_cap(reached, cuts, threshold, most)
        if most is not None and sum(cuts) > most:
            # every key up to a lower threshold, from every run: the ``most``-th smallest of those reached
            reachable = np.concatenate([run.keys()[:cut] for run, cut in zip(reached, cuts, strict=True)])
            threshold = int(np.partition(reachable, most - 1)[most - 1])
            if threshold > int(reachable.min()):
                cuts = [run.cut(threshold) for run in reached]
                if sum(cuts) > most:
                    # many rows share that key: the rows below it first (fewer than ``most``)
                    threshold -= 1
                    cuts = [run.cut(threshold) for run in reached]
            else:
                # the rows reached share one key (points at one place, as many as a source holds): in run order,
                # as the stable sort puts them, at most ``most`` a round from the first run that has some
                first = next(i for i, run in enumerate(reached) if run.cut(threshold))
                cuts = [0] * len(reached)
                cuts[first] = min(reached[first].cut(threshold), most)
        taken: list[pa.RecordBatch] = []
        taken_keys: list[np.ndarray] = []
        now = []
        for run, cut in zip(reached, cuts, strict=True):
            if cut:
                keys, pieces = run.take(cut)
                taken_keys.append(keys)
                taken.extend(pieces)
                now.append(run)
        kept = {id(run) for run in now}
        for run in (*touched, *reached):
            if id(run) not in kept:
                run.release()
        touched = now
        live = [run for run in live if not run.done]
        table = pa.Table.from_batches(taken, taken[0].schema)
        if len(taken_keys) == 1:
            yield table, None  # one run's rows only: already in order
            continue
        # numpy's stable sort (a merge sort on this data) gains from the keys being sorted runs laid end to end
        yield table, np.argsort(np.concatenate(taken_keys), kind="stable")


__all__ = [
    "ADDRESS_ATTRIBUTES",
    "GEOPARQUET_VERSION",
    "ROW_GROUP_ROWS",
    "Entry",
    "GeoParquetCollections",
    "GeoParquetError",
    "ParquetFile",
    "curve_keys",
    "file_schema",
    "geo_metadata",
    "hilbert_index",
    "layer_attributes",
    "parquet_name",
    "point_wkb",
    "stable_order",
]
