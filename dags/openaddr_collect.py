"""
### OpenAddresses collect: the regional collections users download

Runs whenever the batch DAG completes a set (the asset `openaddr://sets/latest`), over the latest completed set of
the repository the batch reads (variable `openaddr_sources`).

**plan_collect** fixes what the run collects: the latest completed set (its id) and the collection time, so
every area sees the same set and dates its files alike. It takes, for each path, layer and name of that set, the
newest run of all time that succeeded, is merged (or not known to be unmerged) and is not held by the quality
gate, else the newest failed run (machine-ci.md §8).

**collect_area** is mapped over the nine areas (`global` first, the largest), so several workers build at once;
each builds and publishes the collections of its area: the **2 address collections**
`collections/openaddr-collected-<area>.zip` and `…-<area>-sa.zip` (share-alike sources) and the **8 line-delimited
GeoJSON collections** `collections/openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip` (addresses, buildings,
parcels, centerlines) and the **8 GeoParquet collections** `collections/openaddr-collected-<area>[-sa]-<layer>.parquet`
(GeoParquet 1.1: WKB `geometry`, `bbox` covering column, `geo` metadata; each row with its `source_path`,
`source_layer`, `layer_name` and `run_id`; rows sorted along a Hilbert curve so that readers skip row groups by
their bbox statistics). The areas are `global`, `us_northeast`, `us_midwest`, `us_south`, `us_west`, `europe`,
`asia`, `south_america` and `north_america`: 18 address zips, 72 GeoJSON collections and 72 GeoParquet files in all. Each address zip
holds `README.txt`, every run zip's members (CSVs rewritten to the 11 output columns, rows with invalid coordinates
dropped), a 0.1° summary CSV + VRT per CSV, and `LICENSE.txt`; a GeoJSON collection holds each run's
`out.geojson` as member `<source>/<name>.geojsonl`. The zips are streamed to the scratch folder, uploaded under a
staging key (S3 multipart, 3 tries a part) and then moved to their stable names, so a public URL never points at
a half-written file.

**dedupe_collections** then builds the 18 `-processed` collections from the published address collections (the
dedupe needs `global` and every region at once; see below), and **record_collections** records the collections of
every area and the processed ones in the `zips` table in one transaction (every earlier row not current, the new
ones current; each with its `format`: `zip`, `geojsonl` or `parquet`, and `layer`) and returns each collection's
URL, format, size and row count.

**The dedupe** (on here): the 18 `collections/openaddr-collected-<area>[-sa]-processed.zip` hold the same members
without the address rows another source in the collection also holds (same normalised number, street and unit
within 10 m; the row with a postcode, else of the source covering the smaller area, wins), with `dedupe-report.csv`
counting the rows dropped per kept and dropped source. Sharded by 0.01° cells on disk, so memory stays flat.

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from openaddr_airflow.alerts import FailedRunNotifier
from openaddr_airflow.operators import BATCH_QUEUE, DEFAULT_ARGS
from openaddr_airflow.tags import Tag

#: The asset the batch DAG's complete_set emits (a test checks both files name the same URI).
LATEST_SET = Asset("openaddr://sets/latest")


@task
def plan_collect() -> dict:
    """The set to collect (the latest completed one) and the collection time every area uses."""
    from openaddr.collect import repository_of
    from openaddr.db.collect import collect_set
    from openaddr.db.runs import utcnow
    from openaddr_airflow import config

    owner, repository = repository_of(config.sources_location())
    with config.machine_engine() as engine:
        found = collect_set(engine, "latest", owner=owner, repository=repository)
    return {"set_id": int(found["id"]), "now": utcnow().isoformat(), "owner": owner, "repository": repository}


@task(map_index_template="{{ area }}")
def collect_area(plan: dict, area: str) -> dict:
    """Build and publish the collections of one area (not recorded yet).

    :return: the area, the runs it took and each collection's fields
    """
    import datetime as dt

    from openaddr import arrow_pool

    arrow_pool.choose(arrow_pool.COLLECT)  # before pyarrow loads (openaddr.arrow_pool)
    from openaddr.collect import collect
    from openaddr_airflow import config

    arrow_pool.check(arrow_pool.COLLECT)
    with config.machine_engine() as engine:
        result = collect(
            engine,
            config.machine_storage(),
            plan["set_id"],
            owner=plan["owner"],
            repository=plan["repository"],
            work_dir=config.scratch_folder(),
            now=dt.datetime.fromisoformat(plan["now"]),
            areas=[area],
            record=False,
        )
    return {
        "area": area,
        "runs": len(result.runs),
        "dropped_rows": sum(result.dropped.values()),
        "members": result.members if area == "global" else {},  # the dedupe's tie-break
        "collections": [c.as_dict() for c in result.collections],
    }


@task
def dedupe_collections(plan: dict, built: list[dict]) -> dict:
    """Build and publish the 18 ``-processed`` collections from the published address collections (not recorded).

    :return: each processed collection's fields and the rows dropped per licence class
    """
    import datetime as dt

    from openaddr.collect import dedupe_published
    from openaddr_airflow import config

    members: dict[str, str] = {}
    for area in built:
        members.update(area["members"])
    with config.machine_engine() as engine:
        collections, stats = dedupe_published(
            engine,
            config.machine_storage(),
            plan["set_id"],
            members,
            now=dt.datetime.fromisoformat(plan["now"]),
            owner=plan["owner"],
            repository=plan["repository"],
            work_dir=config.scratch_folder(),
        )
    return {
        "deduped_rows": {attr or "open": f.dropped_global for attr, f in stats.items()},
        "collections": [c.as_dict() for c in collections],
    }


@task
def record_collections(plan: dict, built: list[dict], deduped: dict) -> dict:
    """Record the collections of every area and the processed ones in ``zips``, in one transaction.

    :return: the set id and, per collection, its name, URL, format, size and row count
    """
    import datetime as dt

    from openaddr.collect import Collection, record_collections as record
    from openaddr_airflow import config

    areas = list(built)
    found = [c for area in areas for c in area["collections"]] + deduped["collections"]
    collections = [Collection.from_dict(c) for c in found]
    with config.machine_engine() as engine:
        record(engine, collections, now=dt.datetime.fromisoformat(plan["now"]))
    return {
        "set_id": plan["set_id"],
        "runs": max((area["runs"] for area in areas), default=0),  # global holds every run
        "dropped_rows": max((area["dropped_rows"] for area in areas), default=0),
        "deduped_rows": deduped["deduped_rows"],
        "collections": [
            {
                "name": c.name,
                "url": c.url,
                "format": c.format,
                "bytes": c.content_length,
                "addresses": c.address_count,
            }
            for c in collections
        ],
    }


@dag(
    schedule=[LATEST_SET],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_COLLECT, Tag.TIER_2],
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "queue": BATCH_QUEUE},
    on_failure_callback=FailedRunNotifier(),
)
def openaddr_collect():
    """Collect the latest set into the regional collections (see the module docstring)."""
    from openaddr.collect.areas import AREAS

    plan = plan_collect()
    built = collect_area.partial(plan=plan).expand(area=list(AREAS))
    record_collections(plan, built, dedupe_collections(plan, built))


openaddr_collect()
