"""The ``openaddr`` command line: validate, test-source, conform, process-one, db-upgrade, collect, housekeeping.

Exit status: 0 success, 1 a failure recorded in the state (``index.json`` with a named source problem) or an
invalid source file, 2 bad usage (a missing or unreadable file, a FIFO or device given as a file, ``--out`` that is
not a folder, a malformed ``OPENADDR_*`` variable: the settings are loaded before any command runs). No Python traceback reaches the terminal: ``process-one`` and ``conform`` write an unexpected
error's traceback to the entry's ``output.txt`` and record a source problem; any other unexpected error is one line
on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import sys
from typing import TYPE_CHECKING

from openaddr import arrow_pool

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import sqlalchemy as sa

    from openaddr.collect import Collection
    from openaddr.collect.dedupe import DedupeStats
    from openaddr.settings import Settings
    from openaddr.storage import Storage


def _usage(command: str, message: str) -> int:
    """Say a command was used wrongly; the exit status of bad usage (2)."""
    sys.stderr.write(f"openaddr {command}: error: {message}\n")
    return 2


def _database_and_storage(
    command: str, args: argparse.Namespace, settings: Settings
) -> tuple[str, str] | int:
    """The Machine database URL and the storage URL from ``--database`` and ``--storage``, else
    ``OPENADDR_DATABASE_URL`` and ``OPENADDR_RESULTS``; the exit status of bad usage when either is named nowhere
    (never a local default)."""
    database = args.database or settings.database_url
    storage_url = args.storage or settings.results
    if not database:
        return _usage(command, f"{command} needs --database (or OPENADDR_DATABASE_URL)")
    if not storage_url:
        return _usage(command, f"{command} needs --storage (or OPENADDR_RESULTS)")
    return database, storage_url


def _raise_csv_field_limit() -> None:
    # ESRI caches carry whole polygon WKT in one cell (processing.md §1.1).
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per entry point of processing.md §1.1."""
    parser = argparse.ArgumentParser(prog="openaddr", description="The OpenAddresses Machine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate source files against the schema")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = sub.add_parser("test-source", help="run the acceptance tests of source files")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = sub.add_parser("conform", help="conform already downloaded data of one layer entry")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("--layer", required=True, choices=["addresses", "parcels", "buildings", "centerlines"])
    p.add_argument("--name")
    p.add_argument("--fingerprint")
    p.add_argument("--out", required=True)
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("process-one", help="download and conform every layer entry of one source")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--out", required=True)
    p.add_argument("--layer", choices=["addresses", "parcels", "buildings", "centerlines"])
    p.add_argument("--name")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("db-upgrade", help="create or upgrade the Machine database to the newest schema")
    p.add_argument(
        "url", nargs="?", help="SQLAlchemy URL (default: OPENADDR_DATABASE_URL, else var/machine.db)"
    )

    p = sub.add_parser(
        "collect", help="build and publish the regional collections of a set (machine-ci.md §8)"
    )
    p.add_argument(
        "set", metavar="SET", help="a set id, or 'latest': the newest completed set of --repository"
    )
    p.add_argument(
        "--database", help="SQLAlchemy URL of the Machine database (default: OPENADDR_DATABASE_URL)"
    )
    p.add_argument(
        "--storage", help="the run storage: a folder, file:// or s3:// URL (default: OPENADDR_RESULTS)"
    )
    p.add_argument("--public-url", help="public URL of the storage (default: OPENADDR_RESULTS_PUBLIC_URL)")
    p.add_argument(
        "--repository",
        default="openaddresses/openaddresses",
        metavar="OWNER/NAME",
        help="whose latest set 'latest' means (default: openaddresses/openaddresses)",
    )
    p.add_argument(
        "--work-dir", help="parent of the temporary folder (default: OPENADDR_SCRATCH, else the system's)"
    )
    p.add_argument(
        "--dedupe",
        action="store_true",
        help="also build the -processed collections without cross-source duplicates (README: the dedupe); "
        "with a split run, give it to --record-only",
    )
    p.add_argument(
        "--area",
        action="append",
        metavar="AREA",
        # spelled out: importing openaddr.collect.areas would load all of collect for every command (a test
        # holds this list to AREAS)
        help="build only this area's collections (repeatable): global, us_northeast, us_midwest, us_south, "
        "us_west, europe, asia, south_america or north_america; needs --no-record",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--no-record",
        action="store_true",
        help="publish the collections without recording them in zips; keep what was published in the storage "
        "(collect-parts/) for --record-only",
    )
    split.add_argument(
        "--record-only",
        action="store_true",
        help="build nothing: record the collections every area published with --no-record at --at, "
        "in one transaction",
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="the collection time, ISO 8601 with a zone (e.g. 2026-12-07T12:30:00+00:00): the same for every "
        "part of a split run (default: now; --no-record prints it)",
    )

    p = sub.add_parser(
        "housekeeping",
        help="delete runs past retention that no rule keeps, with their files (machine-ci.md §4)",
    )
    p.add_argument(
        "--database", help="SQLAlchemy URL of the Machine database (default: OPENADDR_DATABASE_URL)"
    )
    p.add_argument(
        "--storage", help="the run storage: a folder, file:// or s3:// URL (default: OPENADDR_RESULTS)"
    )
    p.add_argument(
        "--retention-days",
        type=int,
        help="keep runs younger than this many days (default: OPENADDR_RETENTION_DAYS, 90)",
    )
    p.add_argument("--batch-size", type=int, default=500, help="runs deleted per transaction (default: 500)")
    p.add_argument("--dry-run", action="store_true", help="delete nothing; print what would be deleted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    _raise_csv_field_limit()
    for stream in (sys.stdout, sys.stderr):  # text from sources and data must never fail to print
        if isinstance(stream, io.TextIOWrapper):  # not when replaced, e.g. by a test's capture
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage
        return int(exc.code or 0)
    # before pyarrow is imported: it reads the choice once (openaddr.arrow_pool)
    arrow_pool.choose(arrow_pool.COLLECT if args.command == "collect" else arrow_pool.PROCESSING)
    from openaddr.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"openaddr {args.command}: invalid setting: {exc}\n")
        return 2
    try:
        return _run(parser, args, settings)
    except KeyboardInterrupt:
        sys.stderr.write(f"openaddr {args.command}: interrupted\n")
        return 130
    except Exception as exc:  # the last resort: one line, never a traceback (issue 10)
        sys.stderr.write(f"openaddr {args.command}: unexpected error: {_one_line(exc)}\n")
        return 1


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` (300 characters at most), and of the error it came from, if any: a library
    that wraps its failure in advice (numpy's ImportError when a shared library cannot be mapped for lack of
    memory) keeps the cause in view, and the Machine's out-of-memory detection finds it."""
    root = exc
    for _ in range(10):  # a chain is short; a cycle must not hang the last resort
        origin = root.__cause__ or root.__context__
        if origin is None:
            break
        root = origin
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if root is not exc:
        text += f" (from {type(root).__name__}: {' '.join(str(root).split())[:300]})"
    return text


def validate_command(paths: Sequence[str]) -> int:
    """``openaddr validate PATH...``: report invalid source files, then ``N valid, M invalid`` (§1.1, §2.5).

    See :func:`openaddr.validation.validate_paths` for which files count and how v1 files are judged.

    :return: 0 when every file is valid, 1 when one is invalid, 2 when a path names no readable file
    """
    from openaddr.validation import validate_paths

    return validate_paths(paths, sys.stdout, sys.stderr)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "validate":
        return validate_command(args.paths)
    if args.command == "test-source":
        from openaddr.acceptance import test_source_command

        return test_source_command(args.paths)
    if args.command == "conform":
        from openaddr.process import conform_command

        return conform_command(
            args.source,
            args.input,
            layer=args.layer,
            name=args.name,
            fingerprint=args.fingerprint,
            out=args.out,
            verbose=args.verbose,
            settings=settings,
        )
    if args.command == "process-one":
        from openaddr.process_one import process_one_command

        return process_one_command(
            args.source, args.out, layer=args.layer, name=args.name, verbose=args.verbose, settings=settings
        )
    if args.command == "db-upgrade":
        import sqlalchemy.exc

        from openaddr.db import default_database_url, head_revision, upgrade

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        url = args.url or default_database_url()
        try:
            upgrade(url)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            sys.stderr.write(f"Cannot upgrade the Machine database: {str(exc).splitlines()[0]}\n")
            return 1
        sys.stdout.write(f"Machine database at revision {head_revision()}\n")
        return 0
    if args.command == "collect":
        return collect_command(args, settings)
    if args.command == "housekeeping":
        return housekeeping_command(args, settings)
    parser.error(f"unknown command {args.command}")
    return 2


def collect_command(args: argparse.Namespace, settings: Settings) -> int:
    """``openaddr collect SET``: build and publish the collections of a set, then print one line per collection
    (name, size, addresses, URL) and what was dropped or left out.

    Split by area as the ``openaddr_collect`` DAG does: ``--area AREA --no-record`` builds and publishes some
    areas and keeps what they published in the storage (:mod:`openaddr.collect.parts`), all at one ``--at``;
    ``--record-only --at TIME [--dedupe]`` then builds the ``-processed`` collections if asked and records every
    area's collections in one transaction: the same files and ``zips`` rows as one full collect.

    The database and storage come from the options, else ``OPENADDR_DATABASE_URL`` and ``OPENADDR_RESULTS``;
    naming neither is bad usage (exit status 2), never a local default.

    :return: 0 when published (and recorded), 1 when the set cannot be collected (unknown, incomplete), a split
        run's parts are missing or malformed, or publishing failed; 2 bad usage
    """
    import datetime as dt
    from pathlib import Path

    def usage(message: str) -> int:
        return _usage("collect", message)

    places = _database_and_storage("collect", args, settings)
    if isinstance(places, int):
        return places
    database, storage_url = places
    which: int | str = args.set
    if args.set != "latest":
        if not args.set.isdigit():
            return usage(f"SET must be a set id or 'latest', not {args.set!r}")
        which = int(args.set)
    owner, _, repository = args.repository.partition("/")
    if not owner or not repository or "/" in repository:
        return usage(f"--repository must be OWNER/NAME, not {args.repository!r}")

    from openaddr.collect.areas import AREAS

    areas: list[str] | None = None
    if args.area:
        unknown = sorted({area for area in args.area if area not in AREAS})
        if unknown:
            return usage(f"unknown area {', '.join(map(repr, unknown))}: choose from {', '.join(AREAS)}")
        areas = [area for area in AREAS if area in args.area]
        if args.dedupe:
            return usage(
                f"--dedupe needs every area's address collections at once, not only {', '.join(areas)}: "
                "build the areas with --no-record, then run --record-only --dedupe"
            )
        if args.record_only:
            return usage("--record-only records every area at once; --area goes with --no-record")
        if not args.no_record:
            return usage(
                "--area builds part of a set: add --no-record, then record every area together with "
                "--record-only (recording some areas alone would leave the others' collections not current)"
            )
    if args.dedupe and args.no_record:
        return usage("--dedupe runs once every area is published: give it to --record-only, not --no-record")
    at: dt.datetime | None = None
    if args.at is not None:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            return usage(
                f"--at must be an ISO 8601 time with a zone (2026-12-07T12:30:00+00:00), not {args.at!r}"
            )
        if at.tzinfo is None:
            return usage(f"--at needs a zone (e.g. {args.at}+00:00), not {args.at!r}")
        at = at.astimezone(dt.UTC)
    elif args.record_only:
        return usage(
            "--record-only needs --at, the collection time the areas were built with (--no-record prints it)"
        )

    import sqlalchemy.exc

    from openaddr.db import make_engine
    from openaddr.storage import open_storage

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    storage = open_storage(storage_url, public_url=args.public_url or settings.results_public_url)
    work_dir = Path(args.work_dir) if args.work_dir else settings.scratch
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database)
    try:
        if args.record_only:
            assert at is not None
            return _record_parts(engine, storage, which, at, args.dedupe, owner, repository, work_dir)
        return _collect(engine, storage, which, at, areas, args, owner, repository, work_dir)
    except LookupError as exc:
        sys.stderr.write(f"openaddr collect: {exc.args[0] if exc.args else exc}\n")
        return 1
    except sqlalchemy.exc.SQLAlchemyError as exc:
        sys.stderr.write(f"openaddr collect: cannot use the Machine database: {str(exc).splitlines()[0]}\n")
        return 1
    finally:
        engine.dispose()


def _collect(
    engine: sa.Engine,
    storage: Storage,
    which: int | str,
    at: dt.datetime | None,
    areas: list[str] | None,
    args: argparse.Namespace,
    owner: str,
    repository: str,
    work_dir: Path | None,
) -> int:
    """Build and publish (``--no-record``: keep the parts for ``--record-only``), then print."""
    from openaddr.collect import collect
    from openaddr.collect.areas import AREAS
    from openaddr.collect.parts import parts_prefix, save_parts
    from openaddr.db.runs import utcnow

    if args.no_record and at is None:
        at = utcnow().replace(microsecond=0)  # whole seconds: the --at the other parts are given
    result = collect(
        engine,
        storage,
        which,
        owner=owner,
        repository=repository,
        work_dir=work_dir,
        now=at,
        dedupe=args.dedupe,
        areas=areas,
        record=not args.no_record,
    )
    out = sys.stdout
    out.write(f"Set {result.set_id}: {len(result.runs)} runs collected\n")
    _print_collections(result.collections, result.dropped)
    for run_id, reason in sorted(result.skipped.items()):
        out.write(f"Run {run_id} left out: {reason}\n")
    for run_id, reason in sorted(result.geojson_skipped.items()):
        out.write(f"Run {run_id} not in the GeoJSON collections: {reason}\n")
    features = sum(result.features_dropped.values())
    if features:
        out.write(
            f"{features} features without a usable geometry left out of the GeoParquet collections, "
            f"from {len(result.features_dropped)} runs\n"
        )
    _print_dedupe(result.dedupe)
    if args.no_record:
        assert at is not None
        built = areas or list(AREAS)
        save_parts(storage, result, built, now=at)
        prefix = parts_prefix(result.set_id, at)
        stored = set(storage.list_keys(prefix))
        left = [area for area in AREAS if f"{prefix}/{area}.json" not in stored]
        stamp = at.isoformat()
        out.write(
            f"Not recorded: set {result.set_id} at {stamp}, areas {', '.join(built)} (kept in {prefix}/)\n"
        )
        if left:
            out.write(
                f"Areas left to build: {', '.join(left)}: openaddr collect {result.set_id} --no-record "
                f"--at {stamp} --area AREA\n"
            )
        out.write(
            f"Record every area with: openaddr collect {result.set_id} --record-only --at {stamp} [--dedupe]\n"
        )
    return 0


def _record_parts(
    engine: sa.Engine,
    storage: Storage,
    which: int | str,
    at: dt.datetime,
    dedupe: bool,
    owner: str,
    repository: str,
    work_dir: Path | None,
) -> int:
    """``--record-only``: the split run's parts read back, the dedupe if asked, every collection recorded."""
    from openaddr.collect import dedupe_published, record_collections
    from openaddr.collect.parts import delete_parts, load_parts
    from openaddr.db.collect import collect_set

    set_id = int(collect_set(engine, which, owner=owner, repository=repository)["id"])
    parts = load_parts(storage, set_id, now=at)
    collections = list(parts.collections)
    stats: Mapping[str, DedupeStats] = {}
    if dedupe:
        processed, stats = dedupe_published(
            engine,
            storage,
            set_id,
            parts.members,
            now=at,
            owner=owner,
            repository=repository,
            work_dir=work_dir,
        )
        collections += processed
    record_collections(engine, collections, now=at)
    delete_parts(storage, set_id, now=at)
    out = sys.stdout
    out.write(f"Set {set_id}: {len(parts.runs)} runs collected\n")
    _print_collections(collections, parts.dropped)
    _print_dedupe(stats)
    out.write(
        f"Recorded {len(collections)} collections of set {set_id} at {at.isoformat()} as the current ones\n"
    )
    return 0


def housekeeping_command(args: argparse.Namespace, settings: Settings) -> int:
    """``openaddr housekeeping``: delete the runs past retention that no rule keeps, with their files
    (:func:`openaddr.housekeeping.sweep`), then print the counts; ``--dry-run`` deletes nothing.

    The database and storage come from the options, else ``OPENADDR_DATABASE_URL`` and ``OPENADDR_RESULTS``;
    naming neither is bad usage (exit status 2), never a local default.

    :return: 0 when swept, 1 when storage or the database failed (the message says what was kept), 2 bad usage
    """
    import datetime as dt

    def usage(message: str) -> int:
        return _usage("housekeeping", message)

    places = _database_and_storage("housekeeping", args, settings)
    if isinstance(places, int):
        return places
    database, storage_url = places
    days = settings.retention_days if args.retention_days is None else args.retention_days
    if days < 1:
        return usage(f"--retention-days must be at least 1, not {days}")
    if args.batch_size < 1:
        return usage(f"--batch-size must be at least 1, not {args.batch_size}")

    import sqlalchemy.exc

    from openaddr.db import make_engine
    from openaddr.db.runs import utcnow
    from openaddr.housekeeping import SweepError, sweep
    from openaddr.storage import open_storage

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    storage = open_storage(storage_url, public_url=settings.results_public_url)
    engine = make_engine(database)
    try:
        result = sweep(
            engine,
            storage,
            now=utcnow(),
            retention=dt.timedelta(days=days),
            batch_size=args.batch_size,
            dry_run=args.dry_run,
        )
    except SweepError as exc:
        sys.stderr.write(f"openaddr housekeeping: {exc}\n")
        return 1
    except sqlalchemy.exc.SQLAlchemyError as exc:
        sys.stderr.write(
            f"openaddr housekeeping: cannot use the Machine database: {str(exc).splitlines()[0]}\n"
        )
        return 1
    finally:
        engine.dispose()
    kept = ", ".join(f"{count} {rule}" for rule, count in sorted(result.kept.items()) if count) or "none"
    sys.stdout.write(
        f"{'Dry run: would delete' if result.dry_run else 'Deleted'} {result.runs_deleted} runs recorded before "
        f"{result.cutoff.isoformat()}, {result.files_deleted} files, {result.bytes_freed} bytes; "
        f"old runs kept: {kept}\n"
    )
    return 0


def _print_collections(collections: Sequence[Collection], dropped: Mapping[int, int]) -> None:
    out = sys.stdout
    for item in collections:
        out.write(f"{item.name}\t{item.content_length} bytes\t{item.address_count} addresses\t{item.url}\n")
    rows = sum(dropped.values())
    if rows:
        out.write(f"{rows} rows dropped for invalid coordinates, from {len(dropped)} runs\n")


def _print_dedupe(stats: Mapping[str, DedupeStats]) -> None:
    for attr, figures in stats.items():
        sys.stdout.write(
            f"Dedupe {attr or 'open'}: {figures.rows} rows, {figures.dropped_global} dropped from global, "
            f"{figures.dropped_regional} from their region; {figures.shards} shards, largest {figures.largest_shard}\n"
        )


if __name__ == "__main__":
    sys.exit(main())
