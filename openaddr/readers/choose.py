"""Choose the input file among the extracted paths (processing.md §5)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from openaddr.errors import ConformError, UnknownFormatError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

#: Formats with a reader (``shapefile-polygon`` is read exactly like ``shapefile``).
FORMATS = ("shapefile", "shapefile-polygon", "gdb", "geojson", "csv", "xml", "gpkg")

_XML_SUFFIXES = (".gml", ".kml", ".xml")


def choose_input(paths: list[Path], root: Path, conform: Mapping[str, Any], protocol: str) -> Path:
    """The file (or ``.gdb`` folder) to read, chosen by format as §5's table says.

    :param paths: the extracted paths in path order, or ``[cache file]`` when nothing was decompressed
    :param root: the extraction root (``file`` is compared with paths relative to it)
    :param conform: the entry's conform object
    :param protocol: the entry's protocol (``ESRI`` entries read their cache CSV)
    :raises UnknownFormatError: the format is absent or names no reader
    :raises ConformError: no candidate, or several and none matches ``file`` (rule M)
    """
    fmt = conform.get("format")
    if fmt not in FORMATS:
        raise UnknownFormatError(f"Unknown source conform format {fmt!r}")
    file = conform.get("file")
    file = file if isinstance(file, str) and file.strip() else None
    if str(protocol).lower() == "esri" and fmt in ("geojson", "csv"):
        if not paths:
            raise ConformError("No ESRI cache file found")
        return paths[0]
    files = [p for p in paths if p.is_file()]
    if fmt in ("shapefile", "shapefile-polygon"):
        return _one_or_rule_m(_with_suffix(paths, (".shp",)), root, file, fmt)
    if fmt == "gdb":
        return _one_or_rule_m(_gdb_folders(paths, root), root, file, fmt)
    if fmt == "geojson":
        return _one_or_rule_m(_with_suffix(paths, (".json", ".geojson")), root, file, fmt)
    if fmt == "gpkg":
        return _one_or_rule_m(_with_suffix(paths, (".gpkg",)), root, file, fmt)
    if fmt == "csv":
        if file is not None:
            return _rule_m(files, root, file, fmt)
        csvs = _with_suffix(files, (".csv",))
        if csvs:
            return csvs[0]
        if files:
            return files[0]
        raise ConformError(f"No {fmt} file found")
    # xml: GML or KML
    if file is not None:
        return _rule_m(_with_suffix(files, _XML_SUFFIXES), root, file, fmt)
    gml = _with_suffix(files, (".gml",))
    if gml:
        return gml[0]
    raise ConformError(f"No {fmt} file found")


def _with_suffix(paths: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    return [p for p in paths if p.suffix.lower() in suffixes]


def _gdb_folders(paths: list[Path], root: Path) -> list[Path]:
    """Paths cut after their first ``.gdb`` component (any case) below ``root``, de-duplicated in order.

    A folder that holds another ``.gdb`` folder is not a geodatabase: it is the folder an inner zip named
    ``x.gdb.zip`` was expanded into (§4.2), so only the innermost candidates are kept.
    """
    seen: dict[Path, None] = {}
    for p in paths:
        try:
            parts = p.relative_to(root).parts
            base = root
        except ValueError:
            parts = p.parts
            base = type(p)(p.anchor) if p.anchor else type(p)()
            parts = parts[1:] if p.anchor else parts
        for i, part in enumerate(parts):
            if part.lower().endswith(".gdb"):
                seen.setdefault(base.joinpath(*parts[: i + 1]), None)
                # a folder named like a geodatabase may hold the real one
                for j in range(i + 1, len(parts) - (0 if p.is_dir() else 1)):
                    if parts[j].lower().endswith(".gdb"):
                        seen.setdefault(base.joinpath(*parts[: j + 1]), None)
                break
    candidates = list(seen)
    return [c for c in candidates if not any(o != c and o.is_relative_to(c) for o in candidates)]


def _one_or_rule_m(candidates: list[Path], root: Path, file: str | None, fmt: str) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConformError(f"No {fmt} file found")
    if file is None:
        raise ConformError(
            f"No {fmt} file found: {len(candidates)} candidates and no conform.file to choose among them"
        )
    return _rule_m(candidates, root, file, fmt)


def _rule_m(candidates: list[Path], root: Path, file: str, fmt: str) -> Path:
    """Rule M: a full relative path match wins, then the first basename match, case-insensitively."""
    wanted = file.strip().replace("\\", "/").strip("/").lower()
    while wanted.startswith("./"):
        wanted = wanted[2:]
    base = wanted.rsplit("/", 1)[-1]
    by_name: Path | None = None
    for p in candidates:
        try:
            relative = p.relative_to(root).as_posix().lower()
        except ValueError:
            relative = p.name.lower()
        if relative == wanted:
            return p
        if by_name is None and p.name.lower() == base:
            by_name = p
    if by_name is not None:
        return by_name
    if not candidates:
        raise ConformError(f"No {fmt} file found")
    raise ConformError(f"Source names file {file} but it was not found")
