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


#: The demo source ``make run`` re-runs on a shrunken copy of its data, so the quality gate holds the re-run.
SHRUNK_SOURCE = "sources/us/pa/bucks.json"
#: That copy, in ``demo/data`` beside the source's own file: the first :data:`SHRUNK_KEEP` features.
SHRUNK_DATA = "bucks-shrunk.zip"
SHRUNK_KEEP = 20


def shrunk_copy(source: Path, keep: int = SHRUNK_KEEP) -> bytes:
    """The shrunken copy of a demo data zip holding one GeoJSON file, one feature a line (as ``bucks.zip``): the
    same member, date and compression with only its first ``keep`` features. ``demo/data/bucks-shrunk.zip`` is
    ``shrunk_copy(demo/data/bucks.zip)`` (a test checks it)."""
    import io
    import json
    import zipfile

    with zipfile.ZipFile(source) as archive:
        (info,) = archive.infolist()
        document = json.loads(archive.read(info))
    features = document["features"][:keep]
    text = '{"type":"FeatureCollection","features":[\n'
    text += ",\n".join(json.dumps(feature, sort_keys=True) for feature in features) + "\n]}\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
        member.compress_type = info.compress_type
        member.external_attr = info.external_attr
        archive.writestr(member, text)
    return buffer.getvalue()


def shrunk_source(text: str, note: str) -> str:
    """A demo source file's text changed to read the shrunken copy of its data: each layer entry's ``data`` URL
    names :data:`SHRUNK_DATA` in the same folder of the demo data server, and its ``note`` is ``note`` (so its
    layer digest is new at every start and the CI job processes it instead of reusing a run)."""
    import json

    source = json.loads(text)
    for entries in (source.get("layers") or {}).values():
        for entry in entries:
            entry["data"] = entry["data"].rsplit("/", 1)[0] + "/" + SHRUNK_DATA
            entry["note"] = note
    return json.dumps(source, indent=4) + "\n"
