"""Conform one layer entry from already downloaded data into its state directory (processing.md §1.2 steps 1–11).

:func:`conform_entry` is the library call; :func:`conform_command` is ``openaddr conform``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openaddr
from openaddr.errors import (
    ConformError,
    DownloadError,
    OpenaddrError,
    SourceFileError,
    SourceProblem,
    UnknownFormatError,
)
from openaddr.sources import LayerEntry, Source, load_source

if TYPE_CHECKING:
    from openaddr.coverage import OutsideCounter
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Formats a conform may name (processing.md §5).
KNOWN_FORMATS = ("shapefile", "shapefile-polygon", "gdb", "geojson", "csv", "xml", "gpkg")
#: Protocols a layer entry may name (processing.md §1.2 step 4).
KNOWN_PROTOCOLS = ("http", "ftp", "esri")

LOG_FORMAT = "%(asctime)s %(levelname)8s: %(message)s"


@dataclass
class EntryResult:
    """What processing one layer entry produced.

    :param directory: the state directory
    :param state: the state record (every key of :data:`openaddr.outputs.STATE_KEYS`)
    :param problem: the source problem that ended the entry, or None
    """

    directory: Path
    state: dict[str, Any]
    problem: SourceProblem | None

    @property
    def ok(self) -> bool:
        """True when the entry produced its outputs (§10.1; a skipped entry is not ``ok`` here)."""
        return self.problem is None or self.problem is SourceProblem.no_coverage


class _EntryFailed(Exception):
    """Ends one layer entry with a source problem (internal control flow)."""

    def __init__(self, problem: SourceProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


def _fail(problem: SourceProblem, message: str, *args: object) -> _EntryFailed:
    log.warning(message, *args)
    return _EntryFailed(problem)


@contextlib.contextmanager
def entry_log(path: Path) -> Iterator[None]:
    """Capture every ``openaddr`` log record at DEBUG and above into ``path`` (``output.txt``, §9.6)."""
    # A lone surrogate from a lenient decoder must not make logging print its own traceback on the terminal.
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("openaddr")
    previous = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.DEBUG:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file's bytes (the fingerprint, §3.5)."""
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _elapsed(start: float) -> str:
    return str(timedelta(seconds=time.monotonic() - start))


def _elapsed_since(start: float) -> str:
    return str(timedelta(seconds=round(time.time() - start)))


def _has_coverage(source: Source) -> bool:
    coverage = source.document.get("coverage")
    return isinstance(coverage, Mapping) and any(k in coverage for k in ("US Census", "ISO 3166", "geometry"))


def initial_state(entry: LayerEntry) -> dict[str, Any]:
    """The state record before any step ran: licence, website, version; everything else null."""
    from openaddr.licenses import flag_text, normalise_license

    info = normalise_license(entry.data)
    return {
        "source": entry.source.path.name,
        "skipped": False,
        "cache": None,
        "sample": None,
        "website": entry.data.get("website"),
        "license": info.license,
        "geometry type": None,
        "address count": None,
        "version": entry.data.get("version"),
        "fingerprint": None,
        "cache time": None,
        "processed": None,
        "process time": None,
        "output": "output.txt",
        "preview": None,
        "slippymap": None,
        "attribution required": flag_text(info.attribution_required),
        "attribution name": info.attribution_name,
        "share-alike": flag_text(info.share_alike),
        "source problem": None,
        "code version": openaddr.__version__,
        "tests passed": None,
    }


def check_entry(entry: LayerEntry, state: dict[str, Any]) -> None:
    """Steps 1–4 of §1.2: schema, ``skip``, acceptance tests, protocol.

    :raises _EntryFailed: with the problem that ends the entry
    """
    from openaddr.acceptance import run_entry_tests
    from openaddr.validation import describe_issue, fatal_issues, source_issues

    for note in entry.source.notes:
        log.info("%s", note)
    issues = source_issues(entry.source)
    if issues:
        for issue in issues:
            log.warning("%s", describe_issue(entry.source, issue))
        # Strict files fail on any problem; every file fails on an unsafe one (issue 10).
        if fatal_issues(entry.source, issues):
            raise _fail(
                SourceProblem.invalid_source, "Source does not match the schema (%s)", entry.source.path
            )
    if entry.data.get("skip"):
        log.info("Source says to skip")
        state["skipped"] = True
        raise _EntryFailed(SourceProblem.skip_source)
    outcome = run_entry_tests(entry)
    state["tests passed"] = outcome.passed
    if outcome.passed is False:
        raise _fail(SourceProblem.test_failed, "%s", outcome.message)
    protocol = str(entry.data.get("protocol") or "").lower()
    if protocol not in KNOWN_PROTOCOLS:
        if "type" in entry.source.original and "protocol" not in entry.source.original:
            raise _fail(SourceProblem.unknown_conform_type, "Unknown source conform type %r", protocol)
        raise _fail(SourceProblem.unknown_conform_protocol, "Unknown source conform protocol %r", protocol)


def check_conform(entry: LayerEntry) -> Mapping[str, Any]:
    """Step 8 of §1.2: a conform object with a known format and no rejected 2.1.8 options.

    :raises _EntryFailed: with the problem that ends the entry
    """
    conform = entry.conform
    if conform is None:
        raise _fail(SourceProblem.missing_conform, "Source is missing a conform object")
    if conform.get("format") not in KNOWN_FORMATS:
        raise _fail(
            SourceProblem.unknown_conform_format, "Unknown source conform format %r", conform.get("format")
        )
    for option in ("advanced_merge", "split"):
        if option in conform:
            raise _fail(
                SourceProblem.conform_source_failed,
                'Error doing conform; skipping: Found unsupported "%s" option in conform',
                option,
            )
    return conform


#: Prepares the input of one entry in its work directory: returns the data path and its fingerprint, and may
#: record cache keys in the state. Raises an :class:`OpenaddrError` to end the entry.
Fetch = Callable[[Path, dict[str, Any]], tuple[Path, str | None]]


def run_entry(
    entry: LayerEntry,
    state_dir: Path,
    fetch: Fetch,
    *,
    scratch: Path | None = None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
    settings: Settings | None = None,
) -> EntryResult:
    """Process one layer entry into ``state_dir``: checks, ``fetch``, then the conform steps (§1.2).

    Every exit path writes the state; a failed entry leaves no outputs but its state, sample and log.

    :param entry: the layer entry
    :param state_dir: where the outputs go (created)
    :param fetch: gets the entry's data into the work directory (a download, or an already downloaded file)
    :param scratch: parent of the work directory (default: the work folder :data:`WORK_FOLDER` inside
        ``state_dir``)
    :param deadline: ``time.time()`` after which the entry ends with "Timed out after …"
    :param progress: called with the number of records read so far
    :param settings: decompression caps and the conform stage's time limit (default: from the environment)
    """
    from openaddr.download.hostlimit import HostLimiterUnavailable
    from openaddr.readers.archives import release_work_folder, use_work_folder
    from openaddr.settings import Settings

    settings = settings or Settings.from_env()
    state_dir.mkdir(parents=True, exist_ok=True)
    sweep_work(state_dir)
    state = initial_state(entry)
    problem: SourceProblem | None = None
    started = time.time()
    with entry_log(state_dir / "output.txt"):
        log.info("Processing %s (%s)", entry.label, entry.source.path)
        settings.warn_if_unguarded()
        if scratch is None:
            work = state_dir / WORK_FOLDER
            work.mkdir()
        else:
            work = Path(tempfile.mkdtemp(prefix="process_one-", dir=scratch))
        readers_work = use_work_folder(work)
        try:
            check_entry(entry, state)
            input_path, fingerprint = fetch(work, state)
            state["fingerprint"] = fingerprint
            _conform_steps(
                entry, input_path, work, state_dir, state, fingerprint, deadline, progress, settings
            )
        except _EntryFailed as failed:
            problem = failed.problem
        except HostLimiterUnavailable:
            raise  # the infrastructure's failure (Redis configured but gone), never the source's
        except DownloadError as exc:
            problem = exc.problem or SourceProblem.download_source_failed
            # The ESRI client writes its own token line, which must not come with the generic one (§10.2).
            if problem is not SourceProblem.no_esri_token:
                log.warning("Could not download source data: %s", exc)
        except OpenaddrError as exc:
            log.warning("Error doing conform; skipping: %s: %s", entry.label, exc)
            problem = exc.problem or SourceProblem.conform_source_failed
        except Exception as exc:  # source data must never make the process fail (§13)
            # The traceback goes to output.txt only; the terminal gets this line (issue 10).
            log.exception(
                "Error doing conform; skipping: %s: unexpected %s: %s", entry.label, type(exc).__name__, exc
            )
            problem = SourceProblem.conform_source_failed
        finally:
            release_work_folder(readers_work)
            shutil.rmtree(work, ignore_errors=True)
        if problem is None and not _has_coverage(entry.source):
            problem = SourceProblem.no_coverage
        if problem is not None and problem not in (SourceProblem.skip_source, SourceProblem.no_coverage):
            _discard_outputs(state_dir, state)
        elif state["processed"]:
            _write_preview(entry, state_dir, state)
        state["source problem"] = problem.value if problem else None
        log.info(
            "Finished %s in %s: %s",
            entry.label,
            _elapsed_since(started),
            state["source problem"] or "success",
        )
    from openaddr.outputs import write_state

    write_state(state_dir, state)
    return EntryResult(state_dir, state, problem)


#: The work folder of a layer entry, inside its state directory: removed on every exit, and swept at the next
#: start when a killed run left it (with the part files of the outputs).
WORK_FOLDER = ".work"


def sweep_work(state_dir: Path) -> None:
    """Remove what a killed run left in ``state_dir``: the work folder, part folders and part files."""
    leftovers = [state_dir / WORK_FOLDER, *state_dir.glob(".parts-*"), *state_dir.glob(".*.part")]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def conform_entry(
    entry: LayerEntry,
    input_path: Path,
    state_dir: Path,
    *,
    fingerprint: str | None = None,
    scratch: Path | None = None,
    deadline: float | None = None,
    settings: Settings | None = None,
) -> EntryResult:
    """Conform one layer entry from downloaded data (a file, a folder or an archive) into ``state_dir``.

    Writes ``out.csv`` (address layers), ``out.geojson``, ``sample.json``, ``stats.json``, ``output.txt``,
    ``index.json``/``index.txt`` and, for address layers, the packaged zip. Every exit path writes the state.

    :param entry: the layer entry
    :param input_path: the downloaded data
    :param state_dir: where the outputs go (created)
    :param fingerprint: seed of every HASH (§8.2); None → a random seed, as for rows processed outside a download
    :param scratch: parent of the work directory (default: inside ``state_dir``)
    :param deadline: ``time.time()`` after which the entry ends with "Timed out after …"
    :param settings: limits and switches (default: from the environment)
    """

    def given(work: Path, state: dict[str, Any]) -> tuple[Path, str | None]:
        log.info("Conforming %s", input_path)
        return input_path, fingerprint

    return run_entry(entry, state_dir, given, scratch=scratch, deadline=deadline, settings=settings)


def _write_preview(entry: LayerEntry, state_dir: Path, state: dict[str, Any]) -> None:
    """Draw ``preview.png`` (machine-ci.md §5 step 3) and name it in the state; a run without valid coordinates
    gets none and says so. Never fails the entry: a preview that cannot be drawn is logged and left out.

    The points the preview reads are also counted against the source's country (:mod:`openaddr.coverage`) and
    ``stats.json`` gets ``outside_coverage`` and ``coverage_country`` (and ``coverage_subdivision``) for the quality
    gate."""
    from openaddr.coverage import counter_for
    from openaddr.preview import render_state_preview

    started = time.monotonic()
    counter = None
    try:
        counter = counter_for(entry.source.document, entry.source.path, entry.label)
    except Exception as exc:  # the check is an extra, as the preview is
        log.warning("No coverage check for %s: %s: %s", entry.label, type(exc).__name__, exc)
    try:
        path = render_state_preview(state_dir, entry.layer, counter)
    except Exception as exc:  # the preview is an extra: the outputs are complete without it
        log.warning("Could not draw the preview of %s: %s: %s", entry.label, type(exc).__name__, exc)
        (state_dir / "preview.png").unlink(missing_ok=True)
        if counter is not None:
            log.warning("No coverage check for %s: its points could not be read", entry.label)
        return
    if counter is not None:
        _record_coverage(entry, state_dir, counter)
    if path is None:
        log.info("No preview: no row of %s has valid coordinates", entry.label)
        return
    state["preview"] = path.name
    checked = counter.seconds if counter is not None else 0.0  # the check's own time is logged apart
    log.info("Drew the preview of %s in %.2f s", entry.label, time.monotonic() - started - checked)


def _record_coverage(entry: LayerEntry, state_dir: Path, counter: OutsideCounter) -> None:
    """Add the coverage check's count to ``stats.json``."""
    from openaddr.coverage import BUFFER_DEGREES, OUTSIDE_COVERAGE_KEY
    from openaddr.outputs import write_json

    stats_path = state_dir / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8"))
    stats[OUTSIDE_COVERAGE_KEY] = counter.outside
    stats["coverage_country"] = counter.country.code
    if counter.country.subdivision:
        stats["coverage_subdivision"] = counter.country.subdivision
    write_json(stats_path, stats)
    log.info(
        "%d of %d points of %s are outside %s (from %s) and %s° around it (checked in %.2f s)",
        counter.outside,
        counter.points,
        entry.label,
        counter.country.area_name,
        counter.country.area_origin,
        BUFFER_DEGREES,
        counter.seconds,
    )


def _discard_outputs(state_dir: Path, state: dict[str, Any]) -> None:
    for name in ("out.csv", "out.geojson", "stats.json", "preview.png"):
        (state_dir / name).unlink(missing_ok=True)
    for zipped in state_dir.glob("*.zip"):
        if zipped.name != "cache.zip":  # the download stays: it is what a maintainer debugs with
            zipped.unlink()
    if state.get("address count"):
        state["address count"] = 0
    state["processed"] = None


def _conform_steps(
    entry: LayerEntry,
    input_path: Path,
    work: Path,
    state_dir: Path,
    state: dict[str, Any],
    fingerprint: str | None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
    settings: Settings | None = None,
) -> None:
    """Steps 6–10 of §1.2; the stage ends at ``deadline`` or after ``settings.conform_time_limit``."""
    from openaddr.canonical import random_seed
    from openaddr.readers import open_reader
    from openaddr.readers.archives import ArchiveLimits, prepare_input
    from openaddr.readers.choose import choose_input
    from openaddr.readers.sample import take_sample

    start = time.monotonic()
    conform = entry.conform or {}
    protocol = str(entry.data.get("protocol") or "").lower()
    compression = entry.data.get("compression")
    from openaddr.settings import Settings

    settings = settings or Settings.from_env()
    if settings.conform_time_limit:
        stage_end = time.time() + settings.conform_time_limit
        deadline = stage_end if deadline is None else min(deadline, stage_end)
    limits = ArchiveLimits.from_settings(settings)
    paths = prepare_input(
        input_path, work / "unzipped", compression=compression, file=conform.get("file"), limits=limits
    )
    root = work / "unzipped" if (work / "unzipped").exists() else input_path.parent

    try:
        sample, geometry_type = take_sample(paths, root, conform if entry.conform else None, protocol)
    except Exception as exc:  # best effort (§1.2 step 7)
        log.warning("Error doing excerpt; skipping: %s", exc)
        sample, geometry_type = None, None
    if sample:
        from openaddr.outputs import write_sample

        write_sample(state_dir / "sample.json", sample)
        state["sample"] = "sample.json"
    else:
        log.warning("Error doing excerpt; skipping")
    state["geometry type"] = geometry_type

    if entry.conform is None:
        _suggest_conform(entry, paths, root, protocol, sample, state_dir)
    conform = check_conform(entry)
    try:
        from openaddr.pipeline import BatchTransformer, run_pipeline

        seed = fingerprint or random_seed()
        transform = BatchTransformer(conform, entry.layer, entry.label, seed)
        path = choose_input(paths, root, conform, protocol)
        log.info("Converting %s", path)
        with open_reader(
            path, conform, layer_type=entry.layer, protocol=protocol, label=entry.label
        ) as reader:
            if reader.geometry_type and not state["geometry type"]:
                state["geometry type"] = reader.geometry_type
            count = run_pipeline(
                entry,
                reader,
                transform,
                state_dir,
                state,
                deadline=deadline,
                progress=progress,
                settings=settings,
            )
    except UnknownFormatError as exc:
        raise _fail(SourceProblem.unknown_conform_format, "Unknown source conform format: %s", exc) from exc
    except ConformError as exc:
        raise _fail(SourceProblem.conform_source_failed, "Error doing conform; skipping: %s", exc) from exc
    state["process time"] = _elapsed(start)
    state["address count"] = count
    if count == 0:
        raise _fail(SourceProblem.no_addresses_found, "Found no addresses in source data")


def _suggest_conform(
    entry: LayerEntry,
    paths: list[Path],
    root: Path,
    protocol: str,
    sample: list[list[Any]] | None,
    state_dir: Path,
) -> None:
    """For an entry without conform: write ``skeleton.json``, a conform suggested from the data's fields
    (:mod:`openaddr.skeleton`), and log it. Best effort: it never changes how the entry ends."""
    from openaddr.skeleton import FILE_NAME, skeleton_text, suggest_for_entry, write_skeleton

    try:
        skeleton = suggest_for_entry(entry, paths, root, protocol, sample)
        if skeleton is None:
            log.info("No conform suggested for %s: the data gave no sample", entry.label)
            return
        write_skeleton(state_dir, skeleton)
    except Exception as exc:  # a suggestion is an extra: the entry ends with missing_conform either way
        log.warning("Could not suggest a conform for %s: %s: %s", entry.label, type(exc).__name__, exc)
        (state_dir / FILE_NAME).unlink(missing_ok=True)
        return
    log.info(
        "Suggested conform for %s, %s:\n%s", entry.label, skeleton.summary(), skeleton_text(skeleton.conform)
    )
    for hint in skeleton.hints:
        log.info("Suggested conform: %s", hint)
    for issue in skeleton.issues:
        log.info("Suggested conform does not validate yet: %s", issue)


class UsageError(Exception):
    """Bad usage of a command: exit status 2 with this message."""


class _NoTracebackFormatter(logging.Formatter):
    """The terminal's log format: a record's message without its traceback, which goes to ``output.txt`` only."""

    def format(self, record: logging.LogRecord) -> str:
        brief = logging.makeLogRecord(record.__dict__)
        brief.exc_info = brief.exc_text = brief.stack_info = None
        return super().format(brief)


def record_crash(entry: LayerEntry, state_dir: Path, exc: BaseException) -> EntryResult:
    """Record an error that escaped :func:`run_entry`: its traceback in ``output.txt``, a state whose source
    problem is ``conform_source_failed``, and one line on the terminal (issue 10: never a traceback there)."""
    import traceback

    from openaddr.outputs import STATE_KEYS, write_state

    state: dict[str, Any] = dict.fromkeys(STATE_KEYS)
    state.update(source=entry.source.path.name, skipped=False, output="output.txt")
    state["code version"] = openaddr.__version__
    state["source problem"] = SourceProblem.conform_source_failed.value
    text = "".join(traceback.format_exception(exc))
    log.warning("Error doing conform; skipping: %s: unexpected %s: %s", entry.label, type(exc).__name__, exc)
    with (state_dir / "output.txt").open("a", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(f"Error doing conform; skipping: {entry.label}: unexpected error\n{text}")
    write_state(state_dir, state)
    return EntryResult(state_dir, state, SourceProblem.conform_source_failed)


def check_out(command: str, out: str | Path) -> Path:
    """``--out`` as a folder path: it may be missing, but not a file.

    :raises UsageError: ``out`` exists and is not a folder
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"openaddr {command}: --out {out} exists and is not a folder")
    return path


def command_entries(
    command: str, source: str, layer: str | None, name: str | None, verbose: bool
) -> list[LayerEntry]:
    """Set up logging to stderr and load the layer entries a command works on.

    :raises UsageError: the source cannot be read or has no matching entry
    """
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(_NoTracebackFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[terminal])
    try:
        entries = load_source(source).entries(layer=layer, name=name)
    except SourceFileError as exc:
        raise UsageError(f"openaddr {command}: {exc}") from None
    if not entries:
        which = " ".join(filter(None, [layer, f"named {name!r}" if name else None])) or "layer"
        raise UsageError(f"openaddr {command}: {source} has no {which} entry")
    return entries


def conform_command(
    source: str,
    input: str,
    *,
    layer: str,
    name: str | None,
    fingerprint: str | None,
    out: str,
    verbose: bool = False,
    settings: Settings | None = None,
) -> int:
    """``openaddr conform``: exit 0 on success, 1 on a recorded failure, 2 on bad usage.

    :param settings: limits and switches (default: from the environment)
    """
    import stat

    try:
        entries = command_entries("conform", source, layer, name, verbose)
        state_dir = check_out("conform", out)
        mode = Path(input).stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UsageError(f"openaddr conform: {input} is not a regular file or a folder")
    except OSError as exc:
        sys.stderr.write(f"openaddr conform: {input}: {exc.strerror or exc}\n")
        return 2
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    input_path = Path(input)
    if fingerprint is None and input_path.is_file():
        fingerprint = file_md5(input_path)
    try:
        result = conform_entry(entries[0], input_path, state_dir, fingerprint=fingerprint, settings=settings)
    except OSError as exc:
        sys.stderr.write(f"openaddr conform: cannot write to {out}: {exc.strerror or exc}\n")
        return 2
    except Exception as exc:  # recorded with its traceback in output.txt, never on the terminal
        state_dir.mkdir(parents=True, exist_ok=True)
        result = record_crash(entries[0], state_dir, exc)
    sys.stdout.write(
        f"{entries[0].label}: {result.state['source problem'] or 'success'}, "
        f"{result.state['address count'] or 0} rows in {out}\n"
    )
    return 0 if result.ok else 1
