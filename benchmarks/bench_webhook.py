"""Webhook load benchmark (``make bench-webhook``; never part of the tests): signed deliveries at a fixed rate.

For each backend (``--backend``, default PostgreSQL then SQLite):

1. **Machine database**: PostgreSQL database ``openaddr_bench_webhook`` (``--database``) created on
   ``--admin-url`` and migrated (dropped again at the end), or a SQLite file under ``--out``.
2. **Fakes on loopback, in this process**: GitHub (:class:`devstack.github.DemoGitHub`: ``openaddresses/
   openaddresses`` with the demo sources on ``master`` and ``--commits`` commits, each on a branch of its own,
   changing the note of one demo source) and Airflow's token and trigger endpoints
   (:class:`devstack.fake_airflow.FakeAirflow`).
3. **The webhook as in production**: ``gunicorn 'webhook:create_app()'`` with ``--workers`` (4) workers of
   ``--worker-class`` (``sync``; or ``gthread`` with ``--gthreads`` threads each), configured through the
   environment only, access log off.
4. **Deliveries from a second process** (this script with ``--send``): ``--rate`` per second (100) for
   ``--duration`` seconds (30), open loop: delivery *i* is due at ``i / rate`` seconds from the start and sent
   then by a pool of ``--threads`` threads (64) whatever the earlier ones are doing; its latency is measured
   from that scheduled time to the end of the answer (so a queue in front of the webhook, or in the sender's own
   pool once every thread waits, counts). Bodies and signatures are made before the clock starts and sent with
   ``http.client`` (a connection per thread, kept alive when the server allows), so the sender costs well under a
   millisecond of CPU a delivery; it reports the rate it achieved and how late its sends started. The mix
   (seeded, ``--seed``): ``--pings`` (30 %) pings, ``--redeliveries`` (5 %) redeliveries of a push sent at
   least a second earlier (the same ``X-GitHub-Delivery`` and body), the rest pushes of a changed source, each
   with a new delivery id.
5. **Checks**: *errors* = exceptions, answers other than 200, a ping not answered ``pong``, a push answered
   without a job, a redelivery answered with another job than its original's. In the database and at the
   fakes: every push delivery id has exactly one job row, every job exactly one ``openaddr_ci`` DAG run and
   one *pending* status, and there are no more jobs, DAG runs or statuses than push deliveries (redeliveries
   made nothing new; pings are not recorded, machine-ci.md §2.1 step 5, so they are counted by their answers).
   *lost* = push deliveries without a job, jobs without their DAG run or status, pings not answered;
   *doubled* = jobs, DAG runs or pending statuses beyond one per push delivery.

Printed per backend: deliveries sent and the rate achieved, latency p50/p99/max (all, and per kind), errors,
lost, doubled, the CPU a delivery of each party sharing the cores (gunicorn's processes; this process, which runs
the fakes; the sender; the PostgreSQL backends of the bench database), and whether the target is met: **p99 ≤ 50 ms, 0 errors, 0 lost, 0 doubled** on the 2-core
machine. It never asserts timing; it exits non-zero only when a delivery errs, is lost or doubled.

Usage::

    python benchmarks/bench_webhook.py [--rate 100] [--duration 30] [--backend postgresql sqlite]
        [--workers 4] [--worker-class sync|gthread] [--gthreads 4] [--threads 64] [--out bench-out/webhook]
        [--profile]

``--profile`` runs each gunicorn worker under pyinstrument (one HTML profile per worker in ``--out``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import psutil
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack.fake_airflow import FakeAirflow  # noqa: E402
from devstack.github import DemoGitHub, add_demo_repository, commit_files  # noqa: E402
from devstack.procs import free_port  # noqa: E402
from devstack.push import changed_source, push_payload  # noqa: E402
from openaddr.db import make_engine, upgrade  # noqa: E402
from openaddr.db.schema import jobs  # noqa: E402

SECRET = "bench-webhook-secret"
AIRFLOW_USER, AIRFLOW_PASSWORD = "bench", "bench-password"
TOKEN = "bench-github-token"
DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TARGET_P99_MS = 50.0
#: A redelivery repeats a push sent at least this many seconds earlier (GitHub redelivers much later).
REDELIVERY_AFTER = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries per second (%(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending (%(default)s)")
    parser.add_argument(
        "--backend", nargs="+", choices=("postgresql", "sqlite"), default=["postgresql", "sqlite"]
    )
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (%(default)s)")
    parser.add_argument(
        "--worker-class", default="sync", choices=("sync", "gthread"), help="gunicorn's (%(default)s)"
    )
    parser.add_argument("--gthreads", type=int, default=4, help="threads of a gthread worker (%(default)s)")
    parser.add_argument("--threads", type=int, default=64, help="sender threads (%(default)s)")
    parser.add_argument("--pings", type=float, default=0.30, help="share of pings (%(default)s)")
    parser.add_argument(
        "--redeliveries", type=float, default=0.05, help="share of redeliveries (%(default)s)"
    )
    parser.add_argument("--commits", type=int, default=20, help="distinct pushed commits (%(default)s)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="PostgreSQL to create the database on")
    parser.add_argument("--database", default="openaddr_bench_webhook", help="its name (%(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "webhook")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles of the workers")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time each request's phases and the workers' GC pauses; print where the slowest 1 %% waited",
    )
    parser.add_argument("--send", type=Path, help=argparse.SUPPRESS)  # the sender process's deliveries
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    return parser


# The sender (second process) ----------------------------------------------------------------------------------


def send_all(deliveries: Path, url: str, threads: int, results: Path) -> None:
    """Send each delivery at its scheduled time (open loop) and write one result line per delivery, then a line of
    the sender's own figures (``{"sender": …}``: achieved rate, how late sends started, its CPU seconds).

    Bodies and signatures are ready before the clock starts; each thread keeps an ``http.client`` connection (kept
    alive when the server allows, else reopened), so the sender's own cost per delivery stays small beside the
    webhook's and its lateness is measured and reported rather than hidden in the latency.
    """
    items = [json.loads(line) for line in deliveries.read_text().splitlines()]
    bodies = [item["body"].encode() for item in items]
    target = urllib.parse.urlsplit(url)
    local = threading.local()
    out: list[dict[str, Any]] = [{} for _ in items]
    started: list[float] = [0.0 for _ in items]

    def post(item: dict[str, Any]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            connection = getattr(local, "connection", None)
            fresh = connection is None
            if connection is None:
                connection = local.connection = http.client.HTTPConnection(
                    target.hostname, target.port, timeout=30
                )
            try:
                connection.request("POST", "/hook", body=bodies[item["i"]], headers=item["headers"])
                answer = connection.getresponse()
                data = answer.read()
                if answer.will_close:
                    connection.close()
                    local.connection = None
                return answer.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept connection the server closed meanwhile: retried once on a new one (nothing was handled).
                connection.close()
                local.connection = None
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def send(item: dict[str, Any], due: float) -> None:
        started[item["i"]] = time.monotonic()
        result: dict[str, Any] = {"i": item["i"], "late": started[item["i"]] - due, "due": due}
        try:
            status, data = post(item)
            result["status"] = status
            with contextlib.suppress(ValueError):
                body = json.loads(data)
                if isinstance(body, dict):
                    result["answer"] = {key: body.get(key) for key in ("id", "message", "error")}
        except (OSError, http.client.HTTPException) as error:
            local.connection = None
            result["exception"] = repr(error)
        result["latency"] = time.monotonic() - due
        out[item["i"]] = result

    cpu_before = time.process_time()
    start = time.monotonic() + 0.5
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for item in items:
            due = start + item["at"]
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(send, item, due)
    span = max(started) - min(started)
    figures = {
        "rate": (len(items) - 1) / span if span > 0 else float("nan"),
        "late_p99": percentile([result["late"] * 1000 for result in out], 0.99),
        "late_max": max(result["late"] * 1000 for result in out),
        "cpu": time.process_time() - cpu_before,
    }
    results.write_text("".join(json.dumps(result) + "\n" for result in [*out, {"sender": figures}]))


# The harness --------------------------------------------------------------------------------------------------


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def make_database(backend: str, args: argparse.Namespace) -> str:
    if backend == "sqlite":
        path = args.out / "machine.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    else:
        admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            connection.exec_driver_sql(f'CREATE DATABASE "{args.database}"')
        admin.dispose()
        url = sa.make_url(args.admin_url).set(database=args.database).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def drop_database(backend: str, args: argparse.Namespace) -> None:
    if backend != "postgresql":
        return
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    admin.dispose()


def make_deliveries(github: DemoGitHub, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The schedule: pings, pushes of ``--commits`` commits (each on a branch of its own) and redeliveries."""
    repository = github.repositories[("openaddresses", "openaddresses")]
    base = repository.branches["master"]
    paths = sorted(path for path in repository.files(base) if path.startswith("sources/"))
    repo_json = github.repository_json(repository)
    payloads = []
    for k in range(args.commits):
        path = paths[k % len(paths)]
        text = changed_source(repository.files(base)[path].decode(), f"bench change {k}")
        made = commit_files(github, repository, {path: text}, f"bench-{k}", f"Bench change {k}", parent=base)
        payloads.append(json.dumps(push_payload(repo_json, made, f"bench-{k}")))
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": repo_json})
    rng = random.Random(args.seed)
    count = int(args.rate * args.duration)
    deliveries: list[dict[str, Any]] = []
    pushes: list[int] = []
    for i in range(count):
        at = i / args.rate
        draw = rng.random()
        earlier = [j for j in pushes[-int(args.rate * 5) :] if deliveries[j]["at"] <= at - REDELIVERY_AFTER]
        if draw < args.pings:
            kind, event, body, delivery, original = "ping", "ping", ping, str(uuid.uuid4()), None
        elif draw < args.pings + args.redeliveries and earlier:
            original = rng.choice(earlier)
            kind, event, body = "redelivery", "push", deliveries[original]["body"]
            delivery = deliveries[original]["delivery"]
        else:
            kind, event, body, delivery, original = (
                "push",
                "push",
                rng.choice(payloads),
                str(uuid.uuid4()),
                None,
            )
            pushes.append(i)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(body.encode()),
        }
        deliveries.append(
            {
                "i": i,
                "at": at,
                "kind": kind,
                "delivery": delivery,
                "original": original,
                "body": body,
                "headers": headers,
            }
        )
    return deliveries


def start_webhook(
    database_url: str, github: DemoGitHub, airflow: FakeAirflow, args: argparse.Namespace, log: Path
):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "OPENADDR", "OA_WEBHOOK", "GITHUB_WEBHOOK"))
    }
    env.update(
        {
            "GITHUB_WEBHOOK_SECRETS": SECRET,
            "OPENADDR_DATABASE_URL": database_url,
            "OA_WEBHOOK_GITHUB_TOKEN": TOKEN,
            "OA_WEBHOOK_GITHUB_API_URL": github.base_url,
            "OA_WEBHOOK_BASE_URL": f"http://127.0.0.1:{port}",
            "OA_WEBHOOK_AIRFLOW_API_URL": airflow.url,
            "OA_WEBHOOK_AIRFLOW_USERNAME": AIRFLOW_USER,
            "OA_WEBHOOK_AIRFLOW_PASSWORD": AIRFLOW_PASSWORD,
        }
    )
    app = "webhook:create_app()"
    if args.profile:
        env["BENCH_PROFILE_DIR"] = str(args.out)
        app = "benchmarks.bench_webhook:profiled_app()"
    elif args.trace:
        env["BENCH_TRACE_DIR"] = str(args.out)
        app = "benchmarks.bench_webhook:traced_app()"
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.workers),
        "--worker-class", args.worker_class,
        "--threads", str(args.gthreads),
        "--chdir", str(ROOT),
        "--config", "python:webhook.gunicorn_conf",
        "--log-level", "warning",
        app,
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{url}/hook", timeout=2)  # 405: a worker answers
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"gunicorn did not answer in 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    # Every worker imports the app lazily on its first request: warm them all (not measured).
    for _ in range(args.workers * 4):
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{url}/hook", timeout=5)
    return process, url


def profiled_app() -> Any:
    """``webhook:create_app()`` with each worker's requests under pyinstrument (``--profile``)."""
    import atexit

    from pyinstrument import Profiler

    from webhook import create_app

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    app = create_app()
    folder = Path(os.environ["BENCH_PROFILE_DIR"])

    @app.before_request
    def _start() -> None:
        if not profiler.is_running:
            profiler.start()

    @app.teardown_request
    def _stop(exc: BaseException | None) -> None:
        if profiler.is_running:
            profiler.stop()

    def _write() -> None:
        if profiler.last_session is not None:
            (folder / f"profile-{os.getpid()}.html").write_text(profiler.output_html())
            (folder / f"profile-{os.getpid()}.txt").write_text(profiler.output_text(unicode=True))

    atexit.register(_write)
    # gunicorn ends a worker with SIGTERM → SystemExit runs atexit; SIGQUIT would not.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return app


#: The phases ``--trace`` times: (module, attribute) of the functions a push goes through, by name.
TRACED = {
    "lookup": ("webhook.hook", "_recorded"),
    "compare": ("webhook.changes", "push_changed_paths"),
    "contents": ("webhook.changes", "fetch_contents"),
    "number": ("openaddr.db.jobs", "_next_job_sequence"),
    "insert": ("webhook.hook", "create_job"),
    "trigger": ("webhook.trigger", "AirflowTrigger.trigger"),
    "status": ("webhook.hook", "_post_status"),
}


def traced_app() -> Any:
    """``webhook:create_app()`` with each request's phases timed (:data:`TRACED`, wall seconds, nested phases
    counted in their parent too) and the worker's GC pauses recorded (``gc.callbacks``); one JSON line per request
    in ``trace-<pid>.jsonl`` (``--trace``), written when the worker ends."""
    import atexit
    import gc
    import importlib

    from flask import g, request

    from webhook import create_app

    app = create_app()
    folder = Path(os.environ["BENCH_TRACE_DIR"])
    records: list[dict[str, Any]] = []
    pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
    local = threading.local()

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                phases = getattr(local, "phases", None)
                if phases is not None:
                    phases[name] = phases.get(name, 0.0) + time.monotonic() - began

        return wrapper

    for name, (module_name, attribute) in TRACED.items():
        owner: Any = importlib.import_module(module_name)
        *path, last = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, last, timed(name, getattr(owner, last)))

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            local.gc_start = time.monotonic()
        elif getattr(local, "gc_start", None) is not None:
            pauses.append((local.gc_start, time.monotonic() - local.gc_start, info["generation"]))
            local.gc_start = None

    gc.callbacks.append(on_gc)

    @app.before_request
    def _start() -> None:
        g.trace_start = time.monotonic()
        local.phases = {}

    @app.teardown_request
    def _stop(exc: BaseException | None) -> None:
        start = g.pop("trace_start", None)
        if start is None:
            return
        records.append(
            {
                "delivery": request.headers.get("X-GitHub-Delivery"),
                "event": request.headers.get("X-GitHub-Event"),
                "start": start,
                "end": time.monotonic(),
                "phases": local.phases,
                "pid": os.getpid(),
            }
        )
        local.phases = None

    def _write() -> None:
        for record in records:
            record["gc"] = [
                [round(seconds, 6), generation]
                for began, seconds, generation in pauses
                if record["start"] <= began <= record["end"]
            ]
        lines = [json.dumps(record) for record in records]
        lines.append(json.dumps({"pauses": pauses, "pid": os.getpid()}))
        (folder / f"trace-{os.getpid()}.jsonl").write_text("".join(line + "\n" for line in lines))

    atexit.register(_write)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return app


def print_trace(folder: Path, deliveries: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """Where the slowest 1 % of deliveries spent their time, from the workers' traces (``--trace``): waiting to be
    taken by a worker (from the due time to Flask's first line), each traced phase, GC pauses during the request,
    and the rest; then every GC pause of the workers by generation."""
    traces: dict[str, list[dict[str, Any]]] = {}
    pauses: list[tuple[float, float, int]] = []
    for path in sorted(folder.glob("trace-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "pauses" in record:
                pauses += [tuple(pause) for pause in record["pauses"]]
            elif record.get("delivery"):
                traces.setdefault(record["delivery"], []).append(record)
    rows = []
    for item, result in zip(deliveries, results, strict=True):
        if "due" not in result:
            continue
        done = result["due"] + result["latency"]
        # A redelivery shares its delivery id with its push: the trace whose request ended last before done.
        candidates = [t for t in traces.get(item["delivery"], []) if t["end"] <= done + 0.001]
        if not candidates:
            continue
        trace = max(candidates, key=lambda t: t["end"])
        service = trace["end"] - trace["start"]
        gc_time = sum(seconds for seconds, _ in trace["gc"])
        rows.append(
            {
                "kind": item["kind"],
                "latency": result["latency"],
                "queue": trace["start"] - result["due"],
                "service": service,
                "after": done - trace["end"],
                "gc": gc_time,
                "phases": trace["phases"],
            }
        )
    if not rows:
        print("trace: no requests traced")
        return
    rows.sort(key=lambda row: row["latency"])
    slow = rows[-max(1, len(rows) // 100) :]
    typical = rows[: len(rows) // 2]

    def mean(values: list[float]) -> float:
        return 1000 * statistics.fmean(values) if values else 0.0

    print(
        f"trace ({len(rows)} deliveries matched; ms, mean of the slowest 1 % ({len(slow)}) | of the fastest half):"
    )
    for key in ("latency", "queue", "service", "after", "gc"):
        print(f"  {key:<10} {mean([r[key] for r in slow]):7.1f} | {mean([r[key] for r in typical]):6.1f}")
    names = sorted({name for row in rows for name in row["phases"]})
    for name in names:
        print(f"  {name:<10} {mean([r['phases'].get(name, 0.0) for r in slow]):7.1f} | "
              f"{mean([r['phases'].get(name, 0.0) for r in typical]):6.1f}")  # fmt: skip
    kinds: dict[str, int] = {}
    for row in slow:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    print(f"  slowest 1 % by kind: {kinds}")
    for generation in (0, 1, 2):
        mine = [seconds * 1000 for _, seconds, gen in pauses if gen == generation]
        if mine:
            print(f"  GC generation {generation}: {len(mine)} pauses, total {sum(mine):.0f} ms, "
                  f"p99 {percentile(mine, 0.99):.2f} ms, max {max(mine):.1f} ms")  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its children (gunicorn's master and workers)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        master = psutil.Process(pid)
        for process in [master, *master.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def postgres_backends(database: str) -> list[psutil.Process]:
    """The PostgreSQL server processes serving ``database`` (their titles name it), for their CPU."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("postgres:") and f" {database} " in f"{title} ":
                found.append(process)
    return found


def own_cpu(processes: list[psutil.Process]) -> dict[int, float]:
    """User and system CPU seconds of each process, by pid."""
    found = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            found[process.pid] = times.user + times.system
    return found


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`own_cpu` readings (a process new since counts from 0)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]


def check(
    deliveries: list[dict[str, Any]],
    results: list[dict[str, Any]],
    database_url: str,
    github: DemoGitHub,
    airflow: FakeAirflow,
) -> dict[str, Any]:
    """Errors, lost and doubled deliveries (module docstring, step 5)."""
    errors: list[str] = []
    lost: list[str] = []
    doubled: list[str] = []
    job_of: dict[str, str] = {}
    for item, result in zip(deliveries, results, strict=True):
        answer = result.get("answer") or {}
        if "exception" in result:
            errors.append(f"{item['kind']} {item['i']}: {result['exception']}")
        elif result.get("status") != 200:
            errors.append(f"{item['kind']} {item['i']}: HTTP {result.get('status')} {answer}")
        elif item["kind"] == "ping" and answer.get("message") != "pong":
            errors.append(f"ping {item['i']}: {answer}")
        elif item["kind"] == "push" and not answer.get("id"):
            errors.append(f"push {item['i']}: no job in {answer}")
        if item["kind"] == "push" and answer.get("id"):
            job_of[item["delivery"]] = answer["id"]
        if item["kind"] == "ping" and answer.get("message") != "pong":
            lost.append(f"ping {item['i']} not answered")
    for item, result in zip(deliveries, results, strict=True):
        if item["kind"] == "redelivery" and result.get("status") == 200:
            original = job_of.get(item["delivery"])
            got = (result.get("answer") or {}).get("id")
            if got != original:
                errors.append(f"redelivery {item['i']}: job {got}, its original's {original}")
    push_ids = {item["delivery"] for item in deliveries if item["kind"] == "push"}
    engine = make_engine(database_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.id, jobs.c.github_delivery_id, jobs.c.airflow_dag_run_id)
        ).all()
    engine.dispose()
    per_delivery: dict[str, int] = {}
    for row in rows:
        per_delivery[row.github_delivery_id] = per_delivery.get(row.github_delivery_id, 0) + 1
    for delivery in push_ids:
        count = per_delivery.get(delivery, 0)
        if count == 0:
            lost.append(f"push delivery {delivery}: no job")
        elif count > 1:
            doubled.append(f"push delivery {delivery}: {count} jobs")
    extra = [row for row in rows if row.github_delivery_id not in push_ids]
    doubled += [f"job {row.id} of no push delivery ({row.github_delivery_id})" for row in extra]
    runs = dict(airflow.runs)
    for row in rows:
        if row.airflow_dag_run_id not in runs:
            lost.append(f"job {row.id}: no DAG run")
    job_runs = {row.airflow_dag_run_id for row in rows}
    doubled += [f"DAG run {run_id} without a job" for run_id in runs if run_id not in job_runs]
    pending: dict[str, int] = {}
    for status in github.statuses:
        if status["state"] == "pending":
            url = (status.get("target_url") or "").rsplit("/", 1)[-1]
            pending[url] = pending.get(url, 0) + 1
    for row in rows:
        count = pending.get(row.id, 0)
        if count == 0:
            lost.append(f"job {row.id}: no pending status")
        elif count > 1:
            doubled.append(f"job {row.id}: {count} pending statuses")
    return {
        "errors": errors,
        "lost": lost,
        "doubled": doubled,
        "jobs": len(rows),
        "dag_runs": len(runs),
        "pending": sum(pending.values()),
        "statuses": len(github.statuses),
    }


def run_case(backend: str, args: argparse.Namespace) -> bool:
    out = args.out
    database_url = make_database(backend, args)
    github = DemoGitHub(out / "github")
    add_demo_repository(github, ROOT / "demo")
    airflow = FakeAirflow(AIRFLOW_USER, AIRFLOW_PASSWORD)
    deliveries = make_deliveries(github, args)
    schedule = out / "deliveries.jsonl"
    schedule.write_text("".join(json.dumps(item) + "\n" for item in deliveries))
    results_path = out / f"results-{backend}.jsonl"
    process, url = start_webhook(database_url, github, airflow, args, out / f"gunicorn-{backend}.log")
    try:
        cpu_before = cpu_seconds(process.pid)
        harness_before = own_cpu([psutil.Process()])
        postgres_before = own_cpu(postgres_backends(args.database) if backend == "postgresql" else [])
        began = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--send",
                str(schedule),
                "--url",
                url,
                "--threads",
                str(args.threads),
                "--results",
                str(results_path),
            ],  # fmt: skip
            check=True,
        )
        wall = time.monotonic() - began
        cpu = cpu_seconds(process.pid) - cpu_before
        harness_cpu = cpu_since(harness_before, own_cpu([psutil.Process()]))
        postgres_cpu = cpu_since(
            postgres_before, own_cpu(postgres_backends(args.database) if backend == "postgresql" else [])
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    sender = results.pop()["sender"]
    found = check(deliveries, results, database_url, github, airflow)
    github.close()
    airflow.close()
    drop_database(backend, args)
    latencies = [r["latency"] * 1000 for r in results if "latency" in r]
    by_kind: dict[str, list[float]] = {}
    for item, result in zip(deliveries, results, strict=True):
        by_kind.setdefault(item["kind"], []).append(result["latency"] * 1000)
    p50, p99, worst = percentile(latencies, 0.50), percentile(latencies, 0.99), max(latencies)
    counts = {kind: len(values) for kind, values in by_kind.items()}
    print(f"\n== {backend}: {len(deliveries)} deliveries in {args.duration:.0f} s at {args.rate:.0f}/s "
          f"({counts.get('push', 0)} pushes, {counts.get('ping', 0)} pings, "
          f"{counts.get('redelivery', 0)} redeliveries), gunicorn {args.workers} {args.worker_class} workers"
          + (f" of {args.gthreads} threads" if args.worker_class == "gthread" else ""))  # fmt: skip
    print(f"latency from the scheduled time: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms, "
          f"mean {statistics.fmean(latencies):.1f} ms")  # fmt: skip
    for kind, values in sorted(by_kind.items()):
        print(f"  {kind:<11} p50 {percentile(values, 0.5):6.1f} ms  p99 {percentile(values, 0.99):6.1f} ms  "
              f"max {max(values):6.1f} ms")  # fmt: skip
    print(f"recorded: {found['jobs']} jobs, {found['dag_runs']} DAG runs, {found['pending']} pending statuses "
          f"(sender wall {wall:.1f} s)")  # fmt: skip
    print(f"sender: {sender['rate']:.1f} deliveries/s achieved, sends started late by p99 "
          f"{sender['late_p99']:.1f} ms, max {sender['late_max']:.1f} ms")  # fmt: skip
    per = 1000 / len(deliveries)
    print(f"CPU a delivery: webhook {cpu * per:.1f} ms, fakes (this process) {harness_cpu * per:.1f} ms, "
          f"sender {sender['cpu'] * per:.1f} ms, PostgreSQL {postgres_cpu * per:.1f} ms; "
          f"load average {os.getloadavg()[0]:.2f} at the end")  # fmt: skip
    if args.trace:
        print_trace(out, deliveries, results)
    print(f"{len(found['errors'])} errors; {len(found['lost'])} lost, {len(found['doubled'])} doubled")
    for kind in ("errors", "lost", "doubled"):
        for line in found[kind][:10]:
            print(f"  {kind}: {line}")
    ok = not (found["errors"] or found["lost"] or found["doubled"])
    met = ok and p99 <= TARGET_P99_MS
    print(
        f"target (p99 ≤ {TARGET_P99_MS:.0f} ms, 0 errors, 0 lost, 0 doubled): {'met' if met else 'NOT met'}"
    )
    return ok


def main() -> int:
    args = build_parser().parse_args()
    if args.send:
        send_all(args.send, args.url, args.threads, args.results)
        return 0
    args.out = args.out.resolve()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start")
    ok = True
    for backend in args.backend:
        ok = run_case(backend, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
