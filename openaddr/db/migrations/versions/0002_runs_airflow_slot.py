"""Runs: ``airflow_slot``, the entry's position in a task instance that processes several entries.

The nightly batch groups small entries, several per mapped task instance (README, "The Machine on Airflow"), so
one task instance makes several runs: the uniqueness that lets a retried attempt find its runs again becomes
(dag, dag run, task, map index, slot). Existing runs get slot 0.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TASK_INSTANCE = ["airflow_dag_id", "airflow_dag_run_id", "airflow_task_id", "airflow_map_index"]


def upgrade() -> None:
    """Add ``airflow_slot`` (0 for existing runs) and make it part of the task instance's unique constraint.

    Batch mode: SQLite rebuilds the table (its reflected CHECK constraint and partial index included).
    """
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("airflow_slot", sa.Integer, nullable=False, server_default=sa.text("0")))
        batch.drop_constraint("uq_runs_airflow_task_instance", type_="unique")
        batch.create_unique_constraint("uq_runs_airflow_task_entry", [*_TASK_INSTANCE, "airflow_slot"])


def downgrade() -> None:
    """Drop ``airflow_slot`` and restore one run per task instance.

    Fails while a task instance has runs in more than one slot: such runs cannot be told apart without it.
    """
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("uq_runs_airflow_task_entry", type_="unique")
        batch.create_unique_constraint("uq_runs_airflow_task_instance", _TASK_INSTANCE)
        batch.drop_column("airflow_slot")
