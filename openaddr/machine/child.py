"""The child process: ``openaddr process-one`` for one entry, under a deadline and a memory limit (machine-ci.md §5).

Why a child process per entry: processing runs GDAL, PROJ and Arrow over untrusted files for up to three hours. In a
child process a segfault, a memory blow-up or a hung C call ends that run only ("Something went wrong in
openaddr-process-one", "Ran out of memory", "Timed out after …"), the deadline is enforced by killing the child's
process group, and every byte of memory goes back to the OS when the child exits. It costs one interpreter start and
the imports per entry unless it is forked from a zygote that has imported them already (:mod:`.zygote`; measured
by ``make bench-batch``).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from openaddr.machine.entries import LARGE, STANDARD
from openaddr.settings import Settings
from openaddr.zygote import CLI_TARGET, Zygote

if TYPE_CHECKING:
    from collections.abc import Mapping


#: Environment variables: bytes of address space the processing subprocess of each tier may use; 0 turns the limit
#: off.
MEMORY_LIMIT_VARIABLE = "OPENADDR_MEMORY_LIMIT"
LARGE_MEMORY_LIMIT_VARIABLE = "OPENADDR_LARGE_MEMORY_LIMIT"
#: The defaults (``Settings.memory_limit``, ``large_memory_limit``) are address space, not resident memory: GDAL,
#: PROJ and Arrow reserve far more than they touch, so this is a guard against runaway growth, not a budget; a
#: ``large`` entry (nationwide FileGDBs: GDAL's indexes and caches grow with the layer) gets more.
DEFAULT_MEMORY_LIMIT: int = Settings.model_fields["memory_limit"].default
DEFAULT_LARGE_MEMORY_LIMIT: int = Settings.model_fields["large_memory_limit"].default
#: Seconds the processing subprocess may outlive its own deadline (it stops itself at the deadline; this is the
#: hard stop for a child stuck in C code).
KILL_GRACE_SECONDS = 60.0
#: How running out of address space shows in a child's log, in lower case: Python, C++, libc, the dynamic loader
#: (a shared library that cannot be mapped while importing), thread creation.
_OOM_MARKERS = (
    b"memoryerror",
    b"std::bad_alloc",
    b"cannot allocate memory",
    b"out of memory",
    b"failed to map segment from shared object",
    b"can't start new thread",
)


@dataclass(frozen=True)
class ChildResult:
    """How the processing subprocess ended.

    :param returncode: its exit status (negative: killed by that signal)
    :param timed_out: it was killed at the deadline
    :param out_of_memory: it ran out of memory
    :param seconds: wall time
    """

    returncode: int | None
    timed_out: bool
    out_of_memory: bool
    seconds: float


def memory_limit(env: Mapping[str, str] | None = None, size: str = STANDARD) -> int | None:
    """Bytes of address space a processing subprocess of the tier may use (``OPENADDR_MEMORY_LIMIT``, for
    ``large`` entries ``OPENADDR_LARGE_MEMORY_LIMIT``; :class:`~openaddr.settings.Settings`), or None for no limit.

    :param env: the variables to read (default: ``os.environ``)
    :raises openaddr.settings.SettingsError: a malformed variable
    """
    settings = Settings.from_env(env)
    value = settings.large_memory_limit if size == LARGE else settings.memory_limit
    return value if value > 0 else None


def format_bytes(count: int) -> str:
    """``16 GiB``, ``512 MiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:g} {unit}"
    return f"{count} B"


def run_process_one(
    source_file: Path,
    out: Path,
    *,
    layer: str,
    name: str,
    timeout: float,
    log_path: Path,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
    zygote: Zygote | None = None,
) -> ChildResult:
    """Run ``openaddr process-one`` for one entry in a child forked from a zygote, in its own process group.

    The child gets the entry's deadline itself; it is killed (the whole group, with any worker processes it forked)
    ``KILL_GRACE_SECONDS`` after it, or at once when this process is interrupted (e.g. by Airflow's
    ``execution_timeout``).

    :param source_file: the source file (its name gives the source id)
    :param out: the ``--out`` folder
    :param timeout: seconds
    :param log_path: where the child's stdout and stderr go
    :param limit: address-space limit in bytes (None: no limit)
    :param env: the child's environment (default: this process's)
    :param zygote: the zygote to fork from (default: one started for this run alone and stopped after it)
    :raises ZygoteError: the zygote could not start or died (an infrastructure error)
    """
    argv = ["process-one", str(source_file), "--out", str(out), "--layer", layer, "--name", name]
    # The child's temporary files go inside the work folder, which the caller removes even after a kill.
    child_env = dict(os.environ if env is None else env)
    child_env["TMPDIR"] = str(log_path.parent / "tmp")
    (log_path.parent / "tmp").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    own = zygote is None
    zygote = Zygote(child_env) if zygote is None else zygote
    try:
        returncode, timed_out = zygote.run(
            CLI_TARGET,
            [argv],
            log_path=log_path,
            timeout=timeout + KILL_GRACE_SECONDS,
            limit=limit,
            env=child_env,
            cwd=Path.cwd(),
        )
    finally:
        if own:
            zygote.close()
    if returncode is not None and returncode < 0:
        _note_signal(log_path, -returncode, timed_out)
    # Looked for whatever the exit status: the child may catch the error and record it as a conform failure.
    ending = tail(log_path).lower()
    out_of_memory = not timed_out and (
        any(marker in ending for marker in _OOM_MARKERS) or returncode == -signal.SIGKILL
    )
    return ChildResult(returncode, timed_out, out_of_memory, time.monotonic() - started)


def _note_signal(log_path: Path, number: int, timed_out: bool) -> None:
    """Say in the run's log which signal ended the child (the log is the run's output when it crashed)."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = " at its deadline" if timed_out else ""
    with log_path.open("a", encoding="utf-8") as stream:
        stream.write(
            f"\nopenaddr: the processing child was killed by {name}{why} ({signal.strsignal(number)})\n"
        )


def tail(path: Path, size: int = 16384) -> bytes:
    """The last ``size`` bytes of a file (empty when there is none)."""
    if not path.is_file():
        return b""
    with path.open("rb") as stream:
        stream.seek(max(0, path.stat().st_size - size))
        return stream.read()
