"""Source files: load, upgrade layerless v1 files, pick layer entries (processing.md §2).

A *source file* is one JSON document; a *layer entry* is one object in ``layers.<type>[]``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openaddr.errors import SourceFileError, SourceUnreadableError, UnsafePathError

log = logging.getLogger(__name__)

#: Layer types in processing order (processing.md §2.6).
LAYER_TYPES = ("addresses", "parcels", "buildings", "centerlines")

#: Top-level v1 keys that stay at the top when a layerless file is upgraded.
_V1_TOP_LEVEL = ("coverage",)

# -- limits of a source file (the trust boundary of issue 10) ---------------------------------------------------
# The corpus's largest file is 589 KB, its deepest nesting 10 levels, its longest string 48,236 characters, its
# longest number 19 characters and its most entries of one layer type 2 (2,833 files, measured).

#: Bytes a source file may have.
MAX_SOURCE_BYTES = 1 << 20
#: Nesting levels of objects and arrays (the document itself is level 1).
MAX_DEPTH = 32
#: Characters of one string (object keys included).
MAX_STRING_CHARS = 100_000
#: Characters of one number literal.
MAX_NUMBER_CHARS = 100
#: Layer entries of one layer type.
MAX_ENTRIES = 100

#: What an entry's ``name`` must look like: it becomes a folder name (``<out>/<layer>/<name>``).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: The pattern as error messages quote it.
SAFE_NAME_TEXT = f"^{SAFE_NAME.pattern}$"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: A JSON string literal (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
#: A number literal longer than :data:`MAX_NUMBER_CHARS` (outside strings).
_LONG_NUMBER = re.compile(rf"[-+0-9.eE]{{{MAX_NUMBER_CHARS + 1},}}")
#: An exponent in a number literal (outside strings): only these can overflow to infinity.
_EXPONENT = re.compile(r"[0-9][eE]")
#: An escape that may decode to NUL or a lone surrogate: ``\\u0000``, ``\\uD800``–``\\uDFFF``.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
#: What no string of a source file may hold: NUL and lone surrogates (which cannot be written as UTF-8).
_FORBIDDEN_CHARS = re.compile("[\x00\ud800-\udfff]")


def format_path(parts: Sequence[str | int]) -> str:
    """Render a JSON path: ``layers.addresses[0].license["attribution name"]``; ``(root)`` when empty."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text or "(root)"


@dataclass(frozen=True)
class LayerEntry:
    """One layer entry of a source file, with its unique name within its layer type.

    :param source: the source file it belongs to
    :param layer: ``addresses``, ``parcels``, ``buildings`` or ``centerlines``
    :param index: 0-based position within ``layers.<layer>``
    :param name: the entry's name, made unique within the layer type (``<name>-<n>``, processing.md §2.6)
    :param data: the entry object, with legacy key names upgraded (§2.4)
    """

    source: Source = field(repr=False)
    layer: str
    index: int
    name: str
    data: Mapping[str, Any] = field(repr=False)

    @property
    def conform(self) -> Mapping[str, Any] | None:
        """The entry's conform object, or None."""
        conform = self.data.get("conform")
        return conform if isinstance(conform, Mapping) else None

    @property
    def label(self) -> str:
        """``<source id> <layer>/<name>``, used to name the entry in messages."""
        return f"{self.source.id} {self.layer}/{self.name}"

    def directory(self, out: str | Path) -> Path:
        """The entry's state directory ``<out>/<layer>/<name>``, checked to lie inside ``out``.

        :raises UnsafePathError: the path resolves outside ``out`` (a symbolic link on the way, say)
        """
        return contained_path(out, self.layer, self.name)


@dataclass
class Source:
    """A loaded source file.

    :param path: where it was read from
    :param document: the (v2) document after upgrading
    :param version: 2 for files that declare ``schema: 2``, 1 for upgraded layerless files, 0 for files with
        ``layers`` but no ``schema``
    :param original: the document as read, before any upgrade
    :param notes: log lines produced while upgrading (legacy keys renamed)
    """

    path: Path
    document: dict[str, Any]
    version: int
    original: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The basename without ``.json`` (the *source id* of processing.md §1.3)."""
        name = self.path.name
        return name[: -len(".json")] if name.endswith(".json") else name

    @property
    def strict(self) -> bool:
        """Whether schema errors are fatal (files that declare ``schema: 2``, processing.md §2.5)."""
        return self.version == 2

    def entries(self, layer: str | None = None, name: str | None = None) -> list[LayerEntry]:
        """Layer entries in processing order, optionally restricted to one layer type and/or name.

        :param layer: keep only this layer type
        :param name: keep only the entry of this (unique) name
        """
        result: list[LayerEntry] = []
        layers = self.document.get("layers")
        if not isinstance(layers, Mapping):
            return result
        for layer_type in LAYER_TYPES:
            if layer is not None and layer_type != layer:
                continue
            seen: set[str] = set()
            listed = layers.get(layer_type)
            for index, data in enumerate(listed if isinstance(listed, list) else []):
                if not isinstance(data, Mapping):
                    continue
                entry_name = entry_name_of(data, index)
                if entry_name in seen:
                    # Names must be unique within a type to name directories (us/oh/city_of_perrysburg.json).
                    entry_name = f"{entry_name}-{index + 1}"
                seen.add(entry_name)
                if name is not None and entry_name != name:
                    continue
                result.append(LayerEntry(self, layer_type, index, entry_name, data))
        return result


def entry_name_of(data: Mapping[str, Any], index: int) -> str:
    """The name an entry is known by before de-duplication: its ``name``, ``primary`` when it has none.

    A name that does not match :data:`SAFE_NAME` never becomes a path: the entry is called ``unnamed-<n>``
    (``<n>`` its 1-based position) and validation reports the name as unsafe, which ends the entry.
    """
    raw = data.get("name")
    if raw is None or raw == "":
        return "primary"
    if isinstance(raw, str) and SAFE_NAME.fullmatch(raw):
        return raw
    return f"unnamed-{index + 1}"


def contained_path(base: str | Path, *parts: str) -> Path:
    """``base/part/…``, after checking that it resolves inside ``base``.

    Every part must be one plain path component (not empty, ``.`` or ``..``, no separator or NUL); symbolic
    links already on disk are followed when checking.

    :raises UnsafePathError: the path would lie outside ``base``
    """
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise UnsafePathError(f"Refusing the path component {part!r} below {base}")
    path = Path(base).joinpath(*parts)
    root, target = Path(base).resolve(), path.resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePathError(f"Refusing {path}: it resolves to {target}, outside {root}")
    return path


def upgrade_entry(entry: Mapping[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """Rename 2.1.8's legacy keys: ``type`` → ``protocol``, ``conform.type`` → ``conform.format`` (§2.4)."""
    result = dict(entry)
    if "protocol" not in result and "type" in result:
        result["protocol"] = result.pop("type")
        if notes is not None:
            notes.append(f"Upgraded legacy key type={result['protocol']!r} to protocol")
    conform = result.get("conform")
    if isinstance(conform, Mapping) and "format" not in conform and "type" in conform:
        conform = dict(conform)
        conform["format"] = conform.pop("type")
        result["conform"] = conform
        if notes is not None:
            notes.append(f"Upgraded legacy key conform.type={conform['format']!r} to conform.format")
    return result


def upgrade_document(original: Mapping[str, Any]) -> tuple[dict[str, Any], int, list[str]]:
    """Return the v2 form of a document, its version (2, 1 or 0) and the upgrade notes (§2.3, §2.4)."""
    notes: list[str] = []
    doc = copy.deepcopy(dict(original))
    if "schema" not in doc and "layers" not in doc:
        entry = {k: v for k, v in doc.items() if k not in _V1_TOP_LEVEL}
        entry.setdefault("name", "primary")
        doc = {"schema": 2, "coverage": doc.get("coverage"), "layers": {"addresses": [entry]}}
        version = 1
        notes.append("Upgraded a layerless (v1) source to one addresses layer named primary")
    else:
        version = 2 if doc.get("schema") == 2 else 0
    layers = doc.get("layers")
    if isinstance(layers, Mapping):
        doc["layers"] = {
            lt: [upgrade_entry(e, notes) if isinstance(e, Mapping) else e for e in entries]
            if isinstance(entries, list)
            else entries
            for lt, entries in layers.items()
        }
    return doc, version, notes


def read_source_bytes(path: str | Path) -> bytes:
    """The bytes of a source file: a regular file of at most :data:`MAX_SOURCE_BYTES`.

    The file is opened without blocking and checked with ``fstat`` before anything is read, so a FIFO or a
    device is refused instead of hanging.

    :raises SourceUnreadableError: missing, unreadable, or not a regular file
    :raises SourceFileError: larger than :data:`MAX_SOURCE_BYTES`
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise SourceUnreadableError(f"{path}: cannot read source file: not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise SourceUnreadableError(f"{path}: cannot read source file: not a regular file")
            data = fh.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise SourceUnreadableError(f"{path}: cannot read source file: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a path holding NUL
        raise SourceUnreadableError(f"{path!r}: cannot read source file: {exc}") from exc
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceFileError(
            f"{path}: larger than the limit of {MAX_SOURCE_BYTES:,} bytes for a source file"
        )
    return data


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _structure(text: str) -> str:
    """The JSON text with every string literal emptied: what is left are brackets, numbers and literals."""
    return _JSON_STRING.sub('""', text)


def nesting_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in a JSON text, counted without parsing it (no recursion)."""
    return _depth(_structure(text))


def _depth(structure: str) -> int:
    steps = map(_BRACKET_STEP.__getitem__, _NOT_BRACKET.sub("", structure))
    return max(itertools.accumulate(steps), default=0)


def parse_source_json(data: bytes, path: Path) -> Any:
    """Parse a source file's bytes within the limits of a source file.

    The nesting depth and the length of number literals are measured on the text before parsing, so nothing
    recursive ever sees a deeper document and no number longer than :data:`MAX_NUMBER_CHARS` is converted;
    ``NaN`` and ``Infinity`` are refused.

    :raises SourceFileError: not JSON, or over a limit (the message names the limit)
    """
    return _parse(data, path)[0]


def _parse(data: bytes, path: Path) -> tuple[Any, str, str]:
    """:func:`parse_source_json`, also returning the text and its :func:`_structure`."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    except (UnicodeDecodeError, LookupError) as exc:
        raise SourceFileError(f"{path}: not a JSON document: {exc}") from None
    structure = _structure(text)
    depth = _depth(structure)
    if depth > MAX_DEPTH:
        raise SourceFileError(f"{path}: nested {depth} levels deep, more than the limit of {MAX_DEPTH}")
    number = _LONG_NUMBER.search(structure)
    if number is not None:
        raise SourceFileError(
            f"{path}: not a valid source file: a number of {len(number.group()):,} characters "
            f"(the limit is {MAX_NUMBER_CHARS})"
        )
    try:
        return json.loads(text, parse_constant=_refuse_constant), text, structure
    except (ValueError, RecursionError) as exc:
        raise SourceFileError(f"{path}: not a JSON document: {exc}") from None


def check_strings(document: Any, path: Path, text: str | None = None, structure: str | None = None) -> None:
    """Every string (object keys too) within :data:`MAX_STRING_CHARS`, without NUL or lone surrogates; every
    number finite.

    :param text: the JSON text the document was parsed from: when it shows nothing suspect (no string literal
        that long, no escape or character that could be NUL or a surrogate, no exponent), the walk is skipped
    :param structure: ``text`` with its strings emptied (computed when None)
    :raises SourceFileError: naming the JSON path of the first offending string
    """
    if text is not None:
        structure = _structure(text) if structure is None else structure
        longest = max(map(len, _JSON_STRING.findall(text)), default=0)
        if (
            longest <= MAX_STRING_CHARS
            and _FORBIDDEN_CHARS.search(text) is None
            and ("\\u" not in text or _SUSPECT_ESCAPE.search(text) is None)
            and _EXPONENT.search(structure) is None
        ):
            return
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, (*parts, key), path, key=True)
                stack.append((item, (*parts, key)))
        elif isinstance(value, list):
            stack.extend((item, (*parts, index)) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, parts, path)
        elif isinstance(value, float) and not math.isfinite(value):
            raise SourceFileError(f"{path}: {_safe_path(parts)}: the number is out of range")


def _check_string(text: str, parts: tuple[str | int, ...], path: Path, *, key: bool = False) -> None:
    what = "key" if key else "string"
    if len(text) > MAX_STRING_CHARS:
        raise SourceFileError(
            f"{path}: {_safe_path(parts)}: a {what} of {len(text):,} characters, more than the limit of "
            f"{MAX_STRING_CHARS:,}"
        )
    found = _FORBIDDEN_CHARS.search(text)
    if found is not None:
        char = "NUL" if found.group() == "\x00" else f"a lone surrogate U+{ord(found.group()):04X}"
        raise SourceFileError(f"{path}: {_safe_path(parts)}: the {what} holds {char}")


def _safe_path(parts: tuple[str | int, ...]) -> str:
    """:func:`format_path` with forbidden characters escaped (a key may be what is wrong)."""
    return format_path(parts).encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def load_source(path: str | Path) -> Source:
    """Read a source file within the limits of a source file and upgrade it to the v2 layout.

    :raises SourceUnreadableError: the file is missing, unreadable, or not a regular file
    :raises SourceFileError: the file is over a limit, is not JSON, or is not a JSON object
    """
    path = Path(path)
    return parse_source(read_source_bytes(path), path)


def parse_source(data: bytes, path: str | Path) -> Source:
    """A source file's bytes, read within the limits of a source file and upgraded to the v2 layout: what
    :func:`load_source` does after reading, for bytes that never were a local file (a snapshot from GitHub).

    :param path: the file's name, in messages and as the source's name (``sources/us/wy/park.json``)
    :raises SourceFileError: over a limit, not JSON, or not a JSON object
    """
    path = Path(path)
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceFileError(
            f"{path}: larger than the limit of {MAX_SOURCE_BYTES:,} bytes for a source file"
        )
    original, text, structure = _parse(data, path)
    if not isinstance(original, dict):
        raise SourceFileError(f"{path}: a source file must hold a JSON object, not {type(original).__name__}")
    check_strings(original, path, text, structure)
    document, version, notes = upgrade_document(original)
    return Source(path=path, document=document, version=version, original=original, notes=notes)


def iter_source_files(paths: list[str] | list[Path]) -> Iterator[Path]:
    """Files named directly, and every ``*.json`` below named folders, in sorted order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.json") if p.is_file())
        else:
            yield path
