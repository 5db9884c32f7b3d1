"""Issue 16, part 4 (a) and (b), for real: a Celery worker killed, and one stopped, in the middle of a run.

One module-scoped production-shape stack (:class:`~devstack.stack.Stack` with ``executor="celery"``: PostgreSQL
databases and a Redis database index of this module's own) with **two Celery workers** of one slot each, as two
hosts of the worker pool (they share one scratch folder, as the ``ci`` and ``batch`` workers of one host do). Each
scenario runs an ``openaddr_ci`` job over a real fixture source (Park County, WY) whose data is served on loopback
by a *gated* route: the first request gets half the zip and then waits until the test releases it, so a signal
always lands in the middle of the download, whatever the machine's load.

(a) **SIGKILL**: the worker holding the download is killed with its process group (what supervisord's
    ``killasgroup`` or a cold shutdown does; a lost host or container takes even more). Nothing of its task may
    survive it: the task runner (a process group of its own), the zygote and ``process-one`` (a session of its
    own). The scheduler detects the missing heartbeat, the task is retried on the other worker and completes; the
    run row is recorded once; storage holds only the complete run; the killed try's work folder is swept by the
    retry, whose log says the previous try was lost with its worker.
(b) **SIGTERM** (after the killed worker is started again): a warm shutdown. The worker holding the download keeps
    running until the test releases the download, finishes the run (its row: success, first try) and exits.

Heartbeat and retry timings are shortened for this module only, in the stack's environment
(:data:`TEST_TIMINGS`); production keeps ``airflow.cfg``'s (docs/deploy.md, "A worker lost mid-run"). The
recovery times are printed (``pytest -s``), never asserted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from devstack import procs, supervise
from devstack.stack import CELERY_WORKER, Stack, celery_worker_name
from openaddr.db import make_engine
from openaddr.db.runs import job_runs
from openaddr.storage import STAGING_PREFIX
from tests.celery_stack import celery_stack, stack_databases
from tests.dags.test_dag_runs import PARK, ci_conf, fixture_source, park_points

if TYPE_CHECKING:
    from collections.abc import Iterator
    from http.server import BaseHTTPRequestHandler
    from pathlib import Path

    from tests.github_server import FakeGitHub
    from tests.servers import LoopbackHTTPServer

DAG_ID = "openaddr_ci"
WORKERS = (CELERY_WORKER, celery_worker_name(2))
#: Shortened for this module's stack only: the scheduler fails a task without a heartbeat for 20 s (production:
#: 300 s), looks every 2 s (10 s); supervisors heartbeat every 2 s (5 s); the first retry waits 1–2 s (15–30 s).
TEST_TIMINGS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
}
#: Generous bounds against a loaded 2-core machine (nothing here is a timing assertion).
START_TIMEOUT = 300.0
HELD_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0
GONE_TIMEOUT = 30.0
#: Seconds the SIGTERMed worker is watched while its download is still held.
TERM_WATCH = 5.0


class GatedZip:
    """A loopback route serving a zip: the first request gets the first half and then waits until
    :meth:`release` (or the server stops); later requests get all of it at once."""

    def __init__(self, server: LoopbackHTTPServer, path: str, body: bytes) -> None:
        self.server = server
        self.body = body
        self.held = threading.Event()
        self.released = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        self.url = server.add_route(path, self._route)

    def _route(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            first = self.requests == 1
        handler.send_response(200)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        half = len(self.body) // 2 if first else len(self.body)
        try:
            handler.wfile.write(self.body[:half])
            handler.wfile.flush()
            if first:
                self.held.set()
                while not self.released.wait(0.2):
                    if self.server.stop.is_set():
                        return
                handler.wfile.write(self.body[half:])
                handler.wfile.flush()
        except OSError:
            return  # the downloading process is gone

    def release(self) -> None:
        self.released.set()


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def _parent(pid: int) -> int | None:
    fields = procs.stat(pid)
    return int(fields[1]) if fields else None


def _task_tree(stack: Stack) -> dict[str, Any] | None:
    """The worker whose tree runs a processing zygote, and the processes of its task: the task runner (the
    zygote's parent), the zygote and the zygote's children (``process-one``), with every process of the worker."""
    for name in WORKERS:
        pid = stack.pids().get(name)
        if pid is None:
            continue
        tree = procs.descendants(pid)
        for zygote in tree:
            if b"openaddr.zygote" not in procs.cmdline(zygote):
                continue
            children = [child for child in tree if _parent(child) == zygote]
            runner = _parent(zygote)
            if not children or runner is None:
                continue  # the zygote has not forked process-one yet
            return {
                "worker": name,
                "worker_pid": pid,
                "runner": runner,
                "zygote": zygote,
                "children": children,
                "all": tree,
            }
    return None


def _gone(pids: list[int], timeout: float = GONE_TIMEOUT) -> list[str]:
    """Wait for the processes ``pids`` to end; describe those still running after ``timeout`` seconds."""
    ends = time.monotonic() + timeout
    while any(procs.alive(pid) for pid in pids) and time.monotonic() < ends:
        time.sleep(0.1)
    return [f"{pid} {_command(pid)}" for pid in pids if procs.alive(pid)]


def _command(pid: int) -> str:
    return procs.cmdline(pid).replace(b"\0", b" ").decode(errors="replace")[:120]


def _task_instance(stack: Stack, run_id: str) -> dict[str, Any]:
    engine = sa.create_engine(stack.metadata_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text(
                    "SELECT state, try_number, external_executor_id FROM task_instance "
                    "WHERE dag_id = :dag_id AND run_id = :run_id AND task_id = 'process_source'"
                ),
                {"dag_id": DAG_ID, "run_id": run_id},
            ).one()
    finally:
        engine.dispose()
    return {"state": row[0], "try_number": row[1], "celery_id": row[2]}


def _trigger(
    stack: Stack, server: LoopbackHTTPServer, github: FakeGitHub, fixtures: Path, name: str
) -> tuple[str, str, GatedZip]:
    gate = GatedZip(
        server,
        f"/faults/{name}/{uuid.uuid4().hex}/us-wy-park.zip",
        (fixtures / "data" / "us-wy-park.zip").read_bytes(),
    )
    job_id = str(uuid.uuid4())
    conf = ci_conf(job_id, {PARK: fixture_source(fixtures, "us-wy-park.json", gate.url)}, github)
    run_id = stack.trigger(DAG_ID, conf, run_id=f"faults-{name}-{job_id}")
    return job_id, run_id, gate


def _held(stack: Stack, gate: GatedZip) -> dict[str, Any]:
    """Wait until the download is held and process-one runs; the task's process tree."""
    _wait(gate.held.is_set, HELD_TIMEOUT, "the gated download was never requested")
    tree = _wait(lambda: _task_tree(stack), 30, "no worker runs a zygote with a child")
    return dict(tree)


def _wait_run(stack: Stack, run_id: str, events: dict[str, float] | None = None, start: float = 0.0) -> str:
    """Wait for the DAG run to end (not through :meth:`Stack.wait`, which fails on an exited worker); with
    ``events``, note when ``process_source`` was first seen in each (try, state) after ``start``."""
    started = time.monotonic()
    while time.monotonic() - started < RUN_TIMEOUT:
        if events is not None:
            ti = _task_instance(stack, run_id)
            events.setdefault(f"try {ti['try_number']} {ti['state']}", time.monotonic() - start)
        state = stack.state(DAG_ID, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(0.25)
    raise TimeoutError(f"{DAG_ID} run {run_id} did not end within {RUN_TIMEOUT:.0f} s")


def _runs(machine_url: sa.URL, job_id: str) -> list[dict[str, Any]]:
    engine = make_engine(machine_url)
    try:
        return job_runs(engine, job_id)
    finally:
        engine.dispose()


def _task_log(stack: Stack, run_id: str, attempt: int) -> str:
    found = list(
        stack.logs.glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=process_source/**/attempt={attempt}.log")
    )
    return "\n".join(path.read_text(errors="replace") for path in found)


def _kill_scenario(
    stack: Stack, server: LoopbackHTTPServer, github: FakeGitHub, fixtures: Path, machine_url: sa.URL
) -> dict[str, Any]:
    """(a): SIGKILL the worker's process group mid-download; follow the task until the run is green."""
    job_id, run_id, gate = _trigger(stack, server, github, fixtures, "kill")
    result: dict[str, Any] = {"job_id": job_id, "run_id": run_id, "gate": gate}
    tree = _held(stack, gate)
    result["tree"] = {key: value for key, value in tree.items() if key != "all"}
    result["try_1"] = _task_instance(stack, run_id)
    pending = _runs(machine_url, job_id)
    result["pending"] = pending
    killed = time.monotonic()
    os.killpg(tree["worker_pid"], signal.SIGKILL)
    result["left"] = _gone(tree["all"])
    scratch = stack.home / "scratch"
    result["scratch_after_kill"] = sorted(path.name for path in scratch.iterdir())
    events: dict[str, float] = {}
    result["state"] = _wait_run(stack, run_id, events, killed)
    result["green"] = time.monotonic() - killed
    result["events"] = events
    result["try_2"] = _task_instance(stack, run_id)
    result["runs"] = _runs(machine_url, job_id)
    result["scratch_after"] = sorted(path.name for path in scratch.iterdir())
    result["retry_log"] = _task_log(stack, run_id, result["try_2"]["try_number"])
    result["requests"] = gate.requests
    gate.release()
    return result


def _term_scenario(
    stack: Stack, server: LoopbackHTTPServer, github: FakeGitHub, fixtures: Path, machine_url: sa.URL
) -> dict[str, Any]:
    """(b): SIGTERM to the worker mid-download; it must finish the run, then exit."""
    job_id, run_id, gate = _trigger(stack, server, github, fixtures, "term")
    result: dict[str, Any] = {"job_id": job_id, "run_id": run_id}
    tree = _held(stack, gate)
    result["tree"] = {key: value for key, value in tree.items() if key != "all"}
    worker = tree["worker_pid"]
    termed = time.monotonic()
    os.kill(worker, signal.SIGTERM)
    time.sleep(TERM_WATCH)
    result["watched"] = {
        "worker": procs.alive(worker),
        "processing": all(procs.alive(pid) for pid in (tree["runner"], tree["zygote"], *tree["children"])),
        "download_held": not gate.released.is_set(),
    }
    gate.release()
    result["state"] = _wait_run(stack, run_id)
    result["run_seconds"] = time.monotonic() - termed
    # Not the worker's parent: its exit status comes from supervisord, once it has reaped it.
    still = _gone([worker], RUN_TIMEOUT)
    result["exit_seconds"] = time.monotonic() - termed
    result["left"] = _gone(tree["all"])

    def reaped() -> tuple[str, int] | None:
        info = {i["name"]: i for i in supervise.process_info(stack.airflow_home)}[tree["worker"]]
        return (info["statename"], info["exitstatus"]) if info["statename"] != "RUNNING" else None

    result["supervisor_state"] = None if still else _wait(reaped, GONE_TIMEOUT, "supervisord saw no exit")
    result["runs"] = _runs(machine_url, job_id)
    result["try"] = _task_instance(stack, run_id)
    result["worker_log"] = (stack.logs / f"{tree['worker']}.log").read_text(errors="replace")
    return result


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_admin_url: sa.URL,
    redis_url: str,
    http_server: LoopbackHTTPServer,
    github_server: FakeGitHub,
    fixtures: Path,
) -> Iterator[dict[str, Any]]:
    """Start the two-worker stack, run (a) then (b), stop the stack; the databases live until the module's tests
    are done."""
    with stack_databases(postgres_admin_url) as databases:
        machine_url = databases.machine_url
        home = tmp_path_factory.mktemp("faults") / "var"
        result: dict[str, Any] = {"machine_url": machine_url}
        began = time.monotonic()
        try:
            with celery_stack(
                home,
                databases,
                dag_id=DAG_ID,
                broker_url=redis_url,
                worker_concurrency=1,
                celery_workers=2,
                start_timeout=START_TIMEOUT,
                github=github_server,
                env=TEST_TIMINGS,
            ) as running:
                stack = result["stack"] = running.stack
                result["start_seconds"] = time.monotonic() - began
                stack.unpause(DAG_ID)
                result["kill"] = _kill_scenario(stack, http_server, github_server, fixtures, machine_url)
                restarted = time.monotonic()
                stack.start_program(result["kill"]["tree"]["worker"])
                result["restart_seconds"] = time.monotonic() - restarted
                result["term"] = _term_scenario(stack, http_server, github_server, fixtures, machine_url)
            result["total_seconds"] = time.monotonic() - began
            _report(result)
            yield result
        finally:
            for scenario in ("kill", "term"):
                if "gate" in result.get(scenario, {}):
                    result[scenario]["gate"].release()


def _report(result: dict[str, Any]) -> None:
    """The recovery times on stderr (``pytest -s``), with the machine's load."""
    kill, term = result["kill"], result["term"]
    events = ", ".join(f"{name} +{seconds:.1f} s" for name, seconds in kill["events"].items())
    with open("/proc/loadavg", encoding="ascii") as stream:
        load = stream.read().split()[:3]
    sys.stderr.write(
        f"\nworker faults (load {' '.join(load)}; heartbeat timeout "
        f"{TEST_TIMINGS['AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT']} s, retry delay "
        f"{TEST_TIMINGS['AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY']} s):\n"
        f"  (a) SIGKILL of {kill['tree']['worker']}: after the kill {events}; DAG run {kill['state']} after {kill['green']:.1f} s\n"
        f"  (b) SIGTERM of {term['tree']['worker']}: run {term['state']} {term['run_seconds']:.1f} s after the "
        f"signal ({TERM_WATCH:.0f} s of it held), worker exited ({term['supervisor_state']}) after "
        f"{term['exit_seconds']:.1f} s\n"
        f"  stack healthy after {result['start_seconds']:.1f} s, worker restarted in "
        f"{result['restart_seconds']:.1f} s, module {result['total_seconds']:.1f} s\n"
    )


# (a) a worker killed mid-run ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_worker_leaves_no_process_of_its_task(faults: dict[str, Any]) -> None:
    kill = faults["kill"]
    tree = kill["tree"]
    # The task really was mid-run: a task runner, its zygote and process-one below the worker.
    assert tree["runner"] != tree["worker_pid"]
    assert tree["children"]
    assert kill["left"] == [], "processes of the killed worker's task outlived it"


@pytest.mark.integration
@pytest.mark.slow
def test_the_killed_task_is_retried_on_the_other_worker_and_completes(faults: dict[str, Any]) -> None:
    kill = faults["kill"]
    assert kill["state"] == "success"
    # (Usually tries 1 and 2; an Execution API call that timed out on a loaded machine costs a try more.)
    tried = kill["try_1"]["try_number"]
    assert kill["try_2"] == {
        "state": "success",
        "try_number": tried + 1,
        "celery_id": kill["try_2"]["celery_id"],
    }
    assert kill["try_2"]["celery_id"] != kill["try_1"]["celery_id"]
    # The second try went to the worker that was not killed: its log names the Celery task, the killed one's not.
    stack: Stack = faults["stack"]
    killed = kill["tree"]["worker"]
    (other,) = [name for name in WORKERS if name != killed]
    marker = f"[{kill['try_2']['celery_id']}] Executing workload in Celery"
    assert marker in (stack.logs / f"{other}.log").read_text(errors="replace")
    assert marker not in (stack.logs / f"{killed}.log").read_text(errors="replace")
    assert f"[{kill['try_1']['celery_id']}] Executing workload in Celery" in (
        stack.logs / f"{killed}.log"
    ).read_text(errors="replace")
    # The retry downloaded again (the first request died with the killed try).
    assert kill["requests"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_the_run_is_recorded_once_and_nothing_half_published_stays(
    faults: dict[str, Any], fixtures: Path
) -> None:
    kill = faults["kill"]
    (pending,) = kill["pending"]
    assert pending["status"] is None
    (run,) = kill["runs"]
    assert run["id"] == pending["id"]
    assert run["status"] is True, run["message"]
    assert run["address_count"] == park_points(fixtures)
    assert run["airflow_try_number"] == kill["try_2"]["try_number"]
    assert pending["airflow_try_number"] == kill["try_1"]["try_number"]
    assert run["worker_id"] != pending["worker_id"]
    stack: Stack = faults["stack"]
    published = stack.storage / "runs" / str(run["id"])
    assert (published / "index.json").is_file()
    run_ids = {str(r["id"]) for r in kill["runs"] + faults["term"]["runs"]}
    assert {path.name for path in (stack.storage / "runs").iterdir()} == run_ids
    staged = [path for path in stack.storage.rglob(f"{STAGING_PREFIX}*")]
    assert staged == []


@pytest.mark.integration
@pytest.mark.slow
def test_the_killed_try_is_swept_and_the_retry_says_it_was_lost(faults: dict[str, Any]) -> None:
    kill = faults["kill"]
    (pending,) = kill["pending"]
    folder = f"run-{pending['id']}"
    # The killed try left its work folder (half a download) and lock behind; the retry swept them and ended
    # with an empty scratch folder.
    assert folder in kill["scratch_after_kill"]
    assert kill["scratch_after"] == []
    log = kill["retry_log"]
    assert "Removed 1 work folders left by killed tasks" in log
    assert f"'{folder}'" in log
    host, _, pid = pending["worker_id"].rpartition("/")
    assert int(pid) == kill["tree"]["runner"]
    assert (
        f"previous try {kill['try_1']['try_number']} was lost with its worker {host} (run {pending['id']}, "
        f"task process {pid}" in log
    ), log[-3000:]


# (b) a worker stopped mid-run ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_given_sigterm_finishes_its_run_then_exits(faults: dict[str, Any], fixtures: Path) -> None:
    term = faults["term"]
    assert term["watched"] == {"worker": True, "processing": True, "download_held": True}
    assert term["state"] == "success"
    assert term["supervisor_state"] == ("EXITED", 0)
    assert term["left"] == []
    (run,) = term["runs"]
    assert run["status"] is True, run["message"]
    assert run["address_count"] == park_points(fixtures)
    assert run["airflow_try_number"] == term["try"]["try_number"]
    assert run["worker_id"].rpartition("/")[2] == str(term["tree"]["runner"])
    assert "Warm shutdown" in term["worker_log"] or "warm shutdown" in term["worker_log"].lower()


# Configuration, no service ---------------------------------------------------------------------------------


def test_two_workers_each_with_a_node_name_and_the_pool_sized_for_both(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path,
        8126,
        executor="celery",
        metadata_url="postgresql://airflow@127.0.0.1/airflow",
        worker_concurrency=3,
        celery_workers=2,
    )
    assert stack.component_names[-2:] == WORKERS
    assert stack.worker_node == stack.worker_nodes[CELERY_WORKER]
    assert stack.worker_nodes[WORKERS[1]].startswith("openaddr-8126-2@")
    commands = {program.name: program.command for program in stack.programs()}
    for name in WORKERS:
        command = commands[name]
        assert command[command.index("--celery-hostname") + 1] == stack.worker_nodes[name]
        assert command[command.index("--concurrency") + 1] == "3"
    assert stack.environment()["OPENADDR_POOL_SLOTS"] == "6"


def test_more_workers_only_with_celery(tmp_path: Path) -> None:
    from devstack import StackError

    with pytest.raises(StackError, match="more only with executor='celery'"):
        Stack(tmp_path, 8127, celery_workers=2)
    with pytest.raises(StackError, match="at least 1"):
        Stack(tmp_path, 8127, executor="celery", metadata_url="postgresql://a@b/c", celery_workers=0)


def test_production_defaults_bound_a_worker_death_to_six_minutes() -> None:
    """docs/deploy.md, "A worker lost mid-run": detection (heartbeat timeout plus one detection interval), then
    the first retry's delay with Airflow's jitter (up to twice the delay), from the committed airflow.cfg over the
    pinned Airflow's defaults."""
    import configparser

    from airflow.configuration import conf

    from openaddr_airflow.operators import DEFAULT_ARGS
    from tests.conftest import ROOT

    committed = configparser.ConfigParser(interpolation=None)
    committed.read(ROOT / "airflow.cfg")

    def setting(section: str, key: str) -> float:
        return float(committed.get(section, key, fallback=None) or conf.get_default_value(section, key))

    detected = setting("scheduler", "task_instance_heartbeat_timeout") + setting(
        "scheduler", "task_instance_heartbeat_timeout_detection_interval"
    )
    first_retry = 2 * setting("core", "default_task_retry_delay")
    assert "retry_delay" not in DEFAULT_ARGS  # the setting above is the one the tasks use
    assert (detected, first_retry) == (310.0, 30.0)
    assert detected + first_retry <= 6 * 60


def test_a_task_runner_is_tied_to_its_supervisor_only_under_one() -> None:
    """``die_with_supervisor`` asks for SIGKILL on the parent's death in a task runner (its supervisor's comms
    set), never in a process running tasks in-process (``dag.test()``) or outside Airflow."""
    script = (
        "from airflow.sdk.execution_time import task_runner\n"
        "from billiard.util import get_pdeathsig\n"
        "from openaddr_airflow.listeners import die_with_supervisor\n"
        "class InProcessSupervisorComms: pass\n"
        "seen = []\n"
        "for comms in (None, InProcessSupervisorComms(), object()):\n"
        "    task_runner.SUPERVISOR_COMMS = comms\n"
        "    die_with_supervisor()\n"
        "    seen.append(get_pdeathsig())\n"
        "print(seen)\n"
    )
    import subprocess

    from tests.conftest import ROOT

    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["[0,", "0,", f"{int(signal.SIGKILL)}]"]
