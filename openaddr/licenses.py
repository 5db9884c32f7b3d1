"""Licence, attribution and share-alike of a layer entry, as the state records them (processing.md §11).

The entry's ``license`` is a string or an open object (``url``, ``text``, ``attribution``, ``attribution name``,
``share-alike``); old entries also carry a top-level ``attribution`` string. Misspelled keys (``attibrution name``
appears in the corpus) are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_TRUE_WORDS = frozenset({"y", "yes", "t", "true"})
_FALSE_WORDS = frozenset({"", "n", "no", "f", "false"})


@dataclass(frozen=True)
class LicenseInfo:
    """The normalised licence fields of one layer entry.

    :param license: licence text, ``"<text> (<url>)"``, the URL alone, or None
    :param attribution_required: whether users must credit the publisher (None: unknown)
    :param attribution_name: whom to credit, or None
    :param share_alike: whether derived data must keep the licence (None: unknown)
    """

    license: str | None
    attribution_required: bool | None
    attribution_name: str | None
    share_alike: bool | None


def flag_text(flag: bool | None) -> str:
    """A flag as the state writes it: ``"true"``, ``"false"`` or ``""`` for None (7.5.5's ``boolstr``)."""
    if flag is None:
        return ""
    return "true" if flag else "false"


def _text(value: Any) -> str:
    """Python's text of a scalar, as 7.5.5 produced it (``False`` → ``"False"``)."""
    return value if isinstance(value, str) else str(value)


def _license_text(license: Any) -> str | None:
    if license is None:
        return None
    if not isinstance(license, Mapping):
        return _text(license)
    text, url = license.get("text"), license.get("url")
    if text is not None and url is not None:
        return f"{_text(text)} ({_text(url)})"
    if url is not None:
        return _text(url)
    if text is not None:
        return _text(text)
    return None


def _parse_flag(value: Any) -> bool | None:
    """``true`` or y/yes/t/true (any case) → True; ``false``, null, "", n/no/f/false → False; else None."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    if isinstance(value, str):
        word = value.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _attribution(license: Any, legacy: Any) -> tuple[bool | None, str | None]:
    # 1. The legacy top-level ``attribution``.
    flag: bool | None
    name: str | None
    if isinstance(legacy, str) and legacy:
        flag, name = True, legacy
    elif not legacy:  # missing, empty, false (or another falsy value)
        flag, name = False, None
    else:
        flag, name = True, _text(legacy)
    if isinstance(license, Mapping):
        # 2. ``attribution name``: any non-string counts by its text, so false names "False" (as in 7.5.5).
        if "attribution name" in license:
            value = license["attribution name"]
            if not isinstance(value, str):
                flag, name = True, _text(value)
            elif value:
                flag, name = True, value
        # 3. ``attribution`` sets the flag, possibly to null.
        if "attribution" in license:
            value = license["attribution"]
            flag = value if value is None or isinstance(value, bool) else _parse_flag(value)
    # 4. A name implies attribution when nothing said otherwise; 5. no attribution, no name.
    if flag is None and name is not None:
        flag = True
    if flag is False:
        name = None
    return flag, name


def _share_alike(license: Any) -> bool | None:
    if not isinstance(license, Mapping) or "share-alike" not in license:
        return None
    return _parse_flag(license["share-alike"])


def normalise_license(entry: Mapping[str, Any]) -> LicenseInfo:
    """Normalise the ``license`` and legacy ``attribution`` of a layer entry (processing.md §11).

    :param entry: a layer entry (``LayerEntry.data``)
    :return: the four state fields; render flags with :func:`flag_text`
    """
    license = entry.get("license")
    flag, name = _attribution(license, entry.get("attribution"))
    return LicenseInfo(
        license=_license_text(license),
        attribution_required=flag,
        attribution_name=name,
        share_alike=_share_alike(license),
    )
