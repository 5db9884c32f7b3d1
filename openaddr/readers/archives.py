"""Decompress a downloaded file: zip (filtered, nested, hostile-input safe) and gzip (processing.md §4).

Members are streamed to disk in chunks, never read whole into memory. Every byte written counts against an
:class:`ArchiveLimits` budget, so a zip bomb stops at the cap whatever its headers claim.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from openaddr.errors import ConformError, SourceProblem

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from openaddr.settings import Settings

log = logging.getLogger(__name__)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
#: Companions of a shapefile extracted with it. Not ``.cpg``: 7.5.5 left it behind, and extracting it would
#: change how GDAL decodes text (``fixtures/machine/data/be-wa-brussels.zip`` has one).
_SHAPEFILE_COMPANIONS = (".shx", ".dbf", ".prj")
#: Companions that get a lower-case link next to a shapefile with an upper- or mixed-case extension (§4.4).
_LINKED_COMPANIONS = (".shx", ".dbf", ".prj", ".cpg")


#: The work folder of the run in progress: temporary folders of the readers go there, not to the system's.
_WORK_FOLDER: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "openaddr_work_folder", default=None
)


def use_work_folder(path: Path | None) -> contextvars.Token[Path | None]:
    """Make the readers' temporary folders (links, ``.dbf`` views) inside ``path`` from now on; give the token
    back to :func:`release_work_folder`."""
    return _WORK_FOLDER.set(path)


def release_work_folder(token: contextvars.Token[Path | None]) -> None:
    """Undo :func:`use_work_folder`."""
    _WORK_FOLDER.reset(token)


@contextlib.contextmanager
def work_folder(path: Path) -> Iterator[Path]:
    """Make the readers' temporary folders inside ``path`` while the block runs."""
    token = use_work_folder(path)
    try:
        yield path
    finally:
        release_work_folder(token)


def temporary_folder(prefix: str) -> Path:
    """A new empty folder in the run's work folder (:func:`work_folder`), else in the system temporary folder."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_WORK_FOLDER.get()))


class ArchiveError(ConformError):
    """An archive that cannot or must not be unpacked: corrupt, hostile (zip-slip, links) or too large."""

    problem = SourceProblem.conform_source_failed


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what decompression may write (processing.md §4.2, §13).

    :param max_total_bytes: bytes written for one input, all members and nesting levels together
    :param max_ratio: bytes written per byte of the archive file, checked once more than ``ratio_floor`` bytes
        were written (small archives of empty tables legitimately compress very well)
    :param ratio_floor: bytes that may always be written whatever the ratio
    :param max_members: members in one archive
    :param max_depth: nesting levels of inner zips that are expanded
    """

    max_total_bytes: int = 20 * 2**30
    max_ratio: float = 1000.0
    ratio_floor: int = 100 * 2**20
    max_members: int = 1_000_000
    max_depth: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        """The caps ``OPENADDR_MAX_DECOMPRESSED_BYTES`` and ``OPENADDR_MAX_COMPRESSION_RATIO`` set."""
        return cls(max_total_bytes=settings.max_decompressed_bytes, max_ratio=settings.max_compression_ratio)


class _Budget:
    """Counts bytes actually written against the limits."""

    def __init__(self, limits: ArchiveLimits, packed_size: int, label: str) -> None:
        self.limits = limits
        self.packed_size = max(packed_size, 1)
        self.label = label
        self.written = 0

    def add(self, count: int) -> None:
        self.written += count
        limits = self.limits
        if self.written > limits.max_total_bytes or (
            self.written > limits.ratio_floor and self.written > limits.max_ratio * self.packed_size
        ):
            raise ArchiveError(
                f"{self.label}: Archive too large: more than {self.written:,} bytes from {self.packed_size:,}"
            )


def sniff(path: Path) -> str | None:
    """``'zip'``, ``'gzip'`` or None, from the first bytes of a file (None for folders)."""
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGIC:
        return "zip"
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    return None


def prepare_input(
    input_path: Path,
    work_dir: Path,
    *,
    compression: str | None,
    file: str | None,
    limits: ArchiveLimits | None = None,
    label: str = "",
) -> list[Path]:
    """Decompress the downloaded file as §4 says and list what came out.

    :param input_path: the cache file, or an already unpacked file or ``.gdb`` folder
    :param work_dir: the extraction root: archive members land directly in it (it is created if needed and
        should be empty; ``conform.file`` is matched against paths relative to it, §5)
    :param compression: the entry's ``compression`` (``zip``, ``gzip``, any case) or None to guess from the name
    :param file: ``conform.file``, which filters zip members
    :param limits: size caps (generous defaults)
    :param label: names the source and layer entry in messages
    :return: the extracted regular files and ``.gdb`` folders sorted by path, or ``[input_path]`` when nothing was
        decompressed (then the extraction root is ``input_path.parent``)
    :raises ArchiveError: corrupt, hostile or too large archive
    :raises ConformError: an unknown ``compression``
    """
    from openaddr.readers.limits import refuse_special_file

    refuse_special_file(input_path, label or input_path.name)
    limits = limits or ArchiveLimits()
    prefix = f"{label}: " if label else ""
    if compression is not None:
        if not isinstance(compression, str) or compression.lower() not in ("zip", "gzip"):
            raise ConformError(f"{prefix}Unknown compression {compression!r}")
        wanted = compression.lower()
    else:
        suffix = input_path.suffix.lower()
        wanted = {".zip": "zip", ".gz": "gzip"}.get(suffix, "")
        if not wanted:
            log.info("Could not guess a single compression from file names")
    actual = sniff(input_path)
    if actual is None:
        if wanted:
            log.info("%s is not a %s archive; using it as it is", input_path.name, wanted)
        return [input_path]
    if wanted and actual != wanted:
        log.info("%s is a %s archive although %s was expected", input_path.name, actual, wanted)
    elif not wanted:
        log.info("%s is a %s archive by its first bytes", input_path.name, actual)
    if actual == "gzip":
        budget = _Budget(limits, input_path.stat().st_size, label or input_path.name)
        return [_gunzip(input_path, work_dir, budget)]
    return unzip(input_path, work_dir, file=file, limits=limits, label=label)


def _gunzip(path: Path, work_dir: Path, budget: _Budget) -> Path:
    name = path.name
    target = work_dir / (name[:-3] if name.lower().endswith(".gz") and len(name) > 3 else f"{name}.out")
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.open(path, "rb") as src, target.open("wb") as dst:
            _copy(src, dst, budget)
    except ArchiveError:
        target.unlink(missing_ok=True)
        raise
    except (OSError, EOFError, zlib.error) as exc:
        target.unlink(missing_ok=True)
        raise ArchiveError(f"{budget.label}: Corrupt gzip file {path.name}: {exc}") from None
    log.info("Decompressed %s to %s (%d bytes)", path.name, target.name, budget.written)
    return target


def _copy(src: IO[bytes] | gzip.GzipFile, dst: IO[bytes], budget: _Budget) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        budget.add(len(chunk))


def unzip(
    path: Path, dest: Path, *, file: str | None = None, limits: ArchiveLimits | None = None, label: str = ""
) -> list[Path]:
    """Extract a zip into ``dest`` following §4.2 and list the result.

    The filter (``conform.file`` and, for a shapefile, its ``.shx``/``.dbf``/``.prj``) selects members by full
    path or by a folder above them; if it selects nothing, members whose basename matches; if still nothing,
    everything. Inner zips are expanded into a sibling folder, recursively up to ``limits.max_depth``. Each
    attempt extracts into a staging folder inside ``dest``, so a retry never touches what ``dest`` held before.

    :return: the extracted regular files and ``.gdb`` folders, sorted by path
    :raises ArchiveError: corrupt, hostile or too large archive
    """
    limits = limits or ArchiveLimits()
    label = label or path.name
    wanted = _wanted_names(file)
    modes = ("path", "basename", "all") if wanted else ("all",)
    dest.mkdir(parents=True, exist_ok=True)
    packed = path.stat().st_size
    for mode in modes:
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            matched = _extract(path, staging, wanted, mode, limits, _Budget(limits, packed, label), depth=0)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if matched or mode == "all":
            if mode != modes[0]:
                log.info("conform.file %r matched no member by path; extracted by %s", file, mode)
            break
        shutil.rmtree(staging, ignore_errors=True)
    relative = [p.relative_to(staging).parts for p in _listing(staging)]
    for entry in staging.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.rename(target)
    staging.rmdir()
    result = [dest.joinpath(*parts) for parts in relative]
    log.info("Extracted %d files from %s", len(result), path.name)
    return result


def _wanted_names(file: str | None) -> set[str]:
    if not isinstance(file, str) or not file.strip():
        return set()
    name = file.strip().replace("\\", "/").strip("/").lower()
    while name.startswith("./"):
        name = name[2:]
    wanted = {name}
    if name.endswith(".shp"):
        wanted.update(name[:-4] + ext for ext in _SHAPEFILE_COMPANIONS)
    return wanted


def _selected(member: str, wanted: set[str], mode: str) -> bool:
    if mode == "all":
        return True
    lower = member.lower().rstrip("/")
    if mode == "path":
        return any(lower == w or lower.startswith(w + "/") for w in wanted)
    base = lower.rsplit("/", 1)[-1]
    return any(base == w.rsplit("/", 1)[-1] for w in wanted)


def _safe_parts(name: str, label: str) -> tuple[str, ...]:
    # Zips made on Windows often use backslashes; treat them as separators so "..\\x" is caught too.
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise ArchiveError(f"{label}: Unsafe absolute path in archive: {name!r}")
    parts = tuple(p for p in PurePosixPath(posix).parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{label}: Unsafe path in archive: {name!r}")
    return parts


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _is_special(info: zipfile.ZipInfo) -> bool:
    """A member whose Unix mode says FIFO, device or socket."""
    mode = info.external_attr >> 16
    return info.create_system == 3 and (
        stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)
    )


def _extract(
    path: Path, dest: Path, wanted: set[str], mode: str, limits: ArchiveLimits, budget: _Budget, depth: int
) -> int:
    """Extract the selected members of one zip (and expand inner zips); return how many matched the filter."""
    label = budget.label
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"{label}: Corrupt zip file {path.name}: {exc}") from None
    matched = 0
    inner: list[Path] = []
    root = dest.resolve()
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise ArchiveError(f"{label}: Archive too large: {len(members):,} members in {path.name}")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_total_bytes:
            raise ArchiveError(f"{label}: Archive too large: {path.name} declares {declared:,} bytes")
        for info in members:
            parts = _safe_parts(info.filename, label)
            if _is_link(info):
                raise ArchiveError(f"{label}: Refusing to extract a link from the archive: {info.filename!r}")
            if _is_special(info):
                from openaddr.readers.limits import special_kind

                raise ArchiveError(
                    f"{label}: Refusing to extract {special_kind(info.external_attr >> 16)} from the archive: "
                    f"{info.filename!r}"
                )
            if not parts:
                continue
            relative = "/".join(parts)
            is_zip = not info.is_dir() and relative.lower().endswith(".zip") and depth < limits.max_depth
            selected = _selected(relative, wanted, mode)
            if not (selected or (is_zip and wanted)):
                continue
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(root):
                raise ArchiveError(f"{label}: Unsafe path in archive: {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_dir():
                raise ArchiveError(f"{label}: Archive member {info.filename!r} clashes with another member")
            try:
                with archive.open(info) as src, target.open("wb") as dst:
                    _copy(src, dst, budget)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise ArchiveError(
                    f"{label}: Corrupt zip member {info.filename!r} in {path.name}: {exc}"
                ) from None
            if is_zip and sniff(target) == "zip":
                inner.append(target)
            elif selected:
                matched += 1
            else:
                target.unlink()  # named .zip and extracted only to look inside, but not a zip
    for inner_zip in inner:
        folder = inner_zip.with_name(inner_zip.name[: -len(".zip")] or "unzipped")
        if folder.exists() and not folder.is_dir():
            folder = inner_zip.with_name(inner_zip.name + ".unzipped")
        folder.mkdir(parents=True, exist_ok=True)
        log.debug("Expanding inner zip %s", inner_zip.relative_to(dest))
        matched += _extract(inner_zip, folder, wanted, mode, limits, budget, depth + 1)
        inner_zip.unlink()
    return matched


def _listing(root: Path) -> list[Path]:
    """Every regular file below ``root`` plus every folder whose name ends in ``.gdb``, sorted by path."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        for d in dirs:
            if d.lower().endswith(".gdb"):
                found.append(base / d)
        for f in files:
            p = base / f
            if p.is_file() and not p.is_symlink():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def lowercase_extension(path: Path) -> tuple[Path, Path | None]:
    """A path GDAL can open when the extension is not lower-case (``.SHP``, ``.Shp``; §4.4).

    GDAL looks for ``x.dbf`` or ``x.DBF`` beside ``x.Shp``, never ``x.Dbf``
    (``fixtures/machine/data/us-ca-alameda_county-excerpt-mixedcase.zip``). The file, and for shapefiles its
    ``.shx``, ``.dbf``, ``.prj`` and ``.cpg`` companions, get lower-case links (symbolic, else hard, else copies) in a
    temporary folder, so nothing is written beside the input, which may be read-only.

    :return: the path to open, and the temporary folder the caller removes afterwards (None when no link was
        needed)
    """
    suffix = path.suffix
    if not path.is_file() or suffix == suffix.lower():
        return path, None
    names = [path.name]
    if suffix.lower() == ".shp":
        for sibling in sorted(path.parent.iterdir()):
            ext = sibling.suffix.lower()
            if sibling.stem == path.stem and ext in _LINKED_COMPANIONS and sibling.is_file():
                names.append(sibling.name)
    tmp = temporary_folder("openaddr-links-")
    for name in names:
        link_file(path.parent / name, tmp / _lower_suffix(name))
    log.debug("Linked %s as %s for GDAL", path.name, _lower_suffix(path.name))
    return tmp / _lower_suffix(path.name), tmp


def _lower_suffix(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}{dot}{ext.lower()}"


def link_file(src: Path, dst: Path) -> None:
    """``dst`` as a symbolic link to ``src``, else a hard link, else a copy (nothing when it exists)."""
    if dst.exists():
        return
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def remove_paths(paths: Iterable[Path | None]) -> None:
    """Remove temporary folders made by :func:`lowercase_extension` (best effort)."""
    for p in paths:
        if p is not None:
            shutil.rmtree(p, ignore_errors=True)
