"""The parts of a collect split by area on the command line, kept in storage until they are recorded together.

The ``openaddr_collect`` DAG splits a collect by area and hands each area's published collections to its last
task through XCom (``collect_area`` → ``record_collections``). ``openaddr collect --area AREA --no-record`` does
the same by hand, on any machine that reaches the database and the storage, so the hand-over lives in the
storage: each area's part is ``collect-parts/<set id>/<collection time>/<area>.json``, what
:func:`openaddr.collect.collect` published for that area (each :class:`~openaddr.collect.Collection`'s fields,
the runs taken, the rows dropped, and for ``global`` the dedupe's tie-break ``members``).
``openaddr collect SET --record-only --at TIME`` reads the nine parts back (:func:`load_parts`), checks that every
area is there with exactly its 18 collections, and records them all in one transaction, as one full collect
does; the parts are then deleted (:func:`delete_parts`). A rerun of an area overwrites its part, and any collect
that publishes an area's collections again (the DAG's, a full run, a split run at another time) first discards
every part of that area (:func:`discard_parts`), since they would describe files that are no longer there.

The collection time is part of the key: areas collected at another time are another split run, never mixed in
(their README dates and member times would differ from one full collect's).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from openaddr.collect.areas import AREAS
from openaddr.collect.geoparquet import parquet_name
from openaddr.db.schema import LICENSE_ATTRS, ZIP_FORMATS
from openaddr.sources import LAYER_TYPES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from openaddr.collect import Collection, CollectResult
    from openaddr.storage import Storage

#: Storage folder of the parts of split collects not recorded yet.
PARTS_FOLDER = "collect-parts"
#: Version of a part's JSON (a part written by another version is refused, never guessed).
PART_VERSION = 1


class PartError(LookupError):
    """A part is missing or malformed: the split run cannot be recorded as it is."""


def parts_prefix(set_id: int, now: dt.datetime) -> str:
    """``collect-parts/<set id>/<now in UTC, e.g. 20261207T123000.000000Z>``: the folder of one split run."""
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{PARTS_FOLDER}/{set_id}/{stamp}"


def expected_names(area: str) -> list[str]:
    """The 18 collections one area publishes, in the order one full collect lists them: the address zips, the
    GeoJSON collections by layer type, then the GeoParquet files by layer type (each open, then share-alike)."""
    from openaddr.collect import collection_name

    names = [collection_name(area, attr, layer) for layer in (None, *LAYER_TYPES) for attr in LICENSE_ATTRS]
    names += [parquet_name(area, attr, layer) for layer in LAYER_TYPES for attr in LICENSE_ATTRS]
    return names


def save_parts(
    storage: Storage, result: CollectResult, areas: Iterable[str], *, now: dt.datetime
) -> list[str]:
    """Store one part per area of ``result`` (a ``collect(…, areas=…, record=False)``); return their keys."""
    keys = []
    for area in areas:
        part = {
            "version": PART_VERSION,
            "set_id": result.set_id,
            "at": now.astimezone(dt.UTC).isoformat(),
            "area": area,
            "runs": result.runs,
            "dropped": {str(run): count for run, count in result.dropped.items()},
            "members": result.members if area == "global" else {},
            "collections": [c.as_dict() for c in result.collections if c.area == area],
        }
        key = f"{parts_prefix(result.set_id, now)}/{area}.json"
        storage.put_bytes(json.dumps(part, indent=1).encode(), key, content_type="application/json")
        keys.append(key)
    return keys


@dataclass
class Parts:
    """The nine parts of a split run, read back.

    :param collections: every area's collections, in the order of one full collect
    :param runs: the runs ``global`` took (it holds every run)
    :param dropped: rows dropped for invalid coordinates per run, as ``global`` counted them
    :param members: the ``global`` part's members (the dedupe's tie-break)
    """

    collections: list[Collection] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    dropped: dict[int, int] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)


def load_parts(storage: Storage, set_id: int, *, now: dt.datetime) -> Parts:
    """Read the parts of the split run of ``set_id`` at ``now``: one per area, each with exactly its 18 collections.

    :raises PartError: an area's part is missing, or a part is malformed (the message names it and what is wrong)
    """
    from openaddr.collect import Collection

    prefix = parts_prefix(set_id, now)
    stored = set(storage.list_keys(prefix))
    missing = [area for area in AREAS if f"{prefix}/{area}.json" not in stored]
    if missing:
        raise PartError(
            f"set {set_id} at {now.astimezone(dt.UTC).isoformat()}: no published collections of "
            f"{', '.join(missing)} (nothing under {prefix}/ for them; build them with --no-record and this --at)"
        )
    by_area: dict[str, list[Collection]] = {}
    parts = Parts()
    attrs = {f.name for f in fields(Collection)}
    for area in AREAS:
        key = f"{prefix}/{area}.json"
        part = _read_part(storage, key)

        def bad(what: str, key: str = key) -> PartError:
            return PartError(f"{key}: {what}")

        expected = {"version": PART_VERSION, "set_id": set_id, "at": now.astimezone(dt.UTC).isoformat()}
        for name, value in [*expected.items(), ("area", area)]:
            if part.get(name) != value:
                raise bad(f"{name} is {part.get(name)!r}, not {value!r}")
        found = part.get("collections")
        if not isinstance(found, list) or not all(isinstance(c, dict) for c in found):
            raise bad("collections is not a list of objects")
        collections = []
        for index, values in enumerate(found):
            if set(values) != set(attrs):
                raise bad(f"collection {index} has the fields {sorted(values)}, not {sorted(attrs)}")
            problem = _collection_problem(values, area)
            if problem:
                raise bad(f"collection {index} ({values.get('name')!r}): {problem}")
            collections.append(Collection.from_dict(values))
        names = [c.name for c in collections]
        if sorted(names) != sorted(expected_names(area)):
            wanted = set(expected_names(area))
            raise bad(
                f"collections differ from the area's 18: missing {sorted(wanted - set(names))}, "
                f"unexpected {sorted(set(names) - wanted)}, {len(names)} in all"
            )
        order = {name: i for i, name in enumerate(expected_names(area))}
        by_area[area] = sorted(collections, key=lambda c: order[c.name])
        if area == "global":
            parts.runs = _int_list(part.get("runs"), bad("runs is not a list of run ids"))
            parts.dropped = _int_map(part.get("dropped"), bad("dropped is not run id → count"))
            members = part.get("members")
            if not isinstance(members, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in members.items()
            ):
                raise bad("members is not member → source path")
            parts.members = members
    # One full collect lists the address and GeoJSON zips by layer type, then area; then the GeoParquet files.
    per_area = len(LICENSE_ATTRS) * (1 + len(LAYER_TYPES))
    for layer_index in range(1 + len(LAYER_TYPES)):
        for area in AREAS:
            start = layer_index * len(LICENSE_ATTRS)
            parts.collections += by_area[area][start : start + len(LICENSE_ATTRS)]
    for layer_index in range(len(LAYER_TYPES)):
        for area in AREAS:
            start = per_area + layer_index * len(LICENSE_ATTRS)
            parts.collections += by_area[area][start : start + len(LICENSE_ATTRS)]
    return parts


def discard_parts(storage: Storage, areas: Iterable[str]) -> None:
    """Delete every part of these areas, of any set and time: their collections are about to be published again,
    so what those parts say (sizes, row counts) would no longer be true of the stored files
    (:func:`openaddr.collect.collect` calls it before publishing)."""
    names = {f"{area}.json" for area in areas}
    storage.delete_keys([key for key in storage.list_keys(PARTS_FOLDER) if key.rsplit("/", 1)[-1] in names])


def delete_parts(storage: Storage, set_id: int, *, now: dt.datetime) -> None:
    """Delete the parts of the split run of ``set_id`` at ``now`` (once recorded)."""
    storage.delete_prefix(parts_prefix(set_id, now))


def _read_part(storage: Storage, key: str) -> dict[str, Any]:
    try:
        part = json.loads(storage.get_bytes(key))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PartError(f"{key}: not JSON ({exc})") from exc
    if not isinstance(part, dict):
        raise PartError(f"{key}: not a JSON object")
    return part


def _collection_problem(values: dict[str, Any], area: str) -> str | None:
    """What is wrong with one stored collection's fields, or None."""
    if values["area"] != area:
        return f"area is {values['area']!r}, not {area!r}"
    if values["license_attr"] not in LICENSE_ATTRS:
        return f"license_attr {values['license_attr']!r} is not one of {list(LICENSE_ATTRS)}"
    if values["format"] not in ZIP_FORMATS:
        return f"format {values['format']!r} is not one of {list(ZIP_FORMATS)}"
    if values["layer"] is not None and values["layer"] not in LAYER_TYPES:
        return f"layer {values['layer']!r} is not null or one of {list(LAYER_TYPES)}"
    for name in ("name", "url"):
        if not isinstance(values[name], str) or not values[name]:
            return f"{name} is not a text"
    from openaddr.collect import collection_name

    area, attr, layer, form = values["area"], values["license_attr"], values["layer"], values["format"]
    if form == "parquet":
        named = parquet_name(area, attr, layer) if layer is not None else None
    else:
        named = (
            collection_name(area, attr, layer) if form == ("zip" if layer is None else "geojsonl") else None
        )
    if values["name"] != named:
        return f"the name does not match format {form!r}, layer {layer!r} and licence class {attr!r}"
    for name in ("content_length", "address_count", "sources"):
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name} {value!r} is not a count"
    return None


def _int_list(value: Any, error: PartError) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise error
    return value


def _int_map(value: Any, error: PartError) -> dict[int, int]:
    if not isinstance(value, dict):
        raise error
    result = {}
    for key, count in value.items():
        if not key.isdigit() or not isinstance(count, int) or isinstance(count, bool):
            raise error
        result[int(key)] = count
    return result
