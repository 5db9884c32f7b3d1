"""The conform engine: attribute functions, lookup, chains, accuracy, ESRI field selection (processing.md §7)."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.conform import ATTRIBUTES, Conform, convert_replacement, esri_field_names
from openaddr.errors import ConformError

if TYPE_CHECKING:
    from pathlib import Path


def one(conform: dict[str, Any], row: dict[str, str], layer: str = "addresses") -> dict[str, str | None]:
    """Apply a conform to one row; return attribute → value."""
    result = Conform(conform, layer).apply({k: [v] for k, v in row.items()}, 1)
    return {name: values[0] for name, values in result.items()}


def street_of(function: dict[str, Any], row: dict[str, str]) -> str | None:
    return one({"street": function}, row)["street"]


def corpus_conform(
    corpus_sources: Path, path: str, layer: str = "addresses", index: int = 0
) -> dict[str, Any]:
    with (corpus_sources / path).open(encoding="utf-8") as fh:
        return json.load(fh)["layers"][layer][index]["conform"]


# -- §7.1 attributes ------------------------------------------------------------------------------------------


def test_attributes_per_layer_type() -> None:
    assert ATTRIBUTES["addresses"] == (
        "number",
        "street",
        "unit",
        "city",
        "district",
        "region",
        "postcode",
        "id",
        "accuracy",
    )
    assert ATTRIBUTES["parcels"] == ("pid",)
    assert ATTRIBUTES["buildings"] == ("id", "height", "levels")
    assert ATTRIBUTES["centerlines"][:3] == ("id", "name", "oneway")
    assert len(ATTRIBUTES["centerlines"]) == 12


def test_result_has_every_attribute_in_order_and_ignores_other_keys() -> None:
    conform = {
        "format": "csv",
        "lon": "X",
        "lat": "Y",
        "postal_code": "ZIP",
        "notes": "n",
        "city": "CITY",
        "number": "NUM",
    }
    result = Conform(conform, "addresses").apply({"NUM": ["1"], "CITY": ["Oakland"], "ZIP": ["9"]}, 1)
    assert list(result) == list(ATTRIBUTES["addresses"])
    assert result["number"] == ["1"]
    assert result["city"] == ["Oakland"]
    assert result["postcode"] == [None]  # postal_code is not an attribute
    assert result["street"] == [None]


def test_other_layer_types() -> None:
    assert one({"pid": "PIN"}, {"PIN": "0042"}, "parcels") == {"pid": "0042"}
    row = {"ID": "7", "H": "12.5"}
    assert one({"id": "ID", "height": "H"}, row, "buildings") == {"id": "7", "height": "12.5", "levels": None}
    conform = {
        "oneway": {"function": "map", "field": "ow", "mapping": {"FT": "yes", "TF": "reverse"}, "else": "no"}
    }
    assert one(conform, {"ow": "TF"}, "centerlines")["oneway"] == "reverse"
    assert one(conform, {"ow": "B"}, "centerlines")["oneway"] == "no"


# -- §7.3 lookup ----------------------------------------------------------------------------------------------


def test_exact_match_wins_over_case_insensitive() -> None:
    assert one({"street": "Name"}, {"NAME": "upper", "Name": "exact"})["street"] == "exact"


def test_case_insensitive_match_takes_the_first_column_in_order() -> None:
    assert one({"street": "name"}, {"NAME": "first", "Name": "second"})["street"] == "first"


def test_missing_plain_field_is_null_and_missing_input_reads_empty() -> None:
    result = one(
        {"street": "NOPE", "city": ["NOPE", "C"], "unit": {"function": "join", "fields": ["NOPE", "C"]}},
        {"C": "x"},
    )
    assert result["street"] is None
    assert result["city"] == " x"
    assert result["unit"] == "x"


@pytest.mark.parametrize("conform", [{"postcode": ""}, {"region": "Curaçao"}])
def test_empty_name_and_literal_are_missing(conform: dict[str, str]) -> None:
    result = one(conform, {"": "never", "X": "y"})
    assert all(value is None for value in result.values())


def test_one_warning_per_missing_name(caplog: pytest.LogCaptureFixture) -> None:
    conform = Conform({"street": "NOPE", "city": "NOPE", "unit": ["NOPE", "GONE"]}, "addresses")
    with caplog.at_level(logging.WARNING, logger="openaddr.conform"):
        conform.apply({"A": ["1"]}, 1)
        conform.apply({"A": ["1"], "B": ["2"]}, 1)  # another schema: no repeated warnings
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("Conform field `NOPE` not found") == 1
    assert messages.count("Conform field `GONE` not found") == 1
    assert len(messages) == 2


def test_empty_field_name_is_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="openaddr.conform"):
        Conform({"postcode": ""}, "addresses").apply({"A": ["1"]}, 1)
    assert not caplog.records


# -- §7.2 slots and order -------------------------------------------------------------------------------------


def test_slot_of_an_earlier_attribute_is_readable() -> None:
    conform = {
        "number": {"function": "prefixed_number", "field": "ADDR"},
        "street": {"function": "remove_prefix", "field": "ADDR", "field_to_remove": "oa:number"},
    }
    result = one(conform, {"ADDR": "12 Main St"})
    assert (result["number"], result["street"]) == ("12", "Main St")


def test_slot_of_a_later_attribute_is_not_yet_there() -> None:
    conform = {
        "street": {"function": "remove_prefix", "field": "ADDR", "field_to_remove": "oa:number"},
        "number": {"function": "prefixed_number", "field": "ADDR"},
    }
    result = one(conform, {"ADDR": "12 Main St"})
    assert result["street"] == "12 Main St"  # oa:number read as '' → only leading spaces removed
    assert result["number"] == "12"


# -- §7.4 list merge ------------------------------------------------------------------------------------------


def test_list_merge_keeps_spaces_and_empties() -> None:
    assert one({"street": ["A", "B", "C"]}, {"A": "Main ", "B": "", "C": "St"})["street"] == "Main   St"


# -- §7.5 functions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "separator", "expected"),
    [
        (("12", "  ", "b"), "-", "12-b"),
        (("", " ", ""), "-", ""),
        ((" a ", "b"), None, "a b"),
        (("a", "", "b"), "", "ab"),
    ],
)
def test_join(values: tuple[str, ...], separator: str | None, expected: str) -> None:
    names = [f"F{i}" for i in range(len(values))]
    function: dict[str, Any] = {"function": "join", "fields": names}
    if separator is not None:
        function["separator"] = separator
    assert street_of(function, dict(zip(names, values, strict=True))) == expected


@pytest.mark.parametrize(
    ("replace", "template"),
    [
        ("$1", r"\g<1>"),
        ("$11", r"\g<11>"),
        ("${1}1", r"\g<1>1"),
        ("$b", "$b"),
        ("${b}b", "${b}b"),
        ("he$1$1o", r"he\g<1>\g<1>o"),
        ("$1-$2", r"\g<1>-\g<2>"),
        ("$number", "$number"),
    ],
)
def test_replacement_conversion(replace: str, template: str) -> None:
    assert convert_replacement(replace) == template


@pytest.mark.parametrize(
    ("pattern", "replace", "value", "expected"),
    [
        ("he(ll)o", "he$1$1o", "hello", "hellllo"),
        (r"^(\d+)\s+(.*)$", "$2", "12 Main St", "Main St"),
        (r"^(\d+)\s+(.*)$", None, "12 Main St", "12Main St"),
        (r"^(\d+)\s+(.*)$", "", "12 Main St", "12Main St"),  # replace "" is treated as absent
        (r"^(\d+)\s+(.*)$", None, "Main St", ""),  # no match
        (r"^\d{5}", None, "12345-6789", ""),  # no groups → always ''
        (r"\d{5}(-\d{4})?$", None, "12345-6789", "-6789"),  # only the group
        (r"(a)|(b)", None, "b", "b"),  # a group that did not take part counts as ''
        ("St", "Street", "Main St, St Paul", "Main Street, Street Paul"),  # every match, unanchored
        ("x", "y", "abc", "abc"),  # no match with replace: unchanged
        (r"(?P<n>\d+) (?P<s>.*)", r"${2} $1", "7 Elm", "Elm 7"),
        (r"(\d+)", r"<$1>\t", "a1", "a<1>\t"),  # backslash escapes are interpreted
        (r"(?i)main", "MAIN", "Main main", "MAIN MAIN"),
        (r"\d+(?= St)", "N", "12 St", "N St"),  # lookahead
        (r"(?<=#)\d+", "N", "#12", "#N"),  # lookbehind
        (r"^(.+?)\s*$", "$1", "Elm  ", "Elm"),  # lazy quantifier
        (r"^(\d+)", "[$1]", "٣٤ Elm", "[٣٤] Elm"),  # Unicode \d
        (r"^(?:0|(.*))$", "$1", "0", ""),  # us: au/qld/townsville_city_council.json
    ],
)
def test_regexp(pattern: str, replace: str | None, value: str, expected: str) -> None:
    function = {"function": "regexp", "field": "F", "pattern": pattern}
    if replace is not None:
        function["replace"] = replace
    assert street_of(function, {"F": value}) == expected


@pytest.mark.parametrize(
    ("pattern", "replace"),
    [
        (r"^(\d+)\s+(.*)$", "$2 ($1)"),
        (r"(a)|(b)", "[$1|$2]"),
        (r"(\w)(\w)?", "${2}{$1}$0"),
        (r"^STH (.+)", "State Highway $1"),
        (r"(?P<n>\d+)", "#$1#$n"),
        (r"x*", "-$0-"),  # empty matches
        (r"(\d)", r"\1\t$1"),  # backslashes: Python's own template code
        (r"(é)", "$1ü"),
    ],
)
def test_regexp_replacement_equals_python_re(pattern: str, replace: str) -> None:
    values = ["", "12 Main St", "ab ba", "STH 23", "x1y22", "café", "xx", "a\nb"]
    expected = [re.sub(pattern, convert_replacement(replace), value) for value in values]
    function = {"function": "regexp", "field": "F", "pattern": pattern, "replace": replace}
    result = Conform({"street": function}, "addresses").apply({"F": values}, len(values))
    assert result["street"] == expected


def test_regexp_dollar_name_stays_literal(corpus_sources: Path) -> None:
    conform = corpus_conform(corpus_sources, "au/sa/city_of_adelaide.json")
    result = one(conform, {"ADDRESS": "10 KING WILLIAM ST\nADELAIDE SA 5000"})
    assert result["number"] == "$number"
    assert result["street"] == "$street"
    assert result["postcode"] == "$postcode"
    assert one(conform, {"ADDRESS": "no match"})["number"] == "no match"


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("$1-$2-$3", ("7.0", "8", "9"), "7-8-9"),
        ("$1-$2-$3", ("7", "", "9"), "7-9"),
        ("$1$2-$3", ("12", "a", ""), "12a"),
        ("$1$2-$3", ("12", "", "3"), "12-3"),
        ("$1$2-$3", ("12", "a", "3"), "12a-3"),
        ("Unit $1, floor $2", ("4", ""), "Unit 4"),
        ("Unit $1, floor $2", ("", "2"), "Unit 2"),
        ("Unit $1, floor $2", ("", ""), ""),
        ("$1", (" 3.05 ",), "3.05"),
        ("$1", ("3.0",), "3"),
        ("$1$2", (" 12 ", " b "), "12b"),
        ("<$1|$0|$5>", ("a", "b"), "<a>"),  # $0 and $5 are skipped with the literal before them
        ("$1号$2栋", ("12", "3"), "12号3栋"),
        ("$1号$2栋", ("12", ""), "12栋"),
    ],
)
def test_format(template: str, values: tuple[str, ...], expected: str) -> None:
    names = [f"F{i}" for i in range(len(values))]
    function = {"function": "format", "fields": names, "format": template}
    assert street_of(function, dict(zip(names, values, strict=True))) == expected


def test_format_from_wuhan(corpus_sources: Path) -> None:
    conform = corpus_conform(corpus_sources, "cn/42/wuhan.json")
    result = one(conform, {"MPH": "15", "LPH": "2", "JLXMC": "解放大道", "SSQ": "江汉区"})
    assert (result["number"], result["street"], result["district"]) == ("15号2栋", "解放大道", "江汉区")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123 Main St", "123"),
        ("  123 Main St", "123"),
        ("123 1/2 Main St", "123 1/2"),
        ("123-1/2 Main St", "123-1/2"),
        ("69-15 51st Ave", "69-15"),
        ("123a Main St", "123a"),
        ("123-A Main St", "123-A"),
        ("3rd St", ""),
        ("123Main St", ""),
        ("123", ""),
        ("Main St", ""),
        ("", ""),
    ],
)
def test_prefixed_number(value: str, expected: str) -> None:
    assert one({"number": {"function": "prefixed_number", "field": "A"}}, {"A": value})["number"] == expected


@pytest.mark.parametrize(
    ("value", "units", "expected"),
    [
        ("123 Main St", False, "Main St"),
        ("3rd St", False, "3rd St"),
        ("123 1/2 Main St", False, "Main St"),
        ("69-15 51st Ave", False, "51st Ave"),
        ("123 Main St Apt 3", False, "Main St Apt 3"),
        ("", False, ""),
        ("123 Main St Apt 3", True, "Main St"),
        ("123 Main St #3", True, "Main St"),
        ("123 Main St # 3", True, "Main St"),
        ("123 Main St Unit 3", True, "Main St"),
        ("123 Main St Apartment 3", True, "Main St"),
        ("123 Main St Apt. 3", True, "Main St"),
        ("123 Main St Suite 3", True, "Main St"),
        ("123 Main St Ste 3", True, "Main St"),
        ("123 Main St Ste. 3", True, "Main St"),
        ("123 Main St Building 3", True, "Main St"),
        ("123 Main St Bldg 3", True, "Main St"),
        ("123 Main St Bldg. 3", True, "Main St"),
        ("123 Main St lot 3", True, "Main St"),
        ("Main St", True, "Main St"),
        ("123 Main St Apt", True, "Main St Apt"),  # a unit phrase needs text after it
        ("", True, ""),
    ],
)
def test_postfixed_street(value: str, units: bool, expected: str) -> None:
    function: dict[str, Any] = {"function": "postfixed_street", "field": "A"}
    if units:
        function["may_contain_units"] = True
    assert street_of(function, {"A": value}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Main St Unit 300", "Unit 300"),
        ("Main St # 300", "# 300"),
        ("Main St #300", "#300"),
        ("Main St Haste 300", ""),
        ("Main St Apt. 3", "Apt. 3"),
        ("Main St Suite 3 Apt 4", "Suite 3 Apt 4"),  # the first keyword runs to the end
        ("Main St", ""),
        ("", ""),
    ],
)
def test_postfixed_unit(value: str, expected: str) -> None:
    assert one({"unit": {"function": "postfixed_unit", "field": "A"}}, {"A": value})["unit"] == expected


@pytest.mark.parametrize(
    ("function", "value", "affix", "expected"),
    [
        ("remove_prefix", "12 Main St", "12", "Main St"),
        ("remove_prefix", "12   Main St", "12", "Main St"),
        ("remove_prefix", "Main St", "12", "Main St"),
        ("remove_prefix", "  Main St", "", "Main St"),  # empty p only removes leading spaces
        ("remove_prefix", "12\tMain", "12", "\tMain"),  # only U+0020
        ("remove_postfix", "Main St Oakland", "Oakland", "Main St"),
        ("remove_postfix", "Main St  ", "", "Main St  "),  # empty p: unchanged
        ("remove_postfix", "Main St", "Berkeley", "Main St"),
    ],
)
def test_remove_affix(function: str, value: str, affix: str, expected: str) -> None:
    spec = {"function": function, "field": "A", "field_to_remove": "B"}
    assert street_of(spec, {"A": value, "B": affix}) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [(("", "  ", " x "), " x "), (("a", "b"), "a"), (("", " "), "")],
)
def test_first_non_empty(values: tuple[str, ...], expected: str) -> None:
    names = [f"F{i}" for i in range(len(values))]
    function = {"function": "first_non_empty", "fields": names}
    assert street_of(function, dict(zip(names, values, strict=True))) == expected


def test_constant() -> None:
    assert one({"region": {"function": "constant", "value": "IL"}}, {"A": "x"})["region"] == "IL"


@pytest.mark.parametrize(
    ("value", "otherwise", "expected"),
    [
        ("MA", "residential", "primary"),
        ("ma", "residential", "residential"),
        (" MA", None, ""),
        ("X", None, ""),
    ],
)
def test_map(value: str, otherwise: str | None, expected: str) -> None:
    function: dict[str, Any] = {
        "function": "map",
        "field": "C",
        "mapping": {"MA": "primary", "AT": "secondary"},
    }
    if otherwise is not None:
        function["else"] = otherwise
    assert one({"classification": function}, {"C": value}, "centerlines")["classification"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("25", "40"),
        (" 25 ", "40"),
        ("25.0", "40"),
        ("0", "0"),
        ("", ""),
        ("fast", ""),
        ("inf", ""),
        ("nan", ""),
    ],
)
def test_mph_to_kph(value: str, expected: str) -> None:
    assert (
        one({"speed": {"function": "mph_to_kph", "field": "S"}}, {"S": value}, "centerlines")["speed"]
        == expected
    )


@pytest.mark.parametrize(
    ("value", "index", "expected"),
    [
        ("['A', 'B', 'C']", 1, "B"),
        ("['A', 'B', 'C']", -1, "C"),
        ("['A', 'B', 'C']", 3, ""),
        ("[1, 2]", 0, "1"),
        ("", 0, ""),
    ],
)
def test_get(value: str, index: int, expected: str) -> None:
    assert street_of({"function": "get", "field": "L", "index": index}, {"L": value}) == expected


# -- §7.6 chain -----------------------------------------------------------------------------------------------


def test_chain_fond_du_lac_variable_is_the_attribute(corpus_sources: Path) -> None:
    conform = corpus_conform(corpus_sources, "us/wi/fond_du_lac.json")
    row = {"NUMBER": "12", "PRI_NAME": "STH 23", "DIRECTION": "N", "TYPE": "", "JURISDICTI": "FO"}
    result = one(conform, row)
    assert (result["number"], result["street"], result["city"]) == ("12", "N State Highway 23", "Fond du Lac")
    row = {"NUMBER": "3", "PRI_NAME": "USH 41", "DIRECTION": "", "TYPE": "", "JURISDICTI": "CA"}
    result = one(conform, row)
    # The first CA rule wins; the later one no longer matches the rewritten value.
    assert (result["street"], result["city"]) == ("US Highway 41", "Calumet")
    result = one(conform, {"PRI_NAME": "MAIN", "DIRECTION": "", "TYPE": "ST", "JURISDICTI": "XX"})
    assert (result["street"], result["city"]) == ("MAIN ST", "XX")


def test_chain_yuma_reads_the_oa_slot(corpus_sources: Path) -> None:
    conform = corpus_conform(corpus_sources, "us/co/yuma.json")
    result = one(conform, {"TSC_Site_Address": "31570 COUNTY ROAD 35 YUMA 80759"})
    assert result["number"] == "31570"
    assert (result["street"], result["city"], result["postcode"]) == ("COUNTY ROAD 35", "YUMA", "80759")


@pytest.mark.parametrize(
    ("zip_code", "expected"),
    [
        ("19143", "19143"),
        ("191432010", "19143-2010"),
        ("19143-", "19143"),
        ("19143-2010", "19143-2010"),
        ("", ""),
    ],
)
def test_chain_philadelphia_reads_the_bare_variable(
    corpus_sources: Path, zip_code: str, expected: str
) -> None:
    conform = corpus_conform(corpus_sources, "us/pa/philadelphia.json")
    assert one(conform, {"zip_code": zip_code})["postcode"] == expected


def test_chain_bare_variable_starts_empty_even_when_nothing_wrote_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = {
        "function": "chain",
        "variable": "v",
        "functions": [{"function": "join", "fields": ["v", "A"], "separator": "|"}],
    }
    with caplog.at_level(logging.WARNING, logger="openaddr.conform"):
        assert one({"street": chain}, {"A": "a"})["street"] == "a"
    assert not caplog.records  # v exists (as ''), so it is not missing


def test_chain_bare_variable_starts_from_a_source_column_of_that_name() -> None:
    chain = {"function": "chain", "variable": "v", "functions": [{"function": "join", "fields": ["v", "A"]}]}
    assert one({"street": chain}, {"v": "source", "A": "a"})["street"] == "source a"


def test_chain_copies_only_non_empty_results_to_the_bare_variable() -> None:
    chain = {
        "function": "chain",
        "variable": "v",
        "functions": [
            {"function": "regexp", "field": "A", "pattern": "^(.*)$", "replace": "$1!"},
            {"function": "regexp", "field": "A", "pattern": "^(zzz)"},  # gives '' → v keeps "a!"
            {"function": "join", "fields": ["v", "oa:v"], "separator": "/"},
        ],
    }
    assert one({"street": chain}, {"A": "a"})["street"] == "a!"


def test_chain_oa_slot_holds_the_latest_step_even_when_empty() -> None:
    chain = {
        "function": "chain",
        "variable": "v",
        "functions": [
            {"function": "constant", "value": "x"},
            {"function": "regexp", "field": "v", "pattern": "^(y)"},  # ''
        ],
    }
    # The attribute takes oa:v after the last step, even though the bare v still holds "x".
    assert one({"street": chain}, {"A": "a"})["street"] == ""


@pytest.mark.parametrize(("variable", "bare"), [("oa:address", "address"), ("OA:address", "address")])
def test_chain_variable_loses_one_oa_prefix_not_characters(variable: str, bare: str) -> None:
    chain = {
        "function": "chain",
        "variable": variable,
        "functions": [
            {"function": "constant", "value": "v1"},
            {"function": "join", "fields": [bare, "oa:address"]},
        ],
    }
    assert one({"street": chain}, {"ddress": "wrong"})["street"] == "v1 v1"


def test_chain_without_variable_uses_the_attribute_name() -> None:
    chain = {
        "function": "chain",
        "functions": [
            {"function": "constant", "value": "Main"},
            {"function": "join", "fields": ["street", "T"]},
        ],
    }
    assert one({"street": chain}, {"T": "St"})["street"] == "Main St"


def test_chain_accepts_string_and_list_steps() -> None:
    chain = {"function": "chain", "variable": "w", "functions": ["A", ["w", "B"]]}
    assert one({"street": chain}, {"A": "Main", "B": "St"})["street"] == "Main St"


def test_chain_writes_are_visible_to_later_attributes() -> None:
    conform = {
        "street": {
            "function": "chain",
            "variable": "wip",
            "functions": [{"function": "constant", "value": "Elm"}],
        },
        "city": "wip",
        "unit": {"function": "join", "fields": ["oa:wip", "X"]},
    }
    result = one(conform, {"X": "1"})
    assert (result["street"], result["city"], result["unit"]) == ("Elm", "Elm", "Elm 1")


def test_chain_does_not_modify_the_callers_columns() -> None:
    columns = {"v": ["a", "b"], "A": ["1", "2"]}
    chain = {"function": "chain", "variable": "v", "functions": [{"function": "join", "fields": ["A", "v"]}]}
    result = Conform({"street": chain, "city": "v"}, "addresses").apply(columns, 2)
    assert result["street"] == ["1 a", "2 b"]
    assert result["city"] == [
        "1 a",
        "2 b",
    ]  # the plain reference reads the chain's copy, as batch-machine did
    assert columns == {"v": ["a", "b"], "A": ["1", "2"]}


# -- §7.7 accuracy --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "row", "expected"),
    [
        (1, {}, "1"),
        (5, {}, "5"),
        (0, {}, None),
        ({"function": "map", "field": "T", "mapping": {"P": 1, "C": 3}, "else": 5}, {"T": "C"}, "3"),
        ({"function": "map", "field": "T", "mapping": {"P": 1, "C": 3}, "else": 5}, {"T": "?"}, "5"),
        ("ACC", {"ACC": "2"}, "2"),
        ("ACC", {"ACC": " 4 "}, "4"),
        ("ACC", {"ACC": "4.0"}, "4"),
        ("ACC", {"ACC": "9"}, None),
        ("ACC", {"ACC": "high"}, None),
        ("ACC", {"ACC": ""}, None),
        ("NOPE", {"ACC": "2"}, None),
    ],
)
def test_accuracy(value: Any, row: dict[str, str], expected: str | None) -> None:
    assert one({"accuracy": value}, row or {"A": ""})["accuracy"] == expected


def test_accuracy_absent_is_null() -> None:
    assert one({"number": "A"}, {"A": "1"})["accuracy"] is None


# -- errors ---------------------------------------------------------------------------------------------------


def test_unknown_function_is_a_conform_error() -> None:
    with pytest.raises(ConformError, match=re.escape("Unknown conform function `split_words`")) as info:
        Conform(
            {"street": {"function": "split_words", "field": "A"}}, "addresses", label="xx/test addresses/a"
        )
    assert "xx/test addresses/a" in str(info.value)
    assert "street" in str(info.value)


def test_unknown_function_inside_a_chain_is_a_conform_error() -> None:
    chain = {"function": "chain", "variable": "v", "functions": [{"function": "advanced_merge"}]}
    with pytest.raises(ConformError, match="Unknown conform function `advanced_merge`.*city"):
        Conform({"city": chain}, "addresses")


@pytest.mark.parametrize(
    "function",
    [
        {"function": "regexp", "field": "A", "pattern": "(unclosed"},
        {"function": "regexp", "field": "A", "pattern": "(a)", "replace": "$2"},
        {"function": "regexp", "field": "A", "pattern": "(a)", "replace": r"\d"},
        {"function": "regexp", "field": "A"},
    ],
)
def test_invalid_regexp_names_the_attribute(function: dict[str, Any]) -> None:
    with pytest.raises(ConformError, match="postcode"):
        Conform({"postcode": function}, "addresses")


def test_unknown_layer_type() -> None:
    with pytest.raises(ConformError):
        Conform({}, "roads")


def test_every_corpus_conform_compiles(corpus_sources: Path) -> None:
    count = 0
    for path in sorted(corpus_sources.rglob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for layer, entries in document.get("layers", {}).items():
            for entry in entries:
                if isinstance(entry.get("conform"), dict):
                    Conform(entry["conform"], layer, label=str(path))
                    count += 1
    assert count > 4000


# -- batches --------------------------------------------------------------------------------------------------


def test_batch_results_equal_row_by_row_results(corpus_sources: Path) -> None:
    # 200 rows with many repeats take the distinct-value path; each row alone takes the direct path.
    conform = corpus_conform(corpus_sources, "us/wi/fond_du_lac.json")
    codes = ["FO", "CA", "WA", "CH", "XX", "RP", "EM", ""]
    names = ["STH 23", "USH 41", "CTH K", "MAIN", ""]
    rows = [
        {"NUMBER": str(i), "PRI_NAME": names[i % 5], "DIRECTION": "N" if i % 3 else "", "TYPE": "ST",
         "JURISDICTI": codes[i % 8]}
        for i in range(200)
    ]  # fmt: skip
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    batch = Conform(conform, "addresses").apply(columns, len(rows))
    for i, row in enumerate(rows):
        single = one(conform, row)
        assert {name: values[i] for name, values in batch.items()} == single


def test_schemas_are_planned_separately() -> None:
    conform = Conform(
        {"street": "st", "number": {"function": "prefixed_number", "field": "addr"}}, "addresses"
    )
    first = conform.apply({"ST": ["Elm"], "addr": ["1 Elm"]}, 1)
    second = conform.apply({"addr": ["2 Oak"], "st": ["Oak"], "ST": ["no"]}, 1)
    assert (first["street"], first["number"]) == (["Elm"], ["1"])
    assert (second["street"], second["number"]) == (["Oak"], ["2"])


def test_empty_batch() -> None:
    result = Conform(
        {"street": {"function": "join", "fields": ["A", "B"]}, "number": "N"}, "addresses"
    ).apply({"A": [], "B": [], "N": []}, 0)
    assert result["street"] == []
    assert result["number"] == []


# -- §3.6.3 ESRI field selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "layer", "expected"),
    [
        # batch-machine leaked oa:street_wip, oa:city_wip, oa:postcode_wip here
        ("us/co/yuma.json", "addresses", ["TSC_Site_Address"]),
        ("us/tx/galveston.json", "addresses", ["SITUS", "SITUS_NO"]),
        # field_to_remove counts (7.5.5 forgot it)
        ("ca/on/greater_sudbury.json", "addresses", ["ADDRESSNUMBER", "COMMUNITY", "FULLADDRESSTEXT"]),
        # constant contributes nothing; the chain variable is dropped
        ("us/il/effingham.json", "addresses", ["SiteAddress", "SiteCSZ", "SiteHouse"]),
        (
            "au/qld/townsville_city_council.json",
            "addresses",
            [
                "houseno",
                "housenosuffix",
                "housenoto",
                "locality",
                "postcode",
                "propertyno",
                "streetname",
                "unitno",
                "unitnosuffix",
            ],
        ),
        (
            "us/az/city_of_phoenix.json",
            "centerlines",
            ["ANNAME", "LTFROMADD", "LTTOADD", "OBJECTID", "RTFROMADD", "RTTOADD", "STREETCLASS"],
        ),
    ],
)
def test_esri_field_names_of_corpus_entries(
    corpus_sources: Path, path: str, layer: str, expected: list[str]
) -> None:
    assert esri_field_names(corpus_conform(corpus_sources, path, layer), layer) == expected


def test_esri_field_names_rules() -> None:
    conform = {
        "format": "geojson",
        "lon": "X",
        "lat": "Y",
        "number": "b",
        "street": ["a", "B", "b", ""],
        "postcode": "",
        "unit": {"function": "first_non_empty", "fields": ["u1", "u2"]},
        "city": {
            "function": "chain",
            "variable": "oa:c",
            "functions": [
                "c",
                ["Z", "oa:c"],
                {"function": "remove_prefix", "field": "Ä", "field_to_remove": "c"},
            ],
        },
        "region": {"function": "constant", "value": "IL"},
        "pid": "not-an-address-attribute",
    }
    # sorted by code point: upper case before lower case, "Ä" last
    assert esri_field_names(conform, "addresses") == ["B", "Z", "a", "b", "u1", "u2", "Ä"]
    assert esri_field_names(conform, "parcels") == ["not-an-address-attribute"]


@pytest.mark.parametrize(
    "conform", [None, {}, {"format": "geojson"}, {"region": {"function": "constant", "value": "x"}}]
)
def test_esri_field_names_empty_means_every_field(conform: dict[str, Any] | None) -> None:
    assert esri_field_names(conform, "addresses") == []
