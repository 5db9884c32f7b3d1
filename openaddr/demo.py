"""Conform the bundled demo sources (``demo/``) into a local folder: what ``make run`` does until the DAGs land.

Usage: ``python -m openaddr.demo OUT_DIR``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from openaddr.process import LOG_FORMAT, Fetch, run_entry
from openaddr.sources import iter_source_files, load_source

log = logging.getLogger(__name__)

DEMO = Path(__file__).resolve().parent.parent / "demo"


def _bundled(data: Path, state_dir: Path) -> Fetch:
    """A fetch step that takes the bundled file as the download: kept as the run's cache, its MD5 the fingerprint
    (what ``process-one`` does after a real download; the demo must work offline)."""
    from openaddr.download.cache import store_cache

    def fetch(work: Path, state: dict[str, Any]) -> tuple[Path, str | None]:
        state["cache"], fingerprint = store_cache(data, state_dir)
        state["cache time"] = "0:00:00"
        return data, fingerprint

    return fetch


def run_demo(out: Path, demo: Path = DEMO, database_url: str | None = None) -> int:
    """Conform every demo source over its bundled data and record each run in the Machine database (SQLite under
    ``out`` unless ``database_url`` names another); return the number of failed entries."""
    from openaddr.db import make_engine, upgrade
    from openaddr.db.runs import insert_run, layer_digest

    engine = make_engine(database_url or f"sqlite:///{out / 'machine.db'}")
    upgrade(engine)
    failed = 0
    for path in iter_source_files([demo / "sources"]):
        source = load_source(path)
        data = demo / "data" / f"{source.id}.zip"
        for entry in source.entries():
            state_dir = out / source.id / entry.layer / entry.name
            result = run_entry(entry, state_dir, _bundled(data, state_dir))
            run_id = insert_run(
                engine,
                source_path=f"sources/{path.relative_to(demo / 'sources').as_posix()}",
                source_layer=entry.layer,
                layer_name=entry.name,
                layer_digest=layer_digest(source.document.get("coverage"), entry.data),
                state=result.state,
            )
            log.info("Recorded run %d in %s", run_id, engine.url)
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
