"""Listing the source files of a batch set (machine-ci.md §6).

The sources come from a local checkout of openaddresses/openaddresses, or from GitHub: the head commit of a ref is
resolved and the repository is read from **one** tarball download at that commit, instead of one contents call per
file as the original Machine did. Every ``sources/**.json`` file is listed with its git blob sha, the ``source_id``
7.5.5 recorded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, TypeVar

import requests
from github import GithubException, RateLimitExceededException

from openaddr.errors import OpenaddrError
from openaddr.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Callable

    import github

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_OWNER = "openaddresses"
DEFAULT_REPOSITORY = "openaddresses"

#: Prefix of a GitHub location in :func:`list_sources`.
GITHUB_PREFIX = "github:"

# GitHub's own rules for owner and repository names: no slashes, nothing to escape in a URL path.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*)$")
_LOCATION = re.compile(r"^(?P<owner>[^/@]+)/(?P<repository>[^/@]+)(?:@(?P<ref>.+))?$")

_CHUNK = 1 << 16


class SourcesLocationError(OpenaddrError):
    """The sources of a set cannot be listed: bad location, unknown repository or ref, GitHub unavailable."""


@dataclass(frozen=True)
class SourceFile:
    """One source file of a set.

    :param path: the path from the repository root, posix, e.g. ``sources/us/wy/park.json``
    :param blob_sha: git's blob sha1 of the content (what ``git hash-object`` prints)
    :param content: the raw bytes of the file
    """

    path: str
    blob_sha: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class SourceListing:
    """Every source file of a repository at one commit.

    :param owner: the repository owner
    :param repository: the repository name
    :param commit_sha: the commit the files come from; None for a local folder that is not a git work tree
    :param files: the source files, sorted by path
    """

    owner: str
    repository: str
    commit_sha: str | None
    files: list[SourceFile]


def git_blob_sha(content: bytes) -> str:
    """The sha1 git gives ``content`` as a blob.

    :param content: the file's bytes
    :return: 40 hex digits, as ``git hash-object`` prints
    """
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _is_source_path(parts: tuple[str, ...]) -> bool:
    """``sources/…/<name>.json``, with no empty, ``.`` or ``..`` segment."""
    return (
        len(parts) >= 2
        and parts[0] == "sources"
        and parts[-1].endswith(".json")
        and all(part not in ("", ".", "..") for part in parts)
    )


def _git_head(root: Path) -> str | None:
    """The HEAD commit when ``root`` is the top of a git work tree, else None."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        top = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        # A folder inside some other work tree (a temporary copy, a subfolder) is not described by its HEAD.
        if not top or Path(top).resolve() != root.resolve():
            return None
        head = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("No git commit for %s: %s", root, error)
        return None
    return head or None


def list_local_sources(
    root: Path, *, owner: str = DEFAULT_OWNER, repository: str = DEFAULT_REPOSITORY
) -> SourceListing:
    """Every ``sources/**/*.json`` file of a local checkout.

    :param root: the checkout (the folder holding ``sources/``)
    :param owner: the owner to record
    :param repository: the repository to record
    :return: the listing; its commit is ``git rev-parse HEAD`` when ``root`` is the top of a git work tree
        (uncommitted changes are listed as they are on disk), else None
    :raises SourcesLocationError: when ``root`` is not a folder
    """
    root = Path(root)
    if not root.is_dir():
        raise SourcesLocationError(f"sources folder {root} does not exist")
    files = []
    sources = root / "sources"
    if sources.is_dir():
        for path in sources.rglob("*.json"):
            if not path.is_file():
                continue
            content = path.read_bytes()
            relative = path.relative_to(root).as_posix()
            files.append(SourceFile(relative, git_blob_sha(content), content))
    else:
        log.warning("%s has no sources folder", root)
    files.sort(key=lambda source: source.path)
    commit_sha = _git_head(root)
    log.info("Listed %d sources in %s (commit %s)", len(files), root, commit_sha)
    return SourceListing(owner, repository, commit_sha, files)


def _is_transient(error: BaseException) -> bool:
    """Whether asking GitHub again may help: server errors, rate limits, broken connections and downloads."""
    if isinstance(error, RateLimitExceededException):
        return True
    if isinstance(error, GithubException):
        return error.status >= 500 or error.status in (408, 429)
    if isinstance(error, _DownloadError):
        return error.transient
    return isinstance(error, (requests.RequestException, tarfile.ReadError, EOFError, zlib.error, OSError))


class _DownloadError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _describe(error: BaseException) -> str:
    if isinstance(error, GithubException):
        message = error.data.get("message") if isinstance(error.data, dict) else error.data
        return f"HTTP {error.status}: {message}"
    return f"{type(error).__name__}: {error}"


class _Retrying:
    """Runs GitHub steps for one repository with the retry policy of §6 and clear errors."""

    def __init__(
        self, where: str, attempts: int, retry_delay: float, sleep: Callable[[float], object]
    ) -> None:
        self.where = where
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.sleep = sleep

    def __call__(self, what: str, step: Callable[[], T]) -> T:
        """Run ``step``, retried on transient GitHub failures (:class:`openaddr.retry.RetryPolicy`, tenacity)."""
        policy = RetryPolicy(
            delays=(self.retry_delay,) * (self.attempts - 1), max_retry_after=self.retry_delay, name=what
        )
        tries = 0

        def attempt() -> T:
            nonlocal tries
            tries += 1
            try:
                return step()
            except Exception as error:
                if _is_transient(error) and tries < self.attempts:
                    log.warning(
                        "Could not %s of %s (attempt %d/%d), retrying in %ss: %s",
                        what,
                        self.where,
                        tries,
                        self.attempts,
                        self.retry_delay,
                        _describe(error),
                    )
                raise

        try:
            return policy.call(attempt, transient=_is_transient, sleep=self.sleep, log_retries=False)
        except Exception as error:
            after = f" after {tries} attempts" if _is_transient(error) else ""
            raise SourcesLocationError(
                f"Could not {what} of {self.where}{after}: {_describe(error)}"
            ) from error


def _check_names(owner: str, repository: str) -> None:
    for name in (owner, repository):
        if not _NAME.match(name):
            raise SourcesLocationError(
                f"invalid GitHub owner or repository name {name!r} in {owner}/{repository}"
            )


def resolve_head_commit(
    client: github.Github,
    owner: str = DEFAULT_OWNER,
    repository: str = DEFAULT_REPOSITORY,
    ref: str | None = None,
    *,
    attempts: int = 3,
    retry_delay: float = 5.0,
    sleep: Callable[[float], object] = time.sleep,
) -> str:
    """The commit sha a ref points at (what ``create_set`` records, §6).

    :param client: the PyGithub client
    :param owner: the repository owner
    :param repository: the repository name
    :param ref: a branch, tag or commit; None: the repository's default branch
    :param attempts: how many times each GitHub request is tried at most
    :param retry_delay: seconds to wait before trying again after a server or connection error
    :param sleep: how to wait (tests pass a no-op)
    :return: the 40-digit commit sha
    :raises SourcesLocationError: unknown repository or ref, or GitHub still failing after the last attempt
    """
    _check_names(owner, repository)
    retrying = _Retrying(f"{owner}/{repository}@{ref or '<default branch>'}", attempts, retry_delay, sleep)
    return _resolve(client, owner, repository, ref, retrying)[1]


def _resolve(
    client: github.Github, owner: str, repository: str, ref: str | None, retrying: _Retrying
) -> tuple[github.Repository.Repository, str]:
    repo = retrying("read the repository", lambda: client.get_repo(f"{owner}/{repository}"))
    if ref is None:
        ref = repo.default_branch  # read with the repository: no request
        retrying.where = f"{owner}/{repository}@{ref}"
    sha = retrying("resolve the commit", lambda: repo.get_commit(ref).sha)
    log.info("%s/%s@%s is commit %s", owner, repository, ref, sha)
    return repo, sha


def _auth_headers(client: github.Github, url: str) -> dict[str, str]:
    """The client's Authorization header when ``url`` is on the API's own host (GitHub Enterprise, a test server).

    github.com redirects archives to ``codeload.github.com`` with a short-lived token in the URL; the API token must
    not travel there.
    """
    requester = client.requester
    headers: dict[str, str] = {"User-Agent": requester.kwargs.get("user_agent") or "openaddr-machine"}
    target, api = urllib.parse.urlsplit(url), urllib.parse.urlsplit(requester.base_url)
    if requester.auth is not None and (target.scheme, target.netloc) == (api.scheme, api.netloc):
        requester.auth.authentication(headers)
    return headers


def _download(client: github.Github, url: str, out: IO[bytes]) -> int:
    """Stream ``url`` into ``out`` (rewound and truncated first); return the byte count."""
    timeout = client.requester.kwargs.get("timeout") or 10
    out.seek(0)
    out.truncate()
    with requests.get(
        url,
        headers=_auth_headers(client, url),
        timeout=(timeout, timeout),
        stream=True,
        allow_redirects=True,
        verify=client.requester.kwargs.get("verify", True),
    ) as response:
        if response.status_code != 200:
            raise _DownloadError(
                f"archive download {_redact(response.url)} answered HTTP {response.status_code}",
                transient=response.status_code >= 500 or response.status_code in (408, 429),
            )
        size = 0
        for chunk in response.iter_content(_CHUNK):
            out.write(chunk)
            size += len(chunk)
    out.flush()
    return size


def _redact(url: str) -> str:
    """``url`` without its query (codeload URLs of private repositories carry a token there)."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()


def _read_tarball(archive: IO[bytes]) -> list[SourceFile]:
    """Every ``<top>/sources/**.json`` member of a GitHub tarball."""
    archive.seek(0)
    files = []
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts[1:]  # drop the top folder, <owner>-<repository>-<sha7>
            if not _is_source_path(parts):
                continue
            if not member.isfile():
                log.warning("Skipping %s in the archive: not a regular file", member.name)
                continue
            reader = tar.extractfile(member)
            if reader is None:  # pragma: no cover - isfile() members always have data
                continue
            content = reader.read()
            files.append(SourceFile("/".join(parts), git_blob_sha(content), content))
    files.sort(key=lambda source: source.path)
    return files


def list_github_sources(
    client: github.Github,
    owner: str,
    repository: str,
    ref: str | None = None,
    *,
    attempts: int = 3,
    retry_delay: float = 5.0,
    sleep: Callable[[float], object] = time.sleep,
) -> SourceListing:
    """Every ``sources/**.json`` file of a GitHub repository, from one tarball at the head commit of ``ref``.

    The archive link GitHub redirects to (``codeload.github.com`` for github.com) is downloaded into a temporary
    file, then read without unpacking.

    :param client: the PyGithub client (e.g. ``GithubHook(...).get_conn()``)
    :param owner: the repository owner
    :param repository: the repository name
    :param ref: a branch, tag or commit; None: the repository's default branch
    :param attempts: how many times each GitHub step is tried at most
    :param retry_delay: seconds to wait before trying again after a server, connection or download error
    :param sleep: how to wait (tests pass a no-op)
    :return: the listing, with the resolved commit sha
    :raises SourcesLocationError: unknown repository or ref, a broken archive, or GitHub still failing after the
        last attempt; the message names owner, repository and ref
    """
    _check_names(owner, repository)
    retrying = _Retrying(f"{owner}/{repository}@{ref or '<default branch>'}", attempts, retry_delay, sleep)
    repo, sha = _resolve(client, owner, repository, ref, retrying)

    with tempfile.TemporaryFile(prefix="openaddr-sources-", suffix=".tar.gz") as archive:

        def fetch() -> list[SourceFile]:
            link = repo.get_archive_link("tarball", sha)
            # The location may be relative on servers other than github.com.
            link = urllib.parse.urljoin(f"{repo.url}/", link)
            size = _download(client, link, archive)
            log.info("Downloaded %s/%s at %s: %d bytes from %s", owner, repository, sha, size, _redact(link))
            return _read_tarball(archive)

        files = retrying("download the archive", fetch)
    log.info("Listed %d sources in %s/%s at %s", len(files), owner, repository, sha)
    return SourceListing(owner, repository, sha, files)


def parse_github_location(location: str) -> tuple[str, str, str | None]:
    """Split ``github:owner/repository[@ref]``.

    :param location: the location, with its ``github:`` prefix
    :return: owner, repository and ref (None: the default branch)
    :raises SourcesLocationError: when the location is malformed
    """
    match = _LOCATION.match(location.removeprefix(GITHUB_PREFIX).strip())
    if not location.startswith(GITHUB_PREFIX) or match is None:
        raise SourcesLocationError(
            f"invalid GitHub sources location {location!r}; expected github:owner/repository[@ref]"
        )
    owner, repository, ref = match.group("owner", "repository", "ref")
    _check_names(owner, repository)
    return owner, repository, ref


def list_sources(
    location: str | os.PathLike[str], *, client_factory: Callable[[], github.Github] | None = None
) -> SourceListing:
    """The sources of a set from a local folder or from GitHub.

    :param location: a local checkout's path, or ``github:owner/repository[@ref]``
    :param client_factory: returns the PyGithub client for a GitHub location (the Airflow layer passes the
        ``GithubHook``'s); None: an anonymous client for api.github.com
    :return: the listing
    :raises SourcesLocationError: when the location is malformed or cannot be read
    """
    text = os.fspath(location)
    if text.startswith(GITHUB_PREFIX):
        owner, repository, ref = parse_github_location(text)
        if client_factory is None:
            from openaddr.github import github_client

            client = github_client(None)
        else:
            client = client_factory()
        return list_github_sources(client, owner, repository, ref)
    return list_local_sources(Path(text).expanduser())
