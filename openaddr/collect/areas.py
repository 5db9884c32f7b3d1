"""The areas of the collections and which sources belong to them (machine-ci.md §8 "Areas").

A source is named by ``<source>``, its path below ``sources/`` without ``.json`` (``us/ca/alameda``). The rules are
7.5.5's ``collect.py`` ones, on that name only:

* a US state ``st`` matches when ``<source>`` equals ``us/st`` or ``us-st``, or starts with ``us/st.``,
  ``us/st/``, ``us-st.`` or ``us-st-`` (so ``us/ca/alameda`` and ``us-ca-statewide`` are Californian, while
  ``usa``, ``us/cal`` and ``us/ca-x`` are not);
* a country ``cc`` matches when ``<source>`` equals ``cc`` or starts with ``cc.``, ``cc/`` or ``cc-`` (``gb/x``
  and ``gb-x`` are British, ``gbr/x`` is not).

``global`` takes every source; a source may belong to no regional area at all (``us/x``, ``ru/…``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

#: US states of each US area (§8).
US_STATES: dict[str, tuple[str, ...]] = {
    "us_northeast": ("ct", "me", "ma", "nh", "ri", "vt", "nj", "ny", "pa"),
    "us_midwest": ("il", "in", "mi", "oh", "wi", "ia", "ks", "mn", "mo", "ne", "nd", "sd"),
    "us_south": (
        "de",
        "fl",
        "ga",
        "md",
        "nc",
        "sc",
        "va",
        "dc",
        "wv",
        "al",
        "ky",
        "ms",
        "ar",
        "la",
        "ok",
        "tx",
        "tn",
    ),  # fmt: skip
    "us_west": ("az", "co", "id", "mt", "nv", "nm", "ut", "wy", "ak", "ca", "hi", "or", "wa"),
}

#: Countries of each other area (§8; ``asia`` includes Oceania and Iceland, as 7.5.5's did).
COUNTRIES: dict[str, tuple[str, ...]] = {
    "europe": (
        "be", "bg", "cz", "dk", "de", "ee", "ie", "el", "es", "fr", "hr", "it", "cy", "lv", "lt", "lu", "hu",
        "mt", "nl", "at", "pl", "pt", "ro", "si", "sk", "fi", "se", "uk", "gr", "gb",
    ),
    "asia": (
        "af", "am", "az", "bh", "bd", "bt", "bn", "kh", "cn", "cx", "cc", "io", "ge", "hk", "in", "id", "ir",
        "iq", "il", "jp", "jo", "kz", "kp", "kr", "kw", "kg", "la", "lb", "mo", "my", "mv", "mn", "mm", "np",
        "om", "pk", "ph", "qa", "sa", "sg", "lk", "sy", "tw", "tj", "th", "tr", "tm", "ae", "uz", "vn", "ye",
        "ps",
        # Oceania
        "as", "au", "nz", "ck", "fj", "pf", "gu", "ki", "mp", "mh", "fm", "um", "nr", "nc", "nu", "nf", "pw",
        "pg", "sb", "tk", "to", "tv", "vu", "wf", "ws",
        "is",
    ),
    "south_america": ("ar", "bo", "br", "cl", "co", "ec", "gf", "gy", "pe", "py", "sr", "uy", "ve"),
    "north_america": (
        "ai", "ag", "aw", "bs", "bb", "bz", "bm", "bq", "vg", "ca", "ky", "cr", "cu", "cw", "dm", "do", "sv",
        "gl", "gd", "gp", "gt", "ht", "hn", "jm", "mq", "mx", "pm", "ms", "kn", "ni", "pa", "pr", "sx", "lc",
        "vc", "tt", "tc", "vi",
    ),
}  # fmt: skip

#: Every area, in the order of the ``zips.collection`` enum (``openaddr.db.schema.COLLECTIONS``).
AREAS = ("global", *US_STATES, "europe", "asia", "south_america", "north_america")


def is_us_state(source: str, state: str) -> bool:
    """Whether ``<source>`` is a source of the US state ``state`` (two lower-case letters)."""
    for prefix in (f"us/{state}", f"us-{state}"):
        if source == prefix:
            return True
    return source.startswith((f"us/{state}.", f"us/{state}/", f"us-{state}.", f"us-{state}-"))


def is_country(source: str, country: str) -> bool:
    """Whether ``<source>`` is a source of the country ``country`` (two lower-case letters)."""
    return source == country or source.startswith((f"{country}.", f"{country}/", f"{country}-"))


def in_area(source: str, area: str) -> bool:
    """Whether ``<source>`` belongs to ``area``.

    :raises KeyError: for an unknown area
    """
    if area == "global":
        return True
    if area in US_STATES:
        return any(is_us_state(source, state) for state in US_STATES[area])
    return any(is_country(source, country) for country in COUNTRIES[area])


def areas_of(source: str, areas: Iterable[str] = AREAS) -> list[str]:
    """The areas ``<source>`` belongs to, ``global`` first, in the order of ``areas``."""
    return [area for area in areas if in_area(source, area)]


def source_name(source_path: str) -> str:
    """``<source>`` of a source path: ``sources/us/ca/alameda.json`` → ``us/ca/alameda``.

    :raises ValueError: when the path is not ``sources/….json``
    """
    if not source_path.startswith("sources/") or not source_path.endswith(".json"):
        raise ValueError(f"not a source path: {source_path!r}")
    return source_path[len("sources/") : -len(".json")]
