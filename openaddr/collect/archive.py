"""Writing one collection zip (machine-ci.md §8 "Content"), streaming.

A :class:`CollectionZip` is written to a local file: ``README.txt`` first, then each run zip's members as
:func:`add_run_zip` passes them on, then ``LICENSE.txt`` when it is finished. One run zip feeds every collection it
belongs to (``global`` and its area) in one pass: each CSV member is read in chunks of whole lines (4 MiB),
rewritten once, and the same bytes go to every target's open member, deflated once for all of them
(:class:`SharedDeflate`), so neither a run's CSV nor a collection is ever held in memory (the original's collect
kept growing with the data, openaddresses/machine#536). What stays in memory per CSV member is one chunk and its
0.1° squares, bounded by the area the source covers, not by its rows.

Rewriting a CSV member (§8): the 11 columns of ``out.csv`` (:data:`openaddr.canonical.OUTPUT_COLUMNS`) in order,
taken by name from the member's header (a missing column is empty); a row whose ``LAT`` or ``LON`` is not a finite
plain decimal number (the rule of ``stats.json``'s ``invalid_coordinates``) or lies outside ±90 / ±180 is dropped and
counted; rows at (0, 0) are kept and counted. The CSV dialect is ``out.csv``'s: minimal quoting, CRLF, UTF-8 (bytes
that are not UTF-8 pass through unchanged).

:func:`add_geojson` adds a run's gzipped line-delimited GeoJSON to the GeoJSON collections the same way: one pass,
streamed into every target's member, the lines as they are.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import math
import zipfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from openaddr.canonical import OUTPUT_COLUMNS

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterator, Sequence
    from pathlib import Path

log = logging.getLogger(__name__)

#: The project's site, as the original texts name it.
SITE = "http://openaddresses.io"

_FLUSH_BYTES = 1 << 20
_COPY_CHUNK = 1 << 20
#: Columns of a summary CSV (§8).
SUMMARY_COLUMNS = ("count", "lon", "lat", "area")


def readme_text(day: dt.date, owner: str, repository: str, commit_sha: str | None) -> str:
    """``README.txt`` of a collection (§8), word for word.

    A set without a commit (a local folder that is not a git work tree) links the default branch, ``HEAD``.
    """
    return (
        f"Data collected around {day.isoformat()} by OpenAddresses ({SITE}).\n"
        "\n"
        "Address data is essential infrastructure. Street names, house numbers and\n"
        "postal codes, when combined with geographic coordinates, are the hub that\n"
        "connects digital to physical places.\n"
        "\n"
        "Data licenses can be found in LICENSE.txt.\n"
        "\n"
        "Data source information can be found at\n"
        f"https://github.com/{owner}/{repository}/tree/{commit_sha or 'HEAD'}/sources\n"
    )


@dataclass(frozen=True)
class LicenseBlock:
    """One source's block of ``LICENSE.txt``."""

    source: str
    website: str | None
    license: str | None
    attribution_required: str | None
    attribution_name: str | None

    @property
    def attribution(self) -> str:
        """``No`` when attribution is not required (``"false"``), else the attribution name, else ``Yes``."""
        if self.attribution_required == "false":
            return "No"
        return self.attribution_name or "Yes"

    def text(self) -> str:
        """The block's four lines."""
        return (
            f"{self.source}\n"
            f"Website: {self.website or 'Unknown'}\n"
            f"License: {self.license or 'Unknown'}\n"
            f"Required attribution: {self.attribution}\n"
        )


def license_text(blocks: Sequence[LicenseBlock]) -> str:
    """``LICENSE.txt`` of a collection (§8): the heading, then each block, separated by blank lines."""
    return "\n".join([f"Data collected by OpenAddresses ({SITE}).\n", *(block.text() for block in blocks)])


def summary_vrt(csv_name: str) -> str:
    """A GDAL VRT reading a summary CSV beside it: polygons from the WKT column ``area``, in EPSG:4326.

    :param csv_name: the summary CSV's file name (no folder), e.g. ``alameda-summary.csv``
    """
    layer = csv_name[: -len(".csv")] if csv_name.lower().endswith(".csv") else csv_name
    return (
        "<OGRVRTDataSource>\n"
        f'    <OGRVRTLayer name="{_xml(layer)}">\n'
        f'        <SrcDataSource relativeToVRT="1">{_xml(csv_name)}</SrcDataSource>\n'
        "        <GeometryType>wkbPolygon</GeometryType>\n"
        "        <LayerSRS>EPSG:4326</LayerSRS>\n"
        '        <GeometryField encoding="WKT" field="area" reportSrcColumn="false"/>\n'
        "    </OGRVRTLayer>\n"
        "</OGRVRTDataSource>\n"
    )


def _xml(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def summary_names(member: str) -> tuple[str, str]:
    """The summary CSV and VRT members of a CSV member: ``us/ca/x.csv`` → ``summary/us/ca/x-summary.csv`` and
    ``….vrt``."""
    stem = member[: -len(".csv")]
    return f"summary/{stem}-summary.csv", f"summary/{stem}-summary.vrt"


def _deflate_compressor() -> Any:
    from openaddr.outputs import _deflate_compressor as compressor

    return compressor()


class CollectionZip:
    """One collection zip being written to a local file (deflate, zip64), ``README.txt`` first.

    :param path: the local file to write
    :param readme: the ``README.txt`` text
    :param date_time: the members' modification time (the collection's)
    """

    def __init__(self, path: Path, readme: str, date_time: tuple[int, int, int, int, int, int]) -> None:
        self.path = path
        self.date_time = date_time
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        self.names: set[str] = set()
        self.address_count = 0
        self.blocks: list[LicenseBlock] = []
        self.write_text("README.txt", readme)

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return info

    def has(self, name: str) -> bool:
        """Whether a member of this name was written."""
        return name in self.names

    def write_text(self, name: str, text: str) -> None:
        """Write a small text member (UTF-8)."""
        self.names.add(name)
        self.zip.writestr(self._info(name), text.encode("utf-8"))

    @contextlib.contextmanager
    def member(self, name: str, compressor: Any = None) -> Iterator[IO[bytes]]:
        """A member open for streaming writes (zip64 headers: its size is not known in advance).

        :param compressor: the raw-deflate compressor of the member (default: a new one, :func:`_deflate_compressor`)
        """
        self.names.add(name)
        with self.zip.open(self._info(name), "w", force_zip64=True) as handle:
            # zipfile has no hook for another deflate implementation; its writer only calls compress() and
            # flush() on this attribute, so ISA-L's compatible compressor can take its place (as the run zips do).
            if hasattr(handle, "_compressor"):
                handle._compressor = compressor if compressor is not None else _deflate_compressor()
            yield handle

    def close(self) -> None:
        """Write ``LICENSE.txt`` and finish the archive."""
        self.write_text("LICENSE.txt", license_text(self.blocks))
        self.zip.close()

    def discard(self) -> None:
        """Abandon the archive and remove its file."""
        with contextlib.suppress(Exception):
            self.zip.close()
        self.path.unlink(missing_ok=True)


class SharedDeflate:
    """One raw-deflate stream for several zip members that receive the same bytes in the same order: the bytes are
    compressed once and the compressed output written to every member (each member still computes its own CRC).

    zipfile's member writer calls ``compress(data)`` once per ``write(data)`` and ``flush()`` once when it is
    closed; the first member to pass new data compresses it, the others must pass the same object before any new
    data comes, else this refuses (never a silently wrong archive).

    :param members: how many members share it
    """

    def __init__(self, members: int) -> None:
        self.inner = _deflate_compressor()
        self.members = members
        self.data: object = None
        self.output = b""
        self.served = members
        self.flushed: bytes | None = None

    def compress(self, data: bytes) -> bytes:
        """The compressed output of ``data`` (compressed when the first member passes it)."""
        if self.served == self.members:
            self.data, self.output, self.served = data, self.inner.compress(data), 0
        elif data is not self.data:
            raise RuntimeError(
                "members sharing a compressor must be written the same bytes in the same order"
            )
        self.served += 1
        return self.output

    def flush(self) -> bytes:
        """The end of the deflate stream (made once)."""
        if self.served != self.members:
            raise RuntimeError(
                "a member sharing a compressor was closed before it was written the same bytes"
            )
        if self.flushed is None:
            self.flushed = self.inner.flush()
        return self.flushed


def open_members(stack: contextlib.ExitStack, targets: Sequence[CollectionZip], name: str) -> list[IO[bytes]]:
    """Open the member ``name`` in every target, sharing one compressor (:class:`SharedDeflate`); the members are
    closed with ``stack``. Write every target the same bytes object in turn."""
    shared = SharedDeflate(len(targets))
    return [stack.enter_context(target.member(name, shared)) for target in targets]


def open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    """A member of a zip open for reading, inflated by ISA-L (standard inflate, about twice as fast as zlib's)."""
    handle = archive.open(info)
    if info.compress_type == zipfile.ZIP_DEFLATED and hasattr(handle, "_decompressor"):
        from isal import isal_zlib

        # As for writing, zipfile has no hook; its reader uses decompress(data, max_length), unconsumed_tail,
        # eof and flush(), which ISA-L's decompressor has. Replaced before the first read.
        handle._decompressor = isal_zlib.decompressobj(-15)
    return handle


@dataclass
class RunZipResult:
    """What one run zip contributed: its name (the first CSV member without ``.csv``: ``<source>``, or
    ``<source>-<name>`` for a later address entry of the file), address rows written, rows dropped for their
    coordinates, rows at (0, 0), and members skipped because a collection already held one of the same name."""

    name: str | None = None
    rows: int = 0
    dropped: int = 0
    null_island: int = 0
    duplicates: list[str] = field(default_factory=list)


def square(value: float) -> int:
    """The 0.1° square index of a coordinate: the largest ``i`` with ``i / 10 <= value``.

    ``floor(value * 10)`` is off by one when the product rounds across an integer; comparing against ``i / 10``,
    the double nearest the decimal, settles it exactly for every coordinate written with one decimal or more.
    """
    index = math.floor(value * 10)
    if (index + 1) / 10 <= value:
        return index + 1
    if index / 10 > value:
        return index - 1
    return index


def _coordinate(text: str, limit: float) -> float | None:
    """The coordinate in ``text`` when it is a plain decimal number (blanks around it allowed) within ±``limit``.

    Equal to matching stats.json's pattern (``openaddr.outputs._NUMBER``) on the stripped text, but about eight
    times as fast: ``float`` takes exactly those ASCII texts plus underscores, ``nan`` and ``inf`` (the bound
    refuses both; NaN fails every comparison) and non-ASCII digits and blanks.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    if not -limit <= value <= limit or "_" in text or not text.isascii():
        return None
    return value


def summary_csv(squares: dict[tuple[int, int], int]) -> Iterator[str]:
    """The summary CSV's lines (header first), one per 0.1° square sorted by (lat, lon): ``count``, the south-west
    corner with one decimal and the square as WKT (§8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(SUMMARY_COLUMNS)
    for (lat_i, lon_i), count in sorted(squares.items()):
        west, south, east, north = (f"{n / 10:.1f}" for n in (lon_i, lat_i, lon_i + 1, lat_i + 1))
        area = f"POLYGON(({west} {south},{west} {north},{east} {north},{east} {south},{west} {south}))"
        writer.writerow((count, west, south, area))
        if buffer.tell() > _FLUSH_BYTES:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


#: Records checked at once: their coordinates are parsed and their squares counted column-wise.
_BATCH = 20_000


#: Bytes of the texts Arrow's cast alone settles: a text of only these bytes casts to float64 exactly when it
#: matches stats.json's pattern (``openaddr.outputs._NUMBER``), to the same value; a test checks every such text of
#: up to six characters.
_PLAIN_NUMBER_BYTES = b"0123456789.+-eE"


def _check_coordinates(lons: Any, lats: Any) -> tuple[Any, Any, Any]:
    """Which coordinate texts are valid (:func:`_coordinate`'s rule), and their values (NaN when not): one batch,
    column-wise. Texts that cannot reach Arrow (bytes that were not UTF-8) are checked one by one."""
    import numpy as np
    import pyarrow as pa

    try:
        lon, lat = _parse_numbers(lons), _parse_numbers(lats)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        nan = math.nan
        lons = lons.to_pylist() if isinstance(lons, pa.Array) else lons
        lats = lats.to_pylist() if isinstance(lats, pa.Array) else lats
        lon = np.array([v if (v := _coordinate(t, 180.0)) is not None else nan for t in lons], dtype=float)
        lat = np.array([v if (v := _coordinate(t, 90.0)) is not None else nan for t in lats], dtype=float)
    with np.errstate(invalid="ignore"):
        valid = (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)  # NaN compares False
    return valid, lon, lat


def _parse_numbers(texts: Any) -> Any:
    """The float values of texts that match stats.json's pattern once stripped, NaN for the others.

    Texts of digits, signs, dots and exponent letters only (nearly all) are cast by Arrow at once (the cast
    accepts exactly the texts the pattern does: :data:`_PLAIN_NUMBER_BYTES`); the others (blanks around a
    number, empty texts, words) are stripped and matched against the pattern first.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from openaddr.outputs import _NUMBER

    strings = texts if isinstance(texts, pa.Array) else pa.array(texts, type=pa.string())
    count = len(strings)
    values = np.full(count, np.nan)
    if count == 0:
        return values
    plain = np.zeros(256, dtype=bool)
    plain[np.frombuffer(_PLAIN_NUMBER_BYTES, dtype=np.uint8)] = True
    buffers: list[Any] = strings.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[strings.offset : strings.offset + count + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    other = np.flatnonzero(~plain[data[offsets[0] : offsets[-1]]]) + offsets[0]
    suspect = np.diff(offsets) == 0
    suspect[np.searchsorted(offsets, other, side="right") - 1] = True
    if strings.null_count:
        suspect |= ~np.asarray(strings.is_valid())
    clean = ~suspect
    if clean.any():
        try:
            subset = strings.filter(pa.array(clean)) if suspect.any() else strings
            values[clean] = pc.cast(subset, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # a text of those bytes that is no number ("1e", "+"): the pattern decides
            suspect[:] = True
    if suspect.any():
        subset = strings.filter(pa.array(suspect)) if not suspect.all() else strings
        array = pc.utf8_trim_whitespace(subset)
        kept = pc.if_else(pc.match_substring_regex(array, _NUMBER), array, None)
        assert isinstance(kept, pa.Array)  # an array's if_else is an array
        values[suspect] = pc.cast(kept, pa.float64()).to_numpy(zero_copy_only=False)
    return values


def _count_squares(lon: Any, lat: Any, squares: dict[tuple[int, int], int]) -> None:
    """Add valid coordinates to the 0.1° square counts (:func:`square`, column-wise)."""
    import numpy as np

    def index(values: Any) -> Any:
        i = np.floor(values * 10)
        i += (i + 1) / 10 <= values
        i -= i / 10 > values
        return i.astype(np.int64)

    if len(lon) == 0:
        return
    rows, columns = index(lat), index(lon)
    south, west = int(rows.min()), int(columns.min())
    height, width = int(rows.max()) - south + 1, int(columns.max()) - west + 1
    if height * width <= _DENSE_SQUARES:  # a source's usual extent: counted in a dense grid
        tally = np.bincount((rows - south) * width + (columns - west), minlength=height * width)
        found = np.flatnonzero(tally)
        counts = tally[found]
    else:
        found, counts = np.unique((rows - south) * width + (columns - west), return_counts=True)
    for key, count in zip(found.tolist(), counts.tolist(), strict=True):
        square_key = (key // width + south, key % width + west)
        squares[square_key] = squares.get(square_key, 0) + count


#: Largest grid of 0.1° squares counted densely by :func:`_count_squares` (8 MiB of counts).
_DENSE_SQUARES = 1 << 20


def _rewrite_lines(
    source: IO[bytes],
    targets: Sequence[IO[bytes]],
    result: RunZipResult,
    squares: dict[tuple[int, int], int],
    *,
    continued: bool = False,
) -> None:
    """Stream CSV text into every target, rewritten line by line (module docstring), counting its 0.1° squares in
    ``squares``: the whole member when its header is not ``out.csv``'s, or what :func:`_rewrite_csv`'s chunks
    cannot settle (``continued``: the header was written and the columns are ``out.csv``'s).

    Records are gathered in batches whose coordinates are checked and counted column-wise. The csv module parses
    and writes only what needs it: a line without a quote character is one whole record whose fields are its
    comma-separated parts, and when the member already has the 11 columns in order such a line is written back as
    it is (the writer would produce the same bytes: minimal quoting quotes only fields with a comma, quote or line
    break). Quoted records (which may span lines) and members with other columns go through ``csv.reader`` and
    ``csv.writer``. A test holds both paths to the plain reader-and-writer rewrite.
    """
    text = io.TextIOWrapper(source, encoding="utf-8", errors="surrogateescape", newline="")
    lines = iter(text)
    header = list(OUTPUT_COLUMNS)
    if not continued:
        header = next(csv.reader(lines), [])
    positions = {name: index for index, name in reversed(list(enumerate(header)))}
    picks = [positions.get(column) for column in OUTPUT_COLUMNS]
    lon_at, lat_at = picks[OUTPUT_COLUMNS.index("LON")], picks[OUTPUT_COLUMNS.index("LAT")]
    as_is = header == list(OUTPUT_COLUMNS)
    width = len(OUTPUT_COLUMNS)
    side = io.StringIO()
    writer = csv.writer(side, lineterminator="\r\n")
    records: list[str] = []
    lons: list[str] = []
    lats: list[str] = []
    first = [] if continued else [_HEADER_LINE.decode()]

    def flush() -> None:
        valid, lon, lat = _check_coordinates(lons, lats)
        kept = int(valid.sum())
        result.rows += kept
        result.dropped += len(records) - kept
        lon, lat = lon[valid], lat[valid]
        result.null_island += int(((lon == 0.0) & (lat == 0.0)).sum())
        _count_squares(lon, lat, squares)
        kept_records = itertools.compress(records, valid.tolist())
        data = "".join(itertools.chain(first, kept_records)).encode("utf-8", "surrogateescape")
        for target in targets:
            target.write(data)
        first.clear()
        records.clear()
        lons.clear()
        lats.clear()

    for line in lines:
        if as_is and '"' not in line:
            line = line.rstrip("\r\n")
            if not line:
                continue  # a blank line is no record
            if line.count(",") == width - 1:
                lon_text, lat_text, _ = line.split(",", 2)
                records.append(line + "\r\n")
                lons.append(lon_text)
                lats.append(lat_text)
                if len(records) >= _BATCH:
                    flush()
                continue
            row = line.split(",")
        elif '"' in line:
            row = next(csv.reader(itertools.chain((line,), lines)), [])
        else:
            line = line.rstrip("\r\n")
            row = line.split(",") if line else []
        if not row:
            continue  # a blank line is no record
        size = len(row)
        lons.append(row[lon_at] if lon_at is not None and lon_at < size else "")
        lats.append(row[lat_at] if lat_at is not None and lat_at < size else "")
        writer.writerow(
            row if as_is and size == width else [row[i] if i is not None and i < size else "" for i in picks]
        )
        records.append(side.getvalue())
        side.seek(0)
        side.truncate()
        if len(records) >= _BATCH:
            flush()
    flush()
    text.detach()


#: The header line of ``out.csv``: a member starting with it takes the chunked path of :func:`_rewrite_csv`.
_HEADER_LINE = (",".join(OUTPUT_COLUMNS) + "\r\n").encode()
#: Bytes of a CSV member rewritten at once by :func:`_rewrite_csv`.
_CHUNK = 4 << 20


class _Joined(io.RawIOBase):
    """Bytes already read, then the rest of a stream: what the line-wise rewrite continues with."""

    def __init__(self, head: bytes, tail: IO[bytes]) -> None:
        super().__init__()
        self.head = memoryview(head)
        self.tail = tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        if self.head:
            taken = self.head[:size]
            buffer[: len(taken)] = taken
            self.head = self.head[len(taken) :]
            return len(taken)
        data = self.tail.read(size)
        buffer[: len(data)] = data
        return len(data)


def _continue_lines(
    head: bytes,
    source: IO[bytes],
    targets: Sequence[IO[bytes]],
    result: RunZipResult,
    squares: dict[tuple[int, int], int],
    *,
    continued: bool,
) -> None:
    stream = io.BufferedReader(_Joined(head, source), _COPY_CHUNK)
    _rewrite_lines(stream, targets, result, squares, continued=continued)


def _rewrite_csv(
    source: IO[bytes], targets: Sequence[IO[bytes]], result: RunZipResult
) -> dict[tuple[int, int], int]:
    """Stream one CSV member into every target, rewritten (module docstring); return its 0.1° squares.

    A member that starts with ``out.csv``'s header (every run zip the Machine writes) is rewritten in chunks of
    whole lines (:func:`_rewrite_chunk`): no Python code runs per record unless the record needs it. Any other
    header goes line by line (:func:`_rewrite_lines`), and so does the rest of a member from a line a chunk
    cannot settle on its own (a quoted field running over a line end, a lone CR line end).
    """
    squares: dict[tuple[int, int], int] = {}
    header = source.readline()
    if header != _HEADER_LINE:
        _continue_lines(header, source, targets, result, squares, continued=False)
        return squares
    for target in targets:
        target.write(header)
    rest = b""
    while block := source.read(_CHUNK):
        cut = block.rfind(b"\n") + 1
        if not cut:
            rest += block
            continue
        chunk = b"".join((rest, memoryview(block)[:cut])) if rest or cut < len(block) else block  # one copy
        rest = block[cut:]
        done = _rewrite_chunk(chunk, targets, result, squares)
        if done < len(chunk):
            _continue_lines(chunk[done:] + rest, source, targets, result, squares, continued=True)
            return squares
    if rest:  # a last line without its line end
        _continue_lines(rest, source, targets, result, squares, continued=True)
    return squares


def _irregular_line(line: str) -> tuple[str, str, str] | None:
    """A line of ``out.csv``'s columns that is not 11 plain fields and a CRLF: its ``LON`` and ``LAT`` texts and
    its rewritten record (exactly as :func:`_rewrite_lines` makes them), or None for a blank line.

    :raises csv.Error: when the line is no whole record (a quoted field runs on) or the csv module refuses it
    """
    if '"' not in line:
        line = line.rstrip("\r\n")
        if not line:
            return None
        row = line.split(",")
    else:
        row = next(csv.reader([line], strict=True), [])
        if not row:
            return None
    width = len(OUTPUT_COLUMNS)
    size = len(row)
    side = io.StringIO()
    csv.writer(side, lineterminator="\r\n").writerow(
        row if size == width else [row[i] if i < size else "" for i in range(width)]
    )
    return (row[0], row[1] if size > 1 else "", side.getvalue())


def _rewrite_chunk(
    chunk: bytes, targets: Sequence[IO[bytes]], result: RunZipResult, squares: dict[tuple[int, int], int]
) -> int:
    """Rewrite whole lines of ``out.csv``'s columns (``chunk`` ends with a line feed) into every target; return how
    many bytes were settled (the rest goes line by line: :func:`_rewrite_csv`).

    The lines and commas are found with numpy; a line with 11 fields, no quote and a CRLF line end (nearly every
    line) is written back as it is, its ``LON`` and ``LAT`` read in place as Arrow strings (offsets into the
    chunk) and checked column-wise (:func:`_check_coordinates`). Other lines are parsed one by one
    (:func:`_irregular_line`). Output is the chunk itself when every line is kept as it is.
    """
    import numpy as np
    import pyarrow as pa

    if len(chunk) >= 1 << 31:
        return 0
    data = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    count = len(ends)
    crlf = data[np.maximum(ends - 1, 0)] == 13
    if b"\r" in chunk and np.count_nonzero(data == 13) != np.count_nonzero(crlf):
        return 0  # the csv module ends a line at a lone CR
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    commas = np.flatnonzero(data == 44)
    first = np.searchsorted(commas, starts)
    # 10 commas in the line: the 10th comma from its first lies before its end, the 11th after it.
    tenth, eleventh = first + len(OUTPUT_COLUMNS) - 2, first + len(OUTPUT_COLUMNS) - 1
    if len(commas):
        beyond = np.append(commas, len(chunk))  # a comma past the end, for lines without an 11th
        regular = (
            (tenth < len(commas))
            & (beyond[np.minimum(tenth, len(commas))] < ends)
            & (beyond[np.minimum(eleventh, len(commas))] > ends)
            & crlf
        )
    else:
        regular = np.zeros(count, dtype=bool)
    quote = chunk.find(b'"')
    while quote >= 0:  # rare: found one by one
        quoted = int(np.searchsorted(ends, quote))
        regular[quoted] = False
        quote = chunk.find(b'"', int(ends[quoted]) + 1)
    irregular = np.flatnonzero(~regular).tolist()
    special: dict[int, tuple[str, str, str] | None] = {}
    settled = len(chunk)
    for index in irregular:
        line = chunk[starts[index] : ends[index] + 1].decode("utf-8", "surrogateescape")
        try:
            special[index] = _irregular_line(line)
        except csv.Error:
            settled = int(starts[index])
            count = index
            break
    if count == 0:
        return settled
    starts, ends, regular, first = starts[:count], ends[:count], regular[:count], first[:count]
    last = max(len(commas) - 2, 0)
    if len(commas) >= 2:
        lon_end = np.where(regular, commas[np.minimum(first, last)], starts)
        lat_end = np.where(regular, commas[np.minimum(first + 1, last + 1)], starts)
    else:
        lon_end = lat_end = starts
    lat_start = np.where(regular, lon_end + 1, starts)
    # LON and LAT of every line as one Arrow array, in place: the chunk cut at each line's start, first comma,
    # LAT's start and second comma (fields of other lines are empty), then every other piece taken.
    offsets = np.empty(4 * count + 1, dtype=np.int32)
    offsets[0:-1:4], offsets[1::4], offsets[2::4], offsets[3::4] = starts, lon_end, lat_start, lat_end
    offsets[-1] = lat_end[-1]
    pieces = pa.Array.from_buffers(
        pa.binary(), 4 * count, [None, pa.py_buffer(offsets.data), pa.py_buffer(chunk)]
    )
    pairs = pieces.take(np.arange(0, 4 * count, 2))
    try:
        values = _parse_numbers(pairs.cast(pa.string()))
    except pa.ArrowInvalid:  # bytes that are not UTF-8: text by text
        texts = [(b or b"").decode("utf-8", "surrogateescape") for b in pairs.to_pylist()]
        valid, lon, lat = _check_coordinates(texts[0::2], texts[1::2])
    else:
        lon, lat = values[0::2].copy(), values[1::2].copy()
        with np.errstate(invalid="ignore"):
            valid = (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)  # NaN compares False
    records = {i: found for i, found in special.items() if i < count and found is not None}
    blanks = [i for i, found in special.items() if i < count and found is None]
    valid[blanks] = False  # a blank line is no record at all
    lines = list(records)
    if lines:
        fixed = _check_coordinates([records[i][0] for i in lines], [records[i][1] for i in lines])
        valid[lines], lon[lines], lat[lines] = fixed
    # A record the writer writes back as it was read (a quoted street, nearly always) stays in place.
    patched = [
        i for i in lines if records[i][2].encode("utf-8", "surrogateescape") != chunk[starts[i] : ends[i] + 1]
    ]
    blank = len(blanks)
    kept = int(valid.sum())
    result.rows += kept
    result.dropped += count - kept - blank
    lon, lat = lon[valid], lat[valid]
    result.null_island += int(((lon == 0.0) & (lat == 0.0)).sum())
    _count_squares(lon, lat, squares)
    if not patched and kept == count:
        out = chunk if settled == len(chunk) else chunk[:settled]
    else:
        parts: list[bytes] = []
        position = 0
        for i in sorted({*patched, *np.flatnonzero(~valid).tolist()}):
            parts.append(chunk[position : starts[i]])
            position = int(ends[i]) + 1
            if valid[i]:  # a patched record
                parts.append(records[i][2].encode("utf-8", "surrogateescape"))
        parts.append(chunk[position:settled])
        for piece in parts:  # written as they are: no copy of the whole chunk
            for target in targets:
                target.write(piece)
        return settled
    for target in targets:
        target.write(out)
    return settled


def add_run_zip(zip_path: Path, targets: Sequence[CollectionZip]) -> RunZipResult:
    """Add a run zip's members to every target collection (§8 "Content" step 2), in the zip's order.

    ``README.txt`` is left out; each ``.csv`` member is rewritten and followed by its summary CSV and VRT; any
    other member is copied. A member whose name a target already holds (two runs naming the same file) is skipped
    for that target and reported.

    :param zip_path: the run's processed zip, as a local file
    :param targets: the collections the run belongs to
    """
    result = RunZipResult()
    with zipfile.ZipFile(zip_path) as source:
        for info in source.infolist():
            name = info.filename
            if name == "README.txt" or info.is_dir():
                continue
            is_csv = name.lower().endswith(".csv")
            if is_csv and result.name is None:
                result.name = name[: -len(".csv")]
            written = [name, *summary_names(name)] if is_csv else [name]
            wanted = []
            for target in targets:
                if any(target.has(n) for n in written):
                    log.warning("%s: %s already holds %s; skipped", zip_path.name, target.path.name, name)
                    result.duplicates.append(name)
                else:
                    wanted.append(target)
            if not wanted:
                continue
            with open_member(source, info) as member, contextlib.ExitStack() as stack:
                handles = open_members(stack, wanted, name)
                if is_csv:
                    before = result.rows
                    squares = _rewrite_csv(member, handles, result)
                else:
                    _copy(member, handles)
            if is_csv:
                for target in wanted:
                    target.address_count += result.rows - before
                _write_summary(wanted, name, squares)
    return result


def add_geojson(gz_path: Path, member: str, targets: Sequence[CollectionZip]) -> int:
    """Add a run's gzipped line-delimited GeoJSON (``out.geojson.gz``, processing.md §9.3) to every target as the
    member ``member``, the features as the run published them; return the number of features.

    A target that already holds ``member`` is left out (and the features are not counted for it).
    """
    from isal import igzip

    wanted = [target for target in targets if not target.has(member)]
    for target in targets:
        if target.has(member):
            log.warning("%s: %s already holds %s; skipped", gz_path.name, target.path.name, member)
    features = 0
    last = b"\n"
    with igzip.open(gz_path, "rb") as source, contextlib.ExitStack() as stack:
        handles = open_members(stack, wanted, member)
        while chunk := source.read(_COPY_CHUNK):
            features += chunk.count(b"\n")
            last = chunk[-1:]
            for handle in handles:
                handle.write(chunk)
        if last != b"\n":  # a last line without its line end
            features += 1
            for handle in handles:
                handle.write(b"\n")
    for target in wanted:
        target.address_count += features
    return features


def _copy(source: IO[bytes], targets: Sequence[IO[bytes]]) -> None:
    while chunk := source.read(_COPY_CHUNK):
        for target in targets:
            target.write(chunk)


def _write_summary(
    targets: Sequence[CollectionZip], member: str, squares: dict[tuple[int, int], int]
) -> None:
    csv_name, vrt_name = summary_names(member)
    with contextlib.ExitStack() as stack:
        handles = open_members(stack, targets, csv_name)
        for chunk in summary_csv(squares):
            data = chunk.encode("utf-8")
            for handle in handles:
                handle.write(data)
    vrt = summary_vrt(csv_name.rsplit("/", 1)[-1])
    for target in targets:
        target.write_text(vrt_name, vrt)


def zip_time(moment: dt.datetime) -> tuple[int, int, int, int, int, int]:
    """A zip member time (local fields, no zone) from an aware datetime in UTC."""
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


__all__ = [
    "SUMMARY_COLUMNS",
    "CollectionZip",
    "SharedDeflate",
    "LicenseBlock",
    "RunZipResult",
    "add_geojson",
    "add_run_zip",
    "license_text",
    "open_member",
    "open_members",
    "readme_text",
    "square",
    "summary_csv",
    "summary_names",
    "summary_vrt",
    "zip_time",
]
