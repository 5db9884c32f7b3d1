"""The ``openaddr`` command line: validate, test-source, conform, process-one, db-upgrade.

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
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
