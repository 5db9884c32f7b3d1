"""Collect: the regional collections users download (machine-ci.md §8), as plain Python.

:func:`collect` builds and publishes the 18 address collections of a set, ``openaddr-collected-<area>.zip`` and
``openaddr-collected-<area>-sa.zip`` for the nine areas of :mod:`openaddr.collect.areas`, and the 72 line-delimited
GeoJSON collections ``openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip``, one per area, licence class and layer
type (§8 "Addition"), and the 72 GeoParquet collections ``openaddr-collected-<area>[-sa]-<layer>.parquet``
(:mod:`.geoparquet`):

1. **Input**: the set (an id, or ``latest``: the newest completed set of ``owner/repository``) and the input run of
   each of its layer entries (:func:`openaddr.db.collect.collect_runs`); only runs with a ``processed`` output
   contribute: the zip of an address entry to the address collections, and every entry's ``out.geojson.gz``
   (beside an address entry's zip in ``runs/<id>/``, or its ``processed`` output for the other layer types) to the
   GeoJSON collections of its layer type, as member ``<source>/<name>.geojsonl``; the same local files feed the
   GeoParquet collections (an address zip's CSVs, another layer type's GeoJSON).
2. **Build**: one pass over the run zips in path order, each read from storage as a local file (the stored file
   itself, or a download into the work folder, removed as soon as it is read) and streamed into every collection
   it belongs to (``global`` and its area, in its licence class: ``sa`` when its ``share-alike`` is ``"true"``);
   the collections are written to local files in a temporary folder of the work folder (:mod:`.archive`).
3. **Publish**: every collection is uploaded under a staging key, then all are moved or copied to
   ``collections/<name>`` (:meth:`openaddr.storage.Storage.publish_files`), so a public URL always gives a
   complete file; then, in one transaction, every ``zips`` row is marked not current and the 162 rows (180
   with the dedupe) are inserted or replaced (:func:`openaddr.db.collect.record_zips`; ``layer`` null for the address zips,
   ``format`` ``zip``, ``geojsonl`` or ``parquet``).

A GeoJSON collection holds ``README.txt``, the members, and ``LICENSE.txt`` with one block per member (titled like
it, without the extension); its features are copied as the runs published them.

With ``dedupe`` (``openaddr collect --dedupe``; on in the DAG), the 18 ``-processed`` collections
``openaddr-collected-<area>[-sa]-processed.zip`` are built from the finished address collections before
publishing: the same members without the address rows another source also holds (:mod:`.dedupe`), a new summary
per CSV, ``dedupe-report.csv`` (rows dropped per kept and dropped source) and the same ``LICENSE.txt``; they are
published and recorded with the others (``layer`` null, like the address zips).
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openaddr.collect.archive import (
    CollectionZip,
    LicenseBlock,
    add_geojson,
    add_run_zip,
    readme_text,
    zip_time,
)
from openaddr.collect.areas import AREAS, areas_of, source_name
from openaddr.collect.dedupe import DedupeSettings, DedupeStats, Processed, build_processed
from openaddr.collect.geoparquet import Entry, GeoParquetCollections, parquet_name
from openaddr.collect.parts import discard_parts
from openaddr.db.collect import ZipRow, collect_runs, collect_set, record_zips
from openaddr.db.runs import utcnow
from openaddr.db.schema import LICENSE_ATTRS
from openaddr.sources import LAYER_TYPES
from openaddr.storage import ObjectNotFoundError

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterable, Mapping, Sequence

    import sqlalchemy as sa

    from openaddr.storage import Storage

log = logging.getLogger(__name__)

#: Storage folder of the published collections.
COLLECTIONS_FOLDER = "collections"
#: Default repository whose latest set is collected.
DEFAULT_OWNER = DEFAULT_REPOSITORY = "openaddresses"


def collection_name(area: str, license_attr: str, layer: str | None = None) -> str:
    """``openaddr-collected-<area>[-sa].zip`` (§8 "Files"), or with a layer type
    ``openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip`` (§8 "Addition")."""
    suffix = f"-{license_attr}" if license_attr else ""
    if layer is not None:
        return f"openaddr-collected-{area}{suffix}-{layer}.geojsonl.zip"
    return f"openaddr-collected-{area}{suffix}.zip"


def license_class(state: dict[str, Any]) -> str:
    """``sa`` when the run's ``share-alike`` is ``"true"``, else ``""`` (§8 "Licence split")."""
    return "sa" if state.get("share-alike") == "true" else ""


def repository_of(location: str) -> tuple[str, str]:
    """The owner and repository whose sets a sources location records (the batch's ``openaddr_sources``):
    ``github:owner/repository[@ref]`` names them; a local checkout records ``openaddresses/openaddresses``
    (:func:`openaddr.sources_repo.list_local_sources`).

    :raises openaddr.sources_repo.SourcesLocationError: a malformed ``github:`` location
    """
    from openaddr.sources_repo import (
        DEFAULT_OWNER as OWNER,
        DEFAULT_REPOSITORY as REPOSITORY,
        GITHUB_PREFIX,
        parse_github_location,
    )

    if location.startswith(GITHUB_PREFIX):
        owner, repository, _ = parse_github_location(location)
        return owner, repository
    return OWNER, REPOSITORY


@dataclass(frozen=True)
class Collection:
    """One published collection: ``layer`` None for an address zip, else the layer type of a GeoJSON collection;
    ``address_count`` its rows or features; ``sources`` the runs it holds; ``format`` ``zip`` (the CSV address
    collections), ``geojsonl`` (zipped line-delimited GeoJSON) or ``parquet`` (GeoParquet, ``layer`` set)."""

    area: str
    license_attr: str
    name: str
    url: str
    content_length: int
    address_count: int
    sources: int
    layer: str | None = None
    format: str = "zip"

    def as_dict(self) -> dict[str, Any]:
        """Its fields as JSON-ready values (what a DAG task returns)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Collection:
        """Back from :meth:`as_dict`."""
        return cls(**values)


@dataclass
class CollectResult:
    """What :func:`collect` did.

    :param set_id: the set collected
    :param collections: the 18 address collections in area and licence order, then the 72 GeoJSON collections in
        area, licence and layer order, then (with the dedupe) the 18 ``-processed`` ones in area and licence order
    :param runs: ids of the runs that contributed
    :param dropped: rows dropped for invalid coordinates, per run id (runs that dropped none are left out)
    :param null_island: rows at (0, 0), kept, per run id
    :param skipped: run id → why it did not contribute though it has a processed output
    :param geojson_skipped: run id → why an address run's ``out.geojson.gz`` is not in the GeoJSON collections
    :param features_dropped: features of other layer types left out of the GeoParquet collections (no geometry,
        an empty one, or coordinates beyond ±180 / ±90), per run id
    :param members: CSV member without ``.csv`` → the source path of its run (the dedupe's tie-break)
    :param processed: with the dedupe, the ``-processed`` collections as written (rows, drops, report)
    :param dedupe: with the dedupe, its figures per licence class (``""``, ``"sa"``)
    """

    set_id: int
    collections: list[Collection] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    dropped: dict[int, int] = field(default_factory=dict)
    null_island: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    geojson_skipped: dict[int, str] = field(default_factory=dict)
    features_dropped: dict[int, int] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)
    processed: list[Processed] = field(default_factory=list)
    dedupe: dict[str, DedupeStats] = field(default_factory=dict)


@dataclass(frozen=True)
class _Input:
    run_id: int
    source: str
    layer: str
    name: str
    zip_key: str | None
    geojson_key: str | None
    license_attr: str
    state: dict[str, Any]


#: A collection: area, licence class, and None (the address zip) or a layer type (its GeoJSON collection).
_Key = tuple[str, str, str | None]


def _inputs(storage: Storage, runs: list[dict[str, Any]], result: CollectResult) -> list[_Input]:
    inputs = []
    for run in runs:
        state = run["state"] or {}
        processed = state.get("processed")
        if not isinstance(processed, str) or not processed:
            continue  # a failure without data
        key = storage.key_of(processed)
        if key is None:
            log.warning("Run %d: processed output %s is not in %r; left out", run["id"], processed, storage)
            result.skipped[run["id"]] = f"{processed} is not in this storage"
            continue
        zip_key: str | None = None
        if key.lower().endswith(".zip"):
            zip_key = key
            parts = key.split("/")
            # runs/<id>/<source>.zip: out.geojson.gz is published beside it (openaddr.storage.run_files)
            geojson_key = (
                f"{parts[0]}/{parts[1]}/out.geojson.gz" if parts[0] == "runs" and len(parts) > 2 else None
            )
        elif key.endswith(".geojson.gz"):
            geojson_key = key
        else:
            continue
        layer = run["source_layer"] or "addresses"
        inputs.append(
            _Input(
                run["id"],
                source_name(run["source_path"]),
                layer,
                run["layer_name"] or layer,
                zip_key,
                geojson_key,
                license_class(state),
                state,
            )
        )
    return inputs


def collect(
    engine: sa.Engine,
    storage: Storage,
    which: int | str = "latest",
    *,
    owner: str = DEFAULT_OWNER,
    repository: str = DEFAULT_REPOSITORY,
    work_dir: Path | None = None,
    now: dt.datetime | None = None,
    dedupe: bool | DedupeSettings = False,
    areas: Sequence[str] | None = None,
    record: bool = True,
) -> CollectResult:
    """Build and publish the address and GeoJSON collections of a set (module docstring); return what was
    published.

    Split by area (``areas``, ``record=False``), several workers build a set's collections at once: each builds
    and publishes those of its areas, and one last step records them all (:func:`record_collections`). The
    collections of every area are those of one call with every area (a test holds them byte for byte), provided
    each call collects the same set id at the same ``now``.

    :param engine: the Machine database
    :param storage: the run storage, where the collections are published too
    :param which: a set id, or ``latest``
    :param owner: the repository owner whose latest set is meant
    :param repository: the repository whose latest set is meant
    :param work_dir: where the temporary folder of the collections and downloads is made (default: the system's)
    :param now: the collection time (README date, member times, ``zips.datetime``; default: now)
    :param dedupe: also build the ``-processed`` collections (True: with the default settings); it needs every
        area (split by area, :func:`dedupe_published` builds them after the areas)
    :param areas: build only the collections of these areas (default: all of :data:`AREAS`)
    :param record: record the collections in ``zips`` (:func:`record_collections`) after publishing them
    :raises LookupError: no such set, or it is not complete
    :raises ValueError: an unknown area
    """
    now = now or utcnow()
    wanted = list(AREAS) if areas is None else [area for area in AREAS if area in areas]
    unknown = sorted(set(areas or ()) - set(AREAS))
    if unknown:
        raise ValueError(f"unknown collect areas {unknown}: choose from {list(AREAS)}")
    if dedupe and len(wanted) < len(AREAS):
        raise ValueError(
            "the dedupe needs every area's address collections: run dedupe_published after the areas"
        )
    found = collect_set(engine, which, owner=owner, repository=repository)
    result = CollectResult(set_id=int(found["id"]))
    inputs = [
        item
        for item in _inputs(storage, collect_runs(engine, result.set_id), result)
        if any(area in wanted for area in areas_of(item.source))
    ]
    log.info("Collecting set %d, areas %s: %d runs", result.set_id, ", ".join(wanted), len(inputs))
    readme = readme_text(now.date(), found["owner"], found["repository"], found["commit_sha"])
    kinds: list[str | None] = [None, *LAYER_TYPES]
    with tempfile.TemporaryDirectory(prefix="openaddr-collect-", dir=work_dir) as tmp:
        folder = Path(tmp)
        zips: dict[_Key, CollectionZip] = {}
        parquets = GeoParquetCollections(folder / "geoparquet")
        try:
            for layer in kinds:
                for area in wanted:
                    for attr in LICENSE_ATTRS:
                        path = folder / collection_name(area, attr, layer)
                        zips[area, attr, layer] = CollectionZip(path, readme, zip_time(now))
            for layer_type in LAYER_TYPES:
                for area in wanted:
                    for attr in LICENSE_ATTRS:
                        parquets.add_collection(area, attr, layer_type)
            counts = dict.fromkeys(zips, 0)
            members = result.members
            for item in inputs:
                _collect_one(storage, folder, item, zips, counts, result, parquets, members)
            for collection in zips.values():
                collection.close()
            parquet_files = parquets.close()
        except BaseException:
            for collection in zips.values():
                collection.discard()
            parquets.discard()
            raise
        names = {collection_name(*key): collection.path for key, collection in zips.items()}
        names.update({parquet_name(*key): file.path for key, file in parquet_files.items()})
        if dedupe:
            settings = dedupe if isinstance(dedupe, DedupeSettings) else DedupeSettings()
            addresses = {
                (a, attr): (zips[a, attr, None].path, zips[a, attr, None].blocks)
                for a, attr, layer in zips
                if layer is None
            }
            result.processed, result.dedupe = build_processed(
                folder, addresses, readme, zip_time(now), members, settings
            )
            names.update({p.name: p.path for p in result.processed})
        discard_parts(storage, wanted)  # a split run's parts of these areas would describe replaced files
        urls = storage.publish_files(COLLECTIONS_FOLDER, names)
        for (area, attr, layer), collection in zips.items():
            name = collection_name(area, attr, layer)
            result.collections.append(
                Collection(
                    area=area,
                    license_attr=attr,
                    name=name,
                    url=urls[name],
                    content_length=collection.path.stat().st_size,
                    address_count=collection.address_count,
                    sources=counts[area, attr, layer],
                    layer=layer,
                    format="zip" if layer is None else "geojsonl",
                )
            )
        for (area, attr, layer_type), file in parquet_files.items():
            name = parquet_name(area, attr, layer_type)
            result.collections.append(
                Collection(
                    area=area,
                    license_attr=attr,
                    name=name,
                    url=urls[name],
                    content_length=file.path.stat().st_size,
                    address_count=file.rows,
                    sources=len(parquets.collections[area, attr, layer_type].members),
                    layer=layer_type,
                    format="parquet",
                )
            )
        for p in result.processed:
            result.collections.append(
                Collection(
                    p.area,
                    p.license_attr,
                    p.name,
                    urls[p.name],
                    p.path.stat().st_size,
                    p.address_count,
                    p.sources,
                )
            )
    if record:
        record_collections(engine, result.collections, now=now)
    log.info(
        "Set %d: published %d collections from %d runs (%d rows dropped for their coordinates)",
        result.set_id,
        len(result.collections),
        len(result.runs),
        sum(result.dropped.values()),
    )
    return result


def record_collections(engine: sa.Engine, collections: Iterable[Collection], *, now: dt.datetime) -> None:
    """Make ``collections`` (of every area) the current ones in ``zips``, in one transaction
    (:func:`openaddr.db.collect.record_zips`)."""
    record_zips(
        engine,
        (
            ZipRow(c.url, c.content_length, c.address_count, c.area, c.license_attr, c.layer, c.format)
            for c in collections
        ),
        now=now,
    )


def dedupe_published(
    engine: sa.Engine,
    storage: Storage,
    set_id: int,
    members: Mapping[str, str],
    *,
    now: dt.datetime,
    owner: str = DEFAULT_OWNER,
    repository: str = DEFAULT_REPOSITORY,
    work_dir: Path | None = None,
    settings: DedupeSettings | None = None,
) -> tuple[list[Collection], dict[str, DedupeStats]]:
    """The dedupe of a collect split by area: build and publish the 18 ``-processed`` collections from the 18
    published address collections (``global`` and every region at once, as the dedupe needs them; each read as a
    local file, downloaded on S3), not recorded yet. The same files as ``collect(…, dedupe=True)`` makes.

    :param set_id: the set the areas collected (for ``README.txt``)
    :param members: the ``members`` of the ``global`` area's :class:`CollectResult` (the dedupe's tie-break)
    :param now: the areas' collection time
    :return: the published collections in area and licence order, and the dedupe's figures per licence class
    """
    import contextlib

    found = collect_set(engine, set_id, owner=owner, repository=repository)
    readme = readme_text(now.date(), found["owner"], found["repository"], found["commit_sha"])
    with (
        tempfile.TemporaryDirectory(prefix="openaddr-dedupe-", dir=work_dir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        addresses: dict[tuple[str, str], tuple[Path, Sequence[LicenseBlock]]] = {}
        for area in AREAS:
            for attr in LICENSE_ATTRS:
                key = f"{COLLECTIONS_FOLDER}/{collection_name(area, attr)}"
                path = stack.enter_context(storage.local_file(key, folder))
                with zipfile.ZipFile(path) as archive:
                    blocks = parse_license_text(archive.read("LICENSE.txt").decode("utf-8"))
                addresses[area, attr] = (path, blocks)
        processed, stats = build_processed(
            folder, addresses, readme, zip_time(now), members, settings or DedupeSettings()
        )
        urls = storage.publish_files(COLLECTIONS_FOLDER, {p.name: p.path for p in processed})
        collections = [
            Collection(
                p.area,
                p.license_attr,
                p.name,
                urls[p.name],
                p.path.stat().st_size,
                p.address_count,
                p.sources,
            )
            for p in processed
        ]
    return collections, stats


def parse_license_text(text: str) -> list[LicenseBlock]:
    """The blocks of a collection's ``LICENSE.txt`` (:func:`openaddr.collect.archive.license_text` read back: the
    same blocks write the same text)."""
    blocks = []
    for part in text.split("\n\n")[1:]:
        source, website, license_, attribution = part.rstrip("\n").split("\n")
        site = website.removeprefix("Website: ")
        terms = license_.removeprefix("License: ")
        value = attribution.removeprefix("Required attribution: ")
        required, name = ("false", None) if value == "No" else ("true", None if value == "Yes" else value)
        blocks.append(
            LicenseBlock(
                source,
                None if site == "Unknown" else site,
                None if terms == "Unknown" else terms,
                required,
                name,
            )
        )
    return blocks


def _collect_one(
    storage: Storage,
    folder: Path,
    item: _Input,
    zips: dict[_Key, CollectionZip],
    counts: dict[_Key, int],
    result: CollectResult,
    parquets: GeoParquetCollections,
    members: dict[str, str],
) -> None:
    """Add one input run to the collections it belongs to: its zip to the address ones, its GeoJSON to those of
    its layer type, and the same rows to the GeoParquet ones (the address zip's CSVs, else the GeoJSON); record
    what it contributed, dropped or lacked in ``result``, and its CSV member's source path in ``members`` (the
    dedupe's tie-break). Only the areas being built (those in ``zips``) are written."""
    areas = [area for area in areas_of(item.source) if any(key[0] == area for key in zips)]
    entry = Entry(f"sources/{item.source}.json", item.layer, item.name, item.run_id)

    def block(title: str) -> LicenseBlock:
        state = item.state
        return LicenseBlock(
            title,
            state.get("website"),
            state.get("license"),
            state.get("attribution required"),
            state.get("attribution name"),
        )

    contributed = False
    if item.zip_key is not None:
        targets: list[_Key] = [(area, item.license_attr, None) for area in areas]
        try:
            with storage.local_file(item.zip_key, folder) as path:
                added = add_run_zip(path, [zips[t] for t in targets])
                parquets.add_run_zip(path, entry, [(area, item.license_attr, "addresses") for area in areas])
        except ObjectNotFoundError as exc:
            log.warning("Run %d: %s; left out", item.run_id, exc)
            result.skipped[item.run_id] = str(exc)
            return
        for target in targets:
            zips[target].blocks.append(block(added.name or item.source))
            counts[target] += 1
        if added.name:
            members[added.name] = f"sources/{item.source}.json"
        contributed = True
        if added.dropped:
            result.dropped[item.run_id] = added.dropped
        if added.null_island:
            result.null_island[item.run_id] = added.null_island
    if item.geojson_key is not None:
        member = f"{item.source}/{item.name}.geojsonl"
        targets = [(area, item.license_attr, item.layer) for area in areas]
        try:
            with storage.local_file(item.geojson_key, folder) as path:
                add_geojson(path, member, [zips[t] for t in targets])
                if item.zip_key is None:
                    keys = [(area, item.license_attr, item.layer) for area in areas]
                    _, lost = parquets.add_geojson(path, member, entry, keys)
                    if lost:
                        result.features_dropped[item.run_id] = lost
        except ObjectNotFoundError as exc:
            log.warning("Run %d: %s; not in the GeoJSON collections", item.run_id, exc)
            if item.zip_key is None:
                result.skipped[item.run_id] = str(exc)
            else:
                result.geojson_skipped[item.run_id] = str(exc)
        else:
            for target in targets:
                zips[target].blocks.append(block(member[: -len(".geojsonl")]))
                counts[target] += 1
            contributed = True
    if contributed:
        result.runs.append(item.run_id)


__all__ = [
    "COLLECTIONS_FOLDER",
    "Collection",
    "CollectResult",
    "collect",
    "collection_name",
    "license_class",
    "dedupe_published",
    "parse_license_text",
    "record_collections",
    "repository_of",
]
