"""The quality gate (:mod:`openaddr.quality`, machine-ci.md §10): its rules on generated run pairs, and its baseline
(the previous accepted, merged run of the entry) on SQLite and on the real PostgreSQL.

Each rule is checked on both sides of its threshold: it fires just past it and not at it. The statistics are
``stats.json`` documents (processing.md §9.5) built here from explicit figures.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from openaddr.db.results import latest_runs, previous_accepted_run
from openaddr.db.runs import insert_run
from openaddr.db.schema import runs
from openaddr.quality import OUTSIDE_COVERAGE_KEY, Baseline, gate_warning, review, warning_text

if TYPE_CHECKING:
    from openaddr.quality import Finding

PATH = "sources/zz/gate.json"
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def stats(
    count: int,
    *,
    number: int | None = None,
    street: int | None = None,
    invalid: int = 0,
    null_island: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A ``stats.json`` of an address layer: every attribute filled unless told otherwise."""
    return {
        "count": count,
        "filled": {
            "number": count if number is None else number,
            "street": count if street is None else street,
        },
        "bounds": [-110.0, 44.0, -109.0, 45.0],
        "invalid_coordinates": invalid,
        "null_island": null_island,
        **extra,
    }


def rules(findings: list[Finding]) -> list[str]:
    return [finding.rule for finding in findings]


def previous(**figures: Any) -> Baseline:
    return Baseline(17, stats(**figures))


# -- the rules ---------------------------------------------------------------------------------------------------


def test_a_run_like_its_previous_passes() -> None:
    assert review(stats(1000), layer="addresses", previous=previous(count=1000)) == []
    assert warning_text([]) is None


def test_count_below_90_percent_of_the_previous() -> None:
    assert rules(review(stats(900), layer="addresses", previous=previous(count=1000))) == []
    [finding] = review(stats(899), layer="addresses", previous=previous(count=1000))
    assert finding.rule == "count"
    assert finding.text == "Address count dropped 10.1 % (1,000 → 899) against run 17"
    [finding] = review(stats(812), layer="addresses", previous=previous(count=1002))
    assert finding.text == "Address count dropped 19 % (1,002 → 812) against run 17"
    # Other layer types are counted by their own word; growth never warns.
    [finding] = review(stats(1, number=0, street=0), layer="buildings", previous=previous(count=10))
    assert finding.text == "Building count dropped 90 % (10 → 1) against run 17"
    assert review(stats(5000), layer="addresses", previous=previous(count=1000)) == []


def test_fill_below_90_percent_of_the_previous_fill() -> None:
    # Previous: 800 of 1,000 numbers (80 %); 90 % of it is 72 %.
    before = previous(count=1000, number=800)
    assert rules(review(stats(1000, number=720), layer="addresses", previous=before)) == []
    [finding] = review(stats(1000, number=719), layer="addresses", previous=before)
    assert finding.rule == "fill"
    assert finding.text == "Number fill dropped from 80 % to 71.9 % (719 of 1,000 rows; run 17: 800 of 1,000)"
    # The rate counts, not the number of filled values: fewer rows with every street filled pass the fill rule.
    assert rules(review(stats(950, street=950), layer="addresses", previous=previous(count=1000))) == []
    [finding] = review(stats(2000, street=1799), layer="addresses", previous=previous(count=1000))
    assert (finding.rule, finding.text.split(" fill")[0]) == ("fill", "Street")
    # Non-address layers have no number or street to watch.
    assert review(stats(1000, number=1), layer="parcels", previous=previous(count=1000)) == []


def test_every_number_or_street_empty() -> None:
    assert review(stats(10, number=1), layer="addresses") == []
    [finding] = review(stats(10, number=0), layer="addresses")
    assert (finding.rule, finding.text) == ("empty", "Every number is empty (10 rows)")
    # Against a previous run, the empty rule says it, not the fill rule as well.
    found = review(stats(10, number=0, street=0), layer="addresses", previous=previous(count=10))
    assert [(f.rule, f.text) for f in found] == [
        ("empty", "Every number is empty (10 rows)"),
        ("empty", "Every street is empty (10 rows)"),
    ]
    assert review(stats(10, number=0), layer="buildings") == []


def test_no_valid_coordinates() -> None:
    assert review(stats(10, invalid=9), layer="addresses") == []
    [finding] = review(stats(10, invalid=10), layer="addresses")
    assert (finding.rule, finding.text) == ("coordinates", "No row has valid coordinates (10 rows)")
    assert rules(review(stats(10, number=0, invalid=10), layer="parcels")) == ["coordinates"]


def test_more_than_1_percent_at_null_island() -> None:
    assert review(stats(1000, null_island=10), layer="addresses") == []
    [finding] = review(stats(1000, null_island=11), layer="addresses")
    assert (finding.rule, finding.text) == ("null_island", "11 of 1,000 rows (1.1 %) are at (0, 0)")


def test_the_coverage_hook_fires_when_a_count_of_rows_outside_is_given() -> None:
    # Nothing computes the count yet (it needs the shipped boundaries); the rule is ready for it.
    assert review(stats(1000), layer="addresses") == []
    assert review(stats(1000, **{OUTSIDE_COVERAGE_KEY: 10}), layer="addresses") == []
    [finding] = review(stats(1000, **{OUTSIDE_COVERAGE_KEY: 11}), layer="addresses")
    assert (finding.rule, finding.text) == (
        "coverage",
        "11 of 1,000 rows (1.1 %) are outside the source's coverage",
    )


def test_a_first_run_meets_the_absolute_rules_only() -> None:
    assert review(stats(1), layer="addresses", previous=None) == []
    found = review(stats(100, number=0, null_island=50), layer="addresses", previous=None)
    assert rules(found) == ["empty", "null_island"]
    assert warning_text(found) == "Every number is empty (100 rows); 50 of 100 rows (50 %) are at (0, 0)"


def test_several_rules_are_all_named() -> None:
    found = review(stats(500, street=100, invalid=500), layer="addresses", previous=previous(count=1000))
    assert rules(found) == ["count", "fill", "coordinates"]


def test_hostile_statistics_are_not_judged() -> None:
    assert review({}, layer="addresses") == []
    assert review({"count": "many"}, layer="addresses") == []
    assert review({"count": 10, "filled": None, "null_island": -4}, layer="addresses") == []
    assert review(stats(10), layer="addresses", previous=Baseline(3, {"count": 0})) == []


# -- the baseline ------------------------------------------------------------------------------------------------


def record(
    db: sa.Connection,
    hours: int,
    count: int | None,
    *,
    path: str = PATH,
    status: bool = True,
    merged: bool | None = True,
    warning: str | None = None,
    accepted: bool | None = None,
    with_stats: bool = True,
) -> int:
    """A recorded run of the entry ``path`` addresses/primary, ``hours`` after T0."""
    run_id = insert_run(db, source_path=path, source_layer="addresses", layer_name="primary", now=T0)
    db.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(
            status=status,
            is_merged=merged,
            warning=warning,
            accepted=accepted,
            address_count=count,
            stats=stats(count) if count is not None and with_stats else None,
            datetime_tz=T0 + dt.timedelta(hours=hours),
        )
    )
    return run_id


def baseline_id(db: sa.Connection, path: str = PATH, exclude: int | None = None) -> int | None:
    found = previous_accepted_run(
        db, source_path=path, source_layer="addresses", layer_name="primary", exclude_run_id=exclude
    )
    return None if found is None else int(found["id"])


def test_the_baseline_is_the_newest_accepted_merged_success(db: sa.Connection) -> None:
    assert baseline_id(db) is None  # the entry's first run
    good = record(db, 0, 1000)
    assert baseline_id(db) == good
    record(db, 1, 1200, status=False)  # a failure
    record(db, 2, 1300, merged=False)  # a pull request's run, not merged
    record(db, 3, 1400, merged=None)  # merge not yet known
    record(db, 4, 10, warning="Address count dropped 99 %")  # held
    record(db, 5, 10, warning="Address count dropped 99 %", accepted=False)  # rejected
    record(db, 6, None)  # skipped: no count
    record(db, 1, 1000, path="sources/zz/other.json")  # another entry
    assert baseline_id(db) == good
    released = record(
        db, 7, 500, warning="Address count dropped 50 %", accepted=True
    )  # accepted by a maintainer
    assert baseline_id(db) == released
    assert baseline_id(db, exclude=released) == good


def test_gate_warning_compares_with_the_baseline(db: sa.Connection) -> None:
    def judge(run_id: int, figures: dict[str, Any]) -> str | None:
        return gate_warning(
            db, run_id, figures, source_path=PATH, source_layer="addresses", layer_name="primary"
        )

    first = record(
        db, 0, 1000, with_stats=False
    )  # an old run without stats: its address count is the baseline
    second = record(db, 1, 850)
    assert judge(second, stats(850)) == f"Address count dropped 15 % (1,000 → 850) against run {first}"
    assert judge(first, stats(1000)) is None  # the run itself is never its own baseline
    assert judge(second, None) is None  # no stats.json: not judged
    # Held, the second run is no baseline; once the gate has held it, latest_runs skips it.
    db.execute(sa.update(runs).where(runs.c.id == second).values(warning=judge(second, stats(850))))
    third = record(db, 2, 900)
    assert judge(third, stats(900)) is None
    mine = [run["id"] for run in latest_runs(db, source_path=PATH)]
    assert mine == [third]
    db.execute(sa.update(runs).where(runs.c.id == third).values(warning="held"))
    assert [run["id"] for run in latest_runs(db, source_path=PATH)] == [first]
