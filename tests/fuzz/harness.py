"""Run fuzz cases through the real ``openaddr`` command line and judge what they did.

Each case gets a folder of its own, the *sandbox*::

    case-XXXX/
        in/            the case's input files (the command runs in case-XXXX/ itself)
        tmp/           TMPDIR, TEMP, TMP and CPL_TMPDIR of the command: a leftover work folder shows up here
        w/x/y/out/     --out (deep enough that "../" names stay inside the sandbox)

The command runs in its own session (so the whole process group can be killed) with the case folder as working
directory. A watchdog thread samples the resident memory of the process tree every 20 ms and kills it when one
process goes above :data:`RSS_LIMIT` or after :data:`TIMEOUT` seconds. The exact peak (``ru_maxrss`` of the command
and the descendants it waited for, i.e. its largest process, as in the README's conform figures) comes from
``os.wait4`` in a small launcher (:data:`LAUNCHER`), one per case, so cases run in parallel threads without mixing
their figures (``RUSAGE_CHILDREN`` would be shared) and without the harness's own memory in them. A file-size limit (``RLIMIT_FSIZE``, 2 GiB) keeps a runaway output from filling the disk:
Python ignores SIGXFSZ, so a write past it fails with EFBIG inside the command, which ends as it handles that error.

A case passes when the command exits 0, 1 or 2, prints no traceback, changes nothing in the sandbox outside
``--out`` (inputs, working directory, temporary folder), stays under 1 GiB and finishes in time; see
:func:`judge` for the rest.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fuzz.cases import CASE, ESCAPE_MARKER, IN, Special

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tests.fuzz.cases import Case

#: Peak resident memory a case may use (issue 10: 1 GiB per case); the watchdog kills the run above it.
RSS_LIMIT = 1 << 30
#: Seconds a case may run (wall clock).
TIMEOUT = float(os.environ.get("FUZZ_TIMEOUT") or 20)
#: Cases run at once (threads, each waiting on its own subprocess).
JOBS = int(os.environ.get("FUZZ_JOBS") or os.cpu_count() or 2)
#: Largest file a case may write (a guard for the machine, not a limit under test).
FILE_SIZE_LIMIT = 2 << 30
#: Exit codes the command line promises (0 success, 1 recorded failure, 2 bad usage).
EXIT_CODES = (0, 1, 2)
TRACEBACK = "Traceback (most recent call last)"

_RECORD_LOCK = threading.Lock()
#: Every outcome of the session, for the figures (tests/fuzz/conftest.py prints them).
RECORDED: list[Outcome] = []


#: Runs the command as its own child and writes that child's ``ru_maxrss`` (KiB) to the file named first. The harness
#: cannot take ``os.wait4``'s figure for its own child: a forked child's peak counts the parent's resident pages before
#: ``exec`` (a 500 MiB parent gives ``/bin/true`` a 511 MiB peak), and pytest holds the generated inputs. This
#: launcher runs without ``site`` and weighs about 10 MiB. It exits as the command did (same code, same signal).
LAUNCHER = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.waitstatus_to_exitcode(status))
"""


def openaddr_command() -> list[str]:
    """The installed ``openaddr`` console script beside this interpreter, else ``python -m openaddr``."""
    script = Path(sys.executable).with_name("openaddr")
    return [str(script)] if script.exists() else [sys.executable, "-m", "openaddr"]


@dataclass
class Outcome:
    """What one case did.

    :param case: the case
    :param status: ``exit 0``, ``exit 1``, ``exit 2``, another ``exit N``, ``signal N``, ``timeout`` or ``memory``
    :param exit_code: the exit code, or None when the run was killed or died of a signal
    :param seconds: wall-clock time
    :param peak_rss: peak resident memory of its largest process, in bytes
    :param problems: the properties it broke (empty: the case passed)
    :param folder: the sandbox (kept when the case failed)
    :param stderr: the end of its standard error
    """

    case: Case
    status: str
    exit_code: int | None
    seconds: float
    peak_rss: int
    problems: list[str] = field(default_factory=list)
    folder: Path | None = None
    stderr: str = ""

    def report(self) -> str:
        """The failure as a few lines: the case, what it broke, where its files are, the end of its stderr."""
        lines = [
            f"{self.case!r}: {self.status} in {self.seconds:.1f} s, {self.peak_rss / 2**20:.0f} MiB",
            *(f"    - {problem}" for problem in self.problems),
            f"    sandbox kept: {self.folder}",
        ]
        tail = self.stderr.strip().splitlines()[-6:]
        lines += [f"    | {line[:200]}" for line in tail]
        return "\n".join(lines)


# --- the sandbox ---------------------------------------------------------------------------------------------------


def _write_inputs(case: Case, inputs: Path, folder: Path) -> None:
    for name, content in case.files.items():
        path = inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is Special.FIFO:
            os.mkfifo(path)
        elif content is Special.DIR:
            path.mkdir()
        elif content is Special.DEV_ZERO:
            path.symlink_to("/dev/zero")
        else:
            assert isinstance(content, bytes)
            if name.endswith(".json"):
                content = content.replace(IN.encode(), str(inputs).encode()).replace(
                    CASE.encode(), str(folder).encode()
                )
            path.write_bytes(content)


Snapshot = dict[str, tuple[str, int, int]]


def snapshot(folder: Path, skip: Path) -> Snapshot:
    """Every path below ``folder`` except the folder ``skip`` and what it holds: (kind, size, mtime) by path.

    Folders count by existence only (their mtime changes whenever ``--out`` is made inside them).
    """
    result: Snapshot = {}
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = here / name
            if path == skip and path.is_dir():
                continue
            info = path.lstat()
            kind = (
                "dir" if path.is_dir() and not path.is_symlink() else "link" if path.is_symlink() else "file"
            )
            size, mtime = (0, 0) if kind == "dir" else (info.st_size, info.st_mtime_ns)
            result[str(path.relative_to(folder))] = (kind, size, mtime)
    return result


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What was added, removed or modified, as short phrases."""
    found = [f"wrote {path}" for path in sorted(after.keys() - before.keys())]
    found += [f"removed {path}" for path in sorted(before.keys() - after.keys())]
    found += [
        f"modified {path}" for path in sorted(before.keys() & after.keys()) if before[path] != after[path]
    ]
    return found


# --- running -------------------------------------------------------------------------------------------------------


def _tree_rss(pid: int) -> list[int]:
    """Resident bytes of a process and of each of its descendants (empty once it is gone)."""
    sizes = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmRSS:"):
                        sizes.append(int(line.split()[1]) * 1024)
                        break
            with open(f"/proc/{current}/task/{current}/children", "rb") as children:
                pending += [int(child) for child in children.read().split()]
        except (OSError, ValueError):
            continue
    return sizes


class _Watchdog(threading.Thread):
    """Samples the memory of the process tree; kills the process group when one process goes over
    :data:`RSS_LIMIT`, when the whole tree goes over twice that (forked workers share pages, so their sum
    overstates; this only guards the machine), or after the timeout.

    :ivar peak: the largest resident set of any one process seen
    """

    def __init__(self, pid: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.deadline = time.monotonic() + timeout
        self.done = threading.Event()
        self.peak = 0
        self.killed: str | None = None

    def run(self) -> None:
        while not self.done.wait(0.02):
            sizes = _tree_rss(self.pid) or [0]
            self.peak = max(self.peak, *sizes)
            if max(sizes) > RSS_LIMIT or sum(sizes) > 2 * RSS_LIMIT:
                self.kill("memory")
            elif time.monotonic() > self.deadline:
                self.kill("timeout")

    def kill(self, why: str) -> None:
        if self.killed is None:
            self.killed = why
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, size: int = 1 << 16) -> str:
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - size, 0))
        return fh.read().decode("utf-8", "replace")


def _contains(path: Path, text: str) -> bool:
    needle = text.encode()
    with path.open("rb") as fh:
        previous = b""
        while chunk := fh.read(1 << 20):
            if needle in previous[-len(needle) :] + chunk:
                return True
            previous = chunk
    return False


def run_case(case: Case, root: Path, timeout: float = TIMEOUT, program: list[str] | None = None) -> Outcome:
    """Run the case's command in a fresh sandbox below ``root`` and judge it; record the outcome.

    :param program: run this instead of ``openaddr <command>`` (the harness's own tests)
    """
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    inputs, tmp, out = folder / "in", folder / "tmp", folder / "w" / "x" / "y" / "out"
    for path in (inputs, tmp, out.parent):
        path.mkdir(parents=True)
    _write_inputs(case, inputs, folder)
    if case.out_is_file:
        out.write_bytes(b"not a folder\n")
    before = snapshot(folder, out)
    argv = program or [*openaddr_command(), case.command]
    argv += [arg.replace("{in}", str(inputs)).replace("{out}", str(out)) for arg in case.args]
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "TMP": str(tmp),
        "CPL_TMPDIR": str(tmp),
        "OPENADDR_ALLOW_FILE_URLS": "1",
        **case.env,
    }
    stdout_path, stderr_path = root / f"{folder.name}.stdout", root / f"{folder.name}.stderr"
    report = root / f"{folder.name}.maxrss"
    started = time.monotonic()
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(report), *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=folder,
            env=env,
            start_new_session=True,
        )
    try:
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    except (ProcessLookupError, PermissionError):
        pass
    watchdog = _Watchdog(process.pid, timeout)
    watchdog.start()
    _, wait_status, _ = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    watchdog.done.set()
    watchdog.join()
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    try:  # anything the command left running in its group
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    code = process.returncode
    if watchdog.killed:
        status, exit_code = watchdog.killed, None
    elif code < 0:
        status, exit_code = f"signal {-code} ({signal.Signals(-code).name})", None
    else:
        status, exit_code = f"exit {code}", code
    measured = int(report.read_text() or 0) * 1024 if report.exists() else 0
    outcome = Outcome(
        case,
        status,
        exit_code,
        seconds,
        max(measured, watchdog.peak),
        folder=folder,
        stderr=_tail(stderr_path),
    )
    outcome.problems = judge(outcome, before, snapshot(folder, out), out, stdout_path, stderr_path, timeout)
    report.unlink(missing_ok=True)
    if not outcome.problems:
        shutil.rmtree(folder, ignore_errors=True)
        stdout_path.unlink()
        stderr_path.unlink()
        outcome.folder = None
    if program is None:
        with _RECORD_LOCK:
            RECORDED.append(outcome)
    return outcome


def judge(
    outcome: Outcome,
    before: Snapshot,
    after: Snapshot,
    out: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
) -> list[str]:
    """The properties the outcome breaks (issue 10 items 3–5).

    * the command ended by itself within ``timeout`` with exit 0, 1 or 2, and under :data:`RSS_LIMIT`;
    * no Python traceback on standard error or standard output;
    * nothing added, removed or modified in the sandbox outside ``--out``, and no archive member at
      :data:`ESCAPE_MARKER`;
    * ``conform`` and ``process-one`` that exit 0 or 1 leave an ``index.json`` (a recorded run);
    * a truncated input does not give exit 0 (no silent partial output);
    * the exit codes of bad usage: a missing file or ``--out`` that is a file is exit 2.
    """
    case = outcome.case
    problems: list[str] = []
    if outcome.status == "timeout":
        problems.append(f"still running after {timeout:.0f} s: killed")
    elif outcome.status == "memory":
        problems.append(f"resident memory over {RSS_LIMIT >> 20} MiB: killed")
    elif outcome.exit_code not in EXIT_CODES:
        problems.append(f"ended with {outcome.status}, not exit 0, 1 or 2")
    if outcome.peak_rss > RSS_LIMIT and outcome.status != "memory":
        problems.append(f"peak resident memory {outcome.peak_rss >> 20} MiB > {RSS_LIMIT >> 20} MiB")
    for name, path in (("stderr", stderr), ("stdout", stdout)):
        if _contains(path, TRACEBACK):
            problems.append(f"a Python traceback on {name}")
    escaped = changes(before, after)
    if escaped:
        shown = ", ".join(escaped[:6]) + (f" and {len(escaped) - 6} more" if len(escaped) > 6 else "")
        problems.append(f"changed the sandbox outside --out: {shown}")
    for marker in Path(ESCAPE_MARKER).parent.glob(Path(ESCAPE_MARKER).name + "*"):
        problems.append(f"an archive member escaped to {marker}")
        shutil.rmtree(marker, ignore_errors=True)
    if case.command in ("conform", "process-one") and outcome.exit_code in (0, 1) and not case.out_is_file:
        if not out.is_dir() or next(out.rglob("index.json"), None) is None:
            problems.append(f"exit {outcome.exit_code} without an index.json under --out (no recorded run)")
    if case.must_fail and outcome.exit_code == 0:
        problems.append("exit 0 on a truncated input: silent partial output")
    expected = expected_exit(case)
    if expected and outcome.exit_code in EXIT_CODES and outcome.exit_code not in expected:
        problems.append(f"exit {outcome.exit_code} where {' or '.join(map(str, expected))} is promised")
    return problems


def expected_exit(case: Case) -> tuple[int, ...]:
    """Exit codes issue 10 item 4 promises for a usage case (empty when any of 0, 1, 2 will do)."""
    if case.expect_exit or case.category != "usage":
        return case.expect_exit
    if case.mutation in ("missing source", "missing input", "--out a file"):
        return (2,)
    if case.mutation.startswith(("FIFO", "/dev/zero")) and not case.mutation.endswith("data"):
        return (1, 2)
    if case.mutation.endswith("data"):
        return (1,)
    return ()


def run_cases(cases: Iterable[Case], root: Path, jobs: int = JOBS) -> list[Outcome]:
    """Run cases ``jobs`` at a time; the outcomes in case order."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda case: run_case(case, root), cases))


# --- figures -------------------------------------------------------------------------------------------------------


def figures(outcomes: list[Outcome]) -> dict[str, object]:
    """Cases, outcomes per exit status, failures per category, worst memory and time (with their cases).

    The worst figures are given twice: over every case, and over the cases that ended by themselves (a case the
    watchdog killed shows the limit, not what the command would have used).
    """
    by_status: dict[str, int] = {}
    by_label: dict[str, dict[str, int]] = {}
    failing: dict[str, int] = {}
    for outcome in outcomes:
        by_status[outcome.status] = by_status.get(outcome.status, 0) + 1
        statuses = by_label.setdefault(outcome.case.label, {})
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        if outcome.problems:
            failing[outcome.case.label] = failing.get(outcome.case.label, 0) + 1
    ended = [o for o in outcomes if o.status not in ("timeout", "memory")] or outcomes
    data: dict[str, object] = {
        "cases": len(outcomes),
        "failed": sum(1 for o in outcomes if o.problems),
        "by status": dict(sorted(by_status.items())),
        "failed by category": dict(sorted(failing.items())),
        "time in cases s": round(sum(o.seconds for o in outcomes), 1),
    }
    for name, group in (("", outcomes), (" (ended by itself)", ended)):
        memory = max(group, key=lambda o: o.peak_rss)
        slowest = max(group, key=lambda o: o.seconds)
        data[f"worst peak RSS MiB{name}"] = round(memory.peak_rss / 2**20, 1)
        data[f"worst peak RSS case{name}"] = repr(memory.case)
        data[f"worst time s{name}"] = round(slowest.seconds, 2)
        data[f"worst time case{name}"] = repr(slowest.case)
    data["by category and status"] = dict(sorted(by_label.items()))
    data["outcomes"] = [
        {
            "case": repr(o.case),
            "status": o.status,
            "seconds": round(o.seconds, 2),
            "peak RSS MiB": round(o.peak_rss / 2**20, 1),
            "problems": o.problems,
        }
        for o in outcomes
    ]
    return data


def format_figures(data: dict[str, Any]) -> str:
    """The figures as the few lines printed at the end of a session."""
    lines = [f"fuzz: {data['cases']} cases, {data['failed']} failed"]
    lines.append("  outcomes: " + ", ".join(f"{k}: {v}" for k, v in data["by status"].items()))
    for name in ("", " (ended by itself)"):
        lines.append(
            f"  worst peak RSS{name}: {data[f'worst peak RSS MiB{name}']} MiB ({data[f'worst peak RSS case{name}']})"
        )
        lines.append(
            f"  worst time{name}: {data[f'worst time s{name}']} s ({data[f'worst time case{name}']})"
        )
    lines.append(f"  time in cases: {data['time in cases s']} s")
    if data["failed by category"]:
        lines.append(
            "  failed by category/command: "
            + ", ".join(f"{k}: {v}" for k, v in data["failed by category"].items())
        )
    return "\n".join(lines)
