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
parcels, centerlines). The areas are `global`, `us_northeast`, `us_midwest`, `us_south`, `us_west`, `europe`,
`asia`, `south_america` and `north_america`: 18 address zips and 72 GeoJSON collections in all. Each address zip
holds `README.txt`, every run zip's members (CSVs rewritten to the 11 output columns, rows with invalid coordinates
dropped), a 0.1° summary CSV + VRT per CSV, and `LICENSE.txt`; a GeoJSON collection holds each run's
`out.geojson` as member `<source>/<name>.geojsonl`. The zips are streamed to the scratch folder, uploaded under a
staging key (S3 multipart, 3 tries a part) and then moved to their stable names, so a public URL never points at
a half-written file.

**record_collections** then records the collections of every area in the `zips` table in one transaction (every
earlier row not current, the new ones current) and returns each collection's URL, size and address count.

Not yet: the GeoParquet collections and the cross-source dedupe (issue 13's later steps).

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

from openaddr_airflow.operators import DEFAULT_ARGS
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

    from openaddr.collect import collect
    from openaddr_airflow import config

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
        "collections": [c.as_dict() for c in result.collections],
    }


@task
def record_collections(plan: dict, built: list[dict]) -> dict:
    """Record the collections of every area in ``zips``, in one transaction.

    :return: the set id and, per collection, its name, URL, size and address count
    """
    import datetime as dt

    from openaddr.collect import Collection, record_collections as record
    from openaddr_airflow import config

    areas = list(built)
    collections = [Collection.from_dict(c) for area in areas for c in area["collections"]]
    with config.machine_engine() as engine:
        record(engine, collections, now=dt.datetime.fromisoformat(plan["now"]))
    return {
        "set_id": plan["set_id"],
        "runs": max((area["runs"] for area in areas), default=0),  # global holds every run
        "dropped_rows": max((area["dropped_rows"] for area in areas), default=0),
        "collections": [
            {"name": c.name, "url": c.url, "bytes": c.content_length, "addresses": c.address_count}
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
    default_args=DEFAULT_ARGS,
)
def openaddr_collect():
    """Collect the latest set into the regional collections (see the module docstring)."""
    from openaddr.collect.areas import AREAS

    plan = plan_collect()
    built = collect_area.partial(plan=plan).expand(area=list(AREAS))
    record_collections(plan, built)


openaddr_collect()
