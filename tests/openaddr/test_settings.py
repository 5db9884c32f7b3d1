"""Every field of :class:`openaddr.settings.Settings` is read from its variable; malformed values are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openaddr.settings import Settings, SettingsError

#: field -> (the variable's text, the value read). Every field has a row (checked below).
READ: dict[str, tuple[str, Any]] = {
    "allow_private_hosts": ("on", True),
    "allowed_private_networks": ("127.0.0.1/32, 10.0.0.0/8", ("127.0.0.1/32", "10.0.0.0/8")),
    "allow_file_urls": ("yes", True),
    "connect_timeout": ("2.5", 2.5),
    "read_timeout": (" 3 ", 3.0),
    "ftp_timeout": ("4", 4.0),
    "retry_delays": ("1,2, 3", (1.0, 2.0, 3.0)),
    "max_retry_after": ("7", 7.0),
    "tls_fallback": ("off", False),
    "max_redirects": ("0", 0),
    "max_download_bytes": ("1000", 1000),
    "max_decompressed_bytes": ("2000", 2000),
    "max_compression_ratio": ("50", 50.0),
    "download_time_limit": ("none", None),
    "conform_time_limit": ("60", 60.0),
    "max_record_bytes": ("4096", 4096),
    "max_json_depth": ("3", 3),
    "max_output_bytes": ("7", 7),
    "pattern_timeout": ("0.5", 0.5),
    "batch_size": ("100", 100),
    "workers": ("0", 0),
    "s3_endpoint_url": ("http://127.0.0.1:4566", "http://127.0.0.1:4566"),
    "esri_concurrency": ("8", 8),
    "host_limiter": (" Redis ", "redis"),
    "redis_url": ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/1"),
    "memory_limit": ("536870912", 512 * 2**20),
    "large_memory_limit": ("0", 0),
    "pool_slots": ("6", 6),
    "large_pool_slots": ("1", 1),
    "embedded": ("1", True),
    "home": ("/srv/openaddr", Path("/srv/openaddr")),
    "scratch": ("/tmp/scratch", Path("/tmp/scratch")),
    "database_retry_seconds": ("120", 120.0),
    "database_url": ("postgresql+psycopg2://postgres@127.0.0.1:5432/openaddr", None),
    "results": ("s3://bucket/prefix", "s3://bucket/prefix"),
    "results_public_url": ("https://results.example", "https://results.example"),
    "base_url": ("https://batch.example", "https://batch.example"),
    "sources": ("github:openaddresses/openaddresses@main", "github:openaddresses/openaddresses@main"),
    "gag_github_status": ("true", True),
    "cloudwatch_namespace": ("OpenAddresses", "OpenAddresses"),
    "retention_days": (" 30 ", 30),
}
READ["database_url"] = (READ["database_url"][0], READ["database_url"][0])

#: field -> a malformed text for it (text settings take any text, so they have none).
MALFORMED: dict[str, str] = {
    "allow_private_hosts": "maybe",
    "allowed_private_networks": "127.0.0.1/32,not-a-network",
    "allow_file_urls": "2",
    "connect_timeout": "abc",
    "read_timeout": "-1",
    "ftp_timeout": "inf",
    "retry_delays": "10,soon",
    "max_retry_after": "nan",
    "tls_fallback": "sometimes",
    "max_redirects": "1.5",
    "max_download_bytes": "20G",
    "max_decompressed_bytes": "-5",
    "max_compression_ratio": "lots",
    "download_time_limit": "0",
    "conform_time_limit": "forever",
    "max_record_bytes": "",
    "max_json_depth": "deep",
    "max_output_bytes": "1e9",
    "pattern_timeout": "0",
    "batch_size": "0",
    "workers": "-1",
    "esri_concurrency": "0",
    "host_limiter": "memcached",
    "memory_limit": "16GiB",
    "large_memory_limit": "x",
    "pool_slots": "2",
    "large_pool_slots": "0",
    "embedded": "y?",
    "gag_github_status": "please",
    "database_retry_seconds": "soon",
    "retention_days": "0",
}


def test_every_field_has_a_case() -> None:
    assert sorted(READ) == sorted(Settings.model_fields)


@pytest.mark.parametrize("field", sorted(READ))
def test_each_field_is_read_from_its_variable(field: str) -> None:
    text, value = READ[field]
    variable = Settings.variable(field)
    assert variable.startswith("OPENADDR_")
    settings = Settings.from_env({variable: text})
    assert getattr(settings, field) == value
    assert value != Settings.model_fields[field].default  # the case shows the variable was read
    others = {name for name in Settings.model_fields if name != field}
    assert all(getattr(settings, name) == getattr(Settings(), name) for name in others)


@pytest.mark.parametrize("field", sorted(MALFORMED))
def test_a_malformed_value_names_the_variable_and_the_value(field: str) -> None:
    variable = Settings.variable(field)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: MALFORMED[field]})
    assert str(caught.value).startswith(f"{variable}={MALFORMED[field]!r}: ")


def test_the_spec_name_of_the_private_switch_and_empty_text() -> None:
    assert Settings.from_env({"OPENADDR_ALLOW_PRIVATE_HOSTS": "1"}).allow_private_hosts
    with pytest.raises(SettingsError, match="^OPENADDR_ALLOW_PRIVATE_HOSTS='x'"):
        Settings.from_env({"OPENADDR_ALLOW_PRIVATE_HOSTS": "x"})
    empty = Settings.from_env({"OPENADDR_RESULTS": " ", "OPENADDR_HOME": "", "OPENADDR_WORKERS": ""})
    assert (empty.results, empty.home, empty.workers) == (None, None, None)
    assert Settings.from_env({"OPENADDR_CONFORM_TIME_LIMIT": ""}).conform_time_limit is None


def test_two_malformed_values_are_both_named() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENADDR_READ_TIMEOUT": "abc", "OPENADDR_BATCH_SIZE": "many"})
    assert "OPENADDR_READ_TIMEOUT='abc'" in str(caught.value)
    assert "OPENADDR_BATCH_SIZE='many'" in str(caught.value)


def test_settings_are_frozen_and_replace_validates() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.read_timeout = 1.0  # type: ignore[misc]
    assert settings.replace(read_timeout=1.0).read_timeout == 1.0
    with pytest.raises(ValueError, match="read_timeout"):
        settings.replace(read_timeout=-1.0)


def test_the_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENADDR_READ_TIMEOUT", "5")
    assert Settings().read_timeout == 180.0
    assert Settings.from_env().read_timeout == 5.0


@pytest.mark.parametrize("command", ["conform", "process-one"])
def test_the_command_line_stops_on_a_malformed_setting(command: str, tmp_path: Path) -> None:
    source = tmp_path / "us" / "xx" / "town.json"
    source.parent.mkdir(parents=True)
    source.write_text('{"layers": {"addresses": [{"name": "town", "data": "https://example.com/a.csv"}]}}')
    data = tmp_path / "a.csv"
    data.write_text("X,Y,N,S\n1,2,3,Main St\n")
    out = tmp_path / "out"
    args = [str(source), str(data), "--layer", "addresses"] if command == "conform" else [str(source)]
    env = {"PATH": "/usr/bin:/bin", "OPENADDR_READ_TIMEOUT": "abc"}
    result = subprocess.run(
        [sys.executable, "-m", "openaddr", command, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"openaddr {command}: invalid setting: OPENADDR_READ_TIMEOUT='abc': could not convert string to float: "
        "'abc'\n"
    )
    assert not out.exists()  # nothing ran, nothing was recorded as a source problem


@pytest.mark.parametrize("text", ["0", "-7"])
def test_a_retention_of_zero_days_or_less_is_refused(text: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENADDR_RETENTION_DAYS": text})
    assert str(caught.value) == (
        f"OPENADDR_RETENTION_DAYS={text!r}: expected a whole number of days >= 1 "
        "(0 or less would delete every old run at once)"
    )
    assert Settings().retention_days == 90
