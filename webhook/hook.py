"""``POST /hook``: GitHub deliveries, handled in the order of machine-ci.md §2.1.

1. bodies over 25 MB → 413 (Flask's ``MAX_CONTENT_LENGTH``);
2. signature (``X-Hub-Signature-256``, else the legacy ``X-Hub-Signature``) against every configured secret, in
   constant time; 401 with nothing parsed or recorded; a match answers ``X-Partial-Secret``;
3. ``REJECT_NEW_JOBS`` → 503;
4. a delivery id already recorded → that job's answer, nothing else;
5. ``ping`` → pong; 6. skip rules; 7. commit and status URL; 8. changed files; 9. nothing to check or reading
   failed; 10. the job row and the ``openaddr_ci`` DAG run together, committed only when the trigger succeeded.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request

from openaddr.db.jobs import create_job, job_by_delivery
from openaddr.github import CommitStatus, error_status, github_client, pending_status, post_commit_status
from webhook import changes
from webhook.db import get_db, retry_disconnect
from webhook.trigger import AirflowTrigger, TriggerFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import github
    from flask import Response

log = logging.getLogger(__name__)

bp = Blueprint("hook", __name__)

PULL_REQUEST_ACTIONS = frozenset({"opened", "reopened", "synchronize", "ready_for_review"})
#: "re-run this, please" at the start of any line, case-insensitive, "-" and "," optional (§2.1 step 6).
RERUN_REQUEST = re.compile(r"^re-?run this,? please\b", re.IGNORECASE | re.MULTILINE)
#: Caps of one trigger (§2.1 step 10; equals ``openaddr.machine.planning.MAX_CI_FILES``).
MAX_FILES = 200
MAX_CONF_BYTES = 5 * 1024 * 1024
#: Status posts from a request: few and short, GitHub waits 10 s for the answer.
STATUS_ATTEMPTS = 2
STATUS_BACKOFF = 0.5
TRIGGER_EXTENSION = "openaddr_airflow_trigger"
CLIENTS_EXTENSION = "openaddr_github_clients"
POOL_EXTENSION = "openaddr_github_fetch_pool"
_extensions_lock = threading.Lock()
DATABASE_DOWN = "The Machine database is unavailable"


def _answer(body: Mapping[str, Any], status: int = 200, partial: str | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    if partial is not None:
        response.headers["X-Partial-Secret"] = partial
    return response


def partial_secret(secret: str) -> str:
    """``<first char>..<last 3 chars>`` of a secret, to tell secrets apart during rotation (7.5.5)."""
    return f"{secret[:1]}..{secret[-3:]}"


def check_signature(
    body: bytes, headers: Mapping[str, str], secrets: list[str]
) -> tuple[str | None, str | None]:
    """Which secret signed ``body``.

    :return: ``(None, partial secret)`` on a match; ``(error, None)`` when the signature is missing or wrong
    """
    signature_256 = headers.get("X-Hub-Signature-256")
    signature_1 = headers.get("X-Hub-Signature")
    if signature_256:
        algorithm, given = hashlib.sha256, signature_256
        prefix = "sha256="
    elif signature_1:
        algorithm, given = hashlib.sha1, signature_1
        prefix = "sha1="
    else:
        return "Missing signature", None
    matched = None
    for secret in secrets:
        expected = prefix + hmac.new(secret.encode(), body, algorithm).hexdigest()
        # Every secret is compared, so the time taken does not tell which one matched.
        if hmac.compare_digest(expected.encode(), given.encode()) and matched is None:
            matched = secret
    if matched is None:
        return "Invalid signature", None
    return None, partial_secret(matched)


def _client_factory() -> Callable[[], github.Github]:
    """The PyGithub client of the calling thread, with the app's GitHub settings (also outside the request's
    thread: the fetch pool's threads).

    Each thread keeps its client for the life of the worker, so its HTTP connection to GitHub is reused from one
    delivery to the next instead of being opened (TCP and TLS) for every request.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    local = app.extensions.get(CLIENTS_EXTENSION)
    if local is None:
        with _extensions_lock:
            local = app.extensions.setdefault(CLIENTS_EXTENSION, threading.local())
    config = app.config
    # No pause between requests (PyGithub's default is 0.25 s per client): the reads of one delivery are bounded
    # by GITHUB_FETCH_WORKERS instead, and must fit GitHub's 10 s. No pause between writes either (its default is
    # 1 s per client): a kept client posts one status a delivery, and GitHub's limit is per token anyway.
    make = functools.partial(
        github_client,
        config["GITHUB_TOKEN"],
        config["GITHUB_API_URL"],
        timeout=config["GITHUB_TIMEOUT"],
        seconds_between_requests=None,
        seconds_between_writes=None,
        pin_environment=True,
    )

    def client() -> github.Github:
        kept: github.Github | None = getattr(local, "client", None)
        if kept is None:
            kept = local.client = make()
        return kept

    return client


def _client() -> github.Github:
    return _client_factory()()


def _fetch_pool() -> ThreadPoolExecutor:
    """The app's threads for reading contents (``GITHUB_FETCH_WORKERS``), made once per worker process."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    pool: ThreadPoolExecutor | None = app.extensions.get(POOL_EXTENSION)
    if pool is None:
        with _extensions_lock:
            pool = app.extensions.get(POOL_EXTENSION)
            if pool is None:
                pool = ThreadPoolExecutor(
                    app.config["GITHUB_FETCH_WORKERS"], thread_name_prefix="github-fetch"
                )
                app.extensions[POOL_EXTENSION] = pool
    return pool


def _trigger() -> AirflowTrigger:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    trigger = app.extensions.get(TRIGGER_EXTENSION)
    if trigger is None:
        config = app.config
        if not config["AIRFLOW_API_URL"]:
            raise TriggerFailed("Airflow is not configured (OA_WEBHOOK_AIRFLOW_API_URL)")
        trigger = AirflowTrigger(
            config["AIRFLOW_API_URL"],
            config["AIRFLOW_USERNAME"] or "",
            config["AIRFLOW_PASSWORD"] or "",
            timeout=config["AIRFLOW_TIMEOUT"],
        )
        app.extensions[TRIGGER_EXTENSION] = trigger
    return trigger


def _post_status(status_url: str | None, status: CommitStatus) -> None:
    if status_url is None:
        return
    post_commit_status(_client(), status_url, status, attempts=STATUS_ATTEMPTS, backoff=STATUS_BACKOFF)


def job_url(job_id: str) -> str:
    """The job page, ``<base URL>/jobs/<id>`` (relative without a base URL)."""
    return f"{current_app.config['BASE_URL'] or ''}/jobs/{job_id}"


def job_answer(job: Mapping[str, Any], contents: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The 200 answer of a created job: ``{"id", "url", "files": {path: [content_b64, blob_sha]}, "status_url"}``.

    :param job: the job row (``id``, ``task_files`` {blob sha: path}, ``github_status_url``)
    :param contents: ``{path: content_b64}``; a path missing gets null
    """
    files = {
        path: [(contents or {}).get(path), blob_sha]
        for blob_sha, path in (job.get("task_files") or {}).items()
    }
    return {
        "id": job["id"],
        "url": job_url(job["id"]),
        "files": files,
        "status_url": job.get("github_status_url"),
    }


def owner_of(repository: Mapping[str, Any]) -> str | None:
    """``repository.owner.name``, else ``.login``."""
    owner = repository.get("owner") or {}
    return owner.get("name") or owner.get("login")


def is_rerun_request(comment: str | None) -> bool:
    """Whether a comment asks for a re-run (§2.1 step 6)."""
    return bool(comment and RERUN_REQUEST.search(comment))


def skip_reason(event: str, payload: Mapping[str, Any]) -> str | None:
    """Why an event is skipped (§2.1 step 6), or None when it makes a job."""
    if event == "pull_request":
        action = payload.get("action")
        return None if action in PULL_REQUEST_ACTIONS else f"pull request {action}"
    if event == "push":
        return "deleted branch" if payload.get("deleted") else None
    if event == "issue_comment":
        if payload.get("action") == "deleted":
            return "comment deleted"
        if not (payload.get("issue") or {}).get("pull_request"):
            return "comment not on a pull request"
        if not is_rerun_request((payload.get("comment") or {}).get("body")):
            return "comment without a re-run request"
        return None
    return f"event {event}"


def _sent_contents(job: Mapping[str, Any]) -> dict[str, str]:
    """The contents the job's trigger carried, read back from its DAG run's conf (the job row keeps blob shas
    only), for a redelivery's answer. Airflow failing here costs only the contents: they are then null, logged."""
    dag_run_id = job.get("airflow_dag_run_id") or f"ci__{job['id']}"
    try:
        conf = _trigger().dag_run(dag_run_id).get("conf") or {}
    except TriggerFailed as error:
        log.warning("Answering the redelivery of job %s without contents: %s", job["id"], error)
        return {}
    return {
        source["path"]: source["content_b64"]
        for source in conf.get("sources") or []
        if isinstance(source, dict) and "path" in source and "content_b64" in source
    }


def _recorded(delivery_id: str) -> dict[str, Any] | None:
    """The job of a delivery id: one statement, outside a transaction on PostgreSQL (the driver's autocommit: no
    ``BEGIN`` and ``COMMIT`` round trips), in a transaction of its own on SQLite; retried once on a new connection
    when the pooled one broke (:func:`webhook.db.retry_disconnect`).

    The driver connection's ``autocommit`` is switched directly (psycopg2 and psycopg: on the client, nothing sent)
    and back in ``finally``; SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` would send ``SET
    default_transaction_isolation`` to switch back, a round trip of its own.
    """

    def read(connection: sa.Connection) -> dict[str, Any] | None:
        driver = connection.connection.dbapi_connection
        if (
            connection.dialect.name != "postgresql"
            or connection.in_transaction()
            or not hasattr(driver, "autocommit")
        ):
            with connection.begin():
                return job_by_delivery(connection, delivery_id)
        driver.autocommit = True
        try:
            with connection.begin():
                return job_by_delivery(connection, delivery_id)
        finally:
            if not driver.closed:  # closed: broken and dropped by SQLAlchemy (retry_disconnect tries again)
                driver.autocommit = False

    return retry_disconnect(read)


@bp.post("/hook")
def hook() -> Response:
    """Handle one GitHub delivery (§2.1)."""
    config = current_app.config
    body = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    partial = None
    if config["GITHUB_WEBHOOK_SECRETS"]:
        error, partial = check_signature(body, request.headers, config["GITHUB_WEBHOOK_SECRETS"])
        if error is not None:
            log.warning("Refused delivery %s: %s", request.headers.get("X-GitHub-Delivery"), error)
            return _answer({"error": error}, 401)
    if config["REJECT_NEW_JOBS"]:
        return _answer({"message": "Try again later"}, 503, partial)

    delivery_id = request.headers.get("X-GitHub-Delivery") or None
    event = request.headers.get("X-GitHub-Event", "")
    # Step 4 before step 5, but a ping is never recorded (no job has a ping's delivery id), so looking its id up could
    # only find nothing: pings skip the database.
    if delivery_id is not None and event != "ping":
        try:
            job = _recorded(delivery_id)
        except sa.exc.OperationalError as error:
            log.error("Cannot look up delivery %s: %s", delivery_id, error)
            return _answer({"error": DATABASE_DOWN}, 500, partial)
        if job is not None:
            log.info("Delivery %s already made job %s", delivery_id, job["id"])
            return _answer(job_answer(job, _sent_contents(job)), 200, partial)

    if event == "ping":
        return _answer({"message": "pong"}, 200, partial)
    try:
        payload = json.loads(body)
    except ValueError:
        return _answer({"error": "Body is not JSON"}, 400, partial)
    if not isinstance(payload, dict):
        return _answer({"error": "Body is not a JSON object"}, 400, partial)
    reason = skip_reason(event, payload)
    if reason is not None:
        log.info("Skipped delivery %s: %s", delivery_id, reason)
        return _answer({"url": None, "files": [], "skip": True}, 200, partial)
    body_out, status = _make_job(event, payload, delivery_id)
    return _answer(body_out, status, partial)


def _too_much(status_url: str | None, paths: list[str], message: str) -> tuple[dict[str, Any], int]:
    """A change too big for one trigger: *error* status and 200 (a redelivery cannot make it smaller).

    The status names no paths: 140 characters of them would leave no room for the reason.
    """
    log.error("Not checking %d files: %s", len(paths), message)
    _post_status(status_url, error_status([], message))
    return {"url": None, "files": [], "status_url": status_url}, 200


def _make_job(event: str, payload: dict[str, Any], delivery_id: str | None) -> tuple[dict[str, Any], int]:
    """Steps 7–10 for a push, a pull request or a re-run comment."""
    config = current_app.config
    client = _client()
    rerun = event == "issue_comment"
    try:
        if event == "push":
            repository = payload["repository"]
            commit_sha = payload["head_commit"]["id"]
            status_url: str | None = changes.expand(repository["statuses_url"], sha=commit_sha)
            comments_url = None
            contents_url, blobs_url = repository["contents_url"], repository.get("blobs_url")
        else:
            if rerun:
                pull = changes.get_json(client, payload["issue"]["pull_request"]["url"], "pull request")
            else:
                pull = payload["pull_request"]
            repository = payload["repository"]
            commit_sha = pull["head"]["sha"]
            status_url, comments_url = pull["statuses_url"], pull.get("comments_url")
            head_repo = pull["head"].get("repo") or pull["base"]["repo"]
            contents_url, blobs_url = head_repo["contents_url"], head_repo.get("blobs_url")
    except (KeyError, TypeError) as error:
        return {"error": f"Malformed {event} payload: missing {error}"}, 400
    except changes.ReadError as error:
        # The pull request of a re-run comment could not be read: no status URL to post to yet.
        return {"error": f"Could not read the pull request: {error}", "files": [], "status_url": None}, 500
    if config["GAG_GITHUB_STATUS"]:
        status_url = None
    owner, repo_name = owner_of(repository), repository.get("name")

    try:
        if event == "push":
            paths = changes.push_changed_paths(client, payload)
        else:
            paths = changes.pull_changed_paths(client, pull)
        paths = [path for path in paths if changes.is_source_path(path)]
        if len(paths) > MAX_FILES:
            return _too_much(status_url, paths, f"{len(paths)} source files; at most {MAX_FILES}")
        files = changes.fetch_contents(
            _client_factory(),
            paths,
            contents_url=contents_url,
            blobs_url=blobs_url,
            ref=commit_sha,
            workers=config["GITHUB_FETCH_WORKERS"],
            pool=_fetch_pool(),
        )
    except (changes.ReadError, KeyError, TypeError) as error:
        log.error("Could not read source files of %s %s: %s", event, commit_sha, error)
        _post_status(status_url, error_status([], f"Could not read source files: {error}"))
        return {"url": None, "files": [], "status_url": status_url}, 200
    if not files:
        _post_status(status_url, CommitStatus("success", "Nothing to check"))
        return {"url": None, "files": [], "status_url": status_url}, 200

    paths = sorted(file.path for file in files)
    size = sum(len(file.content_b64) for file in files)
    if size > MAX_CONF_BYTES:
        return _too_much(status_url, paths, f"{size} bytes of source files; at most {MAX_CONF_BYTES}")

    job_id = str(uuid.uuid4())
    dag_run_id = f"ci__{job_id}"
    conf = {
        "job_id": job_id,
        "delivery_id": delivery_id,
        "event": event,
        "commit_sha": commit_sha,
        "rerun": rerun,
        "github": {
            "status_url": status_url,
            "comments_url": comments_url,
            "owner": owner,
            "repository": repo_name,
        },
        "sources": [{"path": f.path, "blob_sha": f.blob_sha, "content_b64": f.content_b64} for f in files],
    }
    try:
        connection = get_db()
        with connection.begin():
            create_job(
                connection,
                job_id=job_id,
                task_files={f.blob_sha: f.path for f in files},
                github_owner=owner,
                github_repository=repo_name,
                github_status_url=status_url,
                github_comments_url=comments_url,
                github_delivery_id=delivery_id,
                github_event=event,
                is_rerun=rerun,
                airflow_dag_run_id=dag_run_id,
            )
            _trigger().trigger(dag_run_id, conf)
    except sa.exc.IntegrityError:
        # A concurrent delivery of the same id committed first: answer as a redelivery.
        job = _recorded(delivery_id) if delivery_id else None
        if job is None:
            raise
        return job_answer(job, _sent_contents(job)), 200
    except (TriggerFailed, sa.exc.OperationalError) as error:
        log.error("Could not create job for %s %s: %s", event, commit_sha, error)
        message = str(error) if isinstance(error, TriggerFailed) else DATABASE_DOWN
        _post_status(status_url, error_status(paths, message))
        return {"error": message, "files": paths, "status_url": status_url}, 500

    _post_status(status_url, pending_status(paths, job_url(job_id)))
    contents = {f.path: f.content_b64 for f in files}
    answer = job_answer(
        {"id": job_id, "task_files": {f.blob_sha: f.path for f in files}, "github_status_url": status_url},
        contents,
    )
    return answer, 200
