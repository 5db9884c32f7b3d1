"""The demo set of ``make run``: the bundled sources in ``demo/sources`` and their data in ``demo/data``,
served on loopback by Python's ``http.server`` as one more program of the stack (it outlives a launcher that
was killed, as the Airflow components do, until ``make stop``)."""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING

from devstack import ROOT
from devstack.supervise import Program

if TYPE_CHECKING:
    from pathlib import Path

DEMO = ROOT / "demo"
#: The port the demo sources' data URLs name (``http://127.0.0.1:8765/<file>``).
DEFAULT_DEMO_PORT = 8765
DEMO_URL = f"http://127.0.0.1:{DEFAULT_DEMO_PORT}/"
DEMO_SERVER = "demo-server"


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


def demo_server(port: int, folder: Path = DEMO / "data") -> Program:
    """The demo data server: ``folder`` on ``127.0.0.1:port``, started before Airflow and stopped after it."""
    command = [
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(folder),
        str(port),
    ]
    return Program(DEMO_SERVER, command, kind="extra", stop_timeout=5)
