"""The development stack (``make run``): the whole stack on free ports in a temporary home, demo set once."""

from __future__ import annotations

import html
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from devstack import ROOT, StackError, procs, supervise
from devstack.airflow_api import ADMIN, PASSWORDS_FILE
from devstack.control import check_home_free, home_state, stop_home
from devstack.demo import (
    DEMO,
    DEMO_URL,
    SHRUNK_DATA,
    SHRUNK_KEEP,
    SHRUNK_SOURCE,
    demo_sources,
    shrunk_copy,
    shrunk_source,
)
from devstack.procs import free_port, processes_of
from devstack.report import set_report
from devstack.stack import SECRET_KEYS, Stack, load_secrets
from devstack.supervise import Program
from devstack.webhook import AIRFLOW_ROLE, AIRFLOW_USER, load_airflow_password, webhook_env, webhook_server
from openaddr.db import make_engine, upgrade
from openaddr.db.results import latest_entry_runs
from openaddr.db.runs import insert_run
from openaddr.sources import load_source
from openaddr.storage import LocalStorage
from openaddr_airflow.links import run_links

#: The launcher's whole run: ~25 s to healthy, ~35 s for the demo set (a scheduled run, then ours), ~15 s to
#: stop; up to twice that on a busy 2-core machine.
RUN_TIMEOUT = 360  # the demo set, the held re-run (a CI job), then the collect run


def _clean_environment() -> dict[str, str]:
    """This process's environment without the Airflow and Machine settings ``conftest.py`` made for in-process
    tests: the launcher must build everything itself, as from a fresh shell."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "OPENADDR"))}


#: Runs a command as a child subreaper (Linux): whatever the command leaves running is re-parented to this
#: wrapper instead of init, listed on stderr as ``LEFT [pids]`` once the command has exited, and killed.
SUBREAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
code = child.wait()
time.sleep(1)
left = []
for entry in os.listdir("/proc"):
    try:
        fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if int(fields[1]) == os.getpid() and fields[0] != "Z":
        left.append(int(entry))
for pid in left:
    os.kill(pid, signal.SIGKILL)
sys.stderr.write("LEFT " + json.dumps(left) + "\n")
sys.exit(code)
"""


def _left_running(stderr: str) -> list[int]:
    """The PIDs :data:`SUBREAPER` found still running after the launcher exited."""
    match = re.search(r"^LEFT (\[.*\])$", stderr, re.MULTILINE)
    assert match, stderr[-2000:]
    return json.loads(match.group(1))


def _launch(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", SUBREAPER, sys.executable, "-m", "devstack", *arguments]
    process = subprocess.Popen(
        command, cwd=ROOT, env=_clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the launcher stops its stack on SIGTERM
        stdout, stderr = process.communicate(timeout=90)
        pytest.fail(f"the launcher took more than {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _demo_entries() -> dict[tuple[str, str, str], dict]:
    """``(source path, layer, name) → entry`` of every layer entry of the demo sources."""
    entries = {}
    for path in sorted((DEMO / "sources").rglob("*.json")):
        for entry in load_source(path).entries():
            key = (path.relative_to(DEMO).as_posix(), entry.layer, entry.name)
            entries[key] = entry.data
    return entries


def _features(entry: dict) -> int:
    """Records in an entry's bundled data file (its URL's name in ``demo/data``), read with GDAL."""
    import pyogrio

    archive = DEMO / "data" / Path(urlparse(entry["data"]).path).name
    names = zipfile.ZipFile(archive).namelist()
    member = next(
        name.split(".gdb/")[0] + ".gdb" if ".gdb/" in name else name
        for name in names
        if ".gdb/" in name or name.endswith((".shp", ".csv", ".geojson", ".json"))
    )
    layer = entry.get("conform", {}).get("layer")
    return int(pyogrio.read_info(f"/vsizip/{archive}/{member}", layer=layer)["features"])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``python -m devstack --once`` on free ports (not 8765: the demo sources are rewritten)."""
    home = tmp_path_factory.mktemp("embedded") / "var"
    config = (ROOT / "airflow.cfg").read_bytes()
    webhook_port = free_port()
    result = _launch(
        "--home", str(home), "--port", str(free_port()), "--demo-port", str(free_port()),
        "--webhook-port", str(webhook_port), "--github-port", str(free_port()), "--once",
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    left = _left_running(result.stderr) + processes_of(home / "airflow")
    if left:
        stop_home(home)
    return {
        "home": home,
        "result": result,
        "left": left,
        "config_unchanged": config == (ROOT / "airflow.cfg").read_bytes(),
        "webhook_port": webhook_port,
    }


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_batch_run_succeeds_and_everything_stops(demo_run: dict):
    result, home = demo_run["result"], demo_run["home"]
    assert result.returncode == 0, result.stderr[-4000:]
    match = re.search(r"Demo batch run (\S+): success", result.stdout)
    assert match, result.stdout
    with sqlite3.connect(home / "airflow" / "airflow.db") as metadata:
        states = metadata.execute(
            "SELECT state FROM dag_run WHERE dag_id = 'openaddr_batch' AND run_id = ?", (match.group(1),)
        ).fetchall()
    assert states == [("success",)]
    assert "(login admin / " in result.stdout
    assert demo_run["left"] == [], "processes of the stack outlived the launcher"
    assert not list((home / "airflow").glob("*.pid"))
    assert demo_run["config_unchanged"], "Airflow rewrote airflow.cfg"
    assert (home / "airflow" / "secrets.env").stat().st_mode & 0o777 == 0o600
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert (home / "airflow" / "logs" / f"{component}.log").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.slow
def test_the_task_instances_link_to_the_webhook_app_over_http(demo_run: dict):
    result, home = demo_run["result"], demo_run["home"]
    app = f"http://127.0.0.1:{demo_run['webhook_port']}"
    assert f"Webhook     {app}/" in result.stdout
    assert (home / "webhook-secret").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(home / "airflow" / "airflow.db") as metadata:
        rows = metadata.execute(
            "SELECT key, value FROM xcom WHERE dag_id = 'openaddr_batch' AND task_id = 'process_source' "
            "AND key LIKE '_link_%'"
        ).fetchall()
    links: dict[str, list[str]] = {}
    for key, value in rows:
        links.setdefault(key, []).append(json.loads(value))
    assert set(links) == {"_link_RunOutputsLink", "_link_ResultsSiteLink"}
    assert all(
        re.fullmatch(rf"{app}/files/runs/\d+/index.json", url) for url in links["_link_RunOutputsLink"]
    )
    assert all(re.fullmatch(rf"{app}/runs/\d+/", url) for url in links["_link_ResultsSiteLink"])
    assert (home / "airflow" / "logs" / "webhook.log").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.slow
def test_the_set_has_one_successful_run_per_demo_entry(demo_run: dict):
    result, home = demo_run["result"], demo_run["home"]
    run_id = re.search(r"Demo batch run (\S+):", result.stdout).group(1)
    report = set_report(f"sqlite:///{home / 'machine.db'}", run_id)
    assert report is not None
    assert report["set"]["datetime_end"] is not None, "the set was not completed"
    runs = {(run["source_path"], run["source_layer"], run["layer_name"]): run for run in report["runs"]}
    expected = _demo_entries()
    assert len(expected) >= 4
    assert set(runs) == set(expected)
    for key, run in runs.items():
        assert run["status"] is True, (key, run["message"])
        # Records without a number or a street are dropped: never more addresses than records, never none.
        assert 0 < run["address_count"] <= _features(expected[key]), key
        assert run["copy_of"] is None, "the demo set must process its sources, not copy an earlier run"
        published = home / "storage" / "runs" / str(run["id"]) / "index.json"
        assert published.is_file(), key
        assert json.loads(published.read_text())


@pytest.mark.integration
@pytest.mark.slow
def test_the_report_shows_each_source_problem_and_where_out_csv_is(demo_run: dict):
    result, home = demo_run["result"], demo_run["home"]
    run_id = re.search(r"Demo batch run (\S+):", result.stdout).group(1)
    report = set_report(f"sqlite:///{home / 'machine.db'}", run_id)
    problems = {run["id"]: run["source_problem"] for run in report["runs"] if run["source_problem"]}
    # Portland's excerpt is a city's, recorded as incomplete coverage: processed, not a plain success.
    assert "Missing or incomplete coverage" in problems.values()
    for run in report["runs"]:
        line = re.search(rf"^ +{run['id']} +{re.escape(run['source_path'])} .*$", result.stdout, re.MULTILINE)
        assert line, (run["id"], result.stdout)
        assert ("problem" if run["id"] in problems else "success") in line.group(0).split()
    for problem in problems.values():
        assert f"source problem: {problem}" in result.stdout
    member, package = re.search(
        r"out\.csv is packaged in its zip: run \d+'s is (\S+) in (\S+)$", result.stdout, re.MULTILINE
    ).groups()
    with zipfile.ZipFile(package) as archive:
        assert archive.read(member).startswith(b"LON,LAT,")
    assert "the password is kept across starts" in result.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_a_second_start_shows_the_earlier_demo_set_says_so_and_keeps_the_password(demo_run: dict):
    home, first = demo_run["home"], demo_run["result"]
    first_run = re.search(r"Demo batch run (\S+):", first.stdout).group(1)
    result = _launch(
        "--home", str(home), "--port", str(free_port()), "--demo-port", str(free_port()),
        "--github-port", str(free_port()), "--once",
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert _left_running(result.stderr) == []
    # Without --webhook-port it kept the first start's: the runs' /files/ URLs still resolve (collect used them).
    assert f"Webhook     http://127.0.0.1:{demo_run['webhook_port']}/" in result.stdout
    second_run = re.search(r"Demo batch run (\S+): success", result.stdout).group(1)
    if second_run == first_run:
        assert f"This is the demo set of an earlier start (batch run {first_run}, queued " in result.stdout
    else:  # the first start was on the day before (midnight UTC in between): a new scheduled run is due
        assert second_run.startswith("scheduled__"), second_run
        assert "demo set of an earlier start" not in result.stdout
    password = re.compile(r"\(login admin / (\S+)\)")
    assert password.search(result.stdout).group(1) == password.search(first.stdout).group(1)


def _held_run(result: subprocess.CompletedProcess[str], home: Path) -> tuple[dict, dict]:
    """The demo's shrunken re-run the quality gate held (from the report's line, checked in the Machine database)
    and the demo set's run of the same entry."""
    match = re.search(
        r"^  held run (\d+): addresses/county, success, (\d+) addresses$", result.stdout, re.MULTILINE
    )
    assert match, result.stdout
    held_id = int(match.group(1))
    with sqlite3.connect(home / "machine.db") as machine:
        machine.row_factory = sqlite3.Row
        held = dict(machine.execute("SELECT * FROM runs WHERE id = ?", (held_id,)).fetchone())
    assert int(match.group(2)) == held["address_count"]
    run_id = re.search(r"Demo batch run (\S+):", result.stdout).group(1)
    report = set_report(f"sqlite:///{home / 'machine.db'}", run_id)
    (first,) = [run for run in report["runs"] if run["source_path"] == SHRUNK_SOURCE]
    return held, first


@pytest.mark.integration
@pytest.mark.slow
def test_a_shrunken_rerun_is_held_and_stays_out_of_latest_and_the_collections(demo_run: dict):
    """The quality gate in the demo: the CI job of a pushed commit that points the Bucks source at a shrunken copy
    of its data records a second run of the entry, held with its warning; the latest run of the entry and the
    collections (built after it) keep the demo set's run."""
    result, home = demo_run["result"], demo_run["home"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert re.search(r"job [0-9a-f-]{36} re-ran it: 1 run held for review\.$", result.stdout, re.MULTILINE)
    held, first = _held_run(result, home)
    app = f"http://127.0.0.1:{demo_run['webhook_port']}"
    assert f"its page, with the warning and the preview: {app}/runs/{held['id']}/" in result.stdout
    latest = f"{app}/latest/run/us/pa/bucks/addresses/county.zip"
    assert f"the latest URL still gives run {first['id']}'s data: {latest}" in result.stdout
    # A second run of the set's entry, processed (not reused), merged (a push to master), held: status true,
    # a warning naming the count rule against the set's run, not reviewed.
    assert (held["source_path"], held["source_layer"], held["layer_name"]) == (
        first["source_path"], first["source_layer"], first["layer_name"],
    )  # fmt: skip
    assert held["job_id"]
    assert (held["set_id"], held["copy_of"]) == (None, None)
    assert (held["status"], held["is_merged"], held["accepted"]) == (1, 1, None)
    assert (first["status"], first["warning"]) == (True, None)
    assert 0 < held["address_count"] < 0.9 * first["address_count"]
    drop = f"({first['address_count']:,} → {held['address_count']:,}) against run {first['id']}"
    assert held["warning"].startswith("Address count dropped "), held["warning"]
    assert drop in held["warning"], held["warning"]
    assert f"    warning: {held['warning']}" in result.stdout
    assert (home / "storage" / "runs" / str(held["id"]) / "preview.png").is_file()
    # The latest run of the entry is still the set's.
    engine = make_engine(f"sqlite:///{home / 'machine.db'}")
    try:
        latest_runs = latest_entry_runs(engine, SHRUNK_SOURCE)
    finally:
        engine.dispose()
    assert [run["id"] for run in latest_runs] == [first["id"]]
    # The collections, built after the held run, hold the set's run's rows of the entry, not the held run's.
    collections = home / "storage" / "collections"
    with zipfile.ZipFile(collections / "openaddr-collected-global.zip") as archive:
        rows = len(archive.read("us/pa/bucks.csv").splitlines()) - 1
    assert rows == first["address_count"] != held["address_count"]
    import pyarrow.parquet as pq

    table = pq.read_table(collections / "openaddr-collected-global-addresses.parquet", columns=["run_id"])
    run_ids = set(table.column("run_id").to_pylist())
    assert str(first["id"]) in {str(run) for run in run_ids}
    assert str(held["id"]) not in {str(run) for run in run_ids}


def test_the_shrunken_demo_data_is_the_first_features_of_its_source_data(tmp_path: Path):
    """``demo/data/bucks-shrunk.zip`` is what :func:`shrunk_copy` makes of ``bucks.zip`` (so it can be remade), and
    :func:`shrunk_source` points a demo source at it from whichever port the data server has."""
    full, shrunk = DEMO / "data" / "bucks.zip", DEMO / "data" / SHRUNK_DATA
    made = zipfile.ZipFile(io.BytesIO(shrunk_copy(full)))
    committed = zipfile.ZipFile(shrunk)
    assert [(i.filename, i.date_time) for i in made.infolist()] == [
        (i.filename, i.date_time) for i in committed.infolist()
    ]
    text = committed.read("bucks.geojson")
    assert made.read("bucks.geojson") == text
    features = json.loads(text)["features"]
    assert len(features) == SHRUNK_KEEP
    assert features == json.loads(zipfile.ZipFile(full).read("bucks.geojson"))["features"][:SHRUNK_KEEP]
    copy = demo_sources(tmp_path, 9999)
    changed = tmp_path / "changed.json"
    changed.write_text(shrunk_source((copy / SHRUNK_SOURCE).read_text(), "a note"))
    entries = list(load_source(changed).entries())
    assert entries
    for entry in entries:
        assert entry.data["data"] == f"http://127.0.0.1:9999/{SHRUNK_DATA}"
        assert entry.data["note"] == "a note"


def test_a_taken_port_fails_clearly_before_starting_anything(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _launch("--home", str(tmp_path / "var"), "--port", str(port), "--once", timeout=60)
    assert result.returncode == 1
    assert f"port {port} (Airflow api-server) is already in use" in result.stderr
    assert _left_running(result.stderr) == []
    assert not (tmp_path / "var").exists()


def test_secrets_are_generated_once_private_and_complete(tmp_path: Path):
    path = tmp_path / "airflow" / "secrets.env"
    first = load_secrets(path)
    assert set(first) == set(SECRET_KEYS)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_secrets(path) == first
    path.write_text("AIRFLOW__CORE__FERNET_KEY=x\n")
    with pytest.raises(StackError, match="AIRFLOW__API_AUTH__JWT_SECRET"):
        load_secrets(path)


def test_demo_sources_name_the_demo_port(tmp_path: Path):
    assert demo_sources(tmp_path, 8765) == DEMO
    for path in (DEMO / "sources").rglob("*.json"):
        assert all(entry.data["data"].startswith(DEMO_URL) for entry in load_source(path).entries()), path
    copy = demo_sources(tmp_path, 9999)
    copied = sorted(path.relative_to(copy) for path in copy.rglob("*.json"))
    assert copied == sorted(path.relative_to(DEMO) for path in (DEMO / "sources").rglob("*.json"))
    for path in copy.rglob("*.json"):
        for entry in load_source(path).entries():
            assert entry.data["data"].startswith("http://127.0.0.1:9999/"), path


def _supervised_sleeper(home: Path) -> subprocess.Popen[bytes]:
    """An orphaned stack in ``home`` without Airflow: supervisord running one ``sleep`` program, started as
    :class:`~devstack.stack.Stack` starts it (its own session, the stack's ``AIRFLOW_HOME``)."""
    airflow_home = home / "airflow"
    (airflow_home / "logs").mkdir(parents=True)
    env = {**_clean_environment(), "AIRFLOW_HOME": str(airflow_home)}
    return supervise.start(airflow_home, airflow_home / "logs", [Program("sleeper", ["sleep", "600"])], env)


def _environ_once_exec(pid: int) -> list[bytes]:
    """``/proc/<pid>/environ`` of a program supervisord just started: it reads empty while the forked child is
    still being set up, so wait (a few seconds at most) until the program is ``sleep`` itself."""
    deadline = time.monotonic() + 10
    while True:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        named = Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
        if (named and environ) or time.monotonic() > deadline:
            return environ.split(b"\0")
        time.sleep(0.05)


def test_stop_says_so_when_nothing_runs(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "--stop", "--home", str(tmp_path / "var")],
        cwd=ROOT, env=_clean_environment(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"No stack runs from {tmp_path / 'var'}: nothing to stop.\n"


def test_an_orphaned_stack_refuses_a_second_start_and_stop_says_it_was_orphaned(tmp_path: Path):
    home = tmp_path / "var"
    supervisord = _supervised_sleeper(home)
    try:
        sleeper = supervise.pids(home / "airflow")["sleeper"]
        # Programs inherit supervisord's environment: the stack's settings reach every component.
        environ = _environ_once_exec(sleeper)
        assert f"AIRFLOW_HOME={home / 'airflow'}".encode() in environ
        state = home_state(home)
        assert state.orphaned
        assert state.supervisord == supervisord.pid
        with pytest.raises(StackError, match=f"an orphaned stack runs from {home} .supervisord pid"):
            check_home_free(home)
        launched = _launch("--home", str(home), "--port", str(free_port()), "--once", timeout=60)
        assert launched.returncode == 1
        assert "an orphaned stack runs from" in launched.stderr
        assert procs.alive(sleeper), "a refused start must leave the running stack alone"
        said = stop_home(home)
        assert said.startswith(f"The stack of {home} was orphaned: its launcher is gone")
        assert f"Stopped supervisord (pid {supervisord.pid})" in said
        assert supervisord.wait(timeout=30) == 0
        assert not procs.alive(sleeper)
        assert procs.session_members(supervisord.pid) == []
        assert not home_state(home).running
        assert stop_home(home) == f"No stack runs from {home}: nothing to stop."
    finally:
        if supervisord.poll() is None:
            procs.kill(procs.session_members(supervisord.pid), signal.SIGKILL)
            supervisord.wait()


def test_a_second_start_is_refused_while_a_launcher_runs(tmp_path: Path):
    home = tmp_path / "var"
    (home / "airflow").mkdir(parents=True)
    # A stand-in launcher: a live process whose command line reads ``python … -m devstack``.
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "devstack"])
    try:
        (home / "airflow" / "launcher.pid").write_text(f"{launcher.pid}\n")
        launched = _launch("--home", str(home), "--port", str(free_port()), "--once", timeout=60)
        assert launched.returncode == 1
        assert f"a stack already runs from {home} (launcher pid {launcher.pid})" in launched.stderr
        assert _left_running(launched.stderr) == []
        assert (home / "airflow" / "launcher.pid").read_text() == f"{launcher.pid}\n"
        assert launcher.poll() is None
    finally:
        launcher.kill()
        launcher.wait()
    check_home_free(home)  # a launcher that is gone does not count


def test_the_stack_runs_the_webhook_app_and_points_the_links_at_it(tmp_path: Path):
    home, port, app_port = tmp_path / "var", free_port(), free_port()
    stack = Stack(home, port, env=webhook_env(home, app_port, port), programs=[webhook_server(app_port)])
    config = supervise.render_config(stack.airflow_home, stack.logs, stack.programs())
    section = config.split("[program:webhook]\n", 1)[1].split("\n\n", 1)[0]
    command = section.splitlines()[0]
    assert f"-m gunicorn --bind 127.0.0.1:{app_port}" in command
    assert command.endswith("'webhook:create_app()'")
    assert f"priority={supervise.EXTRA_PRIORITY}" in section  # started before Airflow, stopped after it
    env = stack.environment()
    url = f"http://127.0.0.1:{app_port}"
    assert (env["OPENADDR_BASE_URL"], env["OPENADDR_RESULTS_PUBLIC_URL"]) == (url, f"{url}/files")
    # The app runs embedded on the stack's database and storage, with a secret generated once, private.
    assert (env["OPENADDR_EMBEDDED"], env["OPENADDR_RESULTS"]) == ("1", str(stack.storage))
    secret = home / "webhook-secret"
    assert env["GITHUB_WEBHOOK_SECRETS"] == secret.read_text().strip()
    assert len(env["GITHUB_WEBHOOK_SECRETS"]) >= 32
    assert secret.stat().st_mode & 0o777 == 0o600
    again = webhook_env(home, app_port, port)
    assert again["GITHUB_WEBHOOK_SECRETS"] == env["GITHUB_WEBHOOK_SECRETS"]
    # It triggers openaddr_ci on this stack's api-server as a user of its own, with a generated password kept
    # (private) in SimpleAuthManager's password file, which Airflow keeps and extends with admin's.
    assert env["OA_WEBHOOK_AIRFLOW_API_URL"] == stack.url
    assert env["OA_WEBHOOK_AIRFLOW_USERNAME"] == AIRFLOW_USER != ADMIN
    users = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    assert sorted(users) == sorted([f"{ADMIN}:admin", f"{AIRFLOW_USER}:{AIRFLOW_ROLE}"])
    passwords_file = stack.airflow_home / PASSWORDS_FILE
    assert json.loads(passwords_file.read_text()) == {AIRFLOW_USER: env["OA_WEBHOOK_AIRFLOW_PASSWORD"]}
    assert len(env["OA_WEBHOOK_AIRFLOW_PASSWORD"]) >= 24
    assert passwords_file.stat().st_mode & 0o777 == 0o600
    assert again["OA_WEBHOOK_AIRFLOW_PASSWORD"] == env["OA_WEBHOOK_AIRFLOW_PASSWORD"]


def test_the_webhook_password_joins_an_existing_airflow_password_file(tmp_path: Path):
    """A home of an earlier start: admin's password stays, the webhook's is added, the file becomes private."""
    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    passwords_file = airflow_home / PASSWORDS_FILE
    passwords_file.write_text(json.dumps({ADMIN: "kept-admin-password"}) + "\n")
    passwords_file.chmod(0o644)
    password = load_airflow_password(airflow_home)
    assert json.loads(passwords_file.read_text()) == {ADMIN: "kept-admin-password", AIRFLOW_USER: password}
    assert passwords_file.stat().st_mode & 0o777 == 0o600
    assert load_airflow_password(airflow_home) == password
    passwords_file.write_text("[]\n")
    with pytest.raises(StackError, match="not a JSON object"):
        load_airflow_password(airflow_home)


def test_the_webhook_program_serves_a_published_run_over_http(tmp_path: Path, fixtures: Path):
    """The app as supervisord runs it in the stack: the run's page and its "Run outputs" link open over http."""
    home, app_port = tmp_path / "var", free_port()
    port = free_port()
    stack = Stack(home, port, env=webhook_env(home, app_port, port))
    env = {**_clean_environment(), **stack.environment()}
    upgrade(stack.machine_database_url)
    engine = make_engine(stack.machine_database_url)
    try:
        source = (fixtures / "sources" / "us-wy-park.json").read_bytes()
        path = "sources/us/wy/park.json"
        run_id = insert_run(
            engine, source_path=path, source_layer="addresses", layer_name="primary", source_data=source
        )
        storage = LocalStorage(stack.storage, public_url=env["OPENADDR_RESULTS_PUBLIC_URL"])
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        (state_dir / "output.txt").write_text("processed\n")
        (state_dir / "index.json").write_text(json.dumps([["source", "output"], ["park.json", "output.txt"]]))
        storage.publish_run(run_id, state_dir)
    finally:
        engine.dispose()
    links = run_links(storage, run_id, env["OPENADDR_BASE_URL"])
    (stack.logs).mkdir(parents=True)
    supervisord = supervise.start(stack.airflow_home, stack.logs, [webhook_server(app_port)], env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                page = requests.get(links["site"], timeout=10)
                break
            # Refused until gunicorn listens; a read timeout while its workers still boot on a loaded machine.
            except (requests.ConnectionError, requests.Timeout):
                assert time.monotonic() < deadline, procs.tail(stack.logs / "webhook.log")
                time.sleep(0.2)
        assert page.status_code == 200, procs.tail(stack.logs / "webhook.log")
        assert f"Run {run_id}: {path}" in page.text
        outputs = requests.get(links["outputs"], timeout=30)
        assert outputs.status_code == 200
        keys, values = outputs.json()
        assert (
            dict(zip(keys, values, strict=True))["output"]
            == f"{links['outputs'].rsplit('/', 1)[0]}/output.txt"
        )
        assert (
            requests.get(f"http://127.0.0.1:{app_port}/files/../webhook-secret", timeout=5).status_code == 404
        )
    finally:
        stop_home(home)
        if supervisord.poll() is None:
            procs.kill(procs.session_members(supervisord.pid), signal.SIGKILL)
        supervisord.wait(timeout=30)


@pytest.mark.integration
@pytest.mark.slow
def test_the_running_stack_serves_the_extra_links_over_http(tmp_path: Path):
    """``make run`` left running: the "Results site" and "Run outputs" links its task instances recorded open,
    the webhook's Airflow user logs in and may trigger ``openaddr_ci``, and ``make push`` (a signed push delivery
    of a changed demo source) gives a job, its DAG run, the runs rows and the statuses at the fake GitHub."""
    home, webhook_port, airflow_port = tmp_path / "var", free_port(), free_port()
    arguments = ["--home", str(home), "--port", str(airflow_port), "--demo-port", str(free_port())]
    arguments += ["--github-port", str(free_port())]
    command = [sys.executable, "-m", "devstack", *arguments, "--webhook-port", str(webhook_port)]
    with (tmp_path / "stderr.log").open("w") as stderr:
        launcher = subprocess.Popen(
            command, cwd=ROOT, env=_clean_environment(), stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not any(line.startswith("Running;") for line in lines):
            assert launcher.poll() is None, "".join(lines) + (tmp_path / "stderr.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        with sqlite3.connect(home / "airflow" / "airflow.db") as metadata:
            rows = metadata.execute(
                "SELECT key, value FROM xcom WHERE task_id = 'process_source' AND key LIKE '_link_%'"
            ).fetchall()
        links = {key: json.loads(value) for key, value in rows}
        site, outputs = links["_link_ResultsSiteLink"], links["_link_RunOutputsLink"]
        assert site.startswith(f"http://127.0.0.1:{webhook_port}/runs/")
        page = requests.get(site, timeout=10)
        assert page.status_code == 200
        run_id = int(site.rstrip("/").rsplit("/", 1)[1])
        assert f"<h1>Run {run_id}: sources/" in page.text
        index = requests.get(outputs, timeout=10)
        assert index.status_code == 200
        keys, values = index.json()
        assert outputs == f"http://127.0.0.1:{webhook_port}/files/runs/{run_id}/index.json"
        # The published state names its files by http URLs of the app, which open too.
        log_url = dict(zip(keys, values, strict=True))["output"]
        assert log_url.startswith(f"http://127.0.0.1:{webhook_port}/files/runs/{run_id}/")
        assert requests.get(log_url, timeout=10).status_code == 200
        # The webhook's Airflow credentials work: a token, with which it may create openaddr_ci runs (an
        # empty body passes the authorization and fails validation: 422, not 403) and may not create pools.
        api = f"http://127.0.0.1:{airflow_port}"
        password = json.loads((home / "airflow" / PASSWORDS_FILE).read_text())[AIRFLOW_USER]
        login = requests.post(
            f"{api}/auth/token", json={"username": AIRFLOW_USER, "password": password}, timeout=30
        )
        assert login.status_code == 201, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        probe = requests.post(f"{api}/api/v2/dags/openaddr_ci/dagRuns", json={}, headers=bearer, timeout=30)
        assert probe.status_code == 422, probe.text
        pools = requests.post(f"{api}/api/v2/pools", json={}, headers=bearer, timeout=30)
        assert pools.status_code == 403, pools.text
        _held_run_is_shown_over_http(home, "".join(lines), f"http://127.0.0.1:{webhook_port}")
        _push_a_changed_source(home, webhook_port)
    finally:
        said = stop_home(home)
        launcher.wait(timeout=60)
        reader.join(timeout=10)
    assert said.startswith(f"Stopped the stack of {home} through its launcher"), said
    assert processes_of(home / "airflow") == []


def _held_run_is_shown_over_http(home: Path, stdout: str, app: str) -> None:
    """The demo's held run on the running stack's site: its page says it is held, with its warning and its preview,
    whose PNG the app serves; the entry's latest URL still redirects to the demo set's run."""
    from PIL import Image

    held, first = _held_run(subprocess.CompletedProcess([], 0, stdout, ""), home)
    page = requests.get(f"{app}/runs/{held['id']}/", timeout=30)
    assert page.status_code == 200
    assert "held for review by the quality gate" in page.text
    assert html.escape(held["warning"], quote=False) in page.text
    image = re.search(r'<img src="([^"]+)" width="1024" height="768"', page.text)
    assert image, page.text
    png = requests.get(image.group(1), timeout=30)
    assert png.status_code == 200
    assert png.headers["Content-Type"] == "image/png"
    assert png.url == f"{app}/files/runs/{held['id']}/preview.png"
    assert Image.open(io.BytesIO(png.content)).size == (1024, 768)
    assert png.content == (home / "storage" / "runs" / str(held["id"]) / "preview.png").read_bytes()
    latest = requests.get(
        f"{app}/latest/run/us/pa/bucks/addresses/county.zip", allow_redirects=False, timeout=30
    )
    assert latest.status_code == 302
    assert latest.headers["Location"] == f"{app}/files/runs/{first['id']}/us/pa/bucks.zip"


def _push_a_changed_source(home: Path, webhook_port: int) -> None:
    """``python -m devstack push`` against the running stack of ``home``, checked in the Machine database, at the
    fake GitHub, in Airflow (as admin) and on the site."""
    pushed = subprocess.run(
        [sys.executable, "-m", "devstack", "push", "--home", str(home), "--timeout", str(RUN_TIMEOUT)],
        cwd=ROOT,
        env=_clean_environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 60,
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr[-3000:]
    urls = json.loads((home / "stack.json").read_text())
    job_line = re.search(r"^Job +([0-9a-f-]{36}) ", pushed.stdout, re.MULTILINE)
    pushed_line = re.search(r"^Pushed ([0-9a-f]{12}) to openaddresses/openaddresses@master", pushed.stdout)
    assert job_line, pushed.stdout
    assert pushed_line, pushed.stdout
    job_id, sha = job_line.group(1), pushed_line.group(1)
    assert f"http://127.0.0.1:{webhook_port}/jobs/{job_id}" in pushed.stdout
    # The job and its runs rows, recorded by the webhook and the DAG run.
    with sqlite3.connect(home / "machine.db") as machine:
        job = machine.execute(
            "SELECT status, github_event, github_status_url, airflow_dag_run_id, github_delivery_id FROM jobs "
            "WHERE id = ?",
            (job_id,),
        ).fetchone()
        runs = machine.execute(
            "SELECT id, source_path, status, address_count, commit_sha FROM runs WHERE job_id = ?", (job_id,)
        ).fetchall()
    status, event, status_url, dag_run_id, delivery = job
    assert (status, event, dag_run_id) == (1, "push", f"ci__{job_id}")
    assert delivery
    assert status_url.startswith(f"{urls['github']}/repos/openaddresses/openaddresses/statuses/{sha}")
    assert [(path, ok, count) for _, path, ok, count, _ in runs] == [("sources/us/or/portland.json", 1, 12)]
    assert runs[0][4].startswith(sha)
    run_id = runs[0][0]
    # The DAG run, as Airflow's admin sees it, succeeded; its task instance's extra link is the run's page.
    admin = {
        "username": ADMIN,
        "password": json.loads((home / "airflow" / PASSWORDS_FILE).read_text())[ADMIN],
    }
    token = requests.post(f"{urls['airflow']}/auth/token", json=admin, timeout=60).json()["access_token"]
    dag_run = requests.get(
        f"{urls['airflow']}/api/v2/dags/openaddr_ci/dagRuns/ci__{job_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert dag_run.json()["state"] == "success", dag_run.text
    with sqlite3.connect(home / "airflow" / "airflow.db") as metadata:
        link = metadata.execute(
            "SELECT value FROM xcom WHERE dag_id = 'openaddr_ci' AND run_id = ? AND key = '_link_ResultsSiteLink'",
            (f"ci__{job_id}",),
        ).fetchone()
    assert json.loads(link[0]) == f"http://127.0.0.1:{webhook_port}/runs/{run_id}/"
    page = requests.get(json.loads(link[0]), timeout=30)
    assert page.status_code == 200
    assert f"Run {run_id}" in page.text
    # The commit statuses the fake GitHub received: the webhook's pending, then the job's success, both linking
    # to the job's page.
    statuses = requests.get(f"{urls['github']}/_admin/statuses", timeout=30).json()
    ours = [s for s in statuses if s["sha"].startswith(sha)]
    states = [s["state"] for s in ours]
    assert states[0] == "pending", ours
    assert states[-1] == "success", ours
    assert set(states) == {"pending", "success"}, ours
    assert {s["target_url"] for s in ours} == {f"http://127.0.0.1:{webhook_port}/jobs/{job_id}"}
    assert ours[-1]["context"] == "openaddresses/hooked"
    assert "Commit statuses at the fake GitHub:\n  pending" in pushed.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_once_waits_for_the_collect_run_and_says_where_the_collections_are(demo_run: dict):
    result, home = demo_run["result"], demo_run["home"]
    assert result.returncode == 0, result.stderr[-4000:]
    match = re.search(r"Collect run (\S+): success; (\d+) current collections in (\S+)/:", result.stdout)
    assert match, result.stdout
    assert int(match.group(2)) == 180  # 18 address zips, 72 GeoJSON, 72 GeoParquet and 18 -processed zips
    assert (
        "and 72 GeoJSON collections (openaddr-collected-<area>[-sa]-<layer>.geojsonl.zip), 72 GeoParquet"
        in (result.stdout)
    )
    folder = Path(match.group(3))
    assert folder == home / "storage" / "collections"
    line = re.search(r"openaddr-collected-global\.zip +([\d,]+) bytes +([\d,]+) addresses", result.stdout)
    assert line, result.stdout
    assert int(line.group(1).replace(",", "")) == (folder / "openaddr-collected-global.zip").stat().st_size
    with zipfile.ZipFile(folder / "openaddr-collected-global.zip") as archive:
        rows = sum(
            len(archive.read(n).splitlines()) - 1
            for n in archive.namelist()
            if n.endswith(".csv") and not n.startswith("summary/")
        )
    assert int(line.group(2).replace(",", "")) == rows > 0
    with sqlite3.connect(home / "airflow" / "airflow.db") as metadata:
        states = metadata.execute(
            "SELECT state FROM dag_run WHERE dag_id = 'openaddr_collect' AND run_id = ?", (match.group(1),)
        ).fetchall()
    assert states == [("success",)]
    assert "Listed with their URLs at http://" in result.stdout


def test_a_home_keeps_the_webhook_port_of_its_first_start(tmp_path: Path) -> None:
    """The published runs' URLs carry the webhook port (the storage's ``/files/``): a later start without
    ``--webhook-port`` takes the first start's, and one asking for another is refused with what to do."""
    from devstack.__main__ import WEBHOOK_PORT_FILE, home_webhook_port

    home = tmp_path / "var"
    assert home_webhook_port(home, None) == 8079
    assert home_webhook_port(home, 9123) == 9123
    other = tmp_path / "other"
    other.mkdir()
    (other / WEBHOOK_PORT_FILE).write_text("9123\n")  # as run() keeps it
    assert home_webhook_port(other, None) == 9123
    assert home_webhook_port(other, 9123) == 9123
    with pytest.raises(
        StackError, match=r"published under http://127\.0\.0\.1:9123/files/.*--webhook-port 9123"
    ):
        home_webhook_port(other, 9124)
