"""The quality gate (machine-ci.md §10): a successful run compared with the previous accepted, merged run of its entry.

A run that breaks a rule is **held**: its warning text is stored in ``runs.warning``, its status stays true and
``accepted`` stays null, so latest URLs, collections and the health page keep using the previous run
(:func:`openaddr.db.results.accepted`) until a maintainer accepts or rejects it.

The rules read the run's ``stats.json`` (processing.md §9.5), which the conform computes while it writes the outputs:

* **count**: below 90 % of the previous run's count;
* **fill**: the ``number`` or ``street`` fill rate (non-empty values per row) below 90 % of the previous run's rate
  (address layers);
* **empty**: every ``number`` or every ``street`` empty (address layers);
* **coordinates**: no row with valid coordinates;
* **null island**: more than 1 % of rows at (0, 0) (openaddresses/openaddresses#5008);
* **coverage** (issue 14, not in §10 yet): more than 1 % of rows outside the source's coverage, read from the
  ``outside_coverage`` count (:data:`OUTSIDE_COVERAGE_KEY`) that :mod:`openaddr.coverage` adds to the stats: rows
  outside the source's country (Natural Earth 1:50m, shipped with the preview) grown by 0.1°. A run whose source
  names no country that can be checked has no such count, and the rule does not apply.

The first run of an entry has no previous run: only the absolute rules (empty, coordinates, null island, coverage)
apply. Thresholds are compared in integers, so a rule fires exactly past its threshold and not at it.

:func:`review` is the pure rule set; :func:`gate_warning` reads the previous run and returns the text to store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from openaddr.coverage import OUTSIDE_COVERAGE_KEY as OUTSIDE_COVERAGE_KEY
from openaddr.db.results import previous_accepted_run

if TYPE_CHECKING:
    from collections.abc import Mapping

    from openaddr.db.runs import Bind

log = logging.getLogger(__name__)

#: A count or fill rate below this share of the previous run's breaks the gate.
KEEP_SHARE = Fraction(9, 10)
#: More than this share of rows at (0, 0), or outside the coverage, breaks the gate.
STRAY_SHARE = Fraction(1, 100)
#: Address attributes whose fill the gate watches.
FILLED_ATTRIBUTES = ("number", "street")
#: What a layer type's rows are called in warnings.
_ROWS = {"addresses": "Address", "parcels": "Parcel", "buildings": "Building", "centerlines": "Centerline"}


@dataclass(frozen=True)
class Baseline:
    """The previous accepted, merged, successful run of an entry: its id and its statistics."""

    run_id: int
    stats: Mapping[str, Any]


@dataclass(frozen=True)
class Finding:
    """One broken rule: its name (``count``, ``fill``, ``empty``, ``coordinates``, ``null_island``, ``coverage``)
    and a human-readable text naming the figures."""

    rule: str
    text: str


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _count(stats: Mapping[str, Any]) -> int | None:
    return _number(stats.get("count"))


def _filled(stats: Mapping[str, Any], name: str) -> int | None:
    filled = stats.get("filled")
    return _number(filled.get(name)) if isinstance(filled, dict) else None


def _percent(share: Fraction) -> str:
    """A share as a percentage of three significant digits at most: ``81``, ``10.1``, ``0.5``."""
    return f"{float(share * 100):.3g} %"


def _thousands(value: int) -> str:
    return f"{value:,}"


def review(stats: Mapping[str, Any], *, layer: str | None, previous: Baseline | None = None) -> list[Finding]:
    """The rules a run's statistics break, in the order of §10 (empty when the run passes).

    :param stats: the run's ``stats.json``
    :param layer: the layer type (``addresses``, …); fill and empty rules apply to address layers only
    :param previous: the previous accepted, merged, successful run of the entry, or None (the first run)
    """
    findings: list[Finding] = []
    count = _count(stats)
    if count is None:
        return findings
    addresses = layer == "addresses"
    before = previous.stats if previous is not None else None
    before_count = _count(before) if before is not None else None

    if previous is not None and before_count and count < KEEP_SHARE * before_count:
        drop = 1 - Fraction(count, before_count)
        findings.append(
            Finding(
                "count",
                f"{_ROWS.get(layer or '', 'Row')} count dropped {_percent(drop)} "
                f"({_thousands(before_count)} → {_thousands(count)}) against run {previous.run_id}",
            )
        )
    if addresses and previous is not None and before is not None and before_count and count:
        for name in FILLED_ATTRIBUTES:
            filled, filled_before = _filled(stats, name), _filled(before, name)
            if filled is None or not filled_before:
                continue
            rate, rate_before = Fraction(filled, count), Fraction(filled_before, before_count)
            if filled and rate < KEEP_SHARE * rate_before:
                findings.append(
                    Finding(
                        "fill",
                        f"{name.capitalize()} fill dropped from {_percent(rate_before)} to {_percent(rate)} "
                        f"({_thousands(filled)} of {_thousands(count)} rows; run {previous.run_id}: "
                        f"{_thousands(filled_before)} of {_thousands(before_count)})",
                    )
                )
    if addresses and count:
        for name in FILLED_ATTRIBUTES:
            if _filled(stats, name) == 0:
                findings.append(Finding("empty", f"Every {name} is empty ({_thousands(count)} rows)"))
    invalid = _number(stats.get("invalid_coordinates"))
    if count and invalid is not None and invalid >= count:
        findings.append(Finding("coordinates", f"No row has valid coordinates ({_thousands(count)} rows)"))
    for key, rule, where in (
        ("null_island", "null_island", "at (0, 0)"),
        (OUTSIDE_COVERAGE_KEY, "coverage", "outside the source's coverage"),
    ):
        stray = _number(stats.get(key))
        if count and stray is not None and stray > STRAY_SHARE * count:
            findings.append(
                Finding(
                    rule,
                    f"{_thousands(stray)} of {_thousands(count)} rows ({_percent(Fraction(stray, count))}) "
                    f"are {where}",
                )
            )
    return findings


def warning_text(findings: list[Finding]) -> str | None:
    """The text stored in ``runs.warning``: the findings' texts joined by ``; ``, or None when there are none."""
    return "; ".join(finding.text for finding in findings) or None


def gate_warning(
    bind: Bind,
    run_id: int,
    stats: Mapping[str, Any] | None,
    *,
    source_path: str,
    source_layer: str | None,
    layer_name: str | None,
) -> str | None:
    """The warning of a successful run about to be recorded (§5 step 5, §10), or None when it passes.

    Reads the previous accepted, merged, successful run of the same path, layer and name (one query). A run without
    statistics (none were written) is not judged.

    :param run_id: the run being recorded (left out of the baseline)
    :param stats: its ``stats.json``
    """
    if not isinstance(stats, dict):
        return None
    previous = previous_accepted_run(
        bind, source_path=source_path, source_layer=source_layer, layer_name=layer_name, exclude_run_id=run_id
    )
    baseline = None
    if previous is not None:
        before = previous["stats"] if isinstance(previous["stats"], dict) else {}
        if _count(before) is None and _number(previous["address_count"]) is not None:
            before = {**before, "count": previous["address_count"]}
        baseline = Baseline(previous["id"], before)
    text = warning_text(review(stats, layer=source_layer, previous=baseline))
    if text:
        log.warning(
            "Run %d of %s %s/%s is held by the quality gate: %s",
            run_id,
            source_path,
            source_layer,
            layer_name,
            text,
        )
    return text
