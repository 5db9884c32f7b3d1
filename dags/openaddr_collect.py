"""
### OpenAddresses collect: the regional collections users download

Runs whenever the batch DAG completes a set (the asset `openaddr://sets/latest`), over the latest completed set of
the repository the batch reads (variable `openaddr_sources`).

**collect_set** takes, for each path, layer and name of that set, the newest run of all time that succeeded, is
merged (or not known to be unmerged) and is not held by the quality gate, else the newest failed run
(machine-ci.md §8); every such run with a processed zip goes into the **18 address collections**
`collections/openaddr-collected-<area>.zip` and `…-<area>-sa.zip` (share-alike sources) for the areas `global`,
`us_northeast`, `us_midwest`, `us_south`, `us_west`, `europe`, `asia`, `south_america` and `north_america`.
Each zip holds `README.txt`, every run zip's members (CSVs rewritten to the 11 output columns, rows with invalid
coordinates dropped), a 0.1° summary CSV + VRT per CSV, and `LICENSE.txt`. Beside them, the **72 line-delimited
GeoJSON collections** `collections/openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip`, one per area, licence
class and layer type (addresses, buildings, parcels, centerlines), hold each run's `out.geojson` as member
`<source>/<name>.geojsonl`. And the **72 GeoParquet collections**
`collections/openaddr-collected-<area>[-sa]-<layer>.parquet` (GeoParquet 1.1: WKB `geometry`, `bbox` covering
column, `geo` metadata; each row with its `source_path`, `source_layer`, `layer_name` and `run_id`; the address
files hold exactly the rows of the address zip of the same area and licence, the other layer types the features of
each run's GeoJSON that have a geometry within ±180 / ±90), rows sorted along a Hilbert curve so that readers
skip row groups by their bbox statistics. Everything is built by streaming into the scratch folder (the
GeoParquet sort spills sorted runs there and merges them), uploaded under a staging key and then moved to its
stable name (a public URL never points at a half-written file); the `zips` table (with each file's `format`:
`zip`, `geojsonl` or `parquet`, and `layer`) is updated in one transaction afterwards. The task's return value
lists each collection's URL, format, size and row count.

Not yet: the cross-source dedupe (issue 13's later step).

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
def collect_set() -> dict:
    """Build and publish the collections of the latest completed set.

    :return: the set id and, per collection, its name, URL, size and address count
    """
    from openaddr.collect import collect, repository_of
    from openaddr_airflow import config

    owner, repository = repository_of(config.sources_location())
    with config.machine_engine() as engine:
        result = collect(
            engine,
            config.machine_storage(),
            "latest",
            owner=owner,
            repository=repository,
            work_dir=config.scratch_folder(),
        )
    return {
        "set_id": result.set_id,
        "runs": len(result.runs),
        "dropped_rows": sum(result.dropped.values()),
        "collections": [
            {
                "name": c.name,
                "url": c.url,
                "format": c.format,
                "bytes": c.content_length,
                "addresses": c.address_count,
            }
            for c in result.collections
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
    collect_set()


openaddr_collect()
