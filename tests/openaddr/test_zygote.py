"""The zygote and its forked children (openaddr.zygote, issue 15): every guarantee of the fresh
``process-one`` subprocess, proved against a child forked from a real zygote.

No timing is asserted: deadlines are short only where the test waits for a kill, and every wait for a process to
disappear is generous.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.machine import ZygoteError
from openaddr.machine.child import run_process_one
from openaddr.zygote import PRELOAD, Zygote

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def zygote() -> Any:
    with Zygote() as started:
        started.start()
        yield started


def describe(zygote: Zygote, log: Path, **options: Any) -> dict[str, Any]:
    status, timed_out = zygote.run("openaddr.zygote:describe", [], log_path=log, timeout=120, **options)
    assert (status, timed_out) == (0, False), log.read_text()
    view: dict[str, Any] = json.loads(log.read_text().splitlines()[-1])
    return view


def gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether the process ``pid`` has ended (or is a zombie waiting for init) within ``timeout`` seconds."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
                if stream.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_child_starts_with_the_stack_imported_in_a_session_of_its_own(
    zygote: Zygote, tmp_path: Path
) -> None:
    view = describe(zygote, tmp_path / "log", env={"OPENADDR_X": "1", "TMPDIR": str(tmp_path)})

    assert view["preloaded"] == list(PRELOAD)  # nothing to import: the start-up cost is paid once
    # The zygote's objects are out of the collector's reach: a child's collections never walk (and copy) them.
    assert view["frozen"] > 10_000  # about 194,000 today
    assert view["pid"] != zygote.pid
    assert view["pgid"] == view["sid"] == view["pid"]  # its own session and process group
    assert view["threads"] == 1
    # Its environment is the run's alone, its temporary folder the run's TMPDIR.
    assert view["env"] == {"OPENADDR_X": "1", "TMPDIR": str(tmp_path)}
    assert view["tmpdir"] == str(tmp_path)


def test_a_child_shares_no_descriptor_with_the_parent_or_the_zygote(zygote: Zygote, tmp_path: Path) -> None:
    # An inheritable descriptor of this process (the task process, with its database connections and files).
    secret = tmp_path / "parent-file"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(fd, True)
    try:
        with Zygote() as own:
            view = describe(own, tmp_path / "log")
            zygote_fds = os.listdir(f"/proc/{own.pid}/fd")
    finally:
        os.close(fd)

    # Standard input from /dev/null, stdout and stderr the run's log; beyond them only PROJ's read-only database,
    # which importing pyproj and pyogrio opens (SHARED_SUFFIXES): no file, socket or pipe of the parent or the
    # zygote.
    assert view["fds"][:3] == [0, 1, 2]
    assert {key: view["targets"][key] for key in ("0", "1", "2")} == {
        "0": "/dev/null",
        "1": str(tmp_path / "log"),
        "2": str(tmp_path / "log"),
    }
    others = [target for key, target in view["targets"].items() if int(key) > 2]
    assert all(target.endswith("/proj.db") for target in others), others
    targets = {
        os.readlink(f"/proc/{own.pid}/fd/{n}")
        for n in zygote_fds
        if os.path.exists(f"/proc/{own.pid}/fd/{n}")
    }
    assert str(secret) not in targets


def test_a_child_is_killed_with_its_whole_group_at_the_deadline(zygote: Zygote, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    # The child forks a grandchild (as GDAL or a shell command might), then hangs.
    status, timed_out = zygote.run(
        "os:system",
        [f"sleep 600 & echo $! > {pidfile}; sleep 600"],
        log_path=tmp_path / "log",
        timeout=2.0,
    )

    assert timed_out is True
    assert status == -signal.SIGKILL
    assert gone(int(pidfile.read_text()))


def test_a_grandchild_left_behind_by_a_finished_child_is_killed(zygote: Zygote, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    status, timed_out = zygote.run(
        "os:system",
        [f"sleep 600 > /dev/null 2>&1 & echo $! > {pidfile}"],
        log_path=tmp_path / "log",
        timeout=120,
    )

    assert (status, timed_out) == (0, False)
    assert gone(int(pidfile.read_text()))


def test_a_segfault_ends_the_child_alone_and_says_so(zygote: Zygote, tmp_path: Path) -> None:
    status, timed_out = zygote.run("ctypes:string_at", [0], log_path=tmp_path / "log", timeout=120)

    assert (status, timed_out) == (-signal.SIGSEGV, False)
    assert "Fatal Python error: Segmentation fault" in (tmp_path / "log").read_text()
    # The zygote lives on and forks the next run.
    assert describe(zygote, tmp_path / "next")["preloaded"] == list(PRELOAD)


def test_a_child_killed_by_a_signal_is_reported_with_that_signal(zygote: Zygote, tmp_path: Path) -> None:
    status, _ = zygote.run("os:kill", [0, int(signal.SIGSEGV)], log_path=tmp_path / "log", timeout=120)

    assert status == -signal.SIGSEGV


def test_the_address_space_limit_is_the_childs_own(zygote: Zygote, tmp_path: Path) -> None:
    size = describe(zygote, tmp_path / "size")["vm_size"]
    limit = size + 512 * 2**20  # what the zygote mapped, and 512 MiB more

    within, _ = zygote.run(
        "builtins:bytearray", [64 * 2**20], log_path=tmp_path / "small", timeout=120, limit=limit
    )
    beyond, _ = zygote.run("builtins:bytearray", [2**30], log_path=tmp_path / "big", timeout=120, limit=limit)
    after = describe(zygote, tmp_path / "after")

    assert within == 0
    assert beyond == 1
    assert "MemoryError" in (tmp_path / "big").read_text()
    assert describe(zygote, tmp_path / "limited", limit=limit)["limit"] == limit
    # The next child has the zygote's (this process's) limit again: the limit was the child's own.
    assert after["limit"] == resource.getrlimit(resource.RLIMIT_AS)[0]


def test_process_one_in_a_forked_child_out_of_memory_is_named(tmp_path: Path) -> None:
    source = tmp_path / "sources" / "x.json"
    source.parent.mkdir()
    source.write_text(
        json.dumps({"coverage": {}, "data": "http://example.test/a.csv", "conform": {"format": "csv"}})
    )

    result = run_process_one(
        source,
        tmp_path / "out",
        layer="addresses",
        name="primary",
        timeout=120,
        log_path=tmp_path / "work" / "log",
        limit=64 * 2**20,  # below what the zygote has mapped already: the first allocation fails
    )

    assert result.out_of_memory is True
    assert result.timed_out is False
    assert result.returncode not in (0, None)


def test_a_zygote_whose_imports_fail_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "pyproj.py").write_text("raise ImportError('a broken installation')\n")

    with pytest.raises(ZygoteError, match="cannot import pyproj: ImportError: a broken installation"):
        Zygote({**os.environ, "PYTHONPATH": str(tmp_path)}).start()


def test_a_zygote_whose_imports_leave_a_file_open_does_not_start(tmp_path: Path) -> None:
    # A module of PRELOAD (shadowed here) that keeps a file open: the children would share it.
    (tmp_path / "netrc.py").write_text("_kept = open(__file__)\n")

    with pytest.raises(ZygoteError, match=r"the zygote's imports left descriptors open: .*netrc\.py"):
        Zygote({**os.environ, "PYTHONPATH": str(tmp_path)}).start()


def test_closing_the_zygote_leaves_no_process_behind(tmp_path: Path) -> None:
    zygote = Zygote()
    view = describe(zygote, tmp_path / "log")
    pid = zygote.pid
    assert pid is not None

    zygote.close()

    assert gone(pid)
    assert gone(view["pid"])


def test_a_parent_killed_outright_leaves_no_process_behind(tmp_path: Path) -> None:
    """The task process killed with SIGKILL (no cleanup runs): the zygote sees its stdin close, kills the running
    child's group and exits."""
    pids = tmp_path / "pids"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from openaddr.zygote import Zygote\n"
        "zygote = Zygote()\n"
        "zygote.start()\n"
        "print(zygote.pid, flush=True)\n"
        f"zygote.run('os:system', ['echo $PPID $$ > {pids}; sleep 600'], log_path=Path({str(tmp_path / 'log')!r}),"
        " timeout=600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        zygote_pid = int(parent.stdout.readline())
        ends = time.monotonic() + 120
        while not (pids.is_file() and pids.read_text().strip()) and time.monotonic() < ends:
            time.sleep(0.05)
        child, shell = (int(pid) for pid in pids.read_text().split())
    finally:
        parent.kill()
        parent.wait()

    assert gone(zygote_pid)
    assert gone(child)
    assert gone(shell)


def test_a_child_dies_with_a_zygote_killed_outright(tmp_path: Path) -> None:
    """The zygote killed with SIGKILL (it cannot kill its children): the kernel ends the child it forked, whose
    own session a kill of the task's group would never reach (PR_SET_PDEATHSIG; issue 16)."""
    import threading

    from devstack.procs import descendants

    zygote = Zygote()
    zygote.start()
    assert zygote.pid is not None
    failures: list[BaseException] = []

    def run() -> None:
        try:
            zygote.run("time:sleep", [600], log_path=tmp_path / "log", timeout=600)
        except ZygoteError as error:
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        ends = time.monotonic() + 60
        while len(descendants(zygote.pid)) < 2 and time.monotonic() < ends:
            time.sleep(0.05)
        (child,) = set(descendants(zygote.pid)) - {zygote.pid}
        os.kill(zygote.pid, signal.SIGKILL)
        assert gone(child)
        thread.join(30)
        assert failures, "the parent did not notice its zygote died"
    finally:
        zygote.close()


def test_a_process_whose_parent_is_already_gone_ends_at_once() -> None:
    """``die_with_parent`` after the parent changed: the process sends itself the signal instead of living on."""
    code = "import signal\nfrom openaddr.zygote import die_with_parent\n"
    alive = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "import os\ndie_with_parent(expected_parent=os.getppid())\nprint('alive')",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (alive.returncode, alive.stdout) == (0, "alive\n")
    orphaned = subprocess.run(
        [sys.executable, "-c", code + "die_with_parent(signal.SIGTERM, expected_parent=1)\nprint('alive')"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (orphaned.returncode, orphaned.stdout) == (-signal.SIGTERM, "")
