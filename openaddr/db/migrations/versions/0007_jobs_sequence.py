"""Jobs: on PostgreSQL, ``jobs.sequence`` numbers come from a database sequence, ``jobs_sequence_seq``.

Before, :func:`openaddr.db.jobs.create_job` took MAX + 1 under a transaction-level advisory lock; the webhook's job
transaction holds that lock across the Airflow trigger and the commit's WAL flush (machine-ci.md §2.1 step 10), so
every push waited for every other in flight (``make bench-webhook``: 40 of a push's 64 ms under load). ``nextval``
takes no lock that lasts. The sequence starts after the largest number already given. SQLite has no sequences and
keeps MAX + 1 (its writers are serialised by ``BEGIN IMMEDIATE`` anyway).

Revision ID: 0007_jobs_sequence
Revises: 0006_alerts
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007_jobs_sequence"
down_revision = "0006_alerts"
branch_labels = None
depends_on = None

SEQUENCE = "jobs_sequence_seq"


def upgrade() -> None:
    """Create ``jobs_sequence_seq`` (PostgreSQL only), owned by ``jobs.sequence``, next value MAX + 1."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE SEQUENCE {SEQUENCE} OWNED BY jobs.sequence")
    op.execute(f"SELECT setval('{SEQUENCE}', COALESCE(MAX(sequence), 0) + 1, false) FROM jobs")


def downgrade() -> None:
    """Drop the sequence (numbers given stay; :func:`create_job` before this revision continued from MAX + 1)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")
