"""The stack's processes under supervisord: one configuration file per home, one control socket.

supervisord (``supervisor`` on PyPI) starts every long-running process of the stack in priority order, writes
each one's output to ``logs/<name>.log``, and stops them in reverse order on ``shutdown``: the Airflow
components that run tasks first (SIGTERM, then SIGKILL of the whole process group after ``stopwaitsecs``),
then the api-server (tasks ending meanwhile still report to it), then extra programs such as the demo data
server. It runs in a session of its own, so a Ctrl-C reaches only the launcher, and it outlives a launcher that
was killed: ``make stop`` finds it through its socket.

What supervisord does not do stays here, in :func:`shutdown`: the kill of idle LocalExecutor workers
(:func:`devstack.procs.kill_idle_local_executor_workers`, until apache/airflow#67881 is released).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.xmlrpc import SupervisorTransport

from devstack import StackError, procs

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

CONFIG = "supervisord.conf"
SOCKET = "supervisor.sock"
PID_FILE = "supervisord.pid"
#: The group of the components that run or schedule tasks: stopped first, together.
WORKERS = "workers"
#: Priorities (supervisord starts in ascending, stops in descending order).
EXTRA_PRIORITY, API_PRIORITY, WORKERS_PRIORITY = 10, 100, 200
#: A process that has exited is in one of these states (supervisord's names).
EXITED_STATES = frozenset({"EXITED", "FATAL", "BACKOFF", "STOPPED", "UNKNOWN"})
#: Seconds supervisord gets to answer on its socket after it is started.
START_TIMEOUT = 30.0


class SupervisorError(StackError):
    """supervisord could not start, or a process it runs has exited."""


@dataclass
class Program:
    """One process of the stack.

    :param name: its name (``api-server``, ``scheduler``, ``demo-server``, …), also its log's
    :param command: the command and its arguments
    :param kind: ``"api"`` (stopped after the workers), ``"worker"`` (stopped first) or ``"extra"``
        (started first, stopped last)
    """

    name: str
    command: list[str]
    kind: str = "worker"
    stop_timeout: float = 30.0
    rpc_name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("api", "worker", "extra"):
            raise ValueError(f"unknown kind {self.kind!r} of program {self.name}")
        self.rpc_name = f"{WORKERS}:{self.name}" if self.kind == "worker" else f"{self.name}:{self.name}"


def _value(text: str) -> str:
    """A value for supervisord's configuration: ``%`` starts an expansion there."""
    if "\n" in text:
        raise SupervisorError(f"a line break cannot be written to {CONFIG}: {text!r}")
    return text.replace("%", "%%")


def render_config(folder: Path, logs: Path, programs: list[Program]) -> str:
    """supervisord's configuration for ``programs``, with its socket, PID file and log in ``folder``."""
    lines = [
        "; Written by devstack on every start; edits are lost.",
        "[supervisord]",
        f"logfile={_value(str(logs / 'supervisord.log'))}",
        "logfile_maxbytes=0",
        f"pidfile={_value(str(folder / PID_FILE))}",
        f"childlogdir={_value(str(logs))}",
        "nodaemon=true",
        "silent=true",
        "",
        "[unix_http_server]",
        f"file={_value(str(folder / SOCKET))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_value(str(folder / SOCKET))}",
    ]
    priorities = {"extra": EXTRA_PRIORITY, "api": API_PRIORITY, "worker": WORKERS_PRIORITY}
    for program in programs:
        lines += [
            "",
            f"[program:{program.name}]",
            f"command={_value(shlex.join(program.command))}",
            f"directory={_value(str(folder))}",
            f"priority={priorities[program.kind]}",
            "autostart=true",
            "autorestart=false",
            "startsecs=0",
            "startretries=0",
            "stopsignal=TERM",
            f"stopwaitsecs={int(program.stop_timeout)}",
            # SIGTERM to the component alone (it stops its own children), SIGKILL to its whole group.
            "stopasgroup=false",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_value(str(logs / f'{program.name}.log'))}",
            "stdout_logfile_maxbytes=0",
        ]
    workers = [program.name for program in programs if program.kind == "worker"]
    if workers:
        lines += ["", f"[group:{WORKERS}]", f"programs={','.join(workers)}", f"priority={WORKERS_PRIORITY}"]
    return "\n".join(lines) + "\n"


def connect(folder: Path) -> Any:
    """An XML-RPC proxy of the supervisord whose socket is in ``folder`` (connects on first call)."""
    transport = SupervisorTransport(None, None, f"unix://{folder / SOCKET}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running_pid(folder: Path) -> int | None:
    """The PID of the supervisord that answers on ``folder``'s socket, else None."""
    if not (folder / SOCKET).exists():
        return None
    try:
        return int(connect(folder).supervisor.getPID())
    except (OSError, xmlrpc.client.Error):
        return None


def start(
    folder: Path, logs: Path, programs: list[Program], env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Write the configuration and start supervisord in a session of its own with ``env`` (which every
    program inherits); return once it answers on its socket.

    :raises SupervisorError: when it exits or does not answer within :data:`START_TIMEOUT` seconds
    """
    config = folder / CONFIG
    config.write_text(render_config(folder, logs, programs))
    # Each log gets a header: supervisord appends to the logs of earlier starts.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for program in programs:
        with (logs / f"{program.name}.log").open("a") as stream:
            stream.write(f"\n===== {stamp} {shlex.join(program.command)}\n")
    with (logs / "supervisord.log").open("ab") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "supervisord"), "--configuration", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=folder,
            # A session of its own: Ctrl-C reaches the launcher only, which then stops the stack in order;
            # and every process of the stack can be found by this session id.
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        while time.monotonic() - started < START_TIMEOUT:
            if process.poll() is not None:
                raise SupervisorError(
                    f"supervisord exited with status {process.returncode}; end of "
                    f"{logs / 'supervisord.log'}:\n{procs.tail(logs / 'supervisord.log')}"
                )
            if running_pid(folder) == process.pid:
                return process
            time.sleep(0.1)
        raise SupervisorError(f"supervisord did not answer on {folder / SOCKET} within {START_TIMEOUT:.0f} s")
    except BaseException:  # a failed or interrupted start leaves nothing running
        procs.kill(procs.session_members(process.pid), signal.SIGKILL)
        process.wait()
        raise


def process_info(folder: Path) -> list[dict[str, Any]]:
    """supervisord's view of each program (``name``, ``group``, ``statename``, ``pid``, ``exitstatus``,
    ``stdout_logfile``, …)."""
    return list(connect(folder).supervisor.getAllProcessInfo())


def pids(folder: Path) -> dict[str, int]:
    """``name → pid`` of each running program."""
    return {
        info["name"]: int(info["pid"])
        for info in process_info(folder)
        if info["statename"] == "RUNNING" and info["pid"]
    }


def check_running(folder: Path) -> None:
    """:raises SupervisorError: naming a program that has exited, its status and the end of its log"""
    for info in process_info(folder):
        if info["statename"] in EXITED_STATES:
            log_path = Path(info["stdout_logfile"])
            raise SupervisorError(
                f"{info['name']} exited with status {info['exitstatus']} ({info['statename']}); end of "
                f"{log_path}:\n{procs.tail(log_path)}"
            )


def shutdown(folder: Path, pid: int, timeout: float, idle_worker_grace: float) -> bool:
    """Have supervisord stop every program in order and exit; wait up to ``timeout`` seconds, then SIGKILL
    what is left of its session. Idle LocalExecutor workers are killed ``idle_worker_grace`` seconds in.

    :param pid: supervisord's PID (also its session id)
    :return: whether supervisord stopped everything itself
    """
    scheduler = None
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        scheduler = pids(folder).get("scheduler")
    try:
        connect(folder).supervisor.shutdown()
    except (OSError, xmlrpc.client.Error) as error:
        log.warning("supervisord (pid %d) did not take the shutdown: %s", pid, error)
    started = time.monotonic()
    idle_killed = scheduler is None
    while procs.alive(pid) and time.monotonic() - started < timeout:
        if not idle_killed and time.monotonic() - started > idle_worker_grace:
            idle_killed = True
            assert scheduler is not None
            procs.kill_idle_local_executor_workers(scheduler)
        time.sleep(0.1)
    clean = not procs.alive(pid)
    left = procs.session_members(pid)
    if left:
        log.warning("Killing %d leftover processes of supervisord's session %d", len(left), pid)
        procs.kill(left, signal.SIGKILL)
    return clean
