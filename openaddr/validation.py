"""Validate source files against the vendored v2 schema, plus the checks a schema cannot do (processing.md §2.5).

The schema lives in ``openaddr/schema/`` (a copy of ``corpus/schema/``): JSON Schema draft-07, root
``source_schema_v2.json``, ``$ref`` values relative to the referring file. Every schema file is registered in a
:class:`referencing.Registry` under its ``file:`` URI, and ``util/geojson.json`` also under its declared ``$id``;
the registry has no retriever, so nothing is ever fetched from the network. ``format`` keywords (``email``,
``uri``) are annotations only: no format checker is attached.

Two modes (processing.md §2.5):

* **strict** for files that declare ``schema: 2`` — any error makes the source invalid (``invalid_source``);
* **advisory** for upgraded v1 files and files without ``schema`` — the caller logs the errors as WARNINGs and
  goes on. Old files legitimately carry ``cache``, ``fingerprint``, ``version`` and ``processed`` in their entry
  (§2.4, §3.5), so those keys are not reported in advisory mode.

Speed: the validator is built once per process. Whole-file ``$ref`` values are inlined when it is built (the
registry resolves them), and ``oneOf`` skips branches that cannot match the instance — a branch of the wrong JSON
type, or a function object whose ``function`` differs from the branch's ``const`` — which makes validating all 2,833
corpus files take about a second instead of six. Validity is unchanged; error messages get better, because only the
branch an author meant is explained.

Besides the schema, :func:`conform_errors` checks what only Python can: every ``regexp`` pattern compiles with
:mod:`re`, every function name is known (processing.md §7.2, §7.5), ``encoding`` names a text codec and ``srs`` an
EPSG code. :func:`safety_errors` reports what no later step may see whatever the mode (``Unsafe``): an entry name
that is no safe folder name, ``layers`` of the wrong type, too many entries. The limits on size, depth, numbers and
strings are enforced earlier, when :func:`openaddr.sources.load_source` reads the file.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urldefrag, urljoin

from jsonschema import Draft7Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from openaddr.conform import FUNCTIONS as CONFORM_FUNCTIONS
from openaddr.errors import SourceFileError, SourceUnreadableError
from openaddr.patterns import compile_pattern
from openaddr.sources import (
    LAYER_TYPES,
    MAX_ENTRIES,
    SAFE_NAME,
    SAFE_NAME_TEXT,
    format_path,
    iter_source_files,
    load_source,
    parse_source_json,
    read_source_bytes,
)

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from openaddr.sources import Source

log = logging.getLogger(__name__)

#: The vendored schema folder and its root file.
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
ROOT_SCHEMA = SCHEMA_DIR / "source_schema_v2.json"

#: Every conform function this system knows (processing.md §7.5, §7.6, §14).
FUNCTIONS = CONFORM_FUNCTIONS

#: Entry keys old files legitimately carry although v2 forbids them (processing.md §2.4, §3.5).
LEGACY_ENTRY_KEYS = ("cache", "fingerprint", "version", "processed")

#: How many errors of one file ``openaddr validate`` prints.
MAX_ERRORS_SHOWN = 5

_MAX_MESSAGE = 240

#: What a ``conform.srs`` string must look like (PROJ codes have at most 6 digits today).
SRS_PATTERN = re.compile(r"EPSG:[0-9]{1,9}")


@dataclass(frozen=True)
class SchemaIssue:
    """One problem found in a source document.

    :param path: dotted JSON path inside the (upgraded) document, e.g. ``layers.addresses[0].conform.number``;
        ``(root)`` for the document itself
    :param message: what is wrong, in one line
    :param kind: ``Schema`` for JSON Schema errors, ``Conform`` for the checks the schema cannot do, ``Unsafe``
        for what no later step may see (an entry name that is no safe folder name, too many entries): fatal in
        every mode
    :param parts: the path as keys and indices
    """

    path: str
    message: str
    kind: str = "Schema"
    parts: tuple[str | int, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.message}"


# -- building the validator ------------------------------------------------------------------------------------


def build_registry(schema_dir: Path = SCHEMA_DIR) -> Registry[Any]:
    """Register every ``*.json`` below ``schema_dir`` under its ``file:`` URI (and a declared ``$id``).

    ``util/geojson.json`` declares ``$id: "geojson"``: it is registered under that bare id and under the id
    resolved against its file URI, so both its own ``#/definitions/…`` references and references from
    ``util/coverage.json`` resolve.
    """
    resources: list[tuple[str, Resource[Any]]] = []
    for path in sorted(schema_dir.rglob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        uri = path.as_uri()
        resources.append((uri, resource))
        declared = contents.get("$id") if isinstance(contents, dict) else None
        if isinstance(declared, str) and declared:
            resources.append((declared, resource))
            resources.append((urldefrag(urljoin(uri, declared)).url, resource))
    return Registry().with_resources(resources).crawl()


#: Draft-07 keywords whose value is a schema or a list of schemas, and those whose value maps names to schemas.
_SUBSCHEMA_KEYWORDS = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
    }
    | {"allOf", "anyOf", "oneOf"}
)
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "definitions", "dependencies"})


def _inline(schema: Any, base_uri: str, registry: Registry[Any], stack: tuple[str, ...] = ()) -> Any:
    """Replace every whole-file ``$ref`` by the (inlined) file; make fragment ``$ref`` values absolute.

    Draft-07 ignores the siblings of ``$ref``, so they are dropped with it.

    :param stack: the files being inlined, to leave a (never seen) cycle as a ``$ref``
    """
    if isinstance(schema, list):
        return [_inline(item, base_uri, registry, stack) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = urljoin(base_uri, ref)
        url, fragment = urldefrag(target)
        if fragment or url in stack:
            return {"$ref": target}  # resolved through the registry while validating
        resolved = registry.resolver(base_uri=base_uri).lookup(ref)
        return _inline(resolved.contents, url, registry, (*stack, url))
    declared = schema.get("$id")
    if isinstance(declared, str):
        base_uri = urljoin(base_uri, declared)
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_KEYWORDS:
            value = _inline(value, base_uri, registry, stack)
        elif key in _SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            value = {name: _inline(sub, base_uri, registry, stack) for name, sub in value.items()}
        result[key] = value
    return result


@dataclass(frozen=True)
class _Signature:
    """What a subschema can accept at most: JSON types (None: any) and, for objects, function names (None: any)."""

    types: frozenset[str] | None
    functions: frozenset[str] | None

    def excludes(self, instance: Any) -> bool:
        """True when the instance certainly fails this subschema."""
        kinds = _json_types(instance)
        if kinds is None:
            return False
        if self.types is not None and not self.types & kinds:
            return True
        if "object" in kinds and self.functions is not None:
            name = instance.get("function")
            return not isinstance(name, str) or name not in self.functions
        return False


_BOOLEAN = frozenset({"boolean"})
_NULL = frozenset({"null"})
_INTEGER = frozenset({"integer", "number"})
_NUMBER = frozenset({"number"})
_STRING = frozenset({"string"})
_OBJECT = frozenset({"object"})
_ARRAY = frozenset({"array"})


def _json_types(instance: Any) -> frozenset[str] | None:
    """The draft-07 types an instance satisfies (None for a Python value JSON cannot hold)."""
    if isinstance(instance, str):
        return _STRING
    if isinstance(instance, Mapping):
        return _OBJECT
    if isinstance(instance, list):
        return _ARRAY
    if isinstance(instance, bool):
        return _BOOLEAN
    if instance is None:
        return _NULL
    if isinstance(instance, int):
        return _INTEGER
    if isinstance(instance, float):
        return _INTEGER if instance.is_integer() else _NUMBER
    return None


def _union(signatures: Sequence[_Signature]) -> _Signature:
    """What a ``oneOf``/``anyOf`` of branches with these signatures can accept at most."""
    types: frozenset[str] | None = None
    if all(s.types is not None for s in signatures):
        types = frozenset().union(*(s.types for s in signatures if s.types is not None))
    takes_objects = [s for s in signatures if s.types is None or "object" in s.types]
    functions: frozenset[str] | None = None
    if all(s.functions is not None for s in takes_objects):
        functions = frozenset().union(*(s.functions for s in takes_objects if s.functions is not None))
    return _Signature(types, functions)


def _signature(schema: Any, cache: dict[int, _Signature]) -> _Signature:
    """The signature of a subschema of the (cached, never freed) bundled schema, computed once per object."""
    known = cache.get(id(schema))
    if known is not None:
        return known
    result = _Signature(None, None)
    if isinstance(schema, dict) and "$ref" not in schema:
        branches = schema.get("oneOf", schema.get("anyOf"))
        union = _union([_signature(b, cache) for b in branches]) if isinstance(branches, list) else None
        declared = schema.get("type")
        types: frozenset[str] | None = union.types if union is not None else None
        if isinstance(declared, str):
            types = frozenset({declared})
        elif isinstance(declared, list):
            types = frozenset(declared)
        if types is not None and "number" in types:
            types |= {"integer"}
        functions: frozenset[str] | None = None
        if types is None or "object" in types:
            function = (schema.get("properties") or {}).get("function")
            if "function" in (schema.get("required") or ()) and isinstance(function, dict):
                value = function.get("const")
                functions = frozenset({value}) if isinstance(value, str) else None
            elif union is not None:
                functions = union.functions
        result = _Signature(types, functions)
    cache[id(schema)] = result
    return result


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_repr(instance: Any) -> str:
    return _shorten(repr(instance), 80)


def _no_branch_message(instance: Any, union: _Signature) -> str:
    """Explain why an instance matches no branch of a ``oneOf`` (every branch was excluded)."""
    takes_objects = union.types is None or "object" in union.types
    if isinstance(instance, Mapping) and takes_objects:
        allowed = ", ".join(sorted(union.functions or ()))
        if "function" not in instance:
            return f"a function object needs a 'function' key (one of: {allowed})"
        name = instance["function"]
        if not isinstance(name, str):
            return f"the function name {_short_repr(name)} is not a string"
        if name not in FUNCTIONS:
            return f"unknown function {name!r}"
        return f"function {name!r} is not allowed here (allowed: {allowed})"
    types = sorted(union.types or ())
    expected = " or ".join(repr(t) for t in types) if len(types) < 3 else ", ".join(map(repr, types))
    return f"{_short_repr(instance)} is not of type {expected}"


def _make_one_of(cache: dict[int, _Signature]) -> Any:
    """A ``oneOf`` keyword that skips the branches that certainly fail (same validity as draft-07's)."""

    # ``validator`` is Any: ``descend()``, which the keyword needs, is not part of the Validator protocol.
    def one_of(validator: Any, one_of: list[Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
        signatures = [_signature(branch, cache) for branch in one_of]
        candidates = [
            (i, b)
            for i, (b, s) in enumerate(zip(one_of, signatures, strict=True))
            if not s.excludes(instance)
        ]
        if not candidates:
            yield ValidationError(_no_branch_message(instance, _union(signatures)))
            return
        remaining = iter(candidates)
        errors: list[ValidationError] = []
        for index, branch in remaining:
            found = list(validator.descend(instance, branch, schema_path=index))
            if not found:
                break
            errors.extend(found)
        else:
            yield ValidationError(
                f"{_short_repr(instance)} is not valid under any of the given schemas", context=errors
            )
            return
        if any(validator.evolve(schema=branch).is_valid(instance) for _, branch in remaining):
            yield ValidationError(
                f"{_short_repr(instance)} is valid under more than one of the given schemas"
            )

    return one_of


@functools.cache
def _validator() -> Validator:
    """The draft-07 validator of the root schema, built once per process."""
    registry = build_registry()
    root_uri = ROOT_SCHEMA.as_uri()
    schema = _inline(registry.contents(root_uri), root_uri, registry, (root_uri,))
    cache: dict[int, _Signature] = {}
    cls = validators.extend(Draft7Validator, {"oneOf": _make_one_of(cache)})
    validator: Validator = cls(schema, registry=registry)
    log.debug("Built the source schema validator from %s", ROOT_SCHEMA)
    return validator


# -- checking documents ----------------------------------------------------------------------------------------


def _without_legacy_keys(document: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of the document whose entries lack :data:`LEGACY_ENTRY_KEYS` (advisory mode)."""
    result = dict(document)
    layers = result.get("layers")
    if isinstance(layers, Mapping):
        result["layers"] = {
            layer: [
                {k: v for k, v in entry.items() if k not in LEGACY_ENTRY_KEYS}
                if isinstance(entry, Mapping)
                else entry
                for entry in entries
            ]
            if isinstance(entries, list)
            else entries
            for layer, entries in layers.items()
        }
    return result


def schema_errors(document: Mapping[str, Any], *, advisory: bool = False) -> list[SchemaIssue]:
    """Validate a (v2) document against the schema.

    For ``oneOf`` failures the most specific error is reported (via :func:`jsonschema.exceptions.best_match`),
    with the JSON path of that error.

    :param document: the upgraded document (``Source.document``)
    :param advisory: tolerate the legacy entry keys of old files (:data:`LEGACY_ENTRY_KEYS`)
    :return: the problems, in schema order; empty when the document is valid
    """
    if advisory:
        document = _without_legacy_keys(document)
    issues: list[SchemaIssue] = []
    for error in _validator().iter_errors(document):
        for leaf in _specific_errors(error):
            parts = tuple(leaf.absolute_path)
            issues.append(SchemaIssue(format_path(parts), _shorten(leaf.message), "Schema", parts))
    return issues


def _specific_errors(error: ValidationError) -> list[ValidationError]:
    """The most specific errors behind a ``oneOf``/``anyOf`` error instead of a wall of alternatives.

    When every alternative error comes from one branch (the usual case: the others were skipped as impossible),
    all of that branch's errors are reported; otherwise :func:`best_match` picks one.
    """
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return [error]
    if len({e.relative_schema_path[0] for e in error.context}) == 1:
        return [leaf for e in error.context for leaf in _specific_errors(e)]
    best = best_match([error])
    return [error] if best is None or best is error else _specific_errors(best)


def _check_value(value: Any, parts: tuple[str | int, ...], issues: list[SchemaIssue]) -> None:
    """Check one conform value (field name, list merge or function object) and everything nested in it."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, (*parts, index), issues)
        return
    if not isinstance(value, Mapping) or "function" not in value:
        return
    name = value["function"]
    if not isinstance(name, str):
        issues.append(
            SchemaIssue(
                format_path(parts), f"function name {_short_repr(name)} is not a string", "Conform", parts
            )
        )
        return
    if name not in FUNCTIONS:
        # The same text as the conform failure of processing.md §7.2.
        issues.append(SchemaIssue(format_path(parts), f"Unknown conform function `{name}`", "Conform", parts))
        return
    if name == "regexp":
        pattern = value.get("pattern")
        if isinstance(pattern, str):
            try:
                compile_pattern(pattern)
            except (re.error, OverflowError, RecursionError, ValueError) as exc:
                where = (*parts, "pattern")
                issues.append(
                    SchemaIssue(
                        format_path(where),
                        f"invalid regular expression {_short_repr(pattern)}: {_shorten(str(exc), 120)}",
                        "Conform",
                        where,
                    )
                )
    elif name == "chain":
        steps = value.get("functions")
        if isinstance(steps, list):
            for index, step in enumerate(steps):
                _check_value(step, (*parts, "functions", index), issues)


def conform_errors(document: Mapping[str, Any]) -> list[SchemaIssue]:
    """The checks the schema cannot do, on every conform of every layer entry.

    Every ``regexp`` pattern — in an attribute, a list, a chain step, ``lon``/``lat`` — must compile with Python's
    :mod:`re` (processing.md §7.5), and every function name must be one of :data:`FUNCTIONS`.

    :param document: the upgraded document (``Source.document``)
    :return: problems with kind ``Conform``
    """
    issues: list[SchemaIssue] = []
    layers = document.get("layers")
    if not isinstance(layers, Mapping):
        return issues
    for layer, entries in layers.items():
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            conform = entry.get("conform") if isinstance(entry, Mapping) else None
            if not isinstance(conform, Mapping):
                continue
            for key, value in conform.items():
                _check_value(value, ("layers", layer, index, "conform", key), issues)
            _check_reader_options(conform, ("layers", layer, index, "conform"), issues)
    return issues


def _check_reader_options(
    conform: Mapping[str, Any], parts: tuple[str | int, ...], issues: list[SchemaIssue]
) -> None:
    """``encoding`` must name a text codec and ``srs`` an EPSG code a reader can parse."""
    encoding = conform.get("encoding")
    if isinstance(encoding, str):
        where = (*parts, "encoding")
        try:
            known = codecs.lookup(encoding.strip())._is_text_encoding
        except LookupError:
            known = False
        if not known:
            issues.append(
                SchemaIssue(
                    format_path(where), f"{_short_repr(encoding)} is not a text encoding", "Conform", where
                )
            )
    srs = conform.get("srs")
    if isinstance(srs, str) and not SRS_PATTERN.fullmatch(srs.strip()):
        where = (*parts, "srs")
        issues.append(
            SchemaIssue(
                format_path(where),
                f"{_short_repr(srs)} does not match ^{SRS_PATTERN.pattern}$",
                "Conform",
                where,
            )
        )


def safety_errors(document: Mapping[str, Any]) -> list[SchemaIssue]:
    """What no later step may see, whatever the mode: fatal for every source file (issue 10).

    * ``layers`` must be an object of known layer types, each a list of at most :data:`MAX_ENTRIES` entries;
    * every entry's ``name`` (when it has one) must match :data:`SAFE_NAME`: it becomes a folder name.

    The limits on size, depth, numbers and strings are checked when the file is read
    (:func:`openaddr.sources.load_source`).
    """
    issues: list[SchemaIssue] = []
    layers = document.get("layers")
    if not isinstance(layers, Mapping):
        where: tuple[str | int, ...] = ("layers",)
        issues.append(
            SchemaIssue(
                "layers", f"must be an object of layer types, not {_json_type_name(layers)}", "Unsafe", where
            )
        )
        return issues
    for layer, entries in layers.items():
        if layer not in LAYER_TYPES:
            continue  # the schema reports it; no entry of it is ever processed
        if not isinstance(entries, list):
            where = ("layers", layer)
            issues.append(
                SchemaIssue(
                    format_path(where), f"must be a list, not {_json_type_name(entries)}", "Unsafe", where
                )
            )
            continue
        if len(entries) > MAX_ENTRIES:
            where = ("layers", layer)
            issues.append(
                SchemaIssue(
                    format_path(where),
                    f"{len(entries)} entries, more than the limit of {MAX_ENTRIES}",
                    "Unsafe",
                    where,
                )
            )
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or entry.get("name") in (None, ""):
                continue
            name = entry["name"]
            if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
                where = ("layers", layer, index, "name")
                issues.append(
                    SchemaIssue(
                        format_path(where),
                        f"{_short_repr(name)} is not a safe name: it must match {SAFE_NAME_TEXT}",
                        "Unsafe",
                        where,
                    )
                )
    return issues


def _json_type_name(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a string" if isinstance(value, str) else "a number"


def source_issues(source: Source) -> list[SchemaIssue]:
    """Schema errors (strict or advisory, by ``source.strict``) and conform checks of a loaded source.

    A conform problem at a path the schema already reported (an unknown function) is not repeated.
    """
    issues = safety_errors(source.document)
    reported = {issue.parts for issue in issues}
    issues.extend(
        issue
        for issue in schema_errors(source.document, advisory=not source.strict)
        if issue.parts not in reported
    )
    reported = {issue.parts for issue in issues}
    issues.extend(issue for issue in conform_errors(source.document) if issue.parts not in reported)
    return issues


def fatal_issues(source: Source, issues: Sequence[SchemaIssue] | None = None) -> list[SchemaIssue]:
    """The issues that make a source invalid for processing: all of them for strict files, the ``Unsafe`` ones
    for the others (processing.md §2.5; issue 10).

    :param issues: from :func:`source_issues` (computed when None)
    """
    issues = source_issues(source) if issues is None else issues
    return [issue for issue in issues if source.strict or issue.kind == "Unsafe"]


def describe_issue(source: Source, issue: SchemaIssue, *, with_file: bool = True) -> str:
    """One line naming the file, the layer and entry name (when the path is inside an entry) and the JSON path.

    Example: ``sources/us/ca/x.json: addresses/city: Schema: layers.addresses[0].conform.number: …``
    """
    prefix = f"{source.path}: " if with_file else ""
    parts = issue.parts
    if len(parts) >= 3 and parts[0] == "layers" and isinstance(parts[1], str) and isinstance(parts[2], int):
        names = {(e.layer, e.index): e.name for e in source.entries()}
        name = names.get((parts[1], parts[2]), f"#{parts[2]}")
        prefix += f"{parts[1]}/{name}: "
    return f"{prefix}{issue}"


def validate_source(source: Source) -> list[str]:
    """Validate a loaded source; return one line per problem (empty when valid).

    Whether the problems are fatal is the caller's decision: ``source.strict`` files are invalid
    (``invalid_source``); for others the lines are WARNINGs (processing.md §2.5).

    :param source: from :func:`openaddr.sources.load_source`
    :return: lines such as ``<file>: addresses/city: Schema: layers.addresses[0].conform.number: <message>``
    """
    return [describe_issue(source, issue) for issue in source_issues(source)]


# -- the ``openaddr validate`` command -------------------------------------------------------------------------


def _is_non_object_json(path: Path) -> bool:
    """True when the file is valid JSON but not an object (an unreadable, broken or oversized file gives False)."""
    try:
        return not isinstance(parse_source_json(read_source_bytes(path), path), dict)
    except SourceFileError:
        return False


def _is_source_document(document: Mapping[str, Any]) -> bool:
    return any(key in document for key in ("schema", "layers", "coverage"))


def validate_paths(paths: Sequence[str | Path], out: TextIO, err: TextIO | None = None) -> int:
    """Validate files and folders of source JSON and report on ``out`` (``openaddr validate``, §1.1).

    * A named file is always checked. Below a named folder every ``*.json`` is checked, except files that are
      not sources at all: valid JSON that is not an object, or an object with none of ``schema``, ``layers``,
      ``coverage`` (logged at INFO and not counted). Broken JSON, or a file over a limit of
      :func:`openaddr.sources.load_source`, counts as invalid.
    * A path that names nothing readable (missing, unreadable, a FIFO or a device) is bad usage: reported on
      ``err`` and the exit status is 2, after every other file was checked.
    * ``validate`` is a strict check: every problem makes a file invalid, whatever its mode — schema errors of
      v1 and ``schema``-less files too (their tolerated legacy keys excepted), and the conform checks of
      :func:`conform_errors`. ``process-one`` is where advisory mode only warns.
    * Output: one line per invalid file — ``<path>: <problem>`` for a single problem, else ``<path>: N problems``
      followed by the first :data:`MAX_ERRORS_SHOWN` on indented lines — then ``N valid, M invalid``.

    :return: exit status, 0 when every file is valid, 1 when one is invalid, 2 when a path cannot be read
    """
    valid = invalid = unreadable = 0
    for raw in paths:
        walked = Path(raw).is_dir()
        for path in iter_source_files([Path(raw)]):
            try:
                source = load_source(path)
            except SourceUnreadableError as exc:
                unreadable += 1
                (err or out).write(f"openaddr validate: {exc}\n")
                continue
            except SourceFileError as exc:
                if walked and _is_non_object_json(path):
                    log.info("Skipped %s: not a source file", path)
                    continue
                invalid += 1
                out.write(f"{exc}\n")
                continue
            if walked and not _is_source_document(source.original):
                log.info("Skipped %s: not a source file", path)
                continue
            issues = source_issues(source)
            if not issues:
                valid += 1
                continue
            invalid += 1
            lines = [describe_issue(source, issue, with_file=False) for issue in issues]
            if len(lines) == 1:
                out.write(f"{path}: {lines[0]}\n")
                continue
            out.write(f"{path}: {len(lines)} problems\n")
            for line in lines[:MAX_ERRORS_SHOWN]:
                out.write(f"    {line}\n")
            if len(lines) > MAX_ERRORS_SHOWN:
                out.write(f"    … and {len(lines) - MAX_ERRORS_SHOWN} more\n")
    out.write(f"{valid} valid, {invalid} invalid\n")
    if unreadable:
        return 2
    return 0 if invalid == 0 else 1
