"""Shared fixtures: where the read-only reference material lives, and Airflow's test environment.

Airflow reads its configuration when it is first imported, so the environment is set here, at import time, before
any test module imports it: a throwaway ``AIRFLOW_HOME`` with a SQLite metadata database, no examples, our
``dags/`` and ``plugins/``. The committed fake connections and variables of ``docker/dev_*.json`` become
``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` variables (style guide point 11), so no test needs them in a database.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="openaddr-test-airflow-"))


def _dags_folder() -> Path:
    """The DAG bundle of the test session: the project's DAG files plus the listener tests' DAGs
    (``dag.test()`` only runs DAGs of a bundle)."""
    folder = AIRFLOW_HOME / "dags"
    folder.mkdir()
    for path in [*sorted((ROOT / "dags").glob("*.py")), ROOT / "tests" / "dags" / "listener_dags.py"]:
        (folder / path.name).symlink_to(path)
    return folder


def _airflow_environment() -> None:
    os.environ.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder()),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        }
    )
    for name, conn in json.loads((ROOT / "docker" / "dev_connections.json").read_text()).items():
        os.environ.setdefault(f"AIRFLOW_CONN_{name.upper()}", json.dumps(conn))
    for name, value in json.loads((ROOT / "docker" / "dev_variables.json").read_text()).items():
        os.environ.setdefault(f"AIRFLOW_VAR_{name.upper()}", value)


_airflow_environment()
SHARED = Path(os.environ.get("OPENADDR_SHARED", ROOT.parent / "shared")).resolve()
CORPUS = SHARED / "corpus"
FIXTURES = SHARED / "fixtures" / "machine"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ``../shared`` folder (never write into it)."""
    if not SHARED.is_dir():
        pytest.fail(f"reference material not found at {SHARED}; set OPENADDR_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def corpus_sources(shared: Path) -> Path:
    """The folder of the real public source files."""
    return shared / "corpus" / "sources"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The original Machine's real data excerpts."""
    return FIXTURES


pytest_plugins = [
    "tests.servers",
    "tests.db_fixtures",
    "tests.s3_server",
    "tests.github_server",
    "tests.airflow_fixtures",
    "tests.celery_stack",
    "tests.smtp_server",
]


@pytest.fixture
def no_machine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the Machine's place settings in the environment (database, results, their public URL, scratch), so
    a command under test takes only what its options name."""
    for name in (
        "OPENADDR_DATABASE_URL",
        "OPENADDR_RESULTS",
        "OPENADDR_RESULTS_PUBLIC_URL",
        "OPENADDR_SCRATCH",
    ):
        monkeypatch.delenv(name, raising=False)
