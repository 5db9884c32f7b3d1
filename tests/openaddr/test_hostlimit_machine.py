"""The machine-wide ArcGIS host limiter (``OPENADDR_HOST_LIMITER=local``; issue 15, part 3): slots held with
``flock`` on files in the scratch folder, shared by every process of the machine.

Each test runs a second process (a fresh interpreter holding slots on command through its stdin) beside this one,
so what is proved is the limit across the tasks and processing children of one machine, not within a process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest
from esri_server import esri_server_fixture  # noqa: F401  (the esri_server fixture)

from openaddr.db import make_engine
from openaddr.download import StageClock
from openaddr.download.hostlimit import (
    FOLDER_NAME,
    RECOVERY_SUCCESSES,
    MachineHostLimiter,
    host_folder_name,
    host_limiter,
    slot,
)
from openaddr.errors import DownloadError
from openaddr.machine import PlannedEntry, RunOwner, process_source
from openaddr.settings import Settings
from openaddr.storage import LocalStorage

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from esri_server import ReplayServer

HOST = "services.example.com:443"

#: A second process: ``acquire`` takes a slot, ``release OUTCOME`` gives the oldest back; it answers each command
#: with a line once done.
HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from openaddr.download.hostlimit import MachineHostLimiter

    limiter = MachineHostLimiter(Path(sys.argv[1]))
    host, maximum = sys.argv[2], int(sys.argv[3])
    held = []
    for line in sys.stdin:
        command = line.split()
        if command[0] == "acquire":
            held.append(limiter.acquire(host, maximum, None))
        elif command[0] == "release":
            limiter.release(host, held.pop(0), command[1], maximum)
        print("done", len(held), flush=True)
    """
)


class Holder:
    """The second process."""

    def __init__(self, folder: Path, maximum: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), HOST, str(maximum)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    held = Holder(tmp_path / "hostlimit", 3)
    try:
        yield held
    finally:
        held.close()


def soon(seconds: float) -> StageClock:
    return StageClock(time.time() + seconds)


def test_the_limit_holds_across_two_processes(tmp_path: Path, holder: Holder) -> None:
    limiter = MachineHostLimiter(tmp_path / "hostlimit")
    assert holder.send("acquire") == "done 1"
    assert holder.send("acquire") == "done 2"
    mine = limiter.acquire(HOST, 3, soon(5))  # the third slot of three
    with pytest.raises(DownloadError, match=f"waiting for a connection slot to {HOST}"):
        limiter.acquire(HOST, 3, soon(0.2))
    # Another host has slots of its own.
    limiter.release("other.example.com:443", limiter.acquire("other.example.com:443", 3, soon(5)), "ok", 3)

    assert holder.send("release ok") == "done 1"  # the other process gives one back: this one gets it
    second = limiter.acquire(HOST, 3, soon(5))
    limiter.release(HOST, mine, "ok", 3)
    limiter.release(HOST, second, "ok", 3)


def test_a_throttle_in_one_process_lowers_the_limit_of_the_other(tmp_path: Path, holder: Holder) -> None:
    limiter = MachineHostLimiter(tmp_path / "hostlimit")
    assert limiter.limit(HOST, 3) == 3
    assert holder.send("acquire") == "done 1"
    assert holder.send("release throttled") == "done 0"
    assert limiter.limit(HOST, 3) == 1
    # At limit 1, the other process's slot is the only one.
    assert holder.send("acquire") == "done 1"
    with pytest.raises(DownloadError, match="waiting for a connection slot"):
        limiter.acquire(HOST, 3, soon(0.2))
    assert holder.send("release ok") == "done 0"
    # It grows back by one after RECOVERY_SUCCESSES answers in a row that were not throttled, whoever got them.
    for _ in range(RECOVERY_SUCCESSES):
        with slot(limiter, HOST, 3):
            pass
    assert limiter.limit(HOST, 3) == 2
    # A smaller maximum (the setting of this process) caps what the other recorded.
    assert limiter.limit(HOST, 1) == 1


def test_the_slots_of_a_killed_process_come_back(tmp_path: Path, holder: Holder) -> None:
    limiter = MachineHostLimiter(tmp_path / "hostlimit")
    for count in (1, 2, 3):
        assert holder.send("acquire") == f"done {count}"
    with pytest.raises(DownloadError, match="waiting for a connection slot"):
        limiter.acquire(HOST, 3, soon(0.2))
    holder.process.kill()  # SIGKILL: nothing of it runs again
    holder.process.wait(timeout=10)
    tokens = [limiter.acquire(HOST, 3, soon(5)) for _ in range(3)]
    for token in tokens:
        limiter.release(HOST, token, "failed", 3)


def test_the_local_setting_is_the_machine_limiter_in_the_scratch_folder(tmp_path: Path) -> None:
    limiter = host_limiter(Settings(scratch=tmp_path), lease_seconds=60)
    assert isinstance(limiter, MachineHostLimiter)
    assert limiter.folder == tmp_path / FOLDER_NAME
    with slot(limiter, HOST, 2):
        pass
    assert [path.name for path in (tmp_path / FOLDER_NAME).iterdir()] == [
        f"services.example.com_443-{hashlib.sha256(HOST.encode()).hexdigest()[:12]}"
    ]
    assert (
        host_folder_name(HOST) == f"services.example.com_443-{hashlib.sha256(HOST.encode()).hexdigest()[:12]}"
    )


@pytest.mark.integration
def test_a_processing_child_takes_its_slots_in_the_tasks_scratch_folder(
    esri_server: ReplayServer,
    fixtures: Path,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child forked for an entry runs with its work folder as ``TMPDIR``: without being told the scratch
    folder, its limiter would be its own, in a folder removed with the run."""
    monkeypatch.delenv("OPENADDR_SCRATCH", raising=False)
    document = json.loads((fixtures / "sources" / "us-ca-carson.json").read_text(encoding="utf-8"))
    document["data"] = esri_server.layer_url("us-ca-carson")
    path = "sources/us/ca/carson.json"
    storage = LocalStorage(tmp_path / "storage")
    content = json.dumps(document).encode()
    storage.put_bytes(content, f"sets/1/{path}")
    shutil.copyfile(sqlite_template, tmp_path / "machine.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'machine.db'}")
    entry = PlannedEntry(
        path=path,
        layer="addresses",
        name="primary",
        source_key=f"sets/1/{path}",
        blob_sha=None,
        digest="d",
        timeout=600.0,
    )
    scratch = tmp_path / "scratch"
    try:
        result = process_source(engine, storage, entry, RunOwner("batch", rerun=True), scratch=scratch)
    finally:
        engine.dispose()
    assert result["address_count"] > 0, result
    host = esri_server.layer_url("us-ca-carson").split("/")[2]
    assert [p.name for p in (scratch / FOLDER_NAME).iterdir()] == [host_folder_name(host)]
    assert [p.name for p in scratch.iterdir()] == [FOLDER_NAME]  # the run's work folder is gone
