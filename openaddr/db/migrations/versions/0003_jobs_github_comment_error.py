"""Jobs: ``github_comment_error``, why the job's pull-request comment could not be posted (machine-ci.md §2.3).

The comment never fails a job: when GitHub refuses it or cannot be reached, the error is recorded here (and cleared
by the next post that succeeds), so the job page can say why the pull request shows no summary.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable column ``jobs.github_comment_error``."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("github_comment_error", sa.Text, nullable=True))


def downgrade() -> None:
    """Drop ``jobs.github_comment_error``."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("github_comment_error")
