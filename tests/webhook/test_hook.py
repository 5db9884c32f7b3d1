"""``POST /hook`` against GitHub on loopback and Airflow's endpoints on loopback, on both database backends."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from openaddr.db.schema import jobs
from tests.webhook.hooktools import (
    BASE_SHA,
    HEAD_SHA,
    SECRET,
    deliver,
    delivery_id,
    load_payload,
    signature,
)
from webhook import MAX_BODY
from webhook.hook import is_rerun_request

if TYPE_CHECKING:
    from pathlib import Path

    from flask import Flask
    from flask.testing import FlaskClient

    from tests.github_server import FakeGitHub, FakeRepository
    from tests.webhook.conftest import FakeAirflow


def job_rows(app: Flask) -> list[dict[str, Any]]:
    from webhook.db import get_engine

    with get_engine(app).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.select(jobs))]


def jobs_of(app: Flask, delivery: str) -> list[dict[str, Any]]:
    return [job for job in job_rows(app) if job["github_delivery_id"] == delivery_id(delivery)]


# Signature -------------------------------------------------------------------------------------------------


def _post(client: FlaskClient, body: bytes, headers: dict[str, str]) -> Any:
    return client.post("/hook", data=body, headers={"X-GitHub-Event": "ping", **headers})


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "Missing signature"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, 401, "Invalid signature"),
        ({"X-Hub-Signature-256": "sha256="}, 401, "Invalid signature"),
        ({"X-Hub-Signature-256": "SIGNED256:wrong"}, 401, "Invalid signature"),
        ({"X-Hub-Signature-256": "SIGNED256:" + SECRET}, 200, None),
        ({"X-Hub-Signature-256": "SIGNED256:old-secret-xyz"}, 200, None),
        ({"X-Hub-Signature": "SIGNED1:" + SECRET}, 200, None),
        ({"X-Hub-Signature": "SIGNED1:wrong"}, 401, "Invalid signature"),
        # The SHA-256 header decides when both are present.
        ({"X-Hub-Signature-256": "SIGNED256:wrong", "X-Hub-Signature": "SIGNED1:" + SECRET}, 401, "Invalid"),
        # A sha1 digest in the sha256 header is not accepted.
        ({"X-Hub-Signature-256": "SIGNED1:" + SECRET}, 401, "Invalid signature"),
    ],
)
def test_signature_matrix(
    client: FlaskClient, fake_github: FakeGitHub, headers: dict[str, str], status: int, error: str | None
) -> None:
    body = json.dumps(load_payload("ping", fake_github)).encode()
    resolved = {}
    for key, value in headers.items():
        if value.startswith("SIGNED256:"):
            value = signature(body, value.removeprefix("SIGNED256:"), "sha256")
        elif value.startswith("SIGNED1:"):
            value = signature(body, value.removeprefix("SIGNED1:"), "sha1")
        resolved[key] = value
    response = _post(client, body, resolved)
    assert response.status_code == status
    if error:
        assert error in response.get_json()["error"]
        assert "X-Partial-Secret" not in response.headers
    else:
        assert response.get_json() == {"message": "pong"}
        matched = SECRET if SECRET in "".join(headers.values()) else "old-secret-xyz"
        assert response.headers["X-Partial-Secret"] == f"{matched[0]}..{matched[-3:]}"


def test_bad_signature_records_nothing_even_for_a_push(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    repository: FakeRepository,
    fake_airflow: FakeAirflow,
) -> None:
    response = deliver(client, "push", load_payload("push", fake_github), "bad-sig", secret="not-the-secret")
    assert response.status_code == 401
    assert fake_github.requests == []
    assert fake_airflow.runs == {}
    assert jobs_of(app, "bad-sig") == []


def test_unsigned_accepted_only_when_testing_without_secrets(client: FlaskClient, db_url: sa.URL) -> None:
    from webhook import create_app

    assert _post(client, b"{}", {}).status_code == 401
    testing = create_app({"TESTING": True, "GITHUB_WEBHOOK_SECRETS": "", "DATABASE_URL": str(db_url)})
    response = testing.test_client().post("/hook", data=b"{}", headers={"X-GitHub-Event": "ping"})
    assert response.status_code == 200
    assert "X-Partial-Secret" not in response.headers


def test_body_over_25_mb_is_413(client: FlaskClient) -> None:
    body = b" " * (MAX_BODY + 1)
    response = _post(client, body, {"X-Hub-Signature-256": signature(body)})
    assert response.status_code == 413


def test_reject_new_jobs(app: Flask, client: FlaskClient, fake_github: FakeGitHub) -> None:
    app.config["REJECT_NEW_JOBS"] = True
    response = deliver(client, "ping", load_payload("ping", fake_github))
    assert response.status_code == 503
    assert response.get_json() == {"message": "Try again later"}


# Skip rules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "change"),
    [
        ("pull_request", {"action": "closed"}),
        ("pull_request", {"action": "labeled"}),
        ("pull_request", {"action": "edited"}),
        ("push", {"deleted": True}),
        ("issue_comment", {"action": "deleted"}),
        ("issue_comment", {"comment_body": "Looks good to me"}),
        ("issue_comment", {"comment_body": "Could you re-run this, please?"}),  # not at the start of a line
        ("issue_comment", {"not_a_pull": True}),
        ("release", {}),
    ],
)
def test_skip_rules(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    event: str,
    change: dict[str, Any],
) -> None:
    change = dict(change)  # shared by both backends' parameters
    payload = load_payload(event if event != "release" else "push", fake_github)
    if "comment_body" in change:
        payload["comment"]["body"] = change.pop("comment_body")
    if change.pop("not_a_pull", False):
        del payload["issue"]["pull_request"]
    payload.update(change)
    response = deliver(client, event, payload, "skipped-delivery")
    assert response.status_code == 200
    assert response.get_json() == {"url": None, "files": [], "skip": True}
    assert fake_github.requests == []
    assert fake_airflow.runs == {}
    assert jobs_of(app, "skipped-delivery") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("re-run this, please", True),
        ("Rerun this please", True),
        ("RE-RUN THIS, PLEASE!", True),
        ("First line\nrerun this, please", True),
        ("re-run this, pleased", False),
        ("please re-run this, please", False),
        ("re - run this please", False),
        ("", False),
    ],
)
def test_rerun_request(text: str, expected: bool) -> None:
    assert is_rerun_request(text) is expected


# Push ------------------------------------------------------------------------------------------------------


def _content(repository: FakeRepository, sha: str, path: str) -> bytes:
    return repository.files(sha)[path]


def test_push_creates_job_and_dag_run(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    response = deliver(client, "push", load_payload("push", fake_github), "push-1")
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    job_id = answer["id"]
    assert len(job_id) == 36
    assert answer["url"] == f"http://results.test/jobs/{job_id}"
    status_url = fake_github.status_url("openaddresses", "openaddresses", HEAD_SHA)
    assert answer["status_url"] == status_url
    # The commits added new.json and gone.json, removed gone.json, modified changed.json and README.md.
    assert sorted(answer["files"]) == ["sources/xx/changed.json", "sources/xx/new.json"]
    for path, (content_b64, blob_sha) in answer["files"].items():
        content = _content(repository, HEAD_SHA, path)
        assert base64.b64decode(content_b64) == content
        assert blob_sha == fake_github_blob(content)

    [job] = jobs_of(app, "push-1")
    assert job["id"] == job_id
    assert job["github_event"] == "push"
    assert job["is_rerun"] is False
    assert job["airflow_dag_run_id"] == f"ci__{job_id}"
    assert job["github_status_url"] == status_url
    assert job["github_owner"] == "openaddresses"
    assert job["file_states"] == {"sources/xx/changed.json": None, "sources/xx/new.json": None}

    run = fake_airflow.runs[f"ci__{job_id}"]
    assert run["dag_id"] == "openaddr_ci"
    conf = run["conf"]
    assert conf["job_id"] == job_id
    assert conf["delivery_id"] == delivery_id("push-1")
    assert conf["event"] == "push"
    assert conf["commit_sha"] == HEAD_SHA
    assert conf["rerun"] is False
    assert conf["github"] == {
        "status_url": status_url,
        "comments_url": None,
        "owner": "openaddresses",
        "repository": "openaddresses",
    }
    assert {source["path"] for source in conf["sources"]} == set(answer["files"])

    [status] = fake_github.statuses
    assert status["state"] == "pending"
    assert status["description"] == "Checking sources/xx/changed.json, sources/xx/new.json"
    assert status["target_url"] == answer["url"]
    assert status["context"] == "openaddresses/hooked"
    assert status["authorization"] == "token webhook-token"


def fake_github_blob(content: bytes) -> str:
    from tests.github_server import git_blob_sha

    return git_blob_sha(content)


def test_conf_passes_the_ci_dags_schema(
    client: FlaskClient, fake_github: FakeGitHub, fake_airflow: FakeAirflow, repository: FakeRepository
) -> None:
    import jsonschema

    from openaddr_airflow.params import CI_PARAMS

    deliver(client, "pull_request", load_payload("pull_request", fake_github), "schema-1")
    [run] = fake_airflow.runs.values()
    for key, param in CI_PARAMS.items():
        jsonschema.validate(run["conf"][key], param.schema)


def test_redelivery_gets_the_original_answer_and_nothing_new(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    payload = load_payload("push", fake_github)
    first = deliver(client, "push", payload, "redelivered").get_json()
    github_requests = len(fake_github.requests)
    again = deliver(client, "push", payload, "redelivered")
    assert again.status_code == 200
    answer = again.get_json()
    assert answer["id"] == first["id"]
    assert answer["url"] == first["url"]
    assert answer == first  # contents included: read back from the DAG run's conf
    assert len(fake_github.requests) == github_requests  # no GitHub call, no status
    assert len(fake_github.statuses) == 1
    assert len(fake_airflow.runs) == 1
    assert len(jobs_of(app, "redelivered")) == 1

    # Airflow down: the answer is still the job's, without the contents.
    app.config["AIRFLOW_API_URL"] = "http://127.0.0.1:9"
    app.extensions.pop("openaddr_airflow_trigger")
    third = deliver(client, "push", payload, "redelivered").get_json()
    assert third == {**first, "files": {path: [None, blob] for path, (_, blob) in first["files"].items()}}


def test_50_concurrent_deliveries_make_one_job_each(
    app: Flask,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    """50 deliveries at once: 10 delivery ids, each sent 5 times."""
    payload = load_payload("push", fake_github)

    def one(i: int) -> Any:
        response = deliver(app.test_client(), "push", payload, f"concurrent-{i % 10}")
        return i % 10, response.status_code, response.get_json()["id"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert {status for _, status, _ in results} == {200}
    for n in range(10):
        [job] = jobs_of(app, f"concurrent-{n}")
        assert {job_id for i, _, job_id in results if i == n} == {job["id"]}
    assert len(fake_airflow.runs) == 10
    assert len(fake_github.statuses) == 10


def test_push_to_default_branch_without_source_changes(
    client: FlaskClient, fake_github: FakeGitHub, fake_airflow: FakeAirflow, repository: FakeRepository
) -> None:
    payload = load_payload("push", fake_github)
    payload["ref"] = "refs/heads/master"
    payload["head_commit"]["id"] = BASE_SHA
    for commit in payload["commits"]:
        commit["added"], commit["modified"], commit["removed"] = [], ["README.md"], []
    response = deliver(client, "push", payload, "nothing")
    assert response.status_code == 200
    status_url = fake_github.status_url("openaddresses", "openaddresses", BASE_SHA)
    assert response.get_json() == {"url": None, "files": [], "status_url": status_url}
    [status] = fake_github.statuses
    assert (status["state"], status["description"], status["target_url"]) == (
        "success",
        "Nothing to check",
        None,
    )
    assert fake_airflow.runs == {}


def test_gagged_posts_no_status(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    app.config["GAG_GITHUB_STATUS"] = True
    response = deliver(client, "push", load_payload("push", fake_github), "gagged")
    assert response.status_code == 200
    assert response.get_json()["status_url"] is None
    assert fake_github.statuses == []
    [run] = fake_airflow.runs.values()
    assert run["conf"]["github"]["status_url"] is None


# Pull requests and re-run comments -------------------------------------------------------------------------


def test_pull_request_creates_job(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "pr-1")
    assert response.status_code == 200
    answer = response.get_json()
    assert sorted(answer["files"]) == ["sources/xx/changed.json", "sources/xx/new.json"]
    compares = [r.path for r in fake_github.requests if "/compare/" in r.path]
    assert compares == [f"/repos/openaddresses/openaddresses/compare/{BASE_SHA}...{HEAD_SHA}"]
    contents = [r for r in fake_github.requests if "/contents/" in r.path]
    assert {r.query["ref"] for r in contents} == {HEAD_SHA}
    assert all(r.headers["Authorization"] == "token webhook-token" for r in fake_github.requests)
    [job] = jobs_of(app, "pr-1")
    assert job["github_event"] == "pull_request"
    assert job["github_comments_url"].endswith("/repos/openaddresses/openaddresses/issues/7/comments")
    conf = fake_airflow.runs[f"ci__{answer['id']}"]["conf"]
    assert conf["event"] == "pull_request"
    assert conf["github"]["comments_url"] == job["github_comments_url"]
    assert [s["state"] for s in fake_github.statuses] == ["pending"]


def test_rerun_comment_reads_the_pull_request(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    response = deliver(client, "issue_comment", load_payload("issue_comment", fake_github), "rerun-1")
    assert response.status_code == 200
    answer = response.get_json()
    assert sorted(answer["files"]) == ["sources/xx/changed.json", "sources/xx/new.json"]
    assert fake_github.requests[0].path == "/repos/openaddresses/openaddresses/pulls/7"
    [job] = jobs_of(app, "rerun-1")
    assert job["is_rerun"] is True
    assert job["github_event"] == "issue_comment"
    assert fake_airflow.runs[f"ci__{answer['id']}"]["conf"]["rerun"] is True


def test_pull_request_past_300_files_uses_the_paginated_list(
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    head = repository.commits[HEAD_SHA]
    for i in range(310):
        (head / "docs").mkdir(exist_ok=True)
        (head / "docs" / f"page{i:03}.md").write_text(f"page {i}\n")
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "big-pr")
    assert response.status_code == 200
    assert sorted(response.get_json()["files"]) == ["sources/xx/changed.json", "sources/xx/new.json"]
    pages = [r.query["page"] for r in fake_github.requests if r.path.endswith("/pulls/7/files")]
    assert pages == ["1", "2", "3", "4"]


def test_contents_are_fetched_in_parallel_bounded(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
    corpus_sources: Path,
) -> None:
    """A pull request of 200 source files, GitHub answering each request after 0.05 s."""
    head = repository.commits[HEAD_SHA] / "sources" / "xx"
    for i, path in enumerate(sorted(corpus_sources.rglob("*.json"))[:198]):
        (head / f"many-{i:03}.json").write_bytes(path.read_bytes())
    fake_github.delay = 0.05
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "many")
    assert response.status_code == 200
    assert len(response.get_json()["files"]) == 200
    assert 1 < fake_github.max_in_flight <= app.config["GITHUB_FETCH_WORKERS"]
    assert len(fake_airflow.runs) == 1


def test_file_over_1_mb_comes_from_the_blobs_api(
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    path = repository.commits[HEAD_SHA] / "sources" / "xx" / "new.json"
    big = json.loads(path.read_text())
    big["note"] = "x" * (1024 * 1024 + 10)
    path.write_text(json.dumps(big))
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "big-file")
    assert response.status_code == 200
    content_b64, _ = response.get_json()["files"]["sources/xx/new.json"]
    assert base64.b64decode(content_b64) == path.read_bytes()
    assert any("/git/blobs/" in r.path for r in fake_github.requests)


# GitHub and Airflow unreachable ----------------------------------------------------------------------------


def test_github_down_gives_error_status_and_no_job(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    fake_github.fail_next(f"/repos/openaddresses/openaddresses/compare/{BASE_SHA}...{HEAD_SHA}", 1, 502)
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "github-down")
    assert response.status_code == 200
    status_url = fake_github.status_url("openaddresses", "openaddresses", HEAD_SHA)
    assert response.get_json() == {"url": None, "files": [], "status_url": status_url}
    [status] = fake_github.statuses
    assert status["state"] == "error"
    assert status["description"] == (
        "Errored on : Could not read source files: compare bbbbbbb...eeeeeee: HTTP 502 Server Error"
    )
    assert fake_airflow.runs == {}
    assert jobs_of(app, "github-down") == []


@pytest.mark.parametrize("failure", ["unreachable", "500", "bad-password"])
def test_airflow_failure_records_nothing_and_redelivery_recovers(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
    failure: str,
) -> None:
    if failure == "unreachable":
        app.config["AIRFLOW_API_URL"] = "http://127.0.0.1:9"  # discard port: connection refused
    elif failure == "500":
        fake_airflow.fail_statuses = [500]
    else:
        app.config["AIRFLOW_PASSWORD"] = "wrong"
    payload = load_payload("push", fake_github)
    response = deliver(client, "push", payload, "airflow-down")
    assert response.status_code == 500
    answer = response.get_json()
    assert answer["files"] == ["sources/xx/changed.json", "sources/xx/new.json"]
    assert "Airflow" in answer["error"]
    [status] = fake_github.statuses
    assert status["state"] == "error"
    assert status["description"].startswith(
        "Errored on sources/xx/changed.json, sources/xx/new.json: Airflow"
    )
    assert jobs_of(app, "airflow-down") == []  # rolled back: nothing half-recorded

    # GitHub redelivers once Airflow is back.
    app.extensions.pop("openaddr_airflow_trigger", None)
    app.config["AIRFLOW_API_URL"] = fake_airflow.url
    app.config["AIRFLOW_PASSWORD"] = "op-password"
    again = deliver(client, "push", payload, "airflow-down")
    assert again.status_code == 200
    assert len(jobs_of(app, "airflow-down")) == 1
    assert [s["state"] for s in fake_github.statuses] == ["error", "pending"]
    assert list(fake_airflow.runs) == [f"ci__{again.get_json()['id']}"]


def test_expired_token_is_renewed_once(
    client: FlaskClient, fake_github: FakeGitHub, fake_airflow: FakeAirflow, repository: FakeRepository
) -> None:
    assert deliver(client, "push", load_payload("push", fake_github)).status_code == 200
    fake_airflow.tokens.clear()  # the api-server restarted with a new secret
    assert deliver(client, "pull_request", load_payload("pull_request", fake_github)).status_code == 200
    assert fake_airflow.logins == 2
    assert len(fake_airflow.runs) == 2


def test_database_down_answers_500_before_anything_else(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    from webhook.db import close_engine

    close_engine(app)
    app.config["DATABASE_URL"] = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere"  # connection refused
    response = deliver(client, "push", load_payload("push", fake_github), "db-down")
    assert response.status_code == 500
    assert response.get_json() == {"error": "The Machine database is unavailable"}
    assert fake_github.requests == []
    assert fake_airflow.runs == {}


def test_malformed_payload_is_400(
    client: FlaskClient, fake_github: FakeGitHub, fake_airflow: FakeAirflow
) -> None:
    payload = load_payload("pull_request", fake_github)
    del payload["pull_request"]
    response = deliver(client, "pull_request", payload)
    assert response.status_code == 400
    assert "pull_request" in response.get_json()["error"]
    assert deliver(client, "push", b"not json").status_code == 400
    assert fake_airflow.runs == {}


def test_plan_job_takes_the_webhooks_job_and_conf(
    app: Flask,
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
    tmp_path: Path,
) -> None:
    """What ``plan_job`` does with the trigger: the webhook's job row is used, not made again, and every changed
    file's layer entries are planned from the content the webhook sent."""
    from openaddr.machine import plan_ci_job
    from openaddr.storage import open_storage
    from webhook.db import get_engine

    answer = deliver(client, "pull_request", load_payload("pull_request", fake_github), "planned").get_json()
    run = fake_airflow.runs[f"ci__{answer['id']}"]
    arguments = plan_ci_job(
        get_engine(app), open_storage(tmp_path / "storage"), run["conf"], dag_run_id=run["dag_run_id"]
    )
    [job] = jobs_of(app, "planned")
    assert job["id"] == answer["id"]
    planned = {argument["entry"]["path"] for argument in arguments}
    assert planned == {"sources/xx/changed.json", "sources/xx/new.json"}
    assert {argument["run_owner"]["job_id"] for argument in arguments} == {answer["id"]}
    assert all(argument["run_owner"]["pull_request"] for argument in arguments)
    stored = tmp_path / "storage" / "jobs" / answer["id"] / "sources" / "xx" / "new.json"
    assert stored.read_bytes() == repository.files(HEAD_SHA)["sources/xx/new.json"]


def test_more_than_200_source_files_is_an_error_before_fetching(
    client: FlaskClient,
    fake_github: FakeGitHub,
    fake_airflow: FakeAirflow,
    repository: FakeRepository,
) -> None:
    from openaddr.machine import MAX_CI_FILES
    from webhook.hook import MAX_FILES

    assert MAX_FILES == MAX_CI_FILES
    head = repository.commits[HEAD_SHA] / "sources" / "xx"
    content = (head / "new.json").read_bytes()
    for i in range(MAX_FILES):
        (head / f"copy-{i:03}.json").write_bytes(content.replace(b"{", b'{"n": %d, ' % i, 1))
    response = deliver(client, "pull_request", load_payload("pull_request", fake_github), "too-many")
    assert response.status_code == 200
    assert response.get_json()["files"] == []
    [status] = fake_github.statuses
    assert status["state"] == "error"
    assert status["description"] == "Errored on : 202 source files; at most 200"
    assert not [r for r in fake_github.requests if "/contents/" in r.path]
    assert fake_airflow.runs == {}
