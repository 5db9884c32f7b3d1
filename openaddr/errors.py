"""Errors and source problems shared by every step of processing one source.

Each failure that ends a layer entry carries a :class:`SourceProblem`; the text of the problem is what the state
(``index.json``) records, and the WARNING line is what 7.5.5's text rules recognise in ``output.txt``
(processing.md §10.2).
"""

from __future__ import annotations

import enum


class SourceProblem(enum.Enum):
    """The source problems of processing.md §10.2, in precedence order."""

    skip_source = "Source says to skip"
    invalid_source = "Source does not match the schema"
    test_failed = "An acceptance test failed"
    missing_conform = "Source is missing a conform object"
    unknown_conform_protocol = "Unknown source conform protocol"
    unknown_conform_format = "Unknown source conform format"
    unknown_conform_type = "Unknown source conform type"
    no_addresses_found = "Found no addresses in source data"
    download_source_failed = "Could not download source data"
    conform_source_failed = "Could not conform source data"
    no_esri_token = "Missing required ESRI token"
    no_coverage = "Missing or incomplete coverage"


class OpenaddrError(Exception):
    """Base class of every error this package raises on purpose."""

    problem: SourceProblem | None = None


class SourceFileError(OpenaddrError):
    """A source file that cannot be read or parsed at all (bad path, broken JSON, over a limit)."""


class SourceUnreadableError(SourceFileError):
    """A source path that names no readable regular file (missing, unreadable, a folder, a FIFO or a device).

    Bad usage rather than a bad source: the commands exit 2 for it.
    """


class UnsafePathError(OpenaddrError):
    """A path built from source data that would lie outside its run folder; nothing is written there."""

    problem = SourceProblem.invalid_source


class ConformError(OpenaddrError):
    """The conform cannot be applied: bad function, missing field, unreadable data.

    The message names the source, the layer and, where it applies, the field.
    """

    problem = SourceProblem.conform_source_failed


class UnknownFormatError(ConformError):
    """The conform ``format`` is absent or names no reader."""

    problem = SourceProblem.unknown_conform_format


class DownloadError(OpenaddrError):
    """The download failed (HTTP status, truncated body, refused host, ESRI page error)."""

    problem = SourceProblem.download_source_failed


class PatternTimeout(ConformError):
    """A ``regexp`` pattern took longer than its time budget on one value (``OPENADDR_PATTERN_TIMEOUT``).

    The message names the source, the layer, the attribute and field, and the pattern.
    """
