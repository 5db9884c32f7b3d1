"""The review queue (machine-ci.md §9.2, §10): ``run_reviews``, every decision on a run held by the quality gate
(accepted or rejected, by whom — a GitHub login or an API token's name — and when), and ``api_tokens``, the API
tokens of scripts, kept as their SHA-256 only.

Revision ID: 0005_review
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_review"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``run_reviews`` and ``api_tokens``."""
    op.create_table(
        "run_reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.Text(), nullable=False),
        sa.Column("reviewer_kind", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_run_id", sa.Integer(), nullable=False),
        sa.CheckConstraint("decision IN ('accepted', 'rejected')", name="ck_run_reviews_decision"),
        sa.CheckConstraint("reviewer_kind IN ('github', 'token')", name="ck_run_reviews_reviewer_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_run_reviews"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_reviews_run_id_runs"),
        sqlite_autoincrement=True,
    )
    op.create_index("run_reviews_run_ids", "run_reviews", ["run_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    """Drop both tables (the decisions' effect, ``runs.accepted``, stays)."""
    op.drop_table("api_tokens")
    op.drop_index("run_reviews_run_ids", table_name="run_reviews")
    op.drop_table("run_reviews")
