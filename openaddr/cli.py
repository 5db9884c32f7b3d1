"""The ``openaddr`` command line: validate, test-source, conform, process-one, db-upgrade, collect.

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
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from openaddr.settings import Settings


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
        help="also build the -processed collections without cross-source duplicates (README: the dedupe)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    _raise_csv_field_limit()
    # Arrow's default allocator (jemalloc) keeps freed batches mapped for a while; with batches streaming through
    # several processes that showed as ~40 MiB more peak memory. Must be set before pyarrow is imported.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    for stream in (sys.stdout, sys.stderr):  # text from sources and data must never fail to print
        if isinstance(stream, io.TextIOWrapper):  # not when replaced, e.g. by a test's capture
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage
        return int(exc.code or 0)
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
    parser.error(f"unknown command {args.command}")
    return 2


def collect_command(args: argparse.Namespace, settings: Settings) -> int:
    """``openaddr collect SET``: build and publish the collections of a set, then print one line per collection
    (name, size, addresses, URL) and what was dropped or left out.

    The database and storage come from the options, else ``OPENADDR_DATABASE_URL`` and ``OPENADDR_RESULTS``;
    naming neither is bad usage (exit status 2), never a local default.

    :return: 0 when published, 1 when the set cannot be collected (unknown, incomplete) or publishing failed
    """
    from pathlib import Path

    def usage(message: str) -> int:
        sys.stderr.write(f"openaddr collect: error: {message}\n")
        return 2

    database = args.database or settings.database_url
    storage_url = args.storage or settings.results
    if not database:
        return usage("collect needs --database (or OPENADDR_DATABASE_URL)")
    if not storage_url:
        return usage("collect needs --storage (or OPENADDR_RESULTS)")
    which: int | str = args.set
    if args.set != "latest":
        if not args.set.isdigit():
            return usage(f"SET must be a set id or 'latest', not {args.set!r}")
        which = int(args.set)
    owner, _, repository = args.repository.partition("/")
    if not owner or not repository or "/" in repository:
        return usage(f"--repository must be OWNER/NAME, not {args.repository!r}")

    import sqlalchemy.exc

    from openaddr.collect import collect
    from openaddr.db import make_engine
    from openaddr.storage import open_storage

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    storage = open_storage(storage_url, public_url=args.public_url or settings.results_public_url)
    work_dir = Path(args.work_dir) if args.work_dir else settings.scratch
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database)
    try:
        result = collect(
            engine, storage, which, owner=owner, repository=repository, work_dir=work_dir, dedupe=args.dedupe
        )
    except LookupError as exc:
        sys.stderr.write(f"openaddr collect: {exc.args[0] if exc.args else exc}\n")
        return 1
    except sqlalchemy.exc.SQLAlchemyError as exc:
        sys.stderr.write(f"openaddr collect: cannot use the Machine database: {str(exc).splitlines()[0]}\n")
        return 1
    finally:
        engine.dispose()
    out = sys.stdout
    out.write(f"Set {result.set_id}: {len(result.runs)} runs collected\n")
    for item in result.collections:
        out.write(f"{item.name}\t{item.content_length} bytes\t{item.address_count} addresses\t{item.url}\n")
    dropped = sum(result.dropped.values())
    if dropped:
        out.write(f"{dropped} rows dropped for invalid coordinates, from {len(result.dropped)} runs\n")
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
    for attr, figures in result.dedupe.items():
        out.write(
            f"Dedupe {attr or 'open'}: {figures.rows} rows, {figures.dropped_global} dropped from global, "
            f"{figures.dropped_regional} from their region; {figures.shards} shards, largest {figures.largest_shard}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
