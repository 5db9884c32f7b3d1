"""A zygote: a process that has imported ``openaddr`` and its GDAL/PROJ/Arrow stack (pyogrio, pyproj, pyarrow) once, and forks one child per
processing run (machine-ci.md §5; issue 15).

Why: ``openaddr process-one`` as a fresh interpreter costs 0.58 s a run of interpreter start and imports
(``make bench-batch``), more than a small source takes to process. A child forked from a zygote starts with
everything imported, and keeps every guarantee of the fresh subprocess:

* **its own process group**: the child calls ``setsid()`` first; the parent kills the whole group (the child and
  anything it forked) at the deadline, and once more after the child has exited, so no grandchild outlives its run;
* **it dies with the zygote**: the child asks the kernel for SIGKILL when the zygote ends
  (:func:`die_with_parent`), and the zygote kills every running child's group when its own parent, the task, goes
  (EOF on its stdin): a task runner killed with its Celery worker takes its processing with it (issue 16);
* **its own address-space limit**: ``setrlimit(RLIMIT_AS)`` in the child (the mappings inherited from the zygote
  count towards it, as the interpreter and the imports count in a fresh subprocess);
* **a crash or an out-of-memory ends that run only**: the exit status comes back to the parent (a negative number
  for a signal); ``faulthandler`` writes a segfault's Python traceback into the run's log;
* **nothing shared with the parent**: the zygote is a fresh interpreter started with ``close_fds`` (no database
  connection, open file or GDAL handle of the task process reaches it); it imports modules and opens no dataset and
  no file (checked: only PROJ's read-only ``proj.db``, which the imports of pyproj and pyogrio open, may stay
  open; see :data:`SHARED_SUFFIXES`); it is single-threaded when it forks (checked); the child closes every other
  descriptor, keeps ``/dev/null`` and the log on 0–2 and takes the run's environment.

The protocol, JSON lines over the zygote's stdin and a dedicated copy of its stdout: the zygote says
``{"ready": pid, "seconds": s}`` (or ``{"error": …}`` and exits) once the imports are done; per run the parent
sends ``{"target": "module:function", "args": […], "log": path, "limit": n|null, "env": {…}, "cwd": path}``, the
zygote answers ``{"pid": n}`` and, when that child ends, ``{"exited": n, "status": code}`` (negative: the signal).
EOF on stdin (the parent closed it or died) kills the running child's group and ends the zygote.

Run as ``python -m openaddr.zygote``; the parent side is :class:`Zygote`.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import gc
import importlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

from openaddr import arrow_pool

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

#: What the zygote imports before it forks anything: what ``openaddr process-one`` imports to download, read,
#: reproject and write a source (measured: ``sys.modules`` after a run against before it). Imports only; none of
#: them opens a file or a dataset at import.
PRELOAD = (
    "numpy",
    "pyarrow",
    "pyogrio",
    "pyproj",
    "shapely",
    "requests",
    "openaddr.cli",
    "openaddr.settings",
    "openaddr.sources",
    "openaddr.validation",
    "openaddr.acceptance",
    "openaddr.process_one",
    "openaddr.process",
    "openaddr.pipeline",
    "openaddr.conform",
    "openaddr.outputs",
    "openaddr.download",
    "openaddr.download.cache",
    "openaddr.download.http",
    "openaddr.download.esri",
    "openaddr.download.ftp",
    "openaddr.readers",
    "openaddr.readers.choose",
    "openaddr.readers.csvfile",
    "openaddr.readers.gdal",
    "openaddr.readers.geojson",
    "openaddr.readers.projection",
    "openaddr.readers.sample",
    "openaddr.readers.shapefile_points",
    "openaddr.readers.limits",
    "openaddr.licenses",
    # the run's preview image, coverage count and suggested conform (drawn after the outputs are written)
    "pyarrow.compute",
    "pyarrow.csv",
    "PIL.Image",
    "PIL.ImageDraw",
    "PIL.PngImagePlugin",
    "openaddr.preview",
    "openaddr.coverage",
    "openaddr.skeleton",
    "isal.isal_zlib",
    "isal.igzip_lib",
    "numpy.ma",
    "multiprocessing.sharedctypes",
    "multiprocessing.synchronize",
    "netrc",
    "mmap",
    "encodings.utf_8_sig",
)
#: The only descriptors an import may leave open in the zygote: PROJ's read-only resource database, which
#: ``import pyproj`` and ``import pyogrio`` open (their PROJ contexts; there is no importing them without it). The
#: children keep them — closing a descriptor under SQLite would let a later file take its number — and use them
#: one at a time: a zygote runs one child at a time and never reads them itself. Any other descriptor left open
#: stops the zygote (ZygoteError).
SHARED_SUFFIXES = ("/proj.db",)
#: Called in the zygote after the imports: first-use work every run would otherwise repeat, pure computation that
#: keeps nothing open (the source schema's validator, built from the schema files: 0.3 s a run otherwise; the
#: preview's Natural Earth basemap, decoded from its TopoJSON, which the coverage count shares: 0.2 s a run otherwise).
WARM = ("openaddr.validation:_validator", "openaddr.preview:_basemap")
#: Set in the zygote (unless already set) before its imports, so that no library starts a thread there.
ZYGOTE_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
#: The run's target in production: the ``openaddr`` command line.
CLI_TARGET = "openaddr.cli:main"
#: Seconds the parent waits for the zygote's imports before it gives up (a broken installation, a stuck import).
READY_TIMEOUT = 300.0


class ZygoteError(RuntimeError):
    """The zygote could not start (an import failed) or died: an infrastructure error, never a source's failure."""


# -- the zygote process -----------------------------------------------------------------------------------------


def main() -> int:
    """The zygote: import :data:`PRELOAD`, then fork one child per request until stdin closes."""
    control_in = os.fdopen(os.dup(0), "rb", buffering=0)
    control_out = os.fdopen(os.dup(1), "wb", buffering=0)
    # Whatever a module prints goes to stderr, never into the protocol.
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    def say(message: Mapping[str, Any]) -> None:
        control_out.write(json.dumps(message).encode() + b"\n")

    started = time.monotonic()
    # As ``openaddr.cli.main`` does, before pyarrow is imported (it reads this once).
    arrow_pool.choose(arrow_pool.PROCESSING)
    # Libraries that start threads when loaded: the zygote must stay single-threaded to fork safely (checked
    # below). OpenBLAS (numpy) starts its thread pool unless told one thread, and Arrow's bundled jemalloc a
    # background purging thread; neither matters to processing (no linear algebra; the system allocator above).
    for name, value in ZYGOTE_ENV.items():
        os.environ.setdefault(name, value)
    opened = _open_fds()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # reported to the parent, which raises ZygoteError: no silent fallback
            say({"error": f"cannot import {name}: {type(exc).__name__}: {exc}"})
            return 1
    for name in WARM:
        module, _, function = name.partition(":")
        try:
            getattr(importlib.import_module(module), function)()
        except Exception as exc:
            say({"error": f"cannot warm {name}: {type(exc).__name__}: {exc}"})
            return 1
    left = sorted(set(_open_fds().items()) - set(opened.items()))
    shared = [(fd, target) for fd, target in left if target.endswith(SHARED_SUFFIXES)]
    others = [(fd, target) for fd, target in left if (fd, target) not in shared]
    if others:  # a file, socket or dataset the children would share
        say({"error": f"the zygote's imports left descriptors open: {others}"})
        return 1
    keep = frozenset(fd for fd, _ in shared)
    threads = _thread_count()
    if threads != 1:  # fork() copies only the calling thread: a lock another thread held would stay locked
        say({"error": f"the zygote runs {threads} threads after its imports; it can only fork with one"})
        return 1
    # Every object the imports made moves to the collector's permanent generation: a child's collections then
    # never walk them, so its first full collection does not touch (and copy, page by page) the whole inherited
    # heap (one gc.collect() in a child: 0.12–0.28 s unfrozen, 0.03–0.08 s frozen, on the loaded 2-core machine).
    gc.collect()
    gc.freeze()
    say({"ready": os.getpid(), "seconds": round(time.monotonic() - started, 3)})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD wakes the select below
    running: set[int] = set()
    buffer = b""
    control = control_in.fileno()
    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                say({"exited": pid, "status": os.waitstatus_to_exitcode(status)})
        if control not in ready:
            continue
        chunk = control_in.read(65536)
        if not chunk:  # the parent is gone: nothing may outlive it
            for pid in running:
                _kill_group(pid)
                os.waitpid(pid, 0)
            return 0
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            request["zygote"] = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(wake_r)
                os.close(wake_w)
                _child(request, keep)  # never returns
            running.add(pid)
            say({"pid": pid})


def _open_fds() -> dict[int, str]:
    """This process's open descriptors and what each is."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _child(request: Mapping[str, Any], keep: frozenset[int]) -> None:
    """In the forked child: isolate, run the target, exit with its status.

    :param keep: descriptors the libraries hold from their import (:data:`SHARED_SUFFIXES`), left to them
    """
    code = 1
    try:
        os.setsid()  # its own session and process group, killed as a whole
        # A zygote that dies (SIGKILL, its host's OOM killer) takes the run with it: no orphaned download.
        die_with_parent(signal.SIGKILL, expected_parent=int(request["zygote"]))
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(number, signal.SIG_DFL)
        if request.get("limit"):
            limit = int(request["limit"])
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        # Nothing of the zygote's reaches the run (its protocol pipes), but the libraries' own read-only handles.
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, _max_fd())
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (lives as long as the process)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
        faulthandler.enable(file=sys.stderr)
        os.environ.clear()
        os.environ.update(request.get("env") or {})
        tempfile.tempdir = None  # re-read from the run's TMPDIR
        if request.get("cwd"):
            os.chdir(request["cwd"])
        module, _, function = str(request["target"]).partition(":")
        target = getattr(importlib.import_module(module), function)
        result = target(*request.get("args", []))
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except MemoryError:
        # Allocating anything more may fail too: a fixed line, as the subprocess's traceback would end.
        with contextlib.suppress(Exception):
            os.write(2, b"\nMemoryError: the run ran out of address space\n")
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


#: ``prctl(2)`` option: the signal this process gets when its parent (the thread that forked it) ends.
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, *, expected_parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent ends (Linux ``prctl(PR_SET_PDEATHSIG)``,
    through ctypes: no package wraps it but python-prctl, unmaintained); a no-op elsewhere.

    Processes that run in sessions or process groups of their own (Airflow's task runner, this module's children)
    are not reached by a kill of their parent's group: this is what ends them when that parent dies, however it
    dies. The setting is cleared by ``fork`` (each process asks for itself) and kept across ``exec``. When the
    parent has already gone before the call (``os.getppid()`` is no longer ``expected_parent``, or is 1), this
    process sends ``sig`` to itself at once.

    :param expected_parent: the parent's PID as known before (default: only a parent of 1 counts as gone)
    :return: whether the kernel took the setting (False on other systems)
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    parent = os.getppid()
    if parent == 1 or (expected_parent is not None and parent != expected_parent):
        os.kill(os.getpid(), sig)
    return True


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft < 1 << 20 else 65536


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads; the process alone while it has not called ``setsid`` yet."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def describe() -> int:
    """A child's view of itself, as one JSON line on stdout (a diagnostic target, and what the tests check):
    process, group and session ids, open descriptors, address-space limit and size, threads, which of
    :data:`PRELOAD` were imported before the run began and how many objects the zygote froze for the collector."""
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    with open("/proc/self/status", encoding="ascii") as stream:
        status = dict(line.split(":", 1) for line in stream if ":" in line)
    view = {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "fds": [
            fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")
        ],  # the listing's own descriptor is gone
        "targets": {
            fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")
        },
        "limit": resource.getrlimit(resource.RLIMIT_AS)[0],
        "vm_size": int(status["VmSize"].split()[0]) * 1024,
        "threads": _thread_count(),
        "preloaded": [name for name in PRELOAD if name in sys.modules],
        "frozen": gc.get_freeze_count(),
        "env": dict(os.environ),
        "tmpdir": tempfile.gettempdir(),
    }
    sys.stdout.write(json.dumps(view) + "\n")
    return 0


# -- the parent's side ------------------------------------------------------------------------------------------


class Zygote:
    """The parent's handle on one zygote: start it (:meth:`start`, or lazily on the first :meth:`run`), run
    children in it one at a time, stop it (:meth:`close`; a context manager).

    One zygote lives as long as the task that started it (a group of entries pays its start once; see README,
    "Design decisions").

    :param env: the zygote's environment while it imports (default: this process's); each run gets its own
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        #: Seconds the zygote took to import :data:`PRELOAD` (as it measured them).
        self.import_seconds: float | None = None
        #: Seconds from starting the zygote to its readiness, as the parent saw them.
        self.start_seconds: float | None = None
        self._buffer = b""

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the zygote and wait until it has imported everything.

        :raises ZygoteError: an import failed, or it died or did not answer within :data:`READY_TIMEOUT`
        """
        if self.process is not None:
            return
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "openaddr.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent, which stops it
            env=self.env,
        )
        message = self._read(time.monotonic() + READY_TIMEOUT)
        if message is None or "ready" not in message:
            reason = (message or {}).get("error") or "it exited or did not answer"
            self.close()
            raise ZygoteError(f"The processing zygote did not start: {reason}")
        self.pid = int(message["ready"])
        self.import_seconds = float(message["seconds"])
        self.start_seconds = time.monotonic() - started

    def run(
        self,
        target: str,
        args: Sequence[Any],
        *,
        log_path: Path,
        timeout: float,
        limit: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[int | None, bool]:
        """Fork a child that runs ``target(*args)`` and wait for it, ``timeout`` seconds at most.

        :param target: ``module:function``; its int return value is the exit status
        :param log_path: the child's stdout and stderr
        :param limit: its address-space limit in bytes (None: none)
        :param env: its environment (default: the zygote's)
        :param cwd: its working folder (default: the zygote's)
        :return: (exit status, negative for a signal; timed out). At a timeout the child's whole group is killed.
        :raises ZygoteError: the zygote died
        """
        self.start()
        assert self.process is not None
        assert self.process.stdin is not None
        request = {
            "target": target,
            "args": list(args),
            "log": str(log_path),
            "limit": limit,
            "env": dict(self.env if env is None else env),
            "cwd": str(cwd) if cwd else None,
        }
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.close()
            raise ZygoteError("The processing zygote died") from None
        answer = self._read(time.monotonic() + READY_TIMEOUT)
        if answer is None or "pid" not in answer:
            self.close()
            raise ZygoteError(f"The processing zygote did not fork: {answer}")
        pid = int(answer["pid"])
        try:
            ended = self._read(time.monotonic() + timeout)
            timed_out = ended is None and self._alive()
            if timed_out:
                _kill_group(pid)
                ended = self._read(time.monotonic() + READY_TIMEOUT)
        except BaseException:  # interrupted (e.g. Airflow's execution_timeout): nothing may outlive the task
            _kill_group(pid)
            self.close()
            raise
        # Whatever the child forked and left behind (same group, the group outlives its leader).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if ended is None or ended.get("exited") != pid:
            self.close()
            raise ZygoteError(f"The processing zygote died while running child {pid}")
        return int(ended["status"]), timed_out

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _read(self, deadline: float) -> dict[str, Any] | None:
        """The zygote's next message, or None at the deadline or at its end."""
        assert self.process is not None
        assert self.process.stdout is not None
        stream: IO[bytes] = self.process.stdout
        fd = stream.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                ready, _, _ = select.select([fd], [], [], remaining)
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
            if not ready:
                return None
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EINTR:  # pragma: no cover
                    continue
                raise
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        """Stop the zygote: EOF on its stdin makes it kill a running child's group and exit; killed after 10 s."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    status = main()
    # Its children are gone (killed at EOF); tearing down the interpreter and its libraries (about 0.6 s, which
    # the task waits for in Zygote.close) would free nothing the exit does not.
    for open_stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            open_stream.flush()
    os._exit(status)
