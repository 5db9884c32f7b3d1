"""Hypothesis strategies: one per (category, command), each drawing a recipe and building a :class:`Case`.

The draws are small (an index into the corpus, a mutation kind, a fraction, a size from a short list), so Hypothesis
shrinks a failure to a readable recipe; :mod:`tests.fuzz.cases` turns the recipe into bytes.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import struct
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from tests.fuzz.cases import (
    BROKEN_PATTERNS,
    CASE,
    CATASTROPHIC_PATTERNS,
    ESCAPE_MARKER,
    HOSTILE_ENCODINGS,
    HOSTILE_NUMBERS,
    HOSTILE_SRS,
    HOSTILE_STRINGS,
    RUNNABLE,
    RUNNABLES,
    SHAPEFILES,
    WRONG_TYPES,
    ZIPPED,
    Case,
    Runnable,
    Special,
    conform_case,
    corpus_files,
    corpus_files_with_tests,
    corrupt_member,
    cut_dbf,
    cut_inside,
    dumps,
    get_path,
    json_paths,
    load,
    nested,
    process_one_case,
    read_shared,
    rename_key,
    set_path,
    show_path,
    source_case,
    symlink_member,
    v2_document,
    with_file_url,
    zip_bytes,
    zip_members,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from hypothesis.strategies import DrawFn, SearchStrategy

#: Runnables ``process-one`` can fetch as one file (a shapefile set is several files, a cache CSV needs ESRI).
PROCESS_ONE = ("jp-nara", "lake-man-gml", "trumbull", "us-wy-park", "iceland", "bucks", "bucks-zip")

fractions = st.integers(min_value=0, max_value=1000).map(lambda n: n / 1000)


# --- documents to mutate, per command ------------------------------------------------------------------------------


def _base(draw: DrawFn, category: str, command: str) -> tuple[Any, Callable[[Any, str], Case]]:
    """A real source document for the command, and how to make the case from its mutated form."""
    if command in ("validate", "test-source"):
        pool = corpus_files() if command == "validate" else corpus_files_with_tests()
        base = draw(st.sampled_from(pool))
        return load(base), lambda doc, what: source_case(category, command, base, what, dumps(doc))
    if command == "conform":
        runnable = draw(st.sampled_from(RUNNABLES))
        return runnable.document(), lambda doc, what: conform_case(category, runnable, what, doc=doc)
    runnable = RUNNABLE[draw(st.sampled_from(PROCESS_ONE))]
    doc = with_file_url(runnable.document(), runnable.argument)
    return doc, lambda doc, what: process_one_case(category, runnable, what, source_bytes=dumps(doc))


def _entry_path(doc: Any) -> tuple[Any, ...]:
    """The path of the first layer entry (the document itself for a layerless source)."""
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if isinstance(layers, dict):
        for kind, entries in layers.items():
            if isinstance(entries, list) and entries and isinstance(entries[0], dict):
                return ("layers", kind, 0)
    return ()


def _tested_entry_path(doc: Any) -> tuple[Any, ...]:
    for kind, entries in (doc.get("layers") or {}).items():
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("test"), dict):
                return ("layers", kind, index)
    return _entry_path(doc)


def _settable(doc: Any, paths: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The paths whose parent object exists in the document."""
    result = []
    for path in paths:
        try:
            parent = get_path(doc, path[:-1])
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(parent, dict):
            result.append(path)
    return result


def _set_in_conform(doc: Any, key: str, value: Any) -> Any:
    path = _entry_path(doc)
    entry = get_path(doc, path)
    conform = dict(entry.get("conform") or {"format": "csv"}) if isinstance(entry, dict) else {}
    conform[key] = value
    return set_path(doc, (*path, "conform"), conform)


# --- source-document categories ------------------------------------------------------------------------------------


@st.composite
def strings(draw: DrawFn, command: str) -> Case:
    """A hostile string as a value, inside a value, or as a key, anywhere in a real source."""
    doc, finish = _base(draw, "strings", command)
    hostile = draw(st.sampled_from(HOSTILE_STRINGS))
    texts = [p for p in json_paths(doc) if isinstance(get_path(doc, p), str)]
    keys = [p for p in json_paths(doc) if p and isinstance(p[-1], str)]
    how = draw(st.sampled_from(["value", "inside", "key"]))
    if how == "key" and keys:
        path = draw(st.sampled_from(keys))
        return finish(rename_key(doc, path, hostile), f"key {show_path(path)} renamed {hostile[:40]!r}")
    path = draw(st.sampled_from(texts))
    if how == "inside":
        old = get_path(doc, path)
        cut = draw(st.integers(0, len(old)))
        value = old[:cut] + hostile + old[cut:]
    else:
        value = hostile
    return finish(set_path(doc, path, value), f"{show_path(path)} {how} {hostile[:40]!r}")


@st.composite
def numbers(draw: DrawFn, command: str) -> Case:
    """A number JSON allows and Python or a reader may not, at any value or at the limits a source sets."""
    doc, finish = _base(draw, "numbers", command)
    number = draw(st.sampled_from(HOSTILE_NUMBERS))
    entry = _entry_path(doc)
    targeted = [(*entry, key) for key in ("timeout", "size", "accuracy", "year", "skiplines", "headers")]
    targeted += [(*entry, "conform", key) for key in ("lat", "lon", "number", "srs", "accuracy", "headers")]
    targeted += [("schema",)]
    path = draw(st.sampled_from([p for p in json_paths(doc) if p] + _settable(doc, targeted)))
    return finish(set_path(doc, path, number), f"{show_path(path)} = {number!r}")


DEPTHS = (500, 999, 1001, 3000, 20_000, 100_000)


@st.composite
def nesting(draw: DrawFn, command: str) -> Case:
    """Deep arrays or objects at any level of a real source."""
    doc, finish = _base(draw, "nesting", command)
    deep = nested(draw(st.sampled_from(DEPTHS)), draw(st.sampled_from(["list", "dict"])))
    entry = _entry_path(doc)
    targeted = [(*entry, "conform", "street"), (*entry, "conform"), (*entry, "test"), (*entry, "name")]
    path = draw(st.sampled_from([p for p in json_paths(doc) if p] + _settable(doc, targeted)))
    return finish(set_path(doc, path, deep), f"{show_path(path)} = {deep!r}")


@st.composite
def types(draw: DrawFn, command: str) -> Case:
    """A value of the wrong type at every level: any value, or the places the issue names."""
    doc, finish = _base(draw, "types", command)
    wrong = draw(st.sampled_from(WRONG_TYPES))
    entry = _entry_path(doc)
    how = draw(st.sampled_from(["anywhere", "layers", "function", "chain", "acceptance-tests", "test-parts"]))
    if how == "layers":
        path: tuple[Any, ...] = ("layers",)
    elif how == "function":
        doc = _set_in_conform(doc, "street", {"function": ["join"], "fields": ["A", "B"], "separator": " "})
        path = (*entry, "conform", "street", "function")
    elif how == "chain":
        chain = {"function": "chain", "variable": "s", "functions": [{"function": "remove_prefix"}]}
        doc = _set_in_conform(doc, "street", chain)
        path = (*entry, "conform", "street", "functions")
    elif how in ("acceptance-tests", "test-parts"):
        test = {
            "enabled": True,
            "acceptance-tests": [{"description": "d", "inputs": {"A": "1"}, "expected": {"number": "1"}}],
        }
        doc = set_path(doc, (*entry, "test"), test)
        part = draw(st.sampled_from([(), (0,), (0, "inputs"), (0, "expected"), (0, "inputs", "A")]))
        path = (*entry, "test", "acceptance-tests", *(() if how == "acceptance-tests" else part))
    else:
        path = draw(st.sampled_from(list(json_paths(doc))))
    return finish(set_path(doc, path, wrong), f"{show_path(path)} = {wrong!r}")


#: Entry names that are paths, too long, or not names at all. Absolute ones for process-one point inside the
#: case folder (the harness watches it), never at the machine's real root.
UNSAFE_NAMES: tuple[str, ...] = (
    "../../x",
    "../../../x",
    "../../../../x",
    "../../../../../in",  # from <out>/addresses/: the input folder, with a decoy out.csv a failure would delete
    f"{CASE}/escape",
    ".",
    "..",
    "a/b",
    "a\\..\\..\\b",
    "x" * 300,
    "\x00",
    "a\x00b",
    "\ud800",
    "\u202eevil",
    "",
    " ",
    "-rf",
    "~",
)


@st.composite
def names(draw: DrawFn, command: str) -> Case:
    """An unsafe layer entry name (it names the state folder ``<out>/<layer>/<name>``)."""
    name = draw(st.sampled_from(UNSAFE_NAMES))
    if command == "validate":
        base = draw(st.sampled_from(corpus_files()))
        doc = load(base)
        path = (*_entry_path(doc), "name")
        name = name.replace(CASE, "/abs/dir")  # validate writes nothing: a real absolute path is safe here
        return source_case(
            "names", command, base, f"{show_path(path)} = {name[:40]!r}", dumps(set_path(doc, path, name))
        )
    runnable = RUNNABLE[draw(st.sampled_from(PROCESS_ONE))]
    doc = with_file_url(v2_document(runnable, name), runnable.argument)
    twice = draw(st.booleans())
    if twice:  # a second entry of the same name gets "<name>-2"
        doc["layers"]["addresses"].append(dict(doc["layers"]["addresses"][0]))
    files: dict[str, bytes | Special] = {**runnable.input_files(), "out.csv": b"decoy\n", "stats.json": b"{}"}
    what = f"name {name[:40]!r}" + (" (two entries)" if twice else "")
    return process_one_case("names", runnable, what, doc=doc, files=files)


def _rewrite_csv(data: bytes, column: str, value: str, encoding: str = "utf-8") -> bytes:
    rows = list(csv.reader(io.StringIO(data.decode(encoding))))
    where = rows[0].index(column)
    for row in rows[1:]:
        row[where] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode(encoding, "surrogatepass")


@st.composite
def regex(draw: DrawFn, command: str) -> Case:
    """A pattern that backtracks catastrophically on its subject, or that a compiler chokes on."""
    catastrophic = draw(st.booleans())
    if catastrophic:
        pattern, subject = draw(st.sampled_from(CATASTROPHIC_PATTERNS))
    else:
        pattern, subject = draw(st.sampled_from(BROKEN_PATTERNS)), "a" * 40 + "!"
    what = f"pattern {pattern[:40]!r} on {subject[:12]!r}…({len(subject)})"
    if command == "conform":
        runnable = RUNNABLE["lake-man-split2"]
        doc = runnable.document()
        doc["conform"]["number"]["pattern"] = pattern
        data = _rewrite_csv(runnable.input_files()["lake-man-split2.csv"], "MAILSTREET", subject)
        return conform_case("regex", runnable, what, doc=doc, files={"lake-man-split2.csv": data})
    pool = corpus_files() if command == "validate" else corpus_files_with_tests()
    base = draw(st.sampled_from(pool))
    doc = load(base)
    entry = _tested_entry_path(doc)
    field = "SITUS"
    tests = get_path(doc, entry).get("test")
    if isinstance(tests, dict) and tests.get("acceptance-tests"):
        field = next(iter(tests["acceptance-tests"][0]["inputs"]), field)
        for case in tests["acceptance-tests"]:
            case["inputs"][field] = subject
    conform = dict(get_path(doc, entry).get("conform") or {})
    conform["street"] = {"function": "regexp", "field": field, "pattern": pattern}
    doc = set_path(doc, (*entry, "conform"), conform)
    return source_case("regex", command, base, what, dumps(doc))


def _reencode(doc_bytes: bytes, how: str) -> bytes:
    text = doc_bytes.decode("ascii")
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "utf-32":
        return text.encode("utf-32")
    if how == "utf-8 BOM":
        return codecs.BOM_UTF8 + doc_bytes
    if how == "latin-1":
        return json.dumps(json.loads(text) | {"note": "café"}, ensure_ascii=False).encode("latin-1")
    if how == "raw surrogate":
        return json.dumps(json.loads(text) | {"note": "\ud800"}, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
    if how == "cut multibyte":
        return doc_bytes.rstrip()[:-1] + "\u00e9".encode()[:1]
    return b"\xff\xfe\x00" + doc_bytes  # "garbage prefix"


REENCODINGS = ("utf-16", "utf-32", "utf-8 BOM", "latin-1", "raw surrogate", "cut multibyte", "garbage prefix")


@st.composite
def encodings(draw: DrawFn, command: str) -> Case:
    """Odd ``conform.encoding`` and ``srs`` values, source files in odd encodings, inputs in the wrong one."""
    how = draw(st.sampled_from(["encoding", "srs", "file"] + (["input"] if command == "conform" else [])))
    if command == "conform":
        runnable = draw(st.sampled_from(RUNNABLES))
        doc: Any = runnable.document()
    else:
        base = draw(st.sampled_from(corpus_files() if command == "validate" else corpus_files_with_tests()))
        doc = load(base)
    files: dict[str, bytes | Special] | None = None
    if how in ("encoding", "srs"):
        value = draw(st.sampled_from(HOSTILE_ENCODINGS if how == "encoding" else HOSTILE_SRS))
        doc = _set_in_conform(doc, how, value)
        what, source = f"conform.{how} = {value[:40]!r}", dumps(doc)
    elif how == "file":
        recode = draw(st.sampled_from(REENCODINGS))
        what, source = f"source file in {recode}", _reencode(dumps(doc), recode)
    else:
        runnable = RUNNABLE[draw(st.sampled_from(["jp-nara", "lake-man-split2", "bucks"]))]
        doc = runnable.document()
        data = runnable.input_files()[runnable.argument]
        recode = draw(st.sampled_from(["utf-16", "utf-32", "invalid bytes", "NUL bytes"]))
        text = data.decode(doc.get("conform", {}).get("encoding") or "utf-8", "replace")
        if recode in ("utf-16", "utf-32"):
            data = text.encode(recode)
        elif recode == "invalid bytes":
            spot = draw(fractions)
            cut = int(spot * len(data))
            data = data[:cut] + b"\xff\xfe\xc0\x80\xed\xa0\x80" + data[cut:]
        else:
            data = data.replace(b",", b",\x00", 5)
        files = {runnable.argument: data}
        what, source = f"input in {recode}", dumps(doc)
    if command == "conform":
        return conform_case("encodings", runnable, what, source_bytes=source, files=files)
    return source_case("encodings", command, base, what, source)


# --- input-file categories -----------------------------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


ARCHIVE_KINDS = (
    "bad member",
    "truncated",
    "zero bytes",
    "nested zip",
    "nested three deep",
    "zip-slip member",
    "absolute member",
    "symlink member",
    "directories only",
    "duplicate members",
    "not a zip",
    "small bomb",
    "gzip truncated",
    "gzip of garbage",
)


@st.composite
def archives(draw: DrawFn, command: str) -> Case:
    """Odd archives in place of a zipped download: corrupt, truncated, empty, nested, hostile members, bombs."""
    runnable = RUNNABLE[draw(st.sampled_from(ZIPPED))]
    name = runnable.argument
    data = runnable.input_files()[name]
    kind = draw(st.sampled_from(ARCHIVE_KINDS))
    spot = draw(fractions)
    doc = runnable.document()
    must_fail = False
    if kind == "bad member":
        data = corrupt_member(data, spot)
    elif kind == "truncated":
        data, must_fail = cut_inside(data, spot, keep=4, lose=1), True
    elif kind == "zero bytes":
        data = b""
    elif kind == "nested zip":
        data = zip_bytes([("inner.zip", data)])
    elif kind == "nested three deep":
        data = zip_bytes([("c.zip", zip_bytes([("b.zip", zip_bytes([("a.zip", data)]))]))])
    elif kind == "zip-slip member":
        data = zip_bytes([*zip_members(data), ("../../../evil.csv", b"x,y\n1,2\n")])
    elif kind == "absolute member":
        data = zip_bytes([*zip_members(data), (f"{ESCAPE_MARKER}/evil.csv", b"a\n")])
    elif kind == "symlink member":
        members = zip_members(data)
        first = members[0][0]
        data = zip_bytes([(symlink_member(first, "/etc/passwd"), b"/etc/passwd"), *members[1:]])
    elif kind == "directories only":
        data = zip_bytes([("a/", b""), ("a/b/", b"")])
    elif kind == "duplicate members":
        members = zip_members(data)
        data = zip_bytes([*members, (members[0][0], b"garbage" * 100)])
    elif kind == "not a zip":
        data = read_shared("fixtures/machine/data/us-pa-bucks.geojson")
    elif kind == "small bomb":
        megabytes = draw(st.sampled_from([8, 32]))
        data = zip_bytes([*zip_members(data), ("big.csv", b"1,2,3\n" * ((megabytes << 20) // 6))])
    elif kind == "gzip truncated":
        doc["compression"] = "gzip"
        data, must_fail = cut_inside(_gzip(data), spot, keep=10, lose=1), True
    else:
        doc["compression"] = "gzip"
        data = _gzip(bytes(range(256)) * 64)
    what = f"{kind} at {spot}" if kind in ("bad member", "truncated", "gzip truncated") else kind
    make = conform_case if command == "conform" else process_one_case
    return make("archives", runnable, what, doc=doc, files={name: data}, must_fail=must_fail)


SHAPEFILE_KINDS = (
    "cut .dbf",
    "cut .shp",
    "cut .shx",
    "dbf record count",
    "dbf header length",
    "dbf record length",
    "dbf field descriptors",
    "shp file length",
    "shp shape type",
    "no .shx",
    "no .dbf",
    "garbage .prj",
    "odd .cpg",
)


def _trumbull_shapefile() -> tuple[Runnable, dict[str, bytes]]:
    members = zip_members(read_shared("fixtures/machine/data/TRU_ADDS-excerpt.zip"))
    files = {name: data for name, data in members if name.rsplit(".", 1)[-1] in ("shp", "shx", "dbf", "prj")}
    runnable = Runnable("trumbull-shp", "sources/us/oh/trumbull.json", ("data/TRU_ADDS.shp",))
    return runnable, files


@st.composite
def shapefiles(draw: DrawFn, command: str) -> Case:
    """Truncated or inconsistent shapefile sets (the Trumbull excerpt and the Lake Man fixtures)."""
    which = draw(st.sampled_from([*SHAPEFILES, "trumbull-shp"]))
    if which == "trumbull-shp":
        runnable, files = _trumbull_shapefile()
    else:
        runnable = RUNNABLE[which]
        files = runnable.input_files()
    stem = runnable.argument[: -len(".shp")]
    kind = draw(st.sampled_from(SHAPEFILE_KINDS))
    spot = draw(fractions)
    dbf, shp, shx = f"{stem}.dbf", f"{stem}.shp", f"{stem}.shx"
    must_fail = kind.startswith("cut")
    number = draw(st.sampled_from([0, 1, 7, 1000, 0xFFFFFFFF]))
    if kind == "cut .dbf":
        files[dbf] = cut_dbf(files[dbf], spot)
    elif kind == "cut .shp":
        files[shp] = cut_inside(files[shp], spot, keep=100, lose=9)
    elif kind == "cut .shx":
        files[shx] = cut_inside(files[shx], spot, keep=100, lose=9)
    elif kind == "dbf record count":
        files[dbf] = files[dbf][:4] + struct.pack("<I", number) + files[dbf][8:]
    elif kind == "dbf header length":
        files[dbf] = files[dbf][:8] + struct.pack("<H", number & 0xFFFF) + files[dbf][10:]
    elif kind == "dbf record length":
        files[dbf] = files[dbf][:10] + struct.pack("<H", number & 0xFFFF) + files[dbf][12:]
    elif kind == "dbf field descriptors":
        spoiled = bytearray(files[dbf])
        for offset in range(32 + int(spot * 200), 32 + int(spot * 200) + 6):
            spoiled[offset] ^= 0xA5
        files[dbf] = bytes(spoiled)
    elif kind == "shp file length":
        files[shp] = files[shp][:24] + struct.pack(">I", number) + files[shp][28:]
    elif kind == "shp shape type":
        files[shp] = files[shp][:32] + struct.pack("<I", number) + files[shp][36:]
    elif kind == "no .shx":
        del files[shx]
    elif kind == "no .dbf":
        del files[dbf]
    elif kind == "garbage .prj":
        files[f"{stem}.prj"] = draw(st.sampled_from(HOSTILE_STRINGS[:14] + HOSTILE_SRS)).encode(
            "utf-8", "surrogatepass"
        )
    else:
        files[f"{stem}.cpg"] = draw(st.sampled_from(HOSTILE_ENCODINGS)).encode("utf-8", "surrogatepass")
    what = f"{kind} at {spot}" if kind.startswith(("cut", "dbf field")) else f"{kind} ({number})"
    if kind in ("no .shx", "no .dbf", "garbage .prj", "odd .cpg"):
        what = kind
    return conform_case(
        "shapefiles",
        runnable,
        what,
        doc=runnable.document(),
        files=files,
        argument=f"{stem}.shp",
        must_fail=must_fail,
    )


GEOJSON_KINDS = (
    "ends early",
    "nested properties",
    "nested coordinates",
    "features not a list",
    "properties a list",
    "huge property",
    "many properties",
    "hostile numbers",
    "hostile strings",
    "trailing garbage",
    "empty",
    "null",
    "top-level array",
    "utf-16",
)


@st.composite
def geojson(draw: DrawFn, command: str) -> Case:
    """GeoJSON that ends early, nests deeply, has wrong types or huge values (the Bucks County excerpt)."""
    runnable = RUNNABLE["bucks"]
    name = runnable.argument
    data = runnable.input_files()[name]
    collection = json.loads(data)
    features = collection["features"]
    kind = draw(st.sampled_from(GEOJSON_KINDS))
    spot = draw(fractions)
    depth = draw(st.sampled_from(DEPTHS))
    size = draw(st.sampled_from([1, 4, 16]))
    what = kind
    must_fail = False
    if kind == "ends early":
        data, must_fail, what = cut_inside(data, spot, keep=40, lose=3), True, f"{kind} at {spot}"
    elif kind in ("nested properties", "nested coordinates"):
        index = int(spot * (len(features) - 1))
        if kind == "nested properties":
            path: tuple[Any, ...] = ("features", index, "properties", "SITUS_FNAME")
        else:
            path = (
                ("features", index, "geometry")
                if features[index].get("geometry") is None
                else ("features", index, "geometry", "coordinates")
            )
        data, what = (
            dumps(set_path(collection, path, nested(depth, draw(st.sampled_from(["list", "dict"]))))),
            f"{kind}: {depth}",
        )
    elif kind == "features not a list":
        data = dumps(collection | {"features": draw(st.sampled_from(WRONG_TYPES[4:]))})
    elif kind == "properties a list":
        data = dumps(set_path(collection, ("features", 0, "properties"), ["a", 1]))
    elif kind == "huge property":
        value = "9" * (size << 20)
        data, what = (
            dumps(set_path(collection, ("features", 0, "properties", "SITUS_FNAME"), value)),
            f"{kind}: {size} MiB",
        )
    elif kind == "many properties":
        data = dumps(set_path(collection, ("features", 0, "properties"), {f"k{n}": n for n in range(50_000)}))
    elif kind == "hostile numbers":
        number = draw(st.sampled_from(HOSTILE_NUMBERS))
        data, what = (
            dumps(set_path(collection, ("features", 0, "geometry", "coordinates", 0, 0), [number, number])),
            f"{kind}: {number!r}",
        )
    elif kind == "hostile strings":
        text = draw(st.sampled_from(HOSTILE_STRINGS))
        data, what = (
            dumps(set_path(collection, ("features", 0, "properties", "SITUS_FNAME"), text)),
            f"{kind}: {text[:30]!r}",
        )
    elif kind == "trailing garbage":
        data = data + b"\n}{]garbage\x00"
    elif kind == "empty":
        data = b""
    elif kind == "null":
        data = b"null"
    elif kind == "top-level array":
        data = dumps(features)
    else:
        data = data.decode().encode("utf-16")
    return conform_case("geojson", runnable, what, files={name: data}, must_fail=must_fail)


CSV_KINDS = (
    "huge field",
    "unterminated quote",
    "NUL in a cell",
    "many columns",
    "ragged rows",
    "bare CR",
    "duplicate header",
    "header only",
    "empty",
    "BOM",
    "one long line",
)


@st.composite
def csvs(draw: DrawFn, command: str) -> Case:
    """CSV with a huge field, an unterminated quote, NULs, ragged rows, odd line ends (real CSV fixtures)."""
    runnable = RUNNABLE[draw(st.sampled_from(["jp-nara", "lake-man-split2"]))]
    name = runnable.argument
    data = runnable.input_files()[name]
    lines = data.splitlines(keepends=True)
    kind = draw(st.sampled_from(CSV_KINDS))
    size = draw(st.sampled_from([1, 4, 16]))
    row = 1 + draw(st.integers(0, len(lines) - 2))
    what = f"{kind} in row {row}"
    if kind == "huge field":
        lines[row] = b'"' + b"7" * (size << 20) + b'",' + lines[row]
        lines[0] = b"HUGE," + lines[0]
        what = f"{kind}: {size} MiB in row {row}"
    elif kind == "unterminated quote":
        lines[row] = b'"' + lines[row]
    elif kind == "NUL in a cell":
        lines[row] = lines[row].replace(b",", b",\x00\x00", 3)
    elif kind == "many columns":
        lines[row] = lines[row].rstrip(b"\r\n") + b"," * 100_000 + b"\n"
    elif kind == "ragged rows":
        lines[row] = b"1\n"
    elif kind == "bare CR":
        lines = [line.replace(b"\r\n", b"\r").replace(b"\n", b"\r") for line in lines]
    elif kind == "duplicate header":
        lines[0] = lines[0].rstrip(b"\r\n") + b"," + lines[0]
    elif kind == "header only":
        lines = lines[:1]
    elif kind == "empty":
        lines = []
    elif kind == "BOM":
        lines[0] = codecs.BOM_UTF8 + codecs.BOM_UTF8 + lines[0]
    else:
        lines = [line.rstrip(b"\r\n") + b"," for line in lines] * 2000
    if kind in ("empty", "bare CR", "one long line", "header only", "BOM"):
        what = kind
    return conform_case("csv", runnable, what, files={name: b"".join(lines)})


@st.composite
def usage(draw: DrawFn, command: str) -> Case:
    """Special files and bad usage: a FIFO, a directory or /dev/zero for a file, a missing file, --out a file."""
    runnable = RUNNABLE[draw(st.sampled_from(["jp-nara", "bucks"]))]
    source = dumps(with_file_url(runnable.document(), runnable.argument))
    kinds = [
        "FIFO source",
        "directory source",
        "/dev/zero source",
        "missing source",
        "empty source",
        "array source",
    ]
    if command == "conform":
        kinds += ["FIFO input", "directory input", "/dev/zero input", "missing input"]
    if command in ("conform", "process-one"):
        kinds += ["--out a file"]
    if command == "process-one":
        kinds += ["FIFO data", "/dev/zero data", "missing data"]
    kind = draw(st.sampled_from(kinds))
    files: dict[str, bytes | Special] = {**runnable.input_files(), "source.json": source}
    special = {"FIFO": Special.FIFO, "directory": Special.DIR, "/dev/zero": Special.DEV_ZERO}
    first, what = kind.split(" ", 1)
    target = "source.json" if what == "source" else runnable.argument
    if first in special:
        files[target] = special[first]
    elif first == "missing":
        del files[target]
    elif first in ("empty", "array"):
        files[target] = b"" if first == "empty" else b"[1, 2]"
    args: tuple[str, ...] = ("{in}/source.json",)
    if command == "conform":
        args += (f"{{in}}/{runnable.argument}", "--layer", "addresses", "--out", "{out}")
    elif command == "process-one":
        args += ("--out", "{out}")
    base = f"fixtures/machine/{runnable.source}"
    return Case("usage", command, base, kind, files, args, out_is_file=kind == "--out a file")


SOURCE_COMMANDS = ("validate", "test-source", "conform", "process-one")

#: (category, command) → strategy of cases; the test module parametrises over it.
STRATEGIES: dict[tuple[str, str], Callable[[str], SearchStrategy[Case]]] = {
    **{("strings", c): strings for c in SOURCE_COMMANDS},
    **{("numbers", c): numbers for c in SOURCE_COMMANDS},
    **{("nesting", c): nesting for c in SOURCE_COMMANDS},
    **{("types", c): types for c in SOURCE_COMMANDS},
    ("names", "validate"): names,
    ("names", "process-one"): names,
    **{("regex", c): regex for c in ("validate", "test-source", "conform")},
    **{("encodings", c): encodings for c in ("validate", "test-source", "conform")},
    **{("archives", c): archives for c in ("conform", "process-one")},
    ("shapefiles", "conform"): shapefiles,
    ("geojson", "conform"): geojson,
    ("csv", "conform"): csvs,
    **{("usage", c): usage for c in SOURCE_COMMANDS},
}
