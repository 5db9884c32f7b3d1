"""Conform the bundled demo sources (``demo/``) into a local folder: what ``make run`` does until the DAGs land.

Usage: ``python -m openaddr.demo OUT_DIR``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from openaddr.process import LOG_FORMAT, conform_entry, file_md5
from openaddr.sources import iter_source_files, load_source

log = logging.getLogger(__name__)

DEMO = Path(__file__).resolve().parent.parent / "demo"


def run_demo(out: Path, demo: Path = DEMO) -> int:
    """Conform every demo source over its bundled data; return the number of failed entries."""
    failed = 0
    for path in iter_source_files([demo / "sources"]):
        source = load_source(path)
        data = demo / "data" / f"{source.id}.zip"
        for entry in source.entries():
            result = conform_entry(
                entry, data, out / source.id / entry.layer / entry.name, fingerprint=file_md5(data)
            )
            problem = result.state["source problem"]
            log.info(
                "%s: %s, %s rows → %s",
                entry.label,
                problem or "success",
                result.state["address count"],
                result.directory,
            )
            failed += 0 if result.ok else 1
    return failed


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m openaddr.demo``."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    out = Path(args[0] if args else "var/demo").resolve()
    failed = run_demo(out)
    log.info("Outputs in %s", out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
