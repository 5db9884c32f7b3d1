"""``python -m devstack push`` (``make push``): a signed push delivery for a changed demo source, end to end.

``python -m devstack push [--home var] [--branch master] [--timeout 600] [PATH]`` needs the stack of ``make run``
running from ``--home`` (it reads the services' URLs from ``<home>/stack.json``). It

1. commits a change of the demo source ``PATH`` (default ``sources/us/or/portland.json``: a new ``note`` in each
   layer entry, so its layer digests change and the runs are not reused) to ``openaddresses/openaddresses`` on
   the fake GitHub (``POST /_admin/repos/…/commits``);
2. sends GitHub's ``push`` delivery of that commit to the webhook's ``POST /hook``, signed with the secret in
   ``<home>/webhook-secret`` (``X-Hub-Signature-256``), with a new ``X-GitHub-Delivery`` id;
3. prints the job the webhook made, its page, the ``openaddr_ci`` DAG run and its Airflow UI page, then waits
   until the DAG run has ended and the job has a status, and prints the job's runs (status, counts, page) and the
   commit statuses the fake GitHub received (``GET /_admin/statuses?sha=…``).

Its exit status is 0 when the job succeeded and the last commit status is ``success``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from devstack import ROOT, StackError
from devstack.airflow_api import AirflowApi
from devstack.github import DEFAULT_BRANCH, OWNER, REPO
from devstack.webhook import SECRET_FILE

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

#: The running stack's URLs, written by ``make run`` into its home.
STACK_FILE = "stack.json"
DEFAULT_PATH = "sources/us/or/portland.json"
CI_DAG = "openaddr_ci"
REQUEST_TIMEOUT = 30.0


def write_stack_file(home: Path, urls: dict[str, str]) -> Path:
    """Record where the running stack's services are: ``airflow``, ``webhook``, ``github`` (URLs) and
    ``machine_database_url``."""
    path = home / STACK_FILE
    path.write_text(json.dumps(urls, indent=2) + "\n")
    return path


def read_stack_file(home: Path) -> dict[str, str]:
    """The URLs :func:`write_stack_file` recorded.

    :raises StackError: when no stack was started from ``home``
    """
    path = home / STACK_FILE
    try:
        urls = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StackError(f"no stack started from {home} ({error}): start it with `make run`") from error
    return {key: str(value) for key, value in urls.items()}


def sign(body: bytes, secret: str) -> str:
    """GitHub's ``X-Hub-Signature-256`` of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def changed_source(text: str, note: str) -> str:
    """A source file's text with ``note`` as the note of every layer entry (its layer digests change)."""
    source = json.loads(text)
    for entries in (source.get("layers") or {}).values():
        for entry in entries:
            entry["note"] = note
    return json.dumps(source, indent=4) + "\n"


def push_payload(repository: dict[str, Any], commit: dict[str, Any], branch: str) -> dict[str, Any]:
    """GitHub's ``push`` payload of one commit (the shape of the recorded ``tests/webhook/payloads/push.json``).

    :param repository: the repository as GitHub's API answers it (``GET /repos/{owner}/{repo}``)
    :param commit: the admin endpoint's answer (``sha``, ``parent``, ``message``, ``added``, ``modified``,
        ``removed``)
    :param branch: the branch pushed to
    """
    full_name = repository["full_name"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = {
        "id": commit["sha"],
        "tree_id": "0" * 40,
        "distinct": True,
        "message": commit["message"],
        "timestamp": now,
        "url": f"https://github.com/{full_name}/commit/{commit['sha']}",
        "author": {"name": "Demo Contributor", "email": "demo@example.com", "username": "demo"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": commit["added"],
        "removed": commit["removed"],
        "modified": commit["modified"],
    }
    return {
        "ref": f"refs/heads/{branch}",
        "before": commit["parent"],
        "after": commit["sha"],
        "repository": {**repository, "master_branch": repository["default_branch"]},
        "pusher": {"name": "demo", "email": "demo@example.com"},
        "sender": {"login": "demo", "id": 1, "type": "User", "site_admin": False},
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{full_name}/compare/{commit['parent'][:12]}...{commit['sha'][:12]}",
        "commits": [head],
        "head_commit": head,
    }


def deliver(webhook: str, event: str, payload: dict[str, Any], secret: str) -> requests.Response:
    """POST a signed delivery to ``<webhook>/hook`` with a new delivery id, as GitHub sends it."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/devstack",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "1",
        "X-Hub-Signature-256": sign(body, secret),
    }
    return requests.post(f"{webhook}/hook", data=body, headers=headers, timeout=REQUEST_TIMEOUT)


def _until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Poll ``check`` until it answers something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


def job_rows(database_url: str, job_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The job row and its runs rows (oldest first) in the Machine database."""
    import sqlalchemy as sa

    from openaddr.db import make_engine
    from openaddr.db.jobs import get_job
    from openaddr.db.schema import row_dict, runs

    engine = make_engine(database_url, poolclass=sa.NullPool)
    try:
        job = get_job(engine, job_id)
        with engine.connect() as connection:
            rows = connection.execute(sa.select(runs).where(runs.c.job_id == job_id).order_by(runs.c.id))
            return job, [row_dict(row) for row in rows]
    finally:
        engine.dispose()


def _quiet(text: str) -> None:
    """Say nothing."""


def push(
    home: Path,
    path: str = DEFAULT_PATH,
    branch: str = DEFAULT_BRANCH,
    timeout: float = 600.0,
    say: Callable[[str], None] = _quiet,
    change: Callable[[str, str], str] = changed_source,
    message: str | None = None,
) -> dict[str, Any]:
    """Commit a change of ``path``, deliver its signed push to the webhook and wait for what it made.

    :param say: called with what the command prints as soon as it is known (the commit, the job, the DAG run)
    :param change: the change, ``(text, note) → new text`` (default :func:`changed_source`: a new note)
    :param message: the commit message (default: "Change the note of <path>")

    :return: ``{"commit", "answer", "job", "dag_run_id", "dag_run_state", "runs", "statuses", "urls"}``
    :raises StackError: when the stack does not run, the source is not in the repository or the webhook made no job
    :raises TimeoutError: when the DAG run, the job or the final status did not come within ``timeout`` seconds
    """
    urls = read_stack_file(home)
    github, webhook = urls["github"], urls["webhook"]
    secret = (home / SECRET_FILE).read_text().strip()
    session = requests.Session()
    try:
        repository = session.get(f"{github}/repos/{OWNER}/{REPO}", timeout=REQUEST_TIMEOUT)
    except requests.RequestException as error:
        raise StackError(
            f"the fake GitHub of {home} does not answer at {github}: is `make run` up? ({error})"
        ) from None
    repository.raise_for_status()
    current = session.get(
        f"{github}/repos/{OWNER}/{REPO}/contents/{path}", params={"ref": branch}, timeout=REQUEST_TIMEOUT
    )
    if current.status_code == 404:
        raise StackError(f"{path} is not in {OWNER}/{REPO}@{branch} on the fake GitHub")
    current.raise_for_status()
    text = base64.b64decode(current.json()["content"]).decode()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    commit = session.post(
        f"{github}/_admin/repos/{OWNER}/{REPO}/commits",
        json={
            "branch": branch,
            "message": message or f"Change the note of {path}",
            "files": {path: change(text, f"changed by python -m devstack push at {stamp}")},
        },
        timeout=REQUEST_TIMEOUT,
    )
    commit.raise_for_status()
    made = commit.json()
    log.info("Committed %s on %s: %s", made["sha"], branch, path)
    answer = deliver(webhook, "push", push_payload(repository.json(), made, branch), secret)
    body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
    if answer.status_code != 200 or not body.get("id"):
        raise StackError(f"the webhook answered {answer.status_code} without a job: {answer.text[:500]}")
    job_id = str(body["id"])
    dag_run_id = f"ci__{job_id}"
    result: dict[str, Any] = {"commit": made, "answer": body, "dag_run_id": dag_run_id, "urls": urls}
    say(format_delivery(result))
    airflow = AirflowApi(urls["airflow"], home / "airflow")
    try:
        result["dag_run_state"] = airflow.wait(CI_DAG, dag_run_id, timeout)
    finally:
        airflow.close()
    database_url = urls["machine_database_url"]

    def finished_job() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        job, rows = job_rows(database_url, job_id)
        return (job, rows) if job is not None and job.get("status") is not None else None

    result["job"], result["runs"] = _until(f"job {job_id} has a status", finished_job, timeout)

    def final_status() -> list[dict[str, Any]] | None:
        answer = session.get(
            f"{github}/_admin/statuses", params={"sha": made["sha"]}, timeout=REQUEST_TIMEOUT
        )
        answer.raise_for_status()
        statuses: list[dict[str, Any]] = answer.json()
        return statuses if statuses and statuses[-1]["state"] != "pending" else None

    result["statuses"] = _until(f"a final commit status of {made['sha'][:7]}", final_status, timeout)
    session.close()
    return result


def format_delivery(result: dict[str, Any]) -> str:
    """What the command prints once the webhook answered: the commit, the job and its DAG run."""
    urls, commit, answer = result["urls"], result["commit"], result["answer"]
    changed = ", ".join(commit["modified"] + commit["added"])
    return (
        f"Pushed {commit['sha'][:12]} to {OWNER}/{REPO}@{commit['branch']} ({changed}); the webhook answered:\n"
        f"Job        {answer['id']}  {answer['url']}\n"
        f"DAG run    {CI_DAG} {result['dag_run_id']}  "
        f"{urls['airflow']}/dags/{CI_DAG}/runs/{result['dag_run_id']}\n"
        "Waiting for the DAG run to end…\n"
    )


def format_push(result: dict[str, Any]) -> str:
    """What the command prints once the job has ended: its status, its runs and the commit statuses."""
    urls, job = result["urls"], result["job"]
    lines = [
        f"DAG run    {result['dag_run_state']}",
        f"Job        {'success' if job['status'] else 'failed'}",
        "Runs:",
    ]
    for run in result["runs"]:
        status = {True: "success", False: "failed", None: "pending"}[run["status"]]
        entry = f"{run['source_path']} {run['source_layer']}/{run['layer_name']}"
        lines.append(
            f"  {run['id']:>5}  {status:<8} {entry}  {run['address_count'] or 0} addresses  "
            f"{urls['webhook']}/runs/{run['id']}/"
        )
    lines.append("Commit statuses at the fake GitHub:")
    for status in result["statuses"]:
        lines.append(
            f"  {status['state']:<8} {status['context']}: {status['description']}  {status['target_url']}"
        )
    return "\n".join(lines) + "\n"


def _say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devstack push``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m devstack push", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "path", nargs="?", default=DEFAULT_PATH, help="the demo source to change (%(default)s)"
    )
    parser.add_argument("--home", default=str(ROOT / "var"), help="the running stack's home (%(default)s)")
    parser.add_argument("--branch", default=DEFAULT_BRANCH, help="the branch pushed to (%(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the job (%(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)8s: %(message)s", stream=sys.stderr
    )
    try:
        result = push(Path(args.home).resolve(), args.path, args.branch, args.timeout, say=_say)
    except (StackError, TimeoutError, requests.RequestException) as error:
        log.error("%s", error)
        return 1
    sys.stdout.write(format_push(result))
    return 0 if result["job"]["status"] and result["statuses"][-1]["state"] == "success" else 1


def shrunk_rerun(home: Path, timeout: float = 600.0) -> dict[str, Any]:
    """The demo's held run: push a commit of :data:`devstack.demo.SHRUNK_SOURCE` whose data URL names the
    shrunken copy of its data (:func:`devstack.demo.shrunk_source`) and wait for its CI job, as :func:`push` does.

    The job's run is a second run of an entry the demo set processed, with about half its addresses, so the quality
    gate holds it ("count dropped", against the set's run): ``warning`` set, ``accepted`` null.

    :return: :func:`push`'s result plus ``held``: the job's runs rows the gate held
    """
    from devstack.demo import SHRUNK_DATA, SHRUNK_SOURCE, shrunk_source

    result = push(
        home,
        SHRUNK_SOURCE,
        timeout=timeout,
        change=shrunk_source,
        message=f"Read {SHRUNK_DATA} in {SHRUNK_SOURCE} (a shrunken copy of its data, for the quality gate)",
    )
    result["held"] = [
        run
        for run in result["runs"]
        if run["status"] is True and run["warning"] and run["accepted"] is None and run["copy_of"] is None
    ]
    return result
