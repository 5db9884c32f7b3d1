"""GitHub commit statuses of CI jobs (machine-ci.md §2.2, §5 step 6).

The client is PyGithub's :class:`github.Github`, the object Airflow's GitHub provider hands out
(``GithubHook(...).get_conn()``), so the webhook and the Airflow plugins share one code path. Posting goes through the
client's requester with the absolute status URL GitHub gave in the webhook payload; retries are ours (PyGithub's own
are off by default in :func:`github_client`), so one policy decides how often GitHub is asked.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import github
import requests
from github import Auth, Consts, GithubException, RateLimitExceededException

import openaddr
from openaddr.retry import RetryPolicy, retry_after_seconds

if TYPE_CHECKING:
    from urllib3.util import Retry

log = logging.getLogger(__name__)

#: The context of every status the Machine posts (7.5.5).
STATUS_CONTEXT = "openaddresses/hooked"

#: GitHub keeps at most 140 characters of a status description.
DESCRIPTION_LIMIT = 140

#: Commit status states GitHub accepts.
STATES = frozenset({"pending", "success", "failure", "error"})

#: What GitHub answers (422) once a SHA and context hold 1000 statuses; posting more can never succeed.
MAXIMUM_STATUSES_MESSAGE = "This SHA and context has reached the maximum number of statuses."

USER_AGENT = f"openaddr-machine/{openaddr.__version__}"

#: The longest ``Retry-After`` of GitHub that is honoured: a status post runs in a task's listener or a webhook
#: request, which must not hang on it.
MAX_RETRY_AFTER = 60.0


def github_client(
    token: str | None,
    base_url: str | None = None,
    *,
    timeout: float = 10,
    retry: int | Retry | None = None,
    seconds_between_requests: float | None = Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS,
    seconds_between_writes: float | None = Consts.DEFAULT_SECONDS_BETWEEN_WRITES,
    pin_environment: bool = False,
) -> github.Github:
    """A PyGithub client authenticated with ``token``.

    :param token: a personal access or installation token (sent as ``Authorization: token …``); None: anonymous
    :param base_url: the REST API root, e.g. ``https://ghe.example.com/api/v3``; None: ``https://api.github.com``
    :param timeout: seconds for connecting and for each read; PyGithub only takes whole seconds, so it is rounded up
    :param retry: PyGithub's own retry setting (an int or a urllib3 ``Retry``); None, the default, turns its retries
        off so that the callers' policy is the only one
    :param seconds_between_requests: PyGithub's throttle between any two requests (None: no throttle)
    :param seconds_between_writes: PyGithub's throttle between two writes, as GitHub asks of integrations
    :param pin_environment: read the proxy and CA settings of the environment once, now, instead of on every request
        (:func:`pin_request_environment`; for a long-lived client on a hot path, the webhook's)
    :return: the client
    """
    base = (base_url or Consts.DEFAULT_BASE_URL).rstrip("/")
    settings = environment_settings(base) if pin_environment else None
    client = github.Github(
        auth=Auth.Token(token) if token else None,
        base_url=base,
        timeout=max(1, math.ceil(timeout)),
        user_agent=USER_AGENT,
        retry=retry,
        seconds_between_requests=seconds_between_requests,
        seconds_between_writes=seconds_between_writes,
        # PyGithub passes verify=True on every request, which requests replaces by REQUESTS_CA_BUNDLE only while it
        # reads the environment: a pinned client gets the bundle here.
        verify=settings["verify"] if settings is not None else True,
    )
    if settings is not None:
        # PyGithub makes its connection (and requests session) lazily and keeps it for the client's life; it has no
        # public way to reach that session, so the one private call is here, checked.
        create = getattr(client.requester, "_Requester__createConnection", None)
        if create is None:
            raise RuntimeError(
                "This PyGithub has no Requester.__createConnection: openaddr.github.github_client's "
                "pin_environment needs updating"
            )
        pin_request_environment(create().session, base, settings)
    return client


def environment_settings(url: str) -> dict[str, Any]:
    """What requests reads from the environment for a request to ``url``: ``proxies`` (``HTTPS_PROXY`` … minus
    ``NO_PROXY``), ``verify`` (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) and ``cert``, by requests' own rules."""
    with requests.Session() as session:
        settings: dict[str, Any] = session.merge_environment_settings(url, {}, None, None, None)
    return settings


def pin_request_environment(
    session: requests.Session, url: str, settings: Mapping[str, Any] | None = None
) -> None:
    """Let ``session`` (whose requests all go to ``url``'s host) use the environment's settings as they are now,
    without reading the environment again on each request.

    requests looks the proxy variables up on every request of a session that trusts the environment, iterating all of
    ``os.environ`` twice (``getproxies_environment``): over a quarter of a loopback request's CPU in the webhook. The
    settings are resolved once for ``url`` by requests' own rules (:func:`environment_settings`), put on the session,
    and ``trust_env`` turned off; the variables are read when the process starts and never change after, so the
    requests are sent exactly as before.
    """
    settings = settings if settings is not None else environment_settings(url)
    session.proxies.update(settings["proxies"])
    if settings["verify"] not in (True, None):
        session.verify = settings["verify"]
    if settings["cert"] is not None:
        session.cert = settings["cert"]
    session.trust_env = False


@dataclass(frozen=True)
class CommitStatus:
    """One commit status as posted to GitHub.

    :param state: ``pending``, ``success``, ``failure`` or ``error``
    :param description: the text shown next to the check; cut to :data:`DESCRIPTION_LIMIT` characters
    :param target_url: the link of the check (the job page), or None
    :raises ValueError: on a state GitHub does not know
    """

    state: str
    description: str
    target_url: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown commit status state {self.state!r}")
        if len(self.description) > DESCRIPTION_LIMIT:
            object.__setattr__(self, "description", self.description[:DESCRIPTION_LIMIT])

    def payload(self, context: str = STATUS_CONTEXT) -> dict[str, str]:
        """The JSON body of the status post.

        :param context: the status context
        :return: ``state``, ``description``, ``context`` and, when there is one, ``target_url``
        """
        body = {"state": self.state, "description": self.description, "context": context}
        if self.target_url is not None:
            body["target_url"] = self.target_url
        return body


def _join(paths: Iterable[str]) -> str:
    return ", ".join(sorted(paths))


def job_commit_status(job: Mapping[str, Any], job_url: str | None) -> CommitStatus:
    """The status of a job from its database row (§5 step 6).

    A job status of false, or any failed file, gives *failure* (a failure shows as soon as one file fails); null gives
    *pending*; true gives *success*. A job without files is a *success* "Nothing to check" without a link.

    :param job: the job row: ``file_states`` {path: true | false | null} and ``status`` (true | false | null)
    :param job_url: the job page, the target of the status
    :return: the status to post
    """
    file_states: Mapping[str, bool | None] = job.get("file_states") or {}
    status = job.get("status")
    if not file_states:
        return CommitStatus("success", "Nothing to check")
    paths = _join(file_states)
    failed = [path for path, state in file_states.items() if state is False]
    if status is False or failed:
        if not failed:
            # The job failed on its own (e.g. planning failed): blame every file not known to be fine.
            failed = [path for path, state in file_states.items() if state is not True] or list(file_states)
        return CommitStatus("failure", f"Failed on {_join(failed)} from {paths}", job_url)
    if status is None:
        return CommitStatus("pending", f"Checking {paths}", job_url)
    return CommitStatus("success", f"Succeeded on {paths}", job_url)


def pending_status(paths: Iterable[str], job_url: str | None) -> CommitStatus:
    """The *pending* status of a job that was just created (§2.1 step 10).

    :param paths: the paths of the job's files
    :param job_url: the job page
    :return: "Checking <paths>"
    """
    return CommitStatus("pending", f"Checking {_join(paths)}", job_url)


def error_status(paths: Iterable[str], message: str) -> CommitStatus:
    """The *error* status of a job that could not be created or read (§2.1 steps 9 and 10).

    :param paths: the paths concerned (may be empty)
    :param message: what went wrong
    :return: "Errored on <paths>: <message>", without a link
    """
    return CommitStatus("error", f"Errored on {_join(paths)}: {message}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _is_maximum_statuses(error: GithubException) -> bool:
    # GitHub has sent the text as the message, in the errors list and as an errors string: look everywhere.
    text = error.data if isinstance(error.data, str) else json.dumps(error.data)
    return 400 <= error.status < 500 and MAXIMUM_STATUSES_MESSAGE.rstrip(".").lower() in text.lower()


def _is_permanent(error: GithubException) -> bool:
    """A client error that asking again cannot fix (bad credentials, no such repository, invalid body)."""
    if isinstance(error, RateLimitExceededException):
        return False
    return 400 <= error.status < 500 and error.status not in (408, 409, 429)


class _PostFailed(Exception):
    """One status post that did not count; retried unless :attr:`retryable` is false."""

    def __init__(self, text: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after(error: GithubException) -> float | None:
    """The seconds GitHub asked to wait (``Retry-After``, sent with its secondary rate limits), or None."""
    headers = error.headers or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    return retry_after_seconds(str(value)) if value is not None else None


def post_commit_status(
    client: github.Github,
    status_url: str,
    status: CommitStatus,
    *,
    context: str = STATUS_CONTEXT,
    attempts: int = 3,
    backoff: float = 2.0,
    sleep: Callable[[float], object] = time.sleep,
) -> bool:
    """POST ``status`` to a commit's status URL, retrying with exponential back-off (§2.2).

    A post counts when GitHub answers 2xx echoing the same state. The 4xx "maximum number of statuses" answer is
    accepted silently: that commit can take no more statuses, and asking again would not change it. Other failures
    (5xx, connection errors, a different state echoed, rate limits) are logged with the URL and retried by the one
    retry policy (:class:`openaddr.retry.RetryPolicy`), waiting ``backoff``, then twice that, …, or what GitHub asked
    in ``Retry-After`` (up to :data:`MAX_RETRY_AFTER`); client errors that cannot change (401, 404, 422 …, unless
    they carry ``Retry-After``) are logged and not retried. GitHub errors never raise.

    :param client: the PyGithub client; its base URL must be the origin of ``status_url``
    :param status_url: the absolute status URL (``…/repos/<owner>/<repository>/statuses/<sha>``)
    :param status: what to post
    :param context: the status context
    :param attempts: how many times to try at most
    :param backoff: seconds before the second attempt, doubled for each later one
    :param sleep: how to wait (tests pass a no-op)
    :return: whether GitHub has the status (or can take no more)
    """
    base_url = client.requester.base_url
    if not status_url.startswith("/") and _origin(status_url) != _origin(base_url):
        # PyGithub would send the path to its own host, or refuse with an AssertionError: say so plainly instead.
        log.error("Not posting status to %s: the GitHub client is for %s", status_url, base_url)
        return False
    body = status.payload(context)
    total = max(1, attempts)
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        try:
            _, answer = client.requester.requestJsonAndCheck("POST", status_url, input=body)
        except GithubException as error:
            if _is_maximum_statuses(error):
                log.info("Status not posted to %s: %s", status_url, MAXIMUM_STATUSES_MESSAGE)
                return
            log.warning(
                "Status post %d/%d to %s failed: HTTP %s %s",
                tries,
                total,
                status_url,
                error.status,
                error.data,
            )
            wait = _retry_after(error)
            retryable = wait is not None or not _is_permanent(error)
            raise _PostFailed(f"HTTP {error.status}", retryable=retryable, retry_after=wait) from error
        except (requests.RequestException, OSError, ValueError) as error:
            log.warning("Status post %d/%d to %s failed: %s", tries, total, status_url, error)
            raise _PostFailed(str(error)) from error
        echoed = answer.get("state") if isinstance(answer, Mapping) else None
        if echoed != status.state:
            log.warning(
                "Status post %d/%d to %s answered state %r instead of %r",
                tries,
                total,
                status_url,
                echoed,
                status.state,
            )
            raise _PostFailed(f"answered state {echoed!r}")
        log.debug("Posted %s status to %s", status.state, status_url)

    delays = tuple(backoff * 2**k for k in range(total - 1))
    policy = RetryPolicy(delays, MAX_RETRY_AFTER, name="status post")
    try:
        policy.call(attempt, sleep=sleep, log_retries=False)
    except _PostFailed:
        log.error("Could not post %s status %r to %s", status.state, status.description, status_url)
        return False
    return True
