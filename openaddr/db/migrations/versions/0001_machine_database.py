"""The Machine database: jobs, sets, runs and zips (machine-ci.md §7).

7.5.5's ``ci/schema.pgsql`` with the §7.2 changes, portable to SQLite: JSON columns, enums as TEXT with CHECK,
autoincrement ids per table instead of the shared ``ints`` sequence; no ``heartbeats``, PQ ``queue`` or dashboard
views.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the value lists as of this revision (a later change is a later migration).
_COLLECTIONS = (
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
_LAYER_TYPES = ("addresses", "parcels", "buildings", "centerlines")


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    quoted = ", ".join("'" + value + "'" for value in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=op.f(name))


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.Boolean(), nullable=True),
        sa.Column("task_files", sa.JSON(), nullable=True),
        sa.Column("file_states", sa.JSON(), nullable=True),
        sa.Column("file_results", sa.JSON(), nullable=True),
        sa.Column("github_owner", sa.Text(), nullable=True),
        sa.Column("github_repository", sa.Text(), nullable=True),
        sa.Column("github_status_url", sa.Text(), nullable=True),
        sa.Column("github_comments_url", sa.Text(), nullable=True),
        sa.Column("datetime_start", _timestamp(), nullable=True),
        sa.Column("datetime_end", _timestamp(), nullable=True),
        sa.Column("sequence", sa.Integer(), nullable=True),
        sa.Column("github_delivery_id", sa.Text(), nullable=True),
        sa.Column("github_event", sa.Text(), nullable=True),
        sa.Column("is_rerun", sa.Boolean(), nullable=True),
        sa.Column("airflow_dag_run_id", sa.Text(), nullable=True),
        sa.Column("github_comment_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("github_delivery_id", name=op.f("uq_jobs_github_delivery_id")),
        sa.UniqueConstraint("sequence", name=op.f("uq_jobs_sequence")),
    )
    # Both backends scan B-tree indexes backwards: no DESC needed for ORDER BY … DESC (and SQLite cannot reflect it).
    op.create_index("jobs_sequence_reverse", "jobs", ["sequence"], unique=False)

    op.create_table(
        "sets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("commit_sha", sa.String(length=40), nullable=True),
        sa.Column("datetime_start", _timestamp(), nullable=True),
        sa.Column("datetime_end", _timestamp(), nullable=True),
        sa.Column("render_world", sa.Text(), nullable=True),
        sa.Column("render_europe", sa.Text(), nullable=True),
        sa.Column("render_usa", sa.Text(), nullable=True),
        sa.Column("render_geojson", sa.Text(), nullable=True),
        sa.Column("airflow_dag_run_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sets")),
        sa.UniqueConstraint("airflow_dag_run_id", name=op.f("uq_sets_airflow_dag_run_id")),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "zips",
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("datetime", _timestamp(), nullable=True),
        sa.Column("is_current", sa.Boolean(), server_default=sa.true(), nullable=True),
        sa.Column("content_length", sa.BigInteger(), nullable=True),
        sa.Column("address_count", sa.BigInteger(), nullable=True),
        sa.Column("collection", sa.Text(), nullable=True),
        sa.Column("license_attr", sa.Text(), nullable=True),
        sa.Column("layer", sa.Text(), nullable=True),
        _one_of("collection", _COLLECTIONS, "ck_zips_collection"),
        _one_of("license_attr", ("", "sa"), "ck_zips_license_attr"),
        _one_of("layer", _LAYER_TYPES, "ck_zips_layer"),
        sa.PrimaryKeyConstraint("url", name=op.f("pk_zips")),
    )

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("source_id", sa.String(length=40), nullable=True),
        sa.Column("source_data", sa.LargeBinary(), nullable=True),
        sa.Column("datetime_tz", _timestamp(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=True),
        sa.Column("status", sa.Boolean(), nullable=True),
        sa.Column("copy_of", sa.Integer(), nullable=True),
        sa.Column("code_version", sa.String(length=32), nullable=True),
        sa.Column("worker_id", sa.String(length=255), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("set_id", sa.Integer(), nullable=True),
        sa.Column("commit_sha", sa.String(length=40), nullable=True),
        sa.Column("is_merged", sa.Boolean(), nullable=True),
        sa.Column("for_index_page", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("source_layer", sa.Text(), nullable=True),
        sa.Column("layer_name", sa.Text(), nullable=True),
        sa.Column("layer_digest", sa.String(length=40), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("warning", sa.Text(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=True),
        sa.Column("airflow_ti", sa.Text(), nullable=True),
        sa.Column("airflow_dag_id", sa.Text(), nullable=True),
        sa.Column("airflow_dag_run_id", sa.Text(), nullable=True),
        sa.Column("airflow_task_id", sa.Text(), nullable=True),
        sa.Column("airflow_map_index", sa.Integer(), nullable=True),
        sa.Column("airflow_try_number", sa.Integer(), nullable=True),
        sa.Column("datetime_start", _timestamp(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("source_problem", sa.Text(), nullable=True),
        sa.Column("address_count", sa.BigInteger(), nullable=True),
        sa.Column("cache_seconds", sa.Float(), nullable=True),
        sa.Column("process_seconds", sa.Float(), nullable=True),
        _one_of("source_layer", _LAYER_TYPES, "ck_runs_source_layer"),
        sa.ForeignKeyConstraint(["copy_of"], ["runs.id"], name=op.f("fk_runs_copy_of_runs")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_runs_job_id_jobs")),
        sa.ForeignKeyConstraint(["set_id"], ["sets.id"], name=op.f("fk_runs_set_id_sets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint(
            "airflow_dag_id",
            "airflow_dag_run_id",
            "airflow_task_id",
            "airflow_map_index",
            name="uq_runs_airflow_task_instance",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("runs_set_ids", "runs", ["set_id"], unique=False)
    op.create_index("runs_source_paths", "runs", ["source_path"], unique=False)
    op.create_index("runs_job_ids", "runs", ["job_id"], unique=False)
    op.create_index("runs_copy_of", "runs", ["copy_of"], unique=False)
    op.create_index("runs_layer_digest", "runs", ["layer_digest"], unique=False)
    op.create_index(
        "runs_entry_latest",
        "runs",
        ["source_path", "source_layer", "layer_name", "datetime_tz"],
        unique=False,
    )
    op.create_index(
        "runs_for_index_page",
        "runs",
        ["for_index_page"],
        unique=False,
        postgresql_where=sa.text("for_index_page"),
        sqlite_where=sa.text("for_index_page"),
    )


def downgrade() -> None:
    """Drop everything revision 0001 created."""
    for index in (
        "runs_for_index_page",
        "runs_entry_latest",
        "runs_layer_digest",
        "runs_copy_of",
        "runs_job_ids",
        "runs_source_paths",
        "runs_set_ids",
    ):
        op.drop_index(index, table_name="runs")
    op.drop_table("runs")
    op.drop_table("zips")
    op.drop_table("sets")
    op.drop_index("jobs_sequence_reverse", table_name="jobs")
    op.drop_table("jobs")
