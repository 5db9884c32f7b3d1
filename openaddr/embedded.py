"""The embedded default: the whole Machine on one computer with no external service (``make run``).

``python -m openaddr.embedded [--home var] [--port 8080] [--demo-port 8765] [--once]`` starts Airflow from the
repository checkout, with everything it writes under ``--home`` (git-ignored ``var/``):

====================  ====================================================================================
``var/airflow/``      ``AIRFLOW_HOME``: SQLite metadata database ``airflow.db``, ``secrets.env`` (fernet key,
                      JWT secret, API secret key; generated once, mode 600, the same for every component),
                      ``logs/<component>.log``, ``<component>.pid``, SimpleAuthManager's password file
``var/machine.db``    the Machine database (SQLite, migrated on start)
``var/storage/``      the run storage (``runs/<run id>/…``, ``sets/<set id>/…``)
``var/scratch/``      the tasks' work folders
====================  ====================================================================================

Airflow reads the reviewed ``airflow.cfg`` of the repository (``AIRFLOW_CONFIG``; Airflow never rewrites an
existing file); everything that is a path, a port or a secret is an ``AIRFLOW__…`` variable in the environment
the launcher builds. The launcher runs ``airflow db migrate``, then starts ``api-server``, ``scheduler``,
``dag-processor`` and ``triggerer`` as separate processes (not ``airflow standalone``, which orphans its
children on SIGTERM), waits until ``/api/v2/monitor/health`` reports each of them, creates the pool
``oa_sources``, waits until the DAGs are parsed, unpauses them, serves ``demo/data/`` on loopback, triggers
one ``openaddr_batch`` run over the demo sources through the REST API and prints what the set recorded. Ctrl-C
or SIGTERM stops every process it started.

The same machinery is a small API (:class:`Stack`) for benchmarks and tests::

    with Stack(Path("var/bench"), port=8090, env={"AIRFLOW_VAR_OPENADDR_SOURCES": "/data/sources"}) as stack:
        stack.unpause("openaddr_batch")
        run_id = stack.trigger("openaddr_batch")
        state = stack.wait("openaddr_batch", run_id, timeout=600)

``Stack`` also runs the production shape on one computer (airflow.md, "Production shape"): PostgreSQL for
Airflow's metadata and for the Machine database, the CeleryExecutor with Redis as the broker, and one
``airflow celery worker`` as a fifth component::

    with Stack(home, port, executor="celery",
               metadata_url="postgresql+psycopg2://postgres@127.0.0.1:5432/airflow",
               machine_database_url="postgresql+psycopg2://postgres@127.0.0.1:5432/machine",
               broker_url="redis://127.0.0.1:6379/3", worker_concurrency=4) as stack:
        ...

This module never imports Airflow: it drives the ``airflow`` command of the running interpreter's environment
and talks to the REST API with ``requests``. It only works from a checkout (it needs ``dags/``, ``plugins/``,
``airflow.cfg`` and ``demo/`` beside the package).
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import datetime as dt
import functools
import http.server
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from openaddr.errors import OpenaddrError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

log = logging.getLogger(__name__)

#: The checkout this package was imported from.
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
DEFAULT_PORT = 8080
#: The port the demo sources' data URLs name (``http://127.0.0.1:8765/<file>``).
DEFAULT_DEMO_PORT = 8765
DEMO_URL = f"http://127.0.0.1:{DEFAULT_DEMO_PORT}/"
#: Fallback when ``airflow.cfg`` does not set ``[core] parallelism``.
DEFAULT_PARALLELISM = 4
#: The SimpleAuthManager user the launcher logs in as (role admin).
ADMIN = "admin"
#: Started in this order; stopped together, the api-server once the scheduler is gone (tasks report to it).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The fifth component of the CeleryExecutor shape (``airflow celery worker``); the health endpoint does not
#: report it, so the stack pings it through the broker.
CELERY_WORKER = "celery-worker"
#: ``executor=`` of :class:`Stack` → Airflow's executor.
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: Seconds a worker has to answer one ping.
PING_TIMEOUT = 1.0
#: Where the tasks find the Machine database: set by the stack from ``machine_database_url`` only, so that the
#: database it migrates is the one the tasks use.
MACHINE_DB_KEYS = ("AIRFLOW_CONN_OPENADDR_MACHINE_DB", "OPENADDR_DATABASE_URL")
#: ``/api/v2/monitor/health`` key of each component that heartbeats (the api-server answers itself).
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
DAG_IDS = ("openaddr_batch", "openaddr_ci")
POOL = "oa_sources"
#: The large tier's pool (``conform.size: large``); one slot here, where one machine serves both tiers.
LARGE_POOL = "oa_large"
LARGE_POOL_SLOTS = 1
FINAL_STATES = frozenset({"success", "failed"})
#: The keys of ``secrets.env``: the same values must reach every component, or tasks fail to authenticate.
SECRET_KEYS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
TERM_TIMEOUT = 30.0
#: Seconds into a stop after which idle LocalExecutor workers are killed (see :func:`_wait_exit`).
IDLE_WORKER_GRACE = 5.0
REQUEST_TIMEOUT = 30.0


class StackError(OpenaddrError):
    """The embedded stack could not start, or one of its components stopped."""


class PortInUseError(StackError):
    """A port the stack needs is already taken."""


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


def check_port_free(port: int, what: str) -> None:
    """Fail clearly when ``127.0.0.1:port`` cannot be bound.

    :param what: what the port is for (named in the message)
    :raises PortInUseError: when the port is taken
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: a port whose last connections linger in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise PortInUseError(
                f"port {port} ({what}) is already in use on 127.0.0.1: stop what runs there or choose "
                f"another port ({error.strerror})"
            ) from error


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ancestors() -> set[int]:
    """This process and its ancestors: never swept, even when they carry the stack's ``AIRFLOW_HOME``."""
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        fields = _stat(pid)
        if fields is None:
            break
        pid = int(fields[1])
        pids.add(pid)
    return pids


def processes_of(airflow_home: Path) -> list[int]:
    """PIDs of the live processes whose environment block still reads ``AIRFLOW_HOME=<airflow_home>``.

    That finds the processes a task starts in a session of its own (``openaddr process-one`` and its workers),
    which :func:`session_members` cannot; it misses the Airflow processes that rename themselves with
    setproctitle (the api-server, LocalExecutor workers, task supervisors), whose environment block then holds
    the title. Linux only (reads ``/proc``); elsewhere the empty list.
    """
    marker = f"AIRFLOW_HOME={airflow_home}".encode()
    skip = _ancestors()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def _stat(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, session, …), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: a component started in a session of its own, its
    children, and the task processes, which Airflow's supervisor moves to process groups of their own in the
    same session.

    Linux only; elsewhere the leader while it is alive.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.kill(sid, 0)
        except OSError:
            return []
        return [sid]
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return sorted(members)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Component:
    """One running Airflow process of the stack.

    :param name: the ``airflow`` sub-command (``api-server``, ``scheduler``, …)
    :param process: the process (leader of its own process group)
    :param log_path: where its stdout and stderr go
    :param pid_path: where its PID is recorded
    """

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    pid_path: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def failure(self) -> str:
        """A message naming the exit status and the end of the log."""
        return (
            f"airflow {self.name} exited with status {self.process.returncode}; end of {self.log_path}:\n"
            f"{_tail(self.log_path)}"
        )


# --------------------------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------------------------


def read_parallelism(config: Path) -> int:
    """``[core] parallelism`` of an ``airflow.cfg`` read without Airflow, else :data:`DEFAULT_PARALLELISM`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    return parser.getint("core", "parallelism", fallback=DEFAULT_PARALLELISM)


def load_secrets(path: Path) -> dict[str, str]:
    """The stack's secrets from ``path`` (``KEY=value`` lines), generated into a new file of mode 600 when it
    does not exist yet.

    :raises StackError: when the file lacks one of :data:`SECRET_KEYS`
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {
            # A Fernet key is 32 random bytes in URL-safe base64 (as cryptography's Fernet.generate_key).
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(48),
        }
        text = "# Generated by openaddr.embedded; shared by every Airflow component of this home.\n"
        text += "".join(f"{key}={value}\n" for key, value in values.items())
        # O_EXCL: never overwrite the secrets a running stack uses; 0o600: never readable by others.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        log.info("Generated %s", path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    missing = [key for key in SECRET_KEYS if not values.get(key)]
    if missing:
        raise StackError(f"{path} lacks {', '.join(missing)}: delete it to generate new secrets")
    return values


def machine_connection(url: str) -> dict[str, Any]:
    """The connection ``openaddr_machine_db`` for a Machine database URL, in Airflow's JSON form
    (``AIRFLOW_CONN_OPENADDR_MACHINE_DB``), as ``plugins/openaddr_airflow/config.py`` reads it back.

    :param url: a SQLAlchemy URL of SQLite or PostgreSQL
    :return: ``{"conn_type": "sqlite", "host": <file>}`` or ``{"conn_type": "postgres", "host", "port",
        "login", "password", "schema": <database>}`` (plus ``extra`` for URL query parameters)
    :raises StackError: for another backend
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"conn_type": "sqlite", "host": parsed.database or ""}
    if backend != "postgresql":
        raise StackError(f"the Machine database must be SQLite or PostgreSQL, not {backend}")
    connection: dict[str, Any] = {
        "conn_type": "postgres",
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "login": parsed.username or "",
        "password": parsed.password or "",
        "schema": parsed.database or "",
    }
    if parsed.query:
        # e.g. sslmode: the Postgres provider passes a connection's extra on to the driver
        connection["extra"] = {key: value for key, value in parsed.query.items()}
    return connection


def result_backend_url(metadata_url: str) -> str:
    """Celery's database result backend on Airflow's metadata database (``db+postgresql://…``): Celery
    strips ``db+`` and hands the rest to SQLAlchemy, which picks the backend's default driver."""
    from sqlalchemy.engine import make_url

    parsed = make_url(metadata_url)
    return "db+" + parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=False)


def _alembic_revision(url: str) -> str | None:
    """The alembic revision of a database (None: no schema, or the database cannot be read)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return str(row[0]) if row else None


def pss(pid: int) -> int:
    """Proportional set size of a process in bytes (``/proc/<pid>/smaps_rollup``), 0 when it is gone or
    unreadable: shared pages are divided among the processes sharing them, so PSS values add up."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class Stack:
    """Airflow as separate processes driven through the REST API: the embedded shape (SQLite, LocalExecutor:
    api-server, scheduler, dag-processor, triggerer) by default, the production shape (PostgreSQL,
    CeleryExecutor with Redis, plus an ``airflow celery worker``) with ``executor="celery"``.

    ``start()`` prepares the home (secrets, Machine database, ``airflow db migrate``), starts the components,
    waits until the health endpoint reports each of them (and, with Celery, until the worker answers a ping
    through the broker), creates the pool ``oa_sources`` and waits until the DAGs of ``dag_ids`` are parsed.
    ``stop()`` (also on leaving the ``with`` block) sends SIGTERM to each component, waits, then kills
    whatever is left of it and of any task subprocess. Logs go to ``<home>/airflow/logs/<component>.log``,
    PIDs to ``<home>/airflow/<component>.pid``.

    The Machine's tasks find their database (``AIRFLOW_CONN_OPENADDR_MACHINE_DB``: ``machine_database_url``,
    default ``<home>/machine.db``, which is also the database ``start()`` migrates), storage
    (``AIRFLOW_VAR_OPENADDR_RESULTS``, ``<home>/storage``) and sources (``AIRFLOW_VAR_OPENADDR_SOURCES``,
    default the bundled ``demo/``) in the environment; ``env`` overrides any variable the stack sets except
    the Machine database's.

    :param home: the folder of everything the stack writes (``AIRFLOW_HOME`` is ``home/airflow``)
    :param port: the api-server's port on 127.0.0.1 (UI, REST API and the tasks' Execution API)
    :param env: environment of every component, applied last (e.g. ``AIRFLOW_VAR_OPENADDR_SOURCES``)
    :param parallelism: the scheduler's task slots (``[core] parallelism``; default: ``airflow.cfg``'s); with
        the LocalExecutor also its pre-forked workers (30–50 MB PSS each) and the slots of ``oa_sources``
    :param root: the checkout holding ``dags/``, ``plugins/`` and ``airflow.cfg``
    :param airflow: the ``airflow`` command (default: beside the running interpreter)
    :param dag_ids: the DAGs ``start()`` waits for
    :param executor: ``"local"`` (LocalExecutor) or ``"celery"`` (CeleryExecutor and one Celery worker)
    :param metadata_url: Airflow's metadata database (``[database] sql_alchemy_conn``; default the SQLite
        ``<home>/airflow/airflow.db``); required with Celery, which cannot use SQLite
    :param machine_database_url: the Machine database (default the SQLite ``<home>/machine.db``)
    :param broker_url: Celery's broker (default :data:`DEFAULT_BROKER_URL`); give each stack sharing a Redis
        a database index of its own
    :param result_backend: Celery's result backend (default :func:`result_backend_url` of ``metadata_url``)
    :param worker_concurrency: task processes of the Celery worker (default ``parallelism``); with Celery
        also the slots of ``oa_sources``
    :param warm_up: have ``start()`` call :meth:`warm_up`, so that the first task does not wait ~10 s for the
        api-server to build its Execution API
    :raises StackError: on an unknown executor, Celery without ``metadata_url``, or ``env`` naming the
        Machine database
    """

    def __init__(
        self,
        home: Path,
        port: int = DEFAULT_PORT,
        env: Mapping[str, str] | None = None,
        parallelism: int | None = None,
        *,
        root: Path = ROOT,
        airflow: Path | None = None,
        dag_ids: tuple[str, ...] = DAG_IDS,
        executor: str = "local",
        metadata_url: str | None = None,
        machine_database_url: str | None = None,
        broker_url: str | None = None,
        result_backend: str | None = None,
        worker_concurrency: int | None = None,
        warm_up: bool = False,
    ) -> None:
        if executor not in EXECUTORS:
            raise StackError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
        if executor == "celery" and metadata_url is None:
            raise StackError("the CeleryExecutor needs a PostgreSQL metadata database: pass metadata_url")
        named = [key for key in MACHINE_DB_KEYS if key in (env or {})]
        if named:
            raise StackError(
                f"env names {', '.join(named)}: pass machine_database_url instead, so that the database the "
                f"stack migrates is the one its tasks use"
            )
        self.home = Path(home).resolve()
        self.port = port
        self.overrides = dict(env or {})
        self.root = Path(root).resolve()
        self.config = self.root / "airflow.cfg"
        self.parallelism = parallelism if parallelism is not None else read_parallelism(self.config)
        # Not resolved: the venv's bin/python links to the system interpreter, whose bin has no airflow.
        self.airflow = airflow or Path(sys.executable).parent / "airflow"
        self.dag_ids = dag_ids
        self.executor = executor
        self.airflow_home = self.home / "airflow"
        self.logs = self.airflow_home / "logs"
        #: The Machine database's file when ``machine_database_url`` is not given.
        self.machine_db = self.home / "machine.db"
        self.storage = self.home / "storage"
        self.url = f"http://127.0.0.1:{port}"
        self.metadata_url = metadata_url or f"sqlite:///{self.airflow_home / 'airflow.db'}"
        self._machine_database_url = machine_database_url
        self.celery = executor == "celery"
        self.broker_url = broker_url or DEFAULT_BROKER_URL
        self.result_backend = result_backend or result_backend_url(self.metadata_url)
        self.worker_concurrency = worker_concurrency if worker_concurrency is not None else self.parallelism
        #: The Celery worker's node name: the stack pings this one, not another worker on the same broker.
        self.worker_node = f"openaddr-{port}@{socket.gethostname()}"
        self.warm = warm_up
        self.components: list[Component] = []
        self.started_at: dt.datetime | None = None
        #: Seconds into ``start()`` at which migrations ended (``migrate``), all components were healthy
        #: (``healthy``), the Execution API was built (``warm_up``, with ``warm_up=True``) and the DAGs were
        #: parsed (``ready``).
        self.timings: dict[str, float] = {}
        self._env: dict[str, str] | None = None
        self._session = requests.Session()
        self._token: str | None = None

    # ----- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----- environment --------------------------------------------------------------------------------------

    @property
    def machine_database_url(self) -> str:
        """The Machine database's SQLAlchemy URL (with its password: never log it)."""
        return self._machine_database_url or f"sqlite:///{self.machine_db}"

    @property
    def component_names(self) -> tuple[str, ...]:
        """The components ``start()`` starts, in order."""
        return (*COMPONENTS, CELERY_WORKER) if self.celery else COMPONENTS

    @property
    def pool_slots(self) -> int:
        """Slots of ``oa_sources``: the worker concurrency, and never fewer than the DAGs' minimum of 3."""
        return max(3, self.worker_concurrency if self.celery else self.parallelism)

    def environment(self) -> dict[str, str]:
        """The environment of every component: this process's, then the stack's settings, then ``env``."""
        if self._env is not None:
            return self._env
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW_CONFIG": str(self.config),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.root / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.root / "plugins"),
                # Named although they are Airflow's defaults: a shell set up for the production shape must not
                # turn the embedded stack into a Celery/PostgreSQL one.
                "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                # 127.0.0.1, not the default's localhost: the api-server binds IPv4 loopback only.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW_CONN_OPENADDR_MACHINE_DB": json.dumps(machine_connection(self.machine_database_url)),
                "AIRFLOW_VAR_OPENADDR_RESULTS": str(self.storage),
                "AIRFLOW_VAR_OPENADDR_SOURCES": str(DEMO),
                "OPENADDR_HOME": str(self.home),
                # The local defaults of plugins/openaddr_airflow/config.py (machine.db, storage/) apply only here.
                "OPENADDR_EMBEDDED": "1",
                "OPENADDR_DATABASE_URL": self.machine_database_url,
                "OPENADDR_RESULTS": str(self.storage),
                "OPENADDR_SCRATCH": str(self.home / "scratch"),
                "OPENADDR_POOL_SLOTS": str(self.pool_slots),
                "OPENADDR_LARGE_POOL_SLOTS": str(LARGE_POOL_SLOTS),
                # The demo data is served on 127.0.0.1; the rest of loopback and private ranges stay refused.
                "OPENADDR_ALLOWED_PRIVATE_NETWORKS": "127.0.0.1/32",
            }
        )
        if self.celery:
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
        env.update(load_secrets(self.airflow_home / "secrets.env"))
        env.update(self.overrides)
        self._env = env
        return env

    # ----- lifecycle ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Prepare the home, start the components and wait until they are healthy and the DAGs are parsed.

        :param timeout: seconds for the components to become healthy, and again for the DAGs to be parsed
        :raises PortInUseError: when the api-server's port is taken
        :raises StackError: when a component exits or is not healthy in time, or a DAG fails to import
        """
        began = time.monotonic()
        check_home_free(self.home)
        check_port_free(self.port, "Airflow api-server")
        for path in (self.airflow_home, self.logs, self.storage, self.home / "scratch"):
            path.mkdir(parents=True, exist_ok=True)
        self.environment()  # generates the secrets before any component needs them
        self.started_at = dt.datetime.now(dt.UTC)
        self.timings = {}
        # Both databases migrate at once; tracked as a component so that an interrupted start stops it too.
        migrate = None
        if not self._metadata_current():
            migrate = self._spawn("db-migrate", ["db", "migrate"], record=False)
            self.components.append(migrate)
        from openaddr.db import make_engine, upgrade

        engine = make_engine(self.machine_database_url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        if migrate is not None:
            if migrate.process.wait() != 0:
                raise StackError(migrate.failure())
            self.components.remove(migrate)
            self._stamp_metadata()
        self.timings["migrate"] = time.monotonic() - began
        log.info("Starting %s (logs in %s)", ", ".join(self.component_names), self.logs)
        arguments = {
            "api-server": ["api-server", "--port", str(self.port)],
            # No log servers: the api-server reads task logs from the shared folder of this one computer,
            # and their fixed ports (8793, 8794) would clash between two stacks on one machine.
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
            CELERY_WORKER: [
                "celery", "worker", "--skip-serve-logs",
                "--concurrency", str(self.worker_concurrency),
                # One worker serves both tiers here; production runs the large queue on its own hosts.
                "--queues", "default,large",
                "--celery-hostname", self.worker_node,
            ],
        }  # fmt: skip
        for name in self.component_names:
            self.components.append(self._spawn(name, arguments[name]))
        self.wait_healthy(timeout)
        self.timings["healthy"] = time.monotonic() - began
        if self.warm:
            self.warm_up(timeout)
            self.timings["warm_up"] = time.monotonic() - began
        self.set_pool(
            POOL, self.pool_slots, "Source processing: the total worker concurrency (machine-ci.md §3.3)"
        )
        self.set_pool(LARGE_POOL, LARGE_POOL_SLOTS, "Large sources (conform.size: large), machine-ci.md §3.3")
        self.wait_for_dags(self.dag_ids, timeout)
        self.timings["ready"] = time.monotonic() - began

    @property
    def _migration_stamp(self) -> Path:
        return self.airflow_home / "migrated.json"

    def _metadata_revision(self) -> str | None:
        """The alembic revision of the metadata database (None: no schema), read with the standard library
        from the default SQLite file, else with SQLAlchemy."""
        if not self.metadata_url.startswith("sqlite:"):
            return _alembic_revision(self.metadata_url)
        path = self.airflow_home / "airflow.db"
        if self.metadata_url != f"sqlite:///{path}":
            return _alembic_revision(self.metadata_url)
        if not path.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
                row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def _metadata_current(self) -> bool:
        """Whether ``airflow db migrate`` already ran for the installed Airflow and left the schema as it is.

        Skipping it saves about 6 s of each restart (mostly importing Airflow); a new Airflow version, a
        missing or changed database, or no stamp means migrating.
        """
        try:
            stamp = json.loads(self._migration_stamp.read_text())
        except (OSError, ValueError):
            return False
        current = self._metadata_stamp()
        return bool(stamp == current and current["revision"])

    def _metadata_stamp(self) -> dict[str, Any]:
        return {
            "airflow": importlib.metadata.version("apache-airflow-core"),
            "revision": self._metadata_revision(),
        }

    def _stamp_metadata(self) -> None:
        self._migration_stamp.write_text(json.dumps(self._metadata_stamp()) + "\n")

    def _spawn(self, name: str, arguments: list[str], *, record: bool = True) -> Component:
        log_path = self.logs / f"{name}.log"
        pid_path = self.airflow_home / f"{name}.pid"
        with log_path.open("ab") as stream:
            stream.write(
                f"\n===== {dt.datetime.now(dt.UTC).isoformat()} airflow {' '.join(arguments)}\n".encode()
            )
            stream.flush()
            process = subprocess.Popen(
                [str(self.airflow), *arguments],
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.airflow_home,
                # A session of its own: Ctrl-C reaches the launcher only, which then stops the components in
                # order; and every process the component starts can be found by its session id.
                start_new_session=True,
            )
        if record:
            pid_path.write_text(f"{process.pid}\n")
        return Component(name, process, log_path, pid_path)

    def check_alive(self) -> None:
        """:raises StackError: when a component has exited"""
        for component in self.components:
            if not component.alive():
                raise StackError(component.failure())

    def health(self) -> dict[str, Any]:
        """The answer of ``/api/v2/monitor/health``."""
        response = self._session.get(f"{self.url}/api/v2/monitor/health", timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def unhealthy(self, health: Mapping[str, Any]) -> list[str]:
        """The components the health answer does not report healthy since this stack started.

        The endpoint answers 200 whatever the state and reports the newest job of each kind, which after a
        restart may be the previous stack's, still within its heartbeat threshold: a component counts only
        once it has heartbeated since :attr:`started_at`.
        """
        waiting = []
        if (health.get("metadatabase") or {}).get("status") != "healthy":
            waiting.append("metadatabase")
        for name, key in HEALTH_KEYS.items():
            info = health.get(key) or {}
            beat = info.get(f"latest_{key}_heartbeat")
            fresh = beat is not None and self.started_at is not None
            if fresh:
                fresh = dt.datetime.fromisoformat(beat) >= self.started_at
            if info.get("status") != "healthy" or not fresh:
                waiting.append(name)
        return waiting

    def worker_ready(self) -> bool:
        """Whether this stack's Celery worker answers a ping through the broker (it then consumes tasks).

        The worker does not heartbeat into the metadata database, so the health endpoint cannot tell; the
        ping names the worker's node, not just any worker on the same broker. Imports Celery (not Airflow).
        """
        from celery import Celery

        app = Celery("openaddr-embedded", broker=self.broker_url)
        try:
            replies = app.control.ping(destination=[self.worker_node], timeout=PING_TIMEOUT)
        except Exception as error:  # the broker refused or is down: not ready, and say why
            log.debug("Pinging %s failed: %s", self.worker_node, error)
            return False
        finally:
            app.close()
        return any(self.worker_node in reply for reply in replies)

    def wait_healthy(self, timeout: float) -> float:
        """Wait until the api-server answers, every other component has heartbeated and, with Celery, the
        worker answers a ping.

        :return: seconds waited
        :raises StackError: when a component exits, or on timeout
        """
        started = time.monotonic()
        waiting = ["api-server"]
        worker_ready = not self.celery
        while time.monotonic() - started < timeout:
            self.check_alive()
            try:
                waiting = self.unhealthy(self.health())
            except requests.RequestException:
                waiting = ["api-server"]
            if not worker_ready:
                worker_ready = self.worker_ready()
                if not worker_ready:
                    waiting.append(CELERY_WORKER)
            if not waiting:
                log.info("Healthy after %.1f s", time.monotonic() - started)
                return time.monotonic() - started
            time.sleep(0.5)
        raise StackError(f"not healthy after {timeout:.0f} s: {', '.join(waiting)} (logs in {self.logs})")

    def warm_up(self, timeout: float = 180.0) -> float:
        """Make the api-server build its Execution API now rather than on the first task's first call.

        The Execution API is a Cadwyn app, which generates its versioned routers on the first request it
        receives, synchronously on the api-server's event loop: ~10 s of CPU on a busy 2-core machine, during
        which the whole api-server (REST API included) answers nothing. A task's supervisor gives up on that
        first call after ``[workers] execution_api_timeout`` (5 s) and retries; the abandoned call then ends
        with 400. Any request below ``/execution/`` triggers the build: its health endpoint, unauthenticated.

        :return: seconds the request took
        :raises StackError: when the api-server does not answer in time
        """
        started = time.monotonic()
        try:
            response = self._session.get(f"{self.url}/execution/health", timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as error:
            raise StackError(f"the Execution API did not answer: {error}") from error
        took = time.monotonic() - started
        log.info("Execution API ready after %.1f s", took)
        return took

    def stop(self, timeout: float = TERM_TIMEOUT) -> None:
        """Stop every component: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL whatever is left of its
        session and any process carrying this stack's ``AIRFLOW_HOME`` (task subprocesses run in sessions of
        their own). The api-server goes last, once the scheduler and the Celery worker have exited (a Celery
        worker's SIGTERM is a warm shutdown: it finishes its running tasks, which report to the api-server).
        Idle LocalExecutor workers the scheduler waits for are killed after :data:`IDLE_WORKER_GRACE` seconds
        (:func:`_wait_exit`); a running task gets until ``timeout``, then is killed too, and is retried by the
        next start. Safe to call twice, or after a failed start."""
        previous = _ignore_signals()
        try:
            running = [component for component in self.components if component.alive()]
            if running:
                log.info("Stopping %s", ", ".join(component.name for component in running))
            started = time.monotonic()
            # The api-server goes last: tasks ending while the scheduler and the Celery worker stop (a worker
            # finishes its running tasks on SIGTERM) still report through it.
            first = [component for component in running if component.name != "api-server"]
            _signal(first, signal.SIGTERM)
            before_api = [component for component in first if component.name in ("scheduler", CELERY_WORKER)]
            waiting = _wait_exit(first, timeout, started, until=before_api)
            api = [component for component in running if component.name == "api-server"]
            _signal(api, signal.SIGTERM)
            for component in _wait_exit([*waiting, *api], time.monotonic() - started + timeout, started):
                log.warning("airflow %s ignored SIGTERM for %.0f s: killing it", component.name, timeout)
            for component in self.components:
                members = session_members(component.process.pid)
                if members:
                    log.warning("Killing %d leftover processes of airflow %s", len(members), component.name)
                    _kill(members, signal.SIGKILL)
                component.process.wait()
                component.pid_path.unlink(missing_ok=True)
            if self.components:
                strays = processes_of(self.airflow_home)
                if strays:
                    log.warning("Killing %d leftover processes of %s", len(strays), self.airflow_home)
                    _kill(strays, signal.SIGKILL)
            self.components = []
            self._session.close()
        finally:
            _restore_signals(previous)

    def memory(self) -> dict[str, int]:
        """PSS in bytes of each running component with every process of its session (a Celery worker's pool,
        the LocalExecutor's workers, running task supervisors); Linux only, else zeros."""
        return {
            component.name: sum(pss(pid) for pid in session_members(component.process.pid))
            for component in self.components
            if component.alive()
        }

    # ----- REST API -----------------------------------------------------------------------------------------

    def password(self) -> str:
        """The generated password of ``admin`` (SimpleAuthManager writes it when the api-server starts).

        :raises StackError: when the password file does not name the user
        """
        path = self.airflow_home / PASSWORDS_FILE
        try:
            return str(json.loads(path.read_text())[ADMIN])
        except (OSError, ValueError, KeyError) as error:
            raise StackError(f"no password for {ADMIN} in {path}: {error}") from error

    def token(self) -> str:
        """A JWT for the REST API (``POST /auth/token`` as ``admin``), cached until the API refuses it."""
        if self._token is None:
            response = self._session.post(
                f"{self.url}/auth/token",
                json={"username": ADMIN, "password": self.password()},
                timeout=REQUEST_TIMEOUT,
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the REST API (``path`` below ``/api/v2``) with the token; a refused token is renewed once.

        :raises requests.HTTPError: on an error status
        """
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            headers = {**extra, "Authorization": f"Bearer {self.token()}"}
            response = self._session.request(method, f"{self.url}/api/v2{path}", headers=headers, **kwargs)
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            break
        response.raise_for_status()
        return response

    def set_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create or resize a pool."""
        entity = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        action = {"action": "create", "entities": [entity], "action_on_existence": "overwrite"}
        result = self.request("PATCH", "/pools", json={"actions": [action]}).json()
        errors = (result.get("create") or {}).get("errors")
        if errors:
            raise StackError(f"could not set pool {name}: {errors}")
        log.info("Pool %s: %d slots", name, slots)

    def wait_for_dags(self, dag_ids: tuple[str, ...], timeout: float) -> None:
        """Wait until the dag-processor has parsed each DAG.

        :raises StackError: when a DAG file fails to import, or on timeout
        """
        started = time.monotonic()
        missing = list(dag_ids)
        while time.monotonic() - started < timeout:
            self.check_alive()
            missing = [dag_id for dag_id in missing if not self._dag_exists(dag_id)]
            if not missing:
                log.info("DAGs parsed: %s", ", ".join(dag_ids))
                return
            errors = self.request("GET", "/importErrors").json().get("import_errors") or []
            if errors:
                text = "\n".join(f"{error.get('filename')}: {error.get('stack_trace')}" for error in errors)
                raise StackError(f"DAG files failed to import:\n{text}")
            time.sleep(1)
        raise StackError(f"DAGs not parsed after {timeout:.0f} s: {', '.join(missing)}")

    def _dag_exists(self, dag_id: str) -> bool:
        try:
            self.request("GET", f"/dags/{dag_id}")
        except requests.HTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return False
            raise
        return True

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (new DAGs start paused)."""
        self.request(
            "PATCH", f"/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": False}
        )

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Create a DAG run now; return its run id.

        :param conf: the run's conf
        :param run_id: the run id to use (default: Airflow's ``manual__<time>``); a taken id fails with 409
        """
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        created = self.request("POST", f"/dags/{dag_id}/dagRuns", json=body).json()
        log.info("Triggered %s run %s", dag_id, created["dag_run_id"])
        return str(created["dag_run_id"])

    def run_ids(self, dag_id: str) -> list[str]:
        """The ids of a DAG's runs, oldest first."""
        runs = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after"}).json()
        return [str(run["dag_run_id"]) for run in runs["dag_runs"]]

    def state(self, dag_id: str, run_id: str) -> str:
        """A DAG run's state (``queued``, ``running``, ``success``, ``failed``)."""
        return str(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"])

    def wait(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until a DAG run ends; return its final state (``success`` or ``failed``).

        :raises TimeoutError: when it has not ended after ``timeout`` seconds
        :raises StackError: when a component exits meanwhile
        """
        started = time.monotonic()
        while True:
            self.check_alive()
            state = self.state(dag_id, run_id)
            if state in FINAL_STATES:
                return state
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(1)


def _signal(components: list[Component], sig: signal.Signals) -> None:
    _kill([component.process.pid for component in components if component.alive()], sig)


def _wait_exit(
    components: list[Component], timeout: float, started: float, until: list[Component] | None = None
) -> list[Component]:
    """Wait until the components (or those of ``until`` among them) have exited; return those still running.

    The scheduler ends the LocalExecutor by sending each worker a stop message and joining it without a time
    limit, and now and then an idle worker never exits: the scheduler hangs (the unbounded join of
    apache/airflow#67870; its fix, #67881, is not in 3.3.2). A worker still idle :data:`IDLE_WORKER_GRACE`
    seconds into the stop has nothing to finish: it is killed, which ends the join. A second SIGTERM does not
    help: it interrupts the join, and multiprocessing's exit handler then joins the same worker again.

    :param timeout: seconds after ``started`` (a ``time.monotonic()`` value) to give up
    """
    waiting = list(components)
    required = components if until is None else until
    idle_killed = False
    while any(component in waiting for component in required) and time.monotonic() - started < timeout:
        time.sleep(0.1)
        for component in [component for component in waiting if not component.alive()]:
            log.info("airflow %s stopped after %.1f s", component.name, time.monotonic() - started)
            waiting.remove(component)
        if not idle_killed and time.monotonic() - started > IDLE_WORKER_GRACE:
            idle_killed = True
            for component in waiting:
                if component.name == "scheduler":
                    _kill_idle_workers(component)
    return waiting


def _kill_idle_workers(scheduler: Component) -> None:
    idle = [
        pid
        for pid in session_members(scheduler.process.pid)
        if pid != scheduler.process.pid and b"LocalExecutor: <idle>" in _cmdline(pid)
    ]
    if idle:
        log.info("Killing %d idle LocalExecutor workers the scheduler is still waiting for", len(idle))
        _kill(idle, signal.SIGKILL)


def _ignore_signals() -> dict[int, Any]:
    """Ignore SIGINT and SIGTERM while stopping (a second Ctrl-C must not leave orphans); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it format
        log.debug("demo server: %s", format % args)


class DemoServer:
    """A static HTTP server on 127.0.0.1 serving a folder (the demo sources' data), in a thread.

    :param folder: what to serve
    :param port: the port (``0``: any free one)
    :raises PortInUseError: when the port is taken
    """

    def __init__(self, folder: Path, port: int) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as error:
            raise PortInUseError(
                f"port {port} (demo data server) is already in use on 127.0.0.1: stop what runs there or "
                f"choose another --demo-port ({error.strerror})"
            ) from error
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-server", daemon=True)

    def __enter__(self) -> DemoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def demo_sources(home: Path, demo_port: int, demo: Path = DEMO) -> Path:
    """The sources folder of the demo set: ``demo/`` itself on the default port, else a copy under ``home``
    whose data URLs name ``demo_port``."""
    if demo_port == DEFAULT_DEMO_PORT:
        return demo
    copy = home / "demo-sources"
    shutil.rmtree(copy, ignore_errors=True)
    for path in sorted((demo / "sources").rglob("*.json")):
        target = copy / path.relative_to(demo)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text().replace(DEMO_URL, f"http://127.0.0.1:{demo_port}/"))
    return copy


def set_report(database_url: str, dag_run_id: str) -> dict[str, Any] | None:
    """The set a batch DAG run recorded and its runs, from the Machine database, or None when it made none.

    :return: ``{"set": {...}, "runs": [{...}, ...]}`` (rows as dicts of their columns)
    """
    import sqlalchemy as sa

    from openaddr.db import make_engine
    from openaddr.db.runs import set_runs
    from openaddr.db.schema import sets

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(sets).where(sets.c.airflow_dag_run_id == dag_run_id)).first()
        if row is None:
            return None
        record = dict(row._mapping)
        return {"set": record, "runs": set_runs(engine, record["id"])}
    finally:
        engine.dispose()


def format_report(report: dict[str, Any] | None, storage: Path) -> str:
    """A table of the set's runs and where their outputs are (a reused run's are its original's)."""
    if report is None:
        return "The run recorded no set in the Machine database.\n"
    record = report["set"]
    commit = record["commit_sha"] or "a local folder"
    ended = (
        f"completed {record['datetime_end']:%Y-%m-%d %H:%M:%S} UTC"
        if record["datetime_end"]
        else "not completed"
    )
    lines = [
        f"Set {record['id']} ({record['owner']}/{record['repository']} at {commit}), {ended}:",
        f"  {'run':>4}  {'source':<30} {'layer/name':<22} {'status':<8} {'addresses':>9}  outputs",
    ]
    for run in report["runs"]:
        status = {True: "success", False: "failed", None: "pending"}[run["status"]]
        label = f"{run['source_layer']}/{run['layer_name']}"
        count = run["address_count"] if run["address_count"] is not None else "-"
        outputs = f"{storage / 'runs' / str(run['copy_of'] or run['id'])}/"
        if run["copy_of"]:
            outputs += f" (reuses run {run['copy_of']})"
        lines.append(
            f"  {run['id']:>4}  {run['source_path']:<30} {label:<22} {status:<8} {count:>9}  {outputs}"
        )
        if run["status"] is False and run["message"]:
            lines.append(f"        {run['message']}")
    return "\n".join(lines) + "\n"


def stop_home(home: Path, timeout: float = 60.0) -> int:
    """Stop the stack of ``home`` from another process (``make stop``): SIGTERM to its launcher, which stops
    its components; what is left without a launcher (the sessions of the components named by the PID files,
    processes carrying the stack's ``AIRFLOW_HOME``) is terminated, then killed.

    :param timeout: seconds to wait for the launcher
    :return: the number of processes signalled
    """
    airflow_home = Path(home).resolve() / "airflow"
    signalled = 0
    launcher = _read_pid(airflow_home / "launcher.pid")
    if launcher is not None and _is_launcher(launcher):
        log.info("Stopping the launcher (pid %d)", launcher)
        os.kill(launcher, signal.SIGTERM)
        signalled += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_launcher(launcher):
            time.sleep(0.5)
    left = _leftovers(airflow_home)
    if left:
        log.info("Terminating %d processes of %s", len(left), airflow_home)
        _kill(left, signal.SIGTERM)
        signalled += len(left)
        deadline = time.monotonic() + TERM_TIMEOUT / 2
        while time.monotonic() < deadline and _leftovers(airflow_home):
            time.sleep(0.5)
        _kill(_leftovers(airflow_home), signal.SIGKILL)
    for pid_path in airflow_home.glob("*.pid"):
        pid_path.unlink(missing_ok=True)
    return signalled


def _leftovers(airflow_home: Path) -> list[int]:
    """Processes of a stack whose launcher is gone: the sessions its PID files name (when an Airflow
    process is still in them: a recycled PID names someone else's) and the processes carrying its
    ``AIRFLOW_HOME``."""
    found = set(processes_of(airflow_home))
    for pid_path in airflow_home.glob("*.pid"):
        sid = _read_pid(pid_path)
        if sid is None or pid_path.name == "launcher.pid":
            continue
        members = session_members(sid)
        if any(b"airflow" in _cmdline(pid) for pid in members):
            found.update(members)
    return sorted(found - _ancestors())


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_launcher(pid: int) -> bool:
    try:
        return b"openaddr.embedded" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s %(levelname)8s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m openaddr.embedded``."""
    parser = argparse.ArgumentParser(
        prog="python -m openaddr.embedded",
        description="Run the Machine on its embedded default (Airflow with SQLite and the LocalExecutor) and "
        "process the bundled demo sources once.",
    )
    parser.add_argument(
        "--home", default=str(ROOT / "var"), help="folder of everything it writes (%(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Airflow UI and REST API (%(default)s)"
    )
    parser.add_argument(
        "--demo-port", type=int, default=DEFAULT_DEMO_PORT, help="the demo data server (%(default)s)"
    )
    parser.add_argument("--parallelism", type=int, help="task slots (default: airflow.cfg)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds the demo run may take (%(default)s)"
    )
    parser.add_argument("--once", action="store_true", help="stop after the demo set instead of running on")
    parser.add_argument("--stop", action="store_true", help="stop the stack running from --home, then exit")
    return parser


def _say(text: str) -> None:
    """What the command reports to its user, on stdout (progress goes to the log on stderr)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C, through the ``with`` blocks that stop the stack.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def check_home_free(home: Path) -> None:
    """Fail clearly when a stack still runs from ``home``: its launcher, or processes a killed launcher left.

    :raises StackError: naming what runs and how to stop it
    """
    airflow_home = Path(home).resolve() / "airflow"
    launcher = _read_pid(airflow_home / "launcher.pid")
    if launcher is not None and launcher != os.getpid() and _is_launcher(launcher):
        raise StackError(
            f"a stack already runs from {home} (launcher pid {launcher}): stop it with Ctrl-C there or "
            f"`make stop`"
        )
    leftovers = _leftovers(airflow_home)
    if leftovers:
        raise StackError(
            f"processes of an earlier stack in {home} are still running ({', '.join(map(str, leftovers))}): "
            f"stop them with `make stop` (python -m openaddr.embedded --stop --home {home})"
        )


def run(args: argparse.Namespace) -> int:
    """Start the stack, run the demo set, report; then keep running unless ``args.once``.

    :return: the exit status (0: the demo set succeeded)
    """
    started = time.monotonic()
    home = Path(args.home).resolve()
    check_home_free(home)
    check_port_free(args.port, "Airflow api-server")
    pid_path = home / "airflow" / "launcher.pid"
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(f"{os.getpid()}\n")
    try:
        sources = demo_sources(home, args.demo_port)
        env = {"AIRFLOW_VAR_OPENADDR_SOURCES": str(sources)}
        with (
            DemoServer(DEMO / "data", args.demo_port),
            Stack(home, args.port, env=env, parallelism=args.parallelism) as stack,
        ):
            healthy = time.monotonic() - started
            login = f"{ADMIN} / {stack.password()}"
            _say(f"Airflow is up after {healthy:.0f} s: {stack.url}/ (login {login})")
            run_id = start_demo_set(stack)
            state = stack.wait("openaddr_batch", run_id, args.timeout)
            report = set_report(stack.machine_database_url, run_id)
            ok = state == "success" and report is not None and all(r["status"] for r in report["runs"])
            _say(
                f"\nDemo batch run {run_id}: {state} after {time.monotonic() - started:.0f} s from start.\n"
                + format_report(report, stack.storage)
                + f"\nAirflow UI  {stack.url}/  (login {login})\n"
                f"REST API    {stack.url}/api/v2/  (token: POST {stack.url}/auth/token)\n"
                f"Machine DB  {stack.machine_db}\n"
                f"Storage     {stack.storage}/\n"
                f"Logs        {stack.logs}/<component>.log\n"
            )
            if args.once:
                return 0 if ok else 1
            _say("Running; Ctrl-C stops everything.")
            while True:
                stack.check_alive()
                time.sleep(2)
    finally:
        if _read_pid(pid_path) == os.getpid():
            pid_path.unlink(missing_ok=True)


def start_demo_set(stack: Stack, wait: float = 15.0) -> str:
    """Unpause the DAGs and return the batch run that processes the demo set.

    Unpausing the ``@daily`` batch makes the scheduler create the run of the latest interval at once, even with
    ``catchup=False``; that run is the demo set. A second, manual run would only copy its results (the batch reuses
    runs of the last 6 days), so one is triggered only when the scheduler has created none within ``wait``.
    """
    for dag_id in DAG_IDS:
        stack.unpause(dag_id)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        runs = stack.run_ids("openaddr_batch")
        if runs:
            log.info("The scheduler started %s run %s", "openaddr_batch", runs[0])
            return runs[0]
        time.sleep(1)
    return stack.trigger("openaddr_batch")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m openaddr.embedded``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up lines say nothing to a user
    if args.stop:
        stop_home(Path(args.home))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    # Left alone when ignored (nohup), as Python leaves SIGINT alone in a background job.
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        return run(args)
    except StackError as error:
        log.error("%s", error)
        return 1
    except TimeoutError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM) is how the stack is meant to end: a clean stop is a success, not an error.
        log.info("Stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
