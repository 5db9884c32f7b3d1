"""Linux process helpers of the development stack: ports, ``/proc`` scans, signals, memory.

What a process manager cannot know: which processes a task started in a session of its own (found by the
stack's ``AIRFLOW_HOME`` in their environment) and which LocalExecutor workers are idle (by their title). Linux
only (they read ``/proc``); elsewhere the scans find nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path

from devstack import StackError

log = logging.getLogger(__name__)

PROC = Path("/proc")


class PortInUseError(StackError):
    """A port the stack needs is already taken."""


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


def stat(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, session, …), or None."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cmdline(pid: int) -> bytes:
    """The NUL-separated command line of a process (its title, for those that set one), or ``b""``."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether a process runs (not a zombie)."""
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


def _pids() -> list[int]:
    if not PROC.is_dir():
        return []
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def ancestors() -> set[int]:
    """This process and its ancestors: never swept, even when they carry the stack's ``AIRFLOW_HOME``."""
    pids = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        fields = stat(pid)
        if fields is None:
            break
        pid = int(fields[1])
        pids.add(pid)
    return pids


def processes_of(airflow_home: Path) -> list[int]:
    """PIDs of the live processes whose environment block still reads ``AIRFLOW_HOME=<airflow_home>``.

    That finds the processes a task starts in a session of its own (``openaddr process-one`` and its workers);
    it misses the Airflow processes that rename themselves with setproctitle (the api-server, LocalExecutor
    workers, task supervisors), whose environment block then holds the title: :func:`session_members` finds
    those.
    """
    marker = f"AIRFLOW_HOME={airflow_home}".encode()
    skip = ancestors()
    found = []
    for pid in _pids():
        if pid in skip:
            continue
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if marker in environ.split(b"\0"):
            found.append(pid)
    return sorted(found)


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: supervisord (started in a session of its own), every
    component and its children, and the task processes, which Airflow's supervisor moves to process groups of
    their own in the same session."""
    members = []
    for pid in _pids():
        fields = stat(pid)
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            members.append(pid)
    return sorted(members)


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it in the process tree."""
    children: dict[int, list[int]] = {}
    for candidate in _pids():
        fields = stat(candidate)
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(candidate)
    found, todo = [], [pid] if alive(pid) else []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return sorted(found)


def kill(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each process that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_idle_local_executor_workers(scheduler_pid: int) -> int:
    """SIGKILL the scheduler's LocalExecutor workers that are idle; return how many.

    Waits for apache/airflow#67870 (the scheduler joins its workers without a time limit on stop, and now and
    then an idle worker never exits, so the scheduler hangs); its fix, apache/airflow#67881, is not in 3.3.2.
    An idle worker has nothing to finish: killing it ends the join. A second SIGTERM does not help: it
    interrupts the join, and multiprocessing's exit handler then joins the same worker again.
    """
    idle = [
        pid
        for pid in descendants(scheduler_pid)
        if pid != scheduler_pid and b"LocalExecutor: <idle>" in cmdline(pid)
    ]
    if idle:
        log.info("Killing %d idle LocalExecutor workers the scheduler is still waiting for", len(idle))
        kill(idle, signal.SIGKILL)
    return len(idle)


def pss(pid: int) -> int:
    """Proportional set size of a process in bytes (``/proc/<pid>/smaps_rollup``), 0 when it is gone or
    unreadable: shared pages are divided among the processes sharing them, so PSS values add up."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_pid(path: Path) -> int | None:
    """The PID a file records, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
