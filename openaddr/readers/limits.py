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

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[[ord("{"), ord("[")]] = 1
_OPENERS[[ord("}"), ord("]")]] = -1


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
        quotes = data == _QUOTE
        slashes = data == _BACKSLASH
        if self.backslashes or slashes.any():
            quotes &= ~self._escaped(slashes)
            trailing = n - 1 - int(np.flatnonzero(~slashes)[-1]) if not slashes.all() else n
            self.backslashes = trailing if not slashes.all() else self.backslashes + n
        parity = np.cumsum(quotes, dtype=np.int64)
        if self.in_string:
            parity += 1
        outside = (parity & 1) == 0
        delta = _OPENERS[data]
        delta[~outside] = 0
        depth = np.cumsum(delta, dtype=np.int64)
        depth += self.depth
        deepest = int(depth.max())
        if deepest > self.max_depth:
            where = self.offset + int(np.argmax(depth > self.max_depth))
            raise RecordTooLargeError(
                f"{self.label}: {self.name} nests deeper than {self.max_depth} levels at byte {where} "
                "(OPENADDR_MAX_JSON_DEPTH)"
            )
        boundaries = np.flatnonzero(outside & (depth <= 2))
        if len(boundaries):
            points = np.concatenate(([self.boundary], boundaries + self.offset + 1))
            longest = int(np.diff(points).max()) if len(points) > 1 else 0
            self.boundary = int(points[-1])
        else:
            longest = 0
        longest = max(longest, self.offset + n - self.boundary)
        if longest > self.max_record_bytes:
            raise RecordTooLargeError(
                f"{self.label}: {self.name} has a record of more than {self.max_record_bytes} bytes "
                f"before byte {self.offset + n} (OPENADDR_MAX_RECORD_BYTES)"
            )
        self.depth = int(depth[-1])
        self.in_string = bool(parity[-1] & 1)
        self.offset += n

    def _escaped(self, slashes: np.ndarray) -> np.ndarray:
        """Positions preceded by an odd run of backslashes (the run may start in the previous chunk)."""
        n = len(slashes)
        positions = np.arange(n, dtype=np.int64)
        last_other = np.maximum.accumulate(np.where(slashes, -1, positions))
        # backslashes just before position i: those since the last other byte before i
        before = np.empty(n, dtype=np.int64)
        before[0] = self.backslashes
        run = positions[:-1] - last_other[:-1]
        run = np.where(last_other[:-1] < 0, positions[:-1] + 1 + self.backslashes, run)
        before[1:] = np.where(slashes[:-1], run, 0)
        return (before & 1) == 1


class CheckedReader:
    """A binary file whose :meth:`read` passes every chunk through a :class:`JsonShape` first."""

    def __init__(self, raw: Any, shape: JsonShape) -> None:
        self._raw = raw
        self._shape = shape

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
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
