"""Commit statuses of CI jobs (machine-ci.md §2.2, §5 step 6), posted to the fake GitHub of tests/github_server.py."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import pytest

from openaddr.github import (
    MAX_RETRY_AFTER,
    MAXIMUM_STATUSES_MESSAGE,
    CommitStatus,
    error_status,
    github_client,
    job_commit_status,
    pending_status,
    post_commit_status,
)

if TYPE_CHECKING:
    from pathlib import Path

    import github

    from tests.github_server import FakeGitHub

TOKEN = "s3cret-token"
SHA = "0123456789abcdef0123456789abcdef01234567"
JOB_URL = "https://results.openaddresses.io/jobs/7f2c1c4e-5a7b-4c1e-9d35-1b2f1e0c9a11"
PARK = "sources/us/wy/park.json"
ALAMEDA = "sources/us/ca/alameda.json"
MONTEVIDEO = "sources/uy/mo/montevideo.json"


def fast_client(base_url: str, token: str | None = TOKEN) -> github.Github:
    """A client of the fake GitHub without PyGithub's write throttle (a second between writes)."""
    return github_client(
        token, base_url, timeout=5, seconds_between_requests=None, seconds_between_writes=None
    )


@pytest.fixture
def client(fake_github: FakeGitHub) -> github.Github:
    return fast_client(fake_github.base_url)


@pytest.fixture
def status_url(fake_github: FakeGitHub) -> str:
    return fake_github.status_url("openaddresses", "openaddresses", SHA)


class Sleeps(list):
    """A ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# Building statuses --------------------------------------------------------------------------------------------


def test_pending_job_checks_every_path_sorted() -> None:
    job = {"file_states": {PARK: None, ALAMEDA: True, MONTEVIDEO: None}, "status": None}
    assert job_commit_status(job, JOB_URL) == CommitStatus(
        "pending", f"Checking {ALAMEDA}, {PARK}, {MONTEVIDEO}", JOB_URL
    )


def test_failed_job_names_its_failed_files_among_all() -> None:
    # Short paths: the whole text stays under the 140-character cut.
    c, a, b = "sources/c.json", "sources/a.json", "sources/b.json"
    job = {"file_states": {c: False, b: True, a: False}, "status": False}
    status = job_commit_status(job, JOB_URL)
    assert status.state == "failure"
    assert status.description == f"Failed on {a}, {c} from {a}, {b}, {c}"
    assert status.target_url == JOB_URL


def test_failure_shows_while_other_files_still_run() -> None:
    job = {"file_states": {PARK: None, ALAMEDA: False}, "status": None}
    status = job_commit_status(job, JOB_URL)
    assert (status.state, status.description) == ("failure", f"Failed on {ALAMEDA} from {ALAMEDA}, {PARK}")


def test_failed_job_without_failed_file_blames_the_unfinished_ones() -> None:
    job = {"file_states": {PARK: True, ALAMEDA: None}, "status": False}
    assert job_commit_status(job, None).description == f"Failed on {ALAMEDA} from {ALAMEDA}, {PARK}"


def test_successful_job() -> None:
    job = {"file_states": {PARK: True, ALAMEDA: True}, "status": True}
    assert job_commit_status(job, JOB_URL) == CommitStatus(
        "success", f"Succeeded on {ALAMEDA}, {PARK}", JOB_URL
    )


@pytest.mark.parametrize("file_states", [{}, None])
def test_job_without_files_has_nothing_to_check(file_states: dict | None) -> None:
    status = job_commit_status({"file_states": file_states, "status": True}, JOB_URL)
    assert status == CommitStatus("success", "Nothing to check", None)
    assert "target_url" not in status.payload()


def test_description_is_cut_to_140_characters() -> None:
    paths = {f"sources/us/ca/county_number_{index:02}.json": None for index in range(10)}
    full = "Checking " + ", ".join(sorted(paths))
    status = job_commit_status({"file_states": paths, "status": None}, JOB_URL)
    assert len(full) > 140
    assert status.description == full[:140]
    assert len(pending_status(paths, JOB_URL).description) == 140


def test_error_status_text() -> None:
    assert error_status([PARK, ALAMEDA], "Could not trigger the DAG run") == CommitStatus(
        "error", f"Errored on {ALAMEDA}, {PARK}: Could not trigger the DAG run", None
    )
    assert error_status([], "Could not read source files: boom").description == (
        "Errored on : Could not read source files: boom"
    )


def test_payload_and_unknown_state() -> None:
    assert CommitStatus("pending", "Checking x", JOB_URL).payload() == {
        "state": "pending",
        "description": "Checking x",
        "context": "openaddresses/hooked",
        "target_url": JOB_URL,
    }
    with pytest.raises(ValueError, match="unknown commit status state"):
        CommitStatus("fine", "Everything is fine")


def test_client_defaults() -> None:
    client = github_client("abc", timeout=0.5)
    assert client.requester.base_url == "https://api.github.com"
    assert client.requester.kwargs["timeout"] == 1
    assert client.requester.kwargs["retry"] is None


# Posting --------------------------------------------------------------------------------------------------------


def test_post_status_with_token(fake_github: FakeGitHub, client: github.Github, status_url: str) -> None:
    sleeps = Sleeps()
    status = job_commit_status({"file_states": {PARK: None}, "status": None}, JOB_URL)
    assert post_commit_status(client, status_url, status, sleep=sleeps) is True
    assert sleeps == []
    [posted] = fake_github.statuses
    assert posted["authorization"] == f"token {TOKEN}"
    assert (posted["owner"], posted["repository"], posted["sha"]) == ("openaddresses", "openaddresses", SHA)
    assert posted["body"] == {
        "state": "pending",
        "description": f"Checking {PARK}",
        "context": "openaddresses/hooked",
        "target_url": JOB_URL,
    }


def test_post_status_without_target_and_long_description(
    fake_github: FakeGitHub, client: github.Github, status_url: str
) -> None:
    status = error_status([PARK], "x" * 300)
    assert post_commit_status(client, status_url, status, context="ci/test") is True
    [posted] = fake_github.statuses
    assert "target_url" not in posted["body"]
    assert posted["context"] == "ci/test"
    assert len(posted["description"]) == 140


def test_post_status_retried_after_server_errors(
    fake_github: FakeGitHub, client: github.Github, status_url: str
) -> None:
    path = f"/repos/openaddresses/openaddresses/statuses/{SHA}"
    fake_github.fail_next(path, times=2, status=502)
    sleeps = Sleeps()
    assert post_commit_status(client, status_url, CommitStatus("success", "ok"), sleep=sleeps) is True
    assert sleeps == [2.0, 4.0]
    assert fake_github.hits[path] == 3
    assert [s["state"] for s in fake_github.statuses] == ["success"]


def test_post_status_gives_up_after_the_last_attempt(
    fake_github: FakeGitHub, client: github.Github, status_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/repos/openaddresses/openaddresses/statuses/{SHA}"
    fake_github.fail_next(path, times=5)
    sleeps = Sleeps()
    with caplog.at_level(logging.WARNING, logger="openaddr.github"):
        posted = post_commit_status(
            client, status_url, CommitStatus("success", "ok"), attempts=4, sleep=sleeps
        )
    assert posted is False
    assert sleeps == [2.0, 4.0, 8.0]
    assert fake_github.hits[path] == 4
    assert fake_github.statuses == []
    assert any(status_url in record.getMessage() for record in caplog.records if record.levelname == "ERROR")


@pytest.mark.parametrize(("retry_after", "waited"), [("5", 5.0), ("600", MAX_RETRY_AFTER)])
def test_retry_after_is_honoured_up_to_the_cap(
    fake_github: FakeGitHub, client: github.Github, status_url: str, retry_after: str, waited: float
) -> None:
    # GitHub's secondary rate limit: 403 with Retry-After (a 403 without it is final).
    path = f"/repos/openaddresses/openaddresses/statuses/{SHA}"
    fake_github.fail_next(path, times=1, status=403, headers={"Retry-After": retry_after})
    sleeps = Sleeps()
    assert post_commit_status(client, status_url, CommitStatus("success", "ok"), sleep=sleeps) is True
    assert sleeps == [waited]
    assert fake_github.hits[path] == 2


def test_not_found_is_not_retried(fake_github: FakeGitHub, client: github.Github, status_url: str) -> None:
    path = f"/repos/openaddresses/openaddresses/statuses/{SHA}"
    fake_github.fail_next(path, times=1, status=404)
    sleeps = Sleeps()
    assert post_commit_status(client, status_url, CommitStatus("success", "ok"), sleep=sleeps) is False
    assert sleeps == []
    assert fake_github.hits[path] == 1
    assert fake_github.statuses == []


def test_maximum_number_of_statuses_is_accepted(
    fake_github: FakeGitHub, client: github.Github, status_url: str
) -> None:
    fake_github.max_statuses = 1
    sleeps = Sleeps()
    assert post_commit_status(client, status_url, CommitStatus("pending", "Checking a"), sleep=sleeps) is True
    assert post_commit_status(client, status_url, CommitStatus("success", "Succeeded"), sleep=sleeps) is True
    assert sleeps == []
    assert fake_github.hits[f"/repos/openaddresses/openaddresses/statuses/{SHA}"] == 2
    assert [s["state"] for s in fake_github.statuses] == ["pending"]
    # Another context has its own count.
    assert post_commit_status(client, status_url, CommitStatus("success", "ok"), context="other") is True
    assert len(fake_github.statuses) == 2


def test_maximum_message_as_top_level_message(
    fake_github: FakeGitHub, client: github.Github, status_url: str
) -> None:
    def answer(server, handler, request, params) -> None:
        server.json(handler, {"message": MAXIMUM_STATUSES_MESSAGE}, 422)

    fake_github.add_route("POST", r"/repos/o/r/statuses/.+", answer)
    sleeps = Sleeps()
    url = fake_github.status_url("o", "r", SHA)
    assert post_commit_status(client, url, CommitStatus("success", "ok"), sleep=sleeps) is True
    assert sleeps == []


def test_state_mismatch_is_retried(fake_github: FakeGitHub, client: github.Github, status_url: str) -> None:
    fake_github.echo_state_next("pending", times=1)
    sleeps = Sleeps()
    assert post_commit_status(client, status_url, CommitStatus("success", "ok"), sleep=sleeps) is True
    assert sleeps == [2.0]
    assert [s["state"] for s in fake_github.statuses] == ["success", "success"]


def test_state_mismatch_every_time_fails(
    fake_github: FakeGitHub, client: github.Github, status_url: str
) -> None:
    fake_github.echo_state_next("error", times=3)
    sleeps = Sleeps()
    assert (
        post_commit_status(client, status_url, CommitStatus("failure", "bad", JOB_URL), sleep=sleeps) is False
    )
    assert sleeps == [2.0, 4.0]
    assert len(fake_github.statuses) == 3


def test_client_error_is_not_retried(fake_github: FakeGitHub, status_url: str) -> None:
    anonymous = fast_client(fake_github.base_url, token=None)
    sleeps = Sleeps()
    assert post_commit_status(anonymous, status_url, CommitStatus("success", "ok"), sleep=sleeps) is False
    assert sleeps == []
    assert fake_github.hits[f"/repos/openaddresses/openaddresses/statuses/{SHA}"] == 1
    assert fake_github.statuses == []


def test_server_down_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    sleeps = Sleeps()
    url = f"{base_url}/repos/openaddresses/openaddresses/statuses/{SHA}"
    with caplog.at_level(logging.WARNING, logger="openaddr.github"):
        assert (
            post_commit_status(fast_client(base_url), url, CommitStatus("success", "ok"), sleep=sleeps)
            is False
        )
    assert sleeps == [2.0, 4.0]
    assert sum(url in record.getMessage() for record in caplog.records) == 4
    assert TOKEN not in caplog.text


def test_status_url_of_another_host_is_refused(fake_github: FakeGitHub, client: github.Github) -> None:
    url = f"https://api.github.com/repos/openaddresses/openaddresses/statuses/{SHA}"
    assert post_commit_status(client, url, CommitStatus("success", "ok"), sleep=Sleeps()) is False
    assert fake_github.requests == []


# A client that reads the environment once (the webhook's) -------------------------------------------------------


def _without_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_pinned_client_keeps_the_proxy_settings_it_was_made_with(
    fake_github: FakeGitHub, status_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_proxy_variables(monkeypatch)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there once closed
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    through_proxy = github_client(
        TOKEN, fake_github.base_url, seconds_between_writes=None, pin_environment=True
    )
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bypassing = github_client(TOKEN, fake_github.base_url, seconds_between_writes=None, pin_environment=True)
    _without_proxy_variables(monkeypatch)  # what the clients do no longer depends on the environment

    sleeps = Sleeps()
    assert post_commit_status(bypassing, status_url, CommitStatus("pending", "direct"), sleep=sleeps)
    assert not post_commit_status(
        through_proxy, status_url, CommitStatus("pending", "proxied"), attempts=1, sleep=sleeps
    )
    assert [status["description"] for status in fake_github.statuses] == ["direct"]
    assert fake_github.statuses[0]["authorization"] == f"token {TOKEN}"


def test_pinned_client_takes_the_ca_bundle_of_the_environment(
    fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used on plain http\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = github_client(TOKEN, fake_github.base_url, pin_environment=True)
    # PyGithub passes its verify setting with every request; requests would otherwise have swapped in the bundle.
    assert client.requester._Requester__connection.verify == str(bundle)  # type: ignore[attr-defined]
    assert client.requester._Requester__connection.session.trust_env is False  # type: ignore[attr-defined]
