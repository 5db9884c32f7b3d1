"""The committed ``airflow.cfg`` holds reviewed non-defaults only (style guide point 10).

Checked against the defaults of the pinned Airflow: every key exists there and differs from its default, each
has its reason in a comment line directly above it, and nothing per-environment (paths, secrets, URLs) sits in
it.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

CFG = Path(__file__).resolve().parent.parent / "airflow.cfg"
#: Keys that hold secrets or name an environment: they belong in AIRFLOW__… variables, never in the file.
PER_ENVIRONMENT = {
    ("core", "fernet_key"),
    ("core", "executor"),
    ("core", "dags_folder"),
    ("core", "plugins_folder"),
    ("core", "execution_api_server_url"),
    ("database", "sql_alchemy_conn"),
    ("api", "secret_key"),
    ("api", "base_url"),
    ("api", "port"),
    ("api_auth", "jwt_secret"),
    ("celery", "broker_url"),
    ("celery", "result_backend"),
}


def _settings() -> list[tuple[str, str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CFG)
    return [
        (section, key, parser.get(section, key)) for section in parser.sections() for key in parser[section]
    ]


SETTINGS = _settings()


def _normalise(value: str | None) -> str | None:
    return None if value is None else value.strip().lower()


def test_the_file_sets_something():
    assert len(SETTINGS) >= 3


@pytest.mark.parametrize(("section", "key", "value"), SETTINGS, ids=[f"{s}.{k}" for s, k, _ in SETTINGS])
def test_each_key_is_a_known_non_default(section: str, key: str, value: str):
    from airflow.configuration import conf, retrieve_configuration_description

    options = retrieve_configuration_description().get(section, {}).get("options", {})
    assert key in options, f"[{section}] {key} is not an option of the pinned Airflow"
    default = conf.get_default_value(section, key)
    assert _normalise(value) != _normalise(default), f"[{section}] {key} = {value} is Airflow's default"


@pytest.mark.parametrize(("section", "key", "value"), SETTINGS, ids=[f"{s}.{k}" for s, k, _ in SETTINGS])
def test_each_key_has_its_reason_directly_above(section: str, key: str, value: str):
    lines = CFG.read_text().splitlines()
    in_section = False
    for number, line in enumerate(lines):
        if line.startswith("["):
            in_section = line.strip() == f"[{section}]"
        elif in_section and line.split("=", 1)[0].strip() == key:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"[{section}] {key} has no comment directly above it"
            assert len(above.lstrip("# ")) > 10, f"[{section}] {key}: the comment gives no reason"
            return
    pytest.fail(f"[{section}] {key} not found in {CFG.name}")


def test_no_secrets_paths_or_urls():
    for section, key, value in SETTINGS:
        assert (section, key) not in PER_ENVIRONMENT, f"[{section}] {key} belongs in the environment"
        assert not value.startswith(("/", "~")), f"[{section}] {key} is a path"
        assert "://" not in value, f"[{section}] {key} is a URL"
