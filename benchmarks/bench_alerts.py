"""Alerting's queries at production scale (machine-ci.md §11) on PostgreSQL: a set's summary, the 7-day rule and
the subscribers' source states.

Creates a database ``openaddr_bench_<random>`` on ``--postgres`` (default the local server, trust authentication),
migrates it, records ``--sets`` nightly sets (default 10) of ``--entries`` layer entries each (default 6,000, about
the size of the OpenAddresses corpus), where ``--failing`` of the entries (default 10 %) fail every night and as many
again start failing on the last night, and ``--subscriptions`` confirmed subscriptions (default 500). Then times
:func:`openaddr.db.alerts.set_outcome` on the last set, :func:`openaddr.db.alerts.entries_without_success` and
:func:`openaddr.db.alerts.source_broken` over the subscribed paths. Prints the times. The database is dropped at
the end. Never asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openaddr.db import make_engine, upgrade  # noqa: E402
from openaddr.db.alerts import entries_without_success, set_outcome, source_broken  # noqa: E402
from openaddr.db.schema import runs, sets, subscriptions  # noqa: E402

OK_STATE = {"cache": "c", "sample": "s", "processed": "p", "address count": 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--entries", type=int, default=6_000)
    parser.add_argument("--failing", type=float, default=0.10)
    parser.add_argument("--subscriptions", type=int, default=500)
    args = parser.parse_args()

    admin_url = sa.make_url(args.postgres)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"openaddr_bench_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.set(database=name)
    try:
        upgrade(url)
        engine = make_engine(url, poolclass=sa.NullPool)
        now = dt.datetime.now(dt.UTC)
        failing = int(args.entries * args.failing)
        with engine.begin() as connection:
            for night in range(args.sets):
                when = now - dt.timedelta(days=args.sets - night)
                set_id = connection.execute(
                    sa.insert(sets)
                    .values(owner="o", repository="r", datetime_start=when, datetime_end=when)
                    .returning(sets.c.id)
                ).scalar_one()
                last = night == args.sets - 1
                rows = []
                for entry in range(args.entries):
                    ok = entry >= (2 * failing if last else failing)
                    rows.append(
                        {
                            "source_path": f"sources/bench/{entry}.json",
                            "source_layer": "addresses",
                            "layer_name": "primary",
                            "set_id": set_id,
                            "status": ok,
                            "is_merged": True,
                            "state": OK_STATE if ok else {"cache": "c"},
                            "message": "Everything is fine" if ok else "Failed to produce processed data",
                            "address_count": 1000 if ok else None,
                            "datetime_tz": when,
                        }
                    )
                connection.execute(sa.insert(runs), rows)
            connection.execute(
                sa.insert(subscriptions),
                [
                    {
                        "email": f"s{i}@example.org",
                        "source_path": f"sources/bench/{i * 7 % args.entries}.json",
                        "token": secrets.token_urlsafe(32),
                        "datetime_created": now,
                        "datetime_confirmed": now,
                    }
                    for i in range(args.subscriptions)
                ],
            )
        print(f"{args.sets} sets × {args.entries} entries = {args.sets * args.entries:,} runs")
        start = time.perf_counter()
        outcome = set_outcome(engine, set_id)
        print(
            f"set_outcome: {time.perf_counter() - start:.2f} s "
            f"({outcome['failure']} failures, {len(outcome['new_failures'])} new)"
        )
        start = time.perf_counter()
        broken = entries_without_success(engine, now=now, longer_than=dt.timedelta(days=7))
        print(f"entries_without_success: {time.perf_counter() - start:.2f} s ({len(broken)} entries)")
        paths = {f"sources/bench/{i * 7 % args.entries}.json" for i in range(args.subscriptions)}
        start = time.perf_counter()
        states = source_broken(engine, paths)
        print(f"source_broken: {time.perf_counter() - start:.2f} s ({len(states)} paths)")
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
