"""A fake GitHub REST API on loopback: :class:`FakeGitHub`, a real HTTP server in a thread of its own.

The tests use it through the fixtures of ``tests/github_server.py``; ``make run`` runs it as a program of its stack
(:mod:`devstack.github`), and ``make bench-webhook`` starts one beside the webhook. Its
:attr:`~FakeGitHub.base_url` is what a client takes as ``base_url`` (every URL it answers with is absolute on that
origin, as GitHub's are).

Endpoints (JSON shaped like GitHub's, reduced to the fields the Machine and PyGithub read):

* ``GET /repos/{owner}/{repo}``: the repository, with ``default_branch`` and the URL templates of webhook payloads;
* ``GET /repos/{owner}/{repo}/branches/{branch}`` and ``GET /repos/{owner}/{repo}/commits/{ref}`` (a branch, a
  full sha or a prefix of at least 7 digits; unknown → 422 "No commit found for SHA: …", as GitHub answers);
* ``GET /repos/{owner}/{repo}/tarball[/{ref}]``: 302 to ``/_codeload/{owner}/{repo}/legacy.tar.gz/{sha}`` on the same
  server (github.com sends codeload.github.com), which serves a gzipped pax tarball of the registered folder under
  ``<owner>-<repo>-<sha7>/``, with the sha in the global header, like GitHub's;
* ``POST /repos/{owner}/{repo}/statuses/{sha}``: recorded in :attr:`FakeGitHub.statuses` (with the Authorization
  header) and answered 201 with the status; without Authorization 401; an unknown state or a description over 140
  characters 422, as GitHub validates.

* ``POST /repos/{owner}/{repo}/issues/{number}/comments`` (201; recorded in :attr:`FakeGitHub.comments` by id),
  ``GET`` of the same (paginated, ``per_page``/``page`` with a ``Link`` header), ``GET``, ``PATCH`` and ``DELETE``
  ``/repos/{owner}/{repo}/issues/comments/{id}`` (404 when unknown); no repository needs registering.

* ``POST /app/installations/{id}/access_tokens``: a GitHub App's installation token, for a request carrying the
  App's JWT (``Authorization: Bearer …``); answered 201 with ``{"token": "ghs_fake_<id>", "expires_at"}``.

Knobs: :meth:`~FakeGitHub.fail_next` (the next N requests to a path answer 500 or another status),
:attr:`~FakeGitHub.max_statuses` (statuses per sha and context before GitHub's 422 "maximum number of statuses"),
:meth:`~FakeGitHub.echo_state_next` (answer a status post with another state), :attr:`~FakeGitHub.delay` (seconds before every answer; the most
requests answered at once is :attr:`~FakeGitHub.max_in_flight`).
* ``GET /repos/{owner}/{repo}/compare/{base}...{head}`` (files between the merge base and the head, from the
  commits' folders and parents, at most 300), ``GET …/contents/{path}?ref=`` (base64; over 1 MB without content,
  encoding ``none``), ``GET …/git/blobs/{sha}``, ``GET …/pulls/{number}`` and ``…/pulls/{number}/files``
  (paginated) of the pull requests in :attr:`FakeRepository.pulls`.

* GitHub's OAuth web flow and the identity a sign-in reads (the review queue's sign-in, ``webhook/auth.py``):
  ``GET /login/oauth/authorize`` (an HTML page asking which user signs in, for a registered OAuth app and its
  ``redirect_uri``; :meth:`~FakeGitHub.add_oauth_app`), ``POST /login/oauth/authorize`` (302 to the redirect URI
  with a one-time ``code`` and the ``state``), ``POST /login/oauth/access_token`` (the code for a ``gho_`` token,
  JSON with ``Accept: application/json``; a wrong code or secret is 200 with ``error``, as GitHub answers),
  ``GET /user`` and ``GET /user/memberships/orgs/{org}`` (``state: active``, or 404 for a non-member) for that
  token; users and their organisations: :meth:`~FakeGitHub.add_user`.

More endpoints are added with :meth:`FakeGitHub.route` at class level, or :meth:`FakeGitHub.add_route` in a test.
"""

from __future__ import annotations

import base64
import collections
import datetime
import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MAXIMUM_STATUSES = "This SHA and context has reached the maximum number of statuses."
STATES = ("pending", "success", "failure", "error")
DOCS = "https://docs.github.com/rest"


def send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Write a whole response with its ``Content-Length``."""
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


@dataclass(frozen=True)
class GitHubRequest:
    """One request the fake GitHub received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRepository:
    """A repository: branches pointing at commits, each commit a local folder.

    :param owner: the owner login
    :param name: the repository name
    :param default_branch: the default branch
    """

    owner: str
    name: str
    default_branch: str = "master"
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Path] = field(default_factory=dict)
    #: The parent of each commit that has one (for the merge base of a compare).
    parents: dict[str, str] = field(default_factory=dict)
    #: Pull requests by number: ``{"base": sha, "head": sha}``.
    pulls: dict[int, dict[str, str]] = field(default_factory=dict)
    _tarballs: dict[str, bytes] = field(default_factory=dict, repr=False)

    def add_commit(
        self, sha: str, folder: Path, branch: str | None = None, parent: str | None = None
    ) -> None:
        """Register commit ``sha`` with the content of ``folder`` (child of ``parent``); move ``branch`` to it
        when given."""
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ValueError(f"not a commit sha: {sha!r}")
        self.commits[sha] = Path(folder)
        if parent is not None:
            self.parents[sha] = parent
        self._tarballs.pop(sha, None)
        if branch is not None:
            self.branches[branch] = sha

    def resolve(self, ref: str) -> str | None:
        """The commit sha of a branch, a full sha or an unambiguous prefix of 7 digits or more."""
        if ref in self.branches:
            return self.branches[ref]
        ref = ref.removeprefix("refs/heads/")
        if ref in self.branches:
            return self.branches[ref]
        if re.fullmatch(r"[0-9a-f]{7,40}", ref):
            matches = [sha for sha in self.commits if sha.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        return None

    def ancestors(self, sha: str) -> list[str]:
        """``sha`` and its ancestors, nearest first."""
        line = [sha]
        while line[-1] in self.parents:
            line.append(self.parents[line[-1]])
        return line

    def merge_base(self, base: str, head: str) -> str | None:
        """The nearest ancestor of ``head`` that is also an ancestor of ``base``."""
        of_base = set(self.ancestors(base))
        return next((sha for sha in self.ancestors(head) if sha in of_base), None)

    def files(self, sha: str) -> dict[str, bytes]:
        """Every file of a commit: ``{path: content}``."""
        folder = self.commits[sha]
        return {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }

    def tarball(self, sha: str) -> bytes:
        """The gzipped tarball GitHub would serve for ``sha`` (built once, members sorted)."""
        if sha not in self._tarballs:
            top = f"{self.owner}-{self.name}-{sha[:7]}"
            buffer = io.BytesIO()
            with tarfile.open(
                fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": sha}
            ) as tar:
                folder = self.commits[sha]
                directory = tarfile.TarInfo(top + "/")
                directory.type, directory.mode = tarfile.DIRTYPE, 0o775
                tar.addfile(directory)
                for path in sorted(folder.rglob("*")):
                    name = f"{top}/{path.relative_to(folder).as_posix()}"
                    if path.is_dir():
                        info = tarfile.TarInfo(name + "/")
                        info.type, info.mode = tarfile.DIRTYPE, 0o775
                        tar.addfile(info)
                    elif path.is_file():
                        content = path.read_bytes()
                        info = tarfile.TarInfo(name)
                        info.size, info.mode = len(content), 0o664
                        tar.addfile(info, io.BytesIO(content))
            self._tarballs[sha] = gzip.compress(buffer.getvalue(), mtime=0)
        return self._tarballs[sha]


Route = Callable[["FakeGitHub", "_Handler", GitHubRequest, dict[str, str]], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    #: Keep-alive, as GitHub's API: a client's connection serves request after request (every answer has its
    #: Content-Length).
    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY: the headers and the body are two writes; with Nagle's algorithm the body would wait for the
    #: client's delayed ACK (40 ms) on a kept connection.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = GitHubRequest(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query)),
            {key: value for key, value in self.headers.items()},
            body,
        )
        self.server.owner.dispatch(self, request)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is not the place for access logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeGitHub


class FakeGitHub:
    """A fake GitHub REST API on ``127.0.0.1:port`` (0: chosen by the system)."""

    #: Routes of every instance: (method, compiled path pattern, handler); see :meth:`route`.
    routes: ClassVar[list[tuple[str, re.Pattern[str], Route]]] = []

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.RLock()
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.reset()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def reset(self) -> None:
        """Forget repositories, recorded requests and statuses, extra routes and knobs."""
        with self._lock:
            self.repositories: dict[tuple[str, str], FakeRepository] = {}
            self.requests: list[GitHubRequest] = []
            self.statuses: list[dict[str, Any]] = []
            #: How many of :attr:`statuses` each (sha, context) has (GitHub's limit is per pair; a scan of every
            #: status on each post cost the bench more than the rest of the post by the end of a run).
            self.status_counts: collections.Counter[tuple[str, str]] = collections.Counter()
            self.hits: collections.Counter[str] = collections.Counter()
            self.extra_routes: list[tuple[str, re.Pattern[str], Route]] = []
            #: GitHub's limit of statuses per sha and context (1000 on github.com).
            self.max_statuses = 1000
            self._failures: dict[str, collections.deque[tuple[int, dict[str, str]]]] = {}
            self._echo_states: collections.deque[str] = collections.deque()
            self._next_status_id = 1
            #: Issue comments by id: ``{"id", "owner", "repository", "issue", "body", "authorization"}``.
            self.comments: dict[int, dict[str, Any]] = {}
            self._next_comment_id = 1001
            #: Seconds every request waits before it is answered (real GitHub takes 0.2–0.4 s).
            self.delay = 0.0
            #: OAuth apps (client id → secret), users (login → organisations), one-time codes and access tokens.
            self.oauth_apps: dict[str, str] = {}
            self.users: dict[str, set[str]] = {}
            self.oauth_codes: dict[str, dict[str, str]] = {}
            self.oauth_tokens: dict[str, str] = {}
            #: Requests being answered now, and the most there were at once.
            self.in_flight = 0
            self.max_in_flight = 0

    # Registration and knobs ---------------------------------------------------------------------------------

    def add_repository(
        self, owner: str, repo: str, folder: Path, sha: str, default_branch: str = "master"
    ) -> FakeRepository:
        """Register ``owner/repo`` whose default branch points at commit ``sha`` holding ``folder``."""
        repository = FakeRepository(owner, repo, default_branch)
        repository.add_commit(sha, folder, branch=default_branch)
        with self._lock:
            self.repositories[(owner, repo)] = repository
        return repository

    def add_oauth_app(self, client_id: str, client_secret: str) -> None:
        """Register an OAuth app (its id and secret)."""
        with self._lock:
            self.oauth_apps[client_id] = client_secret

    def add_user(self, login: str, orgs: tuple[str, ...] | list[str] = ()) -> None:
        """Register a user who can sign in, an active member of ``orgs``."""
        with self._lock:
            self.users[login] = set(orgs)

    def fail_next(
        self, path: str, times: int = 1, status: int = 500, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``times`` requests to ``path`` (any method, no query) with ``status`` and ``headers``
        (e.g. ``Retry-After``)."""
        with self._lock:
            self._failures.setdefault(path, collections.deque()).extend([(status, headers or {})] * times)

    def echo_state_next(self, state: str, times: int = 1) -> None:
        """Answer the next ``times`` status posts (still recorded) with ``state`` instead of the posted one."""
        with self._lock:
            self._echo_states.extend([state] * times)

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"{self.base_url}{path}"

    def status_url(self, owner: str, repo: str, sha: str) -> str:
        """The ``statuses_url`` a webhook payload would carry for ``sha``."""
        return self.url(f"/repos/{owner}/{repo}/statuses/{sha}")

    def add_route(self, method: str, pattern: str, handler: Route) -> None:
        """Serve ``method`` requests whose path fully matches ``pattern`` (until :meth:`reset`); tried first."""
        with self._lock:
            self.extra_routes.insert(0, (method, re.compile(pattern), handler))

    @classmethod
    def route(cls, method: str, pattern: str) -> Callable[[Route], Route]:
        """Decorator registering a handler for every instance (named groups become its keyword ``params``)."""

        def register(handler: Route) -> Route:
            cls.routes.append((method, re.compile(pattern), handler))
            return handler

        return register

    # Serving ------------------------------------------------------------------------------------------------

    def dispatch(self, handler: _Handler, request: GitHubRequest) -> None:
        """Answer one request (after :attr:`delay`), counting it in flight."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay = self.delay
        try:
            if delay:
                time.sleep(delay)
            self._dispatch(handler, request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _dispatch(self, handler: _Handler, request: GitHubRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.hits[request.path] += 1
            failures = self._failures.get(request.path)
            failure = failures.popleft() if failures else None
            routes = [*self.extra_routes, *self.routes]
        if failure is not None:
            status, headers = failure
            message = {"message": "Server Error"} if status >= 500 else {"message": "Failed"}
            self.json(handler, message, status, **headers)
            return
        path_matched = False
        for method, pattern, route in routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            path_matched = True
            if method == request.method:
                params = {
                    key: unquote(value) for key, value in match.groupdict().items() if value is not None
                }
                route(self, handler, request, params)
                return
        if path_matched:
            self.json(handler, {"message": "Method Not Allowed"}, 405)
        else:
            self.not_found(handler)

    def json(self, handler: BaseHTTPRequestHandler, data: Any, status: int = 200, **headers: str) -> None:
        """Answer ``data`` as JSON."""
        body = json.dumps(data).encode()
        send(
            handler,
            body,
            status=status,
            headers={"Content-Type": "application/json; charset=utf-8", **headers},
        )

    def not_found(self, handler: BaseHTTPRequestHandler) -> None:
        """GitHub's 404."""
        self.json(handler, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}, 404)

    def repository(self, params: dict[str, str]) -> FakeRepository | None:
        """The registered repository of a route's ``owner`` and ``repo`` parameters."""
        with self._lock:
            return self.repositories.get((params["owner"], params["repo"]))

    # JSON shapes --------------------------------------------------------------------------------------------

    def user_json(self, login: str) -> dict[str, Any]:
        """A user or organisation as GitHub shows it."""
        return {
            "login": login,
            "id": zlib.crc32(login.encode()),
            "type": "Organization",
            "url": self.url(f"/users/{login}"),
            "html_url": f"https://github.com/{login}",
        }

    def repository_json(self, repository: FakeRepository) -> dict[str, Any]:
        """A repository as the repository API and webhook payloads show it."""
        api = self.url(f"/repos/{repository.owner}/{repository.name}")
        return {
            "id": zlib.crc32(f"{repository.owner}/{repository.name}".encode()),
            "name": repository.name,
            "full_name": f"{repository.owner}/{repository.name}",
            "private": False,
            "owner": self.user_json(repository.owner),
            "html_url": f"https://github.com/{repository.owner}/{repository.name}",
            "url": api,
            "default_branch": repository.default_branch,
            "archive_url": api + "/{archive_format}{/ref}",
            "branches_url": api + "/branches{/branch}",
            "commits_url": api + "/commits{/sha}",
            "compare_url": api + "/compare/{base}...{head}",
            "contents_url": api + "/contents/{+path}",
            "pulls_url": api + "/pulls{/number}",
            "statuses_url": api + "/statuses/{sha}",
            "blobs_url": api + "/git/blobs{/sha}",
            "issue_comment_url": api + "/issues/comments{/number}",
        }

    def commit_json(self, repository: FakeRepository, sha: str) -> dict[str, Any]:
        """A commit as the commits and branches APIs show it."""
        api = self.url(f"/repos/{repository.owner}/{repository.name}")
        person = {"name": "Open Addresses", "email": "oa@example.com", "date": "2025-01-01T00:00:00Z"}
        return {
            "sha": sha,
            "node_id": f"C_{sha[:12]}",
            "url": f"{api}/commits/{sha}",
            "html_url": f"https://github.com/{repository.owner}/{repository.name}/commit/{sha}",
            "commit": {
                "message": f"Commit {sha[:7]}",
                "url": f"{api}/git/commits/{sha}",
                "tree": {"sha": "0" * 40, "url": f"{api}/git/trees/{'0' * 40}"},
                "author": person,
                "committer": person,
            },
            "author": None,
            "committer": None,
            "parents": [],
        }


# Routes -----------------------------------------------------------------------------------------------------

_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"


@FakeGitHub.route("GET", _REPO)
def _get_repository(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None:
        server.not_found(handler)
        return
    server.json(handler, server.repository_json(repository))


@FakeGitHub.route("GET", _REPO + r"/branches/(?P<branch>.+)")
def _get_branch(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    sha = repository.branches.get(params["branch"]) if repository else None
    if repository is None or sha is None:
        server.json(handler, {"message": "Branch not found", "documentation_url": DOCS, "status": "404"}, 404)
        return
    api = server.url(f"/repos/{repository.owner}/{repository.name}")
    server.json(
        handler,
        {
            "name": params["branch"],
            "commit": server.commit_json(repository, sha),
            "_links": {"self": f"{api}/branches/{params['branch']}", "html": ""},
            "protected": False,
        },
    )


@FakeGitHub.route("GET", _REPO + r"/commits/(?P<ref>.+)")
def _get_commit(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None:
        server.not_found(handler)
        return
    sha = repository.resolve(params["ref"])
    if sha is None:
        server.json(
            handler, {"message": f"No commit found for SHA: {params['ref']}", "documentation_url": DOCS}, 422
        )
        return
    server.json(handler, {**server.commit_json(repository, sha), "stats": {}, "files": []})


@FakeGitHub.route("GET", _REPO + r"/tarball(?:/(?P<ref>.+))?")
def _get_tarball(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None:
        server.not_found(handler)
        return
    sha = repository.resolve(params.get("ref") or repository.default_branch)
    if sha is None:
        server.not_found(handler)
        return
    location = server.url(f"/_codeload/{repository.owner}/{repository.name}/legacy.tar.gz/{sha}")
    send(handler, b"", status=302, headers={"Location": location})


@FakeGitHub.route("GET", r"/_codeload/(?P<owner>[^/]+)/(?P<repo>[^/]+)/legacy\.tar\.gz/(?P<sha>[0-9a-f]{40})")
def _get_codeload(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None or params["sha"] not in repository.commits:
        send(handler, b"404: Not Found", status=404, headers={"Content-Type": "text/plain"})
        return
    filename = f"{repository.owner}-{repository.name}-{params['sha'][:7]}.tar.gz"
    send(
        handler,
        repository.tarball(params["sha"]),
        headers={
            "Content-Type": "application/x-gzip",
            "Content-Disposition": f"attachment; filename={filename}",
        },
    )


@FakeGitHub.route("POST", _REPO + r"/statuses/(?P<sha>[^/]+)")
def _post_status(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    authorization = request.headers.get("Authorization")
    if not authorization:
        server.json(handler, {"message": "Requires authentication", "documentation_url": DOCS}, 401)
        return
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        server.json(handler, {"message": "Problems parsing JSON", "documentation_url": DOCS}, 400)
        return
    if not isinstance(body, dict) or body.get("state") not in STATES:
        server.json(handler, {"message": "Validation Failed", "documentation_url": DOCS}, 422)
        return
    if len(body.get("description") or "") > 140:
        error = {"resource": "Status", "field": "description", "code": "custom"}
        error["message"] = "description is too long (maximum is 140 characters)"
        server.json(
            handler, {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS}, 422
        )
        return
    context = body.get("context") or "default"
    with server._lock:
        record = {
            "owner": params["owner"],
            "repository": params["repo"],
            "sha": params["sha"],
            "state": body["state"],
            "description": body.get("description"),
            "context": context,
            "target_url": body.get("target_url"),
            "body": body,
            "authorization": authorization,
        }
        if server.status_counts[(params["sha"], context)] >= server.max_statuses:
            error = {"resource": "Status", "code": "custom", "message": MAXIMUM_STATUSES}
            server.json(
                handler, {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS}, 422
            )
            return
        server.statuses.append(record)
        server.status_counts[(params["sha"], context)] += 1
        state = server._echo_states.popleft() if server._echo_states else body["state"]
        status_id = server._next_status_id
        server._next_status_id += 1
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    server.json(
        handler,
        {
            "url": server.url(f"/repos/{params['owner']}/{params['repo']}/statuses/{params['sha']}"),
            "id": status_id,
            "node_id": f"SC_{status_id}",
            "state": state,
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": context,
            "created_at": now,
            "updated_at": now,
            "creator": server.user_json("openaddr-bot"),
        },
        201,
    )


@FakeGitHub.route("POST", r"/app/installations/(?P<installation>[0-9]+)/access_tokens")
def _post_installation_token(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    if not (request.headers.get("Authorization") or "").startswith("Bearer "):
        server.json(
            handler, {"message": "A JSON web token could not be decoded", "documentation_url": DOCS}, 401
        )
        return
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    server.json(
        handler,
        {"token": f"ghs_fake_{params['installation']}", "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        201,
    )


# OAuth web flow ---------------------------------------------------------------------------------------------

_AUTHORIZE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authorize application · fake GitHub</title></head>
<body><h1>Authorize {client_id}</h1><p>Scope: {scope}</p>
<form method="post" action="/login/oauth/authorize">
<label>Sign in as <input name="login" value="" autocomplete="off"></label>
<input type="hidden" name="client_id" value="{client_id}"><input type="hidden" name="redirect_uri" value="{redirect_uri}">
<input type="hidden" name="state" value="{state}">
<button type="submit">Authorize</button></form></body></html>
"""


def _html(handler: _Handler, body: str, status: int = 200) -> None:
    send(handler, body.encode(), status=status, headers={"Content-Type": "text/html; charset=utf-8"})


@FakeGitHub.route("GET", r"/login/oauth/authorize")
def _get_authorize(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    import html

    query = request.query
    if query.get("client_id") not in server.oauth_apps or not query.get("redirect_uri"):
        _html(handler, "<!doctype html><title>404</title><p>Unknown OAuth application", 404)
        return
    values = {
        key: html.escape(query.get(key, ""), quote=True)
        for key in ("client_id", "redirect_uri", "state", "scope")
    }
    _html(handler, _AUTHORIZE_PAGE.format(**values))


@FakeGitHub.route("POST", r"/login/oauth/authorize")
def _post_authorize(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    form = dict(parse_qsl(request.body.decode()))
    login, client_id, redirect_uri = (
        form.get("login", ""),
        form.get("client_id", ""),
        form.get("redirect_uri", ""),
    )
    if client_id not in server.oauth_apps or not redirect_uri or login not in server.users:
        _html(handler, "<!doctype html><title>422</title><p>Unknown user or application", 422)
        return
    code = f"code_{len(server.oauth_codes) + 1}_{zlib.crc32(login.encode()):08x}"
    with server._lock:
        server.oauth_codes[code] = {"login": login, "client_id": client_id, "redirect_uri": redirect_uri}
    separator = "&" if "?" in redirect_uri else "?"
    location = f"{redirect_uri}{separator}{urlencode({'code': code, 'state': form.get('state', '')})}"
    send(handler, b"", status=302, headers={"Location": location})


@FakeGitHub.route("POST", r"/login/oauth/access_token")
def _post_access_token(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    form = dict(parse_qsl(request.body.decode()))
    client_id = form.get("client_id", "")
    if server.oauth_apps.get(client_id) != form.get("client_secret") or client_id not in server.oauth_apps:
        server.json(
            handler,
            {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
            },
        )
        return
    with server._lock:
        grant = server.oauth_codes.pop(form.get("code", ""), None)
    if (
        grant is None
        or grant["client_id"] != client_id
        or grant["redirect_uri"] != form.get("redirect_uri", grant["redirect_uri"])
    ):
        server.json(
            handler,
            {
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
            },
        )
        return
    token = f"gho_fake_{len(server.oauth_tokens) + 1}_{zlib.crc32(grant['login'].encode()):08x}"
    with server._lock:
        server.oauth_tokens[token] = grant["login"]
    server.json(handler, {"access_token": token, "token_type": "bearer", "scope": "read:org"})


def _token_login(server: FakeGitHub, request: GitHubRequest) -> str | None:
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    return server.oauth_tokens.get(token.strip()) if scheme.lower() in ("bearer", "token") else None


@FakeGitHub.route("GET", r"/user")
def _get_user(server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]) -> None:
    login = _token_login(server, request)
    if login is None:
        server.json(handler, {"message": "Bad credentials", "documentation_url": DOCS}, 401)
        return
    server.json(handler, {**server.user_json(login), "type": "User", "name": login.capitalize()})


@FakeGitHub.route("GET", r"/user/memberships/orgs/(?P<org>[^/]+)")
def _get_membership(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    login = _token_login(server, request)
    if login is None:
        server.json(handler, {"message": "Bad credentials", "documentation_url": DOCS}, 401)
        return
    if params["org"] not in server.users.get(login, set()):
        server.not_found(handler)
        return
    server.json(
        handler,
        {
            "state": "active",
            "role": "member",
            "organization": server.user_json(params["org"]),
            "user": {**server.user_json(login), "type": "User"},
        },
    )


def git_blob_sha(content: bytes) -> str:
    """git's blob sha of ``content``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


#: The contents API answers files over 1 MB without content (encoding "none"); the git blobs API has them.
CONTENTS_LIMIT = 1024 * 1024


def _diff(repository: FakeRepository, base: str, head: str) -> list[dict[str, Any]]:
    old, new = repository.files(base), repository.files(head)
    files = []
    for path in sorted(set(old) | set(new)):
        if path not in new:
            status, content = "removed", old[path]
        elif path not in old:
            status, content = "added", new[path]
        elif old[path] != new[path]:
            status, content = "modified", new[path]
        else:
            continue
        files.append({"sha": git_blob_sha(content), "filename": path, "status": status})
    return files


@FakeGitHub.route("GET", _REPO + r"/compare/(?P<base>[^/.]+(?:\.[^/.]+)*?)\.\.\.(?P<head>[^/]+)")
def _get_compare(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None:
        server.not_found(handler)
        return
    base, head = repository.resolve(params["base"]), repository.resolve(params["head"])
    if base is None or head is None:
        server.not_found(handler)
        return
    merge_base = repository.merge_base(base, head) or base
    files = _diff(repository, merge_base, head)
    ahead = repository.ancestors(head).index(merge_base) if merge_base in repository.ancestors(head) else 0
    behind = repository.ancestors(base).index(merge_base) if merge_base in repository.ancestors(base) else 0
    status = (
        "identical" if base == head else "behind" if ahead == 0 else "ahead" if behind == 0 else "diverged"
    )
    api = server.url(f"/repos/{repository.owner}/{repository.name}")
    for item in files:
        item["contents_url"] = f"{api}/contents/{item['filename']}?ref={head}"
    server.json(
        handler,
        {
            "status": status,
            "ahead_by": ahead,
            "behind_by": behind,
            "base_commit": server.commit_json(repository, base),
            "merge_base_commit": server.commit_json(repository, merge_base),
            "commits": [],
            # GitHub lists at most 300 files in a compare.
            "files": files[:300],
        },
    )


@FakeGitHub.route("GET", _REPO + r"/contents/(?P<path>.+)")
def _get_contents(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    sha = repository.resolve(request.query.get("ref") or repository.default_branch) if repository else None
    file = repository.commits[sha] / params["path"] if repository and sha else None
    content = (
        file.read_bytes() if file is not None and ".." not in params["path"] and file.is_file() else None
    )
    if repository is None or content is None:
        server.not_found(handler)
        return
    blob = git_blob_sha(content)
    large = len(content) > CONTENTS_LIMIT
    server.json(
        handler,
        {
            "type": "file",
            "encoding": "none" if large else "base64",
            "size": len(content),
            "name": params["path"].rsplit("/", 1)[-1],
            "path": params["path"],
            "content": "" if large else base64.encodebytes(content).decode(),
            "sha": blob,
            "url": server.url(f"/repos/{repository.owner}/{repository.name}/contents/{params['path']}"),
        },
    )


@FakeGitHub.route("GET", _REPO + r"/git/blobs/(?P<sha>[0-9a-f]{40})")
def _get_blob(server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]) -> None:
    repository = server.repository(params)
    if repository is not None:
        for sha in repository.commits:
            for content in repository.files(sha).values():
                if git_blob_sha(content) == params["sha"]:
                    data = base64.encodebytes(content).decode()
                    server.json(
                        handler,
                        {"sha": params["sha"], "size": len(content), "encoding": "base64", "content": data},
                    )
                    return
    server.not_found(handler)


def pull_json(server: FakeGitHub, repository: FakeRepository, number: int) -> dict[str, Any]:
    """A pull request as the pulls API and webhook payloads show it."""
    pull = repository.pulls[number]
    api = server.url(f"/repos/{repository.owner}/{repository.name}")
    repo = server.repository_json(repository)
    return {
        "url": f"{api}/pulls/{number}",
        "number": number,
        "state": "open",
        "statuses_url": f"{api}/statuses/{pull['head']}",
        "comments_url": f"{api}/issues/{number}/comments",
        "head": {"ref": "feature", "sha": pull["head"], "repo": repo},
        "base": {"ref": repository.default_branch, "sha": pull["base"], "repo": repo},
    }


@FakeGitHub.route("GET", _REPO + r"/pulls/(?P<number>[0-9]+)")
def _get_pull(server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]) -> None:
    repository = server.repository(params)
    if repository is None or int(params["number"]) not in repository.pulls:
        server.not_found(handler)
        return
    server.json(handler, pull_json(server, repository, int(params["number"])))


@FakeGitHub.route("GET", _REPO + r"/pulls/(?P<number>[0-9]+)/files")
def _get_pull_files(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None or int(params["number"]) not in repository.pulls:
        server.not_found(handler)
        return
    pull = repository.pulls[int(params["number"])]
    files = _diff(repository, repository.merge_base(pull["base"], pull["head"]) or pull["base"], pull["head"])
    per_page = min(100, int(request.query.get("per_page") or 30))
    page = int(request.query.get("page") or 1)
    server.json(handler, files[(page - 1) * per_page : page * per_page])


def _comment_json(server: FakeGitHub, comment: dict[str, Any]) -> dict[str, Any]:
    api = server.url(f"/repos/{comment['owner']}/{comment['repository']}")
    return {
        "id": comment["id"],
        "node_id": f"IC_{comment['id']}",
        "url": f"{api}/issues/comments/{comment['id']}",
        "html_url": f"https://github.com/{comment['owner']}/{comment['repository']}/pull/{comment['issue']}",
        "issue_url": f"{api}/issues/{comment['issue']}",
        "body": comment["body"],
        "user": server.user_json("openaddr-bot"),
        "created_at": comment["created_at"],
        "updated_at": comment["updated_at"],
    }


def _comment_body(server: FakeGitHub, handler: _Handler, request: GitHubRequest) -> str | None:
    """The ``body`` of a comment request, or None after answering GitHub's error."""
    if not request.headers.get("Authorization"):
        server.json(handler, {"message": "Requires authentication", "documentation_url": DOCS}, 401)
        return None
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        server.json(handler, {"message": "Problems parsing JSON", "documentation_url": DOCS}, 400)
        return None
    text = body.get("body") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text or len(text) > 65536:
        error = {"resource": "IssueComment", "field": "body", "code": "invalid"}
        server.json(
            handler, {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS}, 422
        )
        return None
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@FakeGitHub.route("POST", _REPO + r"/issues/(?P<number>[0-9]+)/comments")
def _post_comment(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    text = _comment_body(server, handler, request)
    if text is None:
        return
    with server._lock:
        comment = {
            "id": server._next_comment_id,
            "owner": params["owner"],
            "repository": params["repo"],
            "issue": int(params["number"]),
            "body": text,
            "authorization": request.headers["Authorization"],
            "created_at": _now(),
            "updated_at": _now(),
        }
        server._next_comment_id += 1
        server.comments[comment["id"]] = comment
    server.json(handler, _comment_json(server, comment), 201)


@FakeGitHub.route("GET", _REPO + r"/issues/(?P<number>[0-9]+)/comments")
def _list_comments(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    with server._lock:
        found = [
            _comment_json(server, c)
            for c in sorted(server.comments.values(), key=lambda c: c["id"])
            if (c["owner"], c["repository"], c["issue"])
            == (params["owner"], params["repo"], int(params["number"]))
        ]
    per_page = min(100, int(request.query.get("per_page") or 30))
    page = int(request.query.get("page") or 1)
    headers = {}
    if page * per_page < len(found):
        url = server.url(request.path)
        headers["Link"] = f'<{url}?per_page={per_page}&page={page + 1}>; rel="next"'
    server.json(handler, found[(page - 1) * per_page : page * per_page], **headers)


def _known_comment(server: FakeGitHub, params: dict[str, str]) -> dict[str, Any] | None:
    comment = server.comments.get(int(params["id"]))
    if comment is None or (comment["owner"], comment["repository"]) != (params["owner"], params["repo"]):
        return None
    return comment


@FakeGitHub.route("GET", _REPO + r"/issues/comments/(?P<id>[0-9]+)")
def _get_comment(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    with server._lock:
        comment = _known_comment(server, params)
    if comment is None:
        server.not_found(handler)
        return
    server.json(handler, _comment_json(server, comment))


@FakeGitHub.route("PATCH", _REPO + r"/issues/comments/(?P<id>[0-9]+)")
def _edit_comment(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    with server._lock:
        comment = _known_comment(server, params)
    if comment is None:
        server.not_found(handler)
        return
    text = _comment_body(server, handler, request)
    if text is None:
        return
    with server._lock:
        comment.update(body=text, updated_at=_now())
    server.json(handler, _comment_json(server, comment))


@FakeGitHub.route("DELETE", _REPO + r"/issues/comments/(?P<id>[0-9]+)")
def _delete_comment(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    with server._lock:
        comment = _known_comment(server, params)
        if comment is not None:
            del server.comments[comment["id"]]
    if comment is None:
        server.not_found(handler)
        return
    send(handler, b"", status=204)
