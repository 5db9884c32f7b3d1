"""A home's stack seen from another process: whether one runs there (a second start is refused), and
``make stop``.

A home has at most one launcher (``python -m devstack``, its PID in ``airflow/launcher.pid``) and one
supervisord (its socket in ``airflow/``). When the launcher dies without stopping its stack (SIGKILL, a closed
terminal that ignored SIGHUP), supervisord and everything it runs, the demo data server included, go on: the
stack is *orphaned* until ``make stop``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack import StackError, procs, supervise

log = logging.getLogger(__name__)

LAUNCHER_PID = "launcher.pid"
#: What the launcher's command line holds (``python -m devstack``).
LAUNCHER_MARK = b"devstack"
#: Seconds ``make stop`` waits for a launcher to stop its stack.
LAUNCHER_TIMEOUT = 120.0
#: Seconds supervisord gets for its ordered stop when ``make stop`` asks it directly.
SHUTDOWN_TIMEOUT = 100.0
IDLE_WORKER_GRACE = 5.0


def is_launcher(pid: int) -> bool:
    """Whether ``pid`` is a running ``python -m devstack``."""
    command = procs.cmdline(pid).split(b"\0")
    return procs.alive(pid) and b"-m" in command and LAUNCHER_MARK in command


@dataclass
class HomeState:
    """What runs from a home.

    :param launcher: the PID of its live launcher, else None
    :param supervisord: the PID of the supervisord answering on its socket, else None
    :param leftovers: other processes of the stack (a supervisord session whose supervisord is gone,
        processes carrying its ``AIRFLOW_HOME``)
    """

    home: Path
    launcher: int | None = None
    supervisord: int | None = None
    leftovers: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Whether anything of a stack runs."""
        return bool(self.launcher or self.supervisord or self.leftovers)

    @property
    def orphaned(self) -> bool:
        """Whether processes of a stack run without a launcher."""
        return self.launcher is None and bool(self.supervisord or self.leftovers)


def home_state(home: Path) -> HomeState:
    """What runs from ``home`` now (this process and its ancestors never count)."""
    airflow_home = Path(home).resolve() / "airflow"
    skip = procs.ancestors()
    state = HomeState(Path(home))
    launcher = procs.read_pid(airflow_home / LAUNCHER_PID)
    if launcher is not None and launcher not in skip and is_launcher(launcher):
        state.launcher = launcher
    state.supervisord = supervise.running_pid(airflow_home)
    found = set(procs.processes_of(airflow_home))
    recorded = procs.read_pid(airflow_home / supervise.PID_FILE)
    if recorded is not None and state.supervisord is None:
        # supervisord is gone: what is left of its session, when an Airflow process is still in it (a recycled
        # PID names someone else's session)
        members = procs.session_members(recorded)
        if any(b"airflow" in procs.cmdline(pid) for pid in members):
            found.update(members)
    state.leftovers = sorted(found - skip - {state.launcher, state.supervisord})
    return state


def check_home_free(home: Path) -> None:
    """Fail clearly when a stack still runs from ``home``: its launcher, or an orphaned stack.

    :raises StackError: naming what runs and how to stop it
    """
    state = home_state(home)
    if state.launcher is not None:
        raise StackError(
            f"a stack already runs from {home} (launcher pid {state.launcher}): stop it with Ctrl-C there or "
            f"`make stop`"
        )
    if state.supervisord is not None:
        raise StackError(
            f"an orphaned stack runs from {home} (supervisord pid {state.supervisord}, its launcher is gone): "
            f"stop it with `make stop` (python -m devstack --stop --home {home})"
        )
    if state.leftovers:
        raise StackError(
            f"processes of an earlier stack in {home} are still running "
            f"({', '.join(map(str, state.leftovers))}): stop them with `make stop` "
            f"(python -m devstack --stop --home {home})"
        )


def stop_home(home: Path, timeout: float = LAUNCHER_TIMEOUT) -> str:
    """Stop the stack of ``home`` from another process (``make stop``): SIGTERM to its launcher, which stops
    its stack; an orphaned stack is stopped through supervisord's socket (in order, as the launcher does);
    whatever is left is terminated, then killed.

    :param timeout: seconds to wait for the launcher
    :return: what was done, for the user
    """
    airflow_home = Path(home).resolve() / "airflow"
    state = home_state(home)
    if not state.running:
        return f"No stack runs from {home}: nothing to stop."
    said = []
    if state.launcher is not None:
        log.info("Stopping the launcher (pid %d)", state.launcher)
        os.kill(state.launcher, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_launcher(state.launcher):
            time.sleep(0.5)
        said.append(f"Stopped the stack of {home} through its launcher (pid {state.launcher}).")
        state = home_state(home)
    elif state.orphaned:
        said.append(
            f"The stack of {home} was orphaned: its launcher is gone, "
            + (f"supervisord (pid {state.supervisord}) " if state.supervisord else "")
            + (f"and {len(state.leftovers)} processes " if state.leftovers else "")
            + "ran on."
        )
    if state.supervisord is not None:
        log.info("Stopping supervisord (pid %d) and its programs", state.supervisord)
        supervise.shutdown(airflow_home, state.supervisord, SHUTDOWN_TIMEOUT, IDLE_WORKER_GRACE)
        said.append(f"Stopped supervisord (pid {state.supervisord}) and every program it ran.")
        state = home_state(home)
    if state.leftovers:
        log.info("Terminating %d processes of %s", len(state.leftovers), airflow_home)
        procs.kill(state.leftovers, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and home_state(home).leftovers:
            time.sleep(0.5)
        procs.kill(home_state(home).leftovers, signal.SIGKILL)
        said.append(f"Stopped {len(state.leftovers)} leftover processes.")
    for name in (LAUNCHER_PID, supervise.PID_FILE):
        pid = procs.read_pid(airflow_home / name)
        if pid is None or not procs.alive(pid):
            (airflow_home / name).unlink(missing_ok=True)
    return " ".join(said)
