"""Every ``OPENADDR_*`` environment variable the Machine reads, as one settings object (pydantic-settings).

Source files come from untrusted pull requests, so the defaults are the production ones: private hosts refused,
``file:`` URLs refused, 180 s network timeouts, two retries after 10 s and 60 s (processing.md §3, §13). Tests
build a :class:`Settings` with tiny delays and timeouts instead, and set ``OPENADDR_ALLOW_PRIVATE_URLS=1`` for
their loopback servers.

Each field ``name`` is read from ``OPENADDR_<NAME>`` (``allow_private_hosts`` also from
``OPENADDR_ALLOW_PRIVATE_HOSTS``, the spec's name); the README's table "Settings" lists them with their defaults,
and a test keeps the two in step. :meth:`Settings.from_env` is the only place the environment is read:
``Settings(...)`` is the defaults with the given changes, whatever the environment says.

Booleans accept ``1/0``, ``true/false``, ``yes/no``, ``on/off`` (empty: off); durations are seconds; lists are
comma-separated; an empty or ``none`` time limit means "no limit of its own" (the run's ``deadline`` still
applies); an empty text setting is unset. A malformed value is a :class:`SettingsError` naming the variable
(``OPENADDR_READ_TIMEOUT='abc': …``): a limit silently replaced by its default would hide a configuration mistake.
The command line and the Airflow tasks load the settings before any work, so a malformed value stops them at once
instead of showing as a source problem.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

if TYPE_CHECKING:
    from collections.abc import Mapping


log = logging.getLogger(__name__)

#: Prefix of every variable.
PREFIX = "OPENADDR_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

#: The two names of the private-address switch: the issue's and the spec's (processing.md §3.1).
PRIVATE_HOSTS_VARIABLES = ("OPENADDR_ALLOW_PRIVATE_URLS", "OPENADDR_ALLOW_PRIVATE_HOSTS")

GIB = 2**30


class SettingsError(ValueError):
    """An ``OPENADDR_*`` variable is set to a malformed value; the message names the variable and the value."""


# --- parsers of the variables' text (values given in Python pass through to pydantic's own checks) -------------


def parse_flag(text: str) -> bool:
    """A switch as the settings read it: ``1/0``, ``true/false``, ``yes/no``, ``on/off``, empty for off.

    :raises ValueError: anything else
    """
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _bool(raw: Any) -> Any:
    return parse_flag(raw) if isinstance(raw, str) else raw


def _number(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a finite number >= 0")
    return value


def _seconds(raw: Any) -> Any:
    return _number(raw.strip()) if isinstance(raw, str) else raw


def _limit(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if raw.strip().lower() in ("", "none"):
        return None
    value = _number(raw.strip())
    if value == 0:
        raise ValueError("expected a number > 0, or none")
    return value


def _count(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    value = int(raw.strip())
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _positive(raw: Any) -> Any:
    value = _count(raw)
    if isinstance(raw, str) and value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _days(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    value = int(raw.strip())
    if value < 1:
        raise ValueError(
            "expected a whole number of days >= 1 (0 or less would delete every old run at once)"
        )
    return value


def _workers(raw: Any) -> Any:
    if isinstance(raw, str) and raw.strip() == "":
        return None
    return _count(raw)


def _delays(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    return tuple(_number(part.strip()) for part in raw.split(",") if part.strip())


def _list(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _choice(raw: Any) -> Any:
    return raw.strip().lower() if isinstance(raw, str) else raw


def _text(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    return raw.strip() or None


Flag = Annotated[bool, BeforeValidator(_bool)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_seconds)]
Limit = Annotated[float | None, Field(gt=0, allow_inf_nan=False), BeforeValidator(_limit)]
Count = Annotated[int, Field(ge=0), BeforeValidator(_count)]
Text = Annotated[str | None, BeforeValidator(_text)]
Folder = Annotated[Path | None, BeforeValidator(_text)]


class Settings(BaseSettings):
    """The Machine's settings: limits and switches of processing, and where things are.

    Processing (one run of ``openaddr conform``/``process-one``, processing.md):

    :param allow_private_hosts: fetch from loopback, private, link-local, … addresses (tests only)
    :param allowed_private_networks: CIDR networks exempt from the private-address guard while the rest of it
        stays on (e.g. ``("127.0.0.0/8",)`` for a loopback replay server, or an internal mirror)
    :param allow_file_urls: copy ``file:`` URLs (tests only; processing.md §3.1)
    :param connect_timeout: seconds to establish a connection
    :param read_timeout: seconds without receiving a byte
    :param ftp_timeout: seconds for any FTP socket operation
    :param retry_delays: seconds to wait before each retry of a transient failure; its length is the number of
        retries
    :param max_retry_after: longest ``Retry-After`` that is honoured, in seconds
    :param tls_fallback: retry once without certificate verification when verification fails (§3.2)
    :param max_redirects: redirects followed per request
    :param max_download_bytes: bytes a download may write (after Content-Encoding is decoded)
    :param max_decompressed_bytes: bytes decompressing one download may write (§4)
    :param max_compression_ratio: bytes written per archive byte before decompression stops (§4)
    :param download_time_limit: seconds the download stage may take, or None (the run's deadline still applies)
    :param conform_time_limit: seconds the conform stage may take, or None
    :param max_record_bytes: bytes (characters for CSV) of one GeoJSON feature, CSV line or CSV field
    :param max_json_depth: nesting levels of a GeoJSON file
    :param max_output_bytes: bytes the conform's outputs of one layer entry may take
    :param pattern_timeout: seconds one regular expression of a conform may take on one value
    :param batch_size: records per batch of the conform pipeline
    :param workers: worker processes of the conform (0: in-process), or None for one per usable core
    :param s3_endpoint_url: an S3-compatible endpoint (MinIO, moto), or None for AWS
    :param esri_concurrency: ArcGIS requests in flight at once per host (pages of one layer fetched concurrently,
        written in order; §3.6.4); 1 is the one-at-a-time download
    :param host_limiter: where that per-host limit is kept: ``local`` (in this process) or ``redis`` (shared by
        the fleet, at ``redis_url``)
    :param redis_url: the Redis of ``host_limiter=redis``

    The Machine on Airflow:

    :param memory_limit: bytes of address space of one processing subprocess of a standard entry (0: no limit)
    :param large_memory_limit: the same for a ``large`` entry
    :param pool_slots: slots of pool ``oa_sources`` (the total worker concurrency; read when DAGs are parsed)
    :param large_pool_slots: slots of pool ``oa_large``
    :param embedded: the embedded mode of ``make run``: local defaults for database and storage
    :param home: folder of the embedded database and storage (None: ``./var``)
    :param scratch: parent of the tasks' work folders (None: the system temporary folder)
    :param database_url: the Machine database (after the connection ``openaddr_machine_db``)
    :param database_retry_seconds: how long a task retries a Machine-database step that lost its connection
        before it fails as an infrastructure failure, for Airflow to retry (:mod:`openaddr.db.retry`)
    :param results: the run storage (after the variable ``openaddr_results``)
    :param results_public_url: public URL of the storage (after ``openaddr_results_public_url``)
    :param base_url: the results site (after ``openaddr_base_url``)
    :param sources: where the batch lists its sources (after ``openaddr_sources``)
    :param gag_github_status: never post commit statuses (after ``openaddr_gag_github_status``)
    :param cloudwatch_namespace: CloudWatch namespace of the task metric (after ``openaddr_cloudwatch_namespace``)
    :param retention_days: how many days a run is kept before the weekly housekeeping may delete it (its row and
        its files), unless a rule keeps it (:mod:`openaddr.housekeeping`); at least 1
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", validate_by_name=True)

    allow_private_hosts: Flag = Field(False, validation_alias=AliasChoices(*PRIVATE_HOSTS_VARIABLES))
    allowed_private_networks: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_list)] = ()
    allow_file_urls: Flag = False
    connect_timeout: Seconds = 180.0
    read_timeout: Seconds = 180.0
    ftp_timeout: Seconds = 180.0
    retry_delays: Annotated[tuple[Annotated[float, Field(ge=0)], ...], NoDecode, BeforeValidator(_delays)] = (
        10.0,
        60.0,
    )
    max_retry_after: Seconds = 300.0
    tls_fallback: Flag = True
    max_redirects: Count = 10
    max_download_bytes: Count = 20 * GIB
    max_decompressed_bytes: Count = 20 * GIB
    max_compression_ratio: Seconds = 1000.0
    download_time_limit: Limit = 3 * 3600.0
    conform_time_limit: Limit = 3 * 3600.0
    max_record_bytes: Count = 32 * 2**20
    max_json_depth: Count = 64
    max_output_bytes: Count = 100 * GIB
    pattern_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(_seconds)] = 1.0
    batch_size: Annotated[int, Field(ge=1), BeforeValidator(_positive)] = 5000
    workers: Annotated[int | None, Field(ge=0), BeforeValidator(_workers)] = None
    s3_endpoint_url: Text = None
    esri_concurrency: Annotated[int, Field(ge=1), BeforeValidator(_positive)] = 4
    host_limiter: Annotated[Literal["local", "redis"], BeforeValidator(_choice)] = "local"
    redis_url: Text = None

    memory_limit: Count = 16 * GIB
    large_memory_limit: Count = 64 * GIB
    pool_slots: Annotated[int, Field(ge=3), BeforeValidator(_count)] = 16
    large_pool_slots: Annotated[int, Field(ge=1), BeforeValidator(_count)] = 2
    embedded: Flag = False
    home: Folder = None
    scratch: Folder = None
    database_url: Text = None
    database_retry_seconds: Seconds = 300.0
    results: Text = None
    results_public_url: Text = None
    base_url: Text = None
    sources: Text = None
    gag_github_status: Flag = False
    cloudwatch_namespace: Text = None
    retention_days: Annotated[int, Field(ge=1), BeforeValidator(_days)] = 90

    @field_validator("allowed_private_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError on a bad entry
        return networks

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: the environment is read by :meth:`from_env` alone, so that ``Settings(...)`` is
        the same object wherever it is built."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the ``OPENADDR_*`` variables (see the module docstring), defaults for the rest.

        :param environ: the variables to read (default: ``os.environ``)
        :raises SettingsError: a variable that is set to a malformed value, named with its value
        """
        env = os.environ if environ is None else environ
        values = _MappingSource(cls, env)()
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(cls, exc, env)) from None

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field`` (its first, for ``allow_private_hosts``)."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"{PREFIX}{field.upper()}"

    def warn_if_unguarded(self) -> None:
        """Log a warning when the private-address guard is off (into the entry's ``output.txt`` when called while
        an entry is processed)."""
        if self.allow_private_hosts:
            log.warning("The private-address guard is off: private and loopback hosts may be fetched")

    def scratch_folder(self) -> Path:
        """Parent of the tasks' work folders: ``scratch``, else ``openaddr-scratch`` in the system temporary
        folder (the documented default)."""
        return self.scratch or Path(tempfile.gettempdir()) / "openaddr-scratch"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (field names), validated like the original."""
        return type(self).model_validate({**self.model_dump(), **changes})


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _describe(cls: type[Settings], exc: ValidationError, env: Mapping[str, str]) -> str:
    """``OPENADDR_READ_TIMEOUT='abc': could not convert …`` for each error, joined by ``; ``."""
    problems = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        if key == "allow_private_hosts" or key in PRIVATE_HOSTS_VARIABLES:  # name the one that is set
            name = next((n for n in PRIVATE_HOSTS_VARIABLES if n in env), PRIVATE_HOSTS_VARIABLES[0])
        elif key in cls.model_fields:
            name = cls.variable(key)
        else:
            name = key
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}={env.get(name, error.get('input'))!r}: {message}")
    return "; ".join(problems)


def pattern_timeout(environ: Mapping[str, str] | None = None) -> float:
    """:attr:`Settings.pattern_timeout` as :meth:`Settings.from_env` reads it (the conform and the CSV reader ask
    for it where no :class:`Settings` is handed down).

    :raises SettingsError: a malformed ``OPENADDR_*`` variable
    """
    return Settings.from_env(environ).pattern_timeout
