"""Source files: load, upgrade layerless v1 files, pick layer entries (processing.md §2).

A *source file* is one JSON document; a *layer entry* is one object in ``layers.<type>[]``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openaddr.errors import SourceFileError

log = logging.getLogger(__name__)

#: Layer types in processing order (processing.md §2.6).
LAYER_TYPES = ("addresses", "parcels", "buildings", "centerlines")

#: Top-level v1 keys that stay at the top when a layerless file is upgraded.
_V1_TOP_LEVEL = ("coverage",)


@dataclass(frozen=True)
class LayerEntry:
    """One layer entry of a source file, with its unique name within its layer type.

    :param source: the source file it belongs to
    :param layer: ``addresses``, ``parcels``, ``buildings`` or ``centerlines``
    :param index: 0-based position within ``layers.<layer>``
    :param name: the entry's name, made unique within the layer type (``<name>-<n>``, processing.md §2.6)
    :param data: the entry object, with legacy key names upgraded (§2.4)
    """

    source: Source = field(repr=False)
    layer: str
    index: int
    name: str
    data: Mapping[str, Any] = field(repr=False)

    @property
    def conform(self) -> Mapping[str, Any] | None:
        """The entry's conform object, or None."""
        conform = self.data.get("conform")
        return conform if isinstance(conform, Mapping) else None

    @property
    def label(self) -> str:
        """``<source id> <layer>/<name>``, used to name the entry in messages."""
        return f"{self.source.id} {self.layer}/{self.name}"


@dataclass
class Source:
    """A loaded source file.

    :param path: where it was read from
    :param document: the (v2) document after upgrading
    :param version: 2 for files that declare ``schema: 2``, 1 for upgraded layerless files, 0 for files with
        ``layers`` but no ``schema``
    :param original: the document as read, before any upgrade
    :param notes: log lines produced while upgrading (legacy keys renamed)
    """

    path: Path
    document: dict[str, Any]
    version: int
    original: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The basename without ``.json`` (the *source id* of processing.md §1.3)."""
        name = self.path.name
        return name[: -len(".json")] if name.endswith(".json") else name

    @property
    def strict(self) -> bool:
        """Whether schema errors are fatal (files that declare ``schema: 2``, processing.md §2.5)."""
        return self.version == 2

    def entries(self, layer: str | None = None, name: str | None = None) -> list[LayerEntry]:
        """Layer entries in processing order, optionally restricted to one layer type and/or name.

        :param layer: keep only this layer type
        :param name: keep only the entry of this (unique) name
        """
        result: list[LayerEntry] = []
        layers = self.document.get("layers") or {}
        for layer_type in LAYER_TYPES:
            if layer is not None and layer_type != layer:
                continue
            seen: set[str] = set()
            for index, data in enumerate(layers.get(layer_type) or []):
                if not isinstance(data, Mapping):
                    continue
                entry_name = str(data.get("name") or "primary")
                if entry_name in seen:
                    # Names must be unique within a type to name directories (us/oh/city_of_perrysburg.json).
                    entry_name = f"{entry_name}-{index + 1}"
                seen.add(entry_name)
                if name is not None and entry_name != name:
                    continue
                result.append(LayerEntry(self, layer_type, index, entry_name, data))
        return result


def upgrade_entry(entry: Mapping[str, Any], notes: list[str] | None = None) -> dict[str, Any]:
    """Rename 2.1.8's legacy keys: ``type`` → ``protocol``, ``conform.type`` → ``conform.format`` (§2.4)."""
    result = dict(entry)
    if "protocol" not in result and "type" in result:
        result["protocol"] = result.pop("type")
        if notes is not None:
            notes.append(f"Upgraded legacy key type={result['protocol']!r} to protocol")
    conform = result.get("conform")
    if isinstance(conform, Mapping) and "format" not in conform and "type" in conform:
        conform = dict(conform)
        conform["format"] = conform.pop("type")
        result["conform"] = conform
        if notes is not None:
            notes.append(f"Upgraded legacy key conform.type={conform['format']!r} to conform.format")
    return result


def upgrade_document(original: Mapping[str, Any]) -> tuple[dict[str, Any], int, list[str]]:
    """Return the v2 form of a document, its version (2, 1 or 0) and the upgrade notes (§2.3, §2.4)."""
    notes: list[str] = []
    doc = copy.deepcopy(dict(original))
    if "schema" not in doc and "layers" not in doc:
        entry = {k: v for k, v in doc.items() if k not in _V1_TOP_LEVEL}
        entry.setdefault("name", "primary")
        doc = {"schema": 2, "coverage": doc.get("coverage"), "layers": {"addresses": [entry]}}
        version = 1
        notes.append("Upgraded a layerless (v1) source to one addresses layer named primary")
    else:
        version = 2 if doc.get("schema") == 2 else 0
    layers = doc.get("layers")
    if isinstance(layers, Mapping):
        doc["layers"] = {
            lt: [upgrade_entry(e, notes) if isinstance(e, Mapping) else e for e in entries]
            if isinstance(entries, list)
            else entries
            for lt, entries in layers.items()
        }
    return doc, version, notes


def load_source(path: str | Path) -> Source:
    """Read a source file and upgrade it to the v2 layout.

    :raises SourceFileError: the file cannot be read, is not JSON, or is not a JSON object
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            original = json.load(fh)
    except OSError as exc:
        raise SourceFileError(f"{path}: cannot read source file: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceFileError(f"{path}: not a JSON document: {exc}") from exc
    if not isinstance(original, dict):
        raise SourceFileError(f"{path}: a source file must hold a JSON object, not {type(original).__name__}")
    document, version, notes = upgrade_document(original)
    return Source(path=path, document=document, version=version, original=original, notes=notes)


def iter_source_files(paths: list[str] | list[Path]) -> Iterator[Path]:
    """Files named directly, and every ``*.json`` below named folders, in sorted order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.json") if p.is_file())
        else:
            yield path


def validate_command(paths: list[str]) -> int:
    """``openaddr validate PATH...``: report invalid source files, then ``N valid, M invalid`` (§1.1, §2.5).

    See :func:`openaddr.validation.validate_paths` for which files count and how v1 files are judged.

    :return: 0 when every file is valid, else 1
    """
    import sys

    from openaddr.validation import validate_paths  # imported here: openaddr.validation imports this module

    return validate_paths(paths, sys.stdout)
