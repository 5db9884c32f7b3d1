"""Bounds on one record of a source file, and the named problems of inputs that are too large or cut short.

Source files come from untrusted pull requests (processing.md §13): a reader's memory must not depend on the size
or the nesting depth of one record. Two guards sit in front of the parsers:

* :class:`JsonShape` watches the bytes a streaming JSON parser reads, chunk by chunk, and stops the parse when
  the nesting gets deeper than ``max_json_depth`` or one member of a top-level array or object (a GeoJSON
  feature) gets longer than ``max_record_bytes``. ijson gives every event its full path prefix, so a feature
  nested 100,000 levels deep costs memory in the square of its depth (23.5 GB for 200 KB); the guard sees the
  depth before the parser builds anything for it.
* :func:`bounded_lines` hands the ``csv`` module lines no longer than ``max_record_bytes`` characters, and
  :func:`set_field_size_limit` bounds one field: a 200 MB field is refused, not read.
"""

from __future__ import annotations

import csv
import os
import stat
from typing import TYPE_CHECKING, Any

import numpy as np

from openaddr.errors import ConformError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import TextIO

#: What a byte is to the JSON guard: nothing, a quote, an opening or closing bracket, a backslash.
_QUOTE_KIND, _OPEN_KIND, _CLOSE_KIND, _BACKSLASH_KIND = 1, 2, 3, 4
_KINDS = np.zeros(256, dtype=np.uint8)
_KINDS[ord('"')] = _QUOTE_KIND
_KINDS[[ord("{"), ord("[")]] = _OPEN_KIND
_KINDS[[ord("}"), ord("]")]] = _CLOSE_KIND
_KINDS[ord("\\")] = _BACKSLASH_KIND
#: Depth change by kind.
_DELTA = np.array([0, 0, 1, -1, 0], dtype=np.int8)


class RecordTooLargeError(ConformError):
    """One record, field or line of the input is over a limit (record bytes, JSON depth)."""


class TruncatedInputError(ConformError):
    """The input ends early or its parts disagree: reading on would give a silent partial output."""


class SpecialFileError(ConformError):
    """The input is a FIFO, a device or a socket: reading it could block forever or never end."""


def refuse_special_file(path: Path, label: str) -> None:
    """Refuse ``path`` (its target, for a link) unless it is a regular file or a folder; a missing path passes.

    :raises SpecialFileError: naming the path and its kind
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    raise SpecialFileError(
        f"{label}: refusing to read {path.name}: it is {special_kind(mode)}, not a regular file"
    )


def special_kind(mode: int) -> str:
    """``a FIFO``, ``a character device``, … for a file mode that is not a regular file or folder."""
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a link"),
    ):
        if test(mode):
            return kind
    return "a special file"


def current_limits() -> tuple[int, int]:
    """``max_record_bytes`` and ``max_json_depth`` from the environment (:class:`openaddr.settings.Settings`)."""
    from openaddr.settings import Settings

    settings = Settings.from_env()
    return settings.max_record_bytes, settings.max_json_depth


class JsonShape:
    """Tracks nesting depth and member length over the successive chunks of one JSON text.

    Strings are followed (quotes escaped by an odd run of backslashes do not end them), so brackets inside
    strings do not count. A *member* is the run of bytes between two points at depth 2 or less outside strings:
    for a FeatureCollection, one feature (or one top-level value).

    :param name: the file name, for messages
    :param label: names the source and layer entry in messages
    """

    def __init__(self, name: str, label: str, max_record_bytes: int, max_depth: int) -> None:
        self.name = name
        self.label = label
        self.max_record_bytes = max_record_bytes
        self.max_depth = max_depth
        self.offset = 0
        self.depth = 0
        self.in_string = False
        self.backslashes = 0  # backslashes ending the previous chunk
        self.boundary = 0  # offset just after the last byte at depth <= 2 outside strings

    def feed(self, chunk: bytes) -> None:
        """Check the next chunk.

        :raises RecordTooLargeError: the nesting or a member is over its limit
        """
        n = len(chunk)
        if not n:
            return
        data = np.frombuffer(chunk, dtype=np.uint8)
        kinds = np.take(_KINDS, data)
        where = np.flatnonzero(kinds)  # only quotes, brackets and backslashes matter
        kind = kinds[where]
        quotes = kind == _QUOTE_KIND
        if self.backslashes or (kind == _BACKSLASH_KIND).any():
            self._unescape(quotes, where, where[kind == _BACKSLASH_KIND], n)
        parity = np.cumsum(quotes, dtype=np.int32)
        if self.in_string:
            parity += 1
        outside = (parity & 1) == 0
        delta = _DELTA[kind]
        delta[~outside] = 0
        depth = np.cumsum(delta, dtype=np.int32)
        depth += self.depth
        if len(depth) and int(depth.max()) > self.max_depth:
            at = self.offset + int(where[np.argmax(depth > self.max_depth)])
            raise RecordTooLargeError(
                f"{self.label}: {self.name} nests deeper than {self.max_depth} levels at byte {at} "
                "(OPENADDR_MAX_JSON_DEPTH)"
            )
        # a member ends at a quote or bracket outside strings at depth 2 or less (a feature's closing brace)
        ends = where[outside & (depth <= 2)] + (self.offset + 1)
        longest = 0
        if len(ends):
            longest = max(int(ends[0]) - self.boundary, int(np.diff(ends).max()) if len(ends) > 1 else 0)
            self.boundary = int(ends[-1])
        longest = max(longest, self.offset + n - self.boundary)
        if longest > self.max_record_bytes:
            raise RecordTooLargeError(
                f"{self.label}: {self.name} has a record of more than {self.max_record_bytes} bytes "
                f"before byte {self.offset + n} (OPENADDR_MAX_RECORD_BYTES)"
            )
        if len(depth):
            self.depth = int(depth[-1])
            self.in_string = bool(parity[-1] & 1)
        self.offset += n

    def _unescape(self, quotes: np.ndarray, where: np.ndarray, slashes: np.ndarray, n: int) -> None:
        """Clear the quotes that an odd run of backslashes escapes (a run may start in the previous chunk).

        :param quotes: whether each position of ``where`` is a quote (cleared in place)
        :param where: the positions of the chunk's quotes, brackets and backslashes
        :param slashes: the positions of its backslashes
        """
        carry = self.backslashes
        escaped: list[int] | np.ndarray
        if not len(slashes):
            escaped = [0] if carry % 2 else []
            self.backslashes = 0
        else:
            # runs of consecutive backslashes: where each starts and ends (inclusive), and its length
            breaks = np.flatnonzero(np.diff(slashes) != 1)
            starts = np.concatenate(([slashes[0]], slashes[breaks + 1]))
            ends = np.concatenate((slashes[breaks], [slashes[-1]]))
            lengths = ends - starts + 1
            first_escaped = carry % 2 == 1 and starts[0] != 0
            if starts[0] == 0:
                lengths[0] += carry
            after = ends + 1
            escaped = after[(lengths % 2 == 1) & (after < n)]
            if first_escaped:
                escaped = np.concatenate(([0], escaped))
            self.backslashes = int(lengths[-1]) if ends[-1] == n - 1 else 0
        if len(escaped):
            index = np.searchsorted(where, escaped)
            index = index[index < len(where)]
            hit = index[where[index] == np.asarray(escaped)[: len(index)]] if len(index) else index
            quotes[hit] = False


class CheckedReader:
    """A binary file whose :meth:`read` passes every chunk through a :class:`JsonShape` first."""

    def __init__(self, raw: Any, shape: JsonShape) -> None:
        self._raw = raw
        self._shape = shape

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that are left by default), fed to the :class:`JsonShape` first.

        :raises RecordTooLargeError: the nesting or a member is over its limit
        """
        data: bytes = self._raw.read(size)
        self._shape.feed(data)
        return data


def set_field_size_limit(limit: int) -> None:
    """Let a CSV field be at most ``limit`` characters (``csv.field_size_limit``, clamped to the platform's)."""
    limit = max(1, limit)
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def bounded_lines(fh: TextIO, limit: int, name: str, label: str) -> Iterator[str]:
    """The lines of ``fh`` (newlines kept), refusing a line longer than ``limit`` characters.

    :raises RecordTooLargeError: naming the line
    """
    number = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit:
            raise RecordTooLargeError(
                f"{label}: line {number} of {name} is longer than {limit} characters (OPENADDR_MAX_RECORD_BYTES)"
            )
        yield line
