"""Fuzz cases: one hostile variant of a real corpus file or fixture, and the ``openaddr`` command run on it.

Everything here is plain, deterministic Python: given the same recipe (base file, mutation, position, size) a builder
returns the same bytes. The Hypothesis strategies of :mod:`tests.fuzz.strategies` only draw the recipes, so a failing
case prints as a short recipe and shrinks well, and big inputs (a 4,301-digit number, 20,000 levels of nesting, a
16 MiB CSV field) cost no Hypothesis data.

The bases are read from ``../shared`` (never written); a case's files are written into its own folder by the harness
(:mod:`tests.fuzz.harness`).
"""

from __future__ import annotations

import copy
import enum
import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from tests.conftest import CORPUS

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

#: Replaced by the case's input folder in every ``.json`` file when the harness writes it.
IN = "@IN@"
#: Replaced by the case folder (the watched sandbox around ``--out``) in every ``.json`` file.
CASE = "@CASE@"

#: An absolute path outside every sandbox that a hostile archive member names; the harness checks it never appears.
ESCAPE_MARKER = "/tmp/openaddr-fuzz-escape"

Path_ = tuple[Any, ...]


class Special(enum.Enum):
    """A file that is not a regular file: made by the harness instead of written."""

    FIFO = "a FIFO"
    DIR = "a directory"
    DEV_ZERO = "a symlink to /dev/zero"


@dataclass(frozen=True, repr=False)
class Case:
    """One run of the ``openaddr`` command line on hostile input.

    :param category: the kind of hostility (``strings``, ``regex``, ``archives``, ...)
    :param command: ``validate``, ``test-source``, ``conform`` or ``process-one``
    :param base: the real file it derives from (relative to ``shared/``)
    :param mutation: what was done to it, short enough to read in a failure report
    :param files: input files by name (relative to the input folder): bytes, or a :class:`Special`
    :param args: the command's arguments after its name; ``{in}`` is the input folder, ``{out}`` the ``--out`` path
    :param out_is_file: create ``--out`` as a regular file first (bad usage: exit 2 expected)
    :param must_fail: a truncated input: an exit 0 would be silent partial output (issue 10 item 3)
    :param expect_exit: the exit codes issue 10 promises for this case (empty: any of 0, 1, 2)
    :param env: extra environment variables of the command (a limit set low to test it)
    """

    category: str
    command: str
    base: str
    mutation: str
    files: Mapping[str, bytes | Special] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    out_is_file: bool = False
    must_fail: bool = False
    expect_exit: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.category}/{self.command} {self.base}: {self.mutation}>"

    @property
    def label(self) -> str:
        """``category/command``: how the figures group cases."""
        return f"{self.category}/{self.command}"


# --- JSON with verbatim parts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text put into a document verbatim: numbers and nesting ``json.dumps`` cannot or should not write."""

    text: str
    label: str

    def __repr__(self) -> str:
        return self.label


def dumps(doc: Any) -> bytes:
    """The document as JSON bytes, :class:`Raw` parts verbatim; lone surrogates come out as ``\\udXXX`` escapes."""
    raws: list[str] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, list):
            return [swap(item) for item in value]
        return value

    text = json.dumps(swap(doc), indent=1, ensure_ascii=True)
    for number, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{number}\x00"), raw, 1)
    return text.encode("ascii")


def json_paths(doc: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path to a value of the document, the root first, in document order."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from json_paths(value, (*prefix, index))


def get_path(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def set_path(doc: Any, path: Path_, value: Any) -> Any:
    """A deep copy of the document with the value at ``path`` replaced (the root when ``path`` is empty)."""
    if not path:
        return value
    doc = copy.deepcopy(doc)
    get_path(doc, path[:-1])[path[-1]] = value
    return doc


def rename_key(doc: Any, path: Path_, new: str) -> Any:
    """A deep copy of the document with the key at ``path`` renamed, its position kept."""
    doc = copy.deepcopy(doc)
    parent = get_path(doc, path[:-1])
    items = [(new if key == path[-1] else key, value) for key, value in parent.items()]
    parent.clear()
    parent.update(items)
    return doc


def show_path(path: Path_) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path) or "<root>"


# --- hostile values ------------------------------------------------------------------------------------------------

#: Strings a source may carry: bidi controls, NUL and control bytes, lone surrogates, odd Unicode, path tricks.
HOSTILE_STRINGS: tuple[str, ...] = (
    "\u202eevil\u202c",  # right-to-left override
    "\u2066a\u2069\u200f\u200e",  # isolates and marks
    "\x00",
    "a\x00b",
    "\x1b[31mred\x1b[0m\x07",  # terminal escapes
    "\r\n\u2028\u2029\x85",
    "\ud800",  # lone surrogates
    "x\udc80y",
    "\udfff\ud800",
    "\ufeff",
    "e\u0301\u0301\u0301",
    "\U0001d7d8\U0001d7d9",  # mathematical digits
    "\u0661\u0662\u0663",  # Arabic-Indic digits
    "\u00a0\u2007\u3000",  # non-breaking and ideographic spaces
    "",
    " ",
    "../../x",
    "/etc/passwd",
    "..\\..\\x",
    "%s%n%x{0}${HOME}",
    "\U0010ffff\ufffe\uffff",
    "A" * 100_000,
)

#: Numbers JSON can carry that a program may not: 4,301+ digits (Python's int limit), overflowing floats, NaN.
HOSTILE_NUMBERS: tuple[Raw, ...] = (
    Raw("1" * 4301, "a 4,301-digit integer"),
    Raw("-" + "9" * 20_000, "a 20,000-digit negative integer"),
    Raw("1e999", "1e999"),
    Raw("-1e999", "-1e999"),
    Raw("NaN", "NaN"),
    Raw("Infinity", "Infinity"),
    Raw("-0.0", "-0.0"),
    Raw("18446744073709551617", "2**64+1"),
    Raw("0." + "0" * 5000 + "1", "a 5,000-digit fraction"),
    Raw("1" * 500 + "e-500", "1...e-500"),
)

#: Values of every JSON type, for "wrong type at this level".
WRONG_TYPES: tuple[Any, ...] = (
    [],
    {},
    [[]],
    ["join"],
    "",
    "x",
    0,
    -1,
    1.5,
    True,
    False,
    None,
    {"function": "chain"},
)


def nested(depth: int, kind: str) -> Raw:
    """``depth`` levels of arrays or objects around a number."""
    if kind == "list":
        return Raw("[" * depth + "1" + "]" * depth, f"{depth} nested arrays")
    return Raw('{"a":' * depth + "1" + "}" * depth, f"{depth} nested objects")


#: Patterns that backtrack catastrophically in ``re`` (or in a DFA engine's fallback), each with an input that
#: makes it hang: (pattern, subject).
CATASTROPHIC_PATTERNS: tuple[tuple[str, str], ...] = (
    ("(a+)+$", "a" * 40 + "!"),
    ("(a|aa)+$", "a" * 60 + "!"),
    ("(a|a)*b", "a" * 40),
    ("^(\\w+\\s?)*$", "word " * 12 + "!"),
    ("(x+x+)+y", "x" * 40),
    ("(.*a){25}", "a" * 30),
    ("^(([a-z])+.)+[A-Z]([a-z])+$", "a" * 40 + "!"),
    ("(?=(a+)+$)a", "a" * 40 + "!"),
)

#: Patterns a compiler may choke on: huge repeat counts, deep groups, invalid syntax, engine-specific features.
BROKEN_PATTERNS: tuple[str, ...] = (
    "a{4294967296}",
    "a{1000000}{1000000}",
    "(" * 3000 + "a" + ")" * 3000,
    "(",
    "[",
    "(?P<x",
    "\\",
    "(?<=a+)b",
    "\\1",
    "(?(1)a|b)",
    "\\p{L}",
    "[z-a]",
    "(?i",
    "a" * 100_000,
    "(?P<n>a)(?P<n>b)",
    "\x00",
    "\ud800",
)

#: ``conform.encoding`` values and ``conform.srs`` values no reader should trust.
HOSTILE_ENCODINGS: tuple[str, ...] = (
    "rot13",
    "base64",
    "zlib",
    "hex",
    "idna",
    "punycode",
    "utf-7",
    "utf-16",
    "utf-32",
    "undefined",
    "bogus-encoding",
    "",
    "\x00",
    "UTF-8\x00latin1",
    "x" * 10_000,
)
HOSTILE_SRS: tuple[str, ...] = (
    "EPSG:" + "9" * 5000,
    "EPSG:-1",
    "EPSG:0",
    "EPSG:4326\x00",
    "EPSG:1e999",
    "+proj=longlat +ellps=xxx",
    "+init=/etc/passwd",
    "ESRI:102003",
    "IAU_2015:30100",
    "",
)


# --- the bases -----------------------------------------------------------------------------------------------------


@cache
def read_shared(relative: str) -> bytes:
    """A file below ``shared/`` (``corpus/...`` or ``fixtures/machine/...``)."""
    return (CORPUS.parent / relative).read_bytes()


@cache
def corpus_files() -> tuple[str, ...]:
    """Every source file of the corpus, relative to ``shared/``."""
    root = CORPUS / "sources"
    return tuple(f"corpus/sources/{p.relative_to(root)}" for p in sorted(root.rglob("*.json")))


@cache
def corpus_files_with_tests() -> tuple[str, ...]:
    """The corpus files whose entries carry acceptance tests (what ``test-source`` runs)."""
    return tuple(path for path in corpus_files() if b'"acceptance-tests"' in read_shared(path))


def load(relative: str) -> Any:
    return json.loads(read_shared(relative))


@dataclass(frozen=True)
class Runnable:
    """A fixture source and its local data: what ``conform`` and ``process-one`` can run without a network.

    :param name: short name in reports
    :param source: the source file, relative to ``fixtures/machine``
    :param inputs: its data files, relative to ``fixtures/machine``
    :param compression: the ``compression`` the source should say for these inputs (None: drop the key)
    """

    name: str
    source: str
    inputs: tuple[str, ...]
    compression: str | None = None

    @property
    def argument(self) -> str:
        """The input the ``conform`` command gets: the first input's file name."""
        return self.inputs[0].rsplit("/", 1)[-1]

    def document(self) -> dict[str, Any]:
        doc = load(f"fixtures/machine/{self.source}")
        doc.pop("cache", None)
        doc.pop("fingerprint", None)
        if self.compression is None:
            doc.pop("compression", None)
        else:
            doc["compression"] = self.compression
        return doc

    def input_files(self) -> dict[str, bytes]:
        return {path.rsplit("/", 1)[-1]: read_shared(f"fixtures/machine/{path}") for path in self.inputs}


def _shapefile(stem: str, folder: str = "conforms", prj: bool = True) -> tuple[str, ...]:
    suffixes = (".shp", ".dbf", ".shx", ".prj") if prj else (".shp", ".dbf", ".shx")
    return tuple(f"{folder}/{stem}{suffix}" for suffix in suffixes)


#: Sources with local data; each conforms as it is (tests/fuzz/test_harness.py::test_unmodified_base_passes).
RUNNABLES: tuple[Runnable, ...] = (
    Runnable("lake-man", "conforms/lake-man.json", _shapefile("lake-man")),
    Runnable("lake-man-utf8", "conforms/lake-man-utf8.json", _shapefile("lake-man-utf8")),
    Runnable("lake-man-split", "conforms/lake-man-split.json", _shapefile("lake-man-split")),
    Runnable("lake-man-split2", "conforms/lake-man-split2.json", ("conforms/lake-man-split2.csv",)),
    Runnable("jp-nara", "conforms/jp-nara.json", ("conforms/jp-nara.csv",)),
    Runnable("lake-man-gml", "conforms/lake-man-gml.json", ("conforms/lake-man-gml.gml",)),
    Runnable("trumbull", "sources/us/oh/trumbull.json", ("data/TRU_ADDS-excerpt.zip",), "zip"),
    Runnable("us-wy-park", "sources/us-wy-park.json", ("data/us-wy-park.zip",), "zip"),
    Runnable("iceland", "sources/iceland.json", ("data/iceland.zip",), "zip"),
    Runnable("bucks", "sources/us/pa/bucks.json", ("data/us-pa-bucks.geojson",)),
    Runnable("bucks-zip", "sources/us/pa/bucks.json", ("data/us-pa-bucks.geojson.zip",), "zip"),
)
RUNNABLE = {runnable.name: runnable for runnable in RUNNABLES}
#: The runnables whose input is a shapefile set (for the truncation cases).
SHAPEFILES = ("lake-man", "lake-man-utf8", "lake-man-split")
#: The runnables whose input is a zip (for the archive cases).
ZIPPED = ("trumbull", "us-wy-park", "iceland", "bucks-zip")


def conform_case(
    category: str,
    runnable: Runnable,
    mutation: str,
    *,
    doc: Any = None,
    source_bytes: bytes | None = None,
    files: Mapping[str, bytes | Special] | None = None,
    argument: str | None = None,
    must_fail: bool = False,
) -> Case:
    """``openaddr conform source.json INPUT --layer addresses --out OUT`` on a runnable's data."""
    inputs: dict[str, bytes | Special] = dict(runnable.input_files() if files is None else files)
    inputs["source.json"] = source_bytes if source_bytes is not None else dumps(doc or runnable.document())
    return Case(
        category,
        "conform",
        f"fixtures/machine/{runnable.source}",
        mutation,
        inputs,
        (
            "{in}/source.json",
            f"{{in}}/{argument or runnable.argument}",
            "--layer",
            "addresses",
            "--out",
            "{out}",
        ),
        must_fail=must_fail,
    )


def with_file_url(doc: Any, argument: str) -> Any:
    """The document with every entry's ``data`` pointing at ``file://<input folder>/<argument>``."""
    url = f"file://{IN}/{argument}"
    doc = copy.deepcopy(doc)
    if isinstance(doc, dict) and isinstance(doc.get("layers"), dict):
        for entries in doc["layers"].values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    entry["data"] = url
    elif isinstance(doc, dict):
        doc["data"] = url
    return doc


def v2_document(runnable: Runnable, name: Any = "primary") -> dict[str, Any]:
    """The runnable's layerless source as a schema-2 document with one addresses entry of this name."""
    doc = runnable.document()
    coverage = doc.pop("coverage", None) or {"country": "us"}
    return {"schema": 2, "coverage": coverage, "layers": {"addresses": [{"name": name, **doc}]}}


def process_one_case(
    category: str,
    runnable: Runnable,
    mutation: str,
    *,
    doc: Any = None,
    source_bytes: bytes | None = None,
    files: Mapping[str, bytes | Special] | None = None,
    argument: str | None = None,
    must_fail: bool = False,
) -> Case:
    """``openaddr process-one source.json --out OUT`` with the data behind a ``file:`` URL."""
    inputs: dict[str, bytes | Special] = dict(runnable.input_files() if files is None else files)
    if source_bytes is None:
        source_bytes = dumps(with_file_url(doc or runnable.document(), argument or runnable.argument))
    inputs["source.json"] = source_bytes
    return Case(
        category,
        "process-one",
        f"fixtures/machine/{runnable.source}",
        mutation,
        inputs,
        ("{in}/source.json", "--out", "{out}"),
        must_fail=must_fail,
    )


def source_case(category: str, command: str, base: str, mutation: str, source_bytes: bytes) -> Case:
    """``openaddr validate|test-source source.json``."""
    return Case(category, command, base, mutation, {"source.json": source_bytes}, ("{in}/source.json",))


# --- binary mutations ----------------------------------------------------------------------------------------------


def zip_bytes(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def corrupt_member(data: bytes, fraction: float) -> bytes:
    """The zip with bytes flipped inside its biggest member's compressed data (a CRC error, or a bad stream)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    header = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_len + extra_len
    spot = start + int(fraction * max(info.compress_size - 8, 1))
    spoiled = bytearray(data)
    for offset in range(spot, min(spot + 8, start + info.compress_size)):
        spoiled[offset] ^= 0x5A
    return bytes(spoiled)


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16) | 0
    return info


def dbf_header(data: bytes) -> tuple[int, int, int]:
    """(records, header length, record length) of a dBase file."""
    records, header_length, record_length = struct.unpack("<IHH", data[4:12])
    return records, header_length, record_length


def cut_dbf(data: bytes, fraction: float) -> bytes:
    """The .dbf cut inside its records so that at least the last record is lost."""
    records, header_length, record_length = dbf_header(data)
    last_full = header_length + (records - 1) * record_length
    return data[: header_length + int(fraction * (last_full - header_length))]


def cut_inside(data: bytes, fraction: float, keep: int = 0, lose: int = 8) -> bytes:
    """The data cut at ``fraction`` of the way between ``keep`` bytes and ``lose`` bytes before the end."""
    end = max(len(data) - lose, keep + 1)
    return data[: keep + int(fraction * (end - keep))]
