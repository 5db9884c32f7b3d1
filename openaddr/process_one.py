"""``openaddr process-one``: acceptance tests, download, conform and outputs for every layer entry of one source.

The successor of the original Machine's ``openaddr-process-one``: one source file in, one state directory per
layer entry out (``<out>/<layer>/<name>/``), each holding the conform outputs plus ``cache.*`` and ``output.txt``
(processing.md §1.1, §1.2).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from openaddr.errors import UnsafePathError
from openaddr.process import EntryResult, UsageError, check_out, command_entries, record_crash, run_entry
from openaddr.sources import LayerEntry, load_source

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Hours one entry may run unless it says otherwise (``timeout``; machine-ci.md).
DEFAULT_TIMEOUT_HOURS = 3.0
#: The longest ``timeout`` a source file may set for itself, in hours.
MAX_TIMEOUT_HOURS = 24.0


def entry_timeout_hours(data: Mapping[str, Any]) -> float:
    """The hours an entry may run: its ``timeout``, capped at :data:`MAX_TIMEOUT_HOURS` (a source file's claim is
    untrusted, issue 10), else :data:`DEFAULT_TIMEOUT_HOURS` (also for a value that is not a finite number > 0)."""
    hours = data.get("timeout")
    if isinstance(hours, bool) or not isinstance(hours, (int, float, str)):
        return DEFAULT_TIMEOUT_HOURS
    try:
        limit = float(hours)
    except ValueError:
        return DEFAULT_TIMEOUT_HOURS
    if not math.isfinite(limit) or limit <= 0:
        return DEFAULT_TIMEOUT_HOURS
    if limit > MAX_TIMEOUT_HOURS:
        log.warning("timeout of %s hours capped at %s hours", hours, MAX_TIMEOUT_HOURS)
        return MAX_TIMEOUT_HOURS
    return limit


def entry_deadline(entry: LayerEntry, start: float | None = None) -> float:
    """``time.time()`` by which the entry must be done: :func:`entry_timeout_hours` from ``start`` (default now)."""
    return (start if start is not None else time.time()) + entry_timeout_hours(entry.data) * 3600.0


def process_entry(
    entry: LayerEntry,
    state_dir: Path,
    *,
    settings: Settings | None = None,
    scratch: Path | None = None,
    deadline: float | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> EntryResult:
    """Download and conform one layer entry into ``state_dir``.

    The raw download is kept as the run's cache (``cache.zip`` or ``cache.gz``, §3.5) and its MD5 seeds every HASH;
    an entry whose legacy ``cache`` URL and ``fingerprint`` match the new download keeps that URL instead.

    :param entry: the layer entry
    :param state_dir: where its outputs go
    :param settings: limits and switches (default: from the environment)
    :param scratch: parent of the work directory
    :param deadline: ``time.time()`` by which the entry must end (default: :func:`entry_deadline`)
    :param progress: called with ``("bytes", n)`` while downloading and ``("records", n)`` while conforming
    """
    from openaddr.download import download
    from openaddr.download.cache import legacy_cache_url, store_cache

    deadline = deadline if deadline is not None else entry_deadline(entry)

    def fetch(work: Path, state: dict[str, Any]) -> tuple[Path, str | None]:
        started = time.monotonic()
        result = download(
            entry,
            work / "download",
            settings=settings,
            deadline=deadline,
            progress=(lambda n: progress("bytes", n)) if progress else None,
        )
        state["cache time"] = str(timedelta(seconds=time.monotonic() - started))
        legacy = legacy_cache_url(entry.data, result.fingerprint)
        if legacy is not None:
            log.info("Keeping the legacy cache %s: same fingerprint %s", legacy, result.fingerprint)
            state["cache"] = legacy
        else:
            state["cache"], _ = store_cache(result.path, state_dir, fingerprint=result.fingerprint)
        return result.path, result.fingerprint

    return run_entry(
        entry,
        state_dir,
        fetch,
        scratch=scratch,
        deadline=deadline,
        progress=(lambda n: progress("records", n)) if progress else None,
        settings=settings,
    )


def process_one(
    source_path: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    name: str | None = None,
    settings: Settings | None = None,
    scratch: Path | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[EntryResult]:
    """Process every selected layer entry of a source file, each into ``<out>/<layer>/<name>/``.

    :raises SourceFileError: the source file cannot be read
    """
    entries = load_source(source_path).entries(layer=layer, name=name)
    return process_entries(entries, out, settings=settings, scratch=scratch, progress=progress)


def process_entries(
    entries: list[LayerEntry],
    out: str | Path,
    *,
    settings: Settings | None = None,
    scratch: Path | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[EntryResult]:
    """Process layer entries, each into ``<out>/<layer>/<name>/``.

    Every state directory is checked to lie inside ``out`` before anything is written (issue 10), and an error
    that escapes an entry is recorded in that entry's state and ``output.txt`` (:func:`record_crash`).

    :raises UnsafePathError: a state directory would lie outside ``out``; nothing was written for any entry
    :raises OSError: a state directory cannot be created
    :raises HostLimiterUnavailable: the Redis host limiter is configured but cannot be reached
    """
    from openaddr.download.hostlimit import HostLimiterUnavailable

    directories = [entry.directory(out) for entry in entries]
    results = []
    for entry, state_dir in zip(entries, directories, strict=True):
        try:
            result = process_entry(entry, state_dir, settings=settings, scratch=scratch, progress=progress)
        except HostLimiterUnavailable:
            raise  # the machine's failure, not the entry's: no state is recorded for it
        except Exception as exc:  # recorded with its traceback in output.txt, never on the terminal
            state_dir.mkdir(parents=True, exist_ok=True)
            result = record_crash(entry, state_dir, exc)
        results.append(result)
    return results


class _TerminalProgress:
    """One self-overwriting status line on a terminal: bytes downloaded, then records conformed."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = 0.0

    def __call__(self, kind: str, count: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        text = f"{count / 2**20:,.1f} MiB downloaded" if kind == "bytes" else f"{count:,} records conformed"
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()

    def done(self) -> None:
        if self.last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def process_one_command(
    source: str,
    out: str,
    *,
    layer: str | None,
    name: str | None,
    verbose: bool = False,
    settings: Settings | None = None,
) -> int:
    """``openaddr process-one``: exit 0 when every entry succeeded, 1 when one failed, 2 on bad usage.

    :param settings: limits and switches (default: from the environment)
    """
    try:
        entries = command_entries("process-one", source, layer, name, verbose)
        check_out("process-one", out)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    progress = _TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    from openaddr.download.hostlimit import HostLimiterUnavailable

    try:
        results = process_entries(entries, out, settings=settings, progress=progress)
    except (UnsafePathError, OSError, HostLimiterUnavailable) as exc:
        # HostLimiterUnavailable: the Redis host limiter is configured and gone; the machine's fault, not the
        # source's (no state is written, so the run is recorded as crashed with this line in its log).
        sys.stderr.write(f"openaddr process-one: {exc}\n")
        return 2
    finally:
        if progress is not None:
            progress.done()
    for result in results:
        state = result.state
        sys.stdout.write(
            f"{result.directory}: {state['source problem'] or 'success'}, {state['address count'] or 0} rows\n"
        )
    return 0 if all(result.ok for result in results) else 1
