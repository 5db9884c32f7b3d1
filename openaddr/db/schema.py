"""Tables of the Machine database (machine-ci.md §7), as SQLAlchemy Core metadata.

One schema serves PostgreSQL (production) and SQLite (the embedded default): JSON in ``JSON`` columns, enums as
``TEXT`` with a ``CHECK``, autoincrement ids per table instead of 7.5.5's shared ``ints`` sequence, and timestamps
that always come back timezone-aware in UTC. The database itself is created by the alembic migrations in
``openaddr/db/migrations/``; a test checks that they produce exactly these tables.

Columns beyond 7.5.5's ``ci/schema.pgsql``:

* ``jobs``: ``github_delivery_id`` (unique), ``github_event``, ``is_rerun``, ``airflow_dag_run_id``,
  ``github_comment_id`` (§7.2), ``github_comment_error`` (why the §2.3 comment could not be posted);
* ``sets``: ``airflow_dag_run_id`` (§7.2, unique: a retried ``create_set`` finds its set again);
* ``runs``: ``source_layer``, ``layer_name``, ``layer_digest``, ``stats``, ``warning``, ``accepted``,
  ``airflow_ti`` (§7.2); the task instance that made the run (``airflow_dag_id``, ``airflow_dag_run_id``,
  ``airflow_task_id``, ``airflow_map_index``, ``airflow_try_number``, and ``airflow_slot``, the entry's position
  in a task that runs several; unique together but for the try number) and when its latest attempt
  started (``datetime_start``); the result message (``message``: timeouts and crashes have no state to derive it
  from); and copies of state values that queries filter or sort on (``source_problem``, ``address_count``,
  ``cache_seconds``, ``process_seconds``);
* ``zips``: ``layer`` (null for the CSV address collections, else the layer type of a GeoJSON or GeoParquet
  collection, §8) and ``format`` (:data:`ZIP_FORMATS`: ``zip``, ``geojsonl`` or ``parquet``; migration 0004).

Tables of the review queue (§9.2, §10; migration ``0005_review``): ``run_reviews``, every maintainer's decision on a
run held by the quality gate (who, how signed in, when), and ``api_tokens``, the hashed API tokens of scripts.

Tables beyond 7.5.5 (migration ``0006_alerts``, machine-ci.md §11): ``alerts``, one row per alert decided (sent, or
not sent because no alert channel is configured: ``channels`` empty), unique per kind and key so that an alert
meant to go once (an entry broken for 7 days, a set that stalled) is never sent twice; ``subscriptions``, people
subscribed by e-mail to a source file (double opt-in: ``datetime_confirmed`` null until confirmed), each with the
random token of its unsubscribe link and ``broken``, the source's state the subscriber was last told about.

Widened against 7.5.5: ``runs.code_version`` (``8.0.0.dev0`` does not fit 8 characters), ``runs.worker_id``
(``hostname/pid`` with long container host names) and ``zips.url`` (long object-storage base paths).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from openaddr.sources import LAYER_TYPES

log = logging.getLogger(__name__)

#: Collections of machine-ci.md §8 (7.5.5's ``zip_collection`` enum).
COLLECTIONS = (
    "global",
    "us_northeast",
    "us_midwest",
    "us_south",
    "us_west",
    "europe",
    "asia",
    "south_america",
    "north_america",
)
#: Licence classes of a collection (7.5.5's ``zip_licensing`` enum): freely shareable or share-alike.
LICENSE_ATTRS = ("", "sa")
#: Formats of a collection: the CSV address zip, zipped line-delimited GeoJSON, GeoParquet.
ZIP_FORMATS = ("zip", "geojsonl", "parquet")

#: Deterministic constraint and index names, the same on both backends (migrations refer to them by name).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that takes aware datetimes only and always returns them in UTC.

    SQLite has no time zones: values are stored as UTC text, which sorts and compares like the instants.

    :raises ValueError: when a naive datetime is bound (its zone would depend on the server's settings)
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        """Convert to UTC; drop the zone for SQLite."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: Machine database timestamps must be timezone-aware")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        """Attach UTC to SQLite's naive values; convert PostgreSQL's to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _json() -> sa.JSON:
    # Python None is SQL NULL (7.5.5 stored JSON 'null' and had to filter on state::text != 'null').
    return sa.JSON(none_as_null=True)


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    quoted = ", ".join("'" + value.replace("'", "''") + "'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=name)


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # UUID4
    sa.Column("status", sa.Boolean),  # null while pending
    sa.Column("task_files", _json()),  # {blob_sha: path}
    sa.Column("file_states", _json()),  # {path: true, false or null}
    sa.Column("file_results", _json()),  # {path: {message, entries: [...]}}
    sa.Column("github_owner", sa.Text),
    sa.Column("github_repository", sa.Text),
    sa.Column("github_status_url", sa.Text),
    sa.Column("github_comments_url", sa.Text),
    sa.Column("datetime_start", UTCDateTime),
    sa.Column("datetime_end", UTCDateTime),
    # Orders the jobs list. 7.5.5 drew it from the shared sequence; here create_job draws it from the sequence
    # jobs_sequence_seq on PostgreSQL (migration 0007) and assigns MAX + 1 on SQLite (which has no sequences, nor
    # identities on columns outside the key; its writers are serialised).
    sa.Column("sequence", sa.Integer, unique=True),
    sa.Column("github_delivery_id", sa.Text, unique=True),
    sa.Column("github_event", sa.Text),
    sa.Column("is_rerun", sa.Boolean),
    sa.Column("airflow_dag_run_id", sa.Text),
    sa.Column("github_comment_id", sa.BigInteger),
    # Why the pull-request comment could not be posted (null once a post succeeds); the job never fails for it.
    sa.Column("github_comment_error", sa.Text),
    # 7.5.5 declared it DESC; both backends scan a B-tree backwards, so ORDER BY sequence DESC uses it as well, and
    # SQLite cannot reflect DESC index columns (the migrated schema could not be compared with this one).
    sa.Index("jobs_sequence_reverse", "sequence"),
)

sets = sa.Table(
    "sets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.Text),
    sa.Column("repository", sa.Text),
    sa.Column("commit_sha", sa.String(40)),
    sa.Column("datetime_start", UTCDateTime),
    sa.Column("datetime_end", UTCDateTime),
    sa.Column("render_world", sa.Text),
    sa.Column("render_europe", sa.Text),
    sa.Column("render_usa", sa.Text),
    sa.Column("render_geojson", sa.Text),
    sa.Column("airflow_dag_run_id", sa.Text, unique=True),
    # Ids name storage folders (sets/<id>/): SQLite must never hand out the id of a deleted row again.
    sqlite_autoincrement=True,
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source_path", sa.Text),  # sources/….json
    sa.Column("source_id", sa.String(40)),  # git blob sha of the source file
    sa.Column("source_data", sa.LargeBinary),  # the source file
    sa.Column("datetime_tz", UTCDateTime),  # when the run was reserved, then when its status was recorded
    sa.Column("state", _json()),  # processing.md §9.7 with public URLs, run id and process hash
    sa.Column("status", sa.Boolean),  # null while pending
    sa.Column("copy_of", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("code_version", sa.String(32)),
    sa.Column("worker_id", sa.String(255)),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id")),
    sa.Column("set_id", sa.Integer, sa.ForeignKey("sets.id")),
    sa.Column("commit_sha", sa.String(40)),
    sa.Column("is_merged", sa.Boolean),
    sa.Column("for_index_page", sa.Boolean, nullable=False, server_default=sa.false()),
    # machine-ci.md §7.2
    sa.Column("source_layer", sa.Text),
    sa.Column("layer_name", sa.Text),
    sa.Column("layer_digest", sa.String(40)),  # SHA-1 of canonical JSON of coverage and the entry
    sa.Column("stats", _json()),
    sa.Column("warning", sa.Text),
    sa.Column("accepted", sa.Boolean),  # null = not reviewed
    sa.Column("airflow_ti", sa.Text),  # <dag id>/<dag run id>/<task id>/<map index>
    # The task instance and attempt that made the run.
    sa.Column("airflow_dag_id", sa.Text),
    sa.Column("airflow_dag_run_id", sa.Text),
    sa.Column("airflow_task_id", sa.Text),
    sa.Column("airflow_map_index", sa.Integer),
    sa.Column("airflow_try_number", sa.Integer),
    # The entry's position in its task instance: 0, or 0…K-1 when the batch groups K small entries per task.
    sa.Column("airflow_slot", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("datetime_start", UTCDateTime),  # when the latest attempt started
    sa.Column("message", sa.Text),  # Everything is fine, Failed to produce … data, Timed out after …
    # Copies of state values, for queries.
    sa.Column("source_problem", sa.Text),
    sa.Column("address_count", sa.BigInteger),
    sa.Column("cache_seconds", sa.Float),
    sa.Column("process_seconds", sa.Float),
    _one_of("source_layer", LAYER_TYPES, "source_layer"),
    # One run per entry of a task instance: a retried attempt finds its runs again.
    sa.UniqueConstraint(
        "airflow_dag_id",
        "airflow_dag_run_id",
        "airflow_task_id",
        "airflow_map_index",
        "airflow_slot",
        name="uq_runs_airflow_task_entry",
    ),
    sa.Index("runs_set_ids", "set_id"),
    sa.Index("runs_source_paths", "source_path"),
    sa.Index("runs_job_ids", "job_id"),
    sa.Index("runs_copy_of", "copy_of"),
    sa.Index("runs_layer_digest", "layer_digest"),
    # Newest run of one entry (§7.2 "datetime_tz descending": a backward scan, see jobs_sequence_reverse).
    sa.Index("runs_entry_latest", "source_path", "source_layer", "layer_name", "datetime_tz"),
    sa.Index(
        "runs_for_index_page",
        "for_index_page",
        postgresql_where=sa.text("for_index_page"),
        sqlite_where=sa.text("for_index_page"),
    ),
    sqlite_autoincrement=True,
)

zips = sa.Table(
    "zips",
    metadata,
    sa.Column("url", sa.Text, primary_key=True),
    sa.Column("datetime", UTCDateTime),
    sa.Column("is_current", sa.Boolean, server_default=sa.true()),
    sa.Column("content_length", sa.BigInteger),
    sa.Column("address_count", sa.BigInteger),
    sa.Column("collection", sa.Text),
    sa.Column("license_attr", sa.Text),
    sa.Column("layer", sa.Text),  # null: CSV addresses; else the layer of a GeoJSON or GeoParquet collection
    sa.Column("format", sa.Text, nullable=False, server_default="zip"),
    _one_of("collection", COLLECTIONS, "collection"),
    _one_of("license_attr", LICENSE_ATTRS, "license_attr"),
    _one_of("layer", LAYER_TYPES, "layer"),
    _one_of("format", ZIP_FORMATS, "format"),
)


#: Decisions on a held run (``run_reviews.decision``): ``runs.accepted`` true or false.
REVIEW_DECISIONS = ("accepted", "rejected")
#: How the reviewer signed in: a GitHub login through OAuth, or an API token (its name).
REVIEWER_KINDS = ("github", "token")

run_reviews = sa.Table(
    "run_reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),  # GitHub login, or the API token's name
    sa.Column("reviewer_kind", sa.Text, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    # The run the maintainer decided on (a decision covers the run, its original and the original's copies).
    sa.Column("decided_run_id", sa.Integer, nullable=False),
    _one_of("decision", REVIEW_DECISIONS, "decision"),
    _one_of("reviewer_kind", REVIEWER_KINDS, "reviewer_kind"),
    sa.Index("run_reviews_run_ids", "run_id"),
    sqlite_autoincrement=True,
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),  # hex SHA-256 of the token
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),
    sa.Column("revoked_at", UTCDateTime),
    sqlite_autoincrement=True,
)


#: Kinds of alert (machine-ci.md §11; :mod:`openaddr.alerts`).
ALERT_KINDS = ("failed_run", "set_summary", "broken_entry", "stalled_set")

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    # What the alert is about: a DAG run, a set id, an entry and its last success; unique per kind.
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("datetime", UTCDateTime, nullable=False),
    # The channels it went to (``email``, ``slack``, comma-separated); empty: alerts were off.
    sa.Column("channels", sa.Text, nullable=False),
    sa.Column("subject", sa.Text),
    _one_of("kind", ALERT_KINDS, "kind"),
    sa.UniqueConstraint("kind", "key", name="uq_alerts_kind_key"),
    sa.Index("alerts_datetime", "datetime"),
    sqlite_autoincrement=True,
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("source_path", sa.Text, nullable=False),  # sources/….json
    sa.Column("token", sa.String(64), nullable=False, unique=True),  # the unsubscribe link's secret
    sa.Column("datetime_created", UTCDateTime, nullable=False),
    sa.Column("datetime_confirmed", UTCDateTime),  # null until the double opt-in link is opened
    sa.Column("broken", sa.Boolean),  # the source's state the subscriber was last told about (null: none yet)
    sa.UniqueConstraint("email", "source_path", name="uq_subscriptions_email_source_path"),
    sa.Index("subscriptions_source_path", "source_path"),
    sqlite_autoincrement=True,
)


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a plain dict keyed by column name."""
    return dict(row._mapping)
