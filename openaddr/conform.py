"""The conform: turn a batch of source columns into attribute columns (processing.md §7).

A conform object maps attribute names to *values*: a field name, a list of field names (merge), an attribute
function, or (``accuracy`` only) an integer. :class:`Conform` compiles the object once per run and evaluates it
column-wise over :class:`~openaddr.readers.base.Batch` columns.

How evaluation works here. The columns of a batch, then every slot the conform writes (``oa:<attribute>``, chain
variables ``oa:V`` and their bare copies ``V``), form a numbered register file. For each batch *schema* (the tuple
of column names) the conform is planned once: every field name is resolved to a register, following the lookup rule
of §7.3 against the names that exist at that point of the evaluation order (§7.2). Evaluating a batch then only
runs list comprehensions over registers, with callables (compiled regexes, bound methods) prepared in advance.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from openaddr.errors import ConformError
from openaddr.patterns import bounded_map, compile_pattern
from openaddr.settings import pattern_timeout

log = logging.getLogger(__name__)

#: The attributes of each layer type, in output order (§7.1). ``accuracy`` is not a CSV column (§7.7).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "addresses": ("number", "street", "unit", "city", "district", "region", "postcode", "id", "accuracy"),
    "parcels": ("pid",),
    "buildings": ("id", "height", "levels"),
    "centerlines": (
        "id",
        "name",
        "oneway",
        "speed",
        "classification",
        "surface",
        "addr_from_left",
        "addr_to_left",
        "addr_from_right",
        "addr_to_right",
        "zip_left",
        "zip_right",
    ),
}

#: The attribute functions of §7.5 and §7.6.
FUNCTIONS = frozenset(
    {
        "join",
        "regexp",
        "format",
        "prefixed_number",
        "postfixed_street",
        "postfixed_unit",
        "remove_prefix",
        "remove_postfix",
        "first_non_empty",
        "constant",
        "map",
        "mph_to_kph",
        "get",
        "chain",
    }
)

# A house-number token (§7.5 prefixed_number): digits with an optional fraction (123, 123 1/2, 123-1/2), a
# queens-style range (69-15), or digits with one letter (123a, 123-a); batch-machine's patterns, tried in that order.
_NUMBER = r"(?:\d+(?:[ -]\d/\d)?|\d+-\d+|\d+-?[A-Z])"
_UNIT_WORDS = r"(?:UNIT|APARTMENT|APT\.?|SUITE|STE\.?|BUILDING|BLDG\.?|LOT)"
_PREFIXED_NUMBER = re.compile(rf"^\s*({_NUMBER})\s+", re.IGNORECASE)
_POSTFIXED_STREET = re.compile(rf"^(?:\s*{_NUMBER}\s+)?(.*)", re.IGNORECASE)
_POSTFIXED_STREET_UNITS = re.compile(
    rf"^(?:\s*{_NUMBER}\s+)?(.+?)(?:\s+(?:{_UNIT_WORDS}\s+|#).+)?$", re.IGNORECASE
)
_POSTFIXED_UNIT = re.compile(rf"\s((?:{_UNIT_WORDS}\s+|#).+)$", re.IGNORECASE)

# `$n` and `${n}` in a regexp replacement (§7.5 regexp); `$name` does not match and stays literal.
_DOLLAR_GROUP = re.compile(r"\$(\d+)|\$\{(\d+)\}")
# Placeholders of the format function.
_FORMAT_PLACEHOLDER = re.compile(r"\$([0-9]+)")

#: Below this many rows a column is not checked for repeated values.
_DISTINCT_MIN_ROWS = 64

# Evaluates one value kind over the registers: (registers, batch size) -> column.
_Eval = Callable[[list[list[Any]], int], list[str]]
_Op = Callable[[list[list[Any]], int], None]
_T = TypeVar("_T")
_U = TypeVar("_U")


def convert_replacement(replace: str) -> str:
    """Turn a conform replacement into a Python ``re`` template (§7.5 regexp).

    ``$<digits>`` and ``${<digits>}`` become group references; any other ``$`` text stays literal. Backslash
    escapes keep their Python meaning.
    """

    def group(match: re.Match[str]) -> str:
        return rf"\g<{match.group(1) or match.group(2)}>"

    return _DOLLAR_GROUP.sub(group, replace)


def _replacement_function(replace: str) -> Callable[[re.Match[str]], str] | None:
    """A callable equivalent to the template of ``replace`` when it has no backslash escapes, else None.

    ``re.sub`` with a template that holds group references goes through Python code on every call (CPython
    3.11); a callable filling a :meth:`str.format` pattern from ``match.groups('')`` is several times faster and
    gives the same text (a group that did not take part is ``''``, as in a template).
    """
    pieces: list[str] = []
    end = 0
    for match in _DOLLAR_GROUP.finditer(replace):
        literal = replace[end : match.start()]
        if "\\" in literal:
            return None
        pieces.append(literal.replace("{", "{{").replace("}", "}}"))
        pieces.append(f"{{{int(match.group(1) or match.group(2))}}}")
        end = match.end()
    if "\\" in replace[end:]:
        return None
    pattern = "".join(pieces) + replace[end:].replace("{", "{{").replace("}", "}}")
    fill = pattern.format

    def expand(match: re.Match[str]) -> str:
        # {0} is the whole match, {n} group n.
        return fill(match.group(), *match.groups(""))

    return expand


def _strip_oa(name: str) -> str:
    """``name`` without one leading ``oa:`` (any case). Characters are never stripped one by one (§7.6)."""
    return name[3:] if name[:3].lower() == "oa:" else name


def _text(value: Any) -> str:
    """A JSON value of a conform (mapping value, constant) as text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _map(fn: Callable[[_T], _U], values: Iterable[_T]) -> list[_U]:
    return list(map(fn, values))


def _per_value(
    fn: Callable[[_T], _U],
    column: list[_T],
    run: Callable[[Callable[[_T], _U], Iterable[_T]], list[_U]] = _map,
) -> list[_U]:
    """``fn`` over a column, once per distinct value when values repeat a lot (city codes, street types).

    :param run: maps ``fn`` over values (:func:`openaddr.patterns.bounded_map` for a source pattern)
    """
    if len(column) >= _DISTINCT_MIN_ROWS and len(set(column[:_DISTINCT_MIN_ROWS])) * 2 <= _DISTINCT_MIN_ROWS:
        # The first rows repeat: worth building the table (unique values, like full addresses, skip this).
        distinct = list(set(column))
        if len(distinct) * 2 <= len(column):
            table = dict(zip(distinct, run(fn, distinct), strict=True))
            return list(map(table.__getitem__, column))
    return run(fn, column)


def _accuracy_text(value: str | None) -> str | None:
    """The accuracy as the text of an integer 1–5, else None (§7.7)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if number.is_integer() and 1 <= number <= 5:
        return str(int(number))
    return None


class _Env:
    """Plan-time view of the register file: which name is in which register, in column order.

    :param names: the batch's column names, in order
    :param warn: called once per field name that is not found
    """

    def __init__(self, names: Sequence[str], warn: Callable[[str], None]) -> None:
        self.exact: dict[str, int] = {}
        self.folded: dict[str, int] = {}
        for index, name in enumerate(names):
            self.exact.setdefault(name, index)
            self.folded.setdefault(name.lower(), index)
        self.count = len(names)
        self.source_count = len(names)
        self.written: set[str] = set()
        self.ops: list[_Op] = []
        self._warn = warn

    def lookup(self, name: str) -> int | None:
        """The register of ``name``: exact match, else the first case-insensitive match (§7.3); None if missing."""
        if not name:
            return None  # an empty name never matches
        index = self.exact.get(name)
        if index is None:
            index = self.folded.get(name.lower())
        if index is None:
            self._warn(name)
        return index

    def is_source_column(self, name: str) -> bool:
        """Whether the batch itself has a column of exactly this name."""
        index = self.exact.get(name)
        return index is not None and index < self.source_count

    def register(self, name: str) -> int:
        """The register written under ``name``: the existing one of that exact name, or a new one at the end."""
        index = self.exact.get(name)
        if index is None:
            index = self.count
            self.count += 1
            self.exact[name] = index
            self.folded.setdefault(name.lower(), index)
        return index

    def reader(self, name: str) -> _Eval:
        """An evaluator giving the column of ``name`` as a function input: missing reads ``''``."""
        index = self.lookup(name)
        if index is None:
            return _empty_column
        return functools.partial(_read_register, index)


def _empty_column(regs: list[list[Any]], size: int) -> list[str]:
    return [""] * size


def _read_register(index: int, regs: list[list[Any]], size: int) -> list[str]:
    return regs[index]


class _Node:
    """A compiled conform value; :meth:`plan` resolves its field names against one batch schema."""

    def plan(self, env: _Env, key: str) -> _Eval:
        """Return the evaluator of this value written under conform key ``key`` (its output slot is ``oa:key``)."""
        raise NotImplementedError


class _Field(_Node):
    """A plain field reference (§7.3)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def plan(self, env: _Env, key: str) -> _Eval:
        # Only reached for chain steps; a top-level field reference is looked up at the end (§8.1).
        return env.reader(self.name)


class _Constant(_Node):
    """``constant`` (and an integer ``accuracy``): the same text on every row."""

    def __init__(self, value: str) -> None:
        self.value = value

    def plan(self, env: _Env, key: str) -> _Eval:
        value = self.value
        return lambda regs, size: [value] * size


class _Merge(_Node):
    """A list of field names: values joined by one space, untrimmed, empties kept (§7.4)."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields

    def plan(self, env: _Env, key: str) -> _Eval:
        readers = [env.reader(name) for name in self.fields]
        if not readers:
            return _empty_column
        if len(readers) == 1:
            return readers[0]

        def evaluate(regs: list[list[Any]], size: int) -> list[str]:
            columns = [read(regs, size) for read in readers]
            return [" ".join(row) for row in zip(*columns, strict=True)]

        return evaluate


class _SingleField(_Node):
    """A function of one field, applied value by value."""

    def __init__(self, field: str, fn: Callable[[str], str]) -> None:
        self.field = field
        self.fn = fn

    def plan(self, env: _Env, key: str) -> _Eval:
        read = env.reader(self.field)
        fn = self.fn
        return lambda regs, size: _per_value(fn, read(regs, size))


class _PatternField(_SingleField):
    """``regexp``: a source pattern over one field, each value within the pattern's time budget."""

    def __init__(self, field: str, fn: Callable[[str], str], budget: float, message: str) -> None:
        super().__init__(field, fn)
        self.run = functools.partial(_bounded, budget=budget, message=message)

    def plan(self, env: _Env, key: str) -> _Eval:
        read = env.reader(self.field)
        fn = self.fn
        run = self.run
        return lambda regs, size: _per_value(fn, read(regs, size), run)


def _bounded(fn: Callable[[str], str], values: Iterable[str], *, budget: float, message: str) -> list[str]:
    return bounded_map(fn, values, budget, lambda: message)


class _Join(_Node):
    """``join``: trimmed values, empties dropped, joined by ``separator``."""

    def __init__(self, fields: list[str], separator: str) -> None:
        self.fields = fields
        self.separator = separator

    def plan(self, env: _Env, key: str) -> _Eval:
        readers = [env.reader(name) for name in self.fields]
        join = self.separator.join

        def evaluate(regs: list[list[Any]], size: int) -> list[str]:
            if not readers:
                return [""] * size
            stripped = [[value.strip() for value in read(regs, size)] for read in readers]
            if len(stripped) == 1:
                return stripped[0]
            return [join(filter(None, row)) for row in zip(*stripped, strict=True)]

        return evaluate


class _Format(_Node):
    """``format``: placeholders ``$1`` … ``$n`` into ``fields``, with 7.5.5's literal rules."""

    def __init__(self, fields: list[str], template: str) -> None:
        self.fields = fields
        # (literal before the placeholder, 0-based field index, whether it is the first placeholder); placeholders
        # out of range are dropped together with their literal.
        segments: list[tuple[str, int, bool]] = []
        end = 0
        for number, match in enumerate(_FORMAT_PLACEHOLDER.finditer(template)):
            index = int(match.group(1)) - 1
            if 0 <= index < len(fields):
                segments.append((template[end : match.start()], index, number == 0))
            end = match.end()
        self.segments = segments
        self.tail = template[end:]

    def _row(self, values: Sequence[str]) -> str:
        parts: list[str] = []
        added = 0
        for literal, index, first in self.segments:
            value = values[index]
            if first or (added and value):
                parts.append(literal)
            if value:
                if value.endswith(".0"):
                    value = value[:-2]
                parts.append(value)
                added += 1
        if not added:
            return ""
        parts.append(self.tail)
        return "".join(parts)

    def plan(self, env: _Env, key: str) -> _Eval:
        readers = [env.reader(name) for name in self.fields]
        row = self._row

        def evaluate(regs: list[list[Any]], size: int) -> list[str]:
            stripped = [[value.strip() for value in read(regs, size)] for read in readers]
            if not stripped:
                return [""] * size
            return [row(values) for values in zip(*stripped, strict=True)]

        return evaluate


class _RemoveAffix(_Node):
    """``remove_prefix`` / ``remove_postfix``: drop the value of ``field_to_remove`` from one end."""

    def __init__(self, field: str, field_to_remove: str, postfix: bool) -> None:
        self.field = field
        self.field_to_remove = field_to_remove
        self.postfix = postfix

    def plan(self, env: _Env, key: str) -> _Eval:
        read_value = env.reader(self.field)
        read_affix = env.reader(self.field_to_remove)
        if self.postfix:

            def evaluate(regs: list[list[Any]], size: int) -> list[str]:
                pairs = zip(read_value(regs, size), read_affix(regs, size), strict=True)
                return [v[: -len(p)].rstrip(" ") if p and v.endswith(p) else v for v, p in pairs]

        else:

            def evaluate(regs: list[list[Any]], size: int) -> list[str]:
                pairs = zip(read_value(regs, size), read_affix(regs, size), strict=True)
                return [v[len(p) :].lstrip(" ") if v.startswith(p) else v for v, p in pairs]

        return evaluate


class _FirstNonEmpty(_Node):
    """``first_non_empty``: the first value whose trimmed form is non-empty, untrimmed; none → ``''``."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields

    @staticmethod
    def _row(values: Sequence[str]) -> str:
        for value in values:
            if value.strip():
                return value
        return ""

    def plan(self, env: _Env, key: str) -> _Eval:
        readers = [env.reader(name) for name in self.fields]
        row = self._row

        def evaluate(regs: list[list[Any]], size: int) -> list[str]:
            if not readers:
                return [""] * size
            return [row(values) for values in zip(*(read(regs, size) for read in readers), strict=True)]

        return evaluate


class _Map(_Node):
    """``map``: exact key lookup, else ``else``, else ``''``."""

    def __init__(self, field: str, mapping: dict[str, str], otherwise: str) -> None:
        self.field = field
        self.mapping = mapping
        self.otherwise = otherwise

    def plan(self, env: _Env, key: str) -> _Eval:
        read = env.reader(self.field)
        get = self.mapping.get
        otherwise = self.otherwise
        return lambda regs, size: [get(value, otherwise) for value in read(regs, size)]


class _Chain(_Node):
    """``chain``: steps that pass a value along in the chain variable (§7.6)."""

    def __init__(self, variable: str | None, steps: list[_Node]) -> None:
        self.variable = variable
        self.steps = steps

    def plan(self, env: _Env, key: str) -> _Eval:
        var = self.variable if self.variable is not None else key
        slot_name = f"oa:{var}"
        slot = env.register(slot_name)
        env.written.add(slot_name)
        init_bare = not env.is_source_column(var)
        bare = env.register(var)
        steps = [(step.plan(env, var)) for step in self.steps]

        def evaluate(regs: list[list[Any]], size: int) -> list[str]:
            regs[slot] = [""] * size
            if init_bare:
                regs[bare] = [""] * size
            for step in steps:
                result = step(regs, size)
                regs[slot] = result
                # Only non-empty step results reach the bare variable (batch-machine's rule, §7.6).
                regs[bare] = [r if r else v for r, v in zip(result, regs[bare], strict=True)]
            return regs[slot]

        return evaluate


def _regexp_search(pattern: re.Pattern[str]) -> Callable[[str], str]:
    search = pattern.search
    if pattern.groups == 1:  # the common case (`^(\S+)\s`): no tuple of groups to join

        def first(value: str) -> str:
            match = search(value)
            return (match.group(1) or "") if match else ""

        return first

    def fn(value: str) -> str:
        match = search(value)
        return "".join(match.groups("")) if match else ""

    return fn


def _prefixed_number(value: str) -> str:
    match = _PREFIXED_NUMBER.match(value)
    return match.group(1) if match else ""


def _postfixed_street(value: str) -> str:
    match = _POSTFIXED_STREET.match(value)
    return match.group(1) if match else ""


def _postfixed_street_units(value: str) -> str:
    match = _POSTFIXED_STREET_UNITS.match(value)
    return match.group(1) if match else ""


def _postfixed_unit(value: str) -> str:
    match = _POSTFIXED_UNIT.search(value)
    return match.group(1) if match else ""


def _mph_to_kph(value: str) -> str:
    try:
        return str(round(float(value) * 1.60934))
    except (ValueError, OverflowError):
        return ""


def _get(index: int) -> Callable[[str], str]:
    def fn(value: str) -> str:
        parts = value.replace("[", "").replace("]", "").replace("'", "").replace(", ", ",").split(",")
        try:
            return parts[index]
        except IndexError:
            return ""

    return fn


def _field_name(value: Any) -> str:
    """A field name from a function parameter; anything else (absent, null) is the empty name, which never matches."""
    return value if isinstance(value, str) else ""


def _field_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [_field_name(item) for item in value]
    return []


class Conform:
    """A conform object compiled for one layer type.

    :param conform: the entry's ``conform`` object
    :param layer_type: ``addresses``, ``parcels``, ``buildings`` or ``centerlines``
    :param label: names the entry in messages (e.g. ``us/ca/alameda addresses/primary``)
    :param warn_missing: log one WARNING per field name that is not found (off for acceptance cases, whose inputs
        routinely leave fields out)
    :raises ConformError: an unknown function, an invalid regular expression or replacement, a function without
        its required parameters
    """

    def __init__(
        self,
        conform: Mapping[str, Any],
        layer_type: str,
        *,
        label: str = "",
        warn_missing: bool = True,
        pattern_budget: float | None = None,
    ) -> None:
        if layer_type not in ATTRIBUTES:
            raise ConformError(f"{label or 'conform'}: unknown layer type {layer_type!r}")
        self.layer_type = layer_type
        self.label = label
        #: Seconds one source pattern may take on one value (``OPENADDR_PATTERN_TIMEOUT`` by default).
        self.pattern_budget = pattern_timeout() if pattern_budget is None else pattern_budget
        self.attributes = ATTRIBUTES[layer_type]
        #: (attribute, compiled value) in conform key order (§7.2).
        self.values: list[tuple[str, _Node]] = []
        for key, value in conform.items():
            if key not in self.attributes:
                continue
            node = self._compile(value, key)
            if node is not None:
                self.values.append((key, node))
        self._plans: dict[tuple[str, ...], tuple[int, list[_Op], list[tuple[str, int | None]]]] = {}
        self._warned: set[str] = set()
        self._warn_enabled = warn_missing

    # -- compiling -------------------------------------------------------------------------------------------

    def _where(self, attribute: str) -> str:
        return f"{self.label} attribute {attribute}" if self.label else f"attribute {attribute}"

    def _compile(self, value: Any, attribute: str) -> _Node | None:
        if isinstance(value, str):
            return _Field(value)
        if isinstance(value, list):
            return _Merge([_field_name(item) for item in value])
        if isinstance(value, Mapping):
            return self._compile_function(value, attribute)
        if isinstance(value, int) and not isinstance(value, bool) and attribute == "accuracy":
            return _Constant(str(value))
        log.warning(
            "%s: ignoring conform value %r, which is neither a field name, a list nor a function",
            self._where(attribute),
            value,
        )
        return None

    def _compile_function(self, spec: Mapping[str, Any], attribute: str) -> _Node:
        name = spec.get("function")
        if name not in FUNCTIONS:
            raise ConformError(f"Unknown conform function `{name}` in {self._where(attribute)}")
        field = _field_name(spec.get("field"))
        if name == "join":
            separator = spec.get("separator")
            return _Join(_field_names(spec.get("fields")), separator if isinstance(separator, str) else " ")
        if name == "regexp":
            return self._compile_regexp(spec, attribute)
        if name == "format":
            template = spec.get("format")
            if not isinstance(template, str):
                raise ConformError(f"The format function needs a format text in {self._where(attribute)}")
            return _Format(_field_names(spec.get("fields")), template)
        # The built-in patterns run on source values too, and backtrack: `postfixed_street` with units takes
        # seconds on a few thousand spaces. They get the same budget as a source pattern.
        if name == "prefixed_number":
            return self._pattern_field(field, _prefixed_number, f"The {name} function", attribute)
        if name == "postfixed_street":
            units = bool(spec.get("may_contain_units", False))
            fn = _postfixed_street_units if units else _postfixed_street
            return self._pattern_field(field, fn, f"The {name} function", attribute)
        if name == "postfixed_unit":
            return self._pattern_field(field, _postfixed_unit, f"The {name} function", attribute)
        if name in ("remove_prefix", "remove_postfix"):
            return _RemoveAffix(field, _field_name(spec.get("field_to_remove")), name == "remove_postfix")
        if name == "first_non_empty":
            return _FirstNonEmpty(_field_names(spec.get("fields")))
        if name == "constant":
            return _Constant(_text(spec.get("value")))
        if name == "map":
            mapping = spec.get("mapping")
            if not isinstance(mapping, Mapping):
                raise ConformError(f"The map function needs a mapping object in {self._where(attribute)}")
            table = {str(key): _text(value) for key, value in mapping.items()}
            return _Map(field, table, _text(spec.get("else")))
        if name == "mph_to_kph":
            return _SingleField(field, _mph_to_kph)
        if name == "get":
            index = spec.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                raise ConformError(f"The get function needs an integer index in {self._where(attribute)}")
            return _SingleField(field, _get(index))
        # chain
        variable = spec.get("variable")
        steps: list[_Node] = []
        for step in spec.get("functions") or []:
            node = self._compile(step, attribute)
            if node is not None:
                steps.append(node)
        return _Chain(_strip_oa(variable) if isinstance(variable, str) and variable else None, steps)

    def _compile_regexp(self, spec: Mapping[str, Any], attribute: str) -> _Node:
        field = _field_name(spec.get("field"))
        source = spec.get("pattern")
        if not isinstance(source, str):
            raise ConformError(f"The regexp function needs a pattern in {self._where(attribute)}")
        try:
            pattern = compile_pattern(source)
        except re.error as exc:
            raise ConformError(
                f"Invalid regular expression {source!r} in {self._where(attribute)}: {exc}"
            ) from exc
        what = f"The regexp pattern {source!r}"
        replace = spec.get("replace")
        if not isinstance(replace, str) or not replace:
            # Without replace (or with replace: "", as both engines do): concatenate the groups of the first match.
            return self._pattern_field(field, _regexp_search(pattern), what, attribute)
        template = convert_replacement(replace)
        try:
            pattern.sub(template, "")  # parses the template now: bad escapes, unknown groups
        except (re.error, IndexError) as exc:
            raise ConformError(
                f"Invalid regular expression replacement {replace!r} in {self._where(attribute)}: {exc}"
            ) from exc
        substitute = functools.partial(pattern.sub, _replacement_function(replace) or template)
        return self._pattern_field(field, substitute, what, attribute)

    def _pattern_field(self, field: str, fn: Callable[[str], str], what: str, attribute: str) -> _Node:
        """``fn`` (a pattern's match) over ``field``, each value within :attr:`pattern_budget`."""
        message = (
            f"{what} on field `{field}` in {self._where(attribute)} took longer than its "
            f"{self.pattern_budget:g} s budget on one value (OPENADDR_PATTERN_TIMEOUT)"
        )
        return _PatternField(field, fn, self.pattern_budget, message)

    # -- planning --------------------------------------------------------------------------------------------

    def _warn_missing(self, name: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            if self._warn_enabled:
                log.warning("Conform field `%s` not found", name)

    def _plan(self, names: tuple[str, ...]) -> tuple[int, list[_Op], list[tuple[str, int | None]]]:
        env = _Env(names, self._warn_missing)
        for attribute, node in self.values:
            if isinstance(node, _Field):
                continue  # a plain field reference writes no slot; it is looked up at the end (§8.1)
            evaluate = node.plan(env, attribute)
            slot_name = f"oa:{attribute}"
            slot = env.register(slot_name)
            env.written.add(slot_name)
            env.ops.append(functools.partial(_write_register, slot, evaluate))
        fields = {attribute: node for attribute, node in self.values if isinstance(node, _Field)}
        final: list[tuple[str, int | None]] = []
        for attribute in self.attributes:
            slot_name = f"oa:{attribute}"
            if slot_name in env.written:
                final.append((attribute, env.exact[slot_name]))
            elif attribute in fields:
                final.append((attribute, env.lookup(fields[attribute].name)))
            else:
                final.append((attribute, None))
        if len(self._plans) >= 32:
            self._plans.clear()
        plan = (env.count, env.ops, final)
        self._plans[names] = plan
        return plan

    # -- evaluating ------------------------------------------------------------------------------------------

    def apply(self, columns: Mapping[str, list[str]], size: int) -> dict[str, list[str | None]]:
        """Evaluate every attribute of the layer type over one batch.

        :param columns: source column name → one text per row (``''`` for null), all of length ``size``, in the
            source's column order
        :param size: number of rows
        :return: attribute → one value per row, in :data:`ATTRIBUTES` order; None is null. Lists may be shared
            with ``columns`` and between attributes: do not modify them.
        """
        names = tuple(columns)
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plan(names)
        count, ops, final = plan
        regs: list[list[Any]] = list(columns.values())
        regs.extend([[] for _ in range(count - len(regs))])
        for op in ops:
            op(regs, size)
        result: dict[str, list[str | None]] = {}
        for attribute, index in final:
            column: list[str | None] = [None] * size if index is None else regs[index]
            if attribute == "accuracy":
                column = _per_value(_accuracy_text, column)
            result[attribute] = column
        return result


def _write_register(index: int, evaluate: _Eval, regs: list[list[Any]], size: int) -> None:
    regs[index] = evaluate(regs, size)


def esri_field_names(conform: Mapping[str, Any] | None, layer_type: str) -> list[str]:
    """The attribute columns an ESRI cache keeps for this conform (§3.6.3).

    :param conform: the entry's conform object, or None
    :param layer_type: the entry's layer type
    :return: the field names read by the attributes of the layer type (``lon``/``lat`` excluded), without chain
        variables, empty names and duplicates, sorted by code point; an empty list means "every field of the
        metadata, in metadata order"
    """
    if not isinstance(conform, Mapping):
        return []
    attributes = ATTRIBUTES.get(layer_type, ())
    names: set[str] = set()
    for key, value in conform.items():
        if key in attributes:
            names.update(_esri_names(value, key))
    names.discard("")
    return sorted(names)


def _esri_names(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    if not isinstance(value, Mapping):
        return []
    function = value.get("function")
    if function == "constant":
        return []
    if function == "chain":
        variable = value.get("variable")
        var = _strip_oa(variable) if isinstance(variable, str) and variable else key
        names = [name for step in value.get("functions") or [] for name in _esri_names(step, var)]
        # The chain variable is ours, not the server's: batch-machine leaked `oa:<var>` (us/co/yuma.json).
        return [name for name in names if name != var and not (name[:3].lower() == "oa:" and name[3:] == var)]
    names = [_field_name(value.get("field")), _field_name(value.get("field_to_remove"))]
    names.extend(_field_names(value.get("fields")))
    return names


def _chain_variables(value: Any, key: str) -> set[str]:
    """Names of the chain variables (without ``oa:``) used by one conform value, nested chains included."""
    if isinstance(value, Mapping) and value.get("function") == "chain":
        variable = value.get("variable")
        var = _strip_oa(variable) if isinstance(variable, str) and variable else key
        found = {var}
        for step in value.get("functions") or []:
            found |= _chain_variables(step, var)
        return found
    return set()


def source_columns(
    conform: Mapping[str, Any] | None, layer_type: str, available: Sequence[str]
) -> list[str] | None:
    """The source columns the conform can read, in source order; None when it may read any of them.

    Reading only these is much faster for wide files. Every column matching a referenced name
    case-insensitively is kept, so the lookup of §7.3 (exact, then the first case-insensitive match in column order)
    finds the same column as over the full row; so is a column named like a chain variable, which the chain reads
    (§7.6).

    :param conform: the entry's conform object
    :param layer_type: the entry's layer type
    :param available: the source's column names, in order
    """
    names = esri_field_names(conform, layer_type)
    if not names or not isinstance(conform, Mapping):
        return None
    wanted = {name.lower() for name in names}
    for key, value in conform.items():
        if key in ATTRIBUTES.get(layer_type, ()):
            wanted |= {name.lower() for name in _chain_variables(value, key)}
    return [column for column in available if column.lower() in wanted]
