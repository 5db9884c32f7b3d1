"""CSV sources (processing.md §6.4): encoding, dialect, header rules, ``lon``/``lat`` columns, ragged rows.

The header is read with Python's ``csv`` module and codec machinery. The records are parsed by Arrow's
multi-threaded CSV reader, every column as text and only the columns asked for (files in other encodings are
decoded by Python and handed to Arrow as UTF-8). Whatever Arrow refuses, such as a record shorter than the
header (which must be padded) or a malformed quote, sends the reader back to the ``csv`` module, which gives
the same texts. Coordinates are parsed and reprojected per batch with numpy and one PROJ call.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import logging
import re
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from openaddr.errors import ConformError
from openaddr.patterns import bounded_map, compile_pattern
from openaddr.readers.base import DEFAULT_BATCH_SIZE, OA_X, OA_Y, Batch
from openaddr.readers.projection import transformer_to_wgs84
from openaddr.readers.reader import (
    Reader,
    is_utf8,
    parse_srs,
    resolve_encoding,
    transform_xy,
)
from openaddr.settings import pattern_timeout

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping
    from pathlib import Path

    import pyproj

log = logging.getLogger(__name__)

#: Bytes Arrow parses at a time. Arrow's streaming reader keeps a few dozen blocks alive, so the block size sets
#: the reader's memory: 1 MiB keeps a conform's main process under 300 MiB (4 MiB: ~380 MiB) for a 5 % longer run
#: (benchmarks/README.md). A record longer than a block is read by the csv module instead.
ARROW_BLOCK_SIZE = 1 << 20

_GROUP_REF = re.compile(r"\$\{(\d+)\}|\$(\d+)(?!\d)")


def raise_field_size_limit() -> None:
    """Let a CSV field be as large as ``OPENADDR_MAX_RECORD_BYTES`` (32 MiB by default; ESRI caches carry whole
    polygon WKT in one cell), and no larger: a larger field is refused before it fills memory (processing.md §13).

    The command line does this at start-up (processing.md §1.1); readers make sure of it for library callers.
    """
    from openaddr.readers.limits import current_limits, set_field_size_limit

    set_field_size_limit(current_limits()[0])


def csv_dialect(delimiter: object, label: str) -> dict[str, Any]:
    """Keyword arguments for :func:`csv.reader`: ``"`` quoting with doubled quotes, the given delimiter.

    :raises ConformError: ``csvsplit`` is not a single character
    """
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ConformError(f"{label}: csvsplit must be one character, not {delimiter!r}")
    return {"delimiter": delimiter, "quotechar": '"', "doublequote": True, "strict": False}


def open_text(path: Path, encoding: str) -> TextIO:
    """Open a CSV file for the ``csv`` module; a UTF-8 byte-order mark is dropped."""
    codec = "utf-8-sig" if is_utf8(encoding) else encoding
    return path.open("r", encoding=codec, errors="strict", newline="")


def undecodable_line(path: Path, encoding: str) -> int:
    """The 1-based number of the first line that does not decode (0 if every line does)."""
    codec = "utf-8-sig" if is_utf8(encoding) else encoding
    decoder = codecs.getincrementaldecoder(codec)("strict")
    number = 0  # the line of the last piece read
    line_start = True
    with path.open("rb") as fh:
        # at most 1 MiB at a time: a line may be as long as the whole file
        while piece := fh.readline(1 << 20):
            if line_start:
                number += 1
            try:
                decoder.decode(piece)
            except UnicodeDecodeError:
                return number
            line_start = piece.endswith(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return number
    return 0


def limited_lines(fh: TextIO, name: str, label: str) -> Iterator[str]:
    """The lines of ``fh`` for the ``csv`` module, none longer than ``OPENADDR_MAX_RECORD_BYTES`` characters."""
    from openaddr.readers.limits import bounded_lines, current_limits

    return bounded_lines(fh, current_limits()[0], name, label)


class CsvRows:
    """Non-blank records of a CSV file, with errors turned into :class:`ConformError` naming the line."""

    def __init__(self, path: Path, encoding: str, dialect: dict[str, Any], label: str) -> None:
        self.path = path
        self.encoding = encoding
        self.label = label
        raise_field_size_limit()
        self._fh = open_text(path, encoding)
        self._reader = csv.reader(limited_lines(self._fh, path.name, label), **dialect)
        self.exhausted = False

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def _failure(self, exc: Exception) -> ConformError:
        if isinstance(exc, csv.Error) and "field limit" in str(exc):
            from openaddr.readers.limits import RecordTooLargeError

            return RecordTooLargeError(
                f"{self.label}: a field on line {self._reader.line_num} of {self.path.name} is larger than "
                f"{csv.field_size_limit()} characters (OPENADDR_MAX_RECORD_BYTES)"
            )
        if isinstance(exc, UnicodeDecodeError):
            line = undecodable_line(self.path, self.encoding)
            return ConformError(
                f"{self.label}: cannot decode line {line} of {self.path.name} as {self.encoding}: {exc.reason}"
            )
        return ConformError(
            f"{self.label}: CSV error on line {self._reader.line_num} of {self.path.name}: {exc}"
        )

    def next_row(self) -> list[str] | None:
        """The next non-blank record, or None at the end."""
        try:
            for row in self._reader:
                if row:
                    return row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise self._failure(exc) from None
        return None

    def take(self, count: int) -> list[list[str]]:
        """Up to ``count`` records (blank lines dropped); sets :attr:`exhausted` at the end of the file."""
        try:
            rows = list(itertools.islice(self._reader, count))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise self._failure(exc) from None
        if len(rows) < count:
            self.exhausted = True
        if not all(rows):
            rows = [r for r in rows if r]
        return rows


def find_column(header: list[str], name: str) -> str | None:
    """A column by exact name, then upper-cased name (7.5.5), then case-insensitively (new)."""
    if name in header:
        return name
    upper = name.upper()
    if upper in header:
        return upper
    lower = name.lower()
    for column in header:
        if column.lower() == lower:
            return column
    return None


class _CoordinateRegexp:
    """A ``regexp`` function object on ``lon``/``lat`` (schema allows it; no corpus use), §7.5 semantics."""

    def __init__(self, spec: Mapping[str, Any], label: str, what: str = "coordinate") -> None:
        source = str(spec.get("pattern", ""))
        try:
            self.pattern = compile_pattern(source)
        except re.error as exc:
            raise ConformError(f"{label}: invalid regexp on a coordinate: {exc}") from None
        self.budget = pattern_timeout()
        self.message = (
            f"{label}: the regexp pattern {source!r} on field `{spec.get('field')}` of {what} took longer than its "
            f"{self.budget:g} s budget on one value (OPENADDR_PATTERN_TIMEOUT)"
        )
        replace = spec.get("replace")
        self.replace = (
            _GROUP_REF.sub(lambda m: f"\\g<{m.group(1) or m.group(2)}>", replace) if replace else None
        )

    def __call__(self, value: str) -> str:
        if self.replace is not None:
            return self.pattern.sub(self.replace, value)
        match = self.pattern.search(value)
        return "".join(g or "" for g in match.groups()) if match else ""

    def column(self, values: list[str]) -> list[str]:
        """The regexp over a column of values, each within the pattern's time budget.

        :raises PatternTimeout: one value took longer than ``OPENADDR_PATTERN_TIMEOUT``
        """
        return bounded_map(self, values, self.budget, lambda: self.message)


def coordinate_spec(value: object, what: str, label: str) -> tuple[str, _CoordinateRegexp | None]:
    """The field name of ``lon``/``lat`` and the regexp to apply to it, if any.

    :raises ConformError: absent or of an unusable kind
    """
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict) and value.get("function") == "regexp" and isinstance(value.get("field"), str):
        return value["field"], _CoordinateRegexp(value, label, what)
    raise ConformError(f"{label}: CSV conform needs lon and lat ({what} is {value!r})")


def reproject_texts(
    xs: list[str], ys: list[str], transformer: pyproj.Transformer | None
) -> tuple[list[str], list[str]]:
    """Parse coordinate texts as floats, transform them and write them with 7 decimals (``%.7f``).

    Empty or unparsable values give ``''`` for both coordinates of the record (DEBUG log).
    """
    n = len(xs)
    x = _floats(xs)
    y = _floats(ys)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        log.debug("%d of %d records have no usable coordinates", int(bad.sum()), n)
        x[bad] = np.nan
        y[bad] = np.nan
    x, y = transform_xy(transformer, x, y)
    out_x = [f"{v:.7f}" for v in x.tolist()]
    out_y = [f"{v:.7f}" for v in y.tolist()]
    missing = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
    for i in missing.tolist():
        out_x[i] = out_y[i] = ""
    return out_x, out_y


def _floats(texts: list[str]) -> np.ndarray:
    try:
        return np.array([float(t) for t in texts], dtype=np.float64)
    except ValueError:
        return np.array([_float_or_nan(t) for t in texts], dtype=np.float64)


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return np.nan


class _ArrowFailed(Exception):
    """The Arrow CSV parser refused the data; the Python ``csv`` module takes over."""


class _Utf8Stream(io.RawIOBase):
    """A decoded text file re-encoded as UTF-8 bytes, for Arrow to parse files in other encodings."""

    def __init__(self, text: TextIO) -> None:
        super().__init__()
        self._text = text
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not len(self._pending):
            chunk = self._text.read(1 << 16)
            if not chunk:
                return 0
            self._pending = memoryview(chunk.encode("utf-8"))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def arrow_tables(
    source: Any, width: int, include: list[int], delimiter: str, batch_size: int, long_rows: list[int]
) -> Iterator[pa.Table]:
    """Parse CSV records with Arrow's reader into tables of ``batch_size`` rows.

    Single-threaded: the conform's worker processes already use every core, and Arrow's parsing threads only
    added blocks in memory.

    Every column is text (no type inference, empty stays ``''``); blank lines are ignored, quoted values may
    span lines. Records longer than ``width`` are skipped and noted in ``long_rows``.

    :param source: an Arrow input stream or binary file object positioned at the first record
    :param include: indexes of the columns to materialise (named ``c<index>``)
    :raises _ArrowFailed: anything Arrow refuses (a short record, a malformed quote, invalid UTF-8, …)
    """
    names = [f"c{i}" for i in range(width)]

    def invalid(row: pacsv.InvalidRow) -> Literal["skip", "error"]:
        if row.actual_columns > row.expected_columns:
            long_rows.append(1)
            return "skip"
        return "error"  # short records are padded, which only the Python path does

    read = pacsv.ReadOptions(column_names=names, block_size=ARROW_BLOCK_SIZE, use_threads=False)
    parse = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"',
        double_quote=True,
        escape_char=False,
        newlines_in_values=True,
        ignore_empty_lines=True,
        invalid_row_handler=invalid,
    )
    convert = pacsv.ConvertOptions(
        column_types={names[i]: pa.string() for i in include},
        include_columns=[names[i] for i in include],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        null_values=[],
    )
    try:
        reader = pacsv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)
        pending: list[pa.RecordBatch] = []
        count = 0
        for record_batch in reader:
            if not record_batch.num_rows:
                continue
            pending.append(record_batch)
            count += record_batch.num_rows
            while count >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size)
                rest = table.slice(batch_size)
                pending = rest.to_batches()
                count = rest.num_rows
        if count:
            yield pa.Table.from_batches(pending)
    except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        raise _ArrowFailed(str(exc)) from None


class CsvBase(Reader):
    """What the CSV and ESRI cache readers share: the header, and batches read by Arrow or by ``csv``.

    Records are parsed by Arrow's CSV reader (fast, multi-threaded, only the needed columns). Anything it
    refuses, such as a record shorter than the header, which must be padded, sends the reader back to the start
    of the data with Python's ``csv`` module, skipping the records already delivered. Both give the same texts.
    """

    encoding = "utf-8"
    dialect: dict[str, Any]
    header: list[str]
    #: the column index of each name a batch may pick (set by the subclass once it has read the header)
    _index: dict[str, int]
    _headers = 0
    _skip = 0

    def _open(self) -> CsvRows:
        return CsvRows(self.path, self.encoding, self.dialect, self.label)

    def _read_header(self, rows: CsvRows) -> list[str]:
        for _ in range(self._skip):
            rows.next_row()
        first = rows.next_row() or []
        if self._headers == -1:
            return [f"COLUMN{n}" for n in range(1, len(first) + 1)]
        return first

    def _batch(self, column: Callable[[int], list[str]], size: int, picks: list[tuple[str, int]]) -> Batch:
        """One output batch from the text columns of ``size`` records (``column(index)``)."""
        raise NotImplementedError

    def _needed(self, picks: list[tuple[str, int]]) -> set[int]:
        """Column indexes :meth:`_batch` reads besides the picked ones."""
        return set()

    def batches(
        self, batch_size: int = DEFAULT_BATCH_SIZE, *, columns: Collection[str] | None = None
    ) -> Iterator[Batch]:
        """Stream the records as batches of texts (see :meth:`Reader.batches`).

        :raises ConformError: a byte that does not decode (naming the line), a malformed record
        """
        wanted = self.wanted(columns)
        picks = [(name, self._index[name]) for name in wanted]
        skipped_before = self.skipped
        done = 0
        try:
            try:
                for batch in self._arrow_batches(batch_size, picks):
                    done += batch.size
                    yield batch
            except _ArrowFailed as exc:
                log.debug("%s: reading %s with the csv module (%s)", self.label, self.path.name, exc)
                self.skipped = skipped_before
                yield from self._python_batches(batch_size, picks, done)
        finally:
            if self.skipped > skipped_before:
                log.warning(
                    "%s: skipped %d rows with more fields than the header",
                    self.label,
                    self.skipped - skipped_before,
                )

    def _arrow_batches(self, batch_size: int, picks: list[tuple[str, int]]) -> Iterator[Batch]:
        width = len(self.header)
        if not width:
            return
        include = sorted({i for _, i in picks} | self._needed(picks))
        long_rows: list[int] = []
        skipped_before = self.skipped
        fh = open_text(self.path, self.encoding)
        native: pa.NativeFile | None = None
        try:
            consumed: list[str] = []
            if self._headers != -1:
                lines = limited_lines(fh, self.path.name, self.label)
                rows = csv.reader(_recorded(lines, consumed), **self.dialect)
                for _ in range(self._skip + 1):
                    while next(rows, None) == []:
                        pass
            if is_utf8(self.encoding):
                with self.path.open("rb") as raw:
                    bom = len(codecs.BOM_UTF8) if raw.read(3) == codecs.BOM_UTF8 else 0
                native = pa.OSFile(str(self.path), mode="r")
                native.seek(bom + len("".join(consumed).encode("utf-8")))
                source: Any = native
            else:
                source = io.BufferedReader(_Utf8Stream(fh), 1 << 20)
            for table in arrow_tables(
                source, width, include, self.dialect["delimiter"], batch_size, long_rows
            ):
                self.skipped = skipped_before + len(long_rows)
                arrays = {i: table.column(f"c{i}") for i in include}

                def arrow_column(i: int, arrays: Mapping[int, Any] = arrays) -> list[str]:
                    return cast("list[str]", arrays[i].to_pylist())  # strings, never null (null_values=[])

                yield self._batch(arrow_column, table.num_rows, picks)
        except (UnicodeDecodeError, _ArrowFailed) as exc:
            line = undecodable_line(self.path, self.encoding)
            if line:
                raise self.fail(f"cannot decode line {line} of {self.path.name} as {self.encoding}") from None
            if isinstance(exc, _ArrowFailed):
                raise
            raise self.fail(f"cannot decode {self.path.name} as {self.encoding}: {exc.reason}") from None
        finally:
            if native is not None:
                native.close()
            fh.close()

    def _python_batches(self, batch_size: int, picks: list[tuple[str, int]], skip: int) -> Iterator[Batch]:
        """Batches read with the ``csv`` module, after dropping the first ``skip`` records (already delivered)."""
        width = len(self.header)
        rows = self._open()
        pending: list[list[str]] = []
        try:
            if self._headers != -1:
                self._read_header(rows)
            while True:
                records = rows.take(batch_size)
                if records and any(len(r) != width for r in records):
                    records = self._even(records, width)
                if skip and records:
                    dropped = min(skip, len(records))
                    records = records[dropped:]
                    skip -= dropped
                pending.extend(records)
                while len(pending) >= batch_size or (pending and rows.exhausted):
                    chunk, pending = pending[:batch_size], pending[batch_size:]
                    transposed = list(zip(*chunk, strict=True)) if width else []

                    def python_column(i: int, transposed: list[tuple[str, ...]] = transposed) -> list[str]:
                        return list(transposed[i])

                    yield self._batch(python_column, len(chunk), picks)
                if rows.exhausted:
                    break
        finally:
            rows.close()

    def _even(self, records: list[list[str]], width: int) -> list[list[str]]:
        """Skip records longer than the header (counted), pad shorter ones with ``''``."""
        even: list[list[str]] = []
        for r in records:
            size = len(r)
            if size == width:
                even.append(r)
            elif size > width:
                self.skipped += 1
            else:
                even.append(r + [""] * (width - size))
        return even


def _recorded(lines: Iterator[str], consumed: list[str]) -> Iterator[str]:
    """The ``lines``, each also appended to ``consumed`` (to find where the header ends)."""
    for line in lines:
        consumed.append(line)
        yield line


class CsvReader(CsvBase):
    """Reads a CSV source as §6.4 says.

    :param path: the CSV file
    :param conform: ``encoding``, ``csvsplit``, ``headers``, ``skiplines``, ``lon``, ``lat``, ``srs`` apply
    :param label: names the source and layer entry in messages
    :raises ConformError: unknown encoding, bad header options, missing ``lon``/``lat`` or their columns
    """

    def __init__(self, path: Path, conform: Mapping[str, Any], *, label: str) -> None:
        super().__init__(path, label)
        self.encoding = resolve_encoding(conform.get("encoding", "utf-8"), label)
        self.dialect = csv_dialect(conform.get("csvsplit", ","), label)
        self._headers, self._skip = self._header_rule(conform.get("headers"), conform.get("skiplines"))
        lon, self._lon_regexp = coordinate_spec(conform.get("lon"), "lon", label)
        lat, self._lat_regexp = coordinate_spec(conform.get("lat"), "lat", label)
        srs = conform.get("srs")
        self._transformer, self.reprojection = (
            transformer_to_wgs84(parse_srs(srs, label, allow_integer=True), label) if srs else (None, None)
        )
        self._reproject = srs is not None
        rows = self._open()
        try:
            header = self._read_header(rows)
        finally:
            rows.close()
        self.header = header
        found_lon = find_column(header, lon)
        found_lat = find_column(header, lat)
        for what, name, found in (("lon", lon, found_lon), ("lat", lat, found_lat)):
            if found is None:
                raise self.fail(f"CSV {what} column {name!r} not found in {path.name}")
        assert found_lon is not None
        assert found_lat is not None
        last = {name: i for i, name in enumerate(header)}  # duplicate names: the last one wins (DictReader)
        self._lon_index = last[found_lon]
        self._lat_index = last[found_lat]
        removed = {lon, lon.upper(), found_lon, lat, lat.upper(), found_lat}
        self.columns = [c for c in last if c not in removed]
        self._index = last
        log.info("Reading %s: %d columns, %s", path.name, len(header), self.encoding)

    def _header_rule(self, headers: object, skiplines: object) -> tuple[int, int]:
        if headers is None:
            if skiplines is not None:
                raise self.fail("skiplines needs headers")
            return 0, 0
        if isinstance(headers, bool) or not isinstance(headers, int):
            raise self.fail(f"invalid headers {headers!r}")
        if headers == -1:
            if skiplines is not None:
                log.warning("%s: skiplines %r ignored with headers -1", self.label, skiplines)
            return -1, 0
        if headers >= 1:
            if skiplines != headers:
                raise self.fail(f"headers {headers} needs skiplines {headers}, not {skiplines!r}")
            return headers, headers - 1
        raise self.fail(f"invalid headers {headers!r}")

    def _needed(self, picks: list[tuple[str, int]]) -> set[int]:
        return {self._lon_index, self._lat_index}

    def _batch(self, column: Callable[[int], list[str]], size: int, picks: list[tuple[str, int]]) -> Batch:
        out: dict[str, list[str]] = {name: column(i) for name, i in picks}
        out[OA_X], out[OA_Y] = self._coordinates(column(self._lon_index), column(self._lat_index))
        return Batch(columns=out, size=size)

    def _coordinates(self, xs: list[str], ys: list[str]) -> tuple[list[str], list[str]]:
        if self._lon_regexp is not None:
            xs = self._lon_regexp.column(xs)
        if self._lat_regexp is not None:
            ys = self._lat_regexp.column(ys)
        # Decimal commas: "-21,77" → "-21.77"
        xs = [v.replace(",", ".") for v in xs]
        ys = [v.replace(",", ".") for v in ys]
        if not self._reproject:
            return xs, ys
        return reproject_texts(xs, ys, self._transformer)
