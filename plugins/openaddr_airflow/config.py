"""Where the Machine's tasks find their database, storage, GitHub and settings (machine-ci.md §1.1).

Read inside tasks and listeners only, never while a DAG file is parsed (style guide point 3).

| what | Airflow | environment fallback | embedded default |
|---|---|---|---|
| Machine database | connection ``openaddr_machine_db`` (``postgres`` through the Postgres provider's hook, or ``sqlite`` with the file in ``host``) | ``OPENADDR_DATABASE_URL`` | ``$OPENADDR_HOME/machine.db`` (embedded mode only) |
| run storage | variable ``openaddr_results`` (a folder, ``file://`` or ``s3://bucket/prefix`` URL; S3 goes through the Amazon provider's ``aws_default``) | ``OPENADDR_RESULTS`` | ``$OPENADDR_HOME/storage`` (embedded mode only) |
| public URL of the storage | variable ``openaddr_results_public_url`` | ``OPENADDR_RESULTS_PUBLIC_URL`` | the backend's own |
| results site | variable ``openaddr_base_url`` | ``OPENADDR_BASE_URL`` | none |
| Airflow UI (log links in PR comments) | ``[api] base_url`` | ``AIRFLOW__API__BASE_URL`` | none: no log links |
| sources location | variable ``openaddr_sources`` (a checkout folder or ``github:owner/repository[@ref]``) | ``OPENADDR_SOURCES`` | ``github:openaddresses/openaddresses`` |
| GitHub | connection ``github_openaddresses`` through the GitHub provider's ``GithubHook`` (token as password, or GitHub App extras; API URL as host) | | |
| status gag | variable ``openaddr_gag_github_status`` | ``OPENADDR_GAG_GITHUB_STATUS`` | off |
| status context | variable ``openaddr_github_status_context`` | | ``openaddresses/hooked`` |
| CloudWatch namespace | variable ``openaddr_cloudwatch_namespace`` | ``OPENADDR_CLOUDWATCH_NAMESPACE`` | none: the metric is logged |

Nothing falls back silently: an Airflow variable or connection that is *not found* gives way to the environment
variable in the table, and a Machine database or run storage named nowhere is an error
(:class:`MissingConfiguration`, which fails the task at once and names the connection or variable), unless the
process runs in the **embedded mode** (``OPENADDR_EMBEDDED=1``, set by ``make run`` for every component it starts):
only then do the local defaults under ``$OPENADDR_HOME`` apply. Any other error reading Airflow's configuration (a
secrets backend or the Execution API failing) propagates, so the task fails and is retried instead of writing to a
local file. (The task SDK itself reports an Execution-API error that outlasts its own retries as "not found"; the
rule above still makes such a worker fail instead of recording into ``var/machine.db``.)

The environment variables are fields of :class:`openaddr.settings.Settings` (the README's table of settings);
:func:`settings` loads them, and a malformed one fails the task at once with :class:`InvalidConfiguration` naming
it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from collections.abc import Iterator

    import github
    import sqlalchemy as sa

    from openaddr.settings import Settings
    from openaddr.storage import Storage

log = logging.getLogger(__name__)

MACHINE_DB_CONN_ID = "openaddr_machine_db"
GITHUB_CONN_ID = "github_openaddresses"
AWS_CONN_ID = "aws_default"
DEFAULT_SOURCES = "github:openaddresses/openaddresses"
DEFAULT_STATUS_CONTEXT = "openaddresses/hooked"
#: Seconds for connecting to GitHub and for each read (machine-ci.md §2.1 step 8).
GITHUB_TIMEOUT = 10
#: Environment variable that turns the embedded mode on (local defaults for database and storage).
EMBEDDED_VARIABLE = "OPENADDR_EMBEDDED"
#: Extras of ``openaddr_machine_db`` passed on to libpq.
LIBPQ_OPTIONS = frozenset(
    ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name", "options")
)


class MissingConfiguration(AirflowFailException):
    """A setting the Machine cannot run without is configured nowhere: fail the task at once (a retry cannot
    help), naming what to set."""


class InvalidConfiguration(AirflowFailException):
    """An ``OPENADDR_*`` environment variable is malformed: fail the task at once (a retry cannot help), naming
    the variable and its value."""


def settings() -> Settings:
    """The Machine's settings from this process's environment (:meth:`openaddr.settings.Settings.from_env`).

    :raises InvalidConfiguration: a variable is set to a malformed value
    """
    from openaddr.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise InvalidConfiguration(f"Invalid setting: {exc}") from None


def embedded() -> bool:
    """Whether this process runs in the embedded mode (``OPENADDR_EMBEDDED``), where local defaults apply."""
    return settings().embedded


def variable(key: str, setting: str | None = None, default: str | None = None) -> str | None:
    """An Airflow variable, else the text field ``setting`` of :func:`settings` (its ``OPENADDR_*`` variable),
    else ``default``.

    Only "not found" gives way to ``setting`` and ``default``; any other error reading the variable propagates.
    """
    from airflow.sdk import Variable

    # Variable.get returns the default for VARIABLE_NOT_FOUND only and raises every other error.
    value = Variable.get(key, default=None)
    if value is None:
        value = _setting_text(setting)
    return value if value is not None else default


def _setting_text(setting: str | None) -> str | None:
    value = getattr(settings(), setting) if setting else None
    return str(value) if value is not None else None


def optional_variable(key: str, setting: str | None = None, default: str | None = None) -> str | None:
    """A variable the Machine runs without: :func:`variable`, but in a task process Airflow is asked only when the
    variable exists, so that an unset one costs no "404 Variable not found" in the api-server's log.

    Existence is read from the environment (``AIRFLOW_VAR_<KEY>``) and from the Execution API's list of the
    metadata database's ``openaddr_*`` keys; with a secrets backend configured (whose variables that list does not
    show) or outside a task process, the variable is always asked for.
    """
    if f"AIRFLOW_VAR_{key.upper()}" in os.environ or not _variable_keys_listable():
        return variable(key, setting, default)
    from airflow.sdk import Variable

    if key in Variable.keys(prefix="openaddr_"):
        return variable(key, setting, default)
    value = _setting_text(setting)
    return value if value is not None else default


def _variable_keys_listable() -> bool:
    """Whether this is a task process whose variables all live in the environment or the metadata database."""
    from airflow.sdk.configuration import conf
    from airflow.sdk.execution_time import task_runner

    if getattr(task_runner, "SUPERVISOR_COMMS", None) is None:
        return False
    return not (
        conf.get("secrets", "backend", fallback="") or conf.get("workers", "secrets_backend", fallback="")
    )


def openaddr_home() -> Path:
    """``$OPENADDR_HOME``, else ``./var``."""
    return (settings().home or Path("var")).resolve()


def _connection(conn_id: str) -> Any:
    """The Airflow connection ``conn_id``, or None when it is not defined (other errors propagate)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def machine_database_url() -> str:
    """The Machine database URL from ``openaddr_machine_db``, else ``OPENADDR_DATABASE_URL``, else (embedded mode
    only) the SQLite file ``$OPENADDR_HOME/machine.db``.

    :raises MissingConfiguration: none of them is set
    :raises InvalidConfiguration: an ``OPENADDR_*`` variable is malformed (checked first, whatever is configured)
    """
    from openaddr.db import DATABASE_URL_VARIABLE, default_database_url

    current = settings()
    conn = _connection(MACHINE_DB_CONN_ID)
    if conn is None:
        if current.database_url or current.embedded:
            return default_database_url()
        raise MissingConfiguration(
            f"The Machine database is not configured: connection {MACHINE_DB_CONN_ID} is not defined and "
            f"{DATABASE_URL_VARIABLE} is not set ({EMBEDDED_VARIABLE}=1 uses a local SQLite file, for "
            "development only)"
        )
    if conn.conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    url = PostgresHook(postgres_conn_id=MACHINE_DB_CONN_ID).sqlalchemy_url
    # The hook's URL leaves the connection's extras out; libpq options such as sslmode (required by managed
    # databases) must reach psycopg2.
    options = {key: str(value) for key, value in conn.extra_dejson.items() if key in LIBPQ_OPTIONS}
    return str(url.update_query_dict(options).render_as_string(hide_password=False))


@contextlib.contextmanager
def machine_engine() -> Iterator[sa.Engine]:
    """An engine of the Machine database for one task body or listener step, disposed when the block ends.

    The lifecycle of flaskr's ``get_db``/``close_db``: whoever opens the database closes it; no engine outlives
    its user in a module-level cache. (A task process makes a handful of calls, so one pool per block costs a
    connection or two.)

    :raises MissingConfiguration: the database is configured nowhere (:func:`machine_database_url`)
    """
    from openaddr.db import make_engine

    engine = make_engine(machine_database_url())
    try:
        yield engine
    finally:
        engine.dispose()


def machine_storage() -> Storage:
    """The run storage (``openaddr_results``, else ``OPENADDR_RESULTS``, else in the embedded mode
    ``$OPENADDR_HOME/storage``).

    :raises MissingConfiguration: none of them is set
    :raises InvalidConfiguration: an ``OPENADDR_*`` variable is malformed (checked first, whatever is configured)
    """
    from openaddr.storage import open_storage

    settings()

    url = variable("openaddr_results", "results")
    if not url:
        if not embedded():
            raise MissingConfiguration(
                f"The run storage is not configured: variable openaddr_results is not defined and "
                f"OPENADDR_RESULTS is not set ({EMBEDDED_VARIABLE}=1 uses a local folder, for development only)"
            )
        url = str(openaddr_home() / "storage")
    public_url = optional_variable("openaddr_results_public_url", "results_public_url")
    if url.startswith("s3://"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return open_storage(url, public_url=public_url, client=S3Hook(aws_conn_id=AWS_CONN_ID).get_conn())
    return open_storage(url, public_url=public_url)


def base_url() -> str | None:
    """The results site (links in statuses and the UI), without a trailing slash."""
    value = optional_variable("openaddr_base_url", "base_url")
    return value.rstrip("/") if value else None


def airflow_ui_url() -> str | None:
    """The Airflow UI's URL (``[api] base_url``) for log links in pull-request comments, without a trailing slash;
    None when the configuration does not set it (Airflow cannot guess its public name) or it is not http(s)."""
    from airflow.sdk.configuration import conf

    from openaddr_airflow.links import http_url

    value = http_url(conf.get("api", "base_url", fallback=None) or None)
    return value.rstrip("/") or None


def sources_location() -> str:
    """Where the batch lists its sources."""
    return optional_variable("openaddr_sources", "sources") or DEFAULT_SOURCES


def scratch_folder() -> Path:
    """Parent of the tasks' work folders (``OPENADDR_SCRATCH``, else the system temporary folder)."""
    folder = settings().scratch_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def github_gagged() -> bool:
    """Whether commit statuses are never posted (``openaddr_gag_github_status``)."""
    from openaddr.settings import parse_flag

    value = optional_variable("openaddr_gag_github_status")
    if value is None:
        return settings().gag_github_status
    try:
        return parse_flag(value)
    except ValueError as exc:
        raise InvalidConfiguration(f"Invalid variable openaddr_gag_github_status={value!r}: {exc}") from None


def github_status_context() -> str:
    """The commit-status context."""
    return optional_variable("openaddr_github_status_context") or DEFAULT_STATUS_CONTEXT


def github_client() -> github.Github | None:
    """The PyGithub client of ``github_openaddresses`` from the GitHub provider's ``GithubHook`` (a token as
    password, or GitHub App auth in the extras ``app_id``, ``installation_id``, ``private_key``/``key_path``; the
    API URL as host, with its scheme), under the Machine's request policy; None when the connection is not defined.

    The policy (:func:`openaddr.github.github_client`'s): a 10 s timeout, the Machine's user agent and PyGithub's
    own retries off, so that the callers' retry policy is the only one; auth and base URL stay the hook's.
    """
    import github as pygithub
    from airflow.providers.github.hooks.github import GithubHook

    from openaddr.github import USER_AGENT

    if _connection(GITHUB_CONN_ID) is None:
        return None
    hooked = GithubHook(github_conn_id=GITHUB_CONN_ID).get_conn()
    # PyGithub's Requester.kwargs are the client's constructor arguments; Github() binds an App's installation
    # auth to the new requester.
    return pygithub.Github(
        **{**hooked.requester.kwargs, "timeout": GITHUB_TIMEOUT, "user_agent": USER_AGENT, "retry": None}
    )


def cloudwatch_namespace() -> str | None:
    """CloudWatch namespace of the Machine-task metric, or None to log it only."""
    return optional_variable("openaddr_cloudwatch_namespace", "cloudwatch_namespace")
