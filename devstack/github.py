"""The fake GitHub of ``make run``: :class:`devstack.fake_github.FakeGitHub` as a program of the stack.

``python -m devstack.github --port 8078 --sources demo`` serves the repository ``openaddresses/openaddresses``
whose default branch ``master`` holds the ``sources/`` of the demo set (the sources folder ``make run`` uses, so
their data URLs name the demo data server). The webhook (``OA_WEBHOOK_GITHUB_API_URL``) and the Airflow
connection ``github_openaddresses`` of every component point at it (:func:`github_env`): a delivery's changed
files, their contents and the commit statuses go to this server, as they would go to api.github.com.

Besides GitHub's endpoints (:mod:`devstack.fake_github`) it answers two of its own, for ``python -m devstack
push`` and the tests:

* ``POST /_admin/repos/{owner}/{repo}/commits`` with ``{"files": {path: text or null}, "branch": "master",
  "message": "…"}``: a new commit on ``branch`` (default: the default branch) changing those files (null removes
  one); answered 201 with ``{"sha", "parent", "branch", "message", "added", "modified", "removed"}``;
* ``GET /_admin/statuses[?sha=…]``: the commit statuses it received, oldest first (``state``, ``context``,
  ``description``, ``target_url``, ``sha``, ``owner``, ``repository``).

Commit shas are SHA-1 digests of the parent and the files, so the first commit of the same sources has the same
sha at every start. Nothing is kept across starts: commits live in ``--state`` (emptied on start), statuses in
memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import ROOT
from devstack.fake_github import FakeGitHub, FakeRepository, GitHubRequest, _Handler
from devstack.supervise import Program

if TYPE_CHECKING:
    from types import FrameType

log = logging.getLogger(__name__)

#: The program's name in supervisord (and its log's, ``logs/github.log``).
GITHUB = "github"
DEFAULT_GITHUB_PORT = 8078
OWNER = REPO = "openaddresses"
DEFAULT_BRANCH = "master"
#: The token the webhook and the tasks send: the fake asks for one on status posts and accepts any.
TOKEN = "devstack-fake-github-token"
#: The OAuth app of the review queue's sign-in, and who may sign in: a maintainer (a member of the organisation)
#: and an outsider (refused). The fake's authorize page asks which login signs in.
CLIENT_ID, CLIENT_SECRET = "Iv1.devstack", "devstack-oauth-secret"
MAINTAINER, OUTSIDER = "maintainer", "outsider"
#: The folder of the commits' files under the stack's home.
STATE = "github"


def github_url(port: int) -> str:
    """The fake GitHub's API root on loopback."""
    return f"http://127.0.0.1:{port}"


def github_env(port: int) -> dict[str, str]:
    """What the stack's environment adds so that the webhook and the tasks use the fake GitHub: the webhook's
    token and API URL, and the Airflow connection ``github_openaddresses`` (token as password, API URL as host)."""
    url = github_url(port)
    connection = {"conn_type": "github", "host": url, "password": TOKEN}
    return {
        "OA_WEBHOOK_GITHUB_TOKEN": TOKEN,
        "OA_WEBHOOK_GITHUB_API_URL": url,
        "OA_WEBHOOK_GITHUB_OAUTH_URL": url,
        "OA_WEBHOOK_GITHUB_CLIENT_ID": CLIENT_ID,
        "OA_WEBHOOK_GITHUB_CLIENT_SECRET": CLIENT_SECRET,
        "AIRFLOW_CONN_GITHUB_OPENADDRESSES": json.dumps(connection),
    }


def github_server(port: int, sources: Path, state: Path) -> Program:
    """The fake GitHub serving ``sources/`` of the folder ``sources`` on ``127.0.0.1:port``, started before the
    webhook and Airflow, stopped after them."""
    command = [
        sys.executable, "-m", "devstack.github",
        "--port", str(port), "--sources", str(sources), "--state", str(state),
    ]  # fmt: skip
    return Program(GITHUB, command, kind="extra", stop_timeout=5)


def commit_sha(parent: str | None, files: dict[str, bytes]) -> str:
    """The sha of a commit: SHA-1 of its parent and its files (paths and contents)."""
    digest = hashlib.sha1(f"parent {parent or ''}\n".encode())
    for path in sorted(files):
        content = files[path]
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def _write_commit(state: Path, files: dict[str, bytes], parent: str | None) -> tuple[str, Path]:
    sha = commit_sha(parent, files)
    folder = state / "commits" / sha
    if not folder.exists():
        building = state / "commits" / f".{sha}.tmp"
        shutil.rmtree(building, ignore_errors=True)
        for path, content in files.items():
            target = building / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        building.mkdir(parents=True, exist_ok=True)
        building.rename(folder)
    return sha, folder


class DemoGitHub(FakeGitHub):
    """A fake GitHub whose admin endpoint writes new commits' files under ``state`` (emptied first).

    :param port: the port on 127.0.0.1 (0: chosen by the system)
    """

    def __init__(self, state: Path, port: int = 0) -> None:
        shutil.rmtree(state, ignore_errors=True)
        self.state = state
        super().__init__(port)


def add_demo_repository(server: DemoGitHub, sources: Path) -> FakeRepository:
    """Register ``openaddresses/openaddresses`` with one commit on ``master``: the ``sources/`` of ``sources``.

    :param sources: a folder holding ``sources/…`` (``demo/``, or the copy ``make run`` makes for another demo
        port)
    """
    files = {
        path.relative_to(sources).as_posix(): path.read_bytes()
        for path in sorted((sources / "sources").rglob("*.json"))
    }
    if not files:
        raise ValueError(f"{sources / 'sources'} holds no source files")
    sha, folder = _write_commit(server.state, files, None)
    return server.add_repository(OWNER, REPO, folder, sha, default_branch=DEFAULT_BRANCH)


def commit_files(
    server: DemoGitHub,
    repository: FakeRepository,
    changes: dict[str, str | None],
    branch: str,
    message: str | None = None,
    parent: str | None = None,
) -> dict[str, Any]:
    """A new commit on ``branch`` changing ``changes`` (path → text, or None to remove the file).

    :param parent: the commit it follows (default: the head of ``branch``, else of the default branch)
    :return: ``{"sha", "parent", "branch", "message", "added", "modified", "removed"}``
    """
    with server._lock:
        if parent is None:
            parent = repository.branches.get(branch, repository.branches[repository.default_branch])
        files = repository.files(parent)
        added, modified, removed = [], [], []
        for path, text in sorted(changes.items()):
            if text is None:
                if files.pop(path, None) is not None:
                    removed.append(path)
                continue
            (modified if path in files else added).append(path)
            files[path] = text.encode()
        sha, folder = _write_commit(server.state, files, parent)
        repository.add_commit(sha, folder, branch=branch, parent=parent)
    message = message or f"Change {', '.join(changes)}"
    log.info("Commit %s on %s (parent %s): %s", sha, branch, parent, message)
    return {
        "sha": sha,
        "parent": parent,
        "branch": branch,
        "message": message,
        "added": added,
        "modified": modified,
        "removed": removed,
    }


@FakeGitHub.route("POST", r"/_admin/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/commits")
def _post_admin_commit(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    repository = server.repository(params)
    if repository is None or not isinstance(server, DemoGitHub):
        server.not_found(handler)
        return
    try:
        body = json.loads(request.body or b"null")
        changes = body["files"]
        if not isinstance(changes, dict) or not changes:
            raise TypeError("files must be an object of path → text or null")
        if not all(text is None or isinstance(text, str) for text in changes.values()):
            raise TypeError("each file must be text or null")
    except (ValueError, KeyError, TypeError) as error:
        server.json(handler, {"message": f"Problems parsing the commit: {error}"}, 400)
        return
    made = commit_files(
        server, repository, changes, str(body.get("branch") or repository.default_branch), body.get("message")
    )
    server.json(handler, made, 201)


@FakeGitHub.route("GET", r"/_admin/statuses")
def _get_admin_statuses(
    server: FakeGitHub, handler: _Handler, request: GitHubRequest, params: dict[str, str]
) -> None:
    sha = request.query.get("sha")
    keys = ("owner", "repository", "sha", "state", "context", "description", "target_url")
    with server._lock:
        statuses = [
            {key: status[key] for key in keys}
            for status in server.statuses
            if sha is None or status["sha"] == sha
        ]
    server.json(handler, statuses)


def main(argv: list[str] | None = None) -> int:
    """Serve the demo repository until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devstack.github", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=DEFAULT_GITHUB_PORT, help="port on 127.0.0.1 (%(default)s)"
    )
    parser.add_argument(
        "--sources", type=Path, default=ROOT / "demo", help="folder holding sources/ (%(default)s)"
    )
    parser.add_argument(
        "--state", type=Path, default=ROOT / "var" / STATE, help="folder of the commits (%(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)8s: %(message)s")
    server = DemoGitHub(args.state.resolve(), args.port)
    repository = add_demo_repository(server, args.sources.resolve())
    server.add_oauth_app(CLIENT_ID, CLIENT_SECRET)
    server.add_user(MAINTAINER, [OWNER])
    server.add_user(OUTSIDER, [])
    log.info(
        "Fake GitHub on %s: %s/%s, %s at %s",
        server.base_url,
        OWNER,
        REPO,
        DEFAULT_BRANCH,
        repository.branches[DEFAULT_BRANCH],
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop.wait(1.0):
        pass
    log.info("Stopping")
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
