"""Alerts and subscriptions (machine-ci.md §11, issue 14 part 4).

``alerts``: one row per alert decided, unique per kind and key (an entry broken for 7 days is told once);
``subscriptions``: e-mail subscriptions to a source file, with their unsubscribe token.

Revision ID: 0006_alerts
Revises: 0005_review
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_alerts"
down_revision = "0005_review"
branch_labels = None
depends_on = None

# Frozen here (a later change of openaddr.db.schema must not change what this migration did).
ALERT_KINDS = ("failed_run", "set_summary", "broken_entry", "stalled_set")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``alerts`` and ``subscriptions``."""
    kinds = ", ".join(f"'{kind}'" for kind in ALERT_KINDS)
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("datetime", _timestamp(), nullable=False),
        sa.Column("channels", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.CheckConstraint(f"kind IN ({kinds})", name="ck_alerts_kind"),
        sa.UniqueConstraint("kind", "key", name="uq_alerts_kind_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("alerts_datetime", "alerts", ["datetime"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("datetime_created", _timestamp(), nullable=False),
        sa.Column("datetime_confirmed", _timestamp()),
        sa.Column("broken", sa.Boolean),
        sa.UniqueConstraint("email", "source_path", name="uq_subscriptions_email_source_path"),
        sa.UniqueConstraint("token", name="uq_subscriptions_token"),
        sqlite_autoincrement=True,
    )
    op.create_index("subscriptions_source_path", "subscriptions", ["source_path"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("subscriptions_source_path", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_index("alerts_datetime", table_name="alerts")
    op.drop_table("alerts")
