"""Work folders of the Machine's tasks (:mod:`openaddr.machine.scratch`): removed on every exit, and swept at the
next start when a killed task left one; never while their owner lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from openaddr.machine.scratch import WorkFolderBusy, sweep, work_folder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: A task process: takes its work folder, writes into it, says so, then waits to be killed.
OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from openaddr.machine.scratch import work_folder
    with work_folder(Path(sys.argv[1]), sys.argv[2]) as folder:
        (folder / "out").mkdir()
        (folder / "out" / "big.part").write_bytes(b"x" * 100_000)
        print("ready", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def start_owner(owners: list[subprocess.Popen[str]], scratch: Path, name: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(scratch), name], stdout=subprocess.PIPE, text=True
    )
    owners.append(process)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def test_work_folder_is_removed_on_exit_and_on_error(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    with work_folder(scratch, "run-1") as folder:
        (folder / "file").write_text("x")
        assert folder == scratch / "run-1"

    def fail_inside() -> None:
        with work_folder(scratch, "run-2") as folder:
            (folder / "file").write_text("x")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert list(scratch.iterdir()) == []


def test_a_killed_task_s_folder_is_swept_at_the_next_start_and_a_live_one_is_kept(
    tmp_path: Path, owners: list[subprocess.Popen[str]]
) -> None:
    scratch = tmp_path / "scratch"
    killed = start_owner(owners, scratch, "run-1")
    live = start_owner(owners, scratch, "run-2")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (scratch / "run-1" / "out" / "big.part").is_file()  # what the kill left behind

    with work_folder(scratch, "run-3") as folder:
        assert sorted(path.name for path in scratch.iterdir()) == [
            "run-2",
            "run-2.lock",
            "run-3",
            "run-3.lock",
        ]
        assert folder.is_dir()
    assert (scratch / "run-2" / "out" / "big.part").is_file()
    # The live owner's folder is in use: taking it fails instead of sharing it.
    with pytest.raises(WorkFolderBusy, match="run-2"), work_folder(scratch, "run-2"):
        pass

    live.terminate()  # SIGTERM: Python dies without running the with block's exit
    live.wait()
    assert sweep(scratch) == ["run-2"]
    assert list(scratch.iterdir()) == []


def test_work_folder_names_are_checked(tmp_path: Path) -> None:
    for name in ("../run-1", "run-", "tmp"):
        with pytest.raises(ValueError, match="not a work folder name"), work_folder(tmp_path, name):
            pass
