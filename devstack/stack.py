"""The stack: Airflow as separate processes under supervisord, driven through the REST API.

Everything it writes is under its home (``var/`` for ``make run``):

====================  ====================================================================================
``airflow/``          ``AIRFLOW_HOME``: SQLite metadata database ``airflow.db``, ``secrets.env`` (fernet key,
                      JWT secret, API secret key; generated once, mode 600, the same for every component),
                      ``logs/<program>.log``, supervisord's configuration, socket and PID file,
                      SimpleAuthManager's password file (generated once, kept across starts)
``machine.db``        the Machine database (SQLite, migrated on start)
``storage/``          the run storage (``runs/<run id>/…``, ``sets/<set id>/…``)
``scratch/``          the tasks' work folders
====================  ====================================================================================

Airflow reads the reviewed ``airflow.cfg`` of the repository (``AIRFLOW_CONFIG``; Airflow never rewrites an
existing file); everything that is a path, a port or a secret is an ``AIRFLOW__…`` variable in the environment
the stack builds, which supervisord and so every program inherits (with ``OPENADDR_EMBEDDED=1``, which tells
the plugins to use the local defaults). Used by benchmarks and tests::

    with Stack(Path("var/bench"), port=8090, env={"AIRFLOW_VAR_OPENADDR_SOURCES": "/data/sources"}) as stack:
        stack.unpause("openaddr_batch")
        run_id = stack.trigger("openaddr_batch")
        state = stack.wait("openaddr_batch", run_id, timeout=600)

``Stack`` also runs the production shape on one computer (airflow.md, "Production shape"): PostgreSQL for
Airflow's metadata and for the Machine database, the CeleryExecutor with Redis as the broker, and one
``airflow celery worker`` as a fifth component (or several, ``celery_workers=2``: ``celery-worker``,
``celery-worker-2``, each with a node name of its own, as two hosts of the worker pool)::

    with Stack(home, port, executor="celery",
               metadata_url="postgresql+psycopg2://postgres@127.0.0.1:5432/airflow",
               machine_database_url="postgresql+psycopg2://postgres@127.0.0.1:5432/machine",
               broker_url="redis://127.0.0.1:6379/3", worker_concurrency=4) as stack:
        ...
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from devstack import ROOT, StackError, control, procs, supervise
from devstack.airflow_api import ADMIN, AirflowApi, unhealthy
from devstack.demo import DEMO
from devstack.supervise import Program

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
#: Fallback when ``airflow.cfg`` does not set ``[core] parallelism``.
DEFAULT_PARALLELISM = 4
#: Started in this order; the api-server is stopped once the others are gone (tasks report to it).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The fifth component of the CeleryExecutor shape (``airflow celery worker``); the health endpoint does not
#: report it, so the stack pings it through the broker. With ``celery_workers=n`` the others are
#: ``celery-worker-2`` … ``celery-worker-<n>`` (:func:`celery_worker_name`).
CELERY_WORKER = "celery-worker"
#: ``executor=`` of :class:`Stack` → Airflow's executor.
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: Seconds a worker has to answer one ping.
PING_TIMEOUT = 1.0
#: Where the tasks find the Machine database: set by the stack from ``machine_database_url`` only, so that the
#: database it migrates is the one the tasks use.
MACHINE_DB_KEYS = ("AIRFLOW_CONN_OPENADDR_MACHINE_DB", "OPENADDR_DATABASE_URL")
DAG_IDS = ("openaddr_batch", "openaddr_ci", "openaddr_collect")
POOL = "oa_sources"
#: The large tier's pool (``conform.size: large``); one slot here, where one machine serves both tiers.
LARGE_POOL = "oa_large"
LARGE_POOL_SLOTS = 1
#: The keys of ``secrets.env``: the same values must reach every component, or tasks fail to authenticate.
SECRET_KEYS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
#: Seconds each component gets to stop after SIGTERM before supervisord kills its process group.
TERM_TIMEOUT = 30.0
#: Seconds into a stop after which idle LocalExecutor workers are killed (apache/airflow#67870).
IDLE_WORKER_GRACE = 5.0


def celery_worker_name(number: int) -> str:
    """The program name of the ``number``-th Celery worker (from 1): ``celery-worker``, ``celery-worker-2``, …"""
    if number < 1:
        raise ValueError(f"worker numbers start at 1, not {number}")
    return CELERY_WORKER if number == 1 else f"{CELERY_WORKER}-{number}"


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
        text = "# Generated by devstack; shared by every Airflow component of this home.\n"
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


class Stack(AirflowApi):
    """Airflow as separate processes under supervisord, driven through the REST API: the embedded shape
    (SQLite, LocalExecutor: api-server, scheduler, dag-processor, triggerer) by default, the production shape
    (PostgreSQL, CeleryExecutor with Redis, plus an ``airflow celery worker``) with ``executor="celery"``.

    ``start()`` prepares the home (secrets, Machine database, ``airflow db migrate``), starts supervisord with
    the components (and ``programs``), waits until the health endpoint reports each of them (and, with Celery,
    until the worker answers a ping through the broker), creates the pools and waits until the DAGs of
    ``dag_ids`` are parsed. ``stop()`` (also on leaving the ``with`` block) has supervisord stop everything in
    order (:func:`devstack.supervise.shutdown`), then kills any task subprocess left.

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
    :param programs: more processes for supervisord, started before Airflow (e.g. the demo data server)
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
    :param worker_concurrency: task processes of each Celery worker (default ``parallelism``); with Celery
        also the slots of ``oa_sources`` (times ``celery_workers``)
    :param celery_workers: how many ``airflow celery worker`` programs (each serving every queue with
        ``worker_concurrency`` slots and a node name of its own, ``openaddr-<port>[-<n>]@<host>``), as several
        hosts of the worker pool would; the fault tests kill one and see the other take its task
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
        programs: Sequence[Program] = (),
        root: Path = ROOT,
        airflow: Path | None = None,
        dag_ids: tuple[str, ...] = DAG_IDS,
        executor: str = "local",
        metadata_url: str | None = None,
        machine_database_url: str | None = None,
        broker_url: str | None = None,
        result_backend: str | None = None,
        worker_concurrency: int | None = None,
        celery_workers: int = 1,
        warm_up: bool = False,
    ) -> None:
        if executor not in EXECUTORS:
            raise StackError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
        if executor == "celery" and metadata_url is None:
            raise StackError("the CeleryExecutor needs a PostgreSQL metadata database: pass metadata_url")
        if celery_workers < 1 or (celery_workers > 1 and executor != "celery"):
            raise StackError(
                f"celery_workers={celery_workers}: at least 1, and more only with executor='celery'"
            )
        named = [key for key in MACHINE_DB_KEYS if key in (env or {})]
        if named:
            raise StackError(
                f"env names {', '.join(named)}: pass machine_database_url instead, so that the database the "
                f"stack migrates is the one its tasks use"
            )
        self.home = Path(home).resolve()
        super().__init__(f"http://127.0.0.1:{port}", self.home / "airflow")
        self.port = port
        self.overrides = dict(env or {})
        self.extra_programs = list(programs)
        self.root = Path(root).resolve()
        self.config = self.root / "airflow.cfg"
        self.parallelism = parallelism if parallelism is not None else read_parallelism(self.config)
        # Not resolved: the venv's bin/python links to the system interpreter, whose bin has no airflow.
        self.airflow = airflow or Path(sys.executable).parent / "airflow"
        self.dag_ids = dag_ids
        self.executor = executor
        self.logs = self.airflow_home / "logs"
        #: The Machine database's file when ``machine_database_url`` is not given.
        self.machine_db = self.home / "machine.db"
        self.storage = self.home / "storage"
        self.metadata_url = metadata_url or f"sqlite:///{self.airflow_home / 'airflow.db'}"
        self._machine_database_url = machine_database_url
        self.celery = executor == "celery"
        self.broker_url = broker_url or DEFAULT_BROKER_URL
        self.result_backend = result_backend or result_backend_url(self.metadata_url)
        self.worker_concurrency = worker_concurrency if worker_concurrency is not None else self.parallelism
        self.celery_workers = celery_workers
        #: The Celery workers' node names by program name (``-H``): the stack pings these, not another worker on
        #: the same broker.
        host = socket.gethostname()
        self.worker_nodes = {
            celery_worker_name(number): f"openaddr-{port}{'' if number == 1 else f'-{number}'}@{host}"
            for number in range(1, celery_workers + 1)
        }
        #: The first worker's node name.
        self.worker_node = self.worker_nodes[CELERY_WORKER]
        self.warm = warm_up
        #: supervisord while the stack runs (its PID is the session id of every process of the stack).
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.started_at: dt.datetime | None = None
        #: Seconds into ``start()`` at which migrations ended (``migrate``), all components were healthy
        #: (``healthy``), the Execution API was built (``warm_up``, with ``warm_up=True``) and the DAGs were
        #: parsed (``ready``).
        self.timings: dict[str, float] = {}
        self._env: dict[str, str] | None = None

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
        """The Airflow components ``start()`` starts, in order."""
        return (*COMPONENTS, *self.worker_nodes) if self.celery else COMPONENTS

    @property
    def pool_slots(self) -> int:
        """Slots of ``oa_sources``: the workers' concurrency, and never fewer than the DAGs' minimum of 3."""
        return max(3, self.worker_concurrency * self.celery_workers if self.celery else self.parallelism)

    def environment(self) -> dict[str, str]:
        """The environment of every program: this process's, then the stack's settings, then ``env``."""
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
                # The plugins use their local defaults (var/machine.db, var/storage) only in this mode.
                "OPENADDR_EMBEDDED": "1",
                "OPENADDR_HOME": str(self.home),
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

    def programs(self) -> list[Program]:
        """What supervisord runs: the extra programs, then the Airflow components."""
        airflow = str(self.airflow)
        arguments: dict[str, list[str]] = {
            "api-server": ["api-server", "--port", str(self.port)],
            # No log servers: the api-server reads task logs from the shared folder of this one computer,
            # and their fixed ports (8793, 8794) would clash between two stacks on one machine.
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }
        for name, node in self.worker_nodes.items():
            arguments[name] = [
                "celery", "worker", "--skip-serve-logs",
                "--concurrency", str(self.worker_concurrency),
                # Every worker serves every queue here; production gives ci, batch and large workers of their own.
                "--queues", "ci,batch,large",
                "--celery-hostname", node,
            ]  # fmt: skip
        return [
            *self.extra_programs,
            *(
                Program(
                    name,
                    [airflow, *arguments[name]],
                    kind="api" if name == "api-server" else "worker",
                    stop_timeout=TERM_TIMEOUT,
                )
                for name in self.component_names
            ),
        ]

    # ----- lifecycle ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        """Prepare the home, start the programs and wait until they are healthy and the DAGs are parsed.

        :param timeout: seconds for the components to become healthy, and again for the DAGs to be parsed
        :raises PortInUseError: when the api-server's port is taken
        :raises StackError: when a component exits or is not healthy in time, or a DAG fails to import
        """
        began = time.monotonic()
        control.check_home_free(self.home)
        procs.check_port_free(self.port, "Airflow api-server")
        for path in (self.airflow_home, self.logs, self.storage, self.home / "scratch"):
            path.mkdir(parents=True, exist_ok=True)
        self.environment()  # generates the secrets before any component needs them
        self.started_at = dt.datetime.now(dt.UTC)
        self.timings = {}
        self._migrate()
        self.timings["migrate"] = time.monotonic() - began
        log.info("Starting %s (logs in %s)", ", ".join(p.name for p in self.programs()), self.logs)
        self.supervisord = supervise.start(self.airflow_home, self.logs, self.programs(), self.environment())
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

    def _migrate(self) -> None:
        """Migrate Airflow's metadata database (``airflow db migrate``, skipped when the stamp says it is
        current) and the Machine database, at once."""
        migrate = None
        if not self._metadata_current():
            log_path = self.logs / "db-migrate.log"
            with log_path.open("ab") as output:
                migrate = subprocess.Popen(
                    [str(self.airflow), "db", "migrate"],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.environment(),
                    cwd=self.airflow_home,
                    start_new_session=True,
                )
        try:
            from openaddr.db import make_engine, upgrade

            engine = make_engine(self.machine_database_url)
            try:
                upgrade(engine)
            finally:
                engine.dispose()
            if migrate is not None:
                if migrate.wait() != 0:
                    raise StackError(
                        f"airflow db migrate exited with status {migrate.returncode}; end of {log_path}:\n"
                        f"{procs.tail(log_path)}"
                    )
                self._stamp_metadata()
        finally:
            if migrate is not None and migrate.poll() is None:  # interrupted: stop it with its children
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(migrate.pid, signal.SIGKILL)
                migrate.wait()

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

    def check_alive(self) -> None:
        """:raises StackError: when supervisord or one of its programs has exited"""
        if self.supervisord is None:
            raise StackError("the stack is not running")
        if self.supervisord.poll() is not None:
            raise StackError(
                f"supervisord exited with status {self.supervisord.returncode}; end of "
                f"{self.logs / 'supervisord.log'}:\n{procs.tail(self.logs / 'supervisord.log')}"
            )
        supervise.check_running(self.airflow_home)

    def pids(self) -> dict[str, int]:
        """``name → pid`` of each running program (empty when the stack does not run)."""
        if self.supervisord is None or self.supervisord.poll() is not None:
            return {}
        return supervise.pids(self.airflow_home)

    def workers_ready(self, names: Sequence[str] | None = None) -> list[str]:
        """The Celery workers (program names; default all of them) that answer a ping through the broker (they
        then consume tasks).

        The workers do not heartbeat into the metadata database, so the health endpoint cannot tell; the ping
        names the workers' nodes, not just any worker on the same broker. Imports Celery (not Airflow).
        """
        from celery import Celery

        wanted = {name: self.worker_nodes[name] for name in (names or self.worker_nodes)}
        app = Celery("openaddr-devstack", broker=self.broker_url)
        try:
            replies = app.control.ping(destination=list(wanted.values()), timeout=PING_TIMEOUT)
        except Exception as error:  # the broker refused or is down: not ready, and say why
            log.debug("Pinging %s failed: %s", ", ".join(wanted.values()), error)
            return []
        finally:
            app.close()
        return [name for name, node in wanted.items() if any(node in reply for reply in replies)]

    def worker_ready(self) -> bool:
        """Whether every Celery worker of this stack answers a ping through the broker (:meth:`workers_ready`)."""
        return len(self.workers_ready()) == len(self.worker_nodes)

    def start_program(self, name: str, timeout: float = 120.0) -> int:
        """Start a program of the running stack that has exited or was stopped (e.g. a Celery worker a test
        killed) and wait until it runs (a worker: until it answers a ping); return its PID.

        :raises StackError: when the stack does not run, the name is unknown or it does not come up in time
        """
        if self.supervisord is None:
            raise StackError("the stack is not running")
        program = next((p for p in self.programs() if p.name == name), None)
        if program is None:
            raise StackError(f"no program {name!r} in this stack")
        supervise.connect(self.airflow_home).supervisor.startProcess(program.rpc_name, True)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if name not in self.worker_nodes or self.workers_ready([name]):
                return self.pids()[name]
            time.sleep(0.5)
        raise StackError(f"{name} did not answer a ping within {timeout:.0f} s (logs in {self.logs})")

    def unhealthy(self, health: Mapping[str, Any]) -> list[str]:
        """The components the health answer does not report healthy since this stack started."""
        return unhealthy(health, self.started_at)

    def wait_healthy(self, timeout: float) -> float:
        """Wait until the api-server answers, every other component has heartbeated and, with Celery, the
        worker answers a ping. supervisord has no health checks of its own (its ``startsecs`` only asks that a
        process stays up; a health-check command waits for Supervisor/supervisor#584): this is what it leaves
        to us.

        :return: seconds waited
        :raises StackError: when a program exits, or on timeout
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
                ready = self.workers_ready()
                worker_ready = len(ready) == len(self.worker_nodes)
                waiting += [name for name in self.worker_nodes if name not in ready]
            if not waiting:
                log.info("Healthy after %.1f s", time.monotonic() - started)
                return time.monotonic() - started
            time.sleep(0.5)
        raise StackError(f"not healthy after {timeout:.0f} s: {', '.join(waiting)} (logs in {self.logs})")

    def stop(self, timeout: float = TERM_TIMEOUT) -> None:
        """Stop every program: supervisord stops the components that run tasks (SIGTERM, and SIGKILL of the
        process group after ``timeout``), then the api-server, then the extra programs, and exits; idle
        LocalExecutor workers the scheduler waits for are killed after :data:`IDLE_WORKER_GRACE` seconds;
        then whatever is left of supervisord's session and any process carrying this stack's
        ``AIRFLOW_HOME`` (task subprocesses run in sessions of their own) is killed. A running task is retried
        by the next start. Safe to call twice, or after a failed start."""
        previous = _ignore_signals()
        try:
            process, self.supervisord = self.supervisord, None
            if process is not None:
                log.info("Stopping the stack (supervisord pid %d)", process.pid)
                # Three stop phases (workers, api-server, extras), each bounded by its stop timeout.
                supervise.shutdown(self.airflow_home, process.pid, 3 * timeout + 10, IDLE_WORKER_GRACE)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
                strays = procs.processes_of(self.airflow_home)
                if strays:
                    log.warning("Killing %d leftover processes of %s", len(strays), self.airflow_home)
                    procs.kill(strays, signal.SIGKILL)
            self.close()
        finally:
            _restore_signals(previous)

    def memory(self) -> dict[str, int]:
        """PSS in bytes of each running program with every process below it (a Celery worker's pool, the
        LocalExecutor's workers, running task supervisors); Linux only, else zeros."""
        return {
            name: sum(procs.pss(pid) for pid in procs.descendants(pid)) for name, pid in self.pids().items()
        }


def _ignore_signals() -> dict[int, Any]:
    """Ignore SIGINT and SIGTERM while stopping (a second Ctrl-C must not leave orphans); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
