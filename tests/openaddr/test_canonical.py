"""Canonical address rows, HASH and feature hashes (processing.md §8)."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid

import pytest

from openaddr.canonical import (
    ADDRESS_COLUMNS,
    OUTPUT_COLUMNS,
    address_columns,
    address_rows,
    canonical_coordinate,
    canonical_number,
    feature_hash,
    feature_hashes,
    random_seed,
)

# Values that exercise every branch of JSON string escaping.
TRICKY = [
    "",
    'say "hi"',
    "back\\slash",
    "tab\tnew\nline\rcr",
    "\x00\x01\x1f\x7f",
    "Curaçao",
    "東京都",
    "emoji 🏠 and 𝔘",
    "\u2028\u2029",
    "/slash%percent%s",
    " spaced ",
    "\ud800",  # a lone surrogate, as a broken decoder might leave it
]


def reference_hash(row: dict[str, str | None], seed: str) -> str:
    """7.5.5's HASH: SHA-1 over the seed and json.dumps of the sorted pairs (§8.2)."""
    payload = json.dumps(sorted(row.items()), separators=(",", ":"))
    return hashlib.sha1((seed + payload).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def test_columns() -> None:
    assert ADDRESS_COLUMNS == (
        "LON",
        "LAT",
        "NUMBER",
        "STREET",
        "UNIT",
        "CITY",
        "DISTRICT",
        "REGION",
        "POSTCODE",
        "ID",
    )
    assert OUTPUT_COLUMNS == ADDRESS_COLUMNS + ("HASH",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 324.0 ", "324"),
        ("324.5", "324.5"),
        ("0.0", "0"),
        ("0", "0"),
        ("INVALID", "INVALID"),
        ("", ""),
        (None, ""),
        ("12.0.0", "12.0"),  # one trailing .0 only
    ],
)
def test_canonical_number(value: str | None, expected: str) -> None:
    assert canonical_number(value) == expected


COORDINATES = [
    ("39.14285717777", "39.1428572"),
    ("-121.20", "-121.2"),
    (" 0.00", "0"),
    ("-0.00", "-0"),
    ("180.0", "180"),
    ("", ""),
    ("abc", "abc"),
    ("nan", "nan"),
    ("inf", "inf"),
    ("-Infinity", "-inf"),
    ("1_0", "10"),  # Python's float() accepts underscores
    ("0.00001234", "1.23e-05"),  # %g switches to exponent notation below 1e-4
    ("0.0001", "0.0001"),
    ("-0.00000004", "-0"),
    ("123456.123456789", "123456.123457"),
    ("1e400", "inf"),
    ("99999.99999995", "99999.9999999"),  # the binary value lies below the tie
    ("-99999.99999996", "-100000"),
    ("+1.5", "1.5"),
    ("\ud800", "\ud800"),
    (".5", "0.5"),
]


@pytest.mark.parametrize(("value", "expected"), COORDINATES)
def test_canonical_coordinate(value: str, expected: str) -> None:
    assert canonical_coordinate(value) == expected


@pytest.mark.parametrize("with_odd_texts", [False, True])
def test_coordinates_column_wise_match_the_definition(with_odd_texts: bool) -> None:
    # Without odd texts every row takes the vectorised path; a lone surrogate sends the column the slow way.
    rng = random.Random(7)
    texts = [value for value, _ in COORDINATES if with_odd_texts or value.isascii()]
    for _ in range(20000):
        kind = rng.random()
        if kind < 0.4:
            texts.append(repr(rng.uniform(-180, 180)))
        elif kind < 0.6:
            texts.append(f"{rng.uniform(-180, 180):.7f}5")  # ties in the text, near-ties in binary
        elif kind < 0.7:
            texts.append(f"{rng.randint(-99999, 99999)}.{rng.randint(0, 9999999):07d}5")
        elif kind < 0.8:
            texts.append(repr(struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]))
        elif kind < 0.9:
            texts.append(rng.choice(["5e-08", "-5e-08", "1.5e-07", "2.5e-07", "0.00015000005", "1.00000005"]))
        else:
            texts.append(repr(rng.uniform(-1e-3, 1e-3)))
    rows = address_rows(texts, list(reversed(texts)), {}, "seed")
    expected = [f"{round(float(t), 7):.12g}" if _parses(t) else t for t in texts]
    assert [row[0] for row in rows] == expected
    assert [row[1] for row in rows] == list(reversed(expected))


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_spec_payload_shape() -> None:
    row = {
        "LON": "-122.6",
        "LAT": "45.5",
        "NUMBER": "8",
        "STREET": "OAK ST",
        "UNIT": "",
        "CITY": "Springfield",
        "DISTRICT": None,
        "REGION": None,
        "POSTCODE": None,
        "ID": None,
    }
    spec = (
        '[["CITY","Springfield"],["DISTRICT",null],["ID",null],["LAT","45.5"],["LON","-122.6"],["NUMBER","8"],'
        '["POSTCODE",null],["REGION",null],["STREET","OAK ST"],["UNIT",""]]'
    )
    assert json.dumps(sorted(row.items()), separators=(",", ":")) == spec
    attrs = {"number": ["8"], "street": ["OAK ST"], "unit": [""], "city": ["Springfield"]}
    (result,) = address_rows(["-122.6"], ["45.5"], attrs, "fingerprint")
    assert result[:10] == tuple(row[key] for key in ADDRESS_COLUMNS)
    assert result[10] == hashlib.sha1(("fingerprint" + spec).encode()).hexdigest()[:16]


@pytest.mark.parametrize("seed", ["0123456789abcdef0123456789abcdef", "%s%%", "sëed"])
def test_hash_equals_json_dumps_on_tricky_values(seed: str) -> None:
    size = len(TRICKY) * 3
    values: list[str | None] = [*TRICKY, *reversed(TRICKY), *([None] * len(TRICKY))]
    rotated = values[5:] + values[:5]
    attrs = {
        "number": rotated,
        "street": values,
        "unit": list(reversed(values)),
        "city": values,
        "district": rotated,
        "region": [None] * size,
        "postcode": ["94612"] * size,
        "id": list(reversed(rotated)),
    }
    lon = ["-122.1", "abc", '"', "", "1e-05", "\\"] * (size // 6)
    rows = address_rows(lon, ["37.5"] * size, attrs, seed)
    for i, row in enumerate(rows):
        canonical = dict(zip(ADDRESS_COLUMNS, row[:10], strict=True))
        assert canonical["NUMBER"] == canonical_number(rotated[i])
        assert canonical["STREET"] == (values[i] or "").strip()
        assert canonical["CITY"] == values[i]
        assert canonical["REGION"] is None
        assert row[10] == reference_hash(canonical, seed)


def test_hash_on_a_large_batch_with_repeats() -> None:
    # Over 64 rows, repeated values are encoded once and constant columns are folded into the template.
    size = 500
    attrs = {
        "number": [str(i % 7) + ".0" for i in range(size)],
        "street": [TRICKY[i % len(TRICKY)] for i in range(size)],
        "city": ["Oakland"] * size,
        "district": [None] * size,
        "region": ["CA" if i % 2 else None for i in range(size)],
        "postcode": [str(i % 3) for i in range(size)],
        "id": [str(i) for i in range(size)],
    }
    lon = [repr(-122 - i / 997) for i in range(size)]
    lat = [repr(37 + i / 991) for i in range(size)]
    rows = address_rows(lon, lat, attrs, "s%d")
    assert len({row[10] for row in rows}) == size
    for row in rows:
        assert row[10] == reference_hash(dict(zip(ADDRESS_COLUMNS, row[:10], strict=True)), "s%d")


def test_null_versus_empty_changes_the_hash() -> None:
    (null,) = address_rows(["1"], ["2"], {"city": [None]}, "s")
    (empty,) = address_rows(["1"], ["2"], {"city": [""]}, "s")
    assert null[5] is None
    assert empty[5] == ""
    assert null[10] != empty[10]


def test_number_street_unit_canonicalised_others_unchanged() -> None:
    attrs = {
        "number": [" 324.0 "],
        "street": ["  Main  St "],
        "unit": [None],
        "city": [" Oakland "],
        "id": ["007.0"],
    }
    (row,) = address_rows(["-122.27"], ["37.80"], attrs, "s")
    assert row[:10] == ("-122.27", "37.8", "324", "Main  St", "", " Oakland ", None, None, None, "007.0")


def test_empty_batch() -> None:
    assert address_rows([], [], {"number": []}, "s") == []
    assert feature_hashes("s", {"pid": []}, []) == []


def test_feature_hash_payload() -> None:
    properties = {"pid": "42", "hash": "ignored", "height": ""}
    payload = '[["height",""],["pid","42"],["geometry","POINT (1 2)"]]'
    expected = hashlib.sha1(("seed" + payload).encode()).hexdigest()[:16]
    assert feature_hash("seed", properties, "POINT (1 2)") == expected
    null_payload = '[["height",""],["pid","42"],["geometry",null]]'
    assert (
        feature_hash("seed", properties, None)
        == hashlib.sha1(("seed" + null_payload).encode()).hexdigest()[:16]
    )


def test_feature_hashes_match_feature_hash() -> None:
    size = 200
    properties = {
        "id": [TRICKY[i % len(TRICKY)] for i in range(size)],
        "name": ["Main St"] * size,
        "oneway": ["yes" if i % 3 else "no" for i in range(size)],
    }
    wkts = [None if i % 5 == 0 else f"LINESTRING ({i} 0, {i} 1)" for i in range(size)]
    hashes = feature_hashes("se%ed", properties, wkts)
    for i in range(size):
        row = {key: column[i] for key, column in properties.items()}
        assert hashes[i] == feature_hash("se%ed", row, wkts[i])


def test_random_seed_is_a_uuid4() -> None:
    seed = random_seed()
    assert uuid.UUID(seed).version == 4
    assert seed != random_seed()


def test_parsed_coordinates_give_the_same_rows_as_their_texts() -> None:
    """A reader may hand over OA:x/OA:y already parsed (Batch.xy); the rows must not change."""
    import numpy as np

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-180, 180, 500), [0.0, -0.0, 1e-9, 123456.5, 0.12345675, np.nan]])
    y = np.concatenate([rng.uniform(-90, 90, 500), [0.0, 0.0, 2.5, 1.0, np.nan, 3.0]])
    ok = np.isfinite(x) & np.isfinite(y)
    lon = [repr(float(v)) if k else "" for v, k in zip(x, ok, strict=True)]
    lat = [repr(float(v)) if k else "" for v, k in zip(y, ok, strict=True)]
    attrs = {"number": ["1"] * len(lon), "street": ["Main St"] * len(lon)}
    xy = (np.where(ok, x, np.nan), np.where(ok, y, np.nan))
    parsed = address_columns(lon, lat, attrs, "seed", xy)
    assert parsed.columns == address_columns(lon, lat, attrs, "seed").columns
    assert parsed.columns[0][-2:] == ["", ""]
