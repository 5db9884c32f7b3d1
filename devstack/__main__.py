"""``python -m devstack`` (``make run`` / ``make stop``): the Machine on its embedded default.

``python -m devstack [--home var] [--port 8080] [--demo-port 8765] [--github-port 8078] [--webhook-port 8079]
[--once] [--new-set]`` starts the stack (:class:`devstack.stack.Stack`: ``airflow db migrate``, then supervisord
with the demo data server, the fake GitHub (:mod:`devstack.github`), the webhook app (:mod:`devstack.webhook`),
the api-server, scheduler, dag-processor and triggerer), waits until each is healthy, unpauses the DAGs, follows
the batch run over the demo sources and prints what the set recorded. Ctrl-C, SIGTERM or SIGHUP stops everything.
``--stop`` stops the stack of ``--home`` from another shell, also one whose launcher died.

``python -m devstack push [--home var] [PATH]`` sends a signed push delivery for a changed demo source to the
running stack's webhook and follows what it made (:mod:`devstack.push`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from devstack import ROOT, StackError, control, procs
from devstack.airflow_api import ADMIN, parse_time
from devstack.demo import DEFAULT_DEMO_PORT, demo_server, demo_sources
from devstack.github import (
    DEFAULT_GITHUB_PORT,
    MAINTAINER,
    OUTSIDER,
    STATE,
    github_env,
    github_server,
    github_url,
)
from devstack.push import write_stack_file
from devstack.report import collections_report, format_collections, format_report, set_report
from devstack.stack import DAG_IDS, DEFAULT_PORT, Stack
from devstack.webhook import AIRFLOW_USER, DEFAULT_WEBHOOK_PORT, webhook_env, webhook_server, webhook_url

if TYPE_CHECKING:
    import datetime as dt

log = logging.getLogger("devstack")

LOG_FORMAT = "%(asctime)s %(levelname)8s: %(message)s"
BATCH = "openaddr_batch"
#: The DAG the batch's completed set triggers (asset ``openaddr://sets/latest``).
COLLECT = "openaddr_collect"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m devstack``."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Run the Machine on its embedded default (Airflow with SQLite and the LocalExecutor) and "
        "process the bundled demo sources once.",
    )
    parser.add_argument(
        "--home", default=str(ROOT / "var"), help="folder of everything it writes (%(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Airflow UI and REST API (%(default)s)"
    )
    parser.add_argument(
        "--demo-port", type=int, default=DEFAULT_DEMO_PORT, help="the demo data server (%(default)s)"
    )
    parser.add_argument(
        "--github-port",
        type=int,
        default=DEFAULT_GITHUB_PORT,
        help="the fake GitHub the webhook and the tasks use (%(default)s)",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        help=f"the webhook app: runs' pages and files, POST /hook (default: the port of the home's first start, "
        f"else {DEFAULT_WEBHOOK_PORT}; the published runs' URLs carry it)",
    )
    parser.add_argument("--parallelism", type=int, help="task slots (default: airflow.cfg)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds the demo run may take (%(default)s)"
    )
    parser.add_argument("--once", action="store_true", help="stop after the demo set instead of running on")
    parser.add_argument(
        "--new-set",
        action="store_true",
        help="trigger a new demo set even when an earlier start made one today (its runs reuse the earlier "
        "runs' outputs)",
    )
    parser.add_argument("--stop", action="store_true", help="stop the stack running from --home, then exit")
    return parser


def _say(text: str) -> None:
    """What the command reports to its user, on stdout (progress goes to the log on stderr)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM and SIGHUP unwind like Ctrl-C, through the ``with`` block that stops the stack.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def start_demo_set(stack: Stack, new: bool = False, wait: float = 30.0) -> tuple[str, bool]:
    """Unpause the DAGs and find the batch run that processes the demo set.

    Unpausing the ``@daily`` batch makes the scheduler create the run of the latest interval at once, even with
    ``catchup=False``; that run is the demo set. On a later start the same day that run exists already and no
    new one is due: it is shown again, as an earlier one, unless ``new`` asks for a manual run (which copies
    the earlier runs' results: the batch reuses runs of the last 6 days). A run is triggered too when the
    scheduler has created none within ``wait`` seconds.

    The collect DAG is paused first (a DAG an earlier start unpaused stays so) and stays paused until
    :func:`collect_after_held_rerun` triggers it: the asset event of a paused DAG queues no run, so the demo's
    collections are built once, after the quality gate has held the shrunken re-run.

    :return: the run id, and whether it is the run of an earlier start
    """
    stack.unpause(COLLECT, paused=True)
    for dag_id in DAG_IDS:
        if dag_id != COLLECT:
            stack.unpause(dag_id)
    if new:
        return stack.trigger(BATCH), False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        runs = stack.runs(BATCH)
        fresh = [
            run
            for run in runs
            if (queued := parse_time(run.get("queued_at"))) is not None
            and stack.started_at is not None
            and queued >= stack.started_at
        ]
        if fresh:
            log.info("The scheduler started %s run %s", BATCH, fresh[-1]["dag_run_id"])
            return str(fresh[-1]["dag_run_id"]), False
        due = parse_time((stack.dag(BATCH) or {}).get("next_dagrun_run_after"))
        if runs and (due is None or due > stack.started_at):
            return str(runs[-1]["dag_run_id"]), True
        time.sleep(1)
    return stack.trigger(BATCH), False


def held_rerun(home: Path, stack: Stack, site: str, timeout: float) -> bool:
    """The quality gate in the demo: re-run a demo source on a shrunken copy of its data through a signed push to
    the webhook (:func:`devstack.push.shrunk_rerun`) and print the held run, its page and its latest URL.

    :return: whether exactly one run was held
    """
    import requests

    from devstack.push import shrunk_rerun
    from devstack.report import format_held, latest_entry_run

    _say("Re-running a demo source on a shrunken copy of its data (the quality gate should hold it)…")
    try:
        result = shrunk_rerun(home, timeout)
    except (StackError, TimeoutError, requests.RequestException) as error:
        log.error("The shrunken re-run failed: %s", error)
        return False
    held = result["held"]
    latest = latest_entry_run(stack.machine_database_url, held[0]) if held else None
    _say(format_held(result, latest, site))
    if len(held) != 1:
        log.error("The quality gate held %d runs of the shrunken re-run, not one", len(held))
    return len(held) == 1


def collect_after_held_rerun(stack: Stack, timeout: float) -> tuple[str, str]:
    """Unpause the collect DAG and trigger its run over the latest completed set (the demo set), now that the
    quality gate holds the shrunken re-run: the collections take the set's run of that source, not the held one.

    :return: the collect run's id and final state
    """
    stack.unpause(COLLECT)
    collect_run = stack.trigger(COLLECT)
    _say(f"Waiting for collect run {collect_run} (the collections of the set, without the held run)…")
    return collect_run, stack.wait(COLLECT, collect_run, timeout)


def earlier_note(run_id: str, queued: dt.datetime | None, due: dt.datetime | None) -> str:
    """What the report says above a demo set of an earlier start."""

    def when(moment: dt.datetime | None) -> str:
        return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "unknown"

    return (
        f"This is the demo set of an earlier start (batch run {run_id}, queued {when(queued)}); no new "
        f'scheduled run is due before {when(due)}. `make run ARGS="--new-set"` triggers a new one.\n'
    )


#: The webhook port of a home's first start, in the home: the storage's public URL (``/files/`` of the webhook
#: app) is in every published run's URLs, which collect and the site resolve against the storage.
WEBHOOK_PORT_FILE = "webhook-port"


def home_webhook_port(home: Path, asked: int | None) -> int:
    """The webhook port for a start of ``home``: the one of its first start (:func:`run` keeps it in
    :data:`WEBHOOK_PORT_FILE` once the ports are found free),
    which a later start must keep: runs published under another port's ``/files/`` URLs would be left out of
    the collections and their links would break.

    :param asked: ``--webhook-port``, None when not given
    :raises StackError: when ``asked`` is not the home's port
    """
    path = home / WEBHOOK_PORT_FILE
    recorded = int(path.read_text().strip()) if path.is_file() else None
    if recorded is not None and asked is not None and asked != recorded:
        raise StackError(
            f"{home}'s runs were published under {webhook_url(recorded)}/files/ (the webhook port of its first "
            f"start): start it with --webhook-port {recorded}, or use another --home"
        )
    return recorded if recorded is not None else asked if asked is not None else DEFAULT_WEBHOOK_PORT


def run(args: argparse.Namespace) -> int:
    """Start the stack, run the demo set, report; then keep running unless ``args.once``.

    :return: the exit status (0: the demo set succeeded)
    """
    started = time.monotonic()
    home = Path(args.home).resolve()
    control.check_home_free(home)
    args.webhook_port = home_webhook_port(home, args.webhook_port)
    procs.check_port_free(args.port, "Airflow api-server")
    procs.check_port_free(args.demo_port, "demo data server")
    procs.check_port_free(args.github_port, "fake GitHub")
    procs.check_port_free(args.webhook_port, "webhook app")
    pid_path = home / "airflow" / control.LAUNCHER_PID
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(f"{os.getpid()}\n")
    (home / WEBHOOK_PORT_FILE).write_text(f"{args.webhook_port}\n")
    try:
        sources = demo_sources(home, args.demo_port)
        env = {
            "AIRFLOW_VAR_OPENADDR_SOURCES": str(sources),
            **webhook_env(home, args.webhook_port, args.port),
            **github_env(args.github_port),
        }
        programs = [
            demo_server(args.demo_port),
            github_server(args.github_port, sources, home / STATE),
            webhook_server(args.webhook_port),
        ]
        with Stack(home, args.port, env=env, parallelism=args.parallelism, programs=programs) as stack:
            urls = {
                "airflow": stack.url,
                "webhook": webhook_url(args.webhook_port),
                "github": github_url(args.github_port),
                "machine_database_url": stack.machine_database_url,
            }
            write_stack_file(home, urls)
            healthy = time.monotonic() - started
            login = f"{ADMIN} / {stack.password()}"
            _say(f"Airflow is up after {healthy:.0f} s: {stack.url}/ (login {login})")
            run_id, earlier = start_demo_set(stack, new=args.new_set)
            state = stack.wait(BATCH, run_id, args.timeout)
            report = set_report(stack.machine_database_url, run_id)
            ok = state == "success" and report is not None and all(r["status"] for r in report["runs"])
            note = ""
            if earlier:
                record = stack.request("GET", f"/dags/{BATCH}/dagRuns/{run_id}").json()
                due = (stack.dag(BATCH) or {}).get("next_dagrun_run_after")
                note = earlier_note(run_id, parse_time(record.get("queued_at")), parse_time(due))
            _say(
                f"\nDemo batch run {run_id}: {state} after {time.monotonic() - started:.0f} s from start.\n"
                + note
                + format_report(report, stack.storage)
                + f"\nAirflow UI  {stack.url}/  (login {login}; the password is kept across starts in "
                f"{stack.airflow_home / 'simple_auth_manager_passwords.json.generated'})\n"
                f"REST API    {stack.url}/api/v2/  (token: POST {stack.url}/auth/token)\n"
                f"Webhook     {webhook_url(args.webhook_port)}/  (POST /hook, runs at /runs/<id>/, files at "
                f"/files/; secret in {home / 'webhook-secret'}; triggers openaddr_ci as Airflow user "
                f"{AIRFLOW_USER})\n"
                f"GitHub      {github_url(args.github_port)}/  (fake: openaddresses/openaddresses holds the demo "
                f"sources; `make push` sends a signed push of a changed one)\n"
                f"Review      {webhook_url(args.webhook_port)}/review/  (held runs; sign in through the fake GitHub "
                f"as {MAINTAINER}, a member of openaddresses, or {OUTSIDER}, refused)\n"
                f"Machine DB  {stack.machine_db}\n"
                f"Storage     {stack.storage}/\n"
                f"Logs        {stack.logs}/<program>.log\n"
            )
            collect_run: str | None = None
            collect_state = "none"
            if report is not None and report["set"]["datetime_end"] is not None:
                ok = held_rerun(home, stack, webhook_url(args.webhook_port), args.timeout) and ok
                collect_run, collect_state = collect_after_held_rerun(stack, args.timeout)
                ok = ok and collect_state == "success"
            _say(
                format_collections(
                    collect_run,
                    collect_state,
                    collections_report(stack.machine_database_url) if collect_run else [],
                    stack.storage,
                    webhook_url(args.webhook_port),
                )
            )
            if args.once:
                return 0 if ok else 1
            _say("Running; Ctrl-C stops everything (or `make stop` from another shell).")
            while True:
                stack.check_alive()
                time.sleep(2)
    finally:
        if procs.read_pid(pid_path) == os.getpid():
            pid_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devstack``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["push"]:
        from devstack import push

        return push.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up lines say nothing to a user
    if args.stop:
        _say(control.stop_home(Path(args.home)))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    # Left alone when ignored (nohup), as Python leaves SIGINT alone in a background job.
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)
    try:
        return run(args)
    except (StackError, TimeoutError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM) is how the stack is meant to end: a clean stop is a success, not an error.
        log.info("Stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
