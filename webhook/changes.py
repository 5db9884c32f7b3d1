"""The source files a GitHub event changed, read through the GitHub API (machine-ci.md §2.1 step 8).

Every call goes through PyGithub's requester (:func:`openaddr.github.github_client`: authenticated, 10 s timeout,
no retries of its own) with the absolute URLs GitHub put in the webhook payload, so GitHub Enterprise and the
loopback fake work alike. Contents are fetched in parallel, bounded by a thread pool; PyGithub's connection object
is not safe to share between threads, so each worker thread has a client of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from github import GithubException

if TYPE_CHECKING:
    import github

log = logging.getLogger(__name__)

#: The compare API lists at most this many files; past it the pull request's files list is paginated.
COMPARE_FILE_LIMIT = 300
#: GitHub's pull-request files list: 100 a page, 3000 files at most.
PULL_FILES_PAGE = 100
PULL_FILES_PAGES = 30

ClientFactory = Callable[[], "github.Github"]


class ReadError(Exception):
    """The changed files could not be read from GitHub (the message goes into the *error* status)."""


@dataclass(frozen=True)
class ChangedFile:
    """One changed source file at the head commit.

    :param path: e.g. ``sources/us/wy/park.json``
    :param blob_sha: git blob sha of the content
    :param content_b64: the content, base64 as GitHub sent it
    """

    path: str
    blob_sha: str
    content_b64: str


_TEMPLATE = re.compile(r"\{([+/]?)([a-z_]+)\}")


def expand(template: str, **values: str) -> str:
    """Expand the RFC 6570 templates of GitHub's payload URLs (``{sha}``, ``{/sha}``, ``{+path}``).

    A variable not given is dropped (``{/sha}`` → nothing), as GitHub's clients do.
    """

    def replace(match: re.Match[str]) -> str:
        operator, name = match.groups()
        value = values.get(name)
        if value is None:
            return ""
        if operator == "+":
            return urllib.parse.quote(value, safe="/")
        quoted = urllib.parse.quote(value, safe="")
        return "/" + quoted if operator == "/" else quoted

    return _TEMPLATE.sub(replace, template)


def is_source_path(path: str) -> bool:
    """A path under ``sources/`` ending in ``.json`` (§2.1 step 8)."""
    return path.startswith("sources/") and path.endswith(".json")


def _describe(error: BaseException) -> str:
    if isinstance(error, GithubException):
        message = error.data.get("message") if isinstance(error.data, dict) else error.data
        return f"HTTP {error.status} {message}"
    return f"{type(error).__name__}"


def get_json(client: github.Github, url: str, what: str, params: Mapping[str, Any] | None = None) -> Any:
    """GET an absolute GitHub URL through the client.

    :param what: what is read, for the error (a status description holds 140 characters: no URL there)
    :raises ReadError: "<what>: HTTP <status> <message>" or the connection error's name
    """
    try:
        _, data = client.requester.requestJsonAndCheck("GET", url, parameters=dict(params or {}))
    except (GithubException, requests.RequestException, OSError) as error:
        log.warning("GET %s failed: %s", url, _describe(error))
        raise ReadError(f"{what}: {_describe(error)}") from error
    return data


def push_paths(payload: Mapping[str, Any]) -> list[str]:
    """The union over a push's commits (in order) of ``added`` and ``modified``, minus those ``removed`` later."""
    paths: dict[str, None] = {}
    for commit in payload.get("commits") or []:
        for path in [*(commit.get("added") or []), *(commit.get("modified") or [])]:
            paths[path] = None
        for path in commit.get("removed") or []:
            paths.pop(path, None)
    return list(paths)


def compare(client: github.Github, compare_url: str, base: str, head: str) -> dict[str, Any]:
    """The compare API's answer for ``base...head``."""
    data: dict[str, Any] = get_json(
        client, expand(compare_url, base=base, head=head), f"compare {base[:7]}...{head[:7]}"
    )
    return data


def _files_of(answer: Mapping[str, Any]) -> list[str]:
    return [item["filename"] for item in answer.get("files") or [] if item.get("status") != "removed"]


def push_changed_paths(client: github.Github, payload: Mapping[str, Any]) -> list[str]:
    """Paths a push changed: its commits' files, plus the branch's own changes since it left the default branch.

    ``compare <default branch>...<head>`` gives the merge base; when it is not the head, the files of
    ``<merge base>...<head>`` are added: GitHub's three-dot compare already diffs from the merge base, so they are
    the files of that same answer (one request instead of two). 7.5.5 compared against ``master`` literally.
    """
    repository = payload["repository"]
    head = payload["head_commit"]["id"]
    paths = dict.fromkeys(push_paths(payload))
    default = repository.get("default_branch") or repository.get("master_branch") or "master"
    answer = compare(client, repository["compare_url"], default, head)
    merge_base = (answer.get("merge_base_commit") or {}).get("sha")
    if merge_base != head:
        paths.update(dict.fromkeys(_files_of(answer)))
    return list(paths)


def pull_changed_paths(client: github.Github, pull: Mapping[str, Any]) -> list[str]:
    """Paths a pull request changed: compare ``base.sha...head.sha`` through the head repository's compare URL;
    past :data:`COMPARE_FILE_LIMIT` files the paginated pull-request files list."""
    head_repo = pull["head"].get("repo") or pull["base"]["repo"]
    answer = compare(client, head_repo["compare_url"], pull["base"]["sha"], pull["head"]["sha"])
    files = answer.get("files") or []
    if len(files) < COMPARE_FILE_LIMIT:
        return _files_of(answer)
    paths: list[str] = []
    for page in range(1, PULL_FILES_PAGES + 1):
        items = get_json(
            client, pull["url"] + "/files", "pull request files", {"per_page": PULL_FILES_PAGE, "page": page}
        )
        paths += [item["filename"] for item in items if item.get("status") != "removed"]
        if len(items) < PULL_FILES_PAGE:
            break
    return paths


def fetch_contents(
    client_factory: ClientFactory,
    paths: Iterable[str],
    *,
    contents_url: str,
    blobs_url: str | None,
    ref: str,
    workers: int = 32,
    pool: Executor | None = None,
) -> list[ChangedFile]:
    """Fetch each path through the contents API at ``ref``, in parallel (at most ``workers`` at once, or on
    ``pool``'s threads when given; one path is fetched in the calling thread).

    A non-2xx answer skips the file with a WARNING (it was deleted); an encoding other than base64 is an error;
    files over 1 MB, which the contents API sends without content, are fetched through the git blobs API.

    :raises ReadError: on a connection error, a server error or an unknown encoding
    """
    local = threading.local()

    def client() -> github.Github:
        if not hasattr(local, "client"):
            local.client = client_factory()
        return local.client  # type: ignore[no-any-return]

    def one(path: str) -> ChangedFile | None:
        url = expand(contents_url, path=path)
        try:
            _, data = client().requester.requestJsonAndCheck("GET", url, parameters={"ref": ref})
        except GithubException as error:
            if error.status >= 500:
                raise ReadError(f"{path}: {_describe(error)}") from error
            log.warning("Skipping %s at %s: %s", path, ref, _describe(error))
            return None
        except (requests.RequestException, OSError) as error:
            raise ReadError(f"{path}: {_describe(error)}") from error
        if not isinstance(data, dict) or data.get("type", "file") != "file":
            log.warning("Skipping %s at %s: not a file", path, ref)
            return None
        encoding, content = data.get("encoding"), data.get("content") or ""
        if encoding in ("none", None, "") and not content and blobs_url:
            blob = get_json(client(), expand(blobs_url, sha=data["sha"]), f"{path} blob")
            encoding, content = blob.get("encoding"), blob.get("content") or ""
        if encoding != "base64":
            raise ReadError(f"{path}: unexpected encoding {encoding!r}")
        return ChangedFile(path, str(data["sha"]), str(content))

    unique = list(dict.fromkeys(paths))
    if not unique:
        return []
    if len(unique) == 1:
        results = [one(unique[0])]
    elif pool is not None:
        results = list(pool.map(one, unique))
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as own:
            results = list(own.map(one, unique))
    return [result for result in results if result is not None]
