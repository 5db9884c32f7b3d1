"""What ``make run`` prints about the demo set: the set a batch DAG run recorded in the Machine database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def set_report(database_url: str, dag_run_id: str) -> dict[str, Any] | None:
    """The set a batch DAG run recorded and its runs, from the Machine database, or None when it made none.

    :return: ``{"set": {...}, "runs": [{...}, ...]}`` (rows as dicts of their columns)
    """
    import sqlalchemy as sa

    from openaddr.db import make_engine
    from openaddr.db.runs import set_runs
    from openaddr.db.schema import sets

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(sets).where(sets.c.airflow_dag_run_id == dag_run_id)).first()
        if row is None:
            return None
        record = dict(row._mapping)
        return {"set": record, "runs": set_runs(engine, record["id"])}
    finally:
        engine.dispose()


def run_status(run: dict[str, Any]) -> str:
    """``success``, ``problem`` (processed, with a source problem recorded), ``failed`` or ``pending``."""
    if run["status"] is None:
        return "pending"
    if run["status"] is False:
        return "failed"
    return "problem" if run["source_problem"] else "success"


def format_report(report: dict[str, Any] | None, storage: Path) -> str:
    """A table of the set's runs and where their outputs are (a reused run's are its original's), with the
    source problem of each run that has one and the message of each failed run."""
    if report is None:
        return "The run recorded no set in the Machine database.\n"
    record = report["set"]
    commit = record["commit_sha"] or "a local folder"
    ended = (
        f"completed {record['datetime_end']:%Y-%m-%d %H:%M:%S} UTC"
        if record["datetime_end"]
        else "not completed"
    )
    lines = [
        f"Set {record['id']} ({record['owner']}/{record['repository']} at {commit}), {ended}:",
        f"  {'run':>4}  {'source':<30} {'layer/name':<22} {'status':<8} {'addresses':>9}  outputs",
    ]
    statuses = []
    for run in report["runs"]:
        status = run_status(run)
        statuses.append(status)
        label = f"{run['source_layer']}/{run['layer_name']}"
        count = run["address_count"] if run["address_count"] is not None else "-"
        outputs = f"{storage / 'runs' / str(run['copy_of'] or run['id'])}/"
        if run["copy_of"]:
            outputs += f" (reuses run {run['copy_of']})"
        lines.append(
            f"  {run['id']:>4}  {run['source_path']:<30} {label:<22} {status:<8} {count:>9}  {outputs}"
        )
        if run["source_problem"]:
            lines.append(f"        source problem: {run['source_problem']}")
        if run["status"] is False and run["message"] and run["message"] != run["source_problem"]:
            lines.append(f"        {run['message']}")
    counts = ", ".join(
        f"{statuses.count(status)} {status}"
        for status in ("success", "problem", "failed", "pending")
        if status in statuses
    )
    lines.append(f"  {len(statuses)} runs: {counts} (problem: processed, with a source problem recorded)")
    for run in report["runs"]:
        package = packaged_csv(storage, run)
        if package is not None:
            lines.append(
                f"  Each address run's out.csv is packaged in its zip: run {run['id']}'s is {package[1]} in "
                f"{package[0]}"
            )
            break
    return "\n".join(lines) + "\n"


def packaged_csv(storage: Path, run: dict[str, Any]) -> tuple[Path, str] | None:
    """Where a run's ``out.csv`` is published: the zip in its storage folder and the CSV member's name
    (``runs/<id>/us/or/portland.zip`` → ``us/or/portland.csv``), or None (not an address layer, failed)."""
    import zipfile

    folder = storage / "runs" / str(run["copy_of"] or run["id"])
    for package in sorted(folder.rglob("*.zip")):
        if package.name == "cache.zip":
            continue
        try:
            with zipfile.ZipFile(package) as archive:
                members = [name for name in archive.namelist() if name.endswith(".csv")]
        except (OSError, zipfile.BadZipFile):
            continue
        if members:
            return package, members[0]
    return None


def collections_report(database_url: str) -> list[dict[str, Any]]:
    """The current collections (``zips`` rows marked current), by URL."""
    from openaddr.db import make_engine
    from openaddr.db.collect import current_zips

    engine = make_engine(database_url)
    try:
        return current_zips(engine)
    finally:
        engine.dispose()


def format_collections(
    run_id: str | None, state: str, rows: list[dict[str, Any]], storage: Path, site: str
) -> str:
    """Where the collections of the demo set are: the address zips with size and address count, how many
    GeoJSON collections there are beside them, the folder and the page listing them."""
    if run_id is None:
        return "No collect run followed the demo set (it completed no set), so there are no collections.\n"
    lines = [f"Collect run {run_id}: {state}; {len(rows)} current collections in {storage / 'collections'}/:"]
    address = [row for row in rows if row["layer"] is None]
    for row in sorted(
        address, key=lambda r: (r["collection"] != "global", r["collection"], r["license_attr"])
    ):
        name = row["url"].rsplit("/", 1)[-1]
        lines.append(f"  {name:<45} {row['content_length']:>10,} bytes {row['address_count']:>8,} addresses")
    geojson = sum(1 for row in rows if row.get("format") == "geojsonl")
    parquet = sum(1 for row in rows if row.get("format") == "parquet")
    if geojson or parquet:
        lines.append(
            f"  and {geojson} GeoJSON collections (openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip), "
            f"{parquet} GeoParquet files (openaddr-collected-<area>[-sa]-<layer>.parquet)"
        )
    lines.append(f"Listed with their URLs at {site}/ and {site}/index.json")
    return "\n".join(lines) + "\n"


def latest_entry_run(database_url: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run the latest URLs of ``run``'s layer entry give (merged and accepted), or None."""
    from openaddr.db import make_engine
    from openaddr.db.results import latest_entry_runs

    engine = make_engine(database_url)
    try:
        latest = latest_entry_runs(engine, run["source_path"])
    finally:
        engine.dispose()
    return next(
        (
            row
            for row in latest
            if (row["source_layer"], row["layer_name"]) == (run["source_layer"], run["layer_name"])
        ),
        None,
    )


def format_held(result: dict[str, Any], latest: dict[str, Any] | None, site: str) -> str:
    """What ``make run`` prints about the demo's shrunken re-run (:func:`devstack.push.shrunk_rerun`): the commit,
    each run the quality gate held with its warning and page, and the run the latest URL still gives."""
    from devstack.demo import SHRUNK_DATA, SHRUNK_KEEP
    from openaddr.machine.entries import source_name

    commit, held = result["commit"], result["held"]
    path = commit["modified"][0] if commit["modified"] else "?"
    lines = [
        f"Quality gate: commit {commit['sha'][:12]} on the fake GitHub points {path} at {SHRUNK_DATA} (its first "
        f"{SHRUNK_KEEP} features); job {result['answer']['id']} re-ran it: "
        f"{len(held)} run{'' if len(held) == 1 else 's'} held for review.",
    ]
    held_ids = {run["id"] for run in held}
    for run in result["runs"]:
        count = run["address_count"] if run["address_count"] is not None else "-"
        is_held = run["id"] in held_ids
        status = {True: "success", False: "failed", None: "pending"}[run["status"]]
        label = f"{run['source_layer']}/{run['layer_name']}"
        lines.append(
            f"  {'held run' if is_held else 'run'} {run['id']}: {label}, {status}, {count} addresses"
        )
        if run["warning"]:
            lines.append(f"    warning: {run['warning']}")
        lines.append(f"    its page, with the warning and the preview: {site}/runs/{run['id']}/")
        if is_held and run["source_layer"] and run["layer_name"]:
            rest = f"{source_name(run['source_path'])}/{run['source_layer']}/{run['layer_name']}.zip"
            still = f"run {latest['id']}'s" if latest is not None else "no run's"
            lines.append(f"    the latest URL still gives {still} data: {site}/latest/run/{rest}")
    lines.append(
        "  Held runs stay out of the latest URLs and the collections until a maintainer accepts them on the "
        f"review queue: {site}/review/ (sign in as maintainer through the fake GitHub)."
    )
    return "\n".join(lines) + "\n"
