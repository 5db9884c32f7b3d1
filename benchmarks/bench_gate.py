"""The quality gate's cost per run (machine-ci.md §10): :func:`openaddr.quality.gate_warning` on PostgreSQL.

Creates a database ``openaddr_bench_<random>`` on ``--postgres`` (default the local server, trust authentication),
migrates it, inserts ``--entries`` layer entries of ``--runs`` merged successful runs each (default 20,000 × 10 =
200,000 runs), then times ``--calls`` gate calls (default 1,000) on distinct entries, each judging a run that
dropped to 85 % (so each call finds its baseline and builds a warning). Prints the mean time per call and the plan
of the baseline query. The database is dropped at the end. Never asserts.

The statistics the gate reads (count, filled attributes, invalid and null-island coordinates) are not computed
here: the conform counts them in the pass that writes the outputs (``openaddr.outputs.Stats``), before this issue.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import secrets
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openaddr.db import make_engine, upgrade  # noqa: E402
from openaddr.db.schema import runs  # noqa: E402
from openaddr.quality import gate_warning  # noqa: E402

STATS = {"filled": {}, "invalid_coordinates": 0, "null_island": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=1_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # each held run logs a line

    admin_url = sa.make_url(args.postgres)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"openaddr_bench_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name)
    try:
        upgrade(url)
        engine = make_engine(url, poolclass=sa.NullPool)
        t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        full = {**STATS, "count": 1000, "filled": {"number": 1000, "street": 1000}}
        rows = [
            {
                "source_path": f"sources/bench/{entry}.json",
                "source_layer": "addresses",
                "layer_name": "primary",
                "status": True,
                "is_merged": True,
                "address_count": 1000,
                "stats": full,
                "datetime_start": t0 + dt.timedelta(days=k),
                "datetime_tz": t0 + dt.timedelta(days=k),
            }
            for entry in range(args.entries)
            for k in range(args.runs)
        ]
        with engine.begin() as connection:
            connection.execute(sa.insert(runs), rows)
            connection.exec_driver_sql("ANALYZE runs")
        shrunk = {**STATS, "count": 850, "filled": {"number": 850, "street": 850}}
        step = max(1, args.entries // args.calls)
        with engine.connect() as connection:
            start = time.perf_counter()
            for call in range(args.calls):
                warning = gate_warning(
                    connection,
                    -1,
                    shrunk,
                    source_path=f"sources/bench/{(call * step) % args.entries}.json",
                    source_layer="addresses",
                    layer_name="primary",
                )
            seconds = time.perf_counter() - start
            plan = connection.exec_driver_sql(
                "EXPLAIN SELECT id FROM runs WHERE source_path = 'sources/bench/1.json' AND source_layer = "
                "'addresses' AND layer_name = 'primary' AND status IS true AND is_merged IS true ORDER BY "
                "datetime_tz DESC, id DESC LIMIT 1"
            ).all()
        engine.dispose()
        print(f"{len(rows):,} runs, {args.calls:,} gate calls: {1000 * seconds / args.calls:.2f} ms per call")
        print(f"last warning: {warning}")
        print("\n".join(line for (line,) in plan))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
