"""Where runs are published: a local folder or an S3 bucket, chosen by URL (machine-ci.md §5 step 3).

:func:`open_storage` turns ``file:///abs/path`` (or a plain path, the default) into a :class:`LocalStorage` and
``s3://bucket/prefix`` into an :class:`S3Storage`. Both implement the small :class:`Storage` interface: keys are
``/``-separated paths below the storage root (``runs/42/sample.json``) and every write returns the object's public
URL, which is what the recorded state holds (machine-ci.md §7.2).

Guarantees, on both backends:

* **No half-written object is ever visible.** A local file is written to a hidden temporary file in the destination
  folder and renamed into place (``os.replace``, atomic on POSIX). On S3 a single ``PutObject`` is atomic and a
  multipart upload (used above ``multipart_threshold``) becomes visible only when it is completed.
* **A run is published all at once, its state last.** :meth:`Storage.publish_run` first uploads every file of a
  state directory under a private staging prefix ``runs/<id>/.staging-<uuid>/``; only when all of them are there does
  it withdraw any earlier publication of the same run (``index.json`` first), move (local) or server-side copy (S3)
  each object to its final key and write ``index.json`` last. A reader that sees ``runs/<id>/index.json`` therefore
  sees every object of the run. When anything fails, the staging prefix and any final object already written are
  deleted before the error propagates, so a run is either complete or absent. One publisher per run id at a time is
  assumed (Airflow runs one try of a task at a time).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import mimetypes
import os
import shutil
import tempfile
import threading
import uuid
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from openaddr.errors import OpenaddrError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

#: Environment variable naming an S3-compatible endpoint (moto's server in tests, MinIO in development):
#: ``Settings.s3_endpoint_url``.
ENDPOINT_ENV = "OPENADDR_S3_ENDPOINT_URL"

#: Folder of published runs below the storage root (machine-ci.md §5 step 3).
RUNS_FOLDER = "runs"

#: Name prefix of the private folder a run is uploaded to before it is published.
STAGING_PREFIX = ".staging-"

#: Files of a state directory published as they are (processing.md §1.3); ``cache.*`` and zips are added by pattern.
_PLAIN_FILES = frozenset(
    ("sample.json", "output.txt", "preview.png", "stats.json", "skeleton.json", "index.json", "index.txt")
)

#: The state files, published after every other object of a run, ``index.json`` last of all.
_STATE_FILES = ("index.txt", "index.json")

#: State keys whose values name files of the state directory (machine-ci.md §7.2).
_FILE_KEYS = ("cache", "sample", "processed", "output", "preview")

_CONTENT_TYPES = {
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".zip": "application/zip",
    ".png": "image/png",
    ".gz": "application/gzip",
}

_COPY_CHUNK = 1 << 20

# One boto3 session per process: each new session loads the S3 service model again (about 60 ms a client).
_SESSION: Any = None
_SESSION_LOCK = threading.Lock()
_DEFAULT_PART_SIZE = 8 << 20  # boto3's own default threshold and part size
#: S3's smallest part (but the last).
MIN_PART_SIZE = 5 << 20
#: Tries of each request of an upload (machine-ci.md §8: 3 tries per part).
PART_TRIES = 3


class StorageError(OpenaddrError):
    """Storage could not be opened or an object could not be written, read or deleted."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object is stored under the key."""


def content_type_for(key: str) -> str:
    """The ``Content-Type`` an object is served with, from its key's extension.

    ``.gz`` files are served as ``application/gzip`` without ``Content-Encoding``, so clients download
    ``out.geojson.gz`` as the gzip file it is instead of decompressing it on the fly.
    """
    suffix = os.path.splitext(key)[1].lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or "application/octet-stream"


def check_key(key: str) -> str:
    """Return ``key`` when it is a valid relative key, else raise.

    A key is ``/``-separated, without empty, ``.`` or ``..`` segments, a leading or trailing ``/``, backslashes or
    NUL; so a key can never leave the storage root of the local backend. Any other Unicode is fine.

    :raises ValueError: for an invalid key
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: empty")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}: backslash or NUL")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}: empty, '.' or '..' segment")
    return key


def _folder(prefix: str) -> str:
    """A folder prefix: ``runs/1`` → ``runs/1/`` (so it never matches ``runs/10/…``)."""
    return check_key(prefix.strip("/")) + "/"


def run_prefix(run_id: str | int) -> str:
    """``runs/<run id>``: the folder of one run.

    :raises ValueError: when the run id is empty, hidden or contains a ``/``
    """
    text = str(run_id)
    if not text or "/" in text or text.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}")
    return check_key(f"{RUNS_FOLDER}/{text}")


def gzip_file(source: Path, destination: Path) -> None:
    """Gzip ``source`` into ``destination`` reproducibly (no file name, modification time 0).

    ISA-L's gzip (standard format, about ten times as fast as zlib's default level, a dependency): the GeoJSON of
    a large source is hundreds of megabytes.
    """
    from isal import igzip

    with (
        source.open("rb") as fin,
        destination.open("wb") as raw,
        igzip.IGzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=2) as fout,
    ):
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)


# --------------------------------------------------------------------------------------------------------------
# What a state directory publishes


@dataclass(frozen=True)
class RunFile:
    """One file of a state directory and the key, relative to ``runs/<id>/``, it is published under."""

    name: str
    path: Path
    gzip: bool = False

    @property
    def content_type(self) -> str:
        """The published object's content type."""
        return content_type_for(self.name)


def package_key(zip_path: Path) -> str:
    """The published name of a packaged zip: ``<source>.zip`` with ``<source>`` read from its ``.vrt`` member.

    The state directory holds ``<last component>.zip`` while machine-ci.md §5 publishes ``<source>.zip`` with the
    whole path below ``sources/`` (``us/ca/alameda.zip``, as 7.5.5's worker did); the zip itself names it
    (processing.md §9.2). Falls back to the file name when the zip has no single valid ``.vrt`` member.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            vrts = [name for name in zf.namelist() if name.lower().endswith(".vrt")]
    except (OSError, zipfile.BadZipFile):
        vrts = []
    if len(vrts) == 1:
        try:
            return check_key(vrts[0][: -len(".vrt")] + ".zip")
        except ValueError:
            pass
    return zip_path.name


def run_files(state_dir: Path, *, output: Path | None = None) -> list[RunFile]:
    """The files of a state directory that a run publishes, data files first and ``index.json`` last.

    ``cache.*``, ``sample.json``, the packaged zip (as :func:`package_key`), ``out.geojson`` (gzipped as
    ``out.geojson.gz``, processing.md §9.3), ``output.txt``, ``preview.png``, ``stats.json``, ``skeleton.json`` (a missing conform's suggestion), ``index.txt`` and
    ``index.json``. ``out.csv`` is published inside the zip; hidden files (partial writes) and folders are ignored.

    :param state_dir: the state directory written by ``openaddr conform`` or ``process-one``
    :param output: a log to publish as ``output.txt`` instead of the directory's own (the subprocess log when it
        crashed or timed out, machine-ci.md §5 step 3)
    :raises ValueError: when two files would be published under the same name
    """
    found: dict[str, RunFile] = {}

    def add(item: RunFile) -> None:
        if item.name in found:
            raise ValueError(
                f"{found[item.name].path} and {item.path} would both be published as {item.name}"
            )
        found[item.name] = item

    entries = sorted(state_dir.iterdir()) if state_dir.is_dir() else []
    for path in entries:
        name = path.name
        if name.startswith(".") or not path.is_file():
            continue
        if output is not None and name == "output.txt":
            continue
        if name in _PLAIN_FILES or name.startswith("cache."):
            add(RunFile(name, path))
        elif name == "out.geojson":
            add(RunFile("out.geojson.gz", path, gzip=True))
        elif name.lower().endswith(".zip"):
            add(RunFile(package_key(path), path))
        else:
            log.debug("Not publishing %s", path)
    if output is not None:
        add(RunFile("output.txt", output))
    return sorted(
        found.values(), key=lambda f: (_STATE_FILES.index(f.name) if f.name in _STATE_FILES else -1, f.name)
    )


def public_state(state: Mapping[str, Any], urls: Mapping[str, str]) -> dict[str, Any]:
    """The state with the relative file names of ``cache``, ``sample``, ``processed``, ``output`` and ``preview``
    replaced by public URLs (machine-ci.md §7.2).

    ``processed`` becomes the packaged zip's URL for address layers (``out.csv``) and ``out.geojson.gz``'s for the
    others (``out.geojson``). Absolute URLs (a legacy ``cache``, processing.md §3.5) are kept; a relative name with
    no published file becomes null, since it means nothing outside the worker.

    :param state: the state as read from ``index.json``
    :param urls: published name → public URL, as :meth:`Storage.publish_run` returns
    """
    result = dict(state)
    zips = [url for name, url in urls.items() if name.endswith(".zip") and not name.startswith("cache.")]
    for key in _FILE_KEYS:
        value = result.get(key)
        if not isinstance(value, str) or not value or "://" in value:
            continue
        if key == "processed" and value == "out.csv":
            url = zips[0] if len(zips) == 1 else None
        elif key == "processed" and value == "out.geojson":
            url = urls.get("out.geojson.gz")
        else:
            url = urls.get(value)
        if url is None:
            log.warning("State names %s %r but it was not published", key, value)
        result[key] = url
    return result


def read_state(path: Path) -> tuple[list[str], list[Any]]:
    """Keys and values of an ``index.json`` (processing.md §9.7)."""
    keys, values = json.loads(path.read_bytes())
    return list(keys), list(values)


def encode_state(keys: Iterable[str], values: Iterable[Any]) -> tuple[bytes, bytes]:
    """``index.json`` and ``index.txt`` bytes of a state, in the format of :func:`openaddr.outputs.write_state`."""
    keys, values = list(keys), list(values)
    as_json = json.dumps([keys, values], indent=2).encode("utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel-tab", lineterminator="\r\n")
    writer.writerow(keys)
    writer.writerow(["" if v is None else v for v in values])
    return as_json, buf.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------------------------------
# The interface


class Storage(ABC):
    """Object storage addressed by relative ``/``-separated keys, with public URLs.

    Subclasses implement the primitives; :meth:`publish_run` is built on them and carries the all-or-nothing
    guarantee described in the module docstring.

    :param public_url: base URL of the storage root (``https://data.openaddresses.io``); ``url(key)`` is this base,
        ``/`` and the percent-encoded key. None → the backend's own URL.
    """

    def __init__(self, *, public_url: str | None = None) -> None:
        self.public_url = public_url.rstrip("/") if public_url else None

    # -- primitives -------------------------------------------------------------------------------------------

    @abstractmethod
    def put_file(self, local: Path, key: str, *, content_type: str | None = None, gzip: bool = False) -> str:
        """Store a local file under ``key``, atomically; return its public URL.

        :param local: the file to store
        :param key: the destination key
        :param content_type: served content type (S3); None → from the key's extension
        :param gzip: gzip the file on the way (the key should end in ``.gz``)
        """

    @abstractmethod
    def put_bytes(self, data: bytes, key: str, *, content_type: str | None = None) -> str:
        """Store ``data`` under ``key``, atomically; return its public URL."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of ``key``.

        :raises ObjectNotFoundError: when nothing is stored there
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key below the folder ``prefix`` (``runs/1`` covers ``runs/1/…``, not ``runs/10/…``), sorted."""

    @abstractmethod
    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key below the folder ``prefix`` with its size in bytes (what deleting them frees), by key."""

    @abstractmethod
    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete these objects, in order; missing ones are ignored."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object below the folder ``prefix`` (never the whole storage: the prefix is required)."""

    @abstractmethod
    def _backend_url(self, key: str) -> str:
        """The public URL of ``key`` when no ``public_url`` base is configured."""

    @abstractmethod
    def _promote(self, staged: str, final: str, content_type: str) -> None:
        """Make the complete object at ``staged`` visible at ``final`` (rename or server-side copy)."""

    # -- built on them ----------------------------------------------------------------------------------------

    def url(self, key: str) -> str:
        """The public URL of ``key`` (whether or not it exists)."""
        check_key(key)
        if self.public_url:
            return f"{self.public_url}/{quote(key, safe='/')}"
        return self._backend_url(key)

    def publish_run(
        self, run_id: str | int, state_dir: Path, *, output: Path | None = None
    ) -> dict[str, str]:
        """Publish a state directory under ``runs/<run id>/``, all at once and ``index.json`` last.

        Publishes the files of :func:`run_files`. The published ``index.json`` and ``index.txt`` carry the public
        URLs in place of relative file names (:func:`public_state`); the state directory is left unchanged. Any
        earlier publication of the same run is replaced entirely.

        :param run_id: the run's id
        :param state_dir: the state directory
        :param output: a log to publish as ``output.txt`` instead of the directory's own
        :return: published name (relative to ``runs/<run id>/``, e.g. ``out.geojson.gz``, ``us/ca/alameda.zip``)
            → public URL
        :raises ValueError: for an invalid run id, clashing file names or nothing to publish
        """
        prefix = run_prefix(run_id)
        files = run_files(state_dir, output=output)
        if not files:
            raise ValueError(f"nothing to publish in {state_dir}")
        names = {f.name for f in files}
        if "index.json" in names and "index.txt" not in names:  # both are written from the state below
            files.insert(-1, RunFile("index.txt", state_dir / "index.txt"))
        urls = {f.name: self.url(f"{prefix}/{f.name}") for f in files}
        state_bytes: dict[str, bytes] = {}
        if "index.json" in urls:
            keys, values = read_state(state_dir / "index.json")
            state = public_state(dict(zip(keys, values, strict=True)), urls)
            state_bytes["index.json"], state_bytes["index.txt"] = encode_state(keys, [state[k] for k in keys])

        staging = f"{prefix}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        log.info("Uploading %d files of run %s to %s", len(files), run_id, staging)
        try:
            for f in files:
                key = f"{staging}/{f.name}"
                if f.name in state_bytes:
                    self.put_bytes(state_bytes[f.name], key, content_type=f.content_type)
                else:
                    self.put_file(f.path, key, content_type=f.content_type, gzip=f.gzip)
        except BaseException:
            log.error("Upload of run %s failed; removing %s", run_id, staging)
            self._cleanup(staging)
            raise

        try:
            self._withdraw(prefix, keep=staging)
            for f in files:  # index.json is last (run_files)
                self._promote(f"{staging}/{f.name}", f"{prefix}/{f.name}", f.content_type)
        except BaseException:
            log.error("Publishing run %s failed; removing %s", run_id, prefix)
            self._cleanup(prefix)
            raise
        try:
            self.delete_prefix(staging)
        except Exception:  # the run is complete and readable; the leftover is private
            log.warning("Could not remove %s after publishing run %s", staging, run_id, exc_info=True)
        log.info("Published run %s at %s", run_id, urls.get("index.json") or self.url(prefix))
        return urls

    def publish_files(self, prefix: str, files: Mapping[str, Path]) -> dict[str, str]:
        """Publish local files under the folder ``prefix``, each complete before any is visible.

        Every file is first uploaded under a private staging folder ``<prefix>/.staging-<uuid>/`` (S3 multipart
        above ``multipart_threshold``); only when all are there is each moved (local) or server-side copied (S3)
        to ``<prefix>/<name>``, replacing the object of that name. A reader never sees a partial object: a URL
        gives the earlier complete file until the new one replaces it. Other objects under ``prefix`` are left
        alone. When an upload fails, the staging folder is removed and nothing is replaced.

        :param prefix: the destination folder, e.g. ``collections``
        :param files: object name below ``prefix`` → local file
        :return: object name → public URL
        """
        folder = _folder(prefix)[:-1]
        staging = f"{folder}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            for name, path in files.items():
                self.put_file(path, f"{staging}/{check_key(name)}", content_type=content_type_for(name))
        except BaseException:
            log.error("Upload to %s failed; removing %s", folder, staging)
            self._cleanup(staging)
            raise
        try:
            for name in files:
                self._promote(f"{staging}/{name}", f"{folder}/{name}", content_type_for(name))
        finally:
            self._cleanup(staging)
        return {name: self.url(f"{folder}/{name}") for name in files}

    def key_of(self, url: str) -> str | None:
        """The key of one of this storage's public URLs (as :meth:`url` makes them), or None for another URL."""
        base = self.url("k")[:-1]
        if not url.startswith(base) or len(url) == len(base):
            return None
        try:
            return check_key(unquote(url[len(base) :]))
        except ValueError:
            return None

    @contextlib.contextmanager
    def local_file(self, key: str, folder: Path) -> Iterator[Path]:
        """``key`` as a local file for the duration of the block: the stored file itself (local storage) or a
        download into ``folder``, removed when the block ends (S3; streamed to disk, never held in memory).

        :raises ObjectNotFoundError: when nothing is stored there
        """
        with tempfile.TemporaryDirectory(prefix="download-", dir=folder) as tmp:
            path = Path(tmp) / "object"
            self._download(key, path)
            yield path

    @abstractmethod
    def _download(self, key: str, destination: Path) -> None:
        """Stream ``key`` into the local file ``destination``.

        :raises ObjectNotFoundError: when nothing is stored there
        """

    def _withdraw(self, prefix: str, *, keep: str) -> None:
        """Delete an earlier publication under ``prefix`` (its state first) and stale staging folders."""
        kept = _folder(keep)
        old = [key for key in self.list_keys(prefix) if not key.startswith(kept)]
        if not old:
            return
        log.info("Replacing %d earlier objects of %s", len(old), prefix)
        state = [f"{prefix}/{name}" for name in reversed(_STATE_FILES)]
        self.delete_keys([key for key in state if key in old])
        self.delete_keys([key for key in old if key not in state])

    def _cleanup(self, prefix: str) -> None:
        try:
            self.delete_prefix(prefix)
        except Exception:
            log.exception("Could not remove %s", prefix)


# --------------------------------------------------------------------------------------------------------------
# A local folder


class LocalStorage(Storage):
    """Objects as files below a root folder; the default backend (``file:///abs/path`` or a plain path).

    Public URLs are ``file://`` URLs of the files unless ``public_url`` names the base the folder is served under
    (``http://localhost:5000/files`` for the results site). ``content_type`` is ignored: whatever serves the
    folder decides it from the extension.

    :param root: the root folder (created on first write)
    :param public_url: base URL of the root folder
    """

    def __init__(self, root: Path, *, public_url: str | None = None) -> None:
        super().__init__(public_url=public_url)
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        return self.root.joinpath(*check_key(key).split("/"))

    def _backend_url(self, key: str) -> str:
        return self.path(key).as_uri()

    def _write(self, key: str, fill: Callable[[Path], object]) -> str:
        """Create ``key`` by ``fill(temporary path)`` and an atomic rename."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            fill(part)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return self.url(key)

    def put_file(self, local: Path, key: str, *, content_type: str | None = None, gzip: bool = False) -> str:
        """Copy (or gzip) a file into place atomically; return its public URL."""
        if gzip:
            return self._write(key, lambda part: gzip_file(Path(local), part))
        return self._write(key, lambda part: shutil.copyfile(local, part))

    def put_bytes(self, data: bytes, key: str, *, content_type: str | None = None) -> str:
        """Write ``data`` into place atomically; return its public URL."""
        return self._write(key, lambda part: part.write_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """The content of ``key``."""
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{self.url(key)} does not exist") from exc

    @contextlib.contextmanager
    def local_file(self, key: str, folder: Path) -> Iterator[Path]:
        """The stored file of ``key`` itself (no copy); it stays readable through an open handle even when a
        publication replaces it meanwhile (rename).

        :raises ObjectNotFoundError: when nothing is stored there
        """
        path = self.path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"{self.url(key)} does not exist")
        yield path

    def _download(self, key: str, destination: Path) -> None:
        try:
            shutil.copyfile(self.path(key), destination)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"{self.url(key)} does not exist") from exc

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a file."""
        return self.path(key).is_file()

    def _walk(self, folder: Path) -> Iterator[Path]:
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                if not (name.startswith(".") and name.endswith(".part")):  # writes in progress
                    yield Path(dirpath, name)

    def list_keys(self, prefix: str) -> list[str]:
        """Every key below the folder ``prefix``, sorted."""
        folder = self.path(_folder(prefix)[:-1])
        return sorted(p.relative_to(self.root).as_posix() for p in self._walk(folder))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key below the folder ``prefix`` with its size; a file removed meanwhile is left out."""
        folder = self.path(_folder(prefix)[:-1])
        sizes: dict[str, int] = {}
        for path in self._walk(folder):
            with contextlib.suppress(FileNotFoundError):
                sizes[path.relative_to(self.root).as_posix()] = path.stat().st_size
        return dict(sorted(sizes.items()))

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete files and then their emptied folders (up to the root)."""
        for key in keys:
            path = self.path(key)
            path.unlink(missing_ok=True)
            self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> None:
        """Remove the folder ``prefix`` and everything below it."""
        folder = self.path(_folder(prefix)[:-1])
        if folder.is_dir():
            shutil.rmtree(folder)
        self._prune(folder.parent)

    def _promote(self, staged: str, final: str, content_type: str) -> None:
        target = self.path(final)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(staged), target)


# --------------------------------------------------------------------------------------------------------------
# S3


class S3Storage(Storage):
    """Objects in an S3 bucket below an optional prefix (``s3://bucket/prefix``), through boto3.

    Credentials and region come from boto3's standard chain (environment, shared files, instance roles). Files
    above ``multipart_threshold`` are uploaded and copied in parts of ``multipart_chunksize`` (at least 5 MiB),
    streamed from disk one part at a time, each part tried 3 times (:meth:`upload_file`); an unfinished multipart
    upload is never visible. No ACL is set: public reading is the
    bucket policy's business (buckets created since 2023 refuse ACLs).

    Public URLs: ``public_url`` + key when given (``https://data.openaddresses.io``), else
    ``<endpoint_url>/<bucket>/<key>`` with a custom endpoint, else ``https://<bucket>.s3.amazonaws.com/<key>``
    (``https://s3.amazonaws.com/<bucket>/<key>`` for dotted bucket names, which virtual-host TLS cannot serve).

    :param bucket: the bucket
    :param prefix: key prefix of the storage root (no leading or trailing ``/``)
    :param public_url: base URL of the storage root
    :param endpoint_url: an S3-compatible endpoint; default ``$OPENADDR_S3_ENDPOINT_URL``, else AWS
    :param region_name: the region; default from boto3's configuration
    :param multipart_threshold: size from which uploads and copies are multipart, bytes
    :param multipart_chunksize: part size, bytes
    :param client: a ready boto3 S3 client (then ``endpoint_url`` only shapes public URLs)
    :param retry_wait: seconds of the first wait between tries of an upload request (doubling up to ten times it)
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        public_url: str | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        multipart_threshold: int = _DEFAULT_PART_SIZE,
        multipart_chunksize: int = _DEFAULT_PART_SIZE,
        client: Any = None,
        retry_wait: float = 1.0,
    ) -> None:
        super().__init__(public_url=public_url)
        if not bucket:
            raise ValueError("S3 storage needs a bucket")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        if not endpoint_url:
            from openaddr.settings import Settings

            endpoint_url = Settings.from_env().s3_endpoint_url
        self.endpoint_url = (endpoint_url or "").rstrip("/") or None
        self.region_name = region_name
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self._client = client
        self._given_client = client is not None
        self._part_client: Any = None
        self.retry_wait = retry_wait
        self._transfer: Any = None

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            )
            with _SESSION_LOCK:  # creating clients from one session is not thread-safe
                global _SESSION
                if _SESSION is None:
                    _SESSION = boto3.session.Session()
                self._client = _SESSION.client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config
                )
        return self._client

    @property
    def transfer_config(self) -> Any:
        """The ``boto3.s3.transfer.TransferConfig`` of uploads and copies."""
        if self._transfer is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer = TransferConfig(
                multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunksize
            )
        return self._transfer

    def full_key(self, key: str) -> str:
        """The bucket key of ``key``."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _backend_url(self, key: str) -> str:
        quoted = quote(self.full_key(key), safe="/")
        if self.endpoint_url:
            return f"{self.endpoint_url}/{self.bucket}/{quoted}"
        if "." in self.bucket:
            return f"https://s3.amazonaws.com/{self.bucket}/{quoted}"
        return f"https://{self.bucket}.s3.amazonaws.com/{quoted}"

    def put_file(self, local: Path, key: str, *, content_type: str | None = None, gzip: bool = False) -> str:
        """Upload a file (multipart above the threshold, :meth:`upload_file`); return its public URL."""
        content_type = content_type or content_type_for(key)
        if gzip:
            with tempfile.TemporaryDirectory(prefix="openaddr-gzip-") as tmp:
                packed = Path(tmp) / "upload.gz"
                gzip_file(Path(local), packed)
                self.upload_file(packed, key, content_type=content_type)
        else:
            self.upload_file(Path(local), key, content_type=content_type)
        log.debug("Uploaded %s to s3://%s/%s", local, self.bucket, self.full_key(key))
        return self.url(key)

    @property
    def part_client(self) -> Any:
        """The client of single upload requests: botocore's own retries off, so :data:`PART_TRIES` is the whole
        number of tries of a part (the client given to the constructor, when one was)."""
        if self._part_client is None:
            if self._client is not None and self._given_client:
                self._part_client = self._client
            else:
                from botocore.config import Config

                config = Config(
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    s3={"addressing_style": "path"} if self.endpoint_url else {},
                )
                with _SESSION_LOCK:
                    global _SESSION
                    if _SESSION is None:
                        import boto3

                        _SESSION = boto3.session.Session()
                    self._part_client = _SESSION.client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config
                    )
        return self._part_client

    def upload_file(self, local: Path, key: str, *, content_type: str) -> None:
        """Stream a local file to ``key``: one ``PutObject`` below ``multipart_threshold``, else a multipart upload
        of ``multipart_chunksize`` parts (at least 5 MiB, S3's minimum) read one at a time, so memory holds one
        part whatever the file's size. Each request is tried :data:`PART_TRIES` times (tenacity, exponential
        wait); when a part fails every try the upload is aborted and the error raised: nothing becomes visible,
        since S3 shows a multipart object only once it is completed.

        :raises StorageError: a request failed every try
        """
        full = self.full_key(key)
        size = Path(local).stat().st_size
        if size < self.multipart_threshold:
            with Path(local).open("rb") as handle:
                data = handle.read()
            self._try(
                f"upload of s3://{self.bucket}/{full}",
                lambda: self.part_client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, ContentType=content_type
                ),
            )
            return
        part_size = max(self.multipart_chunksize, MIN_PART_SIZE)
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, ContentType=content_type
        )["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with Path(local).open("rb") as handle:
                number = 1
                while data := handle.read(part_size):
                    response = self._try(
                        f"part {number} of s3://{self.bucket}/{full}",
                        functools.partial(
                            self.part_client.upload_part,
                            Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=data,
                        ),
                    )  # fmt: skip
                    parts.append({"PartNumber": number, "ETag": response["ETag"]})
                    number += 1
            self._try(
                f"completing s3://{self.bucket}/{full}",
                lambda: self.part_client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise
        log.debug("Uploaded %d parts to s3://%s/%s", len(parts), self.bucket, full)

    def _try(self, what: str, request: Callable[[], Any]) -> Any:
        """Run one S3 request up to :data:`PART_TRIES` times; the last failure is raised as a StorageError."""
        import tenacity
        from botocore.exceptions import BotoCoreError, ClientError

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(PART_TRIES),
            wait=tenacity.wait_exponential(multiplier=self.retry_wait, max=10 * self.retry_wait),
            retry=tenacity.retry_if_exception_type((BotoCoreError, ClientError, OSError)),
            before_sleep=lambda state: log.warning(
                "%s failed (try %d of %d): %s",
                what,
                state.attempt_number,
                PART_TRIES,
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            return retrying(request)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"{what} failed {PART_TRIES} times: {exc}") from exc

    def put_bytes(self, data: bytes, key: str, *, content_type: str | None = None) -> str:
        """Upload ``data`` in one request; return its public URL."""
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.full_key(key),
            Body=data,
            ContentType=content_type or content_type_for(key),
        )
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        """The content of ``key``."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"s3://{self.bucket}/{self.full_key(key)} does not exist") from exc
            raise
        body: bytes = response["Body"].read()
        return body

    def _download(self, key: str, destination: Path) -> None:
        """Download ``key`` to a local file (ranged GETs in parallel above the threshold, boto3's transfer
        manager)."""
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(
                self.bucket, self.full_key(key), str(destination), Config=self.transfer_config
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"s3://{self.bucket}/{self.full_key(key)} does not exist") from exc
            raise

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (one ``HeadObject``)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[str]:
        """Every key below the folder ``prefix``, sorted."""
        folder = self.full_key(_folder(prefix)[:-1]) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", ()))
        return sorted(keys)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key below the folder ``prefix`` with its size (``ListObjectsV2``'s ``Size``)."""
        folder = self.full_key(_folder(prefix)[:-1]) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        sizes: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", ()):
                sizes[item["Key"][strip:]] = int(item.get("Size") or 0)
        return dict(sorted(sizes.items()))

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete objects in batches of 1,000, in order."""
        full = [self.full_key(key) for key in keys]
        for start in range(0, len(full), 1000):
            batch = full[start : start + 1000]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} objects from s3://{self.bucket}, "
                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object below the folder ``prefix``."""
        keys = self.list_keys(prefix)
        self.delete_keys(keys)
        log.debug("Deleted %d objects below s3://%s/%s", len(keys), self.bucket, self.full_key(prefix))

    def _promote(self, staged: str, final: str, content_type: str) -> None:
        # Managed copy: one CopyObject, or UploadPartCopy above the threshold (CopyObject stops at 5 GB); the
        # content type and other metadata of the staged object are preserved either way.
        self.client.copy(
            {"Bucket": self.bucket, "Key": self.full_key(staged)},
            self.bucket,
            self.full_key(final),
            Config=self.transfer_config,
        )


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --------------------------------------------------------------------------------------------------------------
# Choosing a backend


def open_storage(url: str | Path, *, public_url: str | None = None, **options: Any) -> Storage:
    """Open the storage a URL names.

    * ``file:///abs/path`` or a plain path (relative paths are made absolute) → :class:`LocalStorage`;
    * ``s3://bucket`` or ``s3://bucket/prefix`` → :class:`S3Storage`; ``options`` are its keyword arguments
      (``endpoint_url``, ``region_name``, ``multipart_threshold``, ``multipart_chunksize``, ``client``).

    :param url: where the storage root is
    :param public_url: base URL the root is served under (see :class:`Storage`)
    :raises ValueError: for another scheme, a ``file`` URL with a remote host, or an S3 URL without a bucket
    """
    text = str(url)
    if isinstance(url, Path) or "://" not in text:
        if options:
            raise TypeError(f"local storage takes no options, got {sorted(options)}")
        return LocalStorage(Path(text), public_url=public_url)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host: {text}")
        if options:
            raise TypeError(f"local storage takes no options, got {sorted(options)}")
        return LocalStorage(Path(unquote(parts.path)), public_url=public_url)
    if scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"S3 URL without a bucket: {text}")
        return S3Storage(parts.netloc, unquote(parts.path).strip("/"), public_url=public_url, **options)
    raise ValueError(f"unsupported storage URL {text!r}: use file://, s3:// or a path")


__all__ = [
    "ENDPOINT_ENV",
    "LocalStorage",
    "ObjectNotFoundError",
    "RunFile",
    "S3Storage",
    "Storage",
    "StorageError",
    "check_key",
    "content_type_for",
    "encode_state",
    "open_storage",
    "package_key",
    "public_state",
    "read_state",
    "run_files",
    "run_prefix",
]
